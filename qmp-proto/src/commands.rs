//! Typed commands and events that need no allocation, with field names from QEMU 7.2's schema.
//!
//! Each command is a struct that serializes to its `arguments` object (a unit struct for none)
//! and implements [`Command`], which names it and says what its `return` deserializes into.
//! Each event is a marker type implementing [`EventKind`] (see [`events`]). Field names,
//! optional members and enum values were checked against the `query-qmp-schema` reply of the
//! real QEMU 7.2 and its `qapi/*.json`.
//!
//! [`Command`] and [`EventKind`] are the only command and event traits of the project:
//! `qmp-std` and `qmp-embedded` take these. An output may borrow from the reply
//! ([`VersionInfo<'de>`](VersionInfo), `&'de str`), which suits decoding straight from a
//! receive buffer; a client that hands results back after the buffer is reused (`qmp-std`)
//! takes the commands whose output owns its data, `for<'de> C::Output<'de>: DeserializeOwned`
//! (the same type whatever `'de`, such as [`StatusInfo`] or [`Empty`]), and returns
//! `C::Output<'static>`.
//!
//! Only commands whose arguments *and* result fit without allocation live here (borrowed
//! `&str`, no vectors, no open-ended values). Commands that return lists (`query-commands`,
//! `query-fdsets`, `qom-list`, …), any value (`qom-get`), or take open-ended nested options
//! (`blockdev-add`) are in `qmp-std`, which also has command types with owned outputs for the
//! few here whose results borrow strings ([`QueryVersion`], [`QueryName`],
//! [`HumanMonitorCommand`], and the events [`DeviceDeleted`](events::DeviceDeleted) and
//! [`BlockJobCompleted`](events::BlockJobCompleted)).
//!
//! Outputs ignore members they do not know, and enums have an `Unknown` variant for values a
//! newer QEMU may add, so a typed result keeps working across versions.
//!
//! ```
//! use qmp_proto::commands::{Command, QueryStatus, RunState};
//! use qmp_proto::{Outcome, Received, Session};
//!
//! let mut session: Session<[u8; 512]> = Session::new([0; 512]);
//! let mut out = [0u8; 64];
//! session.feed(br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#);
//! let _ = session.poll();
//! session.negotiate(false, None, &mut out).unwrap();
//! session.feed(br#"{"return": {}, "id": 1}"#);
//! let _ = session.poll();
//!
//! let sent = session.execute(QueryStatus::NAME, &QueryStatus, None, &mut out).unwrap();
//! assert_eq!(&out[..sent.len], br#"{"execute":"query-status","id":2}"#);
//! session.feed(br#"{"return": {"status": "paused", "singlestep": false, "running": false}, "id": 2}"#);
//! let Some(Received::Reply(reply)) = session.poll() else { panic!() };
//! let Outcome::Return(value) = reply.outcome else { panic!() };
//! let status: <QueryStatus as Command>::Output<'_> = value.deserialize().unwrap();
//! assert_eq!(status.status, RunState::Paused);
//! ```

use core::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

/// A QMP command: its wire name, its arguments (the implementing value itself) and its result.
///
/// `Self` serializes to the `arguments` object, or to nothing (a unit struct) when the command
/// takes none. Send it with [`Session::execute`](crate::Session::execute)`(C::NAME, &cmd, …)`
/// and deserialize the reply's [`RawJson`](crate::RawJson) into [`Command::Output`].
pub trait Command: Serialize {
    /// The command's name, e.g. `query-status`.
    const NAME: &'static str;
    /// What its `return` value deserializes into, possibly borrowing from the reply. A type
    /// that does not mention `'de` (an owned output) makes the command usable with clients
    /// that return owned results, such as `qmp-std`'s.
    type Output<'de>: Deserialize<'de>;
}

