//! Skimming an object too large for the buffer: its bytes are dropped as they go by, and
//! only its top-level `"id"` (as [`SkimmedId`]) and whether it reads as a reply are kept.
//! The same byte-by-byte skim reads the start of an object that could not be framed, so that
//! the session can tell which command's reply it was.

use core::fmt;

use crate::json::RawJson;
use crate::scan::{Kinds, MAX_SUPPORTED_DEPTH, Scanned, is_ws, plain_run};

/// The raw JSON text of an oversized message's top-level `"id"` (at most 32 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SkimmedId {
    bytes: [u8; SkimmedId::CAPACITY],
    len: u8,
}

impl SkimmedId {
    /// The longest id text kept.
    pub const CAPACITY: usize = 32;

    /// The id's JSON text, e.g. `17` or `"abc"`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The id as an unsigned integer, if it is one (as the ids a session assigns are).
    pub fn as_u64(&self) -> Option<u64> {
        let text = core::str::from_utf8(self.as_bytes()).ok()?;
        RawJson::new_unchecked(text).as_u64()
    }
}

impl fmt::Debug for SkimmedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SkimmedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.as_bytes() {
            fmt::Write::write_char(f, if b.is_ascii() { b as char } else { '?' })?;
        }
        Ok(())
    }
}

/// The top-level `id` of a complete frame and whether it reads as a reply (see
/// [`FrameError::TooLarge`](crate::FrameError::TooLarge)), read byte by byte as the skimmer
/// of oversized messages does: for a frame [`crate::find_id`] cannot read, such as one with
/// invalid UTF-8 before its id.
pub(crate) fn skim_id(frame: &[u8]) -> (Option<SkimmedId>, bool) {
    let mut skim = Skimmer::new(0);
    for &b in frame {
        match skim.step(b, MAX_SUPPORTED_DEPTH) {
            Scanned::NeedMore => {}
            Scanned::Complete => return (skim.id(), skim.is_reply()),
            _ => break,
        }
    }
    (None, false)
}

/// What the start of an object that could not be framed says about it: its top-level `id`
/// if one was read in full before the bytes went wrong, and whether its top-level keys so far
/// read as a reply's (`return` or `error`, no `event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Broken {
    /// The id, if read in full.
    pub(crate) id: Option<SkimmedId>,
    /// Whether the keys so far are a reply's.
    pub(crate) reply: bool,
}

impl Broken {
    /// What `skim` has read so far.
    pub(crate) fn of(skim: &Skimmer) -> Self {
        Self {
            id: skim.id(),
            reply: skim.is_reply(),
        }
    }

    /// Skims `bytes`, the start of an object up to where the framer stopped (its `{` first).
    pub(crate) fn skim(bytes: &[u8]) -> Self {
        let mut skim = Skimmer::new(0);
        for &b in bytes {
            if skim.step(b, MAX_SUPPORTED_DEPTH) != Scanned::NeedMore {
                break;
            }
        }
        Self::of(&skim)
    }
}

/// Where skimming of an oversized object stands in its top-level members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    /// Expecting a key (or the end).
    Key,
    /// Inside a key: its first bytes (up to [`KEY_PREFIX`]) and its length, which goes past
    /// the prefix for longer keys, and to `u8::MAX` after an escape (no key of interest has
    /// one).
    InKey { prefix: [u8; KEY_PREFIX], len: u8 },
    /// After a key, before its `:`.
    AfterKey { is_id: bool },
    /// Inside a value.
    Value,
}

/// The longest key the skimmer recognises (`return`).
const KEY_PREFIX: usize = 6;

/// The slow scanner for an object too large for the buffer: drops bytes, keeps the `id`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Skimmer {
    depth: u32,
    kinds: Kinds,
    in_string: bool,
    escaped: bool,
    line_start: bool,
    member: Member,
    capturing: bool,
    id: SkimmedId,
    id_state: IdState,
    /// Seen a top-level `return` or `error` key.
    reply_key: bool,
    /// Seen a top-level `event` key.
    event_key: bool,
    offset: u64,
    size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdState {
    None,
    Captured,
    TooLong,
}

impl Skimmer {
    /// A skimmer for the object whose `{` is at stream offset `offset`.
    pub(crate) fn new(offset: u64) -> Self {
        Self {
            depth: 0,
            kinds: Kinds::default(),
            in_string: false,
            escaped: false,
            line_start: false,
            member: Member::Key,
            capturing: false,
            id: SkimmedId {
                bytes: [0; SkimmedId::CAPACITY],
                len: 0,
            },
            id_state: IdState::None,
            reply_key: false,
            event_key: false,
            offset,
            size: 0,
        }
    }

