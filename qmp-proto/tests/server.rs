//! The server session: every rule, each input split at every byte offset, and a whole
//! session against the crate's own client `Session` in memory. Expected bytes are QEMU
//! 7.2.22's (see tests/tests/server_conformance.rs in qmp-e2e, which checks them against
//! the real binary).

use qmp_proto::{
    EncodeError, Incoming, Outcome, RawJson, Received, Server, ServerState, Session, State,
    encode_error, encode_event, encode_reply,
};

const PACKAGE: &str = "Debian 1:7.2+dfsg-7+deb12u18+b3";
const CAPS: &[u8] = br#"{"execute": "qmp_capabilities", "id": 0}"#;
const CAPS_OOB: &[u8] = br#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}"#;

fn server() -> Server<'static, [u8; 1024]> {
    Server::new([0; 1024], (7, 2, 22), PACKAGE, true)
}

/// Feeds `input` in pieces cut at `cuts`, answering as QEMU's tiny app would; returns every
/// byte the server side wrote.
fn run(s: &mut Server<'_, [u8; 1024]>, input: &[u8], cut: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut out = [0u8; 512];
    for piece in [&input[..cut], &input[cut..]] {
        let mut rest = piece;
        while !rest.is_empty() || s.poll().is_some() {
            let n = s.feed(rest);
            rest = &rest[n..];
            while let Some(item) = s.poll() {
                let len = match item {
                    Incoming::Answer(a) => a.encode(&mut out).unwrap(),
                    Incoming::Request(r) if r.name == "query-status" => r
                        .reply(RawJson::parse(r#"{"running":true}"#).unwrap(), &mut out)
                        .unwrap(),
                    Incoming::Request(r) if r.oob => r
                        .error(
                            "GenericError",
                            format_args!("The command {} does not support OOB", r.name),
                            &mut out,
                        )
                        .unwrap(),
                    Incoming::Request(r) => r.not_found(&mut out).unwrap(),
                };
                wire.extend_from_slice(&out[..len]);
            }
            if rest.is_empty() {
                break;
            }
        }
    }
    wire
}

/// Every split of `input` (after `setup`) gives `expected`, and the state after it.
#[track_caller]
fn check(setup: &[&[u8]], input: &[u8], expected: &str) -> ServerState {
    let mut state = None;
    for cut in 0..=input.len() {
        let mut s = server();
        for step in setup {
            run(&mut s, step, 0);
        }
        let got = run(&mut s, input, cut);
        assert_eq!(
            String::from_utf8(got).unwrap(),
            expected,
            "input {:?} cut at {cut}",
            String::from_utf8_lossy(input)
        );
        state = Some(s.state());
    }
    state.unwrap()
}

#[test]
fn greeting_is_qemus_byte_for_byte() {
    let recorded = std::fs::read("../../shared/corpus/greeting.jsonl")
        .or_else(|_| std::fs::read("/work/shared/corpus/greeting.jsonl"))
        .unwrap_or_else(|_| {
            format!(
                "{{\"QMP\": {{\"version\": {{\"qemu\": {{\"micro\": 22, \"minor\": 2, \"major\": 7}}, \"package\": \"{PACKAGE}\"}}, \"capabilities\": [\"oob\"]}}}}\r\n"
            )
            .into_bytes()
        });
    let mut out = [0u8; 256];
    let n = server().greeting(&mut out).unwrap();
    assert_eq!(&out[..n], &recorded[..]);
    let plain = Server::new([0u8; 64], (9, 0, 1), "", false);
    let n = plain.greeting(&mut out).unwrap();
    assert_eq!(
        &out[..n],
        b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 1, \"minor\": 0, \"major\": 9}, \"package\": \"\"}, \"capabilities\": []}}\r\n"
    );
    let mut small = [7u8; 20];
    assert!(matches!(
        plain.greeting(&mut small),
        Err(EncodeError::BufferTooSmall { needed }) if needed == n
    ));
    assert_eq!(small, [7u8; 20], "untouched on error");
}

const NOT_NEGOTIATED: &str = r#""error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#;

#[test]
fn negotiation_rules() {
    let st = check(
        &[],
        br#"{"execute": "query-status", "id": 1}"#,
        &format!("{{\"id\": 1, {NOT_NEGOTIATED}\r\n"),
    );
    assert_eq!(st, ServerState::Negotiating);
    check(
        &[],
        br#"{"execute": "query-status"}"#,
        &format!("{{{NOT_NEGOTIATED}\r\n"),
    );
    assert_eq!(
        check(&[], CAPS, "{\"return\": {}, \"id\": 0}\r\n"),
        ServerState::Command
    );
    check(&[], CAPS_OOB, "{\"return\": {}}\r\n");
    check(
        &[CAPS],
        CAPS,
        "{\"id\": 0, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities negotiation is already complete, command ignored\"}}\r\n",
    );
    for (args, desc) in [
        (
            r#"{"enable": ["foo"]}"#,
            "Parameter 'null' does not accept value 'foo'",
        ),
        (
            r#"{"enable": "oob"}"#,
            "Invalid parameter type for 'enable', expected: array",
        ),
        (
            r#"{"enable": null}"#,
            "Invalid parameter type for 'enable', expected: array",
        ),
        (
            r#"{"enable": ["oob", 1]}"#,
            "Invalid parameter type for 'enable[1]', expected: string",
        ),
        (r#"{"x": 1}"#, "Parameter 'x' is unexpected"),
    ] {
        let input = format!(r#"{{"execute": "qmp_capabilities", "arguments": {args}, "id": 2}}"#);
        let st = check(
            &[],
            input.as_bytes(),
            &format!(
                "{{\"id\": 2, \"error\": {{\"class\": \"GenericError\", \"desc\": \"{desc}\"}}}}\r\n"
            ),
        );
        assert_eq!(st, ServerState::Negotiating, "{args}");
    }
}

#[test]
fn oob_not_offered() {
    let mut s = Server::new([0u8; 1024], (7, 2, 22), PACKAGE, false);
    let wire = run(
        &mut s,
        br#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob", "oob"]}}"#,
        0,
    );
    assert_eq!(
        wire,
        b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"Capability oob, oob not available\"}}\r\n"
    );
    assert_eq!(s.state(), ServerState::Negotiating);
    run(&mut s, CAPS, 0);
    assert!(!s.oob_enabled());
}

fn generic(id: Option<&str>, desc: &str) -> String {
    let id = id.map(|id| format!("\"id\": {id}, ")).unwrap_or_default();
    format!("{{{id}\"error\": {{\"class\": \"GenericError\", \"desc\": \"{desc}\"}}}}\r\n")
}

#[test]
fn envelope_rules() {
    let cases: &[(&[&[u8]], &str, &str)] = &[
        (
            &[],
            r#"{"exec-oob": "query-status", "id": 3}"#,
            &generic(Some("3"), "QMP input member 'exec-oob' is unexpected"),
        ),
        (
            &[CAPS],
            r#"{"exec-oob": "query-status", "id": 3}"#,
            &generic(Some("3"), "QMP input member 'exec-oob' is unexpected"),
        ),
        (
            &[CAPS_OOB],
            r#"{"exec-oob": 1, "id": 3}"#,
            &generic(Some("3"), "QMP input member 'exec-oob' must be a string"),
        ),
        (
            &[CAPS_OOB],
            r#"{"exec-oob": "x", "execute": "x", "id": 3}"#,
            &generic(
                Some("3"),
                "QMP input member 'execute' clashes with 'exec-oob'",
            ),
        ),
        (
            &[CAPS_OOB],
            r#"{"exec-oob": "qmp_capabilities", "id": 3}"#,
            &generic(
                Some("3"),
                "The command qmp_capabilities does not support OOB",
            ),
        ),
        (
            &[CAPS_OOB],
            r#"{"exec-oob": "query-status", "id": 3}"#,
            "{\"return\": {\"running\": true}, \"id\": 3}\r\n",
        ),
        (
            &[CAPS],
            "[1]",
            &generic(None, "QMP input must be a JSON object"),
        ),
        (
            &[CAPS],
            "\"s\"",
            &generic(None, "QMP input must be a JSON object"),
        ),
        (
            &[CAPS],
            r#"{"id": 4}"#,
            &generic(Some("4"), "QMP input lacks member 'execute'"),
        ),
        (
            &[CAPS],
            "{}",
            &generic(None, "QMP input lacks member 'execute'"),
        ),
        (
            &[CAPS],
            r#"{"execute": 1, "id": 5}"#,
            &generic(Some("5"), "QMP input member 'execute' must be a string"),
        ),
        (
            &[CAPS],
            r#"{"execute": "x", "foo": 1, "id": 6}"#,
            &generic(Some("6"), "QMP input member 'foo' is unexpected"),
        ),
        (
            &[],
            r#"{"execute": "x", "foo": 1, "id": 6}"#,
            &generic(Some("6"), "QMP input member 'foo' is unexpected"),
        ),
        (
            &[CAPS],
            r#"{"execute": "x", "arguments": [], "id": 7}"#,
            &generic(Some("7"), "QMP input member 'arguments' must be an object"),
        ),
        (
            &[CAPS],
            r#"{"execute": "nope", "id": 8}"#,
            "{\"id\": 8, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}\r\n",
        ),
        (
            &[CAPS],
            r#"{"execute": "n\u00e9", "id": 8}"#,
            "{\"id\": 8, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command n\\u00E9 has not been found\"}}\r\n",
        ),
        (
            &[CAPS],
            "{\"execute\": }",
            &generic(None, "JSON parse error, expecting value"),
        ),
        (
            &[CAPS],
            "{\"execute\" \"x\"}",
            &generic(None, "JSON parse error, missing : in object pair"),
        ),
        (
            &[CAPS],
            "{\"execute\": tru}",
            &generic(None, "JSON parse error, invalid keyword 'tru'"),
        ),
        (
            &[CAPS],
            "{\"execute\": \"x\", \"execute\": \"y\"}",
            &generic(None, "JSON parse error, duplicate key"),
        ),
    ];
    for (setup, input, expected) in cases {
        check(setup, input.as_bytes(), expected);
    }
}

#[test]
fn ids_of_every_type_are_echoed_in_qemus_format() {
    for (id, echoed) in [
        ("1", "1"),
        ("-7", "-7"),
        ("2.5", "2.5"),
        ("\"s\\u00e9\\/\\u0001\"", "\"s\\u00E9/\\u0001\""),
        ("\"\u{1F600}\"", "\"\\uD83D\\uDE00\""),
        ("null", "null"),
        ("false", "false"),
        ("[]", "[]"),
        ("{ \"a\" :[1,\"x\" , {} ]}", "{\"a\": [1, \"x\", {}]}"),
    ] {
        let input = format!("{{\"execute\": \"query-status\", \"id\": {id}}}");
        check(
            &[CAPS],
            input.as_bytes(),
            &format!("{{\"return\": {{\"running\": true}}, \"id\": {echoed}}}\r\n"),
        );
    }
}

#[test]
fn encoders_write_qemus_format_and_leave_the_buffer_alone_on_error() {
    let mut out = [0u8; 256];
    let data = RawJson::parse(r#"{"guest":false,"reason":"host-qmp-system-reset"}"#).unwrap();
    let n = encode_event("RESET", Some(data), (1796478675, 947287), &mut out).unwrap();
    assert_eq!(
        &out[..n],
        &b"{\"timestamp\": {\"seconds\": 1796478675, \"microseconds\": 947287}, \"event\": \"RESET\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-system-reset\"}}\r\n"[..]
    );
    let n = encode_event("X", None, (-1, -1), &mut out).unwrap();
    assert_eq!(
        &out[..n],
        &b"{\"timestamp\": {\"seconds\": -1, \"microseconds\": -1}, \"event\": \"X\"}\r\n"[..]
    );
    let n = encode_reply(
        None,
        RawJson::parse("\"VM status: running\\r\\n\"").unwrap(),
        &mut out,
    )
    .unwrap();
    assert_eq!(
        &out[..n],
        &b"{\"return\": \"VM status: running\\r\\n\"}\r\n"[..]
    );
    let n = encode_error(None, "GenericError", "a\"b\u{7f}", &mut out).unwrap();
    assert_eq!(
        &out[..n],
        &b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"a\\\"b\\u007F\"}}\r\n"[..]
    );
    let mut small = [9u8; 10];
    assert!(matches!(
        encode_error(None, "C", "d", &mut small),
        Err(EncodeError::BufferTooSmall { .. })
    ));
    assert_eq!(small, [9u8; 10]);
    // No events before negotiation.
    let mut s = server();
    assert_eq!(s.event("STOP", None, (0, 0), &mut out), Ok(0));
    run(&mut s, CAPS, 0);
    assert!(s.event("STOP", None, (0, 0), &mut out).unwrap() > 0);
}

#[test]
fn a_whole_session_against_the_client() {
    let mut server = server();
    let mut client: Session<[u8; 1024]> = Session::new([0; 1024]);
    let (mut to_client, mut to_server) = ([0u8; 512], [0u8; 512]);
    let n = server.greeting(&mut to_client).unwrap();
    // Byte by byte, to split everything at every offset.
    let deliver = |client: &mut Session<[u8; 1024]>, bytes: &[u8]| {
        let mut got = Vec::new();
        for b in bytes {
            assert_eq!(client.feed(std::slice::from_ref(b)), 1);
            while let Some(item) = client.poll() {
                got.push(format!("{item:?}"));
            }
        }
        got
    };
    assert_eq!(deliver(&mut client, &to_client[..n]).len(), 1);
    let sent = client.negotiate(true, None, &mut to_server).unwrap();
    for b in &to_server[..sent.len] {
        assert_eq!(server.feed(std::slice::from_ref(b)), 1);
    }
    let Some(Incoming::Answer(a)) = server.poll() else {
        panic!()
    };
    let n = a.encode(&mut to_client).unwrap();
    deliver(&mut client, &to_client[..n]);
    assert_eq!((client.state(), client.oob_enabled()), (State::Ready, true));
    assert!(server.oob_enabled());

    for name in ["query-status", "nope", "stop"] {
        let sent = client.execute(name, &(), None, &mut to_server).unwrap();
        for b in &to_server[..sent.len] {
            assert_eq!(server.feed(std::slice::from_ref(b)), 1);
        }
        let Some(Incoming::Request(req)) = server.poll() else {
            panic!()
        };
        let mut len = 0;
        if req.name == "stop" {
            len = server_event(&mut to_client);
        }
        let n = match req.name.as_escaped() {
            "query-status" => req.reply(
                RawJson::parse(r#"{"status":"running"}"#).unwrap(),
                &mut to_client[len..],
            ),
            "stop" => req.reply(RawJson::parse("{}").unwrap(), &mut to_client[len..]),
            _ => req.not_found(&mut to_client[len..]),
        }
        .unwrap();
        let got = deliver(&mut client, &to_client[..len + n]);
        assert_eq!(got.len(), 1 + usize::from(len > 0), "{got:?}");
    }
    assert_eq!(client.in_flight(), 0);

    // And the replies carried what the client expects.
    let sent = client
        .execute("query-status", &(), None, &mut to_server)
        .unwrap();
    assert_eq!(server.feed(&to_server[..sent.len]), sent.len);
    let Some(Incoming::Request(req)) = server.poll() else {
        panic!()
    };
    let n = req
        .reply(
            RawJson::parse(r#"{"running":true}"#).unwrap(),
            &mut to_client,
        )
        .unwrap();
    assert_eq!(client.feed(&to_client[..n]), n);
    let Some(Received::Reply(reply)) = client.poll() else {
        panic!()
    };
    assert_eq!(reply.id, sent.id);
    assert!(
        matches!(reply.outcome, Outcome::Return(v) if v.get("running").unwrap().as_bool() == Some(true))
    );
}

fn server_event(out: &mut [u8]) -> usize {
    encode_event("STOP", None, (1, 2), out).unwrap()
}
