//! End to end: the bare-metal `qmp-guest` (examples/qmp-guest), booted by a real
//! `qemu-system-x86_64 -machine pc -kernel`, holds a QMP session over its emulated 16550 UART
//! (COM1), reports each step on COM2 (a file here) and ends the VM through `isa-debug-exit`:
//! QEMU's exit status is 1 when every step passed and `2 * N + 1` when step N failed.
//!
//! The wirings: the guest's COM1 connected to a monitor of its own VM, to a monitor of another
//! QEMU (watched by an observer on a second monitor of that QEMU), and to sockets of this test
//! that say nothing or cut the connection, where the guest must fail the step within its
//! deadline.
//!
//! The guest is another package's binary; it is built the way `firmware.rs` builds
//! qmp-firmware: `$CARGO build -p qmp-guest`, with the path from Cargo's own
//! `compiler-artifact` message.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use qmp_e2e::{Address, Monitor, QEMU_PROGRAM, Qemu};
use qmp_std::commands::QueryStatus;

/// How long one boot of the guest may take before QEMU is killed and the test fails. A whole
/// session takes well under a second; a failing step takes its deadline.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The guest's deadline per step (`STEP_TIMEOUT` in examples/qmp-guest/src/app.rs).
const STEP_DEADLINE_MS: u64 = 3000;

/// The guest kernel, built by Cargo.
fn guest() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_guest().unwrap_or_else(|e| panic!("{e}")))
}

