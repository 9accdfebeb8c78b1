//! What the shared blocking client ([`SharedClient`](crate::SharedClient)) and the tokio client
//! have in common: one qmp-proto [`Session`] (the same one the blocking [`Client`](crate::Client)
//! drives), kept behind its owner's lock, with the table of callers waiting for replies.
//!
//! Callers encode their commands through [`Router::encode`] and register a [`Waiter`]; whoever
//! reads the connection feeds bytes in and [`Router::route`]s what the session yields: each
//! reply to its waiter (matched by id), each event to a callback. A caller that gives up
//! [`Router::abandon`]s its command: the session keeps the slot until the late reply, which it
//! then discards by id ([`Notice::Discarded`]).

use std::io;

use serde::Serialize;

use qmp_proto::{
    CommandId, EncodeError, Expired, Failure, Notice, Outcome, Received, SendError, Session,
};

use crate::drive::{TABLE, is_disconnect};
use crate::error::{Error, QmpError, Result};

/// A command's outcome, as handed to its caller: the JSON text of its `return` value, or why
/// there is none.
pub(crate) type Answer = Result<Box<str>>;

/// Where a command's [`Answer`] goes.
pub(crate) trait Waiter {
    /// Hands the answer over (the caller may be gone: then it is dropped). Called at most
    /// once per command.
    fn answer(&mut self, answer: Answer);
}

/// Why a connection ended; every pending and later command fails with [`Closed::error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The peer closed it.
    Eof,
    /// This side closed it (`close`, or the last handle went away).
    Local,
    /// An I/O error.
    Io(io::ErrorKind, String),
}

impl Closed {
    /// The reason for an I/O error: a peer that went away is [`Closed::Eof`].
    pub(crate) fn from_io(e: &io::Error) -> Self {
        if is_disconnect(e.kind()) {
            Closed::Eof
        } else {
            Closed::Io(e.kind(), e.to_string())
        }
    }

    /// The error every pending and later command gets.
    pub(crate) fn error(&self) -> Error {
        match self {
            Closed::Eof | Closed::Local => Error::Disconnected,
            Closed::Io(kind, message) => Error::Io(io::Error::new(*kind, message.clone())),
        }
    }
}

/// One command in flight: who waits for it, or that nobody does any more.
#[derive(Debug)]
struct Slot<W> {
    id: CommandId,
    waiter: W,
    abandoned: bool,
}

/// A session shared by many callers, and the table of who waits for which reply.
#[derive(Debug)]
pub(crate) struct Router<W> {
    session: Session<Vec<u8>, TABLE>,
    slots: Vec<Slot<W>>,
    max_reply_size: usize,
    closed: Option<Closed>,
    /// Messages dropped as the protocol asks (unmatched replies, id-less errors, …).
    dropped: u64,
    /// Late replies to abandoned commands, discarded by id.
    discarded: u64,
    /// Room for the next command's encoding (grows to the largest seen).
    room: usize,
}

impl<W: Waiter> Router<W> {
    /// Takes over a session that has done its handshake.
    pub(crate) fn new(session: Session<Vec<u8>, TABLE>, max_reply_size: usize) -> Self {
        Self {
            session,
            slots: Vec::new(),
            max_reply_size,
            closed: None,
            dropped: 0,
            discarded: 0,
            room: 128,
        }
    }

    pub(crate) fn session(&self) -> &Session<Vec<u8>, TABLE> {
        &self.session
    }

