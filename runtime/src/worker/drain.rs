//! Stopping: a graceful shutdown of the whole server, one worker stopping
//! on its own, or the process handing its address over. The listener
//! closes (its queue accepted first, or migrated by the group), idle
//! keep-alive connections get one more read and the drain grace, the rest
//! finish their messages until the shutdown deadline.

use std::io;
use std::time::Instant;

use super::accept::AcceptState;
use super::Worker;
use crate::handler::{CloseReason, Handler};
use crate::panic;
use crate::steering::WorkerSteer;

impl<H: Handler> Worker<H> {
    /// Takes in the server's state at the start of a loop turn, before the
    /// turn's events are handed to the handler (a shutdown that woke this
    /// turn is seen by the requests that arrived with it). From the start
    /// of a shutdown, within the drain delay too, handlers are told they
    /// are draining (HTTP moves keep-alive clients off with `Connection:
    /// close`).
    pub(super) fn observe_state(&mut self) {
        if !self.leaving && self.shutdown.is_shutting_down() {
            self.leaving = true;
        }
        if self.leaving {
            self.state = self.shutdown.state();
        }
    }

    pub(super) fn check_shutdown(&mut self, now: Instant) {
        let shutting_down = self.shutdown.is_draining();
        let alone = !shutting_down && self.shutdown.worker_stop_requested(self.info.index);
        if !shutting_down && !alone {
            return;
        }
        if self.draining_until.is_none() {
            self.begin_drain(now, alone);
        }
        let deadline_passed = self.draining_until.is_some_and(|d| now >= d);
        if self.shutdown.is_immediate() || deadline_passed {
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.close(key, CloseReason::Shutdown, now);
            }
        }
    }

    /// Closes the listener and starts finishing the connections; `alone`:
    /// only this worker stops, the others keep serving.
    fn begin_drain(&mut self, now: Instant, alone: bool) {
        self.draining_until = Some(now + self.opts.shutdown_timeout);
        self.leaving = true;
        self.drain_grace_until = Some(now + self.opts.drain_grace.min(self.opts.shutdown_timeout));
        // No new connections for this worker from here on (eBPF steering).
        self.steer.set_draining();
        // With SO_REUSEPORT a closed listener resets the connections in its
        // queue, unless the group migrates them to a live listener: the eBPF
        // program does when this worker stops alone, and a process taking
        // over says whether the group does. Otherwise take what is queued
        // before closing.
        let handover = self.shutdown.handover();
        let migrate = handover.unwrap_or(alone && self.steer.migrates());
        if !migrate {
            self.accept_queued(now);
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        // The program can no longer pick this worker: stop publishing to its
        // slot, which a later takeover may give to another process.
        self.steer = WorkerSteer::default();
        self.accept = AcceptState::Closed;
        self.recheck_idle(now);
        let handler = &mut self.handler;
        let mut cx = context!(self, None, now);
        if let Err(message) = panic::catch(|| handler.on_drain(&mut cx)) {
            self.handler_panicked(None, "on_drain", &message);
        }
        let remaining = self.conns.len();
        let worker = self.info.index;
        let queued = if migrate { "migrated" } else { "accepted" };
        if handover.is_some() {
            tracing::debug!(worker, remaining, queued, "handing over: listener closed");
        } else if alone {
            tracing::info!(
                worker,
                remaining,
                queued,
                "worker stopping: listener closed"
            );
        } else {
            tracing::debug!(
                worker,
                remaining,
                "draining: listener closed, idle connections closed"
            );
        }
    }

    /// Accepts what is queued on the listener, up to the connection cap.
    fn accept_queued(&mut self, now: Instant) {
        while self.conns.len() < self.opts.max_connections_per_worker {
            let Some(listener) = self.listener.as_ref() else {
                break;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.insert(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// A request may be in an idle keep-alive connection's socket already,
    /// or on its way (the keep-alive race): read now, and keep the
    /// connection for the drain grace, so it is answered (the handler is
    /// told we are draining, so HTTP says `Connection: close`) instead of
    /// lost.
    fn recheck_idle(&mut self, now: Instant) {
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle_keepalive())
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.conns[key].recheck_readable();
            self.drive(key, now);
            if self.conns.contains(key) {
                self.update_timer(key);
            }
        }
    }
}
