//! What callbacks asked for besides their own connection's reply: queued
//! operations on connections by handle, and the handler's timers.

use std::time::Instant;

use super::Worker;
use crate::context::{ConnHandle, Op, CONNECTING};
use crate::handler::{CloseReason, Handler};
use crate::panic;

/// Most queued operations carried out in one go; the rest waits for the
/// next turn, which comes at once (callbacks that keep writing to each
/// other cannot hold the loop).
const OPS_BUDGET: usize = 1024;
/// Most handler timers fired in one turn.
const TIMER_BUDGET: usize = 256;

impl<H: Handler> Worker<H> {
    /// The slab key of connection `id`, if it is still open (and has a
    /// slot: not a connect still queued).
    fn live_conn(&self, id: u64) -> Option<usize> {
        self.live.get(&id).copied().filter(|&key| key != CONNECTING)
    }

    /// Carries out the operations callbacks queued, in order.
    #[inline]
    pub(super) fn apply_ops(&mut self, now: Instant) {
        if !self.ops.queue.is_empty() {
            self.apply_queued(now);
        }
    }

    #[inline(never)]
    fn apply_queued(&mut self, now: Instant) {
        // What the operations' own callbacks queue (a resumed connection's
        // `on_data`) joins the end of the queue and is carried out in this
        // pass too, up to the budget.
        let mut i = 0;
        while i < self.ops.queue.len().min(OPS_BUDGET) {
            let op = self.ops.queue[i];
            let then_more = i + 1 < OPS_BUDGET
                && self
                    .ops
                    .queue
                    .get(i + 1)
                    .is_some_and(|next| next.drives() && next.conn() == op.conn());
            self.apply(op, now, then_more);
            i += 1;
        }
        if i == self.ops.queue.len() {
            // All carried out (the common case): the arena holds the bytes
            // of queued writes only.
            self.ops.queue.clear();
            self.ops.bytes.clear();
        } else {
            self.ops.done(i);
        }
    }

    /// Carries out one operation; `then_more`: another operation on the
    /// same connection follows and drives it (flush after that one).
    fn apply(&mut self, op: Op, now: Instant, then_more: bool) {
        let id = match op {
            Op::Connect {
                conn,
                addr,
                timeout,
                tag,
            } => {
                // Closed before its connect was carried out: nothing to do.
                if self.live.contains_key(&conn) {
                    self.start_connect(conn, addr, timeout, tag, now);
                }
                return;
            }
            _ => op.conn(),
        };
        // Closed since the operation was queued: nothing to do.
        let Some(key) = self.live_conn(id) else {
            return;
        };
        let conn = &mut self.conns[key];
        match op {
            Op::Write { at, len, .. } => {
                conn.append(&mut self.pool, &self.ops.bytes[at..at + len]);
                conn.note_output(self.opts.output_low_water);
                // Sent with the turn's other queued writes, once its events
                // are handled: a proxy writing to its upstream after each
                // client's read would wake the upstream (on a shared CPU, it
                // preempts us) between one client and the next.
                if self.requeue.last() != Some(&key) {
                    self.requeue.push(key);
                }
                return;
            }
            // Closing a connection still connecting cancels the connect.
            Op::Close(_) if conn.connect_tag().is_some() => {
                return self.close(key, CloseReason::Handler, now)
            }
            // Driven at once: nothing queued after the close joins its flush.
            Op::Close(_) => {
                conn.close_after_flush(CloseReason::Handler);
                return self.drive(key, now);
            }
            Op::Pause(_) => {
                conn.pause();
                return;
            }
            Op::Resume(_) => {
                conn.resume();
                if conn.has_input() && conn.takes_input() {
                    // Bytes read before the pause wait unconsumed: no new
                    // edge will bring them back to the handler.
                    if let Err(reason) = self.call_handler(key, now) {
                        return self.close(key, reason, now);
                    }
                }
            }
            Op::NotifyWritable(_) => conn.notify_writable(),
            Op::Connect { .. } => unreachable!("handled above"),
        }
        if then_more {
            return;
        }
        self.drive_output(key, now);
    }

    /// Fires the handler timers that are due, at most `TIMER_BUDGET` a turn.
    pub(super) fn fire_handler_timers(&mut self, now: Instant) {
        // Most servers set no timer: not even a look at the clock's tick.
        if self.timers.wheel.is_empty() && self.due_timers.is_empty() {
            return;
        }
        let mut due = std::mem::take(&mut self.due_timers);
        self.timers.wheel.expire(now, &mut due);
        let done = due.len().min(TIMER_BUDGET);
        for entry in due.drain(..done) {
            let Some(timer) = self.timers.take(&entry) else {
                continue; // cancelled
            };
            match timer.conn {
                None => self.call_timer(None, timer.tag, now),
                // A timer of a closed connection never fires.
                Some(id) => {
                    if let Some(key) = self.live_conn(id) {
                        self.call_timer(Some(key), timer.tag, now);
                    }
                }
            }
            self.apply_ops(now);
        }
        self.due_timers = due;
    }

    /// `on_timer` for connection `key` (or the worker); a panic in it closes
    /// the connection.
    fn call_timer(&mut self, key: Option<usize>, tag: u64, now: Instant) {
        let worker = self.info.index;
        let (state, handle, id) = match key {
            Some(key) => {
                let conn = &mut self.conns[key];
                let id = conn.id();
                (
                    conn.state_mut(),
                    Some(ConnHandle::new(worker, id)),
                    Some(id),
                )
            }
            None => (None, None, None),
        };
        let handler = &mut self.handler;
        let mut cx = context!(self, handle, now);
        if let Err(message) = panic::catch(|| handler.on_timer(state, tag, &mut cx)) {
            self.handler_panicked(id, "on_timer", &message);
            if let Some(key) = key {
                self.close(key, CloseReason::Panic, now);
            }
            return;
        }
        if let Some(key) = key {
            // What it wrote to its own connection goes out now.
            self.drive(key, now);
        }
    }
}
