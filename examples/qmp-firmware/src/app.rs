//! The firmware proper: safe code on top of [`crate::sys`].

use core::fmt::Write as _;
use core::panic::PanicInfo;

use crate::sys::{self, Errno, Fd};

/// Size of the line buffer; longer lines are cut at this length.
const LINE_CAPACITY: usize = 4096;

/// Exit status after a panic (the same as `std` uses).
const PANIC_EXIT_STATUS: i32 = 101;

/// Body of the program, called by `sys::_start`; returns the exit status.
///
/// Reads one line from fd 0 (up to EOF, the first newline, or
/// [`LINE_CAPACITY`] bytes), reports its length on fd 2 and writes it back
/// unchanged to fd 1.
pub(crate) fn run() -> i32 {
    let mut stderr = sys::FdWriter(Fd::STDERR);
    let mut buf = [0u8; LINE_CAPACITY];

    let len = match read_line(Fd::STDIN, &mut buf) {
        Ok(len) => len,
        Err(errno) => {
            let _ = writeln!(stderr, "firmware: read failed: {errno}");
            return 1;
        }
    };
    let _ = writeln!(stderr, "firmware: read {len} bytes");

    match sys::write_all(Fd::STDOUT, &buf[..len]) {
        Ok(()) => 0,
        Err(errno) => {
            let _ = writeln!(stderr, "firmware: write failed: {errno}");
            1
        }
    }
}

/// Reads from `fd` into `buf` until end of file, a newline (which is kept),
/// or until `buf` is full, and returns the number of bytes of the line.
///
/// Bytes that arrive after the newline in the same `read` are dropped.
fn read_line(fd: Fd, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut filled = 0;
    while filled < buf.len() {
        match sys::read(fd, &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(pos) = buf[filled..filled + n].iter().position(|&b| b == b'\n') {
                    return Ok(filled + pos + 1);
                }
                filled += n;
            }
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(filled)
}

/// Writes the panic message to fd 2 and exits with status 101.
#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let _ = writeln!(sys::FdWriter(Fd::STDERR), "firmware: {info}");
    sys::exit(PANIC_EXIT_STATUS)
}
