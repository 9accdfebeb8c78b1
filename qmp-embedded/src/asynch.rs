//! The async client, over `embedded_io_async::Read + Write`: the blocking client's twin.

use core::ops::Range;
use core::time::Duration;

use embedded_io_async::{Error as _, Read, Write};
use qmp_proto::{Event, Instant, RawJson, State};
use serde::{Deserialize, Serialize};

use crate::blocking::{Bytes, is_transient};
use crate::clock::Clock;
use crate::config::Config;
use crate::engine::{Engine, Kind, Outgoing, RESYNC, ServerInfo, Until};
use crate::error::Error;
use crate::events::EventsLost;

/// An async QMP client over a serial link (anything `embedded_io_async::Read + Write`), with
/// the same methods as the blocking [`crate::Client`], as `async fn`s.
///
/// Dropping one of its futures midway (e.g. in a `select` with a timer) is safe: a command
/// cut off while it was being written is discarded by the server (the resync byte goes
/// before the next command), one written whole but not yet answered is abandoned when the
/// next command starts (its reply is dropped when it comes), and one not written at all is
/// left to its deadline, which frees its slot in the in-flight table.
///
/// Const generics size everything it owns (see the crate documentation for what each costs):
/// - `RX`: the receive buffer, which bounds the largest message (greeting, reply or event);
/// - `TX`: the transmit buffer, which bounds the largest command, and is reused as scratch
///   space for unescaping strings in a `return` value;
/// - `EV`: the event queue in bytes (19 bytes per event plus its name and `data`);
/// - `N`: the session's in-flight table (2 lets one abandoned command wait for its reply
///   while the next one runs).
///
/// Method families:
/// - **Handshake**: [`wait_greeting`](Self::wait_greeting), [`negotiate`](Self::negotiate),
///   or both with [`handshake`](Self::handshake).
/// - **Commands**, one at a time, each waiting for its reply: [`execute`](Self::execute)
///   (typed), [`execute_raw`](Self::execute_raw) (the `return` value's JSON), and the
///   out-of-band twins [`execute_oob`](Self::execute_oob),
///   [`execute_oob_raw`](Self::execute_oob_raw).
/// - **Events**: [`next_event`](Self::next_event) pops the queue filled while commands
///   waited; [`wait_event`](Self::wait_event) reads the link until one arrives.
/// - **Getters**: [`state`](Self::state), [`server_info`](Self::server_info),
///   [`config`](Self::config), [`link_mut`](Self::link_mut), [`into_parts`](Self::into_parts).
///
/// Time only moves when the link's `read` or `write` returns: see the crate documentation.
#[derive(Debug)]
pub struct Client<
    L,
    C,
    const RX: usize = 1024,
    const TX: usize = 256,
    const EV: usize = 256,
    const N: usize = 2,
> {
    link: L,
    clock: C,
    engine: Engine<RX, TX, EV, N>,
}

impl<L, C, const RX: usize, const TX: usize, const EV: usize, const N: usize>
    Client<L, C, RX, TX, EV, N>
