//! System test: Slowloris: slow senders are cut at the header timeout while normal clients keep their latency.
//!
//! The real `corelane-http` binary on 127.0.0.1, driven by the load
//! generator and plain sockets; bounded, and printing what it measured:
//! `cargo test --release -p corelane-loadtest --test slowloris -- --nocapture`.
//! Tests that need root skip without it, and fail under `CI=true`.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corelane_test_support::{eventually, on_cpu};
use harness::{load, serial, Http};

/// Opens `n` connections and sends a request head one byte per `every`,
/// round the connections, until `stop`; returns for each connection how long
/// after it opened the server closed it (`None`: still open at the end).
fn slowloris(
    addr: std::net::SocketAddr,
    n: usize,
    every: Duration,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
) -> Vec<Option<Duration>> {
    const HEAD: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut conns: Vec<(TcpStream, Instant, usize, Option<Duration>)> = (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("slowloris connect");
            s.set_nonblocking(true).unwrap();
            (s, Instant::now(), 0, None)
        })
        .collect();
    connected.store(true, Ordering::Relaxed);
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        // A steady trickle, as a real attacker sends: each connection gets
        // its byte once per `every`, the connections spread evenly over it
        // in slices of 50 (not one burst of 5,000 a second).
        let round = Instant::now();
        let slices = conns.len().div_ceil(50).max(1);
        for (k, slice) in conns.chunks_mut(50).enumerate() {
            for (s, opened, sent, closed) in slice {
                if closed.is_some() {
                    continue;
                }
                let gone = match s.read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                let gone = gone || (*sent < HEAD.len() && s.write(&HEAD[*sent..=*sent]).is_err());
                if gone {
                    *closed = Some(opened.elapsed());
                } else if *sent < HEAD.len() {
                    *sent += 1;
                }
            }
            let due = every.mul_f64((k + 1) as f64 / slices as f64);
            std::thread::sleep(due.saturating_sub(round.elapsed()));
        }
    }
    conns.into_iter().map(|c| c.3).collect()
}

#[test]
fn slowloris_is_cut_at_the_header_timeout_and_normal_clients_keep_their_latency() {
    let _g = serial();
    corelane_test_support::proc::raise_nofile();
    let s = Http::start(&["--workers", "2", "--header-timeout", "3s"]);
    let url = s.url("/plaintext");
    let rate = Some(2000.0);
    let quiet = load(&url, 16, Duration::from_secs(3), false, rate);
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicBool::new(false));
    let attack = {
        let (addr, stop, up) = (s.addr, Arc::clone(&stop), Arc::clone(&connected));
        std::thread::spawn(move || {
            on_cpu(0, move || {
                slowloris(addr, 5000, Duration::from_millis(1000), stop, up)
            })
        })
    };
    // Measure the attack, not its ramp: opening 5,000 connections takes a
    // while when earlier tests left thousands of ports in TIME_WAIT.
    assert!(
        eventually(Duration::from_secs(20), || connected
            .load(Ordering::Relaxed)),
        "slowloris connections not established"
    );
    std::thread::sleep(Duration::from_millis(200));
    let attacked = load(&url, 16, Duration::from_secs(3), false, rate);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let closed = attack.join().unwrap();
    // The machine's own noise moves p99 between runs: the baseline is the
    // worse of a quiet run before the attack and one after it.
    let after = load(&url, 16, Duration::from_secs(3), false, rate);
    let baseline = quiet.latency_us.p99.max(after.latency_us.p99);
    let cut: Vec<Duration> = closed.iter().flatten().copied().collect();
    let latest = cut.iter().max().copied().unwrap_or_default();
    eprintln!(
        "slowloris: normal client p99 {} µs quiet before, {} µs after, {} µs under 5000 slow connections; {} of {} cut, the last after {latest:?}",
        quiet.latency_us.p99,
        after.latency_us.p99,
        attacked.latency_us.p99,
        cut.len(),
        closed.len()
    );
    assert_eq!(attacked.errors.total(), 0, "{attacked:?}");
    assert_eq!(cut.len(), closed.len(), "every slow connection is closed");
    assert!(
        cut.iter().all(|d| *d >= Duration::from_millis(2900)),
        "none before the header timeout"
    );
    // The header timeout runs from the accept, which corelane-http defers
    // until a connection's first byte: up to `every` (1 s) after connecting.
    assert!(
        latest < Duration::from_millis(4500 + 1000),
        "all near the 3 s timeout after the first byte: {latest:?}"
    );
    assert!(
        // The attacker shares the machine's two CPUs with the server and
        // the client, so p99 under attack moves between runs (1.3–5.0 ms
        // against 1.2–1.4 ms quiet over 13 runs here; on a noisy CI runner
        // 23.7 ms against 6.9 ms quiet, and once 52.4 ms against 9.5 ms,
        // a debug build right after the fleet tests); a server that
        // slowloris hurts makes clients wait for the header timeout
        // (seconds) or fails them, far above the 150 ms floor.
        attacked.latency_us.p99 <= (3 * baseline).max(150_000),
        "p99 {} µs under attack vs {} µs quiet",
        attacked.latency_us.p99,
        baseline
    );
}
