//! End-to-end tests of the `qmp-shell` binary, driven through pipes against a real QEMU 7.2:
//! one the shell starts itself (`qmp-shell -- qemu-system-x86_64 ...`), or one the `qmp-e2e`
//! harness started (one per test, so the tests run in parallel).

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{LIMIT, Lines, TempDir, address_arg, finish, run, send, spawn};
use qmp_e2e::{Monitor, Qemu};
use qmp_std::serde_json::{Value, json};

const SHELL: &str = env!("CARGO_BIN_EXE_qmp-shell");

/// QEMU's reply to `query-status`, in QEMU's member order.
const RUNNING: &str = r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#;

/// `qmp-shell -- QEMU ARGS`: the shell starts (and stops) a `-machine none` QEMU of its own.
const OWN_QEMU: [&str; 7] = [
    "--",
    "qemu-system-x86_64",
    "-machine",
    "none",
    "-nodefaults",
    "-display",
    "none",
];

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
fn a_qemu_of_its_own_answers_and_goes_away() {
    let tmp = TempDir::new("own");
    let out = run(
        SHELL,
        &OWN_QEMU,
        "query-status\nquery-version\n",
        Some(&tmp),
    );
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
    let out = run(SHELL, &OWN_QEMU, "", Some(&tmp));
    out.assert_clean();
    assert_eq!(out.stdout, "");
    tmp.assert_cleaned_up();
}

