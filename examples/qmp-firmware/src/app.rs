//! The firmware proper: a whole QMP session with `qmp-embedded`'s blocking
//! client, over file descriptors 0 (from QEMU) and 1 (to QEMU) as a serial
//! link, reporting each step on fd 2. Safe code on top of [`crate::sys`].
//!
//! The session: greeting, capabilities negotiation, `query-version` (decoded,
//! and checked against the greeting), `query-status` (running), `stop` and its
//! `STOP` event, `query-status` (paused), `cont` and its `RESUME` event, a
//! command that does not exist (a `CommandNotFound` error reply is expected),
//! and a last `query-status` (running). Exit status 0 means all of it went as
//! expected; otherwise the status says which step failed (see [`Step`]), and
//! the last line on fd 2 says why.
//!
//! A pty opened while QEMU is still attaching its monitor delivers the
//! greeting twice. The client takes the first and drops the second (the core
//! reports it as `Notice::SecondGreeting`), so such a session runs as usual.

use core::panic::PanicInfo;
use core::time::Duration;

use qmp_embedded::{Client, Config, Duplex, Error, ErrorClass, Event, RawJson};

use crate::line::Line;
use crate::link::{Monotonic, SerialIn, SerialOut};
use crate::sys::{self, Errno, Fd};

// Buffer sizes, all owned by the client (see qmp-embedded's crate docs on
// RAM): 384 bytes of buffers here, plus about 900 bytes of driver state
// (session, framer, transmit queue, server info, in-flight table). The client
// lives on the stack of `session`; the first line of the report gives its
// whole size, and the assertion below keeps it under 1.5 KiB.
//
// The smallest configuration that runs this session against QEMU 7.2.22 is
// RX 140, TX 37, EV 25, N 1 (202 bytes of buffers; checked with this binary,
// and by `tests/tests/embedded_pty.rs`; RX 139 times out waiting for the
// greeting, TX 36 cannot send `qmp_capabilities`). That is the configuration
// qmp-embedded documents for query-status/stop/cont: the replies this session
// adds (query-version 114 bytes, the CommandNotFound error 106) are shorter
// than the greeting, and the unknown command's name is short enough for TX.
// The sizes below add a margin for other QEMU builds and events.

/// Receive buffer, 256 bytes of RAM. It bounds the largest message: here the
/// greeting, 140 bytes for Debian's QEMU 7.2.22, most of it the `package`
/// string, which differs between builds; 256 leaves 116 bytes for a longer
/// one. (The largest reply, to `query-version`, repeats that string.)
const RX: usize = 256;

/// Transmit buffer, 64 bytes of RAM. It bounds the largest command
/// (`{"execute":"qmp_capabilities","id":1}`, 37 bytes), and is scratch space
/// for unescaping strings in a decoded reply (none in this session).
const TX: usize = 64;

/// Event queue, 64 bytes of RAM: a `STOP` takes 23 bytes, a `RESUME` 25
/// (19 + the name), and each is popped right after the command that caused
/// it; 64 holds two such events, or one with up to 45 bytes of `data`.
const EV: usize = 64;

/// In-flight table, one slot (about 70 bytes of RAM): commands run one at a
/// time, and any failure ends the session, so no abandoned command ever waits
/// for its late reply while another runs.
const N: usize = 1;

/// How long each `poll(2)` of the link may wait before the client gets to
/// look at its deadlines.
const POLL_INTERVAL_MS: i32 = 50;

/// Deadline for the greeting, each reply and each write. QEMU looks for a
/// client on its pty once a second, so the greeting can take a second.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A command QEMU does not have, to get an error reply. Short, so that it fits
/// the smallest TX (`{"execute":"no-such-command","id":7}` is 36 bytes).
const UNKNOWN_COMMAND: &str = "no-such-command";

/// The link: fd 0 in, fd 1 out.
type Link = Duplex<SerialIn, SerialOut>;

/// The client, with everything it owns.
type Qmp = Client<Link, Monotonic, RX, TX, EV, N>;

/// The client's whole RAM: buffers, event queue, in-flight table and session
/// state (the link and clock add 16 bytes).
const CLIENT_RAM: usize = core::mem::size_of::<Qmp>();
const _: () = assert!(
    CLIENT_RAM <= 1536,
    "the client should fit in 1.5 KiB of RAM"
);

/// Exit status after a panic (the same as `std` uses).
const PANIC_EXIT_STATUS: i32 = 101;