/// A QMP event: its name and what its `data` member deserializes into.
///
/// Events without data (`STOP`, `RESUME`, `POWERDOWN`) have [`Empty`] data; QEMU omits the
/// member for them.
pub trait EventKind {
    /// The event's name, e.g. `SHUTDOWN`.
    const NAME: &'static str;
    /// What its `data` member deserializes into, possibly borrowing from the message (an
    /// owned type, not mentioning `'de`, also decodes from owned events such as `qmp-std`'s).
    type Data<'de>: Deserialize<'de>;
}

/// The empty object `{}`: the result of commands that return nothing, and the data of events
/// that carry none. Any members are ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Empty {}

macro_rules! no_argument_commands {
    ($($(#[$doc:meta])* $ty:ident = $name:literal => $out:ty;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        pub struct $ty;

        impl Command for $ty {
            const NAME: &'static str = $name;
            type Output<'de> = $out;
        }
    )*};
}

no_argument_commands! {
    /// `query-version`: the QEMU version.
    QueryVersion = "query-version" => VersionInfo<'de>;
    /// `query-status`: whether the guest runs, and the run state.
    QueryStatus = "query-status" => StatusInfo;
    /// `query-name`: the guest name given with `-name`, if any.
    QueryName = "query-name" => NameInfo<'de>;
    /// `query-kvm`: whether KVM is present and enabled.
    QueryKvm = "query-kvm" => KvmInfo;
    /// `stop`: pause the guest (emits `STOP` unless already paused).
    Stop = "stop" => Empty;
    /// `cont`: resume the guest (emits `RESUME`).
    Cont = "cont" => Empty;
    /// `system_reset`: reset the guest (emits `RESET`).
    SystemReset = "system_reset" => Empty;
    /// `system_powerdown`: ask the guest to power down (emits `POWERDOWN`).
    SystemPowerdown = "system_powerdown" => Empty;
    /// `quit`: end QEMU (emits `SHUTDOWN`, returns, then closes the connection).
    Quit = "quit" => Empty;
    /// `migrate-pause`: pause a postcopy migration. QEMU 7.2 allows it out of band.
    MigratePause = "migrate-pause" => Empty;
}

/// A capability that `qmp_capabilities` can enable (QAPI `QMPCapability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum QmpCapability {
    /// `oob`: out-of-band execution (`exec-oob`).
    Oob,
}

/// `qmp_capabilities`: leave negotiation mode, enabling the listed capabilities.
///
/// [`Session::negotiate`](crate::Session::negotiate) sends this for you.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QmpCapabilities<'a> {
    /// Capabilities to enable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable: Option<&'a [QmpCapability]>,
}

impl Command for QmpCapabilities<'_> {
    const NAME: &'static str = "qmp_capabilities";
    type Output<'de> = Empty;
}

/// `human-monitor-command`: run an HMP command line and return its output text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
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
    const NAME: &'static str = "human-monitor-command";
    /// The output text (QEMU ends lines with `\r\n`; it is empty for many commands). QEMU
    /// escapes `\r` and `\n`, so with serde-json-core deserialize it through
    /// [`RawJson::deserialize_unescaped`](crate::RawJson::deserialize_unescaped) into an
    /// owned string type instead.
    type Output<'de> = &'de str;
}

/// `getfd`: receive a file descriptor passed with this command (`SCM_RIGHTS` over a Unix
/// socket, in the same message as the command's first bytes) and name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Getfd<'a> {
    /// The name to give the descriptor.
    pub fdname: &'a str,
}

impl Command for Getfd<'_> {
    const NAME: &'static str = "getfd";
    type Output<'de> = Empty;
}

/// `closefd`: close a descriptor received with [`Getfd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Closefd<'a> {
    /// The name given in `getfd`.
    pub fdname: &'a str,
}

impl Command for Closefd<'_> {
    const NAME: &'static str = "closefd";
    type Output<'de> = Empty;
}

