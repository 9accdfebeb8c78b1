//! End-to-end tests of the generated QMP vocabulary (`qmp_std::qapi`) and the runtime
//! `Schema` against a real QEMU 7.2: every query command's reply decodes into its type, and a
//! backup job, a migration to a file and a NIC hotplug run through typed commands and events.

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use qmp_e2e::{Address, Monitor, Qemu};
use qmp_std::qapi::{self, events};
use qmp_std::serde_json::{Value, json};
use qmp_std::{Client, ClientBuilder, EventKind, Schema};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A QEMU started with `extra` arguments after the harness's own (`-machine none
/// -nodefaults -display none`, so `-machine pc` here overrides the machine type), and a
/// blocking client to it.
#[track_caller]
fn start(extra: &[&str]) -> (Qemu, Client<UnixStream>) {
    let qemu = Qemu::builder(Monitor::Unix)
        .args(extra)
        .start()
        .unwrap_or_else(|e| panic!("start QEMU: {e}"));
    let Address::Unix(path) = qemu.address() else {
        panic!("not a Unix socket")
    };
    let client = ClientBuilder::new()
        .connect_timeout(Some(TIMEOUT))
        .command_timeout(Some(TIMEOUT))
        .connect_unix(path)
        .unwrap_or_else(|e| panic!("connect: {e}\nQEMU said: {}", qemu.output()));
    (qemu, client)
}

const PC: &[&str] = &[
    "-machine",
    "pc",
    "-S",
    "-blockdev",
    "driver=null-co,node-name=null0,size=1048576",
    "-device",
    "virtio-blk-pci,drive=null0,id=vblk0",
];

#[test]
fn every_query_command_decodes_into_its_type() {
    let (qemu, mut qmp) = start(PC);
    let schema = Schema::fetch(&mut qmp).expect("query-qmp-schema");
    let mut decoded = Vec::new();
    let mut refused = Vec::new();
    for name in schema.commands() {
        if !(name.starts_with("query-") || name.starts_with("x-query-")) {
            continue;
        }
        let arguments = schema.arguments(name).expect("a command");
        if arguments
            .iter()
            .any(|a| !a.optional && a.when.is_none() && !a.path.contains('.'))
        {
            continue; // Needs arguments.
        }
        let reply = match qmp.execute_raw(name, &Value::Null) {
            Ok(reply) => reply,
            Err(qmp_std::Error::Qmp(e)) => {
                refused.push(format!("{name} ({})", e.class));
                continue;
            }
            Err(e) => panic!("{name}: {e}\nQEMU said: {}", qemu.output()),
        };
        let (_, _, check) = qapi::check::COMMANDS
            .iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} has no Rust type"));
        // Decode into the Rust type and encode it back: QEMU 7.2's reply must come back the
        // same, so no member was lost on the way.
        let back = check(reply.clone()).unwrap_or_else(|e| panic!("{name}: {e}\nreply: {reply}"));
        if let Some(d) = diff(&reply, &back, "$") {
            panic!("{name}: the typed value does not give back QEMU's reply: {d}");
        }
        decoded.push(name);
    }
    eprintln!(
        "decoded {} query commands: {}",
        decoded.len(),
        decoded.join(" ")
    );
    eprintln!("refused by QEMU on -machine pc: {}", refused.join(", "));
    for expected in [
        "query-block",
        "query-pci",
        "query-cpus-fast",
        "query-hotpluggable-cpus",
        "query-qmp-schema",
        "query-machines",
        "query-migrate",
        "query-jobs",
    ] {
        assert!(decoded.contains(&expected), "{expected} not decoded");
    }
    assert!(
        decoded.len() >= 50,
        "only {} query commands decoded",
        decoded.len()
    );
}

/// The first JSON path where `got` differs from `want`.
fn diff(want: &Value, got: &Value, path: &str) -> Option<String> {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .find_map(|(k, va)| match b.get(k) {
                None => Some(format!("{path}.{k}: lost ({va})")),
                Some(vb) => diff(va, vb, &format!("{path}.{k}")),
            })
            .or_else(|| {
                b.keys()
                    .find(|k| !a.contains_key(*k))
                    .map(|k| format!("{path}.{k}: added"))
            }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (va, vb))| diff(va, vb, &format!("{path}[{i}]"))),
        _ if want == got => None,
        _ => Some(format!("{path}: QEMU sent {want}, the type gives {got}")),
    }
}

