//! The blocking client, over `embedded_io::Read + Write`.

use embedded_io::{Read, Write};

crate::client::client! {
    /// A blocking QMP client over a serial link (anything `embedded_io::Read + Write`): the
    /// [`qmp_proto::Driver`]'s I/O loop with blocking reads and writes.
    ///
    /// Const generics size everything it owns (see the crate documentation for what each
    /// costs):
    /// - `RX`: the receive buffer, which bounds the largest message (greeting, reply or
    ///   event);
    /// - `TX`: the transmit buffer, which bounds the largest command, and is reused as
    ///   scratch space for unescaping strings in a `return` value;
    /// - `EV`: the event queue in bytes (19 bytes per event plus its name and `data`);
    /// - `N`: the in-flight table (2 lets one abandoned command wait for its reply while the
    ///   next one runs).
    ///
    /// Method families:
    /// - **Handshake**: [`handshake`](Self::handshake), or its steps
    ///   [`wait_greeting`](Self::wait_greeting) and [`negotiate`](Self::negotiate).
    /// - **Commands**, one at a time, each waiting for its reply: [`execute`](Self::execute)
    ///   (typed), [`execute_raw`](Self::execute_raw) (the `return` value's JSON),
    ///   [`execute_command`](Self::execute_command) (the core's typed commands), and the
    ///   out-of-band twins [`execute_oob`](Self::execute_oob),
    ///   [`execute_oob_raw`](Self::execute_oob_raw).
    /// - **Events**: [`next_event`](Self::next_event) and [`wait_event`](Self::wait_event)
    ///   (by name), each waiting up to a timeout.
    /// - **Getters**: [`state`](Self::state), [`server`](Self::server),
    ///   [`config`](Self::config), [`dropped_messages`](Self::dropped_messages),
    ///   [`discarded_replies`](Self::discarded_replies), [`events_lost`](Self::events_lost),
    ///   [`link`](Self::link), [`link_mut`](Self::link_mut),
    ///   [`into_inner`](Self::into_inner).
    ///
    /// Time only moves when the link's `read` or `write` returns: see the crate
    /// documentation.
    pub struct Client;
    async: [];
    await: [];
}