#[test]
fn ctrl_c_stops_the_qemu_it_started() {
    let tmp = TempDir::new("sigint");
    let mut child = spawn(SHELL, &OWN_QEMU, Some(&tmp));
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
qom-get path=/nope property=type
stop
cont
"#;
    let out = shell(&qemu, &[], input);
    // Two commands failed: reported by line, and the exit status says so.
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stderr,
        "qmp-shell: line 11: CommandNotFound: The command nope has not been found\n\
         qmp-shell: line 12: DeviceNotFound: Device '/nope' not found\n"
    );
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
        r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": {"n": [1, 2.5]}}"#
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
        r#"{"error": {"class": "DeviceNotFound", "desc": "Device '/nope' not found"}}"#
    );
    // Events print as JSON lines, before the reply of the command that caused them.
    assert_eq!(event(lines[11]), json!({"event": "STOP"}));
    assert_eq!(lines[12], r#"{"return": {}}"#);
    assert_eq!(event(lines[13]), json!({"event": "RESUME"}));
    assert_eq!(lines[14], r#"{"return": {}}"#);
}

#[test]
fn verbose_shows_the_exact_bytes_each_way_and_the_log_records_them() {
    let qemu = start(Monitor::Unix);
    let tmp = TempDir::new("verbose");
    let proxy = Proxy::start(&address_arg(&qemu), &tmp.path().join("proxy.sock"));
    let log = tmp.path().join("session.log");
    let input = "query-name\nblockdev-add driver=raw node-name=r0 file.driver=null-co file.size=1024\n{\"execute\": \"query-kvm\", \"id\": 7}\nstop\n";
    let out = run(
        SHELL,
        &["-v", "-l", log.to_str().unwrap(), proxy.path()],
        input,
        None,
    );
    out.assert_clean();
    let lines = out.lines();
    assert_eq!(lines.len(), 9, "{}", out.stdout);
    // As sent: the client's compact JSON, without an id when alone in flight.
    assert_eq!(lines[0], r#"{"execute":"query-name"}"#);
    assert_eq!(lines[1], r#"{"return": {}}"#);
    assert_eq!(
        lines[2],
        r#"{"execute":"blockdev-add","arguments":{"driver":"raw","file":{"driver":"null-co","size":1024},"node-name":"r0"}}"#
    );
    assert_eq!(lines[3], r#"{"return": {}}"#);
    assert_eq!(lines[4], r#"{"execute":"query-kvm","id":7}"#);
    assert_eq!(
        lines[5],
        r#"{"return": {"enabled": false, "present": true}, "id": 7}"#
    );
    assert_eq!(lines[6], r#"{"execute":"stop"}"#);
    assert!(
        lines[7].starts_with(r#"{"timestamp": {"seconds": "#),
        "{}",
        lines[7]
    );
    assert_eq!(lines[8], r#"{"return": {}}"#);

    // What went over the socket, seen by a proxy in between: the client's bytes are the
    // negotiation and then exactly the lines shown, with the shell's own query for the
    // schema before the first command with arguments (to check them; not shown); QEMU's
    // are the greeting, the negotiation's reply and exactly the lines shown, with the
    // schema, each ended by QEMU's `\r\n`.
    let (sent, received) = proxy.finish();
    let negotiation = r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}"#;
    let schema = r#"{"execute":"query-qmp-schema"}"#;
    let [query_name, add, kvm, stop] = [0, 2, 4, 6].map(|i| lines[i]);
    assert_eq!(
        sent,
        format!("{negotiation}{query_name}{schema}{add}{kvm}{stop}")
    );
    let received: Vec<&str> = received.split_terminator("\r\n").collect();
    assert!(received[0].starts_with(r#"{"QMP": "#), "{}", received[0]);
    assert_eq!(received[1], r#"{"return": {}, "id": 1}"#);
    assert_eq!(received[2], lines[1]);
    assert!(received[3].starts_with(r#"{"return": [{"name": "#));
    assert_eq!(received[4..], [3, 5, 7, 8].map(|i| lines[i]));

    // The log has every message, in order, with direction and time.
    let text = std::fs::read_to_string(&log).expect("the log");
    let transcript = qmp_std::transcript::Transcript::parse(&text).expect("a transcript");
    let logged: Vec<(String, String)> = transcript
        .entries()
        .iter()
        .map(|e| (e.direction.as_str().to_owned(), e.message.clone()))
        .collect();
    let mut expected = vec![("in".to_owned(), received[0].to_owned())];
    expected.push(("out".into(), negotiation.into()));
    expected.push(("in".into(), received[1].into()));
    for i in [0, 1, 2, 3, 4, 5, 6, 7, 8] {
        let dir = if [0, 2, 4, 6].contains(&i) {
            "out"
        } else {
            "in"
        };
        if i == 2 {
            expected.push(("out".into(), schema.into()));
            expected.push(("in".into(), received[3].into()));
        }
        expected.push((dir.into(), lines[i].into()));
    }
    assert_eq!(logged, expected);
    let first = transcript.entries()[0].time;
    let age = std::time::SystemTime::now()
        .duration_since(first)
        .expect("in the past");
    assert!(age < LIMIT, "{age:?}");
    assert!(text.starts_with(r#"{"dir":"in","t":"#), "{text}");
}

/// A Unix socket proxy in front of a QEMU monitor that keeps every byte each way.
struct Proxy {
    path: std::path::PathBuf,
    thread: Option<std::thread::JoinHandle<(String, String)>>,
}

impl Proxy {
    fn start(qemu: &str, path: &std::path::Path) -> Proxy {
        use std::io::{Read, Write};
        use std::os::unix::net::{UnixListener, UnixStream};
        let listener = UnixListener::bind(path).expect("bind the proxy");
        let qemu = qemu.to_owned();
        let thread = std::thread::spawn(move || {
            let (client, _) = listener.accept().expect("accept");
            let server = UnixStream::connect(&qemu).expect("connect to QEMU");
            let pump = |mut from: UnixStream, mut to: UnixStream| {
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                seen.extend_from_slice(&buf[..n]);
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                    String::from_utf8(seen).expect("UTF-8")
                })
            };
            let up = pump(client.try_clone().unwrap(), server.try_clone().unwrap());
            let down = pump(server, client);
            (up.join().unwrap(), down.join().unwrap())
        });
        Proxy {
            path: path.to_owned(),
            thread: Some(thread),
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("UTF-8")
    }

    /// The bytes the client sent, and those QEMU sent.
    fn finish(mut self) -> (String, String) {
        self.thread.take().unwrap().join().expect("the proxy")
    }
}

#[test]
fn hmp_mode() {
    let qemu = start(Monitor::Unix);
    let out = shell(
        &qemu,
        &["-H"],
        "info status\nstop\ninfo status\n\nno-such-command\ncpu 0\n",
    );
    let lines = out.lines();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert_eq!(lines[0], "VM status: running");
    assert_eq!(event(lines[1]), json!({"event": "STOP"}));
    assert_eq!(lines[2], "VM status: paused");
    assert_eq!(lines[3], "unknown command: 'no-such-command'");
    // `-machine none` has no CPU 0: QEMU's message, not its JSON.
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stderr,
        "qmp-shell: line 6: Parameter 'cpu-index' expects a CPU number\n"
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
    assert_eq!(out.status.code(), Some(1), "two commands failed");
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
        "{\n    \"return\": {\n        \"status\": \"running\",\n        \"singlestep\": false,\n        \"running\": true\n    }\n}\n{\n    \"return\": {}\n}\n"
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
    assert_eq!(
        out.lines(),
        [
            r#"{"return": {}}"#,
            r#"{"return": {}}"#,
            r#"{"error": {"class": "GenericError", "desc": "Transaction aborted using Abort action"}}"#,
        ]
    );
    assert_eq!(
        out.stderr,
        "qmp-shell: line 6: GenericError: Transaction aborted using Abort action\n"
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
    let out = run(SHELL, &OWN_QEMU, "quit\nquery-status\n", Some(&tmp));
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
fn bad_lines_are_reported_by_number_and_skipped() {
    let qemu = start(Monitor::Unix);
    let input = "query-status x\n# a comment: not sent\n  # another\nquery-status a=1 a=2\n{\"execute\": \n[1]\n{} {}\nqom-get 'path=/machine' property=type\nquery-status\n";
    let out = shell(&qemu, &[], input);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.lines(), [RUNNING]);
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors.len(), 6, "{}", out.stderr);
    assert_eq!(
        errors[0],
        "qmp-shell: line 1: bad line: expected KEY=VALUE, got \"x\" (format: COMMAND [KEY=VALUE ...])"
    );
    assert!(
        errors[1].starts_with("qmp-shell: line 4: bad line: \"a\" is set twice"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].starts_with("qmp-shell: line 5: invalid JSON: "),
        "{}",
        errors[2]
    );
    assert_eq!(
        errors[3],
        "qmp-shell: line 6: a JSON line must be an object"
    );
    assert!(
        errors[4].starts_with("qmp-shell: line 7: invalid JSON: "),
        "{}",
        errors[4]
    );
    assert_eq!(
        errors[5],
        "qmp-shell: line 8: bad line: quotes go around the value, not the whole KEY=VALUE: \
         write path='/machine', not 'path=/machine' (format: COMMAND [KEY=VALUE ...])"
    );
}

#[test]
fn bail_stops_at_the_first_failed_line() {
    let qemu = start(Monitor::Unix);
    let out = shell(&qemu, &["--bail"], "query-status\nnope\nstop\n");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.lines(),
        [
            RUNNING,
            r#"{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#
        ]
    );
    assert_eq!(
        out.stderr,
        "qmp-shell: line 2: CommandNotFound: The command nope has not been found\n"
    );
    // `stop` never ran.
    let out = shell(&qemu, &[], "query-status\n");
    assert_eq!(out.lines(), [RUNNING]);
}

#[test]
fn an_unfinished_transaction_is_an_error() {
    let qemu = start(Monitor::Unix);
    let out = shell(&qemu, &[], "query-status\ntransaction(\nabort\n");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.lines(), [RUNNING]);
    assert_eq!(
        out.stderr,
        "qmp-shell: line 2: transaction( is never closed with ) (nothing was sent)\n"
    );
}

#[test]
fn no_address_with_piped_input_is_an_error() {
    let tmp = TempDir::new("no-address");
    let out = run(SHELL, &[], "stop\n", Some(&tmp));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.starts_with(
            "qmp-shell: no QMP address: give ADDRESS, set $QMP_SOCKET, or start a QEMU with"
        ),
        "{}",
        out.stderr
    );
    // Nothing was started.
    tmp.assert_cleaned_up();

    let out = run(SHELL, &["localhost:abc"], "", None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr
            .starts_with("qmp-shell: bad ADDRESS \"localhost:abc\": bad port \"abc\" in HOST:PORT"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_address_can_come_from_qmp_socket() {
    let qemu = start(Monitor::Unix);
    // `spawn` clears QMP_SOCKET: this one is started by hand.
    let mut child = std::process::Command::new(SHELL)
        .env("QMP_SOCKET", address_arg(&qemu))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the shell");
    let mut stdin = child.stdin.take().expect("stdin");
    send(&mut stdin, "query-status");
    drop(stdin);
    let out = finish(child);
    out.assert_clean();
    assert_eq!(out.lines(), [RUNNING]);
}

#[test]
fn any_qemu_command_line_after_two_dashes() {
    let tmp = TempDir::new("wrap");
    let screen = tmp.path().join("screen.ppm");
    let input = format!(
        "query-status\nscreendump filename={}\ndevice_add driver=virtio-rng-pci id=rng0\nqom-get path=/machine/peripheral/rng0 property=type\n",
        screen.display()
    );
    let out = run(
        SHELL,
        &[
            "--",
            "qemu-system-x86_64",
            "-machine",
            "pc",
            "-display",
            "none",
            "-S",
        ],
        &input,
        Some(&tmp),
    );
    out.assert_clean();
    assert_eq!(
        out.lines(),
        [
            r#"{"return": {"status": "prelaunch", "singlestep": false, "running": false}}"#,
            r#"{"return": {}}"#,
            r#"{"return": {}}"#,
            r#"{"return": "virtio-rng-pci"}"#,
        ]
    );
    let image = std::fs::read(&screen).expect("the screen dump");
    assert!(image.starts_with(b"P6\n"), "a PPM image");
    std::fs::remove_file(&screen).unwrap();
    // The QEMU it started is gone, its directory too.
    tmp.assert_cleaned_up();
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
    assert!(out.stdout.starts_with(
        "usage: qmp-shell [-p] [-H] [-N] [-v] [-l FILE] [--bail] [--no-check] [ADDRESS]\n"
    ));
    assert!(out.stdout.contains("-N, --skip-negotiation"));

    for bad in [
        &["-x"][..],
        &["a.sock", "b.sock"],
        &["--pretty=yes"],
        &["host:0"],
        &["--"],
        &["a.sock", "--", "qemu-system-x86_64"],
    ] {
        let out = run(SHELL, bad, "", None);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert_eq!(out.stdout, "");
        assert!(
            out.stderr.contains(
                "\nusage: qmp-shell [-p] [-H] [-N] [-v] [-l FILE] [--bail] [--no-check] [ADDRESS]\n"
            ),
            "{bad:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn closed_stdout_ends_the_shell_quietly() {
    let tmp = TempDir::new("stdout-closed");
    let mut child = spawn(SHELL, &OWN_QEMU, Some(&tmp));
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

#[test]
fn a_recorded_session_replays_without_qemu() {
    use qmp_std::replay::{Replay, ReplayError};
    use qmp_std::transcript::Transcript;

    let tmp = TempDir::new("replay");
    let log = tmp.path().join("session.log");
    let input = "query-status\nstop\nqom-get path=/machine property=type\nnope\n{\"execute\": \"query-name\", \"id\": \"mine\"}\ncont\n";
    let qemu = start(Monitor::Unix);
    let recorded = shell(&qemu, &["-l", log.to_str().unwrap()], input);
    drop(qemu);
    assert_eq!(recorded.status.code(), Some(1), "`nope` fails");
    assert_eq!(recorded.lines().len(), 8, "{}", recorded.stdout);
    let text = std::fs::read_to_string(&log).expect("the log");
    let transcript = Transcript::parse(&text).expect("a transcript");

    // The same input, against the replay instead of QEMU: the same output, byte for byte
    // (the events' timestamps included), and the replay saw what it expected.
    let socket = tmp.path().join("replay.sock");
    let socket_arg = socket.to_str().unwrap();
    let replay = Replay::listen_unix(transcript.clone(), &socket).expect("listen");
    let replayed = run(SHELL, &[socket_arg], input, None);
    assert_eq!(replayed.stdout, recorded.stdout);
    assert_eq!(replayed.stderr, recorded.stderr);
    assert_eq!(replayed.status.code(), Some(1));
    replay.finish().expect("the shell did what was recorded");

    // Another client, an id on every command: the replies carry its ids.
    let (stream, replay) = Replay::spawn_unix(transcript.clone()).expect("replay");
    let mut qmp = qmp_std::ClientBuilder::new()
        .untagged_when_alone(false)
        .command_timeout(Some(LIMIT))
        .handshake(stream)
        .expect("handshake");
    let status = qmp
        .execute(&qmp_std::commands::QueryStatus)
        .expect("status");
    assert!(status.running);
    qmp.execute(&qmp_std::commands::Stop).expect("stop");
    // The shell asked for the schema before its first command with arguments (to check
    // them).
    let schema = qmp_std::Schema::fetch(&mut qmp).expect("the recorded schema");
    assert!(schema.has_command("qom-get"));
    let args = json!({"path": "/machine", "property": "type"});
    assert_eq!(
        qmp.execute_raw("qom-get", &args).expect("qom-get"),
        json!("none-machine")
    );
    let nope = qmp.execute_raw("nope", &Value::Null).unwrap_err();
    assert!(
        nope.to_string().contains("nope has not been found"),
        "{nope}"
    );
    let reply = qmp
        .request(&json!({"execute": "query-name", "id": "mine"}))
        .expect("query-name");
    assert_eq!(reply, json!({"return": {}, "id": "mine"}));
    qmp.execute(&qmp_std::commands::Cont).expect("cont");
    assert_eq!(
        qmp.events().map(|e| e.name).collect::<Vec<_>>(),
        ["STOP", "RESUME"]
    );
    drop(qmp);
    replay.finish().expect("the client did what was recorded");

    // A client that asks for something else: the replay stops there, with a diff.
    let replay = Replay::listen_unix(transcript, &socket).expect("listen");
    let changed = input.replace("property=type", "property=kvm");
    let out = run(SHELL, &[socket_arg], &changed, None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stderr,
        "qmp-shell: the QMP server closed the connection\n"
    );
    let err = replay.finish().unwrap_err();
    assert!(matches!(err, ReplayError::Diverged(_)), "{err:?}");
    let diff = err.to_string();
    assert!(
        diff.contains(" at arguments.property\n  expected: \"type\"\n  got:      \"kvm\"\n"),
        "{diff}"
    );
}

/// The messages of a `-l` transcript that went out, by command name.
#[track_caller]
fn sent_commands(log: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).expect("the log");
    let transcript = qmp_std::transcript::Transcript::parse(&text).expect("a transcript");
    transcript
        .entries()
        .iter()
        .filter(|e| e.direction.as_str() == "out")
        .map(|e| {
            parse(&e.message)["execute"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

#[test]
fn arguments_that_do_not_fit_the_schema_are_refused_before_sending() {
    let qemu = start(Monitor::Unix);
    let tmp = TempDir::new("check");
    let log = tmp.path().join("session.log");
    let input = "\
blockdev-add driver=raw node-name=r0 file.driver=null-co file.sise=1024
blockdev-add driver=raw node-name=r0 file.driver=null-co file.size=big
set-action reboot=true
qom-get path=/machine
query-status
";
    let out = shell(&qemu, &["-v", "-l", log.to_str().unwrap()], input);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        "qmp-shell: line 1: blockdev-add: file.sise: no such member (did you mean \"size\"?); not sent (--no-check sends it anyway)\n\
         qmp-shell: line 2: blockdev-add: file.size: expected int, got string; not sent (--no-check sends it anyway)\n\
         qmp-shell: line 3: set-action: reboot: expected enum (a string), got boolean; not sent (--no-check sends it anyway)\n\
         qmp-shell: line 4: qom-get: property: missing (required); not sent (--no-check sends it anyway)\n"
    );
    // -v shows every message of the user's commands: only query-status went out.
    assert_eq!(out.lines(), [r#"{"execute":"query-status"}"#, RUNNING]);
    // The transcript has every message: the schema was asked for once, and none of the
    // refused commands was sent.
    assert_eq!(
        sent_commands(&log),
        ["qmp_capabilities", "query-qmp-schema", "query-status"]
    );

    // With -N, the schema can only be had once capabilities are negotiated: before, the
    // command goes to QEMU (which refuses everything then).
    let input = "qom-get path=/machine propery=type\nqmp_capabilities\nqom-get path=/machine propery=type\n";
    let out = shell(&qemu, &["-N"], input);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        "qmp-shell: line 1: CommandNotFound: Expecting capabilities negotiation with 'qmp_capabilities'\n\
         qmp-shell: line 3: qom-get: propery: no such member (did you mean \"property\"?); not sent (--no-check sends it anyway)\n"
    );
}

#[test]
fn no_check_sends_them_and_qemu_answers() {
    let qemu = start(Monitor::Unix);
    let tmp = TempDir::new("no-check");
    let log = tmp.path().join("session.log");
    let input = "\
blockdev-add driver=raw node-name=r0 file.driver=null-co file.sise=1024
set-action reboot=true
";
    let out = shell(&qemu, &["--no-check", "-l", log.to_str().unwrap()], input);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        "qmp-shell: line 1: GenericError: Parameter 'file.sise' is unexpected\n\
         qmp-shell: line 2: GenericError: Invalid parameter type for 'reboot', expected: string\n"
    );
    assert_eq!(
        out.lines(),
        [
            r#"{"error": {"class": "GenericError", "desc": "Parameter 'file.sise' is unexpected"}}"#,
            r#"{"error": {"class": "GenericError", "desc": "Invalid parameter type for 'reboot', expected: string"}}"#,
        ]
    );
    // No schema asked for: the commands went as typed.
    assert_eq!(
        sent_commands(&log),
        ["qmp_capabilities", "blockdev-add", "set-action"]
    );
}

#[test]
fn a_nested_blockdev_add_with_dotted_keys_passes_the_check_and_qemu() {
    let qemu = start(Monitor::Unix);
    let tmp = TempDir::new("check-ok");
    let log = tmp.path().join("session.log");
    let input = "\
blockdev-add driver=raw node-name=r0 file.driver=null-co file.size=1048576 file.read-zeroes=true cache.direct=false read-only=true
transaction( block-dirty-bitmap-add node=r0 name=b0 )
query-named-block-nodes flat=true
";
    let out = shell(&qemu, &["-l", log.to_str().unwrap()], input);
    out.assert_clean();
    let lines = out.lines();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert_eq!(lines[0], r#"{"return": {}}"#);
    assert_eq!(lines[1], r#"{"return": {}}"#);
    let nodes = parse(lines[2]);
    let nodes = nodes["return"].as_array().expect("a list of nodes");
    let raw = nodes.iter().find(|n| n["node-name"] == "r0").expect("r0");
    assert_eq!(raw["image"]["virtual-size"], 1048576);
    assert_eq!(raw["dirty-bitmaps"][0]["name"], "b0", "{raw}");
    assert_eq!(
        sent_commands(&log),
        [
            "qmp_capabilities",
            "query-qmp-schema",
            "blockdev-add",
            "transaction",
            "query-named-block-nodes"
        ]
    );
}

#[test]
fn help_describes_a_command() {
    let qemu = start(Monitor::Unix);
    let tmp = TempDir::new("help");
    let log = tmp.path().join("session.log");
    let input = "help blockdev-add\nquery-status?\nhelp blockdev-ad\nhelp\n";
    let out = shell(&qemu, &["-l", log.to_str().unwrap()], input);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        "qmp-shell: line 3: help: blockdev-ad: no such command (did you mean \"blockdev-add\"?)\n"
    );
    let text = &out.stdout;
    assert!(
        text.starts_with("blockdev-add arguments:\n  driver: enum: blkdebug, "),
        "{text}"
    );
    for line in [
        "\n  node-name (optional): string\n",
        "\n  cache (optional): object\n    cache.direct (optional): boolean\n",
        "\n  when driver is null-aio, null-co:\n    size (optional): int\n",
        "\nreturns: nothing\nquery-status: no arguments\nreturns: object\n  running: boolean\n",
        // `help` alone: the command names, one a line.
        "\nblockdev-add\nblockdev-backup\n",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    // Help is the shell's own: nothing but the schema was asked for.
    assert_eq!(
        sent_commands(&log),
        ["qmp_capabilities", "query-qmp-schema"]
    );

    // In -H mode, `help` is HMP's.
    let out = shell(&qemu, &["-H"], "help info\n");
    out.assert_clean();
    assert!(
        out.stdout.contains("info status  -- show the"),
        "{}",
        out.stdout
    );
}
