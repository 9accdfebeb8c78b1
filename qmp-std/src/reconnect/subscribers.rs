//! The subscribers of a reconnecting client, written once for threads and for tasks.
//!
//! Each subscriber has its own bounded queue with the one overflow rule of every client,
//! [`qmp_proto::EventQueue`]'s: past its capacity the newest events are dropped, counted, and
//! reported once where the gap is ([`Error::Lagged`]). A loss the connection's own queue
//! reported is added to the same count. A reconnection ([`Error::Reconnected`]) is never
//! dropped: it takes its place in the queue even when the queue is full, or, when it falls
//! in a loss not yet reported, it comes right after that loss's report.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use qmp_proto::EventQueue;

use super::Gap;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::hub::Ready;

/// How many unread events each subscriber of a reconnecting client holds before it lags
/// (default).
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// One queued item: an event, or where the connection was down.
#[derive(Debug)]
enum Item {
    Event(Event),
    Gap(Gap),
}

/// Storage for a subscriber's items: events up to `capacity`, gaps beyond it.
#[derive(Debug)]
struct Items {
    items: VecDeque<Item>,
    capacity: usize,
}

impl Items {
    fn push_event(&mut self, event: Event) -> bool {
        if self.items.len() >= self.capacity {
            return false;
        }
        self.items.push_back(Item::Event(event));
        true
    }
}

impl qmp_proto::EventStore for Items {
    type Item<'a> = Item;

    fn push(&mut self, event: &qmp_proto::Event<'_>) -> bool {
        self.push_event(Event::from_view(event))
    }

    fn take(&mut self, name: Option<&str>) -> Option<Item> {
        let at = match name {
            None => 0,
            Some(name) => self
                .items
                .iter()
                .position(|item| matches!(item, Item::Event(e) if e.name == name))?,
        };
        self.items.remove(at)
    }

    fn contains(&self, name: Option<&str>) -> bool {
        match name {
            None => !self.items.is_empty(),
            Some(name) => self
                .items
                .iter()
                .any(|item| matches!(item, Item::Event(e) if e.name == name)),
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// What a subscriber's lock guards.
#[derive(Debug)]
struct State<S> {
    queue: EventQueue<Items>,
    /// A reconnection that happened while a loss was open: reported right after it.
    gap_in_loss: Option<Gap>,
    /// The loss was reported: this reconnection comes next.
    gap_due: Option<Gap>,
    /// The client gave up or was dropped.
    ended: bool,
    /// Left by a waiting reader (see [`Ready`]).
    waiting: S,
}

impl<S> State<S> {
    /// The next event, loss or reconnection, in order.
    fn take(&mut self) -> Option<Result<Event>> {
        if let Some(gap) = self.gap_due.take() {
            return Some(Err(gap.into()));
        }
        Some(match self.queue.take(None)? {
            Ok(Item::Event(event)) => Ok(event),
            Ok(Item::Gap(gap)) => Err(gap.into()),
            Err(lagged) => {
                self.gap_due = self.gap_in_loss.take();
                Err(Error::Lagged {
                    missed: lagged.missed,
                })
            }
        })
    }
}

/// One subscriber's queue.
#[derive(Debug)]
pub(crate) struct Subscriber<R: Ready> {
    state: Mutex<State<R::Slot>>,
    ready: R,
}

/// What a read of a subscriber's queue found.
pub(crate) enum Read {
    /// An event, a loss or a reconnection.
    Item(Result<Event>),
    /// Nothing yet.
    Empty,
    /// Nothing, and nothing will come: the client gave up or was dropped.
    Ended,
}

impl<R: Ready> Subscriber<R> {
    fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                queue: EventQueue::new(Items {
                    items: VecDeque::new(),
                    capacity: capacity.max(1),
                }),
                gap_in_loss: None,
                gap_due: None,
                ended: false,
                waiting: R::Slot::default(),
            }),
            ready: R::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<R::Slot>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next item; when there is none, `wait` may leave something in the lock's
    /// slot (a task's waker) before the lock is let go.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn read(&self, wait: impl FnOnce(&mut R::Slot)) -> Read {
        let mut st = self.lock();
        match st.take() {
            Some(item) => Read::Item(item),
            None if st.ended => Read::Ended,
            None => {
                wait(&mut st.waiting);
                Read::Empty
            }
        }
    }

