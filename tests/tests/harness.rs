//! Tests of the harness itself: for every kind of monitor, a real QEMU is started and spoken to
//! with plain std sockets (or the pty opened as a file): greeting, `qmp_capabilities`,
//! `{"return": {}}`. Also: options, `kill`, `wait_exit` after `quit`, clean-up on drop, the
//! errors for a missing binary and for a QEMU that exits at once, and many QEMUs at a time.
//!
//! Every read has a deadline (a reader thread per connection), so a broken harness fails a test
//! instead of hanging it.

use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use qmp_e2e::{Address, Monitor, Qemu, Stream};

/// Generous: QEMU answers in well under a millisecond, but a pty is only polled once a second.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A client connection that reads on its own thread, so every read can have a deadline.
struct Conn {
    stream: Stream,
    chunks: Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    closed: Option<io::Result<()>>,
}

impl Conn {
    fn open(address: &Address) -> Conn {
        let stream = address
            .connect()
            .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
        let mut reader = stream.try_clone().expect("clone the connection");
        let (tx, chunks) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => {
                        let _ = tx.send(Ok(Vec::new()));
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Ok(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        Conn {
            stream,
            chunks,
            buf: Vec::new(),
            closed: None,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to QEMU");
    }

    /// Waits for more bytes; false once the connection has closed (EOF or error).
    fn fill(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.chunks.recv_timeout(left) {
            Ok(Ok(chunk)) if chunk.is_empty() => {
                self.closed = Some(Ok(()));
                false
            }
            Ok(Ok(chunk)) => {
                self.buf.extend_from_slice(&chunk);
                true
            }
            Ok(Err(e)) => {
                self.closed = Some(Err(e));
                false
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "no complete message from QEMU within {TIMEOUT:?}; have {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Err(RecvTimeoutError::Disconnected) => unreachable!("the reader reports its end"),
        }
    }

    /// The next message, as raw bytes: one balanced JSON object (found by counting brackets
    /// outside strings, so pretty-printed messages work too) and the `\r\n` after it.
    fn message(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(end) = message_end(&self.buf) {
                let message: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8(message).expect("QEMU's output is ASCII");
            }
            if !self.fill(deadline) {
                panic!(
                    "connection closed ({:?}) inside a message: {:?}",
                    self.closed,
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    /// Asserts that QEMU sends nothing more for a moment.
    fn assert_quiet(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match self
                .chunks
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        assert!(
            self.buf.is_empty(),
            "unexpected output: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Waits until the server closes the connection; returns how (EOF, or the error).
    fn closed(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        while self.fill(deadline) {}
        self.closed.take().expect("closed")
    }
}

/// The end (exclusive) of the first complete message in `buf`, including the `\r\n` after it.
fn message_end(buf: &[u8]) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in buf.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return buf[i + 1..].starts_with(b"\r\n").then_some(i + 3);
                }
            }
            _ => {}
        }
    }
    None
}

fn start(monitor: Monitor) -> Qemu {
    Qemu::start(monitor).unwrap_or_else(|e| panic!("start QEMU with a {monitor:?} monitor: {e}"))
}

/// Connects, checks the greeting and negotiates; returns the connection in command mode.
fn negotiate(qemu: &Qemu) -> Conn {
    let mut conn = Conn::open(qemu.address());
    let greeting = conn.message();
    let pretty = qemu.monitor().is_pretty();
    if pretty {
        assert!(
            greeting.starts_with("{\r\n    \"QMP\": {\r\n"),
            "{greeting:?}"
        );
    } else {
        assert!(
            greeting.starts_with(r#"{"QMP": {"version": {"qemu": {"#),
            "{greeting:?}"
        );
        assert_eq!(
            greeting.matches("\r\n").count(),
            1,
            "one line: {greeting:?}"
        );
    }
    assert!(greeting.contains(r#""capabilities": ["#), "{greeting:?}");
    assert!(greeting.ends_with("}\r\n"), "{greeting:?}");

    conn.send(br#"{"execute": "qmp_capabilities"}"#);
    let reply = conn.message();
    if pretty {
        assert_eq!(reply, "{\r\n    \"return\": {\r\n    }\r\n}\r\n");
    } else {
        // Exactly one greeting and then the return: a second greeting (QEMU 7.2 sends two when a
        // pty is opened during its start-up) would show up here.
        assert_eq!(reply, "{\"return\": {}}\r\n");
    }
    conn
}

/// The whole exchange for one kind of monitor, plus one command in command mode.
fn greet_and_negotiate(monitor: Monitor) {
    let qemu = start(monitor);
    assert_eq!(qemu.monitor(), monitor);
    match (monitor, qemu.address()) {
        (Monitor::Tcp, Address::Tcp(addr)) => assert!(addr.ip().is_loopback()),
        (Monitor::Pty, Address::Pty(path)) => assert!(path.starts_with("/dev/pts/"), "{path:?}"),
        (
            Monitor::Unix | Monitor::ChardevSocket | Monitor::ChardevSocketPretty,
            Address::Unix(p),
        ) => {
            assert!(p.starts_with(qemu.dir()), "{p:?} outside {:?}", qemu.dir())
        }
        (monitor, address) => panic!("{monitor:?} monitor with address {address}"),
    }
    let mut conn = negotiate(&qemu);
    conn.send(br#"{"execute": "query-status", "id": 1}"#);
    let status = conn.message();
    let compact = status
        .replace("\r\n", "")
        .replace("    ", "")
        .replace(": ", ":");
    assert!(compact.contains(r#""status":"running""#), "{status:?}");
    assert!(compact.contains(r#""id":1"#), "{status:?}");
    conn.assert_quiet(Duration::from_millis(100));
}

#[test]
fn unix_socket_monitor() {
    greet_and_negotiate(Monitor::Unix);
}

#[test]
fn tcp_monitor() {
    greet_and_negotiate(Monitor::Tcp);
}

#[test]
fn chardev_socket_monitor() {
    greet_and_negotiate(Monitor::ChardevSocket);
}

#[test]
fn chardev_socket_pretty_monitor() {
    greet_and_negotiate(Monitor::ChardevSocketPretty);
}

#[test]
fn pty_monitor() {
    greet_and_negotiate(Monitor::Pty);
}

#[test]
fn pty_passes_bytes_unchanged() {
    // QEMU makes the pty raw: no echo of what the client writes (QEMU would read its own output
    // back), no \r -> \n on the way in, no \n -> \r\n on the way out.
    let qemu = start(Monitor::Pty);
    let mut conn = negotiate(&qemu);
    conn.send(b"{\"execute\":\r\n\"human-monitor-command\",\n\"arguments\":{\"command-line\":\"info status\"},\"id\":\"a\\tb\"}\n");
    assert_eq!(
        conn.message(),
        "{\"return\": \"VM status: running\\r\\n\", \"id\": \"a\\tb\"}\r\n"
    );
    conn.assert_quiet(Duration::from_millis(200));
}

#[test]
fn paused_option_passes_dash_s() {
    let qemu = Qemu::builder(Monitor::Unix)
        .paused(true)
        .start()
        .expect("start QEMU with -S");
    let mut conn = negotiate(&qemu);
    conn.send(br#"{"execute": "query-status"}"#);
    assert_eq!(
        conn.message(),
        "{\"return\": {\"status\": \"prelaunch\", \"singlestep\": false, \"running\": false}}\r\n"
    );
}

#[test]
fn extra_arguments_are_passed() {
    let qemu = Qemu::builder(Monitor::Tcp)
        .args(["-name", "harness-test"])
        .start()
        .expect("start QEMU with -name");
    let mut conn = negotiate(&qemu);
    conn.send(br#"{"execute": "query-name"}"#);
    assert_eq!(
        conn.message(),
        "{\"return\": {\"name\": \"harness-test\"}}\r\n"
    );
}

#[test]
fn quit_makes_qemu_exit() {
    let mut qemu = start(Monitor::ChardevSocket);
    let mut conn = negotiate(&qemu);
    assert!(qemu.is_running());
    // No newline after the command: bytes QEMU has not read when it exits would make the
    // kernel report ECONNRESET instead of EOF.
    conn.send(br#"{"execute": "quit", "id": "bye"}"#);
    let event = conn.message();
    assert!(event.contains(r#""event": "SHUTDOWN""#), "{event:?}");
    assert_eq!(conn.message(), "{\"return\": {}, \"id\": \"bye\"}\r\n");
    let status = qemu.wait_exit(TIMEOUT).expect("QEMU exits after quit");
    assert!(status.success(), "{status}: {}", qemu.output());
    assert!(!qemu.is_running());
    conn.closed().expect("EOF after quit");
    assert!(qemu.cpu_time().is_err(), "no CPU time once reaped");
}

#[test]
fn wait_exit_times_out_while_qemu_runs() {
    let mut qemu = start(Monitor::Unix);
    let begin = Instant::now();
    assert_eq!(qemu.wait_exit(Duration::from_millis(100)), None);
    assert!(begin.elapsed() >= Duration::from_millis(100));
    assert!(qemu.is_running());
}

#[test]
fn kill_closes_the_connection() {
    for monitor in [Monitor::Unix, Monitor::Tcp, Monitor::Pty] {
        let mut qemu = start(monitor);
        let mut conn = negotiate(&qemu);
        let status = qemu.kill().expect("kill QEMU");
        assert_eq!(status.signal(), Some(9), "{monitor:?}: {status}");
        assert_eq!(qemu.wait_exit(Duration::ZERO), Some(status));
        // A socket sees EOF; a pty whose master is gone reads as EIO (or, now and then, EOF).
        let closed = conn.closed();
        if monitor == Monitor::Pty {
            if let Err(e) = closed {
                assert_eq!(e.raw_os_error(), Some(5), "EIO expected, got {e}");
            }
        } else {
            closed.unwrap_or_else(|e| panic!("{monitor:?}: EOF expected, got {e}"));
        }
        assert_eq!(qemu.kill().expect("kill again"), status, "idempotent");
    }
}

#[test]
fn drop_kills_reaps_and_cleans_up() {
    let qemu = start(Monitor::ChardevSocketPretty);
    let pid = qemu.pid();
    let dir = qemu.dir().to_owned();
    let proc_dir = format!("/proc/{pid}");
    assert!(dir.is_dir());
    assert!(dir.join("mon.sock").exists());
    let cmdline = std::fs::read(format!("{proc_dir}/cmdline")).expect("QEMU's cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.starts_with("qemu-system-x86_64 -machine none -nodefaults -display none "),
        "{cmdline}"
    );
    assert!(!cmdline.contains(" -S"), "{cmdline}");
    let cpu = qemu.cpu_time().expect("CPU time");
    assert!(cpu < Duration::from_secs(5), "{cpu:?}");
    drop(qemu);
    // Reaped: no zombie left behind (the pid is not reused this fast).
    assert!(!Path::new(&proc_dir).exists(), "{proc_dir} still exists");
    assert!(!dir.exists(), "{dir:?} not removed");
}

#[test]
fn missing_binary_fails_loudly() {
    let err = Qemu::builder(Monitor::Unix)
        .program("qemu-system-x86_64-that-is-not-installed")
        .start()
        .expect_err("no such program");
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    let message = err.to_string();
    assert!(message.contains("qemu-system-x86"), "{message}");
    assert!(message.contains("Debian package"), "{message}");
}

#[test]
fn qemu_that_exits_at_once_reports_its_output() {
    let begin = Instant::now();
    let err = Qemu::builder(Monitor::Unix)
        .arg("-no-such-option")
        .start()
        .expect_err("QEMU rejects the option");
    let message = err.to_string();
    assert!(
        message.contains("-no-such-option: invalid option"),
        "{message}"
    );
    assert!(
        begin.elapsed() < TIMEOUT,
        "noticed the exit without waiting out the timeout"
    );
}

#[test]
fn many_at_once() {
    let threads: Vec<_> = (0..10)
        .map(|i| {
            thread::spawn(move || {
                let monitor = Monitor::ALL[i % Monitor::ALL.len()];
                let qemu = start(monitor);
                let mut conn = negotiate(&qemu);
                conn.send(br#"{"execute": "query-name", "id": 7}"#);
                let reply = conn.message();
                assert!(reply.contains("\"id\": 7"), "{reply:?}");
                qemu
            })
        })
        .collect();
    // All ten are still running here: their addresses and directories must all differ.
    let qemus: Vec<Qemu> = threads
        .into_iter()
        .map(|t| t.join().expect("a QEMU thread panicked"))
        .collect();
    for (i, a) in qemus.iter().enumerate() {
        for b in &qemus[i + 1..] {
            assert_ne!(a.address(), b.address());
            assert_ne!(a.dir(), b.dir());
            assert_ne!(a.pid(), b.pid());
        }
    }
    let dirs: Vec<_> = qemus.iter().map(|q| q.dir().to_owned()).collect();
    drop(qemus);
    for dir in dirs {
        assert!(!dir.exists(), "{dir:?} not removed");
    }
}

/// A client that finds QEMU's other monitor the moment it exists and keeps the main loop busy
/// from then on (as a reconnecting client does when QEMU comes back on the same path) must not
/// keep the harness from seeing QEMU ready. CI once timed out here: a running main thread
/// restarted the harness's wait for an idle main loop on every command.
#[test]
fn a_busy_second_monitor_does_not_delay_readiness() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const BATCH: usize = 8;
    let dir = std::env::temp_dir().join(format!("qmp-harness-busy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("other.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let replies = Arc::new(AtomicU64::new(0));
    let client = {
        let (path, stop, replies) = (path.clone(), stop.clone(), replies.clone());
        thread::spawn(move || {
            let stream = loop {
                match UnixStream::connect(&path) {
                    Ok(stream) => break stream,
                    // QEMU did not start (the test fails on that).
                    Err(_) if stop.load(Ordering::Relaxed) => return,
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            };
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut lines = BufReader::new(stream).lines();
            let greeting = lines.next().unwrap().unwrap();
            assert!(greeting.starts_with("{\"QMP\""), "{greeting}");
            writer
                .write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
                .unwrap();
            lines.next().unwrap().unwrap();
            // Commands in batches, so QEMU always has the next one waiting; at least one
            // batch, even if the harness saw QEMU ready while this thread was descheduled.
            let batch = b"{\"execute\": \"query-status\"}\n".repeat(BATCH);
            loop {
                writer.write_all(&batch).unwrap();
                for _ in 0..BATCH {
                    let reply = lines.next().unwrap().unwrap();
                    assert!(reply.contains("\"return\""), "{reply}");
                }
                replies.fetch_add(BATCH as u64, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        })
    };
    let started = Instant::now();
    let qemu = Qemu::builder(Monitor::Unix)
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", path.display()),
        ])
        .start();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let qemu = qemu.expect("QEMU with a busy second monitor counts as ready");
    client.join().expect("the busy client failed");
    // Every batch was answered in full on the second monitor while the harness's own
    // monitor (below) works too.
    assert!(replies.load(Ordering::Relaxed) >= BATCH as u64);
    let mut conn = negotiate(&qemu);
    conn.send(br#"{"execute": "query-status"}"#);
    assert!(conn.message().contains("\"return\""));
    eprintln!("ready after {took:?} with a busy second monitor");
    drop(qemu);
    let _ = std::fs::remove_dir_all(&dir);
}
