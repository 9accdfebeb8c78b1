//! The guest agent client against the real `qemu-ga` (Debian qemu-guest-agent 7.2), started
//! by each test on the host: `qemu-ga -m unix-listen` for fresh connections, `-m isa-serial`
//! on a pty for a channel that outlives its clients, and a fake agent for what the real one
//! must not be asked on a host (guest-shutdown).
//!
//! The agent runs on the host, so commands that would change it are never sent: shutdown,
//! suspend, set-time and fsfreeze-freeze are blocked with `-b` (the agent then answers them
//! with an error, which the tests check).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qmp_e2e::agent::QemuGa;
use qmp_std::agent::{Agent, AgentBuilder, NO_REPLY_TIMEOUT};
use qmp_std::agent_commands::*;
use qmp_std::qmp_proto::Expired;
use qmp_std::serde_json::json;
use qmp_std::{Error, Serial};

/// The agent, and signals to it.
struct RealAgent(QemuGa);

impl RealAgent {
    fn unix(tag: &str) -> Self {
        Self(QemuGa::unix(tag))
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.0.pid() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }
}

#[test]
fn every_typed_command_against_the_real_agent() {
    let real = RealAgent::unix("typed");
    let mut agent = Agent::connect_unix(real.0.path()).unwrap();
    assert_eq!(agent.syncs(), 1);
    // Our 0xFF made the agent's parser answer with an id-less error: dropped.
    assert!(agent.dropped_messages() >= 1);

    agent.execute(&GuestPing).unwrap();
    assert_eq!(agent.execute(&GuestSync { id: 42 }).unwrap(), 42);
    // A delimited reply mid-session: the sentinel before it is handled like any other.
    assert_eq!(agent.execute(&GuestSyncDelimited { id: 43 }).unwrap(), 43);

    let info = agent.execute(&GuestInfo).unwrap();
    assert_eq!(info.version, "7.2.22");
    let command = |name: &str| {
        info.supported_commands
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert!(command("guest-ping").enabled && command("guest-ping").success_response);
    // What the schema says, as the agent reports it; blocked with -b here.
    let shutdown = command("guest-shutdown");
    assert!(!shutdown.success_response && !shutdown.enabled);
    for name in NO_SUCCESS_RESPONSE {
        assert!(!command(name).success_response, "{name}");
    }

    let os = agent.execute(&GuestGetOsinfo).unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(os.kernel_release.as_deref(), Some(release.trim()));
    assert_eq!(os.machine.as_deref(), Some(std::env::consts::ARCH));

    let host = agent.execute(&GuestGetHostName).unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(host.host_name, hostname.trim());

    let time = agent.execute(&GuestGetTime).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!((now - time).abs() < 5_000_000_000, "{now} vs {time}");

    // Blocked: the agent refuses it with an error (it would set the host's clock).
    match agent.execute(&GuestSetTime { time: Some(time) }) {
        Err(Error::Qmp(e)) => assert!(e.desc.contains("disabled"), "{e:?}"),
        other => panic!("{other:?}"),
    }

    assert_eq!(
        agent.execute(&GuestFsfreezeStatus).unwrap(),
        FsfreezeStatus::Thawed
    );

    let interfaces = agent.execute(&GuestNetworkGetInterfaces).unwrap();
    let lo = interfaces.iter().find(|i| i.name == "lo").expect("lo");
    assert!(
        lo.ip_addresses
            .iter()
            .flatten()
            .any(|a| a.ip_address == "127.0.0.1" && a.ip_address_type == "ipv4" && a.prefix == 8),
        "{lo:?}"
    );

    // A container may have no login sessions: the list decodes, whatever it holds.
    let users = agent.execute(&GuestGetUsers).unwrap();
    assert!(
        users
            .iter()
            .all(|u| !u.user.is_empty() && u.login_time > 0.0)
    );
}

#[test]
fn exec_returns_output_and_exit_status() {
    let real = RealAgent::unix("exec");
    let mut agent = Agent::connect_unix(real.0.path()).unwrap();
    let (status, out, err) = agent
        .run(
            "/bin/sh",
            ["-c", "printf 'out\\n\\001\\377'; echo err >&2; exit 3"],
        )
        .unwrap();
    assert!(status.exited);
    assert_eq!(status.exitcode, Some(3));
    assert_eq!(out, b"out\n\x01\xff");
    assert_eq!(err, b"err\n");

    // With standard input, by hand: guest-exec, then guest-exec-status until it exits.
    let pid = agent
        .execute(&GuestExec::new("/bin/cat", Vec::<String>::new()).input(b"fed to cat"))
        .unwrap()
        .pid;
    let status = loop {
        let status = agent.execute(&GuestExecStatus { pid }).unwrap();
        if status.exited {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.exitcode, Some(0));
    assert_eq!(status.stdout().unwrap(), b"fed to cat");

    // A program that does not exist: the agent's error.
    assert!(matches!(
        agent.execute(&GuestExec::new("/nonexistent", ["x"])),
        Err(Error::Qmp(_))
    ));
}

#[test]
fn a_file_written_and_read_back_with_seek_and_flush() {
    let real = RealAgent::unix("file");
    let mut agent = Agent::connect_unix(real.0.path()).unwrap();
    let path = real.0.dir().join("file.bin");
    let path = path.to_str().unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    agent.write_file(path, &data).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
    assert_eq!(agent.read_file(path).unwrap(), data);

    // By hand: open, write, flush, seek, read, close.
    let handle = agent
        .execute(&GuestFileOpen {
            path: path.into(),
            mode: Some("w+".into()),
        })
        .unwrap();
    let written = agent
        .execute(&GuestFileWrite::new(handle, b"hello, agent"))
        .unwrap();
    assert_eq!(written.count, 12);
    agent.execute(&GuestFileFlush { handle }).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"hello, agent");
    let seek = agent
        .execute(&GuestFileSeek {
            handle,
            offset: 7,
            whence: Whence::Set,
        })
        .unwrap();
    assert_eq!(seek.position, 7);
    let read = agent
        .execute(&GuestFileRead {
            handle,
            count: Some(100),
        })
        .unwrap();
    assert_eq!((read.count, read.eof), (5, true));
    assert_eq!(read.data().unwrap(), b"agent");
    agent.execute(&GuestFileClose { handle }).unwrap();
    // The handle is gone.
    assert!(matches!(
        agent.execute(&GuestFileClose { handle }),
        Err(Error::Qmp(_))
    ));
    // Raw, by name.
    let raw = agent
        .execute_raw("guest-file-open", &json!({"path": path}))
        .unwrap();
    assert!(raw.as_i64().is_some());
}

#[test]
fn a_blocked_command_without_success_reply_returns_the_agents_error() {
    // guest-shutdown sends no reply on success, but an error when it fails: here it is
    // blocked, and the error comes back before the silence would count as success.
    let real = RealAgent::unix("shutdown-blocked");
    let mut agent = Agent::connect_unix(real.0.path()).unwrap();
    let started = std::time::Instant::now();
    match agent.execute_timeout(&GuestShutdown::default(), Some(Duration::from_secs(10))) {
        Err(Error::Qmp(e)) => assert!(e.desc.contains("disabled"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    agent.execute(&GuestPing).unwrap();
}

#[test]
fn a_frozen_agent_times_out_then_the_client_resyncs_after_sigcont() {
    let real = RealAgent::unix("sigstop");
    let mut agent = AgentBuilder::new()
        .command_timeout(Some(Duration::from_millis(300)))
        .connect_unix(real.0.path())
        .unwrap();
    agent.execute(&GuestPing).unwrap();
    real.signal(rustix::process::Signal::STOP);
    assert!(matches!(
        agent.execute(&GuestPing),
        Err(Error::Timeout(Expired::Command))
    ));
    // Still frozen: an explicit resync times out too.
    assert!(matches!(agent.resync(), Err(Error::Timeout(Expired::Sync))));
    real.signal(rustix::process::Signal::CONT);
    agent.set_command_timeout(Some(Duration::from_secs(10)));
    // The late replies (the ping, the first resync's) are dropped; the newest sync
    // completes; commands work.
    agent.resync().unwrap();
    assert_eq!(agent.execute(&GuestSync { id: 7 }).unwrap(), 7);
    agent.execute(&GuestPing).unwrap();
    assert!(agent.syncs() >= 2, "{}", agent.syncs());
}

/// The first client of an agent starting on a serial line: the agent flushes the line's
/// input when it sets it up (`tcflush` in `qga/channel-posix.c`), so a sync written before
/// that is lost. Each attempt that times out leaves its sync in the channel, which the next
/// attempt's sync skips, as it would a previous client's.
fn when_up<S>(mut connect: impl FnMut() -> qmp_std::Result<Agent<S>>) -> Agent<S> {
    for _ in 0..40 {
        match connect() {
            Ok(agent) => return agent,
            Err(Error::Timeout(Expired::Sync)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the agent never answered");
}

/// A pty pair: the agent opens the slave as its serial port; the clients share the master.
fn pty() -> (std::os::fd::OwnedFd, PathBuf) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let path = PathBuf::from(name.to_str().unwrap());
    // Raw on our side too: the bytes pass unchanged.
    let mut termios = rustix::termios::tcgetattr(&master).unwrap();
    termios.make_raw();
    rustix::termios::tcsetattr(&master, rustix::termios::OptionalActions::Now, &termios).unwrap();
    (master, path)
}

#[test]
fn a_client_after_one_that_left_half_a_command_and_an_unread_reply_gets_correct_replies() {
    // The agent on a serial line (a pty): the channel is the same byte stream for every
    // host-side client, as with virtio-serial.
    let (master, slave) = pty();
    let real = QemuGa::spawn(QemuGa::temp_dir("serial"), "isa-serial", &slave);
    let fd = || Serial::from_fd(master.try_clone().unwrap());
    let mut first = when_up(|| {
        AgentBuilder::new()
            .connect_timeout(Some(Duration::from_millis(500)))
            .handshake(fd())
    });
    first.execute(&GuestPing).unwrap();
    // The first client leaves a command whose reply it never reads, and half of another.
    let mut stream = first.into_inner();
    stream
        .write_all(b"{\"execute\":\"guest-get-osinfo\",\"id\":1}{\"execute\":\"guest-ping\",\"argu")
        .unwrap();
    // The unread reply is in the channel (waited for, not read).
    let mut fds = [rustix::event::PollFd::new(
        &master,
        rustix::event::PollFlags::IN,
    )];
    let ten = rustix::event::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    assert_eq!(rustix::event::poll(&mut fds, Some(&ten)).unwrap(), 1);
    drop(stream);

    let mut second = Agent::new(fd()).unwrap();
    // The stale reply and the error for the half command (and our 0xFF's) were dropped.
    assert!(
        second.dropped_messages() >= 2,
        "{}",
        second.dropped_messages()
    );
    assert_eq!(second.execute(&GuestSync { id: 99 }).unwrap(), 99);
    let host = second.execute(&GuestGetHostName).unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(host.host_name, hostname.trim());
    let (status, out, _) = second.run("/bin/echo", ["serial"]).unwrap();
    assert_eq!(
        (status.exitcode, out.as_slice()),
        (Some(0), &b"serial\n"[..])
    );
    drop(second);
    drop(real);
}

/// The tokio agent client on a serial line (the agent on a pty, as with `isa-serial`): it
/// syncs (again after attempts the agent's start-up flush swallowed), runs commands from
/// several tasks, and reads the files it wrote back.
#[test]
fn the_tokio_agent_on_a_serial_line() {
    let (master, slave) = pty();
    let real = QemuGa::spawn(QemuGa::temp_dir("tokio-serial"), "isa-serial", &slave);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut options = qmp_std::Options::default();
        options.connect_timeout = Some(Duration::from_millis(500));
        let mut agent = None;
        for _ in 0..40 {
            let serial = Serial::from_fd(master.try_clone().unwrap());
            match qmp_std::agent::tokio::Agent::handshake_serial(options.clone(), serial).await {
                Ok(up) => {
                    agent = Some(up);
                    break;
                }
                Err(Error::Timeout(Expired::Sync | Expired::Greeting)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        let agent = agent.expect("the agent never answered");
        agent.execute(&GuestPing).await.unwrap();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (agent, hostname) = (agent.clone(), hostname.clone());
                tokio::spawn(async move {
                    for _ in 0..5 {
                        let host = agent.execute(&GuestGetHostName).await.unwrap();
                        assert_eq!(host.host_name, hostname.trim());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(agent.execute(&GuestSync { id: 41 }).await.unwrap(), 41);
        // A sync on demand: the agent answers our 0xFF with an id-less parse error, which is
        // dropped, then the sync; commands go on.
        let before = agent.dropped_messages();
        agent.resync().await.unwrap();
        assert!(agent.dropped_messages() > before, "{before}");
        agent.execute(&GuestPing).await.unwrap();
    });
    drop(real);
}

/// qmp-embedded's blocking client speaks the agent dialect too (feature `agent`), over the
/// harness's socket link: the sync, typed and raw commands (borrowed strings, no heap), a
/// command the agent refuses, and a second sync on the same connection.
#[test]
fn the_embedded_client_speaks_to_the_agent() {
    use qmp_e2e::embedded::{HostClock, SocketLink};

    #[derive(serde::Deserialize)]
    struct HostName<'a> {
        #[serde(rename = "host-name", borrow)]
        host_name: &'a str,
    }

    let real = QemuGa::unix("embedded");
    let stream = UnixStream::connect(real.path()).unwrap();
    let config = qmp_embedded::Config::new().timeout(Some(Duration::from_secs(10)));
    let mut agent: qmp_embedded::Client<SocketLink, HostClock, 4096, 512, 256, 2> =
        qmp_embedded::Client::new_agent(
            SocketLink::new(stream),
            HostClock::new(),
            config,
            qmp_std::agent::random_sync_id(),
        );
    agent.sync().unwrap();
    agent.execute_raw("guest-ping", &()).unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host: HostName<'_> = agent.execute("guest-get-host-name", &()).unwrap();
    assert_eq!(host.host_name, hostname.trim());
    let echoed: u64 = agent.execute("guest-sync", &json!({"id": 4242})).unwrap();
    assert_eq!(echoed, 4242);
    match agent.execute_raw("guest-set-time", &json!({"time": 0})) {
        Err(qmp_embedded::Error::Qmp(e)) => {
            assert!(e.desc().contains("disabled"), "{e:?}")
        }
        Err(e) => panic!("{e:?}"),
        Ok(v) => panic!("the blocked guest-set-time returned {}", v.as_json()),
    }
    // Once more, on the same connection: the next sync id, and commands go on.
    agent.sync().unwrap();
    agent.execute_raw("guest-ping", &()).unwrap();
    drop(real);
}

/// qmp-embedded's agent client after a sync that got no answer: the next `sync` sends a new
/// one (and the late reply to the first, were it to come, would be dropped), then commands run.
#[test]
fn the_embedded_agent_client_syncs_again_after_a_lost_sync() {
    use qmp_e2e::embedded::{HostClock, SocketLink};

    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake = fake_agent_dropping(theirs, None, 1);
    let config = qmp_embedded::Config::new().timeout(Some(Duration::from_millis(300)));
    let mut agent: qmp_embedded::Client<SocketLink, HostClock, 1024, 256, 64, 2> =
        qmp_embedded::Client::new_agent(SocketLink::new(ours), HostClock::new(), config, 12_345);
    match agent.sync() {
        Err(qmp_embedded::Error::Timeout(Expired::Sync)) => {}
        other => panic!("the first sync is lost, yet: {other:?}"),
    }
    agent.sync().unwrap();
    agent.execute_raw("guest-ping", &()).unwrap();
    drop(agent);
    let got = fake.join().unwrap();
    let syncs: Vec<_> = got
        .iter()
        .filter(|c| c["execute"] == "guest-sync-delimited")
        .map(|c| c["arguments"]["id"].clone())
        .collect();
    assert_eq!(syncs.len(), 2, "{got:?}");
    assert_ne!(syncs[0], syncs[1]);
    assert_eq!(got.last().unwrap()["execute"], "guest-ping");
}

/// qmp-embedded's agent client runs `guest-shutdown` as the agent answers it: silence until
/// the core's silence window is success, with no resync after it (with the default timeout,
/// 5 s, the window is `NO_REPLY_TIMEOUT`; with a timeout of 1 s, that second); an error reply
/// fails it at once.
#[test]
fn the_embedded_agent_client_completes_guest_shutdown_in_silence() {
    use qmp_e2e::embedded::{HostClock, SocketLink};

    let short = Duration::from_secs(1);
    for (answer, timeout) in [
        (None, None),
        (None, Some(short)),
        (Some("shutdown refused"), None),
    ] {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fake = fake_agent(theirs, answer);
        let mut config = qmp_embedded::Config::new();
        if let Some(timeout) = timeout {
            config = config.timeout(Some(timeout));
        }
        assert!(config.command_timeout().unwrap() > NO_REPLY_TIMEOUT || timeout.is_some());
        let mut agent: qmp_embedded::Client<SocketLink, HostClock, 1024, 256, 64, 2> =
            qmp_embedded::Client::new_agent(SocketLink::new(ours), HostClock::new(), config, 777);
        agent.sync().unwrap();
        let started = std::time::Instant::now();
        let result = agent
            .execute_raw("guest-shutdown", &json!({"mode": "powerdown"}))
            .map(|v| v.as_json().to_owned());
        let waited = started.elapsed();
        let window = timeout.unwrap_or(NO_REPLY_TIMEOUT);
        match (answer, result) {
            (None, Ok(value)) => {
                assert_eq!(value, "{}");
                assert!(waited >= window, "success before the deadline: {waited:?}");
                assert!(
                    waited < window + short,
                    "{waited:?} for a window of {window:?}"
                );
            }
            (Some(desc), Err(qmp_embedded::Error::Qmp(e))) => {
                assert_eq!(e.desc(), desc);
                assert!(waited < NO_REPLY_TIMEOUT, "the error took {waited:?}");
            }
            (answer, result) => panic!("agent answered {answer:?}, client got {result:?}"),
        }
        // Silence is no timeout: no new sync, the next command is answered.
        agent.execute_raw("guest-ping", &()).unwrap();
        drop(agent);
        let got = fake.join().unwrap();
        assert_eq!(
            command_names(&got),
            ["guest-sync-delimited", "guest-shutdown", "guest-ping"]
        );
    }
}

/// The names of the commands a fake agent got, in order.
fn command_names(got: &[qmp_std::serde_json::Value]) -> Vec<&str> {
    got.iter().map(|c| c["execute"].as_str().unwrap()).collect()
}

/// A fake agent on one end of a socket pair: answers the sync, records the commands, and
/// answers `guest-shutdown` with `shutdown_answer` (nothing: what the real agent does when
/// it succeeds). Returns the commands it got.
fn fake_agent(
    peer: UnixStream,
    shutdown_answer: Option<&'static str>,
) -> std::thread::JoinHandle<Vec<qmp_std::serde_json::Value>> {
    fake_agent_dropping(peer, shutdown_answer, 0)
}

/// [`fake_agent`], leaving the first `lost_syncs` syncs unanswered (as an agent on a serial
/// line does with what came before it set the line up).
fn fake_agent_dropping(
    mut peer: UnixStream,
    shutdown_answer: Option<&'static str>,
    mut lost_syncs: usize,
) -> std::thread::JoinHandle<Vec<qmp_std::serde_json::Value>> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut pending = Vec::new();
        let mut depth = 0;
        let mut buf = [0u8; 4096];
        loop {
            let n = match peer.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                if b == 0xFF && depth == 0 {
                    continue;
                }
                pending.push(b);
                match b {
                    b'{' => depth += 1,
                    b'}' => depth -= 1,
                    _ => continue,
                }
                if depth > 0 {
                    continue;
                }
                let command: qmp_std::serde_json::Value =
                    qmp_std::serde_json::from_slice(&pending).unwrap();
                pending.clear();
                let id = command.get("id").cloned();
                let reply = match command["execute"].as_str().unwrap() {
                    "guest-sync-delimited" if lost_syncs > 0 => {
                        lost_syncs -= 1;
                        Vec::new()
                    }
                    "guest-sync-delimited" => {
                        let mut r = vec![0xFF];
                        r.extend_from_slice(
                            format!("{{\"return\": {}}}\n", command["arguments"]["id"]).as_bytes(),
                        );
                        r
                    }
                    "guest-shutdown" => match shutdown_answer {
                        None => Vec::new(),
                        Some(error) => format!(
                            "{{\"id\": {}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"{error}\"}}}}\n",
                            id.clone().unwrap()
                        )
                        .into_bytes(),
                    },
                    _ => format!("{{\"return\": {{}}, \"id\": {}}}\n", id.clone().unwrap())
                        .into_bytes(),
                };
                got.push(command);
                if peer.write_all(&reply).is_err() {
                    return got;
                }
            }
        }
    })
}

#[test]
fn guest_shutdown_succeeds_in_silence_against_a_fake_agent() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake = fake_agent(theirs, None);
    let mut agent = Agent::new(ours).unwrap();
    let started = std::time::Instant::now();
    agent
        .execute_timeout(
            &GuestShutdown {
                mode: Some("powerdown".into()),
            },
            Some(Duration::from_millis(400)),
        )
        .unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    // Silence is not a timeout: no resync, and the next command is answered at once.
    agent.execute(&GuestPing).unwrap();
    assert_eq!(agent.syncs(), 1);
    drop(agent);
    let got = fake.join().unwrap();
    assert_eq!(
        command_names(&got),
        ["guest-sync-delimited", "guest-shutdown", "guest-ping"]
    );
    assert_eq!(got[1]["arguments"]["mode"], "powerdown");

    // The channel closing right after it (the guest went down) is success too.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let closer = std::thread::spawn(move || {
        let mut theirs = theirs;
        let mut buf = [0u8; 512];
        let n = theirs.read(&mut buf).unwrap();
        let sync: Vec<u8> = buf[1..n].to_vec();
        let sync: qmp_std::serde_json::Value = qmp_std::serde_json::from_slice(&sync).unwrap();
        let id = &sync["arguments"]["id"];
        theirs
            .write_all(
                format!("\u{0}{{\"return\": {id}}}\n")
                    .replace('\u{0}', "")
                    .as_bytes(),
            )
            .unwrap();
        let _ = theirs.read(&mut buf).unwrap();
        drop(theirs);
    });
    let mut agent = Agent::new(ours).unwrap();
    let started = std::time::Instant::now();
    agent
        .execute_timeout(&GuestShutdown::default(), Some(Duration::from_secs(20)))
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    closer.join().unwrap();

    // Refused: the error comes back.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake = fake_agent(theirs, Some("failed to execute shutdown"));
    let mut agent = Agent::new(ours).unwrap();
    match agent.execute(&GuestShutdown::default()) {
        Err(Error::Qmp(e)) => assert_eq!(e.desc, "failed to execute shutdown"),
        other => panic!("{other:?}"),
    }
    drop(agent);
    fake.join().unwrap();
}

#[test]
fn the_tokio_agent_runs_commands_concurrently_and_shutdown_in_silence() {
    let real = RealAgent::unix("tokio");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let agent = qmp_std::agent::tokio::Agent::connect_unix(real.0.path())
            .await
            .unwrap();
        assert!(agent.dropped_messages() >= 1);
        let (ping, host, sync) = tokio::join!(
            agent.execute(&GuestPing),
            agent.execute(&GuestGetHostName),
            agent.execute(&GuestSync { id: 11 }),
        );
        ping.unwrap();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(host.unwrap().host_name, hostname.trim());
        assert_eq!(sync.unwrap(), 11);
        // Blocked on this host agent: the error comes back.
        assert!(matches!(
            agent.execute(&GuestShutdown::default()).await,
            Err(Error::Qmp(_))
        ));
        let raw = agent
            .execute_raw("guest-get-osinfo", &json!({}))
            .await
            .unwrap();
        assert!(raw["kernel-release"].is_string());

        // Against the fake agent: silence is success.
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fake = fake_agent(theirs, None);
        ours.set_nonblocking(true).unwrap();
        let ours = tokio::net::UnixStream::from_std(ours).unwrap();
        let agent = qmp_std::agent::tokio::Agent::handshake_unix(qmp_std::Options::default(), ours)
            .await
            .unwrap();
        agent
            .execute_timeout(&GuestShutdown::default(), Some(Duration::from_millis(300)))
            .await
            .unwrap();
        agent.execute(&GuestPing).await.unwrap();
        agent.close();
        drop(agent);
        let got = fake.join().unwrap();
        assert_eq!(got.len(), 3);
    });
}

