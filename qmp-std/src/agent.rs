//! A client for QEMU's guest agent (`qemu-ga`), on the same driver and I/O loop as
//! [`Client`].
//!
//! The agent speaks QMP's wire format without QMP's session: no greeting, no negotiation,
//! no events; its channel (virtio-serial, a serial line) outlives each host connection, so a
//! client first syncs (a 0xFF byte, then `guest-sync-delimited` with a random id, and every
//! reply before the one returning that id is dropped); `guest-shutdown` and
//! `guest-suspend-*` send no reply when they succeed. The rules, with their sources in QEMU,
//! are in [`qmp_proto::Driver::new_agent`]'s documentation; the driver applies them all, as
//! it does QMP's for [`Client`].
//!
//! ```no_run
//! use qmp_std::agent::Agent;
//! use qmp_std::agent_commands::{GuestGetHostName, GuestPing};
//! let mut agent = Agent::connect_unix("/tmp/qga.sock")?; // syncs
//! agent.execute(&GuestPing)?;
//! let name = agent.execute(&GuestGetHostName)?.host_name;
//! let (status, stdout, _stderr) = agent.run("/bin/uname", ["-r"])?;
//! # Ok::<(), qmp_std::Error>(())
//! ```
//!
//! Where the agent is: `qemu-ga -m unix-listen -p PATH` (a Unix socket,
//! [`Agent::connect_unix`]); a guest's virtio-serial or isa-serial port, reached on the host
//! through the QEMU chardev behind it (`-chardev socket,path=PATH,server=on,wait=off,id=qga0
//! -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0`, again
//! [`Agent::connect_unix`], or [`Agent::connect_tcp`] for a TCP chardev); the far end of a
//! serial line or a pty ([`Agent::open_serial`]); or any [`Stream`] ([`Agent::new`]).

use std::hash::{BuildHasher, RandomState};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use qmp_proto::{Driver, Instant};

use crate::Command;
use crate::agent_commands::{
    GuestExec, GuestExecStatus, GuestExecStatusInfo, GuestFileClose, GuestFileOpen, GuestFileRead,
    GuestFileWrite,
};
use crate::client::{Client, ClientBuilder, Options};
use crate::drive::{EventList, HeapBuffer, Request, StdDriver, driver_config};
use crate::error::{Error, Result};
use crate::serial::Serial;
use crate::stream::Stream;

pub use qmp_proto::NO_REPLY_TIMEOUT;

/// A fresh random sync id from the operating system's hasher keys (std's `RandomState`),
/// the time and a counter; 63 bits, as the agent's `int` needs.
pub fn random_sync_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    RandomState::new().hash_one((n, time, std::process::id())) & (i64::MAX as u64)
}

/// The driver of an agent connection. The agent sends no events: anything that reads as
/// one is dropped (and counted as lost), never queued.
pub(crate) fn new_driver(options: &Options, sync: u64) -> StdDriver<EventList> {
    Driver::new_agent(
        HeapBuffer::new(options.initial_buffer, options.max_reply_size),
        HeapBuffer::new(4096, usize::MAX),
        EventList::new(Some(0)),
        driver_config(options, options.max_in_flight),
        sync,
        Instant::ZERO,
    )
}

/// What [`Client::server`]-like getters say for an agent, which sends no greeting: version
/// 0.0.0, no package, no capabilities.
pub(crate) fn server_info() -> qmp_proto::ServerInfo {
    qmp_proto::ServerInfo {
        version: qmp_proto::commands::VersionTriple {
            major: 0,
            minor: 0,
            micro: 0,
        },
        package: Default::default(),
        oob_offered: false,
        oob_enabled: false,
    }
}

#[cfg(feature = "tokio")]
pub mod tokio;

