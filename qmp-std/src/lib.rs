//! A blocking QEMU Monitor Protocol (QMP) client over std streams.
//!
//! Built on the sans-IO core [`qmp_proto`]: [`Client`] is a loop around
//! [`qmp_proto::Driver`], which makes every protocol decision (the handshake, command
//! deadlines, waiting for room in flight, stalls, the event queue and its overflow rule, what
//! a failed write means); the client only writes the bytes the driver queued, reads into its
//! receive buffer with the read timeout armed to the driver's next deadline, and decodes
//! results straight from the received bytes into your types.
//!
//! - [`Client`] over any [`Stream`] (Unix socket, TCP, or your own), with
//!   [`Client::connect_unix`] / [`Client::connect_tcp`] and [`ClientBuilder`] for options
//!   (timeouts, maximum reply size, out-of-band execution).
//! - Typed commands through [`Command`] (the common ones are in [`commands`]), raw ones by
//!   name with [`serde_json::Value`] arguments, `exec-oob`, HMP, fd passing over Unix sockets.
//!   There is one `Command` trait, the core's ([`qmp_proto::commands::Command`], re-exported
//!   here, like [`EventKind`]): the clients take any command whose output owns its data
//!   (`for<'de> C::Output<'de>: DeserializeOwned`) and return `C::Output<'static>`. The core
//!   commands whose outputs borrow from the reply (`query-version`, `query-name`,
//!   `human-monitor-command`) have owned twins of the same names in [`commands`].
//! - Pipelining: [`Client::send`] several commands, [`Client::wait`] for each in any order,
//!   or [`Client::abandon`] one (its late reply is discarded by id).
//! - Events are queued as they arrive and never lost silently: [`Client::events`],
//!   [`Client::next_event`], [`Client::wait_event`]. The queue is bounded
//!   ([`Options::max_queued_events`]); when it is full new events are dropped and the gap is
//!   reported where it is: [`Error::Lagged`], [`Client::events_lost`].
//! - Every wait is bounded, waiting for room in flight by the command's own deadline; a
//!   closed or stalled peer gives each waiting command a typed [`Error`]. A command whose
//!   write is cut off is dropped, and QEMU told to drop the fragment, before the next one.
//! - [`SharedClient`]: one connection shared by many threads (`Clone + Send + Sync`), a
//!   reader thread routing replies to their callers and events to every [`Subscription`].
//! - With the `tokio` feature, `qmp_std::tokio::Client`: the async twin, shared by many
//!   tasks, with cancel-safe commands and event streams. All share one core with
//!   [`Client`] and the same verbs (`execute`, `execute_timeout`, `send`/`wait`, `abandon`,
//!   `next_event`, `wait_event`, …).
//! - With the `tls` feature, `qmp_std::tls`: TLS monitors (QEMU's `tls-creds-x509`) for
//!   all three clients, `connect_tls` with a `tls::TlsConfig` (CA file or system roots,
//!   client certificate, server name); failed checks are [`Error::Tls`] with a
//!   [`TlsFailure`].
//! - [`agent::Agent`]: QEMU's guest agent (`qemu-ga`) on the same driver and loop, synced
//!   on every connect and after a timeout, over a Unix socket, TCP, a serial line
//!   ([`Serial`]) or any stream, with typed guest commands in [`agent_commands`].
//! - For your tests, [`fake::FakeQemu`]: a fake QEMU on a socket pair or path, answering
//!   commands through your handlers with QEMU's exact greeting, negotiation and errors
//!   (built on [`qmp_proto::Server`]), pushing events, delaying or dropping replies.
//! - [`transcript`]: record every message each way ([`transcript::Recorder`], the format
//!   `qmp-shell -l` writes); [`replay`] plays a transcript back as a fake QEMU that checks
//!   the client sends what was recorded.
//!
//! # Talking to QEMU
//! ```no_run
//! use std::time::Duration;
//! use qmp_std::commands::{events, Cont, QueryStatus, Stop};
//! use qmp_std::{Client, EventKind};
//!
//! // qemu-system-x86_64 ... -qmp unix:/tmp/qmp.sock,server=on,wait=off
//! let mut qmp = Client::connect_unix("/tmp/qmp.sock")?;
//! println!("QEMU {}", qmp.server().version);
//!
//! qmp.execute(&Stop)?;
//! let stop = qmp.wait_event(events::Stop::NAME, Duration::from_secs(1))?;
//! println!("paused at {:?}: {:?}", stop.timestamp, qmp.execute(&QueryStatus)?.status);
//! qmp.execute(&Cont)?;
//!
//! // Commands without a type: by name, with JSON arguments.
//! let path = qmp.execute_raw("qom-get", &serde_json::json!({"path": "/machine", "property": "type"}))?;
//! println!("{path}");
//! println!("{}", qmp.hmp("info status")?);
//! # Ok::<(), qmp_std::Error>(())
//! ```
//!
//! # Against an in-memory server
//! Any `Read + Write` works. This one plays QEMU 7.2's part of a session (recorded from the
//! real binary): the greeting, then one answer for each command written.
//! ```
//! use std::io::{self, Read, Write};
//! use qmp_std::commands::{QueryStatus, RunState, Stop};
//!
//! struct Replay { unread: &'static [u8], answers: Vec<&'static [u8]>, sent: Vec<u8> }
//! impl Read for Replay {
//!     fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> { self.unread.read(buf) }
//! }
//! impl Write for Replay {
//!     fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
//!         self.sent.extend_from_slice(buf);
//!         self.unread = if self.answers.is_empty() { b"" } else { self.answers.remove(0) };
//!         Ok(buf.len())
//!     }
//!     fn flush(&mut self) -> io::Result<()> { Ok(()) }
//! }
//! impl qmp_std::Stream for Replay {}
//!
//! let qemu = Replay {
//!     unread: b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n",
//!     answers: vec![
//!         b"{\"return\": {}, \"id\": 1}\r\n",
//!         b"{\"timestamp\": {\"seconds\": 1795596531, \"microseconds\": 804941}, \"event\": \"STOP\"}\r\n\
//!           {\"return\": {}}\r\n",
//!         b"{\"return\": {\"status\": \"paused\", \"singlestep\": false, \"running\": false}}\r\n",
//!     ],
//!     sent: Vec::new(),
//! };
//! let mut qmp = qmp_std::Client::new(qemu)?;
//! assert_eq!(qmp.server().version.to_string(), "7.2.22");
//!
//! qmp.execute(&Stop)?;
//! assert_eq!(qmp.execute(&QueryStatus)?.status, RunState::Paused);
//! assert_eq!(qmp.events().map(|e| e.name).collect::<Vec<_>>(), ["STOP"]);
//! // A command alone in flight goes without its id (`Options::untagged_when_alone`), and
//! // QEMU's reply without one is that command's.
//! assert_eq!(
//!     qmp.stream().sent,
//!     br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}{"execute":"stop"}{"execute":"query-status"}"#
//! );
//!
//! // The replay is over, as if QEMU had closed the connection.
//! assert!(matches!(qmp.execute(&QueryStatus), Err(qmp_std::Error::Disconnected)));
//! # Ok::<(), qmp_std::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// The builder setters the blocking and tokio clients share, so their rules (such as the
/// smallest buffer sizes) stay the same in both. Expands inside an `impl` of a type with an
/// `options: Options` field.
macro_rules! shared_option_setters {
    () => {
        /// See [`Options::connect_timeout`].
        pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
            self.options.connect_timeout = timeout;
            self
        }

        /// See [`Options::max_reply_size`].
        pub fn max_reply_size(mut self, bytes: usize) -> Self {
            self.options.max_reply_size = bytes.max(64);
            self
        }

        /// See [`Options::initial_buffer`].
        pub fn initial_buffer(mut self, bytes: usize) -> Self {
            self.options.initial_buffer = bytes.max(64);
            self
        }

        /// See [`Options::oob`].
        pub fn oob(mut self, enable: bool) -> Self {
            self.options.oob = enable;
            self
        }

        /// See [`Options::negotiate`].
        pub fn negotiate(mut self, negotiate: bool) -> Self {
            self.options.negotiate = negotiate;
            self
        }

        /// See [`Options::command_timeout`]: the default bound of each command, from its
        /// call.
        pub fn command_timeout(mut self, timeout: Option<Duration>) -> Self {
            self.options.command_timeout = timeout;
            self
        }

        /// See [`Options::read_timeout`]: how long the server may send nothing while
        /// commands wait before the connection is given up ([`Error::Stalled`]).
        pub fn read_timeout(mut self, timeout: Option<Duration>) -> Self {
            self.options.read_timeout = timeout;
            self
        }

        /// See [`Options::max_in_flight`] (QEMU queues at most 8 in-band commands; the
        /// in-flight table holds 16, and out-of-band commands keep at least 4 of them).
        pub fn max_in_flight(mut self, n: usize) -> Self {
            self.options.max_in_flight = n.max(1);
            self
        }

        /// See [`Options::untagged_when_alone`].
        pub fn untagged_when_alone(mut self, on: bool) -> Self {
            self.options.untagged_when_alone = on;
            self
        }

        /// See [`Options::check_arguments`].
        #[cfg(feature = "qapi")]
        pub fn check_arguments(mut self, on: bool) -> Self {
            self.options.check_arguments = on;
            self
        }
    };
}

