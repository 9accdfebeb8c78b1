//! Framing: finding each complete top-level JSON object in a byte stream.
//!
//! Two levels, as in httparse: [`find_frame`] scans one slice and says whether it holds a
//! complete object, and [`Framer`] buffers a stream in caller storage, with [`Framer::feed`],
//! a zero-copy [`Framer::read_buf`] / [`Framer::commit`] pair, and [`Framer::next_frame`].
//!
//! Frames are found by tracking nesting depth with string and escape awareness, never by line
//! ends alone: QEMU's `pretty=on` monitors spread one message over many lines, and `}` or a
//! newline may appear inside strings. Newlines still help in one place: a `{` at the very
//! start of a line inside an unfinished frame cannot occur in QEMU's output (nested lines are
//! indented), so it means the previous message was cut short, and the framer reports
//! [`FrameError::Truncated`] and starts over at that `{`.
//!
//! # Bad input and resynchronisation
//! - A byte between messages that does not start an object yields one error
//!   ([`FrameError::NotAnObject`] or [`FrameError::UnexpectedByte`]); the framer then skips to
//!   the next `{`.
//! - Nesting deeper than the limit, a closing bracket of the wrong kind (`{"a": [}`), or a
//!   raw control character inside a string, yields one error; the framer then skips to the
//!   end of the line and resumes at the next object.
//! - An object larger than the buffer is skimmed, not stored: its bytes are dropped as they
//!   arrive, its top-level `"id"` is picked out on the way, and when it ends the framer yields
//!   [`FrameError::TooLarge`] with that id so the command it answers is never left waiting.
//!
//! Memory use never grows: everything lives in the caller's buffer.
//!
//! # How the scan works
//! 64 bytes at a time (`framing/block.rs`): the block is classified into bitmasks of quotes,
//! brackets and "special" bytes (backslashes, control characters) with portable code that
//! LLVM vectorizes; escapes are odd-length backslash runs, carried across blocks; a prefix
//! XOR of the unescaped quotes gives the bytes inside strings; the brackets outside strings
//! are followed one by one to track depth and find where the object ends. A block where
//! something rare happens (a raw control character in a string, a backslash outside one, a
//! `{` or `[` right after a newline, the depth limit) is rescanned byte by byte, so errors,
//! offsets and resynchronisation are exactly those of the byte-at-a-time definition, which
//! the tests compare against. On the way, the scanner notes where the object's top-level
//! nested values begin and end ([`Frame::message`] uses that to classify without walking
//! them again).

use core::fmt;

use crate::json::MAX_SUPPORTED_DEPTH;

mod block;

/// Nesting depth allowed by default: far beyond anything QEMU sends, far below QEMU's own 1024.
pub const DEFAULT_MAX_DEPTH: u32 = 64;

/// Where the scan of one slice stands; see [`find_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Status {
    /// `bytes[start..end]` is a complete object (leading whitespace skipped).
    Complete {
        /// Offset of the opening `{`.
        start: usize,
        /// Offset just past the closing `}`.
        end: usize,
    },
    /// More bytes are needed.
    Partial,
}

/// Scans `bytes` for one complete top-level JSON object, after optional whitespace.
///
/// ```
/// use qmp_proto::{find_frame, Status};
/// let stream = b"\r\n{\"return\": {\"a\": \"}\"}, \"id\": 1}\r\n{\"ret";
/// assert_eq!(find_frame(stream), Ok(Status::Complete { start: 2, end: 33 }));
/// assert_eq!(find_frame(&stream[33..]), Ok(Status::Partial));
/// ```
pub fn find_frame(bytes: &[u8]) -> Result<Status, FrameError> {
    let start = bytes.iter().position(|b| !is_ws(*b)).unwrap_or(bytes.len());
    match bytes.get(start) {
        None => Ok(Status::Partial),
        Some(b'{') => {
            let mut scanner = Scanner::open(start);
            let mut pos = start + 1;
            match scanner.scan(bytes, &mut pos, DEFAULT_MAX_DEPTH) {
                Scanned::Complete => Ok(Status::Complete { start, end: pos }),
                Scanned::NeedMore => Ok(Status::Partial),
                stop => Err(stop.error(pos as u64, start as u64, (pos - start) as u64)),
            }
        }
        Some(&byte) => Err(top_level_error(start as u64, byte)),
    }
}

/// Why bytes could not be framed. Offsets count bytes from the start of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameError {
    /// A JSON value other than an object (array, string, number, literal) at the top level.
    NotAnObject {
        /// Stream offset of its first byte.
        offset: u64,
    },
    /// A byte that cannot start a JSON value at the top level.
    UnexpectedByte {
        /// Stream offset of the byte.
        offset: u64,
        /// The byte.
        byte: u8,
    },
    /// Nesting deeper than the framer's limit.
    TooDeep {
        /// Stream offset of the bracket that went too deep.
        offset: u64,
        /// The limit in force.
        limit: u32,
    },
    /// A closing bracket of the wrong kind: `]` for an object or `}` for an array.
    MismatchedBracket {
        /// Stream offset of the closing bracket.
        offset: u64,
        /// The closing bracket.
        byte: u8,
    },
    /// A raw control character (below 0x20) inside a string, which JSON forbids.
    ControlCharInString {
        /// Stream offset of the byte.
        offset: u64,
        /// The byte.
        byte: u8,
    },
    /// A complete object larger than the buffer; it was skimmed and dropped.
    TooLarge {
        /// Stream offset of its `{`.
        offset: u64,
        /// Its size in bytes.
        size: u64,
        /// Its top-level `"id"` member, when it had one that fit [`SkimmedId`].
        id: Option<SkimmedId>,
        /// Whether it was a reply: a top-level `return` or `error` member and no `event`
        /// (a session ties a reply without an id to the command it sent without one).
        reply: bool,
    },
    /// An object that never ended: the stream closed, or a new object started at the
    /// beginning of a line inside it.
    Truncated {
        /// Stream offset of its `{`.
        offset: u64,
        /// How many of its bytes arrived.
        len: u64,
    },
}

