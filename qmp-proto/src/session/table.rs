//! The in-flight table: one slot per command sent and not yet answered, kept packed at the
//! start so walks stop at the last taken slot.

use crate::RawJson;
use crate::time::Instant;

use super::SendError;

/// What a command was sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Negotiate { oob: bool },
    InBand,
    OutOfBand,
}

/// Where a command in flight stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PendingStatus {
    Waiting,
    Expired,
    Disconnected,
    /// The server restarted (a second greeting): no reply can come.
    Restarted,
    Abandoned,
}

/// One command in flight.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) id: u64,
    pub(super) kind: Kind,
    pub(super) deadline: Option<Instant>,
    pub(super) status: PendingStatus,
    /// Whether the id went on the wire (see
    /// [`Config::untagged_when_alone`](super::Config::untagged_when_alone)).
    pub(super) tagged: bool,
}

/// The commands in flight, at most `N`.
#[derive(Debug)]
pub(super) struct Table<const N: usize> {
    table: [Option<Pending>; N],
    /// Slots from here on are all free, so walks stop here: with one command in flight, a
    /// walk looks at one slot, not `N`.
    used: usize,
}

impl<const N: usize> Table<N> {
    pub(super) fn new() -> Self {
        Self {
            table: [None; N],
            used: 0,
        }
    }

    /// The slots that may be taken (those past them are all free).
    pub(super) fn slots(&self) -> &[Option<Pending>] {
        &self.table[..self.used]
    }

    /// The lowest free slot (keeping the taken ones packed at the start).
    pub(super) fn free_slot(&self) -> Result<usize, SendError> {
        match self.slots().iter().position(Option::is_none) {
            Some(index) => Ok(index),
            None if self.used < N => Ok(self.used),
            None => Err(SendError::TableFull),
        }
    }

    /// Where command `id` is in the table.
    pub(super) fn position(&self, id: u64) -> Option<usize> {
        self.slots()
            .iter()
            .position(|p| p.is_some_and(|p| p.id == id))
    }

    /// Frees slot `index` and returns what it held.
    pub(super) fn free(&mut self, index: usize) -> Option<Pending> {
        let pending = self.table[index].take();
        while self.used > 0 && self.table[self.used - 1].is_none() {
            self.used -= 1;
        }
        pending
    }

    /// How many in-band commands (and negotiations) are in flight.
    pub(super) fn in_band(&self) -> usize {
        self.slots()
            .iter()
            .flatten()
            .filter(|p| p.kind != Kind::OutOfBand)
            .count()
    }

    /// Takes the table entry for a reply's id.
    pub(super) fn take(&mut self, id: Option<RawJson<'_>>) -> Option<Pending> {
        self.take_u64(id?.as_u64())
    }

    pub(super) fn take_u64(&mut self, id: Option<u64>) -> Option<Pending> {
        let index = self.position(id?)?;
        self.free(index)
    }

    /// Takes the entry of the command sent without an id, for a reply without one. There is
    /// at most one: it went out alone, and QEMU answers in-band commands in order.
    pub(super) fn take_untagged(&mut self) -> Option<Pending> {
        let index = self
            .slots()
            .iter()
            .position(|p| p.is_some_and(|p| !p.tagged && p.status != PendingStatus::Restarted))?;
        self.free(index)
    }

    /// Slot `index`.
    pub(super) fn slot_mut(&mut self, index: usize) -> &mut Option<Pending> {
        &mut self.table[index]
    }

    /// Puts `pending` in slot `slot` (from [`free_slot`](Self::free_slot)).
    pub(super) fn insert(&mut self, slot: usize, pending: Pending) {
        self.table[slot] = Some(pending);
        self.used = self.used.max(slot + 1);
    }

    /// The connection is gone: abandoned commands are freed, the others are marked
    /// disconnected (to fail in turn).
    pub(super) fn disconnect(&mut self) {
        self.end_all(PendingStatus::Disconnected, |_| true);
    }

    /// The server restarted: abandoned commands are freed, the others but a negotiation are
    /// marked restarted (to fail in turn, unless their reply is already in the buffer).
    pub(super) fn restart(&mut self) {
        // A negotiation in flight stays: QEMU greets again when it resets its monitor
        // (twice on a pty opened early), and answers it after the greeting if it read it
        // after the reset; if not, its deadline ends the handshake.
        self.end_all(PendingStatus::Restarted, |p| {
            p.status == PendingStatus::Waiting && !matches!(p.kind, Kind::Negotiate { .. })
        });
    }

    /// Frees the abandoned commands and gives status `to` to the others that `ends` picks.
    fn end_all(&mut self, to: PendingStatus, ends: impl Fn(&Pending) -> bool) {
        for index in 0..self.used {
            match &mut self.table[index] {
                Some(p) if p.status == PendingStatus::Abandoned => {
                    self.free(index);
                }
                Some(p) if ends(p) => p.status = to,
                _ => {}
            }
        }
    }

    /// How many commands are in the table (including abandoned ones still owed a reply).
    pub(super) fn len(&self) -> usize {
        self.slots().iter().flatten().count()
    }

    /// Whether command `id` is in the table and not abandoned.
    pub(super) fn is_waiting_for(&self, id: u64) -> bool {
        self.slots()
            .iter()
            .flatten()
            .any(|p| p.id == id && p.status != PendingStatus::Abandoned)
    }

    /// Whether a negotiation is in flight.
    pub(super) fn negotiating(&self) -> bool {
        self.slots()
            .iter()
            .flatten()
            .any(|p| matches!(p.kind, Kind::Negotiate { .. }))
    }

    /// Marks the waiting commands whose deadline is at or before `now` as expired.
    pub(super) fn expire(&mut self, now: Instant) {
        for p in self.table[..self.used].iter_mut().flatten() {
            if p.status == PendingStatus::Waiting && p.deadline.is_some_and(|d| d <= now) {
                p.status = PendingStatus::Expired;
            }
        }
    }

    /// The earliest deadline of a command still waiting.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.slots()
            .iter()
            .flatten()
            .filter(|p| p.status == PendingStatus::Waiting)
            .filter_map(|p| p.deadline)
            .min()
    }

    /// Takes the first command that expired or was disconnected.
    pub(super) fn take_failed(&mut self) -> Option<Pending> {
        let index = self.slots().iter().position(|p| {
            p.is_some_and(|p| {
                matches!(
                    p.status,
                    PendingStatus::Expired | PendingStatus::Disconnected | PendingStatus::Restarted
                )
            })
        })?;
        self.free(index)
    }
}
