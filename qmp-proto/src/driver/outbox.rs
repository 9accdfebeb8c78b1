//! The transmit queue: commands encoded into the transmit buffer, in order, until they are
//! written, with the [`RESYNC`] byte owed after a command was cut off part-way.

use serde::Serialize;

use crate::encode::{EncodeError, encode_json};
use crate::session::{CommandId, SendError, Sent};

use super::{Buffer, RESYNC};

/// A command whose bytes are (partly) in the transmit buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Queued {
    id: CommandId,
    /// Where its bytes start and end in the transmit buffer.
    start: usize,
    end: usize,
    attach: bool,
}

/// The transmit buffer and the commands with bytes in it.
pub(super) struct Outbox<T, const N: usize> {
    tx: T,
    /// Written bytes at the start of `tx`.
    tx_start: usize,
    tx_end: usize,
    /// Commands with bytes in `tx`, in order.
    queued: heapless::Deque<Queued, N>,
    /// Send the resync byte before the next command.
    resync: bool,
    /// The resync byte: [`RESYNC`], or the guest agent's sentinel.
    resync_byte: u8,
}

impl<T, const N: usize> Outbox<T, N> {
    /// Bytes queued and not yet written.
    pub(super) fn len(&self) -> usize {
        self.tx_end - self.tx_start
    }
}

impl<T: Buffer, const N: usize> Outbox<T, N> {
    pub(super) fn new(tx: T) -> Self {
        Self {
            tx,
            tx_start: 0,
            tx_end: 0,
            queued: heapless::Deque::new(),
            resync: false,
            resync_byte: RESYNC,
        }
    }

    /// Uses `byte` as the resync byte.
    #[cfg_attr(not(feature = "agent"), allow(dead_code))]
    pub(super) fn set_resync_byte(&mut self, byte: u8) {
        self.resync_byte = byte;
    }

    /// Sends the resync byte before the next message or command.
    pub(super) fn owe_resync(&mut self) {
        self.resync = true;
    }

    /// Whether no more commands fit in the queue.
    pub(super) fn is_full(&self) -> bool {
        self.queued.is_full()
    }

    /// The bytes to write next, as a range of [`bytes`](Self::bytes), and whether they start
    /// with a command that carries an attachment.
    pub(super) fn transmit_range(&self) -> Option<(usize, usize, bool)> {
        if self.tx_start == self.tx_end {
            return None;
        }
        // A command with an attachment goes out on its own, starting with its first byte.
        match self.queued.iter().find(|q| q.attach) {
            Some(q) if self.tx_start < q.start => Some((self.tx_start, q.start, false)),
            Some(q) => Some((self.tx_start, q.end, q.start == self.tx_start)),
            None => Some((self.tx_start, self.tx_end, false)),
        }
    }

    /// The transmit buffer's bytes `start..end`.
    pub(super) fn bytes(&self, start: usize, end: usize) -> &[u8] {
        &self.tx.as_ref()[start..end]
    }

    /// The transmit buffer after the queued bytes.
    pub(super) fn scratch(&mut self) -> &mut [u8] {
        self.tx.as_mut().get_mut(self.tx_end..).unwrap_or(&mut [])
    }

    /// `n` bytes of the transmit range were written.
    pub(super) fn written(&mut self, n: usize) {
        self.tx_start = (self.tx_start + n).min(self.tx_end);
        while self.queued.front().is_some_and(|q| q.end <= self.tx_start) {
            self.queued.pop_front();
        }
        if let Some(q) = self.queued.front_mut()
            && q.start < self.tx_start
        {
            // Its first byte, and the attachment with it, went out.
            q.attach = false;
        }
        if self.tx_start == self.tx_end {
            self.tx_start = 0;
            self.tx_end = 0;
        }
    }

    /// Drops the unwritten bytes of every queued command, calling `dropped` with each one's
    /// id, in order.
    pub(super) fn drop_all(&mut self, mut dropped: impl FnMut(CommandId)) {
        while let Some(q) = self.queued.pop_front() {
            dropped(q.id);
        }
        self.tx_start = 0;
        self.tx_end = 0;
    }

    /// Removes command `id`'s unwritten bytes from the transmit buffer; returns whether it
    /// had any (so the server never got it whole).
    pub(super) fn unqueue(&mut self, id: CommandId) -> bool {
        let Some(index) = self.queued.iter().position(|q| q.id == id) else {
            return false;
        };
        let q = self.queued.iter().nth(index).copied().expect("in range");
        // Part of it went out: QEMU must be told to drop the fragment.
        let from = q.start.max(self.tx_start);
        if q.start < self.tx_start {
            self.resync = true;
        }
        let cut = q.end - from;
        self.tx.as_mut().copy_within(q.end..self.tx_end, from);
        self.tx_end -= cut;
        let mut rest = heapless::Deque::<Queued, N>::new();
        for (i, other) in self.queued.iter().enumerate() {
            let moved = if i > index {
                Queued {
                    start: other.start - cut,
                    end: other.end - cut,
                    ..*other
                }
            } else {
                *other
            };
            if i != index {
                let _ = rest.push_back(moved);
            }
        }
        self.queued = rest;
        if self.tx_start == self.tx_end {
            self.tx_start = 0;
            self.tx_end = 0;
        }
        true
    }

