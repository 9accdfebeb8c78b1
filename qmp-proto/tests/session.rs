//! The session state machine, driven like a client talking to a scripted QEMU on a virtual
//! clock. Server lines are QEMU 7.2.22's exact output shapes (see tests/data).

mod common;

use common::{GREETING, Got, drain, feed_all};
use qmp_proto::{Config, Failure, FrameError, Instant, MessageError, SendError, Session, State};

type Small = Session<[u8; 1024], 8>;

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

/// A session that has been greeted and has negotiated (command ids start after 1).
fn ready(oob: bool) -> Small {
    let mut s = Small::new([0; 1024]);
    let mut out = [0u8; 128];
    assert!(matches!(
        feed_all(&mut s, GREETING)[..],
        [Got::Greeting { .. }]
    ));
    let sent = s.negotiate(oob, None, &mut out).unwrap();
    assert_eq!(sent.id.get(), 1);
    let got = feed_all(&mut s, b"{\"return\": {}, \"id\": 1}\r\n");
    assert_eq!(
        got,
        [Got::Return {
            id: 1,
            value: "{}".into()
        }]
    );
    assert_eq!(s.state(), State::Ready);
    assert_eq!(s.oob_enabled(), oob);
    s
}

fn send(s: &mut Small, name: &str) -> u64 {
    send_id(s, name).get()
}

fn send_id(s: &mut Small, name: &str) -> qmp_proto::CommandId {
    let mut out = [0u8; 128];
    s.execute(name, &(), None, &mut out).unwrap().id
}

#[test]
fn greeting_then_negotiation_then_commands() {
    let mut s = Small::new([0; 1024]);
    let mut out = [0u8; 128];
    assert_eq!(s.state(), State::AwaitingGreeting);
    assert_eq!(
        s.execute("query-status", &(), None, &mut out),
        Err(SendError::AwaitingGreeting)
    );
    assert_eq!(
        s.negotiate(false, None, &mut out),
        Err(SendError::AwaitingGreeting)
    );

    let got = feed_all(&mut s, GREETING);
    assert_eq!(
        got,
        [Got::Greeting {
            version: (7, 2, 22),
            oob: true
        }]
    );
    assert_eq!(s.state(), State::Negotiating);
    assert_eq!(s.server_version(), Some((7, 2, 22)));
    assert!(s.oob_offered());

    // Commands are refused (and nothing is written or recorded) until negotiation completes.
    out.fill(b'#');
    assert_eq!(
        s.execute("query-status", &(), None, &mut out),
        Err(SendError::NotNegotiated)
    );
    assert_eq!(
        s.execute_oob("query-status", &(), None, &mut out),
        Err(SendError::NotNegotiated)
    );
    assert!(out.iter().all(|&b| b == b'#'));
    assert_eq!(s.in_flight(), 0);

    let sent = s.negotiate(true, None, &mut out).unwrap();
    assert_eq!(
        &out[..sent.len],
        br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}"#
    );
    // Still refused while the negotiation is in flight; and no second negotiation.
    assert_eq!(
        s.execute("stop", &(), None, &mut out),
        Err(SendError::NotNegotiated)
    );
    assert_eq!(
        s.negotiate(true, None, &mut out),
        Err(SendError::AlreadyNegotiated)
    );

    assert_eq!(
        feed_all(&mut s, b"{\"return\": {}, \"id\": 1}\r\n"),
        [Got::Return {
            id: 1,
            value: "{}".into()
        }]
    );
    assert_eq!(s.state(), State::Ready);
    assert!(s.oob_enabled());
    let sent = s.execute("query-status", &(), None, &mut out).unwrap();
    assert_eq!(&out[..sent.len], br#"{"execute":"query-status","id":2}"#);
    assert_eq!(
        s.negotiate(false, None, &mut out),
        Err(SendError::AlreadyNegotiated)
    );
}

#[test]
fn oob_must_be_offered_and_negotiated() {
    let mut s = Small::new([0; 1024]);
    let mut out = [0u8; 128];
    let no_oob = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": []}}\r\n";
    feed_all(&mut s, no_oob);
    assert!(!s.oob_offered());
    assert_eq!(
        s.negotiate(true, None, &mut out),
        Err(SendError::OobNotOffered)
    );

    let mut s = ready(false);
    assert_eq!(
        s.execute_oob("query-status", &(), None, &mut out),
        Err(SendError::OobNotEnabled)
    );
}

