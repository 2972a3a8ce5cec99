//! How the kernel picks a worker for each new connection.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use corelane_steering_common::Policy;

/// The steering of the reuseport group: which worker's listener the kernel
/// puts each new connection on, decided in the kernel before any userspace
/// code runs.
///
/// Set it with [`ServerBuilder::steering`](crate::ServerBuilder::steering);
/// the mode actually in force is in [`WorkerInfo::steering`](crate::WorkerInfo),
/// the start-up log line and [`Metrics::steering`](crate::Metrics::steering).
/// When a mode cannot be set up, the server steps down the ladder eBPF →
/// classic BPF by CPU → the kernel's hash, logging each step with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Steering {
    /// eBPF `least-loaded` where permitted (CAP_BPF or root), else classic
    /// BPF by CPU (workers pinned), else the kernel's hash. With a single
    /// worker there is nothing to steer: the kernel's hash, no program.
    #[default]
    Auto,
    /// The `sk_reuseport` eBPF program with this policy: needs CAP_BPF (or
    /// root) and the `ebpf` feature. Workers that stop are excluded from
    /// steering and the connections queued on their listeners migrate to the
    /// others instead of being reset.
    Ebpf(Policy),
    /// A classic BPF program (`SO_ATTACH_REUSEPORT_CBPF`, no privilege
    /// needed) hands each connection to the worker pinned to the CPU that
    /// processed its SYN, so a connection is served where the NIC's RSS (or,
    /// on loopback, the client) put it. It cannot exclude a draining worker.
    ClassicCpu,
    /// The kernel's own choice: a hash of the connection's addresses and
    /// ports, modulo the number of listeners. Needs no privilege and no
    /// program; spreads evenly on average but ignores load and locality.
    Kernel,
}

impl Steering {
    /// Every name [`FromStr`](std::str::FromStr) accepts.
    pub const NAMES: &'static str =
        "auto, least-loaded, round-robin, cpu, hash, classic-cpu, kernel";

    /// The name used on command lines, in logs and in metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Steering::Auto => "auto",
            Steering::Ebpf(p) => p.as_str(),
            Steering::ClassicCpu => "classic-cpu",
            Steering::Kernel => "kernel",
        }
    }

    /// The name as a static C string, for the `steer` probe.
    #[must_use]
    pub fn as_cstr(self) -> &'static std::ffi::CStr {
        match self {
            Steering::Auto => c"auto",
            Steering::Ebpf(Policy::Hash) => c"hash",
            Steering::Ebpf(Policy::Cpu) => c"cpu",
            Steering::Ebpf(Policy::RoundRobin) => c"round-robin",
            Steering::Ebpf(Policy::LeastLoaded) => c"least-loaded",
            Steering::ClassicCpu => c"classic-cpu",
            Steering::Kernel => c"kernel",
        }
    }

    /// Whether this is an eBPF mode (so drain and migration are in force).
    #[must_use]
    pub fn is_ebpf(self) -> bool {
        matches!(self, Steering::Ebpf(_))
    }
}

impl fmt::Display for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Steering {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Steering::Auto),
            "classic-cpu" => Ok(Steering::ClassicCpu),
            "kernel" => Ok(Steering::Kernel),
            other => Policy::from_name(other).map(Steering::Ebpf).ok_or_else(|| {
                format!(
                    "unknown steering mode `{other}` (expected one of: {})",
                    Steering::NAMES
                )
            }),
        }
    }
}

/// Connection counts from the eBPF program's own counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SteeringStats {
    /// The mode in force.
    pub mode: Steering,
    /// Connections the program put on each worker, in worker order.
    pub selected: Vec<u64>,
    /// Connections the program left to the kernel's hash (no eligible
    /// worker could be selected).
    pub fallbacks: u64,
    /// Connections moved off a closing listener to a live one.
    pub migrated: u64,
}

/// The eBPF program attached to this server's group, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ebpf {
    #[cfg(feature = "ebpf")]
    inner: Option<Arc<corelane_steering::EbpfSteering>>,
    #[cfg(not(feature = "ebpf"))]
    inner: Option<Arc<()>>,
}

/// One worker's handle on the program: publishes its load, sets its drain
/// flag. Does nothing when no eBPF program is in force.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerSteer {
    #[cfg(feature = "ebpf")]
    handle: Option<corelane_steering::WorkerHandle>,
    /// Whether the loop must stamp its turns (stall detection is on).
    stamp_turns: bool,
    /// When the current turn began (stamping only).
    turn_start: u64,
    #[cfg(feature = "ebpf")]
    lag: corelane_steering::TurnLag,
    /// The recent longest turn last published.
    published_lag: u64,
}

impl Ebpf {
    pub(crate) fn is_some(&self) -> bool {
        self.inner.is_some()
    }

    /// The handle of worker `index`.
    pub(crate) fn worker(&self, index: usize) -> WorkerSteer {
        #[cfg(feature = "ebpf")]
        if let Some(s) = &self.inner {
            return WorkerSteer {
                stamp_turns: s.policy() == Policy::LeastLoaded,
                handle: Some(s.worker(index)),
                ..WorkerSteer::default()
            };
        }
        let _ = index;
        WorkerSteer::default()
    }