/// `add-fd`: add a descriptor passed with this command to a file descriptor set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AddFd<'a> {
    /// The set to add it to; QEMU picks a new set when absent.
    #[serde(rename = "fdset-id", skip_serializing_if = "Option::is_none")]
    pub fdset_id: Option<i64>,
    /// Free text stored with the descriptor (shown by `query-fdsets`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opaque: Option<&'a str>,
}

impl Command for AddFd<'_> {
    const NAME: &'static str = "add-fd";
    type Output<'de> = AddfdInfo;
}

/// The result of [`AddFd`] (QAPI `AddfdInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AddfdInfo {
    /// The set the descriptor was added to.
    #[serde(rename = "fdset-id")]
    pub fdset_id: i64,
    /// The descriptor's number inside QEMU.
    pub fd: i64,
}

/// `remove-fd`: remove one descriptor, or a whole set, from the file descriptor sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RemoveFd {
    /// The set.
    #[serde(rename = "fdset-id")]
    pub fdset_id: i64,
    /// The descriptor (QEMU's number, from [`AddfdInfo::fd`]); the whole set when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i64>,
}

impl Command for RemoveFd {
    const NAME: &'static str = "remove-fd";
    type Output<'de> = Empty;
}

/// A scalar property value for [`DeviceAdd`] and [`ObjectAdd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Prop<'a> {
    /// A string.
    Str(&'a str),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A boolean.
    Bool(bool),
}

impl Serialize for Prop<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Prop::Str(s) => serializer.serialize_str(s),
            Prop::Int(i) => serializer.serialize_i64(i),
            Prop::Uint(u) => serializer.serialize_u64(u),
            Prop::Bool(b) => serializer.serialize_bool(b),
        }
    }
}

impl<'a> From<&'a str> for Prop<'a> {
    fn from(s: &'a str) -> Self {
        Prop::Str(s)
    }
}

impl From<i64> for Prop<'_> {
    fn from(i: i64) -> Self {
        Prop::Int(i)
    }
}

impl From<u64> for Prop<'_> {
    fn from(u: u64) -> Self {
        Prop::Uint(u)
    }
}

impl From<bool> for Prop<'_> {
    fn from(b: bool) -> Self {
        Prop::Bool(b)
    }
}

/// `device_add`: plug a device. Its properties are driver-specific, so they are a list of
/// name/value pairs serialized next to `driver`, `id` and `bus`.
///
/// ```
/// use qmp_proto::commands::{DeviceAdd, Prop};
/// let props = [("serial", Prop::Str("abc")), ("physical_block_size", Prop::Int(4096))];
/// let cmd = DeviceAdd::new("virtio-blk-pci").id("disk1").props(&props);
/// let mut buf = [0u8; 128];
/// let n = qmp_proto::encode_json(&cmd, &mut buf).unwrap();
/// assert_eq!(&buf[..n], br#"{"driver":"virtio-blk-pci","id":"disk1","serial":"abc","physical_block_size":4096}"#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceAdd<'a> {
    /// The device's driver (its QOM type), e.g. `virtio-net-pci`.
    pub driver: &'a str,
    /// The device's id, for `device_del` and `DEVICE_DELETED`.
    pub id: Option<&'a str>,
    /// The bus to plug it into.
    pub bus: Option<&'a str>,
    /// Driver-specific properties.
    pub props: &'a [(&'a str, Prop<'a>)],
}

impl<'a> DeviceAdd<'a> {
    /// A device of type `driver` with no id, bus or properties.
    pub fn new(driver: &'a str) -> Self {
        Self {
            driver,
            id: None,
            bus: None,
            props: &[],
        }
    }

