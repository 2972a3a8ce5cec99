//! System test: least-loaded steering (the default as root) spreads a burst
//! of new connections as evenly as round robin on a busy machine, burst
//! after burst, while a worker really stuck in a handler is still avoided
//! (`stalled_worker.rs`).
//!
//! The real `corelane-http` binary on 127.0.0.1; the clients open their
//! connections as fast as they can from threads pinned to both CPUs (where
//! the workers run), beside a thread that keeps one CPU busy:
//! `cargo test --release -p corelane-loadtest --test steering_spread -- --nocapture`.
//! Needs root (CAP_BPF): skips without it, and fails under `CI=true`.

mod harness;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corelane_test_support::proc::raise_nofile;
use corelane_test_support::require::needs_root;
use corelane_test_support::{eventually, on_cpu, pin_current_thread};
use harness::{serial, Http};
use socket2::{Domain, Socket, Type};

/// Connections per burst, half from each CPU.
const BURST: usize = 8_000;
/// Consecutive bursts per worker count.
const BURSTS: usize = 10;
/// The bound: max/mean of the connections each worker received.
const MAX_OVER_MEAN: f64 = 1.05;

/// Opens `n` connections to `addr` from `source` as fast as it can.
fn open(addr: SocketAddr, source: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.bind(&source.into()).unwrap();
            s.connect(&addr.into()).unwrap();
            s.into()
        })
        .collect()
}

/// One burst from both CPUs at once; each burst from its own source
/// address, so the closed connections' TIME_WAIT never runs out of ports.
fn burst(addr: SocketAddr, round: usize) -> Vec<TcpStream> {
    let source: SocketAddr = format!("127.0.0.{}:0", 10 + round).parse().unwrap();
    let clients: Vec<_> = (0..2)
        .map(|cpu| {
            std::thread::spawn(move || {
                pin_current_thread(cpu);
                open(addr, source, BURST / 2)
            })
        })
        .collect();
    clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect()
}

/// Spins on `cpu` until `stop`: the machine is busy.
fn hog(cpu: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        pin_current_thread(cpu);
        let mut x = 0u64;
        while !stop.load(Ordering::Relaxed) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    })
}

/// Max over mean of each worker's share of `BURST` connections, per burst.
fn spreads(workers: usize) -> Vec<(Vec<u64>, f64)> {
    let s = Http::start(&[
        "--workers",
        &workers.to_string(),
        "--steering",
        "least-loaded",
        "--idle-timeout",
        "120s",
        // The bursts connect and send nothing: accepted at once, as a
        // server whose clients speak first sees them after their request.
        "--defer-accept",
        "0",
    ]);
    assert!(
        s.start_line.contains("steering=least-loaded"),
        "{}",
        s.start_line
    );
    let accepted = || s.metric_per_worker("corelane_connections_accepted_total", workers);
    let stop = Arc::new(AtomicBool::new(false));
    let busy = hog(1, Arc::clone(&stop));
    let mut out = Vec::new();
    for round in 0..BURSTS {
        let before = accepted();
        let conns = burst(s.addr, round);
        let mut after = before.clone();
        assert!(
            eventually(Duration::from_secs(20), || {
                after = accepted();
                after.iter().sum::<u64>() >= before.iter().sum::<u64>() + BURST as u64
            }),
            "the burst was not accepted: {before:?} -> {after:?}"
        );
        // The scrapes' own connections (one each) are counted too: a few
        // in 8,000.
        let got: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let mean = got.iter().sum::<u64>() as f64 / workers as f64;
        let max = *got.iter().max().unwrap() as f64;
        out.push((got, max / mean));
        drop(conns);
        // Start the next burst from empty workers, as the first one did.
        assert!(
            eventually(Duration::from_secs(20), || s
                .metric("corelane_connections_active")
                <= workers as u64 + 1),
            "connections did not close"
        );
    }
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
    out
}

#[test]
fn least_loaded_spreads_bursts_as_evenly_as_round_robin_on_a_busy_machine() {
    if !needs_root() {
        return;
    }
    let _g = serial();
    raise_nofile();
    for workers in [2, 4] {
        // One outlier burst was seen in CI (1.059 in the first burst of a
        // run whose other 19 were at most 1.006, on a machine also running
        // a CPU hog): a run over the bound is measured once more, and the
        // second run decides. A policy that really spreads unevenly (1.3
        // to 1.7 before issue 17) fails both.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let runs = on_cpu(0, move || spreads(workers));
            let worst = runs.iter().map(|r| r.1).fold(0.0, f64::max);
            for (got, ratio) in &runs {
                eprintln!("least-loaded, {workers} workers: {got:?} max/mean {ratio:.3}");
            }
            eprintln!(
                "least-loaded, {workers} workers: worst max/mean over {BURSTS} bursts {worst:.3}"
            );
            if worst <= MAX_OVER_MEAN {
                break;
            }
            assert!(
                attempt < 2,
                "{workers} workers: a burst spread {worst:.3} > {MAX_OVER_MEAN} in two runs: {runs:?}"
            );
            eprintln!("least-loaded, {workers} workers: over {MAX_OVER_MEAN}; measuring once more");
        }
    }
}
