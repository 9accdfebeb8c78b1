//! The guest agent dialect: the same [`Driver`], talking to `qemu-ga`.
//!
//! The rules and how the driver applies them are documented on `Driver::new_agent` (feature
//! `agent`). Without the feature there is no way to make an agent driver: [`Peer`] has no
//! agent, every hook below finds none, and a QMP-only build (firmware) links none of it.
#![cfg_attr(not(feature = "agent"), allow(dead_code))]

use core::time::Duration;

use serde::Serialize;

use crate::events::EventStore;
use crate::message::Message;
use crate::session::{CommandId, Failure, Notice, SendError};
use crate::time::Instant;

#[cfg(feature = "agent")]
use super::DriverConfig;
use super::{Buffer, Driver, Held, SendOptions, ServerInfo};

/// The byte the agent writes before a `guest-sync-delimited` reply, and that makes its
/// parser start over when a client sends it.
pub const AGENT_SENTINEL: u8 = 0xFF;

/// The agent's commands that send no reply when they succeed (`'success-response': false`
/// in QEMU's `qga/qapi-schema.json`): an agent driver's [`Driver::execute`] sends them as
/// [`Driver::execute_no_reply`] does, so every client built on it completes them in silence.
pub const NO_SUCCESS_RESPONSE: &[&str] = &[
    "guest-shutdown",
    "guest-suspend-disk",
    "guest-suspend-ram",
    "guest-suspend-hybrid",
];

/// How long a command without a success reply is given to fail before its silence counts as
/// success, unless its options give it a deadline of its own
/// ([`Deadline::After`](super::Deadline::After) or [`At`](super::Deadline::At)); a shorter
/// [`DriverConfig::command_timeout`](super::DriverConfig::command_timeout) is used instead.
pub const NO_REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a command without a success reply that names no deadline of its own waits for
/// an error, given the command timeout: [`NO_REPLY_TIMEOUT`], or the command timeout if
/// shorter.
pub fn no_reply_timeout(command_timeout: Option<Duration>) -> Duration {
    command_timeout.map_or(NO_REPLY_TIMEOUT, |t| t.min(NO_REPLY_TIMEOUT))
}

/// Who is on the other end of a [`Driver`]. The agent's state shares the room of the QMP
/// server's greeting information, which an agent never sends: a QMP-only driver is no
/// larger for the dialect.
#[derive(Debug, Clone)]
pub(super) enum Peer {
    /// A QMP server, and what its greeting said once it came.
    Qmp(Option<ServerInfo>),
    /// The guest agent.
    #[cfg(feature = "agent")]
    Agent(Agent),
}

impl Peer {
    pub(super) fn server(&self) -> Option<&ServerInfo> {
        match self {
            Self::Qmp(server) => server.as_ref(),
            #[cfg(feature = "agent")]
            Self::Agent(_) => None,
        }
    }

    pub(super) fn server_mut(&mut self) -> Option<&mut ServerInfo> {
        match self {
            Self::Qmp(server) => server.as_mut(),
            #[cfg(feature = "agent")]
            Self::Agent(_) => None,
        }
    }

    pub(super) fn agent(&self) -> Option<&Agent> {
        match self {
            #[cfg(feature = "agent")]
            Self::Agent(agent) => Some(agent),
            Self::Qmp(_) => None,
        }
    }

    fn agent_mut(&mut self) -> Option<&mut Agent> {
        match self {
            #[cfg(feature = "agent")]
            Self::Agent(agent) => Some(agent),
            Self::Qmp(_) => None,
        }
    }
}

/// How many commands without a success reply may be in flight at once. While that many are,
/// an agent driver has no room ([`Driver::has_room`]) until one of them ends.
const MAX_SILENT: usize = 2;

/// The agent dialect's state within a [`Driver`].
#[derive(Debug, Clone)]
pub(super) struct Agent {
    /// SplitMix64 state: the next sync id derives from it.
    seed: u64,
    /// The next sync id is the first: the caller's own, `seed` itself.
    first: bool,
    /// The id of the sync whose reply is awaited.
    pending: Option<u64>,
    /// The pending sync's deadline passed.
    expired: bool,
    /// Syncs completed.
    syncs: u32,
    /// Sentinel bytes received.
    sentinels: u32,
    /// The latest time the driver was told.
    now: Instant,
    /// Commands whose success is silence (0: a free place).
    silent: [u64; MAX_SILENT],
}

