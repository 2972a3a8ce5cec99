//! What a handler callback may do beyond answering the bytes it was given:
//! act on any connection of its worker by handle, open connections, set
//! timers, post messages to workers and offload blocking work.
//!
//! Operations on connections are queued while the callback runs and carried
//! out by the worker right after it returns, in order (the callback holds
//! its own connection's state, so the others cannot be touched meanwhile).
//! The bytes of queued writes go into one arena the worker reuses: writing
//! to another connection allocates nothing in steady state.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slab::Slab;

pub use crate::handle::{ConnHandle, HandleError};
use crate::mailbox::{Job, OffloadError, Origin, Outbox, PostError};
use crate::shutdown::ServerState;
use crate::timer::{Entry, TimerWheel};

/// A timer set with [`Context::set_timer`]; cancel it with
/// [`Context::cancel_timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    key: u32,
    generation: u32,
}

/// An operation queued by a callback, carried out after it returns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    /// Append `len` bytes of the arena, from `at`, to the connection's output.
    Write { conn: u64, at: usize, len: usize },
    /// Flush, then close (as `Action::Close`).
    Close(u64),
    /// Stop reading the connection until resumed.
    Pause(u64),
    /// Read the connection again (and present what it holds unconsumed).
    Resume(u64),
    /// Call `on_writable` once its output is below the low-water mark.
    NotifyWritable(u64),
    /// Open connection `conn` to `addr` (`timeout`: `None` for the
    /// server's connect timeout).
    Connect {
        conn: u64,
        addr: SocketAddr,
        timeout: Option<Duration>,
        tag: u64,
    },
}

impl Op {
    /// The connection it acts on.
    pub(crate) fn conn(&self) -> u64 {
        match *self {
            Op::Write { conn, .. }
            | Op::Close(conn)
            | Op::Pause(conn)
            | Op::Resume(conn)
            | Op::NotifyWritable(conn)
            | Op::Connect { conn, .. } => conn,
        }
    }

    /// Whether carrying it out ends by driving its connection, or by
    /// queueing it to be driven once the turn's events are handled (either
    /// way sending what the operations before it on that connection left):
    /// those before it then need not drive it themselves.
    pub(crate) fn drives(&self) -> bool {
        matches!(
            self,
            Op::Write { .. } | Op::Close(_) | Op::Resume(_) | Op::NotifyWritable(_)
        )
    }
}

/// A handler timer: who it is for and the tag it fires with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timer {
    /// The id of the connection it belongs to; `None` for a worker timer.
    pub(crate) conn: Option<u64>,
    pub(crate) tag: u64,
    generation: u32,
}

/// The worker's handler timers: a slab named by [`TimerId`] and a wheel of
/// their deadlines.
#[derive(Debug)]
pub(crate) struct Timers {
    slab: Slab<Timer>,
    pub(crate) wheel: TimerWheel,
    next_generation: u32,
}

impl Timers {
    pub(crate) fn new(start: Instant, resolution: Duration) -> Self {
        Timers {
            slab: Slab::new(),
            wheel: TimerWheel::new(start, resolution, 256),
            next_generation: 0,
        }
    }

    /// The timer a wheel entry names, taken out, if it is still set.
    pub(crate) fn take(&mut self, entry: &Entry) -> Option<Timer> {
        let timer = self.slab.get(entry.key)?;
        (timer.generation == entry.generation).then(|| self.slab.remove(entry.key))
    }
}

/// The worker's queue of operations and the arena of their bytes (emptied
/// with their capacity kept: never reallocated in steady state).
#[derive(Debug, Default)]
pub(crate) struct Ops {
    pub(crate) queue: Vec<Op>,
    pub(crate) bytes: Vec<u8>,
}

impl Ops {
    /// Bytes of carried-out writes the arena may keep in front of the
    /// queued ones before they are dropped (moving the rest down).
    const SPENT_MAX: usize = 64 * 1024;

