//! The worker's mailbox: messages posted by workers and other threads, and
//! offloaded jobs' results, handed to the handler between events.

use std::time::Instant;

use super::Worker;
use crate::context::{ConnHandle, CONNECTING};
use crate::handler::{CloseReason, Handler};
use crate::mailbox::Envelope;
use crate::panic;

/// Most messages handed to the handler in one turn; the rest waits for
/// the next turn, which comes at once.
const MESSAGE_BUDGET: usize = 256;

impl<H: Handler> Worker<H> {
    /// Hands what arrived in the mailbox to the handler, if anything was
    /// posted (one relaxed load when nothing was).
    #[inline]
    pub(super) fn deliver_messages(&mut self, now: Instant) {
        if self.inbox.take_notified() {
            self.deliver_posted(now);
        }
    }

    #[inline(never)]
    fn deliver_posted(&mut self, now: Instant) {
        for _ in 0..MESSAGE_BUDGET {
            let Some(envelope) = self.inbox.next() else {
                return;
            };
            self.counters.messages += 1;
            self.deliver(envelope, now);
            self.apply_ops(now);
        }
        self.inbox.renotify();
    }

    /// `on_message`, for the worker or a connection that is still open (a
    /// message for a closed one is dropped; one still connecting gets it
    /// without a state, as its timers do); a panic closes the connection.
    fn deliver(&mut self, envelope: Envelope, now: Instant) {
        let worker = self.info.index;
        let key = match envelope.conn {
            None => None,
            Some(id) => match self.live.get(&id) {
                Some(&key) if key != CONNECTING => Some(key),
                _ => return,
            },
        };
        let (state, handle) = match key {
            Some(key) => {
                let conn = &mut self.conns[key];
                let handle = ConnHandle::new(worker, conn.id());
                (conn.state_mut(), Some(handle))
            }
            None => (None, None),
        };
        let handler = &mut self.handler;
        let mut cx = context!(self, handle, now);
        let message = envelope.message;
        if let Err(text) = panic::catch(|| handler.on_message(state, message, &mut cx)) {
            self.handler_panicked(envelope.conn, "on_message", &text);
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
