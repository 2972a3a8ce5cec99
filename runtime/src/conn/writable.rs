//! Writable edges and the low-water mark: when a connection watches for
//! writable edges, and when its handler hears that output has drained.

use super::Conn;
use crate::buffer::BufferPool;

impl<S> Conn<S> {
    /// The readiness this connection is registered for.
    pub(crate) fn interest(&self) -> mio::Interest {
        if self.watch_writable {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        }
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
