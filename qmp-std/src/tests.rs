//! The client against a scripted fake QEMU on the other end of a socketpair.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::commands::{
    Cont, Empty, Getfd, QueryStatus, QueryVersion, RunState, Stop, events as ev,
};
use crate::fake::default_greeting;
use crate::{Client, ClientBuilder, Error, EventKind};

const STATUS_RUNNING: &str = r#"{"status": "running", "singlestep": false, "running": true}"#;

/// The server side: reads the client's commands, writes what the test says.
struct FakeQemu {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl FakeQemu {
    /// The next command the client sent, or `None` once the client closed its side.
    fn try_recv(&mut self) -> Option<Value> {
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    self.buf.drain(..used);
                    return Some(value);
                }
                Some(Err(e)) if !e.is_eof() => panic!("client sent bad JSON: {e}"),
                _ => {}
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    #[track_caller]
    fn recv(&mut self) -> Value {
        self.try_recv().expect("the client closed the connection")
    }

    /// Reads one command and checks its name.
    #[track_caller]
    fn expect(&mut self, name: &str) -> Value {
        let command = self.recv();
        let got = command
            .get("execute")
            .or_else(|| command.get("exec-oob"))
            .and_then(Value::as_str);
        assert_eq!(got, Some(name), "{command}");
        command
    }

    fn send(&mut self, text: &str) {
        let mut line = text.as_bytes().to_vec();
        line.extend_from_slice(b"\r\n");
        // The client may have gone away in tests that close early.
        let _ = self.stream.write_all(&line);
    }

    fn reply(&mut self, command: &Value, value: Value) {
        let reply = json!({"return": value, "id": command["id"]});
        self.send(&reply.to_string());
    }

    fn error(&mut self, command: &Value, class: &str, desc: &str) {
        let reply = json!({"id": command["id"], "error": {"class": class, "desc": desc}});
        self.send(&reply.to_string());
    }

    fn event(&mut self, name: &str, data: Option<Value>) {
        let mut event =
            json!({"timestamp": {"seconds": 1795596531, "microseconds": 804941}, "event": name});
        if let Some(data) = data {
            event["data"] = data;
        }
        self.send(&event.to_string());
    }

    /// Greeting and negotiation, as QEMU does them.
    fn handshake(&mut self) -> Value {
        self.send(&default_greeting());
        let command = self.expect("qmp_capabilities");
        self.reply(&command, json!({}));
        command
    }
}

/// A client (built with `builder`) connected to a fake QEMU running `script` on a thread.
fn connect(
    builder: ClientBuilder,
    script: impl FnOnce(&mut FakeQemu) + Send + 'static,
) -> (crate::Result<Client<UnixStream>>, JoinHandle<()>) {
    let (client_side, server_side) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || {
        let mut fake = FakeQemu {
            stream: server_side,
            buf: Vec::new(),
        };
        script(&mut fake);
    });
    // The scripted fakes answer by id, so every command carries one (the untagged default
    // has tests of its own against a real QEMU, in tests/tests/std_client.rs).
    let builder = builder
        .connect_timeout(Some(Duration::from_secs(5)))
        .untagged_when_alone(false);
    (builder.handshake(client_side), server)
}

fn quick() -> ClientBuilder {
    ClientBuilder::new().command_timeout(Some(Duration::from_secs(5)))
}

#[test]
fn negotiates_oob_and_exposes_the_greeting() {
    let (client, server) = connect(quick(), |q| {
        let caps = q.handshake();
        assert_eq!(
            caps,
            json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 1})
        );
        let v = q.expect("query-version");
        q.reply(
            &v,
            json!({"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "pkg"}),
        );
    });
    let mut client = client.unwrap();
    assert!(client.oob_enabled());
    assert!(client.is_negotiated());
    let server_info = client.server();
    assert_eq!(server_info.version.to_string(), "7.2.22");
    assert_eq!(server_info.package, "Debian 1:7.2+dfsg-7+deb12u18+b3");
    assert!(server_info.oob_offered && server_info.oob_enabled);
    let version = client.execute(&QueryVersion).unwrap();
    assert_eq!((version.qemu.minor, version.package.as_str()), (2, "pkg"));
    server.join().unwrap();
}

