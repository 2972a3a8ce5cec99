//! What corelane's `sk_reuseport` steering program and its loader share: map
//! names and sizes, the layout of every map value, and the policy choice
//! itself.
//!
//! The choice ([`pick`]) is plain `no_std` Rust compiled twice: into the
//! kernel program (`corelane-steering-program`) and into userspace, where
//! tests and the steering-model bench run exactly the code the kernel runs.
#![no_std]

/// Layout version of the maps and the program. A loader refuses a pinned
/// program whose config carries another version.
pub const VERSION: u32 = 3;

/// Largest number of workers (listeners) one group can steer between.
pub const MAX_WORKERS: u32 = 64;

/// Generations of workers the maps hold at once: the serving one and the one
/// taking over (a restart). Generation slot `g` owns the indices
/// `g * MAX_WORKERS ..` of [`maps::SOCKETS`], [`maps::WORKERS`] and
/// [`maps::STATS`], and `g * MAX_CPUS ..` of [`maps::CPU_WORKER`];
/// [`Config::base`] says which slot is steered to.
pub const GENERATIONS: u32 = 2;

/// Entries of [`maps::SOCKETS`] and [`maps::WORKERS`]: every generation's
/// workers.
pub const SLOTS: u32 = MAX_WORKERS * GENERATIONS;

/// Largest CPU number + 1 that the CPU → worker table covers. Connections
/// whose SYN is handled on a higher CPU are steered by hash.
pub const MAX_CPUS: u32 = 1024;

/// "No worker": the value of an unmapped CPU in [`maps::CPU_WORKER`].
pub const NO_WORKER: u32 = u32::MAX;

/// Index in [`maps::STATS`] counting connections the program left to the
/// kernel's hash because no eligible worker could be selected.
pub const STAT_FALLBACK: u32 = SLOTS;
/// Index in [`maps::STATS`] counting connections moved off a closing
/// listener (`BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`).
pub const STAT_MIGRATED: u32 = SLOTS + 1;
/// [`pick`] tries at most this many workers, from the preferred one onwards,
/// before leaving the connection to the kernel's hash.
pub const PROBE_LIMIT: u32 = 8;

/// Repeats `$body` with `$i` bound to each listed constant: a loop unrolled
/// in the source. The kernel's verifier must see no loops here: without
/// CAP_PERFMON it also walks the mispredicted side of every branch (Spectre
/// v1 hardening), and on a loop's exit test that side never ends, so a
/// program with loops loads as root but is rejected with CAP_BPF alone.
macro_rules! unrolled {
    ($i:ident in [$($n:literal)*] $body:block) => {
        $( { let $i: u32 = $n; $body } )*
    };
}

/// `k + i` modulo `n`, for `k < n` and `i < n`.
#[inline(always)]
const fn wrap(k: u32, i: u32, n: u32) -> u32 {
    let j = k + i;
    if j >= n {
        j - n
    } else {
        j
    }
}

/// Number of entries of [`maps::STATS`]: one selection counter per worker
/// slot (of every generation), then [`STAT_FALLBACK`] and [`STAT_MIGRATED`].
pub const STAT_ENTRIES: u32 = SLOTS + 2;

/// A worker that has made no progress for longer than the configured stall
/// time (now, or in the last quarter to half second) counts this many
/// connections more under `least-loaded`, plus one per ~millisecond of its
/// longest stretch without progress (at most `STALL_PENALTY - 1` more): it
/// gets no new connection until the others hold that many more than it
/// does. A stall diverts a bounded number of connections, so a worker that
/// only looked stalled (preempted on a busy machine) costs at most that much
/// imbalance, while one really stuck in a handler, whose connections are
/// short-lived or few, keeps being avoided; among workers that all look
/// stalled, the one stalled longest is avoided.
pub const STALL_PENALTY: u32 = 32;

