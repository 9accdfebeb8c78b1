//! Helpers shared by `firmware.rs` and `embedded_pty.rs`: the installed QEMU's version, and a
//! QEMU whose pty monitor is opened as early as possible, to get the pty's double greeting.
//!
//! [`qmp_e2e::Qemu::start`] waits until QEMU has settled before it hands out the pty, which
//! avoids the double greeting. This starts the same `qemu-system-x86_64 -machine none
//! -nodefaults -display none -chardev pty,id=ser0 -mon chardev=ser0,mode=control` directly and
//! opens the pty the moment QEMU announces it, before the monitor I/O thread has attached the
//! monitor: QEMU 7.2.22 then sends the greeting twice, back to back (seen every time on this
//! machine).

#![allow(dead_code)] // Each test file uses part of it.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use qmp_e2e::{PTY_LABEL, QEMU_PROGRAM, open_pty};

/// The version (`7.2.22`) and package (`Debian 1:7.2+dfsg-7+deb12u18+b3`) of the installed
/// QEMU, from `qemu-system-x86_64 --version`: what its greeting and `query-version` report.
pub fn qemu_version() -> (String, String) {
    let output = Command::new(QEMU_PROGRAM)
        .arg("--version")
        .output()
        .expect("run qemu-system-x86_64 --version");
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next().unwrap_or_default();
    // "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    let rest = first
        .split_once("version ")
        .unwrap_or_else(|| panic!("unexpected --version output: {text}"))
        .1;
    let (version, package) = match rest.split_once(" (") {
        Some((version, package)) => (version, package.trim_end_matches(')')),
        None => (rest.trim(), ""),
    };
    (version.to_owned(), package.to_owned())
}

/// [`qemu_version`] as QMP's `(major, minor, micro)`.
pub fn qemu_version_triple() -> (u64, u64, u64) {
    let (version, _) = qemu_version();
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(major)), Some(Some(minor)), Some(Some(micro))) => (major, minor, micro),
        _ => panic!("unexpected QEMU version {version:?}"),
    }
}

/// A running QEMU (killed and reaped on drop) and its pty monitor, opened early.
#[derive(Debug)]
pub struct EarlyPty {
    child: Child,
    /// The pty slave QEMU announced.
    pub path: PathBuf,
    /// The pty, opened right after the announcement.
    pub pty: File,
}

impl Drop for EarlyPty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts QEMU and opens its pty as soon as QEMU names it (within 10 s).
pub fn start_early() -> io::Result<EarlyPty> {
    let mut child = Command::new(QEMU_PROGRAM)
        .args(["-machine", "none", "-nodefaults", "-display", "none"])
        .args(["-chardev", &format!("pty,id={PTY_LABEL}")])
        .args(["-mon", &format!("chardev={PTY_LABEL},mode=control")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    // A thread reads QEMU's output for as long as it runs (so QEMU never blocks on a full
    // pipe) and hands over the pty path.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let suffix = format!(" (label {PTY_LABEL})");
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(path) = line
                .trim_end()
                .strip_prefix("char device redirected to ")
                .and_then(|rest| rest.strip_suffix(&suffix))
            {
                let _ = tx.send(PathBuf::from(path));
            }
        }
    });
    let mut early = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(path) => {
            let pty = open_pty(&path)?;
            EarlyPty { child, path, pty }
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(
                "QEMU did not announce its pty within 10 s",
            ));
        }
    };
    if let Some(status) = early.child.try_wait()? {
        return Err(io::Error::other(format!("QEMU exited at once: {status}")));
    }
    Ok(early)
}

impl EarlyPty {
    /// Waits (up to 3 s) until QEMU has sent something and then nothing more for 300 ms, and
    /// returns how many bytes wait unread on the pty (`FIONREAD`): one greeting, or two.
    pub fn settled_pending_bytes(&self) -> io::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = 0;
        let mut since = Instant::now();
        loop {
            let now = rustix::io::ioctl_fionread(&self.pty)?;
            if now != last {
                last = now;
                since = Instant::now();
            } else if last > 0 && since.elapsed() >= Duration::from_millis(300) {
                return Ok(last);
            }
            if Instant::now() >= deadline {
                return Ok(last);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}
