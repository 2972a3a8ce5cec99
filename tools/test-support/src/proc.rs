//! What `/proc` says about a process or the machine.

/// User + system CPU time of process `pid`, in clock ticks.
///
/// # Panics
///
/// If the process does not exist.
#[must_use]
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap() // utime + stime
}

/// User + system CPU time of process `pid`, in seconds.
#[must_use]
pub fn cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    cpu_ticks(pid) as f64 / hz as f64
}

/// Resident memory of process `pid`, bytes (0 when it is gone).
#[must_use]
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Open descriptors of process `pid`.
#[must_use]
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// The hard `RLIMIT_NOFILE` of process `pid`.
///
/// # Panics
///
/// If the process does not exist.
#[must_use]
pub fn nofile_hard_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

/// This process's `RLIMIT_NOFILE`: (soft, hard).
///
/// # Panics
///
/// If `getrlimit(2)` fails.
#[must_use]
pub fn nofile_limit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    (lim.rlim_cur, lim.rlim_max)
}

/// Sets this process's soft `RLIMIT_NOFILE`.
///
/// # Panics
///
/// If `setrlimit(2)` fails.
pub fn set_nofile_soft_limit(soft: u64) {
    let (_, hard) = nofile_limit();
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a valid pointer to an initialised rlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Raises this process's soft descriptor limit to the hard one; returns it.
pub fn raise_nofile() -> u64 {
    let (_, hard) = nofile_limit();
    set_nofile_soft_limit(hard);
    hard
}

/// How many IPv4 sockets listen on `port` (`/proc/net/tcp`, state `0A`).
///
/// # Panics
///
/// If `/proc/net/tcp` cannot be read.
#[must_use]
pub fn listening_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
        })
        .count()
}

/// Sends signal `sig` to process `pid`.
///
/// # Panics
///
/// If `kill(2)` fails.
pub fn signal(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).expect("pid");
    // SAFETY: kill(2) has no memory preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}
