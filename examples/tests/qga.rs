//! End-to-end tests of the `qga` program against the real guest agent (`qemu-ga -m
//! unix-listen`, started by each test; host-changing commands blocked, see
//! `qmp_e2e::agent::BLOCKED`).

mod common;

use common::run;
use qmp_e2e::agent::QemuGa;

const QGA: &str = env!("CARGO_BIN_EXE_qga");

fn qga(agent: &QemuGa, args: &[&str]) -> common::Run {
    let address = agent.path().to_str().unwrap().to_owned();
    let mut all = vec![address.as_str()];
    all.extend_from_slice(args);
    run(QGA, &all, "", None)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn ping_info_osinfo_hostname_and_fsfreeze_status() {
    let agent = QemuGa::unix("qga-bin-basic");
    let ping = qga(&agent, &["ping"]);
    ping.assert_clean();
    assert_eq!(ping.stdout, "");

    let info = qga(&agent, &["info"]);
    info.assert_clean();
    let lines = info.lines();
    assert_eq!(lines[0], "version: 7.2.22");
    assert!(lines.contains(&"  guest-ping"), "{}", info.stdout);
    assert!(
        lines.contains(&"  guest-shutdown (disabled, no reply on success)"),
        "{}",
        info.stdout
    );

    let os = qga(&agent, &["osinfo"]);
    os.assert_clean();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        os.lines()
            .contains(&format!("kernel-release: {}", release.trim()).as_str()),
        "{}",
        os.stdout
    );

    let host = qga(&agent, &["hostname"]);
    host.assert_clean();
    assert_eq!(host.stdout, format!("{}\n", hostname()));

    let freeze = qga(&agent, &["fsfreeze", "status"]);
    freeze.assert_clean();
    assert_eq!(freeze.stdout, "thawed\n");
}

#[test]
fn exec_prints_output_and_exits_with_the_programs_status() {
    let agent = QemuGa::unix("qga-bin-exec");
    let out = qga(
        &agent,
        &[
            "exec",
            "--",
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    // Without `--`, and killed by a signal: 128 + 9.
    let killed = qga(&agent, &["exec", "/bin/sh", "-c", "kill -9 $$"]);
    assert_eq!(killed.status.code(), Some(137));
    let ok = qga(&agent, &["exec", "/bin/echo", "a", "b"]);
    ok.assert_clean();
    assert_eq!(ok.stdout, "a b\n");
}

#[test]
fn cat_prints_a_guest_file() {
    let agent = QemuGa::unix("qga-bin-cat");
    let path = agent.dir().join("hello.txt");
    let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&path, &text).unwrap();
    let out = qga(&agent, &["cat", path.to_str().unwrap()]);
    out.assert_clean();
    assert_eq!(out.stdout, text);
    let missing = qga(&agent, &["cat", "/nonexistent/file"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stderr.starts_with("qga: "), "{}", missing.stderr);
}

#[test]
fn raw_guest_commands_with_key_value_arguments() {
    let agent = QemuGa::unix("qga-bin-raw");
    let sync = qga(&agent, &["guest-sync", "id=12345"]);
    sync.assert_clean();
    assert_eq!(sync.stdout, "12345\n");
    let host = qga(&agent, &["guest-get-host-name"]);
    host.assert_clean();
    assert_eq!(
        host.stdout,
        format!("{{\"host-name\": \"{}\"}}\n", hostname())
    );
    // JSON values, and -p for pretty output.
    let exec = qga(
        &agent,
        &[
            "guest-exec",
            "path=/bin/true",
            "arg=[]",
            "capture-output=true",
        ],
    );
    exec.assert_clean();
    assert!(exec.stdout.starts_with("{\"pid\": "), "{}", exec.stdout);
    let address = agent.path().to_str().unwrap();
    let pretty = run(QGA, &["-p", address, "guest-get-host-name"], "", None);
    pretty.assert_clean();
    assert!(pretty.stdout.starts_with("{\n"), "{}", pretty.stdout);
    // The agent's error, and blocked commands.
    let nope = qga(&agent, &["guest-nope"]);
    assert_eq!(nope.status.code(), Some(1));
    assert!(
        nope.stderr.contains("guest-nope has not been found"),
        "{}",
        nope.stderr
    );
    let shutdown = qga(&agent, &["guest-shutdown", "mode=halt"]);
    assert_eq!(shutdown.status.code(), Some(1));
    assert!(shutdown.stderr.contains("disabled"), "{}", shutdown.stderr);
}

#[test]
fn usage_errors() {
    let none = run(QGA, &[], "", None);
    assert_eq!(none.status.code(), Some(2));
    assert!(none.stderr.contains("usage: qga"), "{}", none.stderr);
    let agent = QemuGa::unix("qga-bin-usage");
    let unknown = qga(&agent, &["frobnicate"]);
    assert_eq!(unknown.status.code(), Some(2));
    let bad_pair = qga(&agent, &["guest-ping", "novalue"]);
    assert_eq!(bad_pair.status.code(), Some(2));
    let nobody = run(QGA, &["/nonexistent/qga.sock", "ping"], "", None);
    assert_eq!(nobody.status.code(), Some(1));
}

#[test]
fn qmp_shell_with_qga_runs_agent_commands_from_its_input() {
    const SHELL: &str = env!("CARGO_BIN_EXE_qmp-shell");
    let agent = QemuGa::unix("qga-shell");
    let input = "guest-ping\n\
                 \n\
                 guest-sync id=42\n\
                 {\"execute\": \"guest-exec\", \"arguments\": {\"path\": \"/bin/true\"}}\n\
                 guest-nope\n\
                 guest-file-open path='/nonexistent file'\n";
    let out = run(
        SHELL,
        &["--qga", agent.path().to_str().unwrap()],
        input,
        None,
    );
    out.assert_clean();
    let lines = out.lines();
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    assert_eq!(lines[0], "{\"return\": {}}");
    assert_eq!(lines[1], "{\"return\": 42}");
    assert!(
        lines[2].starts_with("{\"return\": {\"pid\": "),
        "{}",
        lines[2]
    );
    assert!(lines[3].contains("CommandNotFound"), "{}", lines[3]);
    assert!(lines[4].contains("/nonexistent file"), "{}", lines[4]);
    // Without an address: a usage error.
    let none = run(SHELL, &["--qga"], "", None);
    assert_eq!(none.status.code(), Some(2));
}
