#!/usr/bin/env python3
"""Generate the typed QMP vocabulary (qmp-qapi) (qmp-qapi/src/generated/) from a recorded
`query-qmp-schema` reply.

Run from the workspace root:   bash scripts/gen-qapi.sh
(or: python3 scripts/gen_qapi.py [SCHEMA.jsonl]; then rustfmt the output, as the .sh does.)

Input: qmp-proto/tests/data/query-qmp-schema.jsonl, the reply of a real QEMU 7.2 (see the
README beside it). Output: deterministic Rust source, one file per area of the vocabulary, plus
`check.rs`, a table from every schema entity to a function that round-trips JSON through its
Rust type (the schema coverage test walks the schema with it).

Introspection masks the names of types ("1", "262", ...). This script names them from where
they are first met (commands in schema order, then events): a command's return type is
`<Command>Return` (`query-foo` returns `FooInfo`), an event's data `<Event>Data`, a member's type
`<Parent><Member>`, a union branch `<Union><Case>`; NAMES below gives the types users meet most
their QAPI names. Nothing of QEMU's documentation text is used: the schema reply has none.
Python 3 standard library only.
"""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(ROOT, "qmp-proto", "tests", "data", "query-qmp-schema.jsonl")
OUT = os.path.join(ROOT, "qmp-qapi", "src", "generated")
DOC_URL = "https://qemu.readthedocs.io/en/v7.2.0/interop/qemu-qmp-ref.html"

