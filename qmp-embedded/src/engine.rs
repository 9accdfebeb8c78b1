//! What the blocking and async clients share: everything but the I/O calls.
//!
//! The clients run the same loop, one with `read`, the other with `read().await`:
//! [`Engine::begin`] encodes a command into the transmit buffer, the client writes it, then
//! alternates [`Engine::pump`] (buffered messages up to the awaited one: events into the
//! queue, the awaited reply out) and one read into [`Engine::read_buf`] followed by
//! [`Engine::tick`].

use core::ops::Range;

use qmp_proto::{
    CommandId, Failure, Instant, MessageError, Outcome, RawJson, Received, SendError, Session,
    State,
};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, ServerError};
use crate::events::EventQueue;

/// The byte that makes QEMU drop a half-written command: after a write was cut short, it is
/// sent before the next command (see the QMP notes on resynchronisation).
pub(crate) const RESYNC: &[u8] = b"\x01";

/// What the server said about itself in its greeting, and what was negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServerInfo {
    /// QEMU's `(major, minor, micro)` version.
    pub version: (u64, u64, u64),
    /// Whether the server offers out-of-band execution.
    pub oob_offered: bool,
    /// Whether out-of-band execution was negotiated (after [`negotiate`]).
    ///
    /// [`negotiate`]: crate::Client::negotiate
    pub oob_enabled: bool,
}

/// Which command envelope to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Negotiate { oob: bool },
    Execute,
    ExecOob,
}

/// The command being waited for.
#[derive(Debug, Clone, Copy)]
struct Current {
    id: CommandId,
    /// Whether every byte of it reached the link.
    written: bool,
}

/// Where [`Engine::pump`] stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// The awaited command's outcome.
    Outcome,
    /// The greeting.
    Greeting,
    /// An event (or a loss report) in the queue.
    Event,
}

/// A command encoded into the transmit buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outgoing {
    pub(crate) len: usize,
    pub(crate) deadline: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Engine<const RX: usize, const TX: usize, const EV: usize, const N: usize> {
    pub(crate) session: Session<[u8; RX], N>,
    pub(crate) tx: [u8; TX],
    pub(crate) events: EventQueue<EV>,
    pub(crate) config: Config,
    current: Option<Current>,
    /// Part of a command reached the link, but not all of it.
    pub(crate) partial_write: bool,
    /// Messages dropped as the protocol asks (notices), saturating.
    pub(crate) dropped: u32,
}

