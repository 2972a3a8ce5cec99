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

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::{Array, MapData, PerCpuArray, ReusePortSockArray};
use aya::programs::SkReuseport;
use aya::Ebpf;

pub use corelane_steering_common::{
    self as common, Config, Policy, WorkerSlot, MAX_CPUS, MAX_WORKERS, SLOTS, VERSION,
};

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

/// Why eBPF steering could not be set up: the step that failed, the kernel's
/// reason and, for permission errors, what is missing.
#[derive(Debug)]
pub struct Error {
    step: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl Error {
    fn new(
        step: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            step: step.into(),
            source: Box::new(source),
        }
    }

    /// Whether the kernel refused for lack of privilege (`EPERM`/`EACCES`).
    #[must_use]
    pub fn is_permission(&self) -> bool {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(&*self.source);
        while let Some(err) = e {
            if let Some(io) = err.downcast_ref::<io::Error>() {
                if matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                    return true;
                }
            }
            e = err.source();
        }
        false
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.step)?;
        // The innermost cause carries the kernel's reason; the outer ones
        // repeat the step in aya's words.
        let mut e: &(dyn std::error::Error + 'static) = &*self.source;
        while let Some(inner) = e.source() {
            e = inner;
        }
        write!(f, ": {e}")?;
        if self.is_permission() {
            write!(f, "; needs CAP_BPF (or root)")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

#[derive(Debug)]
struct Plain(String);

impl fmt::Display for Plain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Plain {}

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

/// The maps userspace writes, opened from a fresh load (borrowed from the
/// loaded object) or from pins (owned).
struct Maps<T> {
    sockets: ReusePortSockArray<T>,
    config: Array<T, Config>,
    cpu: Array<T, common::CpuWorkers>,
    stats: PerCpuArray<T, u64>,
    table: WorkerTable,
}

/// The maps [`Maps`] borrows in a fresh load, in [`Maps`]' order.
const WRITTEN: [&str; 4] = [
    common::maps::SOCKETS,
    common::maps::CONFIG,
    common::maps::CPU_WORKER,
    common::maps::STATS,
];

impl EbpfSteering {
    /// Loads the program, fills its maps and attaches it to the reuseport
    /// group of `listeners`: listener `i` (bound and listening, all in one
    /// group) is worker `i`, pinned to `cpus[i]` if pinned. With
    /// [`Settings::pin`], the program and its maps are also pinned there
    /// (replacing what was pinned before), so that a process taking over
    /// the address can [`join`](EbpfSteering::join) them; a pinning failure
    /// does not fail the attach (see [`pinned`](EbpfSteering::pinned)).
    ///
    /// Attaching replaces any program the group had: listeners of the group
    /// that are not in `listeners` get no new connections from then on,
    /// and when they close, their queues migrate to `listeners`.
    ///
    /// # Errors
    ///
    /// An [`Error`] naming the step that failed and the kernel's reason,
    /// e.g. `creating map SOCKETS: Operation not permitted (os error 1);
    /// needs CAP_BPF (or root)`. Nothing is attached when it fails.
    pub fn attach(
        listeners: &[BorrowedFd<'_>],
        cpus: &[Option<usize>],
        settings: &Settings,
    ) -> Result<EbpfSteering, Error> {
        let workers = check_group(listeners)?;
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| Error::new(load_step(&e), e))?;
        let mut taken = Vec::with_capacity(WRITTEN.len());
        for name in WRITTEN {
            taken.push(ebpf.take_map(name).ok_or_else(|| missing(name))?);
        }
        let table = {
            let map = ebpf
                .map(common::maps::WORKERS)
                .ok_or_else(|| missing(common::maps::WORKERS))?;
            let aya::maps::Map::Array(data) = map else {
                return Err(missing(common::maps::WORKERS));
            };
            WorkerTable::map(data.fd().as_fd())
                .map_err(|e| Error::new("mapping WORKERS into memory", e))?
        };
        let generation = 1;
        let table = {
            let [sockets, config, cpu, stats] = &mut taken[..] else {
                unreachable!("four maps taken");
            };
            let mut maps = Maps {
                sockets: view(sockets, common::maps::SOCKETS)?,
                config: view(config, common::maps::CONFIG)?,
                cpu: view(cpu, common::maps::CPU_WORKER)?,
                stats: view(stats, common::maps::STATS)?,
                table,
            };
            maps.install(0, listeners, cpus, true)?;
            maps.serve(0, workers, settings, generation)?;
            maps.table
        };

        let program: &mut SkReuseport = ebpf
            .program_mut(common::maps::PROGRAM)
            .ok_or_else(|| missing(common::maps::PROGRAM))?
            .try_into()
            .map_err(|e| Error::new("opening the program", e))?;
        program.load().map_err(|e| {
            let step = match &e {
                aya::programs::ProgramError::LoadError { verifier_log, .. } => {
                    let log = verifier_log.to_string();
                    let tail: Vec<&str> = log.lines().rev().take(8).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    format!(
                        "loading the program (BPF_PROG_LOAD; verifier says: {})",
                        tail.join(" | ")
                    )
                }
                _ => "loading the program (BPF_PROG_LOAD)".to_owned(),
            };
            Error::new(step, e)
        })?;
        program
            .attach(listeners[0])
            .map_err(|e| Error::new("attaching to the group (SO_ATTACH_REUSEPORT_EBPF)", e))?;

        // Pinned only once attached: a joiner must never find maps that no
        // attached program reads.
        let pinned = match &settings.pin {
            Some(dir) => pin_all(&mut ebpf, &taken, dir)
                .map(|()| dir.clone())
                .map_err(|e| e.to_string()),
            None => Err("not asked to pin".to_owned()),
        };
        let mut taken = taken.into_iter();
        let _sockets = taken.next();
        let config = Array::try_from(taken.next().ok_or_else(|| missing("CONFIG"))?)
            .map_err(|e| Error::new("opening CONFIG", e))?;
        let _cpu = taken.next();
        let stats = PerCpuArray::try_from(taken.next().ok_or_else(|| missing("STATS"))?)
            .map_err(|e| Error::new("opening STATS", e))?;
        Ok(EbpfSteering {
            policy: settings.policy,
            workers,
            base: 0,
            generation,
            joined: false,
            pinned,
            table,
            config: Mutex::new(config),
            stats: Mutex::new(stats),
            _ebpf: Some(Mutex::new(ebpf)),
        })
    }

    /// Takes over the steering program pinned in `dir` by process `owner`,
    /// which serves the same address and whose group `listeners` have
    /// joined: loads
    /// nothing, puts `listeners` into the generation slot the program is not
    /// steering to, and switches the program to them in one map update. The
    /// other process's listeners get no new connections from then on, and
    /// when they close, their queued connections migrate to `listeners`.
    ///
    /// # Errors
    ///
    /// An [`Error`] when nothing usable is pinned in `dir` (missing, of
    /// another layout [`VERSION`], or not `owner`'s: stale pins of an
    /// earlier process) or the kernel refuses a map operation.
    /// Nothing is switched when it fails.
    pub fn join(
        dir: &Path,
        listeners: &[BorrowedFd<'_>],
        cpus: &[Option<usize>],
        settings: &Settings,
        owner: u32,
    ) -> Result<EbpfSteering, Error> {
        let workers = check_group(listeners)?;
        let open = |name: &str| -> Result<aya::maps::Map, Error> {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .map_err(|e| Error::new(format!("opening {}", path.display()), e))?;
            aya::maps::Map::from_map_data(data)
                .map_err(|e| Error::new(format!("opening {}", path.display()), e))
        };
        let config: Array<MapData, Config> = Array::try_from(open(common::maps::CONFIG)?)
            .map_err(|e| Error::new("opening the pinned CONFIG", e))?;
        let current = config
            .get(&0, 0)
            .map_err(|e| Error::new("reading the pinned CONFIG", e))?;
        if current.version != VERSION {
            return Err(Error::new(
                "checking the pinned program",
                Plain(format!(
                    "its maps have layout version {}, this build needs {VERSION}",
                    current.version
                )),
            ));
        }
        if current.owner_pid != owner {
            return Err(Error::new(
                "checking the pinned program",
                Plain(format!(
                    "it steers for pid {}, not for pid {owner}, which serves the address (stale pins)",
                    current.owner_pid
                )),
            ));
        }
        let table = {
            let aya::maps::Map::Array(data) = open(common::maps::WORKERS)? else {
                return Err(missing(common::maps::WORKERS));
            };
            WorkerTable::map(data.fd().as_fd())
                .map_err(|e| Error::new("mapping the pinned WORKERS into memory", e))?
        };
        let mut maps = Maps {
            sockets: ReusePortSockArray::try_from(open(common::maps::SOCKETS)?)
                .map_err(|e| Error::new("opening the pinned SOCKETS", e))?,
            config,
            cpu: Array::try_from(open(common::maps::CPU_WORKER)?)
                .map_err(|e| Error::new("opening the pinned CPU_WORKER", e))?,
            stats: PerCpuArray::try_from(open(common::maps::STATS)?)
                .map_err(|e| Error::new("opening the pinned STATS", e))?,
            table,
        };
        // The generation slot not steered to now.
        let base = if current.base() == 0 { MAX_WORKERS } else { 0 };
        let generation = current.generation.wrapping_add(1);
        maps.install(base, listeners, cpus, false)?;
        maps.serve(base, workers, settings, generation)?;
        Ok(EbpfSteering {
            policy: settings.policy,
            workers,
            base,
            generation,
            joined: true,
            pinned: Ok(dir.to_path_buf()),
            table: maps.table,
            config: Mutex::new(maps.config),
            stats: Mutex::new(maps.stats),
            _ebpf: None,
        })
    }

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
        WorkerHandle {
            table: self.table.clone(),
            index,
            slot: self.base as usize + index,
        }
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

impl<T: std::borrow::BorrowMut<MapData>> Maps<T> {
    /// Fills the generation slot at `base` for `listeners` (everything but
    /// CONFIG). `fresh`: the maps were just created, all zero.
    fn install(
        &mut self,
        base: u32,
        listeners: &[BorrowedFd<'_>],
        cpus: &[Option<usize>],
        fresh: bool,
    ) -> Result<(), Error> {
        if !fresh {
            // A generation two takeovers back may have left its numbers here.
            for i in base..base + MAX_WORKERS {
                self.table.reset(i as usize);
            }
            let cpus_n =
                aya::util::nr_cpus().map_err(|(_, e)| Error::new("counting possible CPUs", e))?;
            for i in base..base + MAX_WORKERS {
                let zero = aya::maps::PerCpuValues::try_from(vec![0u64; cpus_n])
                    .map_err(|e| Error::new("zeroing STATS", e))?;
                self.stats
                    .set(i, zero, 0)
                    .map_err(|e| Error::new("zeroing STATS", e))?;
            }
        }
        let mut table = vec![common::CpuWorkers::default(); MAX_CPUS as usize];
        for (worker, cpu) in cpus.iter().enumerate() {
            let Some(entry) = cpu.and_then(|c| table.get_mut(c)) else {
                continue;
            };
            if (entry.count as usize) < common::CPU_WORKERS_MAX {
                entry.workers[entry.count as usize] = worker as u32;
                entry.count += 1;
            }
        }
        for (cpu, entry) in table.iter().enumerate() {
            // Zeroed entries (count 0) are what a fresh map starts with.
            if fresh && entry.count == 0 {
                continue;
            }
            let Some(key) = common::cpu_key(base, cpu as u32) else {
                continue;
            };
            self.cpu
                .set(key, entry, 0)
                .map_err(|e| Error::new("writing CPU_WORKER", e))?;
        }
        for i in 0..MAX_WORKERS {
            let index = base + i;
            match listeners.get(i as usize) {
                Some(fd) => self
                    .sockets
                    .set(index, &fd.as_raw_fd(), 0)
                    .map_err(|e| Error::new(format!("inserting listener {i} into SOCKETS"), e))?,
                None if fresh => break,
                // Leftovers of an older generation; absent entries are fine.
                None => {
                    let _ = self.sockets.clear_index(&index);
                }
            }
        }
        Ok(())
    }

    /// Switches the program to the generation at `base`: one update.
    fn serve(
        &mut self,
        base: u32,
        workers: u32,
        settings: &Settings,
        generation: u32,
    ) -> Result<(), Error> {
        let config = Config {
            version: VERSION,
            policy: settings.policy as u32,
            workers,
            base,
            stall_ns: settings.stall.map_or(0, |d| {
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
            }),
            generation,
            owner_pid: std::process::id(),
        };
        self.config
            .set(0, config, 0)
            .map_err(|e| Error::new("writing CONFIG", e))
    }
}

fn check_group(listeners: &[BorrowedFd<'_>]) -> Result<u32, Error> {
    let n = listeners.len();
    if n == 0 || n > MAX_WORKERS as usize {
        return Err(Error::new(
            "checking the group",
            Plain(format!(
                "{n} listeners; eBPF steering handles 1 to {MAX_WORKERS}"
            )),
        ));
    }
    Ok(n as u32)
}

/// Every map of the object and the program, by name.
const PINNED: [&str; 7] = [
    common::maps::SOCKETS,
    common::maps::CONFIG,
    common::maps::WORKERS,
    common::maps::CPU_WORKER,
    common::maps::STATS,
    common::maps::RR,
    common::maps::PROGRAM,
];

/// Pins the program and every map (`taken`: those taken out of `ebpf`, in
/// [`WRITTEN`] order) in `dir` (created if missing; what was pinned there
/// before is replaced).
fn pin_all(ebpf: &mut Ebpf, taken: &[aya::maps::Map], dir: &Path) -> Result<(), Error> {
    remove_pins(dir).map_err(|e| Error::new(format!("clearing {}", dir.display()), e))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::new(format!("creating {}", dir.display()), e))?;
    let pin_err = |name: &str, e: aya::pin::PinError| {
        Error::new(format!("pinning {}", dir.join(name).display()), e)
    };
    // CONFIG first: it names the owner, so a concurrent start's
    // `remove_stale_pins` sees a live server's directory at once.
    let mut order: Vec<(&str, &aya::maps::Map)> = WRITTEN.iter().copied().zip(taken).collect();
    order.sort_by_key(|(name, _)| *name != common::maps::CONFIG);
    for (name, map) in order {
        map.pin(dir.join(name)).map_err(|e| pin_err(name, e))?;
    }
    for name in [common::maps::WORKERS, common::maps::RR] {
        let map = ebpf.map(name).ok_or_else(|| missing(name))?;
        map.pin(dir.join(name)).map_err(|e| pin_err(name, e))?;
    }
    let program: &mut SkReuseport = ebpf
        .program_mut(common::maps::PROGRAM)
        .ok_or_else(|| missing(common::maps::PROGRAM))?
        .try_into()
        .map_err(|e| Error::new("opening the program", e))?;
    program
        .pin(dir.join(common::maps::PROGRAM))
        .map_err(|e| pin_err(common::maps::PROGRAM, e))?;
    Ok(())
}

fn remove_pins(dir: &Path) -> io::Result<()> {
    for name in PINNED {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match std::fs::remove_dir(dir) {
        // A server that dropped privileges may empty its directory but not
        // remove it from the root-owned parent.
        Err(e)
            if !matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Where the steering of the group serving `addr` is pinned:
/// `/sys/fs/bpf/corelane/<ip>_<port>`, with the address's dots and colons
/// written as dashes (a BPF filesystem refuses names with dots), e.g.
/// `/sys/fs/bpf/corelane/127-0-0-1_8080`.
#[must_use]
pub fn pin_dir(addr: std::net::SocketAddr) -> PathBuf {
    let ip = addr.ip().to_string().replace(['.', ':'], "-");
    Path::new(BPFFS)
        .join("corelane")
        .join(format!("{ip}_{}", addr.port()))
}

/// Removes the pins of addresses whose serving process is gone (killed, so
/// it could not remove them): every directory under
/// `/sys/fs/bpf/corelane/` whose `CONFIG` names a process that no longer
/// exists, and empty ones. Returns how many it removed; one it cannot read
/// is left alone.
#[must_use]
pub fn remove_stale_pins() -> usize {
    let Ok(dirs) = std::fs::read_dir(Path::new(BPFFS).join("corelane")) else {
        return 0;
    };
    let mut removed = 0;
    for dir in dirs.flatten().map(|d| d.path()) {
        let config = dir.join(common::maps::CONFIG);
        let stale = if config.exists() {
            pinned_config(&dir).is_some_and(|c| !process_exists(c.owner_pid))
        } else {
            // Empty (left by a server that dropped privileges), and not one
            // being filled right now.
            let old = std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > Duration::from_secs(60)));
            old && std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none())
        };
        if stale && remove_pins(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The `CONFIG` pinned in `dir`, if it can be opened and read.
fn pinned_config(dir: &Path) -> Option<Config> {
    let data = MapData::from_pin(dir.join(common::maps::CONFIG)).ok()?;
    let map = aya::maps::Map::from_map_data(data).ok()?;
    Array::<MapData, Config>::try_from(map)
        .ok()?
        .get(&0, 0)
        .ok()
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The BPF filesystem's usual mount point.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Makes sure a BPF filesystem is mounted at [`BPFFS`], mounting one if
/// not (needs CAP_SYS_ADMIN).
///
/// # Errors
///
/// When it is not mounted and mounting fails.
pub fn ensure_bpffs() -> io::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = c"/sys/fs/bpf";
    // SAFETY: an all-zero statfs is a valid out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("no BPF filesystem at {BPFFS}, and mounting one failed: {e}"),
        ))
    }
}

fn missing(name: &str) -> Error {
    Error::new(
        format!("finding {name} in the program object"),
        Plain("not found: the object does not match this crate".into()),
    )
}

fn load_step(e: &aya::EbpfError) -> String {
    match e {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, .. }) => {
            format!("creating map {name}")
        }
        _ => "loading the steering object".into(),
    }
}

fn view<'a, T>(map: &'a mut aya::maps::Map, name: &str) -> Result<T, Error>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|e| Error::new(format!("opening {name}"), e))
}