impl FrameError {
    /// Stream offset the error refers to.
    pub fn offset(&self) -> u64 {
        match *self {
            Self::NotAnObject { offset }
            | Self::UnexpectedByte { offset, .. }
            | Self::TooDeep { offset, .. }
            | Self::MismatchedBracket { offset, .. }
            | Self::ControlCharInString { offset, .. }
            | Self::TooLarge { offset, .. }
            | Self::Truncated { offset, .. } => offset,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAnObject { offset } => {
                write!(f, "top-level JSON value at byte {offset} is not an object")
            }
            Self::UnexpectedByte { offset, byte } => {
                write!(
                    f,
                    "unexpected byte 0x{byte:02x} between messages at byte {offset}"
                )
            }
            Self::TooDeep { offset, limit } => {
                write!(f, "nesting deeper than {limit} at byte {offset}")
            }
            Self::MismatchedBracket { offset, byte } => {
                let (found, open) = if *byte == b']' {
                    ("]", "{")
                } else {
                    ("}", "[")
                };
                write!(f, "`{found}` at byte {offset} closes a `{open}`")
            }
            Self::ControlCharInString { offset, byte } => {
                write!(
                    f,
                    "raw control character 0x{byte:02x} in a string at byte {offset}"
                )
            }
            Self::TooLarge {
                offset, size, id, ..
            } => {
                write!(
                    f,
                    "message of {size} bytes at byte {offset} is larger than the buffer"
                )?;
                match id {
                    Some(id) => write!(f, " (id {id})"),
                    None => Ok(()),
                }
            }
            Self::Truncated { offset, len } => {
                write!(f, "message at byte {offset} was cut off after {len} bytes")
            }
        }
    }
}

impl core::error::Error for FrameError {}

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
        crate::json::RawJson::new_unchecked(text).as_u64()
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

#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn top_level_error(offset: u64, byte: u8) -> FrameError {
    match byte {
        b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n' | b'i' => {
            FrameError::NotAnObject { offset }
        }
        _ => FrameError::UnexpectedByte { offset, byte },
    }
}

// Byte classes for the scanner, outside strings.
const OTHER: u8 = 0;
const QUOTE: u8 = 1;
const OPEN: u8 = 2;
const CLOSE: u8 = 3;
const NEWLINE: u8 = 4;

const fn class_table() -> [u8; 256] {
    let mut t = [OTHER; 256];
    t[b'"' as usize] = QUOTE;
    t[b'{' as usize] = OPEN;
    t[b'[' as usize] = OPEN;
    t[b'}' as usize] = CLOSE;
    t[b']' as usize] = CLOSE;
    t[b'\n' as usize] = NEWLINE;
    t
}

/// Bytes that end a run of plain string characters: `"`, `\` and control characters.
const fn string_stop_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
}

static CLASS: [u8; 256] = class_table();
static STRING_STOP: [bool; 256] = string_stop_table();

/// What one scanning step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scanned {
    /// The object closed; `pos` is just past its `}`.
    Complete,
    /// Every byte was consumed and the object is still open.
    NeedMore,
    /// Nesting went past the limit at `pos - 1`.
    TooDeep(u32),
    /// A control character inside a string at `pos`.
    ControlChar(u8),
    /// A closing bracket of the wrong kind at `pos`.
    Mismatched(u8),
    /// A `{` at the start of a line inside the object, at `pos`.
    NewObjectAtLineStart,
}

impl Scanned {
    /// Converts a stop into an error; `at` is the scanner's position, `frame` the object's
    /// offset and `len` its length so far.
    fn error(self, at: u64, frame: u64, len: u64) -> FrameError {
        match self {
            Self::TooDeep(limit) => FrameError::TooDeep {
                offset: at - 1,
                limit,
            },
            Self::ControlChar(byte) => FrameError::ControlCharInString { offset: at, byte },
            Self::Mismatched(byte) => FrameError::MismatchedBracket { offset: at, byte },
            _ => FrameError::Truncated { offset: frame, len },
        }
    }
}

/// How many top-level nested values a frame records (QMP messages have one or two).
const SPANS: usize = 4;

/// Where a frame's top-level nested values lie: the objects and arrays at depth 2, found by
/// the framer where the depth goes from 1 to 2 and back. Offsets count from the frame's `{`.
/// Message classification jumps over them instead of walking them again.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spans {
    /// `(start, end)`: the value is `frame[start..end]`.
    spans: [(u32, u32); SPANS],
    /// How many of `spans` are recorded.
    len: u8,
    /// Start of the value being scanned, at depth 2 or more.
    open: u32,
}

/// Slots past the recorded ones may hold leftovers; they do not count.
impl PartialEq for Spans {
    fn eq(&self, other: &Self) -> bool {
        (self.as_slice(), self.open) == (other.as_slice(), other.open)
    }
}

impl Eq for Spans {}

impl Spans {
    /// The recorded spans, in order.
    pub(crate) fn as_slice(&self) -> &[(u32, u32)] {
        &self.spans[..usize::from(self.len)]
    }

    /// A bracket at `at` (from the frame's `{`) took the depth to 2 (`up`) or back to 1.
    #[inline]
    fn note(&mut self, up: bool, at: usize) {
        let Ok(at) = u32::try_from(at) else {
            // Too far into the frame to record: the value is found by skipping instead.
            return;
        };
        if up {
            self.open = at;
        } else if let Some(slot) = self.spans.get_mut(usize::from(self.len)) {
            *slot = (self.open, at + 1);
            self.len += 1;
        }
    }
}

/// The structural scanner's state inside one object (or, for [`skip_nested`], one nested
/// value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scanner {
    depth: u32,
    /// The kinds of the open brackets, as a stack of bits (see [`Kinds`]).
    kinds: Kinds,
    in_string: bool,
    escaped: bool,
    line_start: bool,
    /// Buffer position of the object's `{`, which [`Spans`] count from.
    origin: usize,
    spans: Spans,
}

/// Below this many bytes, the scanner goes byte by byte.
const SHORT_TAIL: usize = 24;

/// What the block step decided.
enum Step {
    /// The whole block was consumed; the state now stands after it.
    Continue,
    /// The value closed at this bit of the block.
    Complete(u32),
    /// Something rare happens in the block (a control character or a backslash where they
    /// matter, a `{` or `[` right after a newline, a depth limit): scan it byte by byte. The
    /// state is left as it was at the block's start.
    Slow,
}

impl Scanner {
    /// State just after an object's opening `{`, which is at buffer position `origin`.
    fn open(origin: usize) -> Self {
        Self {
            depth: 1,
            kinds: Kinds::default(),
            in_string: false,
            escaped: false,
            line_start: false,
            origin,
            spans: Spans::default(),
        }
    }

    /// Scans `bytes[*pos..]` until the object closes, more bytes are needed, or an error.
    #[inline]
    fn scan(&mut self, bytes: &[u8], pos: &mut usize, max_depth: u32) -> Scanned {
        self.scan_blocks::<true>(bytes, pos, max_depth)
    }

    /// Replaces the low 64 bits of the kind stack: all of it at up to 64 levels, which is
    /// where the block walk works.
    #[inline(always)]
    fn set_low_kinds(&mut self, low: u64) {
        self.kinds.low = low;
    }

    /// The buffer moved its bytes `by` positions towards the start.
    fn shift(&mut self, by: usize) {
        self.origin -= by;
    }

