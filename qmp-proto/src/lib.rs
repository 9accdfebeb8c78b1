//! A sans-IO, `no_std`, allocation-free core for the QEMU Monitor Protocol (QMP).
//!
//! You read bytes from wherever the monitor is (a socket, a serial port, a test vector) and
//! hand them in; the crate yields greetings, replies and events as borrowed views into a
//! buffer whose size you choose, and encodes commands into buffers you provide. It never does
//! I/O, never reads a clock (time is an input), never allocates, and has no `unsafe`.
//!
//! One module per concern, re-exported flat, layered bottom up (a module uses only the ones
//! below it):
//!
//! | layer | module | what it holds |
//! |---|---|---|
//! | 6 | **session** | [`Session`]: greeting → negotiation → command mode, ids, a bounded in-flight table, deadlines, typed notices for what the protocol says to drop |
//! | 5 | **encode** | [`encode_command`], [`encode_capabilities`], [`encode_json`]: compact JSON into a caller buffer, untouched on error |
//! | 4 | **message** | [`Message`]: greeting, return, error or event, borrowing the frame ([`Frame::message`], [`find_id`]) |
//! | 3 | **framing** | [`find_frame`] and [`Framer`]: complete top-level objects out of a byte stream, typed errors, resynchronisation |
//! | 2 | **skim** | the skimmer of objects too large for the buffer, which keeps their [`SkimmedId`] |
//! | 1 | **json** | [`RawJson`] values (deserialized on demand with serde-json-core), [`JsonStr`] strings kept escaped until asked, the validating cursor |
//! | 0 | **scan** | the structural scanner: depth with string and escape awareness, 64 bytes at a time, and the spans of nested values; [`MAX_SUPPORTED_DEPTH`] |
//!
//! Beside them: **time** ([`Instant`], used by the session), [`commands`] (typed
//! commands and events, on top of everything), and **server** ([`Server`]: the other end,
//! answering the way QEMU 7.2 does, with [`encode_reply`], [`encode_error`], [`encode_event`]).
//!
//! With the feature `agent`, the same [`Driver`] also speaks the dialect of QEMU's guest
//! agent (`qemu-ga`: no greeting, a `guest-sync-delimited` with a random id instead, the
//! 0xFF sentinel, commands that do not answer on success): see `Driver::new_agent` for the
//! agent's rules, with their sources in QEMU, and how the driver applies them. Without it
//! (the default) a QMP-only build links none of the dialect: about 1 KB of the bare-metal
//! guest's flash.
//!
//! Frames are found by nesting depth with string awareness, never by line ends alone (QEMU
//! can pretty-print over many lines), and oversized messages are skimmed for their id.
//!
//! # A whole session, driven from a byte slice
//! ```
//! use qmp_proto::{Instant, Outcome, Received, Session, State};
//!
//! // What a QEMU 7.2 server sends (recorded from the real binary), in one byte string.
//! let server: &[u8] = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\r\n\
//!     {\"return\": {}, \"id\": 1}\r\n\
//!     {\"timestamp\": {\"seconds\": 1795596531, \"microseconds\": 804941}, \"event\": \"STOP\"}\r\n\
//!     {\"return\": {}, \"id\": 2}\r\n\
//!     {\"return\": {\"status\": \"paused\", \"singlestep\": false, \"running\": false}, \"id\": 3}\r\n";
//! let mut input = server.chunks(10); // any chunking gives the same result
//!
//! let mut session: Session<[u8; 512]> = Session::new([0; 512]);
//! let mut out = [0u8; 128];
//! let now = Instant::from_millis(0);
//! let mut events = 0;
//!
//! loop {
//!     // Input: bytes from "the socket".
//!     let Some(chunk) = input.next() else { break };
//!     assert_eq!(session.feed(chunk), chunk.len());
//!     // Output: everything those bytes completed.
//!     while let Some(item) = session.poll() {
//!         match item {
//!             Received::Greeting(g) => {
//!                 assert_eq!(g.version.major, 7);
//!             }
//!             Received::Event(e) => {
//!                 assert!(e.name == "STOP");
//!                 events += 1;
//!             }
//!             Received::Reply(reply) => match reply.outcome {
//!                 Outcome::Return(value) if reply.id.get() == 3 => {
//!                     #[derive(serde::Deserialize)]
//!                     struct Status<'a> { status: &'a str, running: bool }
//!                     let status: Status = value.deserialize().unwrap();
//!                     assert_eq!((status.status, status.running), ("paused", false));
//!                 }
//!                 Outcome::Return(_) => {}
//!                 other => panic!("{other:?}"),
//!             },
//!             Received::Notice(n) => panic!("{n:?}"),
//!         }
//!     }
//!     // Commands, once the state allows them: write `out[..len]` to the server.
//!     if session.state() == State::Negotiating && session.in_flight() == 0 {
//!         let s = session.negotiate(false, None, &mut out).unwrap();
//!         assert_eq!(&out[..s.len], br#"{"execute":"qmp_capabilities","id":1}"#);
//!     }
//!     if session.state() == State::Ready && session.in_flight() == 0 && events == 0 {
//!         session.execute("stop", &(), Some(now), &mut out).unwrap();
//!         let s = session.execute("query-status", &(), None, &mut out).unwrap();
//!         assert_eq!(&out[..s.len], br#"{"execute":"query-status","id":3}"#);
//!     }
//! }
//! assert_eq!(events, 1);
//! assert_eq!(session.in_flight(), 0);
//! ```
//!
//! # Code size
//! The framer scans 64-byte blocks at a time and classification has a fast path for QEMU's
//! exact envelopes; both cost code. Building with `RUSTFLAGS="--cfg qmp_proto_small"` keeps
//! only the byte-at-a-time scanner and the general walk: same behaviour (the test suite runs
//! in both modes), several times slower decoding, about 10 KB less code. The freestanding
//! `qmp-firmware` example builds this way to 43 KB of text.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::std_instead_of_core)]

