//! The blocking client against a scripted serial peer playing recorded QEMU 7.2.22 sessions
//! (see `common/mod.rs` and `data/record.py`).

mod common;

use core::time::Duration;

use common::{Behavior, FakeClock, FakeQemu, LARGE, OOB, QUIT, RESYNC, SESSION, Transcript};
use embedded_io::ErrorKind;
use qmp_embedded::qmp_proto::SendError;
use qmp_embedded::{Client, Config, Error, ErrorClass, Expired, Instant, State};
use serde::Deserialize;

impl qmp_embedded::Clock for FakeClock {
    fn now(&self) -> Instant {
        FakeClock::now(self)
    }
}

type Qmp<const RX: usize = 1024, const TX: usize = 256, const EV: usize = 256, const N: usize = 2> =
    Client<FakeQemu, FakeClock, RX, TX, EV, N>;

fn client<const RX: usize, const TX: usize, const EV: usize, const N: usize>(
    link: FakeQemu,
) -> Qmp<RX, TX, EV, N> {
    let clock = link.clock.clone();
    Client::new(link, clock)
}

#[derive(Debug, Deserialize, PartialEq)]
struct Status<'a> {
    status: &'a str,
    running: bool,
}

#[derive(Debug, Deserialize)]
struct Reset<'a> {
    guest: bool,
    reason: &'a str,
}

#[derive(Debug, Deserialize)]
struct VersionTriple {
    major: u8,
    minor: u8,
    micro: u8,
}

#[derive(Debug, Deserialize)]
struct Version {
    qemu: VersionTriple,
    package: heapless::String<40>,
}

#[derive(serde::Serialize)]
struct Hmp<'a> {
    #[serde(rename = "command-line")]
    command_line: &'a str,
}

/// The whole recorded session: greeting → negotiate → query-status → stop (STOP) →
/// query-status → cont (RESUME) → an error reply → HMP (an escaped string) → system_reset
/// (RESET with data) → query-version.
fn run_session<const RX: usize, const TX: usize, const EV: usize, const N: usize>(
    c: &mut Qmp<RX, TX, EV, N>,
) -> Result<(), Error<ErrorKind>> {
    let info = c.handshake(false)?;
    assert_eq!(
        (info.version.major, info.version.minor, info.version.micro),
        (7, 2, 22)
    );
    assert!(info.oob_offered && !info.oob_enabled);
    assert_eq!(c.state(), State::Ready);

    let s: Status<'_> = c.execute("query-status", &())?;
    assert_eq!(
        s,
        Status {
            status: "running",
            running: true
        }
    );
    assert_eq!(
        c.next_event(Duration::ZERO).unwrap_err(),
        Error::Timeout(Expired::Event)
    );

    c.execute_raw("stop", &())?;
    let stop = c.next_event(Duration::ZERO).unwrap();
    assert!(stop.name == "STOP" && stop.data.is_none());
    assert!(stop.timestamp.seconds > 1_700_000_000 && stop.timestamp.microseconds >= 0);
    assert_eq!(
        c.next_event(Duration::ZERO).unwrap_err(),
        Error::Timeout(Expired::Event)
    );

    let s: Status<'_> = c.execute("query-status", &())?;
    assert_eq!(
        s,
        Status {
            status: "paused",
            running: false
        }
    );

    let empty = c.execute_raw("cont", &())?;
    assert_eq!(empty.as_json(), "{}");
    let resume = c.next_event(Duration::ZERO).unwrap();
    assert!(resume.name == "RESUME");

    match c.execute_raw("no-such-command", &()) {
        Err(Error::Qmp(e)) => {
            assert_eq!(e.class(), ErrorClass::CommandNotFound);
            assert_eq!(e.desc(), "The command no-such-command has not been found");
            assert!(!e.is_truncated());
        }
        Err(e) => return Err(e),
        Ok(v) => panic!("{v:?}"),
    }

    // `"VM status: running\r\n"`: unescaped through the transmit buffer.
    let hmp: heapless::String<32> = c.execute(
        "human-monitor-command",
        &Hmp {
            command_line: "info status",
        },
    )?;
    assert_eq!(hmp, "VM status: running\r\n");

    c.execute_raw("system_reset", &())?;
    let reset = c.next_event(Duration::ZERO).unwrap();
    assert!(reset.name == "RESET");
    let data: Reset<'_> = reset.data.unwrap().deserialize().unwrap();
    assert!(!data.guest);
    assert_eq!(data.reason, "host-qmp-system-reset");

    let v: Version = c.execute("query-version", &())?;
    assert_eq!((v.qemu.major, v.qemu.minor, v.qemu.micro), (7, 2, 22));
    assert_eq!(v.package, "Debian 1:7.2+dfsg-7+deb12u18+b3");
    assert_eq!(
        c.next_event(Duration::ZERO).unwrap_err(),
        Error::Timeout(Expired::Event)
    );
    Ok(())
}

