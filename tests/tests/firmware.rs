//! End to end: the freestanding `qmp-firmware` (examples/qmp-firmware: `#![no_std]`, no libc,
//! its own `_start`, raw system calls) runs a whole QMP session against a real QEMU, with its
//! standard input and standard output both on QEMU's pty monitor, and reports each step on its
//! standard error, which these tests read.
//!
//! # Finding the binary
//! The firmware is another package's binary, so Cargo does not build it for these tests
//! (`CARGO_BIN_EXE_*` only exists for the tested package's own binaries, and the firmware's
//! bin is `test = false`). [`firmware`] therefore runs `$CARGO build -p qmp-firmware` itself
//! (once per test process; a no-op when it is up to date) with `--message-format=json` and
//! takes the path from Cargo's own `compiler-artifact` message (`"executable"`). That is the
//! one answer that is always right: it follows `CARGO_TARGET_DIR`, `build.target-dir` in any
//! config file, and the profile, and it can never pick up a stale binary, which guessing
//! `target/debug/deps/../qmp-firmware` from the test binary's path could. The profile matches
//! the tests' (`--release` when they are built without debug assertions).

mod support;

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use qmp_e2e::{Address, Monitor, Qemu, open_pty};

/// How long one run of the firmware may take before it is killed (a session takes a few
/// milliseconds, plus up to a second for QEMU to notice the opened pty).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The firmware binary, built by Cargo (see the module documentation).
fn firmware() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_firmware().unwrap_or_else(|e| panic!("{e}")))
}

