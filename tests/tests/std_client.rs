//! End-to-end tests of `qmp-std`'s blocking client against a real QEMU 7.2 (started by the
//! harness, one per test, so the tests run in parallel).
//!
//! Every client here has a command timeout, so a broken client or QEMU fails a test instead
//! of hanging it.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use qmp_e2e::{Address, Monitor, Qemu};
use qmp_std::commands::{
    AddFd, BlockdevAdd, BlockdevDel, Closefd, Cont, DeviceAdd, DeviceDel, Getfd,
    HumanMonitorCommand, MigratePause, MigrateRecover, ObjectAdd, ObjectDel, Prop, QmpCapabilities,
    QomGet, QomList, QomSet, QueryBlock, QueryCommands, QueryCpusFast, QueryFdsets, QueryKvm,
    QueryMigrate, QueryName, QueryNamedBlockNodes, QueryStatus, QueryVersion, Quit, RemoveFd,
    RunState, Screendump, ShutdownCause, Stop, SystemPowerdown, SystemReset, events,
};
use qmp_std::serde_json::{Value, json};
use qmp_std::{Client, ClientBuilder, Error, EventKind, Stream};

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

#[track_caller]
fn unix_path(qemu: &Qemu) -> &std::path::Path {
    match qemu.address() {
        Address::Unix(path) => path,
        other => panic!("not a Unix socket: {other}"),
    }
}

#[track_caller]
fn connect(qemu: &Qemu, builder: ClientBuilder) -> Client<UnixStream> {
    builder
        .connect_unix(unix_path(qemu))
        .unwrap_or_else(|e| panic!("connect: {e}\nQEMU said: {}", qemu.output()))
}

/// Sends a signal with the system's `kill`.
fn signal(qemu: &Qemu, name: &str) {
    let status = Process::new("kill")
        .arg(format!("-{name}"))
        .arg(qemu.pid().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

/// What every kind of connection must do: greeting, negotiation, a typed command, events.
fn basic_session<S: Stream>(client: &mut Client<S>) {
    assert_eq!(client.server().version.major, 7);
    assert!(client.is_negotiated());
    let version = client.execute(&QueryVersion).unwrap();
    assert_eq!(version.qemu, client.server().version);
    assert_eq!(version.package, client.server().package.as_str());
    assert_eq!(
        client.execute(&QueryStatus).unwrap().status,
        RunState::Running
    );
    client.execute(&Stop).unwrap();
    client.execute(&Cont).unwrap();
    let names: Vec<_> = client.events().map(|e| e.name).collect();
    assert_eq!(names, ["STOP", "RESUME"]);
    assert_eq!(client.hmp("info status").unwrap(), "VM status: running\r\n");
}

#[test]
fn unix_socket_greeting_and_negotiation() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    assert!(client.server().oob_offered);
    // Offered, so negotiated by default (as QEMU's own Python client does).
    assert!(client.oob_enabled());
    basic_session(&mut client);
    drop(client);
    let mut client = connect(&qemu, builder().oob(false));
    assert!(!client.oob_enabled());
    basic_session(&mut client);
}

#[test]
fn tcp_connection() {
    let qemu = start(Monitor::Tcp);
    let Address::Tcp(addr) = qemu.address() else {
        panic!("not TCP")
    };
    let mut client = builder().connect_tcp(*addr).unwrap();
    assert!(client.stream().nodelay().unwrap());
    basic_session(&mut client);
}

#[test]
fn chardev_socket_with_mon() {
    let qemu = start(Monitor::ChardevSocket);
    let mut client = connect(&qemu, builder().oob(true));
    assert!(client.oob_enabled());
    basic_session(&mut client);
}

#[test]
fn chardev_socket_pretty_printed() {
    let qemu = start(Monitor::ChardevSocketPretty);
    let mut client = connect(&qemu, builder());
    basic_session(&mut client);
    let schema = client
        .execute_raw("query-qmp-schema", &Value::Null)
        .unwrap();
    assert!(schema.as_array().unwrap().len() > 1000);
}

/// QEMU listens on its monitor socket with a backlog of 1 and accepts no second client while
/// one is connected: later connections wait in the kernel's accept queue (and time out
/// waiting for the greeting), and once the queue is full a plain blocking `connect` waits
/// forever. Every connect must still give up at the connect timeout, and the monitor must
/// serve the next client once the first one goes.
#[test]
fn connect_times_out_while_another_client_holds_the_monitor() {
    let qemu = start(Monitor::Unix);
    let mut first = connect(&qemu, builder());
    let timeout = Duration::from_secs(1);
    // With a backlog of 1 the queue holds two connections, so the third attempt finds it
    // full (the abandoned ones stay queued until QEMU accepts them); one more for good
    // measure.
    for attempt in 1..=4 {
        let path = unix_path(&qemu).to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let start = Instant::now();
            let result = builder()
                .connect_timeout(Some(timeout))
                .connect_unix(&path)
                .map(drop);
            let _ = tx.send((result, start.elapsed()));
        });
        let (result, elapsed) = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!("connect attempt {attempt} ignored its 1 s timeout (blocked for 20 s)")
            });
        assert!(
            matches!(result, Err(Error::Timeout(_))),
            "attempt {attempt}: expected Error::Timeout, got {result:?}"
        );
        assert!(
            elapsed >= timeout && elapsed < Duration::from_secs(5),
            "attempt {attempt} took {elapsed:?}"
        );
    }
    // The first client never noticed.
    assert_eq!(
        first.execute(&QueryStatus).unwrap().status,
        RunState::Running
    );
    drop(first);
    // QEMU now accepts the abandoned connections one after the other, finds each closed,
    // and then serves the next client.
    let mut client = connect(&qemu, builder());
    assert_eq!(
        client.execute(&QueryStatus).unwrap().status,
        RunState::Running
    );
}

