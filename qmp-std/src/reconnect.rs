//! Clients that survive a QEMU restart: reconnection as an opt-in layer.
//!
//! QEMU restarts (an upgrade, a crash, a migration target taking over) and its monitor
//! socket comes back; a plain client stays closed. [`Reconnecting`] (blocking),
//! [`SharedReconnecting`] (threads) and, with the `tokio` feature,
//! `reconnect::tokio::Reconnecting` wrap a client and a way to connect: when the
//! connection ends they connect again, with bounded exponential backoff and jitter, redo the
//! handshake, call your hook (to subscribe to what you need, or read state again), and tell
//! you through the event stream that there was a gap: [`Error::Reconnected`], once per gap,
//! with how long the client was down, in place among the events (the next events are the new
//! QEMU's, from its handshake on). Commands issued while down fail at once with
//! [`Error::Disconnected`] or wait for the connection, within their deadline
//! ([`WhileDown`]). Commands in flight when the connection ended fail as they always do
//! ([`Error::Disconnected`]); none waits forever.
//!
//! The rules (when to try again, what a command does while down, when a gap is reported)
//! are one sans-IO state machine, [`Supervisor`], that every reconnecting client runs with
//! its own I/O and clock.
//!
//! Each subscriber of [`SharedReconnecting`] and of the tokio one holds up to
//! [`DEFAULT_EVENT_CAPACITY`] unread events, with the overflow rule of every client
//! ([`qmp_proto::EventQueue`]'s): past it, the newest are dropped and counted, and
//! [`Error::Lagged`] comes once where the gap is. A reconnection is never dropped: it takes
//! its place even in a full queue, or comes right after the loss it fell in.
//!
//! A second greeting on one link (QEMU restarted at the far end of a serial line) needs no
//! reconnection: the core starts the session over by itself (commands in flight fail with
//! [`Error::ServerRestarted`]).

use std::fmt;
use std::time::{Duration, Instant};

mod shared;
mod subscribers;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use shared::{SharedHook, SharedReconnecting, SharedSubscription};
pub use subscribers::DEFAULT_EVENT_CAPACITY;

use serde_json::Value;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::stream::Stream;

/// What a command issued while the connection is down does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhileDown {
    /// Fails at once with [`Error::Disconnected`] (the default).
    #[default]
    FailFast,
    /// Waits for the connection to come back, within the command's deadline (then
    /// [`Error::Timeout`]).
    Wait,
}

/// When and how a reconnecting client connects again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectPolicy {
    /// The wait before the first attempt after the connection ended (default 50 ms).
    pub first_delay: Duration,
    /// The longest wait between attempts (default 2 s): each wait doubles up to this.
    pub max_delay: Duration,
    /// Each wait is shortened by a random part of up to this fraction (default 0.25), so
    /// that many clients of one host do not knock together; waits never exceed
    /// [`max_delay`](Self::max_delay).
    pub jitter: f64,
    /// Stop trying after being down this long (default `None`: never); then every call
    /// fails with [`Error::Disconnected`].
    pub give_up_after: Option<Duration>,
    /// What commands issued while down do (default [`WhileDown::FailFast`]).
    pub while_down: WhileDown,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            jitter: 0.25,
            give_up_after: None,
            while_down: WhileDown::FailFast,
        }
    }
}

impl ReconnectPolicy {
    /// The wait before attempt `attempt` (0 for the first), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.first_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The longest a client stays down while QEMU is back: the longest wait plus one
    /// connect (bounded by the connect timeout), for tests and monitoring.
    pub fn bound(&self, connect_timeout: Duration) -> Duration {
        self.max_delay + connect_timeout
    }
}

/// A gap in the connection, as reported once it is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// From the connection's end to the new handshake's.
    pub downtime: Duration,
    /// Connect attempts made (the successful one included).
    pub attempts: u32,
}

impl From<Gap> for Error {
    fn from(gap: Gap) -> Self {
        Error::Reconnected {
            downtime: gap.downtime,
            attempts: gap.attempts,
        }
    }
}

/// What a command (or a wait for events) may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The connection is up: go ahead.
    Go,
    /// Try to connect now.
    Connect,
    /// Wait until then, and ask again.
    WaitUntil(Instant),
    /// Fail with [`Error::Disconnected`].
    Fail,
}

