//! eBPF steering through real servers: each policy with 4 workers and 1000+
//! connections, the drain flag, and migration off a closing listener. Needs
//! CAP_BPF (root): skipped with a reason otherwise, required under CI.
//!
//! Connections come from threads pinned to one CPU where a policy's exact
//! guarantee depends on it (on loopback the SYN is processed on the
//! connecting thread's CPU).

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use corelane::{
    Accepted, Action, Context, Handler, Input, Output, Policy, Server, Steering, WorkerInfo,
};
use util::TestServer;

/// One eBPF test at a time: they count connections per worker, and CPU
/// time stolen by another test's server would only add noise.
static SERIAL: Mutex<()> = Mutex::new(());

/// Answers every line with the index of the worker serving the connection;
/// `stall\n` first blocks the worker's loop for 700 ms.
struct Who {
    worker: usize,
}

impl Handler for Who {
    type Conn = ();

    fn on_accept(&mut self, _: &Accepted, _cx: &mut Context<'_>) {}

    fn on_data(
        &mut self,
        _: &mut (),
        input: &mut Input<'_>,
        output: &mut Output,
        _cx: &mut Context<'_>,
    ) -> Action {
        while let Some(end) = input.bytes().iter().position(|&b| b == b'\n') {
            if &input.bytes()[..end] == b"stall" {
                std::thread::sleep(Duration::from_millis(700));
            }
            output.extend_from_slice(format!("{}\n", self.worker).as_bytes());
            input.consume(end + 1);
        }
        Action::Continue
    }
}

fn who(info: &WorkerInfo) -> Who {
    Who { worker: info.index }
}

/// A server of `workers` workers steered by `policy`, or `None` (skip) when
/// eBPF steering is not available here outside CI.
fn server(policy: Policy, workers: usize) -> Option<TestServer> {
    let s = TestServer::start(
        Server::builder()
            .workers(workers)
            .steering(Steering::Ebpf(policy))
            .idle_timeout(None),
        who,
    );
    let mode = s.metrics.steering_mode();
    if !util::needs(
        mode == Steering::Ebpf(policy),
        "eBPF steering (CAP_BPF, root)",
    ) {
        return None;
    }
    Some(s)
}

/// Opens `n` connections from a thread pinned to `cpu`.
fn connect_from(addr: SocketAddr, cpu: usize, n: usize) -> Vec<TcpStream> {
    std::thread::spawn(move || {
        corelane_test_support::pin_current_thread(cpu);
        (0..n)
            .map(|_| {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s
            })
            .collect()
    })
    .join()
    .unwrap()
}

/// Asks a connection which worker serves it.
fn worker_of(c: &mut TcpStream) -> usize {
    c.write_all(b"?\n").unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        assert_eq!(c.read(&mut b).expect("an answer, not a reset"), 1, "closed");
        line.push(b[0]);
    }
    std::str::from_utf8(&line[..line.len() - 1])
        .unwrap()
        .parse()
        .unwrap()
}

fn accepted(s: &TestServer) -> Vec<u64> {
    s.metrics.snapshot().iter().map(|w| w.accepted).collect()
}

fn wait_accepted(s: &TestServer, total: u64) {
    s.wait_for("accepts", Duration::from_secs(10), |m| m.accepted >= total);
}

#[test]
fn round_robin_splits_within_one() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = server(Policy::RoundRobin, 4) else {
        return;
    };
    let mut conns = connect_from(s.addr, 0, 1001);
    for c in &mut conns {
        worker_of(c);
    }
    wait_accepted(&s, 1001);
    let per = accepted(&s);
    let (min, max) = (per.iter().min().unwrap(), per.iter().max().unwrap());
    assert!(max - min <= 1, "round robin within ±1: {per:?}");
    let stats = s.metrics.steering().unwrap();
    assert_eq!(stats.selected, per, "the program's counts are the accepts");
    assert_eq!((stats.fallbacks, stats.migrated), (0, 0));
    s.stop().unwrap();
}

#[test]
fn hash_placement_matches_the_programs_counters() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = server(Policy::Hash, 4) else {
        return;
    };
    let mut conns = connect_from(s.addr, 0, 600);
    conns.extend(connect_from(s.addr, 1, 600));
    for c in &mut conns {
        worker_of(c);
    }
    wait_accepted(&s, 1200);
    let per = accepted(&s);
    let stats = s.metrics.steering().unwrap();
    assert_eq!(stats.selected, per);
    assert_eq!(stats.fallbacks, 0);
    // Hash spreads: each of 4 workers gets a fair share (mean 300; the
    // binomial standard deviation is 15, so 200 is 6.7 sigma away).
    assert!(per.iter().all(|&n| n > 200), "{per:?}");
    s.stop().unwrap();
}

#[test]
fn cpu_policy_keeps_connections_on_the_clients_cpu() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !util::needs(available >= 2, "2 CPUs") {
        return;
    }
    // Four workers on CPUs 0, 1, 0, 1: a CPU's connections go to the two
    // workers pinned to it, split by flow hash.
    let Some(s) = server(Policy::Cpu, 4) else {
        return;
    };
    let mut on0 = connect_from(s.addr, 0, 700);
    let mut on1 = connect_from(s.addr, 1, 400);
    let mut got = [0u64; 4];
    for c in &mut on0 {
        let w = worker_of(c);
        assert!(w == 0 || w == 2, "a CPU 0 connection on worker {w}");
        got[w] += 1;
    }
    for c in &mut on1 {
        let w = worker_of(c);
        assert!(w == 1 || w == 3, "a CPU 1 connection on worker {w}");
        got[w] += 1;
    }
    eprintln!("cpu policy: {got:?}");
    assert!(
        got.iter().all(|&n| n > 100),
        "both workers of each CPU: {got:?}"
    );
    s.stop().unwrap();
}

