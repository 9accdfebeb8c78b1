//! Replies as a newer QEMU would send them decode into the QEMU 7.2 types: unknown enum values
//! are kept (`Other`), unknown members are ignored, an unknown union branch keeps its members
//! as JSON; and a reply that does not fit its type still gives the caller its JSON.
#![cfg(feature = "qapi")]

use std::time::Duration;

use qmp_std::fake::FakeQemu;
use qmp_std::qapi::{
    self, BlockdevOptions, BlockdevOptionsDriver, BlockdevOptionsNull, JobStatus, JobType,
    MigrationStatus, RunState, events,
};
use qmp_std::{Client, EventKind};
use serde_json::json;

fn client(
    fake: qmp_std::fake::FakeQemuBuilder,
) -> (Client<std::os::unix::net::UnixStream>, FakeQemu) {
    let (stream, qemu) = fake.spawn_unix().expect("fake QEMU");
    (Client::new(stream).expect("handshake"), qemu)
}

#[test]
fn unknown_enum_values_and_members_decode() {
    let (mut qmp, _qemu) = client(
        FakeQemu::builder()
            .on("query-status", |_| {
                Ok(
                    json!({"status": "hibernating", "running": false, "singlestep": false,
                          "new-member": {"nested": [1, 2]}}),
                )
            })
            .on("query-jobs", |_| {
                Ok(json!([
                    {"id": "j0", "type": "backup", "status": "running", "current-progress": 1,
                     "total-progress": 2},
                    {"id": "j1", "type": "teleport", "status": "levitating",
                     "current-progress": 0, "total-progress": 0, "eta": 12}
                ]))
            }),
    );
    let status = qmp.execute(&qapi::QueryStatus).unwrap();
    assert_eq!(status.status, RunState::Other("hibernating".into()));
    assert!(status.status.is_other());
    assert_eq!(status.status.to_string(), "hibernating");
    assert!(!status.running);

    let jobs = qmp.execute(&qapi::QueryJobs).unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        (&jobs[0].r#type, &jobs[0].status),
        (&JobType::Backup, &JobStatus::Running)
    );
    assert_eq!(jobs[1].r#type, JobType::Other("teleport".into()));
    assert_eq!(jobs[1].status, JobStatus::Other("levitating".into()));
    // An unknown value goes back out as it came.
    assert_eq!(
        serde_json::to_value(&jobs[1].status).unwrap(),
        json!("levitating")
    );
}

#[test]
fn unknown_union_branch_keeps_its_members() {
    let value = json!({"driver": "quantum-disk", "node-name": "q0", "entanglement": 3,
                       "read-only": true});
    let options: BlockdevOptions = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(options.node_name.as_deref(), Some("q0"));
    assert_eq!(options.read_only, Some(true));
    match &options.driver {
        BlockdevOptionsDriver::Other { tag, members } => {
            assert_eq!(tag, "quantum-disk");
            assert_eq!(members["entanglement"], json!(3));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(options.driver.tag(), "quantum-disk");
    // And it is sent back unchanged.
    assert_eq!(serde_json::to_value(&options).unwrap(), value);

    // A known branch with a member from the future.
    let known: BlockdevOptions =
        serde_json::from_value(json!({"driver": "null-co", "size": 512, "warp": 9})).unwrap();
    assert_eq!(
        known.driver,
        BlockdevOptionsDriver::NullCo(BlockdevOptionsNull::default().size(512))
    );
}

#[test]
fn event_data_from_a_newer_qemu_decodes() {
    let (mut qmp, qemu) = client(FakeQemu::builder());
    qemu.event(
        "JOB_STATUS_CHANGE",
        Some(json!({"id": "j0", "status": "hyperspace", "reason": "new in 12.0"})),
    );
    qemu.event("MIGRATION", Some(json!({"status": "quantum-tunnelling"})));
    let event = qmp
        .wait_event(events::JobStatusChange::NAME, Duration::from_secs(5))
        .unwrap();
    let change = event.data_as::<events::JobStatusChange>().unwrap();
    assert_eq!(
        (change.id.as_str(), change.status),
        ("j0", JobStatus::Other("hyperspace".into()))
    );
    let event = qmp
        .wait_event(events::Migration::NAME, Duration::from_secs(5))
        .unwrap();
    let migration = event.data_as::<events::Migration>().unwrap();
    assert_eq!(
        migration.status,
        MigrationStatus::Other("quantum-tunnelling".into())
    );
}

#[test]
fn a_reply_that_does_not_fit_keeps_its_json() {
    let (mut qmp, qemu) = client(FakeQemu::builder().on("query-status", |_| {
        Ok(json!({"status": 7, "running": "maybe"}))
    }));
    let err = qmp.execute(&qapi::QueryStatus).unwrap_err();
    let qmp_std::Error::Decode(decode) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(decode.value(), json!({"status": 7, "running": "maybe"}));
    assert!(decode.json().contains("\"maybe\""), "{}", decode.json());
    assert!(err.to_string().contains("maybe"), "{err}");
    // The connection goes on.
    assert!(qmp.execute_raw("query-status", &json!({})).is_ok());

    // Event data that does not fit: the same.
    qemu.event("MIGRATION", Some(json!({"status": 3})));
    let event = qmp.wait_event("MIGRATION", Duration::from_secs(5)).unwrap();
    let err = event.data_as::<events::Migration>().unwrap_err();
    let qmp_std::Error::Decode(decode) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(decode.value(), json!({"status": 3}));
}
