//! What a handler callback may do beyond answering the bytes it was given:
//! act on any connection of its worker by handle, and set timers.
//!
//! Operations on connections are queued while the callback runs and carried
//! out by the worker right after it returns, in order (the callback holds
//! its own connection's state, so the others cannot be touched meanwhile).
//! The bytes of queued writes go into one arena the worker reuses: writing
//! to another connection allocates nothing in steady state.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::timer::{Entry, TimerWheel};

/// Names a connection of one worker, from any of that worker's callbacks,
/// for as long as it is open: copyable, and never aliased to a later
/// connection (it holds the connection's id, unique within the worker, not
/// its table slot; an operation on a closed connection's handle is refused
/// with [`HandleError::Closed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnHandle {
    worker: u32,
    id: u64,
}

impl ConnHandle {
    pub(crate) fn new(worker: usize, id: u64) -> Self {
        ConnHandle {
            worker: worker as u32,
            id,
        }
    }

    /// The worker that owns the connection.
    #[must_use]
    pub fn worker(self) -> usize {
        self.worker as usize
    }

    /// The connection's id within its worker (the probes' `conn_id`).
    #[must_use]
    pub fn id(self) -> u64 {
        self.id
    }
}

/// Why an operation on a [`ConnHandle`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// The connection has closed (its slot may hold another one now).
    #[error("the connection is closed")]
    Closed,
    /// The handle names a connection of another worker: only its own worker
    /// acts on a connection.
    #[error("the connection belongs to worker {0}")]
    OtherWorker(usize),
}

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
    /// Read the connection again.
    Resume(u64),
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

/// The worker's queue of operations and the arena of their bytes.
#[derive(Debug, Default)]
pub(crate) struct Ops {
    pub(crate) queue: Vec<Op>,
    pub(crate) bytes: Vec<u8>,
}

/// What a callback may do besides answering: see the module docs.
pub struct Context<'a> {
    worker: usize,
    conn: Option<ConnHandle>,
    now: Instant,
    /// The open connections: id to table slot.
    live: &'a Live,
    ops: &'a mut Ops,
    timers: &'a mut Timers,
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
pub(crate) type Live = HashMap<u64, usize>;

impl<'a> Context<'a> {
    pub(crate) fn new(
        worker: usize,
        conn: Option<ConnHandle>,
        now: Instant,
        live: &'a Live,
        ops: &'a mut Ops,
        timers: &'a mut Timers,
    ) -> Self {
        Context {
            worker,
            conn,
            now,
            live,
            ops,
            timers,
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

    fn check(&self, conn: ConnHandle) -> Result<u64, HandleError> {
        if conn.worker() != self.worker {
            return Err(HandleError::OtherWorker(conn.worker()));
        }
        if self.live.contains_key(&conn.id) {
            Ok(conn.id)
        } else {
            Err(HandleError::Closed)
        }
    }

    /// Appends `bytes` to `conn`'s output, flushed right after this
    /// callback (also when it is the connection being handled: after what
    /// the callback wrote to its own `Output`).
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

    /// Reads `conn` again after [`pause_reading`](Self::pause_reading).
    ///
    /// # Errors
    ///
    /// [`HandleError`] when `conn` is closed or another worker's.
    pub fn resume_reading(&mut self, conn: ConnHandle) -> Result<(), HandleError> {
        let conn = self.check(conn)?;
        self.ops.queue.push(Op::Resume(conn));
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
/// with [`HandleError::Closed`]; timers are accepted and never fire.
#[derive(Debug)]
pub struct DetachedContext {
    worker: usize,
    live: Live,
    ops: Ops,
    timers: Timers,
}

impl DetachedContext {
    /// For worker `worker`.
    #[must_use]
    pub fn new(worker: usize) -> Self {
        DetachedContext {
            worker,
            live: Live::default(),
            ops: Ops::default(),
            timers: Timers::new(Instant::now(), Duration::from_millis(10)),
        }
    }

    /// A context for one callback.
    pub fn context(&mut self) -> Context<'_> {
        Context::new(
            self.worker,
            None,
            Instant::now(),
            &self.live,
            &mut self.ops,
            &mut self.timers,
        )
    }
}
