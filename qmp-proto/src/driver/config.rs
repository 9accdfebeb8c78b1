//! What a driver is configured with and sends with: its buffers, its settings, a
//! command's options and deadline, and what the server said of itself.

use core::time::Duration;

use crate::commands::VersionTriple;
use crate::message::Greeting;
use crate::session::Config;
use crate::time::Instant;

/// The byte that makes QEMU drop a half-written command (see [`Driver`](crate::Driver), "Writes").
pub const RESYNC: u8 = 0x01;

/// What the server said about itself in its greeting, and what was negotiated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServerInfo {
    /// The QEMU version.
    pub version: VersionTriple,
    /// The distribution's package string, unescaped (cut at [`ServerInfo::PACKAGE_MAX`]
    /// bytes; may be empty).
    pub package: heapless::String<{ ServerInfo::PACKAGE_MAX }>,
    /// Whether the server offers out-of-band execution.
    pub oob_offered: bool,
    /// Whether out-of-band execution was negotiated.
    pub oob_enabled: bool,
}

impl ServerInfo {
    /// The longest package string kept.
    pub const PACKAGE_MAX: usize = 48;

    /// What `g` says (for an adapter that reads the greeting itself); `oob_enabled` is
    /// `false` until negotiated.
    pub fn from_greeting(g: &Greeting<'_>) -> Self {
        let mut package = heapless::String::new();
        for c in g.version.package.chars().map_while(Result::ok) {
            if package.push(c).is_err() {
                break;
            }
        }
        Self {
            version: VersionTriple {
                major: g.version.major,
                minor: g.version.minor,
                micro: g.version.micro,
            },
            package,
            oob_offered: g.capabilities.oob(),
            oob_enabled: false,
        }
    }
}

/// A command's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Deadline {
    /// [`DriverConfig::command_timeout`] from now.
    #[default]
    Default,
    /// No deadline.
    Never,
    /// This long from now.
    After(Duration),
    /// At this instant.
    At(Instant),
}

impl Deadline {
    /// `Some(timeout)` → [`After`](Self::After), `None` → [`Never`](Self::Never).
    pub fn from_timeout(timeout: Option<Duration>) -> Self {
        timeout.map_or(Self::Never, Self::After)
    }
}

/// How a command is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SendOptions {
    /// `exec-oob` rather than `execute`.
    pub oob: bool,
    /// Its deadline.
    pub deadline: Deadline,
    /// The adapter attaches something to the command's first byte (file descriptors over
    /// a Unix socket): its bytes are handed out as their own [`Io::Write`](crate::Io::Write) with
    /// `attach: true`. Needs an empty transmit buffer ([`SendError::Busy`](crate::SendError::Busy) otherwise).
    pub attach: bool,
}

impl SendOptions {
    /// In band, with the default deadline.
    pub const fn new() -> Self {
        Self {
            oob: false,
            deadline: Deadline::Default,
            attach: false,
        }
    }

    /// Out of band (`exec-oob`).
    pub const fn oob(mut self, oob: bool) -> Self {
        self.oob = oob;
        self
    }

    /// With this deadline.
    pub const fn deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = deadline;
        self
    }

    /// With an attachment (see [`SendOptions::attach`](crate::SendOptions::attach)).
    pub const fn attach(mut self, attach: bool) -> Self {
        self.attach = attach;
        self
    }
}

/// Driver settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DriverConfig {
    /// The session's settings.
    pub session: Config,
    /// Negotiate capabilities as soon as the greeting arrives (default `true`). Off: the
    /// handshake ends at the greeting, and [`Driver::negotiate`](crate::Driver::negotiate) does it later.
    pub negotiate: bool,
    /// Ask for `oob` when the server offers it (default `false`).
    pub oob: bool,
    /// Bound on the greeting and negotiation together (default 10 s).
    pub handshake_timeout: Option<Duration>,
    /// A command's deadline when sent with [`Deadline::Default`] (default 30 s).
    pub command_timeout: Option<Duration>,
    /// Give up on the connection when nothing arrives for this long while commands wait
    /// (default `None`).
    pub stall_timeout: Option<Duration>,
    /// Whether a read of 0 bytes is the end of the stream (default `true`; off for serial
    /// drivers that return 0 when their own read timeout expires).
    pub zero_read_is_eof: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            session: Config::default(),
            negotiate: true,
            oob: false,
            handshake_timeout: Some(Duration::from_secs(10)),
            command_timeout: Some(Duration::from_secs(30)),
            stall_timeout: None,
            zero_read_is_eof: true,
        }
    }
}
