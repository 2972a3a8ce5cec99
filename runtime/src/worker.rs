//! One worker: a pinned thread running an edge-triggered epoll loop over its
//! own listener and its connections.
//!
//! The edge-triggered contract: after a readiness event, the operation is
//! repeated until it returns `WouldBlock` (or a short read proves the socket
//! drained), because epoll will not report the same readiness again. Where a
//! budget stops the repetition early (accepts per turn, reads per connection
//! per turn) the worker remembers the unfinished work and resumes it itself on
//! the next turn, with a zero poll timeout.

use std::io::{self, Read};

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::buffer::{BufferPool, Input};
use crate::conn::{Conn, ConnToken};
use crate::error::{Error, Result};
use crate::handler::{Accepted, Action, CloseReason, Handler};
use crate::metrics::{Counters, Metrics};
use crate::options::ServerOptions;
use crate::probes::{self, GcKind};
use crate::server::{ShutdownHandle, WorkerInfo};
use crate::steering::WorkerSteer;
use crate::sys;
use crate::timer::{Entry, TimerWheel};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
const EVENTS_CAPACITY: usize = 1024;
/// Most connections one pass of timer expiry closes; the rest is closed on
/// the following turns, between other connections' events.
const EXPIRY_BUDGET: usize = 256;

/// Why a worker is not accepting right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptState {
    /// Accepting; `pending` means the last turn stopped on its budget.
    Open { pending: bool },
    /// Out of descriptors or memory: retry at this instant.
    Paused { until: Instant },
    /// At the connection cap: retry when a connection closes.
    AtCap,
    /// Listener closed for shutdown.
    Closed,
}

pub(crate) struct Worker<H: Handler> {
    info: WorkerInfo,
    opts: Arc<ServerOptions>,
    poll: Poll,
    listener: Option<TcpListener>,
    handler: H,
    conns: Slab<Conn<H::Conn>>,
    next_generation: u32,
    next_conn_id: u64,
    pool: BufferPool,
    wheel: TimerWheel,
    /// Connections whose read budget ran out: to be driven again next turn.
    requeue: Vec<usize>,
    accept: AcceptState,
    /// Logged the current resource episode already.
    accept_warned: bool,
    counters: Counters,
    shared: Metrics,
    shutdown: ShutdownHandle,
    /// This worker's handle on the eBPF steering program (a no-op without).
    steer: WorkerSteer,
    /// Set when a graceful shutdown started: the deadline for connections.
    draining_until: Option<Instant>,
    /// During a drain: until when idle keep-alive connections stay open for
    /// a request already on its way.
    drain_grace_until: Option<Instant>,
    next_tick: Instant,
    due: Vec<Entry>,
    /// Since when the connection table has been under a quarter full.
    slab_low_since: Option<Instant>,
}

