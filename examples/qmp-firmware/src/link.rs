//! The serial link and the clock for `qmp-embedded`, in safe code on top of
//! [`crate::sys`]: file descriptor 0 as an [`embedded_io::Read`] half, file
//! descriptor 1 as an [`embedded_io::Write`] half (joined with
//! [`qmp_embedded::Duplex`]), and `CLOCK_MONOTONIC` as a [`Clock`].
//!
//! The client checks its deadlines only when a `read` or `write` returns, so
//! neither half ever blocks for long: each first waits in `poll(2)` for at
//! most [`SerialIn::new`]'s / [`SerialOut::new`]'s interval and reports
//! "nothing yet" as [`ErrorKind::TimedOut`], which the client treats as a
//! chance to look at the clock, not as a failure.

use embedded_io::{ErrorKind, ErrorType, Read, Write};
use qmp_embedded::{Clock, Instant};

use crate::sys::{self, Errno, Fd, POLLIN, POLLOUT};

/// How the client sees a failed system call: "nothing happened yet" (checks
/// its deadlines and carries on), or a real I/O error.
impl embedded_io::Error for Errno {
    fn kind(&self) -> ErrorKind {
        match *self {
            Errno::ETIMEDOUT | Errno::EAGAIN => ErrorKind::TimedOut,
            Errno::EINTR => ErrorKind::Interrupted,
            _ => ErrorKind::Other,
        }
    }
}

/// The receiving half: `poll(2)` with a timeout, then `read(2)`.
#[derive(Debug)]
pub struct SerialIn {
    fd: Fd,
    interval_ms: i32,
}

impl SerialIn {
    /// Reads `fd`, waiting at most `interval_ms` milliseconds per call.
    pub const fn new(fd: Fd, interval_ms: i32) -> Self {
        Self { fd, interval_ms }
    }
}

impl ErrorType for SerialIn {
    type Error = Errno;
}

impl Read for SerialIn {
    /// Returns the bytes that are there (at least one), `Ok(0)` at the end of
    /// the link, or `ETIMEDOUT` (`TimedOut`) when nothing came in time.
    ///
    /// A pty's slave side reads `EIO` (or 0 bytes) once QEMU has closed the
    /// master side: both are the end of the link. A hang-up or error shows in
    /// `poll` as ready, so the `read` after it reports it.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        if buf.is_empty() {
            return Ok(0);
        }
        if sys::poll(self.fd, POLLIN, self.interval_ms)? == 0 {
            return Err(Errno::ETIMEDOUT);
        }
        match sys::read(self.fd, buf) {
            Err(Errno::EIO) => Ok(0),
            other => other,
        }
    }
}

/// The sending half: `poll(2)` with a timeout, then `write(2)`.
#[derive(Debug)]
pub struct SerialOut {
    fd: Fd,
    interval_ms: i32,
}

impl SerialOut {
    /// Writes `fd`, waiting at most `interval_ms` milliseconds per call for
    /// room (a pty whose reader has stopped reading fills up).
    pub const fn new(fd: Fd, interval_ms: i32) -> Self {
        Self { fd, interval_ms }
    }
}

impl ErrorType for SerialOut {
    type Error = Errno;
}

impl Write for SerialOut {
    /// Writes some of `buf`; `ETIMEDOUT` (`TimedOut`) when there was no room
    /// in time (the client retries until its deadline, and carries on after
    /// short writes).
    fn write(&mut self, buf: &[u8]) -> Result<usize, Errno> {
        if buf.is_empty() {
            return Ok(0);
        }
        if sys::poll(self.fd, POLLOUT, self.interval_ms)? == 0 {
            return Err(Errno::ETIMEDOUT);
        }
        sys::write(self.fd, buf)
    }

    /// Nothing is buffered here: `write(2)` hands the bytes to the kernel.
    fn flush(&mut self) -> Result<(), Errno> {
        Ok(())
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as the client's [`Clock`].
#[derive(Debug, Clone, Copy)]
pub struct Monotonic;

impl Clock for Monotonic {
    /// If the clock could not be read (it cannot fail on Linux with a valid
    /// buffer), time is up: every deadline has passed, so a silent peer ends
    /// in a timeout rather than a hang.
    fn now(&self) -> Instant {
        Instant::from_micros(sys::monotonic_micros().unwrap_or(u64::MAX))
    }
}