#[test]
fn without_oob_requested_none_is_negotiated() {
    let (client, server) = connect(quick().oob(false), |q| {
        let caps = q.handshake();
        assert_eq!(caps, json!({"execute": "qmp_capabilities", "id": 1}));
    });
    let mut client = client.unwrap();
    assert!(!client.oob_enabled());
    // exec-oob is refused locally, before anything is written.
    match client.execute_oob(&QueryStatus) {
        Err(Error::Refused(qmp_proto::SendError::OobNotEnabled)) => {}
        other => panic!("{other:?}"),
    }
    server.join().unwrap();
}

#[test]
fn replies_out_of_order_reach_their_handles() {
    let (client, server) = connect(quick().oob(true), |q| {
        q.handshake();
        let a = q.expect("query-status");
        let b = q.expect("query-name");
        let c = q.expect("migrate-pause");
        q.reply(&c, json!({}));
        q.reply(&b, json!({"name": "vm"}));
        q.reply(&a, serde_json::from_str(STATUS_RUNNING).unwrap());
    });
    let mut client = client.unwrap();
    let a = client.send(&QueryStatus).unwrap();
    let b = client.send_raw("query-name", &Value::Null).unwrap();
    let c = client.send_oob(&crate::commands::MigratePause).unwrap();
    assert_eq!(client.wait(b).unwrap(), json!({"name": "vm"}));
    assert_eq!(client.wait(a).unwrap().status, RunState::Running);
    assert_eq!(client.wait(c).unwrap(), Empty {});
    server.join().unwrap();
}

#[test]
fn events_interleaved_with_replies_are_all_kept_in_order() {
    let (client, server) = connect(quick(), |q| {
        q.event("EARLY", None);
        q.handshake();
        let stop = q.expect("stop");
        q.event("STOP", None);
        q.reply(&stop, json!({}));
        let cont = q.expect("cont");
        q.event("RESUME", None);
        q.event(
            "SHUTDOWN",
            Some(json!({"guest": false, "reason": "host-qmp-quit"})),
        );
        q.reply(&cont, json!({}));
        q.event("AFTER", Some(json!({"n": 1})));
    });
    let mut client = client.unwrap();
    client.execute(&Stop).unwrap();
    client.execute(&Cont).unwrap();
    let late = client.wait_event("AFTER", Duration::from_secs(5)).unwrap();
    assert_eq!(late.data, Some(json!({"n": 1})));
    let events: Vec<_> = client.events().collect();
    let names: Vec<_> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["EARLY", "STOP", "RESUME", "SHUTDOWN"]);
    assert!(events[1].is::<ev::Stop>());
    assert_eq!(events[1].data, None);
    assert_eq!(events[1].timestamp.seconds, 1795596531);
    let shutdown = events[3].data_as::<ev::Shutdown>().unwrap();
    assert_eq!(shutdown.reason, crate::commands::ShutdownCause::HostQmpQuit);
    assert!(events[1].data_as::<ev::Stop>().is_ok());
    assert_eq!(client.queued_events(), 0);
    server.join().unwrap();
}

