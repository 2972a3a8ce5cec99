//! How the kernel picks a worker for each new connection.

use std::fmt;

/// The steering policy of the reuseport group: which worker's listener the
/// kernel puts each new connection on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Steering {
    /// The kernel's own choice: a hash of the connection's addresses and
    /// ports, modulo the number of listeners. Needs no privilege and no
    /// program; spreads evenly on average but ignores load and locality.
    #[default]
    Kernel,
    /// A classic BPF program (`SO_ATTACH_REUSEPORT_CBPF`, no privilege
    /// needed) hands each connection to the worker pinned to the CPU that
    /// processed its SYN, so a connection is served where the NIC's RSS (or,
    /// on loopback, the client) put it: no cross-CPU cache traffic. If the
    /// program cannot be attached, the kernel's hash is used and the reason
    /// is logged.
    ClassicCpu,
}

impl Steering {
    /// The name used on command lines, in logs and in metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.as_cstr().to_str().unwrap_or("?")
    }

    /// The name as a static C string, for the `steer` probe.
    #[must_use]
    pub fn as_cstr(self) -> &'static std::ffi::CStr {
        match self {
            Steering::Kernel => c"kernel",
            Steering::ClassicCpu => c"classic-cpu",
        }
    }
}

impl fmt::Display for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Puts `requested` in force on the reuseport group of `listeners` (all
/// bound and listening; listener `i` is worker `i`, pinned to `cpus[i]`).
/// Returns the mode actually in force: on failure it steps down the ladder to
/// the kernel's hash and logs why, once.
pub(crate) fn apply(
    requested: Steering,
    listeners: &[mio::net::TcpListener],
    cpus: &[Option<usize>],
) -> Steering {
    use std::os::fd::AsRawFd;
    match requested {
        Steering::Kernel => Steering::Kernel,
        Steering::ClassicCpu => {
            let prog = crate::sys::cpu_steering_program(cpus);
            match crate::sys::attach_reuseport_cbpf(listeners[0].as_raw_fd(), &prog) {
                Ok(()) => Steering::ClassicCpu,
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "classic BPF CPU steering unavailable (SO_ATTACH_REUSEPORT_CBPF); using the kernel's hash"
                    );
                    Steering::Kernel
                }
            }
        }
    }
}

impl std::str::FromStr for Steering {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kernel" | "hash-kernel" => Ok(Steering::Kernel),
            other => Err(format!(
                "unknown steering mode `{other}` (expected: kernel)"
            )),
        }
    }
}