/// The `WORKERS` array mapped into this process: workers publish their load
/// with plain atomic stores, no system call.
#[derive(Clone)]
struct WorkerTable {
    mapping: Arc<Mapping>,
}

struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics;
// the pointer is valid until `Drop` unmaps it, which needs the last `Arc`.
unsafe impl Send for Mapping {}
// SAFETY: as above; every access is an atomic load or store.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what `mmap` returned; no
        // reference into the mapping outlives the last `Arc<Mapping>`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

impl WorkerTable {
    /// Maps all [`SLOTS`] slots of every generation.
    fn map(fd: BorrowedFd<'_>) -> io::Result<WorkerTable> {
        let page = 4096usize;
        let bytes = std::mem::size_of::<WorkerSlot>() * SLOTS as usize;
        let len = bytes.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of a BPF array map created with
        // BPF_F_MMAPABLE; the kernel checks the length against the map.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(WorkerTable {
            mapping: Arc::new(Mapping { base, len }),
        })
    }

    fn slot(&self, index: usize) -> *mut WorkerSlot {
        assert!(index < SLOTS as usize, "no slot {index}");
        // SAFETY: `index < SLOTS`, so the slot lies inside the mapping;
        // array values are laid out back to back (32 bytes, already a
        // multiple of 8).
        unsafe { self.mapping.base.as_ptr().cast::<WorkerSlot>().add(index) }
    }

    /// Zeroes slot `index`, field by field (atomically: a worker of an old
    /// generation that has not noticed the takeover yet may still write).
    fn reset(&self, index: usize) {
        let slot = self.slot(index).cast::<u8>();
        let size = std::mem::size_of::<WorkerSlot>();
        for offset in (0..size).step_by(8) {
            let field = slot.wrapping_add(offset).cast::<u64>();
            // SAFETY: an 8-aligned offset inside a valid slot of the
            // mapping, which `self` keeps alive; only atomics touch it.
            unsafe { AtomicU64::from_ptr(field) }.store(0, Ordering::Relaxed);
        }
    }
}

