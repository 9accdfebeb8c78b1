//! One line of the firmware's report on fd 2, built without `core::fmt`.
//!
//! `core::fmt` (its formatting machinery, `Debug` of big types, integer
//! padding) would be the largest part of this program; the report only needs
//! strings and unsigned decimals, so it is built by hand in a stack buffer and
//! written with a single `write(2)` per line, so lines never interleave.

use crate::sys::{self, Fd};

/// Longest line; anything past it is cut.
const CAPACITY: usize = 200;

/// Every line starts with this.
const PREFIX: &[u8] = b"qmp-firmware: ";

/// A line of text being put together; [`Line::emit`] writes it to fd 2.
#[derive(Debug)]
pub struct Line {
    buf: [u8; CAPACITY],
    len: usize,
}

impl Line {
    /// A line holding only the `qmp-firmware: ` prefix.
    pub fn new() -> Self {
        let mut line = Self {
            buf: [0; CAPACITY],
            len: 0,
        };
        line.bytes(PREFIX);
        line
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        // Leave room for the newline that `emit` adds.
        let room = CAPACITY - 1 - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self
    }

    /// Appends `s` (cut at the end of the line, possibly inside a character:
    /// the report is for people and tests, which read it as bytes).
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Appends `n` in decimal.
    pub fn num(&mut self, n: u64) -> &mut Self {
        self.num_width(n, 1)
    }

    /// Appends `n` in decimal, with leading zeros up to `width` digits.
    pub fn num_width(&mut self, mut n: u64, width: usize) -> &mut Self {
        let mut digits = [b'0'; 20];
        let mut at = digits.len();
        while n > 0 || digits.len() - at < width.clamp(1, digits.len()) {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.bytes(&digits[at..])
    }

    /// Appends a version as `major.minor.micro`.
    pub fn version(&mut self, (major, minor, micro): (u64, u64, u64)) -> &mut Self {
        self.num(major).str(".").num(minor).str(".").num(micro)
    }

    /// Appends `n` in decimal, with a `-` when negative.
    pub fn int(&mut self, n: i64) -> &mut Self {
        if n < 0 {
            self.str("-");
        }
        self.num(n.unsigned_abs())
    }

    /// Appends `yes` or `no` depending on `b`.
    pub fn pick(&mut self, b: bool, yes: &str, no: &str) -> &mut Self {
        self.str(if b { yes } else { no })
    }

    /// Writes the line and a newline to fd 2 (errors are ignored: there is no
    /// one else to tell).
    pub fn emit(&mut self) {
        self.buf[self.len] = b'\n';
        let _ = sys::write_all(Fd::STDERR, &self.buf[..=self.len]);
    }
}
