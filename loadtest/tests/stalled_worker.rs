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

/// What one server in one mode showed.
struct Figures {
    /// New-connection p99.9 (µs) calm, with a worker stalled, and calm
    /// again right after: whether the machine was calm.
    calm: u64,
    after: u64,
    /// New-connection p99 (µs) calm and with a worker stalled: what the
    /// policy is judged on.
    calm_p99: u64,
    stalled_p99: u64,
    /// Of the connections opened while a worker was stalled, the share
    /// that the stalled worker accepted.
    share: f64,
}

impl Figures {
    /// The latency figures mean something only when the machine was calm
    /// before and right after the stalled run.
    fn calm_machine(&self) -> bool {
        self.calm < NOISY_US && self.after < NOISY_US
    }
}

/// One server in `mode`, measured calm, with a worker stalled, and after.
fn measure(mode: &str) -> Figures {
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
    let accepted = || s.metric_per_worker("corelane_connections_accepted_total", 2);
    let stop = Arc::new(AtomicBool::new(false));
    let st = staller(conn, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(200));
    let before = accepted();
    let stalled = run();
    let during: Vec<u64> = accepted().iter().zip(&before).map(|(a, b)| a - b).collect();
    stop.store(true, Ordering::Relaxed);
    let stalls = st.join().unwrap();
    let after = run();
    let share = during[cpu] as f64 / during.iter().sum::<u64>().max(1) as f64;
    eprintln!(
        "stalled worker, {mode}: new-connection p99 / p99.9 {} / {} µs calm, {} / {} µs with worker {cpu} stalled ({stalls} stalls of 50 ms), {} / {} µs after; accepted while stalled {during:?} (stalled worker's share {share:.3}); errors {:?}",
        calm.latency_us.p99,
        calm.latency_us.p999,
        stalled.latency_us.p99,
        stalled.latency_us.p999,
        after.latency_us.p99,
        after.latency_us.p999,
        stalled.errors
    );
    assert_eq!(stalled.errors.total(), 0, "{stalled:?}");
    Figures {
        calm: calm.latency_us.p999,
        after: after.latency_us.p999,
        calm_p99: calm.latency_us.p99,
        stalled_p99: stalled.latency_us.p99,
        share,
    }
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
        // ms for seconds at a time) makes the latency figures meaningless:
        // when the machine is not calm again right after the stalled run,
        // the whole measurement is repeated, at most three times.
        let mut attempt = 0;
        let f = loop {
            attempt += 1;
            let f = measure(mode);
            if f.calm_machine() || attempt == 3 {
                break f;
            }
            eprintln!(
                "stalled worker, {mode}: p99.9 {} µs calm, {} µs right after: the machine was not calm; measuring again",
                f.calm, f.after
            );
        };
        figures.push(f);
    }
    let (ll, kernel) = (&figures[0], &figures[1]);
    // Where the connections went is the policy itself, and the machine's
    // noise hardly moves it: the kernel's hash gives the stalled worker
    // its half, least-loaded only what arrives before a stall is seen
    // (a few milliseconds of each 50 ms stall).
    assert!(
        ll.share <= 0.2,
        "least-loaded gave the stalled worker {:.3} of the new connections",
        ll.share
    );
    assert!(
        kernel.share >= 0.35,
        "the kernel's hash gave the stalled worker only {:.3} of the new connections",
        kernel.share
    );
    // What a client sees: checked when the machine was calm around the
    // measurement (on a noisy machine the tail is the noise, as CI has
    // shown with calm p99.9 of 50 to 185 ms).
    //
    // Judged on p99, the 30th worst of 3,000 new connections, not p99.9
    // (the third worst): a few hiccups of the machine move p99.9 by tens of
    // milliseconds with not one connection on the stalled worker (CI: 35.8
    // ms least-loaded, calm 3.6 ms, share 0.000), and earlier bounds on it
    // (2x calm, 3x calm, a fixed 35 ms) each failed on noise alone. The
    // policy shows in p99 by a wide margin: under the kernel's hash half of
    // the new connections land behind a 50 ms stall and wait ~25 ms on
    // average, so p99 is ~50 ms or more; under least-loaded none do.
    const BOUND_US: u64 = 20_000;
    if ll.calm_machine() {
        assert!(
            ll.stalled_p99 <= BOUND_US,
            "least-loaded: p99 {} µs stalled vs {} µs calm",
            ll.stalled_p99,
            ll.calm_p99
        );
    } else {
        eprintln!("stalled worker, least-loaded: the machine was never calm; latency not judged");
    }
    if kernel.calm_machine() {
        assert!(
            kernel.stalled_p99 > BOUND_US && kernel.stalled_p99 > 2 * kernel.calm_p99,
            "the kernel's hash should show the stall: p99 {} µs stalled vs {} µs calm",
            kernel.stalled_p99,
            kernel.calm_p99
        );
    } else {
        eprintln!("stalled worker, kernel: the machine was never calm; latency not judged");
    }
}