    /// The first `done` operations were carried out: drops them, and the
    /// arena's bytes no queued write needs any more. Writes take their
    /// bytes from the end of the arena in queue order, so what the queue
    /// still needs starts at its first write. While the queue never runs
    /// empty (callbacks that keep queuing beyond a turn's budget), the
    /// arena is thus bounded by what is queued plus [`Self::SPENT_MAX`].
    #[inline(never)]
    pub(crate) fn done(&mut self, done: usize) {
        self.queue.drain(..done);
        let needed_from = self
            .queue
            .iter()
            .find_map(|op| match *op {
                Op::Write { at, .. } => Some(at),
                _ => None,
            })
            .unwrap_or(self.bytes.len());
        if needed_from == self.bytes.len() {
            self.bytes.clear();
        } else if needed_from > Self::SPENT_MAX {
            self.bytes.drain(..needed_from);
            for op in &mut self.queue {
                if let Op::Write { at, .. } = op {
                    *at -= needed_from;
                }
            }
        }
    }
}

/// What a callback may do besides answering: see the module docs.
pub struct Context<'a> {
    worker: usize,
    conn: Option<ConnHandle>,
    now: Instant,
    /// The open connections: id to table slot.
    live: &'a mut Live,
    next_id: &'a mut u64,
    ops: &'a mut Ops,
    timers: &'a mut Timers,
    outbox: &'a Outbox,
    server_state: ServerState,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("worker", &self.worker)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

/// A worker's open connections by id: handles are checked and resolved
/// here, so they stay valid when a connection moves in the table
/// (`slab_shrink`).
/// A connection being opened is live from [`Context::connect`] on, before
/// the worker has given it a slot: its slot reads [`CONNECTING`] until then.
pub(crate) type Live = HashMap<u64, usize, BuildHasherDefault<IdHasher>>;

/// Hashes a connection id: ids are a counter local to the worker, never
/// chosen by a peer, so a multiplicative mix is enough (SipHash cost ~200
/// instructions per lookup, on every handle operation).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: consecutive ids spread over the whole table
        // (hashbrown takes its control bits from the top).
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The slot of a connection whose connect is queued.
pub(crate) const CONNECTING: usize = usize::MAX;