/// The getters of the clients that share one connection ([`SharedClient`] and the tokio
/// client), so they read the same. Expands inside the `impl` of a type with
/// `inner() -> &Inner`, where `Inner` has a `server` field and `lock()` gives a guard whose
/// `$($hub)*` path is the [`hub::Hub`].
macro_rules! hub_getters {
    ($($hub:tt)*) => {
        /// What the server's greeting said, and what was negotiated.
        pub fn server(&self) -> &ServerInfo {
            &self.inner().server
        }

        /// Whether out-of-band execution was negotiated.
        pub fn oob_enabled(&self) -> bool {
            self.inner().server.oob_enabled
        }

        /// Whether the connection is gone (every later command fails).
        pub fn is_closed(&self) -> bool {
            self.inner().lock()$($hub)*.is_closed()
        }

        /// Commands sent and not answered yet, abandoned ones still owed a reply included.
        pub fn in_flight(&self) -> usize {
            self.inner().lock()$($hub)*.driver.in_flight()
        }

        /// Late replies to abandoned (timed-out or cancelled) commands, discarded by id so
        /// far.
        pub fn discarded_replies(&self) -> u64 {
            self.inner().lock()$($hub)*.driver.discarded_replies()
        }

        /// Messages dropped as the protocol asks (replies matching no command, id-less
        /// errors, malformed frames without a command to blame), so far.
        pub fn dropped_messages(&self) -> u64 {
            self.inner().lock()$($hub)*.driver.dropped_messages()
        }
    };
}

