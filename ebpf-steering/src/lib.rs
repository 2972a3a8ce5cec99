//! Loads corelane's `sk_reuseport` steering program into the kernel, fills its
//! maps, attaches it to a reuseport group, and gives the workers and the
//! operator their handles on it.
//!
//! The program object is compiled from `ebpf-steering/program` by
//! `ebpf-steering/build-program.sh` and committed next to this file, so
//! building this crate needs neither nightly Rust nor bpf-linker nor clang.
//!
//! ```no_run
//! # fn listeners() -> Vec<std::net::TcpListener> { Vec::new() }
//! use std::os::fd::AsFd;
//! use corelane_steering::{EbpfSteering, Policy, Settings};
//!
//! // Every listener of the group bound (SO_REUSEPORT) and listening:
//! let listeners = listeners();
//! let fds: Vec<_> = listeners.iter().map(|l| l.as_fd()).collect();
//! let cpus = vec![Some(0), Some(1)];
//! match EbpfSteering::attach(&fds, &cpus, &Settings::new(Policy::LeastLoaded)) {
//!     Ok(steering) => println!("steering by {}", steering.policy().as_str()),
//!     // e.g. "creating map SOCKETS: Operation not permitted (os error 1); needs CAP_BPF (or root)"
//!     Err(e) => eprintln!("eBPF steering unavailable ({e})"),
//! }
//! ```

#![deny(missing_docs)]

mod error;
mod join;
mod lag;
mod load;
mod maps;
mod pin;
mod table;

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use aya::maps::{Array, MapData, PerCpuArray};
use aya::Ebpf;

pub use corelane_steering_common::{
    self as common, Config, Policy, WorkerSlot, MAX_CPUS, MAX_WORKERS, SLOTS, VERSION,
};
pub use error::{Error, Source};
pub use lag::{monotonic_ns, TurnLag};
pub use pin::{ensure_bpffs, pin_dir, remove_stale_pins, BPFFS};
pub use table::WorkerHandle;

use pin::{pinned_config, remove_pins, PINNED};
use table::WorkerTable;

/// The compiled program (`bpfel`), as committed by `build-program.sh`.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../corelane-steering.bpf.o");

/// The compiled program object this crate loads: for tests and tools that
/// inspect it.
#[must_use]
pub fn object() -> &'static [u8] {
    OBJECT
}

/// What [`EbpfSteering::attach`] sets up besides the listeners.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// The policy for new connections.
    pub policy: Policy,
    /// Under `least-loaded`, a worker inside one loop turn for longer than
    /// this counts as stalled and is avoided. `None` disables the check.
    pub stall: Option<Duration>,
    /// Pin the program and its maps in this directory of a BPF filesystem
    /// (see [`pin_dir`]), so that a process taking over the address can
    /// [`join`](EbpfSteering::join) them. Default `None`.
    pub pin: Option<PathBuf>,
}

impl Settings {
    /// `policy` with the default stall time (10 ms).
    #[must_use]
    pub fn new(policy: Policy) -> Self {
        Settings {
            policy,
            stall: Some(Duration::from_millis(10)),
            pin: None,
        }
    }
}

/// Selection counters read from the program's per-CPU `STATS` map, summed
/// over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections the program placed on each worker (including migrated).
    pub selected: Vec<u64>,
    /// Connections left to the kernel's hash: no eligible worker could be
    /// selected.
    pub fallbacks: u64,
    /// Connections moved off a closing listener.
    pub migrated: u64,
}

/// The steering program attached to one reuseport group.
///
/// Dropping it does not detach the program: the kernel keeps it as long as
/// the group's sockets exist, so steering outlives this handle.
pub struct EbpfSteering {
    policy: Policy,
    workers: u32,
    /// First index of this process's generation of workers.
    base: u32,
    generation: u32,
    joined: bool,
    pinned: Result<PathBuf, String>,
    table: WorkerTable,
    config: Mutex<Array<MapData, Config>>,
    stats: Mutex<PerCpuArray<MapData, u64>>,
    _ebpf: Option<Mutex<Ebpf>>,
}