impl<H: Handler> std::fmt::Debug for Worker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.info.index)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Worker<H> {
    /// Pins the thread, creates the epoll instance and builds the handler, on
    /// the worker's own thread.
    pub(crate) fn start(
        info: WorkerInfo,
        mut listener: TcpListener,
        opts: Arc<ServerOptions>,
        shared: Metrics,
        shutdown: ShutdownHandle,
        steer: WorkerSteer,
        factory: impl FnOnce(&WorkerInfo) -> H,
    ) -> Result<Self> {
        let worker = info.index;
        if let Some(cpu) = info.cpu {
            sys::pin_current_thread(cpu).map_err(|source| Error::Pin {
                worker,
                cpu,
                source,
            })?;
        }
        shared.worker(worker).set_cpu(info.cpu);
        let poll = Poll::new().map_err(|source| Error::Worker { worker, source })?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|source| Error::Worker { worker, source })?;
        let waker = Waker::new(poll.registry(), WAKER)
            .map_err(|source| Error::Worker { worker, source })?;
        shutdown.register(worker, Arc::new(waker));
        let now = Instant::now();
        let mut handler = factory(&info);
        handler.on_tick(SystemTime::now());
        probes::steer(worker, opts.steering.as_cstr());
        Ok(Worker {
            info,
            poll,
            listener: Some(listener),
            handler,
            conns: Slab::new(),
            next_generation: 0,
            next_conn_id: 0,
            pool: BufferPool::new(opts.buffer_size, opts.pool_max_idle, opts.reclaim_after),
            wheel: TimerWheel::new(now, opts.timer_resolution, 1024),
            requeue: Vec::new(),
            // Connections may have queued before the loop started.
            accept: AcceptState::Open { pending: true },
            accept_warned: false,
            counters: Counters::default(),
            shutdown,
            steer,
            draining_until: None,
            drain_grace_until: None,
            next_tick: now + opts.tick_interval,
            due: Vec::new(),
            slab_low_since: None,
            shared,
            opts,
        })
    }

    /// Runs the event loop until shutdown completes.
    pub(crate) fn run(mut self) -> Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            self.steer.turn_ended(self.conns.len());
            let polled = self.poll.poll(&mut events, timeout);
            self.steer.turn_started();
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(Error::Worker {
                        worker: self.info.index,
                        source: e,
                    });
                }
            }
            let now = Instant::now();
            self.counters.loop_iterations += 1;
            for event in events.iter() {
                self.counters.events += 1;
                match event.token() {
                    WAKER => {}
                    LISTENER => {
                        if let AcceptState::Open { .. } = self.accept {
                            self.accept = AcceptState::Open { pending: true };
                        }
                    }
                    token => {
                        let Some(key) = self.live_key(ConnToken::from(token)) else {
                            // An event for a connection that is gone, or for an
                            // older connection in a reused slot: drop it.
                            continue;
                        };
                        let conn = &mut self.conns[key];
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.want_read = true;
                        }
                        if event.is_read_closed() || event.is_error() {
                            // A short read is not proof of drain once FIN or an
                            // error arrived: read until 0 or the error.
                            conn.eof_hint = true;
                        }
                        self.drive(key, now);
                    }
                }
            }
            self.resume_requeued(now);
            self.check_shutdown(now);
            self.accept_connections(now);
            self.expire_timers(now);
            if now >= self.next_tick {
                self.tick(now);
            }
            self.publish();
            if self.listener.is_none() && self.conns.is_empty() {
                tracing::debug!(worker = self.info.index, "worker stopped");
                return Ok(());
            }
        }
    }

    fn live_key(&self, token: ConnToken) -> Option<usize> {
        let conn = self.conns.get(token.key)?;
        (conn.generation == token.generation).then_some(token.key)
    }

    fn poll_timeout(&mut self, now: Instant) -> Option<Duration> {
        if !self.requeue.is_empty()
            || !self.due.is_empty()
            || self.accept == (AcceptState::Open { pending: true })
        {
            return Some(Duration::ZERO);
        }
        let mut t = self.next_tick.saturating_duration_since(now);
        if let Some(w) = self.wheel.next_timeout(now) {
            t = t.min(w);
        }
        if let AcceptState::Paused { until } = self.accept {
            t = t.min(until.saturating_duration_since(now));
        }
        if let Some(d) = self.draining_until {
            t = t.min(d.saturating_duration_since(now));
        }
        Some(t)
    }

    fn resume_requeued(&mut self, now: Instant) {
        if self.requeue.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.requeue);
        for key in &keys {
            // The slot may have been closed (and even reused) since; driving a
            // reused slot is harmless, it only reads what is there.
            if self.conns.contains(*key) {
                self.drive(*key, now);
            }
        }
        // Keep the allocation for next time.
        let mut keys = keys;
        keys.clear();
        if self.requeue.is_empty() {
            self.requeue = keys;
        }
    }

    // ----- accepting -------------------------------------------------------

    fn accept_connections(&mut self, now: Instant) {
        match self.accept {
            AcceptState::Open { pending: true } => {}
            AcceptState::Paused { until } if now >= until => {}
            AcceptState::AtCap if self.conns.len() < self.opts.max_connections_per_worker => {}
            _ => return,
        }
        for _ in 0..self.opts.accept_budget {
            if self.conns.len() >= self.opts.max_connections_per_worker {
                self.accept = AcceptState::AtCap;
                return;
            }
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.recovered();
                    self.insert(stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.recovered();
                    self.steer.accept_queue_empty();
                    self.accept = AcceptState::Open { pending: false };
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if sys::is_accept_connection_error(&e) => {}
                Err(e) => {
                    // Out of descriptors or memory (or something unexpected):
                    // retrying now would spin. Pause, keep serving, retry.
                    if !self.accept_warned {
                        self.accept_warned = true;
                        let kind = if sys::is_accept_resource_error(&e) {
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
                    self.accept = AcceptState::Paused {
                        until: now + self.opts.accept_pause,
                    };
                    return;
                }
            }
        }
        // Budget spent with connections maybe still queued: resume next turn.
        self.accept = AcceptState::Open { pending: true };
    }

    fn recovered(&mut self) {
        if self.accept_warned {
            self.accept_warned = false;
            tracing::warn!(worker = self.info.index, "accepting again");
        }
    }

    fn insert(&mut self, mut stream: TcpStream, peer: std::net::SocketAddr, now: Instant) {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & ConnToken::GENERATION_MASK;
        let token = ConnToken { key, generation }.into();
        // WRITABLE is registered once, edge-triggered, so a partial write never
        // needs an epoll_ctl: the next edge comes when the buffer drains.
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(worker = self.info.index, error = %e, %peer, "registering a connection failed; closing it");
            return;
        }
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        probes::accept(self.info.index, stream.as_raw_fd(), id);
        let state = self.handler.on_accept(&Accepted {
            peer,
            worker: self.info.index,
            id,
        });
        entry.insert(Conn::new(stream, state, generation, id, now));
        self.counters.accepted += 1;
        self.counters.active += 1;
        self.update_timer(key);
    }

    // ----- serving a connection ---------------------------------------------

    /// Does all the work a connection has: flush pending output, read and
    /// hand bytes to the handler, flush the replies, close if it is done.
    fn drive(&mut self, key: usize, now: Instant) {
        if let Err(reason) = self.drive_io(key, now) {
            self.close(key, reason, now);
            return;
        }
        let conn = &self.conns[key];
        if conn.output.is_empty() {
            if let Some(reason) = conn.close_after_flush {
                if conn.lingering {
                    // Waiting for the peer's FIN; reads discard.
                } else if reason == CloseReason::Handler && !conn.read_closed {
                    self.start_linger(key, now);
                    return;
                } else {
                    self.close(key, reason, now);
                    return;
                }
            } else if conn.read_closed {
                self.close(key, CloseReason::PeerClosed, now);
                return;
            } else if self.draining_until.is_some()
                && conn.is_idle()
                && conn.served
                && self.drain_grace_until.is_none_or(|g| now >= g)
            {
                self.close(key, CloseReason::Shutdown, now);
                return;
            }
        }
        self.release_buffers(key, now);
        self.update_timer(key);
    }

    fn drive_io(&mut self, key: usize, now: Instant) -> Result<(), CloseReason> {
        let high_water = self.opts.output_high_water;
        let mut reads = 0;
        loop {
            self.flush(key, now)?;
            let backpressure = self.read_some(key, now, &mut reads)?;
            self.flush(key, now)?;
            // Reading stopped at the high-water mark with bytes possibly left
            // in the socket, for which no new edge will come. If the flush
            // made room, read on now; if not, the writable edge resumes us.
            if !backpressure || self.conns[key].output.len() >= high_water {
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
        let high_water = self.opts.output_high_water;
        let budget = self.opts.read_budget;
        loop {
            let conn = &mut self.conns[key];
            if !conn.want_read
                || conn.read_closed
                || (conn.close_after_flush.is_some() && !conn.lingering)
            {
                return Ok(false);
            }
            if conn.output.len() >= high_water {
                // Backpressure: `want_read` stays set.
                return Ok(true);
            }
            if *reads == budget {
                self.requeue.push(key);
                return Ok(false);
            }
            *reads += 1;
            if conn.lingering {
                let mut scratch = [0u8; 512];
                match conn.stream.read(&mut scratch) {
                    Ok(0) => return Err(CloseReason::Handler),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        conn.want_read = false;
                        return Ok(false);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Err(CloseReason::Handler),
                }
            }
            if conn.input.capacity() == 0 {
                conn.input = self.pool.take();
            } else if conn.input.len() == conn.input.capacity() {
                if conn.input.len() >= self.opts.max_input {
                    return Err(CloseReason::InputTooLarge);
                }
                let grow = conn.input.len().min(self.opts.max_input - conn.input.len());
                conn.input.reserve_exact(grow);
            }
            let space = conn.input.capacity() - conn.input.len();
            match sys::read_spare(conn.stream.as_raw_fd(), &mut conn.input) {
                Ok(0) => {
                    conn.read_closed = true;
                    conn.want_read = false;
                    if !conn.input.is_empty() {
                        // Let the handler see that no more bytes will come.
                        self.call_handler(key, now);
                    }
                    return Ok(false);
                }
                Ok(n) => {
                    self.counters.bytes_read += n as u64;
                    self.counters.reads += 1;
                    probes::read(self.info.index, conn.stream.as_raw_fd(), conn.id, n);
                    if n < space && !conn.eof_hint {
                        // A short read drained the socket; the next edge
                        // reports new bytes. Saves the read that would say
                        // WouldBlock.
                        conn.want_read = false;
                    }
                    self.call_handler(key, now);
                    if self.conns[key].close_after_flush.is_some() {
                        self.conns[key].want_read = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.want_read = false;
                    conn.eof_hint = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(&e)),
            }
        }
    }

    fn call_handler(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        if !conn.output.has_buffer() {
            conn.output.set_buffer(self.pool.take());
        }
        let draining = self.draining_until.is_some();
        let Some(state) = conn.state.as_mut() else {
            return;
        };
        let mut input = Input::new(&conn.input, conn.read_closed, draining);
        let action = self.handler.on_data(state, &mut input, &mut conn.output);
        let consumed = input.consumed();
        if consumed > 0 {
            conn.served = true;
            if consumed == conn.input.len() {
                conn.input.clear();
            } else {
                conn.input.drain(..consumed);
            }
        }
        if conn.input.is_empty() {
            conn.message_start = None;
            conn.last_active = now;
        } else if consumed > 0 || conn.message_start.is_none() {
            // A new message began in these bytes: its header clock starts now.
            // A message still arriving keeps its clock (slow senders gain
            // nothing by trickling bytes).
            conn.message_start = Some(now);
        }
        if action == Action::Close {
            conn.close_after_flush = Some(CloseReason::Handler);
        }
    }

    fn flush(&mut self, key: usize, now: Instant) -> Result<(), CloseReason> {
        let conn = &mut self.conns[key];
        if conn.output.is_empty() {
            return Ok(());
        }
        let fd = conn.stream.as_raw_fd();
        let (worker, id) = (self.info.index, conn.id);
        let mut writes = 0;
        match conn.output.flush_to(|iov| {
            let n = if iov.len() == 1 {
                // The common case: one piece, one send(2).
                io::Write::write(&mut &conn.stream, &iov[0])
            } else {
                sys::send_vectored(fd, iov)
            }?;
            probes::write(worker, fd, id, n);
            writes += 1;
            Ok(n)
        }) {
            Ok(n) => {
                self.counters.writes += writes;
                if n > 0 {
                    self.counters.bytes_written += n as u64;
                    conn.last_progress = now;
                }
                Ok(())
            }
            Err(e) => Err(classify(&e)),
        }
    }

    fn start_linger(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        // Send FIN now, then read and discard until the peer's FIN so unread
        // request bytes do not turn our close into a reset.
        if conn.stream.shutdown(std::net::Shutdown::Write).is_err() {
            self.close(key, CloseReason::Handler, now);
            return;
        }
        conn.lingering = true;
        conn.linger_since = now;
        conn.want_read = true;
        self.release_buffers(key, now);
        self.update_timer(key);
        self.requeue.push(key);
    }

    fn release_buffers(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        if conn.input.is_empty() && conn.input.capacity() != 0 {
            self.pool.give(std::mem::take(&mut conn.input), now);
        }
        if conn.output.is_empty() {
            if let Some(buf) = conn.output.take_buffer() {
                self.pool.give(buf, now);
            }
        }
    }

    fn close(&mut self, key: usize, reason: CloseReason, now: Instant) {
        let mut conn = self.conns.remove(key);
        probes::close(
            self.info.index,
            conn.stream.as_raw_fd(),
            conn.id,
            reason.as_cstr(),
        );
        // Dropping the stream closes the descriptor, which also removes it
        // from the epoll set: no epoll_ctl(DEL) needed.
        let state = conn.state.take();
        if conn.input.capacity() != 0 {
            self.pool.give(std::mem::take(&mut conn.input), now);
        }
        if let Some(buf) = conn.output.discard() {
            self.pool.give(buf, now);
        }
        drop(conn);
        self.counters.active -= 1;
        self.counters.closed[reason.index()] += 1;
        if let Some(state) = state {
            self.handler.on_close(state, reason);
        }
        if self.accept == AcceptState::AtCap {
            self.accept = AcceptState::Open { pending: true };
        }
    }

    // ----- timers -------------------------------------------------------------

    /// Makes sure the wheel holds an entry no later than the connection's
    /// current deadline. Deadlines that move later need no new entry: the old
    /// one fires, finds the deadline moved, and reschedules.
    /// Connection `key`'s next deadline, with the drain grace applied.
    fn deadline(&self, key: usize) -> Option<(Instant, CloseReason)> {
        deadline_of(&self.conns[key], &self.opts, self.drain_grace_until)
    }

    fn update_timer(&mut self, key: usize) {
        let Some((at, _)) = self.deadline(key) else {
            return;
        };
        let conn = &mut self.conns[key];
        let tick = self.wheel.tick_for(at);
        if conn.scheduled.is_none_or(|s| tick < s) {
            conn.scheduled = Some(self.wheel.schedule(key, conn.generation, at));
        }
    }

    fn expire_timers(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.expire(now, &mut due);
        if due.is_empty() {
            self.due = due;
            return;
        }
        let started = Instant::now();
        probes::gc_start(self.info.index, GcKind::IdleSweep);
        let mut closed = 0usize;
        let mut done = 0;
        for entry in due.iter().copied() {
            if closed == EXPIRY_BUDGET {
                // Closing thousands at once (a slowloris herd timing out
                // together) would stall everyone else for milliseconds:
                // the rest waits for the next turn, which comes at once.
                break;
            }
            done += 1;
            let Some(conn) = self.conns.get_mut(entry.key) else {
                continue;
            };
            if conn.generation != entry.generation || conn.scheduled != Some(entry.tick) {
                continue; // stale: superseded by an earlier entry, or a reused slot
            }
            conn.scheduled = None;
            match deadline_of(conn, &self.opts, self.drain_grace_until) {
                Some((at, reason)) if at <= now => {
                    self.close(entry.key, reason, now);
                    closed += 1;
                }
                _ => self.update_timer(entry.key),
            }
        }
        due.drain(..done);
        self.due = due;
        self.counters.idle_sweeps += 1;
        probes::gc_done(
            self.info.index,
            GcKind::IdleSweep,
            closed,
            elapsed_nanos(started),
        );
    }

    fn tick(&mut self, now: Instant) {
        while self.next_tick <= now {
            self.next_tick += self.opts.tick_interval;
        }
        self.handler.on_tick(SystemTime::now());
        if self.pool.trim_due(now) {
            self.trim_pool();
        }
        self.maybe_shrink_slab(now);
    }

    /// `pool_trim`: frees idle buffers beyond the pool's bound.
    fn trim_pool(&mut self) {
        let started = Instant::now();
        probes::gc_start(self.info.index, GcKind::PoolTrim);
        let freed = self.pool.trim();
        self.counters.pool_trims += 1;
        probes::gc_done(
            self.info.index,
            GcKind::PoolTrim,
            freed,
            elapsed_nanos(started),
        );
    }

    /// `slab_shrink`: after a spike, when the connection table has stayed
    /// under a quarter full for `reclaim_after`, moves the connections to the
    /// front (re-registering each under its new token) and frees the rest.
    fn maybe_shrink_slab(&mut self, now: Instant) {
        const MIN_CAPACITY: usize = 1024;
        let cap = self.conns.capacity();
        if cap <= MIN_CAPACITY || self.conns.len() * 4 > cap || !self.requeue.is_empty() {
            self.slab_low_since = None;
            return;
        }
        let since = *self.slab_low_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.opts.reclaim_after {
            self.shrink_slab();
        }
    }

    pub(crate) fn shrink_slab(&mut self) {
        let started = Instant::now();
        probes::gc_start(self.info.index, GcKind::SlabShrink);
        let before = self.conns.capacity();
        let registry = self.poll.registry();
        let mut moved = Vec::new();
        self.conns.compact(|conn, _from, to| {
            let token = ConnToken {
                key: to,
                generation: conn.generation,
            }
            .into();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if registry
                .reregister(&mut conn.stream, token, interest)
                .is_err()
            {
                return false; // keep it where it is; its old token still works
            }
            // Timer entries name the old key: file a new one.
            conn.scheduled = None;
            moved.push(to);
            true
        });
        for key in moved {
            self.update_timer(key);
        }
        let freed_timer = self.wheel.shrink();
        self.requeue.shrink_to_fit();
        self.due.shrink_to_fit();
        let freed = before - self.conns.capacity();
        self.slab_low_since = None;
        self.counters.slab_shrinks += 1;
        tracing::debug!(
            worker = self.info.index,
            before,
            after = self.conns.capacity(),
            freed_timer,
            "connection table shrunk"
        );
        probes::gc_done(
            self.info.index,
            GcKind::SlabShrink,
            freed,
            elapsed_nanos(started),
        );
    }

    // ----- shutdown -------------------------------------------------------------

    fn check_shutdown(&mut self, now: Instant) {
        let phase = self.shutdown.phase();
        let alone = phase == 0 && self.shutdown.worker_stop_requested(self.info.index);
        if phase == 0 && !alone {
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
        while !migrate && self.conns.len() < self.opts.max_connections_per_worker {
            let Some(listener) = self.listener.as_ref() else {
                break;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.insert(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        // The program can no longer pick this worker: stop publishing to its
        // slot, which a later takeover may give to another process.
        self.steer = WorkerSteer::default();
        self.accept = AcceptState::Closed;
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle() && c.served)
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            // A request may be in the socket already, or on its way (the
            // keep-alive race): read now, and keep the connection for the
            // drain grace, so it is answered (the handler is told we are
            // draining, so HTTP says `Connection: close`) instead of lost.
            self.conns[key].want_read = true;
            self.drive(key, now);
            if self.conns.contains(key) {
                self.update_timer(key);
            }
        }
        if handover.is_some() {
            tracing::debug!(
                worker = self.info.index,
                remaining = self.conns.len(),
                queued = if migrate { "migrated" } else { "accepted" },
                "handing over: listener closed"
            );
        } else if alone {
            tracing::info!(
                worker = self.info.index,
                remaining = self.conns.len(),
                queued = if migrate {
                    "migrated to the other workers"
                } else {
                    "accepted"
                },
                "worker stopping: listener closed"
            );
        } else {
            tracing::debug!(
                worker = self.info.index,
                remaining = self.conns.len(),
                "draining: listener closed, idle connections closed"
            );
        }
    }

    fn publish(&mut self) {
        self.counters.pool_idle = self.pool.idle() as u64;
        self.counters.pool_outstanding = self.pool.outstanding() as u64;
        self.counters.slab_capacity = self.conns.capacity() as u64;
        self.shared.worker(self.info.index).publish(&self.counters);
    }
}

/// A connection's next deadline; while draining, an idle keep-alive
/// connection's is the end of the drain grace.
fn deadline_of<C>(
    conn: &Conn<C>,
    opts: &ServerOptions,
    grace: Option<Instant>,
) -> Option<(Instant, CloseReason)> {
    let own = conn.deadline(opts);
    match grace {
        Some(g) if conn.is_idle() && conn.served => match own {
            Some((at, reason)) if at < g => Some((at, reason)),
            _ => Some((g, CloseReason::Shutdown)),
        },
        _ => own,
    }
}

fn elapsed_nanos(since: Instant) -> u64 {
    since.elapsed().as_nanos().min(u64::MAX as u128) as u64
}

fn classify(e: &io::Error) -> CloseReason {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => CloseReason::Reset,
        _ => CloseReason::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::bind_group;

    struct Nop;

    impl Handler for Nop {
        type Conn = ();
        fn on_accept(&mut self, _: &Accepted) {}
        fn on_data(&mut self, _: &mut (), input: &mut Input<'_>, _: &mut crate::Output) -> Action {
            input.consume(input.bytes().len());
            Action::Continue
        }
    }

    fn accept_one(w: &mut Worker<Nop>, addr: std::net::SocketAddr) -> std::net::TcpStream {
        let c = std::net::TcpStream::connect(addr).unwrap();
        let before = w.conns.len();
        for _ in 0..200 {
            w.accept = AcceptState::Open { pending: true };
            w.accept_connections(Instant::now());
            if w.conns.len() > before {
                return c;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("connection was never accepted");
    }

    #[test]
    fn an_event_for_a_reused_slot_is_recognised_as_stale() {
        let listener = bind_group("127.0.0.1:0".parse().unwrap(), 1, 16, true, None)
            .unwrap()
            .remove(0);
        let addr = listener.local_addr().unwrap();
        let opts = Arc::new(ServerOptions::default());
        let info = WorkerInfo {
            index: 0,
            workers: 1,
            cpu: None,
            metrics: Metrics::new(1),
            steering: crate::Steering::Kernel,
        };
        let mut w = Worker::start(
            info,
            listener,
            opts,
            Metrics::new(1),
            ShutdownHandle::new(1, crate::steering::Ebpf::default()),
            WorkerSteer::default(),
            |_| Nop,
        )
        .unwrap();
        let _c1 = accept_one(&mut w, addr);
        let (key, conn) = w.conns.iter().next().unwrap();
        let old = ConnToken {
            key,
            generation: conn.generation,
        };
        assert_eq!(w.live_key(old), Some(key));

        w.close(key, CloseReason::Handler, Instant::now());
        assert_eq!(w.live_key(old), None, "event for a closed slot");

        let _c2 = accept_one(&mut w, addr);
        let (new_key, conn) = w.conns.iter().next().unwrap();
        assert_eq!(new_key, key, "the slab reuses the freed slot");
        let new = ConnToken {
            key,
            generation: conn.generation,
        };
        assert_ne!(old, new);
        assert_eq!(
            w.live_key(old),
            None,
            "stale event for the reused slot must be dropped"
        );
        assert_eq!(w.live_key(new), Some(key));
        // A stale timer entry for the old connection is ignored too.
        let mut due = vec![Entry {
            key,
            generation: old.generation,
            tick: 0,
        }];
        std::mem::swap(&mut w.due, &mut due);
        w.expire_timers(Instant::now());
        assert_eq!(w.conns.len(), 1);
    }
}