#[test]
fn full_session_calm() {
    let link = FakeQemu::new(SESSION, Behavior::calm());
    let observed = link.observed.clone();
    let mut c: Qmp = client(link);
    run_session(&mut c).unwrap();
    let observed = observed.borrow();
    assert_eq!(observed.mismatch, None);
    assert_eq!(observed.commands.len(), 9);
    assert!(c.link().finished());
}

#[test]
fn full_session_with_random_chunks_and_stalls() {
    for seed in 0..300 {
        let link = FakeQemu::new(SESSION, Behavior::chaotic(seed));
        let observed = link.observed.clone();
        let mut c: Qmp = client(link);
        run_session(&mut c).unwrap_or_else(|e| panic!("seed {seed}: {e:?}"));
        assert_eq!(observed.borrow().mismatch, None, "seed {seed}");
        assert!(c.link().finished(), "seed {seed}");
    }
}

#[test]
fn events_between_a_command_and_its_reply_are_queued_in_order() {
    let mut t = Transcript::parse(SESSION);
    // Recorded event lines from later steps, played before the first query-status reply.
    let extra = [t.line(7, "RESET"), t.line(2, "STOP"), t.line(4, "RESUME")].concat();
    t.steps[1].response.splice(0..0, extra);
    for seed in 0..50 {
        let mut c: Qmp = client(FakeQemu::from_transcript(
            t.clone(),
            Behavior::chaotic(seed),
        ));
        c.handshake(false).unwrap();
        let s: Status<'_> = c.execute("query-status", &()).unwrap();
        assert_eq!(s.status, "running");
        let names: Vec<String> = core::iter::from_fn(|| {
            c.next_event(Duration::ZERO)
                .ok()
                .map(|e| e.name.to_string())
        })
        .collect();
        assert_eq!(names, ["RESET", "STOP", "RESUME"], "seed {seed}");
    }
}

#[test]
fn a_full_event_queue_reports_the_loss_in_order() {
    let mut t = Transcript::parse(SESSION);
    let extra = [t.line(2, "STOP"), t.line(4, "RESUME"), t.line(7, "RESET")].concat();
    t.steps[1].response.splice(0..0, extra);
    // 50 bytes: STOP (23) and RESUME (25) fit, RESET (19 + 5 + 49) does not.
    let mut c: Qmp<1024, 256, 50, 2> = client(FakeQemu::from_transcript(t, Behavior::calm()));
    c.handshake(false).unwrap();
    c.execute_raw("query-status", &()).unwrap();
    // The STOP of `stop` arrives while the gap is unreported: it is lost too, not reordered.
    c.execute_raw("stop", &()).unwrap();
    assert!(c.next_event(Duration::ZERO).unwrap().name == "STOP");
    assert!(c.next_event(Duration::ZERO).unwrap().name == "RESUME");
    assert_eq!(
        c.next_event(Duration::ZERO).unwrap_err(),
        Error::Lagged { missed: 2 }
    );
    assert_eq!(
        c.next_event(Duration::ZERO).unwrap_err(),
        Error::Timeout(Expired::Event)
    );
    // Drained: events are stored again.
    c.execute_raw("query-status", &()).unwrap();
    c.execute_raw("cont", &()).unwrap();
    assert!(c.next_event(Duration::ZERO).unwrap().name == "RESUME");
    assert_eq!(
        c.next_event(Duration::ZERO).unwrap_err(),
        Error::Timeout(Expired::Event)
    );
}