#[test]
fn least_loaded_steers_away_from_a_worker_holding_many_connections() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = server(Policy::LeastLoaded, 4) else {
        return;
    };
    // Open 800, keep those that landed on worker 0 (about 200), close the
    // rest: worker 0 now holds many long-lived connections, 1-3 none.
    let mut first = connect_from(s.addr, 0, 800);
    let mut kept = Vec::new();
    for mut c in first.drain(..) {
        if worker_of(&mut c) == 0 {
            kept.push(c);
        }
    }
    let held = kept.len() as u64;
    assert!(
        held >= 150,
        "least-loaded spread the first 800: {held} on worker 0"
    );
    s.wait_for("closes", Duration::from_secs(10), |m| m.active == held);
    let before = accepted(&s);
    // 300 more, kept open: they fill workers 1-3 up towards worker 0's load.
    let mut conns = connect_from(s.addr, 0, 150);
    conns.extend(connect_from(s.addr, 1, 150));
    let mut got = [0u64; 4];
    for c in &mut conns {
        got[worker_of(c)] += 1;
    }
    let after = accepted(&s);
    eprintln!("least-loaded: worker 0 held {held}; 300 new went {got:?}");
    assert_eq!(after[0], before[0], "worker 0 got new connections: {got:?}");
    assert_eq!(got[0], 0, "{got:?}");
    // Spread among the others, within half of a fair share either way:
    // power of two choices picks by the loads the workers last published
    // (once per loop turn), so a burst of SYNs between two publications
    // leans on one worker. 80..=120 failed in 8 of 10 runs on 2026-12-03
    // (66 to 138 seen, on the code before the TLS work as well as after).
    for w in 1..4 {
        assert!(
            (50..=150).contains(&got[w]),
            "spread among the others: {got:?}"
        );
    }
    drop(kept);
    s.stop().unwrap();
}

/// Puts worker 0's loop to sleep for 700 ms; returns the connection used.
fn stall_worker0(addr: SocketAddr) -> TcpStream {
    for _ in 0..64 {
        let mut c = connect_from(addr, 0, 1).remove(0);
        if worker_of(&mut c) == 0 {
            c.write_all(b"stall\n").unwrap();
            // Let the worker read it and fall asleep.
            std::thread::sleep(Duration::from_millis(50));
            return c;
        }
    }
    panic!("no connection landed on worker 0");
}

#[test]
fn a_draining_worker_receives_no_new_connections() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = server(Policy::RoundRobin, 4) else {
        return;
    };
    let _stalled = stall_worker0(s.addr);
    // Worker 0 is asleep with its listener open; draining excludes it at
    // once, before it wakes and closes the listener.
    s.shutdown.stop_worker(0).unwrap();
    let selected0 = s.metrics.steering().unwrap().selected[0];
    let mut conns = connect_from(s.addr, 0, 300);
    conns.extend(connect_from(s.addr, 1, 300));
    let mut got = [0u64; 4];
    for c in &mut conns {
        got[worker_of(c)] += 1;
    }
    assert_eq!(got[0], 0, "{got:?}");
    let stats = s.metrics.steering().unwrap();
    assert_eq!(stats.selected[0], selected0, "{stats:?}");
    assert_eq!(stats.fallbacks, 0, "{stats:?}");
    // Round robin over the three that are left, skipping worker 0: its
    // turns go to worker 1, so 1 gets about twice the others.
    assert!(got[2] >= 140 && got[3] >= 140, "{got:?}");
    s.stop().unwrap();
}

#[test]
fn connections_queued_on_a_stopping_worker_migrate_and_none_is_reset() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = server(Policy::RoundRobin, 4) else {
        return;
    };
    let stalled = stall_worker0(s.addr);
    let accepted0 = accepted(&s)[0];
    // Worker 0 sleeps: a quarter of these complete the handshake and wait
    // in its listener's accept queue.
    let mut conns = connect_from(s.addr, 0, 400);
    let queued = s.metrics.steering().unwrap().selected[0];
    s.shutdown.stop_worker(0).unwrap();
    // When it wakes it closes its listener without accepting: the kernel
    // hands the queue to the program, which moves it to workers 1-3.
    let mut got = [0u64; 4];
    for c in &mut conns {
        got[worker_of(c)] += 1;
    }
    let stats = s.metrics.steering().unwrap();
    eprintln!("migration: answered per worker {got:?}, program counters {stats:?}");
    assert_eq!(got[0], 0, "{got:?} {stats:?}");
    assert_eq!(got.iter().sum::<u64>(), 400, "every connection answered");
    assert_eq!(accepted(&s)[0], accepted0, "worker 0 accepted none of them");
    assert!(
        stats.migrated >= 90,
        "about 100 migrated: {stats:?} (worker 0 selected {queued})"
    );
    drop(stalled);
    s.stop().unwrap();
}
