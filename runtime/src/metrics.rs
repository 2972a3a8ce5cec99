//! Per-worker counters, readable from any thread without locks.
//!
//! Each worker counts in plain integers on its own thread and publishes them
//! into its own cache-line-aligned block of atomics once per loop iteration
//! (relaxed stores, no read-modify-write), so counting costs the hot path
//! nothing measurable and readers never contend with workers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::handler::CloseReason;
use crate::steering::{Ebpf, Steering, SteeringStats};

const REASONS: usize = CloseReason::ALL.len();

/// Defines every per-worker counter once: the worker's private copy
/// (`Counters`), the shared atomic copy (`SharedCounters`) with its publish
/// and snapshot, and the public [`WorkerMetrics`] with its sum.
macro_rules! worker_counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// A worker's counters as plain numbers; the worker's private copy.
        #[derive(Debug, Default, Clone)]
        pub(crate) struct Counters {
            pub(crate) closed: [u64; REASONS],
            $( pub(crate) $name: u64, )*
        }

        /// The shared, atomic copy of one worker's counters.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub(crate) struct SharedCounters {
            cpu: AtomicU64,
            closed: [AtomicU64; REASONS],
            $( $name: AtomicU64, )*
        }

        impl SharedCounters {
            /// Publishes the worker's private counters.
            pub(crate) fn publish(&self, c: &Counters) {
                for (dst, src) in self.closed.iter().zip(c.closed.iter()) {
                    dst.store(*src, Relaxed);
                }
                $( self.$name.store(c.$name, Relaxed); )*
            }

            fn snapshot(&self, worker: usize) -> WorkerMetrics {
                let cpu = self.cpu.load(Relaxed);
                WorkerMetrics {
                    worker,
                    cpu: (cpu != u64::MAX).then_some(cpu as usize),
                    closed: std::array::from_fn(|i| self.closed[i].load(Relaxed)),
                    $( $name: self.$name.load(Relaxed), )*
                }
            }
        }

        /// One worker's counters at one moment. Counters only grow, except
        /// `active`, `pool_idle`, `pool_outstanding` and `slab_capacity`,
        /// which are levels.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct WorkerMetrics {
            /// Worker index.
            pub worker: usize,
            /// The CPU the worker is pinned to, if pinned.
            pub cpu: Option<usize>,
            /// Connections closed, by [`CloseReason::index`]; see
            /// [`closed`](WorkerMetrics::closed).
            pub closed: [u64; REASONS],
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl WorkerMetrics {
            fn add(&mut self, other: &WorkerMetrics) {
                for (a, b) in self.closed.iter_mut().zip(other.closed.iter()) {
                    *a += b;
                }
                $( self.$name += other.$name; )*
            }
        }
    };
}

worker_counters! {
    /// Connections accepted.
    accepted,
    /// Outbound connects started ([`Context::connect`](crate::Context::connect)).
    connects,
    /// Outbound connects that failed (refused, timed out, ...).
    connect_failures,
    /// Messages handed to `on_message` (posts and offloaded results).
    messages,
    /// Connections open now.
    active,
    /// Bytes read from connections.
    bytes_read,
    /// Bytes written to connections.
    bytes_written,
    /// `recvfrom(2)` calls on connections that returned bytes.
    reads,
    /// `send(2)`/`sendmsg(2)` calls on connections that wrote bytes.
    writes,
    /// Readiness events handled.
    events,
    /// Turns of the event loop (also the worker's heartbeat).
    loop_iterations,
    /// Times accepting was paused for lack of descriptors or memory.
    accept_pauses,
    /// Handler callbacks that panicked (and were caught: the worker kept
    /// serving).
    handler_panics,
    /// Buffers idle in the worker's pool.
    pool_idle,
    /// Buffers lent to connections.
    pool_outstanding,
    /// Buffer pool trim passes (`pool_trim`).
    pool_trims,
    /// Timer expiry passes (`idle_sweep`).
    idle_sweeps,
    /// Connection-table shrink passes (`slab_shrink`).
    slab_shrinks,
    /// Capacity of the connection table (slots).
    slab_capacity,
    /// TLS handshakes completed (full and resumed).
    tls_handshakes,
    /// TLS handshakes that resumed a session (a ticket).
    tls_resumed,
}

impl SharedCounters {
    pub(crate) fn set_cpu(&self, cpu: Option<usize>) {
        self.cpu.store(cpu.map_or(u64::MAX, |c| c as u64), Relaxed);
    }
}

/// A handle to every worker's counters. Cheap to clone; readable from any
/// thread, during and after [`Server::run`](crate::Server::run).
#[derive(Debug, Clone)]
pub struct Metrics {
    workers: Arc<[SharedCounters]>,
    steering: Steering,
    ebpf: Ebpf,
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
        Metrics {
            workers,
            steering: Steering::Kernel,
            ebpf: Ebpf::default(),
        }
    }

    pub(crate) fn with_steering(mut self, mode: Steering, ebpf: Ebpf) -> Self {
        self.steering = mode;
        self.ebpf = ebpf;
        self
    }

    /// Number of workers.
    #[must_use]
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The steering mode in force (for servers: after any fall-back).
    #[must_use]
    pub fn steering_mode(&self) -> Steering {
        self.steering
    }

    /// The eBPF steering program's own counters (connections placed on each
    /// worker, left to the kernel's hash, migrated off closing listeners),
    /// or `None` when no eBPF program is in force. Reads the kernel's per-CPU
    /// map (a few system calls): for scrapes, not hot paths.
    #[must_use]
    pub fn steering(&self) -> Option<SteeringStats> {
        self.ebpf.stats(self.steering)
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
            t.add(w);
        }
        t
    }
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