#[test]
fn a_zero_byte_event_queue_counts_every_event() {
    let mut c: Qmp<1024, 256, 0, 2> = client(FakeQemu::new(SESSION, Behavior::calm()));
    c.handshake(false).unwrap();
    c.execute_raw("query-status", &()).unwrap();
    c.execute_raw("stop", &()).unwrap();
    c.execute_raw("query-status", &()).unwrap();
    c.execute_raw("cont", &()).unwrap();
    assert_eq!(
        c.next_event(Duration::ZERO).unwrap_err(),
        Error::Lagged { missed: 2 }
    );
    assert_eq!(
        c.next_event(Duration::ZERO).unwrap_err(),
        Error::Timeout(Expired::Event)
    );
}

#[test]
fn a_reply_larger_than_the_buffer_is_a_typed_error_and_the_session_goes_on() {
    let t = Transcript::parse(LARGE);
    let size = t.steps[1].response.len() as u64 - 2; // without its "\r\n"
    assert!(size > 6000);
    for seed in 0..50 {
        let link = FakeQemu::from_transcript(t.clone(), Behavior::chaotic(seed));
        // 6.5 KB in chunks of a few bytes with stalls takes a while; it must not time out.
        let clock = link.clock.clone();
        let config = Config::new().timeout(Some(Duration::from_secs(300)));
        let mut c: Qmp = Client::with_config(link, clock, config);
        c.handshake(false).unwrap();
        assert_eq!(
            c.execute_raw("query-commands", &()).unwrap_err(),
            Error::TooLarge { size },
            "seed {seed}"
        );
        let s: Status<'_> = c.execute("query-status", &()).unwrap();
        assert_eq!(s.status, "running");
    }
}

#[test]
fn a_silent_server_times_out_and_its_late_reply_is_dropped() {
    for seed in 0..50 {
        let mut behavior = Behavior::chaotic(seed);
        behavior.hold_step = Some(1); // the first query-status reply comes late
        let link = FakeQemu::new(SESSION, behavior);
        let clock = link.clock.clone();
        let mut c: Qmp = client(link);
        c.handshake(false).unwrap();
        c.set_timeout(Some(Duration::from_millis(500)));
        let start = clock.now();
        assert_eq!(
            c.execute_raw("query-status", &()).unwrap_err(),
            Error::Timeout(Expired::Command)
        );
        let waited = clock.now().saturating_duration_since(start);
        assert!(
            waited >= Duration::from_millis(500),
            "seed {seed}: {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(600),
            "seed {seed}: {waited:?}"
        );
        c.set_timeout(Some(Duration::from_secs(300)));
        // The late `{"return": …, "id": 2}` arrives before stop's reply and is dropped.
        c.execute_raw("stop", &()).unwrap();
        assert!(c.next_event(Duration::ZERO).unwrap().name == "STOP");
        let s: Status<'_> = c.execute("query-status", &()).unwrap();
        assert_eq!(s.status, "paused");
    }
}

#[test]
fn a_missing_greeting_times_out() {
    let mut t = Transcript::parse(SESSION);
    t.greeting.clear();
    let mut c: Qmp = client(FakeQemu::from_transcript(t, Behavior::chaotic(3)));
    assert_eq!(
        c.handshake(false).unwrap_err(),
        Error::Timeout(Expired::Greeting)
    );
    assert_eq!(c.state(), State::AwaitingGreeting);
}