#[test]
fn block_cpus_pci_and_hotpluggable_cpus_typed() {
    let (_qemu, mut qmp) = start(PC);
    let blocks = qmp.execute(&qapi::QueryBlock).unwrap();
    let vblk = blocks
        .iter()
        .find(|b| b.qdev.as_deref().is_some_and(|q| q.contains("vblk0")))
        .unwrap_or_else(|| panic!("{blocks:#?}"));
    let inserted = vblk.inserted.as_ref().expect("a medium");
    assert_eq!(inserted.node_name.as_deref(), Some("null0"));
    assert_eq!(inserted.drv, "null-co");
    assert_eq!(inserted.image.virtual_size, 1 << 20);

    let cpus = qmp.execute(&qapi::QueryCpusFast).unwrap();
    assert_eq!(cpus.len(), 1);
    assert_eq!(cpus[0].cpu_index, 0);
    assert!(matches!(cpus[0].target, qapi::CpuInfoFastTarget::X8664(_)));
    assert_eq!(cpus[0].target.tag(), "x86_64");

    let pci = qmp.execute(&qapi::QueryPci).unwrap();
    let devices: Vec<&qapi::PciDeviceInfo> = pci.iter().flat_map(|bus| &bus.devices).collect();
    let virtio = devices
        .iter()
        .find(|d| d.qdev_id == "vblk0")
        .unwrap_or_else(|| panic!("{devices:#?}"));
    assert_eq!(virtio.id.vendor, 0x1af4); // Red Hat / virtio
    assert!(
        devices
            .iter()
            .any(|d| d.class_info.desc.as_deref() == Some("Host bridge"))
    );

    let hotpluggable = qmp.execute(&qapi::QueryHotpluggableCpus).unwrap();
    assert!(!hotpluggable.is_empty());
    assert!(
        hotpluggable.iter().any(|c| c.qom_path.is_some()),
        "{hotpluggable:#?}"
    );
    assert!(hotpluggable.iter().all(|c| c.vcpus_count == 1));
}

#[test]
fn nic_hotplug_and_qom_get_typed() {
    let (qemu, mut qmp) = start(&["-machine", "pc", "-S"]);
    qmp.execute(&qapi::NetdevAdd(qapi::Netdev::new(
        "user0",
        qapi::NetdevType::User(qapi::NetdevUserOptions::default().hostname("guest")),
    )))
    .unwrap_or_else(|e| panic!("netdev_add: {e}\nQEMU said: {}", qemu.output()));
    let mac = String::from("52:54:00:12:34:56"); // A `&String` is fine too.
    qmp.execute(
        &qapi::DeviceAdd::new("virtio-net-pci")
            .id("nic0")
            .prop("netdev", "user0")
            .prop("mac", &mac)
            .prop("mq", false),
    )
    .unwrap();
    let got: String = qmp
        .execute(&qapi::QomGet::new("/machine/peripheral/nic0", "mac").typed())
        .unwrap();
    assert_eq!(got, mac);
    let mq: bool = qmp
        .execute(&qapi::QomGet::new("/machine/peripheral/nic0", "mq").typed())
        .unwrap();
    assert!(!mq);
    // A type that does not fit keeps the reply's JSON in the error.
    let err = qmp
        .execute(&qapi::QomGet::new("/machine/peripheral/nic0", "mac").typed::<u32>())
        .unwrap_err();
    let qmp_std::Error::Decode(decode) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(decode.value(), json!("52:54:00:12:34:56"));
    // The netdev is there, and the NIC on the PCI bus.
    let rx = qmp
        .execute(&qapi::QueryRxFilter::default().name("nic0"))
        .unwrap();
    assert_eq!(rx[0].main_mac, "52:54:00:12:34:56");
}

#[test]
fn backup_job_with_typed_events() {
    let (qemu, mut qmp) = start(&[]);
    for node in ["src", "dst"] {
        qmp.execute(&qapi::BlockdevAdd::from(
            qapi::BlockdevOptions::new(qapi::BlockdevOptionsDriver::NullCo(
                qapi::BlockdevOptionsNull::default().size(4 << 20),
            ))
            .node_name(node),
        ))
        .unwrap_or_else(|e| panic!("blockdev-add {node}: {e}\nQEMU said: {}", qemu.output()));
    }
    let nodes = qmp.execute(&qapi::QueryNamedBlockNodes::default()).unwrap();
    let names: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|n| n.node_name.as_deref())
        .collect();
    assert_eq!(names, BTreeSet::from(["dst", "src"]));

    qmp.execute(
        &qapi::BlockdevBackup::new("src", qapi::MirrorSyncMode::Full, "dst")
            .job_id("job0")
            .auto_dismiss(false),
    )
    .unwrap();
    let mut states = Vec::new();
    let mut completed = None;
    while states.last() != Some(&qapi::JobStatus::Concluded) {
        let event = qmp.next_event(TIMEOUT).unwrap();
        if event.is::<events::JobStatusChange>() {
            let change = event.data_as::<events::JobStatusChange>().unwrap();
            assert_eq!(change.id, "job0");
            states.push(change.status);
        } else if event.is::<events::BlockJobCompleted>() {
            completed = Some(event.data_as::<events::BlockJobCompleted>().unwrap());
        }
    }
    use qapi::JobStatus::*;
    // The job may pause and resume on the way (drained sections): Created, Running,
    // (Paused, Running)*, Waiting, Pending, Concluded.
    let (start, rest) = states.split_at(2);
    assert_eq!(start, [Created, Running], "{states:?}");
    let (middle, end) = rest.split_at(rest.len() - 3);
    assert_eq!(end, [Waiting, Pending, Concluded], "{states:?}");
    assert!(
        middle.iter().all(|s| matches!(s, Paused | Running)),
        "{states:?}"
    );
    let completed = completed.expect("BLOCK_JOB_COMPLETED before the job concluded");
    assert_eq!(
        (completed.device.as_str(), &completed.r#type),
        ("job0", &qapi::JobType::Backup)
    );
    assert_eq!(
        (completed.len, completed.offset, completed.error),
        (4 << 20, 4 << 20, None)
    );

    let jobs = qmp.execute(&qapi::QueryJobs).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].status.clone(), jobs[0].r#type.clone()),
        (Concluded, qapi::JobType::Backup)
    );
    qmp.execute(&qapi::JobDismiss { id: "job0".into() })
        .unwrap();
    let event = qmp
        .wait_event(events::JobStatusChange::NAME, TIMEOUT)
        .unwrap();
    assert_eq!(
        event.data_as::<events::JobStatusChange>().unwrap().status,
        Null
    );
    assert!(qmp.execute(&qapi::QueryJobs).unwrap().is_empty());
}

