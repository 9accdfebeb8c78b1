//! End-to-end tests of the `qmp-shell` binary, driven through pipes against a real QEMU 7.2:
//! a throwaway one the shell starts itself, or one the `qmp-e2e` harness started (one per
//! test, so the tests run in parallel).

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{LIMIT, Lines, TempDir, address_arg, finish, run, send, spawn};
use qmp_e2e::{Monitor, Qemu};
use qmp_std::serde_json::{Value, json};

const SHELL: &str = env!("CARGO_BIN_EXE_qmp-shell");

const RUNNING: &str = r#"{"return": {"running": true, "singlestep": false, "status": "running"}}"#;

#[track_caller]
fn start(monitor: Monitor) -> Qemu {
    Qemu::start(monitor).unwrap_or_else(|e| panic!("start QEMU: {e}"))
}

/// Runs the shell on `qemu` with `flags`, feeding it `input`.
#[track_caller]
fn shell(qemu: &Qemu, flags: &[&str], input: &str) -> common::Run {
    let address = address_arg(qemu);
    let mut args = flags.to_vec();
    args.push(&address);
    run(SHELL, &args, input, None)
}

#[track_caller]
fn parse(line: &str) -> Value {
    qmp_std::serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// An event line as JSON, without its (checked) timestamp.
#[track_caller]
fn event(line: &str) -> Value {
    let mut value = parse(line);
    let object = value.as_object_mut().expect("an object");
    let timestamp = object.remove("timestamp").expect("a timestamp");
    assert!(timestamp["seconds"].as_i64().is_some(), "{line}");
    assert!(timestamp["microseconds"].as_i64().is_some(), "{line}");
    assert!(
        line.starts_with(r#"{"timestamp": {"seconds": "#),
        "not in QEMU's order: {line}"
    );
    value
}

#[test]
fn throwaway_qemu_answers_and_goes_away() {
    let tmp = TempDir::new("throwaway");
    let out = run(SHELL, &[], "query-status\nquery-version\n", Some(&tmp));
    out.assert_clean();
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(lines[0], RUNNING);
    let version = parse(lines[1]);
    assert_eq!(
        version["return"]["qemu"],
        json!({"major": 7, "minor": 2, "micro": 22})
    );
    tmp.assert_cleaned_up();
}

#[test]
fn empty_input_just_exits() {
    let tmp = TempDir::new("empty");
    let out = run(SHELL, &[], "", Some(&tmp));
    out.assert_clean();
    assert_eq!(out.stdout, "");
    tmp.assert_cleaned_up();
}

#[test]
fn ctrl_c_stops_the_throwaway_qemu() {
    let tmp = TempDir::new("sigint");
    let mut child = spawn(SHELL, &[], Some(&tmp));
    let mut stdin = child.stdin.take().expect("stdin");
    let lines = Lines::new(child.stdout.take().expect("stdout"));
    send(&mut stdin, "query-status");
    assert_eq!(lines.next(), RUNNING);
    let qemus = tmp.processes();
    assert_eq!(qemus.len(), 1, "one QEMU runs in {}", tmp.path().display());

    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("send SIGINT");
    let out = finish(child);
    assert_eq!(out.status.code(), Some(130), "stderr: {}", out.stderr);
    assert_eq!(out.stderr, "", "nothing to say on Ctrl-C");
    tmp.assert_cleaned_up();
    drop(stdin);
}

#[test]
fn key_value_commands_json_ids_events_and_errors() {
    let qemu = start(Monitor::Unix);
    let input = r#"
query-status
qom-get path=/machine property=type
human-monitor-command command-line="info status"
human-monitor-command command-line='info name'
blockdev-add driver=raw node-name=r0 file.driver=null-co file.size=1048576 read-only=true
query-named-block-nodes flat=true
{"execute": "query-name", "id": "mine"}
{"execute": "query-status", "id": {"n": [1, 2.5]}}
{ "execute" : "query-kvm" }
nope
qom-get path=/machine
stop
cont
"#;
    let out = shell(&qemu, &[], input);
    out.assert_clean();
    let lines = out.lines();
    assert_eq!(lines.len(), 15, "{}", out.stdout);
    assert_eq!(lines[0], RUNNING);
    assert_eq!(lines[1], r#"{"return": "none-machine"}"#);
    assert_eq!(lines[2], r#"{"return": "VM status: running\r\n"}"#);
    assert_eq!(lines[3], r#"{"return": ""}"#);
    assert_eq!(lines[4], r#"{"return": {}}"#);
    // The dotted keys built the nested `file` node, and 1048576 went as a number.
    let nodes = parse(lines[5]);
    let nodes = nodes["return"].as_array().expect("a list of nodes");
    let raw = nodes.iter().find(|n| n["node-name"] == "r0").expect("r0");
    assert_eq!(raw["drv"], "raw");
    assert_eq!(raw["ro"], true);
    assert_eq!(raw["image"]["virtual-size"], 1048576);
    assert!(nodes.iter().any(|n| n["drv"] == "null-co"), "{nodes:?}");
    // Raw JSON objects come back with their own ids.
    assert_eq!(lines[6], r#"{"return": {}, "id": "mine"}"#);
    assert_eq!(
        lines[7],
        r#"{"return": {"running": true, "singlestep": false, "status": "running"}, "id": {"n": [1, 2.5]}}"#
    );
    assert_eq!(
        lines[8],
        r#"{"return": {"enabled": false, "present": true}}"#
    );
    // Errors print as QEMU's error object.
    assert_eq!(
        lines[9],
        r#"{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#
    );
    assert_eq!(
        lines[10],
        r#"{"error": {"class": "GenericError", "desc": "Parameter 'property' is missing"}}"#
    );
    // Events print as JSON lines, before the reply of the command that caused them.
    assert_eq!(event(lines[11]), json!({"event": "STOP"}));
    assert_eq!(lines[12], r#"{"return": {}}"#);
    assert_eq!(event(lines[13]), json!({"event": "RESUME"}));
    assert_eq!(lines[14], r#"{"return": {}}"#);
}

#[test]
fn verbose_echoes_what_is_sent() {
    let qemu = start(Monitor::Unix);
    let input = "query-name\nblockdev-add driver=raw node-name=r0 file.driver=null-co file.size=1024\n{\"execute\": \"query-kvm\", \"id\": 7}\n";
    let out = shell(&qemu, &["-v"], input);
    out.assert_clean();
    let lines = out.lines();
    assert_eq!(lines.len(), 6, "{}", out.stdout);
    let mut sent = parse(lines[0]);
    assert!(
        sent["id"].is_u64(),
        "the client's id goes on the wire: {}",
        lines[0]
    );
    sent.as_object_mut().unwrap().remove("id");
    assert_eq!(sent, json!({"execute": "query-name"}));
    assert_eq!(lines[1], r#"{"return": {}}"#);
    let mut sent = parse(lines[2]);
    sent.as_object_mut().unwrap().remove("id");
    assert_eq!(
        sent,
        json!({"execute": "blockdev-add", "arguments": {
            "driver": "raw", "node-name": "r0", "file": {"driver": "null-co", "size": 1024}}})
    );
    assert_eq!(lines[3], r#"{"return": {}}"#);
    assert_eq!(lines[4], r#"{"execute": "query-kvm", "id": 7}"#);
    assert_eq!(
        lines[5],
        r#"{"return": {"enabled": false, "present": true}, "id": 7}"#
    );
}

#[test]
fn hmp_mode() {
    let qemu = start(Monitor::Unix);
    let out = shell(
        &qemu,
        &["-H"],
        "info status\nstop\ninfo status\n\nno-such-command\ncpu 0\n",
    );
    assert!(out.status.success(), "{out:?}");
    let lines = out.lines();
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    assert_eq!(lines[0], "VM status: running");
    assert_eq!(event(lines[1]), json!({"event": "STOP"}));
    assert_eq!(lines[2], "VM status: paused");
    assert_eq!(lines[3], "unknown command: 'no-such-command'");
    // `-machine none` has no CPU 0.
    assert_eq!(
        parse(lines[4])["error"]["class"],
        "GenericError",
        "{}",
        lines[4]
    );
}

#[test]
fn skip_negotiation() {
    let qemu = start(Monitor::Unix);
    let out = shell(
        &qemu,
        &["-N"],
        "query-status\nqmp_capabilities\nquery-status\nqmp_capabilities\n",
    );
    out.assert_clean();
    assert_eq!(
        out.lines(),
        [
            r#"{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#,
            r#"{"return": {}}"#,
            RUNNING,
            r#"{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}"#,
        ]
    );
}

#[test]
fn skip_negotiation_with_a_json_line() {
    let qemu = start(Monitor::Unix);
    let out = shell(
        &qemu,
        &["-N"],
        "{\"execute\": \"qmp_capabilities\", \"id\": \"n\"}\nstop\n",
    );
    out.assert_clean();
    let lines = out.lines();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert_eq!(lines[0], r#"{"return": {}, "id": "n"}"#);
    assert_eq!(event(lines[1]), json!({"event": "STOP"}));
    assert_eq!(lines[2], r#"{"return": {}}"#);
}

#[test]
fn pretty_printing() {
    let qemu = start(Monitor::Unix);
    let out = shell(&qemu, &["-p"], "query-status\nquery-name\n");
    out.assert_clean();
    assert_eq!(
        out.stdout,
        "{\n    \"return\": {\n        \"running\": true,\n        \"singlestep\": false,\n        \"status\": \"running\"\n    }\n}\n{\n    \"return\": {}\n}\n"
    );
}

#[test]
fn tcp_address() {
    let qemu = start(Monitor::Tcp);
    let address = address_arg(&qemu);
    let out = run(SHELL, &[&format!("tcp:{address}")], "query-status\n", None);
    out.assert_clean();
    assert_eq!(out.lines(), [RUNNING]);
    let out = shell(&qemu, &[], "query-status\n");
    out.assert_clean();
    assert_eq!(out.lines(), [RUNNING]);
}

#[test]
fn transaction_over_several_lines() {
    let qemu = start(Monitor::Unix);
    let input = "blockdev-add driver=null-co node-name=n0\ntransaction(\nblock-dirty-bitmap-add node=n0 name=b0\nblock-dirty-bitmap-add node=n0 name=b1 persistent=false\n)\ntransaction( abort )\n";
    let out = shell(&qemu, &[], input);
    out.assert_clean();
    assert_eq!(
        out.lines(),
        [
            r#"{"return": {}}"#,
            r#"{"return": {}}"#,
            r#"{"error": {"class": "GenericError", "desc": "Transaction aborted using Abort action"}}"#,
        ]
    );
}

#[test]
fn events_print_as_they_arrive() {
    // A second monitor to make QEMU send an event while the shell waits for input.
    let tmp = TempDir::new("second-monitor");
    let second = tmp.path().join("second.sock");
    let qemu = Qemu::builder(Monitor::Unix)
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", second.display()))
        .start()
        .unwrap_or_else(|e| panic!("start QEMU: {e}"));
    let mut child = spawn(SHELL, &[&address_arg(&qemu)], None);
    let mut stdin = child.stdin.take().expect("stdin");
    let lines = Lines::new(child.stdout.take().expect("stdout"));
    send(&mut stdin, "query-status");
    assert_eq!(lines.next(), RUNNING);

    let mut other = qmp_std::ClientBuilder::new()
        .command_timeout(Some(LIMIT))
        .connect_unix(&second)
        .expect("connect to the second monitor");
    other.execute(&qmp_std::commands::Stop).expect("stop");
    assert_eq!(event(&lines.next()), json!({"event": "STOP"}));
    other
        .execute(&qmp_std::commands::SystemReset)
        .expect("system_reset");
    assert_eq!(
        event(&lines.next()),
        json!({"event": "RESET", "data": {"guest": false, "reason": "host-qmp-system-reset"}})
    );

    drop(stdin);
    let out = finish(child);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "status {}, stderr {}",
        out.status,
        out.stderr
    );
}

#[test]
fn quit_ends_the_shell() {
    let tmp = TempDir::new("quit");
    let out = run(SHELL, &[], "quit\nquery-status\n", Some(&tmp));
    out.assert_clean();
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(
        event(lines[0]),
        json!({"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}})
    );
    assert_eq!(lines[1], r#"{"return": {}}"#);
    tmp.assert_cleaned_up();
}

#[test]
fn qemu_going_away_is_an_error() {
    let mut qemu = start(Monitor::Unix);
    let mut child = spawn(SHELL, &[&address_arg(&qemu)], None);
    let mut stdin = child.stdin.take().expect("stdin");
    let lines = Lines::new(child.stdout.take().expect("stdout"));
    send(&mut stdin, "query-status");
    assert_eq!(lines.next(), RUNNING);
    qemu.kill().expect("kill QEMU");
    let out = finish(child);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stderr,
        "qmp-shell: the QMP server closed the connection\n"
    );
    drop(stdin);
}

#[test]
fn bad_lines_are_reported_and_skipped() {
    let qemu = start(Monitor::Unix);
    let out = shell(
        &qemu,
        &[],
        "query-status x\nquery-status a=1 a=2\n{\"execute\": \n[1]\n{} {}\nquery-status\n",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.lines(), [RUNNING]);
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors.len(), 5, "{}", out.stderr);
    assert!(errors[0].starts_with("qmp-shell: bad line: expected KEY=VALUE, got \"x\""));
    assert!(errors[1].contains("\"a\" is set twice"), "{}", errors[1]);
    assert!(
        errors[2].starts_with("qmp-shell: invalid JSON: "),
        "{}",
        errors[2]
    );
    assert_eq!(errors[3], "qmp-shell: a JSON line must be an object");
    assert!(
        errors[4].starts_with("qmp-shell: invalid JSON: "),
        "{}",
        errors[4]
    );
}

#[test]
fn a_bad_address_is_one_line_on_stderr() {
    let tmp = TempDir::new("bad-address");
    let path = tmp.path().join("x.sock");
    let out = run(SHELL, &[path.to_str().unwrap()], "query-status\n", None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        format!(
            "qmp-shell: cannot connect to {}: No such file or directory\n",
            path.display()
        )
    );

    // A port nobody listens on (free a moment ago).
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = run(SHELL, &[&format!("127.0.0.1:{port}")], "", None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stderr,
        format!("qmp-shell: cannot connect to 127.0.0.1:{port}: Connection refused\n")
    );
}

#[test]
fn usage() {
    let out = run(SHELL, &["--help"], "", None);
    out.assert_clean();
    assert!(
        out.stdout
            .starts_with("usage: qmp-shell [-p] [-H] [-N] [-v] [ADDRESS]\n")
    );
    assert!(out.stdout.contains("-N, --skip-negotiation"));

    for bad in [
        &["-x"][..],
        &["a.sock", "b.sock"],
        &["--pretty=yes"],
        &["host:0"],
    ] {
        let out = run(SHELL, bad, "", None);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert_eq!(out.stdout, "");
        assert!(
            out.stderr
                .contains("\nusage: qmp-shell [-p] [-H] [-N] [-v] [ADDRESS]\n"),
            "{bad:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn closed_stdout_ends_the_shell_quietly() {
    let tmp = TempDir::new("stdout-closed");
    let mut child = spawn(SHELL, &[], Some(&tmp));
    let mut stdin = child.stdin.take().expect("stdin");
    let lines = Lines::new(child.stdout.take().expect("stdout"));
    send(&mut stdin, "query-status");
    assert_eq!(lines.next(), RUNNING);
    drop(lines); // The reader thread ends on the next line and closes the pipe.
    for _ in 0..3 {
        // The shell may be gone already: a failed write is fine.
        let _ = std::io::Write::write_all(&mut stdin, b"query-status\n");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = finish(child);
    assert!(out.status.success(), "{out:?}");
    tmp.assert_cleaned_up();
}