#[test]
fn boot_noise_before_the_greeting_is_skipped() {
    let mut t = Transcript::parse(SESSION);
    t.greeting.splice(
        0..0,
        *b"SeaBIOS (version 1.16.2)\r\nBooting from ROM...\r\n\x00\xff",
    );
    let mut c: Qmp = client(FakeQemu::from_transcript(t, Behavior::chaotic(4)));
    run_session(&mut c).unwrap();
}

/// Cuts the link at every byte of the session: each run ends in success or `Eof`, and every
/// later call in `Disconnected`.
#[test]
fn eof_at_every_byte() {
    let total = {
        let t = Transcript::parse(SESSION);
        t.greeting.len() + t.steps.iter().map(|s| s.response.len()).sum::<usize>()
    };
    for cut in 0..=total {
        let mut behavior = Behavior::chaotic(cut as u64);
        behavior.cut_after = Some(cut);
        let mut c: Qmp = client(FakeQemu::new(SESSION, behavior));
        match run_session(&mut c) {
            Ok(()) => assert!(cut >= total - 2, "cut {cut}"),
            Err(Error::Eof) => {
                assert_eq!(c.state(), State::Closed);
                // Events that arrived before the cut are still delivered.
                let end = loop {
                    if let Err(e) = c.next_event(Duration::ZERO) {
                        break e;
                    }
                };
                assert_eq!(end, Error::Disconnected);
                assert_eq!(
                    c.execute_raw("query-status", &()).unwrap_err(),
                    Error::Disconnected
                );
                assert_eq!(
                    c.next_event(Duration::from_secs(1)),
                    Err(Error::Disconnected)
                );
            }
            Err(e) => panic!("cut {cut}: {e:?}"),
        }
    }
}

#[test]
fn eof_mid_reply() {
    let t = Transcript::parse(SESSION);
    let mut behavior = Behavior::calm();
    // Halfway through the first query-status reply.
    behavior.cut_after = Some(t.greeting.len() + t.steps[0].response.len() + 40);
    let mut c: Qmp = client(FakeQemu::new(SESSION, behavior));
    c.handshake(false).unwrap();
    assert_eq!(c.execute_raw("query-status", &()).unwrap_err(), Error::Eof);
    assert_eq!(c.execute_raw("stop", &()).unwrap_err(), Error::Disconnected);
}

#[test]
fn a_link_error_mid_reply_is_typed_and_the_next_command_works() {
    let t = Transcript::parse(SESSION);
    for seed in 0..50 {
        let mut behavior = Behavior::chaotic(seed);
        let at = t.greeting.len() + t.steps[0].response.len() + 30;
        behavior.glitch = Some((at, ErrorKind::Other));
        let mut c: Qmp = client(FakeQemu::new(SESSION, behavior));
        c.handshake(false).unwrap();
        assert_eq!(
            c.execute_raw("query-status", &()).unwrap_err(),
            Error::Io(ErrorKind::Other)
        );
        // The rest of that reply arrives during `stop` and is dropped (the command was
        // abandoned); `stop` gets its own.
        c.execute_raw("stop", &()).unwrap();
        assert!(c.next_event(Duration::ZERO).unwrap().name == "STOP");
        let s: Status<'_> = c.execute("query-status", &()).unwrap();
        assert_eq!(s.status, "paused", "seed {seed}");
    }
}

#[test]
fn a_link_reset_is_an_io_error() {
    let mut behavior = Behavior::calm();
    behavior.cut_after = Some(100);
    behavior.cut_error = Some(ErrorKind::ConnectionReset);
    let mut c: Qmp = client(FakeQemu::new(SESSION, behavior));
    assert_eq!(
        c.handshake(false),
        Err(Error::Io(ErrorKind::ConnectionReset))
    );
}

