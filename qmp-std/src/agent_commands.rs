//! Typed guest agent commands, with field names from `qemu-ga` 7.2's schema
//! (`qga/qapi-schema.json`), checked against the real agent (`tests/tests/qga.rs`).
//!
//! Each is a [`Command`]: run it with [`Agent::execute`](crate::agent::Agent::execute).
//! Byte data travels base64-encoded (`guest-exec` output, `guest-file-read/write`): the
//! result types decode it ([`GuestExecStatusInfo::stdout`], [`GuestFileReadResult::data`]) and
//! [`GuestFileWrite::new`] encodes it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::Command;
use crate::commands::{Empty, no_argument_commands};
use crate::error::{Error, Result};

pub use qmp_proto::NO_SUCCESS_RESPONSE;

no_argument_commands! {
    /// `guest-ping`: is the agent there?
    GuestPing = "guest-ping" => Empty;
    /// `guest-info`: the agent's version and commands.
    GuestInfo = "guest-info" => GuestAgentInfo;
    /// `guest-get-osinfo`: the guest's operating system.
    GuestGetOsinfo = "guest-get-osinfo" => GuestOsInfo;
    /// `guest-get-host-name`: the guest's host name.
    GuestGetHostName = "guest-get-host-name" => GuestHostName;
    /// `guest-get-time`: the guest's clock, in nanoseconds since the Unix epoch.
    GuestGetTime = "guest-get-time" => i64;
    /// `guest-fsfreeze-status`: whether the guest's file systems are frozen.
    GuestFsfreezeStatus = "guest-fsfreeze-status" => FsfreezeStatus;
    /// `guest-fsfreeze-freeze`: freezes the guest's file systems; returns how many.
    GuestFsfreezeFreeze = "guest-fsfreeze-freeze" => i64;
    /// `guest-fsfreeze-thaw`: thaws them; returns how many.
    GuestFsfreezeThaw = "guest-fsfreeze-thaw" => i64;
    /// `guest-network-get-interfaces`: the guest's network interfaces.
    GuestNetworkGetInterfaces = "guest-network-get-interfaces" => Vec<GuestNetworkInterface>;
    /// `guest-get-users`: the users logged in to the guest.
    GuestGetUsers = "guest-get-users" => Vec<GuestUser>;
}

macro_rules! command {
    ($ty:ident = $name:literal => $out:ty) => {
        impl Command for $ty {
            const NAME: &'static str = $name;
            type Output<'de> = $out;
        }
    };
}

/// `guest-sync`: echoes `id` back (without the 0xFF sentinel; the clients sync with
/// `guest-sync-delimited` by themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct GuestSync {
    /// The integer to echo (at most `i64::MAX`).
    pub id: u64,
}
command!(GuestSync = "guest-sync" => u64);

/// `guest-sync-delimited`: echoes `id` back, the reply preceded by the 0xFF sentinel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct GuestSyncDelimited {
    /// The integer to echo (at most `i64::MAX`).
    pub id: u64,
}
command!(GuestSyncDelimited = "guest-sync-delimited" => u64);

/// `guest-set-time`: sets the guest's clock (`time` in nanoseconds since the epoch), or with
/// `None` sets it from the guest's hardware clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct GuestSetTime {
    /// Nanoseconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
}
command!(GuestSetTime = "guest-set-time" => Empty);

/// `guest-shutdown`: powers the guest down, halts or reboots it. The agent sends no reply
/// when it succeeds ([`NO_SUCCESS_RESPONSE`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct GuestShutdown {
    /// `"powerdown"` (the default), `"halt"` or `"reboot"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}
command!(GuestShutdown = "guest-shutdown" => Empty);