impl<'a> Context<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        worker: usize,
        conn: Option<ConnHandle>,
        now: Instant,
        live: &'a mut Live,
        next_id: &'a mut u64,
        ops: &'a mut Ops,
        timers: &'a mut Timers,
        outbox: &'a Outbox,
        server_state: ServerState,
    ) -> Self {
        Context {
            worker,
            conn,
            now,
            live,
            next_id,
            ops,
            timers,
            outbox,
            server_state,
        }
    }

    /// The connection this callback is about (`None` in a worker timer).
    #[must_use]
    pub fn conn(&self) -> Option<ConnHandle> {
        self.conn
    }

    /// The index of the worker running the callback.
    #[must_use]
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// When the worker's current loop turn began.
    #[must_use]
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Whether the server is serving, draining or handed over: what a
    /// readiness route (`/readyz`) answers from. It turns from
    /// [`ServerState::Serving`](crate::ServerState::Serving) the moment a
    /// graceful shutdown or a hand-over begins, and never back.
    ///
    /// ```
    /// use corelane::{DetachedContext, ServerState};
    ///
    /// let mut detached = DetachedContext::new(0);
    /// let cx = detached.context();
    /// let (status, body) = if cx.server_state().is_ready() {
    ///     ("200 OK", "ready\n")
    /// } else {
    ///     ("503 Service Unavailable", "draining\n")
    /// };
    /// assert_eq!(status, "200 OK");
    /// assert_eq!(cx.server_state(), ServerState::Serving);
    /// # let _ = body;
    /// ```
    #[must_use]
    pub fn server_state(&self) -> crate::ServerState {
        self.server_state
    }

    fn check(&self, conn: ConnHandle) -> Result<u64, HandleError> {
        if conn.worker() != self.worker {
            return Err(HandleError::OtherWorker(conn.worker()));
        }
        if self.live.contains_key(&conn.id()) {
            Ok(conn.id())
        } else {
            Err(HandleError::Closed)
        }
    }

    /// Appends `bytes` to `conn`'s output right after this callback (also
    /// when it is the connection being handled: after what the callback
    /// wrote to its own `Output`). It is sent once the worker has handled
    /// this turn's events, together with the turn's other such writes: a
    /// batch of reads, then a batch of writes, so that a peer is woken once
    /// for several messages instead of between every two reads.
    ///
    /// # Errors
    ///
    /// [`HandleError`] when `conn` is closed or another worker's.
    pub fn write(&mut self, conn: ConnHandle, bytes: &[u8]) -> Result<(), HandleError> {
        let conn = self.check(conn)?;
        let at = self.ops.bytes.len();
        self.ops.bytes.extend_from_slice(bytes);
        self.ops.queue.push(Op::Write {
            conn,
            at,
            len: bytes.len(),
        });
        Ok(())
    }

    /// Closes `conn` once its output is flushed, as [`Action::Close`]
    /// does for the connection being handled.
    ///
    /// [`Action::Close`]: crate::Action::Close
    ///
    /// # Errors
    ///
    /// [`HandleError`] when `conn` is closed or another worker's.
    pub fn close(&mut self, conn: ConnHandle) -> Result<(), HandleError> {
        let conn = self.check(conn)?;
        self.ops.queue.push(Op::Close(conn));
        Ok(())
    }

    /// Stops reading `conn` (its bytes wait in the kernel, and TCP flow
    /// control slows its sender) until [`resume_reading`](Self::resume_reading).
    ///
    /// # Errors
    ///
    /// [`HandleError`] when `conn` is closed or another worker's.
    pub fn pause_reading(&mut self, conn: ConnHandle) -> Result<(), HandleError> {
        let conn = self.check(conn)?;
        self.ops.queue.push(Op::Pause(conn));
        Ok(())
    }

    /// Reads `conn` again after [`pause_reading`](Self::pause_reading);
    /// input it holds unconsumed (a pipelined request left waiting while
    /// the one before it was answered) is presented to `on_data` again at
    /// once, without waiting for more bytes.
    ///
    /// # Errors
    ///
    /// [`HandleError`] when `conn` is closed or another worker's.
    pub fn resume_reading(&mut self, conn: ConnHandle) -> Result<(), HandleError> {
        let conn = self.check(conn)?;
        self.ops.queue.push(Op::Resume(conn));
        Ok(())
    }

    /// Opens a TCP connection to `addr` on this worker's own loop, within
    /// the server's [`connect_timeout`](crate::ServerOptions::connect_timeout).
    /// See [`connect_with_timeout`](Self::connect_with_timeout).
    pub fn connect(&mut self, addr: SocketAddr, tag: u64) -> ConnHandle {
        self.queue_connect(addr, None, tag)
    }

    /// Opens a TCP connection to `addr` on this worker's own loop (a
    /// non-blocking connect registered in the worker's `Poll`), failing
    /// if it is not established within `timeout`.
    ///
    /// The handle is usable at once: bytes written to it are sent once
    /// the connection is established; timers may be set on it. The outcome
    /// comes as an event with `tag`: [`Handler::on_connected`] (which gives
    /// the connection its state; from then on it is served exactly as an
    /// accepted one) or [`Handler::on_connect_failed`] with the reason
    /// (refused, unreachable, timed out, out of descriptors...).
    /// Closing the handle before the outcome cancels the connect silently.
    ///
    /// [`Handler::on_connected`]: crate::Handler::on_connected
    /// [`Handler::on_connect_failed`]: crate::Handler::on_connect_failed
    pub fn connect_with_timeout(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
        tag: u64,
    ) -> ConnHandle {
        self.queue_connect(addr, Some(timeout), tag)
    }

    fn queue_connect(
        &mut self,
        addr: SocketAddr,
        timeout: Option<Duration>,
        tag: u64,
    ) -> ConnHandle {
        let id = *self.next_id;
        *self.next_id += 1;
        self.live.insert(id, CONNECTING);
        self.ops.queue.push(Op::Connect {
            conn: id,
            addr,
            timeout,
            tag,
        });
        ConnHandle::new(self.worker, id)
    }

    /// Posts `body` to worker `worker` (this one included): it receives it
    /// in [`Handler::on_message`](crate::Handler::on_message) with no
    /// connection, `tag` and [`Origin::Worker`] naming this worker.
    ///
    /// # Errors
    ///
    /// [`PostError`]: the mailbox is full (the body comes back), there is
    /// no such worker, or it has stopped.
    pub fn post(
        &mut self,
        worker: usize,
        tag: u64,
        body: impl Any + Send,
    ) -> Result<(), PostError> {
        self.outbox.mailboxes.send(
            worker,
            None,
            tag,
            Origin::Worker(self.worker),
            Box::new(body),
        )
    }

    /// Posts `body` for connection `conn` of any worker: its worker
    /// receives it in [`Handler::on_message`](crate::Handler::on_message)
    /// with the connection's state, if it is still open then.
    ///
    /// # Errors
    ///
    /// As [`post`](Self::post).
    pub fn post_to(
        &mut self,
        conn: ConnHandle,
        tag: u64,
        body: impl Any + Send,
    ) -> Result<(), PostError> {
        self.outbox.mailboxes.send(
            conn.worker(),
            Some(conn.id()),
            tag,
            Origin::Worker(self.worker),
            Box::new(body),
        )
    }

    /// Runs `job` on one of the server's offload threads (for blocking
    /// calls and CPU-heavy work that must not hold the loop); its result
    /// comes back to this worker in
    /// [`Handler::on_message`](crate::Handler::on_message) with `tag`,
    /// [`Origin::Offload`], and a body of `Result<R, JobPanicked>`: for
    /// `conn` with its state, if it is still open then (otherwise the
    /// result is dropped), or for the worker when `None`.
    ///
    /// # Errors
    ///
    /// [`OffloadError::Full`] when every offload thread is busy and the
    /// queue is full (the job is not run), [`OffloadError::Unavailable`]
    /// without offload threads; [`HandleError`] is not checked here: a
    /// closed `conn` only means the result is dropped.
    ///
    /// [`JobPanicked`]: crate::JobPanicked
    pub fn offload<R: Any + Send>(
        &mut self,
        conn: Option<ConnHandle>,
        tag: u64,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<(), OffloadError> {
        let Some(jobs) = &self.outbox.jobs else {
            return Err(OffloadError::Unavailable);
        };
        let conn = conn
            .filter(|c| c.worker() == self.worker)
            .map(ConnHandle::id);
        match jobs.try_send(Job::new(self.worker, conn, tag, job)) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(_)) => Err(OffloadError::Full),
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err(OffloadError::Unavailable),
        }
    }

    /// Calls [`Handler::on_writable`] for `conn` once its unwritten output
    /// is below the low-water mark: right after this callback if it
    /// already is, otherwise when the socket has taken enough. With
    /// [`write`](Self::write) and [`pause_reading`](Self::pause_reading)
    /// this is backpressure between two connections: a proxy pauses the
    /// upstream after forwarding a window of bytes to a client and resumes
    /// it in the client's `on_writable`.
    ///
    /// [`Handler::on_writable`]: crate::Handler::on_writable
    ///
    /// # Errors
    ///
    /// [`HandleError`] when `conn` is closed or another worker's.
    pub fn notify_writable(&mut self, conn: ConnHandle) -> Result<(), HandleError> {
        let conn = self.check(conn)?;
        self.ops.queue.push(Op::NotifyWritable(conn));
        Ok(())
    }

    /// Sets a timer that calls [`Handler::on_timer`] with `tag` after
    /// `after` (to the worker timer wheel's resolution, 10 ms by default):
    /// for `conn`, with its state, or for the worker when `None`. A timer
    /// of a connection that closes first never fires.
    ///
    /// [`Handler::on_timer`]: crate::Handler::on_timer
    ///
    /// # Errors
    ///
    /// [`HandleError`] when `conn` is closed or another worker's.
    pub fn set_timer(
        &mut self,
        conn: Option<ConnHandle>,
        after: Duration,
        tag: u64,
    ) -> Result<TimerId, HandleError> {
        let conn = conn.map(|c| self.check(c)).transpose()?;
        let timers = &mut *self.timers;
        let generation = timers.next_generation;
        timers.next_generation = timers.next_generation.wrapping_add(1);
        let key = timers.slab.insert(Timer {
            conn,
            tag,
            generation,
        });
        timers.wheel.schedule(key, generation, self.now + after);
        Ok(TimerId {
            key: key as u32,
            generation,
        })
    }

    /// Cancels a timer; returns whether it was still set.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        let entry = Entry {
            key: timer.key as usize,
            generation: timer.generation,
            tick: 0,
        };
        self.timers.take(&entry).is_some()
    }
}