/// The steps of the session; a failed step is the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for QEMU's greeting.
    Greeting = 10,
    /// `qmp_capabilities`.
    Negotiate = 11,
    /// `query-version`, decoded and compared with the greeting.
    QueryVersion = 12,
    /// `query-status` before `stop`: running.
    StatusRunning = 13,
    /// `stop`.
    Stop = 14,
    /// The `STOP` event.
    StopEvent = 15,
    /// `query-status` after `stop`: paused.
    StatusPaused = 16,
    /// `cont`.
    Cont = 17,
    /// The `RESUME` event.
    ResumeEvent = 18,
    /// The unknown command: a `CommandNotFound` error reply.
    ErrorReply = 19,
    /// The last `query-status`: running.
    FinalStatus = 20,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Greeting => "greeting",
            Step::Negotiate => "negotiation",
            Step::QueryVersion => "query-version",
            Step::StatusRunning => "query-status (running)",
            Step::Stop => "stop",
            Step::StopEvent => "STOP event",
            Step::StatusPaused => "query-status (paused)",
            Step::Cont => "cont",
            Step::ResumeEvent => "RESUME event",
            Step::ErrorReply => "error reply",
            Step::FinalStatus => "final query-status",
        }
    }
}

/// A failed step. Its `FAILED` line, which says why, is already written.
#[derive(Debug)]
struct Failed(Step);

/// `?` on a client call, naming the step.
trait At<T> {
    fn at(self, step: Step) -> Result<T, Failed>;
}

impl<T> At<T> for Result<T, Error<Errno>> {
    fn at(self, step: Step) -> Result<T, Failed> {
        self.map_err(|e| client_failed(step, &e))
    }
}

/// The start of the line that reports a failed step.
fn failed_line(step: Step) -> Line {
    let mut line = Line::new();
    line.str("FAILED at ")
        .str(step.name())
        .str(" (exit ")
        .num(step as u64)
        .str("): ");
    line
}

/// Reports that `step` failed with the client error `error`. (Reported here,
/// so that only the step, not the 88-byte error, travels back up.)
#[cold]
fn client_failed(step: Step, error: &Error<Errno>) -> Failed {
    let mut line = failed_line(step);
    describe(&mut line, error);
    line.emit();
    Failed(step)
}

/// Reports that `step` failed because the answer was wrong.
#[cold]
fn unexpected<T>(step: Step, what: &'static str) -> Result<T, Failed> {
    failed_line(step).str(what).emit();
    Err(Failed(step))
}

/// QEMU's `(major, minor, micro)` and package string from `query-version`'s
/// return value, `{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package":
/// "…"}` (`None` if it is not shaped like that).
///
/// Read with [`RawJson`]'s getters, straight from the receive buffer, rather
/// than deserialized with serde (`Client::execute` into a `#[derive(Deserialize)]`
/// struct): the same check of the reply, without linking serde-json-core's
/// deserializer, which would add about 6 KB of text.
fn decode_version(value: RawJson<'_>) -> Option<((u64, u64, u64), &str)> {
    let qemu = value.get("qemu")?;
    let number = |key| qemu.get(key)?.as_u64();
    let version = (number("major")?, number("minor")?, number("micro")?);
    Some((version, value.get("package")?.as_str()?.as_plain()?))
}

/// `status` (a string without escapes) and `running` from `query-status`'s
/// return value, `{"status": "running", "singlestep": false, "running": true}`.
fn decode_status(value: RawJson<'_>) -> Option<(&str, bool)> {
    let status = value.get("status")?.as_str()?.as_plain()?;
    Some((status, value.get("running")?.as_bool()?))
}

/// Body of the program, called by `sys::_start`; returns the exit status.
pub(crate) fn run() -> i32 {
    match session() {
        Ok(()) => {
            Line::new().str("session complete").emit();
            0
        }
        Err(Failed(step)) => step as i32,
    }
}

/// The whole session, one step after another.
fn session() -> Result<(), Failed> {
    let link = Duplex::new(
        SerialIn::new(Fd::STDIN, POLL_INTERVAL_MS),
        SerialOut::new(Fd::STDOUT, POLL_INTERVAL_MS),
    );
    let config = Config::new().timeout(Some(TIMEOUT));
    let mut qmp: Qmp = Client::with_config(link, Monotonic, config);
    Line::new()
        .str("client RAM ")
        .num(CLIENT_RAM as u64)
        .str(" bytes (RX ")
        .num(RX as u64)
        .str(", TX ")
        .num(TX as u64)
        .str(", EV ")
        .num(EV as u64)
        .str(", N ")
        .num(N as u64)
        .str(")")
        .emit();

    let greeting = qmp.wait_greeting().at(Step::Greeting)?;
    let v = greeting.version;
    let greeting_version = (v.major, v.minor, v.micro);
    Line::new()
        .str("greeting QEMU ")
        .version(greeting_version)
        .pick(greeting.oob_offered, ", oob offered", ", oob not offered")
        .emit();

    let info = qmp.negotiate(false).at(Step::Negotiate)?;
    Line::new()
        .str("capabilities negotiated")
        .pick(info.oob_enabled, " (oob enabled)", " (oob not enabled)")
        .str(", command mode")
        .emit();

    let reply = qmp
        .execute_raw("query-version", &())
        .at(Step::QueryVersion)?;
    let Some((version, package)) = decode_version(reply) else {
        return unexpected(Step::QueryVersion, "the reply is not a version");
    };
    Line::new()
        .str("query-version: QEMU ")
        .version(version)
        .str(", package ")
        .str(package)
        .emit();
    if version != greeting_version {
        return unexpected(Step::QueryVersion, "not the version in the greeting");
    }

    expect_status(&mut qmp, Step::StatusRunning, "running", true)?;
    run_command(&mut qmp, Step::Stop, "stop")?;
    expect_event(&mut qmp, Step::StopEvent, "STOP")?;
    expect_status(&mut qmp, Step::StatusPaused, "paused", false)?;
    run_command(&mut qmp, Step::Cont, "cont")?;
    expect_event(&mut qmp, Step::ResumeEvent, "RESUME")?;

    match qmp.execute_raw(UNKNOWN_COMMAND, &()) {
        Err(Error::Qmp(e)) => {
            Line::new()
                .str(UNKNOWN_COMMAND)
                .str(": error ")
                .str(e.class().as_str())
                .str(": ")
                .str(e.desc())
                .emit();
            if e.class() != ErrorClass::CommandNotFound {
                return unexpected(Step::ErrorReply, "not a CommandNotFound error");
            }
        }
        Err(e) => return Err(client_failed(Step::ErrorReply, &e)),
        Ok(_) => return unexpected(Step::ErrorReply, "the unknown command succeeded"),
    }

    expect_status(&mut qmp, Step::FinalStatus, "running", true)
}