/// Map and program names in the object file.
pub mod maps {
    /// `REUSEPORT_SOCKARRAY`, [`SLOTS`](crate::SLOTS) long: listener of
    /// worker `i` of the generation at `base` at index `base + i`.
    pub const SOCKETS: &str = "SOCKETS";
    /// `ARRAY` of one [`Config`](crate::Config).
    pub const CONFIG: &str = "CONFIG";
    /// `ARRAY` (mmapable) of [`WorkerSlot`](crate::WorkerSlot), one per
    /// worker slot, [`SLOTS`](crate::SLOTS) long: 32-byte values laid out
    /// back to back in the mapping (one page).
    pub const WORKERS: &str = "WORKERS";
    /// `ARRAY` of [`CpuWorkers`](crate::CpuWorkers), one per CPU and
    /// generation ([`cpu_key`](crate::cpu_key)): the workers pinned to that
    /// CPU.
    pub const CPU_WORKER: &str = "CPU_WORKER";
    /// `PERCPU_ARRAY` of `u64`, [`STAT_ENTRIES`](crate::STAT_ENTRIES) long.
    pub const STATS: &str = "STATS";
    /// `PERCPU_ARRAY` of one `u32`: the round-robin position of each CPU.
    pub const RR: &str = "RR";
    /// The program, attached with `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`.
    pub const PROGRAM: &str = "corelane_steer";
}

/// How the program picks a worker for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Policy {
    /// The connection's flow hash modulo the number of workers: stateless,
    /// and the same 4-tuple always lands on the same worker.
    Hash = 0,
    /// The worker pinned to the CPU that handled the SYN (through a CPU →
    /// worker table), for locality with the NIC's RSS; hash for unmapped CPUs.
    Cpu = 1,
    /// Each CPU deals connections to the workers in turn: exact to within
    /// one connection per worker for connections arriving on one CPU.
    RoundRobin = 2,
    /// The lighter (fewest live plus just-steered connections, not stalled)
    /// of two candidates: one rotating, one by flow hash (power of two
    /// choices); ties go to the rotating one, so an idle group fills round
    /// robin.
    LeastLoaded = 3,
}

impl Policy {
    /// Every policy, in declaration order.
    pub const ALL: [Policy; 4] = [
        Policy::Hash,
        Policy::Cpu,
        Policy::RoundRobin,
        Policy::LeastLoaded,
    ];

    /// The policy stored as `value` in [`Config::policy`].
    #[must_use]
    pub const fn from_u32(value: u32) -> Option<Policy> {
        match value {
            0 => Some(Policy::Hash),
            1 => Some(Policy::Cpu),
            2 => Some(Policy::RoundRobin),
            3 => Some(Policy::LeastLoaded),
            _ => None,
        }
    }

    /// The name used on command lines, in logs and in metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::Hash => "hash",
            Policy::Cpu => "cpu",
            Policy::RoundRobin => "round-robin",
            Policy::LeastLoaded => "least-loaded",
        }
    }

    /// The policy called `name` (see [`as_str`](Policy::as_str)).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// The program's configuration: entry 0 of [`maps::CONFIG`]. Rewritten in
/// one update when a new generation of workers takes over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Config {
    /// [`VERSION`] of the loader that wrote it.
    pub version: u32,
    /// A [`Policy`] as `u32`.
    pub policy: u32,
    /// Number of workers of the serving generation.
    pub workers: u32,
    /// First index of the serving generation: 0 or [`MAX_WORKERS`]. Worker
    /// `i`'s listener is at `SOCKETS[base + i]`, its slot `WORKERS[base + i]`.
    pub base: u32,
    /// A worker inside one loop turn for longer than this (nanoseconds of
    /// `CLOCK_MONOTONIC`) is stalled; 0 disables stall detection.
    pub stall_ns: u64,
    /// Counts takeovers: 1 for the process that loaded the program, one more
    /// for each process that took over from the previous one.
    pub generation: u32,
    /// Process id of the serving generation.
    pub owner_pid: u32,
}

impl Config {
    /// [`base`](Config::base) as the program trusts it: 0 or
    /// [`MAX_WORKERS`], whatever was written.
    #[inline(always)]
    #[must_use]
    pub const fn base(&self) -> u32 {
        if self.base >= MAX_WORKERS {
            MAX_WORKERS
        } else {
            0
        }
    }
}