    /// The scan, 64 bytes at a time: classify a block into bitmasks, work out which bytes are
    /// inside strings, and count depth; a block where anything unusual happens goes through
    /// [`Scanner::scan_bytes`] instead, so the outcome is exactly the byte loop's. With
    /// `LINES`, a `{` right after a newline stops the scan (see the module docs).
    #[inline]
    fn scan_blocks<const LINES: bool>(
        &mut self,
        bytes: &[u8],
        pos: &mut usize,
        max_depth: u32,
    ) -> Scanned {
        loop {
            let at = *pos;
            let Some(rest) = bytes.get(at..) else {
                return Scanned::NeedMore;
            };
            let n = rest.len().min(block::BLOCK);
            // `--cfg qmp_proto_small` keeps only the byte loop: slower, ~10 KB less code.
            if cfg!(qmp_proto_small) || n < SHORT_TAIL {
                // A few bytes (as from a serial line, or the end of a read): a whole block's
                // work is not worth it.
                return self.scan_bytes::<LINES>(bytes, pos, max_depth);
            }
            let mut padded = [b' '; block::BLOCK];
            let chunk = match rest.first_chunk::<{ block::BLOCK }>() {
                Some(chunk) => chunk,
                None => {
                    // The tail: pad with spaces, which belong to no class.
                    padded[..n].copy_from_slice(rest);
                    &padded
                }
            };
            let step = if n == block::BLOCK {
                self.step::<LINES, true>(chunk, 64, max_depth, at)
            } else {
                self.step::<LINES, false>(chunk, n as u32, max_depth, at)
            };
            match step {
                Step::Continue => *pos = at + n,
                Step::Complete(k) => {
                    *pos = at + k as usize + 1;
                    self.depth = 0;
                    return Scanned::Complete;
                }
                Step::Slow => match self.scan_bytes::<LINES>(&bytes[..at + n], pos, max_depth) {
                    Scanned::NeedMore => {}
                    stop => return stop,
                },
            }
        }
    }

    /// One block, of which the first `n` bytes (1 to 64; 64 when `FULL`) are valid.
    #[inline(always)]
    fn step<const LINES: bool, const FULL: bool>(
        &mut self,
        chunk: &[u8; block::BLOCK],
        n: u32,
        max_depth: u32,
        at: usize,
    ) -> Step {
        let n = if FULL { 64 } else { n };
        let m = block::classify(chunk);
        // Spans recorded by a walk that is then redone are dropped again.
        let recorded = (self.spans.len, self.spans.open);
        let from = at - self.origin;
        let valid = u64::MAX >> (64 - n);
        let last = n - 1;
        let carried = 0u64.wrapping_sub(u64::from(self.in_string));
        if !self.escaped {
            // Without backslashes or control characters, every quote is a real one and nothing
            // is rare. Most blocks have none at all; in a stream of one-line messages the
            // block where a message ends has its `\r\n` after the end, so the end is found
            // here too, and checked to come before any such byte.
            let in_string = block::prefix_xor(m.quote & valid) ^ carried;
            let mut exact = valid;
            if LINES && self.line_start && !in_string & m.bracket & 1 != 0 && opening(chunk, 1) != 0
            {
                // A `{` or `[` right after a newline (from the previous block).
                exact = 0;
            }
            match self.walk::<LINES>(chunk, m.bracket & !in_string & exact, max_depth, from) {
                Walk::Depth(depth, kinds) if exact == valid && !m.special => {
                    self.depth = depth;
                    self.set_low_kinds(kinds);
                    self.in_string = (in_string >> last) & 1 != 0;
                    self.line_start = false;
                    return Step::Continue;
                }
                Walk::Complete(k) if !m.special || !block::special_in(&chunk[..=k as usize]) => {
                    return Step::Complete(k);
                }
                _ => (self.spans.len, self.spans.open) = recorded,
            }
        }
        // Backslashes or control characters: work out escapes and newlines exactly.
        let (backslash, control) = block::backslashes_and_controls(chunk);
        let (escaped_bytes, escaped) = block::escapes(backslash & valid, self.escaped, n);
        let in_string = block::prefix_xor(m.quote & !escaped_bytes & valid) ^ carried;
        let outside = !in_string;
        // A raw control character inside a string (escaped or not), or a backslash outside
        // one.
        let mut rare = (control & in_string) | (backslash & outside);
        let mut newline_at_end = false;
        if LINES {
            let newlines = if control == 0 {
                0
            } else {
                block::newline_mask(chunk) & outside
            };
            let after_newline = (newlines << 1) | u64::from(self.line_start);
            rare |= opening(chunk, m.bracket & outside & after_newline);
            newline_at_end = (newlines >> last) & 1 != 0;
        }
        let rare = rare & valid;
        // Everything before the first rare byte is exact; depth changes there still count.
        let exact = below(rare.trailing_zeros()) & valid;
        match self.walk::<LINES>(chunk, m.bracket & outside & exact, max_depth, from) {
            Walk::Depth(depth, kinds) if rare == 0 => {
                self.depth = depth;
                self.set_low_kinds(kinds);
                self.in_string = (in_string >> last) & 1 != 0;
                self.escaped = escaped;
                self.line_start = newline_at_end;
                Step::Continue
            }
            Walk::Complete(k) => Step::Complete(k),
            Walk::Depth(..) | Walk::Rare => {
                (self.spans.len, self.spans.open) = recorded;
                Step::Slow
            }
        }
    }

    /// Follows the depth through the brackets at the set bits of `brackets` (the block
    /// starts `from` bytes after the object's `{`), recording spans with `LINES`. The
    /// branches taken inside are rare, so they predict well whatever the order of the
    /// brackets.
    #[inline(always)]
    fn walk<const LINES: bool>(
        &mut self,
        chunk: &[u8; block::BLOCK],
        mut brackets: u64,
        max_depth: u32,
        from: usize,
    ) -> Walk {
        let mut depth = self.depth;
        // Up to 64 levels, the whole kind stack is in its low 64 bits; deeper ones are left
        // to the byte loop.
        let mut kinds = self.kinds.low;
        let limit = max_depth.min(u64::BITS);
        while brackets != 0 {
            let k = brackets.trailing_zeros();
            let b = chunk[k as usize];
            // Opening brackets have bit 1 set, square ones have bit 5 clear.
            let up = u32::from((b >> 1) & 1);
            let square = u64::from(!b >> 5 & 1);
            // The level the bracket opens or closes: the new depth's for `{` and `[`, the old
            // one's for `}` and `]` (counting from 0).
            let level = depth - 1 + up;
            // Too deep, or a closing bracket of the other kind: one rare branch for both.
            if level >= limit || ((kinds ^ square) & u64::from(up ^ 1) & 1) != 0 {
                return Walk::Rare;
            }
            kinds = if up == 1 {
                (kinds << 1) | square
            } else {
                kinds >> 1
            };
            depth = depth + 2 * up - 1;
            if depth == 0 {
                return Walk::Complete(k);
            }
            if LINES && depth == 1 + up {
                // Into a top-level nested value (depth 2) or out of one (depth 1).
                self.spans.note(up == 1, from + k as usize);
            }
            brackets &= brackets - 1;
        }
        Walk::Depth(depth, kinds)
    }

