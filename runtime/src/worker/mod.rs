//! One worker: a pinned thread running an edge-triggered epoll loop over its
//! own listener and its connections.
//!
//! The loop waits, dispatches each event to the connection it names (see
//! [`conn`](crate::conn): the connection decides what it does), then does the
//! turn's own work: budgets carried over, drain, accepting, deadlines, the
//! tick, and publishing metrics. Each part lives in a file named for it:
//!
//! | file | what |
//! |---|---|
//! | `accept.rs` | accepting under a budget, pausing on descriptor exhaustion |
//! | `connect.rs` | outbound connections: connect, its outcome, its failure |
//! | `messages.rs` | the mailbox: posts and offloaded jobs' results |
//! | `ops.rs` | what callbacks queued on connections, and handler timers |
//! | `io.rs` | one connection's reads, handler calls, flushes and close |
//! | `drain.rs` | graceful shutdown, stopping alone, handing over |
//! | `idle_sweep.rs` | deadlines on the timer wheel and the expiry pass |
//! | `pool_trim.rs` | freeing idle pooled buffers |
//! | `slab_shrink.rs` | compacting the connection table after a spike |
//!
//! The edge-triggered contract: after a readiness event, the operation is
//! repeated until it returns `WouldBlock` (or a short read proves the socket
//! drained), because epoll will not report the same readiness again. Where a
//! budget stops the repetition early (accepts per turn, reads per connection
//! per turn) the worker remembers the unfinished work and resumes it itself on
//! the next turn, with a zero poll timeout.

/// A [`Context`] for one callback of worker `$w` (borrowing only the
/// fields a context needs, so the handler and a connection can be borrowed
/// beside it).
macro_rules! context {
    ($w:ident, $conn:expr, $now:expr) => {
        $crate::context::Context::new(
            $w.info.index,
            $conn,
            $now,
            &mut $w.live,
            &mut $w.next_conn_id,
            &mut $w.ops,
            &mut $w.timers,
            &$w.outbox,
            $w.state,
        )
    };
}

mod accept;
mod connect;
mod drain;
mod idle_sweep;
mod io;
mod messages;
mod ops;
mod pool_trim;
mod slab_shrink;

use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::buffer::BufferPool;
use crate::conn::{Conn, ConnToken};
use crate::context::{Live, Ops, Timers};
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::mailbox::{Inbox, Job, Mailboxes, Outbox};
use crate::metrics::{Counters, Metrics};
use crate::options::ServerOptions;
use crate::panic;
use crate::probes;
use crate::shutdown::{ServerState, ShutdownHandle};
use crate::steering::{Steering, WorkerSteer};
use crate::sys;
use crate::timer::{Entry, TimerWheel};

use accept::{AcceptState, Queue};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
const EVENTS_CAPACITY: usize = 1024;
/// Events handled in one turn between two signs of progress for
/// least-loaded steering's stall check (a clock read each; a turn's start
/// is one too).
const PROGRESS_EVERY: usize = 32;

/// Where a worker runs, given to the handler factory on the worker's thread.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Worker index, `0..workers`.
    pub index: usize,
    /// Number of workers of the server.
    pub workers: usize,
    /// The CPU the worker is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// The server's metrics (every worker's), e.g. for a metrics endpoint.
    pub metrics: Metrics,
    /// The steering mode in force.
    pub steering: Steering,
    /// Every worker's mailbox: hand it to a thread of yours to post to
    /// workers or their connections.
    pub mailboxes: Mailboxes,
}

