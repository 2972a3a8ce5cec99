//! Serving one connection in a turn: read and hand the bytes to the
//! handler under the read budget and the output high-water mark, flush the
//! replies with whatever was pending, then do what the connection says
//! comes next.

use std::time::Instant;

use super::Worker;
use crate::conn::{ConnToken, Next, ReadOutcome};
use crate::context::ConnHandle;
use crate::handler::{CloseReason, ConnectError, Handler};
use crate::panic;
use crate::probes;

/// Most `on_writable` calls for one connection per turn.
const WRITABLE_BUDGET: usize = 16;

impl<H: Handler> Worker<H> {
    /// Does all the work a connection has: read and hand bytes to the
    /// handler, flush the replies and any output pending from before,
    /// close if it is done.
    pub(super) fn drive(&mut self, key: usize, now: Instant) {
        if let Err(reason) = self.drive_io(key, now) {
            self.close(key, reason, now);
            return;
        }
        self.settle(key, now);
    }

    /// [`drive`](Self::drive) after an operation on the connection's
    /// behalf (a write, a resume): when it has nothing to read, only a
    /// flush, not the read-and-flush-again of a readable connection.
    pub(super) fn drive_output(&mut self, key: usize, now: Instant) {
        if self.conns[key].wants_read() {
            return self.drive(key, now);
        }
        if let Err(reason) = self.flush(key, now) {
            self.close(key, reason, now);
            return;
        }
        self.settle(key, now);
    }

    /// After serving: close the connection if it is done, else return the
    /// buffers it no longer needs and re-arm its timer.
    #[inline(always)]
    fn settle(&mut self, key: usize, now: Instant) {
        let drain_idle =
            self.draining_until.is_some() && self.drain_grace_until.is_none_or(|g| now >= g);
        // One look-up of the connection for all three steps.
        let conn = &mut self.conns[key];
        match conn.next(drain_idle) {
            Next::Keep => {}
            Next::Close(reason) => return self.close(key, reason, now),
            Next::Linger => return self.start_linger(key, now),
        }
        conn.release_buffers(&mut self.pool);
        conn.update_timer(&mut self.wheel, key, &self.opts, self.drain_grace_until);
    }

    fn drive_io(&mut self, key: usize, now: Instant) -> Result<(), CloseReason> {
        let high_water = self.opts.output_high_water;
        let mut reads = 0;
        loop {
            // Read first, then flush what is pending (from before and from
            // this read) together: output left from before is no reason
            // not to read, unless it is over the high-water mark, which
            // `read_some` checks.
            let backpressure = self.read_some(key, now, &mut reads)?;
            self.flush(key, now)?;
            // Reading stopped at the high-water mark with bytes possibly left
            // in the socket, for which no new edge will come. If the flush
            // made room, read on now; if not, the writable edge resumes us.
            if !backpressure || self.conns[key].pending_output() >= high_water {
                return Ok(());
            }
        }
    }

    /// Reads and hands bytes to the handler until the socket drains, the
    /// budget runs out (the connection is requeued) or the output reaches the
    /// high-water mark (returns `true`).
    fn read_some(
        &mut self,
        key: usize,
        now: Instant,
        reads: &mut usize,
    ) -> Result<bool, CloseReason> {
        loop {
            let conn = &mut self.conns[key];
            if !conn.wants_read() {
                return Ok(false);
            }
            if conn.pending_output() >= self.opts.output_high_water {
                // Backpressure: the connection stays readable.
                return Ok(true);
            }
            if *reads == self.opts.read_budget {
                self.requeue.push(key);
                return Ok(false);
            }
            *reads += 1;
            match conn.read(
                &mut self.pool,
                self.opts.max_input,
                (self.info.index, &mut self.counters),
            )? {
                ReadOutcome::Bytes(n) => {
                    self.counters.bytes_read += n as u64;
                    self.counters.reads += 1;
                    probes::read(self.info.index, conn.fd(), conn.id(), n);
                    self.call_handler(key, now)?;
                }
                ReadOutcome::Eof => {
                    if conn.has_input() {
                        // Let the handler see that no more bytes will come.
                        self.call_handler(key, now)?;
                    }
                    return Ok(false);
                }
                ReadOutcome::Drained => return Ok(false),
                ReadOutcome::Again => {}
            }
        }
    }

    /// `on_data` for connection `key`; a panic in it closes the connection.
    pub(super) fn call_handler(&mut self, key: usize, now: Instant) -> Result<(), CloseReason> {
        let draining = self.leaving;
        let handler = &mut self.handler;
        let conn = &mut self.conns[key];
        let handle = ConnHandle::new(self.info.index, conn.id());
        let mut cx = context!(self, Some(handle), now);
        let called = conn.call(&mut self.pool, draining, now, |state, input, output| {
            handler.on_data(state, input, output, &mut cx)
        });
        if let Err(message) = called {
            let id = conn.id();
            self.handler_panicked(Some(id), "on_data", &message);
            return Err(CloseReason::Panic);
        }
        conn.note_output(self.opts.output_low_water);
        Ok(())
    }

