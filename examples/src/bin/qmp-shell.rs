//! `qmp-shell`: a shell for the QEMU Monitor Protocol, after QEMU's own
//! `scripts/qmp/qmp-shell`.
//!
//! Run `qmp-shell --help` for the usage. On a terminal it is a line editor with history and
//! command-name completion that prints events as they arrive; with a pipe or file on standard
//! input it prints each reply and event as one JSON object per line, goes on after a failed
//! line and exits 1 at the end if any failed. Replies and events print from the bytes
//! received (QEMU's member order); `-v` adds the exact bytes each way, `-l FILE` records
//! them as a transcript (`qmp_std::transcript`). `qmp-shell -- QEMU ARGS...` starts that
//! QEMU with a monitor of its own; on a terminal without an address it starts a throwaway
//! `qemu-system-x86_64 -machine none`.
//!
//! With the server's schema (`qmp_std::Schema`, fetched once per connection, when first
//! needed: a command with arguments to check, `help`, or completion at a terminal),
//! [`Shell::check`] refuses a command whose arguments do not fit before it is sent, `help
//! COMMAND` describes one, and [`Names`] completes argument names and enum values
//! (`qmp_examples::shell_schema`).

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use qmp_examples::args::{parse_pairs, split_words};
use qmp_examples::{
    Address, Connection, TLS_USAGE, ThrowawayQemu, connect_with, describe_error,
    exit_on_signal_unless, parse_with_tls, print_error, print_out, time_of_day, wait_if_exiting,
    wire_json_line, wire_json_pretty,
};
use qmp_std::qmp_proto::{JsonKind, RawJson};
use qmp_std::serde_json::{self, Map, Value};
use qmp_std::transcript::{Direction, Recorder, Tap, TranscriptWriter};
use qmp_std::{Client, Error, Options, QmpError, RequestHandle, Schema};
use rustix::event::{PollFd, PollFlags};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Editor, Helper};

const USAGE: &str = "\
usage: qmp-shell [-p] [-H] [-N] [-v] [-l FILE] [--bail] [--no-check] [ADDRESS]
       qmp-shell [OPTIONS] -- QEMU [ARGS...]
       qmp-shell --qga [-p] ADDRESS

A shell for the QEMU Monitor Protocol (QMP), after QEMU's scripts/qmp/qmp-shell.

ADDRESS is the QMP socket of a running QEMU: a Unix socket path, or HOST:PORT
(unix:PATH and tcp:HOST:PORT work too), as in
    qemu-system-x86_64 ... -qmp unix:/tmp/qmp.sock,server=on,wait=off
