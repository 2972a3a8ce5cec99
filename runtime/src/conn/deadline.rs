//! A connection's deadline: which timeout is in force, and its entry in the
//! worker's timer wheel.

use std::time::Instant;

use super::{Activity, Conn, Phase};
use crate::handler::CloseReason;
use crate::options::ServerOptions;
use crate::timer::{Entry, TimerWheel};

/// Which timeout sets a connection's deadline. Under one rule the deadline
/// only moves later: its base (when the message began, when output or the
/// connection last made progress) is a time that only grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    Linger,
    Connect,
    Write,
    Header,
    Idle,
}

impl<S> Conn<S> {
    /// The rule that sets the deadline now (ignoring a drain's grace).
    #[inline]
    fn rule(&self) -> Rule {
        match self.phase {
            Phase::Lingering { .. } => Rule::Linger,
            Phase::Connecting { .. } => Rule::Connect,
            _ if self.unflushed() => Rule::Write,
            _ => match self.activity {
                Activity::New { .. } | Activity::Receiving { .. } => Rule::Header,
                Activity::Idle { .. } => Rule::Idle,
            },
        }
    }

    /// Makes sure the wheel holds an entry for `key` no later than the
    /// deadline in force (see [`deadline`](Self::deadline)). The common
    /// case, a request answered on a keep-alive connection, costs a
    /// comparison: the rule is the one last armed for, so the deadline
    /// only moved later and the entry in the wheel still comes first.
    #[inline]
    pub(crate) fn update_timer(
        &mut self,
        wheel: &mut TimerWheel,
        key: usize,
        opts: &ServerOptions,
        grace: Option<Instant>,
    ) {
        let rule = self.rule();
        if grace.is_none() && self.scheduled.is_some() && self.armed_rule == Some(rule) {
            return;
        }
        self.rearm(wheel, key, opts, grace, rule);
    }

    #[inline(never)]
    fn rearm(
        &mut self,
        wheel: &mut TimerWheel,
        key: usize,
        opts: &ServerOptions,
        grace: Option<Instant>,
        rule: Rule,
    ) {
        if let Some((at, _)) = self.deadline(opts, grace) {
            self.arm(wheel, key, at);
        }
        // Under a drain's grace the deadline can move earlier: no shortcut.
        self.armed_rule = grace.is_none().then_some(rule);
    }

    /// Between messages with nothing to write: a keep-alive connection a
    /// drain may close.
    pub(crate) fn is_idle_keepalive(&self) -> bool {
        matches!(self.activity, Activity::Idle { .. })
            && self.input.is_empty()
            && !self.unflushed()
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
        if self.unflushed() {
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
    fn arm(&mut self, wheel: &mut TimerWheel, key: usize, at: Instant) {
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
