//! Outbound connections: a non-blocking connect registered in the worker's
//! own `Poll`, its outcome (established, refused, timed out...) handed to
//! the handler, and from then on the same connection as an accepted one.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Interest;

use super::Worker;
use crate::conn::{Conn, ConnToken};
use crate::context::ConnHandle;
use crate::handler::{CloseReason, ConnectError, Connected, Handler};
use crate::panic;
use crate::probes;

impl<H: Handler> Worker<H> {
    /// Starts connection `id`'s connect (its handle is live since
    /// [`Context::connect`](crate::Context::connect)); a failure at once
    /// is handed to the handler as any other.
    pub(super) fn start_connect(
        &mut self,
        id: u64,
        addr: SocketAddr,
        timeout: Option<Duration>,
        tag: u64,
        now: Instant,
    ) {
        if self.conns.len() >= self.opts.max_connections_per_worker {
            return self.connect_failed(None, id, tag, ConnectError::NoResources, now);
        }
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return self.connect_failed(None, id, tag, ConnectError::from_io(&e), now),
        };
        if self.opts.nodelay {
            let _ = stream.set_nodelay(true);
        }
        let key = self.conns.vacant_key();
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & ConnToken::GENERATION_MASK;
        let token = ConnToken { key, generation }.into();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.connect_failed(None, id, tag, ConnectError::from_io(&e), now);
        }
        probes::connect(self.info.index, stream.as_raw_fd(), id);
        self.counters.connects += 1;
        let deadline = now + timeout.unwrap_or(self.opts.connect_timeout);
        let inserted = self
            .conns
            .insert(Conn::connecting(stream, generation, id, now, deadline, tag));
        debug_assert_eq!(inserted, key);
        self.live.insert(id, key);
        self.counters.active += 1;
        self.update_timer(key);
    }

    /// An event for a connection whose connect is in progress.
    pub(super) fn connect_event(&mut self, key: usize, tag: u64, now: Instant) {
        let conn = &self.conns[key];
        let error = match conn.connect_outcome() {
            Ok(None) => return, // not yet: a later event says
            Ok(Some(peer)) => return self.established(key, tag, peer, now),
            Err(e) => ConnectError::from_io(&e),
        };
        let id = conn.id();
        self.connect_failed(Some(key), id, tag, error, now);
    }

    /// The connect completed: the handler gives the connection its state,
    /// and what was written to it meanwhile goes out.
    fn established(&mut self, key: usize, tag: u64, peer: SocketAddr, now: Instant) {
        let conn = &self.conns[key];
        let id = conn.id();
        let worker = self.info.index;
        let connected = Connected {
            peer,
            worker,
            id,
            handle: ConnHandle::new(worker, id),
            tag,
        };
        probes::connected(worker, conn.fd(), id);
        let handler = &mut self.handler;
        let mut cx = context!(self, Some(connected.handle), now);
        match panic::catch(|| handler.on_connected(&connected, &mut cx)) {
            Ok(Some(state)) => {
                self.conns[key].established(state, now);
                // The connect's writable edge is over: readable edges only
                // from here, as for an accepted connection.
                if self.watch_writable(key, false).is_err() {
                    return self.close(key, CloseReason::Error, now);
                }
                self.drive(key, now);
            }
            // The handler wants no such connection.
            Ok(None) => self.close(key, CloseReason::Handler, now),
            Err(message) => {
                self.handler_panicked(Some(id), "on_connected", &message);
                self.close(key, CloseReason::Panic, now);
            }
        }
    }

    /// Connection `id` (in slot `key`, if it got one) failed to connect:
    /// it is gone, and the handler hears why.
    pub(super) fn connect_failed(
        &mut self,
        key: Option<usize>,
        id: u64,
        tag: u64,
        error: ConnectError,
        now: Instant,
    ) {
        self.live.remove(&id);
        if let Some(key) = key {
            let mut conn = self.conns.remove(key);
            probes::close(self.info.index, conn.fd(), id, c"connect_failed");
            let _ = conn.finish(&mut self.pool);
            self.counters.active -= 1;
            self.room_freed();
        }
        self.counters.connect_failures += 1;
        let handle = ConnHandle::new(self.info.index, id);
        let handler = &mut self.handler;
        let mut cx = context!(self, Some(handle), now);
        if let Err(message) =
            panic::catch(|| handler.on_connect_failed(handle, tag, error, &mut cx))
        {
            self.handler_panicked(Some(id), "on_connect_failed", &message);
        }
    }
}
