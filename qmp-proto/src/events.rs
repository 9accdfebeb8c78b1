//! The event queue: one overflow rule for every client.
//!
//! Events are kept in arrival order in storage the caller chooses ([`EventStore`]): a byte
//! array of records ([`EventBuffer`], no allocation) or an adapter's own collection of owned
//! events. [`EventQueue`] wraps the storage with the one rule all clients share:
//!
//! **Drop the newest, report the gap where it is.** When an event does not fit, it is
//! counted, not stored, and so is every later one until the caller has taken the stored
//! events up to that point; then [`EventQueue::take`] yields [`Lagged`] `{ missed }` exactly
//! where the gap is, once, and storing resumes. An event too large for the receive buffer
//! is counted the same way. So a caller always learns of a loss, and where in the order it
//! happened.

use core::fmt;

use crate::json::{JsonStr, RawJson};
use crate::message::{Event, Timestamp};

/// Events that were dropped at this point in the order: the queue was full, or one event
/// did not fit it (or the receive buffer) at all. The events before it were delivered; the
/// ones after it arrived after the gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Lagged {
    /// How many events were dropped here.
    pub missed: u64,
}

impl fmt::Display for Lagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} QMP event(s) lost: the event queue was full",
            self.missed
        )
    }
}

impl core::error::Error for Lagged {}

/// Storage for queued events, in arrival order. The overflow rule is not its business:
/// [`EventQueue`] applies it. Implemented by [`EventBuffer`] (records in a byte array) and
/// by adapters for their owned events.
pub trait EventStore {
    /// What [`take`](Self::take) hands out: a view into the storage or an owned event.
    type Item<'a>
    where
        Self: 'a;

