//! What the tests need to run qmp-embedded's blocking client on the host: a Unix socket as an
//! `embedded_io` link, and the host's clock.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// A Unix socket as an `embedded_io` link. Give the socket a read timeout (a few tens of
/// milliseconds) so the client gets to check its deadlines: a read that times out is
/// `ErrorKind::TimedOut`, as on a serial line. A reset is the end of the link.
#[derive(Debug)]
pub struct SocketLink(pub UnixStream);

impl SocketLink {
    /// How long a read waits before the client gets to check its deadlines.
    pub const POLL: std::time::Duration = std::time::Duration::from_millis(20);

    /// `stream` as a link, given a read timeout of [`SocketLink::POLL`].
    pub fn new(stream: UnixStream) -> Self {
        stream
            .set_read_timeout(Some(Self::POLL))
            .expect("set a read timeout");
        Self(stream)
    }
}

/// A `std::io` error as `embedded_io` sees it.
pub fn link_error(e: &io::Error) -> embedded_io::ErrorKind {
    use embedded_io::ErrorKind as K;
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => K::TimedOut,
        io::ErrorKind::Interrupted => K::Interrupted,
        io::ErrorKind::BrokenPipe => K::BrokenPipe,
        io::ErrorKind::ConnectionReset => K::ConnectionReset,
        io::ErrorKind::NotConnected => K::NotConnected,
        _ => K::Other,
    }
}

impl embedded_io::ErrorType for SocketLink {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io::Read for SocketLink {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        match self.0.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(0),
            other => other.map_err(|e| link_error(&e)),
        }
    }
}

impl embedded_io::Write for SocketLink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.0.write(buf).map_err(|e| link_error(&e))
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// The host's monotonic clock, in microseconds from when it was made.
#[derive(Debug, Clone, Copy)]
pub struct HostClock(pub Instant);

impl HostClock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self(Instant::now())
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl qmp_embedded::Clock for HostClock {
    fn now(&self) -> qmp_embedded::Instant {
        qmp_embedded::Instant::from_micros(
            u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX),
        )
    }
}
