//! A serial line (a tty, or the slave side of a pty) as a [`Stream`], opened raw.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};

use crate::stream::Stream;

/// A serial device opened for reading and writing in raw mode (no echo, no line editing,
/// no translation of line ends, 8 bits), with read timeouts done by `poll(2)`: what a guest
/// agent on the far end of a serial line (`qemu-ga -m isa-serial`), or a QMP monitor on a
/// QEMU `-chardev pty`, needs.
#[derive(Debug)]
pub struct Serial {
    file: File,
    read_timeout: Option<Duration>,
}

impl Serial {
    /// Opens `path` (e.g. `/dev/ttyS0`, `/dev/pts/3`) read-write, without making it the
    /// controlling terminal, and puts it in raw mode.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path.as_ref(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut termios = tcgetattr(&fd)?;
        termios.make_raw();
        tcsetattr(&fd, OptionalActions::Now, &termios)?;
        Ok(Self {
            file: File::from(fd),
            read_timeout: None,
        })
    }

    /// A serial device (or a pty's master side) already open, used as it is set up.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> Self {
        Self {
            file: File::from(fd),
            read_timeout: None,
        }
    }

    /// The device file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The device file, given up (the tokio client reads it through its reactor).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn into_file(self) -> File {
        self.file
    }
}

impl Read for Serial {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(timeout) = self.read_timeout {
            let mut fds = [PollFd::new(&self.file, PollFlags::IN)];
            let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) => return Err(io::ErrorKind::TimedOut.into()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => return Err(io::ErrorKind::Interrupted.into()),
                Err(e) => return Err(e.into()),
            }
        }
        match self.file.read(buf) {
            // The far side of a pty went away.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => Ok(0),
            other => other,
        }
    }
}

impl Write for Serial {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Stream for Serial {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.read_timeout = timeout;
        Ok(true)
    }
}

impl AsFd for Serial {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}
