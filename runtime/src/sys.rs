//! Every direct system call the runtime makes lives here.
//!
//! The rest of the crate stays safe code over `mio` and `socket2`; this module
//! wraps the few things they do not cover (CPU affinity, writev on a raw fd,
//! descriptor limits, classifying accept errors).

use std::io;
use std::os::fd::RawFd;

/// Calls a libc function and turns a `-1` return into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: the caller of the macro upholds the libc function's contract;
        // every use below states why in its own SAFETY comment.
        #[allow(unused_unsafe, clippy::undocumented_unsafe_blocks)]
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// A system call made directly, returning the non-negative result as
/// `usize`. For `recvfrom` and `sendto` on the request path: libc's
/// wrappers of those are thread-cancellation points, which costs two
/// calls around every system call (about 30 instructions per request each
/// way) for a feature the runtime never uses. On x86-64 it is the
/// `syscall` instruction itself ([`raw_syscall6`]: no call into libc, no
/// `errno`, about 15 instructions less per call than `syscall(2)`);
/// elsewhere libc's `syscall(2)`.
macro_rules! direct {
    ($nr:expr $(, $arg:expr)* $(,)?) => {{
        // SAFETY: the caller upholds the system call's contract; every use
        // below states why in its own SAFETY comment.
        #[allow(unused_unsafe, clippy::undocumented_unsafe_blocks)]
        let res = unsafe { $crate::sys::direct_syscall($nr as libc::c_long, [$($arg as libc::c_long),*]) };
        res
    }};
}

/// System call `nr` with up to six arguments (the rest zero).
///
/// # Safety
///
/// The arguments must satisfy system call `nr`'s contract (valid
/// pointers and lengths for what it reads and writes).
#[inline(always)]
pub(crate) unsafe fn direct_syscall<const N: usize>(
    nr: libc::c_long,
    args: [libc::c_long; N],
) -> io::Result<usize> {
    let mut a = [0 as libc::c_long; 6];
    a[..N].copy_from_slice(&args);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: passed on from the caller.
        let res = unsafe { raw_syscall6(nr, a) };
        // The kernel returns -errno (-4095..=-1) on failure.
        if (-4095..0).contains(&res) {
            Err(io::Error::from_raw_os_error(-res as i32))
        } else {
            Ok(res as usize)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: passed on from the caller.
        let res = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
        if res < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res as usize)
        }
    }
}

/// The x86-64 `syscall` instruction: number in `rax`, arguments in `rdi`,
/// `rsi`, `rdx`, `r10`, `r8`, `r9`; the result (or `-errno`) in `rax`;
/// `rcx` and `r11` clobbered (the Linux x86-64 system call ABI).
///
/// # Safety
///
/// As [`direct_syscall`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn raw_syscall6(nr: libc::c_long, a: [libc::c_long; 6]) -> libc::c_long {
    let res;
    // SAFETY: the instruction is the kernel's entry; the registers are the
    // ABI's, and the caller vouches for the arguments. It touches no stack.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => res,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack, preserves_flags)
        );
    }
    res
}

