//! The 16550 UART, polled: COM1 as the QMP link ([`Link`], `embedded-io`
//! `Read` + `ReadReady` + `Write` for qmp-embedded's blocking client) and COM2
//! as a plain byte sink for the report.
//!
//! The UART is left in its reset state's 16450 mode (no FIFOs): QEMU then
//! hands it one received byte at a time and keeps the rest in the chardev's
//! socket, so nothing is ever overrun. Turning the FIFOs on would flush them,
//! and with them a byte of QEMU's greeting that may already be waiting when
//! the guest starts.

use embedded_io::{ErrorKind, ErrorType, Read, ReadReady, Write};

use crate::clock::Clock;
use crate::hw;

/// Receive buffer (read) / transmit holding register (write).
const DATA: u16 = 0;
/// Interrupt enable register.
const IER: u16 = 1;
/// Line control register.
const LCR: u16 = 3;
/// Modem control register.
const MCR: u16 = 4;
/// Line status register.
const LSR: u16 = 5;

/// LSR: a received byte is waiting.
const LSR_DATA_READY: u8 = 0x01;
/// LSR: the transmitter is empty (holding and shift registers).
const LSR_TX_EMPTY: u8 = 0x40;

/// One 16550 UART at an I/O base address.
#[derive(Debug, Clone, Copy)]
pub struct Uart {
    base: u16,
}

impl Uart {
    /// COM1's base address.
    pub const COM1: u16 = 0x3f8;
    /// COM2's base address.
    pub const COM2: u16 = 0x2f8;

    /// Sets the UART at `base` up for polled use: no interrupts, 115200 baud
    /// (divisor 1), 8 data bits, no parity, 1 stop bit, DTR and RTS on.
    pub fn new(base: u16) -> Self {
        let uart = Self { base };
        uart.set(IER, 0);
        uart.set(LCR, 0x80); // divisor latch access
        uart.set(DATA, 1); // divisor, low byte
        uart.set(IER, 0); // divisor, high byte
        uart.set(LCR, 0x03);
        uart.set(MCR, 0x03);
        uart
    }

    /// COM2, already set up by [`Uart::new`] at boot: the report's UART.
    pub const fn new_report() -> Self {
        Self { base: Self::COM2 }
    }

    fn set(self, register: u16, value: u8) {
        hw::outb(self.base + register, value);
    }

    fn get(self, register: u16) -> u8 {
        hw::inb(self.base + register)
    }

    /// Whether a received byte is waiting.
    pub fn data_ready(self) -> bool {
        self.get(LSR) & LSR_DATA_READY != 0
    }

    /// The received byte (call when [`Self::data_ready`]).
    pub fn read_byte(self) -> u8 {
        self.get(DATA)
    }

    /// Whether everything written so far has left the UART.
    pub fn tx_empty(self) -> bool {
        self.get(LSR) & LSR_TX_EMPTY != 0
    }

    /// Writes `bytes`, waiting for the transmitter before each one. Used for
    /// the report, whose reader (a file, or nothing) never holds it up.
    pub fn write_blocking(self, bytes: &[u8]) {
        for &byte in bytes {
            while !self.tx_empty() {}
            self.set(DATA, byte);
        }
    }

    /// Writes up to [`hw::BURST`] bytes of `bytes` in one burst (see
    /// [`hw::burst`]); the transmitter must be empty.
    fn burst(self, bytes: &[u8]) -> usize {
        hw::burst(self.base + DATA, bytes)
    }
}

/// COM1 as the QMP link, with polled I/O that never waits longer than its
/// interval: a `read` with nothing received, or a `write` while the
/// transmitter is still busy, fails with [`ErrorKind::TimedOut`], which the
/// client takes as a chance to check its deadlines.
#[derive(Debug)]
pub struct Link {
    uart: Uart,
    clock: Clock,
    interval_us: u64,
    follow_up: &'static [u8],
}

impl Link {
    /// The link over `uart`, waiting at most `interval_us` microseconds per
    /// call.
    pub fn new(uart: Uart, clock: Clock, interval_us: u64) -> Self {
        Self {
            uart,
            clock,
            interval_us,
            follow_up: &[],
        }
    }

    /// Sends `bytes` right behind the next complete `write` (one whose bytes
    /// all fit a burst along with these), in the same burst.
    ///
    /// This is how a guest stops and resumes its own VM: once QEMU has run
    /// `stop`, the guest's CPU is stopped and can send nothing more, so the
    /// `cont` must already be on its way. A burst is never cut by a stop
    /// (see [`hw::burst`]), so the `cont` that follows the `stop` in it
    /// always reaches QEMU, which runs it once the `stop` is done.
    pub fn send_behind_next_write(&mut self, bytes: &'static [u8]) {
        self.follow_up = bytes;
    }

    /// Waits, up to the interval, until `ready` says so.
    fn wait(&self, ready: impl Fn(Uart) -> bool) -> Result<(), ErrorKind> {
        let start = self.clock.micros();
        while !ready(self.uart) {
            if self.clock.micros().saturating_sub(start) >= self.interval_us {
                return Err(ErrorKind::TimedOut);
            }
        }
        Ok(())
    }
}

impl ErrorType for Link {
    type Error = ErrorKind;
}

impl Read for Link {
    /// Returns the bytes that have come (at least one), or `TimedOut` when
    /// none came within the interval. A serial line has no end, so this never
    /// returns `Ok(0)` for a non-empty `buf`.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.wait(Uart::data_ready)?;
        let mut n = 0;
        while n < buf.len() && self.uart.data_ready() {
            buf[n] = self.uart.read_byte();
            n += 1;
        }
        Ok(n)
    }
}

impl ReadReady for Link {
    fn read_ready(&mut self) -> Result<bool, ErrorKind> {
        Ok(self.uart.data_ready())
    }
}

impl Write for Link {
    /// Writes up to [`hw::BURST`] bytes of `buf` in one burst once the
    /// transmitter is empty (`TimedOut` if it stays busy for the interval),
    /// with the [follow-up](Self::send_behind_next_write) behind them when
    /// they are all of `buf` and it fits.
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.wait(Uart::tx_empty)?;
        let follow_up = self.follow_up;
        if !follow_up.is_empty() && buf.len() + follow_up.len() <= hw::BURST {
            let mut burst = [0; hw::BURST];
            burst[..buf.len()].copy_from_slice(buf);
            burst[buf.len()..buf.len() + follow_up.len()].copy_from_slice(follow_up);
            self.uart.burst(&burst[..buf.len() + follow_up.len()]);
            self.follow_up = &[];
            return Ok(buf.len());
        }
        Ok(self.uart.burst(buf))
    }

    /// Nothing is buffered here: each byte goes to QEMU as it is written.
    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}