#[test]
fn failed_negotiation_leaves_the_session_negotiating() {
    let mut s = Small::new([0; 1024]);
    let mut out = [0u8; 128];
    feed_all(&mut s, GREETING);
    s.negotiate(false, None, &mut out).unwrap();
    let got = feed_all(
        &mut s,
        b"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\r\n",
    );
    assert_eq!(
        got,
        [Got::Error {
            id: 1,
            class: "GenericError".into(),
            desc: "nope".into()
        }]
    );
    assert_eq!(s.state(), State::Negotiating);
    assert!(s.negotiate(false, None, &mut out).is_ok());
}

#[test]
fn replies_match_commands_in_any_order_and_events_pass_through_in_order() {
    let mut s = ready(true);
    let a = send(&mut s, "stop");
    let b = send(&mut s, "query-status");
    let mut out = [0u8; 128];
    let c = s
        .execute_oob("migrate-pause", &(), None, &mut out)
        .unwrap()
        .id
        .get();
    assert_eq!(s.in_flight(), 3);
    // The oob reply overtakes; an event caused by `stop` comes before its reply.
    let server = format!(
        "{{\"id\": {c}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"migrate-pause is currently only supported during postcopy-active state\"}}}}\r\n\
         {{\"timestamp\": {{\"seconds\": 1795596531, \"microseconds\": 804941}}, \"event\": \"STOP\"}}\r\n\
         {{\"return\": {{}}, \"id\": {a}}}\r\n\
         {{\"timestamp\": {{\"seconds\": 1795596531, \"microseconds\": 804942}}, \"event\": \"RESET\", \"data\": {{\"guest\": false, \"reason\": \"host-qmp-system-reset\"}}}}\r\n\
         {{\"return\": {{\"status\": \"paused\", \"singlestep\": false, \"running\": false}}, \"id\": {b}}}\r\n"
    );
    let got = feed_all(&mut s, server.as_bytes());
    assert_eq!(
        got,
        [
            Got::Error {
                id: c,
                class: "GenericError".into(),
                desc: "migrate-pause is currently only supported during postcopy-active state"
                    .into()
            },
            Got::Event {
                name: "STOP".into(),
                data: None
            },
            Got::Return {
                id: a,
                value: "{}".into()
            },
            Got::Event {
                name: "RESET".into(),
                data: Some(r#"{"guest": false, "reason": "host-qmp-system-reset"}"#.into())
            },
            Got::Return {
                id: b,
                value: r#"{"status": "paused", "singlestep": false, "running": false}"#.into()
            },
        ]
    );
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn events_before_the_greeting_are_passed_through() {
    let mut s = Small::new([0; 1024]);
    let mut stream =
        b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"EARLY\"}\r\n"
            .to_vec();
    stream.extend_from_slice(GREETING);
    let got = feed_all(&mut s, &stream);
    assert_eq!(
        got[0],
        Got::Event {
            name: "EARLY".into(),
            data: None
        }
    );
    assert!(matches!(got[1], Got::Greeting { .. }));
}

#[test]
fn protocol_oddities_are_typed_notices_and_the_session_goes_on() {
    let mut s = ready(false);
    let id = send(&mut s, "query-name");
    let server = format!(
        // A reply to nobody, ids of other types (QEMU echoes 1e400 as inf), an id-less error
        // (QEMU could not parse some input), a second greeting, then the real reply.
        "{{\"return\": {{}}, \"id\": 999}}\r\n\
         {{\"return\": {{}}, \"id\": \"text\"}}\r\n\
         {{\"return\": {{}}, \"id\": inf}}\r\n\
         {{\"return\": {{}}}}\r\n\
         {{\"error\": {{\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid keyword 'x'\"}}}}\r\n\
         {}\
         {{\"return\": {{}}, \"id\": {id}}}\r\n",
        std::str::from_utf8(GREETING).unwrap()
    );
    let got = feed_all(&mut s, server.as_bytes());
    assert_eq!(
        got,
        [
            Got::Notice("unmatched id=999".into()),
            Got::Notice("unmatched id=\"text\"".into()),
            Got::Notice("unmatched id=inf".into()),
            Got::Notice("unmatched id=".into()),
            Got::Notice("untagged GenericError".into()),
            Got::Notice("second greeting".into()),
            Got::Return {
                id,
                value: "{}".into()
            },
        ]
    );
    // The second greeting started the session over (a reply already received still wins):
    // negotiation is due again.
    assert_eq!(s.state(), State::Negotiating);
}

#[test]
fn in_band_limit_is_qemus_queue_and_oob_does_not_count() {
    let mut s = Session::<[u8; 1024], 12>::new([0; 1024]);
    let mut out = [0u8; 128];
    feed_all(&mut s, GREETING);
    s.negotiate(true, None, &mut out).unwrap();
    feed_all(&mut s, b"{\"return\": {}, \"id\": 1}\r\n");
    for _ in 0..8 {
        s.execute("query-status", &(), None, &mut out).unwrap();
    }
    assert_eq!(
        s.execute("query-status", &(), None, &mut out),
        Err(SendError::QueueFull)
    );
    // Out-of-band commands use the rest of the table.
    for _ in 0..4 {
        s.execute_oob("query-status", &(), None, &mut out).unwrap();
    }
    assert_eq!(
        s.execute_oob("query-status", &(), None, &mut out),
        Err(SendError::TableFull)
    );
    // One reply frees one in-band place.
    feed_all(&mut s, b"{\"return\": {}, \"id\": 2}\r\n");
    assert!(s.execute("query-status", &(), None, &mut out).is_ok());

    let mut small =
        Session::<[u8; 256], 2>::with_config([0; 256], Config::default().max_in_band(1));
    feed_all(&mut small, GREETING);
    small.negotiate(false, None, &mut out).unwrap();
    feed_all(&mut small, b"{\"return\": {}, \"id\": 1}\r\n");
    small.execute("stop", &(), None, &mut out).unwrap();
    assert_eq!(
        small.execute("cont", &(), None, &mut out),
        Err(SendError::QueueFull)
    );
}

#[test]
fn deadlines_expire_on_the_callers_clock_but_a_buffered_reply_wins() {
    let mut s = ready(false);
    let mut out = [0u8; 128];
    let a = s
        .execute("query-status", &(), Some(ms(100)), &mut out)
        .unwrap()
        .id
        .get();
    let b = s
        .execute("query-status", &(), Some(ms(50)), &mut out)
        .unwrap()
        .id
        .get();
    let c = s.execute("query-status", &(), None, &mut out).unwrap().id;
    assert_eq!(s.poll_timeout(), Some(ms(50)));
    s.handle_timeout(ms(49));
    assert!(drain(&mut s).is_empty());

    // b's reply arrived but was not polled before its deadline passed: the reply wins.
    let _ = s.feed(format!("{{\"return\": {{}}, \"id\": {b}}}\r\n").as_bytes());
    s.handle_timeout(ms(60));
    assert_eq!(
        drain(&mut s),
        [Got::Return {
            id: b,
            value: "{}".into()
        }]
    );
    assert_eq!(s.poll_timeout(), Some(ms(100)));

    s.handle_timeout(ms(100));
    assert_eq!(
        drain(&mut s),
        [Got::Failed {
            id: a,
            failure: Failure::TimedOut
        }]
    );
    assert_eq!(s.poll_timeout(), None);
    // A late reply is reported, not silently dropped, and not confused with another command.
    let got = feed_all(
        &mut s,
        format!("{{\"return\": {{}}, \"id\": {a}}}\r\n").as_bytes(),
    );
    assert_eq!(got, [Got::Notice(format!("unmatched id={a}"))]);
    assert!(s.is_pending(c));
}

#[test]
fn end_of_stream_fails_every_command_after_buffered_replies() {
    let mut s = ready(false);
    let a = send(&mut s, "stop");
    let b = send(&mut s, "cont");
    let c = send(&mut s, "query-status");
    let base = s.framer().stream_position();
    let replies = format!("{{\"return\": {{}}, \"id\": {a}}}\r\n");
    let cut = "{\"return\": {\"sta";
    let _ = s.feed(format!("{replies}{cut}").as_bytes());
    s.handle_eof();
    let got = drain(&mut s);
    assert_eq!(
        got[0],
        Got::Return {
            id: a,
            value: "{}".into()
        }
    );
    let truncated = FrameError::Truncated {
        offset: base + replies.len() as u64,
        len: cut.len() as u64,
    };
    assert_eq!(got[1], Got::Notice(format!("framing {truncated:?}")));
    let mut failed: Vec<_> = got[2..].to_vec();
    failed.sort_by_key(|g| match g {
        Got::Failed { id, .. } => *id,
        _ => 0,
    });
    assert_eq!(
        failed,
        [
            Got::Failed {
                id: b,
                failure: Failure::Disconnected
            },
            Got::Failed {
                id: c,
                failure: Failure::Disconnected
            }
        ]
    );
    assert_eq!(s.state(), State::Closed);
    let mut out = [0u8; 64];
    assert_eq!(
        s.execute("query-status", &(), None, &mut out),
        Err(SendError::Closed)
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn abandoned_commands_keep_their_slot_until_the_late_reply_is_discarded() {
    let mut s = ready(false);
    let a_id = send_id(&mut s, "query-status");
    let a = a_id.get();
    assert!(s.abandon(a_id));
    assert!(!s.abandon(a_id));
    assert!(!s.is_pending(a_id));
    assert_eq!(s.in_flight(), 1);
    let b = send(&mut s, "query-status");
    let got = feed_all(
        &mut s,
        format!("{{\"return\": {{}}, \"id\": {a}}}\r\n{{\"return\": {{}}, \"id\": {b}}}\r\n")
            .as_bytes(),
    );
    assert_eq!(
        got,
        [
            Got::Notice(format!("discarded {a}")),
            Got::Return {
                id: b,
                value: "{}".into()
            }
        ]
    );
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn a_reply_too_large_for_the_buffer_fails_its_own_command_only() {
    let mut s = Session::<[u8; 192], 8>::new([0; 192]);
    let mut out = [0u8; 128];
    feed_all(&mut s, GREETING);
    s.negotiate(false, None, &mut out).unwrap();
    feed_all(&mut s, b"{\"return\": {}, \"id\": 1}\r\n");
    let big = s
        .execute("query-qmp-schema", &(), None, &mut out)
        .unwrap()
        .id
        .get();
    let small = s
        .execute("query-name", &(), None, &mut out)
        .unwrap()
        .id
        .get();
    let mut stream = b"{\"return\": [".to_vec();
    for i in 0..50 {
        stream.extend_from_slice(
            format!("{{\"name\": \"n{i}\", \"meta-type\": \"command\"}}, ").as_bytes(),
        );
    }
    stream.extend_from_slice(format!("{{}}], \"id\": {big}}}\r\n").as_bytes());
    let size = stream.len() as u64 - 2;
    stream.extend_from_slice(format!("{{\"return\": {{}}, \"id\": {small}}}\r\n").as_bytes());
    for chunk in [1usize, 7, 64, 4096] {
        let mut s2 = Session::<[u8; 192], 8>::new([0; 192]);
        feed_all(&mut s2, GREETING);
        s2.negotiate(false, None, &mut out).unwrap();
        feed_all(&mut s2, b"{\"return\": {}, \"id\": 1}\r\n");
        s2.execute("query-qmp-schema", &(), None, &mut out).unwrap();
        s2.execute("query-name", &(), None, &mut out).unwrap();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            got.extend(feed_all(&mut s2, piece));
        }
        assert_eq!(
            got,
            [
                Got::Failed {
                    id: big,
                    failure: Failure::TooLarge { size }
                },
                Got::Return {
                    id: small,
                    value: "{}".into()
                }
            ],
            "chunk {chunk}"
        );
    }
    let _ = s;
}

#[test]
fn a_malformed_reply_fails_its_command_when_its_id_can_be_read() {
    let mut s = ready(false);
    let a = send(&mut s, "query-status");
    let mut stream = format!(
        "{{\"id\": {a}, \"error\": {{\"class\": \"GenericError\"}}}}\r\n\
         {{\"error\": {{\"desc\": \"no class\"}}}}\r\n"
    )
    .into_bytes();
    stream.extend_from_slice(b"{\"return\": \"\xff\"}\r\n");
    let got = feed_all(&mut s, &stream);
    assert_eq!(
        got,
        [
            Got::Failed {
                id: a,
                failure: Failure::Malformed(MessageError::MissingMember {
                    member: "error.desc"
                })
            },
            Got::Notice("malformed MissingMember { member: \"error.class\" }".into()),
            Got::Notice("malformed InvalidUtf8 { offset: 12 }".into()),
        ]
    );
}

#[test]
fn garbage_between_messages_costs_nothing_that_follows() {
    let mut s = ready(false);
    let a = send(&mut s, "query-status");
    let base = s.framer().stream_position();
    let stream = format!(
        "\x01\x02garbage]]\r\n{{\"timestamp\": {{\"seconds\": 1, \"microseconds\": 2}}, \"event\": \"STOP\"}}\r\n\
         [1, 2]\r\n{{\"return\": {{}}, \"id\": {a}}}\r\n"
    );
    let array_at = base + stream.find('[').unwrap() as u64;
    let got = feed_all(&mut s, stream.as_bytes());
    assert_eq!(
        got,
        [
            Got::Notice(format!(
                "framing {:?}",
                FrameError::UnexpectedByte {
                    offset: base,
                    byte: 1
                }
            )),
            Got::Event {
                name: "STOP".into(),
                data: None
            },
            Got::Notice(format!(
                "framing {:?}",
                FrameError::NotAnObject { offset: array_at }
            )),
            Got::Return {
                id: a,
                value: "{}".into()
            },
        ]
    );
}

#[test]
fn lenient_sessions_let_a_caller_test_the_servers_own_checks() {
    let mut s = Small::with_config([0; 1024], Config::default().enforce_negotiation(false));
    let mut out = [0u8; 128];
    feed_all(&mut s, GREETING);
    let early = s
        .execute("query-status", &(), None, &mut out)
        .unwrap()
        .id
        .get();
    // `qmp_capabilities` sent as a plain command still counts as negotiation.
    #[derive(serde::Serialize)]
    struct Enable {
        enable: [&'static str; 1],
    }
    let neg = s
        .execute(
            "qmp_capabilities",
            &Enable { enable: ["oob"] },
            None,
            &mut out,
        )
        .unwrap()
        .id
        .get();
    let got = feed_all(
        &mut s,
        format!(
            "{{\"id\": {early}, \"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}}}\r\n\
             {{\"return\": {{}}, \"id\": {neg}}}\r\n"
        )
        .as_bytes(),
    );
    assert!(matches!(&got[0], Got::Error { class, .. } if class == "CommandNotFound"));
    assert_eq!(s.state(), State::Ready);
    assert!(s.oob_enabled());
}

#[test]
fn encoding_errors_leave_no_trace_in_the_table() {
    let mut s = ready(false);
    let mut tiny = [0u8; 8];
    assert!(matches!(
        s.execute("query-status", &(), None, &mut tiny),
        Err(SendError::Encode(qmp_proto::EncodeError::BufferTooSmall {
            needed: 33
        }))
    ));
    assert_eq!(s.in_flight(), 0);
    // The id was not used up either.
    let mut out = [0u8; 33];
    let sent = s.execute("query-status", &(), None, &mut out).unwrap();
    assert_eq!(
        (sent.id.get(), &out[..]),
        (2, &br#"{"execute":"query-status","id":2}"#[..])
    );
}

#[test]
fn forgotten_commands_free_their_slot_at_once() {
    let mut s = Session::<[u8; 1024], 2>::new([0; 1024]);
    let mut out = [0u8; 128];
    feed_all(&mut s, GREETING);
    s.negotiate(false, None, &mut out).unwrap();
    feed_all(&mut s, b"{\"return\": {}, \"id\": 1}\r\n");
    let a = s.execute("stop", &(), Some(ms(10)), &mut out).unwrap().id;
    let b = s.execute("cont", &(), None, &mut out).unwrap().id;
    assert_eq!(
        s.execute("query-status", &(), None, &mut out),
        Err(SendError::TableFull)
    );
    // Writing `a` failed: it never reached the server.
    assert!(s.forget(a));
    assert!(!s.forget(a));
    assert_eq!(s.in_flight(), 1);
    assert!(s.execute("query-status", &(), None, &mut out).is_ok());
    // Nothing is yielded for it, not even at its deadline or at the end of the stream.
    s.handle_timeout(ms(20));
    s.handle_eof();
    let got = drain(&mut s);
    assert!(
        got.iter()
            .all(|g| !matches!(g, Got::Failed { id, .. } if *id == a.get())),
        "{got:?}"
    );
    assert!(got.contains(&Got::Failed {
        id: b.get(),
        failure: Failure::Disconnected
    }));
}

/// A negotiated session with [`Config::untagged_when_alone`].
fn ready_untagged(oob: bool) -> Small {
    let config = Config::default().untagged_when_alone(true);
    let mut s = Small::with_config([0; 1024], config);
    let mut out = [0u8; 128];
    feed_all(&mut s, GREETING);
    let sent = s.negotiate(oob, None, &mut out).unwrap();
    // Negotiation keeps its id.
    assert!(out[..sent.len].ends_with(br#","id":1}"#));
    feed_all(&mut s, b"{\"return\": {}, \"id\": 1}\r\n");
    assert_eq!(s.state(), State::Ready);
    s
}

fn send_bytes(s: &mut Small, name: &str, oob: bool) -> (u64, String) {
    let mut out = [0u8; 128];
    let sent = if oob {
        s.execute_oob(name, &(), None, &mut out)
    } else {
        s.execute(name, &(), None, &mut out)
    }
    .unwrap();
    (
        sent.id.get(),
        String::from_utf8(out[..sent.len].to_vec()).unwrap(),
    )
}

#[test]
fn a_lone_command_goes_without_its_id_and_its_reply_is_matched_by_order() {
    let mut s = ready_untagged(true);
    let (a, wire) = send_bytes(&mut s, "query-status", false);
    assert_eq!(wire, r#"{"execute":"query-status"}"#);
    // Another in-band command while `a` is in flight, and an out-of-band one, keep their ids.
    let (b, wire) = send_bytes(&mut s, "query-name", false);
    assert_eq!(wire, format!(r#"{{"execute":"query-name","id":{b}}}"#));
    let (c, wire) = send_bytes(&mut s, "query-status", true);
    assert_eq!(wire, format!(r#"{{"exec-oob":"query-status","id":{c}}}"#));
    let got = feed_all(
        &mut s,
        format!(
            "{{\"return\": {{}}, \"id\": {c}}}\r\n\
             {{\"timestamp\": {{\"seconds\": 1, \"microseconds\": 2}}, \"event\": \"STOP\"}}\r\n\
             {{\"return\": {{\"status\": \"running\"}}}}\r\n\
             {{\"return\": {{}}, \"id\": {b}}}\r\n"
        )
        .as_bytes(),
    );
    let ret = |id, value: &str| Got::Return {
        id,
        value: value.into(),
    };
    let stop = Got::Event {
        name: "STOP".into(),
        data: None,
    };
    assert_eq!(
        got,
        [
            ret(c, "{}"),
            stop,
            ret(a, r#"{"status": "running"}"#),
            ret(b, "{}")
        ]
    );
    assert_eq!(s.in_flight(), 0);

    // Errors, malformed replies and replies too large for the buffer, without ids.
    let (d, _) = send_bytes(&mut s, "nope", false);
    let got = feed_all(
        &mut s,
        b"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}\r\n",
    );
    assert_eq!(
        got,
        [Got::Error {
            id: d,
            class: "CommandNotFound".into(),
            desc: "The command nope has not been found".into()
        }]
    );
    let (f, _) = send_bytes(&mut s, "query-qmp-schema", false);
    let mut big = b"{\"return\": [\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 2000));
    big.extend_from_slice(b"\"]}\r\n");
    let size = big.len() as u64 - 2;
    assert_eq!(
        feed_all(&mut s, &big),
        [Got::Failed {
            id: f,
            failure: Failure::TooLarge { size }
        }]
    );
    // An event too large for the buffer is not taken for the reply.
    let (g, _) = send_bytes(&mut s, "query-status", false);
    let mut big_event = b"{\"event\": \"X\", \"data\": {\"return\": \"".to_vec();
    big_event.extend(std::iter::repeat_n(b'y', 2000));
    big_event.extend_from_slice(
        b"\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n{\"return\": {}}\r\n",
    );
    let got = feed_all(&mut s, &big_event);
    assert!(
        matches!(&got[..], [Got::Notice(n), r] if n.starts_with("framing TooLarge") && *r == ret(g, "{}")),
        "{got:?}"
    );
    let (e, _) = send_bytes(&mut s, "query-status", false);
    let got = feed_all(&mut s, b"{\"error\": {\"class\": \"GenericError\"}}\r\n");
    let missing = MessageError::MissingMember {
        member: "error.desc",
    };
    assert_eq!(
        got,
        [Got::Failed {
            id: e,
            failure: Failure::Malformed(missing)
        }]
    );
    // The malformed reply may have been noise, and the real one may still come without an
    // id: from now on every command carries its id.
    let (h, wire) = send_bytes(&mut s, "query-status", false);
    assert_eq!(wire, format!(r#"{{"execute":"query-status","id":{h}}}"#));
}

#[test]
fn after_a_lone_command_times_out_every_command_carries_its_id() {
    let mut s = ready_untagged(false);
    let mut out = [0u8; 128];
    let a = s
        .execute("query-status", &(), Some(ms(100)), &mut out)
        .unwrap();
    assert_eq!(&out[..a.len], br#"{"execute":"query-status"}"#);
    s.handle_timeout(ms(100));
    assert_eq!(
        drain(&mut s),
        [Got::Failed {
            id: a.id.get(),
            failure: Failure::TimedOut
        }]
    );
    // The late reply has no id: it cannot be taken for the next command's, which has one.
    let (b, wire) = send_bytes(&mut s, "query-name", false);
    assert_eq!(wire, format!(r#"{{"execute":"query-name","id":{b}}}"#));
    let got = feed_all(
        &mut s,
        format!(
            "{{\"return\": {{\"status\": \"running\"}}}}\r\n{{\"return\": {{}}, \"id\": {b}}}\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(
        got,
        [
            Got::Notice("unmatched id=".into()),
            Got::Return {
                id: b,
                value: "{}".into()
            }
        ]
    );
    let (_, wire) = send_bytes(&mut s, "query-status", false);
    assert!(wire.contains("\"id\":"), "{wire}");
}

#[test]
fn after_a_lone_command_is_abandoned_its_reply_is_discarded_and_ids_return() {
    let mut s = ready_untagged(false);
    let a_id = send_id(&mut s, "query-status");
    let a = a_id.get();
    assert!(s.abandon(a_id));
    let (b, wire) = send_bytes(&mut s, "query-name", false);
    assert_eq!(wire, format!(r#"{{"execute":"query-name","id":{b}}}"#));
    let got = feed_all(
        &mut s,
        format!("{{\"return\": {{}}}}\r\n{{\"return\": {{}}, \"id\": {b}}}\r\n").as_bytes(),
    );
    assert_eq!(
        got,
        [
            Got::Notice(format!("discarded {a}")),
            Got::Return {
                id: b,
                value: "{}".into()
            }
        ]
    );
    assert!(
        send_bytes(&mut s, "query-status", false)
            .1
            .contains("\"id\":")
    );
}

#[test]
fn a_malformed_reply_is_tied_to_its_id_even_after_invalid_utf8() {
    // QEMU puts the id last; the grammar walk stops at the invalid byte, the skim does not.
    let mut s = ready(false);
    let a = send(&mut s, "query-status");
    let got = feed_all(
        &mut s,
        &[
            &b"{\"return\": \"\xff\", \"id\": "[..],
            a.to_string().as_bytes(),
            b"}\r\n",
        ]
        .concat(),
    );
    assert!(
        matches!(&got[..], [Got::Failed { id, failure: Failure::Malformed(MessageError::InvalidUtf8 { .. }) }] if *id == a),
        "{got:?}"
    );
}

/// A command long enough that it might hold more tokens than QEMU's parser takes keeps its
/// id even when alone: QEMU would answer it with id-less parse errors, perhaps several.
#[test]
fn a_command_past_qemus_token_limit_keeps_its_id() {
    #[derive(serde::Serialize)]
    struct Args {
        a: String,
    }
    let mut s = ready_untagged(false);
    let mut out = vec![0u8; qmp_proto::QEMU_MAX_TOKENS + 64];
    // `{"execute":"x","arguments":{"a":"…"}}` is 36 bytes around the string.
    let at_limit = Args {
        a: "a".repeat(qmp_proto::QEMU_MAX_TOKENS - 36),
    };
    let sent = s.execute("x", &at_limit, None, &mut out).unwrap();
    assert_eq!(sent.len, qmp_proto::QEMU_MAX_TOKENS);
    assert!(out[..sent.len].ends_with(b"\"}}"));
    feed_all(&mut s, b"{\"return\": {}}\r\n");
    assert_eq!(s.in_flight(), 0);

    let past = Args {
        a: "a".repeat(qmp_proto::QEMU_MAX_TOKENS - 35),
    };
    let sent = s.execute("x", &past, None, &mut out).unwrap();
    let id = sent.id.get();
    assert!(out[..sent.len].ends_with(format!("\"}},\"id\":{id}}}").as_bytes()));
    // Its id-less errors are notices, not its reply; its reply is matched by id.
    let got = feed_all(
        &mut s,
        format!(
            "{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}}}\r\n\
             {{\"return\": {{}}, \"id\": {id}}}\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(s.in_flight(), 0);
    assert!(
        got.last()
            == Some(&Got::Return {
                id,
                value: "{}".into()
            }),
        "{got:?}"
    );
    // And the next short command goes without an id again.
    let (_, wire) = send_bytes(&mut s, "query-status", false);
    assert_eq!(wire, r#"{"execute":"query-status"}"#);
}

/// Whether `got` is exactly one failure of command `id` with an [`Failure::Unframed`] error
/// that `expected` accepts.
fn unframed(got: &[Got], id: u64, expected: impl Fn(&FrameError) -> bool) -> bool {
    matches!(got, [Got::Failed { id: i, failure: Failure::Unframed(e) }] if *i == id && expected(e))
}

#[test]
fn a_lone_command_whose_reply_nests_too_deep_fails_at_once() {
    let mut s = ready_untagged(false);
    let (a, wire) = send_bytes(&mut s, "query-status", false);
    assert_eq!(wire, r#"{"execute":"query-status"}"#);
    let mut reply = b"{\"return\": ".to_vec();
    reply.extend(std::iter::repeat_n(b'[', 2000));
    reply.extend_from_slice(b"\r\n");
    let got = feed_all(&mut s, &reply);
    assert!(
        unframed(&got, a, |e| matches!(e, FrameError::TooDeep { .. })),
        "{got:?}"
    );
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_lone_command_whose_reply_has_a_raw_control_character_fails_at_once() {
    let mut s = ready_untagged(false);
    let (a, _) = send_bytes(&mut s, "query-status", false);
    let got = feed_all(&mut s, b"{\"return\": \"run\x01ning\"}\r\n");
    assert!(
        unframed(&got, a, |e| matches!(
            e,
            FrameError::ControlCharInString { byte: 1, .. }
        )),
        "{got:?}"
    );
    assert_eq!(s.in_flight(), 0);
    // The next command and its reply go on, with its id (the broken message may not have
    // been the reply: see `after_a_broken_reply_to_an_untagged_command_ids_come_back`).
    let (b, wire) = send_bytes(&mut s, "query-name", false);
    assert_eq!(wire, format!(r#"{{"execute":"query-name","id":{b}}}"#));
    assert_eq!(
        feed_all(
            &mut s,
            format!("{{\"return\": {{}}, \"id\": {b}}}\r\n").as_bytes()
        ),
        [Got::Return {
            id: b,
            value: "{}".into()
        }]
    );
}

#[test]
fn a_lone_command_whose_reply_has_a_mismatched_bracket_fails_at_once() {
    let mut s = ready_untagged(false);
    let (a, _) = send_bytes(&mut s, "query-status", false);
    let got = feed_all(&mut s, b"{\"error\": {\"class\": \"X\", \"desc\": [}}\r\n");
    assert!(
        unframed(&got, a, |e| matches!(
            e,
            FrameError::MismatchedBracket { byte: b'}', .. }
        )),
        "{got:?}"
    );
}

#[test]
fn a_broken_event_does_not_fail_the_lone_command() {
    let mut s = ready_untagged(false);
    let (a, _) = send_bytes(&mut s, "query-status", false);
    for event in [
        &b"{\"event\": \"STOP\x01\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n"[..],
        b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"X\", \"data\": {\"a\": \"\x02\"}}\r\n",
        // Nothing telling before the break: not tied to the command either.
        b"{\"\x03\": 1}\r\n",
    ] {
        let got = feed_all(&mut s, event);
        assert!(
            matches!(got[..], [Got::Notice(_)]),
            "{got:?} for {event:?}"
        );
        assert_eq!(s.in_flight(), 1);
    }
    assert_eq!(
        feed_all(&mut s, b"{\"return\": {}}\r\n"),
        [Got::Return {
            id: a,
            value: "{}".into()
        }]
    );
}

#[test]
fn a_tagged_command_whose_broken_reply_shows_its_id_fails_at_once() {
    let mut s = ready(false);
    let a = send_id(&mut s, "query-status");
    let b = send(&mut s, "query-name");
    let mut reply = format!("{{\"id\": {b}, \"return\": ").into_bytes();
    reply.extend(std::iter::repeat_n(b'[', 100));
    reply.extend_from_slice(b"\r\n");
    let got = feed_all(&mut s, &reply);
    assert!(
        unframed(&got, b, |e| matches!(e, FrameError::TooDeep { .. })),
        "{got:?}"
    );
    // Without an id, a broken reply cannot be tied to a tagged command.
    let got = feed_all(&mut s, b"{\"return\": \"\x01\"}\r\n");
    assert!(matches!(got[..], [Got::Notice(_)]), "{got:?}");
    assert!(s.is_pending(a));
    assert_eq!(s.in_flight(), 1);
}

#[test]
fn after_a_broken_reply_to_an_untagged_command_ids_come_back() {
    let mut s = ready_untagged(false);
    let (_, wire) = send_bytes(&mut s, "query-status", false);
    assert_eq!(wire, r#"{"execute":"query-status"}"#);
    // Noise that reads as a reply, with no id: taken for the lone command's.
    let got = feed_all(&mut s, b"{\"error\": {\"class\": \"GenericError\"}}\r\n");
    assert!(matches!(got.as_slice(), [Got::Failed { .. }]), "{got:?}");
    // Its real reply may still come without an id: from now on every command carries one.
    let (id, wire) = send_bytes(&mut s, "query-status", false);
    assert_eq!(wire, format!(r#"{{"execute":"query-status","id":{id}}}"#));
    let got = feed_all(&mut s, b"{\"return\": {}}\r\n");
    assert!(
        matches!(got.as_slice(), [Got::Notice(_)]),
        "the stray reply is not taken for the next command's: {got:?}"
    );
}

#[test]
fn a_reply_cut_off_by_its_line_end_is_noise_and_the_real_reply_still_counts() {
    // QEMU ends every message: a reply-looking fragment whose line ended inside it (a line
    // end in a string, or the next line opening an object) is noise on the line.
    for noise in [
        &b"{\"return\": {\"status\": \"ru\r\n"[..],
        &b"{\"return\": {\"status\": \r\n"[..],
    ] {
        let mut s = ready_untagged(false);
        let (a, wire) = send_bytes(&mut s, "query-status", false);
        assert_eq!(wire, r#"{"execute":"query-status"}"#);
        let mut stream = noise.to_vec();
        stream.extend_from_slice(b"{\"return\": {\"status\": \"running\"}}\r\n");
        let got = feed_all(&mut s, &stream);
        assert!(
            matches!(&got[..], [Got::Notice(_), r] if *r == Got::Return { id: a, value: r#"{"status": "running"}"#.into() }),
            "{:?}: {got:?}",
            String::from_utf8_lossy(noise)
        );
    }
}