#[cfg(test)]
extern crate std;

mod buffer;
pub mod commands;
mod driver;
mod encode;
mod events;
mod framing;
mod json;
mod message;
mod scan;
mod server;
mod session;
mod skim;
mod time;

pub use driver::{
    AGENT_SENTINEL, Buffer, CloseReason, Deadline, Done, Driver, DriverConfig, Expired, Io,
    LinkError, NO_REPLY_TIMEOUT, NO_SUCCESS_RESPONSE, RESYNC, SendOptions, ServerInfo, Wait,
    no_reply_timeout,
};
pub use encode::{
    EncodeError, Envelope, QEMU_MAX_MESSAGE, QEMU_MAX_NESTING, QEMU_MAX_TOKENS,
    encode_capabilities, encode_command, encode_json,
};
pub use events::{EVENT_RECORD_HEADER, EventBuffer, EventQueue, EventStore, Lagged};
pub use framing::{DEFAULT_MAX_DEPTH, Frame, FrameError, FrameStatus, Framer, find_frame};
pub use json::{
    Chars, DeserializeError, Elements, JsonKind, JsonStr, Members, RawJson, SyntaxError,
    UnescapeError,
};
pub use message::{
    Capabilities, ErrorClass, ErrorReply, Event, Greeting, Message, MessageError, QmpError, Return,
    Timestamp, Version, find_id,
};
pub use scan::MAX_SUPPORTED_DEPTH;
pub use server::{
    Answer, Incoming, ParseError, Rejection, Request, Server, ServerState, encode_error,
    encode_event, encode_reply,
};
pub use session::{
    CommandId, Config, Failure, Notice, Outcome, QEMU_QUEUE_LEN, Received, Reply, SendError, Sent,
    Session, State,
};
pub use skim::SkimmedId;
pub use time::Instant;

/// serde-json-core, re-exported for its error types and for callers who decode with it
/// directly.
pub use serde_json_core;
