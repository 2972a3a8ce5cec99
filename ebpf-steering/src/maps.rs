//! The maps userspace writes, and how a generation of workers is put in.

use std::os::fd::{AsRawFd, BorrowedFd};

use aya::maps::{Array, MapData, PerCpuArray, ReusePortSockArray};

use crate::table::WorkerTable;
use crate::{common, Config, Error, Settings, MAX_CPUS, MAX_WORKERS, VERSION};

/// The maps userspace writes, opened from a fresh load (borrowed from the
/// loaded object) or from pins (owned).
pub(crate) struct Maps<T> {
    pub(crate) sockets: ReusePortSockArray<T>,
    pub(crate) config: Array<T, Config>,
    pub(crate) cpu: Array<T, common::CpuWorkers>,
    pub(crate) stats: PerCpuArray<T, u64>,
    pub(crate) table: WorkerTable,
}

/// The maps [`Maps`] borrows in a fresh load, in [`Maps`]' order.
pub(crate) const WRITTEN: [&str; 4] = [
    common::maps::SOCKETS,
    common::maps::CONFIG,
    common::maps::CPU_WORKER,
    common::maps::STATS,
];

impl<T: std::borrow::BorrowMut<MapData>> Maps<T> {
    /// Fills the generation slot at `base` for `listeners` (everything but
    /// CONFIG). `fresh`: the maps were just created, all zero.
    pub(crate) fn install(
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
    pub(crate) fn serve(
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

pub(crate) fn view<'a, T>(map: &'a mut aya::maps::Map, name: &str) -> Result<T, Error>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|e| Error::new(format!("opening {name}"), e))
}