    pub(crate) fn closed(&self) -> Option<&Closed> {
        self.closed.as_ref()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    pub(crate) fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Encodes a command and appends it to `out`; the caller registers its waiter next.
    /// `Error::Refused(QueueFull | TableFull)` means: wait for a reply, then try again.
    pub(crate) fn encode<A: Serialize + ?Sized>(
        &mut self,
        oob: bool,
        name: &str,
        arguments: &A,
        out: &mut Vec<u8>,
    ) -> Result<CommandId> {
        if let Some(closed) = &self.closed {
            return Err(closed.error());
        }
        let start = out.len();
        loop {
            out.resize(start + self.room, 0);
            let buf = &mut out[start..];
            let sent = if oob {
                self.session.execute_oob(name, arguments, None, buf)
            } else {
                self.session.execute(name, arguments, None, buf)
            };
            match sent {
                Ok(sent) => {
                    out.truncate(start + sent.len);
                    return Ok(sent.id);
                }
                Err(SendError::Encode(EncodeError::BufferTooSmall { needed })) => {
                    self.room = needed;
                }
                Err(e) => {
                    out.truncate(start);
                    return Err(match e {
                        SendError::Closed => Error::Disconnected,
                        SendError::Encode(e) => Error::Encode(e),
                        e => Error::Refused(e),
                    });
                }
            }
        }
    }

    /// Who waits for command `id` (just encoded).
    pub(crate) fn register(&mut self, id: CommandId, waiter: W) {
        self.slots.push(Slot {
            id,
            waiter,
            abandoned: false,
        });
    }

    /// The caller of `id` went away before its answer. The server has (or will have) the
    /// command, so its slot stays taken until the reply comes, and that reply is then
    /// discarded by id. The waiter is kept until then (a permit in it stays held).
    pub(crate) fn abandon(&mut self, id: CommandId) {
        let Some(pos) = self.slots.iter().position(|s| s.id == id) else {
            return;
        };
        // Once closed, the session frees the slot at once: no reply can come.
        if self.session.abandon(id) && self.closed.is_none() {
            self.slots[pos].abandoned = true;
        } else {
            self.slots.swap_remove(pos);
        }
    }

    // Only the tokio client reads and times out through the router itself.
    #[cfg(feature = "tokio")]
    /// Times out the commands `expired` picks (among those still waited for): each is
    /// answered [`Error::Timeout`] and abandoned, so its slot (and waiter) stays until its
    /// late reply, which is then discarded by id.
    pub(crate) fn expire(&mut self, mut expired: impl FnMut(&W) -> bool) {
        for slot in &mut self.slots {
            if !slot.abandoned && expired(&slot.waiter) {
                slot.waiter.answer(Err(Error::Timeout(Expired::Command)));
                slot.abandoned = true;
                self.session.abandon(slot.id);
            }
        }
    }

    #[cfg(feature = "tokio")]
    /// The waiters of the commands still waited for.
    pub(crate) fn waiting(&self) -> impl Iterator<Item = &W> {
        self.slots
            .iter()
            .filter(|s| !s.abandoned)
            .map(|s| &s.waiter)
    }

    /// Forgets a command that never reached the server (writing it failed).
    pub(crate) fn forget(&mut self, id: CommandId) {
        self.session.forget(id);
        self.slots.retain(|s| s.id != id);
    }

    #[cfg(feature = "tokio")]
    /// Room to read bytes into (the buffer first grows, up to the maximum reply size, if one
    /// message fills it); follow with [`Router::commit`] and [`Router::route`].
    pub(crate) fn read_buf(&mut self) -> &mut [u8] {
        self.grow_if_full();
        self.session.read_buf()
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn commit(&mut self, n: usize) {
        self.session.commit(n);
    }

    /// Feeds `bytes` (all of them) and routes as it goes; returns how many command slots
    /// were freed.
    pub(crate) fn receive(
        &mut self,
        mut bytes: &[u8],
        mut on_event: impl FnMut(&qmp_proto::Event<'_>),
    ) -> usize {
        let mut freed = 0;
        while !bytes.is_empty() {
            self.grow_if_full();
            let n = self.session.feed(bytes);
            bytes = &bytes[n..];
            freed += self.route(&mut on_event);
        }
        freed
    }

    /// Routes everything the session has: each answer to its waiter, each event to
    /// `on_event`, in arrival order. Returns how many command slots were freed.
    pub(crate) fn route(&mut self, mut on_event: impl FnMut(&qmp_proto::Event<'_>)) -> usize {
        let Self {
            session,
            slots,
            max_reply_size,
            closed,
            dropped,
            discarded,
            ..
        } = self;
        let mut freed = 0;
        while let Some(item) = session.poll() {
            match item {
                Received::Reply(reply) => {
                    freed += 1;
                    let Some(pos) = slots.iter().position(|s| s.id == reply.id) else {
                        *dropped += 1;
                        continue;
                    };
                    let mut slot = slots.swap_remove(pos);
                    if slot.abandoned {
                        *discarded += 1;
                        continue;
                    }
                    let answer = match reply.outcome {
                        Outcome::Return(value) => Ok(value.as_json().into()),
                        Outcome::Error(e) => Err(Error::Qmp(QmpError::from_view(&e))),
                        Outcome::Failed(f) => Err(failure_error(f, closed, *max_reply_size)),
                    };
                    slot.waiter.answer(answer);
                }
                Received::Event(event) => on_event(&event),
                Received::Notice(Notice::Discarded(id)) => {
                    freed += 1;
                    *discarded += 1;
                    slots.retain(|s| s.id != id);
                }
                Received::Greeting(_) | Received::Notice(_) => *dropped += 1,
            }
        }
        freed
    }

    /// The connection ended: what was received is still routed, then every command waiting
    /// fails with `why`'s error. Later calls do nothing.
    pub(crate) fn close(&mut self, why: Closed, on_event: impl FnMut(&qmp_proto::Event<'_>)) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(why);
        self.session.handle_eof();
        self.route(on_event);
        // Abandoned commands are freed by the session at close; nobody waits for them.
        let error = why_error(self.closed.as_ref());
        for mut slot in self.slots.drain(..) {
            if !slot.abandoned {
                slot.waiter.answer(Err(error()));
            }
        }
    }

    /// Doubles the receive buffer, up to the maximum reply size, when one message fills it.
    fn grow_if_full(&mut self) {
        if !self.session.framer().is_full() {
            return;
        }
        let max = self.max_reply_size;
        let buffer = self.session.framer_mut().buffer_mut();
        if buffer.len() < max {
            let len = buffer.len().saturating_mul(2).min(max);
            buffer.resize(len, 0);
        }
    }
}

fn why_error(closed: Option<&Closed>) -> impl Fn() -> Error + '_ {
    move || closed.map_or(Error::Disconnected, Closed::error)
}

fn failure_error(failure: Failure, closed: &Option<Closed>, limit: usize) -> Error {
    match failure {
        Failure::TooLarge { size } => Error::TooLarge { size, limit },
        Failure::Malformed(e) => Error::Malformed(e),
        Failure::TimedOut => Error::Timeout(Expired::Command),
        _ => closed.as_ref().map_or(Error::Disconnected, Closed::error),
    }
}
