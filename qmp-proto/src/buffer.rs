//! Byte storage that may grow: what a framer reads into and a driver encodes into.

/// Storage for a [`Framer`](crate::Framer) and for the driver's receive and transmit buffers:
/// bytes, and maybe room to grow.
///
/// Fixed arrays and slices never grow; an adapter with a heap wraps its `Vec` in a type
/// that grows up to its own limit.
pub trait Buffer: AsRef<[u8]> + AsMut<[u8]> {
    /// Grows to at least `len` bytes if it can (perhaps to less than asked, if a limit is
    /// reached); returns whether it grew at all.
    fn grow_to(&mut self, len: usize) -> bool {
        let _ = len;
        false
    }

    /// The driver holds nothing in this buffer (see [`Driver::release_buffers`]): a heap
    /// buffer may give its memory back, down to zero bytes. The driver asks it to
    /// [`grow_to`](Self::grow_to) at least one byte before it uses it again, so it must grow
    /// back from empty. Fixed storage keeps its bytes (the default).
    ///
    /// [`Driver::release_buffers`]: crate::Driver::release_buffers
    fn release(&mut self) {}
}

impl<const N: usize> Buffer for [u8; N] {}
impl Buffer for &mut [u8] {}
