//! `qmp-shell` at a terminal: the real binary on a pseudo-terminal (opened with rustix, made
//! the shell's controlling terminal by util-linux's `setsid --ctty`, so that Ctrl-C is a
//! `SIGINT` from the line discipline as at a real terminal), against a real QEMU 7.2.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{LIMIT, TempDir, address_arg};
use qmp_e2e::{Monitor, Qemu};
use rustix::process::{Pid, Signal, kill_process};

const SHELL: &str = env!("CARGO_BIN_EXE_qmp-shell");

/// The shell running on a pty, and everything it printed.
struct Terminal {
    master: File,
    child: Child,
    screen: Arc<Mutex<String>>,
    /// How far [`Terminal::expect`] has read.
    seen: usize,
    _home: TempDir,
}

impl Terminal {
    fn start(args: &[&str]) -> Terminal {
        Self::start_with_stdout(args, None)
    }

    /// [`Terminal::start`] with the shell's stdout sent to `stdout` instead of the terminal
    /// (stdin and stderr stay on it).
    fn start_with_stdout(args: &[&str], stdout: Option<Stdio>) -> Terminal {
        let master =
            rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY)
                .expect("openpt");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
        let size = rustix::termios::Winsize {
            ws_row: 24,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&master, size).expect("window size");
        let slave = qmp_e2e::open_pty(std::path::Path::new(
            name.to_str().expect("a UTF-8 pty name"),
        ))
        .expect("open the pty");
        let home = TempDir::new("terminal-home");
        let child = Command::new("setsid")
            .arg("--ctty")
            .arg(SHELL)
            .args(args)
            .env("TERM", "xterm")
            .env("HOME", home.path())
            .env_remove("QMP_SOCKET")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(stdout.unwrap_or_else(|| Stdio::from(slave.try_clone().unwrap())))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("start setsid --ctty qmp-shell");
        let master = File::from(master);
        let screen = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().unwrap();
        let into = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the shell is gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                into.lock().unwrap().push_str(&text);
            }
        });
        Terminal {
            master,
            child,
            screen,
            seen: 0,
            _home: home,
        }
    }

    fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("type");
    }

    /// Waits (up to [`LIMIT`]) for `text` to appear after what was expected before; returns
    /// what came up to and including it.
    #[track_caller]
    fn expect(&mut self, text: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            {
                let screen = self.screen.lock().unwrap();
                if let Some(at) = screen[self.seen..].find(text) {
                    let end = self.seen + at + text.len();
                    let got = screen[self.seen..end].to_owned();
                    self.seen = end;
                    return got;
                }
                assert!(
                    Instant::now() < deadline,
                    "{text:?} did not show; the screen after the last match:\n{}",
                    &screen[self.seen..]
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Ctrl-D at the prompt: the shell leaves; returns its exit code.
    #[track_caller]
    fn leave(mut self) -> Option<i32> {
        self.type_text("\x04");
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the shell did not leave");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ctrl_c_clears_the_line_and_events_show_the_time() {
    let qemu = Qemu::start(Monitor::Unix).expect("start QEMU");
    let mut term = Terminal::start(&[&address_arg(&qemu)]);
    term.expect("Connected to QEMU 7.2.22");
    term.expect("(QEMU) ");
    // Half a command, then Ctrl-C: the line is gone, the shell stays.
    term.type_text("query-sta");
    term.expect("query-sta");
    term.type_text("\x03");
    term.expect("(QEMU) ");
    term.type_text("query-name\r");
    let reply = term.expect(r#"{"return": {}}"#);
    assert!(!reply.contains("CommandNotFound"), "{reply}");
    // An event, with the time of day first.
    term.type_text("stop\r");
    let shown = term.expect(r#""event": "STOP"}"#);
    let line = shown.lines().find(|l| l.contains("STOP")).unwrap();
    let start = line.find('[').expect("a time stamp");
    let stamp = &line[start..];
    assert_eq!(&stamp[16..23], " UTC] {", "{line}");
    assert!(
        stamp[1..16]
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b':' || b == b'.'),
        "{line}"
    );
    term.expect(r#"{"return": {}}"#);
    term.expect("(QEMU) ");
    assert_eq!(term.leave(), Some(0));
}

#[test]
fn events_print_while_the_shell_waits_at_the_prompt() {
    // A second monitor on the same QEMU stops and resumes the VM while the shell sits at its
    // prompt: both events print at once, with the time, and the prompt stays usable.
    let dir = TempDir::new("terminal-second-monitor");
    let second = dir.path().join("second.sock");
    let qemu = Qemu::builder(Monitor::Unix)
        .args([
            "-qmp".to_owned(),
            format!("unix:{},server=on,wait=off", second.display()),
        ])
        .start()
        .expect("start QEMU");
    let mut term = Terminal::start(&[&address_arg(&qemu)]);
    term.expect("(QEMU) ");
    let mut other = qmp_std::Client::connect_unix(&second).expect("the second monitor");
    other.execute(&qmp_std::commands::Stop).unwrap();
    let shown = term.expect(r#""event": "STOP"}"#);
    assert!(shown.contains(" UTC] {"), "{shown}");
    other.execute(&qmp_std::commands::Cont).unwrap();
    term.expect(r#""event": "RESUME"}"#);
    term.type_text("query-status\r");
    term.expect(r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#);
    assert_eq!(term.leave(), Some(0));
}

#[test]
fn ctrl_c_cancels_a_command_that_hangs() {
    let qemu = Qemu::start(Monitor::Unix).expect("start QEMU");
    let pid = Pid::from_raw(qemu.pid() as i32).expect("QEMU's pid");
    let mut term = Terminal::start(&["-v", &address_arg(&qemu)]);
    term.expect("(QEMU) ");
    kill_process(pid, Signal::STOP).expect("SIGSTOP QEMU");
    term.type_text("query-status\r");
    // -v: the command went out; no reply can come while QEMU is stopped.
    term.expect(r#"{"execute":"query-status"}"#);
    term.type_text("\x03");
    term.expect("qmp-shell: cancelled (its reply, if it comes, is ignored)");
    term.expect("(QEMU) ");
    kill_process(pid, Signal::CONT).expect("SIGCONT QEMU");
    // The session still works; the late reply shows only as received bytes (-v).
    term.type_text("query-name\r");
    term.expect(r#"{"execute":"query-name","id":"#);
    term.expect(r#"{"return": {}, "id": "#);
    term.expect("(QEMU) ");
    let screen = term.screen.lock().unwrap().clone();
    assert!(
        screen
            .contains(r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#),
        "the late reply arrived: {screen}"
    );
    assert_eq!(term.leave(), Some(0));
}

#[test]
fn ctrl_c_cancels_a_json_line_that_hangs() {
    let qemu = Qemu::start(Monitor::Unix).expect("start QEMU");
    let pid = Pid::from_raw(qemu.pid() as i32).expect("QEMU's pid");
    let mut term = Terminal::start(&["-v", &address_arg(&qemu)]);
    term.expect("(QEMU) ");
    kill_process(pid, Signal::STOP).expect("SIGSTOP QEMU");
    term.type_text("{\"execute\": \"query-status\", \"id\": \"mine\"}\r");
    // -v: the line went out (shown once the wait, which Ctrl-C may cancel, began); no reply
    // can come while QEMU is stopped. Ctrl-C gives the wait up, not the shell.
    term.expect(r#"{"execute": "query-status", "id": "mine"}"#); // the line as typed
    term.expect(r#"{"execute":"query-status","id":"mine"}"#); // as sent (-v)
    term.type_text("\x03");
    term.expect("qmp-shell: cancelled (its reply, if it comes, is ignored)");
    term.expect("(QEMU) ");
    kill_process(pid, Signal::CONT).expect("SIGCONT QEMU");
    // The session still works, and the late reply (shown as received bytes, -v) is not
    // taken for the next line's.
    term.type_text("{\"execute\": \"query-name\", \"id\": \"next\"}\r");
    term.expect(r#"{"return": {}, "id": "next"}"#);
    term.expect("(QEMU) ");
    assert_eq!(term.leave(), Some(0));
}

#[test]
fn no_address_at_a_terminal_starts_a_throwaway_qemu_and_says_so() {
    let mut term = Terminal::start(&[]);
    term.expect("qmp-shell: no ADDRESS and no $QMP_SOCKET: starting a throwaway qemu-system-x86_64 -machine none");
    term.expect("(QEMU) ");
    term.type_text("query-status\r");
    term.expect(r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#);
    assert_eq!(term.leave(), Some(0));
}

#[test]
fn a_throwaway_qemu_is_announced_even_when_stdout_is_a_file() {
    // `qmp-shell > out.json` typed at a terminal: stdin is the terminal, so the shell starts
    // a throwaway QEMU; the notice must still reach the user (on stderr, the terminal).
    let dir = TempDir::new("terminal-stdout");
    let out_path = dir.path().join("out.json");
    let out = File::create(&out_path).unwrap();
    let mut term = Terminal::start_with_stdout(&[], Some(Stdio::from(out)));
    term.expect("qmp-shell: no ADDRESS and no $QMP_SOCKET: starting a throwaway qemu-system-x86_64 -machine none");
    term.type_text("query-status\n");
    term.leave();
    let written = std::fs::read_to_string(&out_path).unwrap();
    assert!(
        written.contains(r#""status": "running""#),
        "stdout: {written:?}"
    );
    assert!(!written.contains("throwaway"), "stdout: {written:?}");
}

#[test]
fn tab_completes_command_names_and_hmp_commands() {
    // Typed without their last letters: only a completed name gets its answer.
    let qemu = Qemu::start(Monitor::Unix).expect("start QEMU");
    let mut term = Terminal::start(&[&address_arg(&qemu)]);
    term.expect("(QEMU) ");
    term.type_text("query-statu\t\r");
    let reply =
        term.expect(r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#);
    assert!(!reply.contains("CommandNotFound"), "{reply}");
    term.expect("(QEMU) ");
    assert_eq!(term.leave(), Some(0));

    let mut term = Terminal::start(&["-H", &address_arg(&qemu)]);
    term.expect("Welcome to the HMP shell!");
    term.expect("(QEMU) ");
    term.type_text("info statu\t\r");
    term.expect("VM status: running");
    term.expect("(QEMU) ");
    assert_eq!(term.leave(), Some(0));
}

#[test]
fn tab_completes_arguments_dotted_keys_union_members_and_enum_values() {
    // As above: typed without their ends, so only completed words make a command QEMU takes
    // (`qom-get pa/machine` is not KEY=VALUE).
    let qemu = Qemu::start(Monitor::Unix).expect("start QEMU");
    let mut term = Terminal::start(&[&address_arg(&qemu)]);
    term.expect("(QEMU) ");
    // Argument names.
    term.type_text("qom-get pa\t/machine prop\ttype\r");
    term.expect(r#"{"return": "none-machine"}"#);
    term.expect("(QEMU) ");
    // A dotted key into a nested object, an enum value (the union's tag), and a member of
    // the union branch that value selects.
    term.type_text("blockdev-add driver=raw node-name=r0 file.dri\tnull-c\t file.si\t1048576\r");
    let reply = term.expect(r#"{"return": {}}"#);
    assert!(!reply.contains("error"), "{reply}");
    term.expect("(QEMU) ");
    term.type_text("query-named-block-nodes flat=true\r");
    let nodes = term.expect("(QEMU) ");
    assert!(nodes.contains(r#""drv": "null-co""#), "{nodes}");
    assert!(nodes.contains(r#""virtual-size": 1048576"#), "{nodes}");
    // An enum value.
    term.type_text("set-action reboot=sh\t\r");
    let reply = term.expect(r#"{"return": {}}"#);
    assert!(!reply.contains("error"), "{reply}");
    term.expect("(QEMU) ");
    // Arguments that do not fit are refused, at the terminal too.
    term.type_text("set-action reboot=shutdwn\r");
    term.expect(
        r#"qmp-shell: set-action: reboot: "shutdwn" is not one of reset, shutdown (did you mean "shutdown"?); not sent"#,
    );
    term.expect("(QEMU) ");
    // help, as COMMAND?, and as help COMMAND (completed).
    term.type_text("blockdev-add?\r");
    term.expect("blockdev-add arguments:");
    term.expect("    cache.direct (optional): boolean");
    term.expect("returns: nothing");
    term.expect("(QEMU) ");
    term.type_text("help query-statu\t\r");
    term.expect("query-status: no arguments");
    term.expect("  running: boolean");
    term.expect("(QEMU) ");
    assert_eq!(term.leave(), Some(0));
}
