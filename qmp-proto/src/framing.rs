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
//! The scanning itself is the `scan` module's, and the skimming of oversized objects the
//! `skim` module's; this module keeps the stream state between them.

use core::fmt;

use crate::buffer::Buffer;
use crate::scan::{MAX_SUPPORTED_DEPTH, Scanned, Scanner, Spans, is_ws};
use crate::skim::{Broken, SkimmedId, Skimmer};

/// Nesting depth allowed by default: far beyond anything QEMU sends, far below QEMU's own 1024.
pub const DEFAULT_MAX_DEPTH: u32 = 64;

/// Where the scan of one slice stands; see [`find_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FrameStatus {
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
/// use qmp_proto::{FrameStatus, find_frame};
/// let stream = b"\r\n{\"return\": {\"a\": \"}\"}, \"id\": 1}\r\n{\"ret";
/// assert_eq!(find_frame(stream), Ok(FrameStatus::Complete { start: 2, end: 33 }));
/// assert_eq!(find_frame(&stream[33..]), Ok(FrameStatus::Partial));
/// ```
pub fn find_frame(bytes: &[u8]) -> Result<FrameStatus, FrameError> {
    let start = bytes.iter().position(|b| !is_ws(*b)).unwrap_or(bytes.len());
    match bytes.get(start) {
        None => Ok(FrameStatus::Partial),
        Some(b'{') => {
            let mut scanner = Scanner::open(start);
            let mut pos = start + 1;
            match scanner.scan(bytes, &mut pos, DEFAULT_MAX_DEPTH) {
                Scanned::Complete => Ok(FrameStatus::Complete { start, end: pos }),
                Scanned::NeedMore => Ok(FrameStatus::Partial),
                stop => Err(stop_error(
                    stop,
                    pos as u64,
                    start as u64,
                    (pos - start) as u64,
                )),
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

fn top_level_error(offset: u64, byte: u8) -> FrameError {
    match byte {
        b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n' | b'i' => {
            FrameError::NotAnObject { offset }
        }
        _ => FrameError::UnexpectedByte { offset, byte },
    }
}

/// Converts a scanner stop into an error; `at` is the scanner's position, `frame` the
/// object's offset and `len` its length so far.
fn stop_error(stop: Scanned, at: u64, frame: u64, len: u64) -> FrameError {
    match stop {
        Scanned::TooDeep(limit) => FrameError::TooDeep {
            offset: at - 1,
            limit,
        },
        Scanned::ControlChar(byte) => FrameError::ControlCharInString { offset: at, byte },
        Scanned::Mismatched(byte) => FrameError::MismatchedBracket { offset: at, byte },
        _ => FrameError::Truncated { offset: frame, len },
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
    pub(crate) fn spans(&self) -> &Spans {
        &self.spans
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
/// [`FrameError::TooLarge`]. [`Driver`](crate::Driver) grows storage that can grow
/// ([`Buffer`](crate::Buffer)) when [`Framer::is_full`] says so.
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
    /// What the object behind the error just returned by [`Framer::next_frame_range`] had
    /// shown of itself, when the error broke off an object.
    broken: Option<Broken>,
}

impl<B: Buffer> Framer<B> {
    /// When an unfinished object fills the buffer ([`Framer::is_full`]), asks the storage to
    /// grow (to twice its size, or back from empty: see [`Buffer::release`]) before
    /// [`Framer::read_buf`] would give the object up as oversized; returns whether it grew.
    /// Growing keeps everything scanned so far: the scan resumes where it stopped.
    pub fn grow(&mut self) -> bool {
        if !self.is_full() {
            return false;
        }
        let len = self.capacity().saturating_mul(2).max(1);
        self.buffer_mut().grow_to(len)
    }
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
            broken: None,
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
    /// now ([`Framer::grow`]).
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

    /// The storage, read only (e.g. to check a `Vec`'s capacity).
    pub fn get_ref(&self) -> &B {
        &self.buf
    }

    /// The storage, to grow it ([`crate::Driver`] does, through [`crate::Buffer`]).
    /// Shrinking it below the bytes it holds, or replacing their contents, corrupts the
    /// stream: so it is not public.
    pub(crate) fn buffer_mut(&mut self) -> &mut B {
        self.forget_last();
        &mut self.buf
    }

    /// When no byte is held (nothing buffered, no object begun), moves the offsets back to
    /// the start of the buffer so that it may be emptied, and says so; `false` otherwise.
    pub(crate) fn rewind_if_idle(&mut self) -> bool {
        if self.start != self.end || self.scan != self.end || !matches!(self.mode, Mode::Between) {
            return false;
        }
        self.base += self.end as u64;
        (self.start, self.scan, self.end) = (0, 0, 0);
        self.forget_last();
        true
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
    #[must_use = "the bytes not taken must be fed again"]
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let room = self.read_buf();
        let n = room.len().min(bytes.len());
        room[..n].copy_from_slice(&bytes[..n]);
        self.commit(n);
        n
    }

    /// Ends the stream: an unfinished object is reported as [`FrameError::Truncated`], and
    /// the framer is left empty, ready for a new stream.
    #[must_use = "an unfinished object is reported only here"]
    pub fn finish(&mut self) -> Option<FrameError> {
        let error = match self.mode {
            Mode::InFrame(_) => Some(FrameError::Truncated {
                offset: self.base + self.start as u64,
                len: (self.end - self.start) as u64,
            }),
            Mode::Oversized(skim) => Some(FrameError::Truncated {
                offset: skim.offset(),
                len: skim.size() + (self.end - self.scan) as u64,
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
    #[must_use]
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, FrameError>> {
        match self.next_frame_range()? {
            Ok(range) => Some(Ok(self.frame_at(range))),
            Err(e) => Some(Err(e)),
        }
    }

    /// Like [`Framer::next_frame`], but returns where the frame lies in the buffer (see
    /// [`Framer::frame_at`]), so the caller keeps no borrow of the framer.
    #[must_use]
    pub(crate) fn next_frame_range(&mut self) -> Option<Result<(usize, usize), FrameError>> {
        self.broken = None;
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
                            self.last = (range, scanner.spans());
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
                    self.broken = Some(Broken::skim(&bytes[frame_start..self.scan]));
                    self.start = self.scan;
                    return Some(Err(stop_error(
                        stop,
                        at,
                        frame,
                        (self.scan - frame_start) as u64,
                    )));
                }
                Mode::Oversized(skim) => {
                    let max_depth = self.max_depth;
                    while self.scan < bytes.len() {
                        let run = skim.skip_plain(&bytes[self.scan..]);
                        if run > 0 {
                            self.scan += run;
                            continue;
                        }
                        let b = bytes[self.scan];
                        let stop = skim.step(b, max_depth);
                        if stop == Scanned::NeedMore {
                            self.scan += 1;
                            continue;
                        }
                        let skim = *skim;
                        self.broken = Some(Broken::of(&skim));
                        let at = self.base + self.scan as u64;
                        let error = match stop {
                            Scanned::Complete => {
                                self.scan += 1;
                                self.mode = Mode::Between;
                                FrameError::TooLarge {
                                    offset: skim.offset(),
                                    size: skim.size(),
                                    id: skim.id(),
                                    reply: skim.is_reply(),
                                }
                            }
                            Scanned::NewObjectAtLineStart => {
                                self.mode = Mode::Between;
                                FrameError::Truncated {
                                    offset: skim.offset(),
                                    len: skim.size() - 1,
                                }
                            }
                            Scanned::TooDeep(_) => {
                                self.scan += 1;
                                self.mode = Mode::SkipLine;
                                stop_error(stop, at + 1, skim.offset(), skim.size())
                            }
                            _ => {
                                // A control character (resume at it, it may be the newline)
                                // or a mismatched bracket.
                                self.mode = Mode::SkipLine;
                                stop_error(stop, at, skim.offset(), skim.size())
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

    /// What the object behind the error just returned by [`Framer::next_frame_range`] showed
    /// of itself before it broke off (its id, whether it read as a reply); `None` after a
    /// frame, or an error between objects.
    pub(crate) fn broken(&self) -> Option<Broken> {
        self.broken
    }

    /// The bytes of a frame returned by [`Framer::next_frame_range`], until the next call that
    /// takes `&mut self`.
    #[must_use]
    pub(crate) fn frame_at(&self, range: (usize, usize)) -> Frame<'_> {
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
mod tests;
