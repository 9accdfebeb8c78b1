//! Typed commands and events, with field names from QEMU 7.2's schema.
//!
//! There is one [`Command`] trait and one [`EventKind`] trait, the core's
//! ([`qmp_proto::commands::Command`], [`qmp_proto::commands::EventKind`]), re-exported here
//! and at the crate root. The clients take any command whose output owns its data, that is
//! whose [`Command::Output`] is [`DeserializeOwned`] whatever its lifetime parameter:
//!
//! ```text
//! fn execute<C>(&mut self, command: &C) -> Result<C::Output<'static>>
//! where
//!     C: Command,
//!     for<'de> C::Output<'de>: DeserializeOwned,
//! ```
//!
//! Most of the core's commands already have owned outputs ([`QueryStatus`] →
//! [`StatusInfo`], [`Stop`] → [`Empty`], …) and are re-exported from
//! [`qmp_proto::commands`] as they are. Three of them return borrowed strings there, so this
//! module has its own command types of the same names whose outputs are owned:
//! [`QueryVersion`] (→ [`VersionInfo`] with a `String`), [`QueryName`] (→ [`NameInfo`]) and
//! [`HumanMonitorCommand`] (→ `String`). Likewise for events: [`events::DeviceDeleted`] and
//! [`events::BlockJobCompleted`] are defined here with owned data, the others are the
//! core's.
//!
//! The core's borrowing ones are refused at compile time:
//!
//! ```compile_fail
//! fn version<S: qmp_std::Stream>(qmp: &mut qmp_std::Client<S>) {
//!     // `qmp_proto::commands::QueryVersion` returns `VersionInfo<'de>`, borrowed.
//!     let _ = qmp.execute(&qmp_std::qmp_proto::commands::QueryVersion);
//! }
//! ```
//! ```
//! fn version<S: qmp_std::Stream>(qmp: &mut qmp_std::Client<S>) {
//!     let _ = qmp.execute(&qmp_std::commands::QueryVersion);
//! }
//! ```
//!
//! Commands that need `Vec`, `String` or open-ended values are defined here only:
//! [`QueryCommands`], [`QueryCpusFast`], [`QueryFdsets`], [`QomList`], [`QomGet`],
//! [`BlockdevAdd`], [`QueryBlock`], [`QueryNamedBlockNodes`], [`QueryMigrate`].
//!
//! A command this crate does not define implements the same trait:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! /// `query-iothreads`, which this crate does not define.
//! #[derive(Serialize)]
//! struct QueryIothreads;
//!
//! #[derive(Deserialize)]
//! struct IothreadInfo {
//!     id: String,
//!     #[serde(rename = "thread-id")]
//!     thread_id: i64,
//! }
//!
//! impl qmp_std::Command for QueryIothreads {
//!     const NAME: &'static str = "query-iothreads";
//!     type Output<'de> = Vec<IothreadInfo>;
//! }
//! ```
//!
//! Results ignore members they do not know, and optional or version-dependent members are
//! `Option`s or default to zero, so they keep decoding on newer QEMUs.
//!
//! Every other command and event of QEMU 7.2, typed, is in `qmp_std::qapi` (the crate
//! qmp-qapi, generated from QEMU's schema; the default feature `qapi`).

#[cfg(doc)]
use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use qmp_proto::commands as proto;

pub use proto::{Command, EventKind};

pub use proto::{
    AddFd, AddfdInfo, BlockdevDel, Closefd, Cont, DeviceAdd, DeviceDel, Empty, Getfd, ImageFormat,
    JobType, KvmInfo, Migrate, MigratePause, MigrateRecover, MigrationStatus, ObjectAdd, ObjectDel,
    Prop, QmpCapabilities, QmpCapability, QomSet, QueryKvm, QueryStatus, Quit, RemoveFd, RunState,
    Screendump, ShutdownCause, StatusInfo, Stop, SystemPowerdown, SystemReset, VersionTriple,
};

/// `query-version`: the QEMU version, owned (the core's
/// [`qmp_proto::commands::QueryVersion`] borrows the package string from the reply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct QueryVersion;