fn build_firmware() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .args(["build", "-p", "qmp-firmware", "--bin", "qmp-firmware"])
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
            "`cargo build -p qmp-firmware` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    stdout
        .lines()
        .filter(|line| {
            line.contains(r#""reason":"compiler-artifact""#)
                && line.contains(r#""name":"qmp-firmware""#)
        })
        .find_map(|line| {
            let rest = line.split_once(r#""executable":""#)?.1;
            let path = rest.split_once('"')?.0;
            // A path with JSON escapes in it would need a JSON parser; none is expected.
            (!path.contains('\\')).then(|| PathBuf::from(path))
        })
        .ok_or_else(|| format!("Cargo named no qmp-firmware executable:\n{stdout}"))
}

/// What the firmware did: its exit status and its report (standard error).
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stderr: String,
}

/// Runs the firmware with both its standard input and standard output on `pty` (two handles
/// of it), collecting its standard error; kills it and fails the test after [`RUN_TIMEOUT`].
fn run_firmware(pty: &File) -> Run {
    run_with(
        Stdio::from(pty.try_clone().expect("dup the pty for stdin")),
        Stdio::from(pty.try_clone().expect("dup the pty for stdout")),
    )
}

fn run_with(stdin: Stdio, stdout: Stdio) -> Run {
    // The `Command` (and with it this process's copies of the descriptors) is dropped at once.
    let mut child = Command::new(firmware())
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .env_clear()
        .spawn()
        .expect("start qmp-firmware");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for qmp-firmware") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stderr = reader.join().expect("stderr reader");
    match status {
        Some(status) => Run { status, stderr },
        None => panic!(
            "qmp-firmware did not finish within {RUN_TIMEOUT:?}; its report so far:\n{stderr}"
        ),
    }
}

/// One expected line of the report.
enum Expect {
    /// Exactly this line.
    Line(String),
    /// An event line: this prefix, then a timestamp `SECONDS.MICROSECONDS` (6 digits).
    Event(&'static str),
    /// A line starting with this.
    Prefix(&'static str),
}

/// Checks that the firmware ran the whole session, line by line, and exited with 0.
#[track_caller]
fn assert_whole_session(run: &Run) {
    let (version, package) = support::qemu_version();
    let expected = [
        Expect::Prefix("qmp-firmware: client RAM "),
        Expect::Line(format!(
            "qmp-firmware: greeting QEMU {version}, oob offered"
        )),
        Expect::Line(
            "qmp-firmware: capabilities negotiated (oob not enabled), command mode".into(),
        ),
        Expect::Line(format!(
            "qmp-firmware: query-version: QEMU {version}, package {package}"
        )),
        Expect::Line("qmp-firmware: query-status: running (running: true)".into()),
        Expect::Line("qmp-firmware: stop: ok".into()),
        Expect::Event("qmp-firmware: event STOP at "),
        Expect::Line("qmp-firmware: query-status: paused (running: false)".into()),
        Expect::Line("qmp-firmware: cont: ok".into()),
        Expect::Event("qmp-firmware: event RESUME at "),
        Expect::Line(
            "qmp-firmware: no-such-command: error CommandNotFound: \
             The command no-such-command has not been found"
                .into(),
        ),
        Expect::Line("qmp-firmware: query-status: running (running: true)".into()),
        Expect::Line("qmp-firmware: session complete".into()),
    ];
    let lines: Vec<&str> = run.stderr.lines().collect();
    let context = || format!("{}\nthe firmware's report:\n{}", run.status, run.stderr);
    assert_eq!(lines.len(), expected.len(), "{}", context());
    for (line, expect) in lines.iter().zip(&expected) {
        let ok = match expect {
            Expect::Line(want) => line == want,
            Expect::Prefix(prefix) => line.starts_with(prefix),
            Expect::Event(prefix) => line.strip_prefix(prefix).is_some_and(|stamp| {
                stamp.split_once('.').is_some_and(|(s, us)| {
                    !s.is_empty()
                        && s.bytes().all(|b| b.is_ascii_digit())
                        && us.len() == 6
                        && us.bytes().all(|b| b.is_ascii_digit())
                })
            }),
        };
        assert!(ok, "unexpected line {line:?}; {}", context());
    }
    assert_eq!(run.status.code(), Some(0), "{}", context());
}

/// Checks that `path` is a statically linked x86-64 ELF executable: no `PT_INTERP` (no
/// dynamic loader), no `PT_DYNAMIC` (nothing to relocate or load at run time), and type
/// `ET_EXEC` (not position-independent: `_start` applies no relocations).
#[track_caller]
fn assert_static_elf(path: &Path) {
    const ET_EXEC: u16 = 2;
    const EM_X86_64: u16 = 62;
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;

    let elf = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!((elf[4], elf[5]), (2, 1), "not a little-endian ELF64 file");
    assert_eq!(u16_at(0x10), ET_EXEC, "not a fixed-address executable");
    assert_eq!(u16_at(0x12), EM_X86_64, "not an x86-64 executable");
    let phoff = usize::try_from(u64_at(0x20)).unwrap();
    let (phentsize, phnum) = (usize::from(u16_at(0x36)), usize::from(u16_at(0x38)));
    let types: Vec<u32> = (0..phnum).map(|i| u32_at(phoff + i * phentsize)).collect();
    assert!(types.contains(&PT_LOAD), "no loadable segment: {types:?}");
    assert!(
        !types.contains(&PT_INTERP),
        "has a PT_INTERP (dynamic loader)"
    );
    assert!(!types.contains(&PT_DYNAMIC), "has a PT_DYNAMIC segment");
}

#[test]
fn firmware_binary_is_a_static_executable() {
    assert_static_elf(firmware());
}

/// The main test: QEMU started by the harness (settled, so one greeting), the firmware's
/// stdin and stdout on its pty.
#[test]
fn firmware_runs_a_whole_session_over_the_pty() {
    let mut qemu = Qemu::start(Monitor::Pty).expect("start QEMU with a pty monitor");
    let Address::Pty(path) = qemu.address().clone() else {
        panic!("not a pty: {}", qemu.address());
    };
    let pty = open_pty(&path).expect("open the pty");
    let run = run_firmware(&pty);
    drop(pty);
    assert_whole_session(&run);
    // The firmware left the VM running, and QEMU carries on after it hung up.
    assert!(qemu.is_running(), "QEMU exited: {}", qemu.output());
}

/// The pty opened before QEMU has attached its monitor: the greeting comes twice, back to
/// back, before the firmware starts; the client takes the first and drops the second.
#[test]
fn firmware_tolerates_the_double_greeting_of_an_early_opened_pty() {
    let early = support::start_early().expect("start QEMU");
    let pending = early.settled_pending_bytes().expect("FIONREAD on the pty");
    eprintln!(
        "{pending} bytes waited on {} when the firmware started (Debian's 7.2.22 greeting is \
         142 bytes with its CR LF, so 284 means two greetings)",
        early.path.display()
    );
    let run = run_firmware(&early.pty);
    assert_whole_session(&run);
}

/// A failed step is reported on the last line and in the exit status: with nothing on the
/// link (end of file at once), the greeting step fails with exit status 10.
#[test]
fn firmware_reports_the_failed_step_in_its_exit_status() {
    let null = || {
        let file = File::options().read(true).write(true).open("/dev/null");
        Stdio::from(file.expect("open /dev/null"))
    };
    let run = run_with(null(), null());
    assert_eq!(run.status.code(), Some(10), "{}", run.stderr);
    assert_eq!(
        run.stderr.lines().last(),
        Some("qmp-firmware: FAILED at greeting (exit 10): the link ended (end of file)"),
        "{}",
        run.stderr
    );
}