where
    L: Read + Write,
    C: Clock,
{
    /// A client over `link`, reading the time from `clock`, with the default [`Config`].
    pub fn new(link: L, clock: C) -> Self {
        Self::with_config(link, clock, Config::default())
    }

    /// A client over `link`, reading the time from `clock`, with `config`.
    pub fn with_config(link: L, clock: C, config: Config) -> Self {
        Self {
            link,
            clock,
            engine: Engine::new(config),
        }
    }

    /// Where the session is: awaiting the greeting, negotiating, ready, or closed.
    pub fn state(&self) -> State {
        self.engine.state()
    }

    /// The server's version and capabilities, once greeted.
    pub fn server_info(&self) -> Option<ServerInfo> {
        self.engine.info()
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.engine.config
    }

    /// Messages dropped as the protocol asks, since the start: replies whose id matches no
    /// command waiting (late replies to commands that timed out, unknown ids), id-less
    /// errors, second greetings, malformed frames and bytes that could not be framed, with no
    /// command to blame. Replies to abandoned commands are not counted. Saturates at
    /// `u32::MAX`.
    pub fn dropped_messages(&self) -> u32 {
        self.engine.dropped
    }

    /// Sets the timeout for the greeting, later commands and writes (`None`: wait forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.engine.config = self.engine.config.timeout(timeout);
    }

    /// The link.
    pub fn link(&self) -> &L {
        &self.link
    }

    /// The link, e.g. to change its settings. Reading from or writing to it directly
    /// corrupts the session.
    pub fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }

    /// Gives back the link and the clock.
    pub fn into_parts(self) -> (L, C) {
        (self.link, self.clock)
    }

    /// Reads until the server's greeting arrives (events sent before it are queued) and
    /// returns what it says. Returns at once if it already arrived.
    ///
    /// Bytes that are not QMP (e.g. boot messages on a shared serial line) are skipped.
    pub async fn wait_greeting(&mut self) -> Result<ServerInfo, Error<L::Error>> {
        if self.engine.state() == State::Closed {
            return Err(Error::Disconnected);
        }
        let deadline = self.engine.deadline(self.clock.now());
        loop {
            if let Some(Err(e)) = self.engine.pump(Until::Greeting) {
                return Err(e);
            }
            match (self.engine.state(), self.engine.info()) {
                (State::Closed, _) => return Err(Error::Eof),
                (State::AwaitingGreeting, _) | (_, None) => {}
                (_, Some(info)) => return Ok(info),
            }
            if deadline.is_some_and(|d| self.clock.now() >= d) {
                return Err(Error::Timeout);
            }
            self.fill().await?;
        }
    }

    /// Negotiates capabilities (`qmp_capabilities`), with out-of-band execution if `oob`
    /// (an error if the server did not offer it). Needs the greeting first.
    pub async fn negotiate(&mut self, oob: bool) -> Result<ServerInfo, Error<L::Error>> {
        self.command(Kind::Negotiate { oob }, "qmp_capabilities", &())
            .await?;
        self.engine.info().ok_or(Error::Disconnected)
    }

    /// [`wait_greeting`](Self::wait_greeting), then [`negotiate`](Self::negotiate), asking
    /// for out-of-band execution when `oob` and the server offers it.
    pub async fn handshake(&mut self, oob: bool) -> Result<ServerInfo, Error<L::Error>> {
        let info = self.wait_greeting().await?;
        if self.engine.state() == State::Ready {
            return Ok(info);
        }
        self.negotiate(oob && info.oob_offered).await
    }

    /// Runs `name` with `arguments` (a struct or map, or `&()` for none) and deserializes
    /// its `return` value into `T`, which may borrow from the receive buffer (`&str` fields,
    /// as long as the strings have no escapes) or own its data (`heapless::String`, numbers;
    /// escaped strings are unescaped through the transmit buffer).
    ///
    /// Events that arrive meanwhile are queued for [`next_event`](Self::next_event).
    pub async fn execute<'a, T, A>(
        &'a mut self,
        name: &str,
        arguments: &A,
    ) -> Result<T, Error<L::Error>>
    where
        T: Deserialize<'a>,
        A: Serialize + ?Sized,
    {
        let span = self.command(Kind::Execute, name, arguments).await?;
        self.engine.decode(span)
    }

    /// Runs `name` with `arguments` and returns its `return` value as raw JSON (its bytes via
    /// [`RawJson::as_json`]), borrowed from the receive buffer. Use it, and drop the result,
    /// for commands whose return value (`{}`) does not matter.
    pub async fn execute_raw<A>(
        &mut self,
        name: &str,
        arguments: &A,
    ) -> Result<RawJson<'_>, Error<L::Error>>
    where
        A: Serialize + ?Sized,
    {
        let span = self.command(Kind::Execute, name, arguments).await?;
        self.engine.raw(span)
    }

    /// Like [`execute`](Self::execute), out of band (`exec-oob`): needs `oob` negotiated.
    pub async fn execute_oob<'a, T, A>(
        &'a mut self,
        name: &str,
        arguments: &A,
    ) -> Result<T, Error<L::Error>>
    where
        T: Deserialize<'a>,
        A: Serialize + ?Sized,
    {
        let span = self.command(Kind::ExecOob, name, arguments).await?;
        self.engine.decode(span)
    }

    /// Like [`execute_raw`](Self::execute_raw), out of band (`exec-oob`).
    pub async fn execute_oob_raw<A>(
        &mut self,
        name: &str,
        arguments: &A,
    ) -> Result<RawJson<'_>, Error<L::Error>>
    where
        A: Serialize + ?Sized,
    {
        let span = self.command(Kind::ExecOob, name, arguments).await?;
        self.engine.raw(span)
    }

    /// The oldest queued event, or the report of events lost at this point, or `None`. Does
    /// no I/O (events already received but not yet queued are taken in). The view is valid
    /// until the next call on the client.
    pub fn next_event(&mut self) -> Option<Result<Event<'_>, EventsLost>> {
        if self.engine.events.is_empty() {
            let _ = self.engine.pump::<L::Error>(Until::Event);
        }
        self.engine.events.pop()
    }

    /// Reads the link until an event (or a loss report) is queued, for at most `timeout`;
    /// returns whether one is. Returns at once if one already is. The wait only ends when
    /// the link's `read` returns.
    pub async fn wait_event(&mut self, timeout: Duration) -> Result<bool, Error<L::Error>> {
        if self.engine.state() == State::Closed && self.engine.events.is_empty() {
            return Err(Error::Disconnected);
        }
        let deadline = self.clock.now() + timeout;
        loop {
            // Outcomes of abandoned commands only go to the log here.
            let _ = self.engine.pump::<L::Error>(Until::Event);
            if !self.engine.events.is_empty() {
                return Ok(true);
            }
            if self.engine.state() == State::Closed {
                return Err(Error::Eof);
            }
            if self.clock.now() >= deadline {
                return Ok(false);
            }
            self.fill().await?;
        }
    }

    /// Sends one command and waits for its outcome.
    async fn command<A: Serialize + ?Sized>(
        &mut self,
        kind: Kind,
        name: &str,
        arguments: &A,
    ) -> Result<Range<usize>, Error<L::Error>> {
        let out = self.engine.begin(kind, name, arguments, self.clock.now())?;
        self.send(out).await?;
        loop {
            if let Some(done) = self.engine.pump(Until::Outcome) {
                return done;
            }
            self.fill().await?;
        }
    }

    /// Writes the encoded command (after a resync byte if the previous one was cut short).
    async fn send(&mut self, out: Outgoing) -> Result<(), Error<L::Error>> {
        if self.engine.partial_write {
            self.write_bytes(Bytes::Resync, out.deadline).await?;
            self.engine.partial_write = false;
        }
        self.write_bytes(Bytes::Command(out.len), out.deadline)
            .await?;
        self.engine.written();
        loop {
            match self.link.flush().await {
                Ok(()) => return Ok(()),
                Err(e) if is_transient(e.kind()) => self.check_deadline(out.deadline)?,
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    async fn write_bytes(
        &mut self,
        what: Bytes,
        deadline: Option<Instant>,
    ) -> Result<(), Error<L::Error>> {
        let mut at = 0;
        loop {
            let bytes = match what {
                Bytes::Resync => RESYNC,
                Bytes::Command(len) => &self.engine.tx[..len],
            };
            let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) else {
                return Ok(());
            };
            match self.link.write(rest).await {
                Ok(0) => return Err(Error::WriteZero),
                Ok(n) => {
                    at += n;
                    self.engine.partial_write = at < bytes.len();
                }
                Err(e) if is_transient(e.kind()) => self.check_deadline(deadline)?,
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    fn check_deadline(&self, deadline: Option<Instant>) -> Result<(), Error<L::Error>> {
        match deadline {
            Some(d) if self.clock.now() >= d => Err(Error::Timeout),
            _ => Ok(()),
        }
    }

    /// One read from the link, then a look at the clock.
    async fn fill(&mut self) -> Result<(), Error<L::Error>> {
        let buf = self.engine.read_buf();
        if !buf.is_empty() {
            match self.link.read(buf).await {
                Ok(n) => self.engine.received(n),
                Err(e) if is_transient(e.kind()) => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        self.engine.tick(self.clock.now());
        Ok(())
    }
}