impl Command for QueryVersion {
    const NAME: &'static str = <proto::QueryVersion as Command>::NAME;
    type Output<'de> = VersionInfo;
}

/// `query-name`: the guest name given with `-name`, if any, owned (the core's
/// [`qmp_proto::commands::QueryName`] borrows it from the reply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct QueryName;

impl Command for QueryName {
    const NAME: &'static str = <proto::QueryName as Command>::NAME;
    type Output<'de> = NameInfo;
}

/// `human-monitor-command`: run an HMP command line and return its output text as a
/// `String` (the core's [`qmp_proto::commands::HumanMonitorCommand`] returns a `&str`
/// borrowed from the reply). See also [`Client::hmp`](crate::Client::hmp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct HumanMonitorCommand<'a> {
    /// The HMP command line, e.g. `info status`.
    #[serde(rename = "command-line")]
    pub command_line: &'a str,
    /// The CPU to make current for the command.
    #[serde(rename = "cpu-index", skip_serializing_if = "Option::is_none")]
    pub cpu_index: Option<i64>,
}

impl<'a> HumanMonitorCommand<'a> {
    /// Runs `command_line` with no CPU selected.
    pub fn new(command_line: &'a str) -> Self {
        Self {
            command_line,
            cpu_index: None,
        }
    }
}

impl Command for HumanMonitorCommand<'_> {
    const NAME: &'static str = <proto::HumanMonitorCommand<'_> as Command>::NAME;
    /// The output text (QEMU ends lines with `\r\n`; it is empty for many commands).
    type Output<'de> = String;
}

/// The result of [`QueryVersion`] (QAPI `VersionInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The QEMU version.
    pub qemu: VersionTriple,
    /// The distribution's package string (may be empty).
    pub package: String,
}

/// The result of [`QueryName`] (QAPI `NameInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NameInfo {
    /// The guest name, when one was given with `-name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

macro_rules! no_argument_commands {
    ($($(#[$doc:meta])* $ty:ident = $name:literal => $out:ty;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
        pub struct $ty;

        impl Command for $ty {
            const NAME: &'static str = $name;
            type Output<'de> = $out;
        }
    )*};
}
pub(crate) use no_argument_commands;

no_argument_commands! {
    /// `query-commands`: the commands this server knows.
    QueryCommands = "query-commands" => Vec<CommandInfo>;
    /// `query-cpus-fast`: the virtual CPUs, without interrupting them.
    QueryCpusFast = "query-cpus-fast" => Vec<CpuInfoFast>;
    /// `query-fdsets`: the file descriptor sets made with `add-fd`.
    QueryFdsets = "query-fdsets" => Vec<FdsetInfo>;
    /// `query-block`: the block devices (drives) and what is inserted in them.
    QueryBlock = "query-block" => Vec<BlockInfo>;
    /// `query-migrate`: the state of the current or last migration.
    QueryMigrate = "query-migrate" => MigrationInfo;
}

/// One element of [`QueryCommands`]' result (QAPI `CommandInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommandInfo {
    /// The command's name.
    pub name: String,
}

/// One element of [`QueryCpusFast`]' result (QAPI `CpuInfoFast`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuInfoFast {
    /// The CPU's index.
    #[serde(rename = "cpu-index")]
    pub cpu_index: i64,
    /// The CPU's QOM path.
    #[serde(rename = "qom-path")]
    pub qom_path: String,
    /// The host thread id running it.
    #[serde(rename = "thread-id")]
    pub thread_id: i64,
    /// Where it sits in the CPU topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub props: Option<CpuInstanceProperties>,
    /// The target architecture (QAPI `SysEmuTarget`, e.g. `x86_64`).
    pub target: String,
    /// The CPU state, on s390x only (QAPI `CpuS390State`).
    #[serde(rename = "cpu-state", default, skip_serializing_if = "Option::is_none")]
    pub cpu_state: Option<String>,
}

/// A CPU's place in the topology (QAPI `CpuInstanceProperties`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInstanceProperties {
    /// NUMA node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<i64>,
    /// Socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<i64>,
    /// Die.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub die_id: Option<i64>,
    /// Cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<i64>,
    /// Core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_id: Option<i64>,
    /// Thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<i64>,
}