    fn update(&self, change: impl FnOnce(&mut State<R::Slot>)) {
        let mut st = self.lock();
        change(&mut st);
        let st = &mut *st;
        self.ready.notify(&mut st.waiting);
    }
}

impl Subscriber<std::sync::Condvar> {
    /// Waits up to `timeout` for the next item.
    pub(crate) fn wait(&self, timeout: std::time::Duration) -> Read {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            match st.take() {
                Some(item) => return Read::Item(item),
                None if st.ended => return Read::Ended,
                None => {}
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Read::Empty;
            }
            st = self
                .ready
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Every live subscriber of one reconnecting client.
#[derive(Debug)]
pub(crate) struct Subscribers<R: Ready> {
    list: Mutex<List<R>>,
    capacity: usize,
}

/// The subscribers, and whether the client has ended (a subscriber made after that starts
/// ended).
#[derive(Debug)]
struct List<R: Ready> {
    live: Vec<Weak<Subscriber<R>>>,
    ended: bool,
}

impl<R: Ready> Subscribers<R> {
    /// No subscribers yet; each new one holds up to `capacity` unread events.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            list: Mutex::new(List {
                live: Vec::new(),
                ended: false,
            }),
            capacity,
        }
    }

    /// A new subscriber, from now on.
    pub(crate) fn subscribe(&self) -> Arc<Subscriber<R>> {
        let subscriber = Arc::new(Subscriber::new(self.capacity));
        let mut list = self.lock();
        if list.ended {
            subscriber.update(|st| st.ended = true);
        }
        list.live.push(Arc::downgrade(&subscriber));
        subscriber
    }

    fn lock(&self) -> MutexGuard<'_, List<R>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to every live subscriber (and forgets the dropped ones).
    fn each(&self, change: impl Fn(&mut State<R::Slot>)) {
        Self::apply(&mut self.lock(), change);
    }

    fn apply(list: &mut List<R>, change: impl Fn(&mut State<R::Slot>)) {
        list.live.retain(|subscriber| match subscriber.upgrade() {
            Some(subscriber) => {
                subscriber.update(&change);
                true
            }
            None => false,
        });
    }

    /// An event from the connection.
    pub(crate) fn event(&self, event: &Event) {
        self.each(|st| {
            st.queue.push_with(|items| items.push_event(event.clone()));
        });
    }

    /// `missed` events the connection's own queue dropped.
    pub(crate) fn lost(&self, missed: u64) {
        self.each(|st| st.queue.lose(missed));
    }

    /// A reconnection: in its place, never dropped.
    pub(crate) fn gap(&self, gap: Gap) {
        self.each(|st| {
            if st.queue.is_lagging() {
                st.gap_in_loss = Some(match st.gap_in_loss {
                    Some(before) => Gap {
                        downtime: before.downtime + gap.downtime,
                        attempts: before.attempts.saturating_add(gap.attempts),
                    },
                    None => gap,
                });
            } else {
                let items = &mut st.queue.store_mut().items;
                // Gaps one after another (nobody read between reconnections) are one gap.
                match items.back_mut() {
                    Some(Item::Gap(last)) => {
                        last.downtime += gap.downtime;
                        last.attempts = last.attempts.saturating_add(gap.attempts);
                    }
                    _ => items.push_back(Item::Gap(gap)),
                }
            }
        });
    }

    /// The client gave up or was dropped: readers get the end once the queue is empty.
    pub(crate) fn end(&self) {
        // Under the list's lock throughout: a subscriber made meanwhile is ended either way.
        let mut list = self.lock();
        list.ended = true;
        Self::apply(&mut list, |st| st.ended = true);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Condvar;
    use std::time::Duration;

    use super::*;

    fn event(name: &str) -> Event {
        Event {
            name: name.to_owned(),
            data: None,
            timestamp: qmp_proto::Timestamp {
                seconds: 0,
                microseconds: 0,
            },
        }
    }

    fn gap(ms: u64) -> Gap {
        Gap {
            downtime: Duration::from_millis(ms),
            attempts: 1,
        }
    }

    /// What the subscriber reads, until it has nothing, as short strings.
    fn drain(sub: &Subscriber<Condvar>) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match sub.read(|_| {}) {
                Read::Item(Ok(e)) => seen.push(e.name),
                Read::Item(Err(Error::Lagged { missed })) => seen.push(format!("lagged {missed}")),
                Read::Item(Err(Error::Reconnected { downtime, .. })) => {
                    seen.push(format!("gap {}", downtime.as_millis()))
                }
                Read::Item(Err(e)) => panic!("{e:?}"),
                Read::Empty => return seen,
                Read::Ended => {
                    seen.push("end".into());
                    return seen;
                }
            }
        }
    }

    #[test]
    fn the_newest_events_are_dropped_and_the_loss_reported_where_it_is() {
        let subs = Subscribers::<Condvar>::new(2);
        let sub = subs.subscribe();
        for name in ["A", "B", "C", "D"] {
            subs.event(&event(name));
        }
        assert_eq!(drain(&sub), ["A", "B", "lagged 2"]);
        subs.event(&event("E"));
        assert_eq!(drain(&sub), ["E"]);
    }

    #[test]
    fn a_loss_upstream_is_counted_in_place() {
        let subs = Subscribers::<Condvar>::new(8);
        let sub = subs.subscribe();
        subs.event(&event("A"));
        subs.lost(3);
        subs.event(&event("B"));
        // The rule: after a loss nothing is stored until it is reported.
        assert_eq!(drain(&sub), ["A", "lagged 4"]);
        subs.event(&event("C"));
        assert_eq!(drain(&sub), ["C"]);
    }

    #[test]
    fn a_reconnection_is_kept_in_a_full_queue() {
        let subs = Subscribers::<Condvar>::new(2);
        let sub = subs.subscribe();
        subs.event(&event("A"));
        subs.event(&event("B"));
        subs.gap(gap(20));
        subs.event(&event("C"));
        assert_eq!(drain(&sub), ["A", "B", "gap 20", "lagged 1"]);
    }

    #[test]
    fn a_reconnection_within_a_loss_comes_right_after_its_report() {
        let subs = Subscribers::<Condvar>::new(1);
        let sub = subs.subscribe();
        subs.event(&event("A"));
        subs.event(&event("B"));
        subs.gap(gap(20));
        subs.event(&event("C"));
        subs.gap(gap(30));
        assert_eq!(drain(&sub), ["A", "lagged 2", "gap 50"]);
        subs.event(&event("D"));
        assert_eq!(drain(&sub), ["D"]);
    }

    #[test]
    fn each_subscriber_has_its_own_queue_and_a_dropped_one_is_forgotten() {
        let subs = Subscribers::<Condvar>::new(1);
        let first = subs.subscribe();
        subs.event(&event("A"));
        let second = subs.subscribe();
        subs.event(&event("B"));
        assert_eq!(drain(&first), ["A", "lagged 1"]);
        assert_eq!(drain(&second), ["B"]);
        drop(second);
        subs.event(&event("C"));
        assert_eq!(subs.lock().live.len(), 1);
        assert_eq!(drain(&first), ["C"]);
    }

    #[test]
    fn the_end_comes_after_what_is_queued_and_wakes_a_waiter() {
        let subs = Arc::new(Subscribers::<Condvar>::new(4));
        let sub = subs.subscribe();
        subs.event(&event("A"));
        let ender = {
            let subs = Arc::clone(&subs);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                subs.end();
            })
        };
        assert!(matches!(sub.wait(Duration::from_secs(5)), Read::Item(Ok(e)) if e.name == "A"));
        assert!(matches!(sub.wait(Duration::from_secs(5)), Read::Ended));
        ender.join().unwrap();
        assert!(matches!(sub.wait(Duration::ZERO), Read::Ended));
        // One made after the end is ended too.
        assert!(matches!(subs.subscribe().wait(Duration::ZERO), Read::Ended));
    }

    #[test]
    fn reconnections_nobody_read_between_are_one_gap() {
        let subs = Subscribers::<Condvar>::new(4);
        let sub = subs.subscribe();
        subs.event(&event("A"));
        subs.gap(gap(20));
        subs.gap(gap(30));
        subs.event(&event("B"));
        subs.gap(gap(5));
        assert_eq!(drain(&sub), ["A", "gap 50", "B", "gap 5"]);
    }
}
