//! Joining the program a previous process pinned: a takeover.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Mutex;

use aya::maps::{Array, MapData, PerCpuArray, ReusePortSockArray};

use crate::maps::Maps;
use crate::table::WorkerTable;
use crate::{check_group, common, Config, EbpfSteering, Error, Settings, MAX_WORKERS, VERSION};

impl EbpfSteering {
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
            return Err(Error::Version {
                found: current.version,
            });
        }
        if current.owner_pid != owner {
            return Err(Error::NotOwner {
                owner: current.owner_pid,
                expected: owner,
            });
        }
        let table = {
            let aya::maps::Map::Array(data) = open(common::maps::WORKERS)? else {
                return Err(Error::missing(common::maps::WORKERS));
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
}
