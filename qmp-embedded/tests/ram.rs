//! What each configuration costs in RAM: `size_of` of the client (everything it owns:
//! buffers, event queue, in-flight table, session state), printed with `--nocapture` and
//! checked against the formula in the crate documentation.

use core::mem::size_of;

use embedded_io::{ErrorKind, ErrorType, Read, Write};
use qmp_embedded::{Client, Clock, Error, Instant, ServerError};

/// A zero-sized link and clock, so the sizes are the client's own.
struct Link;
struct Time;

impl ErrorType for Link {
    type Error = ErrorKind;
}
impl Read for Link {
    fn read(&mut self, _: &mut [u8]) -> Result<usize, ErrorKind> {
        Ok(0)
    }
}
impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}
impl Clock for Time {
    fn now(&self) -> Instant {
        Instant::ZERO
    }
}

fn report<const RX: usize, const TX: usize, const EV: usize, const N: usize>(name: &str) -> usize {
    let size = size_of::<Client<Link, Time, RX, TX, EV, N>>();
    let overhead = size - RX - TX - EV;
    println!(
        "{name:<10} RX={RX:<5} TX={TX:<4} EV={EV:<5} N={N}: {size:>6} bytes \
         ({overhead} besides the three buffers)"
    );
    size
}

/// Bytes besides the buffers: the driver (session state, framer, config, transmit queue,
/// server info, held outcome) and queue bookkeeping, plus this
/// much per in-flight slot (session table and transmit queue).
const FIXED: usize = 840;
const PER_SLOT: usize = 72;

#[test]
fn client_sizes() {
    let configs = [
        (report::<140, 37, 25, 1>("smallest"), 140 + 37 + 25, 1),
        (report::<256, 64, 64, 1>("small"), 256 + 64 + 64, 1),
        (report::<1024, 256, 256, 2>("default"), 1024 + 256 + 256, 2),
        (report::<8192, 512, 1024, 8>("large"), 8192 + 512 + 1024, 8),
    ];
    for (size, buffers, n) in configs {
        assert!(
            size <= buffers + FIXED + PER_SLOT * n,
            "{size} > {buffers} + …"
        );
    }
    // The default configuration is what `Client<L, C>` means.
    assert_eq!(
        size_of::<Client<Link, Time>>(),
        size_of::<Client<Link, Time, 1024, 256, 256, 2>>()
    );
    println!(
        "Error<ErrorKind>: {} bytes, ServerError: {} bytes",
        size_of::<Error<ErrorKind>>(),
        size_of::<ServerError>()
    );
    assert!(size_of::<Error<ErrorKind>>() <= 96);
    // The async client owns exactly the same.
    #[cfg(feature = "async")]
    assert_eq!(
        size_of::<qmp_embedded::asynch::Client<Link, Time, 140, 37, 25, 1>>(),
        size_of::<Client<Link, Time, 140, 37, 25, 1>>()
    );
}
