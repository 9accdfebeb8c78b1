//! The guest proper, in safe code: the QMP session over COM1, one report line
//! per step on COM2, and the result through `isa-debug-exit`.
//!
//! | step | what | `isa-debug-exit` code on failure (QEMU's exit status) |
//! |---:|---|---|
//! | 1 | handshake: greeting, `qmp_capabilities` | 1 (3) |
//! | 2 | `query-version`, the same version as the greeting | 2 (5) |
//! | 3 | `query-status`: running | 3 (7) |
//! | 4 | `stop`, and its `STOP` event | 4 (9) |
//! | 5 | `cont`, and its `RESUME` event | 5 (11) |
//! | 6 | `query-status`: running again | 6 (13) |
//!
//! Code 0 (QEMU's status 1) means every step passed; a panic is code
//! [`PANIC_CODE`]. Each step has a deadline ([`STEP_TIMEOUT`]), so a silent
//! or cut link ends the guest within it with that step's code.
//!
//! `stop` and `cont` go out together, `cont` right behind `stop` in one
//! burst of the link ([`Link::send_behind_next_write`]): when the monitor is
//! this VM's own, QEMU stops this very CPU when it runs `stop`, and a stopped
//! CPU could never send the `cont` afterwards. QEMU runs one command after the
//! other, so the VM is stopped (`STOP`), then resumed (`RESUME`); with the
//! monitor of another VM it is the same sequence.

use core::panic::PanicInfo;
use core::time::Duration;

use qmp_embedded::{Client, Config, Error, RawJson};

use crate::clock::Clock;
use crate::report::Line;
use crate::uart::{Link, Uart};
use crate::{boot, hw};

/// `isa-debug-exit` code after a panic (QEMU exits with 201).
pub const PANIC_CODE: u32 = 100;

/// The deadline of each step: the handshake, each command (its writing
/// included) and each event wait. QEMU answers within milliseconds; the
/// greeting is normally waiting already when the guest starts.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one `read` or `write` of the link polls the UART before it
/// returns to the client, which then checks its deadlines.
const POLL_INTERVAL_US: u64 = 10_000;

/// The `cont` sent right behind `stop`. Its id is not one the client would
/// pick (it numbers its own commands), so the client drops the reply as not
/// its own (and counts it); the `RESUME` event says that it ran.
const CONT: &[u8] = br#"{"execute":"cont","id":"cont"}"#;

/// Receive buffer: the greeting (140 bytes from Debian's QEMU 7.2.22) and the
/// `query-version` reply are the largest messages.
const RX: usize = 256;
/// Transmit buffer: the largest command is `qmp_capabilities` (37 bytes).
const TX: usize = 64;
/// Event queue: `STOP` (23 bytes) and `RESUME` (25) both fit.
const EV: usize = 96;
/// One command at a time.
const N: usize = 1;

/// The client, with everything it owns.
type Qmp = Client<Link, Clock, RX, TX, EV, N>;

/// The steps; a failed step's number is the `isa-debug-exit` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Handshake = 1,
    QueryVersion = 2,
    QueryStatus = 3,
    Stop = 4,
    Cont = 5,
    FinalStatus = 6,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Handshake => "handshake",
            Step::QueryVersion => "query-version",
            Step::QueryStatus => "query-status",
            Step::Stop => "stop",
            Step::Cont => "cont",
            Step::FinalStatus => "query-status",
        }
    }

    /// The start of this step's line: `step N NAME: `.
    fn line(self) -> Line {
        let mut line = Line::new();
        line.str("step ")
            .num(self as u64)
            .str(" ")
            .str(self.name())
            .str(": ");
        line
    }
}

/// A failed step, and why.
#[derive(Debug)]
struct Failed {
    step: Step,
    why: &'static str,
}

/// The failure of `step` because of `why`.
fn fail(step: Step, why: &'static str) -> Failed {
    Failed { step, why }
}

/// `?` on a client call, naming the step.
trait At<T> {
    fn at(self, step: Step) -> Result<T, Failed>;
}

impl<T, E> At<T> for Result<T, Error<E>> {
    fn at(self, step: Step) -> Result<T, Failed> {
        self.map_err(|e| fail(step, describe(&e)))
    }
}

