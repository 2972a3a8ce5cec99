//! How the kernel picks a worker for each new connection.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

pub use corelane_steering_common::Policy;

use crate::sys;

// The one place the `ebpf` feature is looked at, as mio picks its
// `sys/shell` backend: both files offer the same items.
#[cfg(feature = "ebpf")]
#[path = "ebpf.rs"]
mod backend;
#[cfg(not(feature = "ebpf"))]
#[path = "shell.rs"]
mod backend;

pub(crate) use backend::{Ebpf, WorkerSteer};

/// The steering of the reuseport group: which worker's listener the kernel
/// puts each new connection on, decided in the kernel before any userspace
/// code runs.
///
/// Set it with [`ServerBuilder::steering`](crate::ServerBuilder::steering);
/// the mode actually in force is in [`WorkerInfo::steering`](crate::WorkerInfo),
/// the start-up log line and [`Metrics::steering_mode`](crate::Metrics::steering_mode).
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
    /// Connections moved off a closing listener to a live one (counted
    /// since the program was loaded, across takeovers).
    pub migrated: u64,
    /// This process's generation: 1 for the process that loaded the
    /// program, one more per takeover since.
    pub generation: u32,
}

/// What the process being taken over steers with.
#[derive(Debug, Clone)]
pub(crate) struct PreviousSteering {
    /// Its pid (the owner recorded in its pinned program).
    pub(crate) pid: u32,
    /// Whether it steers with eBPF (so its pinned program can be joined).
    pub(crate) ebpf: bool,
    /// Its mode's name, for the logs.
    pub(crate) mode: String,
}

/// What [`apply`] set up.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The mode in force.
    pub(crate) mode: Steering,
    pub(crate) ebpf: Ebpf,
    /// Whether the group migrates a closing listener's queue (to tell a
    /// process being taken over).
    pub(crate) migrates: bool,
}

/// Steers the group of `listeners` (all listening) as `requested`, down the
/// fallback ladder, each step logged once with its reason. Taking over from
/// `previous`, the new listeners become the ones steered to.
pub(crate) fn apply(
    requested: Steering,
    listeners: &[mio::net::TcpListener],
    cpus: &[Option<usize>],
    stall: Option<Duration>,
    addr: SocketAddr,
    previous: Option<&PreviousSteering>,
) -> Applied {
    let policy = match requested {
        // One listener: there is nothing to choose between (but in a
        // takeover the program moves connections off the old listeners).
        Steering::Auto if listeners.len() == 1 && previous.is_none() => None,
        Steering::Auto => Some(Policy::LeastLoaded),
        Steering::Ebpf(p) => Some(p),
        Steering::ClassicCpu | Steering::Kernel => None,
    };
    if let Some(policy) = policy {
        match backend::attach(policy, listeners, cpus, stall, addr, previous) {
            Ok(ebpf) => {
                return Applied {
                    mode: Steering::Ebpf(policy),
                    ebpf,
                    migrates: true,
                }
            }
            Err(reason) => {
                let pinned = cpus.iter().all(Option::is_some);
                let next = if previous.is_some() {
                    "taking over with the kernel's hash"
                } else if pinned {
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
                if let Some(previous) = previous {
                    return take_over_without_ebpf(listeners, previous, true);
                }
                if !pinned {
                    return kernel(false);
                }
            }
        }
    }
    if let Some(previous) = previous {
        if requested == Steering::ClassicCpu {
            tracing::warn!(
                "classic-cpu steering picks listeners by their position in the group, which a takeover reorders; taking over with the kernel's hash (restart without takeover for classic-cpu)"
            );
        }
        return take_over_without_ebpf(listeners, previous, false);
    }
    if requested == Steering::Kernel || policy.is_none() && requested == Steering::Auto {
        return kernel(false);
    }
    Applied {
        mode: classic_cpu(listeners, cpus),
        ebpf: Ebpf::default(),
        migrates: false,
    }
}

fn kernel(migrates: bool) -> Applied {
    Applied {
        mode: Steering::Kernel,
        ebpf: Ebpf::default(),
        migrates,
    }
}

/// A takeover by the kernel's hash. `fell_back`: eBPF was wanted and could
/// not be had, so an eBPF program of the previous process is left to steer
/// (to its own listeners until they close, then by hash to ours, migrating
/// their queues); otherwise whatever program the group has is detached.
fn take_over_without_ebpf(
    listeners: &[mio::net::TcpListener],
    previous: &PreviousSteering,
    fell_back: bool,
) -> Applied {
    if fell_back && previous.ebpf {
        tracing::info!(
            pid = previous.pid,
            "the previous process's eBPF program keeps steering to its listeners until they close; their queues then migrate here"
        );
        return kernel(true);
    }
    match sys::detach_reuseport_program(listeners[0].as_raw_fd()) {
        Ok(true) => tracing::info!(
            pid = previous.pid,
            steering = %previous.mode,
            "detached the previous process's steering program"
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "detaching the previous steering program failed"),
    }
    if sys::tcp_migrate_req() {
        tracing::info!(
            "no eBPF steering: the previous process's listeners close with migration (net.ipv4.tcp_migrate_req=1)"
        );
        kernel(true)
    } else {
        tracing::warn!(
            "no eBPF steering: this takeover can reset connections that reach the previous process's listeners between its last accept and their close (net.ipv4.tcp_migrate_req=0); for lossless restarts run with CAP_BPF or set net.ipv4.tcp_migrate_req=1"
        );
        kernel(false)
    }
}

fn classic_cpu(listeners: &[mio::net::TcpListener], cpus: &[Option<usize>]) -> Steering {
    let prog = sys::cpu_steering_program(cpus);
    match sys::attach_reuseport_cbpf(listeners[0].as_raw_fd(), &prog) {
        Ok(()) => Steering::ClassicCpu,
        Err(e) => {
            tracing::warn!(
                "classic BPF CPU steering unavailable (SO_ATTACH_REUSEPORT_CBPF: {e}); using the kernel's hash"
            );
            Steering::Kernel
        }
    }
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