/// The CPUs this process may run on, in ascending order.
///
/// # Errors
///
/// Returns the error of `sched_getaffinity(2)`.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size we pass.
    syscall!(sched_getaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &mut set
    ))?;
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET only reads the set; `cpu` is below CPU_SETSIZE.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to one CPU.
///
/// # Errors
///
/// Returns the error of `sched_setaffinity(2)`, e.g. `EINVAL` for a CPU the
/// process may not use.
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: all-zero is a valid empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` was checked to be below CPU_SETSIZE just above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size we pass; pid 0 is this thread.
    syscall!(sched_setaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &set
    ))?;
    Ok(())
}

/// A classic BPF program for `SO_ATTACH_REUSEPORT_CBPF` that returns, for
/// the CPU handling the SYN, the index of the worker pinned to it
/// (`cpus[i]` is worker `i`'s CPU), or the CPU modulo the group size for
/// CPUs no worker is pinned to.
pub(crate) fn cpu_steering_program(cpus: &[Option<usize>]) -> Vec<libc::sock_filter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut prog = Vec::with_capacity(3 + 2 * cpus.len());
    // A = the CPU this packet is processed on.
    prog.push(op(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        0,
        0,
        (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
    ));
    for (worker, cpu) in cpus.iter().enumerate() {
        let Some(cpu) = cpu else { continue };
        // if A == cpu: return worker
        prog.push(op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            *cpu as u32,
        ));
        prog.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, worker as u32));
    }
    prog.push(op(
        libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
        0,
        0,
        cpus.len().max(1) as u32,
    ));
    prog.push(op(libc::BPF_RET | libc::BPF_A, 0, 0, 0));
    prog
}

/// Attaches a classic BPF steering program to a reuseport group through one
/// of its sockets (`SO_ATTACH_REUSEPORT_CBPF`; needs no privilege).
///
/// # Errors
///
/// Returns the error of `setsockopt(2)`.
pub(crate) fn attach_reuseport_cbpf(fd: RawFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel
    // copies the program and does not keep the pointer.
    syscall!(setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        (&raw const fprog).cast::<libc::c_void>(),
        std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
    ))?;
    Ok(())
}

/// `setsockopt(2)` of an `int` option.
fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid int option value of the size given.
    syscall!(setsockopt(
        fd,
        level,
        name,
        (&raw const value).cast::<libc::c_void>(),
        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
    ))?;
    Ok(())
}

/// Reads an integer socket option.
#[cfg(test)]
pub(crate) fn int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the sizes given.
    syscall!(getsockopt(fd, level, name, (&raw mut v).cast(), &mut len))?;
    Ok(v)
}

/// Detaches whatever steering program (classic or eBPF) the reuseport group
/// of `fd` has; `Ok(false)` when it had none.
pub(crate) fn detach_reuseport_program(fd: RawFd) -> io::Result<bool> {
    match set_int_option(fd, libc::SOL_SOCKET, libc::SO_DETACH_REUSEPORT_BPF, 0) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets `TCP_DEFER_ACCEPT` on listener `fd` to `wait`, in whole seconds
/// (at least one).
pub(crate) fn set_defer_accept(fd: RawFd, wait: std::time::Duration) -> io::Result<()> {
    let secs = libc::c_int::try_from(wait.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
    set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, secs)
}

/// Whether the kernel migrates the queue of a closing reuseport listener
/// even without an eBPF program (`net.ipv4.tcp_migrate_req`).
pub(crate) fn tcp_migrate_req() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

/// Who is at the other end of a Unix socket (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerCredentials {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
}

/// The credentials of the process at the other end of Unix socket `fd`.
pub(crate) fn peer_credentials(fd: RawFd) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-pointers of the sizes given.
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_PEERCRED,
        (&raw mut cred).cast::<libc::c_void>(),
        &mut len,
    ))?;
    Ok(PeerCredentials {
        pid: cred.pid as u32,
        uid: cred.uid,
    })
}

/// The effective uid of this process.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes `fd`, registered for readable events in the epoll instance
/// `epfd` under `token` (mio registers every source edge-triggered),
/// level-triggered (`level`) or edge-triggered again. The events asked for
/// are mio's for `Interest::READABLE`; so is the token's encoding.
///
/// # Errors
///
/// Returns the error of `epoll_ctl(2)`.
pub(crate) fn epoll_readable_trigger(
    epfd: RawFd,
    fd: RawFd,
    token: usize,
    level: bool,
) -> io::Result<()> {
    let mut events = libc::EPOLLIN | libc::EPOLLRDHUP;
    if !level {
        events |= libc::EPOLLET;
    }
    let mut event = libc::epoll_event {
        events: events as u32,
        u64: token as u64,
    };
    // SAFETY: `event` is a valid epoll_event that outlives the call; the
    // kernel checks both descriptors.
    syscall!(epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut event))?;
    Ok(())
}

/// Waits up to `timeout_ms` for `fd` to become readable; `false` on
/// timeout or error (the caller simply tries again).
pub(crate) fn poll_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) > 0 }
}

/// The flags of a write to a socket: `MSG_NOSIGNAL` (a peer gone is an
/// error, not a `SIGPIPE`), and `MSG_MORE` when the socket is closed (or
/// shut down for writing) as soon as the write completes (`fin_follows`):
/// the last partial segment is then held, and the FIN leaves in it (with
/// a connection per request, segments per connection, both ends, 10 → 8:
/// the peer acknowledges the reply and the FIN at once, and takes both in
/// one receive). Nothing is
/// held longer than that: the close pushes it, and if the write is
/// partial, the peer's acknowledgements push what was written (the flag
/// holds data only during the call that passes it).
fn send_flags(fin_follows: bool) -> libc::c_int {
    if fin_follows {
        libc::MSG_NOSIGNAL | libc::MSG_MORE
    } else {
        libc::MSG_NOSIGNAL
    }
}

/// Writes several slices to a socket with one `sendmsg(2)` (a `writev(2)`
/// that cannot raise SIGPIPE); `fin_follows` as in [`send`].
///
/// # Errors
///
/// Returns the error of `sendmsg(2)`; `WouldBlock` when the socket buffer is full.
pub(crate) fn send_vectored(
    fd: RawFd,
    bufs: &[io::IoSlice<'_>],
    fin_follows: bool,
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid msghdr (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr().cast_mut().cast::<libc::iovec>();
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
    // SAFETY: IoSlice is ABI-compatible with iovec (guaranteed by std), the
    // slices outlive the call, the kernel only reads them, and msg_iovlen does
    // not exceed `bufs.len()`.
    direct!(
        libc::SYS_sendmsg,
        fd,
        &raw const msg,
        send_flags(fin_follows)
    )
}

/// Reads from a socket into the spare capacity of `buf` with one
/// `recvfrom(2)` (no flags, no address: a `read(2)` that takes the
/// socket's own path in the kernel instead of the file layer's), and
/// extends `buf` by the bytes read.
///
/// # Errors
///
/// Returns the error of `recvfrom(2)`; `WouldBlock` when nothing is there.
pub(crate) fn read_spare(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: the pointer and length describe the vector's spare capacity,
    // which the kernel may write; it never reads from it. No address is
    // asked for.
    let n = direct!(
        libc::SYS_recvfrom,
        fd,
        spare.as_mut_ptr(),
        spare.len(),
        0,
        std::ptr::null_mut::<libc::sockaddr>(),
        std::ptr::null_mut::<libc::socklen_t>()
    )?;
    // SAFETY: `recvfrom` initialised the first `n` spare bytes (n <= spare.len()).
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Writes `buf` to a socket with one `sendto(2)`. Returns the bytes
/// written. `fin_follows`: the socket is closed as soon as this completes
/// (see [`send_flags`]).
///
/// # Errors
///
/// Returns the error of `sendto(2)`; `WouldBlock` when the socket is full.
pub(crate) fn send(fd: RawFd, buf: &[u8], fin_follows: bool) -> io::Result<usize> {
    // SAFETY: the kernel reads `buf.len()` bytes from `buf`, which outlives
    // the call; no address is passed.
    direct!(
        libc::SYS_sendto,
        fd,
        buf.as_ptr(),
        buf.len(),
        send_flags(fin_follows),
        std::ptr::null::<libc::sockaddr>(),
        0
    )
}

/// The soft and hard `RLIMIT_NOFILE` of this process.
///
/// # Errors
///
/// Returns the error of `getrlimit(2)`.
pub(crate) fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the soft `RLIMIT_NOFILE` of this process (the hard limit is kept).
///
/// # Errors
///
/// Returns the error of `setrlimit(2)`, e.g. `EINVAL` above the hard limit.
pub(crate) fn set_nofile_soft_limit(soft: u64) -> io::Result<()> {
    let (_, hard) = nofile_limit()?;
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit that outlives the call.
    syscall!(setrlimit(libc::RLIMIT_NOFILE, &lim))?;
    Ok(())
}

/// Whether an `accept(2)` error means the process or system ran out of a
/// resource (descriptors, socket buffers, memory). Retrying at once would spin.
pub(crate) fn is_accept_resource_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether an `accept(2)` error concerns only the one connection being
/// accepted (it was aborted or reset before we took it): skip it and go on.
pub(crate) fn is_accept_connection_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EPERM)
    )
}

/// Switches the whole process to `user` (its uid, primary gid and no
/// supplementary groups), for good: a server that binds a port and attaches
/// its steering program as root, then serves as `nobody`. Returns the uid
/// and gid. Doing nothing is success when the process already runs as
/// `user`.
///
/// # Errors
///
/// `NotFound` if there is no such user; the error of `setgroups(2)`,
/// `setgid(2)` or `setuid(2)` (`EPERM` when not root); `PermissionDenied` if
/// root could still be regained afterwards.
pub(crate) fn drop_privileges(user: &str) -> io::Result<(u32, u32)> {
    let (uid, gid) = lookup_user(user)?;
    // SAFETY: getuid cannot fail.
    let ruid = unsafe { libc::getuid() };
    let euid = effective_uid();
    if ruid == uid && euid == uid {
        return Ok((uid, gid));
    }
    // SAFETY: one valid gid_t, count 1.
    syscall!(setgroups(1, &gid))?;
    // SAFETY: plain id arguments.
    syscall!(setgid(gid))?;
    // SAFETY: plain id argument; glibc applies it to every thread.
    syscall!(setuid(uid))?;
    // SAFETY: as above; this must now fail.
    if uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "root could be regained after dropping privileges",
        ));
    }
    Ok((uid, gid))
}

/// The uid and primary gid of `user`.
///
/// # Errors
///
/// `NotFound` when there is no such user.
pub(crate) fn lookup_user(user: &str) -> io::Result<(u32, u32)> {
    let name = std::ffi::CString::new(user)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    // SAFETY: an all-zero passwd is a valid out-parameter.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf`'s length is given.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if found.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no user `{user}`"),
        ));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dropping_to_a_user_that_does_not_exist_is_a_clear_error() {
        let e = super::drop_privileges("no-such-user-corelane").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "no user `no-such-user-corelane`");
    }

    use super::*;

    /// The direct system calls carry data, the kernel's error codes and
    /// `WouldBlock` as libc's wrappers would.
    #[test]
    fn direct_calls_read_write_and_report_errors_as_libc_does() {
        use std::io::Write as _;
        use std::os::fd::AsRawFd as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let fd = server.as_raw_fd();
        let mut buf = Vec::with_capacity(64);
        let e = read_spare(fd, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        client.write_all(b"ping").unwrap();
        assert!(poll_readable(fd, 5_000));
        assert_eq!(read_spare(fd, &mut buf).unwrap(), 4);
        assert_eq!(buf, b"ping");
        assert_eq!(send(fd, b"pong", false).unwrap(), 4);
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut client, &mut got).unwrap();
        assert_eq!(&got, b"pong");
        // Not a socket: the kernel's own error, as `recvfrom(2)` gives it.
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let e = read_spare(file.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTSOCK));
        // A closed descriptor number.
        let e = send(-1, b"x", false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    fn current_cpu() -> Option<usize> {
        // SAFETY: sched_getcpu takes no arguments and only returns a number.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).ok()
    }

    #[test]
    fn allowed_cpus_are_not_empty_and_include_the_current_one() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        let cur = current_cpu().unwrap();
        assert!(cpus.contains(&cur), "{cur} not in {cpus:?}");
    }

    #[test]
    fn pinning_to_an_impossible_cpu_fails_cleanly() {
        let err = std::thread::spawn(|| pin_current_thread(1 << 20).unwrap_err())
            .join()
            .unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn accept_errors_are_classified() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_accept_resource_error(&emfile));
        assert!(!is_accept_connection_error(&emfile));
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert!(is_accept_connection_error(&aborted));
        assert!(!is_accept_resource_error(&aborted));
    }
}
