//! Per-worker counters, readable from any thread without locks.
//!
//! Each worker counts in plain integers on its own thread and publishes them
//! into its own cache-line-aligned block of atomics once per loop iteration
//! (relaxed stores, no read-modify-write), so counting costs the hot path
//! nothing measurable and readers never contend with workers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::handler::CloseReason;

const REASONS: usize = CloseReason::ALL.len();

/// A worker's counters as plain numbers; the worker's private copy.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub(crate) accepted: u64,
    pub(crate) active: u64,
    pub(crate) closed: [u64; REASONS],
    pub(crate) bytes_read: u64,
    pub(crate) bytes_written: u64,
    pub(crate) reads: u64,
    pub(crate) writes: u64,
    pub(crate) events: u64,
    pub(crate) loop_iterations: u64,
    pub(crate) accept_pauses: u64,
    pub(crate) pool_idle: u64,
    pub(crate) pool_outstanding: u64,
    pub(crate) pool_trims: u64,
    pub(crate) idle_sweeps: u64,
    pub(crate) slab_shrinks: u64,
    pub(crate) slab_capacity: u64,
}

/// The shared, atomic copy of one worker's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct SharedCounters {
    cpu: AtomicU64,
    accepted: AtomicU64,
    active: AtomicU64,
    closed: [AtomicU64; REASONS],
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    events: AtomicU64,
    loop_iterations: AtomicU64,
    accept_pauses: AtomicU64,
    pool_idle: AtomicU64,
    pool_outstanding: AtomicU64,
    pool_trims: AtomicU64,
    idle_sweeps: AtomicU64,
    slab_shrinks: AtomicU64,
    slab_capacity: AtomicU64,
    /// Sequence number of the last publication, to tell a running worker from a stalled one.
    heartbeat: AtomicU64,
}

impl SharedCounters {
    pub(crate) fn set_cpu(&self, cpu: Option<usize>) {
        self.cpu.store(cpu.map_or(u64::MAX, |c| c as u64), Relaxed);
    }

    /// Publishes the worker's private counters.
    pub(crate) fn publish(&self, c: &Counters) {
        self.accepted.store(c.accepted, Relaxed);
        self.active.store(c.active, Relaxed);
        for (dst, src) in self.closed.iter().zip(c.closed.iter()) {
            dst.store(*src, Relaxed);
        }
        self.bytes_read.store(c.bytes_read, Relaxed);
        self.bytes_written.store(c.bytes_written, Relaxed);
        self.reads.store(c.reads, Relaxed);
        self.writes.store(c.writes, Relaxed);
        self.events.store(c.events, Relaxed);
        self.loop_iterations.store(c.loop_iterations, Relaxed);
        self.accept_pauses.store(c.accept_pauses, Relaxed);
        self.pool_idle.store(c.pool_idle, Relaxed);
        self.pool_outstanding.store(c.pool_outstanding, Relaxed);
        self.pool_trims.store(c.pool_trims, Relaxed);
        self.idle_sweeps.store(c.idle_sweeps, Relaxed);
        self.slab_shrinks.store(c.slab_shrinks, Relaxed);
        self.slab_capacity.store(c.slab_capacity, Relaxed);
        self.heartbeat.store(c.loop_iterations, Relaxed);
    }

    fn snapshot(&self, worker: usize) -> WorkerMetrics {
        let cpu = self.cpu.load(Relaxed);
        WorkerMetrics {
            worker,
            cpu: (cpu != u64::MAX).then_some(cpu as usize),
            accepted: self.accepted.load(Relaxed),
            active: self.active.load(Relaxed),
            closed: std::array::from_fn(|i| self.closed[i].load(Relaxed)),
            bytes_read: self.bytes_read.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            events: self.events.load(Relaxed),
            loop_iterations: self.loop_iterations.load(Relaxed),
            accept_pauses: self.accept_pauses.load(Relaxed),
            pool_idle: self.pool_idle.load(Relaxed),
            pool_outstanding: self.pool_outstanding.load(Relaxed),
            pool_trims: self.pool_trims.load(Relaxed),
            idle_sweeps: self.idle_sweeps.load(Relaxed),
            slab_shrinks: self.slab_shrinks.load(Relaxed),
            slab_capacity: self.slab_capacity.load(Relaxed),
        }
    }
}

/// A handle to every worker's counters. Cheap to clone; readable from any
/// thread, during and after [`Server::run`](crate::Server::run).
#[derive(Debug, Clone)]
pub struct Metrics {
    workers: Arc<[SharedCounters]>,
}