/// The reconnection rules, sans I/O: told what happened and when, it says what to do next.
/// Every reconnecting client runs one.
#[derive(Debug, Clone)]
pub struct Supervisor {
    policy: ReconnectPolicy,
    down: Option<Down>,
    rng: u64,
}

#[derive(Debug, Clone, Copy)]
struct Down {
    since: Instant,
    attempts: u32,
    next_try: Instant,
}

impl Supervisor {
    /// Connected, with `policy`.
    pub fn new(policy: ReconnectPolicy) -> Self {
        // Jitter only needs to differ between clients: the agent's random sync ids do.
        Self {
            policy,
            down: None,
            rng: crate::agent::random_sync_id() | 1,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &ReconnectPolicy {
        &self.policy
    }

    /// Whether the connection is down.
    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }

    /// The connection ended at `now` (a second report while down changes nothing).
    pub fn handle_disconnect(&mut self, now: Instant) {
        if self.down.is_none() {
            crate::trace::reconnect("connection down", None, 0);
            self.down = Some(Down {
                since: now,
                attempts: 0,
                next_try: now + self.jittered(0),
            });
        }
    }

    /// A connect attempt failed at `now`: the next one is scheduled.
    pub fn handle_failed(&mut self, now: Instant) {
        if let Some(mut down) = self.down {
            down.attempts += 1;
            crate::trace::reconnect("reconnect attempt failed", None, down.attempts);
            down.next_try = now + self.jittered(down.attempts);
            self.down = Some(down);
        }
    }

    /// Connected again at `now`: the gap, once (`None` if there was none).
    pub fn handle_connected(&mut self, now: Instant) -> Option<Gap> {
        let down = self.down.take()?;
        let gap = Gap {
            downtime: now.saturating_duration_since(down.since),
            attempts: down.attempts + 1,
        };
        crate::trace::reconnect("reconnected", Some(gap.downtime), gap.attempts);
        Some(gap)
    }

    /// What a caller may do at `now`, for a command whose deadline is `deadline`
    /// (`waits`: whether it may wait at all; an event reader always may).
    pub fn poll(&self, now: Instant, deadline: Option<Instant>, waits: bool) -> Next {
        let Some(down) = self.down else {
            return Next::Go;
        };
        if self
            .policy
            .give_up_after
            .is_some_and(|limit| now.saturating_duration_since(down.since) >= limit)
        {
            return Next::Fail;
        }
        if now >= down.next_try {
            return Next::Connect;
        }
        if !waits || deadline.is_some_and(|d| d <= now) {
            return Next::Fail;
        }
        Next::WaitUntil(deadline.map_or(down.next_try, |d| d.min(down.next_try)))
    }

    /// The wait before attempt `attempt`, shortened by up to the jitter fraction.
    fn jittered(&mut self, attempt: u32) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let delay = self.policy.delay(attempt);
        let fraction = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        delay.mul_f64(1.0 - self.policy.jitter.clamp(0.0, 1.0) * fraction)
    }
}

/// A hook run after each reconnect, on the new client, before anything else uses it: to
/// subscribe again, or read state the events could not tell. An error from it counts as a
/// failed attempt.
pub type Hook<S> = Box<dyn FnMut(&mut Client<S>) -> Result<()> + Send>;

/// Makes a new connection (with the handshake), for [`Reconnecting`].
pub type Connect<S> = Box<dyn FnMut() -> Result<Client<S>> + Send>;

