//! How the kernel picks a worker for each new connection.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use corelane_steering_common::Policy;

use crate::takeover::Predecessor;

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
    /// Connections moved off a closing listener to a live one (counted
    /// since the program was loaded, across takeovers).
    pub migrated: u64,
    /// This process's generation: 1 for the process that loaded the
    /// program, one more per takeover since.
    pub generation: u32,
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

    /// At the end of the last process serving the address: removes the
    /// pins (not after a handover, nor when another process took over).
    pub(crate) fn unpin(&self) {
        #[cfg(feature = "ebpf")]
        if let Some(s) = &self.inner {
            match s.unpin() {
                Ok(true) => tracing::debug!("unpinned the steering program"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "removing the steering pins failed"),
            }
        }
    }

    /// Makes the pins `uid`'s (before dropping privileges to it).
    pub(crate) fn give_pins_to(&self, uid: u32, gid: u32) {
        #[cfg(feature = "ebpf")]
        if let Some(s) = &self.inner {
            if let Err(e) = s.chown_pins(uid, gid) {
                tracing::warn!(error = %e, uid, "handing the steering pins to the user failed");
            }
        }
        let _ = (uid, gid);
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
                    generation: s.generation(),
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
    addr: std::net::SocketAddr,
    previous: Option<&Predecessor>,
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
        match attach_ebpf(policy, listeners, cpus, stall, addr, previous) {
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
    previous: &Predecessor,
    fell_back: bool,
) -> Applied {
    use std::os::fd::AsRawFd;
    if fell_back && previous.is_ebpf() {
        tracing::info!(
            pid = previous.pid,
            "the previous process's eBPF program keeps steering to its listeners until they close; their queues then migrate here"
        );
        return kernel(true);
    }
    match crate::sys::detach_reuseport_program(listeners[0].as_raw_fd()) {
        Ok(true) => tracing::info!(
            pid = previous.pid,
            steering = %previous.steering,
            "detached the previous process's steering program"
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "detaching the previous steering program failed"),
    }
    if crate::sys::tcp_migrate_req() {
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
    addr: std::net::SocketAddr,
    previous: Option<&Predecessor>,
) -> Result<Ebpf, String> {
    use corelane_steering::EbpfSteering;
    use std::os::fd::AsFd;
    let fds: Vec<_> = listeners.iter().map(|l| l.as_fd()).collect();
    let mut settings = corelane_steering::Settings::new(policy);
    settings.stall = stall;
    let dir = corelane_steering::pin_dir(addr);
    match corelane_steering::ensure_bpffs() {
        Ok(()) => {
            settings.pin = Some(dir.clone());
            let stale = corelane_steering::remove_stale_pins();
            if stale > 0 {
                tracing::info!(
                    stale,
                    "removed the steering pins of servers that were killed"
                );
            }
        }
        Err(e) => tracing::debug!(error = %e, "not pinning the steering program"),
    }
    let wrap = |s: EbpfSteering| Ebpf {
        inner: Some(Arc::new(s)),
    };
    if let Some(previous) = previous.filter(|p| p.is_ebpf() && settings.pin.is_some()) {
        match EbpfSteering::join(&dir, &fds, cpus, &settings, previous.pid) {
            Ok(s) => {
                tracing::info!(
                    pinned = %dir.display(),
                    generation = s.generation(),
                    "took over the pinned steering program: new connections come here"
                );
                return Ok(wrap(s));
            }
            Err(e) => tracing::info!(
                "cannot take over the pinned steering program ({e}); loading a new one"
            ),
        }
    }
    let s = EbpfSteering::attach(&fds, cpus, &settings).map_err(|e| e.to_string())?;
    if settings.pin.is_some() {
        if let Err(e) = s.pinned() {
            tracing::warn!(
                "steering program not pinned ({e}): a process taking over {addr} will load its own"
            );
        }
    }
    Ok(wrap(s))
}

#[cfg(not(feature = "ebpf"))]
fn attach_ebpf(
    _: Policy,
    _: &[mio::net::TcpListener],
    _: &[Option<usize>],
    _: Option<Duration>,
    _: std::net::SocketAddr,
    _: Option<&Predecessor>,
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
