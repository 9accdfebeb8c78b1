//! The async client, over `embedded_io_async::Read + Write`: the blocking client's twin.

use embedded_io_async::{Read, Write};

crate::client::client! {
    /// An async QMP client over a serial link (anything `embedded_io_async::Read + Write`),
    /// with the same methods as the blocking [`crate::Client`], as `async fn`s: the same
    /// [`qmp_proto::Driver`] loop, its link calls awaited.
    ///
    /// Dropping one of its futures midway (e.g. in a `select` with a timer) is safe: the
    /// command is abandoned when the next one starts. If it was cut off while being written,
    /// the rest of it is dropped and the resync byte goes before the next command, so the
    /// server discards the fragment; if it was written whole, its reply is dropped when it
    /// comes; if nothing of it was written, it is forgotten.
    pub struct Client;
    async: [async];
    await: [.await];
}