/// A blocking client for QEMU's guest agent: [`Client`]'s driver and I/O loop in the agent
/// dialect (see the [module documentation](self)).
///
/// Method families, named as [`Client`]'s:
/// - **Connecting** (each syncs, within [`Options::connect_timeout`]):
///   [`connect_unix`](Self::connect_unix), [`connect_tcp`](Self::connect_tcp),
///   [`open_serial`](Self::open_serial), [`new`](Self::new) (any stream), and the same with
///   options through [`AgentBuilder`].
/// - **Commands**: [`execute`](Self::execute) (typed, see [`crate::agent_commands`]),
///   [`execute_raw`](Self::execute_raw), and their `_timeout` forms. A command the agent
///   answers only on failure ([`NO_SUCCESS_RESPONSE`](crate::agent_commands::NO_SUCCESS_RESPONSE)) succeeds when the agent stays silent
///   for [`NO_REPLY_TIMEOUT`] (or the `_timeout` form's timeout), or the channel
///   closes after it.
/// - **Syncing**: [`resync`](Self::resync). The driver also resyncs by itself after any
///   command times out.
/// - **Helpers**: [`run`](Self::run) (exec and wait for the exit status and output),
///   [`read_file`](Self::read_file), [`write_file`](Self::write_file).
pub struct Agent<S> {
    client: Client<S>,
}

impl<S: Stream> std::fmt::Debug for Agent<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("syncs", &self.client.driver().agent_syncs())
            .field("in_flight", &self.client.driver().in_flight())
            .finish_non_exhaustive()
    }
}

/// Builds an [`Agent`] with [`Options`] (the QMP-only ones, `oob`, `negotiate` and the
/// event queue, do not apply).
#[derive(Debug, Clone, Default)]
pub struct AgentBuilder {
    options: Options,
}

impl AgentBuilder {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from `options`.
    pub fn with_options(options: Options) -> Self {
        Self { options }
    }

    shared_option_setters!();

    /// Connects to an agent's Unix socket (`qemu-ga -m unix-listen`, or a QEMU chardev
    /// socket behind a guest's agent port) and syncs.
    pub fn connect_unix(self, path: impl AsRef<Path>) -> Result<Agent<UnixStream>> {
        let start = std::time::Instant::now();
        let stream = crate::connect::connect_unix(path.as_ref(), self.options.connect_timeout)
            .map_err(crate::connect::error)?;
        self.start(stream, start)
    }

    /// Connects to an agent's TCP socket (a QEMU TCP chardev behind a guest's agent port)
    /// and syncs.
    pub fn connect_tcp(self, addr: impl ToSocketAddrs) -> Result<Agent<TcpStream>> {
        let start = std::time::Instant::now();
        let stream = crate::connect::connect_tcp(addr, self.options.connect_timeout)
            .map_err(crate::connect::error)?;
        stream.set_nodelay(true)?;
        self.start(stream, start)
    }

    /// Opens a serial device with the agent on its far end (raw mode, see [`Serial`]) and
    /// syncs.
    pub fn open_serial(self, path: impl AsRef<Path>) -> Result<Agent<Serial>> {
        let start = std::time::Instant::now();
        let serial = Serial::open(path)?;
        self.start(serial, start)
    }

    /// Syncs with the agent over a stream you connected.
    pub fn handshake<S: Stream>(self, stream: S) -> Result<Agent<S>> {
        self.start(stream, std::time::Instant::now())
    }

    fn start<S: Stream>(self, stream: S, start: std::time::Instant) -> Result<Agent<S>> {
        let client = ClientBuilder::with_options(self.options).start(
            stream,
            start,
            Some(random_sync_id()),
        )?;
        Ok(Agent { client })
    }
}

impl Agent<UnixStream> {
    /// Connects to an agent's Unix socket with default options; see
    /// [`AgentBuilder::connect_unix`].
    pub fn connect_unix(path: impl AsRef<Path>) -> Result<Self> {
        AgentBuilder::new().connect_unix(path)
    }
}

impl Agent<TcpStream> {
    /// Connects to an agent's TCP socket with default options; see
    /// [`AgentBuilder::connect_tcp`].
    pub fn connect_tcp(addr: impl ToSocketAddrs) -> Result<Self> {
        AgentBuilder::new().connect_tcp(addr)
    }
}

impl Agent<Serial> {
    /// Opens a serial device with default options; see [`AgentBuilder::open_serial`].
    pub fn open_serial(path: impl AsRef<Path>) -> Result<Self> {
        AgentBuilder::new().open_serial(path)
    }
}

impl<S: Stream> Agent<S> {
    /// Syncs with the agent over a connected stream, with default options.
    pub fn new(stream: S) -> Result<Self> {
        AgentBuilder::new().handshake(stream)
    }

    command_verbs! {
        in_band: [mut] [] [] call,
        execute: {
            ///
            /// A command without a success reply ([`NO_SUCCESS_RESPONSE`](crate::agent_commands::NO_SUCCESS_RESPONSE)) succeeds when the
            /// agent stays silent until its deadline: [`NO_REPLY_TIMEOUT`], or the
            /// `_timeout` form's.
        }
    }