    /// The byte-at-a-time scan, from `*pos` to the end of `bytes`.
    fn scan_bytes<const LINES: bool>(
        &mut self,
        bytes: &[u8],
        pos: &mut usize,
        max_depth: u32,
    ) -> Scanned {
        let mut i = *pos;
        let len = bytes.len();
        let result = loop {
            if self.in_string {
                if self.escaped {
                    if i == len {
                        break Scanned::NeedMore;
                    }
                    // JSON allows no raw control character after a backslash either.
                    if bytes[i] < 0x20 {
                        break Scanned::ControlChar(bytes[i]);
                    }
                    self.escaped = false;
                    i += 1;
                }
                while i < len && !STRING_STOP[usize::from(bytes[i])] {
                    i += 1;
                }
                let Some(&b) = bytes.get(i) else {
                    break Scanned::NeedMore;
                };
                match b {
                    b'"' => self.in_string = false,
                    b'\\' => self.escaped = true,
                    _ => break Scanned::ControlChar(b),
                }
                i += 1;
            } else {
                let Some(&b) = bytes.get(i) else {
                    break Scanned::NeedMore;
                };
                match CLASS[usize::from(b)] {
                    OTHER => {}
                    QUOTE => self.in_string = true,
                    OPEN => {
                        if LINES && self.line_start && b == b'{' {
                            break Scanned::NewObjectAtLineStart;
                        }
                        self.depth += 1;
                        if self.depth > max_depth {
                            i += 1;
                            break Scanned::TooDeep(max_depth);
                        }
                        self.kinds.push(b);
                        if LINES && self.depth == 2 {
                            self.spans.note(true, i - self.origin);
                        }
                    }
                    CLOSE => {
                        if !self.kinds.pop(b) {
                            break Scanned::Mismatched(b);
                        }
                        self.depth -= 1;
                        if self.depth == 0 {
                            i += 1;
                            break Scanned::Complete;
                        }
                        if LINES && self.depth == 1 {
                            self.spans.note(false, i - self.origin);
                        }
                    }
                    _ => {
                        self.line_start = LINES;
                        i += 1;
                        continue;
                    }
                }
                self.line_start = false;
                i += 1;
            }
        };
        *pos = i;
        result
    }
}

/// What following the depth through a block's brackets found.
enum Walk {
    /// The depth and the kind stack (up to 64 levels) after them.
    Depth(u32, u64),
    /// The depth reached 0 at this bit.
    Complete(u32),
    /// Something for the byte loop to report or handle: the depth limit, level 64 or
    /// deeper, or a closing bracket of the wrong kind.
    Rare,
}

/// The kinds of the open brackets, a stack of bits: bit 0 is the innermost open bracket, bit
/// 1 the one around it, and so on (the object's own `{` at bit `depth - 1`); a bit is set for
/// `[` and clear for `{`, and the bits from `depth` up are clear. An opening bracket shifts
/// the stack up and sets bit 0, a closing one must match bit 0 and shifts it down: constant
/// shifts, cheap in the block walk. Enough for [`MAX_SUPPORTED_DEPTH`] levels, in two words
/// (a `u128` would double the alignment, and the size, of the framer's state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Kinds {
    /// Bits 0 to 63: the innermost 64 levels, all of them up to 64 levels deep.
    low: u64,
    /// Bits 64 to 127.
    high: u64,
}

const _: () = assert!(MAX_SUPPORTED_DEPTH <= 2 * u64::BITS);

impl Kinds {
    /// An opening bracket `b`.
    #[inline(always)]
    fn push(&mut self, b: u8) {
        self.high = (self.high << 1) | (self.low >> 63);
        self.low = (self.low << 1) | kind(b);
    }

    /// A closing bracket `b`: returns whether it matches the innermost open one (and then
    /// pops it).
    #[inline(always)]
    fn pop(&mut self, b: u8) -> bool {
        if self.low & 1 != kind(b) {
            return false;
        }
        self.low = (self.low >> 1) | (self.high << 63);
        self.high >>= 1;
        true
    }
}

/// The kind bit of a bracket: 1 for `[` and `]`, 0 for `{` and `}`.
#[inline(always)]
fn kind(b: u8) -> u64 {
    u64::from(!b >> 5 & 1)
}

/// The bits below bit `k` (all 64 when `k` is 64).
#[inline(always)]
fn below(k: u32) -> u64 {
    u64::MAX.checked_shl(k).map_or(u64::MAX, |high| !high)
}

/// The bits of `candidates` (bracket positions in `chunk`) that are opening brackets.
#[inline(always)]
fn opening(chunk: &[u8; block::BLOCK], mut candidates: u64) -> u64 {
    let mut opening = 0;
    while candidates != 0 {
        let k = candidates.trailing_zeros();
        opening |= u64::from((chunk[k as usize] >> 1) & 1) << k;
        candidates &= candidates - 1;
    }
    opening
}

/// Skips the nested value (object or array) whose opening bracket is at `bytes[start]`,
/// counting depth with string and escape awareness as the framer does, without checking the
/// grammar inside. Returns the offset just past its closing bracket, or the offset of the
/// first byte that cannot be skipped: a raw control character in a string, an opening
/// bracket nested deeper than `max_depth` (counting the value itself as 1), or the end of
/// `bytes` when the value never closes.
pub(crate) fn skip_nested(bytes: &[u8], start: usize, max_depth: u32) -> Result<usize, usize> {
    let mut scanner = Scanner::open(start);
    scanner.kinds.low = bytes.get(start).map_or(0, |&b| kind(b));
    let mut pos = start + 1;
    match scanner.scan_blocks::<false>(bytes, &mut pos, max_depth) {
        Scanned::Complete => Ok(pos),
        Scanned::TooDeep(_) => Err(pos - 1),
        _ => Err(pos),
    }
}

