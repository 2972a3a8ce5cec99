//! `slab_shrink`: after a spike, when the connection table has stayed under
//! a quarter full for `reclaim_after`, moves the connections to the front
//! (re-registering each under its new token) and frees the rest.

use std::time::Instant;

use super::{elapsed_nanos, Worker};
use crate::conn::ConnToken;
use crate::handler::Handler;
use crate::probes::{self, GcKind};

/// Tables this small are never shrunk.
const MIN_CAPACITY: usize = 1024;

impl<H: Handler> Worker<H> {
    pub(super) fn maybe_shrink_slab(&mut self, now: Instant) {
        let cap = self.conns.capacity();
        if cap <= MIN_CAPACITY || self.conns.len() * 4 > cap || !self.requeue.is_empty() {
            self.slab_low_since = None;
            return;
        }
        let since = *self.slab_low_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.opts.reclaim_after {
            self.shrink_slab();
        }
    }

    pub(super) fn shrink_slab(&mut self) {
        let started = Instant::now();
        probes::gc_start(self.info.index, GcKind::SlabShrink);
        let before = self.conns.capacity();
        let registry = self.poll.registry();
        let live = &mut self.live;
        let mut moved = Vec::new();
        self.conns.compact(|conn, _from, to| {
            let token = ConnToken {
                key: to,
                generation: conn.generation(),
            }
            .into();
            let interest = conn.interest();
            if registry
                .reregister(conn.stream_mut(), token, interest)
                .is_err()
            {
                return false; // keep it where it is; its old token still works
            }
            // Timer entries name the old key: file a new one. Handles name
            // the connection's id, which now resolves to the new key.
            conn.forget_timer();
            live.insert(conn.id(), to);
            moved.push(to);
            true
        });
        self.live.shrink_to_fit();
        for key in moved {
            self.update_timer(key);
        }
        let freed_timer = self.wheel.shrink();
        self.requeue.shrink_to_fit();
        self.due.shrink_to_fit();
        let freed = before - self.conns.capacity();
        self.slab_low_since = None;
        self.counters.slab_shrinks += 1;
        tracing::debug!(
            worker = self.info.index,
            before,
            after = self.conns.capacity(),
            freed_timer,
            "connection table shrunk"
        );
        probes::gc_done(
            self.info.index,
            GcKind::SlabShrink,
            freed,
            elapsed_nanos(started),
        );
    }
}