/// One worker's slot in the shared `WORKERS` array.
#[derive(Clone)]
pub struct WorkerHandle {
    table: WorkerTable,
    /// Worker index within its generation.
    index: usize,
    /// Slot in `WORKERS`: the generation's base plus `index`.
    slot: usize,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("index", &self.index)
            .field("slot", &self.snapshot())
            .finish()
    }
}

impl WorkerHandle {
    fn u32_field(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is a u32 field's offset inside a valid slot; the
        // mapping lives as long as `self.table`; the kernel program and other
        // threads access the field only atomically or with single loads.
        let field = self
            .table
            .slot(self.slot)
            .wrapping_byte_add(offset)
            .cast::<u32>();
        // SAFETY: see above.
        unsafe { AtomicU32::from_ptr(field) }
    }

    fn u64_field(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as in `u32_field`, for an 8-aligned u64 field.
        let field = self
            .table
            .slot(self.slot)
            .wrapping_byte_add(offset)
            .cast::<u64>();
        // SAFETY: see above.
        unsafe { AtomicU64::from_ptr(field) }
    }

    /// The worker index.
    #[must_use]
    pub fn index(&self) -> usize {
        self.index
    }

    /// Publishes the worker's live connection count.
    #[inline]
    pub fn set_connections(&self, conns: usize) {
        let v = u32::try_from(conns).unwrap_or(u32::MAX);
        self.u32_field(std::mem::offset_of!(WorkerSlot, conns))
            .store(v, Ordering::Relaxed);
    }

