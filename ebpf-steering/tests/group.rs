//! The program against a real reuseport group of plain blocking listeners:
//! loads, attaches, steers by each policy, drains, migrates. Needs CAP_BPF:
//! skipped with a printed reason otherwise, and required under `CI=true`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use corelane_steering::{EbpfSteering, Policy, Settings};
use corelane_test_support::require::needs;
use socket2::{Domain, Socket, Type};

fn group(n: usize) -> Vec<TcpListener> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(4096).unwrap();
        addr = s.local_addr().unwrap().as_socket().unwrap();
        s.set_nonblocking(true).unwrap();
        out.push(s.into());
    }
    out
}

/// Attaches, or returns `None` (skip) when not privileged outside CI.
fn attach(ls: &[TcpListener], policy: Policy) -> Option<EbpfSteering> {
    let fds: Vec<_> = ls.iter().map(|l| l.as_fd()).collect();
    let cpus = vec![None; ls.len()];
    match EbpfSteering::attach(&fds, &cpus, &Settings::new(policy)) {
        Ok(s) => Some(s),
        Err(e) if e.is_permission() => {
            let _ = needs(false, &format!("CAP_BPF or root ({e})"));
            None
        }
        Err(e) => panic!("attaching the steering program: {e}"),
    }
}

/// Opens `n` connections from a thread pinned to CPU 0: round robin is exact
/// per CPU, and on loopback the SYN is processed on the connecting CPU.
fn connect_on_cpu0(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    std::thread::spawn(move || {
        // SAFETY: an all-zero cpu_set_t is a valid, empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU 0 is inside the set.
        unsafe { libc::CPU_SET(0, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t of the size given; pid 0 is
        // this thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
    })
    .join()
    .unwrap()
}

/// Accepts everything queued on each listener; returns counts per listener.
fn drain_queues(ls: &[TcpListener]) -> Vec<usize> {
    ls.iter()
        .map(|l| {
            let mut n = 0;
            while l.accept().is_ok() {
                n += 1;
            }
            n
        })
        .collect()
}

#[test]
fn round_robin_deals_in_turn() {
    let ls = group(4);
    let Some(s) = attach(&ls, Policy::RoundRobin) else {
        return;
    };
    let addr = ls[0].local_addr().unwrap();
    // Round robin counts turns per CPU: from one CPU the split is exact.
    let clients = connect_on_cpu0(addr, 1000);
    std::thread::sleep(Duration::from_millis(50));
    let counts = drain_queues(&ls);
    let stats = s.stats().unwrap();
    assert_eq!(counts.iter().sum::<usize>(), 1000);
    let selected: Vec<usize> = stats.selected.iter().map(|&n| n as usize).collect();
    assert_eq!(
        selected, counts,
        "the program's counters are what was queued"
    );
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 1, "{counts:?}");
    drop(clients);
}

#[test]
fn workers_publish_through_shared_memory_and_draining_excludes() {
    let ls = group(3);
    let Some(s) = attach(&ls, Policy::RoundRobin) else {
        return;
    };
    let w1 = s.worker(1);
    w1.set_connections(42);
    w1.turn_started(7);
    assert_eq!(w1.snapshot().conns, 42);
    assert_eq!(w1.snapshot().busy_since_ns, 7);
    w1.turn_ended();
    assert_eq!(w1.snapshot().busy_since_ns, 0);
    w1.set_draining(true);
    let addr = ls[0].local_addr().unwrap();
    let clients = connect_on_cpu0(addr, 300);
    std::thread::sleep(Duration::from_millis(50));
    let counts = drain_queues(&ls);
    assert_eq!(counts[1], 0, "{counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 300);
    // The program counted what it steered to each worker as pending.
    assert_eq!(s.worker(0).snapshot().pending, counts[0] as u64);
    s.worker(0).accept_queue_empty();
    assert_eq!(s.worker(0).snapshot().pending, 0);
    drop(clients);
}

#[test]
fn a_group_it_cannot_steer_is_a_clear_error() {
    let none: Vec<std::os::fd::BorrowedFd<'_>> = Vec::new();
    let e = EbpfSteering::attach(&none, &[], &Settings::new(Policy::Hash)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "checking the group: 0 listeners; eBPF steering handles 1 to 64"
    );
    assert!(!e.is_permission());
}

/// Listeners joining the reuseport group of `first` (same address).
fn join_group(first: &TcpListener, n: usize) -> Vec<TcpListener> {
    let addr = first.local_addr().unwrap();
    (0..n)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&addr.into()).unwrap();
            s.listen(4096).unwrap();
            s.set_nonblocking(true).unwrap();
            s.into()
        })
        .collect()
}

/// A pin directory of its own for this test run.
fn test_pin_dir(tag: &str) -> Option<std::path::PathBuf> {
    corelane_steering::ensure_bpffs().ok()?;
    Some(
        std::path::Path::new(corelane_steering::BPFFS)
            .join(format!("corelane-test-{}-{tag}", std::process::id())),
    )
}

