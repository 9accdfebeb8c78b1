//! Zero heap allocation in the core, checked with a counting global allocator: framing,
//! classifying, deserializing and encoding a real session allocate nothing.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use qmp_proto::{Instant, Outcome, Received, Session};

/// Counts allocations made by the current thread (tests run on several threads at once).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_counter_counts() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 10]);
    assert_eq!(allocations(), before + 1);
    drop(v);
}

#[test]
fn a_whole_session_over_recorded_output_allocates_nothing() {
    // Load the recorded data first (that allocates; it is the test's, not the core's).
    let mixed = common::data("mixed-stream.jsonl");
    let schema = common::data("query-qmp-schema.jsonl");
    let mut server = common::GREETING.to_vec();
    server.extend_from_slice(b"{\"return\": {}, \"id\": 1}\r\n");
    let mut big = vec![0u8; 256 * 1024];

    let before = allocations();

    let mut session: Session<&mut [u8], 8> = Session::new(&mut big[..]);
    let mut out = [0u8; 256];
    let mut replies = 0u64;
    let mut events = 0u64;
    let feed = |session: &mut Session<&mut [u8], 8>,
                mut bytes: &[u8],
                replies: &mut u64,
                events: &mut u64| {
        while !bytes.is_empty() {
            let n = session.feed(bytes);
            bytes = &bytes[n..];
            while let Some(item) = session.poll() {
                match item {
                    Received::Reply(r) => {
                        *replies += 1;
                        if let Outcome::Return(v) = r.outcome {
                            // Deserialize on demand, borrowing from the buffer.
                            #[derive(serde::Deserialize)]
                            struct Name<'a> {
                                name: &'a str,
                            }
                            if let Some(first) = v.elements().next() {
                                let entry: Name<'_> = first.deserialize().unwrap();
                                assert!(!entry.name.is_empty());
                            }
                        }
                    }
                    Received::Event(e) => {
                        *events += 1;
                        assert!(e.name == "STOP" || e.name == "RESUME");
                    }
                    _ => {}
                }
            }
        }
    };
    feed(&mut session, &server, &mut replies, &mut events);
    session.negotiate(false, None, &mut out).unwrap();
    feed(
        &mut session,
        b"{\"return\": {}, \"id\": 1}\r\n",
        &mut replies,
        &mut events,
    );

    // Encode commands with arguments (strings needing escapes included).
    #[derive(serde::Serialize)]
    struct Args<'a> {
        path: &'a str,
        property: &'a str,
        depth: u32,
    }
    for _ in 0..8 {
        let sent = session
            .execute(
                "qom-get",
                &Args {
                    path: "/machine/\"peripheral\"",
                    property: "type\n",
                    depth: 3,
                },
                Some(Instant::from_millis(5)),
                &mut out,
            )
            .unwrap();
        assert!(sent.len > 0);
    }
    // Classify the whole recorded mixed stream and the 207 KB schema reply through the framer.
    let mut framer = qmp_proto::Framer::new(&mut big[..]);
    for stream in [&mixed[..], &schema[..]] {
        let mut rest = stream;
        while !rest.is_empty() {
            let n = framer.feed(rest);
            rest = &rest[n..];
            while let Some(frame) = framer.next_frame() {
                let frame = frame.unwrap();
                let message = qmp_proto::Message::parse(frame.as_bytes()).unwrap();
                if let qmp_proto::Message::Event(_) = message {
                    events += 1;
                } else {
                    replies += 1;
                }
            }
        }
    }

    let after = allocations();
    assert_eq!(
        after - before,
        0,
        "the core allocated {} times",
        after - before
    );
    assert!(
        replies > 8000 && events > 2000,
        "{replies} replies, {events} events"
    );
}

#[test]
fn the_client_driver_allocates_nothing() {
    use qmp_proto::{Done, Driver, DriverConfig, EventBuffer, Io, SendOptions, Wait};

    let mixed = common::data("mixed-stream.jsonl");
    let mut server = common::GREETING.to_vec();
    server.extend_from_slice(b"{\"return\": {}, \"id\": 1}\r\n");
    server.extend_from_slice(&mixed);
    server.extend_from_slice(b"{\"return\": {\"status\": \"running\"}, \"id\": 2}\r\n");
    let mut driver: Driver<[u8; 16384], [u8; 256], EventBuffer<512>, 8> = Driver::new(
        [0; 16384],
        [0; 256],
        EventBuffer::new(),
        DriverConfig::default(),
        Instant::ZERO,
    );

    let before = allocations();
    let now = Instant::from_millis(1);
    let mut input = &server[..];
    let mut written = 0;
    let mut completed = 0;
    let mut events = 0;
    let mut run = |driver: &mut Driver<_, _, _, 8>, wait: Wait<'_>| loop {
        match driver.poll_io(now, wait, None) {
            Io::Write { bytes, .. } => {
                written += bytes.len();
                let n = bytes.len();
                driver.handle_written(n, now);
            }
            Io::Read { buf, .. } => {
                let n = buf.len().min(input.len()).min(1000);
                buf[..n].copy_from_slice(&input[..n]);
                input = &input[n..];
                driver.handle_read(n, now);
            }
            Io::Done(Done::Completed(id)) => {
                completed += 1;
                assert!(driver.outcome(id).is_some());
                if wait == Wait::Command(id) {
                    return;
                }
            }
            Io::Done(Done::Event) => {
                while let Some(Ok(_)) = driver.take_event(None) {
                    events += 1;
                }
            }
            Io::Done(_) => return,
        }
    };
    run(&mut driver, Wait::Handshake);
    let id = driver
        .execute("query-status", &(), SendOptions::new(), now)
        .unwrap();
    run(&mut driver, Wait::Command(id));
    // Take the events that came with the stream, as a caller would.
    while let Some(Ok(_)) = driver.take_event(None) {
        events += 1;
    }
    assert_eq!(allocations(), before, "the driver allocated");
    assert!(
        written > 40 && completed >= 1 && events > 0,
        "{written} {completed} {events}"
    );
}