/// What a sync sends before its id, and after.
const SYNC_HEAD: &[u8] = b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":";
const SYNC_TAIL: &[u8] = b"}}";

/// `{"execute":"guest-sync-delimited","arguments":{"id":N}}` into `buf`; returns its length.
/// (Iterators, not indexing: no panic paths in a freestanding build.)
fn sync_message(id: u64, buf: &mut [u8; 80]) -> usize {
    let mut digits = [0u8; 20];
    let mut n = id;
    let mut first = digits.len();
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
        first -= 1;
        if n == 0 {
            break;
        }
    }
    let bytes = SYNC_HEAD
        .iter()
        .chain(digits.iter().skip(first))
        .chain(SYNC_TAIL);
    let mut len = 0;
    for (dst, src) in buf.iter_mut().zip(bytes) {
        *dst = *src;
        len += 1;
    }
    len
}

impl Agent {
    fn new(seed: u64, now: Instant) -> Self {
        Self {
            seed,
            first: true,
            pending: None,
            expired: false,
            syncs: 0,
            sentinels: 0,
            now,
            silent: [0; MAX_SILENT],
        }
    }

    /// The next sync id (63 bits: the agent's `id` is a signed 64-bit integer).
    fn next_id(&mut self) -> u64 {
        let id = if self.first {
            self.first = false;
            self.seed
        } else {
            self.derive()
        };
        id & (i64::MAX as u64)
    }

    /// The next value of the SplitMix64 sequence seeded with the caller's id.
    fn derive(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Whether no sync is awaited.
    pub(super) fn is_synced(&self) -> bool {
        self.pending.is_none()
    }

    /// Whether the awaited sync's deadline passed.
    pub(super) fn is_expired(&self) -> bool {
        self.pending.is_some() && self.expired
    }
}

/// Whether `notice` is the reply to the sync that `peer` (an agent) waits for.
pub(super) fn awaits_sync_reply(peer: &Peer, notice: &Notice<'_>) -> bool {
    peer.agent()
        .is_some_and(|agent| agent.pending.is_some() && sync_reply(notice) == agent.pending)
}

/// The integer an unmatched `return` message carries, if the notice is one: perhaps a
/// sync's reply.
fn sync_reply(notice: &Notice<'_>) -> Option<u64> {
    match notice {
        Notice::UnmatchedReply(Message::Return(ret)) => ret.value.as_u64(),
        _ => None,
    }
}

/// Turns every sentinel byte into a line end; returns how many there were.
fn scrub<'a>(bytes: impl Iterator<Item = &'a mut u8>) -> u32 {
    let mut n = 0;
    for b in bytes.filter(|b| **b == AGENT_SENTINEL) {
        *b = b'\n';
        n += 1;
    }
    n
}