    #[inline]
    fn flush(&mut self, key: usize, now: Instant) -> Result<(), CloseReason> {
        let conn = &mut self.conns[key];
        // Nothing to write (the handler answered nothing yet, or only a
        // writable edge came): no call into the write path, and no output
        // can be left behind.
        let left_behind = conn.unflushed() && {
            let (writes, bytes) = conn.flush(self.info.index, now)?;
            self.counters.writes += writes;
            self.counters.bytes_written += bytes;
            conn.needs_writable_edges()
        };
        if left_behind || conn.awaits_writable() {
            return self.after_partial_flush(key, now);
        }
        Ok(())
    }

    /// Off the common path: the handler waits to stream more, or output
    /// was left behind (then watch writable edges: after streaming, which
    /// may leave output behind too).
    #[inline(never)]
    fn after_partial_flush(&mut self, key: usize, now: Instant) -> Result<(), CloseReason> {
        if self.conns[key].awaits_writable() {
            self.stream_more(key, now)?;
        }
        if self.conns[key].needs_writable_edges() {
            self.watch_writable(key, true)?;
        }
        Ok(())
    }

    /// Registers connection `key` for writable edges too (`yes`: the socket
    /// is full and output waits), or readable ones only.
    pub(super) fn watch_writable(&mut self, key: usize, yes: bool) -> Result<(), CloseReason> {
        let conn = &mut self.conns[key];
        conn.watching_writable(yes);
        if self.unregistered == Some(key) {
            // Registered with this interest once its first turn is over.
            return Ok(());
        }
        let token = ConnToken {
            key,
            generation: conn.generation(),
        }
        .into();
        let interest = conn.interest();
        // Modifying re-checks readiness: space freed since the short write
        // is reported, not lost.
        self.poll
            .registry()
            .reregister(conn.stream_mut(), token, interest)
            .map_err(|_| CloseReason::Error)
    }

    /// Streaming: while the output is below the low-water mark and the
    /// socket takes what `on_writable` adds, asks for more, a bounded
    /// number of times per turn (then resumes next turn).
    #[inline(never)]
    fn stream_more(&mut self, key: usize, now: Instant) -> Result<(), CloseReason> {
        for _ in 0..WRITABLE_BUDGET {
            let low_water = self.opts.output_low_water;
            if !self.conns[key].drained_below(&mut self.pool, low_water) {
                return Ok(());
            }
            self.call_writable(key, now)?;
            let (writes, bytes) = self.conns[key].flush(self.info.index, now)?;
            self.counters.writes += writes;
            self.counters.bytes_written += bytes;
        }
        self.requeue.push(key);
        Ok(())
    }

    /// `on_writable` for connection `key`; a panic in it closes the
    /// connection.
    fn call_writable(&mut self, key: usize, now: Instant) -> Result<(), CloseReason> {
        let conn = &mut self.conns[key];
        let id = conn.id();
        let handle = ConnHandle::new(self.info.index, id);
        let Some((state, output)) = conn.state_and_output() else {
            return Ok(());
        };
        let handler = &mut self.handler;
        let mut cx = context!(self, Some(handle), now);
        if let Err(message) = panic::catch(|| handler.on_writable(state, output, &mut cx)) {
            self.handler_panicked(Some(id), "on_writable", &message);
            return Err(CloseReason::Panic);
        }
        self.conns[key].note_output(self.opts.output_low_water);
        Ok(())
    }

    fn start_linger(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        if conn.start_linger(now).is_err() {
            self.close(key, CloseReason::Handler, now);
            return;
        }
        conn.release_buffers(&mut self.pool);
        self.update_timer(key);
        self.requeue.push(key);
    }

    pub(super) fn close(&mut self, key: usize, reason: CloseReason, now: Instant) {
        if let Some(tag) = self.conns[key].connect_tag() {
            // A connect in progress past its deadline, or a shutdown: the
            // handler hears it as the connect's failure. (A handler's
            // close cancels it, a panic in `on_connected` ends it: closed
            // below, without a state to hand back.)
            let error = match reason {
                CloseReason::Shutdown => Some(ConnectError::Shutdown),
                CloseReason::Handler | CloseReason::Panic => None,
                _ => Some(ConnectError::TimedOut),
            };
            if let Some(error) = error {
                let id = self.conns[key].id();
                return self.connect_failed(Some(key), id, tag, error, now);
            }
        }
        let mut conn = self.conns.remove(key);
        let id = conn.id();
        self.live.remove(&id);
        probes::close(self.info.index, conn.fd(), id, reason.as_cstr());
        let state = conn.finish(&mut self.pool);
        // Closes the descriptor, which also removes it from the epoll set:
        // no epoll_ctl(DEL) needed.
        drop(conn);
        self.counters.active -= 1;
        self.counters.closed[reason.index()] += 1;
        if let Some(state) = state {
            let handler = &mut self.handler;
            let mut cx = context!(self, None, now);
            if let Err(message) = panic::catch(|| handler.on_close(state, reason, &mut cx)) {
                self.handler_panicked(Some(id), "on_close", &message);
            }
        }
        self.room_freed();
    }
}