    /// The worker's accept queue is empty: nothing steered to it is pending.
    #[inline]
    pub fn accept_queue_empty(&self) {
        self.u64_field(std::mem::offset_of!(WorkerSlot, pending))
            .store(0, Ordering::Relaxed);
    }

    /// The worker's loop starts a turn (`now_ns` from [`monotonic_ns`]).
    #[inline]
    pub fn turn_started(&self, now_ns: u64) {
        self.u64_field(std::mem::offset_of!(WorkerSlot, busy_since_ns))
            .store(now_ns.max(1), Ordering::Relaxed);
    }

    /// The worker's loop waits for events again.
    #[inline]
    pub fn turn_ended(&self) {
        self.u64_field(std::mem::offset_of!(WorkerSlot, busy_since_ns))
            .store(0, Ordering::Relaxed);
    }

    /// Publishes the longest loop turn of the worker's recent past (see
    /// [`TurnLag`]).
    #[inline]
    pub fn set_recent_turn(&self, ns: u64) {
        self.u64_field(std::mem::offset_of!(WorkerSlot, recent_turn_ns))
            .store(ns, Ordering::Relaxed);
    }

    /// Excludes the worker from new connections (or lets it have them
    /// again). Takes effect for the next SYN.
    pub fn set_draining(&self, draining: bool) {
        self.u32_field(std::mem::offset_of!(WorkerSlot, draining))
            .store(u32::from(draining), Ordering::SeqCst);
    }