# Readable names for the types users meet most, keyed by the path where the generator first
# meets them: "ret:COMMAND", "arg:COMMAND" (a union of arguments), "data:EVENT",
# "Parent.member", "Union.case", or "enum:v1,v2,..." (an enum by its values).
NAMES = {
    "ret:query-status": "StatusInfo",
    "StatusInfo.status": "RunState",
    "ret:query-version": "VersionInfo",
    "VersionInfo.qemu": "VersionTriple",
    "ret:query-name": "NameInfo",
    "ret:query-kvm": "KvmInfo",
    "ret:query-jobs": "JobInfo",
    "JobInfo.type": "JobType",
    "JobInfo.status": "JobStatus",
    "ret:query-block-jobs": "BlockJobInfo",
    "ret:query-block": "BlockInfo",
    "BlockInfo.inserted": "BlockDeviceInfo",
    "BlockDeviceInfo.image": "ImageInfo",
    "BlockDeviceInfo.cache": "BlockdevCacheInfo",
    "BlockDeviceInfo.detect_zeroes": "BlockdevDetectZeroesOptions",
    "BlockInfo.io-status": "BlockDeviceIoStatus",
    "ImageInfo.format-specific": "ImageInfoSpecific",
    "ImageInfo.snapshots": "SnapshotInfo",
    "ret:query-named-block-nodes": "BlockDeviceInfo",
    "ret:query-blockstats": "BlockStats",
    "ret:query-cpus-fast": "CpuInfoFast",
    "CpuInfoFast.props": "CpuInstanceProperties",
    "CpuInfoFast.target": "SysEmuTarget",
    "ret:query-hotpluggable-cpus": "HotpluggableCpu",
    "ret:query-pci": "PciInfo",
    "PciInfo.devices": "PciDeviceInfo",
    "ret:query-migrate": "MigrationInfo",
    "MigrationInfo.status": "MigrationStatus",
    "MigrationInfo.ram": "MigrationStats",
    "ret:query-migrate-capabilities": "MigrationCapabilityStatus",
    "MigrateSetCapabilities.capabilities": "MigrationCapabilityStatus",
    "MigrationCapabilityStatus.capability": "MigrationCapability",
    "ret:query-migrate-parameters": "MigrationParameters",
    "ret:query-commands": "CommandInfo",
    "ret:query-events": "EventInfo",
    "ret:query-fdsets": "FdsetInfo",
    "FdsetInfo.fds": "FdsetFdInfo",
    "ret:add-fd": "AddfdInfo",
    "ret:qom-list": "ObjectPropertyInfo",
    "ret:query-machines": "MachineInfo",
    "ret:query-chardev": "ChardevInfo",
    "ret:query-iothreads": "IothreadInfo",
    "ret:query-memdev": "Memdev",
    "ret:query-qmp-schema": "SchemaInfo",
    "ret:query-target": "TargetInfo",
    "ret:query-uuid": "UuidInfo",
    "ret:query-balloon": "BalloonInfo",
    "ret:query-vnc": "VncInfo",
    "ret:query-mice": "MouseInfo",
    "ret:query-rocker": "RockerSwitch",
    "ret:query-tpm": "TpmInfo",
    "ret:query-dump": "DumpQueryResult",
    "ret:query-rx-filter": "RxFilterInfo",
    "ret:query-memory-devices": "MemoryDeviceInfo",
    "ret:query-acpi-ospm-status": "AcpiOspmStatus",
    "arg:blockdev-add": "BlockdevOptions",
    "BlockdevOptions.driver": "BlockdevDriver",
    "BlockdevOptions.cache": "BlockdevCacheOptions",
    "BlockdevOptions.discard": "BlockdevDiscardOptions",
    "BlockdevOptions.bochs": "BlockdevOptionsGenericFormat",
    "BlockdevOptions.qcow2": "BlockdevOptionsQcow2",
    "BlockdevOptions.raw": "BlockdevOptionsRaw",
    "BlockdevOptions.file": "BlockdevOptionsFile",
    "BlockdevOptions.null-aio": "BlockdevOptionsNull",
    "BlockdevOptionsGenericFormat.file": "BlockdevRef",
    "arg:object-add": "ObjectOptions",
    "ObjectOptions.qom-type": "ObjectType",
    "arg:netdev_add": "Netdev",
    "Netdev.type": "NetClientDriver",
    "Netdev.user": "NetdevUserOptions",
    "arg:transaction": "TransactionArgs",
    "BlockdevBackup.sync": "MirrorSyncMode",
    "BlockdevBackup.bitmap-mode": "BitmapSyncMode",
    "BlockdevBackup.on-source-error": "BlockdevOnError",
    "data:SHUTDOWN": "ShutdownData",
    "ShutdownData.reason": "ShutdownCause",
    "data:MIGRATION": "MigrationData",
    "data:JOB_STATUS_CHANGE": "JobStatusChangeData",
    "data:BLOCK_JOB_COMPLETED": "BlockJobCompletedData",
    "data:DEVICE_DELETED": "DeviceDeletedData",
    "BlockJobInfo.status": "JobStatus",
    "DriveBackup.sync": "MirrorSyncMode",
    "DriveBackup.x-perf": "BackupPerf",
    "DriveBackup.bitmap-mode": "BitmapSyncMode",
    "BlockCommit.on-error": "BlockdevOnError",
    "DriveMirror.copy-mode": "MirrorCopyMode",
    "DriveMirror.mode": "NewImageMode",
    "ChardevAdd.backend": "ChardevBackend",
    "ChardevAddReturn": "ChardevReturn",
    "ret:chardev-add": "ChardevReturn",
    "ret:chardev-change": "ChardevReturn",
    "NbdServerStart.addr": "SocketAddressLegacy",
    "arg:block-export-add": "BlockExportOptions",
    "BlockExportOptions.type": "BlockExportType",
    "SendKey.keys": "KeyValue",
    "InputSendEvent.events": "InputEvent",
    "Transaction.actions": "TransactionAction",
    "Transaction.properties": "TransactionProperties",
    "BlockStats.stats": "BlockDeviceStats",
    "arg:set-numa-node": "NumaOptions",
    "YankInstances": "YankInstance",
    "Yank.instances": "YankInstance",
    "SetAction.reboot": "RebootAction",
    "SetAction.shutdown": "ShutdownAction",
    "SetAction.panic": "PanicAction",
    "SetAction.watchdog": "WatchdogAction",
    "arg:set_password": "SetPasswordOptions",
    "arg:expire_password": "ExpirePasswordOptions",
    "arg:display-reload": "DisplayReloadOptions",
    "arg:display-update": "DisplayUpdateOptions",
    "arg:query-stats": "StatsFilter",
    "ret:query-stats": "StatsResult",
    "ret:query-display-options": "DisplayOptions",
    "arg:blockdev-create": "BlockdevCreateOptions",
    "arg:x-blockdev-amend": "BlockdevAmendOptions",
    "Screendump.format": "ImageFormat",
    "BlockdevOptionsBlkdebug.image": "BlockdevRef",
    "BlockdevOptionsQcow2.backing": "BlockdevRefOrNull",
    "BlockdevOptionsQcow2.overlap-check": "Qcow2OverlapChecks",
    "XBlockdevSetIothread.iothread": "StrOrNull",
    "BlockDirtyBitmapMerge.bitmaps": "BlockDirtyBitmapOrStr",
    "BlockDirtyBitmapOrStr.1": "BlockDirtyBitmap",
    "StatsResult.stats": "Stats",
    "Stats.value": "StatsValue",
    "WatchdogSetAction.action": "WatchdogAction",
    "ChardevInfo.frontend-open": None,
    "enum:auto,on,off": "OnOffAuto",
    "enum:on,off,split": "OnOffSplit",
    "enum:ipv4,ipv6,unix,vsock,unknown": "NetworkAddressFamily",
}