Without ADDRESS, $QMP_SOCKET is used. `-- QEMU [ARGS...]` starts that QEMU with
a QMP monitor added (as QEMU's qmp-shell-wrap does) and stops it on exit. With
none of these, on a terminal, qmp-shell starts a throwaway
    qemu-system-x86_64 -machine none -nodefaults -display none
and stops it on exit; with a pipe or file on standard input that is an error.

options:
  -p, --pretty            pretty-print JSON (4-space indents)
  -H, --hmp               send lines as HMP commands (through
                          human-monitor-command) and print the text they
                          return; `cpu N` picks the CPU for later commands
  -N, --skip-negotiation  do not negotiate capabilities: type qmp_capabilities
                          yourself (commands before it get CommandNotFound)
  -v, --verbose           print every message of each command exactly as sent
                          and as received
  -l, --log FILE          record every message both ways in FILE, one JSON
                          object per line with direction and time
      --bail              with piped input, stop at the first failed line
      --no-check          send commands whose arguments do not fit the
                          server's schema (by default they are refused)
      --qga               ADDRESS is a QEMU guest agent (qemu-ga): sync with it,
                          then send guest-* commands (same input syntax)
  -h, --help              print this help and exit

Input, one command per line:
  COMMAND [KEY=VALUE ...]  a value that parses as JSON is JSON (42, true, null,
                           \"a string\", [1, 2], {\"a\": 1}); 'single quotes' make a
                           string with spaces; anything else is a string.
                           Dotted keys nest: a.b=1 sends {\"a\": {\"b\": 1}}.
  {\"execute\": ...}         a JSON object, sent as is; its own id comes back.
  transaction(             start a transaction: one action per line (ACTION
                           [KEY=VALUE ...]) until a line with `)`; the one-line
                           form is `transaction( ACTION [KEY=VALUE ...] )`.
  # ...                    a comment.
  help [COMMAND]           the arguments COMMAND takes (with their types, and
                           which are optional) and what it returns; the
                           command names. `COMMAND?` is the same.

Before a COMMAND with arguments is sent, its arguments are checked against the
server's schema (query-qmp-schema): if they do not fit, the line fails with
where and why (and the nearest valid name) and nothing is sent.

Replies, errors and events print as JSON as QEMU sent them (its member order),
one object per line unless -p; events print as they arrive (on a terminal with
the time of day first). On a terminal the shell has line editing, history
(~/.qmp-shell-rs_history) and Tab completion of command names, argument names
(dotted keys too) and enum values; Ctrl-C clears the line, or cancels the
COMMAND, or the JSON line with an id, that runs (its reply, if it comes, is
ignored; a JSON line without an id cannot be cancelled, since its late reply
could be taken for the next: Ctrl-C then leaves); Ctrl-D leaves. Otherwise
it reads standard input to its end; a line that fails (bad input, arguments
that do not fit, an error reply) is reported on standard error
as `line N: ...` and the next one runs.

Exit status: 0 at the end of input or once `quit` is answered; 1 if a line
failed (piped input) or the connection fails or breaks; 2 for a usage error;
128+N on signal N (130 for a Ctrl-C when input is not a terminal).

examples:
  query-status
  qom-get path=/machine property=type
  human-monitor-command command-line='info status'
  blockdev-add driver=null-co node-name=null0 size=1048576
  {\"execute\": \"query-name\", \"id\": \"mine\"}
  qmp-shell -- qemu-system-x86_64 -machine pc -display none < commands.txt
";

const NAME: &str = "qmp-shell";

/// Prints `NAME: message` on standard error (never panics).
fn warn(message: impl std::fmt::Display) {
    print_error(NAME, message);
}

/// How long an idle wait for events blocks on one read: long enough to pick up what the
/// socket already holds.
const EVENT_POLL: Duration = Duration::from_millis(1);

/// How long the wait for a command's reply goes on reading once the socket has something:
/// just enough to take in what came with the reply.
const AFTER_READABLE: Duration = Duration::from_micros(50);

/// The client's stream: the socket, every message recorded on the way.
type Wire = Recorder<Polled, Messages>;

fn main() -> ExitCode {
    let args = match parse_with_tls(std::env::args_os().skip(1), Args::parse, |a| &mut a.address) {
        Ok(Some(args)) => args,
        Ok(None) => {
            let _ = print_out(&format!("{USAGE}\n{TLS_USAGE}"));
            return ExitCode::SUCCESS;
        }
        Err(message) => return usage_error(message),
    };
    let stdin_is_terminal = io::stdin().is_terminal();
    let interactive = stdin_is_terminal && io::stdout().is_terminal();
    if args.qga {
        return qmp_examples::agent_shell::run(args.address.as_ref(), args.pretty, interactive);
    }
    let env = std::env::var("QMP_SOCKET").ok();
    let target = match Target::choose(&args, env.as_deref(), stdin_is_terminal) {
        Ok(target) => target,
        Err(message) => return usage_error(message),
    };
    let terminal = interactive
        .then(|| rustix::termios::tcgetattr(io::stdin()).ok())
        .flatten();

    // Ctrl-C while a command runs on a terminal cancels it; otherwise (and on SIGTERM or
    // SIGHUP) stop our QEMU, put the terminal back, and go.
    let cancel = match Cancel::new() {
        Ok(cancel) => Arc::new(cancel),
        Err(e) => {
            warn(format_args!("cannot handle signals: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let divert = Arc::clone(&cancel);
    let restore = move || {
        if let Some(mode) = terminal {
            let _ = rustix::termios::tcsetattr(
                io::stdin(),
                rustix::termios::OptionalActions::Now,
                &mode,
            );
        }
    };
    let sigint = signal_hook::consts::SIGINT;
    if let Err(e) = exit_on_signal_unless(move |n| n == sigint && divert.divert(), restore) {
        warn(format_args!("cannot handle signals: {e}"));
        return ExitCode::FAILURE;
    }

    let log = match &args.log {
        Some(path) => match File::create(path) {
            Ok(file) => Some(TranscriptWriter::new(file)),
            Err(e) => {
                warn(format_args!(
                    "cannot create {}: {}",
                    path.display(),
                    qmp_examples::io_message(&e)
                ));
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let messages = Messages::new(log);
    let qemu = match &target {
        Target::Address(_) => None,
        Target::Throwaway => {
            // Said whenever it happens (only with a terminal on stdin), even when stdout
            // goes to a file: a script must not think it talked to the user's VM.
            warn(
                "no ADDRESS and no $QMP_SOCKET: starting a throwaway qemu-system-x86_64 -machine none (stopped when you leave)",
            );
            Some(ThrowawayQemu::start())
        }
        Target::Wrap(command) => Some(ThrowawayQemu::wrap(&command[0], &command[1..])),
    };
    let qemu = match qemu.transpose() {
        Ok(qemu) => qemu,
        Err(e) => {
            warn(format_args!("{e}"));
            return ExitCode::FAILURE;
        }
    };

    let mut options = Options::default();
    options.negotiate = !args.skip_negotiation;
    // A shell waits as long as QEMU takes (HMP's savevm can take minutes); Ctrl-C gives up.
    options.command_timeout = None;
    let wrap = |connection| Recorder::new(Polled::new(connection), messages.clone());
    let connected = match (&qemu, &target) {
        (Some(qemu), _) => qemu.connect_with(options, wrap),
        (None, Target::Address(address)) => connect_with(address, options, wrap),
        (None, _) => unreachable!("a QEMU is started when no address is given"),
    };
    let client = match connected {
        Ok(client) => client,
        Err(e) => {
            warn(format_args!("{e}"));
            return ExitCode::FAILURE;
        }
    };
    let mut shell = Shell::new(client, &args, messages, cancel, interactive);
    // The greeting and the negotiation are in the log, not on the screen.
    shell.quietly(|_| ());
    let code = if interactive {
        interactive_loop(shell, &args, matches!(target, Target::Throwaway))
    } else {
        line_loop(shell, args.bail)
    };
    drop(qemu);
    wait_if_exiting();
    code
}

/// Prints a usage error and returns its exit status, 2.
fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    let usage = USAGE.lines().next().unwrap_or_default();
    warn(format_args!(
        "{message}\n{usage}\nTry '{NAME} --help' for more information."
    ));
    ExitCode::from(2)
}

// ---- command line --------------------------------------------------------------------------

/// The command line.
#[derive(Debug, Default)]
struct Args {
    pretty: bool,
    hmp: bool,
    skip_negotiation: bool,
    verbose: bool,
    bail: bool,
    /// `--no-check`: send arguments that do not fit the schema.
    no_check: bool,
    log: Option<PathBuf>,
    /// `--qga`: ADDRESS is a guest agent.
    qga: bool,
    address: Option<Address>,
    /// `-- QEMU [ARGS...]`.
    qemu: Vec<std::ffi::OsString>,
}

impl Args {
    /// `Ok(None)` for `--help`; `Err` says what is wrong.
    fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Option<Args>, String> {
        let mut parsed = Args::default();
        let mut address = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--" {
                parsed.qemu = args.by_ref().collect();
                if parsed.qemu.is_empty() {
                    return Err("-- needs a QEMU command line".into());
                }
                break;
            }
            let arg = arg
                .into_string()
                .map_err(|a| format!("argument is not UTF-8: {a:?}"))?;
            let mut value = |name: &str| {
                args.next()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("{name} needs a FILE"))
            };
            if let Some(long) = arg.strip_prefix("--") {
                match long {
                    "pretty" => parsed.pretty = true,
                    "hmp" => parsed.hmp = true,
                    "skip-negotiation" => parsed.skip_negotiation = true,
                    "verbose" => parsed.verbose = true,
                    "bail" => parsed.bail = true,
                    "no-check" => parsed.no_check = true,
                    "qga" => parsed.qga = true,
                    "log" => parsed.log = Some(value("--log")?),
                    "help" => return Ok(None),
                    _ => match long.strip_prefix("log=") {
                        Some(file) if !file.is_empty() => parsed.log = Some(file.into()),
                        _ => return Err(format!("unknown option {arg}")),
                    },
                }
            } else if arg.len() > 1 && arg.starts_with('-') {
                for (at, flag) in arg.char_indices().skip(1) {
                    match flag {
                        'p' => parsed.pretty = true,
                        'H' => parsed.hmp = true,
                        'N' => parsed.skip_negotiation = true,
                        'v' => parsed.verbose = true,
                        'h' => return Ok(None),
                        'l' => {
                            let rest = &arg[at + 1..];
                            parsed.log = Some(if rest.is_empty() {
                                value("-l")?
                            } else {
                                rest.into()
                            });
                            break;
                        }
                        _ => return Err(format!("unknown option -{flag}")),
                    }
                }
            } else if address.is_none() {
                address = Some(arg);
            } else {
                return Err(format!("more than one ADDRESS: {arg}"));
            }
        }
        if let Some(text) = address {
            if !parsed.qemu.is_empty() {
                return Err(format!(
                    "both an ADDRESS ({text}) and a QEMU to start: give one"
                ));
            }
            let address =
                Address::parse(&text).map_err(|e| format!("bad ADDRESS {text:?}: {e}"))?;
            parsed.address = Some(address);
        }
        Ok(Some(parsed))
    }
}

/// What the shell talks to.
#[derive(Debug, PartialEq)]
enum Target {
    /// A monitor that is already there (ADDRESS or `$QMP_SOCKET`).
    Address(Address),
    /// The user's QEMU command line (after `--`), started with a monitor added.
    Wrap(Vec<std::ffi::OsString>),
    /// A throwaway `-machine none` QEMU (only for a terminal).
    Throwaway,
}

impl Target {
    /// The command line's choice, else `$QMP_SOCKET` (`env`), else a throwaway QEMU if
    /// standard input is a terminal; `Err` says why none applies.
    fn choose(args: &Args, env: Option<&str>, terminal: bool) -> Result<Target, String> {
        if !args.qemu.is_empty() {
            return Ok(Target::Wrap(args.qemu.clone()));
        }
        if let Some(address) = &args.address {
            return Ok(Target::Address(address.clone()));
        }
        match env.filter(|e| !e.is_empty()) {
            Some(text) => Address::parse(text)
                .map(Target::Address)
                .map_err(|e| format!("bad $QMP_SOCKET {text:?}: {e}")),
            None if terminal => Ok(Target::Throwaway),
            None => Err(
                "no QMP address: give ADDRESS, set $QMP_SOCKET, or start a QEMU with \
                 `qmp-shell -- qemu-system-x86_64 ...` (a throwaway QEMU is only started \
                 for a terminal)"
                    .into(),
            ),
        }
    }
}

// ---- Ctrl-C ---------------------------------------------------------------------------------

/// Ctrl-C while a command runs at a terminal: the signal thread writes a byte to a socket
/// pair that the waiting shell polls.
struct Cancel {
    /// A command is running and may be cancelled.
    armed: AtomicBool,
    wake: UnixStream,
    woken: UnixStream,
}

impl Cancel {
    fn new() -> io::Result<Cancel> {
        let (wake, woken) = UnixStream::pair()?;
        woken.set_nonblocking(true)?;
        Ok(Cancel {
            armed: AtomicBool::new(false),
            wake,
            woken,
        })
    }

    /// On the signal thread: whether the signal cancels a command (else it ends the shell).
    fn divert(&self) -> bool {
        if !self.armed.load(Ordering::SeqCst) {
            return false;
        }
        let _ = (&self.wake).write_all(&[1]);
        true
    }

    /// Lets Ctrl-C cancel (from now until [`Cancel::disarm`]), forgetting older ones.
    fn arm(&self) {
        let mut drain = [0u8; 64];
        while matches!((&self.woken).read(&mut drain), Ok(n) if n > 0) {}
        self.armed.store(true, Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// Waits up to `timeout` (`None`: as long as it takes) for `socket` to have something,
    /// or for a Ctrl-C that cancels; an interrupted wait wakes with neither.
    fn poll_with(
        &self,
        socket: &OwnedFd,
        timeout: Option<Duration>,
    ) -> Result<Woken, rustix::io::Errno> {
        let mut fds = [
            PollFd::new(socket, PollFlags::IN),
            PollFd::new(&self.woken, PollFlags::IN),
        ];
        let timeout = timeout.map(|t| {
            rustix::event::Timespec::try_from(t).unwrap_or(rustix::event::Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
        Ok(Woken {
            readable: !fds[0].revents().is_empty(),
            cancelled: fds[1].revents().contains(PollFlags::IN),
        })
    }
}

/// What [`Cancel::poll_with`] woke for.
struct Woken {
    /// The socket has something (or is at its end).
    readable: bool,
    /// Ctrl-C cancelled the wait.
    cancelled: bool,
}

// ---- the socket -----------------------------------------------------------------------------

/// The socket, its read timeouts kept with `ppoll` (to the microsecond) rather than
/// `SO_RCVTIMEO` (whole clock ticks: a 50 µs wait for what may follow a reply would take
/// 4 to 10 ms, for every command); a TLS stream keeps its own.
struct Polled {
    inner: Connection,
    timeout: Option<Duration>,
}

impl Polled {
    fn new(inner: Connection) -> Polled {
        Polled {
            inner,
            timeout: None,
        }
    }
}

impl Read for Polled {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(timeout) = self.timeout {
            let timeout = rustix::event::Timespec {
                tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: timeout.subsec_nanos().into(),
            };
            let mut fds = [PollFd::new(&self.inner, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(0) => return Err(io::ErrorKind::WouldBlock.into()),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.inner.read(buf)
    }
}

impl Write for Polled {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl qmp_std::Stream for Polled {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        // A TLS stream may hold decrypted bytes while its socket is not readable (the
        // greeting, read during its handshake): polling the socket would miss them, so it
        // keeps its own timeouts.
        if matches!(self.inner, Connection::Tls(_)) {
            return self.inner.set_read_timeout(timeout);
        }
        self.timeout = timeout;
        Ok(true)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.inner.set_write_timeout(timeout)
    }

    fn write_message(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_message(bytes)
    }

    fn write_some(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.inner.write_some(bytes)
    }
}

impl AsFd for Polled {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

// ---- what went over the wire ----------------------------------------------------------------

/// The [`Tap`] of the shell's [`Recorder`]: every message each way, kept for the shell to
/// print, and written to the `-l` log.
#[derive(Clone)]
struct Messages(Arc<Mutex<Recorded>>);

struct Recorded {
    queue: std::collections::VecDeque<(Direction, Vec<u8>)>,
    log: Option<TranscriptWriter<File>>,
}

impl Messages {
    fn new(log: Option<TranscriptWriter<File>>) -> Messages {
        Messages(Arc::new(Mutex::new(Recorded {
            queue: Default::default(),
            log,
        })))
    }

    fn take(&self) -> Vec<(Direction, Vec<u8>)> {
        lock(&self.0).queue.drain(..).collect()
    }
}

impl Tap for Messages {
    fn message(&mut self, direction: Direction, message: &[u8]) {
        let mut recorded = lock(&self.0);
        if let Some(log) = &mut recorded.log {
            log.message(direction, message);
        }
        recorded.queue.push_back((direction, message.to_vec()));
    }
}

/// What a received message is, for printing.
#[derive(Debug, PartialEq)]
enum Kind {
    /// An event; its timestamp.
    Event(i64, i64),
    /// A reply (`return` or `error`), with its id.
    Reply(Option<Value>),
    /// Anything else (the greeting).
    Other,
}

fn kind(message: &str) -> Kind {
    let Ok(value) = RawJson::parse(message) else {
        return Kind::Other;
    };
    if value.kind() != JsonKind::Object {
        return Kind::Other;
    }
    if value.get("event").is_some() {
        let time = value.get("timestamp");
        let part = |name| time.and_then(|t| t.get(name)).and_then(|v| v.as_i64());
        return Kind::Event(
            part("seconds").unwrap_or(0),
            part("microseconds").unwrap_or(0),
        );
    }
    if value.get("return").is_some() || value.get("error").is_some() {
        return Kind::Reply(id_in(value));
    }
    Kind::Other
}

/// A message without its `id` member (the rest as it came).
fn without_id(message: &str) -> String {
    let Ok(value) = RawJson::parse(message) else {
        return message.to_owned();
    };
    let mut out = String::from("{");
    for (key, member) in value.members().filter(|(key, _)| *key != "id") {
        if out.len() > 1 {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(key.as_escaped());
        out.push_str("\": ");
        out.push_str(member.as_json());
    }
    out.push('}');
    out
}

/// A message's `id`, as JSON (so that `1.0` and `1.00` are the same id, as for QEMU).
fn id_of(message: &str) -> Option<Value> {
    id_in(RawJson::parse(message).ok()?)
}

/// The `id` member of a parsed message, if it has one.
fn id_in(message: RawJson<'_>) -> Option<Value> {
    serde_json::from_str(message.get("id")?.as_json()).ok()
}

// ---- input lines ---------------------------------------------------------------------------

/// What one input line asks for.
#[derive(Debug, PartialEq)]
enum Input {
    /// Nothing to send (an empty line, or a transaction action kept for later).
    Nothing,
    /// `COMMAND KEY=VALUE ...` (or a finished transaction).
    Command {
        name: String,
        arguments: Map<String, Value>,
    },
}

/// Turns `COMMAND KEY=VALUE ...` lines into commands, keeping transaction state across lines.
#[derive(Debug, Default)]
struct LineParser {
    /// The actions of an open `transaction(`.
    actions: Option<Vec<Value>>,
}

impl LineParser {
    fn in_transaction(&self) -> bool {
        self.actions.is_some()
    }

    fn parse(&mut self, line: &str) -> Result<Input, String> {
        let mut words = split_words(line)?;
        if words.first().map(String::as_str) == Some("transaction(") {
            self.actions = Some(Vec::new());
            words.remove(0);
        }
        let Some(actions) = &mut self.actions else {
            return match words.split_first() {
                None => Ok(Input::Nothing),
                Some((name, pairs)) => Ok(Input::Command {
                    name: name.clone(),
                    arguments: parse_pairs(pairs)?,
                }),
            };
        };
        let finish = words.last().map(String::as_str) == Some(")");
        if finish {
            words.pop();
        }
        if let Some((action, pairs)) = words.split_first() {
            if action == ")" {
                return Err("unexpected input after the ) that closes the transaction".into());
            }
            let mut object = Map::new();
            object.insert("type".into(), Value::String(action.clone()));
            object.insert("data".into(), Value::Object(parse_pairs(pairs)?));
            actions.push(Value::Object(object));
        }
        if !finish {
            return Ok(Input::Nothing);
        }
        let actions = self.actions.take().unwrap_or_default();
        let mut arguments = Map::new();
        arguments.insert("actions".into(), Value::Array(actions));
        Ok(Input::Command {
            name: "transaction".into(),
            arguments,
        })
    }
}

// ---- the shell -----------------------------------------------------------------------------

/// Why the shell stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Finished normally (end of input, a `quit` answered, standard output closed).
    Done,
    /// The connection broke (the message was printed), or `--bail` after a failed line.
    Failed,
}

impl Stop {
    fn code(self) -> ExitCode {
        match self {
            Stop::Done => ExitCode::SUCCESS,
            Stop::Failed => ExitCode::FAILURE,
        }
    }
}

/// The connection is gone.
struct Lost {
    /// Events that came before, as text to print.
    events: String,
    stop: Stop,
    /// Why, for the user (none after `quit`).
    message: Option<String>,
}

/// The server's schema once fetched (`None` inside if it could not be had): set once per
/// connection, read by the shell and by the completer.
type SchemaSlot = Arc<OnceLock<Option<Arc<Schema>>>>;

/// The connection and what the shell prints; the same for both modes.
struct Shell {
    client: Client<Wire>,
    /// Every message each way, as the client's stream saw it.
    messages: Messages,
    pretty: bool,
    hmp: bool,
    verbose: bool,
    /// At a terminal: events print with the time of day, Ctrl-C cancels a command.
    interactive: bool,
    cancel: Arc<Cancel>,
    parser: LineParser,
    /// The CPU HMP commands run on (`cpu N` in `-H` mode).
    cpu_index: Option<i64>,
    /// A `quit` was answered: the connection closing is expected.
    quitting: bool,
    /// Command names for completion (interactive mode only), refreshed once capabilities
    /// are negotiated.
    names: Option<Arc<Mutex<Vec<String>>>>,
    /// The id of the user's command whose reply is still to come (`Some(None)`: sent
    /// without an id).
    awaiting: Option<Option<Value>>,
    /// The reply of the user's last command has been received.
    replied: bool,
    /// Print the reply of the user's command (not in `-H` mode, which prints its text).
    show_reply: bool,
    /// The user's command carries the client's id, not one of the user's.
    own_id: bool,
    /// The shell's own commands (completion lists) run: only events print.
    quiet: bool,
    /// Check arguments against the schema before sending (not with `--no-check`).
    check: bool,
    /// The server's schema, shared with the completer.
    schema: SchemaSlot,
    /// The number of the input line being run (piped input; 0 at a terminal).
    line: usize,
    /// The line the open `transaction(` started on.
    transaction_line: usize,
    /// Some line failed (piped input: the exit status is 1).
    failed: bool,
}

impl Shell {
    fn new(
        client: Client<Wire>,
        args: &Args,
        messages: Messages,
        cancel: Arc<Cancel>,
        interactive: bool,
    ) -> Shell {
        Shell {
            client,
            messages,
            pretty: args.pretty,
            hmp: args.hmp,
            verbose: args.verbose,
            interactive,
            cancel,
            parser: LineParser::default(),
            cpu_index: None,
            quitting: false,
            names: None,
            awaiting: None,
            replied: false,
            show_reply: true,
            own_id: true,
            quiet: false,
            check: !args.no_check,
            schema: Arc::default(),
            line: 0,
            transaction_line: 0,
            failed: false,
        }
    }

    /// Turns on command-name completion: the list to complete from, kept up to date.
    fn completion(&mut self) -> Arc<Mutex<Vec<String>>> {
        let names = Arc::clone(self.names.get_or_insert_default());
        self.refresh_names();
        names
    }

    fn json(&self, value: &Value) -> String {
        let text = value.to_string();
        self.wire_json(&text)
    }

    /// A received message for people: in QEMU's member order, on one line or pretty.
    fn wire_json(&self, message: &str) -> String {
        let formatted = if self.pretty {
            wire_json_pretty(message)
        } else {
            wire_json_line(message)
        };
        formatted.unwrap_or_else(|| message.to_owned())
    }

    /// Prints to standard output; a closed standard output ends the shell.
    fn print(&self, text: &str) -> Result<(), Stop> {
        if text.is_empty() {
            return Ok(());
        }
        // Leaving on a signal: what QEMU says as it goes is no news.
        wait_if_exiting();
        print_out(text).map_err(|_| Stop::Done)
    }

    /// Reports a failed line on standard error (`line N: ...` for piped input).
    fn fail(&mut self, message: impl std::fmt::Display) {
        self.failed = true;
        if self.line > 0 {
            warn(format_args!("line {}: {message}", self.line));
        } else {
            warn(message);
        }
    }

    /// A command failed (its error printed as JSON): with piped input, `line N:` says which.
    fn error_reply(&mut self, class: &str, desc: &str) {
        if self.line > 0 {
            self.fail(format_args!("{class}: {desc}"));
        } else {
            self.failed = true;
        }
    }

    /// The messages that went over the wire since last time, as text to print: events,
    /// the reply to the user's command, and with `-v` every message of the user's commands
    /// exactly as sent and received.
    fn take_output(&mut self) -> String {
        // The client queues events too; they print from the wire.
        self.client.events().for_each(drop);
        let mut text = String::new();
        for (direction, bytes) in self.messages.take() {
            let message = String::from_utf8_lossy(&bytes);
            let show = match direction {
                Direction::Out if self.quiet => None,
                Direction::Out => {
                    self.awaiting = Some(id_of(&message));
                    self.replied = false;
                    self.verbose.then(|| message.to_string())
                }
                Direction::In => match kind(&message) {
                    Kind::Event(seconds, micros) => {
                        let json = if self.verbose {
                            message.to_string()
                        } else {
                            self.wire_json(&message)
                        };
                        Some(if self.interactive {
                            format!("[{} UTC] {json}", time_of_day(seconds, micros))
                        } else {
                            json
                        })
                    }
                    Kind::Reply(id) if !self.quiet && self.awaiting.as_ref() == Some(&id) => {
                        self.awaiting = None;
                        self.replied = true;
                        if self.verbose {
                            Some(message.to_string())
                        } else if !self.show_reply {
                            None
                        } else if self.own_id {
                            // The user gave no id: the client's own is no news.
                            Some(self.wire_json(&without_id(&message)))
                        } else {
                            Some(self.wire_json(&message))
                        }
                    }
                    // Late replies to cancelled commands, and the shell's own.
                    _ => (self.verbose && !self.quiet).then(|| message.to_string()),
                },
            };
            if let Some(show) = show {
                text.push_str(&show);
                text.push('\n');
            }
        }
        text
    }

    fn print_events(&mut self) -> Result<(), Stop> {
        let text = self.take_output();
        self.print(&text)
    }

    /// Runs the shell's own commands (`f`) so that only the events they meet print.
    /// (What came before was printed already, or is the handshake, which is not shown.)
    fn quietly<R>(&mut self, f: impl FnOnce(&mut Client<Wire>) -> R) -> R {
        self.quiet = true;
        let result = f(&mut self.client);
        let text = self.take_output();
        self.quiet = false;
        let _ = self.print(&text);
        result
    }

    /// Reads what the server has sent (without waiting for more) and returns the events as
    /// text; `Err` once the connection is gone.
    fn poll_events(&mut self) -> Result<String, Lost> {
        loop {
            match self.client.next_event(EVENT_POLL) {
                Ok(_) | Err(Error::Lagged { .. }) => {}
                Err(Error::Timeout(_)) => return Ok(self.take_output()),
                Err(e) => {
                    let (stop, message) = self.connection_lost(&e);
                    return Err(Lost {
                        events: self.take_output(),
                        stop,
                        message,
                    });
                }
            }
        }
    }

    /// What the end of the connection means: expected after `quit`, else a failure, with a
    /// message for the user.
    fn connection_lost(&self, error: &Error) -> (Stop, Option<String>) {
        wait_if_exiting();
        if self.quitting {
            (Stop::Done, None)
        } else {
            (Stop::Failed, Some(describe_error(error)))
        }
    }

    /// Runs one input line and prints what comes back (events first: they arrived first).
    fn handle_line(&mut self, line: &str) -> Result<(), Stop> {
        let line = line.trim();
        if line.starts_with('#') {
            return self.print_events();
        }
        if self.hmp {
            if line.is_empty() {
                return self.print_events();
            }
            return self.run_hmp(line);
        }
        if line.starts_with(['{', '[']) && !self.parser.in_transaction() {
            return self.run_json(line);
        }
        if !self.parser.in_transaction() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("help"), topic, None) => return self.help(topic),
                (Some(word), None, None) if word.len() > 1 && word.ends_with('?') => {
                    return self.help(Some(&word[..word.len() - 1]));
                }
                _ => {}
            }
        }
        let was_in_transaction = self.parser.in_transaction();
        let parsed = self.parser.parse(line);
        if !was_in_transaction && self.parser.in_transaction() {
            self.transaction_line = self.line;
        }
        match parsed {
            Ok(Input::Nothing) => self.print_events(),
            Ok(Input::Command { name, arguments }) => self.run(&name, arguments),
            Err(e) => {
                self.fail(format_args!(
                    "bad line: {e} (format: COMMAND [KEY=VALUE ...])"
                ));
                Ok(())
            }
        }
    }

    /// The end of the input: an open `transaction(` is an error.
    fn finish_input(&mut self) {
        if self.parser.in_transaction() {
            self.parser = LineParser::default();
            let line = std::mem::replace(&mut self.line, self.transaction_line);
            self.fail("transaction( is never closed with ) (nothing was sent)");
            self.line = line;
        }
    }

    /// The server's schema, fetched the first time it is asked for (once capabilities are
    /// negotiated; `query-qmp-schema` fails before); `None` if it cannot be had.
    fn schema(&mut self) -> Option<Arc<Schema>> {
        if self.schema.get().is_none() {
            if !self.client.is_negotiated() {
                return None;
            }
            let fetched = self.quietly(Schema::fetch);
            if let Err(e) = &fetched
                && !self.client.is_closed()
            {
                warn(format_args!(
                    "cannot read the server's schema ({}): arguments are not checked",
                    describe_error(e)
                ));
            }
            let _ = self.schema.set(fetched.ok().map(Arc::new));
        }
        self.schema.get().cloned().flatten()
    }

    /// Refuses (`Err`, with where and why) a command whose arguments do not fit the schema,
    /// before it is sent. Commands without arguments, and commands the schema does not have
    /// (the server says so itself), are not checked; nor is anything with `--no-check`.
    fn check(&mut self, name: &str, arguments: &Value) -> Result<(), String> {
        if !self.check || arguments.is_null() {
            return Ok(());
        }
        let Some(schema) = self.schema() else {
            return Ok(());
        };
        if !schema.has_command(name) {
            return Ok(());
        }
        schema
            .check(name, arguments)
            .map_err(|e| format!("{e}; not sent (--no-check sends it anyway)"))
    }

    /// `help` (the command names) or `help COMMAND`.
    fn help(&mut self, command: Option<&str>) -> Result<(), Stop> {
        let Some(schema) = self.schema() else {
            if self.client.is_negotiated() {
                self.fail(
                    "help needs the server's schema (query-qmp-schema), which it did not give",
                );
            } else {
                self.fail("help needs the server's schema: send qmp_capabilities first");
            }
            return Ok(());
        };
        let text = match command {
            None => Ok(schema.commands().map(|c| format!("{c}\n")).collect()),
            Some(command) => qmp_examples::shell_schema::help(&schema, command),
        };
        self.print_events()?;
        match text {
            Ok(text) => self.print(&text),
            Err(e) => {
                self.fail(format_args!("help: {e}"));
                Ok(())
            }
        }
    }

    /// Sends a command, waits for its outcome (printing what arrives meanwhile: events, and
    /// its reply unless in `-H` mode), and returns it; `None` if it got no answer (already
    /// reported). At a terminal, Ctrl-C cancels the wait.
    fn execute(
        &mut self,
        name: &str,
        arguments: Value,
    ) -> Result<Option<Result<Value, QmpError>>, Stop> {
        self.print_events()?;
        self.own_id = true;
        let handle = match self.client.send_raw(name, &arguments) {
            Ok(handle) => handle,
            Err(e) => return self.failed(&e).map(|()| None),
        };
        if self.wait_for_reply()? {
            self.client.abandon(handle);
            self.awaiting = None;
            self.print_events()?;
            warn("cancelled (its reply, if it comes, is ignored)");
            return Ok(None);
        }
        let result = self.client.wait(handle);
        self.print_events()?;
        match result {
            Ok(value) => Ok(Some(Ok(value))),
            Err(Error::Qmp(e)) => Ok(Some(Err(e))),
            Err(e) => self.failed(&e).map(|()| None),
        }
    }

    /// Prints what arrives until the reply to the command just sent was received (or the
    /// connection broke: the client says why); `true` if Ctrl-C cancelled the wait first.
    fn wait_for_reply(&mut self) -> Result<bool, Stop> {
        let socket = self.client.stream().as_fd().try_clone_to_owned();
        let Ok(socket) = socket else {
            return Ok(false);
        };
        if self.interactive {
            self.cancel.arm();
        }
        let cancelled = loop {
            let text = self.take_output();
            if let Err(stop) = self.print(&text) {
                self.cancel.disarm();
                return Err(stop);
            }
            if self.replied || self.client.is_closed() {
                break false;
            }
            let Ok(woken) = self.cancel.poll_with(&socket, None) else {
                break false;
            };
            if woken.cancelled {
                break true;
            }
            if woken.readable {
                match self.client.next_event(AFTER_READABLE) {
                    Ok(_) | Err(Error::Timeout(_) | Error::Lagged { .. }) => {}
                    // The wait for the reply says what happened.
                    Err(_) => break false,
                }
            }
        };
        self.cancel.disarm();
        Ok(cancelled)
    }

    /// Waits for the reply to a JSON line of the user's (printing what arrives meanwhile),
    /// within the command timeout; `None` if Ctrl-C cancelled the wait first (at a terminal,
    /// when `cancellable`).
    fn wait_for_request(
        &mut self,
        request: &RequestHandle,
        cancellable: bool,
    ) -> Result<Option<Result<Value, Error>>, Stop> {
        let socket = match self.client.stream().as_fd().try_clone_to_owned() {
            Ok(socket) => socket,
            Err(e) => return Ok(Some(Err(Error::Io(e)))),
        };
        let deadline = self
            .client
            .options()
            .command_timeout
            .map(|t| Instant::now() + t);
        if self.interactive && cancellable {
            self.cancel.arm();
        }
        let outcome = loop {
            let text = self.take_output();
            if let Err(stop) = self.print(&text) {
                self.cancel.disarm();
                return Err(stop);
            }
            // What was read already (with an event, say) may hold the reply.
            match self.client.wait_request(request, Some(Duration::ZERO)) {
                Ok(Some(reply)) => break Some(Ok(reply)),
                Ok(None) => {}
                Err(e) => break Some(Err(e)),
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                break Some(Err(Error::Timeout(qmp_std::qmp_proto::Expired::Command)));
            }
            let woken = match self.cancel.poll_with(&socket, left) {
                Ok(woken) => woken,
                Err(e) => break Some(Err(Error::Io(e.into()))),
            };
            if woken.cancelled {
                break None;
            }
            if woken.readable {
                match self.client.wait_request(request, Some(AFTER_READABLE)) {
                    Ok(Some(reply)) => break Some(Ok(reply)),
                    Ok(None) => {}
                    Err(e) => break Some(Err(e)),
                }
            }
        };
        self.cancel.disarm();
        Ok(outcome)
    }

    /// `COMMAND KEY=VALUE ...`: prints the reply.
    fn run(&mut self, name: &str, arguments: Map<String, Value>) -> Result<(), Stop> {
        let arguments = if arguments.is_empty() {
            Value::Null
        } else {
            Value::Object(arguments)
        };
        if let Err(why) = self.check(name, &arguments) {
            self.fail(why);
            return self.print_events();
        }
        self.show_reply = true;
        match self.execute(name, arguments)? {
            Some(Ok(_)) => self.succeeded(name),
            Some(Err(error)) => self.error_reply(&error.class, &error.desc),
            None => {}
        }
        Ok(())
    }

    /// Notes what a successful command changed.
    fn succeeded(&mut self, name: &str) {
        match name {
            "quit" => self.quitting = true,
            "qmp_capabilities" => self.refresh_names(),
            _ => {}
        }
    }

    fn run_json(&mut self, line: &str) -> Result<(), Stop> {
        let message: Value = match serde_json::from_str(line) {
            Ok(Value::Object(object)) => Value::Object(object),
            Ok(_) => {
                self.fail("a JSON line must be an object");
                return Ok(());
            }
            Err(e) => {
                self.fail(format_args!("invalid JSON: {e}"));
                return Ok(());
            }
        };
        self.print_events()?;
        self.show_reply = true;
        self.own_id = false;
        let request = match self.client.send_request(&message) {
            Ok(request) => request,
            Err(e) => return self.failed(&e),
        };
        // Only a line with an id can be given up: a late reply without one could be taken for
        // the next command's.
        let cancellable = message.get("id").is_some();
        let Some(result) = self.wait_for_request(&request, cancellable)? else {
            self.awaiting = None;
            self.print_events()?;
            warn("cancelled (its reply, if it comes, is ignored)");
            return Ok(());
        };
        self.print_events()?;
        match result {
            Ok(reply) => {
                if let Some(error) = reply.get("error") {
                    let text = |key| error.get(key).and_then(Value::as_str).unwrap_or_default();
                    self.error_reply(text("class"), text("desc"));
                } else if let Some(name) = message.get("execute").and_then(Value::as_str) {
                    self.succeeded(name);
                }
                Ok(())
            }
            Err(e) => self.failed(&e),
        }
    }

    fn run_hmp(&mut self, line: &str) -> Result<(), Stop> {
        let mut words = line.split_whitespace();
        if words.next() == Some("cpu") {
            return match (words.next().map(str::parse::<i64>), words.next()) {
                (Some(Ok(index)), None) => self.select_cpu(index),
                _ => {
                    self.fail("usage: cpu INDEX");
                    Ok(())
                }
            };
        }
        match self.hmp_command(line, self.cpu_index)? {
            Some(Ok(text)) => {
                let mut text = text.replace("\r\n", "\n");
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                self.print(&text)
            }
            Some(Err(error)) => {
                self.fail(&error.desc);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// `cpu N`: checks that the CPU exists, then runs later HMP commands on it.
    fn select_cpu(&mut self, index: i64) -> Result<(), Stop> {
        match self.hmp_command("info version", Some(index))? {
            Some(Ok(_)) => {
                self.cpu_index = Some(index);
                Ok(())
            }
            Some(Err(error)) => {
                self.fail(&error.desc);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Runs an HMP command line: its text, or the error; `None` if it got no answer
    /// (already reported).
    fn hmp_command(
        &mut self,
        line: &str,
        cpu_index: Option<i64>,
    ) -> Result<Option<Result<String, QmpError>>, Stop> {
        let mut arguments = Map::new();
        arguments.insert("command-line".into(), Value::String(line.to_owned()));
        if let Some(index) = cpu_index {
            arguments.insert("cpu-index".into(), index.into());
        }
        self.show_reply = false;
        let outcome = self.execute("human-monitor-command", Value::Object(arguments))?;
        Ok(outcome.map(|result| match result {
            Ok(Value::String(text)) => Ok(text),
            Ok(other) => Ok(self.json(&other) + "\n"),
            Err(e) => Err(e),
        }))
    }

    /// A command got no reply: a lost connection ends the shell, anything else is reported.
    fn failed(&mut self, error: &Error) -> Result<(), Stop> {
        self.print_events()?;
        if error.is_disconnect() || self.client.is_closed() {
            let (stop, message) = self.connection_lost(error);
            if let Some(message) = message {
                warn(message);
            }
            return Err(stop);
        }
        self.fail(describe_error(error));
        Ok(())
    }

    /// Fills the completion list: QMP command names, or HMP commands in `-H` mode.
    fn refresh_names(&mut self) {
        let Some(list) = self.names.clone() else {
            return;
        };
        let names = if !self.client.is_negotiated() {
            vec!["qmp_capabilities".to_owned()]
        } else if self.hmp {
            self.quietly(hmp_names)
        } else {
            // For completion of arguments at the terminal.
            let _ = self.schema();
            self.quietly(
                |client| match client.execute(&qmp_std::commands::QueryCommands) {
                    Ok(commands) => commands.into_iter().map(|c| c.name).collect(),
                    Err(_) => Vec::new(),
                },
            )
        };
        let mut names = names;
        names.sort();
        names.dedup();
        *lock(&list) = names;
    }
}

/// HMP command names from `help` (lines `name|alias args -- text`) and `info` subcommands
/// from `info` (lines `info name -- text`).
fn hmp_names(client: &mut Client<Wire>) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(help) = client.hmp("help") {
        for line in help.lines() {
            if line.starts_with(['[', '\t', ' ']) {
                continue;
            }
            let Some(word) = line.split_whitespace().next() else {
                continue;
            };
            // `name|n`: the longest spelling.
            let name = word.split('|').max_by_key(|n| n.len()).unwrap_or(word);
            if name != "info" {
                names.push(format!("help {name}"));
            }
            names.push(name.to_owned());
        }
    }
    if let Ok(info) = client.hmp("info") {
        for line in info.lines() {
            let mut words = line.split_whitespace();
            if let (Some("info"), Some(what)) = (words.next(), words.next()) {
                names.push(format!("info {what}"));
            }
        }
    }
    names
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---- standard input is not a terminal --------------------------------------------------------

/// Reads standard input line by line, printing replies, and events as they arrive; with
/// `bail`, stops at the first line that fails.
fn line_loop(mut shell: Shell, bail: bool) -> ExitCode {
    let stdin = rustix::stdio::stdin();
    let socket = shell.client.stream().as_fd().try_clone_to_owned();
    let Ok(socket) = socket else {
        warn(format_args!("cannot watch the connection"));
        return ExitCode::FAILURE;
    };
    let mut pending = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    let mut input_done = false;
    let run = |shell: &mut Shell, line: &[u8]| {
        shell.line += 1;
        shell.handle_line(&String::from_utf8_lossy(line))?;
        if bail && shell.failed {
            return Err(Stop::Failed);
        }
        Ok(())
    };
    let result = loop {
        // Whole lines first; the last one may lack its newline.
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Err(stop) = run(&mut shell, &line) {
                return stop.code();
            }
        }
        if input_done {
            if !pending.is_empty() {
                let line = std::mem::take(&mut pending);
                if let Err(stop) = run(&mut shell, &line) {
                    break Err(stop);
                }
            }
            shell.finish_input();
            break shell.print_events();
        }
        let (input_ready, server_ready) = match wait_readable(stdin, &socket) {
            Ok(ready) => ready,
            Err(e) => {
                warn(format_args!("poll: {e}"));
                break Err(Stop::Failed);
            }
        };
        if server_ready {
            match shell.poll_events() {
                Ok(text) => {
                    if let Err(stop) = shell.print(&text) {
                        break Err(stop);
                    }
                }
                Err(lost) => {
                    let _ = shell.print(&lost.events);
                    if let Some(message) = lost.message {
                        warn(message);
                    }
                    break Err(lost.stop);
                }
            }
        }
        if input_ready {
            match rustix::io::read(stdin, &mut chunk) {
                Ok(0) => input_done = true,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => {
                    warn(format_args!("cannot read standard input: {e}"));
                    break Err(Stop::Failed);
                }
            }
        }
    };
    match result {
        Ok(()) if shell.failed => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(stop) => stop.code(),
    }
}

/// Blocks until standard input or the server has something (or hung up).
fn wait_readable(stdin: impl AsFd, socket: &OwnedFd) -> io::Result<(bool, bool)> {
    let ready = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
    loop {
        let mut fds = [
            PollFd::new(&stdin, PollFlags::IN),
            PollFd::new(socket, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {
                return Ok((
                    fds[0].revents().intersects(ready | PollFlags::NVAL),
                    fds[1].revents().intersects(ready),
                ));
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

// ---- standard input is a terminal ------------------------------------------------------------

/// The shell, shared between the line editor's thread and the thread that prints events
/// while the prompt is up.
struct Shared {
    shell: Mutex<Prompted>,
    at_prompt: Condvar,
}

struct Prompted {
    shell: Shell,
    /// The line editor is waiting for input: events print above the prompt.
    at_prompt: bool,
    /// Set when the connection is gone or the shell is leaving.
    stop: Option<Stop>,
}

fn interactive_loop(mut shell: Shell, args: &Args, throwaway: bool) -> ExitCode {
    let names = shell.completion();
    let config = Config::builder()
        .max_history_size(1024)
        .and_then(|c| c.history_ignore_dups(true))
        .map(|c| {
            c.auto_add_history(false)
                .completion_type(CompletionType::List)
                .build()
        });
    let editor = config.and_then(Editor::<Names, rustyline::history::DefaultHistory>::with_config);
    let mut editor = match editor {
        Ok(editor) => editor,
        Err(e) => {
            warn(format_args!("cannot set up the line editor: {e}"));
            return ExitCode::FAILURE;
        }
    };
    editor.set_helper(Some(Names {
        names,
        whole_line: args.hmp,
        schema: (!args.hmp).then(|| Arc::clone(&shell.schema)),
    }));
    let history =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".qmp-shell-rs_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }

    let mut banner = format!(
        "Welcome to the {}!\nConnected to QEMU {}\n",
        if args.hmp {
            "HMP shell"
        } else {
            "QMP low-level shell"
        },
        shell.client.server().version
    );
    if throwaway {
        banner.push_str("(a throwaway qemu-system-x86_64 -machine none, stopped when you leave)\n");
    }
    if args.skip_negotiation {
        banner.push_str("Capabilities not negotiated: send qmp_capabilities first.\n");
    }
    banner.push('\n');
    if print_out(&banner).is_err() {
        return ExitCode::SUCCESS;
    }

    let socket = shell.client.stream().as_fd().try_clone_to_owned().ok();
    let shared = Arc::new(Shared {
        shell: Mutex::new(Prompted {
            shell,
            at_prompt: false,
            stop: None,
        }),
        at_prompt: Condvar::new(),
    });
    if let (Some(socket), Ok(printer)) = (socket, editor.create_external_printer()) {
        let shared = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || print_events_at_prompt(&shared, &socket, printer));
    }

    let stop = loop {
        let prompt = {
            let mut state = lock(&shared.shell);
            if let Err(stop) = state.shell.print_events() {
                break stop;
            }
            if let Some(stop) = state.stop {
                break stop;
            }
            state.at_prompt = true;
            shared.at_prompt.notify_all();
            if state.shell.parser.in_transaction() {
                "TRANS> "
            } else {
                "(QEMU) "
            }
        };
        let line = editor.readline(prompt);
        // The terminal going away (SIGHUP) also ends `readline`: let the signal win.
        wait_if_exiting();
        let mut state = lock(&shared.shell);
        state.at_prompt = false;
        if let Some(stop) = state.stop {
            break stop;
        }
        match line {
            // A bracketed paste can bring several lines at once: each is a command.
            Ok(text) => {
                let mut stop = None;
                for line in text.lines() {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line);
                    }
                    if let Err(why) = state.shell.handle_line(line) {
                        stop = Some(why);
                        break;
                    }
                }
                if let Some(stop) = stop {
                    break stop;
                }
            }
            // Ctrl-C: the line is dropped (and an open transaction with it).
            Err(ReadlineError::Interrupted) => {
                if state.shell.parser.in_transaction() {
                    state.shell.parser = LineParser::default();
                }
            }
            Err(ReadlineError::Eof) => {
                let _ = print_out("\n");
                break Stop::Done;
            }
            Err(e) => {
                warn(format_args!("{e}"));
                break Stop::Failed;
            }
        }
    };
    {
        let mut state = lock(&shared.shell);
        state.stop.get_or_insert(stop);
        shared.at_prompt.notify_all();
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    stop.code()
}

/// While the prompt is up, prints events above it as they arrive.
fn print_events_at_prompt(
    shared: &Shared,
    socket: &OwnedFd,
    mut printer: impl rustyline::ExternalPrinter,
) {
    loop {
        {
            let mut state = lock(&shared.shell);
            while !state.at_prompt && state.stop.is_none() {
                state = shared
                    .at_prompt
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.stop.is_some() {
                return;
            }
        }
        // Wait for the server without holding the lock, re-checking the prompt now and then.
        let mut fds = [PollFd::new(socket, PollFlags::IN)];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let (text, lost) = {
            let mut state = lock(&shared.shell);
            if !state.at_prompt {
                continue;
            }
            match state.shell.poll_events() {
                Ok(text) => (text, None),
                Err(lost) => {
                    state.stop = Some(lost.stop);
                    (lost.events, Some(lost.message))
                }
            }
        };
        // Printing can block until the editor reads it: not while holding the lock.
        if !text.is_empty() {
            let _ = printer.print(text);
        }
        if let Some(message) = lost {
            let why = message.map_or_else(String::new, |m| format!("{NAME}: {m}\n"));
            let _ = printer.print(format!("{why}{NAME}: press Enter to leave\n"));
            return;
        }
    }
}

/// Tab completion of command names (QMP), then of argument names and enum values (with the
/// schema), or of whole HMP command lines (`info status`).
struct Names {
    names: Arc<Mutex<Vec<String>>>,
    whole_line: bool,
    /// The shell's schema (QMP mode only).
    schema: Option<SchemaSlot>,
}

impl Completer for Names {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let typed = &line[..pos];
        let mut start = typed.len() - typed.trim_start().len();
        let mut typed = &typed[start..];
        // `help COMMAND`: a command name.
        if !self.whole_line
            && let Some(rest) = typed.strip_prefix("help ")
            && !rest.trim_start().contains(char::is_whitespace)
        {
            start += typed.len() - rest.trim_start().len();
            typed = rest.trim_start();
        }
        if !self.whole_line && typed.contains(char::is_whitespace) {
            let schema = self.schema.as_ref().and_then(|s| s.get()?.as_ref());
            return Ok(schema
                .and_then(|schema| qmp_examples::shell_schema::complete(schema, typed))
                .map_or((pos, Vec::new()), |(at, candidates)| {
                    (start + at, candidates)
                }));
        }
        let names = lock(&self.names);
        let matches = names
            .iter()
            .filter(|name| name.starts_with(typed))
            .cloned()
            .collect();
        Ok((start, matches))
    }
}

impl Hinter for Names {
    type Hint = String;
}

impl Highlighter for Names {}

impl Validator for Names {}

impl Helper for Names {}

#[cfg(test)]
mod tests {
    use super::*;
    use qmp_std::serde_json::json;

    #[track_caller]
    fn command(line: &str) -> (String, Value) {
        match LineParser::default().parse(line) {
            Ok(Input::Command { name, arguments }) => (name, Value::Object(arguments)),
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[track_caller]
    fn error(line: &str) -> String {
        match LineParser::default().parse(line) {
            Err(e) => e,
            other => panic!("{line:?} parsed: {other:?}"),
        }
    }

    #[test]
    fn key_value_lines() {
        assert_eq!(command("query-status"), ("query-status".into(), json!({})));
        assert_eq!(
            command("  qom-get path=/machine property=type "),
            (
                "qom-get".into(),
                json!({"path": "/machine", "property": "type"})
            )
        );
        assert_eq!(
            command(
                r#"x n=1 f=-2.5 t=true z=null s="a b \" c" q='x y' l=[1,"2"] o={"k":{}} e= w=a=b"#
            )
            .1,
            json!({"n": 1, "f": -2.5, "t": true, "z": null, "s": "a b \" c", "q": "x y",
                   "l": [1, "2"], "o": {"k": {}}, "e": "", "w": "a=b"})
        );
        // Not JSON: strings, as typed.
        assert_eq!(
            command("x a=007 b=True c=[1 d={x} e=/a/b f=-").1,
            json!({"a": "007", "b": "True", "c": "[1", "d": "{x}", "e": "/a/b", "f": "-"})
        );
    }

    #[test]
    fn dotted_keys_nest() {
        assert_eq!(
            command("blockdev-add driver=raw node-name=r0 file.driver=null-co file.size=1024 a.b.c=1 a.b.d=[]").1,
            json!({"driver": "raw", "node-name": "r0",
                   "file": {"driver": "null-co", "size": 1024},
                   "a": {"b": {"c": 1, "d": []}}})
        );
    }

    #[test]
    fn bad_lines() {
        assert!(error("x y").contains("KEY=VALUE"));
        assert!(error("x a=1 a=2").contains("set twice"));
        assert!(error("x a.b=1 a=2").contains("both"));
        assert!(error("x a=1 a.b=2").contains("both"));
        assert!(error("x .a=1").contains("bad key"));
        assert!(error("x a..b=1").contains("bad key"));
        assert!(error(r#"x a="b"#).contains("unterminated"));
        assert!(error("x a=don't").contains("unterminated"));
        assert_eq!(LineParser::default().parse("   "), Ok(Input::Nothing));
    }

    #[test]
    fn transactions() {
        let mut parser = LineParser::default();
        assert_eq!(parser.parse("transaction("), Ok(Input::Nothing));
        assert!(parser.in_transaction());
        assert_eq!(
            parser.parse("block-dirty-bitmap-add node=d0 name=b1"),
            Ok(Input::Nothing)
        );
        assert_eq!(parser.parse("abort"), Ok(Input::Nothing));
        let Ok(Input::Command { name, arguments }) = parser.parse(")") else {
            panic!("not finished");
        };
        assert!(!parser.in_transaction());
        assert_eq!(name, "transaction");
        assert_eq!(
            Value::Object(arguments),
            json!({"actions": [
                {"type": "block-dirty-bitmap-add", "data": {"node": "d0", "name": "b1"}},
                {"type": "abort", "data": {}}
            ]})
        );
        assert_eq!(
            command("transaction( abort )").1,
            json!({"actions": [{"type": "abort", "data": {}}]})
        );
        let mut parser = LineParser::default();
        parser.parse("transaction(").unwrap();
        assert!(parser.parse(") x").is_err());
    }

    #[test]
    fn arguments() {
        let parse = |args: &[&str]| Args::parse(args.iter().map(Into::into));
        let args = parse(&["-pv", "--hmp", "/tmp/s"]).unwrap().unwrap();
        assert!(args.pretty && args.verbose && args.hmp && !args.skip_negotiation);
        assert_eq!(args.address, Some(Address::Unix("/tmp/s".into())));
        let args = parse(&["-N", "-l", "x.log", "--", "qemu", "-S", "-l"])
            .unwrap()
            .unwrap();
        assert!(args.skip_negotiation);
        assert_eq!(args.log, Some("x.log".into()));
        assert_eq!(args.qemu, ["qemu", "-S", "-l"]);
        assert!(args.address.is_none());
        let args = parse(&["-vlfile", "--bail", "--log=y", "unix:-odd"])
            .unwrap()
            .unwrap();
        assert!(args.verbose && args.bail);
        assert_eq!(args.log, Some("y".into()));
        assert_eq!(args.address, Some(Address::Unix("-odd".into())));
        assert!(parse(&["-l"]).is_err());
        assert!(parse(&["--"]).is_err());
        assert!(parse(&["a.sock", "--", "qemu"]).is_err());
        assert!(
            parse(&["localhost:abc"])
                .unwrap_err()
                .contains("bad port \"abc\"")
        );
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["-ph"]).unwrap().is_none());
        assert!(parse(&["-x"]).is_err());
        assert!(parse(&["--nope"]).is_err());
        assert!(parse(&["a", "b"]).is_err());
        assert!(parse(&["h:99999"]).is_err());
        assert!(parse(&[]).unwrap().unwrap().address.is_none());
    }

    #[test]
    fn where_to_connect() {
        let parse = |args: &[&str]| Args::parse(args.iter().map(Into::into)).unwrap().unwrap();
        let unix = |p: &str| Ok(Target::Address(Address::Unix(p.into())));
        assert_eq!(
            Target::choose(&parse(&["a.sock"]), Some("b"), false),
            unix("a.sock")
        );
        assert_eq!(
            Target::choose(&parse(&[]), Some("b.sock"), false),
            unix("b.sock")
        );
        assert_eq!(
            Target::choose(&parse(&["--", "q", "-S"]), Some("b"), false),
            Ok(Target::Wrap(vec!["q".into(), "-S".into()]))
        );
        assert_eq!(
            Target::choose(&parse(&[]), Some(""), true),
            Ok(Target::Throwaway)
        );
        let err = Target::choose(&parse(&[]), None, false).unwrap_err();
        assert!(err.contains("QMP_SOCKET"), "{err}");
        let err = Target::choose(&parse(&[]), Some("h:x"), true).unwrap_err();
        assert!(err.starts_with("bad $QMP_SOCKET"), "{err}");
    }

    #[test]
    fn quoted_pairs_are_refused() {
        let err = error("qom-get 'path=/machine' property=type");
        assert!(
            err.contains("write path='/machine', not 'path=/machine'"),
            "{err}"
        );
        assert!(error(r#"x "a=b""#).contains("quotes go around the value"));
        // Quotes around the value are fine.
        assert_eq!(command("x a='b c'").1, json!({"a": "b c"}));
    }

    #[test]
    fn received_messages() {
        assert_eq!(
            kind(r#"{"return": {}, "id": 1.0}"#),
            Kind::Reply(Some(json!(1.0)))
        );
        assert_eq!(
            kind(r#"{"error": {"class": "X", "desc": ""}}"#),
            Kind::Reply(None)
        );
        assert_eq!(
            kind(r#"{"timestamp": {"seconds": 5, "microseconds": 6}, "event": "STOP"}"#),
            Kind::Event(5, 6)
        );
        assert_eq!(kind(r#"{"QMP": {}}"#), Kind::Other);
        assert_eq!(kind("nonsense"), Kind::Other);
        assert_eq!(
            without_id(r#"{"id": 4, "error": {"id": 1}}"#),
            r#"{"error": {"id": 1}}"#
        );
    }

    #[test]
    fn usage_fits_a_terminal() {
        for line in USAGE.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
    }
}