    /// The slot as the program sees it now.
    #[must_use]
    pub fn snapshot(&self) -> WorkerSlot {
        WorkerSlot {
            conns: self
                .u32_field(std::mem::offset_of!(WorkerSlot, conns))
                .load(Ordering::Relaxed),
            draining: self
                .u32_field(std::mem::offset_of!(WorkerSlot, draining))
                .load(Ordering::Relaxed),
            pending: self
                .u64_field(std::mem::offset_of!(WorkerSlot, pending))
                .load(Ordering::Relaxed),
            busy_since_ns: self
                .u64_field(std::mem::offset_of!(WorkerSlot, busy_since_ns))
                .load(Ordering::Relaxed),
            recent_turn_ns: self
                .u64_field(std::mem::offset_of!(WorkerSlot, recent_turn_ns))
                .load(Ordering::Relaxed),
        }
    }
}

/// The longest loop turn of a worker's recent past: the maximum over the
/// current window and the previous one (a quarter second each), so a stall
/// is remembered for a quarter to half a second after it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurnLag {
    window_start: u64,
    current: u64,
    previous: u64,
}

impl TurnLag {
    const WINDOW_NS: u64 = 250_000_000;

    /// Records a turn from `start` to `end` (nanoseconds of
    /// [`monotonic_ns`]); returns the value to publish.
    #[inline]
    pub fn record(&mut self, start: u64, end: u64) -> u64 {
        if end.saturating_sub(self.window_start) >= Self::WINDOW_NS {
            // A whole quiet window in between forgets the old one too.
            self.previous = if end - self.window_start >= 2 * Self::WINDOW_NS {
                0
            } else {
                self.current
            };
            self.current = 0;
            self.window_start = end;
        }
        self.current = self.current.max(end.saturating_sub(start));
        self.current.max(self.previous)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`, which
/// the program compares [`WorkerHandle::turn_started`] against.
#[must_use]
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::TurnLag;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_long_turn_is_remembered_for_a_quarter_to_half_a_second() {
        let mut lag = TurnLag::default();
        let t0 = 1_000 * MS;
        assert_eq!(lag.record(t0, t0 + MS), MS);
        assert_eq!(lag.record(t0 + 10 * MS, t0 + 60 * MS), 50 * MS, "the stall");
        assert_eq!(
            lag.record(t0 + 100 * MS, t0 + 101 * MS),
            50 * MS,
            "same window"
        );
        // Next window: the previous one still counts.
        assert_eq!(lag.record(t0 + 300 * MS, t0 + 301 * MS), 50 * MS);
        // The one after: forgotten.
        assert_eq!(lag.record(t0 + 560 * MS, t0 + 561 * MS), MS);
        // A long quiet gap forgets everything at once.
        assert_eq!(lag.record(t0 + 600 * MS, t0 + 650 * MS), 50 * MS);
        assert_eq!(lag.record(t0 + 2_000 * MS, t0 + 2_001 * MS), MS);
    }
}