    /// Sets the id.
    pub fn id(mut self, id: &'a str) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the bus.
    pub fn bus(mut self, bus: &'a str) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Sets the driver-specific properties.
    pub fn props(mut self, props: &'a [(&'a str, Prop<'a>)]) -> Self {
        self.props = props;
        self
    }
}

impl Serialize for DeviceAdd<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("driver", self.driver)?;
        if let Some(id) = self.id {
            map.serialize_entry("id", id)?;
        }
        if let Some(bus) = self.bus {
            map.serialize_entry("bus", bus)?;
        }
        for (name, value) in self.props {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl Command for DeviceAdd<'_> {
    const NAME: &'static str = "device_add";
    type Output<'de> = Empty;
}

/// `device_del`: ask for a device to be unplugged (`DEVICE_DELETED` reports when it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceDel<'a> {
    /// The device's id or QOM path.
    pub id: &'a str,
}

impl Command for DeviceDel<'_> {
    const NAME: &'static str = "device_del";
    type Output<'de> = Empty;
}

/// `object-add`: create a QOM object. Its properties depend on `qom-type` and are given as
/// name/value pairs serialized next to `qom-type` and `id` (QEMU 7.2 takes them flat).
///
/// ```
/// use qmp_proto::commands::{ObjectAdd, Prop};
/// let props = [("size", Prop::Uint(1 << 20))];
/// let cmd = ObjectAdd::new("memory-backend-ram", "mem0").props(&props);
/// let mut buf = [0u8; 96];
/// let n = qmp_proto::encode_json(&cmd, &mut buf).unwrap();
/// assert_eq!(&buf[..n], br#"{"qom-type":"memory-backend-ram","id":"mem0","size":1048576}"#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ObjectAdd<'a> {
    /// The object's QOM type, e.g. `memory-backend-ram`.
    pub qom_type: &'a str,
    /// The object's id.
    pub id: &'a str,
    /// Type-specific properties.
    pub props: &'a [(&'a str, Prop<'a>)],
}

impl<'a> ObjectAdd<'a> {
    /// An object of type `qom_type` called `id`, with no properties.
    pub fn new(qom_type: &'a str, id: &'a str) -> Self {
        Self {
            qom_type,
            id,
            props: &[],
        }
    }

    /// Sets the type-specific properties.
    pub fn props(mut self, props: &'a [(&'a str, Prop<'a>)]) -> Self {
        self.props = props;
        self
    }
}

impl Serialize for ObjectAdd<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("qom-type", self.qom_type)?;
        map.serialize_entry("id", self.id)?;
        for (name, value) in self.props {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl Command for ObjectAdd<'_> {
    const NAME: &'static str = "object-add";
    type Output<'de> = Empty;
}

/// `object-del`: destroy a QOM object created with [`ObjectAdd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ObjectDel<'a> {
    /// The object's id.
    pub id: &'a str,
}

impl Command for ObjectDel<'_> {
    const NAME: &'static str = "object-del";
    type Output<'de> = Empty;
}

/// `qom-set`: set a QOM property to any value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QomSet<'a, T> {
    /// The object's QOM path, e.g. `/machine`.
    pub path: &'a str,
    /// The property's name.
    pub property: &'a str,
    /// The new value.
    pub value: T,
}

impl<T: Serialize> Command for QomSet<'_, T> {
    const NAME: &'static str = "qom-set";
    type Output<'de> = Empty;
}

/// `blockdev-del`: delete a block node added with `blockdev-add`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BlockdevDel<'a> {
    /// The node's name.
    #[serde(rename = "node-name")]
    pub node_name: &'a str,
}

impl Command for BlockdevDel<'_> {
    const NAME: &'static str = "blockdev-del";
    type Output<'de> = Empty;
}

/// `migrate`: start migrating to `uri`. Progress is in `query-migrate`; QEMU sends `MIGRATION`
/// events (and `MIGRATION_PASS`) only after `migrate-set-capabilities` has turned the `events`
/// capability on (`{"capabilities": [{"capability": "events", "state": true}]}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Migrate<'a> {
    /// Where to, e.g. `tcp:host:port`, `unix:/path`, `exec:cmd`, `fd:name`.
    pub uri: &'a str,
    /// Also migrate block devices (deprecated in QEMU 7.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blk: Option<bool>,
    /// Incremental block migration (deprecated in QEMU 7.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inc: Option<bool>,
    /// Ignored by QEMU (migration always runs in the background).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detach: Option<bool>,
    /// Resume a paused postcopy migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<bool>,
}