#[test]
fn quit_then_the_server_closes_the_link() {
    for seed in 0..20 {
        let mut c: Qmp = client(FakeQemu::new(QUIT, Behavior::chaotic(seed)));
        c.handshake(false).unwrap();
        c.execute_raw("quit", &()).unwrap();
        let shutdown = c.next_event(Duration::ZERO).unwrap();
        assert!(shutdown.name == "SHUTDOWN");
        assert_eq!(
            shutdown
                .data
                .unwrap()
                .get("reason")
                .unwrap()
                .as_str()
                .unwrap(),
            "host-qmp-quit"
        );
        assert_eq!(c.next_event(Duration::from_secs(1)), Err(Error::Eof));
        assert_eq!(c.state(), State::Closed);
        assert_eq!(
            c.execute_raw("query-status", &()).unwrap_err(),
            Error::Disconnected
        );
    }
}

#[test]
fn out_of_band_commands() {
    for seed in 0..20 {
        let mut c: Qmp = client(FakeQemu::new(OOB, Behavior::chaotic(seed)));
        let info = c.handshake(true).unwrap();
        assert!(info.oob_enabled);
        let e = c.execute_oob_raw("query-status", &()).unwrap_err();
        let e = e.server_error().unwrap();
        assert_eq!(e.class(), ErrorClass::GenericError);
        assert_eq!(e.desc(), "The command query-status does not support OOB");
        let e = c
            .execute_oob::<Status<'_>, _>("migrate-pause", &())
            .unwrap_err();
        assert_eq!(
            e.server_error().unwrap().desc(),
            "migrate-pause is currently only supported during postcopy-active state"
        );
        let s: Status<'_> = c.execute("query-status", &()).unwrap();
        assert_eq!(s.status, "running");
    }
}

