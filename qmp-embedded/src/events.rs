//! The bounded queue of events copied out of the receive buffer.
//!
//! Each event is stored as one record in a byte array of `EV` bytes:
//! `[record length: u16 LE][seconds: i64 LE][microseconds: i64 LE][name length: u8][name][data]`,
//! where the name is the still-escaped event name and `data` the raw JSON of the `data` member
//! (absent when empty). Popping an event hands out a view of its record, which is dropped at
//! the next access.
//!
//! When an event does not fit, it is counted, not stored, and so is every event after it until
//! the caller has drained the queue up to that point: then the count is reported, once, where
//! the gap is ([`EventsLost`]). So the caller always learns of a loss, and where in the order
//! it happened.

use qmp_proto::{Event, JsonStr, RawJson, Timestamp};

/// Bytes of each record besides the name and data.
pub(crate) const RECORD_HEADER: usize = 2 + 8 + 8 + 1;

/// Events that were dropped because the event queue (`EV` bytes) was full, or because one
/// event did not fit it (or the receive buffer) at all. Reported once, in order: the events
/// before it were delivered, the ones after it arrived after the gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EventsLost {
    /// How many events were dropped at this point.
    pub count: u32,
}

impl core::fmt::Display for EventsLost {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} QMP event(s) lost: the event queue was full",
            self.count
        )
    }
}

impl core::error::Error for EventsLost {}

#[derive(Debug)]
pub(crate) struct EventQueue<const EV: usize> {
    buf: [u8; EV],
    /// Bytes of stored records.
    used: usize,
    /// Bytes at the front already handed out; dropped at the next access.
    consumed: usize,
    /// Events dropped after the last stored one.
    lost: u32,
}

impl<const EV: usize> EventQueue<EV> {
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; EV],
            used: 0,
            consumed: 0,
            lost: 0,
        }
    }

    /// Whether an event or a loss report is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.used == self.consumed && self.lost == 0
    }

    fn drop_consumed(&mut self) {
        if self.consumed > 0 {
            self.buf.copy_within(self.consumed..self.used, 0);
            self.used -= self.consumed;
            self.consumed = 0;
        }
    }

    /// Copies `event` in; returns `false` if it was dropped (and counted).
    pub(crate) fn push(&mut self, event: &Event<'_>) -> bool {
        self.drop_consumed();
        let name = event.name.as_escaped().as_bytes();
        let data = event.data.map_or(&[][..], |d| d.as_json().as_bytes());
        let len = RECORD_HEADER + name.len() + data.len();
        let fits = self.lost == 0
            && name.len() <= usize::from(u8::MAX)
            && len <= usize::from(u16::MAX)
            && len <= EV - self.used;
        if !fits {
            self.lose();
            return false;
        }
        let rec = &mut self.buf[self.used..self.used + len];
        rec[0..2].copy_from_slice(&(len as u16).to_le_bytes());
        rec[2..10].copy_from_slice(&event.timestamp.seconds.to_le_bytes());
        rec[10..18].copy_from_slice(&event.timestamp.microseconds.to_le_bytes());
        rec[18] = name.len() as u8;
        rec[RECORD_HEADER..RECORD_HEADER + name.len()].copy_from_slice(name);
        rec[RECORD_HEADER + name.len()..].copy_from_slice(data);
        self.used += len;
        true
    }

    /// Counts one event that could not be stored.
    pub(crate) fn lose(&mut self) {
        self.lost = self.lost.saturating_add(1);
    }

    /// The oldest event, or the report of a gap, or `None`.
    pub(crate) fn pop(&mut self) -> Option<Result<Event<'_>, EventsLost>> {
        self.drop_consumed();
        if self.used == 0 {
            if self.lost == 0 {
                return None;
            }
            let count = core::mem::take(&mut self.lost);
            return Some(Err(EventsLost { count }));
        }
        let len = usize::from(u16::from_le_bytes([self.buf[0], self.buf[1]]));
        self.consumed = len.max(RECORD_HEADER).min(self.used);
        match decode(&self.buf[..self.consumed]) {
            Some(event) => Some(Ok(event)),
            // Records are written above from validated views, so this cannot happen; report
            // it as a loss rather than panic.
            None => Some(Err(EventsLost { count: 1 })),
        }
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
    let name_end = RECORD_HEADER + usize::from(*rec.get(18)?);
    let name = core::str::from_utf8(rec.get(RECORD_HEADER..name_end)?).ok()?;
    let data = rec.get(name_end..)?;
    let data = if data.is_empty() {
        None
    } else {
        Some(RawJson::parse(core::str::from_utf8(data).ok()?).ok()?)
    };
    Some(Event {
        name: JsonStr::from_escaped(name),
        data,
        timestamp,
    })
}
