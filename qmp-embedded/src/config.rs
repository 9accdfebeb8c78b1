//! Client settings.

use core::time::Duration;

/// How long the handshake and a command (writing it included) may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Client settings: the command timeout, what a 0-byte read means, and the session's own
/// [`qmp_proto::Config`].
///
/// ```
/// use core::time::Duration;
/// let config = qmp_embedded::Config::new()
///     .timeout(Some(Duration::from_millis(500)))
///     .zero_read_is_eof(false);
/// assert_eq!(config.command_timeout(), Some(Duration::from_millis(500)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    timeout: Option<Duration>,
    zero_read_is_eof: bool,
    session: qmp_proto::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    /// The defaults: a [`DEFAULT_TIMEOUT`] of 5 s, `Ok(0)` from a read is the end of the link,
    /// and [`qmp_proto::Config::default`].
    pub fn new() -> Self {
        Self {
            timeout: Some(DEFAULT_TIMEOUT),
            zero_read_is_eof: true,
            session: qmp_proto::Config::default(),
        }
    }

    /// How long the handshake, or a command from its first byte written to its reply, may
    /// take (`None`: forever).
    ///
    /// Deadlines are only checked when the link's `read` or `write` returns; see the crate
    /// documentation on links that block.
    pub const fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether a read that returns `Ok(0)` means the link has ended (the `embedded-io`
    /// contract, and the default). Turn it off for a serial driver that returns `Ok(0)` when
    /// its own read timeout expires: such reads then only let the client check its deadlines.
    pub const fn zero_read_is_eof(mut self, eof: bool) -> Self {
        self.zero_read_is_eof = eof;
        self
    }

    /// The session's settings (in-band limit, nesting limit, negotiation checks).
    ///
    /// The default, [`qmp_proto::Config::default`], puts an id on every command. Over a slow
    /// serial link, or to send QEMU less to read (it reads one byte per main-loop pass),
    /// [`untagged_when_alone`](qmp_proto::Config::untagged_when_alone) leaves the id off a
    /// command that is alone in flight, 7 to 12 bytes each; qmp-std does so by default.
    ///
    /// ```
    /// let config = qmp_embedded::Config::new()
    ///     .session(qmp_proto::Config::default().untagged_when_alone(true));
    /// # let _ = config;
    /// ```
    pub const fn session(mut self, session: qmp_proto::Config) -> Self {
        self.session = session;
        self
    }

    /// The timeout in force.
    pub const fn command_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether `Ok(0)` from a read ends the link.
    pub const fn is_zero_read_eof(&self) -> bool {
        self.zero_read_is_eof
    }

    /// The session's settings.
    pub const fn session_config(&self) -> qmp_proto::Config {
        self.session
    }

    /// The [`qmp_proto::DriverConfig`] the clients run with: the timeout bounds each
    /// command (and the handshake, which the client bounds itself), capabilities are
    /// negotiated when the caller asks ([`negotiate`](crate::Client::negotiate) or
    /// [`handshake`](crate::Client::handshake)), and no stall timeout.
    pub fn driver_config(&self) -> qmp_proto::DriverConfig {
        qmp_proto::DriverConfig {
            session: self.session,
            negotiate: false,
            oob: false,
            handshake_timeout: None,
            command_timeout: self.timeout,
            stall_timeout: None,
            zero_read_is_eof: self.zero_read_is_eof,
        }
    }
}