/// `guest-exec`: starts a program in the guest; poll it with [`GuestExecStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestExec {
    /// The program.
    pub path: String,
    /// Its arguments (not including the program name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arg: Option<Vec<String>>,
    /// Its environment, `NAME=value` each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Its standard input, base64 (see [`GuestExec::input`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_data: Option<String>,
    /// Capture its standard output and error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_output: Option<bool>,
}
command!(GuestExec = "guest-exec" => GuestExecPid);

impl GuestExec {
    /// Runs `path` with `args`, capturing its output.
    pub fn new(path: impl Into<String>, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let arg: Vec<String> = args.into_iter().map(Into::into).collect();
        Self {
            path: path.into(),
            arg: (!arg.is_empty()).then_some(arg),
            capture_output: Some(true),
            ..Self::default()
        }
    }

    /// With `bytes` as its standard input.
    pub fn input(mut self, bytes: &[u8]) -> Self {
        self.input_data = Some(STANDARD.encode(bytes));
        self
    }
}

/// What `guest-exec` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuestExecPid {
    /// The process id in the guest.
    pub pid: i64,
}

/// `guest-exec-status`: whether a program started by [`GuestExec`] has exited, and its
/// output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct GuestExecStatus {
    /// The process id `guest-exec` returned.
    pub pid: i64,
}
command!(GuestExecStatus = "guest-exec-status" => GuestExecStatusInfo);

/// What `guest-exec-status` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestExecStatusInfo {
    /// The program has exited (the other fields are set only then).
    pub exited: bool,
    /// Its exit code, if it exited normally.
    pub exitcode: Option<i64>,
    /// The signal that ended it, if one did.
    pub signal: Option<i64>,
    /// Its standard output, base64 (see [`GuestExecStatusInfo::stdout`]).
    pub out_data: Option<String>,
    /// Its standard error, base64.
    pub err_data: Option<String>,
    /// The output was cut at the agent's limit.
    pub out_truncated: Option<bool>,
    /// The error output was cut at the agent's limit.
    pub err_truncated: Option<bool>,
}

impl GuestExecStatusInfo {
    /// Its standard output, decoded (empty if none was captured).
    pub fn stdout(&self) -> Result<Vec<u8>> {
        decode(self.out_data.as_deref())
    }

    /// Its standard error, decoded.
    pub fn stderr(&self) -> Result<Vec<u8>> {
        decode(self.err_data.as_deref())
    }
}

/// `guest-file-open`: opens a file in the guest; returns its handle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct GuestFileOpen {
    /// The file's path in the guest.
    pub path: String,
    /// An `fopen(3)` mode (default `"r"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}
command!(GuestFileOpen = "guest-file-open" => i64);

/// `guest-file-read`: reads from an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct GuestFileRead {
    /// The handle `guest-file-open` returned.
    pub handle: i64,
    /// At most this many bytes (the agent's default is 4 KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}
command!(GuestFileRead = "guest-file-read" => GuestFileReadResult);

/// What `guest-file-read` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestFileReadResult {
    /// Bytes read.
    pub count: i64,
    /// The bytes, base64 (see [`GuestFileReadResult::data`]).
    pub buf_b64: String,
    /// The end of the file was reached.
    pub eof: bool,
}

impl GuestFileReadResult {
    /// The bytes read, decoded.
    pub fn data(&self) -> Result<Vec<u8>> {
        decode(Some(&self.buf_b64))
    }
}

/// `guest-file-write`: writes to an open file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestFileWrite {
    /// The handle.
    pub handle: i64,
    /// The bytes, base64.
    pub buf_b64: String,
    /// Write only this many of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}
command!(GuestFileWrite = "guest-file-write" => GuestFileWriteResult);

impl GuestFileWrite {
    /// Writes `bytes` to `handle`.
    pub fn new(handle: i64, bytes: &[u8]) -> Self {
        Self {
            handle,
            buf_b64: STANDARD.encode(bytes),
            count: None,
        }
    }
}

/// What `guest-file-write` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuestFileWriteResult {
    /// Bytes written.
    pub count: i64,
    /// The end of the file was reached.
    pub eof: bool,
}

