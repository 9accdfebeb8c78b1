//! The structural scanner under framing and message classification.
//!
//! It follows one JSON object (or one nested value) through its bytes, with string and
//! escape awareness, counting depth and checking that closing brackets match, without
//! checking the grammar inside. The framer finds where a message ends with it, and message
//! classification and the validating cursor jump over nested values with [`skip_nested`].
//!
//! # How the scan works
//! 64 bytes at a time (`scan/block.rs`): the block is classified into bitmasks of quotes,
//! brackets and "special" bytes (backslashes, control characters) with portable code that
//! LLVM vectorizes; escapes are odd-length backslash runs, carried across blocks; a prefix
//! XOR of the unescaped quotes gives the bytes inside strings; the brackets outside strings
//! are followed one by one to track depth and find where the object ends. A block where
//! something rare happens (a raw control character in a string, a backslash outside one, a
//! `{` or `[` right after a newline, the depth limit) is rescanned byte by byte, so errors,
//! offsets and resynchronisation are exactly those of the byte-at-a-time definition, which
//! the tests compare against. On the way, the scanner notes where the object's top-level
//! nested values begin and end ([`Spans`]), so that classification does not walk them again.

mod block;

/// The deepest nesting the scanner and the validating cursor accept (the framer's depth
/// limit is capped here).
pub const MAX_SUPPORTED_DEPTH: u32 = 128;

/// JSON whitespace.
#[inline]
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
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
pub(crate) static STRING_STOP: [bool; 256] = string_stop_table();

/// What one scanning step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scanned {
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
pub(crate) struct Scanner {
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
    pub(crate) fn open(origin: usize) -> Self {
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
    pub(crate) fn scan(&mut self, bytes: &[u8], pos: &mut usize, max_depth: u32) -> Scanned {
        self.scan_blocks::<true>(bytes, pos, max_depth)
    }

    /// Replaces the low 64 bits of the kind stack: all of it at up to 64 levels, which is
    /// where the block walk works.
    #[inline(always)]
    fn set_low_kinds(&mut self, low: u64) {
        self.kinds.low = low;
    }

    /// The spans recorded so far (all of them once the object has closed).
    pub(crate) fn spans(&self) -> Spans {
        self.spans
    }

    /// The buffer moved its bytes `by` positions towards the start.
    pub(crate) fn shift(&mut self, by: usize) {
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
pub(crate) struct Kinds {
    /// Bits 0 to 63: the innermost 64 levels, all of them up to 64 levels deep.
    low: u64,
    /// Bits 64 to 127.
    high: u64,
}

const _: () = assert!(MAX_SUPPORTED_DEPTH <= 2 * u64::BITS);

impl Kinds {
    /// An opening bracket `b`.
    #[inline(always)]
    pub(crate) fn push(&mut self, b: u8) {
        self.high = (self.high << 1) | (self.low >> 63);
        self.low = (self.low << 1) | kind(b);
    }

    /// A closing bracket `b`: returns whether it matches the innermost open one (and then
    /// pops it).
    #[inline(always)]
    pub(crate) fn pop(&mut self, b: u8) -> bool {
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

/// High bit set in each byte of `w` that is `"`, `\\` or a control character (exactly those).
#[inline(always)]
fn string_stops(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let zero = |t: u64| !(((t & LOW7) + LOW7) | t) & HIGH;
    let control = !(((w & LOW7) + ONES * 0x60) | w) & HIGH;
    zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | control
}

/// How many bytes at the start of `bytes` are plain string characters (not `"`, `\\` or a
/// control character).
#[inline]
pub(crate) fn plain_run(bytes: &[u8]) -> usize {
    let mut n = 0;
    while let Some(word) = bytes.get(n..).and_then(|b| b.first_chunk::<8>()) {
        let stops = string_stops(u64::from_le_bytes(*word));
        if stops != 0 {
            return n + (stops.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    while let Some(&b) = bytes.get(n) {
        if STRING_STOP[usize::from(b)] {
            break;
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests;