impl WorkerInfo {
    /// Describes worker `index` of `workers` outside any server, with fresh
    /// metrics and kernel steering: for building a handler directly in tests,
    /// benches and fuzzers.
    #[must_use]
    pub fn detached(index: usize, workers: usize) -> Self {
        WorkerInfo {
            index,
            workers,
            cpu: None,
            metrics: Metrics::new(workers),
            steering: Steering::Kernel,
            mailboxes: Mailboxes::new(workers, 16),
        }
    }
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
    /// Connections to drive again once the turn's events are handled:
    /// those whose read budget ran out, and those that writes through
    /// handles gave output (a turn is a batch of reads, then of writes).
    requeue: Vec<usize>,
    /// The connection being served before it is registered (deferred
    /// accept: see `insert`).
    unregistered: Option<usize>,
    accept: AcceptState,
    /// Whether the listener is level-triggered now (while accepting).
    listener_level: bool,
    /// Logged the current resource episode already.
    accept_warned: bool,
    counters: Counters,
    shared: Metrics,
    shutdown: ShutdownHandle,
    /// This worker's handle on the eBPF steering program (a no-op without).
    steer: WorkerSteer,
    /// Set when a graceful shutdown started: the deadline for connections.
    draining_until: Option<Instant>,
    /// The server (or this worker) is stopping, within the drain delay or
    /// after it: handlers are told they are draining.
    leaving: bool,
    /// The server's state as of this loop turn, for handlers.
    state: ServerState,
    /// During a drain: until when idle keep-alive connections stay open for
    /// a request already on its way.
    drain_grace_until: Option<Instant>,
    next_tick: Instant,
    /// Timer entries that fired and are not yet dealt with.
    due: Vec<Entry>,
    /// Since when the connection table has been under a quarter full.
    slab_low_since: Option<Instant>,
    /// The open connections by id: what a [`Context`] checks and resolves
    /// handles with.
    live: Live,
    /// Operations callbacks queued on connections, carried out after them.
    ops: Ops,
    /// The handler's timers.
    timers: Timers,
    /// Handler timer entries that fired and are not yet dealt with.
    due_timers: Vec<Entry>,
    /// This worker's mailbox.
    inbox: Inbox,
    /// Where callbacks post and offload.
    outbox: Outbox,
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
        shutdown: ShutdownHandle,
        steer: WorkerSteer,
        jobs: Option<SyncSender<Job>>,
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
        let shared = info.metrics.clone();
        shared.worker(worker).set_cpu(info.cpu);
        let failed = |source| Error::Worker { worker, source };
        let poll = Poll::new().map_err(failed)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(failed)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(failed)?);
        shutdown.register(worker, Arc::clone(&waker));
        let inbox = info.mailboxes.open(worker, waker);
        let outbox = Outbox {
            mailboxes: info.mailboxes.clone(),
            jobs,
        };
        let now = Instant::now();
        let handler = factory(&info);
        probes::steer(worker, opts.steering.as_cstr());
        let mut started = Worker {
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
            unregistered: None,
            // Edge-triggered as mio registered it; `set_accept` below.
            accept: AcceptState::Closed,
            listener_level: false,
            accept_warned: false,
            counters: Counters::default(),
            shutdown,
            steer,
            draining_until: None,
            leaving: false,
            state: ServerState::Serving,
            drain_grace_until: None,
            next_tick: now + opts.tick_interval,
            due: Vec::new(),
            slab_low_since: None,
            live: Live::default(),
            ops: Ops::default(),
            timers: Timers::new(now, opts.timer_resolution),
            due_timers: Vec::new(),
            inbox,
            outbox,
            shared,
            opts,
        };
        // Connections may have queued before the loop started.
        let burst = started.opts.accept_budget;
        started.set_accept(AcceptState::Open(Queue::Ready(burst)));
        started.handler_tick();
        Ok(started)
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
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Error::Worker {
                        worker: self.info.index,
                        source: e,
                    });
                }
            }
            let now = Instant::now();
            self.counters.loop_iterations += 1;
            self.observe_state();
            let mut reported = 0;
            for event in events.iter() {
                reported += 1;
                if reported % PROGRESS_EVERY == 0 {
                    self.steer.progress();
                }
                self.dispatch(event, now);
                self.apply_ops(now);
            }
            self.counters.events += reported as u64;
            self.resume_requeued(now);
            self.deliver_messages(now);
            self.check_shutdown(now);
            self.accept_connections(now, reported);
            self.expire_timers(now);
            self.fire_handler_timers(now);
            self.apply_ops(now);
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

    /// Hands one event to what it names.
    fn dispatch(&mut self, event: &mio::event::Event, now: Instant) {
        match event.token() {
            WAKER => {}
            LISTENER => self.listener_ready(),
            token => {
                let Some(key) = self.live_key(ConnToken::from(token)) else {
                    // An event for a connection that is gone, or for an older
                    // connection in a reused slot: drop it.
                    return;
                };
                let conn = &mut self.conns[key];
                if let Some(tag) = conn.connect_tag() {
                    return self.connect_event(key, tag, now);
                }
                let hangup = event.is_read_closed() || event.is_error();
                conn.on_event(event.is_readable(), hangup);
                self.drive(key, now);
            }
        }
    }

    fn live_key(&self, token: ConnToken) -> Option<usize> {
        let conn = self.conns.get(token.key)?;
        (conn.generation() == token.generation).then_some(token.key)
    }

    fn poll_timeout(&mut self, now: Instant) -> Option<Duration> {
        if !self.requeue.is_empty()
            || !self.due.is_empty()
            || !self.due_timers.is_empty()
            || !self.ops.queue.is_empty()
            || self.accept.is_pending()
            || self.inbox.pending()
        {
            return Some(Duration::ZERO);
        }
        // The earliest instant first, then one subtraction.
        let at = [
            self.wheel.next_due(),
            self.timers.wheel.next_due(),
            self.accept.paused_until(),
            self.draining_until,
        ]
        .into_iter()
        .flatten()
        .fold(self.next_tick, Instant::min);
        let mut t = at.saturating_duration_since(now);
        if let Some(w) = self.steer.wake_within() {
            t = t.min(w);
        }
        Some(t)
    }

    fn resume_requeued(&mut self, now: Instant) {
        if self.requeue.is_empty() {
            return;
        }
        let mut keys = std::mem::take(&mut self.requeue);
        for &key in &keys {
            // The slot may have been closed (and even reused) since; driving a
            // reused slot is harmless, it only reads what is there.
            if self.conns.contains(key) {
                self.drive(key, now);
            }
        }
        // Keep the allocation for next time.
        keys.clear();
        if self.requeue.is_empty() {
            self.requeue = keys;
        }
    }

    /// Once per tick interval: the handler's tick, and the reclamation
    /// passes that are due.
    fn tick(&mut self, now: Instant) {
        while self.next_tick <= now {
            self.next_tick += self.opts.tick_interval;
        }
        self.handler_tick();
        if self.pool.trim_due(now) {
            self.trim_pool();
        }
        self.maybe_shrink_slab(now);
    }

    /// The handler's `on_tick`; a panic in it is counted and logged.
    fn handler_tick(&mut self) {
        let handler = &mut self.handler;
        let mut cx = context!(self, None, Instant::now());
        if let Err(message) = panic::catch(|| handler.on_tick(SystemTime::now(), &mut cx)) {
            self.handler_panicked(None, "on_tick", &message);
        }
    }

    /// A handler callback panicked (and was caught): counted, traced and
    /// logged; the caller closes the connection, if there is one.
    fn handler_panicked(&mut self, conn: Option<u64>, callback: &str, message: &str) {
        self.counters.handler_panics += 1;
        probes::panic(self.info.index, conn.unwrap_or(u64::MAX));
        tracing::error!(
            worker = self.info.index,
            conn = conn.map_or_else(|| "-".to_owned(), |id| id.to_string()),
            callback,
            message,
            "handler panicked; closing its connection, the worker goes on serving"
        );
    }

    fn publish(&mut self) {
        self.counters.pool_idle = self.pool.idle() as u64;
        self.counters.pool_outstanding = self.pool.outstanding() as u64;
        self.counters.slab_capacity = self.conns.capacity() as u64;
        self.shared.worker(self.info.index).publish(&self.counters);
    }
}

fn elapsed_nanos(since: Instant) -> u64 {
    since.elapsed().as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests;