#[test]
fn error_replies_are_typed_and_the_connection_goes_on() {
    let (client, server) = connect(quick(), |q| {
        q.handshake();
        let nope = q.expect("nope");
        q.error(
            &nope,
            "CommandNotFound",
            "The command nope has not been found",
        );
        let status = q.expect("query-status");
        q.reply(&status, serde_json::from_str(STATUS_RUNNING).unwrap());
    });
    let mut client = client.unwrap();
    let error = client.execute_raw("nope", &json!({})).unwrap_err();
    assert_eq!(error.qmp_class(), Some("CommandNotFound"));
    match &error {
        Error::Qmp(e) => assert_eq!(e.desc, "The command nope has not been found"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        error.to_string(),
        "QMP error: CommandNotFound: The command nope has not been found"
    );
    assert!(!error.is_disconnect());
    assert!(client.execute(&QueryStatus).unwrap().running);
    server.join().unwrap();
}

#[test]
fn typed_output_mismatch_is_a_decode_error() {
    let (client, server) = connect(quick(), |q| {
        q.handshake();
        let status = q.expect("query-status");
        q.reply(&status, json!({"status": 5}));
    });
    let mut client = client.unwrap();
    assert!(matches!(
        client.execute(&QueryStatus),
        Err(Error::Decode(_))
    ));
    server.join().unwrap();
}

#[test]
fn pipelines_eight_commands_and_waits_in_reverse() {
    let (client, server) = connect(quick(), |q| {
        q.handshake();
        // Read all eight before answering any: they were all sent before the first wait.
        let commands: Vec<Value> = (0..8).map(|_| q.expect("human-monitor-command")).collect();
        for command in &commands {
            let line = command["arguments"]["command-line"].as_str().unwrap();
            q.reply(command, json!(format!("{line}\r\n")));
        }
    });
    let mut client = client.unwrap();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let line = format!("echo {i}");
            client
                .send(&crate::commands::HumanMonitorCommand::new(&line))
                .unwrap()
        })
        .collect();
    assert_eq!(client.in_flight(), 8);
    for (i, handle) in handles.into_iter().enumerate().rev() {
        assert_eq!(client.wait(handle).unwrap(), format!("echo {i}\r\n"));
    }
    server.join().unwrap();
}

#[test]
fn a_ninth_command_waits_for_room() {
    let (client, server) = connect(quick().max_in_flight(2), |q| {
        q.handshake();
        let a = q.expect("stop");
        let b = q.expect("cont");
        q.reply(&a, json!({}));
        let c = q.expect("stop");
        q.reply(&b, json!({}));
        q.reply(&c, json!({}));
    });
    let mut client = client.unwrap();
    let a = client.send(&Stop).unwrap();
    let b = client.send(&Cont).unwrap();
    // Only goes out once `a` is answered.
    let c = client.send(&Stop).unwrap();
    client.wait(c).unwrap();
    client.wait(b).unwrap();
    client.wait(a).unwrap();
    server.join().unwrap();
}

#[test]
fn a_reply_bigger_than_the_buffer_grows_it() {
    let big = "x".repeat(300_000);
    let expected = big.clone();
    let (client, server) = connect(quick().initial_buffer(1024), move |q| {
        q.handshake();
        let c = q.expect("human-monitor-command");
        q.reply(&c, json!(big));
        let c = q.expect("query-status");
        q.reply(&c, serde_json::from_str(STATUS_RUNNING).unwrap());
    });
    let mut client = client.unwrap();
    assert_eq!(client.buffer_capacity(), 1024);
    assert_eq!(client.hmp("info big").unwrap(), expected);
    assert!(client.buffer_capacity() >= 300_000);
    assert!(client.execute(&QueryStatus).unwrap().running);
    server.join().unwrap();
}