impl<'a> Migrate<'a> {
    /// Migrate to `uri` with default options.
    pub fn new(uri: &'a str) -> Self {
        Self {
            uri,
            blk: None,
            inc: None,
            detach: None,
            resume: None,
        }
    }
}

impl Command for Migrate<'_> {
    const NAME: &'static str = "migrate";
    type Output<'de> = Empty;
}

/// `migrate-recover`: continue a paused postcopy migration on the destination from `uri`.
/// QEMU 7.2 allows it out of band.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MigrateRecover<'a> {
    /// The URI to listen on for the source.
    pub uri: &'a str,
}

impl Command for MigrateRecover<'_> {
    const NAME: &'static str = "migrate-recover";
    type Output<'de> = Empty;
}

/// Image format for [`Screendump`] (QAPI `ImageFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ImageFormat {
    /// PPM (the default).
    Ppm,
    /// PNG (when QEMU is built with libpng).
    Png,
}

/// `screendump`: write the display's contents to a file on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Screendump<'a> {
    /// The file to write, on the QEMU host.
    pub filename: &'a str,
    /// The display device's id (the primary console when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<&'a str>,
    /// The head of a multi-head device (needs `device`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<i64>,
    /// The file format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
}

impl<'a> Screendump<'a> {
    /// Dump the primary console to `filename` as PPM.
    pub fn new(filename: &'a str) -> Self {
        Self {
            filename,
            device: None,
            head: None,
            format: None,
        }
    }
}

impl Command for Screendump<'_> {
    const NAME: &'static str = "screendump";
    type Output<'de> = Empty;
}

/// A `major.minor.micro` version triple (QAPI `VersionTriple`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VersionTriple {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Micro version.
    pub micro: u64,
}

impl fmt::Display for VersionTriple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The result of [`QueryVersion`] (QAPI `VersionInfo`), borrowing the package string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VersionInfo<'a> {
    /// The QEMU version.
    pub qemu: VersionTriple,
    /// The distribution's package string (may be empty).
    pub package: &'a str,
}

/// The result of [`QueryStatus`] (QAPI `StatusInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StatusInfo {
    /// Whether the guest's CPUs run.
    pub running: bool,
    /// Whether single-step mode is on (deprecated in later QEMU, absent there).
    #[serde(default)]
    pub singlestep: bool,
    /// The run state.
    pub status: RunState,
}

/// A VM run state (QAPI `RunState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RunState {
    /// Stopped by the debugger.
    Debug,
    /// Waiting for an incoming migration.
    Inmigrate,
    /// An internal error stopped it.
    InternalError,
    /// An I/O error stopped it.
    IoError,
    /// Paused by `stop`.
    Paused,
    /// Paused after an outgoing migration completed.
    Postmigrate,
    /// Not started yet (`-S`).
    Prelaunch,
    /// Finishing an outgoing migration.
    FinishMigrate,
    /// Loading a snapshot.
    RestoreVm,
    /// Running.
    Running,
    /// Saving a snapshot.
    SaveVm,
    /// Shut down (with `-no-shutdown`).
    Shutdown,
    /// Suspended (ACPI S3).
    Suspended,
    /// Stopped by a watchdog action.
    Watchdog,
    /// The guest panicked.
    GuestPanicked,
    /// In COLO fault tolerance mode.
    Colo,
    /// A state this crate does not know (from a newer QEMU).
    #[serde(other)]
    Unknown,
}

/// The result of [`QueryName`] (QAPI `NameInfo`), borrowing the name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NameInfo<'a> {
    /// The guest name, when one was given.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
}

/// The result of [`QueryKvm`] (QAPI `KvmInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KvmInfo {
    /// Whether KVM is in use.
    pub enabled: bool,
    /// Whether this QEMU supports KVM.
    pub present: bool,
}

