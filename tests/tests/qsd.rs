//! `qemu-storage-daemon` (QSD) with every client, end to end with block jobs.
//!
//! What differs from QEMU's system emulator (checked here): the greeting is the same (the
//! same version and package, `oob` offered), but there is no VM, so `query-status`, `stop`,
//! `cont`, `query-name`, `query-kvm` and `human-monitor-command` (HMP) are
//! `CommandNotFound`; block nodes, jobs and their events are all there.

mod support;

use std::time::Duration;

use qmp_e2e::qsd::Qsd;
use qmp_std::commands::{QueryNamedBlockNodes, QueryStatus};
use qmp_std::serde_json::{Value, json};
use qmp_std::{Client, Error, SharedClient};

const SIZE: u64 = 64 << 20;

fn nodes() -> [String; 2] {
    [
        format!("null-co,node-name=src,size={SIZE}"),
        format!("null-co,node-name=dst,size={SIZE}"),
    ]
}

fn start(tag: &str) -> Qsd {
    let nodes = nodes();
    Qsd::start(tag, &[&nodes[0], &nodes[1]])
}

/// QSD's greeting is QEMU's: the same version, `oob` offered (and here enabled).
#[track_caller]
fn assert_greets_as_qemu(server: &qmp_std::qmp_proto::ServerInfo) {
    let (major, minor, micro) = support::qemu_version_triple();
    assert_eq!(
        (
            server.version.major,
            server.version.minor,
            server.version.micro
        ),
        (major, minor, micro)
    );
    assert!(server.oob_offered && server.oob_enabled);
}

fn backup(job: &str) -> Value {
    json!({"job-id": job, "device": "src", "target": "dst", "sync": "full"})
}

#[test]
fn the_blocking_client_greeting_differences_and_a_backup_job() {
    let mut qsd = start("blocking");
    let mut qmp = Client::connect_unix(qsd.socket()).unwrap();
    assert_greets_as_qemu(qmp.server());

    let nodes = qmp.execute(&QueryNamedBlockNodes::default()).unwrap();
    let mut names: Vec<_> = nodes.iter().filter_map(|n| n.node_name.clone()).collect();
    names.sort();
    assert_eq!(names, ["dst", "src"]);
    assert!(nodes.iter().all(|n| n.drv == "null-co"));

    // No VM, no HMP.
    for result in [
        qmp.execute(&QueryStatus).map(|_| ()),
        qmp.hmp("info block").map(|_| ()),
        qmp.execute_raw("query-kvm", &Value::Null).map(|_| ()),
    ] {
        match result {
            Err(Error::Qmp(e)) => assert_eq!(e.class.as_str(), "CommandNotFound"),
            other => panic!("{other:?}"),
        }
    }

    // A backup between the two nodes: its events come (some before the reply).
    qmp.execute_raw("blockdev-backup", &backup("j1")).unwrap();
    let done = qmp
        .wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(30))
        .unwrap();
    let data = done.data.unwrap();
    assert_eq!(data["device"], "j1");
    assert_eq!(data["type"], "backup");
    assert_eq!(data["len"], SIZE);
    assert_eq!(data["offset"], SIZE);
    assert!(data.get("error").is_none(), "{data}");
    // The job went through its states, to "null" (auto-dismissed).
    let mut states = Vec::new();
    for event in qmp.events() {
        if event.name == "JOB_STATUS_CHANGE" {
            states.push(event.data.unwrap()["status"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(states.first().map(String::as_str), Some("created"));
    assert!(states.iter().any(|s| s == "concluded"), "{states:?}");
    assert_eq!(
        qmp.execute_raw("query-block-jobs", &Value::Null).unwrap(),
        json!([])
    );
    qmp.execute_raw("quit", &Value::Null).unwrap();
    assert!(qsd.wait_exit(Duration::from_secs(10)));
}

#[test]
fn the_shared_client_creates_an_image_with_blockdev_create() {
    let qsd = start("shared");
    let qmp = SharedClient::connect_unix(qsd.socket()).unwrap();
    let events = qmp.subscribe();
    let image = qsd.dir().join("created.img");
    let image_path = image.to_str().unwrap();
    qmp.execute_raw(
        "blockdev-create",
        &json!({
            "job-id": "create",
            "options": {"driver": "file", "filename": image_path, "size": 1 << 20}
        }),
    )
    .unwrap();
    // blockdev-create jobs wait to be dismissed: concluded, then job-dismiss.
    loop {
        let event = events
            .wait_event("JOB_STATUS_CHANGE", Duration::from_secs(30))
            .unwrap();
        let data = event.data.unwrap();
        assert_eq!(data["id"], "create");
        if data["status"] == "concluded" {
            break;
        }
    }
    let jobs = qmp.execute_raw("query-jobs", &Value::Null).unwrap();
    assert_eq!(jobs[0]["id"], "create");
    assert_eq!(jobs[0]["status"], "concluded");
    assert!(jobs[0].get("error").is_none(), "{jobs}");
    qmp.execute_raw("job-dismiss", &json!({"id": "create"}))
        .unwrap();
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 1 << 20);
    // The new image as a node.
    qmp.execute_raw(
        "blockdev-add",
        &json!({"driver": "file", "node-name": "img", "filename": image_path}),
    )
    .unwrap();
    let nodes = qmp.execute(&QueryNamedBlockNodes::default()).unwrap();
    assert!(nodes.iter().any(|n| n.node_name.as_deref() == Some("img")));
}

#[test]
fn the_tokio_client_runs_a_mirror_job_to_ready_and_completes_it() {
    let qsd = start("tokio");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let qmp = qmp_std::tokio::Client::connect_unix(qsd.socket())
            .await
            .unwrap();
        let mut events = qmp.subscribe();
        qmp.execute_raw(
            "blockdev-mirror",
            &json!({"job-id": "m1", "device": "src", "target": "dst", "sync": "full"}),
        )
        .await
        .unwrap();
        let ready = events
            .wait_event("BLOCK_JOB_READY", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(ready.data.unwrap()["device"], "m1");
        qmp.execute_raw("block-job-complete", &json!({"device": "m1"}))
            .await
            .unwrap();
        let done = events
            .wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(30))
            .await
            .unwrap();
        let data = done.data.unwrap();
        assert_eq!(
            (data["type"].as_str(), data["len"].as_u64()),
            (Some("mirror"), Some(SIZE))
        );
    });
}