/// One element of [`QueryFdsets`]' result (QAPI `FdsetInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FdsetInfo {
    /// The set's id.
    #[serde(rename = "fdset-id")]
    pub fdset_id: i64,
    /// The descriptors in it.
    pub fds: Vec<FdsetFdInfo>,
}

/// One descriptor of a file descriptor set (QAPI `FdsetFdInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FdsetFdInfo {
    /// Its number inside QEMU.
    pub fd: i64,
    /// The text given to `add-fd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque: Option<String>,
}

/// `qom-list`: the properties of a QOM object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct QomList<'a> {
    /// The object's QOM path, e.g. `/machine`.
    pub path: &'a str,
}

impl Command for QomList<'_> {
    const NAME: &'static str = "qom-list";
    type Output<'de> = Vec<ObjectPropertyInfo>;
}

/// One element of [`QomList`]'s result (QAPI `ObjectPropertyInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectPropertyInfo {
    /// The property's name.
    pub name: String,
    /// Its type: a QOM type name, `child<T>`, `link<T>`, or a builtin such as `bool`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A description, when the property has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its default value, when it has one.
    #[serde(
        rename = "default-value",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub default_value: Option<Value>,
}

/// `qom-get`: read a QOM property; the result is any JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct QomGet<'a> {
    /// The object's QOM path, e.g. `/machine`.
    pub path: &'a str,
    /// The property's name.
    pub property: &'a str,
}

impl Command for QomGet<'_> {
    const NAME: &'static str = "qom-get";
    type Output<'de> = Value;
}

/// `blockdev-add`: add a block node. The options depend on the driver and nest, so beyond
/// `driver` and `node-name` they are an open JSON object.
///
/// ```
/// use qmp_std::commands::BlockdevAdd;
/// let cmd = BlockdevAdd::new("null-co", "null0").option("size", 1 << 20).option("read-only", true);
/// let json = serde_json::to_string(&cmd).unwrap();
/// assert_eq!(json, r#"{"driver":"null-co","node-name":"null0","read-only":true,"size":1048576}"#);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BlockdevAdd {
    /// The block driver, e.g. `file`, `qcow2`, `null-co`.
    pub driver: String,
    /// The node's name (QEMU makes one up when absent, but then you cannot refer to it).
    pub node_name: Option<String>,
    /// Every other option (`file`, `read-only`, `cache`, `discard`, driver options, …).
    pub options: Map<String, Value>,
}

impl BlockdevAdd {
    /// A node of driver `driver` called `node_name`.
    pub fn new(driver: impl Into<String>, node_name: impl Into<String>) -> Self {
        Self {
            driver: driver.into(),
            node_name: Some(node_name.into()),
            options: Map::new(),
        }
    }

    /// Adds an option: any value with a JSON form (`&str`, `&String`, numbers, `bool`, a
    /// nested `json!({..})` or any `Serialize` type).
    ///
    /// ```
    /// use qmp_std::commands::BlockdevAdd;
    /// let path = String::from("/tmp/disk.img");
    /// let cmd = BlockdevAdd::new("file", "disk0").option("filename", &path);
    /// assert_eq!(serde_json::to_string(&cmd).unwrap(), r#"{"driver":"file","node-name":"disk0","filename":"/tmp/disk.img"}"#);
    /// ```
    ///
    /// # Panics
    ///
    /// If `value` has no JSON form (a map whose keys are not strings).
    pub fn option(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).expect("the option has a JSON form");
        self.options.insert(name.into(), value);
        self
    }
}