/// Why a guest shut down or reset (QAPI `ShutdownCause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ShutdownCause {
    /// No shutdown was requested.
    None,
    /// An error prevents further use of the guest.
    HostError,
    /// The `quit` command.
    HostQmpQuit,
    /// The `system_reset` command.
    HostQmpSystemReset,
    /// A signal to QEMU (e.g. SIGTERM).
    HostSignal,
    /// The user interface (e.g. closing the window).
    HostUi,
    /// The guest shut itself down.
    GuestShutdown,
    /// The guest reset itself.
    GuestReset,
    /// The guest panicked and the panic action is shutdown.
    GuestPanic,
    /// A partial reset of a subsystem (e.g. s390 re-IPL).
    SubsystemReset,
    /// Loading a snapshot.
    SnapshotLoad,
    /// A cause this crate does not know (from a newer QEMU).
    #[serde(other)]
    Unknown,
}

/// Migration status (QAPI `MigrationStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum MigrationStatus {
    /// No migration has started.
    None,
    /// Setting up.
    Setup,
    /// Being cancelled.
    Cancelling,
    /// Cancelled.
    Cancelled,
    /// In progress.
    Active,
    /// Postcopy in progress.
    PostcopyActive,
    /// Postcopy paused.
    PostcopyPaused,
    /// Postcopy recovering.
    PostcopyRecover,
    /// Completed.
    Completed,
    /// Failed.
    Failed,
    /// In COLO mode.
    Colo,
    /// Paused before the switchover (`pause-before-switchover`).
    PreSwitchover,
    /// Migrating device state after the switchover.
    Device,
    /// Waiting for the guest to unplug failover devices.
    WaitUnplug,
    /// A status this crate does not know (from a newer QEMU).
    #[serde(other)]
    Unknown,
}

/// The kind of a block job (QAPI `JobType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum JobType {
    /// `block-commit`.
    Commit,
    /// `block-stream`.
    Stream,
    /// `drive-mirror` / `blockdev-mirror`.
    Mirror,
    /// `drive-backup` / `blockdev-backup`.
    Backup,
    /// `blockdev-create`.
    Create,
    /// `x-blockdev-amend`.
    Amend,
    /// `snapshot-load`.
    SnapshotLoad,
    /// `snapshot-save`.
    SnapshotSave,
    /// `snapshot-delete`.
    SnapshotDelete,
    /// A job type this crate does not know (from a newer QEMU).
    #[serde(other)]
    Unknown,
}

/// Event marker types; each implements [`EventKind`].
pub mod events {
    use serde::{Deserialize, Serialize};

    use super::{Empty, EventKind, JobType, MigrationStatus, ShutdownCause};

    macro_rules! event_kinds {
        ($($(#[$doc:meta])* $ty:ident = $name:literal => $data:ty;)*) => {$(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
            #[cfg_attr(feature = "defmt", derive(defmt::Format))]
            pub struct $ty;

            impl EventKind for $ty {
                const NAME: &'static str = $name;
                type Data<'de> = $data;
            }
        )*};
    }

    event_kinds! {
        /// `STOP`: the guest was paused (no data).
        Stop = "STOP" => Empty;
        /// `RESUME`: the guest resumed (no data).
        Resume = "RESUME" => Empty;
        /// `POWERDOWN`: a power-down was requested of the guest (no data).
        Powerdown = "POWERDOWN" => Empty;
        /// `SHUTDOWN`: the guest shut down, or QEMU is exiting.
        Shutdown = "SHUTDOWN" => ShutdownData;
        /// `RESET`: the guest was reset.
        Reset = "RESET" => ShutdownData;
        /// `DEVICE_DELETED`: a device finished unplugging.
        DeviceDeleted = "DEVICE_DELETED" => DeviceDeletedData<'de>;
        /// `BLOCK_JOB_COMPLETED`: a block job ended.
        BlockJobCompleted = "BLOCK_JOB_COMPLETED" => BlockJobCompletedData<'de>;
        /// `MIGRATION`: the migration status changed (sent only once `migrate-set-capabilities`
        /// has turned the `events` capability on).
        Migration = "MIGRATION" => MigrationData;
    }

    /// The data of `SHUTDOWN` and `RESET`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "defmt", derive(defmt::Format))]
    pub struct ShutdownData {
        /// Whether the guest caused it (rather than the host).
        pub guest: bool,
        /// Why.
        pub reason: ShutdownCause,
    }

    /// The data of `DEVICE_DELETED`, borrowing its strings.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "defmt", derive(defmt::Format))]
    pub struct DeviceDeletedData<'a> {
        /// The device's id, when it had one.
        #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
        pub device: Option<&'a str>,
        /// The device's QOM path.
        pub path: &'a str,
    }

