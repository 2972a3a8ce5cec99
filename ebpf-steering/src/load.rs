//! Loading the program, filling its maps and attaching it to a group.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;

use aya::maps::{Array, PerCpuArray};
use aya::programs::SkReuseport;
use aya::Ebpf;

use crate::maps::{view, Maps, WRITTEN};
use crate::pin::pin_all;
use crate::table::WorkerTable;
use crate::{check_group, common, EbpfSteering, Error, Settings, OBJECT};

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
            taken.push(ebpf.take_map(name).ok_or_else(|| Error::missing(name))?);
        }
        let table = {
            let map = ebpf
                .map(common::maps::WORKERS)
                .ok_or_else(|| Error::missing(common::maps::WORKERS))?;
            let aya::maps::Map::Array(data) = map else {
                return Err(Error::missing(common::maps::WORKERS));
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

        load_and_attach(&mut ebpf, listeners[0])?;

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
        let config = Array::try_from(taken.next().ok_or_else(|| Error::missing("CONFIG"))?)
            .map_err(|e| Error::new("opening CONFIG", e))?;
        let _cpu = taken.next();
        let stats = PerCpuArray::try_from(taken.next().ok_or_else(|| Error::missing("STATS"))?)
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
}

fn load_step(e: &aya::EbpfError) -> String {
    match e {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, .. }) => {
            format!("creating map {name}")
        }
        _ => "loading the steering object".into(),
    }
}

/// Loads the program into the kernel (the verifier's last words in the
/// error when it refuses) and attaches it to the group of `listener`.
fn load_and_attach(ebpf: &mut Ebpf, listener: BorrowedFd<'_>) -> Result<(), Error> {
    let program: &mut SkReuseport = ebpf
        .program_mut(common::maps::PROGRAM)
        .ok_or_else(|| Error::missing(common::maps::PROGRAM))?
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
        .attach(listener)
        .map_err(|e| Error::new("attaching to the group (SO_ATTACH_REUSEPORT_EBPF)", e))?;
    Ok(())
}