/// The top-level `id` of a complete frame and whether it reads as a reply (see
/// [`FrameError::TooLarge`]), read byte by byte as the skimmer of oversized messages does:
/// for a frame [`crate::find_id`] cannot read, such as one with invalid UTF-8 before its id.
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
struct Skimmer {
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
    fn new(offset: u64) -> Self {
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

    /// The id, once the object has ended.
    fn id(&self) -> Option<SkimmedId> {
        (self.id_state == IdState::Captured && self.id.len > 0).then_some(self.id)
    }

    /// Whether the object was a reply, once it has ended.
    fn is_reply(&self) -> bool {
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
    fn step(&mut self, b: u8, max_depth: u32) -> Scanned {
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

/// What the framer is doing with the bytes at its scan position.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Between objects: skipping whitespace.
    Between,
    /// Inside an object that starts at `start`.
    InFrame(Scanner),
    /// After an error inside an object: skipping to the end of the line.
    SkipLine,
    /// After a stray byte between objects: skipping to the next `{`.
    SeekObject,
    /// Inside an object too large for the buffer: skimming and dropping it.
    Oversized(Skimmer),
}

/// One complete top-level JSON object, borrowed from the framer's buffer.
///
/// Besides the bytes, a frame carries what the framer learned while scanning them: where its
/// top-level nested values lie, so that [`Frame::message`] classifies it without walking
/// them again.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    bytes: &'a [u8],
    offset: u64,
    spans: Spans,
}

impl<'a> Frame<'a> {
    /// The object's bytes, from `{` to `}`.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Stream offset of the object's `{`.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where the framer saw the top-level nested values.
    #[cfg(test)]
    pub(crate) fn spans(&self) -> &Spans {
        &self.spans
    }

    /// Classifies the frame: [`Message::parse`](crate::Message::parse) of its bytes, faster,
    /// since the framer already knows where the top-level nested values (`return`, `data`,
    /// …) end.
    pub fn message(&self) -> Result<crate::Message<'a>, crate::MessageError> {
        crate::message::parse_with_spans(self.bytes, &self.spans)
    }
}

impl fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("offset", &self.offset)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A buffered framer over caller storage: bytes in, complete objects out.
///
/// `B` is any byte storage: an array (`[u8; 4096]`), a borrowed slice, or (with std) a
/// `Vec<u8>`. The buffer never grows by itself; a message larger than it is reported as
/// [`FrameError::TooLarge`]. An owner that can grow storage may do so through
/// [`Framer::buffer_mut`] when [`Framer::is_full`] says so.
///
/// Call order: put bytes in with [`Framer::feed`] (or [`Framer::read_buf`] then
/// [`Framer::commit`]), then call [`Framer::next_frame`] until it returns `None`, then put in
/// more bytes. After `next_frame` returns `None`, `read_buf` is never empty.
///
/// ```
/// use qmp_proto::Framer;
/// let mut framer = Framer::new([0u8; 256]);
/// let stream = b"{\"return\": {}, \"id\": 1}\r\n{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n";
/// let mut frames = 0;
/// for chunk in stream.chunks(7) {
///     assert_eq!(framer.feed(chunk), chunk.len());
///     while let Some(frame) = framer.next_frame() {
///         assert_eq!(frame.unwrap().as_bytes()[0], b'{');
///         frames += 1;
///     }
/// }
/// assert_eq!(frames, 2);
/// ```
#[derive(Debug, Clone)]
pub struct Framer<B> {
    buf: B,
    /// Start of the bytes still needed (the current object's `{` when inside one).
    start: usize,
    /// Next byte to scan.
    scan: usize,
    /// End of the valid bytes.
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    mode: Mode,
    max_depth: u32,
    /// The range and spans of the last frame returned, for [`Framer::frame_at`].
    last: ((usize, usize), Spans),
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Framer<B> {
    /// A framer over `buf` with the default depth limit.
    pub fn new(buf: B) -> Self {
        Self {
            buf,
            start: 0,
            scan: 0,
            end: 0,
            base: 0,
            mode: Mode::Between,
            max_depth: DEFAULT_MAX_DEPTH,
            last: ((0, 0), Spans::default()),
        }
    }

    /// Sets the nesting limit (at least 1, at most [`MAX_SUPPORTED_DEPTH`]).
    pub fn with_max_depth(mut self, max_depth: u32) -> Self {
        self.max_depth = max_depth.clamp(1, MAX_SUPPORTED_DEPTH);
        self
    }

    /// The nesting limit in force.
    pub fn max_depth(&self) -> u32 {
        self.max_depth
    }

    /// The buffer's size in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().len()
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Whether an unfinished object fills the whole buffer (the next [`Framer::read_buf`]
    /// would start skimming it as oversized). An owner that can grow the buffer should do so
    /// now.
    pub fn is_full(&self) -> bool {
        self.start == 0 && self.end == self.capacity() && self.scan == self.end
    }

    /// Whether the framer is inside an object (so end of stream now would truncate it).
    pub fn in_frame(&self) -> bool {
        matches!(self.mode, Mode::InFrame(_) | Mode::Oversized(_))
    }

    /// Total bytes taken in since the start of the stream.
    pub fn stream_position(&self) -> u64 {
        self.base + self.end as u64
    }

    /// The storage, e.g. to grow a `Vec<u8>`. Shrinking it below the bytes it holds, or
    /// replacing their contents, corrupts the stream.
    pub fn buffer_mut(&mut self) -> &mut B {
        self.forget_last();
        &mut self.buf
    }

    /// Gives back the storage.
    pub fn into_inner(self) -> B {
        self.buf
    }

    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        let (start, end) = (self.start, self.end);
        self.buf.as_mut().copy_within(start..end, 0);
        self.base += start as u64;
        self.end -= start;
        self.scan -= start;
        self.start = 0;
        if let Mode::InFrame(scanner) = &mut self.mode {
            scanner.shift(start);
        }
        self.forget_last();
    }

    /// The whole buffer (bytes before and after the buffered ones included).
    pub(crate) fn buffer(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// Where the last frame returned lies in the buffer (until the next read).
    pub(crate) fn last_range(&self) -> (usize, usize) {
        self.last.0
    }

    /// Frame ranges handed out so far no longer hold (see [`Framer::frame_at`]).
    fn forget_last(&mut self) {
        self.last = ((0, 0), Spans::default());
    }

    /// Free room to read bytes straight into; follow with [`Framer::commit`].
    ///
    /// Empty only while complete frames are waiting for [`Framer::next_frame`]. When an
    /// unfinished object fills the buffer, this switches to skimming it as oversized and
    /// returns the whole buffer.
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.compact();
        if self.end == self.capacity()
            && self.scan == self.end
            && let Mode::InFrame(_) = self.mode
        {
            self.start_skimming();
        }
        let end = self.end;
        &mut self.buf.as_mut()[end..]
    }

    /// Marks `n` bytes of [`Framer::read_buf`] as received.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.capacity());
    }

    /// Copies in as many of `bytes` as fit and returns how many; the rest must be fed again
    /// after [`Framer::next_frame`] has returned `None`.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let room = self.read_buf();
        let n = room.len().min(bytes.len());
        room[..n].copy_from_slice(&bytes[..n]);
        self.commit(n);
        n
    }

    /// Ends the stream: an unfinished object is reported as [`FrameError::Truncated`], and
    /// the framer is left empty, ready for a new stream.
    pub fn finish(&mut self) -> Option<FrameError> {
        let error = match self.mode {
            Mode::InFrame(_) => Some(FrameError::Truncated {
                offset: self.base + self.start as u64,
                len: (self.end - self.start) as u64,
            }),
            Mode::Oversized(skim) => Some(FrameError::Truncated {
                offset: skim.offset,
                len: skim.size + (self.end - self.scan) as u64,
            }),
            _ => None,
        };
        self.base += self.end as u64;
        self.start = 0;
        self.scan = 0;
        self.end = 0;
        self.mode = Mode::Between;
        self.forget_last();
        error
    }