    /// The program's counters, if a program is in force.
    pub(crate) fn stats(&self, mode: Steering) -> Option<SteeringStats> {
        #[cfg(feature = "ebpf")]
        if let Some(s) = &self.inner {
            return match s.stats() {
                Ok(st) => Some(SteeringStats {
                    mode,
                    selected: st.selected,
                    fallbacks: st.fallbacks,
                    migrated: st.migrated,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the steering counters failed");
                    None
                }
            };
        }
        let _ = mode;
        None
    }
}

impl WorkerSteer {
    /// The loop woke up with work.
    #[inline]
    pub(crate) fn turn_started(&mut self) {
        #[cfg(feature = "ebpf")]
        if self.stamp_turns {
            if let Some(h) = &self.handle {
                self.turn_start = corelane_steering::monotonic_ns();
                h.turn_started(self.turn_start);
            }
        }
    }

    /// The loop goes back to waiting, serving `conns` connections.
    #[inline]
    pub(crate) fn turn_ended(&mut self, conns: usize) {
        #[cfg(feature = "ebpf")]
        if let Some(h) = &self.handle {
            h.set_connections(conns);
            if self.stamp_turns && self.turn_start != 0 {
                h.turn_ended();
                let end = corelane_steering::monotonic_ns();
                let lag = self.lag.record(self.turn_start, end);
                if lag != self.published_lag {
                    self.published_lag = lag;
                    h.set_recent_turn(lag);
                }
            }
        }
        let _ = conns;
    }

    /// The listener's accept queue is empty.
    #[inline]
    pub(crate) fn accept_queue_empty(&self) {
        #[cfg(feature = "ebpf")]
        if let Some(h) = &self.handle {
            h.accept_queue_empty();
        }
    }

    /// Excludes the worker from new connections.
    pub(crate) fn set_draining(&self) {
        #[cfg(feature = "ebpf")]
        if let Some(h) = &self.handle {
            h.set_draining(true);
        }
    }

    /// Whether connections queued on the worker's listener migrate to other
    /// workers when it closes (eBPF `SELECT_OR_MIGRATE` in force).
    pub(crate) fn migrates(&self) -> bool {
        #[cfg(feature = "ebpf")]
        return self.handle.is_some();
        #[cfg(not(feature = "ebpf"))]
        false
    }
}

/// Puts `requested` in force on the reuseport group of `listeners` (all
/// bound and listening; listener `i` is worker `i`, pinned to `cpus[i]`).
/// Returns the mode actually in force: on failure it steps down the ladder
/// (eBPF → classic BPF by CPU → the kernel's hash) and logs each step once,
/// with its reason.
pub(crate) fn apply(
    requested: Steering,
    listeners: &[mio::net::TcpListener],
    cpus: &[Option<usize>],
    stall: Option<Duration>,
) -> (Steering, Ebpf) {
    let policy = match requested {
        // One listener: there is nothing to choose between.
        Steering::Auto if listeners.len() == 1 => return (Steering::Kernel, Ebpf::default()),
        Steering::Auto => Some(Policy::LeastLoaded),
        Steering::Ebpf(p) => Some(p),
        Steering::ClassicCpu | Steering::Kernel => None,
    };
    if let Some(policy) = policy {
        match attach_ebpf(policy, listeners, cpus, stall) {
            Ok(ebpf) => return (Steering::Ebpf(policy), ebpf),
            Err(reason) => {
                let pinned = cpus.iter().all(Option::is_some);
                let next = if pinned {
                    "using classic BPF CPU steering"
                } else {
                    "workers are not pinned, so using the kernel's hash"
                };
                if requested == Steering::Auto {
                    tracing::info!("eBPF steering unavailable ({reason}); {next}");
                } else {
                    tracing::warn!(
                        "eBPF steering `{}` unavailable ({reason}); {next}",
                        policy.as_str()
                    );
                }
                if !pinned {
                    return (Steering::Kernel, Ebpf::default());
                }
            }
        }
    }
    if requested == Steering::Kernel {
        return (Steering::Kernel, Ebpf::default());
    }
    (classic_cpu(listeners, cpus), Ebpf::default())
}

fn classic_cpu(listeners: &[mio::net::TcpListener], cpus: &[Option<usize>]) -> Steering {
    use std::os::fd::AsRawFd;
    let prog = crate::sys::cpu_steering_program(cpus);
    match crate::sys::attach_reuseport_cbpf(listeners[0].as_raw_fd(), &prog) {
        Ok(()) => Steering::ClassicCpu,
        Err(e) => {
            tracing::warn!(
                "classic BPF CPU steering unavailable (SO_ATTACH_REUSEPORT_CBPF: {e}); using the kernel's hash"
            );
            Steering::Kernel
        }
    }
}

#[cfg(feature = "ebpf")]
fn attach_ebpf(
    policy: Policy,
    listeners: &[mio::net::TcpListener],
    cpus: &[Option<usize>],
    stall: Option<Duration>,
) -> Result<Ebpf, String> {
    use std::os::fd::AsFd;
    let fds: Vec<_> = listeners.iter().map(|l| l.as_fd()).collect();
    let mut settings = corelane_steering::Settings::new(policy);
    settings.stall = stall;
    corelane_steering::EbpfSteering::attach(&fds, cpus, &settings)
        .map(|s| Ebpf {
            inner: Some(Arc::new(s)),
        })
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "ebpf"))]
fn attach_ebpf(
    _: Policy,
    _: &[mio::net::TcpListener],
    _: &[Option<usize>],
    _: Option<Duration>,
) -> Result<Ebpf, String> {
    Err("corelane was built without its `ebpf` feature".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in Steering::NAMES.split(", ") {
            let s: Steering = name.parse().unwrap();
            assert_eq!(s.as_str(), name);
            assert_eq!(s.as_cstr().to_str().unwrap(), name);
        }
        let err = "fastest".parse::<Steering>().unwrap_err();
        assert!(err.contains("least-loaded"), "{err}");
    }
}