/// The command methods of the three clients ("One verb, one meaning"), written once.
/// Expands inside a client's `impl`: `[mut]` or `[]` for the receiver, `[async] [.await]`
/// or `[] []`, and `$call`, the client's primitive
/// `fn $call<A: Serialize + ?Sized, T: DeserializeOwned>(&self, Request<'_, A>) -> Result<T>`
/// (`async` and `&mut self` as the client's methods are). `oob` names the setting that
/// enables out-of-band execution; the attributes in braces are added to the docs. Arms:
/// `commands:` (every verb), `in_band:` (`execute`, `execute_raw` and their `_timeout`
/// forms alone: the guest agent's clients), `fds:` (the `_with_fds` verbs).
macro_rules! command_verbs {
    (
        commands: [$($mut:tt)?] [$($async:tt)?] [$($await:tt)*] $call:ident,
        oob: $oob:literal,
        execute: {$(#[$execute_doc:meta])*}
    ) => {
        command_verbs! {
            in_band: [$($mut)?] [$($async)?] [$($await)*] $call,
            execute: {$(#[$execute_doc])*}
        }

        /// Runs a typed command out of band (`exec-oob`): its reply may overtake in-band
        /// ones.
        #[doc = concat!("Needs [`", $oob, "`] and a server that offers it, and a command QEMU")]
        /// allows out of band (in 7.2: `migrate-recover`, `migrate-pause`, `yank`,
        /// `query-yank`).
        pub $($async)? fn execute_oob<C>(
            &$($mut)? self,
            command: &C,
        ) -> Result<C::Output<'static>>
        where
            C: Command,
            for<'de> C::Output<'de>: DeserializeOwned,
        {
            self.$call(crate::drive::Request::new(true, C::NAME, command, None, &[])) $($await)*
        }

        /// [`execute_raw`](Self::execute_raw), out of band.
        pub $($async)? fn execute_oob_raw(
            &$($mut)? self,
            name: &str,
            arguments: &Value,
        ) -> Result<Value> {
            self.$call(crate::drive::Request::new(true, name, arguments, None, &[])) $($await)*
        }

        /// Runs an HMP command line through `human-monitor-command` and returns its output.
        pub $($async)? fn hmp(&$($mut)? self, command_line: &str) -> Result<String> {
            self.execute(&HumanMonitorCommand::new(command_line)) $($await)*
        }
    };
    // The in-band verbs alone (the guest agent's clients have no oob and no HMP).
    (
        in_band: [$($mut:tt)?] [$($async:tt)?] [$($await:tt)*] $call:ident,
        execute: {$(#[$execute_doc:meta])*}
    ) => {
        /// Runs a typed command and waits for its result, within the client's command
        /// timeout.
        $(#[$execute_doc])*
        pub $($async)? fn execute<C>(
            &$($mut)? self,
            command: &C,
        ) -> Result<C::Output<'static>>
        where
            C: Command,
            for<'de> C::Output<'de>: DeserializeOwned,
        {
            self.$call(crate::drive::Request::new(false, C::NAME, command, None, &[])) $($await)*
        }

        /// [`execute`](Self::execute) with a deadline of its own (`None`: wait forever), which
        /// also bounds waiting for room in flight. When it passes, this returns
        /// [`Error::Timeout`](crate::Error::Timeout)`(`[`Expired::Command`](qmp_proto::Expired::Command)`)`
        /// and the command's late reply is discarded.
        pub $($async)? fn execute_timeout<C>(
            &$($mut)? self,
            command: &C,
            timeout: Option<Duration>,
        ) -> Result<C::Output<'static>>
        where
            C: Command,
            for<'de> C::Output<'de>: DeserializeOwned,
        {
            let request = crate::drive::Request::new(false, C::NAME, command, Some(timeout), &[]);
            self.$call(request) $($await)*
        }

        /// Runs a command by name with JSON arguments (an object, or `Value::Null` for none)
        /// and returns its result as JSON.
        pub $($async)? fn execute_raw(
            &$($mut)? self,
            name: &str,
            arguments: &Value,
        ) -> Result<Value> {
            self.$call(crate::drive::Request::new(false, name, arguments, None, &[])) $($await)*
        }

        /// [`execute_raw`](Self::execute_raw) with a deadline of its own; see
        /// [`execute_timeout`](Self::execute_timeout).
        pub $($async)? fn execute_raw_timeout(
            &$($mut)? self,
            name: &str,
            arguments: &Value,
            timeout: Option<Duration>,
        ) -> Result<Value> {
            let request = crate::drive::Request::new(false, name, arguments, Some(timeout), &[]);
            self.$call(request) $($await)*
        }
    };
    (
        fds: [$($mut:tt)?] [$($async:tt)?] [$($await:tt)*] $call:ident,
        execute_with_fds: {$(#[$fds_doc:meta])*}
    ) => {
        /// Runs a typed command with file descriptors attached (`SCM_RIGHTS`, Unix sockets
        /// only), as `getfd` and `add-fd` need: they travel with the command's first bytes.
        /// QEMU duplicates them, so the caller still owns (and may close) its copies.
        $(#[$fds_doc])*
        pub $($async)? fn execute_with_fds<C>(
            &$($mut)? self,
            command: &C,
            fds: &[BorrowedFd<'_>],
        ) -> Result<C::Output<'static>>
        where
            C: Command,
            for<'de> C::Output<'de>: DeserializeOwned,
        {
            self.$call(crate::drive::Request::new(false, C::NAME, command, None, fds)) $($await)*
        }

        /// [`execute_raw`](Self::execute_raw) with file descriptors attached; see
        /// [`execute_with_fds`](Self::execute_with_fds).
        pub $($async)? fn execute_raw_with_fds(
            &$($mut)? self,
            name: &str,
            arguments: &Value,
            fds: &[BorrowedFd<'_>],
        ) -> Result<Value> {
            self.$call(crate::drive::Request::new(false, name, arguments, None, fds)) $($await)*
        }
    };
}

pub mod agent;
pub mod agent_commands;
mod check;
mod client;
pub mod commands;
mod connect;
mod drive;
mod error;
mod event;
pub mod fake;
mod hub;
pub mod reconnect;
pub mod replay;
#[cfg(feature = "qapi")]
mod schema;
mod serial;
mod shared;
#[cfg(test)]
mod shared_tests;
mod stream;
#[cfg(test)]
mod tests;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "tokio")]
pub mod tokio;
#[cfg(all(test, feature = "tokio"))]
mod tokio_tests;
mod trace;
pub mod transcript;

pub use client::{
    Client, ClientBuilder, DEFAULT_MAX_QUEUED_EVENTS, Handle, Options, RequestHandle,
};
pub use commands::{Command, EventKind};
pub use error::{DecodeError, Error, QmpError, Result, TlsError, TlsFailure};
pub use event::{Event, Timestamp};
pub use qmp_proto::ErrorClass;
pub use qmp_proto::ServerInfo;
#[cfg(feature = "qapi")]
pub use schema::{Argument, Schema, SchemaError, SchemaErrorKind};
pub use serial::Serial;
pub use shared::{DEFAULT_SUBSCRIPTION_CAPACITY, SharedClient, SplitStream, Subscription};
pub use stream::{FdStream, Plain, Stream};

/// The sans-IO core this client is built on.
pub use qmp_proto;
/// The whole QMP vocabulary of QEMU 7.2, typed (the crate `qmp-qapi`; feature `qapi`, on by
/// default): every command, event and type of its schema, for [`Client::execute`] and
/// [`Event::data_as`].
#[cfg(feature = "qapi")]
pub use qmp_qapi as qapi;
/// serde, re-exported for the `for<'de> C::Output<'de>: serde::de::DeserializeOwned` bound
/// of code generic over commands, and for deriving your own commands' arguments and outputs.
pub use serde;
/// serde_json, re-exported for [`serde_json::Value`] and `json!`.
pub use serde_json;