/// A blocking [`Client`] that connects again when its connection ends; see the
/// [module documentation](self).
///
/// It reconnects when a call finds the connection gone: commands issued while down fail
/// fast or wait ([`ReconnectPolicy::while_down`]), and [`next_event`](Self::next_event)
/// waits for the connection and then reports the gap ([`Error::Reconnected`]) once before
/// the new QEMU's events.
///
/// ```no_run
/// use qmp_std::reconnect::{ReconnectPolicy, Reconnecting, WhileDown};
/// let policy = ReconnectPolicy { while_down: WhileDown::Wait, ..ReconnectPolicy::default() };
/// let mut qmp = Reconnecting::new(|| qmp_std::Client::connect_unix("/tmp/qmp.sock"), policy)?
///     .on_reconnect(|qmp| qmp.execute_raw("query-status", &serde_json::json!({})).map(drop));
/// loop {
///     match qmp.next_event(std::time::Duration::from_secs(60)) {
///         Ok(event) => println!("{}", event.name),
///         Err(qmp_std::Error::Reconnected { downtime, .. }) => println!("back after {downtime:?}"),
///         Err(e) => eprintln!("{e}"),
///     }
/// }
/// # Ok::<(), qmp_std::Error>(())
/// ```
pub struct Reconnecting<S> {
    client: Option<Client<S>>,
    connect: Connect<S>,
    hook: Option<Hook<S>>,
    supervisor: Supervisor,
    /// A gap to report through the event stream, before the next event.
    gap: Option<Gap>,
    command_timeout: Option<Duration>,
}

impl<S> fmt::Debug for Reconnecting<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconnecting")
            .field("connected", &self.client.is_some())
            .field("supervisor", &self.supervisor)
            .finish_non_exhaustive()
    }
}

impl<S: Stream> Reconnecting<S> {
    /// Connects with `connect` (an error here is returned: the first connection must work)
    /// and reconnects with it as `policy` says.
    pub fn new(
        connect: impl FnMut() -> Result<Client<S>> + Send + 'static,
        policy: ReconnectPolicy,
    ) -> Result<Self> {
        let mut connect: Connect<S> = Box::new(connect);
        let client = connect()?;
        let command_timeout = client.options().command_timeout;
        Ok(Self {
            client: Some(client),
            connect,
            hook: None,
            supervisor: Supervisor::new(policy),
            gap: None,
            command_timeout,
        })
    }

