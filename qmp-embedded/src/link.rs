//! Link helpers.

use embedded_io::{ErrorType, Read, Write};

/// One link out of a separate reader and writer, e.g. a UART's RX and TX halves, or file
/// descriptors 0 and 1 of a process whose standard input and output are a serial line.
///
/// Both halves must share one error type. With the `async` feature it is an async link too
/// when both halves are async.
///
/// ```
/// use qmp_embedded::Duplex;
/// let input: &[u8] = b"{\"return\": {}}\r\n";
/// let mut output = [0u8; 64];
/// let link = Duplex::new(input, &mut output[..]);
/// # let _ = link;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Duplex<R, W> {
    /// The half the client reads from.
    pub reader: R,
    /// The half the client writes to.
    pub writer: W,
}

impl<R, W> Duplex<R, W> {
    /// Joins `reader` and `writer`.
    pub const fn new(reader: R, writer: W) -> Self {
        Self { reader, writer }
    }
}

impl<R: ErrorType, W: ErrorType<Error = R::Error>> ErrorType for Duplex<R, W> {
    type Error = R::Error;
}

impl<R: Read, W: ErrorType<Error = R::Error>> Read for Duplex<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.reader.read(buf)
    }
}

impl<R: ErrorType, W: Write<Error = R::Error>> Write for Duplex<R, W> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.writer.flush()
    }
}

#[cfg(feature = "async")]
impl<R: embedded_io_async::Read, W: ErrorType<Error = R::Error>> embedded_io_async::Read
    for Duplex<R, W>
{
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.reader.read(buf).await
    }
}

#[cfg(feature = "async")]
impl<R: ErrorType, W: embedded_io_async::Write<Error = R::Error>> embedded_io_async::Write
    for Duplex<R, W>
{
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.writer.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.writer.flush().await
    }
}
