//! The thread-shared reconnecting client: [`SharedReconnecting`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::DEFAULT_EVENT_CAPACITY;
use super::subscribers::{Read, Subscriber, Subscribers};
use super::{Next, ReconnectPolicy, Supervisor, WhileDown};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::shared::{SharedClient, Subscription};

/// Makes a new shared connection (with the handshake).
type ConnectFn = Box<dyn FnMut() -> Result<SharedClient> + Send>;
/// A hook run on each new connection of a [`SharedReconnecting`] (not the first), after
/// its handshake: to subscribe again or read state again. An error counts as a failed
/// attempt.
pub type SharedHook = Box<dyn FnMut(&SharedClient) -> Result<()> + Send>;

struct Inner {
    current: Mutex<Option<SharedClient>>,
    /// Signalled when a connection comes up, or the client gives up.
    changed: Condvar,
    /// Live subscribers' queues (a dropped subscription's goes at the next event).
    subscribers: Subscribers<Condvar>,
    policy: ReconnectPolicy,
    wait_timeout: Mutex<Option<Duration>>,
    closing: AtomicBool,
    gave_up: AtomicBool,
}

impl Inner {
    fn current(&self) -> MutexGuard<'_, Option<SharedClient>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Stops the supervisor thread when the last handle goes.
struct Owner {
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::Release);
        if let Some(client) = self.inner.current().take() {
            client.close();
        }
        self.inner.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A [`SharedClient`] that connects again when its connection ends, shared by threads
/// (`Clone + Send + Sync`); see the [module documentation](super).
///
/// A thread watches the connection: when it ends, it connects again as the
/// [`ReconnectPolicy`] says, runs the hook, and puts [`Error::Reconnected`] once in every
/// [`SharedSubscription`], before the new connection's events.
#[derive(Clone)]
pub struct SharedReconnecting {
    owner: Arc<Owner>,
}

impl fmt::Debug for SharedReconnecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedReconnecting")
            .field("connected", &self.is_connected())
            .field("policy", &self.inner().policy)
            .finish_non_exhaustive()
    }
}

impl SharedReconnecting {
    /// Connects with `connect` (an error here is returned: the first connection must
    /// work), and reconnects with it as `policy` says, running `hook` on each new
    /// connection (not the first).
    pub fn new(
        mut connect: impl FnMut() -> Result<SharedClient> + Send + 'static,
        policy: ReconnectPolicy,
        hook: Option<SharedHook>,
    ) -> Result<Self> {
        let client = connect()?;
        let events = client.subscribe();
        let inner = Arc::new(Inner {
            current: Mutex::new(Some(client)),
            changed: Condvar::new(),
            subscribers: Subscribers::new(DEFAULT_EVENT_CAPACITY),
            policy,
            wait_timeout: Mutex::new(None),
            closing: AtomicBool::new(false),
            gave_up: AtomicBool::new(false),
        });
        let thread = {
            let inner = Arc::clone(&inner);
            let connect: ConnectFn = Box::new(connect);
            std::thread::Builder::new()
                .name("qmp-reconnect".into())
                .spawn(move || supervise(&inner, connect, hook, events))?
        };
        Ok(Self {
            owner: Arc::new(Owner {
                inner,
                thread: Some(thread),
            }),
        })
    }

    fn inner(&self) -> &Inner {
        &self.owner.inner
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        self.inner()
            .current()
            .as_ref()
            .is_some_and(|c| !c.is_closed())
    }

    /// Sets how long a command issued while down waits for the connection under
    /// [`WhileDown::Wait`] (default `None`: as long as it takes).
    pub fn set_wait_timeout(&self, timeout: Option<Duration>) {
        *self
            .inner()
            .wait_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = timeout;
    }

