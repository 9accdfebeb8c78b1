//! `tracing` spans and events (feature `tracing`): the connect and handshake, each command
//! (a span, and its name, id, duration and outcome: see [`CommandTrace`]), reconnects, and how late each event is delivered. Without the
//! feature every macro here expands to nothing and [`CommandTrace`] is an empty type, so
//! the clients pay nothing.
//!
//! Targets: `qmp_std::connect`, `qmp_std::command`, `qmp_std::event`,
//! `qmp_std::reconnect`.

/// `tracing::event!` with the feature; nothing without it.
#[cfg(feature = "tracing")]
macro_rules! trace_event {
    ($($args:tt)*) => { ::tracing::event!($($args)*) };
}

/// `tracing::event!` with the feature; nothing without it.
#[cfg(not(feature = "tracing"))]
macro_rules! trace_event {
    ($($args:tt)*) => {};
}

/// One command call, from its start to its outcome: a span `command` (fields `name` and,
/// once sent, `id`) with a TRACE event `sent` when it went out and an event `command` at the
/// end (`name`, `id`, `duration_us`, `outcome`, and `error` when it failed; DEBUG when it
/// succeeded, INFO when it failed). `id` is 0 for a command that never went out.
#[derive(Debug)]
pub(crate) struct CommandTrace<'a> {
    #[cfg(feature = "tracing")]
    name: &'a str,
    #[cfg(feature = "tracing")]
    id: u64,
    #[cfg(feature = "tracing")]
    span: ::tracing::Span,
    #[cfg(feature = "tracing")]
    start: std::time::Instant,
    #[cfg(not(feature = "tracing"))]
    name: std::marker::PhantomData<&'a str>,
}

impl<'a> CommandTrace<'a> {
    /// A call of command `name` starts.
    #[inline(always)]
    pub(crate) fn start(name: &'a str) -> Self {
        #[cfg(feature = "tracing")]
        {
            Self {
                name,
                id: 0,
                span: ::tracing::span!(
                    target: "qmp_std::command",
                    ::tracing::Level::DEBUG,
                    "command",
                    name,
                    id = ::tracing::field::Empty
                ),
                start: std::time::Instant::now(),
            }
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = name;
            Self {
                name: std::marker::PhantomData,
            }
        }
    }

    /// The command went out with `id`.
    #[inline(always)]
    pub(crate) fn sent(&mut self, id: u64) {
        #[cfg(feature = "tracing")]
        {
            self.id = id;
            self.span.record("id", id);
            trace_event!(
                target: "qmp_std::command",
                parent: &self.span,
                ::tracing::Level::TRACE,
                name = self.name,
                id,
                "sent"
            );
        }
        let _ = id;
    }

    /// The call ended with `result`.
    #[inline(always)]
    pub(crate) fn finish<T>(self, result: &crate::Result<T>) {
        #[cfg(feature = "tracing")]
        {
            let micros = self.start.elapsed().as_micros() as u64;
            match result {
                Ok(_) => trace_event!(
                    target: "qmp_std::command",
                    parent: &self.span,
                    ::tracing::Level::DEBUG,
                    name = self.name,
                    id = self.id,
                    duration_us = micros,
                    outcome = "ok",
                    "command"
                ),
                Err(e) => trace_event!(
                    target: "qmp_std::command",
                    parent: &self.span,
                    ::tracing::Level::INFO,
                    name = self.name,
                    id = self.id,
                    duration_us = micros,
                    outcome = "error",
                    error = %e,
                    "command"
                ),
            }
        }
        let _ = result;
    }
}

/// An event was taken off the wire: how late it is, by the host's wall clock (QEMU's
/// timestamp to now), when QEMU could read its clock.
#[inline(always)]
pub(crate) fn event_received(name: &str, timestamp: &qmp_proto::Timestamp) {
    // The clock is read only when someone listens (this runs for every event).
    #[cfg(feature = "tracing")]
    if timestamp.seconds >= 0
        && ::tracing::enabled!(target: "qmp_std::event", ::tracing::Level::TRACE)
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let at = timestamp.seconds * 1_000_000 + timestamp.microseconds;
        trace_event!(
            target: "qmp_std::event",
            ::tracing::Level::TRACE,
            event = name,
            lag_us = now - at,
            "event"
        );
    }
    let _ = (name, timestamp);
}

/// A handshake that began (with connecting) at `start` ended: the server's version and what
/// was negotiated, or the error.
#[inline(always)]
pub(crate) fn handshake(
    start: std::time::Instant,
    result: Result<&qmp_proto::ServerInfo, &crate::Error>,
) {
    #[cfg(feature = "tracing")]
    {
        let micros = start.elapsed().as_micros() as u64;
        match result {
            Ok(server) => trace_event!(
                target: "qmp_std::connect",
                ::tracing::Level::INFO,
                qemu = %server.version,
                oob = server.oob_enabled,
                duration_us = micros,
                "connected"
            ),
            Err(e) => trace_event!(
                target: "qmp_std::connect",
                ::tracing::Level::WARN,
                error = %e,
                duration_us = micros,
                "connect failed"
            ),
        }
    }
    let _ = (start, result);
}

/// A reconnecting client's connection ended (`down`), a connect attempt failed
/// (`failed`), or it is back after `downtime`.
#[inline(always)]
pub(crate) fn reconnect(what: &'static str, downtime: Option<std::time::Duration>, attempts: u32) {
    trace_event!(
        target: "qmp_std::reconnect",
        ::tracing::Level::INFO,
        downtime_us = downtime.map_or(0, |d| d.as_micros() as u64),
        attempts,
        "{what}"
    );
    let _ = (what, downtime, attempts);
}
