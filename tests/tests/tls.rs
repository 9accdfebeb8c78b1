//! End-to-end tests of QMP over TLS (qmp-std's `tls` feature) against a real QEMU serving
//! its monitor through `tls-creds-x509` with `verify-peer=on`, with certificates made by
//! the `openssl` command (see `qmp_e2e::tls`).
//!
//! Every failure case must come back with its typed error within the connect timeout: a
//! test thread that has not finished by then fails instead of hanging.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qmp_e2e::tls::{Pki, SERVER_NAME, start_qemu};
use qmp_e2e::{Address, Monitor, Qemu};
use qmp_std::commands::{Cont, QueryStatus, RunState, Stop, events};
use qmp_std::tls::TlsConfig;
use qmp_std::{ClientBuilder, Error, EventKind, SharedClient, TlsFailure};

const TIMEOUT: Duration = Duration::from_secs(10);
/// The connect timeout of the failure cases.
const SHORT: Duration = Duration::from_secs(2);

/// A QEMU with a TLS monitor, and its certificates (removed when dropped).
struct Setup {
    qemu: Qemu,
    addr: SocketAddr,
    pki: Pki,
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(name: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("qmp-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = Pki::create(&dir).expect("make certificates");
    let (qemu, addr) = start_qemu(&pki).expect("start QEMU with a TLS monitor");
    Setup {
        qemu,
        addr,
        pki,
        dir,
    }
}

impl Setup {
    /// The full client configuration: the CA, the client certificate.
    fn config(&self) -> TlsConfig {
        TlsConfig::new()
            .ca_file(self.pki.file("ca-cert.pem"))
            .client_auth(
                self.pki.file("client-cert.pem"),
                self.pki.file("client-key.pem"),
            )
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }
}

fn builder(connect: Duration) -> ClientBuilder {
    ClientBuilder::new()
        .connect_timeout(Some(connect))
        .command_timeout(Some(TIMEOUT))
}

/// Runs `f` on a thread; fails if it takes longer than `limit` (a hang).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still blocked after {limit:?}: a hang"))
}

/// Connects with the blocking client and `tls`, expecting the TLS failure `want`.
#[track_caller]
fn expect_failure(addr: String, tls: TlsConfig, want: TlsFailure) {
    let result = within(SHORT * 3, move || {
        builder(SHORT).connect_tls(&addr, &tls).map(drop)
    });
    match result {
        Err(Error::Tls(e)) => {
            eprintln!("{e}");
            assert_eq!(e.failure, want, "{e}");
        }
        other => panic!("expected Error::Tls({want:?}), got {other:?}"),
    }
}

#[test]
fn blocking_client_commands_and_events_with_a_client_certificate() {
    let s = setup("blocking");
    // The certificate is for 127.0.0.1 too: no override needed.
    let mut qmp = builder(TIMEOUT)
        .connect_tls(&s.addr(), &s.config())
        .unwrap_or_else(|e| panic!("connect: {e}\nQEMU said: {}", s.qemu.output()));
    assert!(qmp.server().version.major >= 7);
    assert_eq!(qmp.execute(&QueryStatus).unwrap().status, RunState::Running);
    qmp.execute(&Stop).unwrap();
    qmp.wait_event(events::Stop::NAME, TIMEOUT).unwrap();
    assert_eq!(qmp.execute(&QueryStatus).unwrap().status, RunState::Paused);
    qmp.execute(&Cont).unwrap();
    qmp.wait_event(events::Resume::NAME, TIMEOUT).unwrap();
    // A reply larger than a TLS record (16 KiB): query-qmp-schema is ~200 KB.
    let schema = qmp
        .execute_raw("query-qmp-schema", &qmp_std::serde_json::json!({}))
        .unwrap();
    assert!(schema.as_array().is_some_and(|a| a.len() > 100));
    // Pipelined commands.
    let handles: Vec<_> = (0..8).map(|_| qmp.send(&QueryStatus).unwrap()).collect();
    for h in handles {
        assert_eq!(qmp.wait(h).unwrap().status, RunState::Running);
    }
}

#[test]
fn server_name_override() {
    let s = setup("name");
    // By its DNS name, at an address that does not say it.
    let tls = s.config().server_name(SERVER_NAME);
    let mut qmp = builder(TIMEOUT).connect_tls(&s.addr(), &tls).unwrap();
    assert_eq!(qmp.execute(&QueryStatus).unwrap().status, RunState::Running);
}

#[test]
fn shared_client_over_tls() {
    let s = setup("shared");
    let qmp = builder(TIMEOUT)
        .connect_tls(&s.addr(), &s.config())
        .unwrap()
        .into_shared()
        .unwrap();
    let events = qmp.subscribe();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let qmp = qmp.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    assert!(qmp.execute(&QueryStatus).is_ok());
                }
            })
        })
        .collect();
    qmp.execute(&Stop).unwrap();
    assert_eq!(
        events.wait_event(events::Stop::NAME, TIMEOUT).unwrap().name,
        "STOP"
    );
    qmp.execute(&Cont).unwrap();
    events.wait_event(events::Resume::NAME, TIMEOUT).unwrap();
    for t in threads {
        t.join().unwrap();
    }
    qmp.close();
    let e = qmp.execute(&QueryStatus).unwrap_err();
    assert!(e.is_disconnect(), "{e:?}");
    // The connect shortcut too.
    drop(qmp);
    let again = within(TIMEOUT, {
        let (addr, tls) = (s.addr(), s.config());
        move || SharedClient::connect_tls(&addr, &tls).map(|q| q.execute(&QueryStatus))
    });
    assert!(matches!(again, Ok(Ok(_))), "{again:?}");
}