#[test]
fn commands_before_negotiation_get_command_not_found() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder().negotiate(false));
    assert!(!client.is_negotiated());
    let e = client.execute(&QueryStatus).unwrap_err();
    assert_eq!(e.qmp_class(), Some("CommandNotFound"));
    let Error::Qmp(e) = e else { unreachable!() };
    assert_eq!(
        e.desc,
        "Expecting capabilities negotiation with 'qmp_capabilities'"
    );
    client.negotiate().unwrap();
    assert!(client.is_negotiated());
    assert!(client.execute(&QueryStatus).unwrap().running);
    // Negotiating again is refused by QEMU.
    let e = client.execute(&QmpCapabilities::default()).unwrap_err();
    assert_eq!(e.qmp_class(), Some("CommandNotFound"));
    let Error::Qmp(e) = e else { unreachable!() };
    assert_eq!(
        e.desc,
        "Capabilities negotiation is already complete, command ignored"
    );
}

#[test]
fn typed_and_raw_commands() {
    let qemu = Qemu::builder(Monitor::Unix)
        .args(["-name", "e2e-vm"])
        .start()
        .unwrap();
    let mut client = connect(&qemu, builder());

    let status = client.execute(&QueryStatus).unwrap();
    assert!(status.running && !status.singlestep);
    assert_eq!(
        client.execute(&QueryName).unwrap().name.as_deref(),
        Some("e2e-vm")
    );
    let kvm = client.execute(&QueryKvm).unwrap();
    assert!(!kvm.enabled);
    let commands = client.execute(&QueryCommands).unwrap();
    assert!(commands.len() > 100);
    assert!(commands.iter().any(|c| c.name == "query-status"));
    assert!(client.execute(&QueryCpusFast).unwrap().is_empty());
    assert!(client.execute(&QueryBlock).unwrap().is_empty());
    let migration = client.execute(&QueryMigrate).unwrap();
    assert_eq!(migration.status, None);
    let out = client
        .execute(&HumanMonitorCommand::new("info version"))
        .unwrap();
    assert!(out.starts_with("7.2."), "{out:?}");

    // QOM: list, get, and set (through an object made for the purpose).
    let properties = client.execute(&QomList { path: "/machine" }).unwrap();
    assert!(properties.iter().any(|p| p.name == "type"));
    let kind = client
        .execute(&QomGet {
            path: "/machine",
            property: "type",
        })
        .unwrap();
    assert_eq!(kind, json!("none-machine"));
    let props = [("size", Prop::Uint(1 << 20))];
    client
        .execute(&ObjectAdd::new("memory-backend-ram", "mem0").props(&props))
        .unwrap();
    let get_size = QomGet {
        path: "/objects/mem0",
        property: "size",
    };
    assert_eq!(client.execute(&get_size).unwrap(), json!(1 << 20));
    client
        .execute(&QomSet {
            path: "/objects/mem0",
            property: "merge",
            value: true,
        })
        .unwrap();
    let merge = client
        .execute(&QomGet {
            path: "/objects/mem0",
            property: "merge",
        })
        .unwrap();
    assert_eq!(merge, json!(true));
    client.execute(&ObjectDel { id: "mem0" }).unwrap();

    // Block nodes.
    client
        .execute(&BlockdevAdd::new("null-co", "null0").option("size", 1 << 20))
        .unwrap();
    let nodes = client
        .execute(&QueryNamedBlockNodes { flat: Some(true) })
        .unwrap();
    let node = nodes
        .iter()
        .find(|n| n.node_name.as_deref() == Some("null0"))
        .expect("the new node");
    assert_eq!(
        (node.drv.as_str(), node.image.virtual_size),
        ("null-co", 1 << 20)
    );
    client.execute(&BlockdevDel { node_name: "null0" }).unwrap();

    // The same through the raw path.
    let status = client.execute_raw("query-status", &Value::Null).unwrap();
    assert_eq!(status["status"], "running");
    let echoed = client
        .execute_raw(
            "human-monitor-command",
            &json!({"command-line": "info name"}),
        )
        .unwrap();
    assert_eq!(echoed, json!("e2e-vm\r\n"));
}

#[test]
fn errors_are_typed() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    let Err(Error::Qmp(e)) = client.execute_raw("nope", &Value::Null) else {
        panic!("expected a QMP error")
    };
    assert_eq!(e.class, "CommandNotFound");
    assert_eq!(e.desc, "The command nope has not been found");
    let e = client
        .execute_raw("query-status", &json!({"bogus": 1}))
        .unwrap_err();
    assert_eq!(e.qmp_class(), Some("GenericError"));
    let e = client.execute(&DeviceDel { id: "nope" }).unwrap_err();
    assert_eq!(e.qmp_class(), Some("DeviceNotFound"));
    let e = client.execute(&Screendump::new("shot.ppm")).unwrap_err();
    assert_eq!(e.qmp_class(), Some("GenericError"));
    // None of these hurt the connection.
    assert!(client.execute(&QueryStatus).unwrap().running);
}

#[test]
fn stop_and_cont_events_are_never_lost() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    for i in 0..20 {
        client.execute(&Stop).unwrap();
        // The event comes before the reply, so it is already queued (after the earlier ones).
        assert_eq!(client.queued_events(), 2 * i + 1);
        client.execute(&QueryStatus).unwrap();
        client.execute(&Cont).unwrap();
    }
    // A second stop while paused emits nothing.
    client.execute(&Stop).unwrap();
    client.execute(&Stop).unwrap();
    let events: Vec<_> = client.events().collect();
    assert_eq!(events.len(), 41);
    for (i, event) in events.iter().enumerate() {
        let expected = if i % 2 == 0 { "STOP" } else { "RESUME" };
        assert_eq!(event.name, expected, "event {i}");
        assert_eq!(event.data, None);
        assert!(event.timestamp.seconds > 1_600_000_000);
    }
    assert!(events[0].is::<events::Stop>() && events[1].is::<events::Resume>());

    client.execute(&SystemReset).unwrap();
    let reset = client
        .wait_event(<events::Reset as EventKind>::NAME, TIMEOUT)
        .unwrap();
    let data = reset.data_as::<events::Reset>().unwrap();
    assert_eq!(
        (data.guest, data.reason),
        (false, ShutdownCause::HostQmpSystemReset)
    );
    client.execute(&SystemPowerdown).unwrap();
    client.wait_event("POWERDOWN", TIMEOUT).unwrap();
    assert!(matches!(
        client.wait_event("NEVER", Duration::from_millis(50)),
        Err(Error::Timeout(_))
    ));
}

