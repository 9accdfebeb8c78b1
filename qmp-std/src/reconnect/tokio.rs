//! The async reconnecting client (features `tokio`): [`Reconnecting`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use ::tokio::sync::watch;
use serde_json::Value;

use super::subscribers::{Read, Subscriber, Subscribers};
use super::{Next, ReconnectPolicy, Supervisor, WhileDown};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::hub::WakeReady;
use crate::tokio::Client;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ConnectFn = Arc<dyn Fn() -> BoxFuture<Result<Client>> + Send + Sync>;
type HookFn = Arc<dyn Fn(Client) -> BoxFuture<Result<()>> + Send + Sync>;

pub use super::DEFAULT_EVENT_CAPACITY;

/// Builds a [`Reconnecting`] client: how to connect, the policy, the hook.
pub struct Builder {
    connect: ConnectFn,
    hook: Option<HookFn>,
    policy: ReconnectPolicy,
    capacity: usize,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Sets the reconnection policy (default [`ReconnectPolicy::default`]).
    pub fn policy(mut self, policy: ReconnectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Runs `hook` on each new connection after its handshake (not on the first), before
    /// commands use it; its events are already being collected. An error counts as a
    /// failed attempt.
    pub fn on_reconnect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |c| Box::pin(hook(c))));
        self
    }

    /// How many unread items each subscriber holds before it lags (default
    /// [`DEFAULT_EVENT_CAPACITY`]).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Connects (an error here is returned: the first connection must work) and starts the
    /// task that watches the connection and reconnects.
    pub async fn start(self) -> Result<Reconnecting> {
        let client = (self.connect)().await?;
        let events = client.subscribe();
        let (current, _) = watch::channel(Some(client.clone()));
        let shared = Arc::new(Shared {
            current,
            subscribers: Subscribers::new(self.capacity),
            policy: self.policy,
            command_timeout: Mutex::new(None),
        });
        let task = ::tokio::spawn(supervise(
            Arc::clone(&shared),
            self.connect,
            self.hook,
            client,
            events,
        ));
        Ok(Reconnecting {
            shared,
            owner: Arc::new(Owner(task)),
        })
    }
}

struct Shared {
    /// The current connection's client; `None` while down.
    current: watch::Sender<Option<Client>>,
    subscribers: Subscribers<WakeReady>,
    policy: ReconnectPolicy,
    /// The deadline of a command waiting for the connection ([`WhileDown::Wait`]).
    command_timeout: Mutex<Option<Duration>>,
}

/// Stops the supervisor task when the last handle goes.
struct Owner(::tokio::task::JoinHandle<()>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An async QMP client that connects again when its connection ends; see the
/// [module documentation](super). `Clone + Send + Sync`, like [`Client`].
///
/// A task watches the connection: when it ends, it connects again as the
/// [`ReconnectPolicy`] says (backoff, jitter), runs the hook, and publishes
/// [`Error::Reconnected`] to every subscriber once, before the new connection's events.
///
/// ```no_run
/// # async fn f() -> qmp_std::Result<()> {
/// use qmp_std::reconnect::tokio::Reconnecting;
/// let qmp = Reconnecting::builder(|| qmp_std::tokio::Client::connect_unix("/tmp/qmp.sock"))
///     .on_reconnect(|qmp| async move { qmp.execute_raw("query-status", &serde_json::json!({})).await.map(drop) })
///     .start()
///     .await?;
/// let mut events = qmp.subscribe();
/// while let Some(item) = events.next().await {
///     match item {
///         Ok(event) => println!("{}", event.name),
///         Err(qmp_std::Error::Reconnected { downtime, .. }) => println!("back after {downtime:?}"),
///         Err(e) => eprintln!("{e}"),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Reconnecting {
    shared: Arc<Shared>,
    owner: Arc<Owner>,
}

