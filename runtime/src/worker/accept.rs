//! Accepting, from a level-triggered listener.
//!
//! At low rates a listener wakes the loop with one connection queued:
//! draining it to `EAGAIN` cost a second `accept4` for nearly every
//! connection (0.8 per connection with a connection per request, counted
//! with bpftrace: 6.7 system calls per connection against nginx's 6.2).
//! So the listener is level-triggered, as nginx's is:
//!
//! - reported alone, it gives one connection (nginx's `multi_accept off`);
//!   the next turn's events say whether more are queued (reported again)
//!   or not (the queue is empty);
//! - reported among other events, it gives one more for every eight of
//!   them (a busy worker's turns are long, and connections queue
//!   meanwhile), without asking for more: the next turn's report says.
//!   Draining to `EAGAIN` whenever other events came too (until the tenth
//!   session) made 1.15 `accept4` per connection under a connection per
//!   request (the failed ones) against nginx's 0.98; under callgrind, where
//!   the slowed server finds connections piled up, it made fewer turns
//!   (2,609–2,671 instructions per connection against 2,945 with one
//!   accept per report). Taking two when reported twice in a row was
//!   tried: a third of the `accept4` calls failed again;
//! - at the loop's start, and at the end of a pause or of the connection
//!   cap, it is drained to `EAGAIN` or the turn's budget.
//!
//! Least-loaded steering counts what it sent a worker as pending until
//! accepted: each accept takes one off, and an empty queue resets the
//! count (it also holds handshakes that never completed).
//!
//! Accepting pauses (serving what it has) when descriptors or memory run
//! out, and stops at the connection cap; the listener is edge-triggered
//! then, or a queued connection would wake every turn. Should switching
//! the trigger ever fail, the listener stays edge-triggered and every
//! report is drained, as before.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;

use super::{Worker, EVENTS_CAPACITY, LISTENER};
use crate::conn::{Conn, ConnToken};
use crate::context::ConnHandle;
use crate::handler::{Accepted, CloseReason, Handler};
use crate::panic;
use crate::probes;
use crate::sys;

/// A reported listener gives one connection per turn, plus one for every
/// this many other events of the turn.
const ACCEPT_SHARE: usize = 8;

/// Why a worker is, or is not, accepting right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AcceptState {
    /// Accepting, with this much known about the listener's queue.
    Open(Queue),
    /// Out of descriptors or memory: retry at this instant.
    Paused { until: Instant },
    /// At the connection cap: retry when a connection closes.
    AtCap,
    /// Listener closed for shutdown.
    Closed,
}

/// What an open worker knows of its listener's accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queue {
    /// Found empty, and not reported since.
    Empty,
    /// Reported: take up to this many connections this turn.
    Ready(usize),
    /// Taken as asked, without asking for more: the turn's events say
    /// whether more are queued (the listener is reported again) or not.
    Took,
}

impl AcceptState {
    /// Whether the next turn must not wait: connections are queued.
    pub(super) fn is_pending(self) -> bool {
        matches!(self, AcceptState::Open(Queue::Ready(_)))
    }

    pub(super) fn paused_until(self) -> Option<Instant> {
        match self {
            AcceptState::Paused { until } => Some(until),
            _ => None,
        }
    }
}

impl<H: Handler> Worker<H> {
    /// The listener reported queued connections.
    pub(super) fn listener_ready(&mut self) {
        if let AcceptState::Open(Queue::Empty | Queue::Took) = self.accept {
            self.accept = AcceptState::Open(Queue::Ready(1));
        }
    }

    /// A connection closed: a worker at its cap may accept again.
    pub(super) fn room_freed(&mut self) {
        if self.accept == AcceptState::AtCap {
            self.set_accept(AcceptState::Open(Queue::Ready(self.opts.accept_budget)));
        }
    }