    /// The data of `BLOCK_JOB_COMPLETED`, borrowing its strings.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "defmt", derive(defmt::Format))]
    pub struct BlockJobCompletedData<'a> {
        /// The job's kind.
        #[serde(rename = "type")]
        pub kind: JobType,
        /// The job's id (the device name for jobs started without one).
        pub device: &'a str,
        /// The job's total amount of work (its end offset).
        pub len: i64,
        /// How far it got.
        pub offset: i64,
        /// Its rate limit in bytes per second.
        pub speed: i64,
        /// Why it failed, when it did.
        #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
        pub error: Option<&'a str>,
    }

    /// The data of `MIGRATION`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "defmt", derive(defmt::Format))]
    pub struct MigrationData {
        /// The new status.
        pub status: MigrationStatus,
    }
}

#[cfg(test)]
mod tests {
    use super::events::*;
    use super::*;
    use crate::{Envelope, RawJson, encode_command};

    #[track_caller]
    fn encode<C: Command>(cmd: &C) -> heapless::String<256> {
        let mut buf = [0u8; 256];
        let n = encode_command(&mut buf, Envelope::Execute, C::NAME, cmd, None).unwrap();
        heapless::String::try_from(core::str::from_utf8(&buf[..n]).unwrap()).unwrap()
    }

