//! The `tracing` feature: a session against the fake QEMU emits the handshake, each
//! command (name, id, duration, outcome) and each event's lag, seen by a collector
//! subscriber. (Without the feature this file is empty and nothing is emitted.)
#![cfg(feature = "tracing")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qmp_std::commands::QueryStatus;
use qmp_std::fake::FakeQemu;
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Every event as `target field=value ...`.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<String>>>);

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl Subscriber for Collector {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut line = Line(format!("span {}", span.metadata().name()));
        span.record(&mut line);
        self.0.lock().unwrap().push(line.0);
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut line = Line("record".to_owned());
        values.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(event.metadata().target().to_owned());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn a_session_is_traced() {
    let collector = Collector::default();
    let lines = collector.0.clone();
    tracing::subscriber::with_default(collector, || {
        let (stream, qemu) = FakeQemu::builder()
            .on("query-status", |_| {
                Ok(json!({"status": "running", "singlestep": false, "running": true}))
            })
            .spawn_unix()
            .unwrap();
        let mut qmp = qmp_std::Client::new(stream).unwrap();
        qmp.execute(&QueryStatus).unwrap();
        assert!(qmp.execute_raw("nope", &json!({})).is_err());
        qemu.event("STOP", None);
        qmp.wait_event("STOP", Duration::from_secs(5)).unwrap();
    });
    let lines = lines.lock().unwrap();
    let has = |parts: &[&str]| lines.iter().any(|l| parts.iter().all(|p| l.contains(p)));
    eprintln!("{}", lines.join("\n"));
    assert!(has(&[
        "qmp_std::connect",
        "connected",
        "qemu=7.2.22",
        "duration_us="
    ]));
    assert!(has(&[
        "qmp_std::command",
        "sent",
        "name=\"query-status\"",
        "id=2"
    ]));
    // Each command is a span (`command`, its name, its id recorded once sent); the
    // handshake's `qmp_capabilities` had id 1.
    assert!(has(&["span command", "name=\"query-status\""]));
    assert!(has(&["record", "id=2"]));
    assert!(has(&[
        "qmp_std::command",
        "name=\"query-status\"",
        "id=2",
        "outcome=\"ok\"",
        "duration_us="
    ]));
    assert!(has(&[
        "qmp_std::command",
        "name=\"nope\"",
        "outcome=\"error\"",
        "CommandNotFound"
    ]));
    assert!(has(&["qmp_std::event", "event=\"STOP\"", "lag_us="]));
}

/// (Needs the tokio feature too, as CI's all-features run has.)
#[cfg(feature = "tokio")]
/// The `command` events of the shared and tokio clients carry the id too (it is given out
/// under their connection's lock, not where the call is traced).
#[test]
fn every_client_traces_each_command_with_its_id() {
    let collector = Collector::default();
    let lines = collector.0.clone();
    let fake = || {
        FakeQemu::builder()
            .on("query-status", |_| {
                Ok(json!({"status": "running", "singlestep": false, "running": true}))
            })
            .spawn_unix()
            .unwrap()
    };
    tracing::subscriber::with_default(collector, || {
        let (stream, _qemu) = fake();
        let shared = qmp_std::Client::new(stream).unwrap().into_shared().unwrap();
        shared.execute(&QueryStatus).unwrap();
        shared.execute(&QueryStatus).unwrap();
        let (stream, _qemu) = fake();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            stream.set_nonblocking(true).unwrap();
            let stream = tokio::net::UnixStream::from_std(stream).unwrap();
            let qmp = qmp_std::tokio::ClientBuilder::new()
                .handshake_unix(stream)
                .await
                .unwrap();
            qmp.execute(&QueryStatus).await.unwrap();
        });
    });
    let lines = lines.lock().unwrap();
    eprintln!("{}", lines.join("\n"));
    let done: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("qmp_std::command") && l.contains("outcome=\"ok\""))
        .collect();
    assert_eq!(done.len(), 3, "{done:?}");
    // Each a real id (0 would mean never sent), one per command.
    assert!(
        done[0].contains(" id=") && !done[0].contains(" id=0"),
        "{done:?}"
    );
    assert!(
        done[1].contains(" id=") && !done[1].contains(" id=0"),
        "{done:?}"
    );
    assert!(
        done[2].contains(" id=") && !done[2].contains(" id=0"),
        "{done:?}"
    );
    assert_ne!(id_of(done[0]), id_of(done[1]), "{done:?}");
}

/// The `id=` field of a collected line.
fn id_of(line: &str) -> u64 {
    let at = line.find(" id=").expect("an id") + 4;
    line[at..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}
