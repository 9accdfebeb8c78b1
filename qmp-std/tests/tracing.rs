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
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
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
        "id="
    ]));
    assert!(has(&[
        "qmp_std::command",
        "name=\"query-status\"",
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