    /// Runs `hook` on each new connection, after its handshake (not on the first).
    pub fn on_reconnect(
        mut self,
        hook: impl FnMut(&mut Client<S>) -> Result<()> + Send + 'static,
    ) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// Whether the connection is up now (as far as the client knows).
    pub fn is_connected(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The client of the current connection, if any.
    pub fn client(&mut self) -> Option<&mut Client<S>> {
        self.client.as_mut()
    }

    /// Runs a command by name (see [`Client::execute_raw`]) on the current connection,
    /// reconnecting first if it is down and the policy lets this command wait.
    pub fn execute_raw(&mut self, name: &str, arguments: &Value) -> Result<Value> {
        self.with_client(true, |c| c.execute_raw(name, arguments))
    }

    /// Runs a typed command (see [`Client::execute`]); like
    /// [`execute_raw`](Self::execute_raw).
    pub fn execute<C>(&mut self, command: &C) -> Result<C::Output<'static>>
    where
        C: crate::Command,
        for<'de> C::Output<'de>: serde::de::DeserializeOwned,
    {
        self.with_client(true, |c| c.execute(command))
    }

    /// The next event, waiting up to `timeout`, across reconnections: after a gap,
    /// [`Error::Reconnected`] comes once, then the new connection's events.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(gap) = self.gap.take() {
                return Err(gap.into());
            }
            let result = self.with_client_until(Some(deadline), false, |c| {
                c.next_event(deadline.saturating_duration_since(Instant::now()))
            });
            match result {
                // The connection ended: wait for the next one (or the deadline).
                Err(e) if e.is_disconnect() && Instant::now() < deadline => continue,
                other => return other,
            }
        }
    }

    /// Runs `f` on the current connection; see [`with_client_until`](Self::with_client_until).
    fn with_client<T>(
        &mut self,
        command: bool,
        f: impl FnMut(&mut Client<S>) -> Result<T>,
    ) -> Result<T> {
        let deadline = self.command_timeout.map(|t| Instant::now() + t);
        self.with_client_until(deadline, command, f)
    }

    /// Runs `f` on the current connection once it is up (connecting as the supervisor
    /// says, waiting at most until `deadline`). A connection that ended during `f` is
    /// noted, and `f`'s error returned.
    fn with_client_until<T>(
        &mut self,
        deadline: Option<Instant>,
        command: bool,
        mut f: impl FnMut(&mut Client<S>) -> Result<T>,
    ) -> Result<T> {
        if let Some(client) = &mut self.client
            && client.is_closed()
        {
            self.supervisor.handle_disconnect(Instant::now());
            // The events that came before the end are still delivered.
            if !command && client.queued_events() > 0 {
                return f(client);
            }
            self.client = None;
        }
        loop {
            let now = Instant::now();
            let waits = !command || self.supervisor.policy().while_down == WhileDown::Wait;
            match self.supervisor.poll(now, deadline, waits) {
                Next::Go => break,
                Next::Fail if command && deadline.is_some_and(|d| d <= now) && waits => {
                    return Err(Error::Timeout(qmp_proto::Expired::Command));
                }
                Next::Fail if !command && deadline.is_some_and(|d| d <= now) => {
                    return Err(Error::Timeout(qmp_proto::Expired::Event));
                }
                Next::Fail => return Err(Error::Disconnected),
                Next::WaitUntil(at) => std::thread::sleep(at.saturating_duration_since(now)),
                Next::Connect => {
                    self.try_connect();
                    // An event reader hears of the gap before the new connection's events.
                    if !command && let Some(gap) = self.gap.take() {
                        return Err(gap.into());
                    }
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return Err(Error::Disconnected);
        };
        let result = f(client);
        if client.is_closed() {
            self.supervisor.handle_disconnect(Instant::now());
        }
        result
    }

    /// One connect attempt, with the hook.
    fn try_connect(&mut self) {
        let attempt = (self.connect)().and_then(|mut client| {
            if let Some(hook) = &mut self.hook {
                hook(&mut client)?;
            }
            Ok(client)
        });
        let now = Instant::now();
        match attempt {
            Ok(client) => {
                self.client = Some(client);
                self.gap = self.supervisor.handle_connected(now);
            }
            Err(_) => self.supervisor.handle_failed(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_bound_and_jitter_only_shortens_them() {
        let policy = ReconnectPolicy::default();
        assert_eq!(policy.delay(0), Duration::from_millis(50));
        assert_eq!(policy.delay(1), Duration::from_millis(100));
        assert_eq!(policy.delay(5), Duration::from_millis(1600));
        assert_eq!(policy.delay(6), Duration::from_secs(2));
        assert_eq!(policy.delay(1000), Duration::from_secs(2));
        let mut s = Supervisor::new(policy);
        for attempt in 0..40 {
            let d = s.jittered(attempt);
            let full = policy.delay(attempt);
            assert!(d <= full && d >= full.mul_f64(0.75), "{d:?} for {full:?}");
        }
    }

    #[test]
    fn a_gap_is_reported_once_with_its_downtime() {
        let mut s = Supervisor::new(ReconnectPolicy::default());
        let t0 = Instant::now();
        assert_eq!(s.poll(t0, None, true), Next::Go);
        assert_eq!(s.handle_connected(t0), None);
        s.handle_disconnect(t0);
        s.handle_disconnect(t0 + Duration::from_secs(1));
        // Before the first wait is over: fail fast, or wait.
        assert_eq!(s.poll(t0, None, false), Next::Fail);
        assert!(matches!(s.poll(t0, None, true), Next::WaitUntil(_)));
        let soon = t0 + Duration::from_millis(10);
        assert_eq!(s.poll(t0, Some(soon), true), Next::WaitUntil(soon));
        assert_eq!(
            s.poll(t0 + Duration::from_millis(50), None, true),
            Next::Connect
        );
        s.handle_failed(t0 + Duration::from_millis(50));
        // The second wait is at least 75 ms.
        assert!(matches!(
            s.poll(t0 + Duration::from_millis(120), None, true),
            Next::WaitUntil(_)
        ));
        let back = t0 + Duration::from_millis(300);
        assert_eq!(
            s.handle_connected(back),
            Some(Gap {
                downtime: Duration::from_millis(300),
                attempts: 2
            })
        );
        assert_eq!(s.handle_connected(back), None);
        assert_eq!(s.poll(back, None, false), Next::Go);
    }

    #[test]
    fn it_gives_up_when_told_to() {
        let mut s = Supervisor::new(ReconnectPolicy {
            give_up_after: Some(Duration::from_secs(1)),
            ..ReconnectPolicy::default()
        });
        let t0 = Instant::now();
        s.handle_disconnect(t0);
        assert_eq!(s.poll(t0 + Duration::from_secs(1), None, true), Next::Fail);
    }
}