fn build_guest() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .args(["build", "-p", "qmp-guest", "--bin", "qmp-guest"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "`cargo build -p qmp-guest` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    stdout
        .lines()
        .filter(|line| {
            line.contains(r#""reason":"compiler-artifact""#)
                && line.contains(r#""name":"qmp-guest""#)
        })
        .find_map(|line| {
            let rest = line.split_once(r#""executable":""#)?.1;
            let path = rest.split_once('"')?.0;
            (!path.contains('\\')).then(|| PathBuf::from(path))
        })
        .ok_or_else(|| format!("Cargo named no qmp-guest executable:\n{stdout}"))
}

/// A fresh directory for one test's sockets and report, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "qmp-guest-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create a temporary directory");
        Self(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What one boot did: QEMU's exit status, the report (COM2) without its `qmp-guest: `
/// prefixes, and how long QEMU ran.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    report: Vec<String>,
    elapsed: Duration,
}

impl Run {
    /// The report's line starting with `prefix`.
    #[track_caller]
    fn line(&self, prefix: &str) -> &str {
        self.report
            .iter()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no report line starts with {prefix:?}: {self:#?}"))
    }

    /// The milliseconds in a `step N NAME: FAILED at T ms: WHY` line.
    #[track_caller]
    fn failed_at_ms(&self, step: &str) -> u64 {
        let line = self.line(&format!("{step}: FAILED at "));
        let rest = &line[step.len() + ": FAILED at ".len()..];
        rest.split_once(" ms: ")
            .and_then(|(ms, _)| ms.parse().ok())
            .unwrap_or_else(|| panic!("unexpected failure line {line:?}"))
    }
}

/// Boots the guest in `qemu-system-x86_64 -machine pc` with COM1 as `com1` (a `-serial`
/// argument), COM2 into a file of `dir`, `isa-debug-exit`, and the extra `args`; waits for
/// QEMU to exit (killing it and failing the test after [`RUN_TIMEOUT`]).
fn boot(dir: &TempDir, com1: &str, args: &[&str]) -> Run {
    let report_path = dir.path("report.txt");
    let started = Instant::now();
    let mut child = Command::new(QEMU_PROGRAM)
        .args(["-machine", "pc", "-accel", "tcg", "-m", "32"])
        .args(["-display", "none", "-nodefaults", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .args(args)
        .args(["-serial", com1])
        .arg("-serial")
        .arg(format!("file:{}", report_path.display()))
        .arg("-kernel")
        .arg(guest())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for QEMU") {
            break Some(status);
        }
        if started.elapsed() >= RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    let output = child.wait_with_output().expect("QEMU's output");
    let report = fs::read_to_string(&report_path).unwrap_or_default();
    let report = report
        .lines()
        .map(|line| {
            line.strip_prefix("qmp-guest: ")
                .unwrap_or_else(|| panic!("report line without prefix: {line:?}"))
                .to_owned()
        })
        .collect();
    match status {
        Some(status) => Run {
            status,
            report,
            elapsed,
        },
        None => panic!(
            "QEMU did not exit within {RUN_TIMEOUT:?}; report so far: {report:#?}\nQEMU said: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// The report of a session in which every step passed: exactly these lines, in this order
/// (the first and the last two carry measurements).
#[track_caller]
fn assert_all_steps_passed(run: &Run) {
    assert_eq!(run.status.code(), Some(1), "QEMU's exit status: {run:#?}");
    let (version, _) = support::qemu_version();
    let expected = [
        "booted, TSC ".to_owned(),
        format!("step 1 handshake: ok, QEMU {version}"),
        format!("step 2 query-version: ok, QEMU {version}"),
        "step 3 query-status: ok, running".to_owned(),
        "step 4 stop: ok, STOP event".to_owned(),
        "step 5 cont: ok, RESUME event".to_owned(),
        "step 6 query-status: ok, running".to_owned(),
        "all steps passed in ".to_owned(),
        "client RAM ".to_owned(),
    ];
    assert_eq!(run.report.len(), expected.len(), "{run:#?}");
    for (line, expected) in run.report.iter().zip(&expected) {
        if expected.ends_with(' ') {
            assert!(
                line.starts_with(expected.as_str()),
                "{line:?} vs {expected:?}: {run:#?}"
            );
        } else {
            assert_eq!(line, expected, "{run:#?}");
        }
    }
    assert!(run.report[8].ends_with("; exit code 0"), "{run:#?}");
}

/// Wiring (1): COM1 is a client chardev socket connected to the server chardev socket of this
/// same VM's control monitor. The guest stops and resumes the VM it runs in.
#[test]
fn the_guest_controls_its_own_vm() {
    let dir = TempDir::new();
    let socket = dir.path("qmp.sock");
    let server = format!("socket,id=mon,path={},server=on,wait=off", socket.display());
    let client = format!("socket,id=link,path={}", socket.display());
    let run = boot(
        &dir,
        "chardev:link",
        &[
            "-chardev",
            &server,
            "-mon",
            "chardev=mon,mode=control",
            "-chardev",
            &client,
        ],
    );
    assert_all_steps_passed(&run);
}

/// Wiring (2): COM1 is connected to the monitor of another QEMU; an observer on a second
/// monitor of that QEMU sees the `STOP` and the `RESUME` that the guest caused.
#[test]
fn the_guest_controls_another_qemu() {
    let dir = TempDir::new();
    let observer_socket = dir.path("observer.sock");
    let target = Qemu::builder(Monitor::Unix)
        .arg("-chardev")
        .arg(format!(
            "socket,id=observer,path={},server=on,wait=off",
            observer_socket.display()
        ))
        .args(["-mon", "chardev=observer,mode=control"])
        .start()
        .expect("start the target QEMU");
    let Address::Unix(target_socket) = target.address() else {
        panic!("a Unix monitor has a Unix address");
    };
    let mut observer = qmp_std::Client::connect_unix(&observer_socket).expect("observer connects");

    let link = format!("socket,id=link,path={}", target_socket.display());
    let run = boot(&dir, "chardev:link", &["-chardev", &link]);
    assert_all_steps_passed(&run);

    let stop = observer
        .wait_event("STOP", Duration::from_secs(5))
        .expect("the observer sees STOP");
    let resume = observer
        .wait_event("RESUME", Duration::from_secs(5))
        .expect("the observer sees RESUME");
    assert_eq!(
        (stop.name.as_str(), resume.name.as_str()),
        ("STOP", "RESUME")
    );
    let status = observer.execute(&QueryStatus).expect("query-status");
    assert!(status.running, "{status:?}");
}

/// COM1 connected to a socket that accepts and then says nothing: the handshake (step 1)
/// fails when its deadline passes, and the VM ends with step 1's code (QEMU's status 3).
#[test]
fn a_silent_monitor_fails_the_handshake_within_its_deadline() {
    let dir = TempDir::new();
    let socket = dir.path("silent.sock");
    let listener = UnixListener::bind(&socket).expect("listen");
    let acceptor = thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let link = format!("socket,id=link,path={}", socket.display());
    let run = boot(&dir, "chardev:link", &["-chardev", &link]);
    let _held_open = acceptor.join().expect("acceptor").expect("QEMU connected");

    assert_eq!(run.status.code(), Some(3), "{run:#?}");
    let at = run.failed_at_ms("step 1 handshake");
    assert!(
        (STEP_DEADLINE_MS..STEP_DEADLINE_MS + 1000).contains(&at),
        "failed at {at} ms: {run:#?}"
    );
    assert!(
        run.line("step 1 handshake: FAILED")
            .ends_with(": timed out"),
        "{run:#?}"
    );
    assert!(run.elapsed < Duration::from_secs(10), "{run:#?}");
}

/// No COM1 backend at all (`-serial null`): the guest still boots, reports, and fails the
/// handshake within its deadline.
#[test]
fn without_a_link_the_guest_boots_and_fails_the_handshake() {
    let dir = TempDir::new();
    let run = boot(&dir, "null", &[]);
    assert_eq!(run.status.code(), Some(3), "{run:#?}");
    assert!(run.line("booted, TSC ").ends_with(" MHz"), "{run:#?}");
    assert!(
        run.line("client RAM ").ends_with("; exit code 1"),
        "{run:#?}"
    );
}

/// COM1 connected to a socket that plays QEMU for the handshake, then closes the connection
/// when `query-version` comes: step 2 fails within its deadline (a UART has no end of stream,
/// so the cut shows as silence), and QEMU's status is 5.
#[test]
fn a_cut_link_fails_the_step_within_its_deadline() {
    let dir = TempDir::new();
    let socket = dir.path("cut.sock");
    let listener = UnixListener::bind(&socket).expect("listen");
    let server = thread::spawn(move || -> std::io::Result<Vec<String>> {
        let (mut stream, _) = listener.accept()?;
        stream.write_all(
            b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \
              \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n",
        )?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut seen = Vec::new();
        let mut command = Vec::new();
        // The guest writes commands without newlines: read up to each closing brace.
        while seen.len() < 2 {
            command.clear();
            reader.read_until(b'}', &mut command)?;
            seen.push(String::from_utf8_lossy(&command).into_owned());
            if seen.len() == 1 {
                stream.write_all(b"{\"return\": {}, \"id\": 1}\r\n")?;
            }
        }
        Ok(seen) // dropping the stream cuts the link
    });
    let link = format!("socket,id=link,path={}", socket.display());
    let run = boot(&dir, "chardev:link", &["-chardev", &link]);
    let seen = server.join().expect("server").expect("server I/O");

    assert_eq!(seen[0], r#"{"execute":"qmp_capabilities","id":1}"#);
    assert_eq!(seen[1], r#"{"execute":"query-version","id":2}"#);
    assert_eq!(run.status.code(), Some(5), "{run:#?}");
    assert_eq!(run.line("step 1 "), "step 1 handshake: ok, QEMU 7.2.0");
    let at = run.failed_at_ms("step 2 query-version");
    assert!(
        (STEP_DEADLINE_MS..STEP_DEADLINE_MS + 1000).contains(&at),
        "failed at {at} ms: {run:#?}"
    );
    assert!(run.elapsed < Duration::from_secs(10), "{run:#?}");
}
