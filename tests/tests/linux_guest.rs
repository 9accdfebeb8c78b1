//! Tests against a real Linux guest (see `qmp_e2e::guest`): what only a running OS produces.
//! `SHUTDOWN` with reason `guest-shutdown` after `system_powerdown`, `DEVICE_DELETED` after the
//! guest ejects a NIC, `GUEST_PANICKED` from pvpanic (the panic set off through the agent's
//! `guest-exec`), `BALLOON_CHANGE`, and the guest agent answering over virtio-serial from
//! inside the guest, with raw bytes and with qmp-std's agent client.
//!
//! Every test boots its own guest (a destroyed guest cannot be shared, and QEMU serves one QMP
//! client at a time); the harness lets at most two boot at once.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use qmp_e2e::guest::{AGENT_CHARDEV, Guest, image};
use qmp_std::agent::AgentBuilder;
use qmp_std::agent_commands::{
    FsfreezeStatus, GuestExec, GuestFsfreezeFreeze, GuestFsfreezeStatus, GuestFsfreezeThaw,
    GuestGetOsinfo, GuestPing, GuestShutdown,
};
use qmp_std::commands::events::{DeviceDeleted, Powerdown, Shutdown};
use qmp_std::commands::{DeviceAdd, DeviceDel, QueryStatus, RunState, ShutdownCause};
use qmp_std::qapi::events::{BalloonChange, GuestPanicked};
use qmp_std::qapi::{Balloon, GuestPanickedDataAction, QueryBalloon};
use qmp_std::serde_json::{self, Value, json};
use qmp_std::{Client, Error, EventKind};

