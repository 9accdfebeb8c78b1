//! The fast path for QEMU's own envelopes: the members of a message written exactly as QEMU
//! writes it, found without the general walk.

use crate::json::{Cursor, RawJson};
use crate::scan::{MAX_SUPPORTED_DEPTH, plain_run, skip_nested};

use super::{DATA, ERROR, EVENT, ID, RETURN, TIMESTAMP, TopMembers};

/// The envelope exactly as QEMU writes it, recognised without the general walk: members
/// separated by `", "`, keys by `": "`, only the keys classification knows, each once, scalar
/// members that are plain (unescaped) strings or integers, and `timestamp` and `error` in
/// the shape QEMU gives them. What is accepted here is valid JSON, and the general walk
/// would find the same members; anything else (other spacing, escapes, unknown keys,
/// duplicates, floats, a greeting) returns `None` and goes the general way.
pub(super) fn canonical<'a>(
    text: &'a str,
    mut spans: &[(u32, u32)],
    m: &mut TopMembers<'a>,
) -> Option<()> {
    let b = text.as_bytes();
    if b.first() != Some(&b'{') {
        return None;
    }
    let raw = |start: usize, end: usize| text.get(start..end).map(RawJson::new_unchecked);
    let mut pos = 1;
    if b.get(pos) == Some(&b'}') {
        return (b.len() == 2).then_some(());
    }
    loop {
        // `"key": `
        let (index, key): (usize, &[u8]) = match b.get(pos + 1)? {
            b'r' => (RETURN, b"\"return\": "),
            b'i' => (ID, b"\"id\": "),
            b't' => (TIMESTAMP, b"\"timestamp\": "),
            b'e' if b.get(pos + 2) == Some(&b'v') => (EVENT, b"\"event\": "),
            b'e' => (ERROR, b"\"error\": "),
            b'd' => (DATA, b"\"data\": "),
            _ => return None,
        };
        if !b.get(pos..)?.starts_with(key) || m.slot(index).is_some() {
            return None;
        }
        pos += key.len();
        let start = pos;
        let value = match index {
            RETURN | DATA => match b.get(pos)? {
                b'{' | b'[' => {
                    while spans.first().is_some_and(|&(s, _)| (s as usize) < pos) {
                        spans = &spans[1..];
                    }
                    let known = spans.first().and_then(|&(s, end)| {
                        let end = end as usize;
                        let closes = matches!(b.get(end.checked_sub(1)?), Some(b'}' | b']'));
                        (s as usize == pos && closes).then_some(end)
                    });
                    let end = match known {
                        Some(end) => end,
                        // Not from the framer: skip it here.
                        None => skip_nested(b, pos, MAX_SUPPORTED_DEPTH).ok()?,
                    };
                    pos = end;
                    raw(start, end)?
                }
                b'"' => {
                    pos = string_end(text, pos)?;
                    raw(start, pos)?
                }
                _ => return None,
            },
            ID => {
                pos = integer(b, pos, false)?;
                raw(start, pos)?
            }
            EVENT => {
                pos = string_end(text, pos)?;
                raw(start, pos)?
            }
            TIMESTAMP => {
                let seconds = pos + br#"{"seconds": "#.len();
                if !b.get(pos..)?.starts_with(br#"{"seconds": "#) {
                    return None;
                }
                let seconds_end = integer(b, seconds, true)?;
                let micros = seconds_end + br#", "microseconds": "#.len();
                if !b.get(seconds_end..)?.starts_with(br#", "microseconds": "#) {
                    return None;
                }
                let micros_end = integer(b, micros, true)?;
                if b.get(micros_end) != Some(&b'}') {
                    return None;
                }
                m.timestamp_members = [raw(seconds, seconds_end), raw(micros, micros_end)];
                pos = micros_end + 1;
                raw(start, pos)?
            }
            _ => {
                // ERROR
                let class = pos + br#"{"class": "#.len();
                if !b.get(pos..)?.starts_with(br#"{"class": "#) {
                    return None;
                }
                let class_end = string_end(text, class)?;
                let desc = class_end + br#", "desc": "#.len();
                if !b.get(class_end..)?.starts_with(br#", "desc": "#) {
                    return None;
                }
                let desc_end = string_end(text, desc)?;
                if b.get(desc_end) != Some(&b'}') {
                    return None;
                }
                m.error_members = [raw(class, class_end), raw(desc, desc_end)];
                pos = desc_end + 1;
                raw(start, pos)?
            }
        };
        *m.slot(index) = Some(value);
        match b.get(pos)? {
            b',' if b.get(pos + 1..pos + 3) == Some(b" \"") => pos += 2,
            b'}' if pos + 1 == b.len() => return Some(()),
            _ => return None,
        }
    }
}

/// The end of the valid string starting at `text[pos]` (just past its closing quote).
#[inline]
fn string_end(text: &str, pos: usize) -> Option<usize> {
    let b = text.as_bytes();
    if b.get(pos) != Some(&b'"') {
        return None;
    }
    let end = pos + 1 + plain_run(b.get(pos + 1..)?);
    match b.get(end)? {
        b'"' => Some(end + 1),
        b'\\' => {
            // Escapes: the general string parser checks them.
            let mut cur = Cursor::new(text);
            cur.pos = pos;
            cur.string().ok()?;
            Some(cur.pos)
        }
        _ => None,
    }
}

/// The end of the integer starting at `b[pos]` (`0` or a digit 1-9 and more digits, with a
/// leading `-` if `signed`).
#[inline]
fn integer(b: &[u8], mut pos: usize, signed: bool) -> Option<usize> {
    if signed && b.get(pos) == Some(&b'-') {
        pos += 1;
    }
    match b.get(pos)? {
        b'0' => Some(pos + 1),
        b'1'..=b'9' => {
            pos += 1;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            Some(pos)
        }
        _ => None,
    }
}