/// The key in [`maps::CPU_WORKER`] of `cpu`'s entry for the generation at
/// `base`, or `None` for a CPU beyond the table.
#[inline(always)]
#[must_use]
pub const fn cpu_key(base: u32, cpu: u32) -> Option<u32> {
    if cpu >= MAX_CPUS {
        return None;
    }
    Some(if base >= MAX_WORKERS {
        cpu + MAX_CPUS
    } else {
        cpu
    })
}

/// What one worker publishes for the program: an entry of the mmapable
/// [`maps::WORKERS`] array, written by the worker with plain atomic stores to
/// shared memory (no system call) and read by the program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct WorkerSlot {
    /// Live connections of the worker.
    pub conns: u32,
    /// Non-zero: the worker is draining and must not be picked.
    pub draining: u32,
    /// Connections steered to the worker and not yet accepted: the program
    /// adds one per selection (an atomic add: 64 bits, the only width the
    /// bpf target has atomics for); the worker resets it to 0 when its
    /// accept queue is empty.
    pub pending: u64,
    /// `CLOCK_MONOTONIC` nanoseconds of the worker's last sign of progress
    /// in its current loop turn (the turn's start, an accepted connection,
    /// every few events handled); 0 while it waits for events.
    pub busy_since_ns: u64,
    /// The longest stretch without progress of the worker's recent past
    /// (the current and the previous quarter second), nanoseconds: a worker
    /// that stalls repeatedly stays avoided between its stalls, not only
    /// during them.
    pub recent_turn_ns: u64,
}

impl WorkerSlot {
    /// The worker's load as `least-loaded` sees it at `now_ns`.
    #[inline(always)]
    #[must_use]
    pub fn load(&self, now_ns: u64, stall_ns: u64) -> u32 {
        let pending = if self.pending > u64::from(u32::MAX) {
            u32::MAX
        } else {
            self.pending as u32
        };
        let mut load = self.conns.saturating_add(pending);
        let busy = self.busy_since_ns;
        let stuck_for = if busy != 0 && now_ns > busy {
            now_ns - busy
        } else {
            0
        };
        let lag = if stuck_for > self.recent_turn_ns {
            stuck_for
        } else {
            self.recent_turn_ns
        };
        if stall_ns != 0 && lag > stall_ns {
            // Graded by how long (in ~ms): when every candidate looks
            // stalled, the one stuck longest is the one avoided. Bounded:
            // see `STALL_PENALTY`.
            let ms = lag >> 20;
            let ms = if ms >= u64::from(STALL_PENALTY) {
                STALL_PENALTY - 1
            } else {
                ms as u32
            };
            load = load.saturating_add(STALL_PENALTY + ms);
        }
        load
    }
}

/// The workers pinned to one CPU: an entry of [`maps::CPU_WORKER`]. The
/// `cpu` policy spreads a CPU's connections over them by flow hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CpuWorkers {
    /// How many of `workers` are set (0: no worker on this CPU; the
    /// connection is steered by hash over all workers).
    pub count: u32,
    /// Worker indices; at most [`CPU_WORKERS_MAX`] per CPU are used.
    pub workers: [u32; CPU_WORKERS_MAX],
}

/// Workers per CPU the `cpu` policy spreads over.
pub const CPU_WORKERS_MAX: usize = 4;

impl CpuWorkers {
    /// The worker for a connection with flow hash `hash`, or [`NO_WORKER`].
    #[inline(always)]
    #[must_use]
    pub fn pick(&self, hash: u32) -> u32 {
        pick_of(self.count, self.workers, hash)
    }
}

/// [`CpuWorkers::pick`] on values already read: scalar selections only, no
/// indexing, so the compiler cannot turn it into a variable offset into the
/// map value (which the verifier refuses without CAP_PERFMON).
#[inline(always)]
#[must_use]
pub fn pick_of(count: u32, workers: [u32; CPU_WORKERS_MAX], hash: u32) -> u32 {
    let count = if count as usize > CPU_WORKERS_MAX {
        CPU_WORKERS_MAX as u32
    } else {
        count
    };
    if count == 0 {
        return NO_WORKER;
    }
    let i = hash % count;
    let mut w = workers[0];
    if i == 1 {
        w = workers[1];
    }
    if i == 2 {
        w = workers[2];
    }
    if i == 3 {
        w = workers[3];
    }
    w
}

