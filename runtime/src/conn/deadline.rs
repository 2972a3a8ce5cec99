//! A connection's deadline: which timeout is in force, and its entry in the
//! worker's timer wheel.

use std::time::Instant;

use super::{Activity, Conn, Phase};
use crate::handler::CloseReason;
use crate::options::ServerOptions;
use crate::timer::{Entry, TimerWheel};

impl<S> Conn<S> {
    /// Between messages with nothing to write: a keep-alive connection a
    /// drain may close.
    pub(crate) fn is_idle_keepalive(&self) -> bool {
        matches!(self.activity, Activity::Idle { .. })
            && self.input.is_empty()
            && self.output.is_empty()
            && !matches!(
                self.phase,
                Phase::Lingering { .. } | Phase::Connecting { .. }
            )
    }

    /// The deadline in force and the reason to close at it: lingering,
    /// stalled output, a message in progress, or idle between messages.
    /// `grace`: during a drain, an idle keep-alive connection closes at the
    /// end of the drain grace.
    pub(crate) fn deadline(
        &self,
        opts: &ServerOptions,
        grace: Option<Instant>,
    ) -> Option<(Instant, CloseReason)> {
        let own = self.own_deadline(opts);
        match grace {
            Some(g) if self.is_idle_keepalive() => match own {
                Some((at, reason)) if at < g => Some((at, reason)),
                _ => Some((g, CloseReason::Shutdown)),
            },
            _ => own,
        }
    }

    fn own_deadline(&self, opts: &ServerOptions) -> Option<(Instant, CloseReason)> {
        match self.phase {
            Phase::Lingering { since } => {
                return Some((since + opts.linger_timeout, CloseReason::Handler))
            }
            // The worker turns this close into the connect's failure
            // (`ConnectError::TimedOut`).
            Phase::Connecting { deadline, .. } => return Some((deadline, CloseReason::Error)),
            _ => {}
        }
        if !self.output.is_empty() {
            return opts
                .write_timeout
                .map(|t| (self.last_progress + t, CloseReason::WriteTimeout));
        }
        match self.activity {
            Activity::New { since } | Activity::Receiving { since } => opts
                .header_timeout
                .map(|t| (since + t, CloseReason::HeaderTimeout)),
            // Idle means nothing either way: bytes still being written
            // (a response streamed by timers, messages or an upstream)
            // keep the connection alive as bytes read do.
            Activity::Idle { since } => opts
                .idle_timeout
                .map(|t| (since.max(self.last_progress) + t, CloseReason::IdleTimeout)),
        }
    }

    /// Makes sure the wheel holds an entry for `key` no later than `at`.
    /// Deadlines that move later need no new entry: the old one fires, finds
    /// the deadline moved, and reschedules.
    pub(crate) fn arm(&mut self, wheel: &mut TimerWheel, key: usize, at: Instant) {
        let tick = wheel.tick_for(at);
        if self.scheduled.is_none_or(|s| tick < s) {
            self.scheduled = Some(wheel.schedule(key, self.generation, at));
        }
    }

    /// A wheel entry fired: whether it is this connection's live one (not
    /// superseded by an earlier entry, nor for an older connection in the
    /// slot). The connection then has no entry until re-armed.
    pub(crate) fn fired(&mut self, entry: &Entry) -> bool {
        if self.generation != entry.generation || self.scheduled != Some(entry.tick) {
            return false;
        }
        self.scheduled = None;
        true
    }

    /// Its wheel entry names an old slab key: forget it, to be re-armed.
    pub(crate) fn forget_timer(&mut self) {
        self.scheduled = None;
    }
}
