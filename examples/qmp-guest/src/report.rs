//! The human-readable report on COM2: one line per step, built without
//! `core::fmt` (which would be the largest part of the guest) in a stack
//! buffer, like qmp-firmware's report.

use crate::uart::Uart;

/// Longest line; anything past it is cut.
const CAPACITY: usize = 160;

/// Every line starts with this.
const PREFIX: &[u8] = b"qmp-guest: ";

/// A line of text being put together; [`Line::emit`] writes it to COM2.
#[derive(Debug)]
pub struct Line {
    buf: [u8; CAPACITY],
    len: usize,
}

impl Line {
    /// A line holding only the `qmp-guest: ` prefix.
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

    /// Appends `s` (cut at the end of the line).
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Appends `n` in decimal.
    pub fn num(&mut self, mut n: u64) -> &mut Self {
        let mut digits = [0; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.bytes(&digits[at..])
    }

    /// Appends a version as `major.minor.micro`.
    pub fn version(&mut self, (major, minor, micro): (u64, u64, u64)) -> &mut Self {
        self.num(major).str(".").num(minor).str(".").num(micro)
    }

    /// Writes the line and a newline to COM2.
    pub fn emit(&mut self) {
        self.buf[self.len] = b'\n';
        Uart::new_report().write_blocking(&self.buf[..=self.len]);
    }
}