#[test]
fn a_reply_over_the_limit_fails_alone_and_the_next_command_works() {
    let (client, server) = connect(quick().initial_buffer(1024).max_reply_size(8192), |q| {
        q.handshake();
        let c = q.expect("human-monitor-command");
        q.event("BEFORE", None);
        q.reply(&c, json!("y".repeat(50_000)));
        q.event("AFTER", None);
        let c = q.expect("query-status");
        q.reply(&c, serde_json::from_str(STATUS_RUNNING).unwrap());
    });
    let mut client = client.unwrap();
    match client.hmp("info huge") {
        Err(Error::TooLarge { size, limit }) => {
            assert!(size > 50_000, "{size}");
            assert_eq!(limit, 8192);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.buffer_capacity(), 8192);
    assert!(client.execute(&QueryStatus).unwrap().running);
    let names: Vec<_> = client.events().map(|e| e.name).collect();
    assert_eq!(names, ["BEFORE", "AFTER"]);
    server.join().unwrap();
}

#[test]
fn peer_close_fails_every_pending_command_and_later_ones() {
    let (client, server) = connect(quick(), |q| {
        q.handshake();
        let a = q.expect("stop");
        q.expect("cont");
        q.expect("query-status");
        q.event("STOP", None);
        q.reply(&a, json!({}));
        // A reply cut off in the middle, then the connection closes.
        q.send(r#"{"return": {"status": "runn"#);
        q.stream.shutdown(std::net::Shutdown::Both).unwrap();
    });
    let mut client = client.unwrap();
    let a = client.send(&Stop).unwrap();
    let b = client.send(&Cont).unwrap();
    let c = client.send(&QueryStatus).unwrap();
    server.join().unwrap();
    assert!(matches!(client.wait(c), Err(Error::Disconnected)));
    assert!(matches!(client.wait(b), Err(Error::Disconnected)));
    // Answered before the close: still delivered.
    client.wait(a).unwrap();
    assert!(client.is_closed());
    let later = client.execute(&QueryStatus).unwrap_err();
    assert!(matches!(later, Error::Disconnected), "{later:?}");
    assert!(later.is_disconnect());
    assert_eq!(client.events().count(), 1);
    assert!(matches!(
        client.wait_event("STOP", Duration::from_secs(1)),
        Err(Error::Disconnected)
    ));
}

#[test]
fn peer_close_before_the_greeting_is_disconnected() {
    let (client, server) = connect(quick(), |q| {
        q.stream.shutdown(std::net::Shutdown::Both).unwrap();
    });
    assert!(matches!(client, Err(Error::Disconnected)));
    server.join().unwrap();
}

#[test]
fn no_greeting_times_out() {
    let (client_side, _server_side) = UnixStream::pair().unwrap();
    let start = Instant::now();
    let result = ClientBuilder::new()
        .connect_timeout(Some(Duration::from_millis(100)))
        .handshake(client_side);
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn a_stalled_peer_times_the_command_out_and_the_connection_goes_on() {
    let (client, server) = connect(quick(), |q| {
        q.handshake();
        let slow = q.expect("stop");
        let next = q.expect("query-status");
        // Too late for `stop`: dropped, as the protocol says.
        q.reply(&slow, json!({}));
        q.reply(&next, serde_json::from_str(STATUS_RUNNING).unwrap());
    });
    let mut client = client.unwrap();
    client.set_command_timeout(Some(Duration::from_millis(150)));
    let start = Instant::now();
    assert!(matches!(client.execute(&Stop), Err(Error::Timeout(_))));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(2),
        "{took:?}"
    );
    client.set_command_timeout(Some(Duration::from_secs(5)));
    assert!(client.execute(&QueryStatus).unwrap().running);
    assert_eq!(client.dropped_messages(), 1);
    server.join().unwrap();
}

#[test]
fn a_silent_peer_trips_the_read_timeout_for_every_command() {
    let (client, server) = connect(
        quick().read_timeout(Some(Duration::from_millis(150))),
        |q| {
            q.handshake();
            q.expect("stop");
            q.expect("cont");
            // Then nothing, until the client gives up and closes.
            assert!(q.try_recv().is_none());
        },
    );
    let mut client = client.unwrap();
    client.set_command_timeout(None);
    let a = client.send(&Stop).unwrap();
    let b = client.send(&Cont).unwrap();
    let start = Instant::now();
    assert!(matches!(client.wait(b), Err(Error::Stalled)));
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(client.wait(a), Err(Error::Stalled)));
    assert!(matches!(client.execute(&Stop), Err(Error::Stalled)));
    drop(client);
    server.join().unwrap();
}

#[test]
fn wait_event_times_out_and_keeps_other_events() {
    let (client, server) = connect(quick(), |q| {
        q.handshake();
        q.event("OTHER", None);
        let c = q.expect("query-status");
        q.reply(&c, serde_json::from_str(STATUS_RUNNING).unwrap());
        // Stay connected (and silent) until the client is done.
        assert!(q.try_recv().is_none());
    });
    let mut client = client.unwrap();
    client.execute(&QueryStatus).unwrap();
    let start = Instant::now();
    assert!(matches!(
        client.wait_event(<ev::Stop as EventKind>::NAME, Duration::from_millis(100)),
        Err(Error::Timeout(_))
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(client.next_event(Duration::ZERO).unwrap().name, "OTHER");
    assert!(matches!(
        client.next_event(Duration::ZERO),
        Err(Error::Timeout(_))
    ));
    drop(client);
    server.join().unwrap();
}

#[test]
fn raw_requests_carry_ids_of_any_type() {
    let (client, server) = connect(quick(), |q| {
        q.handshake();
        for _ in 0..3 {
            let c = q.recv();
            if c["execute"] == "nope" {
                q.error(&c, "CommandNotFound", "The command nope has not been found");
            } else {
                q.reply(&c, json!({}));
            }
        }
        // Without an id, QEMU answers without one.
        let c = q.recv();
        assert!(c.get("id").is_none());
        q.send(r#"{"return": {}}"#);
    });
    let mut client = client.unwrap();
    let reply = client
        .request(&json!({"execute": "stop", "id": {"a": ["b", 1]}}))
        .unwrap();
    assert_eq!(reply, json!({"return": {}, "id": {"a": ["b", 1]}}));
    let reply = client
        .request(&json!({"execute": "cont", "id": "text"}))
        .unwrap();
    assert_eq!(reply["id"], "text");
    let reply = client
        .request(&json!({"execute": "nope", "id": [null, true, -1.5]}))
        .unwrap();
    assert_eq!(reply["error"]["class"], "CommandNotFound");
    assert_eq!(reply["id"], json!([null, true, -1.5]));
    let reply = client.request(&json!({"execute": "stop"})).unwrap();
    assert_eq!(reply, json!({"return": {}}));
    server.join().unwrap();
}

#[test]
fn a_request_waited_for_in_steps_can_be_given_up() {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (client, server) = connect(quick(), move |q| {
        q.handshake();
        let first = q.recv();
        assert_eq!(first["id"], "slow");
        // Answered late: after the caller gave up waiting for it.
        released.recv().unwrap();
        q.reply(&first, json!({"late": true}));
        let second = q.recv();
        q.reply(&second, json!({}));
    });
    let mut client = client.unwrap();
    let slow = client
        .send_request(&json!({"execute": "query-status", "id": "slow"}))
        .unwrap();
    // Nothing yet: the wait ends empty, and may be tried again.
    assert_eq!(
        client
            .wait_request(&slow, Some(Duration::from_millis(20)))
            .unwrap(),
        None
    );
    assert_eq!(
        client
            .wait_request(&slow, Some(Duration::from_millis(20)))
            .unwrap(),
        None
    );
    // Given up (the handle dropped); the late reply is not taken for the next request's.
    drop(slow);
    release.send(()).unwrap();
    let reply = client
        .request(&json!({"execute": "query-name", "id": "next"}))
        .unwrap();
    assert_eq!(reply, json!({"return": {}, "id": "next"}));
    assert!(
        client.dropped_messages() >= 1,
        "{}",
        client.dropped_messages()
    );
    server.join().unwrap();
}

#[test]
fn lenient_client_sends_before_negotiating() {
    let (client, server) = connect(quick().negotiate(false), |q| {
        q.send(&default_greeting());
        let c = q.expect("query-status");
        q.error(
            &c,
            "CommandNotFound",
            "Expecting capabilities negotiation with 'qmp_capabilities'",
        );
        let c = q.expect("qmp_capabilities");
        q.reply(&c, json!({}));
        let c = q.expect("query-status");
        q.reply(&c, serde_json::from_str(STATUS_RUNNING).unwrap());
    });
    let mut client = client.unwrap();
    assert!(!client.is_negotiated());
    let e = client.execute(&QueryStatus).unwrap_err();
    assert_eq!(e.qmp_class(), Some("CommandNotFound"));
    client.negotiate().unwrap();
    assert!(client.is_negotiated());
    assert!(client.execute(&QueryStatus).unwrap().running);
    server.join().unwrap();
}

#[test]
fn fds_travel_with_the_first_bytes_of_the_command() {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let (client, server) = connect(quick(), |q| {
        q.handshake();
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut bytes = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut bytes)];
        let got =
            rustix::net::recvmsg(q.stream.as_fd(), &mut iov, &mut control, RecvFlags::empty())
                .unwrap();
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        assert_eq!(fds.len(), 1);
        let command: Value = serde_json::from_slice(&bytes[..got.bytes]).unwrap();
        assert_eq!(command["arguments"], json!({"fdname": "pipe"}));
        // The descriptor works: it is the pipe's write end.
        let mut file = std::fs::File::from(fds.pop().unwrap());
        file.write_all(b"hello").unwrap();
        q.reply(&command, json!({}));
    });
    let mut client = client.unwrap();
    let (mut reader, writer) = std::io::pipe().unwrap();
    client
        .execute_with_fds(&Getfd { fdname: "pipe" }, &[writer.as_fd()])
        .unwrap();
    drop(writer);
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    assert_eq!(text, "hello");
    server.join().unwrap();
}

#[test]
fn debug_and_handles_print() {
    let (client, server) = connect(quick(), |q| {
        q.handshake();
        let c = q.expect("stop");
        q.reply(&c, json!({}));
    });
    let mut client = client.unwrap();
    let handle = client.send(&Stop).unwrap();
    assert_eq!(format!("{handle:?}"), "Handle(2)");
    assert!(format!("{client:?}").contains("in_flight: 1"));
    client.wait(handle).unwrap();
    server.join().unwrap();
}

#[test]
fn a_bounded_event_queue_reports_the_flood_it_dropped() {
    let (client, server) = connect(quick().max_queued_events(Some(3)), |q| {
        q.handshake();
        let stop = q.expect("stop");
        for i in 0..10 {
            q.event(&format!("E{i}"), None);
        }
        q.reply(&stop, json!({}));
        let status = q.expect("query-status");
        q.event("AFTER", None);
        q.reply(&status, serde_json::from_str(STATUS_RUNNING).unwrap());
        let status = q.expect("query-status");
        for i in 0..5 {
            q.event(&format!("F{i}"), None);
        }
        q.reply(&status, serde_json::from_str(STATUS_RUNNING).unwrap());
    });
    let mut client = client.unwrap();
    client.execute(&Stop).unwrap();
    assert_eq!(client.queued_events(), 3);
    assert_eq!(client.events_lost(), 7);
    // While the gap is unreported, later events are dropped too: none is reordered.
    client.execute(&QueryStatus).unwrap();
    assert_eq!(client.events_lost(), 8);
    for name in ["E0", "E1", "E2"] {
        assert_eq!(client.next_event(Duration::ZERO).unwrap().name, name);
    }
    // The gap, once, where it is; then the queue is open again.
    match client.next_event(Duration::ZERO) {
        Err(Error::Lagged { missed: 8 }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.next_event(Duration::ZERO),
        Err(Error::Timeout(_))
    ));
    client.execute(&QueryStatus).unwrap();
    // `events` drains up to the gap and closes it; `events_lost` still counts it.
    let names: Vec<_> = client.events().map(|e| e.name).collect();
    assert_eq!(names, ["F0", "F1", "F2"]);
    assert_eq!(client.events_lost(), 10);
    assert!(matches!(
        client.next_event(Duration::ZERO),
        Err(Error::Timeout(_))
    ));
    server.join().unwrap();
}

#[test]
fn a_command_waiting_for_room_behind_abandoned_ones_fails_at_its_own_deadline() {
    // Every in-flight slot holds an abandoned command the server never answers.
    let (client, server) = connect(quick().max_in_flight(2), |q| {
        q.handshake();
        q.expect("stop");
        q.expect("cont");
        // Then silence, until the client goes away.
        while q.try_recv().is_some() {}
    });
    let mut client = client.unwrap();
    let a = client.send(&Stop).unwrap();
    let b = client.send(&Cont).unwrap();
    client.abandon(a);
    client.abandon(b);
    client.set_command_timeout(Some(Duration::from_millis(200)));
    let start = Instant::now();
    let result = client.execute(&QueryStatus);
    let took = start.elapsed();
    assert!(
        matches!(result, Err(Error::Timeout(qmp_proto::Expired::Command))),
        "{result:?}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(1),
        "{took:?}"
    );
    drop(client);
    server.join().unwrap();
}
