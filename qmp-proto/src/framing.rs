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
//! - Nesting deeper than the limit, or a raw control character inside a string, yields one
//!   error; the framer then skips to the end of the line and resumes at the next object.
//! - An object larger than the buffer is skimmed, not stored: its bytes are dropped as they
//!   arrive, its top-level `"id"` is picked out on the way, and when it ends the framer yields
//!   [`FrameError::TooLarge`] with that id so the command it answers is never left waiting.
//!
//! Memory use never grows: everything lives in the caller's buffer.

use core::fmt;

use crate::json::MAX_SUPPORTED_DEPTH;

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
            let mut scanner = Scanner::open();
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
            Self::ControlCharInString { offset, byte } => {
                write!(
                    f,
                    "raw control character 0x{byte:02x} in a string at byte {offset}"
                )
            }
            Self::TooLarge { offset, size, id } => {
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
            _ => FrameError::Truncated { offset: frame, len },
        }
    }
}

/// The fast structural scanner's state inside one object.
#[derive(Debug, Clone, Copy)]
struct Scanner {
    depth: u32,
    in_string: bool,
    escaped: bool,
    line_start: bool,
}

impl Scanner {
    /// State just after an object's opening `{`.
    fn open() -> Self {
        Self {
            depth: 1,
            in_string: false,
            escaped: false,
            line_start: false,
        }
    }

    /// Scans `bytes[*pos..]` until the object closes, more bytes are needed, or an error.
    #[inline]
    fn scan(&mut self, bytes: &[u8], pos: &mut usize, max_depth: u32) -> Scanned {
        let mut i = *pos;
        let len = bytes.len();
        let result = loop {
            if self.in_string {
                if self.escaped {
                    if i == len {
                        break Scanned::NeedMore;
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
                        if self.line_start && b == b'{' {
                            break Scanned::NewObjectAtLineStart;
                        }
                        self.depth += 1;
                        if self.depth > max_depth {
                            i += 1;
                            break Scanned::TooDeep(max_depth);
                        }
                    }
                    CLOSE => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            i += 1;
                            break Scanned::Complete;
                        }
                    }
                    _ => {
                        self.line_start = true;
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

/// Where skimming of an oversized object stands in its top-level members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    /// Expecting a key (or the end).
    Key,
    /// Inside a key: how many bytes of `id` matched, and whether it still can be `id`.
    InKey { matched: u8, still_id: bool },
    /// After a key, before its `:`.
    AfterKey { is_id: bool },
    /// Inside a value.
    Value,
}

/// The slow scanner for an object too large for the buffer: drops bytes, keeps the `id`.
#[derive(Debug, Clone, Copy)]
struct Skimmer {
    depth: u32,
    in_string: bool,
    escaped: bool,
    line_start: bool,
    member: Member,
    capturing: bool,
    id: SkimmedId,
    id_state: IdState,
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

    /// Feeds one byte of the object (starting with its `{`).
    fn step(&mut self, b: u8, max_depth: u32) -> Scanned {
        self.size += 1;
        if self.in_string {
            self.capture(b);
            if self.escaped {
                self.escaped = false;
                if let Member::InKey { still_id, .. } = &mut self.member {
                    *still_id = false;
                }
            } else if b == b'"' {
                self.in_string = false;
                if let Member::InKey { matched, still_id } = self.member {
                    self.member = Member::AfterKey {
                        is_id: still_id && matched == 2,
                    };
                }
            } else if b == b'\\' {
                self.escaped = true;
            } else if b < 0x20 {
                return Scanned::ControlChar(b);
            } else if let Member::InKey { matched, still_id } = &mut self.member {
                if *still_id && b"id".get(usize::from(*matched)) == Some(&b) {
                    *matched += 1;
                } else {
                    *still_id = false;
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
                        matched: 0,
                        still_id: true,
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
            }
            b'}' | b']' => {
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
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    bytes: &'a [u8],
    offset: u64,
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
    }

    /// The next complete object, or an error for bytes that could not be framed, or `None`
    /// when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, FrameError>> {
        match self.next_frame_range()? {
            Ok((start, end)) => Some(Ok(Frame {
                bytes: &self.buf.as_ref()[start..end],
                offset: self.base + start as u64,
            })),
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
                        self.mode = Mode::InFrame(Scanner::open());
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
                            self.mode = Mode::Between;
                            self.start = self.scan;
                            return Some(Ok((frame_start, self.scan)));
                        }
                        Scanned::NeedMore => return None,
                        Scanned::NewObjectAtLineStart => {
                            self.mode = Mode::Between;
                        }
                        Scanned::TooDeep(_) | Scanned::ControlChar(_) => {
                            self.mode = Mode::SkipLine;
                        }
                    }
                    self.start = self.scan;
                    return Some(Err(stop.error(at, frame, (self.scan - frame_start) as u64)));
                }
                Mode::Oversized(skim) => {
                    let max_depth = self.max_depth;
                    while self.scan < bytes.len() {
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
                                // A control character: resume at it, it may be the newline.
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
        Frame {
            bytes,
            offset: self.base + start as u64,
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
            Err(FrameError::TooLarge { id: Some(id), .. }) => {
                assert_eq!(id.as_bytes(), b"\"str-id\"")
            }
            ref other => panic!("{other:?}"),
        }
        let no_id =
            b"{\"event\": \"X\", \"data\": {\"id\": 5, \"pad\": \"yyyyyyyyyyyyyyyyyyyyyyyy\"}}";
        match run::<16>(no_id, 5)[0] {
            Err(FrameError::TooLarge { id: None, .. }) => {}
            ref other => panic!("{other:?}"),
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