const _: () = assert!(CPU_WORKERS_MAX == 4, "the match in `CpuWorkers::pick`");

/// Everything [`pick`] decides from, for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Input {
    /// The policy in force.
    pub policy: Policy,
    /// Number of workers (at most [`MAX_WORKERS`]).
    pub workers: u32,
    /// The connection's flow hash (`sk_reuseport_md.hash`).
    pub hash: u32,
    /// The worker pinned to the CPU handling the SYN (of several, the flow
    /// hash's choice: [`CpuWorkers::pick`]), or [`NO_WORKER`].
    pub cpu_worker: u32,
    /// This CPU's round-robin position (incremented once per connection).
    pub turn: u32,
}

/// What [`pick`] may ask about worker `i`.
pub trait Workers {
    /// Whether worker `i` may receive new connections (not draining).
    fn eligible(&self, i: u32) -> bool;
    /// Worker `i`'s load for `least-loaded` (see [`WorkerSlot::load`]).
    fn load(&self, i: u32) -> u32;
}

/// The worker the policy prefers, before eligibility is considered:
/// [`pick`] starts there and probes onwards.
#[inline(always)]
#[must_use]
pub fn preferred(input: &Input, workers: &impl Workers) -> u32 {
    let n = input.workers;
    if n == 0 {
        return 0;
    }
    match input.policy {
        Policy::Hash => input.hash % n,
        Policy::Cpu if input.cpu_worker < n => input.cpu_worker,
        Policy::Cpu => input.hash % n,
        Policy::RoundRobin => input.turn % n,
        Policy::LeastLoaded => {
            // Power of two choices: the lighter of a rotating candidate and
            // a second one chosen by the flow hash among the others. Two
            // looks per connection whatever the worker count, and the
            // heaviest worker is never picked over a lighter one. Ties go to
            // the rotating candidate, so an idle group fills round robin.
            let a = input.turn % n;
            if n == 1 {
                return a;
            }
            let b = wrap(a, 1 + input.hash % (n - 1), n);
            if !workers.eligible(a) {
                return b;
            }
            if workers.eligible(b) && workers.load(b) < workers.load(a) {
                b
            } else {
                a
            }
        }
    }
}

const _: () = assert!(PROBE_LIMIT == 8, "the unrolled list in `pick`");

/// Picks the worker for one connection: the policy's [preferred] worker if
/// it is eligible and `select` accepts it, else the next eligible one (in
/// index order, wrapping, at most [`PROBE_LIMIT`] tried) that `select`
/// accepts. `select` is the kernel's
/// `bpf_sk_select_reuseport` in the program (it fails for an index whose
/// listener is gone); `None` leaves the connection to the kernel's hash.
#[inline(always)]
pub fn pick(
    input: &Input,
    workers: &impl Workers,
    mut select: impl FnMut(u32) -> bool,
) -> Option<u32> {
    let n = input.workers;
    if n == 0 || n > MAX_WORKERS {
        return None;
    }
    let first = preferred(input, workers);
    unrolled!(i in [0 1 2 3 4 5 6 7] {
        if i < n {
            let k = wrap(first, i, n);
            if workers.eligible(k) && select(k) {
                return Some(k);
            }
        }
    });
    None
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `Config` is `repr(C)`, has no padding (4 × u32, a u64 at
    // offset 16, 2 × u32) and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: `CpuWorkers` is `repr(C)`, five u32 without padding; every
    // bit pattern is a valid value.
    unsafe impl aya::Pod for super::CpuWorkers {}
    // SAFETY: `WorkerSlot` is `repr(C)`, has no padding (2 × u32 then three
    // u64 at offsets 8, 16 and 24) and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::WorkerSlot {}
}

const _: () = assert!(
    core::mem::size_of::<Config>() == 32,
    "Config has no padding"
);
const _: () = assert!(
    core::mem::size_of::<WorkerSlot>() * SLOTS as usize == 4096,
    "WORKERS is exactly one page"
);