    fn start_skimming(&mut self) {
        let mut skim = Skimmer::new(self.base + self.start as u64);
        let max_depth = self.max_depth;
        for &b in &self.buf.as_ref()[self.start..self.end] {
            // The fast scanner already accepted these bytes, so no stop can happen here.
            let _ = skim.step(b, max_depth);
        }
        self.base += self.end as u64;
        self.start = 0;
        self.scan = 0;
        self.end = 0;
        self.mode = Mode::Oversized(skim);
        self.forget_last();
    }

    /// The next complete object, or an error for bytes that could not be framed, or `None`
    /// when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, FrameError>> {
        match self.next_frame_range()? {
            Ok(range) => Some(Ok(self.frame_at(range))),
            Err(e) => Some(Err(e)),
        }
    }

    /// Like [`Framer::next_frame`], but returns where the frame lies in the buffer (see
    /// [`Framer::frame_at`]), so the caller keeps no borrow of the framer.
    pub fn next_frame_range(&mut self) -> Option<Result<(usize, usize), FrameError>> {
        loop {
            let bytes = &self.buf.as_ref()[..self.end];
            match &mut self.mode {
                Mode::Between => {
                    while self.scan < bytes.len() && is_ws(bytes[self.scan]) {
                        self.scan += 1;
                    }
                    self.start = self.scan;
                    let &byte = bytes.get(self.scan)?;
                    self.scan += 1;
                    if byte == b'{' {
                        self.mode = Mode::InFrame(Scanner::open(self.start));
                    } else {
                        self.start = self.scan;
                        self.mode = Mode::SeekObject;
                        return Some(Err(top_level_error(self.base + self.scan as u64 - 1, byte)));
                    }
                }
                Mode::SeekObject => {
                    match bytes[self.scan..].iter().position(|&b| b == b'{') {
                        Some(at) => {
                            self.scan += at;
                            self.mode = Mode::Between;
                        }
                        None => self.scan = bytes.len(),
                    }
                    self.start = self.scan;
                    if self.scan == bytes.len() {
                        return None;
                    }
                }
                Mode::SkipLine => {
                    match bytes[self.scan..].iter().position(|&b| b == b'\n') {
                        Some(at) => {
                            self.scan += at + 1;
                            self.mode = Mode::Between;
                        }
                        None => self.scan = bytes.len(),
                    }
                    self.start = self.scan;
                    if self.scan == bytes.len() {
                        return None;
                    }
                }
                Mode::InFrame(scanner) => {
                    let stop = scanner.scan(bytes, &mut self.scan, self.max_depth);
                    let frame_start = self.start;
                    let frame = self.base + frame_start as u64;
                    let at = self.base + self.scan as u64;
                    match stop {
                        Scanned::Complete => {
                            let range = (frame_start, self.scan);
                            self.last = (range, scanner.spans);
                            self.mode = Mode::Between;
                            self.start = self.scan;
                            return Some(Ok(range));
                        }
                        Scanned::NeedMore => return None,
                        Scanned::NewObjectAtLineStart => {
                            self.mode = Mode::Between;
                        }
                        Scanned::TooDeep(_) | Scanned::ControlChar(_) | Scanned::Mismatched(_) => {
                            self.mode = Mode::SkipLine;
                        }
                    }
                    self.start = self.scan;
                    return Some(Err(stop.error(at, frame, (self.scan - frame_start) as u64)));
                }
                Mode::Oversized(skim) => {
                    let max_depth = self.max_depth;
                    while self.scan < bytes.len() {
                        if skim.in_string
                            && !skim.escaped
                            && !skim.capturing
                            && !matches!(skim.member, Member::InKey { .. })
                        {
                            // Plain string bytes change nothing but the size: skip a run of
                            // them at once (a huge reply is mostly one long string).
                            let rest = &bytes[self.scan..];
                            let run = rest
                                .iter()
                                .position(|&b| STRING_STOP[usize::from(b)])
                                .unwrap_or(rest.len());
                            if run > 0 {
                                skim.size += run as u64;
                                self.scan += run;
                                continue;
                            }
                        }
                        let b = bytes[self.scan];
                        let stop = skim.step(b, max_depth);
                        if stop == Scanned::NeedMore {
                            self.scan += 1;
                            continue;
                        }
                        let skim = *skim;
                        let at = self.base + self.scan as u64;
                        let error = match stop {
                            Scanned::Complete => {
                                self.scan += 1;
                                self.mode = Mode::Between;
                                FrameError::TooLarge {
                                    offset: skim.offset,
                                    size: skim.size,
                                    id: skim.id(),
                                    reply: skim.is_reply(),
                                }
                            }
                            Scanned::NewObjectAtLineStart => {
                                self.mode = Mode::Between;
                                FrameError::Truncated {
                                    offset: skim.offset,
                                    len: skim.size - 1,
                                }
                            }
                            Scanned::TooDeep(_) => {
                                self.scan += 1;
                                self.mode = Mode::SkipLine;
                                stop.error(at + 1, skim.offset, skim.size)
                            }
                            _ => {
                                // A control character (resume at it, it may be the newline)
                                // or a mismatched bracket.
                                self.mode = Mode::SkipLine;
                                stop.error(at, skim.offset, skim.size)
                            }
                        };
                        self.start = self.scan;
                        return Some(Err(error));
                    }
                    // Everything buffered was skimmed: drop it.
                    self.start = self.scan;
                    return None;
                }
            }
        }
    }

    /// The bytes of a frame returned by [`Framer::next_frame_range`], until the next call that
    /// takes `&mut self`.
    pub fn frame_at(&self, range: (usize, usize)) -> Frame<'_> {
        let (start, end) = range;
        let bytes = self.buf.as_ref().get(start..end).unwrap_or(&[]);
        let (last, spans) = self.last;
        Frame {
            bytes,
            offset: self.base + start as u64,
            spans: if last == range {
                spans
            } else {
                Spans::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in chunks of `chunk` bytes and collects frames (as offsets) and errors.
    fn run<const N: usize>(
        stream: &[u8],
        chunk: usize,
    ) -> heapless::Vec<Result<(u64, usize), FrameError>, 64> {
        let mut framer = Framer::new([0u8; N]);
        let mut out = heapless::Vec::new();
        for mut piece in stream.chunks(chunk.max(1)) {
            while !piece.is_empty() {
                let n = framer.feed(piece);
                piece = &piece[n..];
                while let Some(item) = framer.next_frame() {
                    out.push(item.map(|f| (f.offset(), f.as_bytes().len())))
                        .unwrap();
                }
            }
        }
        if let Some(e) = framer.finish() {
            out.push(Err(e)).unwrap();
        }
        out
    }

    #[test]
    fn frames_by_balance_not_by_newline() {
        let stream =
            b"{\"return\": {\"s\": \"}\\n\\\"{\"}}\r\n{\r\n    \"return\": {\r\n    }\r\n}\r\n";
        for chunk in 1..stream.len() {
            let got = run::<64>(stream, chunk);
            assert_eq!(got.len(), 2, "chunk {chunk}");
            assert_eq!(got[0], Ok((0, 27)));
            assert_eq!(got[1], Ok((29, 28)));
        }
    }

    #[test]
    fn strings_with_braces_and_escaped_quotes_do_not_confuse_depth() {
        let stream = br#"{"a": "\\", "b": "\"}{", "c": ["]", {"d": "\\\""}]}"#;
        assert_eq!(
            find_frame(stream),
            Ok(Status::Complete {
                start: 0,
                end: stream.len()
            })
        );
    }

    #[test]
    fn non_objects_and_stray_bytes_are_errors_then_resync() {
        let stream = b"[1, 2]\r\n{\"a\": 1}\r\n}}}x{\"b\": 2}\r\n";
        let got = run::<64>(stream, 3);
        assert_eq!(got[0], Err(FrameError::NotAnObject { offset: 0 }));
        // The `[` error skips to the next `{`; one error per run of garbage.
        assert_eq!(got[1], Ok((8, 8)));
        assert_eq!(
            got[2],
            Err(FrameError::UnexpectedByte {
                offset: 18,
                byte: b'}'
            })
        );
        assert_eq!(got[3], Ok((22, 8)));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn too_deep_is_reported_and_the_next_line_survives() {
        let mut stream = heapless::Vec::<u8, 256>::new();
        stream.push(b'{').unwrap();
        for _ in 0..100 {
            stream.extend_from_slice(b"[").unwrap();
        }
        stream.extend_from_slice(b"\r\n{\"ok\": 1}\r\n").unwrap();
        let got = run::<256>(&stream, 5);
        assert_eq!(
            got[0],
            Err(FrameError::TooDeep {
                offset: DEFAULT_MAX_DEPTH as u64,
                limit: DEFAULT_MAX_DEPTH
            })
        );
        assert_eq!(got[1], Ok((103, 9)));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn control_character_in_string_is_reported_and_resyncs() {
        let stream = b"{\"return\": \"cut\r\n{\"id\": 2, \"return\": {}}\r\n";
        let got = run::<64>(stream, 4);
        assert_eq!(
            got[0],
            Err(FrameError::ControlCharInString {
                offset: 15,
                byte: b'\r'
            })
        );
        assert_eq!(got[1], Ok((17, 23)));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn object_at_line_start_inside_a_frame_means_truncation() {
        let stream = b"{\"return\": {\"a\": 1\r\n{\"id\": 2, \"return\": {}}\r\n";
        for chunk in 1..8 {
            let got = run::<64>(stream, chunk);
            assert_eq!(got[0], Err(FrameError::Truncated { offset: 0, len: 20 }));
            assert_eq!(got[1], Ok((20, 23)));
            assert_eq!(got.len(), 2);
        }
    }

    #[test]
    fn end_of_stream_inside_a_frame_is_truncation() {
        let got = run::<64>(b"{\"return\": 1}{\"ret", 2);
        assert_eq!(got[0], Ok((0, 13)));
        assert_eq!(got[1], Err(FrameError::Truncated { offset: 13, len: 5 }));
    }

    #[test]
    fn oversized_frame_is_skimmed_for_its_id_wherever_it_is() {
        // QEMU puts the id last in returns and first in errors.
        let big_return = b"{\"return\": [\"aaaaaaaaaaaaaaaaaaaa\", {\"id\": 99}, \"bbbbbbbbbbbbbbbbbbbbbbbbb\"], \"id\": 7}\r\n{\"return\": {}, \"id\": 8}\r\n";
        for chunk in [1, 3, 16, 100] {
            let got = run::<32>(big_return, chunk);
            match got[0] {
                Err(FrameError::TooLarge {
                    offset: 0,
                    size,
                    id,
                    reply: true,
                }) => {
                    assert_eq!(size, 86);
                    assert_eq!(id.unwrap().as_u64(), Some(7), "chunk {chunk}");
                }
                ref other => panic!("chunk {chunk}: {other:?}"),
            }
            assert_eq!(got[1], Ok((88, 23)));
            assert_eq!(got.len(), 2);
        }
        let big_error = b"{\"id\": \"str-id\", \"error\": {\"class\": \"GenericError\", \"desc\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}";
        match run::<16>(big_error, 5)[0] {
            Err(FrameError::TooLarge {
                id: Some(id),
                reply: true,
                ..
            }) => {
                assert_eq!(id.as_bytes(), b"\"str-id\"")
            }
            ref other => panic!("{other:?}"),
        }
        let no_id =
            b"{\"event\": \"X\", \"data\": {\"id\": 5, \"pad\": \"yyyyyyyyyyyyyyyyyyyyyyyy\"}}";
        match run::<16>(no_id, 5)[0] {
            Err(FrameError::TooLarge {
                id: None,
                reply: false,
                ..
            }) => {}
            ref other => panic!("{other:?}"),
        }
        // Which keys make a reply: `return` or `error` at the top level, and no `event`;
        // keys that only begin like those, or are escaped, do not count.
        for (text, reply) in [
            (&b"{\"return\": \"xxxxxxxxxxxxxxxxxxxxxxxx\"}"[..], true),
            (b"{\"error\": {\"class\": \"xxxxxxxxxxxxxxxxxxxxx\"}}", true),
            (b"{\"returns\": \"xxxxxxxxxxxxxxxxxxxxxxx\"}", false),
            (b"{\"retur\": \"xxxxxxxxxxxxxxxxxxxxxxxxx\"}", false),
            (
                b"{\"\\u0069d\": 1, \"x\": \"xxxxxxxxxxxxxxxxxxxxx\"}",
                false,
            ),
            (b"{\"data\": {\"return\": \"xxxxxxxxxxxxxxxxxxx\"}}", false),
            (
                b"{\"return\": 1, \"event\": \"xxxxxxxxxxxxxxxxxxx\"}",
                false,
            ),
        ] {
            match run::<16>(text, 3)[0] {
                Err(FrameError::TooLarge { reply: r, .. }) => {
                    assert_eq!(r, reply, "{}", std::string::String::from_utf8_lossy(text))
                }
                ref other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn oversized_frame_cut_off_by_a_new_line_object_is_truncated() {
        let stream = b"{\"return\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", \r\n{\"id\": 1, \"return\": {}}\r\n";
        let got = run::<24>(stream, 7);
        assert_eq!(got[0], Err(FrameError::Truncated { offset: 0, len: 49 }));
        assert_eq!(got[1], Ok((49, 23)));
    }

    #[test]
    fn read_buf_is_never_empty_after_frames_are_drained() {
        let mut framer = Framer::new([0u8; 8]);
        for _ in 0..100 {
            let room = framer.read_buf();
            assert!(!room.is_empty());
            room.fill(b' ');
            let n = room.len().min(3);
            framer.commit(n);
            while framer.next_frame().is_some() {}
        }
        assert_eq!(framer.stream_position(), 300);
    }
}

#[cfg(test)]
mod scanner_tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs a scanner over `bytes` fed in pieces ending at `cuts`, the way the framer does
    /// (each call sees everything up to the current end), with either scan.
    fn run(
        mut scanner: Scanner,
        bytes: &[u8],
        cuts: &[usize],
        max_depth: u32,
        fast: bool,
    ) -> (Scanned, usize, Scanner) {
        let mut pos = 0;
        let mut ends: std::vec::Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
        ends.sort_unstable();
        ends.push(bytes.len());
        let mut stop = Scanned::NeedMore;
        for end in ends {
            if pos > end {
                continue;
            }
            stop = if fast {
                scanner.scan_blocks::<true>(&bytes[..end], &mut pos, max_depth)
            } else {
                scanner.scan_bytes::<true>(&bytes[..end], &mut pos, max_depth)
            };
            if stop != Scanned::NeedMore {
                break;
            }
        }
        (stop, pos, scanner)
    }

    /// JSON-like bytes. `rare` 0 has no backslashes or control characters (blocks stay on
    /// the fast path), 1 adds line ends, 2 adds backslashes, control characters and any byte
    /// (many blocks go to the byte loop).
    fn json_like(rare: u32) -> impl Strategy<Value = std::vec::Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                40 => prop::sample::select(b"aaaaaaaa0123 :,".to_vec()),
                20 => Just(b'"'),
                6 => prop::sample::select(b"{}[]".to_vec()),
                rare.min(1) => prop::sample::select(b"\r\n".to_vec()),
                rare / 2 * 5 => prop::sample::select(b"\\\\\\\r\n\t\x01".to_vec()),
                rare / 2 * 5 => any::<u8>(),
            ],
            0..400,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

        #[test]
        fn block_scan_equals_byte_scan(
            bytes in (0u32..3).prop_flat_map(json_like),
            depth in 1u32..6,
            kinds: u8,
            in_string: bool,
            escaped: bool,
            line_start: bool,
            max_depth in 1u32..10,
            cuts in proptest::collection::vec(0usize..400, 0..4),
        ) {
            let scanner = Scanner {
                depth,
                // Any mix of `{` and `[` inside the frame's own `{`.
                kinds: Kinds {
                    low: u64::from(kinds) & ((1 << (depth - 1)) - 1),
                    high: 0,
                },
                in_string,
                escaped: escaped && in_string,
                line_start: line_start && !in_string,
                ..Scanner::open(0)
            };
            let max_depth = max_depth.max(depth);
            let slow = run(scanner, &bytes, &cuts, max_depth, false);
            let fast = run(scanner, &bytes, &cuts, max_depth, true);
            if slow.0 == Scanned::Complete {
                prop_assert_eq!((fast.0, fast.1, fast.2.spans), (slow.0, slow.1, slow.2.spans));
            } else {
                prop_assert_eq!(fast, slow);
            }
        }
    }

    /// Frames `stream` in `chunk`-byte pieces and checks every frame's spans and message
    /// against the bytes alone.
    fn check_spans(stream: &[u8], chunk: usize) -> usize {
        let mut framer = Framer::new([0u8; 512]);
        let mut frames = 0;
        for mut piece in stream.chunks(chunk.max(1)) {
            while !piece.is_empty() {
                let n = framer.feed(piece);
                piece = &piece[n..];
                while let Some(item) = framer.next_frame() {
                    let Ok(frame) = item else { continue };
                    frames += 1;
                    let bytes = frame.as_bytes();
                    for &(start, end) in frame.spans.as_slice() {
                        let (start, end) = (start as usize, end as usize);
                        assert!(matches!(bytes[start], b'{' | b'['), "{start}");
                        let skipped = skip_nested(bytes, start, MAX_SUPPORTED_DEPTH);
                        assert_eq!(skipped, Ok(end));
                    }
                    assert_eq!(frame.message(), crate::Message::parse(bytes));
                }
            }
        }
        frames
    }

    #[test]
    fn spans_locate_the_top_level_nested_values() {
        let stream = b"{\"return\": {\"a\": [1, {}]}, \"id\": [2]}\r\n\
            {\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"X\", \"data\": [\"]\"]}\r\n\
            {\"a\": {}, \"b\": [], \"c\": {}, \"d\": [], \"return\": {\"x\": 1}}\r\n";
        let mut framer = Framer::new([0u8; 256]);
        framer.feed(stream);
        let spans = |framer: &mut Framer<[u8; 256]>| {
            let frame = framer.next_frame().unwrap().unwrap();
            std::vec::Vec::from(frame.spans.as_slice())
        };
        assert_eq!(spans(&mut framer), [(11, 25), (33, 36)]);
        assert_eq!(spans(&mut framer), [(14, 47), (71, 76)]);
        // Only the first four are kept; the fifth is found by skipping.
        assert_eq!(spans(&mut framer), [(6, 8), (15, 17), (24, 26), (33, 35)]);
        for chunk in [1, 7, 64, 200] {
            assert_eq!(check_spans(stream, chunk), 3);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn framed_messages_classify_as_their_bytes_do(
            bytes in (0u32..3).prop_flat_map(json_like),
            chunk in 1usize..200,
        ) {
            let mut stream = std::vec::Vec::from(&b"{\"return\": "[..]);
            stream.extend_from_slice(&bytes);
            check_spans(&stream, chunk);
            check_spans(&bytes, chunk);
        }
    }

    #[test]
    fn long_strings_escapes_and_pretty_printing_scan_alike() {
        let mut stream = std::vec::Vec::new();
        stream.extend_from_slice(b"{\"return\": [");
        for i in 0..50 {
            stream.extend_from_slice(b"{\"name\": \"");
            stream.extend(core::iter::repeat_n(b'x', i * 3));
            stream.extend(core::iter::repeat_n(b'\\', (i % 4) * 2));
            stream.extend_from_slice(b"\\\"\"},\r\n    [\"\\\\\"]\r\n, ");
        }
        stream.extend_from_slice(b"{}], \"id\": 1}\r\n{");
        for split in (0..stream.len()).step_by(3) {
            let slow = run(Scanner::open(0), &stream[1..], &[split], 64, false);
            let fast = run(Scanner::open(0), &stream[1..], &[split], 64, true);
            assert_eq!(
                (fast.0, fast.1, fast.2.spans),
                (slow.0, slow.1, slow.2.spans),
                "split {split}"
            );
        }
    }
}