#[test]
fn a_new_generation_joins_the_pinned_program_and_takes_every_new_connection() {
    let old = group(2);
    let Some(dir) = test_pin_dir("join") else {
        let _ = needs(false, "a BPF filesystem");
        return;
    };
    let mut settings = Settings::new(Policy::RoundRobin);
    settings.pin = Some(dir.clone());
    let fds: Vec<_> = old.iter().map(|l| l.as_fd()).collect();
    let first = match EbpfSteering::attach(&fds, &[None, None], &settings) {
        Ok(s) => s,
        Err(e) if e.is_permission() => {
            let _ = needs(false, &format!("CAP_BPF or root ({e})"));
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(first.pinned().unwrap(), dir.as_path());
    assert!(first.is_serving());
    let me = std::process::id();

    // Generation 2: three listeners in the same group, joined without
    // loading anything.
    let new = join_group(&old[0], 3);
    let fds: Vec<_> = new.iter().map(|l| l.as_fd()).collect();
    let stale = EbpfSteering::join(&dir, &fds, &[None; 3], &settings, me + 1).unwrap_err();
    assert!(stale.to_string().contains("stale pins"), "{stale}");
    let second = EbpfSteering::join(&dir, &fds, &[None; 3], &settings, me).unwrap();
    assert!(second.joined() && second.generation() == 2);
    assert!(second.is_serving() && !first.is_serving());

    let addr = old[0].local_addr().unwrap();
    let clients = connect_on_cpu0(addr, 300);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        drain_queues(&old),
        vec![0, 0],
        "the old generation gets nothing"
    );
    assert_eq!(drain_queues(&new), vec![100, 100, 100]);
    assert_eq!(second.stats().unwrap().selected, vec![100, 100, 100]);
    drop(clients);

    // The old generation's listeners close; generation 3 reuses their slot
    // (base 0) and must not see their leftovers.
    drop(old);
    let third_ls = join_group(&new[0], 1);
    let fds: Vec<_> = third_ls.iter().map(|l| l.as_fd()).collect();
    let third = EbpfSteering::join(&dir, &fds, &[None], &settings, me).unwrap();
    assert_eq!(third.generation(), 3);
    assert_eq!(
        third.stats().unwrap().selected,
        vec![0],
        "counters start at 0"
    );
    assert_eq!(third.worker(0).snapshot(), Default::default());
    let clients = connect_on_cpu0(addr, 50);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(drain_queues(&new), vec![0, 0, 0]);
    assert_eq!(drain_queues(&third_ls), vec![50]);
    drop(clients);

    // Only the serving generation removes the pins.
    assert!(!second.unpin().unwrap());
    assert!(dir.exists());
    assert!(third.unpin().unwrap());
    assert!(!dir.exists());
}

#[test]
fn pins_of_another_layout_are_refused() {
    let ls = group(1);
    let Some(dir) = test_pin_dir("version") else {
        return;
    };
    let mut settings = Settings::new(Policy::Hash);
    settings.pin = Some(dir.clone());
    let fds: Vec<_> = ls.iter().map(|l| l.as_fd()).collect();
    let s = match EbpfSteering::attach(&fds, &[None], &settings) {
        Ok(s) => s,
        Err(e) => {
            let _ = needs(false, &format!("eBPF steering ({e})"));
            return;
        }
    };
    // Rewrite the pinned config as an older build would have left it.
    let data = aya::maps::MapData::from_pin(dir.join("CONFIG")).unwrap();
    let mut config: aya::maps::Array<_, corelane_steering::Config> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    let mut c = config.get(&0, 0).unwrap();
    c.version = 2;
    config.set(0, c, 0).unwrap();
    let more = join_group(&ls[0], 1);
    let fds: Vec<_> = more.iter().map(|l| l.as_fd()).collect();
    let e = EbpfSteering::join(&dir, &fds, &[None], &settings, std::process::id()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "checking the pinned program: its maps have layout version 2, this build needs 3"
    );
    c.version = corelane_steering::VERSION;
    config.set(0, c, 0).unwrap();
    assert!(s.unpin().unwrap());
}

#[test]
fn pins_of_a_killed_server_are_removed_and_a_live_ones_kept() {
    if corelane_steering::ensure_bpffs().is_err() {
        return;
    }
    let base = std::path::Path::new(corelane_steering::BPFFS).join("corelane");
    // Two servers, each with its own group (a socket can be in one
    // SOCKETS array only).
    let (ls_live, ls_killed) = (group(1), group(1));
    let pin = |tag: &str, ls: &[TcpListener]| {
        let mut settings = Settings::new(Policy::Hash);
        settings.pin = Some(base.join(format!("test-{}-{tag}", std::process::id())));
        let fds: Vec<_> = ls.iter().map(|l| l.as_fd()).collect();
        EbpfSteering::attach(&fds, &[None], &settings)
    };
    let (live, killed) = match (pin("live", &ls_live), pin("killed", &ls_killed)) {
        (Ok(l), Ok(k)) => (l, k),
        (Err(e), _) | (_, Err(e)) => {
            let _ = needs(false, &format!("eBPF steering ({e})"));
            return;
        }
    };
    // Make `killed` look like the pins of a process that has exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let dead = child.id();
    let dir = killed.pinned().unwrap().to_path_buf();
    let data = aya::maps::MapData::from_pin(dir.join("CONFIG")).unwrap();
    let mut config: aya::maps::Array<_, corelane_steering::Config> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    let mut c = config.get(&0, 0).unwrap();
    c.owner_pid = dead;
    config.set(0, c, 0).unwrap();

    assert!(corelane_steering::remove_stale_pins() >= 1);
    assert!(!dir.exists(), "the dead server's pins are gone");
    assert!(
        live.pinned().unwrap().exists(),
        "the live server's pins stay"
    );
    assert!(live.unpin().unwrap());
}