#[test]
fn ids_of_any_json_type_on_the_raw_path() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    for id in [
        json!("text"),
        json!(-7),
        json!(0.5),
        json!(true),
        json!(null),
        json!([1, "two", {"three": 3}]),
        json!({"nested": {"id": [null]}}),
        json!(u64::MAX),
    ] {
        let reply = client
            .request(&json!({"execute": "query-status", "id": id}))
            .unwrap();
        assert_eq!(reply["id"], id);
        assert_eq!(reply["return"]["status"], "running");
    }
    let reply = client
        .request(&json!({"execute": "nope", "id": {"x": 1}}))
        .unwrap();
    assert_eq!(reply["error"]["class"], "CommandNotFound");
    assert_eq!(reply["id"], json!({"x": 1}));
    // No id: QEMU answers without one.
    let reply = client.request(&json!({"execute": "query-kvm"})).unwrap();
    assert!(reply.get("id").is_none());
    assert_eq!(reply["return"]["present"], json!(true));
    // The typed path still works afterwards.
    assert!(client.execute(&QueryStatus).unwrap().running);
}

#[test]
fn pipelining_eight_commands() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    let status = client.send(&QueryStatus).unwrap();
    let version = client.send(&QueryVersion).unwrap();
    let name = client.send(&QueryName).unwrap();
    let kvm = client.send(&QueryKvm).unwrap();
    let hmp = client
        .send(&HumanMonitorCommand::new("info status"))
        .unwrap();
    let commands = client.send(&QueryCommands).unwrap();
    let raw = client.send_raw("query-status", &Value::Null).unwrap();
    let nope = client.send_raw("nope", &Value::Null).unwrap();
    assert_eq!(client.in_flight(), 8);
    // Collected in another order than sent.
    assert_eq!(
        client.wait(nope).unwrap_err().qmp_class(),
        Some("CommandNotFound")
    );
    assert_eq!(client.wait(raw).unwrap()["running"], json!(true));
    assert!(!client.wait(commands).unwrap().is_empty());
    assert_eq!(client.wait(hmp).unwrap(), "VM status: running\r\n");
    assert!(client.wait(kvm).unwrap().present);
    assert_eq!(client.wait(name).unwrap().name, None);
    assert_eq!(client.wait(version).unwrap().qemu.major, 7);
    assert!(client.wait(status).unwrap().running);
    assert_eq!(client.in_flight(), 0);

    // More than QEMU's queue of 8: the client waits for room by itself.
    let handles: Vec<_> = (0..30)
        .map(|_| client.send(&QueryStatus).unwrap())
        .collect();
    for handle in handles {
        assert!(client.wait(handle).unwrap().running);
    }
}

#[test]
fn exec_oob() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder().oob(true));
    assert!(client.oob_enabled());
    // migrate-pause and migrate-recover allow out-of-band execution in 7.2; with no
    // migration they fail, and the error comes back as the reply to that exec-oob.
    let e = client.execute_oob(&MigratePause).unwrap_err();
    assert_eq!(e.qmp_class(), Some("GenericError"), "{e}");
    let e = client
        .execute_oob(&MigrateRecover {
            uri: "unix:nowhere",
        })
        .unwrap_err();
    assert_eq!(e.qmp_class(), Some("GenericError"), "{e}");
    // A command that does not allow it.
    let Err(Error::Qmp(e)) = client.execute_oob(&QueryStatus) else {
        panic!("expected a QMP error")
    };
    assert_eq!(e.desc, "The command query-status does not support OOB");
    // Mixed with in-band commands in flight.
    let a = client.send(&QueryStatus).unwrap();
    let b = client.send_oob(&MigratePause).unwrap();
    let c = client.send(&QueryKvm).unwrap();
    assert!(client.wait(c).unwrap().present);
    assert!(client.wait(b).is_err());
    assert!(client.wait(a).unwrap().running);
    // Raw exec-oob works the same.
    let e = client
        .execute_oob_raw("yank", &json!({"instances": []}))
        .unwrap();
    assert_eq!(e, json!({}));
}

#[test]
fn fd_passing_getfd_closefd_add_fd_remove_fd() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    let (_reader, writer) = std::io::pipe().unwrap();

    client
        .execute_with_fds(&Getfd { fdname: "pipe0" }, &[writer.as_fd()])
        .unwrap();
    client.execute(&Closefd { fdname: "pipe0" }).unwrap();
    let e = client.execute(&Closefd { fdname: "pipe0" }).unwrap_err();
    assert_eq!(e.qmp_class(), Some("GenericError"));
    // getfd without a descriptor is refused by QEMU.
    let e = client.execute(&Getfd { fdname: "none" }).unwrap_err();
    assert_eq!(e.qmp_class(), Some("GenericError"));

    let added = client
        .execute_with_fds(
            &AddFd {
                fdset_id: Some(7),
                opaque: Some("e2e pipe"),
            },
            &[writer.as_fd()],
        )
        .unwrap();
    assert_eq!(added.fdset_id, 7);
    let sets = client.execute(&QueryFdsets).unwrap();
    let set = sets.iter().find(|s| s.fdset_id == 7).expect("fdset 7");
    assert_eq!(set.fds.len(), 1);
    assert_eq!(set.fds[0].fd, added.fd);
    assert_eq!(set.fds[0].opaque.as_deref(), Some("e2e pipe"));
    client
        .execute(&RemoveFd {
            fdset_id: 7,
            fd: Some(added.fd),
        })
        .unwrap();
    let sets = client.execute(&QueryFdsets).unwrap();
    assert!(sets.iter().all(|s| s.fdset_id != 7), "{sets:?}");
}