impl Metrics {
    /// Zeroed counters for `workers` workers. Servers make their own; this is
    /// for driving a handler outside a server (tests, benches, fuzzers).
    #[must_use]
    pub fn new(workers: usize) -> Self {
        let workers: Arc<[SharedCounters]> =
            (0..workers).map(|_| SharedCounters::default()).collect();
        for w in workers.iter() {
            w.set_cpu(None);
        }
        Metrics { workers }
    }

    pub(crate) fn worker(&self, index: usize) -> &SharedCounters {
        &self.workers[index]
    }

    /// The counters of every worker, in worker order.
    #[must_use]
    pub fn snapshot(&self) -> Vec<WorkerMetrics> {
        self.workers
            .iter()
            .enumerate()
            .map(|(i, w)| w.snapshot(i))
            .collect()
    }

    /// The sum over all workers (with `worker` set to the worker count).
    #[must_use]
    pub fn total(&self) -> WorkerMetrics {
        let all = self.snapshot();
        let mut t = WorkerMetrics {
            worker: all.len(),
            cpu: None,
            ..WorkerMetrics::default()
        };
        for w in &all {
            t.accepted += w.accepted;
            t.active += w.active;
            for (a, b) in t.closed.iter_mut().zip(w.closed.iter()) {
                *a += b;
            }
            t.bytes_read += w.bytes_read;
            t.bytes_written += w.bytes_written;
            t.reads += w.reads;
            t.writes += w.writes;
            t.events += w.events;
            t.loop_iterations += w.loop_iterations;
            t.accept_pauses += w.accept_pauses;
            t.pool_idle += w.pool_idle;
            t.pool_outstanding += w.pool_outstanding;
            t.pool_trims += w.pool_trims;
            t.idle_sweeps += w.idle_sweeps;
            t.slab_shrinks += w.slab_shrinks;
            t.slab_capacity += w.slab_capacity;
        }
        t
    }
}

/// One worker's counters at one moment. Counters only grow, except `active`,
/// `pool_idle`, `pool_outstanding` and `slab_capacity`, which are levels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerMetrics {
    /// Worker index.
    pub worker: usize,
    /// The CPU the worker is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections closed, by [`CloseReason::index`]; see [`closed`](WorkerMetrics::closed).
    pub closed: [u64; REASONS],
    /// Bytes read from connections.
    pub bytes_read: u64,
    /// Bytes written to connections.
    pub bytes_written: u64,
    /// `read(2)` calls on connections that returned bytes.
    pub reads: u64,
    /// `send(2)`/`sendmsg(2)` calls on connections that wrote bytes.
    pub writes: u64,
    /// Readiness events handled.
    pub events: u64,
    /// Turns of the event loop.
    pub loop_iterations: u64,
    /// Times accepting was paused for lack of descriptors or memory.
    pub accept_pauses: u64,
    /// Buffers idle in the worker's pool.
    pub pool_idle: u64,
    /// Buffers lent to connections.
    pub pool_outstanding: u64,
    /// Buffer pool trim passes that freed something.
    pub pool_trims: u64,
    /// Timer expiry passes that closed connections.
    pub idle_sweeps: u64,
    /// Connection-table shrink passes.
    pub slab_shrinks: u64,
    /// Capacity of the connection table (slots).
    pub slab_capacity: u64,
}

impl WorkerMetrics {
    /// Connections closed for `reason`.
    #[must_use]
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }

    /// Connections closed for any reason.
    #[must_use]
    pub fn closed_total(&self) -> u64 {
        self.closed.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_snapshot_round_trips() {
        let m = Metrics::new(2);
        let mut c = Counters {
            accepted: 5,
            active: 2,
            bytes_read: 10,
            ..Counters::default()
        };
        c.closed[CloseReason::Reset.index()] = 3;
        m.worker(1).publish(&c);
        m.worker(1).set_cpu(Some(1));
        let s = m.snapshot();
        assert_eq!(
            s[0],
            WorkerMetrics {
                worker: 0,
                cpu: None,
                ..WorkerMetrics::default()
            }
        );
        assert_eq!(s[1].accepted, 5);
        assert_eq!(s[1].cpu, Some(1));
        assert_eq!(s[1].closed(CloseReason::Reset), 3);
        assert_eq!(m.total().closed_total(), 3);
    }
}