/// qmp-embedded's blocking client (a serial-style link; here QSD's Unix socket through
/// `qmp_e2e::embedded::SocketLink`): the handshake, a typed query, the VM-less QSD's
/// `CommandNotFound`, and a backup job's events in its bounded queue.
#[test]
fn the_embedded_client_runs_a_backup_job() {
    use qmp_e2e::embedded::{HostClock, SocketLink};

    #[derive(serde::Deserialize)]
    struct Node<'a> {
        #[serde(rename = "node-name", borrow)]
        node_name: Option<&'a str>,
        drv: &'a str,
    }

    let qsd = start("embedded");
    let stream = std::os::unix::net::UnixStream::connect(qsd.socket()).unwrap();
    // 8 KiB to receive (query-named-block-nodes for two null nodes is ~2 KB), 2 KiB of events.
    let mut qmp: qmp_embedded::Client<SocketLink, HostClock, 8192, 512, 2048, 4> =
        qmp_embedded::Client::new(SocketLink::new(stream), HostClock::new());
    qmp.set_timeout(Some(Duration::from_secs(10)));
    assert_greets_as_qemu(qmp.handshake(true).unwrap());

    {
        // Borrowed from the client's receive buffer until the next call.
        let nodes: heapless::Vec<Node<'_>, 8> =
            qmp.execute("query-named-block-nodes", &()).unwrap();
        let mut names: Vec<&str> = nodes.iter().filter_map(|n| n.node_name).collect();
        names.sort_unstable();
        assert_eq!(names, ["dst", "src"]);
        assert!(nodes.iter().all(|n| n.drv == "null-co"));
    }

    match qmp.execute_raw("query-status", &()) {
        Err(qmp_embedded::Error::Qmp(e)) => assert_eq!(e.class().as_str(), "CommandNotFound"),
        Err(e) => panic!("{e:?}"),
        Ok(v) => panic!("QSD has no VM, yet query-status returned {}", v.as_json()),
    }

    qmp.execute_raw("blockdev-backup", &backup("e1")).unwrap();
    let done = qmp
        .wait_event("BLOCK_JOB_COMPLETED", Duration::from_secs(30))
        .unwrap();
    let data = done.data.expect("BLOCK_JOB_COMPLETED has data");
    let device = data.get("device").and_then(|d| d.as_str());
    assert!(device.is_some_and(|d| d == "e1"), "{}", data.as_json());
    assert_eq!(data.get("len").and_then(|l| l.as_u64()), Some(SIZE));
    assert_eq!(data.get("offset").and_then(|o| o.as_u64()), Some(SIZE));
}