#[test]
fn local_misuse_is_refused_before_anything_is_written() {
    let link = FakeQemu::new(SESSION, Behavior::calm());
    let observed = link.observed.clone();
    let mut c: Qmp<1024, 40, 256, 2> = client(link);
    // Before the greeting and negotiation.
    assert_eq!(
        c.execute_raw("query-status", &()).unwrap_err(),
        Error::Send(SendError::AwaitingGreeting)
    );
    c.wait_greeting().unwrap();
    assert_eq!(
        c.execute_raw("query-status", &()).unwrap_err(),
        Error::Send(SendError::NotNegotiated)
    );
    c.negotiate(false).unwrap();
    // exec-oob without oob negotiated.
    assert_eq!(
        c.execute_oob_raw("query-status", &()).unwrap_err(),
        Error::Send(SendError::OobNotEnabled)
    );
    // A command larger than TX (40 bytes).
    match c.execute_raw(
        "human-monitor-command",
        &Hmp {
            command_line: "info status",
        },
    ) {
        Err(Error::Send(SendError::Encode(_))) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(observed.borrow().commands.len(), 1);
    // The session is intact.
    let s: Status<'_> = c.execute("query-status", &()).unwrap();
    assert_eq!(s.status, "running");
}

#[test]
fn a_return_value_of_the_wrong_shape_is_a_decode_error() {
    let mut c: Qmp = client(FakeQemu::new(SESSION, Behavior::calm()));
    c.handshake(false).unwrap();
    assert!(matches!(
        c.execute::<u32, _>("query-status", &()),
        Err(Error::Decode(_))
    ));
    // Escaped strings cannot be borrowed: also a decode error, not escaped text.
    c.execute_raw("stop", &()).unwrap();
    c.execute_raw("query-status", &()).unwrap();
    c.execute_raw("cont", &()).unwrap();
    c.execute_raw("no-such-command", &()).unwrap_err();
    assert!(matches!(
        c.execute::<&str, _>(
            "human-monitor-command",
            &Hmp {
                command_line: "info status"
            }
        ),
        Err(Error::Decode(_))
    ));
}

#[test]
fn a_blocked_write_times_out() {
    let mut behavior = Behavior::calm();
    behavior.write_blocked = true;
    let link = FakeQemu::new(SESSION, behavior);
    let clock = link.clock.clone();
    let mut c: Qmp = client(link);
    c.wait_greeting().unwrap();
    let start = clock.now();
    assert_eq!(
        c.negotiate(false).unwrap_err(),
        Error::Timeout(Expired::Greeting)
    );
    assert!(clock.now().saturating_duration_since(start) >= qmp_embedded::DEFAULT_TIMEOUT);
}

/// A command cut short by a write timeout is followed by the resync byte, and real QEMU
/// (recorded) drops the fragment with an id-less error and runs the next command.
#[test]
fn a_half_written_command_is_resynchronised() {
    let mut behavior = Behavior::calm();
    let caps = br#"{"execute":"qmp_capabilities","id":1}"#.len();
    behavior.block_writes = Some((caps + 20, 600_000));
    let link = FakeQemu::new(RESYNC, behavior);
    let observed = link.observed.clone();
    let clock = link.clock.clone();
    let config = Config::new().timeout(Some(Duration::from_millis(500)));
    let mut c: Qmp = Client::with_config(link, clock, config);
    c.handshake(false).unwrap();
    assert_eq!(
        c.execute_raw("query-status", &()).unwrap_err(),
        Error::Timeout(Expired::Command)
    );
    let s: Status<'_> = c.execute("query-status", &()).unwrap();
    assert_eq!(s.status, "running");
    let observed = observed.borrow();
    assert_eq!(observed.mismatch, None);
    assert_eq!(observed.resyncs, 1);
}

#[test]
fn stalls_reported_as_zero_byte_reads() {
    for seed in 0..20 {
        let mut behavior = Behavior::chaotic(seed);
        behavior.stall_as_zero = true;
        behavior.stall_percent = 20;
        let link = FakeQemu::new(SESSION, behavior);
        let clock = link.clock.clone();
        let mut c: Qmp = Client::with_config(link, clock, Config::new().zero_read_is_eof(false));
        run_session(&mut c).unwrap();
    }
}

#[test]
fn waiting_for_an_event_times_out_then_picks_one_up() {
    let link = FakeQemu::new(SESSION, Behavior::chaotic(9));
    let clock = link.clock.clone();
    let mut c: Qmp = client(link);
    c.handshake(false).unwrap();
    let start = clock.now();
    assert_eq!(
        c.next_event(Duration::from_millis(300)).unwrap_err(),
        Error::Timeout(Expired::Event)
    );
    assert!(clock.now().saturating_duration_since(start) >= Duration::from_millis(300));
    // An event the server sends on its own is picked up.
    let stop = Transcript::parse(SESSION).line(2, "STOP");
    c.link_mut().push_output(&stop);
    assert!(c.next_event(Duration::from_secs(1)).unwrap().name == "STOP");
}

#[test]
fn waiting_for_an_event_by_name_keeps_the_others_queued() {
    let t = Transcript::parse(SESSION);
    let link = FakeQemu::new(SESSION, Behavior::chaotic(10));
    let clock = link.clock.clone();
    let mut c: Qmp = client(link);
    c.handshake(false).unwrap();
    let events = [t.line(2, "STOP"), t.line(4, "RESUME"), t.line(7, "RESET")].concat();
    c.link_mut().push_output(&events);
    assert!(c.wait_event("RESET", Duration::from_secs(60)).unwrap().name == "RESET");
    // Not there: the wait runs out, and the others stay queued, in order.
    let start = clock.now();
    assert_eq!(
        c.wait_event("SHUTDOWN", Duration::from_millis(200))
            .unwrap_err(),
        Error::Timeout(Expired::Event)
    );
    assert!(clock.now().saturating_duration_since(start) >= Duration::from_millis(200));
    assert!(c.next_event(Duration::ZERO).unwrap().name == "STOP");
    assert!(c.next_event(Duration::ZERO).unwrap().name == "RESUME");
    assert_eq!(
        c.next_event(Duration::ZERO).unwrap_err(),
        Error::Timeout(Expired::Event)
    );
    assert_eq!(c.events_lost(), 0);
}

/// The smallest configuration that runs query-status / stop / cont with the recorded
/// server: RX holds the 140-byte greeting, TX the 37-byte `qmp_capabilities`, EV one
/// RESUME record (19 + 6 bytes), and one in-flight slot.
#[test]
fn smallest_configuration() {
    type Smallest = Qmp<140, 37, 25, 1>;
    for seed in 0..100 {
        let mut c: Smallest = client(FakeQemu::new(SESSION, Behavior::chaotic(seed)));
        c.handshake(false).unwrap();
        let s: Status<'_> = c.execute("query-status", &()).unwrap();
        assert_eq!(s.status, "running");
        c.execute_raw("stop", &()).unwrap();
        assert!(c.next_event(Duration::ZERO).unwrap().name == "STOP");
        let s: Status<'_> = c.execute("query-status", &()).unwrap();
        assert_eq!(s.status, "paused");
        c.execute_raw("cont", &()).unwrap();
        assert!(c.next_event(Duration::ZERO).unwrap().name == "RESUME");
    }
    // One byte less of RX and the greeting does not fit: the handshake times out.
    let mut c: Qmp<139, 37, 25, 1> = client(FakeQemu::new(SESSION, Behavior::calm()));
    assert_eq!(
        c.handshake(false).unwrap_err(),
        Error::Timeout(Expired::Greeting)
    );
}

/// With `--features defmt` the client's calls link against a host logger; with `DEFMT_LOG`
/// at `debug` or `trace` at build time (defmt filters levels when compiling), they log.
#[cfg(feature = "defmt")]
#[test]
fn protocol_steps_are_logged_through_defmt() {
    use std::sync::atomic::Ordering;
    let before = common::host_logger::BYTES.load(Ordering::Relaxed);
    let mut c: Qmp = client(FakeQemu::new(SESSION, Behavior::calm()));
    run_session(&mut c).unwrap();
    let logged = common::host_logger::BYTES.load(Ordering::Relaxed) - before;
    eprintln!("defmt bytes logged: {logged}");
    if option_env!("DEFMT_LOG").is_some_and(|l| l.contains("debug") || l.contains("trace")) {
        assert!(logged > 0);
    }
}

/// Separate reader and writer halves (a UART's RX and TX, or fds 0 and 1) joined by `Duplex`.
#[test]
fn duplex_of_two_halves() {
    use qmp_embedded::Duplex;

    use std::cell::RefCell;
    use std::rc::Rc;

    /// The reader half: what the server sent and was not read yet.
    struct Rx(Rc<RefCell<Vec<u8>>>);
    /// The writer half: what the client wrote, and the server's answers, one per command.
    struct Tx(Vec<u8>, Rc<RefCell<Vec<u8>>>, Vec<Vec<u8>>);
    impl embedded_io::ErrorType for Rx {
        type Error = ErrorKind;
    }
    impl embedded_io::ErrorType for Tx {
        type Error = ErrorKind;
    }
    impl embedded_io::Read for Rx {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
            let mut unread = self.0.borrow_mut();
            if unread.is_empty() {
                return Err(ErrorKind::TimedOut);
            }
            let n = buf.len().min(unread.len());
            buf[..n].copy_from_slice(&unread[..n]);
            unread.drain(..n);
            Ok(n)
        }
    }
    impl embedded_io::Write for Tx {
        fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
            self.0.extend_from_slice(buf);
            // A whole command (written in one piece here) is answered.
            if buf.ends_with(b"}") && !self.2.is_empty() {
                self.1.borrow_mut().extend(self.2.remove(0));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), ErrorKind> {
            Ok(())
        }
    }

    let t = Transcript::parse(SESSION);
    // The server answers each command once it is written (the greeting comes first). A
    // link pre-scripted with every answer before its command no longer works: the client
    // handles what it received in order, and a reply to a command not yet sent is dropped
    // as unmatched.
    let unread = Rc::new(RefCell::new(t.greeting.clone()));
    let answers = vec![t.steps[0].response.clone(), t.steps[1].response.clone()];
    let link = Duplex::new(Rx(unread.clone()), Tx(Vec::new(), unread, answers));
    let mut c: Client<_, _> = Client::new(link, FakeClock::default());
    c.handshake(false).unwrap();
    let s: Status<'_> = c.execute("query-status", &()).unwrap();
    assert_eq!(s.status, "running");
    let (link, _) = c.into_inner();
    assert_eq!(
        link.writer.0,
        [&t.steps[0].command[..], &t.steps[1].command[..]].concat()
    );
}