    /// Accepts what this turn's state asks for, after a turn of `events`
    /// readiness events.
    pub(super) fn accept_connections(&mut self, now: Instant, events: usize) {
        // Not cut short by the events' capacity: a listener not among them
        // has nothing queued.
        let all_reported = events < EVENTS_CAPACITY;
        // Edge-triggered while open (switching failed): only draining
        // keeps what is queued from waiting for the next arrival.
        let drain = !self.listener_level;
        let budget = match self.accept {
            // Edge-triggered: no new report comes for what stays queued.
            AcceptState::Open(Queue::Ready(1)) if drain => self.opts.accept_budget,
            // Reported: one connection (nginx's `multi_accept off`), and
            // one more for every eight other events of the turn (a busy
            // worker's turns are long, and connections queue meanwhile).
            AcceptState::Open(Queue::Ready(1)) => {
                (1 + events / ACCEPT_SHARE).min(self.opts.accept_budget)
            }
            AcceptState::Open(Queue::Ready(n)) => n,
            AcceptState::Open(Queue::Took) => {
                // Not reported again: nothing more was queued.
                if all_reported {
                    self.queue_empty();
                }
                return;
            }
            AcceptState::Paused { until } if now >= until => self.opts.accept_budget,
            AcceptState::AtCap if self.conns.len() < self.opts.max_connections_per_worker => {
                self.opts.accept_budget
            }
            _ => return,
        };
        for _ in 0..budget {
            if self.conns.len() >= self.opts.max_connections_per_worker {
                self.set_accept(AcceptState::AtCap);
                return;
            }
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.recovered();
                    self.insert(stream, peer, now);
                    self.steer.accepted(self.conns.len());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.recovered();
                    self.queue_empty();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if sys::is_accept_connection_error(&e) => {}
                Err(e) => {
                    self.pause_accepting(&e, now);
                    return;
                }
            }
        }
        // As many taken as asked, maybe with more queued: the listener's
        // next report says (edge-triggered, no report comes: go on).
        self.set_accept(AcceptState::Open(if drain {
            Queue::Ready(self.opts.accept_budget)
        } else {
            Queue::Took
        }));
    }

    /// The listener's queue is empty.
    fn queue_empty(&mut self) {
        self.steer.accept_queue_empty(self.conns.len());
        self.set_accept(AcceptState::Open(Queue::Empty));
    }

    /// Moves to `state`, making the listener level-triggered while open and
    /// edge-triggered otherwise (one `epoll_ctl`, only on that change).
    pub(super) fn set_accept(&mut self, state: AcceptState) {
        let level = matches!(state, AcceptState::Open(_));
        if level != self.listener_level {
            if let Some(listener) = &self.listener {
                let (epfd, fd) = (self.poll.as_raw_fd(), listener.as_raw_fd());
                match sys::epoll_readable_trigger(epfd, fd, LISTENER.0, level) {
                    Ok(()) => self.listener_level = level,
                    // Stays as it was: edge-triggered while open is
                    // drained on every report (see the module docs).
                    Err(e) => {
                        tracing::warn!(worker = self.info.index, error = %e, level, "changing the listener's trigger failed")
                    }
                }
            }
        }
        self.accept = state;
    }

    /// Out of descriptors or memory (or something unexpected): retrying now
    /// would spin. Pause, keep serving, retry.
    fn pause_accepting(&mut self, e: &io::Error, now: Instant) {
        if !self.accept_warned {
            self.accept_warned = true;
            let kind = if sys::is_accept_resource_error(e) {
                "out of resources"
            } else {
                "unexpected error"
            };
            tracing::warn!(
                kind,
                worker = self.info.index,
                error = %e,
                connections = self.conns.len(),
                pause_ms = self.opts.accept_pause.as_millis() as u64,
                "accept failed; pausing accepts and serving existing connections"
            );
        }
        self.counters.accept_pauses += 1;
        self.set_accept(AcceptState::Paused {
            until: now + self.opts.accept_pause,
        });
    }

    fn recovered(&mut self) {
        if self.accept_warned {
            self.accept_warned = false;
            tracing::warn!(worker = self.info.index, "accepting again");
        }
    }

    /// Puts an accepted connection in the table: slab entry first, then
    /// registration under its token (key + generation); a registration that
    /// fails leaves no entry behind. With `TCP_DEFER_ACCEPT` its first bytes
    /// are already there: it is served at once, and registered only if it
    /// is still open after that (a connection per request, `Connection:
    /// close`, then costs no `epoll_ctl` at all, as nginx's `deferred`).
    pub(super) fn insert(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let key = self.conns.vacant_key();
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & ConnToken::GENERATION_MASK;
        let token = ConnToken { key, generation }.into();
        let serve_first = self.opts.defer_accept.is_some();
        // Readable edges only: writable ones are added by the first flush
        // that leaves output behind (see `Conn::needs_writable_edges`).
        if !serve_first {
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
            {
                tracing::warn!(worker = self.info.index, error = %e, %peer, "registering a connection failed; closing it");
                return;
            }
        }
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let fd = stream.as_raw_fd();
        probes::accept(self.info.index, fd, id);
        self.counters.accepted += 1;
        let accepted = Accepted {
            peer,
            worker: self.info.index,
            id,
            handle: ConnHandle::new(self.info.index, id),
        };
        // The connection is live for handles from here on.
        self.live.insert(id, key);
        let handler = &mut self.handler;
        let mut cx = context!(self, Some(accepted.handle), now);
        let state = match panic::catch(|| handler.on_accept(&accepted, &mut cx)) {
            Ok(state) => state,
            Err(message) => {
                // No state to keep: dropping the stream closes it.
                self.live.remove(&id);
                self.handler_panicked(Some(id), "on_accept", &message);
                probes::close(self.info.index, fd, id, CloseReason::Panic.as_cstr());
                self.counters.closed[CloseReason::Panic.index()] += 1;
                return;
            }
        };
        #[allow(unused_mut)]
        let mut conn = Conn::new(stream, state, generation, id, now);
        #[cfg(feature = "tls")]
        if let Some(config) = &self.opts.tls {
            if let Err(e) = conn.start_tls(config) {
                tracing::warn!(worker = self.info.index, error = %e, %peer, "starting TLS failed; closing the connection");
                let inserted = self.conns.insert(conn);
                self.counters.active += 1;
                return self.close(inserted, CloseReason::TlsError, now);
            }
        }
        let inserted = self.conns.insert(conn);
        debug_assert_eq!(inserted, key);
        self.counters.active += 1;
        if serve_first {
            return self.serve_first(key, id, peer, now);
        }
        self.update_timer(key);
    }

    /// Serves connection `key` (`id`), not registered yet, as if it had
    /// been reported readable; registers it if it is still open after that,
    /// for the edges to come (registering reports what is already ready:
    /// nothing is missed in between).
    fn serve_first(&mut self, key: usize, id: u64, peer: SocketAddr, now: Instant) {
        self.unregistered = Some(key);
        self.conns[key].on_event(true, false);
        self.drive(key, now);
        self.unregistered = None;
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.id() == id) else {
            return; // served and closed
        };
        let token = ConnToken {
            key,
            generation: conn.generation(),
        }
        .into();
        let interest = conn.interest();
        if let Err(e) = self
            .poll
            .registry()
            .register(conn.stream_mut(), token, interest)
        {
            tracing::warn!(worker = self.info.index, error = %e, %peer, "registering a connection failed; closing it");
            self.close(key, CloseReason::Error, now);
        }
    }
}