    /// Stores a copy of `event` at the back; `false` if there is no room (nothing stored).
    fn push(&mut self, event: &Event<'_>) -> bool;

    /// Removes and returns the oldest event (called `name`, if given).
    fn take(&mut self, name: Option<&str>) -> Option<Self::Item<'_>>;

    /// Whether an event (called `name`, if given) is stored.
    fn contains(&self, name: Option<&str>) -> bool;

    /// How many events are stored.
    fn len(&self) -> usize;

    /// Whether no event is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A bounded event queue over `S`, with the one overflow rule every client shares:
///
/// **Drop the newest, report the gap where it is.** When an event does not fit, it is
/// counted, not stored, and so is every later one until the caller has taken the stored
/// events up to that point; then [`EventQueue::take`] yields [`Lagged`] `{ missed }` exactly
/// where the gap is, once, and storing resumes. An event too large for the receive buffer
/// is counted the same way. So a caller always learns of a loss, and where in the order it
/// happened.
#[derive(Debug, Default)]
pub struct EventQueue<S> {
    store: S,
    /// Events dropped after the last stored one (the gap not yet reported).
    lost: u64,
    /// Events dropped since the start.
    lost_total: u64,
}

impl<S: EventStore> EventQueue<S> {
    /// A queue over `store`.
    pub fn new(store: S) -> Self {
        Self {
            store,
            lost: 0,
            lost_total: 0,
        }
    }

    /// Queues `event`, or counts it lost (a gap is open, or it does not fit). Returns
    /// whether it was stored.
    pub fn push(&mut self, event: &Event<'_>) -> bool {
        if self.lost == 0 && self.store.push(event) {
            return true;
        }
        self.lose(1);
        false
    }

    /// [`push`](Self::push) for an event the caller stores itself (an owned copy it already
    /// holds, say): `store` is called only when no gap is open, and says whether it stored
    /// the event. The same rule applies: not stored, it is counted lost here.
    pub fn push_with(&mut self, store: impl FnOnce(&mut S) -> bool) -> bool {
        if self.lost == 0 && store(&mut self.store) {
            return true;
        }
        self.lose(1);
        false
    }

    /// Counts `n` events lost at this point (for example one too large to receive).
    pub fn lose(&mut self, n: u64) {
        self.lost = self.lost.saturating_add(n);
        self.lost_total = self.lost_total.saturating_add(n);
    }

    /// The oldest stored event (called `name`, if given); when none is left, the gap after
    /// them, once, as [`Lagged`]; else `None`.
    pub fn take(&mut self, name: Option<&str>) -> Option<Result<S::Item<'_>, Lagged>> {
        if self.lost > 0 && !self.store.contains(name) {
            let missed = core::mem::take(&mut self.lost);
            return Some(Err(Lagged { missed }));
        }
        self.store.take(name).map(Ok)
    }

    /// Whether a gap is open: events were dropped after the last stored one, and none is
    /// stored until [`take`](Self::take) has reported the gap.
    pub fn is_lagging(&self) -> bool {
        self.lost > 0
    }

    /// Whether [`take`](Self::take) would yield something.
    pub fn is_ready(&self, name: Option<&str>) -> bool {
        self.lost > 0 || self.store.contains(name)
    }

    /// Stored events.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether no event is stored (a gap may still be pending).
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Events dropped since the start.
    pub fn lost_total(&self) -> u64 {
        self.lost_total
    }

    /// Forgets the pending gap without reporting it (the caller has learnt of it another
    /// way, e.g. from [`lost_total`](Self::lost_total)), so events are stored again.
    pub fn clear_gap(&mut self) {
        self.lost = 0;
    }

    /// The storage.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The storage, mutably (e.g. to drain an adapter's own collection).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }
}

/// Bytes of each [`EventBuffer`] record besides the name and data.
pub const EVENT_RECORD_HEADER: usize = 2 + 8 + 8 + 1;

/// Event storage in a byte array of `EV` bytes, no allocation: each event is one record
/// `[length: u16 LE][seconds: i64 LE][microseconds: i64 LE][name length: u8][name][data]`,
/// the name still escaped and `data` the raw JSON of the `data` member (empty when absent):
/// [`EVENT_RECORD_HEADER`] (19) bytes plus the name and data (`STOP`: 23 bytes). A taken
/// event is handed out as a view of its record, which is removed at the next access.
#[derive(Debug)]
pub struct EventBuffer<const EV: usize> {
    buf: [u8; EV],
    /// Bytes of stored records.
    used: usize,
    /// The record handed out last, removed at the next access.
    taken: Option<(usize, usize)>,
    count: usize,
}

impl<const EV: usize> Default for EventBuffer<EV> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const EV: usize> EventBuffer<EV> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            buf: [0; EV],
            used: 0,
            taken: None,
            count: 0,
        }
    }

    fn remove_taken(&mut self) {
        if let Some((start, len)) = self.taken.take() {
            self.buf.copy_within(start + len..self.used, start);
            self.used -= len;
            self.count -= 1;
        }
    }

    /// The records, as (start, length), oldest first.
    fn records(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut at = 0;
        core::iter::from_fn(move || {
            if at >= self.used {
                return None;
            }
            let len = usize::from(u16::from_le_bytes([self.buf[at], self.buf[at + 1]]));
            let len = len.clamp(EVENT_RECORD_HEADER, self.used - at);
            let record = (at, len);
            at += len;
            Some(record)
        })
    }

    fn find(&self, name: Option<&str>) -> Option<(usize, usize)> {
        let skip = self.taken;
        self.records()
            .filter(|r| Some(*r) != skip)
            .find(|&(start, len)| {
                name.is_none_or(|name| {
                    decode(&self.buf[start..start + len]).is_some_and(|e| e.name.eq_str(name))
                })
            })
    }
}

impl<const EV: usize> EventStore for EventBuffer<EV> {
    type Item<'a> = Event<'a>;

    fn push(&mut self, event: &Event<'_>) -> bool {
        self.remove_taken();
        let name = event.name.as_escaped().as_bytes();
        let data = event.data.map_or(&[][..], |d| d.as_json().as_bytes());
        let len = EVENT_RECORD_HEADER + name.len() + data.len();
        let fits = name.len() <= usize::from(u8::MAX)
            && len <= usize::from(u16::MAX)
            && len <= EV - self.used;
        if !fits {
            return false;
        }
        let rec = &mut self.buf[self.used..self.used + len];
        rec[0..2].copy_from_slice(&(len as u16).to_le_bytes());
        rec[2..10].copy_from_slice(&event.timestamp.seconds.to_le_bytes());
        rec[10..18].copy_from_slice(&event.timestamp.microseconds.to_le_bytes());
        rec[18] = name.len() as u8;
        rec[EVENT_RECORD_HEADER..EVENT_RECORD_HEADER + name.len()].copy_from_slice(name);
        rec[EVENT_RECORD_HEADER + name.len()..].copy_from_slice(data);
        self.used += len;
        self.count += 1;
        true
    }

