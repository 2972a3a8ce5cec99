//! `idle_sweep`: deadlines on the timer wheel, and the expiry pass that
//! closes connections past theirs (header, idle, write-stall, linger, and
//! the drain grace).

use std::time::Instant;

use super::{elapsed_nanos, Worker};
use crate::handler::{CloseReason, Handler};
use crate::probes::{self, GcKind};

/// Most connections one pass of timer expiry closes; the rest is closed on
/// the following turns, between other connections' events.
const EXPIRY_BUDGET: usize = 256;

impl<H: Handler> Worker<H> {
    /// Connection `key`'s next deadline, with the drain grace applied.
    fn deadline(&self, key: usize) -> Option<(Instant, CloseReason)> {
        self.conns[key].deadline(&self.opts, self.drain_grace_until)
    }

    /// Makes sure the wheel holds an entry no later than the connection's
    /// current deadline.
    #[inline]
    pub(super) fn update_timer(&mut self, key: usize) {
        self.conns[key].update_timer(&mut self.wheel, key, &self.opts, self.drain_grace_until);
    }

    pub(super) fn expire_timers(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.expire(now, &mut due);
        if due.is_empty() {
            self.due = due;
            return;
        }
        let started = Instant::now();
        probes::gc_start(self.info.index, GcKind::IdleSweep);
        let mut closed = 0usize;
        let mut done = 0;
        for entry in &due {
            if closed == EXPIRY_BUDGET {
                // Closing thousands at once (a slowloris herd timing out
                // together) would stall everyone else for milliseconds:
                // the rest waits for the next turn, which comes at once.
                break;
            }
            done += 1;
            let Some(conn) = self.conns.get_mut(entry.key) else {
                continue;
            };
            if !conn.fired(entry) {
                continue; // stale: superseded by an earlier entry, or a reused slot
            }
            match self.deadline(entry.key) {
                Some((at, reason)) if at <= now => {
                    self.close(entry.key, reason, now);
                    closed += 1;
                }
                _ => self.update_timer(entry.key),
            }
        }
        due.drain(..done);
        self.due = due;
        self.counters.idle_sweeps += 1;
        probes::gc_done(
            self.info.index,
            GcKind::IdleSweep,
            closed,
            elapsed_nanos(started),
        );
    }
}