impl Serialize for BlockdevAdd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("driver", &self.driver)?;
        if let Some(name) = &self.node_name {
            map.serialize_entry("node-name", name)?;
        }
        for (name, value) in &self.options {
            if name != "driver" && name != "node-name" {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

impl Command for BlockdevAdd {
    const NAME: &'static str = "blockdev-add";
    type Output<'de> = Empty;
}

/// `query-named-block-nodes`: the named block nodes (the graph `blockdev-add` builds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct QueryNamedBlockNodes {
    /// Leave out the backing chain of each node (`backing-image`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flat: Option<bool>,
}

impl Command for QueryNamedBlockNodes {
    const NAME: &'static str = "query-named-block-nodes";
    type Output<'de> = Vec<BlockDeviceInfo>;
}

/// One element of [`QueryBlock`]'s result (QAPI `BlockInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// The device name (may be empty for devices added with `-device` only).
    pub device: String,
    /// The guest device's qdev id or QOM path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    /// Always `unknown` in practice.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether the medium can be removed.
    pub removable: bool,
    /// Whether the guest locked the tray.
    pub locked: bool,
    /// The medium, when one is inserted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserted: Option<BlockDeviceInfo>,
    /// Whether the tray is open (removable devices only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tray_open: Option<bool>,
    /// The I/O status (`ok`, `failed`, `nospace`), when tracked.
    #[serde(rename = "io-status", default, skip_serializing_if = "Option::is_none")]
    pub io_status: Option<String>,
}

/// A block node (QAPI `BlockDeviceInfo`): the result element of [`QueryNamedBlockNodes`]
/// and [`BlockInfo::inserted`]. I/O limits beyond the basic six are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockDeviceInfo {
    /// The file name.
    pub file: String,
    /// The node name.
    #[serde(rename = "node-name", default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Whether it is read-only.
    pub ro: bool,
    /// The driver.
    pub drv: String,
    /// The backing file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    /// Length of the backing chain.
    pub backing_file_depth: i64,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// Zero detection (`off`, `on`, `unmap`).
    pub detect_zeroes: String,
    /// Total throughput limit, bytes/s.
    pub bps: i64,
    /// Read throughput limit, bytes/s.
    pub bps_rd: i64,
    /// Write throughput limit, bytes/s.
    pub bps_wr: i64,
    /// Total I/O operations limit per second.
    pub iops: i64,
    /// Read operations limit per second.
    pub iops_rd: i64,
    /// Write operations limit per second.
    pub iops_wr: i64,
    /// The image.
    pub image: ImageInfo,
    /// The throttle group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Cache mode.
    pub cache: BlockdevCacheInfo,
    /// Write threshold in bytes (0: none).
    pub write_threshold: i64,
    /// Dirty bitmaps.
    #[serde(
        rename = "dirty-bitmaps",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub dirty_bitmaps: Option<Vec<BlockDirtyInfo>>,
}

/// Cache mode of a block node (QAPI `BlockdevCacheInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevCacheInfo {
    /// Writeback caching (the guest sees a volatile cache).
    pub writeback: bool,
    /// `O_DIRECT` on the host.
    pub direct: bool,
    /// Flushes are ignored.
    pub no_flush: bool,
}

/// A dirty bitmap (QAPI `BlockDirtyInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockDirtyInfo {
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Dirty bytes.
    pub count: i64,
    /// Granularity in bytes.
    pub granularity: i64,
    /// Whether it records writes.
    pub recording: bool,
    /// Whether an operation is using it.
    pub busy: bool,
    /// Whether it is stored in the image.
    pub persistent: bool,
    /// Whether it is inconsistent (needs repair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconsistent: Option<bool>,
}

/// An image (QAPI `ImageInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    /// The file name.
    pub filename: String,
    /// The format, e.g. `raw`, `qcow2`.
    pub format: String,
    /// Whether it is marked dirty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_flag: Option<bool>,
    /// Bytes it occupies on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<i64>,
    /// Its size as the guest sees it.
    pub virtual_size: i64,
    /// Cluster size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<i64>,
    /// Whether it is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// Whether it is compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed: Option<bool>,
    /// Backing file name as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    /// Backing file name, resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_backing_filename: Option<String>,
    /// Backing file format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_filename_format: Option<String>,
    /// Internal snapshots (QAPI `SnapshotInfo`, left as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<Value>>,
    /// The backing image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_image: Option<Box<ImageInfo>>,
    /// Format-specific details (QAPI `ImageInfoSpecific`, left as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<Value>,
}

