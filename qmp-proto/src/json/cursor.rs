//! The validating, non-recursive JSON cursor that [`RawJson`]'s views and message
//! classification walk text with.

use crate::scan::{MAX_SUPPORTED_DEPTH, plain_run, skip_nested};

use super::{JsonStr, RawJson, SyntaxError};

/// A validating, non-recursive JSON cursor over text that is already known to be UTF-8.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    text: &'a str,
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    #[inline]
    pub(crate) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub(crate) fn err(&self) -> SyntaxError {
        SyntaxError { offset: self.pos }
    }

    pub(crate) fn expect(&mut self, b: u8) -> Result<(), SyntaxError> {
        if self.eat(b) { Ok(()) } else { Err(self.err()) }
    }

    #[inline]
    pub(crate) fn skip_ws(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\t' | b'\r' | b'\n') = bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// Parses a string at the cursor and returns its escaped body.
    pub(crate) fn string(&mut self) -> Result<JsonStr<'a>, SyntaxError> {
        self.expect(b'"')?;
        let start = self.pos;
        let bytes = self.text.as_bytes();
        loop {
            self.pos += plain_run(bytes.get(self.pos..).unwrap_or_default());
            match bytes.get(self.pos) {
                Some(b'"') => {
                    let body = sub(self.text, start, self.pos);
                    self.pos += 1;
                    return Ok(JsonStr::from_escaped(body));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match bytes.get(self.pos) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1
                        }
                        Some(b'u') => {
                            self.pos += 1;
                            for _ in 0..4 {
                                match bytes.get(self.pos) {
                                    Some(h) if h.is_ascii_hexdigit() => self.pos += 1,
                                    _ => return Err(self.err()),
                                }
                            }
                        }
                        _ => return Err(self.err()),
                    }
                }
                _ => return Err(self.err()),
            }
        }
    }

    fn literal(&mut self, word: &str) -> Result<(), SyntaxError> {
        if self.text.as_bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn digits(&mut self) -> usize {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        while bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), SyntaxError> {
        self.eat(b'-');
        if self.peek() == Some(b'i') {
            return self.literal("inf");
        }
        if self.eat(b'0') {
            // A leading zero stands alone.
        } else if self.digits() == 0 {
            return Err(self.err());
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(self.err());
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return Err(self.err());
            }
        }
        Ok(())
    }

    /// Parses one scalar (not object or array) at the cursor.
    fn scalar(&mut self) -> Result<(), SyntaxError> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') if self.text.as_bytes()[self.pos..].starts_with(b"nan") => {
                self.literal("nan")
            }
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9' | b'i') => self.number(),
            _ => Err(self.err()),
        }
    }

    /// Parses and validates one value at the cursor, without recursion.
    #[inline]
    pub(crate) fn value(&mut self) -> Result<RawJson<'a>, SyntaxError> {
        self.value_within(MAX_SUPPORTED_DEPTH)
    }

    /// Like [`Cursor::value`]; when the value is an object, also returns the values of its
    /// members named `keys` (the first of each, as [`RawJson::get`] finds), found in the same
    /// pass.
    pub(crate) fn value_with_members<const K: usize>(
        &mut self,
        keys: [&str; K],
    ) -> Result<(RawJson<'a>, [Option<RawJson<'a>>; K]), SyntaxError> {
        let mut found = [None; K];
        let start = self.pos;
        if !self.eat(b'{') {
            return Ok((self.value()?, found));
        }
        self.skip_ws();
        if !self.eat(b'}') {
            loop {
                let key = self.member_key()?;
                // The object itself is one level of the depth limit.
                let value = self.value_within(MAX_SUPPORTED_DEPTH - 1)?;
                if let Some(slot) = keys.iter().position(|k| key.eq_str(k)) {
                    found[slot].get_or_insert(value);
                }
                self.skip_ws();
                if self.eat(b',') {
                    self.skip_ws();
                    continue;
                }
                self.expect(b'}')?;
                break;
            }
        }
        Ok((
            RawJson::new_unchecked(sub(self.text, start, self.pos)),
            found,
        ))
    }

    /// [`Cursor::value`] with at most `limit` levels of nesting.
    #[inline]
    fn value_within(&mut self, limit: u32) -> Result<RawJson<'a>, SyntaxError> {
        let start = self.pos;
        if !matches!(self.peek(), Some(b'{' | b'[')) {
            // A scalar: no nesting to track.
            self.scalar()?;
            return Ok(RawJson::new_unchecked(sub(self.text, start, self.pos)));
        }
        self.nested_within(limit)
    }

    /// [`Cursor::value_within`] for an object or array.
    fn nested_within(&mut self, limit: u32) -> Result<RawJson<'a>, SyntaxError> {
        let start = self.pos;
        // One bit per open container: 1 = object, 0 = array.
        let mut stack: u128 = 0;
        let mut depth: u32 = 0;
        loop {
            // Here a value is expected.
            match self.peek() {
                Some(open @ (b'{' | b'[')) => {
                    if depth == limit {
                        return Err(self.err());
                    }
                    self.pos += 1;
                    self.skip_ws();
                    let object = open == b'{';
                    let close = if object { b'}' } else { b']' };
                    if !self.eat(close) {
                        stack = (stack << 1) | object as u128;
                        depth += 1;
                        if object {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                _ => self.scalar()?,
            }
            // Here a value just ended: close containers or move to the next element.
            loop {
                if depth == 0 {
                    return Ok(RawJson::new_unchecked(sub(self.text, start, self.pos)));
                }
                self.skip_ws();
                let in_object = stack & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                        if in_object {
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {}
                    Some(b']') if !in_object => {}
                    _ => return Err(self.err()),
                }
                self.pos += 1;
                stack >>= 1;
                depth -= 1;
            }
        }
    }

    /// Passes over one value at the cursor without checking the grammar inside objects and
    /// arrays: those are only checked structurally (the structural skip of the scanner), or
    /// not at all when `known_end` says where the one starting here ends (the framer found
    /// it). Scalars are validated as by [`Cursor::value`].
    pub(crate) fn skim_value(
        &mut self,
        known_end: Option<usize>,
    ) -> Result<RawJson<'a>, SyntaxError> {
        let start = self.pos;
        let bytes = self.text.as_bytes();
        if !matches!(bytes.get(start), Some(b'{' | b'[')) {
            return self.value();
        }
        // A known end must close a bracket; otherwise it is not trusted.
        let end = match known_end {
            Some(end) if end > start && matches!(bytes.get(end - 1), Some(b'}' | b']')) => end,
            _ => skip_nested(bytes, start, MAX_SUPPORTED_DEPTH)
                .map_err(|offset| SyntaxError { offset })?,
        };
        let text = self
            .text
            .get(start..end)
            .ok_or(SyntaxError { offset: start })?;
        self.pos = end;
        Ok(RawJson::new_unchecked(text))
    }

    /// Parses `"key" :` and the whitespace after it.
    pub(crate) fn member_key(&mut self) -> Result<JsonStr<'a>, SyntaxError> {
        let key = self.string()?;
        self.skip_ws();
        self.expect(b':')?;
        self.skip_ws();
        Ok(key)
    }
}

/// `text[start..end]` without a panic path: the cursor only stops on ASCII delimiters, so
/// the range always lies on character boundaries (and code size matters on small targets).
#[inline]
fn sub(text: &str, start: usize, end: usize) -> &str {
    text.get(start..end).unwrap_or("")
}
