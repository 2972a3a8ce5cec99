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

/// `on_data` for `$conn` (connection `self.conns[key]`, borrowed by the
/// caller), with a context made of the worker's other fields: what
/// [`call_handler`](Worker::call_handler) does, written out where the
/// caller already holds the connection. A panic in it closes the
/// connection: the caller returns `Err(CloseReason::Panic)` (a `return`
/// here, so that the connection stays borrowed on the other way).
macro_rules! on_data {
    ($w:ident, $conn:ident, $now:expr) => {{
        let draining = $w.leaving;
        let handler = &mut $w.handler;
        let handle = ConnHandle::new($w.info.index, $conn.id());
        let mut cx = context!($w, Some(handle), $now);
        let called = $conn.call(&mut $w.pool, draining, $now, |state, input, output| {
            handler.on_data(state, input, output, &mut cx)
        });
        if let Err(message) = called {
            let id = $conn.id();
            $w.handler_panicked(Some(id), "on_data", &message);
            return Err(CloseReason::Panic);
        }
        $conn.note_output($w.opts.output_low_water);
    }};
}

/// Ends `$conn`'s turn (connection `self.conns[key]`, borrowed by the
/// caller): [`Conn::settle`](crate::conn::Conn::settle), then closes or
/// lingers it if it is done.
macro_rules! settle {
    ($w:ident, $conn:ident, $key:expr, $drain_idle:expr, $now:expr) => {{
        let next = $conn.settle(
            $drain_idle,
            &mut $w.pool,
            (&mut $w.wheel, $key),
            &$w.opts,
            $w.drain_grace_until,
        );
        $w.after_settle($key, next, $now);
    }};
}

/// Most `on_writable` calls for one connection per turn.
const WRITABLE_BUDGET: usize = 16;

impl<H: Handler> Worker<H> {
    /// Does all the work a connection has: read and hand bytes to the
    /// handler, flush the replies and any output pending from before,
    /// close if it is done.
    pub(super) fn drive(&mut self, key: usize, now: Instant) {
        let mut reads = 0;
        loop {
            match self.serve(key, now, &mut reads) {
                Ok(true) => {}
                Ok(false) => return,
                Err(reason) => return self.close(key, reason, now),
            }
        }
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
        let drain_idle = self.drain_idle(now);
        let conn = &mut self.conns[key];
        settle!(self, conn, key, drain_idle, now);
    }

    /// Whether a drain is closing idle keep-alive connections now.
    #[inline(always)]
    fn drain_idle(&self, now: Instant) -> bool {
        self.draining_until.is_some() && self.drain_grace_until.is_none_or(|g| now >= g)
    }

    /// Closes or lingers a connection that [`Conn::settle`] says is done.
    #[inline(always)]
    fn after_settle(&mut self, key: usize, next: Next, now: Instant) {
        match next {
            Next::Keep => {}
            Next::Close(reason) => self.close(key, reason, now),
            Next::Linger => self.start_linger(key, now),
        }
    }

    /// One round of [`drive`](Self::drive): reads and hands bytes to the
    /// handler until the socket drains, the budget runs out (the
    /// connection is requeued) or the output reaches the high-water mark;
    /// then flushes what is pending (from before and from these reads)
    /// together: output left from before is no reason not to read, unless
    /// it is over the high-water mark. Then, if reading stopped at the
    /// high-water mark and the flush made room, `Ok(true)`: read on (bytes
    /// may be left in the socket, for which no new edge will come); else
    /// the connection is settled (closed if done, or its buffers returned
    /// and its timer re-armed; if the flush made no room, the writable edge
    /// resumes it).
    ///
    /// The connection is looked up once for all of it: the handler's call
    /// is written out here, its context made of the worker's other fields.
    #[inline(always)]
    fn serve(&mut self, key: usize, now: Instant, reads: &mut usize) -> Result<bool, CloseReason> {
        let drain_idle = self.drain_idle(now);
        let high_water = self.opts.output_high_water;
        let conn = &mut self.conns[key];
        let backpressure = loop {
            if !conn.wants_read() {
                break false;
            }
            if conn.pending_output() >= high_water {
                // Backpressure: the connection stays readable.
                break true;
            }
            if *reads == self.opts.read_budget {
                self.requeue.push(key);
                break false;
            }
            *reads += 1;
            let eof = match conn.read(
                &mut self.pool,
                self.opts.max_input,
                (self.info.index, &mut self.counters),
            )? {
                ReadOutcome::Bytes(n) => {
                    self.counters.bytes_read += n as u64;
                    self.counters.reads += 1;
                    probes::read(self.info.index, conn.fd(), conn.id(), n);
                    false
                }
                // Let the handler see that no more bytes will come.
                ReadOutcome::Eof if conn.has_input() => true,
                ReadOutcome::Eof | ReadOutcome::Drained => break false,
                ReadOutcome::Again => continue,
            };
            on_data!(self, conn, now);
            if eof {
                break false;
            }
        };
        let conn = if conn.flush_pending(self.info.index, now, &mut self.counters)? {
            self.after_partial_flush(key, now)?;
            &mut self.conns[key]
        } else {
            conn
        };
        if backpressure && conn.pending_output() < high_water {
            return Ok(true);
        }
        settle!(self, conn, key, drain_idle, now);
        Ok(false)
    }

    /// `on_data` for connection `key`; a panic in it closes the connection.
    pub(super) fn call_handler(&mut self, key: usize, now: Instant) -> Result<(), CloseReason> {
        let conn = &mut self.conns[key];
        on_data!(self, conn, now);
        Ok(())
    }

    /// Flushes connection `key`'s pending output (a writable edge, or
    /// output written on its behalf).
    fn flush(&mut self, key: usize, now: Instant) -> Result<(), CloseReason> {
        if self.conns[key].flush_pending(self.info.index, now, &mut self.counters)? {
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