impl<R: Buffer, T: Buffer, Q: EventStore, const N: usize> Driver<R, T, Q, N> {
    /// A driver for QEMU's guest agent on a channel opened at `now`: no greeting, a sync
    /// instead. `sync_id` must be random (fresh for every connection): it tells this
    /// client's sync reply from a previous client's.
    ///
    /// `config` is used as given except: no negotiation, no greeting required, every
    /// command tagged with its id. [`DriverConfig::handshake_timeout`] bounds each sync.
    ///
    /// # The agent's rules, and where they come from
    /// QEMU's guest agent speaks QMP's wire format with different session rules. Read in QEMU's
    /// sources (`qga/main.c`, `qga/commands.c`, `qga/qapi-schema.json`, `qapi/qmp-dispatch.c`)
    /// and checked against the Debian `qemu-ga` 7.2.22 binary:
    ///
    /// - **No greeting, no negotiation, no events.** The agent reads commands as soon as the
    ///   channel opens and only ever writes replies (`qga/main.c`: `process_event` dispatches
    ///   each parsed object and sends its response; nothing else is written).
    /// - **Replies** are QMP's `{"return": …}` / `{"error": {"class", "desc"}}`, each on one line
    ///   ended by a bare `\n` (`send_response` appends `'\n'`, not QMP's `\r\n`); the command's
    ///   `"id"`, when given, is echoed as QMP does (`qapi/qmp-dispatch.c`), so replies are
    ///   matched by id as in QMP. Input errors (`JSON parse error, …`) come without an id.
    /// - **The channel outlives the client.** Over virtio-serial or a serial line the agent
    ///   keeps one byte stream across host connections: a previous client may have left half a
    ///   command in the agent's parser and unread replies in the pipe (`guest-sync` docs in
    ///   `qga/qapi-schema.json`). Over `unix-listen` each connection is fresh. On a serial
    ///   line the agent discards pending input when it opens the line (`tcflush` in
    ///   `qga/channel-posix.c`), so a sync sent before the agent is up is lost: it times out,
    ///   and the next attempt's sync skips the first one's late reply like any stale one.
    /// - **Synchronising** (`guest-sync-delimited` in `qga/qapi-schema.json`,
    ///   `qmp_guest_sync_delimited` in `qga/commands.c`): the client sends a 0xFF byte (which
    ///   makes the agent's JSON parser drop a half-read command: the agent answers it with an
    ///   id-less `JSON parse error, stray '\uFFFD'`), then `guest-sync-delimited` with a
    ///   random integer; the agent writes the byte 0xFF (`QGA_SENTINEL_BYTE`) right before that
    ///   reply. The client ignores every reply until the one that returns its integer, and
    ///   treats each 0xFF it receives as "reset your parser". The schema asks for this on every
    ///   connection and after every client-side timeout.
    /// - **Commands without a success reply**: `guest-shutdown`, `guest-suspend-disk`,
    ///   `guest-suspend-ram`, `guest-suspend-hybrid` are declared `'success-response': false`
    ///   (`qga/qapi-schema.json`; `guest-info` reports it per command); `qmp_dispatch` then sends
    ///   nothing when they succeed, and an error reply when they fail.
    ///
    /// # What the driver does with them
    /// - **The sync**: this constructor starts with no handshake but a sync: `0xFF` and
    ///   `{"execute":"guest-sync-delimited","arguments":{"id":N}}` are queued at once, and
    ///   [`Wait::Handshake`](crate::Wait::Handshake) ends ([`Done::Ready`](crate::Done::Ready))
    ///   when the reply returning `N` arrives, within [`DriverConfig::handshake_timeout`].
    ///   Everything before it (stale replies, the parse error our 0xFF causes, garbage) is
    ///   dropped and counted in [`Driver::dropped_messages`]. `N` comes from the caller (the core
    ///   has no random source); later syncs use the next values of a SplitMix64 sequence
    ///   seeded with it, kept within the agent's `int` range (63 bits).
    /// - **The sentinel**: every 0xFF received is turned into a line end before framing. The
    ///   agent writes only ASCII JSON, one message per line, so 0xFF is never part of a message;
    ///   as a line end it ends whatever stale fragment the framer holds (a `{` at the start of a
    ///   line restarts framing, a line end inside a string breaks it off), and the sync reply
    ///   after it is framed whole, wherever the bytes were split.
    /// - **Ids**: every command carries its id (the agent echoes it); sending without one is
    ///   off in this mode. Ids start at a random point derived from the sync id (not at 1), so
    ///   a previous client's stale reply, which may still be in the pipe while the first sync
    ///   is awaited, is not taken for one of ours (it is dropped as unmatched).
    /// - **Timeouts**: when a command's deadline passes, the driver queues a new sync (0xFF and
    ///   the next id) unless one is pending; the late reply is dropped by id as in QMP.
    ///   [`Driver::resync`] does it on demand (a client does it on every new connection).
    /// - **No reply on success**: [`Driver::execute_no_reply`] sends a command whose success is
    ///   silence. An error reply fails it as usual; a success reply (from an agent that sends
    ///   one) completes it; when its deadline passes in silence, or the channel closes after it
    ///   was written (the guest shut down), it completes as a success with the value `{}`.
    ///   Choose its deadline short: it is how long an error may take to come back.
    #[cfg(feature = "agent")]
    pub fn new_agent(
        rx: R,
        tx: T,
        events: Q,
        mut config: DriverConfig,
        sync_id: u64,
        now: Instant,
    ) -> Self {
        config.negotiate = false;
        config.oob = false;
        let agent = Agent::new(sync_id, now);
        // Command ids start at a random point (62 bits: they count up from there within
        // the agent's signed 64-bit integers), unlike any previous client's; derived from
        // the sync id on a sequence of its own.
        let first_id = Agent::new(sync_id ^ 0x5851_F42D_4C95_7F2D, now).derive() >> 2;
        config.session = config
            .session
            .enforce_negotiation(false)
            .untagged_when_alone(false);
        let mut driver = Self::new(rx, tx, events, config, now);
        driver.session.set_next_id(first_id.max(1));
        driver.outbox.set_resync_byte(AGENT_SENTINEL);
        driver.peer = Peer::Agent(agent);
        driver.resync(now);
        driver
    }