impl fmt::Debug for EbpfSteering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EbpfSteering")
            .field("policy", &self.policy)
            .field("workers", &self.workers)
            .field("base", &self.base)
            .field("generation", &self.generation)
            .field("joined", &self.joined)
            .finish_non_exhaustive()
    }
}

impl EbpfSteering {
    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Number of workers steered between.
    #[must_use]
    pub fn workers(&self) -> usize {
        self.workers as usize
    }

    /// The takeover count of this process's workers: 1 for the process that
    /// loaded the program, one more per takeover since.
    #[must_use]
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether this process took over a pinned program
    /// ([`join`](EbpfSteering::join)) rather than loading one.
    #[must_use]
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Where the program and its maps are pinned, or why they are not.
    ///
    /// # Errors
    ///
    /// Why pinning failed or was not asked for.
    pub fn pinned(&self) -> Result<&Path, &str> {
        self.pinned.as_deref().map_err(String::as_str)
    }

    /// Whether the program steers to this process's workers: `false` once
    /// another process has taken over (checked in the pinned `CONFIG` when
    /// pinned, so a takeover that loaded a program of its own counts too).
    #[must_use]
    pub fn is_serving(&self) -> bool {
        let current = match &self.pinned {
            Ok(dir) => pinned_config(dir),
            Err(_) => self
                .config
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&0, 0)
                .ok(),
        };
        current.is_some_and(|c| {
            c.base() == self.base
                && c.generation == self.generation
                && c.owner_pid == std::process::id()
        })
    }

    /// Removes the pins, if this process pinned or joined them and is still
    /// the one served (see [`is_serving`](EbpfSteering::is_serving)): for
    /// the last process of an address as it stops. The program stays
    /// attached as long as the group's sockets exist.
    ///
    /// # Errors
    ///
    /// When a pin cannot be removed.
    pub fn unpin(&self) -> io::Result<bool> {
        let Ok(dir) = &self.pinned else {
            return Ok(false);
        };
        if !self.is_serving() {
            return Ok(false);
        }
        remove_pins(dir)?;
        Ok(true)
    }

    /// Gives the pins (directory and files) to `uid`:`gid`, for a server
    /// that drops privileges to that user and must still remove them as it
    /// stops. Nothing to do when not pinned.
    ///
    /// # Errors
    ///
    /// When `chown(2)` fails.
    pub fn chown_pins(&self, uid: u32, gid: u32) -> io::Result<()> {
        let Ok(dir) = &self.pinned else {
            return Ok(());
        };
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        for name in PINNED {
            match std::os::unix::fs::chown(dir.join(name), Some(uid), Some(gid)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Worker `index`'s slot, through which it publishes its load. Cheap to
    /// clone and `Send`: give it to the worker's thread.
    ///
    /// # Panics
    ///
    /// If `index` is not below [`workers`](EbpfSteering::workers).
    #[must_use]
    pub fn worker(&self, index: usize) -> WorkerHandle {
        assert!(index < self.workers as usize, "no worker {index}");
        WorkerHandle::new(self.table.clone(), index, self.base as usize + index)
    }

    /// The selection counters of this process's workers, and the group's
    /// fallback and migration counters (since the program was loaded),
    /// summed over CPUs (one system call per counter: for scrapes and
    /// tests, not for the hot path).
    ///
    /// # Errors
    ///
    /// When the kernel refuses the map lookup.
    pub fn stats(&self) -> Result<Stats, Error> {
        let map = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let read = |i: u32| -> Result<u64, Error> {
            let v = map.get(&i, 0).map_err(|e| Error::new("reading STATS", e))?;
            Ok(v.iter().sum())
        };
        let mut selected = Vec::with_capacity(self.workers as usize);
        for i in 0..self.workers {
            selected.push(read(self.base + i)?);
        }
        Ok(Stats {
            selected,
            fallbacks: read(common::STAT_FALLBACK)?,
            migrated: read(common::STAT_MIGRATED)?,
        })
    }
}

fn check_group(listeners: &[BorrowedFd<'_>]) -> Result<u32, Error> {
    let n = listeners.len();
    if n == 0 || n > MAX_WORKERS as usize {
        return Err(Error::GroupSize { listeners: n });
    }
    Ok(n as u32)
}