    /// Syncs again: 0xFF, then `guest-sync-delimited` with a fresh id, dropping every reply
    /// before its own, within the connect timeout.
    pub fn resync(&mut self) -> Result<()> {
        self.client.resync()
    }

    /// Syncs completed on this connection (the first at connect, one per
    /// [`resync`](Self::resync), one after each command that timed out and the agent
    /// answered again).
    pub fn syncs(&self) -> u64 {
        self.client.driver().agent_syncs()
    }

    /// Replies dropped so far: stale ones found in the channel, parse errors the sync's
    /// 0xFF caused, late replies to commands that timed out.
    pub fn dropped_messages(&self) -> u64 {
        self.client.dropped_messages()
    }

    /// Changes the deadline of commands sent from now on.
    pub fn set_command_timeout(&mut self, timeout: Option<Duration>) {
        self.client.set_command_timeout(timeout);
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The stream.
    pub fn stream(&self) -> &S {
        self.client.stream()
    }

    /// Gives back the stream.
    pub fn into_inner(self) -> S {
        self.client.into_inner()
    }

    /// Runs `path` with `args` in the guest (`guest-exec` with its output captured), polls
    /// `guest-exec-status` until it exits (every 20 ms, within the command timeout) and
    /// returns its status with its standard output and error decoded.
    pub fn run(
        &mut self,
        path: &str,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<(GuestExecStatusInfo, Vec<u8>, Vec<u8>)> {
        let pid = self.execute(&GuestExec::new(path, args))?.pid;
        let deadline = self
            .client
            .options()
            .command_timeout
            .map(|t| std::time::Instant::now() + t);
        loop {
            let status = self.execute(&GuestExecStatus { pid })?;
            if status.exited {
                let (out, err) = (status.stdout()?, status.stderr()?);
                return Ok((status, out, err));
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(Error::Timeout(qmp_proto::Expired::Command));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Shares the connection between threads: a [`SharedClient`](crate::SharedClient) in the
    /// agent dialect (its reader thread routes each reply to its caller; the driver still
    /// resyncs after a timeout). A command without a success reply
    /// ([`NO_SUCCESS_RESPONSE`](crate::agent_commands::NO_SUCCESS_RESPONSE)) completes in
    /// silence there as here: at its own deadline, or after [`NO_REPLY_TIMEOUT`].
    pub fn into_shared(self) -> Result<crate::SharedClient>
    where
        S: crate::SplitStream,
    {
        crate::SharedClient::from_client(self.client)
    }

    /// Reads a whole file of the guest (`guest-file-open`, `-read` until the end, `-close`).
    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>> {
        let handle = self.execute(&GuestFileOpen {
            path: path.into(),
            mode: Some("r".into()),
        })?;
        let mut data = Vec::new();
        let read = loop {
            match self.execute(&GuestFileRead {
                handle,
                count: Some(48 << 10),
            }) {
                Ok(chunk) => {
                    match chunk.data() {
                        Ok(bytes) => data.extend_from_slice(&bytes),
                        Err(e) => break Err(e),
                    }
                    if chunk.eof || chunk.count == 0 {
                        break Ok(data);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let closed = self.execute(&GuestFileClose { handle });
        let data = read?;
        closed?;
        Ok(data)
    }

    /// Writes a whole file of the guest, replacing it (`guest-file-open` with mode `"w"`,
    /// `-write`, `-close`).
    pub fn write_file(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let handle = self.execute(&GuestFileOpen {
            path: path.into(),
            mode: Some("w".into()),
        })?;
        let mut written = Ok(());
        for chunk in bytes.chunks(48 << 10) {
            if let Err(e) = self.execute(&GuestFileWrite::new(handle, chunk)) {
                written = Err(e);
                break;
            }
        }
        let closed = self.execute(&GuestFileClose { handle });
        written?;
        closed.map(|_| ())
    }

    /// The verbs' primitive: the client's (the driver gives a command without a success reply
    /// its silence window, [`NO_REPLY_TIMEOUT`] unless it has a deadline of its own).
    fn call<A: Serialize + ?Sized, T: DeserializeOwned>(
        &mut self,
        request: Request<'_, A>,
    ) -> Result<T> {
        self.client.call(request)
    }
}