    /// Whether this driver speaks the guest agent dialect (`Driver::new_agent`, feature `agent`).
    pub fn is_agent(&self) -> bool {
        self.peer.agent().is_some()
    }

    /// Syncs with the agent completed so far (the first one is the handshake).
    pub fn agent_syncs(&self) -> u64 {
        self.peer.agent().map_or(0, |a| u64::from(a.syncs))
    }

    /// Sentinel bytes (0xFF) received from the agent so far.
    pub fn agent_sentinels(&self) -> u64 {
        self.peer.agent().map_or(0, |a| u64::from(a.sentinels))
    }

    /// The id of the sync awaited, if one is.
    pub fn agent_pending_sync(&self) -> Option<u64> {
        self.peer.agent().and_then(|a| a.pending)
    }

    /// Queues a new sync with the agent (0xFF, then `guest-sync-delimited` with the next id),
    /// bounded by [`DriverConfig::handshake_timeout`](super::DriverConfig::handshake_timeout) from `now`: wait for it with
    /// [`Wait::Handshake`](crate::Wait::Handshake). Commands queued after it keep their place
    /// behind it. Does nothing for a QMP driver, or once closed.
    pub fn resync(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        let Some(agent) = self.peer.agent_mut() else {
            return;
        };
        let id = agent.next_id();
        agent.pending = Some(id);
        agent.expired = false;
        agent.now = now;
        self.handshake_deadline = self.config.handshake_timeout.map(|t| now + t);
        self.outbox.owe_resync();
        let mut message = [0; 80];
        let len = sync_message(id, &mut message);
        // It is small; a transmit buffer too small for it makes the sync time out, which the
        // caller hears of.
        let _ = self.outbox.push_raw(&message[..len]);
    }

    /// Like [`execute`](Self::execute), for a command that sends no reply when it succeeds:
    /// it completes as a success (`{}`) when its deadline passes in silence or the channel
    /// closes after it, and fails with the agent's error reply if one comes first. An agent
    /// driver's `execute` does this by itself for the [`NO_SUCCESS_RESPONSE`] commands
    /// (`guest-shutdown`, `guest-suspend-*`). At most two such commands may be in flight
    /// ([`SendError::QueueFull`] for a third). The deadline is the options' own
    /// (`Deadline::After`, `Deadline::At`); otherwise [`NO_REPLY_TIMEOUT`], or the command
    /// timeout if shorter: silence must end somewhere, and soon.
    pub fn execute_no_reply<A: Serialize + ?Sized>(
        &mut self,
        name: &str,
        arguments: &A,
        options: SendOptions,
        now: Instant,
    ) -> Result<CommandId, SendError> {
        use super::Deadline;
        let silence = match options.deadline {
            Deadline::After(_) | Deadline::At(_) => options.deadline,
            Deadline::Default => Deadline::After(no_reply_timeout(self.config.command_timeout)),
            Deadline::Never => Deadline::After(NO_REPLY_TIMEOUT),
        };
        if self.peer.agent().is_some_and(|a| !a.silent.contains(&0)) {
            return Err(SendError::QueueFull);
        }
        let id = self.send_command(name, arguments, options.deadline(silence), now)?;
        if let Some(agent) = self.peer.agent_mut()
            && let Some(free) = agent.silent.iter_mut().find(|s| **s == 0)
        {
            *free = id.get();
        }
        Ok(id)
    }