#[cfg(feature = "agent")]
#[test]
fn the_guest_agent_dialect_allocates_nothing() {
    use qmp_proto::{Deadline, Done, Driver, DriverConfig, EventBuffer, Io, SendOptions, Wait};

    // Recorded from the real qemu-ga (tests/data/qga/record.py): a dirty channel, our sync.
    let dirty = common::data("qga/dirty.out");
    let mut driver: Driver<[u8; 8192], [u8; 256], EventBuffer<64>, 8> = Driver::new_agent(
        [0; 8192],
        [0; 256],
        EventBuffer::new(),
        DriverConfig::default(),
        987654321,
        Instant::ZERO,
    );

    let before = allocations();
    let mut now = Instant::from_millis(1);
    let mut input = &dirty[..];
    let mut written = 0;
    loop {
        match driver.poll_io(now, Wait::Handshake, None) {
            Io::Write { bytes, .. } => {
                written += bytes.len();
                let n = bytes.len();
                driver.handle_written(n, now);
            }
            Io::Read { buf, .. } => {
                let n = buf.len().min(input.len()).min(7);
                buf[..n].copy_from_slice(&input[..n]);
                input = &input[n..];
                driver.handle_read(n, now);
            }
            Io::Done(done) => {
                assert_eq!(done, Done::Ready);
                break;
            }
        }
    }
    // A command without a success reply, completed by silence; a timeout and its resync.
    let opts = SendOptions::new().deadline(Deadline::After(core::time::Duration::from_secs(1)));
    let shutdown = driver
        .execute_no_reply("guest-shutdown", &(), opts, now)
        .unwrap();
    let ping = driver.execute("guest-ping", &(), opts, now).unwrap();
    while let Some(bytes) = driver.poll_transmit() {
        written += bytes.len();
        let n = bytes.len();
        driver.handle_written(n, now);
    }
    now = Instant::from_millis(2000);
    driver.handle_timeout(now);
    let mut completed = 0;
    while let Some(done) = driver.poll() {
        if let Done::Completed(id) = done {
            assert!(id == shutdown || id == ping);
            assert!(driver.outcome(id).is_some());
            completed += 1;
        }
    }
    let sync = driver.agent_pending_sync().unwrap();
    assert_eq!(allocations(), before, "the agent dialect allocated");
    assert_eq!(completed, 2);
    assert!(written > 60 && sync != 987654321, "{written}");
}

#[test]
fn a_whole_server_session_allocates_nothing() {
    use qmp_proto::{Incoming, RawJson, Server, encode_event};
    let input: &[u8] = b"{\"execute\": \"query-status\", \"id\": 1}[1]{\"execute\": }\
        {\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"oob\"]}, \"id\": \"c\"}\
        {\"execute\": \"query-status\", \"id\": {\"a\": [1, \"\\u00e9\"]}}\
        {\"exec-oob\": \"nope\", \"id\": 3}{\"execute\": \"x\", \"foo\": 1}";
    let before = allocations();
    let mut server = Server::new([0u8; 512], (7, 2, 22), "pkg", true);
    let mut out = [0u8; 256];
    let mut answers = 0;
    assert!(server.greeting(&mut out).unwrap() > 0);
    for chunk in input.chunks(7) {
        assert_eq!(server.feed(chunk), chunk.len());
        while let Some(item) = server.poll() {
            answers += 1;
            match item {
                Incoming::Answer(a) => a.encode(&mut out).unwrap(),
                Incoming::Request(r) if r.name == "query-status" => r
                    .reply(RawJson::parse(r#"{"running":true}"#).unwrap(), &mut out)
                    .unwrap(),
                Incoming::Request(r) => r.not_found(&mut out).unwrap(),
            };
        }
    }
    encode_event("STOP", None, (1, 2), &mut out).unwrap();
    assert_eq!(allocations() - before, 0);
    assert_eq!(answers, 7);
}
