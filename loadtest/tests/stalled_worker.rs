//! System test: A stalled worker: least-loaded steering avoids it, the kernel hash does not.
//!
//! The real `corelane-http` binary on 127.0.0.1, driven by the load
//! generator and plain sockets; bounded, and printing what it measured:
//! `cargo test --release -p corelane-loadtest --test stalled_worker -- --nocapture`.
//! Tests that need root skip without it, and fail under `CI=true`.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corelane_test_support::require::needs_root;
use harness::{load_on, serial, Http};

/// Keeps one worker's loop stalled 50 ms at a time (a keep-alive connection
/// asking for `/_test/stall/50` back to back) until `stop`.
fn staller(mut c: TcpStream, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            stall(&mut c, 50);
            n += 1;
        }
        n
    })
}

/// `GET /_test/stall/<ms>` on `c`; returns the worker that answered.
fn stall(c: &mut TcpStream, ms: u64) -> usize {
    write!(c, "GET /_test/stall/{ms} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let mut got = 0;
    loop {
        let text = std::str::from_utf8(&buf[..got]).unwrap();
        if let Some(at) = text.find("worker ") {
            if text.ends_with('\n') {
                return text[at + 7..].trim().parse().unwrap();
            }
        }
        let k = c.read(&mut buf[got..]).unwrap();
        assert!(k > 0, "staller closed");
        got += k;
    }
}

/// Calm p99.9 above this is the machine's noise, not the server's.
const NOISY_US: u64 = 10_000;

/// One server in `mode`: new-connection p99.9 calm, with a worker stalled,
/// and calm again right after (µs).
fn measure(mode: &str) -> (u64, u64, u64) {
    let s = Http::start(&["--workers", "2", "--test-routes", "--steering", mode]);
    assert!(
        s.start_line.contains(&format!("steering={mode}")),
        "{}",
        s.start_line
    );
    let url = s.url("/plaintext");
    // The worker to stall, and its CPU (workers are pinned 0, 1): the
    // generator runs there, so it never competes with the worker left to
    // serve (that CPU is idle while its worker sleeps in the stall).
    let mut conn = TcpStream::connect(s.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let cpu = stall(&mut conn, 0);
    // New connections: one per request, on a fixed schedule.
    let rate = Some(1000.0);
    let run = || load_on(cpu, &url, 32, Duration::from_secs(3), true, rate);
    // A calm baseline first: p99.9 is the third worst of 3,000; a hiccup
    // makes it meaningless, so measure again, at most three times.
    let mut calm = run();
    for _ in 0..2 {
        if calm.latency_us.p999 < NOISY_US {
            break;
        }
        eprintln!(
            "stalled worker, {mode}: calm p99.9 {} µs is not calm; measuring again",
            calm.latency_us.p999
        );
        calm = run();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let st = staller(conn, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(200));
    let stalled = run();
    stop.store(true, Ordering::Relaxed);
    let stalls = st.join().unwrap();
    let after = run();
    eprintln!(
        "stalled worker, {mode}: new-connection p99.9 {} µs calm, {} µs with a worker stalled ({stalls} stalls of 50 ms), {} µs after; errors {:?}",
        calm.latency_us.p999, stalled.latency_us.p999, after.latency_us.p999, stalled.errors
    );
    assert_eq!(stalled.errors.total(), 0, "{stalled:?}");
    (
        calm.latency_us.p999,
        stalled.latency_us.p999,
        after.latency_us.p999,
    )
}

#[test]
fn a_stalled_worker_is_avoided_by_least_loaded_but_not_by_the_kernel_hash() {
    if !needs_root() {
        return;
    }
    let _g = serial();
    let mut figures = Vec::new();
    for mode in ["least-loaded", "kernel"] {
        // A machine-wide hiccup (this VM has shown calm p99.9 of 43 to 600
        // ms for seconds at a time) makes the figures meaningless: when
        // the machine is not calm again right after the stalled run, the
        // whole measurement is repeated, at most three times.
        let mut attempt = 0;
        let (calm, stalled) = loop {
            attempt += 1;
            let (calm, stalled, after) = measure(mode);
            if after < NOISY_US || attempt == 3 {
                break (calm, stalled);
            }
            eprintln!(
                "stalled worker, {mode}: p99.9 {after} µs without a stall right after: the machine was not calm; measuring again"
            );
        };
        figures.push((calm, stalled));
    }
    let (ll, kernel) = (figures[0], figures[1]);
    // p99.9 of 3,000 connections is the third worst: below 2 ms it is the
    // scheduler's noise on a 2-core machine, so 2 ms is the floor of "calm".
    const FLOOR_US: u64 = 2_000;
    // Least-loaded keeps new connections off the stalled worker: nobody
    // waits anything like a stall (50 ms). Within 3x calm, between 10 ms
    // and 25 ms (2x failed on noise in CI: 4.96 ms stalled vs 2.32 ms
    // calm, while the kernel's hash showed 257 ms).
    assert!(
        ll.1 <= (3 * ll.0.max(FLOOR_US)).clamp(10_000, 25_000),
        "least-loaded: p99.9 {} µs stalled vs {} µs calm",
        ll.1,
        ll.0
    );
    assert!(
        kernel.1 > 2 * kernel.0.max(FLOOR_US) && kernel.1 > 20_000,
        "the kernel's hash should show the stall: p99.9 {} µs stalled vs {} µs calm",
        kernel.1,
        kernel.0
    );
}