    // ---- hooks the driver calls ----------------------------------------------------------

    /// A command left without an outcome of its own (abandoned, or dropped unwritten): if it
    /// was one without a success reply, its place is free again. Returns whether it was.
    pub(super) fn forget_silent(&mut self, id: CommandId) -> bool {
        let Some(agent) = self.peer.agent_mut() else {
            return false;
        };
        match agent.silent.iter_mut().find(|s| **s == id.get()) {
            Some(slot) => {
                *slot = 0;
                true
            }
            None => false,
        }
    }

    /// Whether a command without a success reply would find a place.
    pub(super) fn silent_room(&self) -> bool {
        self.peer.agent().is_none_or(|a| a.silent.contains(&0))
    }

    /// Bytes just read, before the framer sees them.
    pub(super) fn agent_read(&mut self, n: usize) {
        if let Some(agent) = self.peer.agent_mut() {
            let room = self.session.read_buf();
            let read = room.iter_mut().take(n);
            agent.sentinels = agent.sentinels.saturating_add(scrub(read));
        }
    }

    /// The time is `now`.
    pub(super) fn agent_timeout(&mut self, now: Instant) {
        let Some(agent) = self.peer.agent_mut() else {
            return;
        };
        agent.now = now;
        if agent.pending.is_some() && self.handshake_deadline.is_some_and(|d| d <= now) {
            agent.expired = true;
            self.handshake_deadline = None;
        }
    }

    /// The sync it waited for was answered: the agent's replies are in step again.
    pub(super) fn agent_synced(&mut self) {
        if let Some(agent) = self.peer.agent_mut() {
            agent.pending = None;
            agent.expired = false;
            agent.syncs = agent.syncs.saturating_add(1);
        }
        self.handshake_deadline = None;
    }

    /// Command `id`'s outcome was just held: silence is success for a command without a
    /// success reply, and a timeout calls for a sync.
    /// `unwritten`: part of the command never left the transmit buffer.
    pub(super) fn agent_outcome(&mut self, id: CommandId, unwritten: bool) {
        let failure = match self.held {
            Held::Failed(h, failure) if h == id => Some(failure),
            _ => None,
        };
        let Some(agent) = self.peer.agent_mut() else {
            return;
        };
        if let Some(slot) = agent.silent.iter_mut().find(|s| **s == id.get()) {
            *slot = 0;
            // Silence is success only for a command the agent got whole; one cut off fails
            // (and a timeout resyncs) as any other command does.
            match failure {
                Some(Failure::TimedOut | Failure::Disconnected) if unwritten => {}
                Some(Failure::TimedOut | Failure::Disconnected) => {
                    self.held = Held::Silent(id);
                    return;
                }
                _ => return,
            }
        }
        if failure == Some(Failure::TimedOut) && agent.pending.is_none() {
            let now = agent.now;
            self.resync(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_ids_fit_the_agents_int_and_differ() {
        let mut a = Agent::new(u64::MAX, Instant::ZERO);
        let first = a.next_id();
        assert_eq!(first, i64::MAX as u64);
        let second = a.next_id();
        let third = a.next_id();
        assert!(second <= i64::MAX as u64 && third <= i64::MAX as u64);
        assert_ne!(second, third);
        assert_ne!(first, second);
    }

    #[test]
    fn sync_messages() {
        for n in [0, 7, 10, 4242424242, u64::MAX] {
            let mut buf = [0; 80];
            let len = sync_message(n, &mut buf);
            let want = std::format!(
                "{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{n}}}}}"
            );
            assert_eq!(core::str::from_utf8(&buf[..len]).unwrap(), want);
        }
    }

    #[test]
    fn a_qmp_driver_pays_nothing_for_the_dialect() {
        // The agent's state lives where a QMP server's greeting information does.
        assert_eq!(
            core::mem::size_of::<Peer>(),
            core::mem::size_of::<Option<ServerInfo>>()
        );
    }

    #[test]
    fn sentinels_become_line_ends() {
        let mut bytes = *b"ab\xffc\xff";
        assert_eq!(scrub(bytes.iter_mut()), 2);
        assert_eq!(&bytes, b"ab\nc\n");
    }
}