/// Runs `name` (a command without arguments that returns `{}`).
fn run_command(qmp: &mut Qmp, step: Step, name: &str) -> Result<(), Failed> {
    qmp.execute_raw(name, &()).at(step)?;
    Line::new().str(name).str(": ok").emit();
    Ok(())
}

/// Runs `query-status` and checks what it says.
fn expect_status(qmp: &mut Qmp, step: Step, status: &str, running: bool) -> Result<(), Failed> {
    let reply = qmp.execute_raw("query-status", &()).at(step)?;
    let Some((got, got_running)) = decode_status(reply) else {
        return unexpected(step, "the reply is not a status");
    };
    Line::new()
        .str("query-status: ")
        .str(got)
        .pick(got_running, " (running: true)", " (running: false)")
        .emit();
    if got != status || got_running != running {
        return unexpected(step, "not the expected status");
    }
    Ok(())
}

/// Takes the next event, which must be `name`. QEMU sends an event caused by
/// a command before that command's reply, so it is normally queued already.
fn expect_event(qmp: &mut Qmp, step: Step, name: &str) -> Result<(), Failed> {
    let mut line = Line::new();
    let matched = match qmp.next_event(TIMEOUT) {
        Ok(event) => {
            show_event(&mut line, &event);
            event.name == name
        }
        Err(Error::Lagged { missed }) => {
            line.str("events lost: ").num(missed);
            false
        }
        Err(Error::Timeout(_)) => return unexpected(step, "no event came"),
        Err(e) => return Err(client_failed(step, &e)),
    };
    line.emit();
    if matched {
        Ok(())
    } else {
        unexpected(step, "not the expected event")
    }
}

/// `event NAME at SECONDS.MICROSECONDS`.
fn show_event(line: &mut Line, event: &Event<'_>) {
    line.str("event ")
        .str(event.name.as_plain().unwrap_or("(escaped name)"))
        .str(" at ")
        .int(event.timestamp.seconds)
        .str(".")
        .num_width(event.timestamp.microseconds.unsigned_abs(), 6);
}

/// A client error, in words (no `Debug`/`Display`: see [`crate::line`]).
fn describe(line: &mut Line, error: &Error<Errno>) {
    let _ = match error {
        Error::Io(errno) => line
            .str("link I/O error, errno ")
            .num(errno.0.unsigned_abs().into()),
        Error::Eof => line.str("the link ended (end of file)"),
        Error::WriteZero => line.str("the link accepted no bytes"),
        Error::Qmp(e) => line
            .str("QMP error ")
            .str(e.class().as_str())
            .str(": ")
            .str(e.desc()),
        Error::Malformed(_) => line.str("malformed reply"),
        Error::TooLarge { size } => line
            .str("a message of ")
            .num(*size)
            .str(" bytes does not fit the receive buffer"),
        Error::Timeout(_) => line.str("timed out"),
        Error::Unframed(_) => line.str("a reply that could not be framed"),
        Error::Lagged { missed } => line.str("events lost: ").num(*missed),
        Error::Disconnected => line.str("the session had ended"),
        Error::Send(_) => line.str("command not sent (too large for TX?)"),
        Error::Decode(_) => line.str("the reply does not decode"),
        _ => line.str("client error"),
    };
}

/// Writes the panic's location (and message, when it is a plain string) to
/// fd 2 and exits with status 101.
#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut line = Line::new();
    line.str("panicked");
    if let Some(location) = info.location() {
        line.str(" at ")
            .str(location.file())
            .str(":")
            .num(location.line().into());
    }
    if let Some(message) = info.message().as_str() {
        line.str(": ").str(message);
    }
    line.emit();
    sys::exit(PANIC_EXIT_STATUS)
}