/// Where `guest-file-seek` counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Whence {
    /// The start of the file.
    Set,
    /// The current position.
    Cur,
    /// The end of the file.
    End,
}

/// `guest-file-seek`: moves in an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct GuestFileSeek {
    /// The handle.
    pub handle: i64,
    /// The offset from `whence`.
    pub offset: i64,
    /// Where to count from.
    pub whence: Whence,
}
command!(GuestFileSeek = "guest-file-seek" => GuestFileSeekResult);

/// What `guest-file-seek` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuestFileSeekResult {
    /// The new position.
    pub position: i64,
    /// The end of the file was reached.
    pub eof: bool,
}

/// `guest-file-flush`: flushes an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct GuestFileFlush {
    /// The handle.
    pub handle: i64,
}
command!(GuestFileFlush = "guest-file-flush" => Empty);

/// `guest-file-close`: closes an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct GuestFileClose {
    /// The handle.
    pub handle: i64,
}
command!(GuestFileClose = "guest-file-close" => Empty);

/// What `guest-info` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuestAgentInfo {
    /// The agent's version (`"7.2.22"`).
    pub version: String,
    /// Its commands.
    pub supported_commands: Vec<GuestAgentCommandInfo>,
}

/// One of the agent's commands, as `guest-info` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestAgentCommandInfo {
    /// Its name.
    pub name: String,
    /// Whether it is enabled (disabled by `-b`, or while file systems are frozen).
    pub enabled: bool,
    /// Whether it replies when it succeeds.
    pub success_response: bool,
}

/// What `guest-get-osinfo` returns; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestOsInfo {
    /// `uname -r`.
    pub kernel_release: Option<String>,
    /// `uname -v`.
    pub kernel_version: Option<String>,
    /// `uname -m`.
    pub machine: Option<String>,
    /// `ID` from os-release.
    pub id: Option<String>,
    /// `NAME`.
    pub name: Option<String>,
    /// `PRETTY_NAME`.
    pub pretty_name: Option<String>,
    /// `VERSION`.
    pub version: Option<String>,
    /// `VERSION_ID`.
    pub version_id: Option<String>,
    /// `VARIANT`.
    pub variant: Option<String>,
    /// `VARIANT_ID`.
    pub variant_id: Option<String>,
}

/// What `guest-get-host-name` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestHostName {
    /// The host name.
    pub host_name: String,
}

/// What `guest-fsfreeze-status` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsfreezeStatus {
    /// Not frozen.
    Thawed,
    /// Frozen.
    Frozen,
}

/// A network interface, as `guest-network-get-interfaces` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestNetworkInterface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    pub hardware_address: Option<String>,
    /// Its addresses.
    pub ip_addresses: Option<Vec<GuestIpAddress>>,
    /// Its counters.
    pub statistics: Option<GuestNetworkInterfaceStat>,
}

/// An address of a network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestIpAddress {
    /// The address.
    pub ip_address: String,
    /// `"ipv4"` or `"ipv6"`.
    pub ip_address_type: String,
    /// The prefix length.
    pub prefix: i64,
}

/// A network interface's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs)]
pub struct GuestNetworkInterfaceStat {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errs: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errs: u64,
    pub tx_dropped: u64,
}

/// A user logged in to the guest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestUser {
    /// The user name.
    pub user: String,
    /// The login time, in seconds since the epoch.
    pub login_time: f64,
    /// The domain (Windows guests).
    pub domain: Option<String>,
}

/// Decodes base64 agent data.
pub(crate) fn decode(data: Option<&str>) -> Result<Vec<u8>> {
    match data {
        None => Ok(Vec::new()),
        Some(text) => STANDARD.decode(text).map_err(|e| {
            let error = serde::de::Error::custom(format!("base64: {e}"));
            Error::Decode(crate::DecodeError::new(error, format!("{text:?}")))
        }),
    }
}