impl<const RX: usize, const TX: usize, const EV: usize, const N: usize> Engine<RX, TX, EV, N> {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            session: Session::with_config([0; RX], config.session_config()),
            tx: [0; TX],
            events: EventQueue::new(),
            config,
            current: None,
            partial_write: false,
            dropped: 0,
        }
    }

    pub(crate) fn info(&self) -> Option<ServerInfo> {
        Some(ServerInfo {
            version: self.session.server_version()?,
            oob_offered: self.session.oob_offered(),
            oob_enabled: self.session.oob_enabled(),
        })
    }

    pub(crate) fn deadline(&self, now: Instant) -> Option<Instant> {
        self.config.command_timeout().map(|t| now + t)
    }

    /// Encodes a command into `tx` and makes it the one awaited. A previous command still
    /// awaited (its call failed with an I/O error, or its future was dropped) is abandoned
    /// first, so its reply is dropped when it comes.
    pub(crate) fn begin<E, A: Serialize + ?Sized>(
        &mut self,
        kind: Kind,
        name: &str,
        arguments: &A,
        now: Instant,
    ) -> Result<Outgoing, Error<E>> {
        if let Some(old) = self.current.take() {
            // One on the wire is owed a reply: drop it when it comes. One that never fully
            // reached the server gets no reply (a fragment of it is dropped by QEMU at the
            // resync byte sent before the next command): free its slot now. Leaving it to
            // its deadline would leak the slot, since deadlines only take effect while
            // reading: after a link that fails every write, N such commands filled the
            // table and every later command failed with `TableFull`.
            if old.written {
                let _ = self.session.abandon(old.id);
                log!(debug, "qmp: abandoned command {}", old.id);
            } else {
                let _ = self.session.forget(old.id);
                log!(debug, "qmp: forgot unsent command {}", old.id);
            }
        }
        let deadline = self.deadline(now);
        let sent = match kind {
            Kind::Negotiate { oob } => self.session.negotiate(oob, deadline, &mut self.tx),
            Kind::Execute => self
                .session
                .execute(name, arguments, deadline, &mut self.tx),
            Kind::ExecOob => self
                .session
                .execute_oob(name, arguments, deadline, &mut self.tx),
        };
        let sent = sent.map_err(|e| match e {
            SendError::Closed => Error::Disconnected,
            e => Error::Send(e),
        })?;
        log!(debug, "qmp: -> {=str} (id {})", name, sent.id);
        self.current = Some(Current {
            id: sent.id,
            written: false,
        });
        Ok(Outgoing {
            len: sent.len,
            deadline,
        })
    }

    /// The awaited command is on the wire.
    pub(crate) fn written(&mut self) {
        if let Some(current) = &mut self.current {
            current.written = true;
        }
    }

    /// Handles buffered messages in order until `until` is met (or none are left): events
    /// go to the queue, notices to the log, and the awaited command's outcome comes out, as
    /// the span of its `return` value in the receive buffer. The span's bytes stay in place
    /// until the next read. Messages after the one awaited stay buffered for the next call.
    pub(crate) fn pump<E>(&mut self, until: Until) -> Option<Result<Range<usize>, Error<E>>> {
        let base = self.session.framer_mut().buffer_mut().as_ptr() as usize;
        let want = self.current.map(|c| c.id);
        let mut found = None;
        while let Some(item) = self.session.poll() {
            match item {
                Received::Greeting(g) => {
                    log!(
                        info,
                        "qmp: greeting from QEMU {=u64}.{=u64}.{=u64}",
                        g.version.major,
                        g.version.minor,
                        g.version.micro
                    );
                }
                Received::Event(event) => {
                    log!(debug, "qmp: <- event {}", event.name);
                    if !self.events.push(&event) {
                        log!(warn, "qmp: event queue full, {} dropped", event.name);
                    }
                }
                Received::Reply(reply) if Some(reply.id) == want && found.is_none() => {
                    log!(debug, "qmp: <- reply to {}", reply.id);
                    found = Some(match reply.outcome {
                        Outcome::Return(value) => span(base, value, RX),
                        Outcome::Error(error) => Err(Error::Qmp(ServerError::new(&error))),
                        Outcome::Failed(failure) => Err(match failure {
                            Failure::TooLarge { size } => Error::TooLarge { size },
                            Failure::Malformed(e) => Error::Malformed(e),
                            Failure::TimedOut => Error::Timeout,
                            _ => Error::Eof,
                        }),
                    });
                }
                Received::Reply(reply) => {
                    log!(debug, "qmp: dropped the outcome of command {}", reply.id);
                }
                Received::Notice(notice) => {
                    if !matches!(notice, qmp_proto::Notice::Discarded(_)) {
                        self.dropped = self.dropped.saturating_add(1);
                    }
                    if let qmp_proto::Notice::Framing(qmp_proto::FrameError::TooLarge {
                        id: None,
                        ..
                    }) = notice
                    {
                        // Replies to this client always carry an id; an oversized message
                        // without one is an event that did not fit the receive buffer.
                        self.events.lose();
                    }
                    log!(debug, "qmp: notice {}", notice);
                }
            }
            let done = match until {
                Until::Outcome => found.is_some(),
                Until::Greeting => self.session.state() != State::AwaitingGreeting,
                Until::Event => !self.events.is_empty(),
            };
            if done {
                break;
            }
        }
        if found.is_some() {
            self.current = None;
        }
        found
    }

    /// Free room to read into. Never empty after [`pump`](Self::pump) has run.
    pub(crate) fn read_buf(&mut self) -> &mut [u8] {
        self.session.read_buf()
    }

    /// A read returned `n` bytes (`0`: the end of the link, when so configured).
    pub(crate) fn received(&mut self, n: usize) {
        if n > 0 {
            self.session.commit(n);
        } else if self.config.is_zero_read_eof() {
            log!(info, "qmp: the link ended");
            self.session.handle_eof();
        }
    }

    /// The time is `now`: commands past their deadline fail at the next pump.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.session.handle_timeout(now);
    }

    pub(crate) fn state(&self) -> State {
        self.session.state()
    }

    /// The `return` value at `span`.
    pub(crate) fn raw<E>(&mut self, span: Range<usize>) -> Result<RawJson<'_>, Error<E>> {
        let rx: &[u8] = self.session.framer_mut().buffer_mut();
        let text = rx.get(span).and_then(|b| core::str::from_utf8(b).ok());
        text.and_then(|t| RawJson::parse(t).ok())
            .ok_or_else(malformed)
    }

    /// The `return` value at `span`, deserialized; strings with escapes are unescaped through
    /// the transmit buffer, idle until the next command.
    pub(crate) fn decode<'a, T: Deserialize<'a>, E>(
        &'a mut self,
        span: Range<usize>,
    ) -> Result<T, Error<E>> {
        let rx: &'a [u8] = self.session.framer_mut().buffer_mut();
        let text = rx.get(span).and_then(|b| core::str::from_utf8(b).ok());
        let value = text
            .and_then(|t| RawJson::parse(t).ok())
            .ok_or_else(malformed)?;
        value
            .deserialize_unescaped(&mut self.tx)
            .map_err(Error::Decode)
    }
}

/// Where `value` lies in the receive buffer starting at address `base`.
fn span<E>(base: usize, value: RawJson<'_>, cap: usize) -> Result<Range<usize>, Error<E>> {
    let text = value.as_json();
    let start = (text.as_ptr() as usize).wrapping_sub(base);
    let end = start.wrapping_add(text.len());
    if start <= end && end <= cap {
        Ok(start..end)
    } else {
        // A view handed out by the session always points into its buffer.
        Err(malformed())
    }
}

/// What a `return` value that cannot be found again in the receive buffer is reported as
/// (it cannot happen: the bytes do not move until the next read).
fn malformed<E>() -> Error<E> {
    Error::Malformed(MessageError::Syntax { offset: 0 })
}