    /// Queues a whole message of the caller's own, exactly as given.
    pub(super) fn push_message<M: Serialize + ?Sized>(
        &mut self,
        message: &M,
    ) -> Result<(), SendError> {
        self.compact_tx();
        self.reclaim();
        let reserve = usize::from(self.resync);
        let len = loop {
            let room = self
                .tx
                .as_mut()
                .get_mut(self.tx_end + reserve..)
                .unwrap_or(&mut []);
            match encode_json(message, room) {
                Ok(len) => break len,
                Err(EncodeError::BufferTooSmall { needed }) => {
                    if !self.grow_tx(needed + reserve)? {
                        return Err(SendError::Encode(EncodeError::BufferTooSmall {
                            needed: needed + reserve,
                        }));
                    }
                }
                Err(e) => return Err(SendError::Encode(e)),
            }
        };
        self.prepend_resync(len);
        Ok(())
    }

    /// Queues `bytes` exactly as given, untracked (the guest agent's sync, written without
    /// serde to keep it small).
    pub(super) fn push_raw(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        self.compact_tx();
        let reserve = usize::from(self.resync);
        let len = bytes.len();
        let room = self.tx.as_ref().len().saturating_sub(self.tx_end + reserve);
        if room < len && !self.grow_tx(len + reserve)? {
            return Err(SendError::Encode(EncodeError::BufferTooSmall {
                needed: len + reserve,
            }));
        }
        let at = self.tx_end + reserve;
        let room = self.tx.as_mut().iter_mut().skip(at);
        for (dst, src) in room.zip(bytes) {
            *dst = *src;
        }
        self.prepend_resync(len);
        Ok(())
    }

    /// Queues the command `encode` writes into the room it is given (growing the buffer
    /// while the room is too small); with `attach`, only into an empty buffer.
    pub(super) fn push_command(
        &mut self,
        attach: bool,
        mut encode: impl FnMut(&mut [u8]) -> Result<Sent, SendError>,
    ) -> Result<CommandId, SendError> {
        if attach && self.tx_end > self.tx_start {
            return Err(SendError::Busy);
        }
        if self.queued.is_full() {
            return Err(SendError::Busy);
        }
        self.compact_tx();
        self.reclaim();
        // One byte of room for a resync byte in front.
        let reserve = usize::from(self.resync);
        loop {
            let room = self
                .tx
                .as_mut()
                .get_mut(self.tx_end + reserve..)
                .unwrap_or(&mut []);
            match encode(room) {
                Ok(sent) => {
                    self.prepend_resync(sent.len);
                    let _ = self.queued.push_back(Queued {
                        id: sent.id,
                        start: self.tx_end - sent.len,
                        end: self.tx_end,
                        attach,
                    });
                    return Ok(sent.id);
                }
                Err(SendError::Encode(EncodeError::BufferTooSmall { needed })) => {
                    if !self.grow_tx(needed + reserve)? {
                        return Err(SendError::Encode(EncodeError::BufferTooSmall {
                            needed: needed + reserve,
                        }));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Lets the transmit buffer give its memory back if it holds no unwritten byte.
    pub(super) fn release_if_empty(&mut self) {
        if self.tx_start == self.tx_end && self.queued.is_empty() && !self.tx.as_ref().is_empty() {
            (self.tx_start, self.tx_end) = (0, 0);
            self.tx.release();
        }
    }

    /// Takes the transmit buffer back (see [`Buffer::release`]) before encoding into it, so
    /// that a command is not encoded twice, once to learn its size.
    fn reclaim(&mut self) {
        if self.tx.as_ref().is_empty() {
            let _ = self.tx.grow_to(1);
        }
    }

    fn compact_tx(&mut self) {
        if self.tx_start > 0 && self.tx_start == self.tx_end {
            self.tx_start = 0;
            self.tx_end = 0;
        }
    }

    /// Grows the transmit buffer to hold `needed` more bytes; `Busy` if it cannot but would
    /// after the queued bytes are written.
    fn grow_tx(&mut self, needed: usize) -> Result<bool, SendError> {
        let want = self.tx_end + needed + 1;
        if self.tx.grow_to(want) && self.tx.as_ref().len() >= want {
            return Ok(true);
        }
        if self.tx_end > 0 && needed < self.tx.as_ref().len() {
            return Err(SendError::Busy);
        }
        Ok(false)
    }

    /// `len` bytes were encoded after `tx_end`, leaving one byte in front for [`RESYNC`]
    /// if one is owed: put it there, and take them into the queue.
    fn prepend_resync(&mut self, len: usize) {
        if self.resync {
            self.tx.as_mut()[self.tx_end] = self.resync_byte;
            self.tx_end += 1;
            self.resync = false;
        }
        self.tx_end += len;
    }
}
