//! End-to-end tests of `qmp-std`'s tokio client and of its thread-safe blocking handle
//! ([`SharedClient`]) against a real QEMU 7.2 (one per test, started by the harness).
//!
//! Every client here has a command timeout, so a broken client or QEMU fails a test instead
//! of hanging it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use qmp_e2e::{Address, Monitor, Qemu};
use qmp_std::commands::{Cont, QueryStatus, QueryVersion, RunState, Stop};
use qmp_std::serde_json::{Value, json};
use qmp_std::tokio::{Client, ClientBuilder, EventStream};
use qmp_std::{Error, SharedClient};

const TIMEOUT: Duration = Duration::from_secs(10);

fn builder() -> ClientBuilder {
    ClientBuilder::new()
        .connect_timeout(Some(TIMEOUT))
        .command_timeout(Some(TIMEOUT))
}

#[track_caller]
fn start(monitor: Monitor) -> Qemu {
    Qemu::start(monitor).unwrap_or_else(|e| panic!("start QEMU: {e}"))
}

async fn connect(qemu: &Qemu, builder: ClientBuilder) -> Client {
    let connected = match qemu.address() {
        Address::Unix(path) => builder.connect_unix(path).await,
        Address::Tcp(addr) => builder.connect_tcp(*addr).await,
        other => panic!("not a socket: {other}"),
    };
    connected.unwrap_or_else(|e| panic!("connect: {e}\nQEMU said: {}", qemu.output()))
}

/// An HMP command line QEMU does not know: it answers `unknown command: 'NAME'`, so each
/// reply names the call it answers.
fn tagged(tag: &str) -> String {
    format!("nosuch_{tag}")
}

#[track_caller]
fn assert_answers(reply: &str, tag: &str) {
    assert_eq!(reply, format!("unknown command: 'nosuch_{tag}'\r\n"));
}

/// The connection is over: the event stream says so once, then ends; the client is closed
/// and a new command fails with `Disconnected`.
async fn assert_ended(qmp: &Client, events: &mut EventStream) {
    let end = tokio::time::timeout(TIMEOUT, events.next()).await.unwrap();
    assert!(
        matches!(end, Some(Err(ref e)) if e.is_disconnect()),
        "{end:?}"
    );
    assert!(events.next().await.is_none());
    assert!(qmp.is_closed());
    let later = qmp.execute(&QueryStatus).await;
    assert!(matches!(later, Err(Error::Disconnected)), "{later:?}");
}