/// Owns what a [`Context`] borrows, outside any server: for driving a
/// handler directly in unit tests, benches and fuzzers (as
/// [`WorkerInfo::detached`](crate::WorkerInfo::detached) does for the
/// factory). It knows no connections, so handle operations are refused
/// with [`HandleError::Closed`]; timers are accepted and never fire;
/// connects are queued and never carried out; posts to its own worker
/// wait in a mailbox nobody reads; offloading is unavailable.
#[derive(Debug)]
pub struct DetachedContext {
    worker: usize,
    live: Live,
    next_id: u64,
    ops: Ops,
    timers: Timers,
    outbox: Outbox,
}

impl DetachedContext {
    /// For worker `worker`.
    #[must_use]
    pub fn new(worker: usize) -> Self {
        DetachedContext {
            worker,
            live: Live::default(),
            next_id: 0,
            ops: Ops::default(),
            timers: Timers::new(Instant::now(), Duration::from_millis(10)),
            outbox: Outbox::detached(worker),
        }
    }

    /// A context for one callback.
    pub fn context(&mut self) -> Context<'_> {
        Context::new(
            self.worker,
            None,
            Instant::now(),
            &mut self.live,
            &mut self.next_id,
            &mut self.ops,
            &mut self.timers,
            &self.outbox,
            ServerState::Serving,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{Op, Ops};

    /// Queues a write of `len` copies of `byte` to connection 1, as
    /// `Context::write` does.
    fn write(ops: &mut Ops, byte: u8, len: usize) {
        let at = ops.bytes.len();
        ops.bytes.extend(std::iter::repeat_n(byte, len));
        ops.queue.push(Op::Write { conn: 1, at, len });
    }

    /// The bytes each queued write would append.
    fn written(ops: &Ops) -> Vec<Vec<u8>> {
        ops.queue
            .iter()
            .filter_map(|op| match *op {
                Op::Write { at, len, .. } => Some(ops.bytes[at..at + len].to_vec()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_arena_stays_bounded_while_the_queue_never_runs_empty() {
        let mut ops = Ops::default();
        let mut next = 0u8;
        for _ in 0..200 {
            // A turn's worth carried out while as many more are queued
            // (and a non-write between them).
            for _ in 0..10 {
                write(&mut ops, next, 1000);
                next = next.wrapping_add(1);
            }
            ops.queue.push(Op::Pause(1));
            let before = written(&ops);
            let done = ops.queue.len() / 2;
            ops.done(done);
            // What is still queued writes the same bytes as before.
            assert_eq!(written(&ops), before[before.len() - written(&ops).len()..]);
            let queued: usize = written(&ops).iter().map(Vec::len).sum();
            assert!(
                ops.bytes.len() <= queued + Ops::SPENT_MAX + 1000,
                "arena {} for {queued} queued bytes",
                ops.bytes.len()
            );
        }
        // All carried out: the arena is emptied.
        let n = ops.queue.len();
        ops.done(n);
        assert!(ops.queue.is_empty() && ops.bytes.is_empty());
    }
}