#[test]
fn tokio_client_over_tls() {
    let s = setup("tokio");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, tls) = (s.addr(), s.config());
    runtime.block_on(async move {
        let qmp = qmp_std::tokio::ClientBuilder::new()
            .connect_timeout(Some(TIMEOUT))
            .command_timeout(Some(TIMEOUT))
            .connect_tls(&addr, &tls)
            .await
            .unwrap();
        let mut events = qmp.subscribe();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let qmp = qmp.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        qmp.execute(&QueryStatus).await.unwrap();
                    }
                })
            })
            .collect();
        qmp.execute(&Stop).await.unwrap();
        events
            .wait_event(events::Stop::NAME, TIMEOUT)
            .await
            .unwrap();
        qmp.execute(&Cont).await.unwrap();
        events
            .wait_event(events::Resume::NAME, TIMEOUT)
            .await
            .unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        let schema = qmp
            .execute_raw("query-qmp-schema", &qmp_std::serde_json::json!({}))
            .await
            .unwrap();
        assert!(schema.as_array().is_some_and(|a| a.len() > 100));
    });
}

#[test]
fn tokio_failures_are_typed() {
    let s = setup("tokio-fail");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connect = |tls: TlsConfig| {
        let addr = s.addr();
        runtime.block_on(async move {
            let start = Instant::now();
            let result = qmp_std::tokio::ClientBuilder::new()
                .connect_timeout(Some(SHORT))
                .connect_tls(&addr, &tls)
                .await
                .map(drop);
            assert!(start.elapsed() < SHORT * 2, "took {:?}", start.elapsed());
            result.err().and_then(|e| e.tls_failure())
        })
    };
    let other_ca = TlsConfig::new()
        .ca_file(s.pki.file("other-ca-cert.pem"))
        .client_auth(s.pki.file("client-cert.pem"), s.pki.file("client-key.pem"));
    assert_eq!(connect(other_ca), Some(TlsFailure::UnknownCa));
    assert_eq!(
        connect(s.config().server_name("elsewhere.test")),
        Some(TlsFailure::NameMismatch)
    );
    let no_cert = TlsConfig::new().ca_file(s.pki.file("ca-cert.pem"));
    assert_eq!(connect(no_cert), Some(TlsFailure::ClientCertRequired));
    // And a plain monitor.
    let plain = Qemu::start(Monitor::Tcp).unwrap();
    let Address::Tcp(plain_addr) = plain.address().clone() else {
        unreachable!()
    };
    let result = runtime.block_on(
        qmp_std::tokio::ClientBuilder::new()
            .connect_timeout(Some(SHORT))
            .connect_tls(&plain_addr.to_string(), &s.config()),
    );
    assert_eq!(
        result.err().and_then(|e| e.tls_failure()),
        Some(TlsFailure::NotTls)
    );
}