# A note of this project's own for a few commands and events.
NOTES = {
    "migrate": "Progress is in `query-migrate`; QEMU sends `MIGRATION` and `MIGRATION_PASS` events "
               "only after `migrate-set-capabilities` turned the `events` capability on.",
    "MIGRATION": "Sent only after `migrate-set-capabilities` turned the `events` capability on.",
    "MIGRATION_PASS": "Sent only after `migrate-set-capabilities` turned the `events` capability on.",
    "device_add": "The device's own properties, of any JSON type, go in `props` ([`DeviceAdd::prop`]).",
    "qom-get": "[`QomGet::typed`] decodes the value as a type of yours.",
}

# Commands that take members their schema does not list (QAPI `gen: false`): the field that
# holds them.
EXTRA_MEMBERS = {"device_add": "props"}

# Areas: a type lives in the file of the first command or event that reaches it.
AREAS = [
    ("block", ["block", "drive", "nbd", "job", "bitmap", "snapshot", "eject", "change-backing",
               "blockdev", "transaction", "pr-manager", "export", "x-debug-block", "change-vnc",
               "query-named", "change-medium", "image"]),
    ("migration", ["migrat", "colo", "dirty", "replay", "xen", "savevm", "loadvm", "announce",
                   "calc-", "vcpu-dirty", "set-vcpu", "cancel-vcpu"]),
    ("char", ["chardev", "ringbuf", "serial", "vserport"]),
    ("net", ["netdev", "net", "rx-filter", "set-link", "rocker", "nic", "failover"]),
    ("ui", ["vnc", "spice", "display", "screendump", "input", "send-key", "password", "mice",
            "mouse", "ui", "audio", "dbus"]),
    ("qom", ["qom", "object", "device", "human", "qmp", "schema", "command", "event", "yank",
             "stats", "trace", "fd", "getfd", "closefd", "quit", "version", "name"]),
]


def area_of(owner):
    n = owner.lower().replace("_", "-")
    for area, keys in AREAS:
        if any(k in n for k in keys):
            return area
    return "machine"


RUST_KEYWORDS = {
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
}


def camel(name):
    parts = [p for p in re.split(r"[-_.+ ]", name) if p]
    out = ""
    for p in parts:
        if p.isupper() or p.islower() or p.isdigit():
            out += p[:1].upper() + p[1:].lower()
        else:
            out += p[:1].upper() + p[1:]
    if not out or out[0].isdigit():
        out = "V" + out
    return out


