//! System test: Slow readers: held to the output bound while others are served.
//!
//! The real `corelane-http` binary on 127.0.0.1, driven by the load
//! generator and plain sockets; bounded, and printing what it measured:
//! `cargo test --release -p corelane-loadtest --test slow_readers -- --nocapture`.
//! Tests that need root skip without it, and fail under `CI=true`.

mod harness;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use corelane_test_support::on_cpu;
use harness::{load, serial, Http};

#[test]
fn slow_readers_are_held_to_the_output_bound_and_others_are_served() {
    let _g = serial();
    corelane_test_support::proc::raise_nofile();
    let s = Http::start(&["--workers", "2"]);
    std::thread::sleep(Duration::from_millis(200));
    let base = s.rss();
    const N: usize = 1000;
    const HIGH_WATER: u64 = 256 * 1024;
    const BUFFER: u64 = 16 * 1024;
    // Each pipelines requests and never reads: writes until the socket
    // pushes back (the server stopped reading it: backpressure).
    let addr = s.addr;
    let readers = on_cpu(0, move || {
        let req = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n".repeat(256);
        let mut conns = Vec::with_capacity(N);
        for _ in 0..N {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_nonblocking(true).unwrap();
            let mut sent = 0usize;
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(200) {
                match c.write(&req) {
                    Ok(k) => sent += k,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if sent > 2 << 20 {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("slow reader write: {e}"),
                }
            }
            conns.push(c);
        }
        conns
    });
    std::thread::sleep(Duration::from_millis(500));
    let url = s.url("/plaintext");
    let r = load(&url, 16, Duration::from_secs(3), false, Some(2000.0));
    let rss = s.rss();
    let bound = base + N as u64 * (HIGH_WATER + 2 * BUFFER);
    eprintln!(
        "slow readers: {N} connections pipelining without reading; server RSS {} MiB (base {} MiB, bound {} MiB); other client p99 {} µs, errors {:?}",
        rss >> 20,
        base >> 20,
        bound >> 20,
        r.latency_us.p99,
        r.errors
    );
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert!(rss <= bound, "RSS {rss} above the bound {bound}");
    drop(readers);
}
