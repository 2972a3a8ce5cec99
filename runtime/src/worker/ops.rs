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
        // What the operations' own callbacks queue goes to the spare pair
        // meanwhile.
        let spare_queue = std::mem::take(&mut self.ops.spare_queue);
        let spare_bytes = std::mem::take(&mut self.ops.spare_bytes);
        let mut queue = std::mem::replace(&mut self.ops.queue, spare_queue);
        let mut bytes = std::mem::replace(&mut self.ops.bytes, spare_bytes);
        let done = queue.len().min(OPS_BUDGET);
        for i in 0..done {
            // Writes to one connection in a row (a response's head, then
            // its body) go out in one flush, after the last of them.
            let then_more = match (queue[i], queue.get(i + 1)) {
                (Op::Write { conn, .. }, Some(Op::Write { conn: next, .. })) => {
                    i + 1 < done && conn == *next
                }
                _ => false,
            };
            self.apply(queue[i], &bytes, now, then_more);
        }
        queue.drain(..done);
        if queue.is_empty() {
            bytes.clear();
        }
        // What the callbacks queued comes after the rest; its offsets move
        // by what stays of this arena.
        let shift = bytes.len();
        for op in &mut self.ops.queue {
            if let Op::Write { at, .. } = op {
                *at += shift;
            }
        }
        queue.append(&mut self.ops.queue);
        bytes.append(&mut self.ops.bytes);
        // Emptied, with their capacity: the spares for next time.
        self.ops.spare_queue = std::mem::replace(&mut self.ops.queue, queue);
        self.ops.spare_bytes = std::mem::replace(&mut self.ops.bytes, bytes);
    }

    /// Carries out one operation; `then_more`: another write to the same
    /// connection follows (flush after that one).
    fn apply(&mut self, op: Op, bytes: &[u8], now: Instant, then_more: bool) {
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
            Op::Write { conn, .. }
            | Op::Close(conn)
            | Op::Pause(conn)
            | Op::Resume(conn)
            | Op::NotifyWritable(conn) => conn,
        };
        // Closed since the operation was queued: nothing to do.
        let Some(key) = self.live_conn(id) else {
            return;
        };
        let conn = &mut self.conns[key];
        match op {
            Op::Write { at, len, .. } => {
                conn.append(&mut self.pool, &bytes[at..at + len]);
                conn.note_output(self.opts.output_low_water);
                if then_more {
                    return;
                }
            }
            // Closing a connection still connecting cancels the connect.
            Op::Close(_) if conn.connect_tag().is_some() => {
                return self.close(key, CloseReason::Handler, now)
            }
            Op::Close(_) => conn.close_after_flush(CloseReason::Handler),
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
        self.drive(key, now);
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
