//! Reconnection against real QEMUs: QEMU A serves a Unix socket path; it is killed while a
//! client runs commands in a loop and reads events, and QEMU B is started on the same path.
//! The client comes back within the backoff bound, reports the gap once, loses no event that
//! B sent after the new handshake, and no command hangs: each ends with its result or a
//! disconnect (`Disconnected`, an I/O error) — never a wait past its deadline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use qmp_e2e::{Monitor, Qemu};
use qmp_std::commands::{Cont, QueryStatus, RunState, Stop, events};
use qmp_std::reconnect::{ReconnectPolicy, Reconnecting, WhileDown};
use qmp_std::{ClientBuilder, Error, EventKind};

const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT: Duration = Duration::from_secs(2);

fn policy(while_down: WhileDown) -> ReconnectPolicy {
    ReconnectPolicy {
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(300),
        while_down,
        ..ReconnectPolicy::default()
    }
}

/// A QEMU serving QMP on `path` too (the harness's own monitor aside). A replacement starts
/// paused (`-S`): a reconnecting client may find its socket, negotiate and send commands while
/// QEMU is still starting up, and a QEMU that starts its VM on its own would then send a RESUME
/// of its own, before or after the test's commands (seen in CI). Paused, every RESUME and STOP
/// comes from the test's `cont` and `stop`.
fn qemu_on(path: &Path, paused: bool) -> Qemu {
    Qemu::builder(Monitor::Unix)
        .paused(paused)
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", path.display()),
        ])
        .start()
        .unwrap_or_else(|e| panic!("start QEMU: {e}"))
}

/// A directory for the shared socket path, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("qmp-reconnect-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An error a command may end with when its QEMU goes away.
fn is_gone(e: &Error) -> bool {
    e.is_disconnect() || matches!(e, Error::ServerRestarted)
}

