//! The guest agent client on tokio: [`crate::tokio::Client`]'s driver, drive task and
//! cancel-safe commands in the agent dialect (see [`crate::agent`]).
//!
//! ```no_run
//! # async fn run() -> qmp_std::Result<()> {
//! use qmp_std::agent::tokio::Agent;
//! use qmp_std::agent_commands::GuestGetOsinfo;
//! let agent = Agent::connect_unix("/tmp/qga.sock").await?; // syncs
//! let os = agent.execute(&GuestGetOsinfo).await?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::time::Duration;

use ::tokio::net::{ToSocketAddrs, UnixStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Command;
use crate::agent::random_sync_id;
use crate::client::Options;
use crate::drive::Request;
use crate::error::Result;
use crate::tokio::{Client, ClientBuilder};

/// An async client for QEMU's guest agent, `Clone + Send + Sync` like
/// [`crate::tokio::Client`]: synced at connect, and again by the driver after any command
/// times out. Commands without a success reply ([`NO_SUCCESS_RESPONSE`](crate::agent_commands::NO_SUCCESS_RESPONSE)) succeed when the
/// agent stays silent for [`NO_REPLY_TIMEOUT`](crate::agent::NO_REPLY_TIMEOUT) (or the `_timeout` form's timeout).
#[derive(Debug, Clone)]
pub struct Agent {
    client: Client,
}

impl Agent {
    /// Connects to an agent's Unix socket with default options and syncs.
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_unix_with(Options::default(), path).await
    }

    /// [`connect_unix`](Self::connect_unix) with `options` (timeouts, sizes).
    pub async fn connect_unix_with(options: Options, path: impl AsRef<Path>) -> Result<Self> {
        let client = ClientBuilder::with_options(options)
            .connect_unix_as(path, Some(random_sync_id()))
            .await?;
        Ok(Self { client })
    }

    /// Connects to an agent's TCP socket (a QEMU chardev) with `options` and syncs.
    pub async fn connect_tcp_with(options: Options, addr: impl ToSocketAddrs) -> Result<Self> {
        let client = ClientBuilder::with_options(options)
            .connect_tcp_as(addr, Some(random_sync_id()))
            .await?;
        Ok(Self { client })
    }

    /// Syncs over a connected Unix stream with `options`.
    pub async fn handshake_unix(options: Options, stream: UnixStream) -> Result<Self> {
        let client = ClientBuilder::with_options(options)
            .handshake_unix_as(stream, Some(random_sync_id()))
            .await?;
        Ok(Self { client })
    }

    /// Opens the agent's serial device (a tty, or a pty) in raw mode with `options` and
    /// syncs: the host side of an `isa-serial` agent, or a virtio-serial port's device.
    pub async fn open_serial_with(options: Options, path: impl AsRef<Path>) -> Result<Self> {
        let client = ClientBuilder::with_options(options)
            .open_serial_as(path, Some(random_sync_id()))
            .await?;
        Ok(Self { client })
    }

    /// Syncs over a serial device already open ([`crate::serial::Serial`], e.g. a pty's
    /// master side) with `options`.
    pub async fn handshake_serial(options: Options, serial: crate::serial::Serial) -> Result<Self> {
        let client = ClientBuilder::with_options(options)
            .handshake_serial_as(serial, Some(random_sync_id()))
            .await?;
        Ok(Self { client })
    }

    command_verbs! {
        in_band: [] [async] [.await] call,
        execute: {
            ///
            /// A command without a success reply ([`NO_SUCCESS_RESPONSE`](crate::agent_commands::NO_SUCCESS_RESPONSE)) succeeds when the
            /// agent stays silent until its deadline: [`NO_REPLY_TIMEOUT`](crate::agent::NO_REPLY_TIMEOUT), or the
            /// `_timeout` form's.
        }
    }

    /// The verbs' primitive: the tokio client's (the driver gives a command without a success
    /// reply its silence window, [`NO_REPLY_TIMEOUT`](crate::agent::NO_REPLY_TIMEOUT) unless
    /// it has a deadline of its own).
    async fn call<A: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        request: Request<'_, A>,
    ) -> Result<T> {
        self.client.call(request).await
    }

    /// Syncs again, as the blocking agent's `resync` does: 0xFF and `guest-sync-delimited`
    /// with the next id (every reply before its answer is dropped), then a `guest-sync` of a
    /// fresh value of its own, which is answered only after the sync: when it returns, the
    /// agent and this client are in step. Within the command timeout.
    pub async fn resync(&self) -> Result<()> {
        self.client.queue_resync();
        let value = random_sync_id();
        self.execute(&crate::agent_commands::GuestSync { id: value })
            .await
            .map(drop)
    }

    /// Replies dropped so far (stale ones, parse errors our 0xFF caused, late ones).
    pub fn dropped_messages(&self) -> u64 {
        self.client.dropped_messages()
    }

    /// Ends the connection.
    pub fn close(&self) {
        self.client.close();
    }
}