#[test]
fn wrong_ca_is_unknown_ca() {
    let s = setup("wrong-ca");
    let tls = TlsConfig::new()
        .ca_file(s.pki.file("other-ca-cert.pem"))
        .client_auth(s.pki.file("client-cert.pem"), s.pki.file("client-key.pem"));
    expect_failure(s.addr(), tls, TlsFailure::UnknownCa);
}

#[test]
fn wrong_name_is_a_name_mismatch() {
    let s = setup("wrong-name");
    expect_failure(
        s.addr(),
        s.config().server_name("elsewhere.test"),
        TlsFailure::NameMismatch,
    );
}

#[test]
fn no_client_certificate_is_refused() {
    let s = setup("no-cert");
    let tls = TlsConfig::new().ca_file(s.pki.file("ca-cert.pem"));
    expect_failure(s.addr(), tls, TlsFailure::ClientCertRequired);
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let s = setup("other-client");
    let tls = TlsConfig::new()
        .ca_file(s.pki.file("ca-cert.pem"))
        .client_auth(
            s.pki.file("other-client-cert.pem"),
            s.pki.file("other-client-key.pem"),
        );
    expect_failure(s.addr(), tls, TlsFailure::ClientCertRejected);
}

#[test]
fn tls_client_against_a_plain_monitor_is_not_tls() {
    let dir = std::env::temp_dir().join(format!("qmp-tls-{}-plain", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = Pki::create(&dir).unwrap();
    let qemu = Qemu::start(Monitor::Tcp).unwrap();
    let Address::Tcp(addr) = qemu.address().clone() else {
        unreachable!()
    };
    let tls = TlsConfig::new()
        .ca_file(pki.file("ca-cert.pem"))
        .client_auth(pki.file("client-cert.pem"), pki.file("client-key.pem"));
    expect_failure(addr.to_string(), tls, TlsFailure::NotTls);
    // The plain monitor is still there for a plain client.
    let mut plain = builder(TIMEOUT).connect_tcp(addr).unwrap();
    assert!(plain.execute(&QueryStatus).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_client_against_a_tls_monitor_times_out() {
    let s = setup("plain-client");
    let addr = s.addr;
    let start = Instant::now();
    let result = within(SHORT * 3, move || {
        builder(SHORT).connect_tcp(addr).map(drop)
    });
    assert!(
        matches!(result, Err(Error::Timeout(qmp_proto::Expired::Greeting))),
        "{result:?}"
    );
    assert!(start.elapsed() >= SHORT);
    // The TLS monitor still serves a TLS client afterwards.
    let mut qmp = builder(TIMEOUT)
        .connect_tls(&s.addr(), &s.config())
        .unwrap();
    assert!(qmp.execute(&QueryStatus).is_ok());
}

#[test]
fn configuration_errors_name_the_file() {
    let e = TlsConfig::new()
        .ca_file("/nonexistent/ca.pem")
        .build()
        .unwrap_err();
    assert_eq!(e.tls_failure(), Some(TlsFailure::Config));
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    let e = TlsConfig::new().build().unwrap_err();
    assert_eq!(e.tls_failure(), Some(TlsFailure::Config));
}