/// A client error in words (no `Debug`/`Display`: see [`crate::report`]).
fn describe<E>(error: &Error<E>) -> &'static str {
    match error {
        Error::Timeout(_) => "timed out",
        Error::Eof | Error::Disconnected => "link ended",
        Error::Io(_) | Error::WriteZero => "link error",
        Error::Qmp(_) => "QMP error",
        Error::Malformed(_) | Error::Unframed(_) => "malformed",
        Error::TooLarge { .. } => "message too large",
        Error::Lagged { .. } => "events lost",
        Error::Send(_) => "not sent",
        Error::Decode(_) => "bad reply",
        _ => "error",
    }
}

/// Body of the guest, called by the boot code: sets up the clock and the
/// UARTs, runs the session and ends the VM with its result.
pub fn run() -> ! {
    let clock = Clock::calibrate();
    Uart::new(Uart::COM2);
    let link = Link::new(Uart::new(Uart::COM1), clock, POLL_INTERVAL_US);
    Line::new()
        .str("booted, TSC ")
        .num(clock.mhz())
        .str(" MHz")
        .emit();
    let mut qmp: Qmp = Client::with_config(link, clock, Config::new().timeout(Some(STEP_TIMEOUT)));
    let code = match session(&mut qmp) {
        Ok(()) => {
            Line::new()
                .str("all steps passed in ")
                .num(clock.micros() / 1000)
                .str(" ms")
                .emit();
            0
        }
        Err(Failed { step, why }) => {
            step.line()
                .str("FAILED at ")
                .num(clock.micros() / 1000)
                .str(" ms: ")
                .str(why)
                .emit();
            step as u32
        }
    };
    Line::new()
        .str("client RAM ")
        .num(core::mem::size_of::<Qmp>() as u64)
        .str(" B, stack used ")
        .num(boot::stack_used() as u64)
        .str(" B; exit code ")
        .num(code.into())
        .emit();
    hw::exit(code)
}

/// The steps, one after the other.
fn session(qmp: &mut Qmp) -> Result<(), Failed> {
    let info = qmp.handshake(false).at(Step::Handshake)?;
    let v = info.version;
    let greeting_version = (v.major, v.minor, v.micro);
    Step::Handshake
        .line()
        .str("ok, QEMU ")
        .version(greeting_version)
        .emit();

    let reply = qmp
        .execute_raw("query-version", &())
        .at(Step::QueryVersion)?;
    let Some(version) = decode_version(reply) else {
        return Err(fail(Step::QueryVersion, "not a version"));
    };
    if version != greeting_version {
        return Err(fail(Step::QueryVersion, "version mismatch"));
    }
    Step::QueryVersion
        .line()
        .str("ok, QEMU ")
        .version(version)
        .emit();

    expect_running(qmp, Step::QueryStatus)?;

    qmp.link_mut().send_behind_next_write(CONT);
    qmp.execute_raw("stop", &()).at(Step::Stop)?;
    qmp.wait_event("STOP", STEP_TIMEOUT).at(Step::Stop)?;
    Step::Stop.line().str("ok, STOP event").emit();

    qmp.wait_event("RESUME", STEP_TIMEOUT).at(Step::Cont)?;
    Step::Cont.line().str("ok, RESUME event").emit();

    expect_running(qmp, Step::FinalStatus)
}

/// Runs `query-status`, which must say `running`.
fn expect_running(qmp: &mut Qmp, step: Step) -> Result<(), Failed> {
    let reply = qmp.execute_raw("query-status", &()).at(step)?;
    let status = reply
        .get("status")
        .and_then(|s| s.as_str())
        .and_then(|s| s.as_plain());
    let running = reply.get("running").and_then(|r| r.as_bool());
    if status != Some("running") || running != Some(true) {
        return Err(fail(step, "not running"));
    }
    step.line().str("ok, running").emit();
    Ok(())
}

/// QEMU's `(major, minor, micro)` from `query-version`'s return value.
fn decode_version(value: RawJson<'_>) -> Option<(u64, u64, u64)> {
    let qemu = value.get("qemu")?;
    let number = |key| qemu.get(key)?.as_u64();
    Some((number("major")?, number("minor")?, number("micro")?))
}

/// Writes the panic's location (and message, when it is a plain string) to
/// COM2 and ends the VM with [`PANIC_CODE`].
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
    hw::exit(PANIC_CODE)
}