#[test]
fn messages_dropped_as_the_protocol_asks_are_counted() {
    let mut t = Transcript::parse(SESSION);
    // Before the first query-status reply: a reply to no command, the reply id the next
    // command will get, and an id-less error. (A greeting again is not dropped: it starts
    // the session over, see qmp-proto's tests/restart.rs.)
    let extra = [
        &b"{\"return\": {}, \"id\": 99}\r\n"[..],
        b"{\"return\": {\"status\": \"paused\", \"singlestep\": false, \"running\": false}, \"id\": 3}\r\n",
        b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\r\n",
    ]
    .concat();
    t.steps[1].response.splice(0..0, extra);
    let mut c: Qmp = client(FakeQemu::from_transcript(t, Behavior::calm()));
    c.handshake(false).unwrap();
    assert_eq!(c.dropped_messages(), 0);
    let s: Status<'_> = c.execute("query-status", &()).unwrap();
    assert_eq!(s.status, "running");
    assert_eq!(c.dropped_messages(), 3);
    // Id 3 is `stop`'s: it gets its own (recorded) reply, not the one sent early.
    c.execute_raw("stop", &()).unwrap();
    let s: Status<'_> = c.execute("query-status", &()).unwrap();
    assert_eq!(s.status, "paused");
    assert_eq!(c.dropped_messages(), 3);
}