/// The next event, within the timeout; lag or end is a failure.
async fn next_event(events: &mut EventStream) -> String {
    match tokio::time::timeout(TIMEOUT, events.next()).await {
        Ok(Some(Ok(event))) => event.name,
        other => panic!("no event: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_and_tcp_serve_many_tasks_over_one_connection() {
    for monitor in [Monitor::Unix, Monitor::Tcp] {
        let qemu = start(monitor);
        let qmp = connect(&qemu, builder()).await;
        assert_eq!(
            qmp.server().version,
            qmp.execute(&QueryVersion).await.unwrap().qemu
        );
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let qmp = qmp.clone();
                tokio::spawn(async move {
                    for n in 0..25 {
                        let tag = format!("{t}_{n}");
                        let line = json!({"command-line": tagged(&tag)});
                        let raw = qmp.execute_raw("human-monitor-command", &line).await;
                        assert_answers(raw.unwrap().as_str().unwrap(), &tag);
                        let status = qmp.execute(&QueryStatus).await.unwrap();
                        assert_eq!(status.status, RunState::Running);
                        assert_answers(&qmp.hmp(&tagged(&tag)).await.unwrap(), &tag);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!((qmp.in_flight(), qmp.dropped_messages()), (0, 0));
        let error = qmp.execute_raw("nope", &Value::Null).await.unwrap_err();
        assert_eq!(error.qmp_class(), Some("CommandNotFound"), "{monitor:?}");
    }
}

/// The cancellation bar: `execute` futures dropped mid-flight, hundreds of times,
/// with `select!` (after the command is on the wire) and with `timeout` (at any stage), and
/// the connection stays in step: every later reply answers its own call, the late replies
/// are discarded by id, and STOP/RESUME events keep coming, none missing.
#[tokio::test]
async fn dropped_execute_futures_never_desynchronise_the_connection() {
    let qemu = start(Monitor::Unix);
    let qmp = connect(&qemu, builder()).await;
    let mut events = qmp.subscribe();
    let mut mid_flight = 0u64;
    let mut pairs = 0;
    for round in 0..400u64 {
        if round % 2 == 0 {
            // Polled once (permit, encode, write), then dropped while its reply is owed.
            tokio::select! {
                biased;
                _ = qmp.execute(&QueryStatus) => {}
                () = tokio::task::yield_now() => {}
            }
            if qmp.in_flight() > 0 {
                mid_flight += 1;
            }
        } else {
            // Several at once under a short deadline: dropped waiting for a permit, just
            // written, or partly answered.
            let calls = async {
                tokio::join!(
                    qmp.execute(&QueryStatus),
                    qmp.hmp("info status"),
                    qmp.execute_raw("query-name", &Value::Null),
                )
            };
            let _ = tokio::time::timeout(Duration::from_micros(round % 300), calls).await;
        }
        let tag = format!("after_{round}");
        assert_answers(&qmp.hmp(&tagged(&tag)).await.unwrap(), &tag);
        if round % 40 == 0 {
            qmp.execute(&Stop).await.unwrap();
            assert_eq!(next_event(&mut events).await, "STOP");
            qmp.execute(&Cont).await.unwrap();
            assert_eq!(next_event(&mut events).await, "RESUME");
            pairs += 1;
        }
    }
    assert!(
        mid_flight > 100,
        "only {mid_flight} calls were dropped mid-flight"
    );
    // The slots of abandoned commands are freed as their late replies come and go.
    tokio::time::timeout(TIMEOUT, async {
        while qmp.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("late replies never came");
    assert!(
        qmp.discarded_replies() >= mid_flight,
        "{} discarded, {mid_flight} dropped mid-flight",
        qmp.discarded_replies()
    );
    assert_eq!(qmp.dropped_messages(), 0);
    assert_eq!(
        qmp.execute(&QueryStatus).await.unwrap().status,
        RunState::Running
    );
    assert_eq!(pairs, 10);
    // Nothing else arrived: no event lost, none duplicated.
    let extra = tokio::time::timeout(Duration::from_millis(50), events.next()).await;
    assert!(extra.is_err(), "unexpected {extra:?}");
}

#[tokio::test]
async fn exec_oob_runs_on_real_qemu() {
    let qemu = start(Monitor::Unix);
    let qmp = connect(&qemu, builder().oob(true)).await;
    assert!(qmp.oob_enabled());
    let (yank, status) = tokio::join!(
        qmp.execute_oob_raw("query-yank", &Value::Null),
        qmp.execute(&QueryStatus)
    );
    assert!(yank.unwrap().is_array());
    assert_eq!(status.unwrap().status, RunState::Running);
    // Without oob negotiated, exec-oob is refused locally.
    let plain = connect(&start(Monitor::Unix), builder().oob(false)).await;
    let refused = plain.execute_oob_raw("query-yank", &Value::Null).await;
    assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
}

#[tokio::test]
async fn a_command_timeout_leaves_the_connection_usable() {
    let qemu = start(Monitor::Unix);
    let qmp = connect(&qemu, builder()).await;
    // A stopped QEMU process answers nothing; its commands time out one by one.
    signal(&qemu, "STOP");
    let late = qmp
        .execute_timeout(&QueryStatus, Some(Duration::from_millis(100)))
        .await;
    assert!(matches!(late, Err(Error::Timeout(_))), "{late:?}");
    signal(&qemu, "CONT");
    assert_eq!(
        qmp.execute(&QueryStatus).await.unwrap().status,
        RunState::Running
    );
    // The driver freed the slot at the deadline; the late reply matched no command.
    assert_eq!((qmp.in_flight(), qmp.dropped_messages()), (0, 1));
}

#[tokio::test]
async fn qemu_dying_fails_every_pending_command_and_ends_the_event_stream() {
    let mut qemu = start(Monitor::Unix);
    let qmp = connect(&qemu, builder()).await;
    let mut events = qmp.subscribe();
    qmp.execute(&Stop).await.unwrap();
    assert_eq!(next_event(&mut events).await, "STOP");
    signal(&qemu, "STOP");
    let pending: Vec<_> = (0..5)
        .map(|_| {
            let qmp = qmp.clone();
            tokio::spawn(async move { qmp.execute(&QueryStatus).await })
        })
        .collect();
    while qmp.in_flight() < 5 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    qemu.kill().unwrap();
    for task in pending {
        let result = task.await.unwrap();
        assert!(
            result.as_ref().is_err_and(Error::is_disconnect),
            "{result:?}"
        );
    }
    assert_ended(&qmp, &mut events).await;
}

/// The bar for the blocking handle: 8 threads × 1,000 commands over one shared
/// connection to a real QEMU, each reply answering its own caller, and every STOP/RESUME
/// seen exactly once, in order, by each of three subscribers.
#[test]
fn shared_handle_eight_threads_by_a_thousand_commands() {
    const THREADS: u64 = 8;
    const COMMANDS: u64 = 1000;
    const EVERY: u64 = 50;
    let qemu = start(Monitor::Unix);
    let path = match qemu.address() {
        Address::Unix(path) => path.clone(),
        other => panic!("{other}"),
    };
    let qmp = qmp_std::ClientBuilder::new()
        .connect_timeout(Some(TIMEOUT))
        .command_timeout(Some(TIMEOUT))
        .connect_unix(&path)
        .and_then(qmp_std::Client::into_shared)
        .unwrap_or_else(|e| panic!("connect: {e}\nQEMU said: {}", qemu.output()));
    let pairs = COMMANDS / EVERY;
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let events = qmp.subscribe();
            thread::spawn(move || {
                (0..pairs * 2)
                    .map(|_| events.recv_timeout(TIMEOUT).map(|e| e.name))
                    .collect::<Result<Vec<_>, Error>>()
                    .map(|names| (names, events))
            })
        })
        .collect();
    let answered = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let qmp = qmp.clone();
            let answered = Arc::clone(&answered);
            thread::spawn(move || {
                for n in 0..COMMANDS {
                    // Only thread 0 changes the run state, so each pair makes two events.
                    if t == 0 && n % EVERY == 0 {
                        qmp.execute(&Stop).unwrap();
                        qmp.execute(&Cont).unwrap();
                    } else {
                        let tag = format!("{t}_{n}");
                        assert_answers(&qmp.hmp(&tagged(&tag)).unwrap(), &tag);
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(answered.load(Ordering::Relaxed), THREADS * COMMANDS);
    let expected: Vec<_> = (0..pairs).flat_map(|_| ["STOP", "RESUME"]).collect();
    for reader in readers {
        let (names, events) = reader.join().unwrap().unwrap();
        assert_eq!(names, expected);
        assert!(
            events
                .recv_timeout(Duration::from_millis(50))
                .is_err_and(|e| matches!(e, Error::Timeout(_))),
            "an event too many"
        );
    }
    assert_eq!((qmp.in_flight(), qmp.dropped_messages()), (0, 0));
}

#[test]
fn shared_handle_fails_waiting_threads_when_qemu_dies() {
    let mut qemu = start(Monitor::Unix);
    let path = match qemu.address() {
        Address::Unix(path) => path.clone(),
        other => panic!("{other}"),
    };
    let qmp = SharedClient::connect_unix(&path).unwrap();
    let events = qmp.subscribe();
    signal(&qemu, "STOP");
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let qmp = qmp.clone();
            thread::spawn(move || qmp.execute(&QueryStatus))
        })
        .collect();
    while qmp.in_flight() < 4 {
        thread::sleep(Duration::from_millis(1));
    }
    qemu.kill().unwrap();
    for thread in waiting {
        let result = thread.join().unwrap();
        assert!(
            result.as_ref().is_err_and(Error::is_disconnect),
            "{result:?}"
        );
    }
    assert!(
        events
            .recv_timeout(TIMEOUT)
            .is_err_and(|e| e.is_disconnect())
    );
    assert!(qmp.execute(&QueryStatus).is_err_and(|e| e.is_disconnect()));
}

/// Sends a signal with the system's `kill`.
fn signal(qemu: &Qemu, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(qemu.pid().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

/// A monitor serves one client at a time, so each client passes its own descriptors:
/// `getfd` with a pipe's write end, then `closefd`, on the tokio client and on the shared
/// one (the descriptor goes with the command's first byte, `SCM_RIGHTS`).
#[tokio::test]
async fn both_clients_pass_file_descriptors() {
    use qmp_std::commands::{Closefd, Getfd};
    use std::os::fd::AsFd;

    let qemu = start(Monitor::Unix);
    let path = match qemu.address() {
        Address::Unix(path) => path.clone(),
        other => panic!("{other}"),
    };
    let (_reader, writer) = std::io::pipe().unwrap();
    {
        let qmp = connect(&qemu, builder()).await;
        qmp.execute_with_fds(&Getfd { fdname: "tokio0" }, &[writer.as_fd()])
            .await
            .unwrap();
        qmp.execute(&Closefd { fdname: "tokio0" }).await.unwrap();
        let twice = qmp
            .execute(&Closefd { fdname: "tokio0" })
            .await
            .unwrap_err();
        assert_eq!(twice.qmp_class(), Some("GenericError"));
        qmp.execute_raw_with_fds("getfd", &json!({"fdname": "tokio1"}), &[writer.as_fd()])
            .await
            .unwrap();
        qmp.execute(&Closefd { fdname: "tokio1" }).await.unwrap();
        // Without a descriptor, QEMU refuses getfd.
        let none = qmp.execute(&Getfd { fdname: "none" }).await.unwrap_err();
        assert_eq!(none.qmp_class(), Some("GenericError"));
        qmp.close();
    }
    let writer = Arc::new(writer);
    tokio::task::spawn_blocking(move || {
        let qmp = SharedClient::connect_unix(&path).unwrap();
        qmp.execute_with_fds(&Getfd { fdname: "shared0" }, &[writer.as_fd()])
            .unwrap();
        qmp.execute(&Closefd { fdname: "shared0" }).unwrap();
        let twice = qmp.execute(&Closefd { fdname: "shared0" }).unwrap_err();
        assert_eq!(twice.qmp_class(), Some("GenericError"));
        qmp.execute_raw_with_fds("getfd", &json!({"fdname": "shared1"}), &[writer.as_fd()])
            .unwrap();
        qmp.execute(&Closefd { fdname: "shared1" }).unwrap();
    })
    .await
    .unwrap();
}

/// The tokio client over a serial line: QEMU's `-chardev pty` monitor, opened raw as a tty
/// (`ClientBuilder::open_serial`), with commands from several tasks and events; and the end
/// of the line when QEMU goes (a pty whose other side closed reads as the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_monitor_serves_the_tokio_client() {
    let mut qemu = start(Monitor::Pty);
    let Address::Pty(path) = qemu.address().clone() else {
        panic!("not a pty: {}", qemu.address());
    };
    let qmp = builder()
        .open_serial(&path)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}\nQEMU said: {}", path.display(), qemu.output()));
    assert_eq!(qmp.server().version.major, 7);
    let mut events = qmp.subscribe();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let qmp = qmp.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    let status = qmp.execute(&QueryStatus).await.unwrap();
                    assert!(matches!(
                        status.status,
                        RunState::Running | RunState::Paused
                    ));
                }
            })
        })
        .collect();
    qmp.execute(&Stop).await.unwrap();
    assert_eq!(next_event(&mut events).await, "STOP");
    qmp.execute(&Cont).await.unwrap();
    assert_eq!(next_event(&mut events).await, "RESUME");
    for task in tasks {
        task.await.unwrap();
    }
    qemu.kill().unwrap();
    assert_ended(&qmp, &mut events).await;
}
