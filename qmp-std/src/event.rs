//! Owned events, as the client queues them.

use serde_json::Value;

use crate::commands::EventKind;
use crate::error::{Error, Result};

pub use qmp_proto::Timestamp;

/// An asynchronous event from the server, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name, e.g. `SHUTDOWN`.
    pub name: String,
    /// The `data` member; `None` for events without one (`STOP`, `RESUME`, `POWERDOWN`).
    pub data: Option<Value>,
    /// When the server emitted it (host wall clock; `-1`/`-1` if QEMU could not read it).
    pub timestamp: Timestamp,
}

impl Event {
    pub(crate) fn from_view(e: &qmp_proto::Event<'_>) -> Self {
        let name = owned_str(e.name);
        crate::trace::event_received(&name, &e.timestamp);
        Self {
            name,
            // The framer validated the JSON; serde_json only fails on QEMU's non-finite
            // numbers, which such data then keeps as its raw text.
            data: e.data.map(|d| {
                serde_json::from_str(d.as_json())
                    .unwrap_or_else(|_| Value::String(d.as_json().to_owned()))
            }),
            timestamp: e.timestamp,
        }
    }

    /// Whether this is an `E` event.
    pub fn is<E: EventKind>(&self) -> bool {
        self.name == E::NAME
    }

    /// Decodes the data of an `E` event (an absent `data` member decodes as `{}`).
    ///
    /// Fails with [`Error::Decode`] if the data does not fit `E::Data`; check the name first
    /// with [`Event::is`].
    ///
    /// `E` is any [`EventKind`] whose data owns its strings (decodes whatever its lifetime
    /// parameter), such as those in [`commands::events`](crate::commands::events).
    pub fn data_as<E>(&self) -> Result<E::Data<'static>>
    where
        E: EventKind,
        for<'de> E::Data<'de>: DeserializeOwned,
    {
        let result = match &self.data {
            Some(data) => E::Data::<'static>::deserialize(data),
            None => E::Data::<'static>::deserialize(&Value::Object(Default::default())),
        };
        result.map_err(|e| {
            let json = self
                .data
                .as_ref()
                .map_or_else(|| "{}".to_owned(), Value::to_string);
            Error::Decode(crate::error::DecodeError::new(e, json))
        })
    }
}

use serde::Deserialize as _;
use serde::de::DeserializeOwned;

/// A borrowed, still-escaped JSON string as an owned `String`.
pub(crate) fn owned_str(s: qmp_proto::JsonStr<'_>) -> String {
    match s.as_plain() {
        Some(plain) => plain.to_owned(),
        None => s.to_string(),
    }
}
