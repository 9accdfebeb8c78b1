//! Helpers shared by the end-to-end tests of the example programs: run a binary through
//! pipes with a time limit, a private temporary directory, and a look at `/proc` for QEMUs
//! left behind.

#![allow(dead_code)] // Each test file uses its own subset.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use qmp_e2e::{Address, Qemu};

/// The longest any one program run may take before the test fails (QEMU starts in ~0.1 s).
pub const LIMIT: Duration = Duration::from_secs(20);

/// What a finished run printed.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Standard output's lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Fails, showing everything, unless the program exited 0 and wrote nothing on stderr.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert!(
            self.status.success() && self.stderr.is_empty(),
            "status {}, stderr:\n{}\nstdout:\n{}",
            self.status,
            self.stderr,
            self.stdout
        );
    }
}

/// A private, empty directory for one test, removed on drop. Given to the programs as
/// `TMPDIR`, it shows whether a throwaway QEMU's directory was cleaned up.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "qmp-examples-test-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// What is left in the directory.
    pub fn entries(&self) -> Vec<String> {
        fs::read_dir(&self.0)
            .expect("read the temporary directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Processes whose command line mentions this directory (a QEMU started in it).
    pub fn processes(&self) -> Vec<u32> {
        let needle = self.0.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(cmdline) = fs::read(entry.path().join("cmdline"))
                && String::from_utf8_lossy(&cmdline).contains(&needle)
            {
                found.push(pid);
            }
        }
        found
    }

    /// Fails unless no QEMU runs in this directory and nothing is left in it.
    #[track_caller]
    pub fn assert_cleaned_up(&self) {
        assert_eq!(
            self.processes(),
            Vec::<u32>::new(),
            "a QEMU is still running"
        );
        assert_eq!(
            self.entries(),
            Vec::<String>::new(),
            "files were left behind"
        );
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The command line argument that names a harness QEMU's monitor.
pub fn address_arg(qemu: &Qemu) -> String {
    match qemu.address() {
        Address::Unix(path) => path.display().to_string(),
        Address::Tcp(addr) => addr.to_string(),
        other => panic!("no socket address: {other}"),
    }
}

/// Starts `program` with `args`, `TMPDIR` set to `tmp` when given, all three pipes.
pub fn spawn(program: &str, args: &[&str], tmp: Option<&TempDir>) -> Child {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("QMP_SOCKET");
    if let Some(tmp) = tmp {
        command.env("TMPDIR", tmp.path());
    }
    command.spawn().expect("start the program")
}

/// Runs `program` with `input` on standard input (closed after it), within [`LIMIT`].
#[track_caller]
pub fn run(program: &str, args: &[&str], input: &str, tmp: Option<&TempDir>) -> Run {
    let mut child = spawn(program, args, tmp);
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    // The program may exit before reading everything (a bad address): ignore EPIPE.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let run = finish(child);
    let _ = writer.join();
    run
}

/// Waits for `child` to exit within [`LIMIT`], collecting its output (what is left of it
/// in a pipe not taken yet); kills it and fails the test otherwise.
#[track_caller]
pub fn finish(mut child: Child) -> Run {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let err_reader = thread::spawn(move || read_all(stderr));
    let out_reader = thread::spawn(move || read_all(stdout));
    let status = wait(&mut child);
    Run {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

fn read_all(pipe: Option<impl Read>) -> String {
    let mut text = String::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_string(&mut text);
    }
    text
}

#[track_caller]
fn wait(child: &mut Child) -> ExitStatus {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the program") {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the program did not finish within {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A running program's standard output, read line by line with a time limit.
pub struct Lines {
    lines: mpsc::Receiver<String>,
}

impl Lines {
    pub fn new(stdout: ChildStdout) -> Lines {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines { lines: rx }
    }

    /// The next line, failing the test if none comes within [`LIMIT`].
    #[track_caller]
    pub fn next(&self) -> String {
        self.lines
            .recv_timeout(LIMIT)
            .expect("the program printed no line in time")
    }
}

/// Writes one line to a running program's standard input.
#[track_caller]
pub fn send(stdin: &mut ChildStdin, line: &str) {
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .expect("write to the program");
}
