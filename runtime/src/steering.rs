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
        }
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
            "kernel" | "hash-kernel" => Ok(Steering::Kernel),
            other => Err(format!(
                "unknown steering mode `{other}` (expected: kernel)"
            )),
        }
    }
}
