//! The handshake's negotiation step, and starting over when the server restarts.

use super::{Buffer, Driver, EventStore, ServerInfo, agent};

impl<R: Buffer, T: Buffer, Q: EventStore, const N: usize> Driver<R, T, Q, N> {
    /// How many times the server restarted mid-session (a second greeting on the link, as
    /// when QEMU restarts at the far end of a serial line), so far. Each time the session
    /// started over: the commands in flight failed with
    /// [`Failure::ServerRestarted`](crate::Failure::ServerRestarted) and the handshake was
    /// done again (if it had negotiated before, by itself or through
    /// [`negotiate`](Self::negotiate), with the same `oob` setting), within a new handshake deadline
    /// counted from the greeting's arrival; commands sent meanwhile wait for it as they wait
    /// for room. Events from before the restart stay queued.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Whether the handshake is being done again after a restart: commands wait for it as
    /// they wait for room ([`SendError::QueueFull`](crate::SendError::QueueFull), then
    /// [`Wait::Room`](crate::Wait::Room)), within their own deadline.
    pub(super) fn rehandshaking(&self) -> bool {
        self.restarts > 0 && !self.is_ready() && !self.is_closed()
    }

    /// A greeting came: what it says is kept, and `qmp_capabilities` is queued when
    /// `negotiate` (with `oob` when offered and configured).
    pub(super) fn greeted(&mut self, server: ServerInfo, oob_offered: bool, negotiate: bool) {
        // (Irrefutable without the feature `agent`: then a QMP server is the only peer.)
        #[allow(irrefutable_let_patterns)]
        if let agent::Peer::Qmp(known) = &mut self.peer {
            *known = Some(server);
        }
        if negotiate && self.negotiation.is_none() {
            let oob = self.config.oob && oob_offered;
            let deadline = self.handshake_deadline;
            // The transmit buffer holds at least `qmp_capabilities`; if it did not, the
            // handshake would time out, which the caller hears of.
            if let Ok(id) = self.encode(false, |s, out| s.negotiate(oob, deadline, out)) {
                self.negotiation = Some(id);
            }
        }
    }

    /// The server restarted ([`Notice::SecondGreeting`](crate::Notice::SecondGreeting); the
    /// session has already started over): the handshake begins again, with a deadline from
    /// the greeting's arrival.
    pub(super) fn restarted(&mut self, server: ServerInfo, oob_offered: bool) {
        self.restarts += 1;
        // Negotiated before (by the driver, or through `negotiate`): again, the same way.
        let negotiate = self.config.negotiate || self.negotiation.is_some();
        // A negotiation still in flight stays the handshake's (see `Table::restart`).
        if self
            .negotiation
            .is_some_and(|id| !self.session.is_pending(id))
        {
            self.negotiation = None;
        }
        self.handshake_deadline = self
            .config
            .handshake_timeout
            .map(|t| self.last_activity + t);
        self.greeted(server, oob_offered, negotiate);
    }
}
