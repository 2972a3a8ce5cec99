//! Writable edges and the low-water mark: when a connection watches for
//! writable edges, and when its handler hears that output has drained.

use std::time::Instant;

use super::Conn;
use crate::buffer::BufferPool;
use crate::handler::CloseReason;
use crate::metrics::Counters;

impl<S> Conn<S> {
    /// The readiness this connection is registered for.
    pub(crate) fn interest(&self) -> mio::Interest {
        if self.watch_writable {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        }
    }

    /// Flushes what is pending, counting writes and bytes in `counters`
    /// (of worker `worker`): whether the worker has more to do (the
    /// handler waits to stream more, or output was left behind and no
    /// writable edge is watched for). Nothing pending (the handler answered
    /// nothing yet, or only a writable edge came): no call into the write
    /// path, and no output can be left behind.
    ///
    /// # Errors
    ///
    /// The reason to close when the socket fails.
    #[inline(always)]
    pub(crate) fn flush_pending(
        &mut self,
        worker: usize,
        now: Instant,
        counters: &mut Counters,
    ) -> Result<bool, CloseReason> {
        let left_behind = self.unflushed() && {
            self.flush_quick(worker, now, counters)?;
            self.needs_writable_edges()
        };
        Ok(left_behind || self.awaits_writable())
    }

    /// A flush left output behind and no writable edge is watched for:
    /// the caller registers for them ([`watching_writable`](Self::watching_writable)).
    #[inline]
    pub(crate) fn needs_writable_edges(&self) -> bool {
        !self.watch_writable && self.unflushed()
    }

    /// Now registered for writable edges (`yes`), or readable ones only.
    pub(crate) fn watching_writable(&mut self, yes: bool) {
        self.watch_writable = yes;
    }

    /// After output was appended: remember whether it reached `low_water`.
    pub(crate) fn note_output(&mut self, low_water: usize) {
        if self.output.len() >= low_water {
            self.above_low_water = true;
        }
    }

    /// The handler asked to hear when the output is below the low-water
    /// mark (at once if it is).
    pub(crate) fn notify_writable(&mut self) {
        self.above_low_water = true;
    }

    /// Whether the output reached the low-water mark and the handler waits
    /// to hear when it falls below.
    #[inline]
    pub(crate) fn awaits_writable(&self) -> bool {
        self.above_low_water
    }

    /// Whether the output just fell below `low_water` after having reached
    /// it (then the handler hears of it once, and an output buffer is
    /// ready for it to append to).
    pub(crate) fn drained_below(&mut self, pool: &mut BufferPool, low_water: usize) -> bool {
        if !self.above_low_water || self.output.len() >= low_water {
            return false;
        }
        self.above_low_water = false;
        self.output_buffer(pool);
        true
    }
}
