//! QEMU Monitor Protocol (QMP) clients for `no_std` code, over a serial link.
//!
//! Two clients with the same shape and names: [`Client`] (blocking, over any
//! [`embedded_io::Read`] + [`embedded_io::Write`]) and, with the `async` feature,
//! [`asynch::Client`][async-client] (over `embedded_io_async::Read + Write`, the same methods as
//! `async fn`s). Each is the I/O loop of the sans-IO [`qmp_proto::Driver`], which makes
//! every protocol decision (handshake, write queue and resync, deadlines, the event queue
//! and its overflow rule) the same way for every client of this workspace; the two clients
//! are one piece of code, expanded with and without `.await`. `#![no_std]`, no `alloc`, no
//! `unsafe`, and every dependency without its `std` feature, so a freestanding binary can
//! link them.
//!
//! - **Handshake**: [`Client::handshake`] (`oob` is opt-in), or its steps
//!   [`Client::wait_greeting`] (bytes that are not QMP, such as boot noise on a shared serial
//!   line, are skipped) and [`Client::negotiate`]; [`ServerInfo`] says what the server
//!   offered and what was agreed ([`Client::server`]).
//! - **Commands**, one at a time: [`Client::execute`] deserializes the `return` value with
//!   serde-json-core into borrowed (`&str`) or owned (`heapless`) types;
//!   [`Client::execute_raw`] hands out its raw JSON ([`RawJson::as_json`]);
//!   [`Client::execute_command`] runs the core's typed commands;
//!   [`Client::execute_oob`] / [`Client::execute_oob_raw`] send `exec-oob`.
//! - **Events** wait in a bounded queue: [`Client::next_event`] and [`Client::wait_event`]
//!   (by name) wait up to a timeout for one.
//! - **Errors** are values: [`Error<E>`] covers the link (I/O error, end of stream), the
//!   peer (QMP error class and description, malformed, too large), timeouts (which wait ran
//!   out) and lost events.
//! - **Time** comes from the caller's [`Clock`] (any `Fn() -> Instant`).
//! - **The guest agent** (feature `agent`): `Client::new_agent` and `Client::sync` speak
//!   `qemu-ga`'s dialect over the same link (no greeting; the sync with a random id; the 0xFF
//!   sentinel), the rules being the core's. Off by default: QMP-only firmware links none of it.
//! - **No TLS**: these clients speak plain QMP over the link they are given, for a serial
//!   line or a socket on the same host. TLS monitors (QEMU's `tls-creds-x509`) are for
//!   `qmp-std` with its `tls` feature.
//!
//! # Example
//! A whole session against an in-memory link that plays what a real QEMU 7.2.22 sent
//! (recorded), a few bytes per read, then hangs up:
//!
//! ```
//! use core::time::Duration;
//!
//! use embedded_io::{ErrorKind, ErrorType, Read, Write};
//! use qmp_embedded::{Client, Error, Instant};
//! # // With the defmt feature (and DEFMT_LOG set), a binary needs a defmt logger.
//! # #[cfg(feature = "defmt")]
//! # mod host_logger {
//! #     #[defmt::global_logger]
//! #     struct Discard;
//! #     unsafe impl defmt::Logger for Discard {
//! #         fn acquire() {}
//! #         unsafe fn flush() {}
//! #         unsafe fn release() {}
//! #         unsafe fn write(_: &[u8]) {}
//! #     }
//! #     defmt::timestamp!("");
//! # }
//!
//! /// Plays the server's recorded bytes, 7 per read, whatever the client writes.
//! struct Scripted {
//!     rx: &'static [u8],
//! }
//!
//! impl ErrorType for Scripted {
//!     type Error = ErrorKind;
//! }
//!
//! impl Read for Scripted {
//!     fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
//!         let n = buf.len().min(self.rx.len()).min(7);
//!         buf[..n].copy_from_slice(&self.rx[..n]);
//!         self.rx = &self.rx[n..];
//!         Ok(n) // 0 once the script is over: the end of the link
//!     }
//! }
//!
//! impl Write for Scripted {
//!     fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
//!         Ok(buf.len())
//!     }
//!     fn flush(&mut self) -> Result<(), ErrorKind> {
//!         Ok(())
//!     }
//! }
//!
//! // Recorded from qemu-system-x86_64 7.2.22: the greeting, the replies to
//! // qmp_capabilities (id 1), stop (id 2, with its STOP event first) and query-status (id 3).
//! const SERVER: &[u8] = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\r\n\
//!     {\"return\": {}, \"id\": 1}\r\n\
//!     {\"timestamp\": {\"seconds\": 1795598181, \"microseconds\": 811501}, \"event\": \"STOP\"}\r\n\
//!     {\"return\": {}, \"id\": 2}\r\n\
//!     {\"return\": {\"status\": \"paused\", \"singlestep\": false, \"running\": false}, \"id\": 3}\r\n";
//!
//! #[derive(serde::Deserialize)]
//! struct Status<'a> {
//!     status: &'a str,
//!     running: bool,
//! }
//!
//! let ticks = core::cell::Cell::new(0u64); // e.g. a millisecond timer
//! let clock = || Instant::from_millis(ticks.get());
//! // 512-byte receive buffer, 128-byte transmit buffer, 128-byte event queue, 2 slots.
//! let mut qmp: Client<_, _, 512, 128, 128, 2> = Client::new(Scripted { rx: SERVER }, clock);
//!
//! let info = qmp.handshake(false)?;
//! assert_eq!((info.version.major, info.version.minor), (7, 2));
//!
//! qmp.execute_raw("stop", &())?; // returns `{}`
//! // QEMU sent STOP before the reply to `stop`: it is queued already.
//! let event = qmp.next_event(Duration::ZERO)?;
//! assert!(event.name == "STOP");
//!
//! let status: Status = qmp.execute("query-status", &())?;
//! assert_eq!((status.status, status.running), ("paused", false));
//!
//! // The server hung up: a typed error, not a hang; later calls fail fast.
//! assert_eq!(qmp.execute_raw("cont", &()).unwrap_err(), Error::Eof);
//! assert_eq!(qmp.execute_raw("cont", &()).unwrap_err(), Error::Disconnected);
//! # Ok::<(), Error<ErrorKind>>(())
//! ```
//!
//! # Links, time and timeouts
//! The clients never read a clock of their own; they ask the [`Clock`] whenever the link's
//! `read` or `write` returns, and only then. So:
//!
//! - **A link's `read` must return now and then for timeouts to fire.** A serial read that
//!   blocks until a byte arrives blocks forever when QEMU falls silent. Give the link its own
//!   poll interval and make it return an error whose [`kind()`](embedded_io::Error::kind) is
//!   [`ErrorKind::TimedOut`](embedded_io::ErrorKind::TimedOut) (or `Interrupted`) when
//!   nothing came: the client checks its deadlines and reads again. A driver that returns
//!   `Ok(0)` on its timeout instead works with [`Config::zero_read_is_eof`]`(false)`.
//!   Otherwise `Ok(0)` is the end of the link, and any other error is [`Error::Io`] (the
//!   session goes on).
//! - **Writes** are retried on `TimedOut`/`Interrupted` until the deadline, and continued
//!   after short writes; the link is flushed before the client reads. A command cut off
//!   midway is dropped and the byte `0x01` sent before the next one (the driver's rule, see
//!   [`qmp_proto::Driver`]; checked on QEMU 7.2.22).
//! - **Deadlines**: [`Config::timeout`] (5 s by default, [`DEFAULT_TIMEOUT`]) bounds the
//!   handshake (greeting and negotiation together: [`Expired::Greeting`]) and each command,
//!   its writing included ([`Expired::Command`]); a reply that comes later is dropped. Event
//!   waits take their own timeout ([`Expired::Event`]).
//!
//! For a Linux process whose fds 0 and 1 are a pty to QEMU, a link is two small types
//! implementing `embedded_io::Read` (`poll(2)` on fd 0 with a timeout, then `read(2)`;
//! nothing ready → `ErrorKind::TimedOut`, `EINTR` → `Interrupted`, `EIO`/0 bytes when QEMU
//! closes the pty → the end) and `embedded_io::Write` (`write(2)` on fd 1), joined with
//! [`Duplex`]; the clock is `clock_gettime(CLOCK_MONOTONIC)` in microseconds.
//!
//! With the async client, the link's `read` can get its timeout by racing a timer (e.g.
//! `embassy_time::with_timeout`, mapping the timeout to `ErrorKind::TimedOut`). Dropping a
//! client future midway is safe: see [`asynch::Client`][async-client].
//!
//! # Events: a bounded queue of copies
//! Events that arrive while a command waits (QEMU sends an event caused by a command before
//! that command's reply, e.g. `STOP` before the reply to `stop`) are copied into a queue of
//! `EV` bytes inside the client ([`qmp_proto::EventBuffer`]), in order.
//! [`Client::next_event`]`(timeout)` hands out the oldest as an [`Event`] view, reading the
//! link for up to `timeout` if none is queued (`Duration::ZERO`: only what was already
//! received); [`Client::wait_event`]`(name, timeout)` the oldest called `name`, leaving the
//! others queued. Nothing by then is [`Error::Timeout`]`(`[`Expired::Event`]`)`. Each event
//! takes 19 bytes plus its name and `data` JSON (`STOP`: 23 bytes, `RESET` with its data: 73).
//!
//! Why a queue and not a callback: the caller usually wants to *react* to an event with a
//! command (`STOP` → `cont`), which a callback running inside the client's read loop cannot
//! do (the client is borrowed); a callback cannot `.await` in the async client; and a
//! closure type in the client's type makes it hard to name in a `static`. The queue costs
//! `EV` bytes of RAM, chosen by the caller, and decouples reading from handling.
//!
//! **Nothing is dropped silently**: the queue has the driver's one overflow rule (drop the
//! newest, report the gap where it is; see [`qmp_proto::EventQueue`]). The gap comes out of
//! `next_event` as [`Error::Lagged`] `{ missed }`, once, exactly where it is;
//! [`Client::events_lost`] counts every lost event. An event larger than the receive buffer
//! is counted the same way. `EV = 0` is valid: every event is then only counted.
//!
//! # Errors
//! [`Error<E>`] (`E` is the link's error type): `Io(E)` and `WriteZero` for the link, `Eof`
//! when it ends (then `Disconnected` for every later call); `Qmp(`[`ServerError`]`)` (class as
//! [`ErrorClass`], description copied and unescaped, up to 80 bytes), `Malformed`,
//! `TooLarge { size }` and `Unframed` for the peer; `Timeout(`[`Expired`]`)` for a wait that
//! ran out; `Send` (not negotiated, `exec-oob` without `oob`, command larger than `TX`) and
//! `Decode` (the `return` value does not fit the type) for local limits; `Lagged` for lost
//! events. Helpers: [`Error::is_timeout`], [`Error::is_disconnect`], [`Error::is_qmp`],
//! [`Error::is_protocol`]. After any error the client stays usable unless the link ended: a
//! command that failed, timed out or whose call was dropped is abandoned when the next one
//! starts, and its late reply dropped. The client never panics on what the peer sends.
//!
//! # RAM
//! Everything lives inside the client, sized by const generics:
//! `Client<L, C, RX, TX, EV, N>` owns a [`qmp_proto::Driver`] with an `RX`-byte receive
//! buffer (bounds the largest message: greeting, reply or event), a `TX`-byte transmit
//! buffer (bounds the largest command, and serves as scratch space for unescaping strings in
//! a `return` value), an `EV`-byte event queue, and an `N`-slot in-flight table.
//! `core::mem::size_of` on x86-64 (checked by `tests/ram.rs`; 32-bit targets need less),
//! with a zero-sized link and clock:
//!
//! | configuration | `RX` | `TX` | `EV` | `N` | `size_of` |
//! |---|---:|---:|---:|---:|---:|
//! | smallest for query-status / stop / cont | 140 | 37 | 25 | 1 | 1104 |
//! | small | 256 | 64 | 64 | 1 | 1272 |
//! | default (`Client<L, C>`) | 1024 | 256 | 256 | 2 | 2496 |
//! | large (`query-commands` is ~6.5 KB) | 8192 | 512 | 1024 | 8 | 11120 |
//!
//! That is `RX + TX + EV` plus about 830 bytes of driver state (session, framer, transmit
//! queue, the server's greeting with its package string, the held outcome, settings), plus
//! about 70 bytes per in-flight slot. The smallest configuration that runs a session of
//! `query-status`, `stop` and `cont` against QEMU 7.2 (`tests/blocking.rs`,
//! `smallest_configuration`) is `RX = 140` (QEMU 7.2.22's Debian greeting is 140 bytes; with
//! 139 it does not fit and the handshake times out), `TX = 37` (`qmp_capabilities` with id
//! 1, the longest command), `EV = 25` (one `RESUME`, popped after each command) and `N = 1`.
//! `N = 2` lets a command abandoned after an I/O error or a dropped future wait for its
//! reply while the next one runs (with `N = 1` the next one waits for room, up to its
//! deadline). An [`Error`] is 88 bytes.
//!
//! # Features
//! - `async`: [`asynch::Client`][async-client] over `embedded-io-async` 0.7.
//! - `defmt`: `defmt::Format` on the public types, and the clients log their protocol steps
//!   (commands sent, the greeting, abandoned commands, the end of the link) through defmt at `debug`/`info`/`warn`;
//!   without it they log through nothing. A binary that enables it provides the
//!   `#[defmt::global_logger]` as usual.
//!
//! [async-client]: asynch/struct.Client.html "qmp_embedded::asynch::Client (the `async` feature)"
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::std_instead_of_core)]

/// Logs a protocol step through defmt with the `defmt` feature, and through nothing without
/// it (the arguments are still evaluated by reference, so nothing is unused).
macro_rules! log {
    ($level:ident, $fmt:literal $(, $arg:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        defmt::$level!($fmt $(, $arg)*);
        #[cfg(not(feature = "defmt"))]
        {
            $(let _ = &$arg;)*
        }
    }};
}

#[cfg(feature = "async")]
pub mod asynch;
pub mod blocking;
mod client;
mod clock;
mod config;
mod error;
mod link;

pub use blocking::Client;
pub use clock::Clock;
pub use config::{Config, DEFAULT_TIMEOUT};
pub use error::{Error, ErrorClass, ServerError};
pub use link::Duplex;

pub use qmp_proto;
pub use qmp_proto::{Event, Expired, Instant, RawJson, ServerInfo, State};