    #[test]
    fn commands_encode_with_schema_names() {
        let cases: [(heapless::String<256>, &str); 12] = [
            (encode(&QueryStatus), r#"{"execute":"query-status"}"#),
            (
                encode(&QmpCapabilities {
                    enable: Some(&[QmpCapability::Oob]),
                }),
                r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#,
            ),
            (
                encode(&HumanMonitorCommand::new("info status")),
                r#"{"execute":"human-monitor-command","arguments":{"command-line":"info status"}}"#,
            ),
            (
                encode(&Getfd { fdname: "fd0" }),
                r#"{"execute":"getfd","arguments":{"fdname":"fd0"}}"#,
            ),
            (
                encode(&AddFd {
                    fdset_id: Some(3),
                    opaque: Some("x"),
                }),
                r#"{"execute":"add-fd","arguments":{"fdset-id":3,"opaque":"x"}}"#,
            ),
            (
                encode(&RemoveFd {
                    fdset_id: 3,
                    fd: None,
                }),
                r#"{"execute":"remove-fd","arguments":{"fdset-id":3}}"#,
            ),
            (
                encode(
                    &DeviceAdd::new("pci-bridge")
                        .id("br0")
                        .bus("pci.0")
                        .props(&[("chassis_nr", Prop::Int(1)), ("shpc", Prop::Bool(false))]),
                ),
                r#"{"execute":"device_add","arguments":{"driver":"pci-bridge","id":"br0","bus":"pci.0","chassis_nr":1,"shpc":false}}"#,
            ),
            (
                encode(&QomSet {
                    path: "/machine",
                    property: "x",
                    value: 5u8,
                }),
                r#"{"execute":"qom-set","arguments":{"path":"/machine","property":"x","value":5}}"#,
            ),
            (
                encode(&BlockdevDel { node_name: "n0" }),
                r#"{"execute":"blockdev-del","arguments":{"node-name":"n0"}}"#,
            ),
            (
                encode(&Migrate::new("unix:/tmp/m")),
                r#"{"execute":"migrate","arguments":{"uri":"unix:/tmp/m"}}"#,
            ),
            (
                encode(&Screendump {
                    format: Some(ImageFormat::Png),
                    ..Screendump::new("/tmp/s.png")
                }),
                r#"{"execute":"screendump","arguments":{"filename":"/tmp/s.png","format":"png"}}"#,
            ),
            (
                encode(&ObjectDel { id: "o" }),
                r#"{"execute":"object-del","arguments":{"id":"o"}}"#,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.as_str(), want);
        }
    }

    #[test]
    fn outputs_decode_real_replies() {
        // Values recorded from QEMU 7.2.22.
        let v: VersionInfo<'_> = RawJson::parse(
            r#"{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}"#,
        )
        .unwrap()
        .deserialize()
        .unwrap();
        assert_eq!(v.qemu.to_string_buf().as_str(), "7.2.22");
        let s: StatusInfo =
            RawJson::parse(r#"{"status": "running", "singlestep": false, "running": true}"#)
                .unwrap()
                .deserialize()
                .unwrap();
        assert_eq!(s.status, RunState::Running);
        let s: StatusInfo = RawJson::parse(r#"{"status": "from-the-future", "running": false}"#)
            .unwrap()
            .deserialize()
            .unwrap();
        assert_eq!(s.status, RunState::Unknown);
        let k: KvmInfo = RawJson::parse(r#"{"enabled": false, "present": true}"#)
            .unwrap()
            .deserialize()
            .unwrap();
        assert!(k.present && !k.enabled);
        let n: NameInfo<'_> = RawJson::parse("{}").unwrap().deserialize().unwrap();
        assert_eq!(n.name, None);
        let _: Empty = RawJson::parse(r#"{"new": 1}"#)
            .unwrap()
            .deserialize()
            .unwrap();
        let a: AddfdInfo = RawJson::parse(r#"{"fd": 25, "fdset-id": 0}"#)
            .unwrap()
            .deserialize()
            .unwrap();
        assert_eq!((a.fdset_id, a.fd), (0, 25));
    }

    #[test]
    fn event_data_decodes() {
        let d: <Shutdown as EventKind>::Data<'_> =
            RawJson::parse(r#"{"guest": false, "reason": "host-qmp-quit"}"#)
                .unwrap()
                .deserialize()
                .unwrap();
        assert_eq!(d.reason, ShutdownCause::HostQmpQuit);
        let d: <DeviceDeleted as EventKind>::Data<'_> =
            RawJson::parse(r#"{"path": "/machine/peripheral/d0", "device": "d0"}"#)
                .unwrap()
                .deserialize()
                .unwrap();
        assert_eq!(d.device, Some("d0"));
        let d: <BlockJobCompleted as EventKind>::Data<'_> = RawJson::parse(
            r#"{"device": "j", "len": 10, "offset": 10, "speed": 0, "type": "mirror"}"#,
        )
        .unwrap()
        .deserialize()
        .unwrap();
        assert_eq!((d.kind, d.error), (JobType::Mirror, None));
        let d: <Migration as EventKind>::Data<'_> = RawJson::parse(r#"{"status": "completed"}"#)
            .unwrap()
            .deserialize()
            .unwrap();
        assert_eq!(d.status, MigrationStatus::Completed);
        assert_eq!(<events::Stop as EventKind>::NAME, "STOP");
    }

    impl VersionTriple {
        fn to_string_buf(self) -> heapless::String<32> {
            let mut s = heapless::String::new();
            fmt::Write::write_fmt(&mut s, format_args!("{self}")).unwrap();
            s
        }
    }
}