/// Commands whose writes never got a byte out (the link refused every write until their
/// deadline) must not keep their slots: with one slot, the next command used to fail with
/// `Send(TableFull)` for good, since deadlines only take effect while reading. Found by the
/// chaos proxy (tests/tests/chaos.rs) as `TableFull` after a cut connection.
#[test]
fn commands_that_were_never_written_free_their_slots() {
    let session = Transcript::parse(SESSION);
    let t = Transcript {
        greeting: session.greeting.clone(),
        steps: vec![
            session.steps[0].clone(),
            common::Step {
                command: br#"{"execute":"query-status","id":4}"#.to_vec(),
                response: b"{\"return\": {\"status\": \"running\", \"singlestep\": false, \"running\": true}, \"id\": 4}\r\n".to_vec(),
            },
        ],
        eof: false,
    };
    let mut behavior = Behavior::calm();
    let caps = t.steps[0].command.len();
    // Every write after the handshake stalls until 250 ms of fake time.
    behavior.block_writes = Some((caps, 250_000));
    let link = FakeQemu::from_transcript(t, behavior);
    let observed = link.observed.clone();
    let clock = link.clock.clone();
    let config = Config::new().timeout(Some(Duration::from_millis(100)));
    let mut c: Qmp<1024, 256, 256, 1> = Client::with_config(link, clock, config);
    c.handshake(false).unwrap();
    // Ids 2 and 3: nothing gets out before their deadlines.
    assert_eq!(
        c.execute_raw("query-status", &()).unwrap_err(),
        Error::Timeout(Expired::Command)
    );
    assert_eq!(
        c.execute_raw("query-status", &()).unwrap_err(),
        Error::Timeout(Expired::Command)
    );
    // Id 4 gets out once writes flow again, and is answered.
    let s: Status<'_> = c.execute("query-status", &()).unwrap();
    assert_eq!(s.status, "running");
    let observed = observed.borrow();
    assert_eq!(observed.mismatch, None);
    assert_eq!(
        observed.resyncs, 0,
        "no fragment went out, so no resync byte"
    );
    assert_eq!(observed.commands.len(), 2);
}
