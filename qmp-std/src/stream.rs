//! What the client needs from a byte stream.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// A byte stream the [`Client`](crate::Client) can speak QMP over: [`Read`] + [`Write`], plus
/// optional read/write timeouts.
///
/// Implemented for [`UnixStream`] and [`TcpStream`] (with timeouts), for `&mut S` and
/// `Box<S>`, and for any `Read + Write` wrapped in [`Plain`]. An in-memory fake implements it
/// with an empty `impl Stream for Fake {}`.
///
/// Timeouts: the client bounds every blocking read by its nearest deadline through
/// [`Stream::set_read_timeout`]. A stream that cannot do that (the default methods return
/// `Ok(false)`) still works, but a deadline is then only noticed when bytes arrive, so a
/// silent peer can block a read forever.
pub trait Stream: Read + Write {
    /// Makes each later `read` return an error of kind `WouldBlock` or `TimedOut` once it has
    /// blocked for `timeout` (`None`: block forever). `timeout` is never zero. Returns whether
    /// the stream supports it.
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        let _ = timeout;
        Ok(false)
    }

    /// Like [`Stream::set_read_timeout`], for writes.
    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        let _ = timeout;
        Ok(false)
    }

    /// Writes one whole message. The default is `write_all` then `flush`; sockets override it
    /// to send without `SIGPIPE`.
    fn write_message(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)?;
        self.flush()
    }

    /// Writes a prefix of `bytes` (as much as the stream takes at once, at least one byte
    /// unless it fails) and returns how many went; what the client's I/O loop calls. The
    /// default is `write` then `flush`; sockets override it to send without `SIGPIPE`.
    fn write_some(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.write(bytes)?;
        self.flush()?;
        Ok(n)
    }
}

/// A [`Stream`] that can pass file descriptors along with bytes (`SCM_RIGHTS` over a Unix
/// socket), as QMP's `getfd` and `add-fd` need.
pub trait FdStream: Stream {
    /// Sends a prefix of `bytes` (at least one byte) in one message with `fds` attached, and
    /// returns how many bytes went; the caller writes the rest normally.
    fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize>;
}

/// Any `Read + Write` as a [`Stream`] without timeout support (see [`Stream`]).
#[derive(Debug, Default)]
pub struct Plain<S>(pub S);

impl<S: Read> Read for Plain<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<S: Write> Write for Plain<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<S: Read + Write> Stream for Plain<S> {}

/// [`Stream`] for pointers to streams: every method goes to the stream pointed to.
macro_rules! forward_stream {
    ($($pointer:ty),*) => {$(
        impl<S: Stream + ?Sized> Stream for $pointer {
            fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
                (**self).set_read_timeout(timeout)
            }
            fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
                (**self).set_write_timeout(timeout)
            }
            fn write_message(&mut self, bytes: &[u8]) -> io::Result<()> {
                (**self).write_message(bytes)
            }
            fn write_some(&mut self, bytes: &[u8]) -> io::Result<usize> {
                (**self).write_some(bytes)
            }
        }
    )*};
}

forward_stream!(&mut S, Box<S>);

impl<S: FdStream + ?Sized> FdStream for &mut S {
    fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        (**self).send_with_fds(bytes, fds)
    }
}

impl<S: FdStream + ?Sized> FdStream for Box<S> {
    fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        (**self).send_with_fds(bytes, fds)
    }
}

/// One `send(2)` with `MSG_NOSIGNAL` (retried when interrupted).
fn send_some(socket: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match rustix::net::send(socket, bytes, SendFlags::NOSIGNAL) {
            Ok(0) if !bytes.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `send(2)` with `MSG_NOSIGNAL` until every byte is gone.
fn send_all(socket: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::net::send(socket, bytes, SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// [`Stream`] for std sockets: their own timeouts, and writes through `send(2)` with
/// `MSG_NOSIGNAL`.
macro_rules! socket_stream {
    ($($socket:ident),*) => {$(
        impl Stream for $socket {
            fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
                $socket::set_read_timeout(self, timeout).map(|()| true)
            }
            fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
                $socket::set_write_timeout(self, timeout).map(|()| true)
            }
            fn write_message(&mut self, bytes: &[u8]) -> io::Result<()> {
                send_all(self.as_fd(), bytes)
            }
            fn write_some(&mut self, bytes: &[u8]) -> io::Result<usize> {
                send_some(self.as_fd(), bytes)
            }
        }
    )*};
}

socket_stream!(UnixStream, TcpStream);

impl FdStream for UnixStream {
    fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        if fds.is_empty() {
            return send_all(self.as_fd(), bytes).map(|()| bytes.len());
        }
        let mut space =
            vec![std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many file descriptors for one message",
            ));
        }
        let iov = [io::IoSlice::new(bytes)];
        loop {
            match rustix::net::sendmsg(self.as_fd(), &iov, &mut control, SendFlags::NOSIGNAL) {
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