/// The result of [`QueryMigrate`] (QAPI `MigrationInfo`). Members a QEMU version may lack
/// are `Option`s.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// The status (absent before any migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MigrationStatus>,
    /// RAM transfer statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<MigrationStats>,
    /// Block migration statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<MigrationStats>,
    /// Milliseconds since the migration started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time: Option<i64>,
    /// Expected downtime in milliseconds (while active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_downtime: Option<i64>,
    /// Actual downtime in milliseconds (once completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<i64>,
    /// Setup time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_time: Option<i64>,
    /// CPU throttling percentage (auto-converge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_percentage: Option<i64>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_desc: Option<String>,
    /// Why migration is blocked, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_reasons: Option<Vec<String>>,
    /// Total postcopy blocktime in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcopy_blocktime: Option<i64>,
}

/// Transfer statistics (QAPI `MigrationStats`); members missing on some QEMU versions read
/// as zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct MigrationStats {
    /// Bytes transferred.
    pub transferred: i64,
    /// Bytes remaining.
    pub remaining: i64,
    /// Total bytes.
    pub total: i64,
    /// Zero pages.
    pub duplicate: i64,
    /// Skipped pages (always 0; deprecated).
    pub skipped: i64,
    /// Full pages sent.
    pub normal: i64,
    /// Bytes of full pages sent.
    pub normal_bytes: i64,
    /// Pages dirtied per second.
    pub dirty_pages_rate: i64,
    /// Throughput in megabits per second.
    pub mbps: f64,
    /// Dirty bitmap syncs.
    pub dirty_sync_count: i64,
    /// Page requests from the destination during postcopy.
    pub postcopy_requests: i64,
    /// Target page size.
    pub page_size: i64,
    /// Bytes sent through multifd.
    pub multifd_bytes: i64,
    /// Pages sent per second.
    pub pages_per_second: i64,
    /// Bytes sent during precopy.
    pub precopy_bytes: i64,
    /// Bytes sent while the guest was stopped.
    pub downtime_bytes: i64,
    /// Bytes sent during postcopy.
    pub postcopy_bytes: i64,
    /// Times zero-copy send could not be used (`zero-copy-send` capability).
    pub dirty_sync_missed_zero_copy: i64,
}

/// Event types; each implements [`EventKind`] with owned data. Most are the core's
/// ([`qmp_proto::commands::events`]); [`DeviceDeleted`](events::DeviceDeleted) and
/// [`BlockJobCompleted`](events::BlockJobCompleted) are defined here because the core's data
/// types for them borrow strings from the message.
pub mod events {
    use serde::{Deserialize, Serialize};

    use super::{EventKind, JobType};
    use qmp_proto::commands::events as proto;

    pub use proto::{
        Migration, MigrationData, Powerdown, Reset, Resume, Shutdown, ShutdownData, Stop,
    };

    /// `DEVICE_DELETED`: a device finished unplugging.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
    pub struct DeviceDeleted;

    impl EventKind for DeviceDeleted {
        const NAME: &'static str = <proto::DeviceDeleted as EventKind>::NAME;
        type Data<'de> = DeviceDeletedData;
    }

    /// `BLOCK_JOB_COMPLETED`: a block job ended.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
    pub struct BlockJobCompleted;

    impl EventKind for BlockJobCompleted {
        const NAME: &'static str = <proto::BlockJobCompleted as EventKind>::NAME;
        type Data<'de> = BlockJobCompletedData;
    }

    /// The data of `DEVICE_DELETED`.
    #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub struct DeviceDeletedData {
        /// The device's id, when it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub device: Option<String>,
        /// The device's QOM path.
        pub path: String,
    }

    /// The data of `BLOCK_JOB_COMPLETED`.
    #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub struct BlockJobCompletedData {
        /// The job's kind.
        #[serde(rename = "type")]
        pub kind: JobType,
        /// The job's id (the device name for jobs started without one).
        pub device: String,
        /// The job's total amount of work (its end offset).
        pub len: i64,
        /// How far it got.
        pub offset: i64,
        /// Its rate limit in bytes per second.
        pub speed: i64,
        /// Why it failed, when it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }
}
