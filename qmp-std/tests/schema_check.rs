//! `Options::check_arguments`: each client fetches `query-qmp-schema` once, lazily, and refuses
//! a command whose arguments do not fit it (nothing is sent); off by default.
#![cfg(feature = "qapi")]

use qmp_std::fake::{FakeQemu, FakeQemuBuilder};
use qmp_std::serde_json::{Value, json};
use qmp_std::{ClientBuilder, Error, SchemaErrorKind, qapi};

/// A fake QEMU that answers `query-qmp-schema` with QEMU 7.2's recorded answer, and
/// `blockdev-backup` and `query-status` as QEMU does when they are fine.
fn fake() -> FakeQemuBuilder {
    let text = include_str!("../../qmp-proto/tests/data/query-qmp-schema.jsonl");
    let reply: Value = qmp_std::serde_json::from_str(text).unwrap();
    let schema = reply["return"].clone();
    FakeQemu::builder()
        .on("query-qmp-schema", move |_| Ok(schema.clone()))
        .on("blockdev-backup", |_| Ok(json!({})))
        .on("query-status", |_| {
            Ok(json!({"status": "running", "running": true, "singlestep": false}))
        })
}

fn names(qemu: &FakeQemu) -> Vec<String> {
    qemu.requests().into_iter().map(|r| r.name).collect()
}

#[track_caller]
fn assert_invalid(err: Error, path: &str) {
    let Error::Invalid(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(e.path, path, "{e}");
    assert!(matches!(
        e.kind,
        SchemaErrorKind::NotInEnum { .. } | SchemaErrorKind::UnknownMember { .. }
    ));
}

fn bad_backup() -> Value {
    json!({"device": "d", "target": "t", "sync": "ful"})
}

#[test]
fn blocking_client_checks_once_fetched() {
    let (stream, qemu) = fake().spawn_unix().unwrap();
    let mut qmp = ClientBuilder::new()
        .check_arguments(true)
        .handshake(stream)
        .unwrap();
    let err = qmp
        .execute_raw("blockdev-backup", &bad_backup())
        .unwrap_err();
    assert_invalid(err, "sync");
    assert!(err_string(&mut qmp).contains("did you mean \"full\""));
    qmp.execute(&qapi::BlockdevBackup::new(
        "d",
        qapi::MirrorSyncMode::Full,
        "t",
    ))
    .unwrap();
    qmp.execute(&qapi::QueryStatus).unwrap();
    // The schema was asked for once; the refused commands never went out.
    assert_eq!(
        names(&qemu),
        ["query-qmp-schema", "blockdev-backup", "query-status"]
    );
}

fn err_string(qmp: &mut qmp_std::Client<std::os::unix::net::UnixStream>) -> String {
    qmp.execute_raw(
        "blockdev-backup",
        &json!({"device": "d", "target": "t", "sync": "ful"}),
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn off_by_default() {
    let (stream, qemu) = fake().spawn_unix().unwrap();
    let mut qmp = ClientBuilder::new().handshake(stream).unwrap();
    qmp.execute_raw("blockdev-backup", &bad_backup()).unwrap();
    assert_eq!(names(&qemu), ["blockdev-backup"]);
}

#[test]
fn shared_client_checks() {
    let (stream, qemu) = fake().spawn_unix().unwrap();
    let qmp = ClientBuilder::new()
        .check_arguments(true)
        .handshake(stream)
        .unwrap()
        .into_shared()
        .unwrap();
    assert_invalid(
        qmp.execute_raw("blockdev-backup", &bad_backup())
            .unwrap_err(),
        "sync",
    );
    let err = qmp
        .execute_raw("query-status", &json!({"verbose": true}))
        .unwrap_err();
    assert_invalid(err, "verbose");
    qmp.execute(&qapi::QueryStatus).unwrap();
    assert_eq!(names(&qemu), ["query-qmp-schema", "query-status"]);
}

#[cfg(feature = "tokio")]
#[test]
fn tokio_client_checks() {
    let (stream, qemu) = fake().spawn_unix().unwrap();
    stream.set_nonblocking(true).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stream = tokio::net::UnixStream::from_std(stream).unwrap();
        let qmp = qmp_std::tokio::ClientBuilder::new()
            .check_arguments(true)
            .handshake_unix(stream)
            .await
            .unwrap();
        assert_invalid(
            qmp.execute_raw("blockdev-backup", &bad_backup())
                .await
                .unwrap_err(),
            "sync",
        );
        qmp.execute(&qapi::QueryStatus).await.unwrap();
    });
    assert_eq!(names(&qemu), ["query-qmp-schema", "query-status"]);
}