def snake(name):
    s = re.sub(r"[-.+ ]", "_", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()
    if s[0].isdigit():
        s = "_" + s
    if s in RUST_KEYWORDS:
        s = "r#" + s
    return s


def doc_link(kind, name):
    return f"[QEMU 7.2 QMP reference]({DOC_URL}) ({kind} `{name}`)"


class Gen:
    def __init__(self, schema):
        self.entities = schema
        self.by = {e["name"]: e for e in schema}
        self.names = {}  # masked name -> Rust name
        self.taken = set()
        self.area = {}  # masked name -> area
        self.order = []  # masked names in the order they were named
        self.boxed = set()  # (masked parent, member) edges to Box
        self.commands = [e for e in schema if e["meta-type"] == "command"]
        self.events = [e for e in schema if e["meta-type"] == "event"]
        for e in self.commands:
            self.taken.add(camel(e["name"]))

    # ----- naming -------------------------------------------------------------------------

    def is_empty_object(self, t):
        e = self.by[t]
        return e["meta-type"] == "object" and not e["members"] and "variants" not in e

    def claim(self, want):
        name = want
        i = 2
        while name in self.taken:
            name = f"{want}{i}"
            i += 1
        self.taken.add(name)
        return name

    def name_type(self, t, path, default, area):
        """Names masked type `t` (and what it reaches) if it has no name yet."""
        e = self.by[t]
        mt = e["meta-type"]
        if mt == "builtin":
            return
        if mt == "array":
            self.name_type(e["element-type"], path, default, area)
            return
        if t in self.names or self.is_empty_object(t):
            return
        want = NAMES.get(path)
        if want is None and mt == "enum":
            want = NAMES.get("enum:" + ",".join(e["values"]))
        if want is None:
            want = default
        name = self.claim(want)
        self.names[t] = name
        self.area[t] = area
        self.order.append(t)
        if mt == "object":
            for m in e["members"]:
                self.name_type(m["type"], f"{name}.{m['name']}", name + camel(m["name"]), area)
            for v in e.get("variants", []):
                self.name_type(v["type"], f"{name}.{v['case']}", name + camel(v["case"]), area)
        elif mt == "alternate":
            for i, m in enumerate(e["members"]):
                self.name_type(m["type"], f"{name}.{i}", f"{name}{i}", area)

    def name_all(self):
        for c in self.commands:
            area = area_of(c["name"])
            arg = self.by[c["arg-type"]]
            cname = camel(c["name"])
            if "variants" in arg:
                self.name_type(c["arg-type"], "arg:" + c["name"], cname + "Args", area)
            else:
                for m in arg["members"]:
                    self.name_type(m["type"], f"{cname}.{m['name']}", cname + camel(m["name"]),
                                   area)
            ret = c["ret-type"]
            base = c["name"][len("query-"):] if c["name"].startswith("query-") else None
            default = camel(base) + "Info" if base else cname + "Return"
            self.name_type(ret, "ret:" + c["name"], default, area)
        for ev in self.events:
            if "arg-type" in ev:
                self.name_type(ev["arg-type"], "data:" + ev["name"], camel(ev["name"]) + "Data",
                               area_of(ev["name"]))

    # ----- recursion: which edges need a Box ---------------------------------------------

    def direct_edges(self, t):
        """(member key, target) pairs where `t` holds a target by value (not in a Vec)."""
        e = self.by[t]
        out = []
        if e["meta-type"] == "object":
            for m in e["members"]:
                out.append((m["name"], m["type"]))
            for v in e.get("variants", []):
                out.append(("case:" + v["case"], v["type"]))
        elif e["meta-type"] == "alternate":
            for i, m in enumerate(e["members"]):
                out.append((f"alt:{i}", m["type"]))
        return [(k, x) for (k, x) in out if self.by[x]["meta-type"] in ("object", "alternate")]

    def find_boxes(self):
        # Box an edge when its target can reach its source through by-value edges.
        reach = {}

        def reachable(t):
            if t in reach:
                return reach[t]
            seen = set()
            stack = [x for _, x in self.direct_edges(t)]
            while stack:
                x = stack.pop()
                if x in seen:
                    continue
                seen.add(x)
                stack.extend(y for _, y in self.direct_edges(x))
            reach[t] = seen
            return seen

        for t in self.order:
            for k, x in self.direct_edges(t):
                if x == t or t in reachable(x):
                    self.boxed.add((t, k))

    # ----- types --------------------------------------------------------------------------

    def takes_null(self, t):
        e = self.by[t]
        if t in ("null", "any"):
            return True
        return e["meta-type"] == "alternate" and any(m["type"] == "null" for m in e["members"])

    def rust_type(self, t):
        e = self.by[t]
        mt = e["meta-type"]
        if mt == "builtin":
            return {"str": "String", "int": "i64", "bool": "bool", "number": "f64",
                    "null": "()", "any": "Value"}[t]
        if mt == "array":
            return f"Vec<{self.rust_type(e['element-type'])}>"
        if self.is_empty_object(t):
            return "Empty"
        return self.names[t]

    def field(self, owner, m, out, boxed_key=None):
        ty = self.rust_type(m["type"])
        if boxed_key is not None and (owner, boxed_key) in self.boxed:
            ty = f"Box<{ty}>"
        fname = snake(m["name"])
        attrs = []
        plain = fname[2:] if fname.startswith("r#") else fname
        if plain != m["name"]:
            attrs.append(f'rename = "{m["name"]}"')
        optional = "default" in m
        if optional:
            attrs.append('default, skip_serializing_if = "Option::is_none"')
            if self.takes_null(m["type"]):
                # `null` is a value here, not the member's absence.
                attrs.append('deserialize_with = "crate::support::some"')
            ty = f"Option<{ty}>"
        what = "Optional member" if optional else "Member"
        out.append(f"    /// {what} `{m['name']}`.")
        if attrs:
            out.append(f"    #[serde({', '.join(attrs)})]")
        out.append(f"    pub {fname}: {ty},")

    def setter_type(self, m, owner):
        """(parameter type, conversion) for a builder taking member `m`."""
        t = m["type"]
        ty = self.rust_type(t)
        boxed = (owner, m["name"]) in self.boxed
        if ty == "Value":
            return "impl Serialize", "crate::support::to_json(value)"
        if self.by[t]["meta-type"] == "array":
            conv = "value.into()"
            return f"impl Into<{ty}>", conv
        conv = "Box::new(value.into())" if boxed else "value.into()"
        return f"impl Into<{ty}>", conv

    def builders(self, t, name, members, flatten=None, setters=True, extra=None):
        """`new` with the required members (and the union branch), and a setter per optional one."""
        req = [m for m in members if "default" not in m]
        out = [f"impl {name} {{"]
        params = []
        inits = []
        for m in req:
            fname = snake(m["name"])
            pty, conv = self.setter_type(m, t)
            params.append(f"{fname}: {pty}")
            inits.append(f"{fname}: {conv.replace('value', fname)},")
        for m in members:
            if "default" in m:
                inits.append(f"{snake(m['name'])}: None,")
        if extra is not None:
            inits.append(f"{extra}: Map::new(),")
        if flatten is not None:
            fname, fty, tag = flatten
            params.append(f"{fname}: {fty}")
            inits.append(f"{fname},")
        if req or flatten is not None:
            out.append(f"    /// A `{name}` with the required members; the optional ones are `None`.")
            out.append(f"    pub fn new({', '.join(params)}) -> Self {{")
            out.append("        Self { " + " ".join(inits) + " }")
            out.append("    }")
        if setters:
            for m in members:
                if "default" not in m:
                    continue
                fname = snake(m["name"])
                pty, conv = self.setter_type(m, t)
                out.append(f"    /// Sets `{m['name']}`.")
                out.append(f"    pub fn {fname}(mut self, value: {pty}) -> Self {{")
                out.append(f"        self.{fname} = Some({conv});")
                out.append("        self")
                out.append("    }")
        out.append("}")
        if len(out) == 2:
            return []
        return out

    def struct(self, t, name, members, doc, derive_default=None, flatten=None, extra=None):
        out = []
        out.extend(doc)
        all_optional = all("default" in m for m in members) and flatten is None
        derives = "Debug, Clone, PartialEq, Serialize, Deserialize"
        if all_optional if derive_default is None else derive_default:
            derives += ", Default"
        else:
            derive_default = False
        out.append(f"#[derive({derives})]")
        out.append(f"pub struct {name} {{")
        for m in members:
            self.field(t, m, out, boxed_key=m["name"])
        if extra is not None:
            out.append("    /// More members, of any JSON type (the command takes members the schema does not list).")
            out.append("    #[serde(flatten)]")
            out.append(f"    pub {extra}: Map<String, Value>,")
        if flatten is not None:
            fname, fty, tag = flatten
            out.append(f"    /// The members that depend on `{tag}`, and `{tag}` itself.")
            out.append("    #[serde(flatten)]")
            out.append(f"    pub {fname}: {fty},")
        out.append("}")
        if self.want_builders(t):
            out.append("")
            b = self.builders(t, name, members, flatten, setters=True, extra=extra)
            if extra is not None and b:
                b.insert(-1, f"    /// Adds a member of any JSON type.")
                b.insert(-1, f"    pub fn prop(mut self, name: impl Into<String>, value: impl Serialize) -> Self {{")
                b.insert(-1, f"        self.{extra}.insert(name.into(), crate::support::to_json(value));")
                b.insert(-1, "        self")
                b.insert(-1, "    }")
            out += b
        return out

    def want_builders(self, t):
        return True

    def enum(self, t, name):
        e = self.by[t]
        out = [f"    /// A QAPI enum ({len(e['values'])} values in QEMU 7.2); an unknown value is kept in `Other`.",
               f"    {name} {{"]
        used = set()
        for v in e["values"]:
            var = camel(v)
            while var in used or var == "Other":
                var += "_"
            used.add(var)
            out.append(f'        /// `{v}`.')
            out.append(f'        {var} = "{v}",')
        out.append("    }")
        return ["qapi_enum! {"] + out + ["}"]

    def union_kind(self, t, name, tag, doc):
        e = self.by[t]
        out = ["qapi_union! {"]
        out.extend("    " + d for d in doc)
        out.append(f'    {name}, "{tag}" {{')
        used = set()
        for v in e["variants"]:
            var = camel(v["case"])
            while var in used or var == "Other":
                var += "_"
            used.add(var)
            ty = self.rust_type(v["type"])
            if (t, "case:" + v["case"]) in self.boxed:
                ty = f"Box<{ty}>"
            out.append(f'        /// `{tag}`: `{v["case"]}`.')
            out.append(f'        {var}("{v["case"]}", {ty}),')
        out.append("    }")
        out.append("}")
        return out

    def alternate(self, t, name, doc):
        e = self.by[t]
        out = list(doc)
        out.append("#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]")
        out.append("#[serde(untagged)]")
        out.append(f"pub enum {name} {{")
        conversions = []
        for i, m in enumerate(e["members"]):
            mt = self.by[m["type"]]
            if m["type"] == "null":
                out.append("    /// JSON `null`.")
                out.append("    Null,")
                continue
            ty = self.rust_type(m["type"])
            if (t, f"alt:{i}") in self.boxed:
                ty = f"Box<{ty}>"
            var = {"str": "Str", "int": "Int", "bool": "Bool", "number": "Number", "any": "Any"}.get(
                m["type"])
            if var is None:
                var = "List" if mt["meta-type"] == "array" else self.names[m["type"]]
            out.append(f"    /// A `{ty}`.")
            out.append(f"    {var}({ty}),")
            conversions.append((var, ty))
        out.append("}")
        # Each branch converts into the alternate (its types differ: QEMU picks the branch by
        # the JSON type), and a string also from `&str`: `BlockdevOptionsQcow2::new("file0")`.
        for var, ty in conversions:
            inner = ty[len("Box<"):-1] if ty.startswith("Box<") else ty
            value = "Box::new(value)" if ty.startswith("Box<") else "value"
            out.append("")
            out.append(f"impl From<{inner}> for {name} {{")
            out.append(f"    fn from(value: {inner}) -> Self {{")
            out.append(f"        Self::{var}({value})")
            out.append("    }")
            out.append("}")
            if inner == "String":
                out.append("")
                out.append(f"impl From<&str> for {name} {{")
                out.append("    fn from(value: &str) -> Self {")
                out.append(f"        Self::{var}(value.to_owned())")
                out.append("    }")
                out.append("}")
        return out

    def type_def(self, t):
        e = self.by[t]
        name = self.names[t]
        mt = e["meta-type"]
        doc = [f"/// A QAPI {mt} of QEMU 7.2 (masked as `{t}` by introspection)."]
        if mt == "enum":
            return self.enum(t, name)
        if mt == "alternate":
            return self.alternate(t, name, doc + ["/// One of several JSON types (a QAPI alternate)."])
        if "variants" in e:
            tag = e["tag"]
            base = [m for m in e["members"] if m["name"] != tag]
            if not base:
                return self.union_kind(t, name, tag, doc + [f"/// A union by `{tag}`; an unknown `{tag}` keeps its members in `Other`."])
            kind = self.claim(name + camel(tag))
            self.kinds[t] = kind
            out = self.struct(t, name, base, doc + [f"/// A union by `{tag}`: common members, then the branch in `{snake(tag)}`."],
                              derive_default=False, flatten=(snake(tag), kind, tag))
            out.append("")
            out += self.union_kind(t, kind, tag, [f"/// The `{tag}` of a [`{name}`] and the members that depend on it."])
            return out
        return self.struct(t, name, e["members"], doc)

    # ----- commands and events -------------------------------------------------------------

    def command_def(self, c):
        name = camel(c["name"])
        arg = self.by[c["arg-type"]]
        ret = self.rust_type(c["ret-type"])
        doc = [f"/// `{c['name']}`: see the {doc_link('command', c['name'])}."]
        if c["name"] in NOTES:
            doc += ["///", "/// " + NOTES[c["name"]]]
        if c.get("allow-oob"):
            doc.append("///")
            doc.append("/// QEMU allows it out of band (`execute_oob`).")
        feats = c.get("features", [])
        if feats:
            doc.append("///")
            doc.append("/// Features: " + ", ".join(f"`{f}`" for f in feats) + ".")
        out = []
        if self.is_empty_object(c["arg-type"]):
            out += doc
            out.append("#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]")
            out.append(f"pub struct {name};")
        elif "variants" in arg:
            out += doc
            out.append("///")
            out.append(f"/// Its arguments are a union: [`{self.names[c['arg-type']]}`].")
            out.append("#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]")
            out.append("#[serde(transparent)]")
            out.append(f"pub struct {name}(pub {self.names[c['arg-type']]});")
            out.append("")
            out.append(f"impl From<{self.names[c['arg-type']]}> for {name} {{")
            out.append(f"    fn from(arguments: {self.names[c['arg-type']]}) -> Self {{")
            out.append("        Self(arguments)")
            out.append("    }")
            out.append("}")
        else:
            out += self.struct(c["arg-type"], name, arg["members"], doc,
                               extra=EXTRA_MEMBERS.get(c["name"]))
        out.append("")
        out.append(f"impl Command for {name} {{")
        out.append(f'    const NAME: &\'static str = "{c["name"]}";')
        out.append(f"    type Output<'de> = {ret};")
        out.append("}")
        return out

    def event_def(self, ev):
        name = camel(ev["name"])
        data = self.rust_type(ev["arg-type"]) if "arg-type" in ev else "Empty"
        out = [f"/// `{ev['name']}`: see the {doc_link('event', ev['name'])}."]
        if ev["name"] in NOTES:
            out += ["///", "/// " + NOTES[ev["name"]]]
        out += [
               "#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]",
               f"pub struct {name};", "",
               f"impl EventKind for {name} {{",
               f'    const NAME: &\'static str = "{ev["name"]}";',
               f"    type Data<'de> = {data};", "}"]
        return out

    # ----- output ---------------------------------------------------------------------------

    def generate(self):
        self.name_all()
        self.find_boxes()
        self.kinds = {}
        files = {}
        header = ["// @generated by scripts/gen_qapi.py from QEMU 7.2's query-qmp-schema; do not edit.", ""]

        def body(area):
            return files.setdefault(area, [])

        for c in self.commands:
            body(area_of(c["name"])).extend(self.command_def(c) + [""])
        for t in self.order:
            body(self.area[t]).extend(self.type_def(t) + [""])
        areas = sorted(files)
        os.makedirs(OUT, exist_ok=True)
        for area in areas:
            text = header + [f"//! {area}: commands and types (generated).", "",
                             "use super::*;", ""] + files[area]
            write(os.path.join(OUT, area + ".rs"), text)
        ev = header + ["//! Events (generated).", "", "use super::*;", ""]
        for e in self.events:
            ev += self.event_def(e) + [""]
        write(os.path.join(OUT, "events.rs"), ev)

        mod = header + [
            "//! The generated vocabulary, one file per area; everything is re-exported flat.",
            "",
            "#![allow(clippy::all)]",
            "",
            "use crate::support::*;",
            "",
        ]
        for area in areas:
            mod.append(f"mod {area};")
        for area in areas:
            mod.append(f"pub use {area}::*;")
        mod += ["", "/// Event types; each implements [`EventKind`].", "pub mod events;", "",
                "#[doc(hidden)]", "pub mod check;", ""]
        write(os.path.join(OUT, "mod.rs"), mod)
        write(os.path.join(OUT, "check.rs"), self.check_table())

    def check_table(self):
        out = ["// @generated by scripts/gen_qapi.py from QEMU 7.2's query-qmp-schema; do not edit.", "",
               "//! Every schema entity and the Rust type generated for it, for the coverage test.", "",
               "use super::*;", "use crate::support::check::{Check, rt, rt_enum};", "",
               "/// Commands: (name, arguments, return).",
               "pub const COMMANDS: &[(&str, Check, Check)] = &["]
        for c in self.commands:
            name = camel(c["name"])
            out.append(f'    ("{c["name"]}", rt::<{name}>, rt::<{self.rust_type(c["ret-type"])}>),')
        out.append("];")
        out.append("")
        out.append("/// Events: (name, data).")
        out.append("pub const EVENTS: &[(&str, Check)] = &[")
        for e in self.events:
            data = self.rust_type(e["arg-type"]) if "arg-type" in e else "Empty"
            out.append(f'    ("{e["name"]}", rt::<events::{camel(e["name"])}Data>),'
                       if False else f'    ("{e["name"]}", rt::<{data}>),')
        out.append("];")
        out.append("")
        out.append("/// Named types: (introspection name, Rust name, check).")
        out.append("pub const TYPES: &[(&str, &str, Check)] = &[")
        for t in self.order:
            f = "rt_enum" if self.by[t]["meta-type"] == "enum" else "rt"
            out.append(f'    ("{t}", "{self.names[t]}", {f}::<{self.names[t]}>),')
        out.append("];")
        return out


def write(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else SCHEMA
    with open(path) as f:
        schema = json.loads(f.read())["return"]
    Gen(schema).generate()


if __name__ == "__main__":
    main()