#[test]
fn query_qmp_schema_is_about_207_kb() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    assert_eq!(client.buffer_capacity(), 64 << 10);
    let schema = client
        .execute_raw("query-qmp-schema", &Value::Null)
        .unwrap();
    let entries = schema.as_array().unwrap();
    assert!(entries.len() > 1000);
    assert!(entries.iter().any(|e| e["name"] == "query-status"));
    assert!(client.buffer_capacity() >= 200 << 10);

    // With a smaller limit: a typed error for that command, and the connection goes on.
    let mut small = {
        drop(client);
        connect(&qemu, builder().max_reply_size(100 << 10))
    };
    match small.execute_raw("query-qmp-schema", &Value::Null) {
        Err(Error::TooLarge { size, limit }) => {
            assert!(size > 200_000, "{size}");
            assert_eq!(limit, 100 << 10);
        }
        other => panic!("{other:?}"),
    }
    assert!(small.execute(&QueryStatus).unwrap().running);
}

#[test]
fn quit_gives_shutdown_return_then_disconnected() {
    let mut qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    client.execute(&Quit).unwrap();
    let shutdown = client
        .wait_event(<events::Shutdown as EventKind>::NAME, Duration::ZERO)
        .expect("SHUTDOWN comes before the reply");
    let data = shutdown.data_as::<events::Shutdown>().unwrap();
    assert_eq!(data.reason, ShutdownCause::HostQmpQuit);
    assert!(!data.guest);
    let start = Instant::now();
    let e = client.execute(&QueryStatus).unwrap_err();
    assert!(matches!(e, Error::Disconnected), "{e:?}");
    assert!(client.is_closed());
    assert!(matches!(client.execute(&Stop), Err(Error::Disconnected)));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(qemu.wait_exit(TIMEOUT).is_some());
}

#[test]
fn sigkill_mid_command_is_a_typed_error() {
    let mut qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    // Freeze QEMU so the commands are surely in flight when it dies.
    signal(&qemu, "STOP");
    let a = client.send(&QueryStatus).unwrap();
    let b = client
        .send(&HumanMonitorCommand::new("info status"))
        .unwrap();
    qemu.kill().unwrap();
    let start = Instant::now();
    assert!(matches!(client.wait(b), Err(Error::Disconnected)));
    assert!(matches!(client.wait(a), Err(Error::Disconnected)));
    assert!(matches!(
        client.execute(&QueryStatus),
        Err(Error::Disconnected)
    ));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_frozen_qemu_times_out_then_recovers() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    signal(&qemu, "STOP");
    client.set_command_timeout(Some(Duration::from_millis(200)));
    let start = Instant::now();
    let result = client.execute(&QueryStatus);
    let took = start.elapsed();
    signal(&qemu, "CONT");
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "{took:?}"
    );
    client.set_command_timeout(Some(TIMEOUT));
    // The late reply to the timed-out command is dropped; the next one gets its own.
    assert!(client.execute(&QueryKvm).unwrap().present);
    assert_eq!(client.dropped_messages(), 1);
}

#[test]
fn a_frozen_qemu_trips_the_read_timeout() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(
        &qemu,
        builder()
            .command_timeout(None)
            .read_timeout(Some(Duration::from_millis(200))),
    );
    assert!(client.execute(&QueryStatus).unwrap().running);
    signal(&qemu, "STOP");
    let a = client.send(&QueryStatus).unwrap();
    let start = Instant::now();
    let result = client.wait(a);
    signal(&qemu, "CONT");
    assert!(matches!(result, Err(Error::Stalled)), "{result:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(matches!(client.execute(&QueryStatus), Err(Error::Stalled)));
}

#[test]
fn cpus_drives_devices_and_a_block_job() {
    // A real (paused) PC, for a CPU, a drive and a USB bus to plug into.
    let qemu = Qemu::builder(Monitor::Unix)
        .paused(true)
        .args([
            "-machine",
            "pc",
            "-drive",
            "if=none,id=drive0,driver=null-co",
        ])
        .args(["-device", "qemu-xhci,id=usb"])
        .start()
        .unwrap();
    let mut client = connect(&qemu, builder());
    let status = client.execute(&QueryStatus).unwrap();
    assert_eq!(status.status, RunState::Prelaunch);

    let cpus = client.execute(&QueryCpusFast).unwrap();
    assert_eq!(cpus.len(), 1, "{cpus:?}");
    assert_eq!((cpus[0].cpu_index, cpus[0].target.as_str()), (0, "x86_64"));
    assert!(cpus[0].qom_path.starts_with("/machine/"), "{:?}", cpus[0]);
    assert_eq!(cpus[0].cpu_state, None);
    let props = cpus[0].props.as_ref().expect("topology");
    assert_eq!((props.socket_id, props.core_id), (Some(0), Some(0)));

    // USB devices unplug without the guest's help.
    client
        .execute(&DeviceAdd::new("usb-kbd").id("kbd0").bus("usb.0"))
        .unwrap();
    client.execute(&DeviceDel { id: "kbd0" }).unwrap();
    let deleted = loop {
        let event = client.wait_event("DEVICE_DELETED", TIMEOUT).unwrap();
        let data = event.data_as::<events::DeviceDeleted>().unwrap();
        if data.device.is_some() {
            break data;
        }
    };
    assert_eq!(deleted.device.as_deref(), Some("kbd0"));
    assert_eq!(deleted.path, "/machine/peripheral/kbd0");

    let drives = client.execute(&QueryBlock).unwrap();
    assert_eq!(drives.len(), 1);
    assert_eq!(drives[0].device, "drive0");
    let inserted = drives[0].inserted.as_ref().expect("a medium");
    assert_eq!(inserted.drv, "null-co");
    assert!(inserted.cache.writeback);

    // A backup job from one null node to another finishes at once.
    client
        .execute(&BlockdevAdd::new("null-co", "target0").option("size", 1 << 30))
        .unwrap();
    let source = inserted.node_name.clone().expect("a node name");
    client
        .execute_raw(
            "blockdev-backup",
            &json!({"job-id": "job0", "device": source, "target": "target0", "sync": "full"}),
        )
        .unwrap();
    let done = client.wait_event("BLOCK_JOB_COMPLETED", TIMEOUT).unwrap();
    let data = done.data_as::<events::BlockJobCompleted>().unwrap();
    assert_eq!(data.kind, qmp_std::commands::JobType::Backup);
    assert_eq!(data.device, "job0");
    assert_eq!((data.len, data.error), (data.offset, None));
}