#[test]
fn blocking_client_survives_a_restart() {
    let dir = Dir::new("blocking");
    let path = dir.0.join("qmp.sock");
    let mut a = qemu_on(&path, false);
    let connect_path = path.clone();
    let policy = policy(WhileDown::FailFast);
    let mut qmp = Reconnecting::new(
        move || {
            ClientBuilder::new()
                .connect_timeout(Some(CONNECT))
                .command_timeout(Some(TIMEOUT))
                .connect_unix(&connect_path)
        },
        policy,
    )
    .unwrap();
    for _ in 0..20 {
        assert_eq!(qmp.execute(&QueryStatus).unwrap().status, RunState::Running);
    }
    a.kill().unwrap();
    // Down: commands fail fast, with a disconnect, not a hang.
    let start = Instant::now();
    let e = qmp.execute(&QueryStatus).unwrap_err();
    assert!(is_gone(&e), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let e = qmp.execute(&QueryStatus).unwrap_err();
    assert!(matches!(e, Error::Disconnected), "{e:?}");
    let b = qemu_on(&path, true);
    let up = Instant::now();
    // The gap comes first, once, within the bound.
    let e = qmp.next_event(TIMEOUT).unwrap_err();
    let Error::Reconnected { downtime, attempts } = e else {
        panic!("expected Reconnected, got {e:?}");
    };
    eprintln!(
        "back after {downtime:?}, {attempts} attempts, {:?} after B was up",
        up.elapsed()
    );
    assert!(up.elapsed() <= policy.bound(CONNECT), "{:?}", up.elapsed());
    assert!(qmp.is_connected());
    // B's events after the new handshake all arrive, and no second gap.
    // B starts paused: cont, stop and cont give exactly RESUME, STOP, RESUME.
    qmp.execute(&Cont).unwrap();
    assert_eq!(qmp.next_event(TIMEOUT).unwrap().name, events::Resume::NAME);
    qmp.execute(&Stop).unwrap();
    assert_eq!(qmp.next_event(TIMEOUT).unwrap().name, events::Stop::NAME);
    qmp.execute(&Cont).unwrap();
    assert_eq!(qmp.next_event(TIMEOUT).unwrap().name, events::Resume::NAME);
    let e = qmp.next_event(Duration::from_millis(200)).unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    drop(b);
}

#[test]
fn tokio_client_survives_a_restart_while_busy() {
    let dir = Dir::new("tokio");
    let path = dir.0.join("qmp.sock");
    let mut a = qemu_on(&path, false);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let policy = policy(WhileDown::Wait);
    let connect_path = path.clone();
    let qmp = runtime
        .block_on(
            qmp_std::reconnect::tokio::Reconnecting::builder(move || {
                let path = connect_path.clone();
                async move {
                    qmp_std::tokio::ClientBuilder::new()
                        .connect_timeout(Some(CONNECT))
                        .command_timeout(Some(TIMEOUT))
                        .connect_unix(path)
                        .await
                }
            })
            .policy(policy)
            .on_reconnect(|qmp| async move { qmp.execute(&QueryStatus).await.map(drop) })
            .start(),
        )
        .unwrap();
    qmp.set_wait_timeout(Some(TIMEOUT));
    let mut subscription = qmp.subscribe();
    // Commands in a loop, all the while.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, gone) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let looper = {
        let (qmp, stop, ok, gone) = (qmp.clone(), stop.clone(), ok.clone(), gone.clone());
        runtime.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match qmp.execute(&QueryStatus).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) if is_gone(&e) => gone.fetch_add(1, Ordering::Relaxed),
                    Err(e) => panic!("a command ended with {e:?}"),
                };
                assert!(started.elapsed() < TIMEOUT + CONNECT, "a command hung");
            }
        })
    };
    runtime.block_on(async {
        while ok.load(Ordering::Relaxed) < 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    a.kill().unwrap();
    let b = qemu_on(&path, true);
    let up = Instant::now();
    runtime.block_on(async {
        // The gap, once.
        let item = subscription.next_event(TIMEOUT).await;
        let Err(Error::Reconnected { downtime, attempts }) = item else {
            panic!("expected Reconnected, got {item:?}");
        };
        eprintln!(
            "back after {downtime:?}, {attempts} attempts, {:?} after B was up",
            up.elapsed()
        );
        assert!(up.elapsed() <= policy.bound(CONNECT), "{:?}", up.elapsed());
        // Commands work again, and the loop goes on.
        let before = ok.load(Ordering::Relaxed);
        // B starts paused: cont, stop and cont give exactly RESUME, STOP, RESUME.
        qmp.execute(&Cont).await.unwrap();
        assert_eq!(
            subscription.next_event(TIMEOUT).await.unwrap().name,
            events::Resume::NAME
        );
        qmp.execute(&Stop).await.unwrap();
        assert_eq!(
            subscription.next_event(TIMEOUT).await.unwrap().name,
            events::Stop::NAME
        );
        qmp.execute(&Cont).await.unwrap();
        assert_eq!(
            subscription.next_event(TIMEOUT).await.unwrap().name,
            events::Resume::NAME
        );
        let item = subscription.next_event(Duration::from_millis(200)).await;
        assert!(matches!(item, Err(Error::Timeout(_))), "{item:?}");
        while ok.load(Ordering::Relaxed) < before + 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(looper).unwrap();
    eprintln!(
        "commands: {} ok, {} lost to the restart",
        ok.load(Ordering::Relaxed),
        gone.load(Ordering::Relaxed)
    );
    drop(b);
}

#[test]
fn shared_client_survives_a_restart_while_busy() {
    let dir = Dir::new("shared");
    let path = dir.0.join("qmp.sock");
    let mut a = qemu_on(&path, false);
    let policy = policy(WhileDown::Wait);
    let connect_path = path.clone();
    let hooked = Arc::new(AtomicU64::new(0));
    let hook_count = hooked.clone();
    let qmp = qmp_std::reconnect::SharedReconnecting::new(
        move || {
            ClientBuilder::new()
                .connect_timeout(Some(CONNECT))
                .command_timeout(Some(TIMEOUT))
                .connect_unix(&connect_path)?
                .into_shared()
        },
        policy,
        Some(Box::new(move |qmp| {
            hook_count.fetch_add(1, Ordering::Relaxed);
            qmp.execute(&QueryStatus).map(drop)
        })),
    )
    .unwrap();
    qmp.set_wait_timeout(Some(TIMEOUT));
    let subscription = qmp.subscribe();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, gone) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (qmp, stop, ok, gone) = (qmp.clone(), stop.clone(), ok.clone(), gone.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    match qmp.execute(&QueryStatus) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) if is_gone(&e) => gone.fetch_add(1, Ordering::Relaxed),
                        Err(e) => panic!("a command ended with {e:?}"),
                    };
                    assert!(started.elapsed() < TIMEOUT + CONNECT, "a command hung");
                }
            })
        })
        .collect();
    while ok.load(Ordering::Relaxed) < 50 {
        std::thread::sleep(Duration::from_millis(5));
    }
    a.kill().unwrap();
    let b = qemu_on(&path, true);
    let up = Instant::now();
    let item = subscription.next_event(TIMEOUT);
    let Err(Error::Reconnected { downtime, attempts }) = item else {
        panic!("expected Reconnected, got {item:?}");
    };
    eprintln!(
        "back after {downtime:?}, {attempts} attempts, {:?} after B was up",
        up.elapsed()
    );
    assert!(up.elapsed() <= policy.bound(CONNECT), "{:?}", up.elapsed());
    assert_eq!(hooked.load(Ordering::Relaxed), 1);
    // B starts paused: cont, stop and cont give exactly RESUME, STOP, RESUME.
    qmp.execute(&Cont).unwrap();
    assert_eq!(
        subscription.next_event(TIMEOUT).unwrap().name,
        events::Resume::NAME
    );
    qmp.execute(&Stop).unwrap();
    assert_eq!(
        subscription.next_event(TIMEOUT).unwrap().name,
        events::Stop::NAME
    );
    qmp.execute(&Cont).unwrap();
    assert_eq!(
        subscription.next_event(TIMEOUT).unwrap().name,
        events::Resume::NAME
    );
    let item = subscription.next_event(Duration::from_millis(200));
    assert!(matches!(item, Err(Error::Timeout(_))), "{item:?}");
    let before = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < before + 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    eprintln!(
        "commands: {} ok, {} lost to the restart",
        ok.load(Ordering::Relaxed),
        gone.load(Ordering::Relaxed)
    );
    drop(qmp);
    drop(b);
}
