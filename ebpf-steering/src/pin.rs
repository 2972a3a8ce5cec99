//! Pinning the program and its maps in a BPF filesystem, removing the pins
//! of killed servers, and mounting the filesystem where it is missing.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Array, MapData};
use aya::programs::SkReuseport;
use aya::Ebpf;

use crate::maps::WRITTEN;
use crate::{common, Config, Error};

/// Every map of the object and the program, by name.
pub(crate) const PINNED: [&str; 7] = [
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
pub(crate) fn pin_all(ebpf: &mut Ebpf, taken: &[aya::maps::Map], dir: &Path) -> Result<(), Error> {
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
        let map = ebpf.map(name).ok_or_else(|| Error::missing(name))?;
        map.pin(dir.join(name)).map_err(|e| pin_err(name, e))?;
    }
    let program: &mut SkReuseport = ebpf
        .program_mut(common::maps::PROGRAM)
        .ok_or_else(|| Error::missing(common::maps::PROGRAM))?
        .try_into()
        .map_err(|e| Error::new("opening the program", e))?;
    program
        .pin(dir.join(common::maps::PROGRAM))
        .map_err(|e| pin_err(common::maps::PROGRAM, e))?;
    Ok(())
}

pub(crate) fn remove_pins(dir: &Path) -> io::Result<()> {
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
/// `/sys/fs/bpf/corelane/net<inode>_<ip>_<port>`, `<inode>` naming the
/// network namespace and the address's dots and colons written as dashes
/// (a BPF filesystem refuses names with dots), e.g.
/// `/sys/fs/bpf/corelane/net4026531833_127-0-0-1_8080`. A reuseport group
/// lives in one network namespace while a BPF filesystem is often shared
/// by several (containers mounting the host's `/sys/fs/bpf`): two pods
/// serving `0.0.0.0:8080` on one node must not join each other's program.
#[must_use]
pub fn pin_dir(addr: std::net::SocketAddr) -> PathBuf {
    let ip = addr.ip().to_string().replace(['.', ':'], "-");
    let name = match netns_inode() {
        Some(ino) => format!("net{ino}_{ip}_{}", addr.port()),
        None => format!("{ip}_{}", addr.port()),
    };
    Path::new(BPFFS).join("corelane").join(name)
}

/// The inode of this thread's network namespace.
fn netns_inode() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
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
pub(crate) fn pinned_config(dir: &Path) -> Option<Config> {
    let data = MapData::from_pin(dir.join(common::maps::CONFIG)).ok()?;
    let map = aya::maps::Map::from_map_data(data).ok()?;
    Array::<MapData, Config>::try_from(map)
        .ok()?
        .get(&0, 0)
        .ok()
}

fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    // Signal 0 only checks that the process exists; EPERM: it does, as
    // another user's.
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
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
    if rustix::fs::statfs(BPFFS).is_ok_and(|st| st.f_type == BPF_FS_MAGIC) {
        return Ok(());
    }
    rustix::mount::mount(
        "bpf",
        BPFFS,
        "bpf",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(
            e.kind(),
            format!("no BPF filesystem at {BPFFS}, and mounting one failed: {e}"),
        )
    })
}