impl fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconnecting")
            .field("connected", &self.is_connected())
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl Reconnecting {
    /// A builder that connects with `connect` (e.g. `|| Client::connect_unix(path)`).
    pub fn builder<F, Fut>(connect: F) -> Builder
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Client>> + Send + 'static,
    {
        Builder {
            connect: Arc::new(move || Box::pin(connect())),
            hook: None,
            policy: ReconnectPolicy::default(),
            capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        self.shared
            .current
            .borrow()
            .as_ref()
            .is_some_and(|c| !c.is_closed())
    }

    /// The current connection's client, waiting for one as the policy says for a command
    /// issued while down: [`WhileDown::FailFast`] fails at once with
    /// [`Error::Disconnected`], [`WhileDown::Wait`] waits up to `timeout` (then
    /// [`Error::Timeout`]).
    pub async fn client(&self, timeout: Option<Duration>) -> Result<Client> {
        let mut current = self.shared.current.subscribe();
        if let Some(client) = current.borrow_and_update().clone()
            && !client.is_closed()
        {
            return Ok(client);
        }
        if self.shared.policy.while_down == WhileDown::FailFast {
            return Err(Error::Disconnected);
        }
        let up = current.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_closed()));
        let found = match timeout {
            Some(t) => ::tokio::time::timeout(t, up)
                .await
                .map_err(|_| Error::Timeout(qmp_proto::Expired::Command))?,
            None => up.await,
        };
        match found {
            Ok(client) => Ok(client.clone().expect("waited for a client")),
            // The supervisor gave up.
            Err(_) => Err(Error::Disconnected),
        }
    }

    /// Sets the bound on waiting for the connection of
    /// [`execute_raw`](Self::execute_raw) and [`execute`](Self::execute) under
    /// [`WhileDown::Wait`] (default `None`: the command's own timeout does not cover it).
    pub fn set_wait_timeout(&self, timeout: Option<Duration>) {
        *self
            .shared
            .command_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = timeout;
    }

    fn wait_timeout(&self) -> Option<Duration> {
        *self
            .shared
            .command_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a command by name on the current connection (see [`Client::execute_raw`]).
    pub async fn execute_raw(&self, name: &str, arguments: &Value) -> Result<Value> {
        self.client(self.wait_timeout())
            .await?
            .execute_raw(name, arguments)
            .await
    }

    /// Runs a typed command on the current connection (see [`Client::execute`]).
    pub async fn execute<C>(&self, command: &C) -> Result<C::Output<'static>>
    where
        C: crate::Command,
        for<'de> C::Output<'de>: serde::de::DeserializeOwned,
    {
        self.client(self.wait_timeout())
            .await?
            .execute(command)
            .await
    }

    /// A subscriber to every event from now on, across reconnections, with each gap
    /// reported once in place ([`Error::Reconnected`]).
    pub fn subscribe(&self) -> ReconnectingEvents {
        ReconnectingEvents {
            queue: self.shared.subscribers.subscribe(),
            _owner: Arc::clone(&self.owner),
        }
    }
}

/// The events of a [`Reconnecting`] client, across reconnections: `Ok(event)`;
/// `Err(`[`Error::Reconnected`]`)` once per gap; `Err(`[`Error::Lagged`]`)` when this
/// subscriber fell behind; `None` once the client gave up (or was dropped).
pub struct ReconnectingEvents {
    queue: Arc<Subscriber<WakeReady>>,
    _owner: Arc<Owner>,
}

impl fmt::Debug for ReconnectingEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectingEvents").finish_non_exhaustive()
    }
}

impl ReconnectingEvents {
    /// The next event or gap.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        std::future::poll_fn(|cx| {
            match self
                .queue
                .read(|waiting| *waiting = Some(cx.waker().clone()))
            {
                Read::Item(item) => Poll::Ready(Some(item)),
                Read::Ended => Poll::Ready(None),
                Read::Empty => Poll::Pending,
            }
        })
        .await
    }

    /// [`next`](Self::next) within `timeout`: [`Error::Timeout`] if nothing comes,
    /// [`Error::Disconnected`] once the client gave up.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event> {
        match ::tokio::time::timeout(timeout, self.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => Err(Error::Disconnected),
            Err(_) => Err(Error::Timeout(qmp_proto::Expired::Event)),
        }
    }
}

/// The supervisor task: forwards the connection's events; when it ends, reconnects as the
/// [`Supervisor`] says, and reports the gap.
async fn supervise(
    shared: Arc<Shared>,
    connect: ConnectFn,
    hook: Option<HookFn>,
    client: Client,
    mut events: crate::tokio::EventStream,
) {
    // However this task ends (it gave up, or it was aborted), subscribers see the end.
    let _end = EndGuard(Arc::clone(&shared));
    let mut supervisor = Supervisor::new(shared.policy);
    // `shared.current` holds the connection's client; dropping it there closes it.
    drop(client);
    loop {
        // Up: forward until the connection ends.
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => shared.subscribers.event(&event),
                Err(Error::Lagged { missed }) => shared.subscribers.lost(missed),
                Err(_) => break,
            }
        }
        shared.current.send_replace(None);
        supervisor.handle_disconnect(Instant::now());
        // Down: connect again.
        loop {
            let now = Instant::now();
            match supervisor.poll(now, None, true) {
                Next::Go => break,
                Next::Fail => return,
                Next::WaitUntil(at) => {
                    ::tokio::time::sleep_until(::tokio::time::Instant::from_std(at)).await;
                }
                Next::Connect => match attempt(&connect, hook.as_ref()).await {
                    Ok((new, new_events)) => {
                        let gap = supervisor.handle_connected(Instant::now());
                        // The gap first, then the new connection's events (already
                        // collected since its handshake).
                        if let Some(gap) = gap {
                            shared.subscribers.gap(gap);
                        }
                        events = new_events;
                        shared.current.send_replace(Some(new));
                        break;
                    }
                    Err(_) => supervisor.handle_failed(Instant::now()),
                },
            }
        }
    }
}

/// Ends every subscription when the supervisor task ends.
struct EndGuard(Arc<Shared>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.subscribers.end();
    }
}

/// One connect attempt: the handshake, a subscription from the start, the hook.
async fn attempt(
    connect: &ConnectFn,
    hook: Option<&HookFn>,
) -> Result<(Client, crate::tokio::EventStream)> {
    let client = connect().await?;
    let events = client.subscribe();
    if let Some(hook) = hook {
        hook(client.clone()).await?;
    }
    Ok((client, events))
}