    fn take(&mut self, name: Option<&str>) -> Option<Event<'_>> {
        self.remove_taken();
        let (start, len) = self.find(name)?;
        self.taken = Some((start, len));
        // Records are written above from validated views, so decoding cannot fail; a record
        // that did would be skipped (removed at the next access) rather than panic.
        decode(&self.buf[start..start + len])
    }

    fn contains(&self, name: Option<&str>) -> bool {
        self.find(name).is_some()
    }

    fn len(&self) -> usize {
        self.count - usize::from(self.taken.is_some())
    }
}

fn decode(rec: &[u8]) -> Option<Event<'_>> {
    let int = |at: usize| -> Option<i64> {
        Some(i64::from_le_bytes(rec.get(at..at + 8)?.try_into().ok()?))
    };
    let timestamp = Timestamp {
        seconds: int(2)?,
        microseconds: int(10)?,
    };
    let name_end = EVENT_RECORD_HEADER + usize::from(*rec.get(18)?);
    let name = core::str::from_utf8(rec.get(EVENT_RECORD_HEADER..name_end)?).ok()?;
    let data = rec.get(name_end..)?;
    let data = if data.is_empty() {
        None
    } else {
        Some(RawJson::new_unchecked(core::str::from_utf8(data).ok()?))
    };
    Some(Event {
        name: JsonStr::from_escaped(name),
        data,
        timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &'static str) -> Event<'static> {
        Event {
            name: JsonStr::from_escaped(name),
            data: None,
            timestamp: Timestamp {
                seconds: 1,
                microseconds: 2,
            },
        }
    }

    #[test]
    fn drops_the_newest_and_reports_the_gap_where_it_is() {
        // Room for two STOP records (23 bytes each); a RESUME record is 25.
        let mut q = EventQueue::new(EventBuffer::<46>::new());
        assert!(q.push(&event("STOP")));
        assert!(!q.push(&event("RESUME")));
        // It would fit, but the gap is still open: counted too, so the order stays true.
        assert!(!q.push(&event("STOP")));
        assert!(q.take(None).unwrap().unwrap().name == "STOP");
        assert_eq!(q.take(None), Some(Err(Lagged { missed: 2 })));
        assert_eq!(q.take(None), None);
        assert_eq!(q.lost_total(), 2);
        assert!(q.push(&event("STOP")));
        assert!(q.push(&event("STOP")));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn takes_by_name_and_keeps_the_others_in_order() {
        let mut q = EventQueue::new(EventBuffer::<256>::new());
        for name in ["STOP", "RESUME", "STOP", "RESET"] {
            assert!(q.push(&event(name)));
        }
        assert!(q.take(Some("RESET")).unwrap().unwrap().name == "RESET");
        assert!(q.take(Some("SHUTDOWN")).is_none());
        let names: heapless::Vec<heapless::String<8>, 4> = core::iter::from_fn(|| {
            q.take(None).map(|e| {
                let e = e.unwrap();
                heapless::String::try_from(e.name.as_escaped()).unwrap()
            })
        })
        .collect();
        assert_eq!(names, ["STOP", "RESUME", "STOP"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_gap_is_reported_only_once_no_match_is_stored() {
        let mut q = EventQueue::new(EventBuffer::<24>::new());
        assert!(q.push(&event("STOP")));
        assert!(!q.push(&event("RESET")));
        // A STOP is stored: it comes first, then the gap.
        assert!(q.take(Some("STOP")).unwrap().is_ok());
        assert_eq!(q.take(Some("STOP")), Some(Err(Lagged { missed: 1 })));
        assert_eq!(q.take(Some("STOP")), None);
    }
}