    fn capture(&mut self, b: u8) {
        if !self.capturing || (self.id.len == 0 && is_ws(b)) {
            return;
        }
        match self.id.bytes.get_mut(usize::from(self.id.len)) {
            Some(slot) => {
                *slot = b;
                self.id.len += 1;
            }
            None => self.id_state = IdState::TooLong,
        }
    }

    fn end_capture(&mut self) {
        if self.capturing {
            self.capturing = false;
            while self.id.len > 0 && is_ws(self.id.bytes[usize::from(self.id.len) - 1]) {
                self.id.len -= 1;
            }
            if self.id_state == IdState::None {
                self.id_state = IdState::Captured;
            }
        }
    }

    /// The id, once the object has ended (or once the member holding it has, for an object
    /// that breaks off later).
    pub(crate) fn id(&self) -> Option<SkimmedId> {
        (self.id_state == IdState::Captured && self.id.len > 0).then_some(self.id)
    }

    /// Stream offset of the object's `{`.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// How many of the object's bytes have gone by.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Passes over the plain string bytes at the start of `rest`, if the skimmer is inside a
    /// string whose bytes change nothing but the size (a huge reply is mostly one long
    /// string); returns how many.
    pub(crate) fn skip_plain(&mut self, rest: &[u8]) -> usize {
        if !self.in_string
            || self.escaped
            || self.capturing
            || matches!(self.member, Member::InKey { .. })
        {
            return 0;
        }
        let run = plain_run(rest);
        self.size += run as u64;
        run
    }

    /// Whether the object was a reply, once it has ended (whether its keys so far are a
    /// reply's, before then).
    pub(crate) fn is_reply(&self) -> bool {
        self.reply_key && !self.event_key
    }

    /// A top-level key ended: notes the keys of interest; returns whether it was `id`.
    fn end_key(&mut self, prefix: [u8; KEY_PREFIX], len: u8) -> bool {
        let Some(key) = prefix.get(..usize::from(len)) else {
            return false;
        };
        match key {
            b"return" | b"error" => self.reply_key = true,
            b"event" => self.event_key = true,
            _ => {}
        }
        key == b"id"
    }

    /// Feeds one byte of the object (starting with its `{`).
    pub(crate) fn step(&mut self, b: u8, max_depth: u32) -> Scanned {
        self.size += 1;
        if self.in_string {
            self.capture(b);
            if self.escaped {
                if b < 0x20 {
                    return Scanned::ControlChar(b);
                }
                self.escaped = false;
                if let Member::InKey { len, .. } = &mut self.member {
                    *len = u8::MAX;
                }
            } else if b == b'"' {
                self.in_string = false;
                if let Member::InKey { prefix, len } = self.member {
                    let is_id = self.end_key(prefix, len);
                    self.member = Member::AfterKey { is_id };
                }
            } else if b == b'\\' {
                self.escaped = true;
            } else if b < 0x20 {
                return Scanned::ControlChar(b);
            } else if let Member::InKey { prefix, len } = &mut self.member {
                if let Some(slot) = prefix.get_mut(usize::from(*len)) {
                    *slot = b;
                }
                // Counts up to `u8::MAX - 1`, never into the escape mark.
                if *len < u8::MAX - 1 {
                    *len += 1;
                }
            }
            return Scanned::NeedMore;
        }
        if self.line_start && b == b'{' && self.depth > 0 {
            return Scanned::NewObjectAtLineStart;
        }
        self.line_start = b == b'\n';
        match b {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.member == Member::Key {
                    self.member = Member::InKey {
                        prefix: [0; KEY_PREFIX],
                        len: 0,
                    };
                } else {
                    self.capture(b);
                }
            }
            b'{' | b'[' => {
                self.capture(b);
                self.depth += 1;
                if self.depth > max_depth {
                    return Scanned::TooDeep(max_depth);
                }
                self.kinds.push(b);
            }
            b'}' | b']' => {
                if !self.kinds.pop(b) {
                    return Scanned::Mismatched(b);
                }
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    self.end_capture();
                    return Scanned::Complete;
                }
                self.capture(b);
            }
            b':' if self.depth == 1 => {
                if let Member::AfterKey { is_id } = self.member {
                    self.member = Member::Value;
                    self.capturing = is_id;
                }
            }
            b',' if self.depth == 1 => {
                self.end_capture();
                self.member = Member::Key;
            }
            _ => self.capture(b),
        }
        Scanned::NeedMore
    }
}
