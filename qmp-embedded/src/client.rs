//! The one client, written once: [`client!`] expands it over blocking `embedded_io` calls
//! ([`crate::blocking`]) and over awaited `embedded_io_async` calls ([`crate::asynch`]).
//!
//! A client is the [`qmp_proto::Driver`]'s I/O loop and nothing more: the driver decides
//! what to write, what to read and when a wait is over; the client moves the bytes, reads
//! the clock after each link call, and turns what the driver reports into [`Error`] values.
//! The macro takes the `async` keyword and the `.await` suffix as tokens (empty for the
//! blocking client), the approach of crates like `maybe-async`, without a proc-macro.
//!
//! [`Error`]: crate::Error

use qmp_proto::{Expired, Failure, MessageError, Outcome};

use crate::error::{Error, ServerError};

/// Whether a link error only means "nothing happened yet": the driver checks its deadlines
/// and the client tries again.
pub(crate) fn is_transient(kind: embedded_io::ErrorKind) -> bool {
    matches!(
        kind,
        embedded_io::ErrorKind::TimedOut | embedded_io::ErrorKind::Interrupted
    )
}

/// The end of the link, reported as [`Error::Eof`] the first time and
/// [`Error::Disconnected`] after.
pub(crate) fn gone<E>(reported: &mut bool) -> Error<E> {
    if core::mem::replace(reported, true) {
        Error::Disconnected
    } else {
        Error::Eof
    }
}

/// What a command's outcome other than its `return` value is (`None`: none was held, which
/// cannot happen right after the driver reported it completed).
pub(crate) fn failure<E>(outcome: Option<Outcome<'_>>, reported: &mut bool) -> Error<E> {
    match outcome {
        Some(Outcome::Error(error)) => Error::Qmp(ServerError::new(&error)),
        Some(Outcome::Failed(Failure::TooLarge { size })) => Error::TooLarge { size },
        Some(Outcome::Failed(Failure::Malformed(e))) => Error::Malformed(e),
        Some(Outcome::Failed(Failure::Unframed(e))) => Error::Unframed(e),
        Some(Outcome::Failed(Failure::TimedOut)) => Error::Timeout(Expired::Command),
        Some(Outcome::Failed(Failure::Disconnected)) => gone(reported),
        Some(Outcome::Failed(Failure::ServerRestarted)) => Error::ServerRestarted,
        // A failure this crate does not know yet is reported as a malformed reply.
        Some(Outcome::Return(_) | Outcome::Failed(_)) | None => {
            Error::Malformed(MessageError::Syntax { offset: 0 })
        }
    }
}