/// The thread-shared agent client gives `guest-shutdown` the same silence window as the
/// others (the core's `NO_REPLY_TIMEOUT`), not the whole command timeout (30 s by default).
#[test]
fn a_shared_agent_completes_guest_shutdown_in_silence() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake = fake_agent(theirs, None);
    let shared = Agent::new(ours).unwrap().into_shared().unwrap();
    let started = std::time::Instant::now();
    shared.execute(&GuestShutdown::default()).unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= NO_REPLY_TIMEOUT && waited < NO_REPLY_TIMEOUT + Duration::from_secs(2),
        "{waited:?}"
    );
    shared.execute(&GuestPing).unwrap();
    shared.close();
    drop(shared);
    assert_eq!(
        command_names(&fake.join().unwrap()),
        ["guest-sync-delimited", "guest-shutdown", "guest-ping"]
    );
}

#[test]
fn a_shared_agent_serves_threads() {
    let real = RealAgent::unix("shared");
    let agent = Agent::connect_unix(real.0.path()).unwrap();
    let shared = agent.into_shared().unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for j in 0..10 {
                    let id = i * 100 + j;
                    assert_eq!(shared.execute(&GuestSync { id }).unwrap(), id);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Blocked here: the agent's error comes back through the shared client too.
    assert!(matches!(
        shared.execute_timeout(&GuestShutdown::default(), Some(Duration::from_secs(5))),
        Err(Error::Qmp(_))
    ));
}
