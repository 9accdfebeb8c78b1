//! The tokio [`Client`] against the fake QEMU.

use std::time::Duration;

use ::tokio::net::UnixStream;
use ::tokio::time::{sleep, timeout};
use serde_json::{Value, json};

use crate::Error;
use crate::commands::{Empty, MigratePause};
use crate::fake::{FakeQemu, FakeQemuBuilder};
use crate::shared_tests::echo;
use crate::tokio::{Client, ClientBuilder};

async fn connect_with(builder: ClientBuilder, fake: FakeQemuBuilder) -> (Client, FakeQemu) {
    let (client_side, server) = fake.spawn_unix().unwrap();
    client_side.set_nonblocking(true).unwrap();
    let client_side = UnixStream::from_std(client_side).unwrap();
    // Every command carries an id, as the tests were written.
    let client = builder
        .untagged_when_alone(false)
        .connect_timeout(Some(Duration::from_secs(5)))
        .command_timeout(Some(Duration::from_secs(10)))
        .handshake_unix(client_side)
        .await
        .unwrap();
    (client, server)
}

async fn connect(fake: FakeQemuBuilder) -> (Client, FakeQemu) {
    connect_with(ClientBuilder::new(), fake).await
}

#[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_connection() {
    let (qmp, server) = connect(echo()).await;
    let tasks: Vec<_> = (0..32u64)
        .map(|t| {
            let qmp = qmp.clone();
            ::tokio::spawn(async move {
                for n in 0..100u64 {
                    let args = json!({"task": t, "n": n});
                    assert_eq!(qmp.execute_raw("echo", &args).await.unwrap(), args);
                    assert!(qmp.in_flight() <= 8);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(qmp.in_flight(), 0);
    drop(qmp);
    server.join();
}

/// Dropping `execute` futures before their replies, hundreds of times, at every stage
/// (waiting for a permit, written and waiting for the reply), never puts the connection out
/// of step: each late reply is discarded by id, and commands and events carry on.
#[::tokio::test]
async fn dropped_futures_do_not_desynchronise_the_connection() {
    let (qmp, server) = connect(echo()).await;
    let mut events = qmp.subscribe();
    let mut cancelled = 0;
    for round in 0..200u64 {
        // Nine at once: the ninth waits for a permit when it is dropped.
        let calls: Vec<_> = (0..9)
            .map(|_| {
                let qmp = qmp.clone();
                async move { qmp.execute_raw("sleep", &json!({"ms": 0})).await }
            })
            .collect();
        let all = futures_join_all(calls);
        if timeout(Duration::from_micros(round % 50), all)
            .await
            .is_err()
        {
            cancelled += 1;
        }
        let args = json!({"round": round});
        let echoed = qmp.execute_raw("echo", &args).await.unwrap();
        assert_eq!(echoed, args);
        if round % 20 == 0 {
            qmp.execute_raw("emit", &json!({"n": 1})).await.unwrap();
            let event = events.next().await.unwrap().unwrap();
            assert_eq!(event.data.unwrap()["seq"], round / 20);
        }
    }
    assert!(cancelled > 0, "no call was cancelled");
    // Every abandoned command's reply was (or will be) discarded.
    timeout(Duration::from_secs(5), async {
        while qmp.in_flight() > 0 {
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    assert!(qmp.discarded_replies() > 0);
    assert_eq!(qmp.dropped_messages(), 0);
    drop(qmp);
    server.join();
}

/// `join_all` for a few futures, without futures-util.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, d) in futures.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *d = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().map(Option::unwrap).collect()
}

#[::tokio::test]
async fn a_command_timeout_fails_it_and_the_next_command_works() {
    let (qmp, server) = connect(echo()).await;
    let slow = qmp
        .execute_raw_timeout(
            "sleep",
            &json!({"ms": 100}),
            Some(Duration::from_millis(10)),
        )
        .await;
    assert!(matches!(slow, Err(Error::Timeout(_))), "{slow:?}");
    assert_eq!(
        qmp.in_flight(),
        0,
        "the driver frees the slot at the deadline"
    );
    assert_eq!(
        qmp.execute_raw("echo", &json!({"x": 1})).await.unwrap(),
        json!({"x": 1})
    );
    // The late reply came first, and was dropped as matching no command.
    assert_eq!((qmp.in_flight(), qmp.dropped_messages()), (0, 1));
    drop(qmp);
    server.join();
}

/// The drive task's timer is only re-armed when a command's deadline comes before the one it
/// is armed for: each command still fails at its own deadline, whether the one before had a
/// later deadline (the timer must be pulled in) or an earlier one (the timer fires early, and
/// is re-armed for the later deadline).
#[::tokio::test]
async fn each_command_fails_at_its_own_deadline_whatever_came_before() {
    let (qmp, server) = connect(echo()).await;
    // The fake takes REPLY_MS to answer `sleep`: a command must fail at its deadline, well
    // before that, not when the late reply happens to wake the client.
    const REPLY_MS: u64 = 1500;
    let expect_timeout = |result: crate::Result<Value>, started: std::time::Instant, after| {
        assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
        let took = started.elapsed();
        assert!(
            took >= after,
            "failed after {took:?}, before its deadline {after:?}"
        );
        assert!(
            took < Duration::from_millis(REPLY_MS - 300),
            "the deadline {after:?} was missed: failed after {took:?}, with the late reply"
        );
    };
    // A long deadline first (answered at once), then a short one that is never met.
    let long = Some(Duration::from_secs(20));
    let args = json!({"x": 1});
    assert_eq!(
        qmp.execute_raw_timeout("echo", &args, long).await.unwrap(),
        args
    );
    let started = std::time::Instant::now();
    let short = Duration::from_millis(50);
    let slow = qmp
        .execute_raw_timeout("sleep", &json!({"ms": REPLY_MS}), Some(short))
        .await;
    expect_timeout(slow, started, short);
    // The fake answers in order: let it finish the sleep (its late reply is dropped).
    sleep(Duration::from_millis(REPLY_MS)).await;
    // A short deadline first (answered at once), then a longer one that is never met.
    assert_eq!(
        qmp.execute_raw_timeout("echo", &args, Some(short))
            .await
            .unwrap(),
        args
    );
    let started = std::time::Instant::now();
    let longer = Duration::from_millis(300);
    let slow = qmp
        .execute_raw_timeout("sleep", &json!({"ms": REPLY_MS}), Some(longer))
        .await;
    expect_timeout(slow, started, longer);
    assert_eq!(qmp.execute_raw("echo", &args).await.unwrap(), args);
    drop(qmp);
    server.join();
}

/// A caller waiting for its answer reads the socket for everyone meanwhile (the socket wakes
/// its task instead of the drive task's). Dropped while it does, it gives the reading back:
/// an event that comes after, with no command running, still arrives at once; and the next
/// caller reads again.
#[::tokio::test]
async fn a_caller_dropped_while_reading_gives_the_reading_back() {
    let (qmp, server) = connect(echo()).await;
    let mut events = qmp.subscribe();
    let waited = timeout(
        Duration::from_millis(50),
        qmp.execute_raw("sleep", &json!({"ms": 1000})),
    )
    .await;
    assert!(waited.is_err(), "{waited:?}");
    assert!(server.control().event("NUDGE", None));
    let event = timeout(Duration::from_secs(2), events.next())
        .await
        .expect("the event within 2 s, with no command running")
        .expect("the stream goes on")
        .expect("an event");
    assert_eq!(event.name, "NUDGE");
    // The late reply to `sleep` is dropped by id; commands carry on.
    let args = json!({"after": "the drop"});
    assert_eq!(qmp.execute_raw("echo", &args).await.unwrap(), args);
    assert_eq!(qmp.in_flight(), 0);
    drop(qmp);
    server.join();
}

#[::tokio::test]
async fn exec_oob_overtakes_in_band_commands() {
    let fake = echo().on("held", |_| Ok(json!("held")));
    let (qmp, server) = connect_with(ClientBuilder::new().oob(true), fake).await;
    // Answered only after the out-of-band command that follows it.
    server.delay("held", Duration::from_millis(500));
    assert!(qmp.oob_enabled());
    let held = {
        let qmp = qmp.clone();
        ::tokio::spawn(async move { qmp.execute_raw("held", &Value::Null).await })
    };
    while qmp.in_flight() == 0 {
        sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(qmp.execute_oob(&MigratePause).await.unwrap(), Empty {});
    assert_eq!(held.await.unwrap().unwrap(), json!("held"));
    let seen: Vec<_> = server
        .requests()
        .into_iter()
        .map(|r| (r.name, r.oob))
        .collect();
    assert_eq!(
        seen,
        [("held".into(), false), ("migrate-pause".into(), true)]
    );
    drop(qmp);
    server.join();
}

#[::tokio::test]
async fn a_slow_subscriber_gets_the_events_then_the_gap_then_the_rest() {
    let (qmp, server) = connect_with(ClientBuilder::new().event_capacity(4), echo()).await;
    let mut first = qmp.subscribe();
    let mut second = qmp.subscribe();
    let seqs = |events: Vec<crate::Event>| -> Vec<u64> {
        events
            .into_iter()
            .map(|e| e.data.unwrap()["seq"].as_u64().unwrap())
            .collect()
    };
    // The one overflow rule: each holds the first four, the newest six are dropped, and the
    // gap is reported where it is.
    qmp.execute_raw("emit", &json!({"n": 10})).await.unwrap();
    for events in [&mut first, &mut second] {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(events.next().await.unwrap().unwrap());
        }
        assert_eq!(seqs(held), [0, 1, 2, 3]);
    }
    let slow = &mut second;
    match slow.next().await {
        Some(Err(Error::Lagged { missed: 6 })) => {}
        other => panic!("{other:?}"),
    }
    // `second` has caught up: the next three come through whole. `first` has not taken
    // its gap yet, so it is still open and the three are dropped too: nine missed.
    qmp.execute_raw("emit", &json!({"n": 3})).await.unwrap();
    let mut caught_up = Vec::new();
    for _ in 0..3 {
        caught_up.push(slow.next().await.unwrap().unwrap());
    }
    assert_eq!(seqs(caught_up), [10, 11, 12]);
    assert!(matches!(
        first.next().await,
        Some(Err(Error::Lagged { missed: 9 }))
    ));
    qmp.execute_raw("emit", &json!({"n": 1})).await.unwrap();
    assert_eq!(seqs(vec![first.next().await.unwrap().unwrap()]), [13]);
    assert_eq!(seqs(vec![slow.next().await.unwrap().unwrap()]), [13]);
    drop(qmp);
    server.join();
    // The client was dropped: the streams just end.
    assert!(slow.next().await.is_none());
}

#[::tokio::test]
async fn a_hang_up_fails_every_pending_command_and_ends_events_with_an_error() {
    let (qmp, server) = connect(echo()).await;
    server.drop_reply("unanswered");
    server.drop_reply("hang-up");
    server.cut_after("hang-up");
    let mut events = qmp.subscribe();
    qmp.execute_raw("emit", &json!({"n": 1})).await.unwrap();
    let pending: Vec<_> = (0..5)
        .map(|_| {
            let qmp = qmp.clone();
            ::tokio::spawn(async move { qmp.execute_raw("unanswered", &Value::Null).await })
        })
        .collect();
    while qmp.in_flight() < 5 {
        sleep(Duration::from_millis(1)).await;
    }
    let hung_up = qmp.execute_raw("hang-up", &Value::Null).await;
    assert!(matches!(hung_up, Err(Error::Disconnected)), "{hung_up:?}");
    for task in pending {
        let result = task.await.unwrap();
        assert!(matches!(result, Err(Error::Disconnected)), "{result:?}");
    }
    assert!(qmp.is_closed());
    let later = qmp.execute_raw("echo", &json!({})).await;
    assert!(matches!(later, Err(Error::Disconnected)), "{later:?}");
    assert_eq!(events.next().await.unwrap().unwrap().name, "TICK");
    assert!(matches!(
        events.next().await,
        Some(Err(Error::Disconnected))
    ));
    assert!(events.next().await.is_none());
    // A subscriber that comes after the end gets the error too.
    assert!(matches!(
        qmp.subscribe().next().await,
        Some(Err(Error::Disconnected))
    ));
    server.join();
}

#[::tokio::test]
async fn dropping_the_last_clone_closes_the_connection() {
    let (qmp, server) = connect(echo()).await;
    let other = qmp.clone();
    drop(qmp);
    other.execute_raw("echo", &json!({})).await.unwrap();
    drop(other);
    // The fake sees the end of the stream and returns.
    ::tokio::task::spawn_blocking(move || server.join())
        .await
        .unwrap();
}

/// A server that stops answering: the eight commands in flight time out (the driver frees
/// their slots at the deadline; their late replies will be dropped), and a ninth, waiting
/// for room, times out too instead of waiting forever. Once the server answers, all is
/// well again.
#[::tokio::test]
async fn deadlines_bound_the_wait_for_room_too() {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Mutex::new((held, false));
    // Answer nothing until told, then everything that came meanwhile, in order.
    let fake = echo().on("stuck", move |_| {
        let mut held = held.lock().unwrap();
        if !held.1 {
            held.0.recv().unwrap();
            held.1 = true;
        }
        Ok(json!({}))
    });
    let (qmp, server) = connect(fake).await;
    let short = Some(Duration::from_millis(50));
    let calls: Vec<_> = (0..9)
        .map(|_| {
            let qmp = qmp.clone();
            ::tokio::spawn(
                async move { qmp.execute_raw_timeout("stuck", &Value::Null, short).await },
            )
        })
        .collect();
    for call in calls {
        let result = call.await.unwrap();
        assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    }
    assert_eq!(qmp.in_flight(), 0);
    release.send(()).unwrap();
    // The late replies (eight, or nine if the ninth got room as the others timed out) are
    // dropped; then the next command goes through.
    let args = json!({"after": "stuck"});
    assert_eq!(qmp.execute_raw("echo", &args).await.unwrap(), args);
    assert_eq!(qmp.in_flight(), 0);
    assert!((8..=9).contains(&qmp.dropped_messages()), "{qmp:?}");
    drop(qmp);
    server.join();
}

/// The peer answers, sends an event and goes away before the client has read any of it;
/// the client's next write then fails (a broken pipe) before its reader task runs. The reply
/// and the event still come through, as with the blocking client: the writing stops, and the
/// reader reads up to the end of the stream, where what still waits fails.
#[::tokio::test] // One thread: the reader task runs only when this test yields.
async fn a_broken_pipe_still_delivers_what_the_peer_sent_before_it_went() {
    use std::future::Future;
    use std::task::{Context, Waker};
    let fake = echo().on_with("last-words", |_, fake| {
        fake.event("BYE", Some(json!({})));
        Ok(json!({"bye": true}))
    });
    let (qmp, server) = connect(fake).await;
    server.cut_after("last-words");
    let mut events = qmp.subscribe();
    let mut last = std::pin::pin!(qmp.execute_raw("last-words", &Value::Null));
    // Written on its first poll; then this thread waits (the reader task cannot run) until
    // the server has answered and hung up.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(last.as_mut().poll(&mut cx).is_pending());
    assert!(server.wait_disconnected(Duration::from_secs(5)));
    let broken = qmp.execute_raw("echo", &json!({})).await;
    assert!(matches!(broken, Err(Error::Disconnected)), "{broken:?}");
    assert_eq!(last.await.unwrap(), json!({"bye": true}));
    assert_eq!(events.next().await.unwrap().unwrap().name, "BYE");
    assert!(matches!(
        events.next().await,
        Some(Err(Error::Disconnected))
    ));
    assert!(events.next().await.is_none());
    assert!(qmp.is_closed());
    let later = qmp.execute_raw("echo", &json!({})).await;
    assert!(matches!(later, Err(Error::Disconnected)), "{later:?}");
    server.join();
}