/// For anything the guest has to do (under TCG, on a loaded 2-core machine).
const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a command inside the guest through the root shell on the serial console (for what
/// must not depend on the agent, such as restarting it; the rest goes through
/// `guest-exec`).
fn run_in_guest(guest: &mut Guest, command_line: &str) -> String {
    guest
        .run(command_line, GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("run {command_line:?} in the guest: {e}"))
}

/// Panics the guest kernel from inside (sysrq `c`), through the guest agent's `guest-exec`.
/// The program waits a second first, so that the agent's reply (the pid) leaves before the
/// kernel stops; should it still be lost (a loaded host), the `GUEST_PANICKED` wait decides.
fn trigger_panic(guest: &mut Guest) {
    let mut agent = agent(guest);
    let exec = GuestExec::new("/bin/sh", ["-c", "sleep 1; echo c > /proc/sysrq-trigger"]);
    match agent.execute_timeout(&exec, Some(Duration::from_secs(10))) {
        Ok(_) | Err(Error::Timeout(_)) => {}
        Err(e) => panic!("guest-exec: {e}"),
    }
}

/// qmp-std's guest agent client on the guest's agent port (synced on connect).
fn agent(guest: &Guest) -> qmp_std::agent::Agent<UnixStream> {
    AgentBuilder::with_options(agent_options())
        .connect_unix(guest.agent_path())
        .unwrap_or_else(|e| panic!("connect to the guest agent: {e}"))
}

/// The agent clients' options here: the guest's pace under TCG.
fn agent_options() -> qmp_std::Options {
    let mut options = qmp_std::Options::default();
    options.command_timeout = Some(GUEST_TIMEOUT);
    options.connect_timeout = Some(GUEST_TIMEOUT);
    options
}

fn boot(builder: qmp_e2e::guest::GuestBuilder) -> Guest {
    let guest = builder
        .boot()
        .unwrap_or_else(|e| panic!("boot the guest: {e}"));
    let console = guest.console();
    let uptime = console
        .lines()
        .find_map(|l| l.strip_prefix("guest: up "))
        .unwrap_or("?");
    eprintln!(
        "guest booted in {:.2} s, the kernel's uptime then {uptime} (image built in {:.2} s)",
        guest.boot_time().as_secs_f64(),
        image().map(|i| i.build_time.as_secs_f64()).unwrap_or(0.0)
    );
    guest
}

fn connect(guest: &Guest) -> Client<UnixStream> {
    Client::connect_unix(guest.qmp_path()).unwrap_or_else(|e| panic!("connect: {e}"))
}

#[test]
fn system_powerdown_shuts_the_guest_down_and_the_client_sees_the_close() {
    let mut guest = boot(Guest::builder());
    let mut qmp = connect(&guest);
    assert_eq!(qmp.execute(&QueryStatus).unwrap().status, RunState::Running);
    qmp.execute(&qmp_std::commands::SystemPowerdown).unwrap();
    let powerdown = qmp.wait_event(Powerdown::NAME, GUEST_TIMEOUT).unwrap();
    assert!(powerdown.is::<Powerdown>());
    let shutdown = qmp
        .wait_event(Shutdown::NAME, GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("no SHUTDOWN ({e}); console:\n{}", guest.console()));
    let data = shutdown.data_as::<Shutdown>().unwrap();
    assert!(data.guest, "{shutdown:?}");
    assert_eq!(data.reason, ShutdownCause::GuestShutdown, "{shutdown:?}");
    assert!(
        guest
            .console()
            .contains("guest: power button, powering off"),
        "{}",
        guest.console()
    );
    // QEMU exits: whatever else comes, the client ends with the close, not a hang.
    let started = Instant::now();
    let end = loop {
        match qmp.next_event(GUEST_TIMEOUT) {
            Ok(event) => eprintln!("after SHUTDOWN: {event:?}"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(end, Error::Disconnected),
        "expected Disconnected, got {end:?}"
    );
    assert!(started.elapsed() < GUEST_TIMEOUT);
    assert!(qmp.is_closed());
    assert!(matches!(
        qmp.execute(&QueryStatus),
        Err(Error::Disconnected)
    ));
    let status = guest
        .qemu_mut()
        .wait_exit(GUEST_TIMEOUT)
        .expect("QEMU exits after the guest powered off");
    assert!(status.success(), "{status}");
}

#[test]
fn nic_hot_unplug_ends_with_device_deleted_then_powerdown_tokio() {
    let mut guest = boot(Guest::builder());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let qmp = rt
        .block_on(qmp_std::tokio::Client::connect_unix(guest.qmp_path()))
        .unwrap();
    let mut events = qmp.subscribe();
    rt.block_on(qmp.execute(&DeviceAdd::new("virtio-net-pci").id("nic1")))
        .unwrap();
    // The guest sees the NIC arrive (ACPI hot-plug, virtio_net binds it).
    run_in_guest(
        &mut guest,
        "while [ ! -e /sys/class/net/eth0 ]; do sleep 0.1; done",
    );
    rt.block_on(qmp.execute(&DeviceDel { id: "nic1" })).unwrap();
    // QEMU also reports the NIC's virtio backend (no id); the NIC's own event names it.
    let deleted = rt.block_on(async {
        loop {
            let event = events
                .wait_event(DeviceDeleted::NAME, GUEST_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("no DEVICE_DELETED for nic1: {e}"));
            let data = event.data_as::<DeviceDeleted>().unwrap();
            if data.device.as_deref() == Some("nic1") {
                break data;
            }
        }
    });
    assert_eq!(deleted.path, "/machine/peripheral/nic1");
    let gone = run_in_guest(&mut guest, "ls /sys/class/net");
    assert!(!gone.contains("eth0"), "{gone}");
    // The id is free again.
    rt.block_on(qmp.execute(&DeviceAdd::new("virtio-net-pci").id("nic1")))
        .unwrap();

    // The async client sees the guest power off and QEMU go: SHUTDOWN, then the event
    // stream ends with Disconnected and commands fail with it, without hanging.
    rt.block_on(async {
        qmp.execute(&qmp_std::commands::SystemPowerdown)
            .await
            .unwrap();
        let shutdown = events
            .wait_event(Shutdown::NAME, GUEST_TIMEOUT)
            .await
            .unwrap();
        let data = shutdown.data_as::<Shutdown>().unwrap();
        assert_eq!(data.reason, ShutdownCause::GuestShutdown, "{shutdown:?}");
        let end = loop {
            match events.next_event(GUEST_TIMEOUT).await {
                Ok(event) => eprintln!("after SHUTDOWN: {event:?}"),
                Err(e) => break e,
            }
        };
        assert!(matches!(end, Error::Disconnected), "{end:?}");
        let late = qmp.execute(&QueryStatus).await;
        assert!(matches!(late, Err(Error::Disconnected)), "{late:?}");
    });
    let status = guest
        .qemu_mut()
        .wait_exit(GUEST_TIMEOUT)
        .expect("QEMU exits");
    assert!(status.success(), "{status}");
}

#[test]
fn a_panic_inside_the_guest_is_guest_panicked() {
    let mut guest = boot(Guest::builder().arg("-action").arg("panic=pause"));
    let mut qmp = connect(&guest);
    trigger_panic(&mut guest);
    let panicked = qmp
        .wait_event(GuestPanicked::NAME, GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("no GUEST_PANICKED ({e}); console:\n{}", guest.console()));
    // The generated type of the vocabulary (qmp-qapi), against the real event.
    let data = panicked.data_as::<GuestPanicked>().unwrap();
    assert_eq!(data.action, GuestPanickedDataAction::Pause, "{panicked:?}");
    let status = qmp.execute(&QueryStatus).unwrap();
    assert_eq!(status.status, RunState::GuestPanicked);
    assert!(!status.running);
    assert!(
        guest.console().contains("Kernel panic"),
        "{}",
        guest.console()
    );
}

#[test]
fn balloon_shrinks_the_guest() {
    const MIB: i64 = 1 << 20;
    let guest = boot(Guest::builder().memory_mib(256));
    let mut qmp = connect(&guest);
    assert_eq!(qmp.execute(&QueryBalloon).unwrap().actual, 256 * MIB);
    qmp.execute(&Balloon::new(160 * MIB)).unwrap();
    let mut changes = Vec::new();
    while changes.last() != Some(&(160 * MIB)) {
        let event = qmp
            .wait_event(BalloonChange::NAME, GUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("BALLOON_CHANGE stopped at {changes:?}: {e}"));
        changes.push(event.data_as::<BalloonChange>().unwrap().actual);
    }
    eprintln!("BALLOON_CHANGE actual values: {changes:?}");
    assert!(changes.iter().all(|a| (160 * MIB..256 * MIB).contains(a)));
    assert_eq!(qmp.execute(&QueryBalloon).unwrap().actual, 160 * MIB);
}

/// The guest agent's host socket, spoken to with raw bytes: what an agent client has to do.
struct Agent {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Agent {
    fn connect(guest: &Guest) -> Agent {
        let stream = UnixStream::connect(guest.agent_path()).expect("connect to the agent");
        stream.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
        Agent {
            stream,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("the agent's socket closed; had {:?}", self.text()),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read from the agent: {e}; had {:?}", self.text()),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The next newline-terminated message, parsed.
    fn message(&mut self) -> Value {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("agent sent {:?}: {e}", String::from_utf8_lossy(&line))
                });
            }
            self.fill();
        }
    }

    /// `guest-sync-delimited` after a 0xFF byte; returns what was skipped before the
    /// agent's 0xFF sentinel.
    fn sync(&mut self, id: u64) -> String {
        let request = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
        let mut bytes = vec![0xFF];
        bytes.extend_from_slice(request.to_string().as_bytes());
        bytes.push(b'\n');
        self.stream.write_all(&bytes).unwrap();
        let sentinel = loop {
            if let Some(at) = self.buf.iter().position(|&b| b == 0xFF) {
                break at;
            }
            self.fill();
        };
        let skipped: Vec<u8> = self.buf.drain(..=sentinel).collect();
        let reply = self.message();
        assert_eq!(reply, json!({"return": id}), "skipped {skipped:?}");
        String::from_utf8_lossy(&skipped[..skipped.len() - 1]).into_owned()
    }

    fn execute(&mut self, command: &str) -> Value {
        let request = json!({"execute": command});
        self.stream
            .write_all(format!("{request}\n").as_bytes())
            .unwrap();
        let reply = self.message();
        reply
            .get("return")
            .unwrap_or_else(|| panic!("{command}: {reply}"))
            .clone()
    }
}

/// The guest agent inside the guest, over its virtio-serial port, with raw bytes: sync (and
/// the stray error it answers the 0xFF byte with), ping, osinfo; the agent restarted inside
/// the guest while the host end stays connected; then `guest-shutdown`, which QMP reports as
/// `SHUTDOWN` with reason `guest-shutdown`.
#[test]
fn guest_agent_answers_over_virtio_serial_raw() {
    let mut guest = boot(Guest::builder());
    let mut qmp = connect(&guest);
    let mut agent = Agent::connect(&guest);
    let skipped = agent.sync(4_711);
    // QEMU 7.2's agent answers the 0xFF byte itself with a parse error, before the sync reply.
    assert!(
        skipped.is_empty() || skipped.contains("\"error\""),
        "skipped {skipped:?}"
    );
    eprintln!("skipped before the sentinel: {skipped:?}");
    assert_eq!(agent.execute("guest-ping"), json!({}));
    let osinfo = agent.execute("guest-get-osinfo");
    let release = &image().unwrap().release;
    assert_eq!(osinfo["kernel-release"], json!(release), "{osinfo}");
    assert_eq!(osinfo["id"], json!("qmp-rs-guest"), "{osinfo}");
    assert_eq!(osinfo["machine"], json!("x86_64"), "{osinfo}");

    // Restart the agent inside the guest (init starts it again); the host end stays open.
    let before = run_in_guest(&mut guest, "pidof qemu-ga");
    run_in_guest(
        &mut guest,
        "old=$(pidof qemu-ga); kill $old; \
         while [ -z \"$(pidof qemu-ga)\" ] || [ \"$(pidof qemu-ga)\" = \"$old\" ]; do sleep 0.1; done",
    );
    let after = run_in_guest(&mut guest, "pidof qemu-ga");
    assert_ne!(before, after);
    assert!(guest.console().contains("guest: qemu-ga exited"));
    agent.sync(4_712);
    assert_eq!(agent.execute("guest-ping"), json!({}));

    // guest-shutdown has no reply: the guest powers off.
    agent
        .stream
        .write_all(b"{\"execute\":\"guest-shutdown\"}\n")
        .unwrap();
    let shutdown = qmp
        .wait_event(Shutdown::NAME, GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("no SHUTDOWN ({e}); console:\n{}", guest.console()));
    let data = shutdown.data_as::<Shutdown>().unwrap();
    assert!(data.guest, "{shutdown:?}");
    assert_eq!(data.reason, ShutdownCause::GuestShutdown, "{shutdown:?}");
    assert!(
        guest.console().contains("guest: shutdown -h -P +0"),
        "{}",
        guest.console()
    );
    let status = guest
        .qemu_mut()
        .wait_exit(GUEST_TIMEOUT)
        .expect("QEMU exits");
    assert!(status.success(), "{status}");
}

/// The same, with qmp-std's agent client: its sync skips the stray error; ping, osinfo, a
/// program's output and exit status, a file written and read back, fsfreeze status, freeze
/// and thaw; the agent restarted inside the guest while the client stays connected
/// (resync); then `guest-shutdown`, which succeeds without a reply and powers the guest off.
#[test]
fn the_agent_client_drives_the_real_guest() {
    let mut guest = boot(Guest::builder());
    let mut qmp = connect(&guest);
    let mut agent = agent(&guest);
    agent.execute(&GuestPing).expect("guest-ping");
    let osinfo = agent.execute(&GuestGetOsinfo).expect("guest-get-osinfo");
    let release = &image().unwrap().release;
    assert_eq!(
        osinfo.kernel_release.as_deref(),
        Some(release.as_str()),
        "{osinfo:?}"
    );

    let (status, out, err) = agent
        .run("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"])
        .expect("guest-exec");
    assert_eq!(
        (status.exitcode, out.as_slice(), err.as_slice()),
        (Some(3), &b"out\n"[..], &b"err\n"[..])
    );

    let text = b"written by the host\n\x00\xffbinary too";
    agent.write_file("/tmp/qmp-rs", text).expect("write a file");
    assert_eq!(agent.read_file("/tmp/qmp-rs").expect("read it back"), text);
    let (_, size, _) = agent
        .run("/bin/sh", ["-c", "wc -c < /tmp/qmp-rs"])
        .expect("wc in the guest");
    assert_eq!(
        String::from_utf8_lossy(&size).trim(),
        text.len().to_string()
    );
    assert_eq!(
        agent
            .execute(&GuestFsfreezeStatus)
            .expect("fsfreeze status"),
        FsfreezeStatus::Thawed
    );
    // Freeze and thaw for real: the guest's file systems are all virtual (the initramfs's
    // rootfs, proc, sys, devtmpfs), which the agent skips, so it freezes none, says so (0),
    // and stays thawed; thawing thaws none.
    assert_eq!(
        agent
            .execute(&GuestFsfreezeFreeze)
            .expect("fsfreeze freeze"),
        0
    );
    assert_eq!(
        agent
            .execute(&GuestFsfreezeStatus)
            .expect("fsfreeze status"),
        FsfreezeStatus::Thawed
    );
    assert_eq!(agent.execute(&GuestFsfreezeThaw).expect("fsfreeze thaw"), 0);

    // The agent restarts inside the guest (init starts it again); this client stays
    // connected, resyncs with the new agent, and goes on.
    run_in_guest(
        &mut guest,
        "old=$(pidof qemu-ga); kill $old; \
         while [ -z \"$(pidof qemu-ga)\" ] || [ \"$(pidof qemu-ga)\" = \"$old\" ]; do sleep 0.1; done; \
         sleep 0.5",
    );
    agent.resync().expect("resync with the new agent");
    agent
        .execute(&GuestPing)
        .expect("guest-ping after the restart");

    // The same port behind a TCP chardev: `chardev-change` swaps the backend under the running
    // guest (the Unix client sees its connection end), and `Agent::connect_tcp` syncs with
    // the same qemu-ga. QEMU picks the port (0), and `query-chardev` says which.
    qmp.execute_raw(
        "chardev-change",
        &json!({
            "id": AGENT_CHARDEV,
            "backend": {"type": "socket", "data": {
                "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}},
                "server": true,
                "wait": false
            }}
        }),
    )
    .expect("chardev-change to TCP");
    let chardevs = qmp.execute_raw("query-chardev", &Value::Null).unwrap();
    let filename = chardevs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == AGENT_CHARDEV)
        .and_then(|c| c["filename"].as_str())
        .unwrap_or_else(|| panic!("{AGENT_CHARDEV} in {chardevs}"));
    // `disconnected:tcp:127.0.0.1:PORT,server=on` while no client is connected.
    let filename = filename.trim_start_matches("disconnected:");
    let port: u16 = filename
        .split(',')
        .next()
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {filename:?}"));
    assert!(
        filename.starts_with("tcp:127.0.0.1:") && port != 0,
        "{filename}"
    );
    assert!(matches!(
        agent.execute(&GuestPing),
        Err(Error::Disconnected | Error::Io(_))
    ));
    let mut agent = AgentBuilder::with_options(agent_options())
        .connect_tcp(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the guest agent over TCP: {e}"));
    agent.execute(&GuestPing).expect("guest-ping over TCP");
    let osinfo = agent.execute(&GuestGetOsinfo).expect("guest-get-osinfo");
    assert_eq!(osinfo.kernel_release.as_deref(), Some(release.as_str()));

    // No reply on success: it completes in silence, and the guest powers off.
    agent
        .execute_timeout(&GuestShutdown::default(), Some(Duration::from_secs(2)))
        .expect("guest-shutdown");
    let shutdown = qmp
        .wait_event(Shutdown::NAME, GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("no SHUTDOWN ({e}); console:\n{}", guest.console()));
    let data = shutdown.data_as::<Shutdown>().unwrap();
    assert_eq!(data.reason, ShutdownCause::GuestShutdown, "{shutdown:?}");
}

/// The init loads every module after those it depends on (read from their `depends=`, as the
/// kernel package has no modules.dep), and `virtio_ring` before `virtio` before `virtio_pci`.
#[test]
fn modules_load_in_dependency_order() {
    let image = image().unwrap();
    let order = &image.module_order;
    let at = |name: &str| {
        order
            .iter()
            .position(|m| m == name)
            .unwrap_or_else(|| panic!("{name} not in {order:?}"))
    };
    for (first, then) in [
        ("virtio_ring", "virtio"),
        ("virtio", "virtio_pci"),
        ("virtio_pci_modern_dev", "virtio_pci"),
        ("failover", "net_failover"),
        ("net_failover", "virtio_net"),
        ("pvpanic", "pvpanic_mmio"),
    ] {
        assert!(at(first) < at(then), "{first} after {then}: {order:?}");
    }
    for name in qmp_e2e::guest::MODULES {
        at(name);
        assert!(image.modules.join(format!("{name}.ko")).is_file());
    }
    let mut unique = order.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), order.len(), "{order:?}");
}