#[test]
fn migration_events_and_query_migrate() {
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    assert_eq!(client.execute(&QueryMigrate).unwrap().status, None);
    client
        .execute_raw(
            "migrate-set-capabilities",
            &json!({"capabilities": [{"capability": "events", "state": true}]}),
        )
        .unwrap();
    client
        .execute(&qmp_std::commands::Migrate::new("exec:cat > /dev/null"))
        .unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&qmp_std::commands::MigrationStatus::Completed) {
        let event = client.wait_event("MIGRATION", TIMEOUT).unwrap();
        seen.push(event.data_as::<events::Migration>().unwrap().status);
    }
    assert_eq!(seen[0], qmp_std::commands::MigrationStatus::Setup);
    let info = client.execute(&QueryMigrate).unwrap();
    assert_eq!(
        info.status,
        Some(qmp_std::commands::MigrationStatus::Completed)
    );
    assert!(info.ram.is_some() && info.total_time.is_some(), "{info:?}");
    // The run state passes through finish-migrate and may still be there just after the
    // `completed` event: wait (bounded) for postmigrate.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let status = client.execute(&QueryStatus).unwrap().status;
        if status == RunState::Postmigrate {
            break;
        }
        assert_eq!(status, RunState::FinishMigrate);
        assert!(std::time::Instant::now() < deadline, "still {status:?}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Field names of a `Deserialize` struct, as serde sees them (after renames).
fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};
    struct Capture(Option<&'static [&'static str]>);
    impl<'de> serde::Deserializer<'de> for &mut Capture {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(fields);
            Err(Self::Error::custom("captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut capture = Capture(None);
    let _ = T::deserialize(&mut capture);
    capture.0.expect("a struct")
}

/// QEMU's own `query-qmp-schema`, resolved.
struct Schema(std::collections::HashMap<String, Value>);

impl Schema {
    fn entity(&self, name: &str) -> &Value {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("{name} not in the schema"))
    }

    /// `(arg-type, ret-type)` of a command.
    fn command(&self, name: &str) -> (String, Option<String>) {
        let c = self.entity(name);
        assert_eq!(c["meta-type"], "command", "{name}");
        let ret = c.get("ret-type").map(|t| t.as_str().unwrap().to_owned());
        (c["arg-type"].as_str().unwrap().to_owned(), ret)
    }

    fn event(&self, name: &str) -> String {
        let e = self.entity(name);
        assert_eq!(e["meta-type"], "event", "{name}");
        e["arg-type"].as_str().unwrap().to_owned()
    }

    /// Members of an object type, with variant members folded in: (name, optional, type).
    fn members(&self, ty: &str) -> Vec<(String, bool, String)> {
        let t = self.entity(ty);
        assert_eq!(t["meta-type"], "object", "{ty} is not an object: {t}");
        let mut out: Vec<_> = t["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_owned(),
                    m.get("default").is_some(),
                    m["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        for variant in t
            .get("variants")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for (name, _, ty) in self.members(variant["type"].as_str().unwrap()) {
                if !out.iter().any(|(n, _, _)| *n == name) {
                    out.push((name, true, ty));
                }
            }
        }
        out
    }

    fn member_type(&self, ty: &str, member: &str) -> String {
        let found = self.members(ty).into_iter().find(|(n, _, _)| n == member);
        found.unwrap_or_else(|| panic!("{ty} has no {member}")).2
    }

    /// An array's element type, or the type itself.
    fn element(&self, ty: &str) -> String {
        let t = self.entity(ty);
        match t["meta-type"].as_str() {
            Some("array") => t["element-type"].as_str().unwrap().to_owned(),
            _ => ty.to_owned(),
        }
    }

    fn enum_values(&self, ty: &str) -> Vec<String> {
        let t = self.entity(ty);
        assert_eq!(t["meta-type"], "enum", "{ty}");
        t["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// Our struct's fields are members of `ty`, and `ty`'s required members are our fields
    /// (except the ones listed as left out).
    #[track_caller]
    fn check_fields(&self, what: &str, ours: &[&str], ty: &str) {
        let members = self.members(ty);
        for field in ours {
            assert!(
                members.iter().any(|(n, _, _)| n == field),
                "{what}: `{field}` is not in the schema ({members:?})"
            );
        }
        for (name, optional, _) in &members {
            assert!(
                *optional || ours.contains(&name.as_str()),
                "{what}: required member `{name}` is missing"
            );
        }
    }

    /// A command's serialized arguments fit its `arg-type`.
    #[track_caller]
    fn check_args<C: qmp_std::Command>(&self, sample: &C) {
        let (args, _) = self.command(C::NAME);
        let value = qmp_std::serde_json::to_value(sample).unwrap();
        let keys: Vec<&str> = match &value {
            Value::Null => Vec::new(),
            Value::Object(map) => map.keys().map(String::as_str).collect(),
            other => panic!("{}: arguments {other}", C::NAME),
        };
        self.check_fields(C::NAME, &keys, &args);
    }

    /// Every value of one of our enums (all but `Unknown`) is in the schema's enum.
    #[track_caller]
    fn check_enum<T: serde::Serialize>(&self, ty: &str, ours: &[T]) {
        let values = self.enum_values(ty);
        for v in ours {
            let v = qmp_std::serde_json::to_value(v).unwrap();
            assert!(values.iter().any(|s| v == *s), "{v} not in {values:?}");
        }
    }
}

#[test]
fn typed_commands_match_the_live_schema() {
    use qmp_std::commands::*;
    let qemu = start(Monitor::Unix);
    let mut client = connect(&qemu, builder());
    let schema = client
        .execute_raw("query-qmp-schema", &Value::Null)
        .unwrap();
    let schema = Schema(
        schema
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
            .collect(),
    );

    // Arguments, with every optional member set.
    schema.check_args(&QmpCapabilities {
        enable: Some(&[QmpCapability::Oob]),
    });
    for unit in [
        &QueryVersion as &dyn erased::Args,
        &QueryStatus,
        &QueryName,
        &QueryKvm,
        &Stop,
        &Cont,
        &SystemReset,
        &SystemPowerdown,
        &Quit,
        &MigratePause,
        &QueryCommands,
        &QueryCpusFast,
        &QueryFdsets,
        &QueryBlock,
        &QueryMigrate,
    ] {
        unit.check(&schema);
    }
    schema.check_args(&HumanMonitorCommand {
        command_line: "x",
        cpu_index: Some(0),
    });
    schema.check_args(&Getfd { fdname: "x" });
    schema.check_args(&Closefd { fdname: "x" });
    schema.check_args(&AddFd {
        fdset_id: Some(1),
        opaque: Some("x"),
    });
    schema.check_args(&RemoveFd {
        fdset_id: 1,
        fd: Some(1),
    });
    schema.check_args(&DeviceAdd::new("x").id("x").bus("x"));
    schema.check_args(&DeviceDel { id: "x" });
    schema.check_args(&ObjectAdd::new("memory-backend-ram", "x"));
    schema.check_args(&ObjectDel { id: "x" });
    schema.check_args(&QomList { path: "x" });
    schema.check_args(&QomGet {
        path: "x",
        property: "x",
    });
    schema.check_args(&QomSet {
        path: "x",
        property: "x",
        value: 1,
    });
    schema.check_args(&BlockdevAdd::new("null-co", "x"));
    schema.check_args(&BlockdevDel { node_name: "x" });
    schema.check_args(&QueryNamedBlockNodes { flat: Some(true) });
    schema.check_args(&Migrate {
        uri: "x",
        blk: Some(false),
        inc: Some(false),
        detach: Some(false),
        resume: Some(false),
    });
    schema.check_args(&MigrateRecover { uri: "x" });
    schema.check_args(&Screendump {
        filename: "x",
        device: Some("x"),
        head: Some(0),
        format: Some(ImageFormat::Png),
    });

    // Results.
    let ret = |name: &str| schema.element(&schema.command(name).1.unwrap());
    let t = ret("query-version");
    schema.check_fields("VersionInfo", fields_of::<VersionInfo>(), &t);
    let triple = schema.member_type(&t, "qemu");
    schema.check_fields("VersionTriple", fields_of::<VersionTriple>(), &triple);
    let t = ret("query-status");
    schema.check_fields("StatusInfo", fields_of::<StatusInfo>(), &t);
    schema.check_enum(
        &schema.member_type(&t, "status"),
        &[
            RunState::Debug,
            RunState::Inmigrate,
            RunState::InternalError,
            RunState::IoError,
            RunState::Paused,
            RunState::Postmigrate,
            RunState::Prelaunch,
            RunState::FinishMigrate,
            RunState::RestoreVm,
            RunState::Running,
            RunState::SaveVm,
            RunState::Shutdown,
            RunState::Suspended,
            RunState::Watchdog,
            RunState::GuestPanicked,
            RunState::Colo,
        ],
    );
    schema.check_fields("NameInfo", fields_of::<NameInfo>(), &ret("query-name"));
    schema.check_fields("KvmInfo", fields_of::<KvmInfo>(), &ret("query-kvm"));
    schema.check_fields(
        "CommandInfo",
        fields_of::<CommandInfo>(),
        &ret("query-commands"),
    );
    let t = ret("query-cpus-fast");
    schema.check_fields("CpuInfoFast", fields_of::<CpuInfoFast>(), &t);
    let props = schema.member_type(&t, "props");
    schema.check_fields(
        "CpuInstanceProperties",
        fields_of::<CpuInstanceProperties>(),
        &props,
    );
    schema.check_fields("AddfdInfo", fields_of::<AddfdInfo>(), &ret("add-fd"));
    let t = ret("query-fdsets");
    schema.check_fields("FdsetInfo", fields_of::<FdsetInfo>(), &t);
    let fd = schema.element(&schema.member_type(&t, "fds"));
    schema.check_fields("FdsetFdInfo", fields_of::<FdsetFdInfo>(), &fd);
    schema.check_fields(
        "ObjectPropertyInfo",
        fields_of::<ObjectPropertyInfo>(),
        &ret("qom-list"),
    );
    let t = ret("query-block");
    schema.check_fields("BlockInfo", fields_of::<BlockInfo>(), &t);
    let node = schema.member_type(&t, "inserted");
    assert_eq!(node, ret("query-named-block-nodes"));
    schema.check_fields("BlockDeviceInfo", fields_of::<BlockDeviceInfo>(), &node);
    let image = schema.member_type(&node, "image");
    schema.check_fields("ImageInfo", fields_of::<ImageInfo>(), &image);
    let cache = schema.member_type(&node, "cache");
    schema.check_fields(
        "BlockdevCacheInfo",
        fields_of::<BlockdevCacheInfo>(),
        &cache,
    );
    let dirty = schema.element(&schema.member_type(&node, "dirty-bitmaps"));
    schema.check_fields("BlockDirtyInfo", fields_of::<BlockDirtyInfo>(), &dirty);
    let t = ret("query-migrate");
    schema.check_fields("MigrationInfo", fields_of::<MigrationInfo>(), &t);
    let stats = schema.member_type(&t, "ram");
    schema.check_fields("MigrationStats", fields_of::<MigrationStats>(), &stats);
    let (args, _) = schema.command("screendump");
    schema.check_enum(
        &schema.member_type(&args, "format"),
        &[ImageFormat::Ppm, ImageFormat::Png],
    );
    let (args, _) = schema.command("qmp_capabilities");
    let caps = schema.element(&schema.member_type(&args, "enable"));
    schema.check_enum(&caps, &[QmpCapability::Oob]);

    // Events.
    for (name, data) in [("SHUTDOWN", "ShutdownData"), ("RESET", "ShutdownData")] {
        let t = schema.event(name);
        schema.check_fields(data, fields_of::<events::ShutdownData>(), &t);
        schema.check_enum(
            &schema.member_type(&t, "reason"),
            &[
                ShutdownCause::None,
                ShutdownCause::HostError,
                ShutdownCause::HostQmpQuit,
                ShutdownCause::HostQmpSystemReset,
                ShutdownCause::HostSignal,
                ShutdownCause::HostUi,
                ShutdownCause::GuestShutdown,
                ShutdownCause::GuestReset,
                ShutdownCause::GuestPanic,
                ShutdownCause::SubsystemReset,
                ShutdownCause::SnapshotLoad,
            ],
        );
    }
    for name in ["STOP", "RESUME", "POWERDOWN"] {
        schema.check_fields(name, &[], &schema.event(name));
    }
    let t = schema.event("DEVICE_DELETED");
    schema.check_fields(
        "DeviceDeletedData",
        fields_of::<events::DeviceDeletedData>(),
        &t,
    );
    let t = schema.event("BLOCK_JOB_COMPLETED");
    schema.check_fields(
        "BlockJobCompletedData",
        fields_of::<events::BlockJobCompletedData>(),
        &t,
    );
    schema.check_enum(
        &schema.member_type(&t, "type"),
        &[
            JobType::Commit,
            JobType::Stream,
            JobType::Mirror,
            JobType::Backup,
            JobType::Create,
            JobType::Amend,
            JobType::SnapshotLoad,
            JobType::SnapshotSave,
            JobType::SnapshotDelete,
        ],
    );
    let t = schema.event("MIGRATION");
    schema.check_fields("MigrationData", fields_of::<events::MigrationData>(), &t);
    schema.check_enum(
        &schema.member_type(&t, "status"),
        &[
            MigrationStatus::None,
            MigrationStatus::Setup,
            MigrationStatus::Cancelling,
            MigrationStatus::Cancelled,
            MigrationStatus::Active,
            MigrationStatus::PostcopyActive,
            MigrationStatus::PostcopyPaused,
            MigrationStatus::PostcopyRecover,
            MigrationStatus::Completed,
            MigrationStatus::Failed,
            MigrationStatus::Colo,
            MigrationStatus::PreSwitchover,
            MigrationStatus::Device,
            MigrationStatus::WaitUnplug,
        ],
    );
}

/// Argument checks for a list of differently typed commands.
mod erased {
    use super::Schema;

    pub trait Args {
        fn check(&self, schema: &Schema);
    }

    impl<C: qmp_std::Command> Args for C {
        fn check(&self, schema: &Schema) {
            schema.check_args(self);
        }
    }
}

/// `untagged_when_alone`, the default: a lone command goes without its id and its reply
/// (return, error, or one too large for the buffer) is matched by order; pipelined and
/// out-of-band commands keep ids; events still arrive in order; a timeout switches ids back
/// on for good. With the option off, every command carries its id.
#[test]
fn lone_commands_without_ids_against_qemu() {
    /// A Unix socket that keeps a copy of everything written to it.
    struct Recorder(UnixStream, Vec<u8>);
    impl std::io::Read for Recorder {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl std::io::Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.0.write(buf)?;
            self.1.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Stream for Recorder {
        fn set_read_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<bool> {
            Stream::set_read_timeout(&mut self.0, timeout)
        }
    }
    fn wire(client: &mut Client<Recorder>) -> String {
        String::from_utf8(std::mem::take(&mut client.stream_mut().1)).unwrap()
    }

    let qemu = start(Monitor::Unix);
    let socket = UnixStream::connect(unix_path(&qemu)).unwrap();
    let mut client = builder()
        .oob(true)
        .initial_buffer(4096)
        .max_reply_size(64 << 10)
        .handshake(Recorder(socket, Vec::new()))
        .unwrap();
    assert!(wire(&mut client).ends_with(r#","id":1}"#));
    for _ in 0..5 {
        client.execute(&Stop).unwrap();
        assert_eq!(
            client.execute(&QueryStatus).unwrap().status,
            RunState::Paused
        );
        client.execute(&Cont).unwrap();
    }
    let names: Vec<_> = client.events().map(|e| e.name).collect();
    assert_eq!(names, ["STOP", "RESUME"].repeat(5));
    assert_eq!(
        wire(&mut client),
        r#"{"execute":"stop"}{"execute":"query-status"}{"execute":"cont"}"#.repeat(5)
    );
    let e = client.execute_raw("nope", &Value::Null).unwrap_err();
    assert_eq!(e.qmp_class(), Some("CommandNotFound"));
    // About 207 KB, over the 64 KiB limit.
    let schema = client.execute_raw("query-qmp-schema", &Value::Null);
    assert!(matches!(schema, Err(Error::TooLarge { .. })), "{schema:?}");
    // Eight pipelined (the first goes without an id) and an out-of-band one overtaking them.
    let handles: Vec<_> = (0..7).map(|_| client.send(&QueryStatus).unwrap()).collect();
    let kvm = client.send(&QueryKvm).unwrap();
    let oob = client.send_oob(&MigratePause).unwrap();
    assert!(client.wait(oob).is_err());
    assert!(client.wait(kvm).unwrap().present);
    for handle in handles.into_iter().rev() {
        assert!(client.wait(handle).unwrap().running);
    }
    assert_eq!(client.dropped_messages(), 0);
    let sent = wire(&mut client);
    assert!(
        sent.starts_with(r#"{"execute":"nope"}{"execute":"query-qmp-schema"}{"execute":"query-status"}{"execute":"query-status","id":"#),
        "{sent}"
    );
    assert_eq!(sent.matches(r#""id":"#).count(), 8, "{sent}");

    // A timeout: the late reply must not be taken for the next command's.
    signal(&qemu, "STOP");
    client.set_command_timeout(Some(Duration::from_millis(200)));
    let result = client.execute(&QueryStatus);
    signal(&qemu, "CONT");
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    client.set_command_timeout(Some(TIMEOUT));
    assert!(client.execute(&QueryKvm).unwrap().present);
    assert_eq!(client.execute(&QueryName).unwrap().name, None);
    assert_eq!(client.dropped_messages(), 1);
    let sent = wire(&mut client);
    assert!(
        sent.starts_with(r#"{"execute":"query-status"}{"execute":"query-kvm","id":"#),
        "{sent}"
    );
    assert!(
        sent.ends_with(r#"{"execute":"query-name","id":30}"#),
        "{sent}"
    );

    drop(client);
    let socket = UnixStream::connect(unix_path(&qemu)).unwrap();
    let mut tagged = builder()
        .untagged_when_alone(false)
        .handshake(Recorder(socket, Vec::new()))
        .unwrap();
    assert!(tagged.execute(&QueryStatus).unwrap().running);
    assert_eq!(tagged.execute(&QueryName).unwrap().name, None);
    assert_eq!(
        wire(&mut tagged),
        r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}{"execute":"query-status","id":2}{"execute":"query-name","id":3}"#
    );
}

/// QEMU's parser takes commands nested up to 1024 deep (`qmp_proto::QEMU_MAX_NESTING`,
/// counting the command's own braces): one that deep gets its reply; one level deeper
/// gets only id-less parse errors from QEMU, so the encoder refuses it before it is sent.
#[test]
fn nesting_limit_matches_qemus_parser() {
    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(0), |v, _| Value::Array(vec![v]))
    }
    let qemu = start(Monitor::Unix);
    let mut client = builder().connect_unix(unix_path(&qemu)).unwrap();
    // Two levels are the command's own object and its arguments.
    let e = client
        .execute_raw("query-status", &json!({ "a": nested(1022) }))
        .unwrap_err();
    assert_eq!(e.qmp_class(), Some("GenericError"), "{e}");
    assert!(e.to_string().contains("'a'"), "{e}");
    let e = client
        .execute_raw("query-status", &json!({ "a": nested(1023) }))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Encode(qmp_proto::EncodeError::TooDeep { depth: 1025 })
        ),
        "{e:?}"
    );
    assert!(client.execute(&QueryStatus).unwrap().running);
    drop(client);

    // What QEMU does with the deeper one, on a raw connection: parse errors without an id,
    // never a reply carrying the command's id.
    use std::io::{BufRead, BufReader, Write};
    let mut raw = UnixStream::connect(unix_path(&qemu)).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut lines = BufReader::new(raw.try_clone().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    assert!(next().starts_with(r#"{"QMP""#));
    raw.write_all(br#"{"execute":"qmp_capabilities","id":1}"#)
        .unwrap();
    assert_eq!(next(), r#"{"return": {}, "id": 1}"#);
    let deep = format!(
        r#"{{"execute":"query-status","arguments":{{"a":{}}},"id":2}}"#,
        qmp_std::serde_json::to_string(&nested(1023)).unwrap()
    );
    raw.write_all(deep.as_bytes()).unwrap();
    raw.write_all(br#"{"execute":"query-name","id":3}"#)
        .unwrap();
    let mut errors = 0;
    loop {
        let line = next();
        assert!(!line.contains(r#""id": 2"#), "{line}");
        if line.contains(r#""id": 3"#) {
            break;
        }
        assert!(line.starts_with(r#"{"error""#), "{line}");
        errors += 1;
    }
    assert!(errors >= 1);
}

/// The blocking client on QEMU's `-chardev pty` monitor, opened raw as a serial line
/// (`ClientBuilder::open_serial`): commands, events, and the end when QEMU goes.
#[test]
fn a_pty_monitor_serves_the_blocking_client() {
    let mut qemu = start(Monitor::Pty);
    let Address::Pty(path) = qemu.address().clone() else {
        panic!("not a pty: {}", qemu.address());
    };
    let mut qmp = ClientBuilder::new()
        .connect_timeout(Some(TIMEOUT))
        .command_timeout(Some(TIMEOUT))
        .open_serial(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}\nQEMU said: {}", path.display(), qemu.output()));
    assert_eq!(qmp.execute(&QueryStatus).unwrap().status, RunState::Running);
    qmp.execute(&Stop).unwrap();
    assert_eq!(qmp.next_event(TIMEOUT).unwrap().name, "STOP");
    qemu.kill().unwrap();
    let e = qmp.execute(&QueryStatus).unwrap_err();
    assert!(e.is_disconnect(), "{e:?}");
}