#[test]
fn migration_to_a_file_with_typed_events() {
    let (qemu, mut qmp) = start(&["-machine", "pc", "-S", "-m", "32"]);
    let file = qemu.dir().join("vm.migration");
    qmp.execute(&qapi::MigrateSetCapabilities {
        capabilities: vec![qapi::MigrationCapabilityStatus {
            capability: qapi::MigrationCapability::Events,
            state: true,
        }],
    })
    .unwrap();
    let caps = qmp.execute(&qapi::QueryMigrateCapabilities).unwrap();
    assert!(
        caps.iter()
            .any(|c| c.capability == qapi::MigrationCapability::Events && c.state)
    );
    qmp.execute(&qapi::MigrateSetParameters::default().max_bandwidth(1i64 << 40))
        .unwrap();
    // QEMU 7.2 has no `file:` URI; `exec:` runs a shell command that gets the stream.
    qmp.execute(&qapi::Migrate::new(format!(
        "exec:cat > {}",
        file.display()
    )))
    .unwrap();
    let mut statuses = Vec::new();
    let mut passes = 0;
    loop {
        let event = qmp
            .next_event(TIMEOUT)
            .unwrap_or_else(|e| panic!("{e} after {statuses:?}\nQEMU said: {}", qemu.output()));
        if event.is::<events::Migration>() {
            let status = event.data_as::<events::Migration>().unwrap().status;
            let done = matches!(
                status,
                qapi::MigrationStatus::Completed | qapi::MigrationStatus::Failed
            );
            statuses.push(status);
            if done {
                break;
            }
        } else if event.is::<events::MigrationPass>() {
            let pass = event.data_as::<events::MigrationPass>().unwrap();
            assert!(pass.pass >= 1);
            passes += 1;
        }
    }
    use qapi::MigrationStatus::*;
    assert_eq!(statuses.first(), Some(&Setup), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&Completed), "{statuses:?}");
    assert!(statuses.contains(&Active), "{statuses:?}");
    assert!(passes >= 1);
    let info = qmp.execute(&qapi::QueryMigrate).unwrap();
    assert_eq!(info.status, Some(Completed));
    assert!(info.ram.expect("RAM statistics").transferred > 0);
    // `cat` may still be writing when QEMU reports completion; the file is there.
    assert!(file.exists());
}

#[test]
fn schema_from_the_server_checks_arguments() {
    let (_qemu, mut qmp) = start(&[]);
    let schema = Schema::fetch(&mut qmp).unwrap();
    assert_eq!(schema.commands().count(), 216);
    let err = schema
        .check(
            "blockdev-add",
            &json!({"driver": "null-co", "node-name": "n", "szie": 1}),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "blockdev-add: szie: no such member (did you mean \"size\"?)"
    );
    // The same arguments, sent anyway: QEMU refuses them too.
    let sent = qmp.execute_raw(
        "blockdev-add",
        &json!({"driver": "null-co", "node-name": "n", "szie": 1}),
    );
    assert!(sent.unwrap_err().is_qmp());
    // Every typed command the test above sent checks out.
    let args = qmp_std::serde_json::to_value(
        qapi::BlockdevBackup::new("src", qapi::MirrorSyncMode::Full, "dst").job_id("j"),
    )
    .unwrap();
    schema.check(qapi::BlockdevBackup::NAME, &args).unwrap();
}

use qmp_std::Command as _;