/// Expands, inside [`client!`]'s `impl`, a typed `execute` and its raw twin, in band or out
/// of band (`oob`), so that both pairs read alike.
macro_rules! execute_pair {
    (
        [$($async:tt)?] [$($await:tt)*] oob: $oob:literal;
        $(#[$typed_doc:meta])* fn $typed:ident;
        $(#[$raw_doc:meta])* fn $raw:ident;
    ) => {
        $(#[$typed_doc])*
        pub $($async)? fn $typed<'a, T, A>(
            &'a mut self,
            name: &str,
            arguments: &A,
        ) -> Result<T, $crate::Error<L::Error>>
        where
            T: serde::Deserialize<'a>,
            A: serde::Serialize + ?Sized,
        {
            let id = self.command(name, arguments, $oob) $($await)* ?;
            self.decode(id)
        }

        $(#[$raw_doc])*
        pub $($async)? fn $raw<A>(
            &mut self,
            name: &str,
            arguments: &A,
        ) -> Result<qmp_proto::RawJson<'_>, $crate::Error<L::Error>>
        where
            A: serde::Serialize + ?Sized,
        {
            let id = self.command(name, arguments, $oob) $($await)* ?;
            self.raw(id)
        }
    };
}

pub(crate) use execute_pair;

/// Defines a client type and its methods; `$($async)?` and `$($await)*` are `async` and
/// `.await` for the async client, nothing for the blocking one. The link traits `Read` and
/// `Write` resolve where the macro is invoked.
macro_rules! client {
    (
        $(#[$meta:meta])*
        pub struct $Client:ident;
        async: [$($async:tt)?];
        await: [$($await:tt)*];
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub struct $Client<
            L,
            C,
            const RX: usize = 1024,
            const TX: usize = 256,
            const EV: usize = 256,
            const N: usize = 2,
        > {
            link: L,
            clock: C,
            driver: qmp_proto::Driver<[u8; RX], [u8; TX], qmp_proto::EventBuffer<EV>, N>,
            config: $crate::Config,
            /// The command of the last call, until its outcome is taken: a call that failed
            /// or was dropped leaves it, and the next command abandons it.
            pending: Option<qmp_proto::CommandId>,
            /// The end of the link was reported once (as `Eof`).
            gone: bool,
            /// Bytes were written since the last flush.
            unflushed: bool,
            /// The agent's pending sync was waited for already (and its reply did not come):
            /// the next [`sync`](Self::sync) sends a new one.
            #[cfg(feature = "agent")]
            sync_waited: bool,
        }

        impl<L, C, const RX: usize, const TX: usize, const EV: usize, const N: usize>
            $Client<L, C, RX, TX, EV, N>
        where
            L: Read + Write,
            C: $crate::Clock,
        {
            /// A client over `link`, reading the time from `clock`, with the default
            /// [`Config`](crate::Config).
            pub fn new(link: L, clock: C) -> Self {
                Self::with_config(link, clock, $crate::Config::default())
            }

            /// A client over `link`, reading the time from `clock`, with `config`.
            pub fn with_config(link: L, clock: C, config: $crate::Config) -> Self {
                let now = clock.now();
                let driver = qmp_proto::Driver::new(
                    [0; RX],
                    [0; TX],
                    qmp_proto::EventBuffer::new(),
                    config.driver_config(),
                    now,
                );
                Self::with_driver(link, clock, config, driver)
            }

            fn with_driver(
                link: L,
                clock: C,
                config: $crate::Config,
                driver: qmp_proto::Driver<[u8; RX], [u8; TX], qmp_proto::EventBuffer<EV>, N>,
            ) -> Self {
                Self {
                    link,
                    clock,
                    driver,
                    config,
                    pending: None,
                    gone: false,
                    unflushed: false,
                    #[cfg(feature = "agent")]
                    sync_waited: false,
                }
            }

            /// A client for QEMU's guest agent (`qemu-ga`) over `link` (feature `agent`): no
            /// greeting and no negotiation; [`sync`](Self::sync) before the first command.
            /// `sync_id` must be random and fresh for each connection (it tells this
            /// client's sync reply from a previous client's); the rules are the core's
            /// (`qmp_proto::Driver::new_agent`). Commands that send no reply when they
            /// succeed (`guest-shutdown`, `guest-suspend-*`) return `{}` when the agent stays
            /// silent until their deadline (`qmp_proto::NO_REPLY_TIMEOUT`, or the timeout if
            /// shorter), or the channel closes after them.
            #[cfg(feature = "agent")]
            pub fn new_agent(link: L, clock: C, config: $crate::Config, sync_id: u64) -> Self {
                let now = clock.now();
                let driver = qmp_proto::Driver::new_agent(
                    [0; RX],
                    [0; TX],
                    qmp_proto::EventBuffer::new(),
                    config.driver_config(),
                    sync_id,
                    now,
                );
                Self::with_driver(link, clock, config, driver)
            }

            /// Synchronises with the guest agent (feature `agent`): sends 0xFF and
            /// `guest-sync-delimited` with the next sync id (unless that sync is already on
            /// its way, as after [`new_agent`](Self::new_agent) or a command that timed
            /// out), and drops every reply until the agent's answer to it, within the
            /// timeout ([`Expired::Sync`](qmp_proto::Expired::Sync)). After a sync that timed
            /// out, the next call sends a new one.
            #[cfg(feature = "agent")]
            pub $($async)? fn sync(&mut self) -> Result<(), $crate::Error<L::Error>> {
                self.abandon_pending();
                let now = self.clock.now();
                // The sync queued by `new_agent` (or after a timeout) is waited for once; one
                // whose reply did not come by then is given up for a new one (a serial line's
                // agent may have flushed it away at its start).
                if self.driver.agent_pending_sync().is_none() || self.sync_waited {
                    self.driver.resync(now);
                }
                self.sync_waited = true;
                let deadline = self.deadline();
                loop {
                    let done = self
                        .run(qmp_proto::Wait::Handshake, deadline, qmp_proto::Expired::Sync)
                        $($await)* ?;
                    if done == qmp_proto::Done::Ready {
                        self.sync_waited = false;
                        return Ok(());
                    }
                }
            }

            /// Where the session is: awaiting the greeting, negotiating, ready, or closed.
            pub fn state(&self) -> qmp_proto::State {
                self.driver.state()
            }

            /// What the server's greeting said, and whether `oob` was negotiated.
            pub fn server(&self) -> Option<&qmp_proto::ServerInfo> {
                self.driver.server()
            }

            /// The settings in force.
            pub fn config(&self) -> &$crate::Config {
                &self.config
            }

            /// Sets the timeout for later handshakes and commands (`None`: wait forever).
            pub fn set_timeout(&mut self, timeout: Option<core::time::Duration>) {
                self.config = self.config.timeout(timeout);
                self.driver.set_command_timeout(timeout);
            }

            /// Messages dropped as the protocol asks, since the start: replies whose id
            /// matches no command waiting, id-less errors, malformed frames and bytes that
            /// could not be framed, with no command to blame. (A second greeting restarts
            /// the session: the command waiting fails with `Error::ServerRestarted` and the
            /// handshake is done again.)
            pub fn dropped_messages(&self) -> u64 {
                self.driver.dropped_messages()
            }

            /// Late replies to abandoned commands (that timed out, failed, or whose future
            /// was dropped), discarded by id, since the start.
            pub fn discarded_replies(&self) -> u64 {
                self.driver.discarded_replies()
            }

            /// Events lost since the start (each gap is also reported once, in order, as
            /// [`Error::Lagged`](crate::Error::Lagged)).
            pub fn events_lost(&self) -> u64 {
                self.driver.events().lost_total()
            }

            /// The link.
            pub fn link(&self) -> &L {
                &self.link
            }

            /// The link, e.g. to change its settings. Reading from or writing to it
            /// directly corrupts the session.
            pub fn link_mut(&mut self) -> &mut L {
                &mut self.link
            }

            /// Gives back the link and the clock.
            pub fn into_inner(self) -> (L, C) {
                (self.link, self.clock)
            }

            /// Reads until the server's greeting arrives (bytes that are not QMP, e.g. boot
            /// messages on a shared serial line, are skipped) and returns what it says, at
            /// once if it already came. Bounded by the timeout.
            pub $($async)? fn wait_greeting(
                &mut self,
            ) -> Result<&qmp_proto::ServerInfo, $crate::Error<L::Error>> {
                let deadline = self.deadline();
                self.greet(deadline) $($await)* ?;
                self.info()
            }

            /// Negotiates capabilities (`qmp_capabilities`), with out-of-band execution if
            /// `oob` (an error if the server did not offer it). Needs the greeting first.
            /// Bounded by the timeout.
            pub $($async)? fn negotiate(
                &mut self,
                oob: bool,
            ) -> Result<&qmp_proto::ServerInfo, $crate::Error<L::Error>> {
                let deadline = self.deadline();
                self.negotiate_until(oob, deadline) $($await)* ?;
                self.info()
            }

            /// The greeting, then capabilities negotiation with out-of-band execution when
            /// `oob` and the server offers it; one timeout bounds both
            /// ([`Expired::Greeting`](qmp_proto::Expired::Greeting)).
            pub $($async)? fn handshake(
                &mut self,
                oob: bool,
            ) -> Result<&qmp_proto::ServerInfo, $crate::Error<L::Error>> {
                let deadline = self.deadline();
                self.greet(deadline) $($await)* ?;
                if self.driver.state() != qmp_proto::State::Ready {
                    let offered = self.driver.server().is_some_and(|s| s.oob_offered);
                    self.negotiate_until(oob && offered, deadline) $($await)* ?;
                }
                self.info()
            }

            $crate::client::execute_pair! {
                [$($async)?] [$($await)*] oob: false;
                /// Runs `name` with `arguments` (a struct or map, or `&()` for none) and
                /// deserializes its `return` value into `T`, which may borrow from the receive
                /// buffer (`&str` fields, as long as the strings have no escapes) or own its
                /// data (`heapless::String`, numbers; escaped strings are unescaped through the
                /// transmit buffer).
                ///
                /// Events that arrive meanwhile are queued for
                /// [`next_event`](Self::next_event).
                fn execute;
                /// Runs `name` with `arguments` and returns its `return` value as raw JSON (its
                /// bytes via [`RawJson::as_json`](qmp_proto::RawJson::as_json)), borrowed from
                /// the receive buffer. Use it, and drop the result, for commands whose return
                /// value (`{}`) does not matter.
                fn execute_raw;
            }

            $crate::client::execute_pair! {
                [$($async)?] [$($await)*] oob: true;
                /// Like [`execute`](Self::execute), out of band (`exec-oob`): needs `oob`
                /// negotiated.
                fn execute_oob;
                /// Like [`execute_raw`](Self::execute_raw), out of band (`exec-oob`).
                fn execute_oob_raw;
            }

            /// Runs one of the core's typed commands ([`qmp_proto::commands`]), e.g.
            /// `QueryStatus`, and returns its typed result.
            pub $($async)? fn execute_command<Cmd: qmp_proto::commands::Command>(
                &mut self,
                command: &Cmd,
            ) -> Result<Cmd::Output<'_>, $crate::Error<L::Error>> {
                let id = self.command(Cmd::NAME, command, false) $($await)* ?;
                self.decode(id)
            }

            /// The next event, waiting for it (reading the link) for at most `timeout`;
            /// with a zero timeout, only what was already received. A gap in the queue is
            /// [`Error::Lagged`](crate::Error::Lagged) where it is; nothing by then is
            /// [`Error::Timeout`](crate::Error::Timeout)`(`[`Expired::Event`](qmp_proto::Expired::Event)`)`.
            /// The view is valid until the next call on the client. The wait only ends
            /// when the link's `read` returns.
            pub $($async)? fn next_event(
                &mut self,
                timeout: core::time::Duration,
            ) -> Result<qmp_proto::Event<'_>, $crate::Error<L::Error>> {
                self.event(None, timeout) $($await)*
            }

            /// Like [`next_event`](Self::next_event), for the next event called `name`;
            /// other events stay queued, in order.
            pub $($async)? fn wait_event(
                &mut self,
                name: &str,
                timeout: core::time::Duration,
            ) -> Result<qmp_proto::Event<'_>, $crate::Error<L::Error>> {
                self.event(Some(name), timeout) $($await)*
            }

            // ---- the loop -------------------------------------------------------------

            /// Runs the driver's I/O loop until `wait` is over (or `deadline`, reported as
            /// `expired`). Returns the wanted [`Done`](qmp_proto::Done); the end of the
            /// link is an error.
            $($async)? fn run(
                &mut self,
                wait: qmp_proto::Wait<'_>,
                deadline: Option<qmp_proto::Instant>,
                expired: qmp_proto::Expired,
            ) -> Result<qmp_proto::Done, $crate::Error<L::Error>> {
                use embedded_io::Error as _;
                use qmp_proto::{Done, Io, LinkError};
                loop {
                    let now = self.clock.now();
                    match self.driver.poll_io(now, wait, deadline) {
                        Io::Write { bytes, .. } => {
                            let written = self.link.write(bytes) $($await)*;
                            let now = self.clock.now();
                            match written {
                                Ok(0) => return Err($crate::Error::WriteZero),
                                Ok(n) => {
                                    self.unflushed = true;
                                    self.driver.handle_written(n, now);
                                }
                                Err(e) if $crate::client::is_transient(e.kind()) => {
                                    self.driver.handle_write_error(LinkError::Transient, now);
                                }
                                Err(e) => return Err($crate::Error::Io(e)),
                            }
                        }
                        Io::Read { buf, .. } if self.unflushed => {
                            let _ = buf;
                            let flushed = self.link.flush() $($await)*;
                            match flushed {
                                Ok(()) => self.unflushed = false,
                                Err(e) if $crate::client::is_transient(e.kind()) => {
                                    self.driver.handle_timeout(self.clock.now());
                                }
                                Err(e) => return Err($crate::Error::Io(e)),
                            }
                        }
                        Io::Read { buf, .. } => {
                            let read = self.link.read(buf) $($await)*;
                            let now = self.clock.now();
                            match read {
                                Ok(n) => {
                                    if n == 0 && self.config.is_zero_read_eof() {
                                        log!(info, "qmp: the link ended");
                                    }
                                    self.driver.handle_read(n, now);
                                }
                                Err(e) if $crate::client::is_transient(e.kind()) => {
                                    self.driver.handle_read_error(LinkError::Transient, now);
                                }
                                Err(e) => return Err($crate::Error::Io(e)),
                            }
                        }
                        Io::Done(Done::TimedOut) => {
                            return Err($crate::Error::Timeout(expired));
                        }
                        Io::Done(Done::Closed(_)) => {
                            return Err($crate::client::gone(&mut self.gone));
                        }
                        // Another command's outcome (one abandoned when its reply came),
                        // dropped at the next poll.
                        Io::Done(Done::Completed(id))
                            if !matches!(wait, qmp_proto::Wait::Handshake)
                                && wait != qmp_proto::Wait::Command(id) =>
                        {
                            log!(debug, "qmp: dropped the outcome of command {}", id);
                        }
                        Io::Done(done) => return Ok(done),
                    }
                }
            }

            // ---- helpers, no I/O of their own ------------------------------------------

            fn deadline(&self) -> Option<qmp_proto::Instant> {
                let now = self.clock.now();
                self.config.command_timeout().map(|t| now + t)
            }

            fn info(&mut self) -> Result<&qmp_proto::ServerInfo, $crate::Error<L::Error>> {
                match self.driver.server() {
                    Some(info) => Ok(info),
                    None => Err($crate::client::gone(&mut self.gone)),
                }
            }

            /// Gives up on the command of a call that failed or was dropped: its late
            /// reply is discarded, an unwritten part of it dropped (resynchronised if it
            /// was cut off midway).
            fn abandon_pending(&mut self) {
                if let Some(id) = self.pending.take()
                    && self.driver.abandon(id)
                {
                    log!(debug, "qmp: abandoned command {}", id);
                }
            }

            fn send_error(&mut self, e: qmp_proto::SendError) -> $crate::Error<L::Error> {
                match e {
                    qmp_proto::SendError::Closed => $crate::client::gone(&mut self.gone),
                    e => $crate::Error::Send(e),
                }
            }

            $($async)? fn greet(
                &mut self,
                deadline: Option<qmp_proto::Instant>,
            ) -> Result<(), $crate::Error<L::Error>> {
                self.run(qmp_proto::Wait::Handshake, deadline, qmp_proto::Expired::Greeting)
                    $($await)* ?;
                if let Some(info) = self.driver.server() {
                    log!(
                        info,
                        "qmp: greeting from QEMU {=u64}.{=u64}.{=u64}",
                        info.version.major,
                        info.version.minor,
                        info.version.micro
                    );
                }
                Ok(())
            }

            $($async)? fn negotiate_until(
                &mut self,
                oob: bool,
                deadline: Option<qmp_proto::Instant>,
            ) -> Result<(), $crate::Error<L::Error>> {
                self.abandon_pending();
                if oob && self.driver.server().is_some_and(|s| !s.oob_offered) {
                    return Err($crate::Error::Send(qmp_proto::SendError::OobNotOffered));
                }
                self.driver.set_oob(oob);
                let options = qmp_proto::SendOptions::new()
                    .deadline(deadline.map_or(qmp_proto::Deadline::Never, qmp_proto::Deadline::At));
                let id = match self.driver.negotiate(options, self.clock.now()) {
                    Ok(id) => id,
                    Err(e) => return Err(self.send_error(e)),
                };
                self.pending = Some(id);
                let done = self
                    .run(qmp_proto::Wait::Handshake, deadline, qmp_proto::Expired::Greeting)
                    $($await)* ?;
                self.pending = None;
                match done {
                    qmp_proto::Done::Completed(id) => {
                        let outcome = self.driver.outcome(id);
                        Err($crate::client::failure(outcome, &mut self.gone))
                    }
                    _ => Ok(()),
                }
            }

            /// Sends one command (waiting for room, if an abandoned one still holds it) and
            /// waits for its outcome, held in the receive buffer.
            $($async)? fn command<A: serde::Serialize + ?Sized>(
                &mut self,
                name: &str,
                arguments: &A,
                oob: bool,
            ) -> Result<qmp_proto::CommandId, $crate::Error<L::Error>> {
                use qmp_proto::{Done, Expired, SendError, Wait};
                self.abandon_pending();
                let deadline = self.deadline();
                // The command's deadline: the timeout from now, resolved by the driver (which
                // gives an agent's command without a success reply its shorter silence
                // window); after a wait for room, what is left of this call's.
                let mut own = qmp_proto::Deadline::Default;
                let left = deadline.map_or(qmp_proto::Deadline::Never, qmp_proto::Deadline::At);
                let id = loop {
                    let options = qmp_proto::SendOptions::new().oob(oob).deadline(own);
                    match self.driver.execute(name, arguments, options, self.clock.now()) {
                        Ok(id) => break id,
                        Err(SendError::TableFull | SendError::QueueFull) => {
                            self.run(Wait::Room { oob }, deadline, Expired::Command)
                                $($await)* ?;
                            own = left;
                        }
                        Err(SendError::Busy) => {
                            self.run(Wait::Flush, deadline, Expired::Command) $($await)* ?;
                            own = left;
                        }
                        Err(e) => return Err(self.send_error(e)),
                    }
                };
                log!(debug, "qmp: -> {=str} (id {})", name, id);
                self.pending = Some(id);
                match self.run(Wait::Command(id), None, Expired::Command) $($await)* ? {
                    Done::Completed(_) => Ok(id),
                    // Not pending, and no outcome held: cannot happen, only this call
                    // takes it.
                    _ => Err($crate::client::failure(None, &mut self.gone)),
                }
            }

            /// The `return` value of command `id`, as raw JSON.
            fn raw(
                &mut self,
                id: qmp_proto::CommandId,
            ) -> Result<qmp_proto::RawJson<'_>, $crate::Error<L::Error>> {
                self.pending = None;
                match self.driver.outcome(id) {
                    Some(qmp_proto::Outcome::Return(value)) => Ok(value),
                    other => Err($crate::client::failure(other, &mut self.gone)),
                }
            }

            /// The `return` value of command `id`, deserialized; escaped strings are
            /// unescaped through the transmit buffer, idle until the next command.
            fn decode<'a, T: serde::Deserialize<'a>>(
                &'a mut self,
                id: qmp_proto::CommandId,
            ) -> Result<T, $crate::Error<L::Error>> {
                self.pending = None;
                match self.driver.outcome_with_scratch(id) {
                    Some((qmp_proto::Outcome::Return(value), scratch)) => value
                        .deserialize_unescaped(scratch)
                        .map_err($crate::Error::Decode),
                    other => Err($crate::client::failure(
                        other.map(|(outcome, _)| outcome),
                        &mut self.gone,
                    )),
                }
            }

            $($async)? fn event(
                &mut self,
                name: Option<&str>,
                timeout: core::time::Duration,
            ) -> Result<qmp_proto::Event<'_>, $crate::Error<L::Error>> {
                // What is left of a failed or dropped call is not written while waiting.
                self.abandon_pending();
                let deadline = self.clock.now() + timeout;
                let wait = qmp_proto::Wait::Event(name);
                self.run(wait, Some(deadline), qmp_proto::Expired::Event) $($await)* ?;
                match self.driver.take_event(name) {
                    Some(Ok(event)) => Ok(event),
                    Some(Err(qmp_proto::Lagged { missed })) => {
                        Err($crate::Error::Lagged { missed })
                    }
                    None => Err($crate::Error::Timeout(qmp_proto::Expired::Event)),
                }
            }
        }
    };
}

pub(crate) use client;
