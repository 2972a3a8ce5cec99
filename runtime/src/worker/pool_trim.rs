//! `pool_trim`: frees the idle pooled buffers beyond the pool's bound once
//! it has held them for `reclaim_after`.

use std::time::Instant;

use super::{elapsed_nanos, Worker};
use crate::handler::Handler;
use crate::probes::{self, GcKind};

impl<H: Handler> Worker<H> {
    pub(super) fn trim_pool(&mut self) {
        let started = Instant::now();
        probes::gc_start(self.info.index, GcKind::PoolTrim);
        let freed = self.pool.trim();
        self.counters.pool_trims += 1;
        probes::gc_done(
            self.info.index,
            GcKind::PoolTrim,
            freed,
            elapsed_nanos(started),
        );
    }
}