    /// The current connection's client, waiting for one as the policy says.
    pub fn client(&self) -> Result<SharedClient> {
        let inner = self.inner();
        let timeout = *inner.wait_timeout.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut current = inner.current();
        loop {
            if let Some(client) = current.as_ref().filter(|c| !c.is_closed()) {
                return Ok(client.clone());
            }
            if inner.policy.while_down == WhileDown::FailFast
                || inner.gave_up.load(Ordering::Acquire)
                || inner.closing.load(Ordering::Acquire)
            {
                return Err(Error::Disconnected);
            }
            current = match deadline {
                None => inner
                    .changed
                    .wait(current)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Timeout(qmp_proto::Expired::Command));
                    }
                    inner
                        .changed
                        .wait_timeout(current, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Runs a command by name on the current connection (see
    /// [`SharedClient::execute_raw`]).
    pub fn execute_raw(&self, name: &str, arguments: &Value) -> Result<Value> {
        self.client()?.execute_raw(name, arguments)
    }

    /// Runs a typed command on the current connection (see [`SharedClient::execute`]).
    pub fn execute<C>(&self, command: &C) -> Result<C::Output<'static>>
    where
        C: crate::Command,
        for<'de> C::Output<'de>: serde::de::DeserializeOwned,
    {
        self.client()?.execute(command)
    }

    /// A subscriber to every event from now on, across reconnections, with each gap
    /// reported once in place ([`Error::Reconnected`]).
    pub fn subscribe(&self) -> SharedSubscription {
        SharedSubscription {
            queue: self.inner().subscribers.subscribe(),
        }
    }
}

/// The events of a [`SharedReconnecting`] client, across reconnections: `Ok(event)`,
/// `Err(`[`Error::Reconnected`]`)` once per gap, `Err(`[`Error::Lagged`]`)` where this
/// subscriber fell behind, and [`Error::Disconnected`] once the client gave up.
pub struct SharedSubscription {
    queue: Arc<Subscriber<Condvar>>,
}

impl fmt::Debug for SharedSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSubscription").finish_non_exhaustive()
    }
}

impl SharedSubscription {
    /// The next event or gap within `timeout` ([`Error::Timeout`] if none comes).
    pub fn next_event(&self, timeout: Duration) -> Result<Event> {
        match self.queue.wait(timeout) {
            Read::Item(item) => item,
            Read::Empty => Err(Error::Timeout(qmp_proto::Expired::Event)),
            Read::Ended => Err(Error::Disconnected),
        }
    }
}

/// The supervisor thread: forwards the connection's events; when it ends, reconnects as
/// the [`Supervisor`] says, and reports the gap.
fn supervise(
    inner: &Inner,
    mut connect: ConnectFn,
    mut hook: Option<SharedHook>,
    events: Subscription,
) {
    let mut supervisor = Supervisor::new(inner.policy);
    let mut events = events;
    loop {
        for item in events.by_ref() {
            match item {
                Ok(event) => inner.subscribers.event(&event),
                Err(Error::Lagged { missed }) => inner.subscribers.lost(missed),
                Err(_) => break,
            }
        }
        inner.current().take();
        if inner.closing.load(Ordering::Acquire) {
            break;
        }
        supervisor.handle_disconnect(Instant::now());
        loop {
            if inner.closing.load(Ordering::Acquire) {
                return end(inner);
            }
            let now = Instant::now();
            match supervisor.poll(now, None, true) {
                Next::Go => break,
                Next::Fail => {
                    inner.gave_up.store(true, Ordering::Release);
                    return end(inner);
                }
                Next::WaitUntil(at) => {
                    // Sleeps, but wakes when the client is dropped.
                    let current = inner.current();
                    let _ = inner
                        .changed
                        .wait_timeout(current, at.saturating_duration_since(now));
                }
                Next::Connect => {
                    let attempt = connect().and_then(|client| {
                        let events = client.subscribe();
                        if let Some(hook) = &mut hook {
                            hook(&client)?;
                        }
                        Ok((client, events))
                    });
                    match attempt {
                        Ok((client, new_events)) => {
                            if let Some(gap) = supervisor.handle_connected(Instant::now()) {
                                inner.subscribers.gap(gap);
                            }
                            events = new_events;
                            *inner.current() = Some(client);
                            inner.changed.notify_all();
                            break;
                        }
                        Err(_) => supervisor.handle_failed(Instant::now()),
                    }
                }
            }
        }
    }
    end(inner);
}

/// The client gave up or was dropped: subscribers see the end.
fn end(inner: &Inner) {
    inner.changed.notify_all();
    inner.subscribers.end();
}
