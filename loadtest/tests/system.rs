//! System tests: the real `corelane-http` binary under the situations
//! production brings, driven by the load generator and plain sockets on
//! 127.0.0.1. Each one is bounded (well under a minute), asserts something
//! that can fail, and prints the figures it measured (`--nocapture`).
//!
//! Run: `cargo test -p corelane-loadtest --test system -- --nocapture`.
//! Tests that need root skip without it, and fail under `CI=true`.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corelane_loadtest::{run, Report, RunOptions, Target};
use harness::{eventually, needs_root, on_cpu, serial, Http};

/// A load run from a thread pinned to CPU 1 (the server's workers run on
/// both CPUs; the generator is the same for every run compared).
fn load(
    url: &str,
    connections: usize,
    duration: Duration,
    close: bool,
    rate: Option<f64>,
) -> Report {
    load_on(1, url, connections, duration, close, rate)
}

/// [`load`] from a thread pinned to `cpu`.
fn load_on(
    cpu: usize,
    url: &str,
    connections: usize,
    duration: Duration,
    close: bool,
    rate: Option<f64>,
) -> Report {
    let target = Target::parse(url).unwrap();
    let opts = RunOptions {
        threads: 1,
        connections,
        duration,
        pipeline: 1,
        close,
        timeout: Duration::from_secs(5),
        progress: false,
        rate,
    };
    on_cpu(cpu, move || run(&target, &opts).expect("load run"))
}

// ----- 9. least privilege -----------------------------------------------------

#[test]
fn least_privilege_user_nobody_keeps_ebpf_steering_in_force() {
    if !needs_root() {
        return;
    }
    let _g = serial();
    let s = Http::start(&[
        "--workers",
        "2",
        "--steering",
        "least-loaded",
        "--user",
        "nobody",
    ]);
    assert!(
        s.start_line.contains("steering=least-loaded"),
        "{}",
        s.log()
    );
    assert!(
        s.log().contains("dropped privileges user=nobody"),
        "{}",
        s.log()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65534"; 4]
    );
    let r = load(&s.url("/plaintext"), 32, Duration::from_secs(1), true, None);
    assert_eq!(r.errors.total(), 0, "{r:?}");
    // The program still steers, and workers still publish into its maps.
    let selected = s.metric("corelane_steering_selected_total");
    let accepted = s.metric("corelane_connections_accepted_total");
    eprintln!(
        "as nobody: {} connections, program placed {selected}, accepted {accepted}",
        r.connections_opened
    );
    assert!(
        selected >= r.connections_opened,
        "{selected} < {}",
        r.connections_opened
    );
}

#[test]
fn cap_bpf_alone_is_enough_for_ebpf_steering() {
    if !needs_root() {
        return;
    }
    let _g = serial();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--inh-caps=+bpf",
        "--ambient-caps=+bpf",
    ])
    .arg(harness::http_binary())
    .args([
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--steering",
        "least-loaded",
    ]);
    let s = Http::spawn(cmd);
    assert!(
        s.start_line.contains("steering=least-loaded"),
        "{}",
        s.log()
    );
    let r = load(
        &s.url("/plaintext"),
        16,
        Duration::from_millis(500),
        true,
        None,
    );
    assert_eq!(r.errors.total(), 0, "{r:?}");
}

// ----- 3. churn ---------------------------------------------------------------

#[test]
fn churn_for_30s_has_no_errors_and_leaks_no_descriptor() {
    let _g = serial();
    let s = Http::start(&["--workers", "2"]);
    std::thread::sleep(Duration::from_millis(200));
    let before = s.fds();
    let r = load(
        &s.url("/plaintext"),
        16,
        Duration::from_secs(30),
        true,
        None,
    );
    let settled = eventually(Duration::from_secs(5), || s.fds() == before);
    let after = s.fds();
    eprintln!(
        "churn: {} connections in 30 s ({:.0}/s), errors {:?}; server descriptors {before} before, {after} after",
        r.connections_opened,
        r.connections_opened as f64 / r.seconds,
        r.errors
    );
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert!(r.connections_opened > 30_000, "too little churn: {r:?}");
    assert!(settled, "descriptors {before} before, {after} after");
}

// ----- 6. shutdown under load -------------------------------------------------

#[test]
fn sigterm_under_load_finishes_whole_responses_and_exits_zero_in_time() {
    let _g = serial();
    let mut s = Http::start(&["--workers", "2", "--shutdown-timeout", "5s"]);
    let url = s.url("/plaintext");
    let gen = std::thread::spawn(move || load(&url, 64, Duration::from_secs(4), false, None));
    std::thread::sleep(Duration::from_millis(1500));
    s.signal(libc::SIGTERM);
    let (status, took) = s.wait(Duration::from_secs(8)).expect("exits after SIGTERM");
    let r = gen.join().unwrap();
    eprintln!(
        "shutdown under load: exit {status:?} {took:?} after SIGTERM; {} responses, errors {:?}",
        r.requests, r.errors
    );
    assert!(status.success(), "{status:?}\n{}", s.log());
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    // Every response that arrived was whole and a 200.
    assert_eq!((r.errors.parse, r.errors.status), (0, 0), "{r:?}");
    // A request can only be lost in the keep-alive race (written while the
    // server closed the idle connection), at most one per connection; the
    // generator counts those as read errors.
    assert!(r.errors.read <= 64, "{r:?}");
    assert!(r.requests > 10_000, "{r:?}");
    let log = s.log();
    assert!(
        log.contains("shutting down gracefully") && log.contains("corelane stopped"),
        "{log}"
    );
}

// ----- 2. slowloris -----------------------------------------------------------

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
    harness::raise_nofile();
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
    assert!(
        latest < Duration::from_millis(4500),
        "all near the 3 s timeout: {latest:?}"
    );
    assert!(
        // The attacker shares the machine's two CPUs with the server and
        // the client, so p99 under attack moves between runs (1.3–5.0 ms
        // against 1.2–1.4 ms quiet over 13 runs of this and the previous
        // build); a server that slowloris hurts makes clients wait for
        // the header timeout (seconds) or fails them.
        attacked.latency_us.p99 <= (3 * baseline).max(10_000),
        "p99 {} µs under attack vs {} µs quiet",
        attacked.latency_us.p99,
        baseline
    );
}

// ----- 5. stalled worker ------------------------------------------------------

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

#[test]
fn a_stalled_worker_is_avoided_by_least_loaded_but_not_by_the_kernel_hash() {
    if !needs_root() {
        return;
    }
    let _g = serial();
    let mut figures = Vec::new();
    for mode in ["least-loaded", "kernel"] {
        let s = Http::start(&["--workers", "2", "--test-routes", "--steering", mode]);
        assert!(
            s.start_line.contains(&format!("steering={mode}")),
            "{}",
            s.start_line
        );
        let url = s.url("/plaintext");
        // The worker to stall, and its CPU (workers are pinned 0, 1): the
        // generator runs there, so it never competes with the worker left
        // to serve (that CPU is idle while its worker sleeps in the stall).
        let mut conn = TcpStream::connect(s.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let cpu = stall(&mut conn, 0);
        // New connections: one per request, on a fixed schedule.
        let rate = Some(1000.0);
        // A calm baseline first: p99.9 is the third worst of 3,000, and a
        // machine-wide hiccup (seen in CI: 48 ms) makes the comparison
        // meaningless, so measure again, at most three times.
        let mut calm = load_on(cpu, &url, 32, Duration::from_secs(3), true, rate);
        for _ in 0..2 {
            if calm.latency_us.p999 < 10_000 {
                break;
            }
            eprintln!(
                "stalled worker, {mode}: calm p99.9 {} µs is not calm; measuring again",
                calm.latency_us.p999
            );
            calm = load_on(cpu, &url, 32, Duration::from_secs(3), true, rate);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let st = staller(conn, Arc::clone(&stop));
        std::thread::sleep(Duration::from_millis(200));
        let stalled = load_on(cpu, &url, 32, Duration::from_secs(3), true, rate);
        stop.store(true, Ordering::Relaxed);
        let stalls = st.join().unwrap();
        eprintln!(
            "stalled worker, {mode}: new-connection p99.9 {} µs calm, {} µs with a worker stalled ({stalls} stalls of 50 ms); errors {:?}",
            calm.latency_us.p999, stalled.latency_us.p999, stalled.errors
        );
        assert_eq!(stalled.errors.total(), 0, "{stalled:?}");
        figures.push((calm.latency_us.p999, stalled.latency_us.p999));
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

// ----- 7. descriptor exhaustion -----------------------------------------------

#[test]
fn at_the_descriptor_limit_it_does_not_spin_keeps_serving_and_recovers() {
    let _g = serial();
    harness::raise_nofile();
    // The server may hold 256 descriptors, hard limit included.
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--nofile=256:256")
        .arg(harness::http_binary())
        .args(["--addr", "127.0.0.1:0", "--workers", "1"]);
    let s = Http::spawn(cmd);
    // A client that was there first.
    let mut old = TcpStream::connect(s.addr).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = |c: &mut TcpStream| -> bool {
        c.write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
            .is_ok()
            && {
                let mut buf = [0u8; 512];
                matches!(c.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200"))
            }
    };
    assert!(ask(&mut old));
    // The flood: 600 connections, far past what the server can hold.
    let flood: Vec<TcpStream> = (0..600)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = s.cpu_seconds();
    std::thread::sleep(Duration::from_secs(2));
    let busy = s.cpu_seconds() - cpu0;
    let served_old = ask(&mut old);
    let log = s.log();
    eprintln!(
        "descriptor exhaustion: {} descriptors held, server CPU {:.0} ms over 2 s at the limit, old client served: {served_old}",
        s.fds(),
        busy * 1000.0
    );
    assert!(log.contains("accept failed; pausing accepts"), "{log}");
    assert!(busy < 0.2, "spinning at the limit: {busy} s CPU in 2 s");
    assert!(served_old, "the connection it had stopped being served");
    // Free descriptors: new connections are served again (the queued ones
    // first, then this one).
    drop(flood);
    let mut fresh = TcpStream::connect(s.addr).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(ask(&mut fresh), "a new connection after descriptors freed");
    assert!(s.log().contains("accepting again"), "{}", s.log());
}

// ----- 8. hostile bytes -------------------------------------------------------

/// xorshift64*, seeded: the mutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A request from the fuzz seed corpus, mutated: bytes flipped, inserted,
/// deleted, or pure random bytes.
fn hostile(seeds: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    if rng.below(8) == 0 {
        return (0..rng.below(600)).map(|_| rng.next() as u8).collect();
    }
    let mut m = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(m.len() + 1);
        match rng.below(3) {
            0 if at < m.len() => m[at] = rng.next() as u8,
            1 => m.insert(at, b"\r\n: \0%xG0123456789"[rng.below(17)]),
            _ if at < m.len() => {
                m.remove(at);
            }
            _ => {}
        }
    }
    m
}

#[test]
fn hostile_bytes_at_high_rate_crash_nothing_stick_nothing_and_others_are_served() {
    let _g = serial();
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/http/fuzz/corpus/request"
    );
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .expect("the fuzz seed corpus")
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(seeds.len() >= 10);
    let s = Http::start(&[
        "--workers",
        "2",
        "--header-timeout",
        "2s",
        "--idle-timeout",
        "2s",
    ]);
    let url = s.url("/plaintext");
    let normal =
        std::thread::spawn(move || load(&url, 16, Duration::from_secs(6), false, Some(2000.0)));
    let addr = s.addr;
    let sent = on_cpu(0, move || {
        let mut rng = Rng(0x5eed_cafe_f00d_0001);
        let start = Instant::now();
        let mut n = 0u64;
        let mut held = Vec::new();
        while start.elapsed() < Duration::from_secs(5) {
            let Ok(mut c) = TcpStream::connect(addr) else {
                continue;
            };
            let _ = c.write_all(&hostile(&seeds, &mut rng));
            n += 1;
            // Keep every 50th open without reading: the server must still
            // time it out.
            if n.is_multiple_of(50) {
                held.push(c);
            }
        }
        (n, held)
    });
    let (n, held) = sent;
    let r = normal.join().unwrap();
    // Nothing stuck: every hostile connection is answered and closed (400,
    // then a lingering close of at most 5 s while the peer keeps it open),
    // cut at the 2 s header timeout, or, when the mutation left a valid
    // request, answered and closed at the 2 s idle timeout; after that only
    // our own scrape is open.
    let settled = eventually(Duration::from_secs(8), || {
        s.metric("corelane_connections_active") <= 1
    });
    let active = s.metric("corelane_connections_active");
    eprintln!(
        "hostile bytes: {n} mutated requests in 5 s ({} held open unread); normal client {} requests, p99 {} µs, errors {:?}; connections open after: {active}",
        held.len(),
        r.requests,
        r.latency_us.p99,
        r.errors
    );
    assert!(n > 5_000, "too few hostile requests: {n}");
    assert_eq!(r.errors.total(), 0, "{r:?}");
    assert!(settled, "{active} connections stuck open");
    // Still alive and well.
    assert!(s.get("/plaintext").starts_with("HTTP/1.1 200 OK"));
    drop(held);
}

// ----- 4. slow readers --------------------------------------------------------

#[test]
fn slow_readers_are_held_to_the_output_bound_and_others_are_served() {
    let _g = serial();
    harness::raise_nofile();
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

// ----- 1. scale ---------------------------------------------------------------

/// The server's hard descriptor limit, from `/proc/PID/limits`.
fn nofile_hard_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

#[test]
fn scale_holds_keep_alive_connections_up_to_the_descriptor_limit() {
    let _g = serial();
    let s = Http::start(&["--workers", "2", "--idle-timeout", "120s"]);
    // Leave the server 1,000 descriptors of slack; spread the clients over
    // processes of 9,500 connections, each from its own 127.0.0.x.
    let limit = nofile_hard_limit(s.pid());
    let target = limit.saturating_sub(1000).max(1000) as usize;
    let per = 9_500;
    let procs = target.div_ceil(per);
    std::thread::sleep(Duration::from_millis(200));
    let base = s.rss();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scale_client.py");
    let started = Instant::now();
    let mut clients: Vec<_> = (0..procs)
        .map(|i| {
            let n = per.min(target - i * per);
            let child = std::process::Command::new("python3")
                .args([
                    script,
                    "127.0.0.1",
                    &s.addr.port().to_string(),
                    &n.to_string(),
                    &format!("127.0.0.{}", 2 + i),
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python3");
            (child, n)
        })
        .collect();
    let read_word = |c: &mut std::process::Child, word: &str| -> usize {
        let mut line = String::new();
        let out = c.stdout.as_mut().unwrap();
        // One short line per round: byte by byte, no buffering to keep.
        let mut b = [0u8; 1];
        while !line.ends_with('\n') {
            assert_eq!(out.read(&mut b).unwrap(), 1, "client exited: {line}");
            line.push(b[0] as char);
        }
        let mut it = line.split_whitespace();
        assert_eq!(it.next(), Some(word), "{line}");
        it.next().unwrap().parse().unwrap()
    };
    let mut answered = 0;
    for (c, _) in &mut clients {
        answered += read_word(c, "READY");
    }
    let connect_time = started.elapsed();
    let active = s.metric("corelane_connections_active") as usize;
    let rss = s.rss();
    // Every connection asks again.
    for (c, _) in &mut clients {
        writeln!(c.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut again = 0;
    for (c, _) in &mut clients {
        again += read_word(c, "DONE");
    }
    let per_conn = rss.saturating_sub(base) as f64 / target as f64;
    eprintln!(
        "scale: descriptor limit {limit}; {target} keep-alive connections from {procs} processes in {connect_time:?}; {answered} + {again} requests answered; {active} active; RSS {} MiB (+{per_conn:.0} B per connection)",
        rss >> 20
    );
    for (mut c, _) in clients {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    assert_eq!(answered, target, "first round");
    assert_eq!(again, target, "second round");
    assert!(active > target, "{active} active");
    assert!(per_conn < 2048.0, "{per_conn} B per connection");
}

// ----- 10. zero-downtime restarts ---------------------------------------------

/// How the server is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// `--takeover`: the new process starts, then the old one drains.
    Takeover,
    /// What a plain `systemctl restart` does: SIGTERM, wait, start.
    StopStart,
}

/// What [`restart_under_load`] measured.
struct Restarts {
    keep_alive: Report,
    per_request: Report,
    /// From starting the new process (or signalling the old one) to the old
    /// one's exit, per restart.
    handovers: Vec<Duration>,
    /// The log of every process, oldest first.
    logs: Vec<String>,
    /// `corelane_steering_generation` of the last process (0 without eBPF).
    generation: u64,
}

impl Restarts {
    fn print(&self, what: &str) {
        let h: Vec<u128> = self.handovers.iter().map(Duration::as_millis).collect();
        eprintln!(
            "{what}: {} restarts; keep-alive {} requests, errors {:?}; connection-per-request {} requests, errors {:?}; ms per handover {h:?}",
            self.handovers.len(),
            self.keep_alive.requests,
            self.keep_alive.errors,
            self.per_request.requests,
            self.per_request.errors,
        );
    }
}

/// Restarts the server `RESTARTS` times in a row while keep-alive and
/// connection-per-request load runs for the whole time.
fn restart_under_load(args: &[&str], how: Restart) -> Restarts {
    const RESTARTS: usize = 10;
    const LOAD: Duration = Duration::from_secs(14);
    let mut s = Http::start(args);
    let addr = s.addr;
    let started = Instant::now();
    let url = s.url("/plaintext");
    let u = url.clone();
    let keep_alive = std::thread::spawn(move || load(&u, 32, LOAD, false, None));
    // New connections at a fixed 2,000/s: every restart meets hundreds of
    // them, without leaving the machine a quarter million TIME_WAIT
    // sockets for the tests that follow.
    let per_request = std::thread::spawn(move || load(&url, 8, LOAD, true, Some(2000.0)));
    std::thread::sleep(Duration::from_secs(1));
    let mut handovers = Vec::new();
    let mut logs = Vec::new();
    for i in 0..RESTARTS {
        let t0 = Instant::now();
        let next = match how {
            Restart::Takeover => {
                let mut a = args.to_vec();
                a.push("--takeover");
                let next = Http::start_at(addr, &a);
                let (status, _) = s.wait(Duration::from_secs(10)).unwrap_or_else(|| {
                    panic!("restart {i}: the old process did not exit\n{}", s.log())
                });
                assert!(status.success(), "restart {i}: {status:?}\n{}", s.log());
                next
            }
            Restart::StopStart => {
                s.signal(libc::SIGTERM);
                let (status, _) = s.wait(Duration::from_secs(10)).expect("exits on SIGTERM");
                assert!(status.success(), "restart {i}: {status:?}\n{}", s.log());
                Http::start_at(addr, args)
            }
        };
        handovers.push(t0.elapsed());
        logs.push(s.log());
        s = next;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        started.elapsed() + Duration::from_millis(500) < LOAD,
        "the restarts outlasted the load ({:?})",
        started.elapsed()
    );
    let keep_alive = keep_alive.join().unwrap();
    let per_request = per_request.join().unwrap();
    logs.push(s.log());
    let generation = s.metric("corelane_steering_generation");
    Restarts {
        keep_alive,
        per_request,
        handovers,
        logs,
        generation,
    }
}

#[test]
fn ten_takeovers_under_load_fail_not_one_request() {
    let _g = serial();
    if !needs_root() {
        return;
    }
    let args = ["--workers", "2", "--shutdown-timeout", "5s"];
    let r = restart_under_load(&args, Restart::Takeover);
    r.print("takeover, eBPF steering");
    // Every process after the first joined the pinned program: one map
    // update switched steering, nothing was loaded.
    for (i, log) in r.logs.iter().enumerate().skip(1) {
        assert!(
            log.contains("took over the pinned steering program")
                && log.contains(&format!("generation={}", i + 1)),
            "process {i}:\n{log}"
        );
    }
    assert_eq!(r.generation, 11, "ten takeovers after the first start");
    for (i, log) in r.logs.iter().enumerate().take(r.handovers.len()) {
        assert!(log.contains("handing over"), "process {i}:\n{log}");
    }
    assert_eq!(r.keep_alive.errors.total(), 0, "{:?}", r.keep_alive);
    assert_eq!(r.per_request.errors.total(), 0, "{:?}", r.per_request);
    assert!(r.keep_alive.requests > 10_000 && r.per_request.requests > 1_000);
    // Within the old process's shutdown deadline, every time.
    assert!(
        r.handovers.iter().all(|h| *h < Duration::from_secs(5)),
        "{:?}",
        r.handovers
    );
}

/// The same restarts without eBPF (`--steering kernel`, what an unprivileged
/// server gets), and as a plain stop-and-start: printed for comparison, and
/// checked only for what must hold whatever the kernel does.
#[test]
fn restarts_without_ebpf_and_by_stop_and_start_for_comparison() {
    let _g = serial();
    let args = [
        "--workers",
        "2",
        "--shutdown-timeout",
        "5s",
        "--steering",
        "kernel",
    ];
    let r = restart_under_load(&args, Restart::Takeover);
    r.print("takeover, kernel hash");
    assert!(
        r.logs[1].contains("net.ipv4.tcp_migrate_req"),
        "{}",
        r.logs[1]
    );
    // Whatever is lost, nothing is garbled.
    assert_eq!(r.keep_alive.errors.parse + r.keep_alive.errors.status, 0);
    let r = restart_under_load(&args, Restart::StopStart);
    r.print("stop and start, kernel hash");
    assert_eq!(r.keep_alive.errors.parse + r.keep_alive.errors.status, 0);
    // Between the old process closing its listeners and the new one
    // binding, nothing listens: connections are refused.
    assert!(r.per_request.errors.connect > 0, "{:?}", r.per_request);
}

/// TCP sockets listening on `port` (IPv4), from `/proc/net/tcp`.
fn listening_on(port: u16) -> usize {
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

#[test]
fn a_request_in_flight_at_the_takeover_is_answered_by_the_old_process_with_connection_close() {
    let _g = serial();
    let mut s = Http::start(&["--workers", "2", "--shutdown-timeout", "5s"]);
    // Half a request head on a keep-alive connection to the old process.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let new = Http::start_at(s.addr, &["--workers", "2", "--takeover"]);
    assert!(
        eventually(Duration::from_secs(5), || s.log().contains("handing over")),
        "{}",
        s.log()
    );
    // The control thread logs before the workers act: wait until both old
    // workers have closed their listeners (only the new process's two
    // listen), so the request completes while the old process drains.
    assert!(
        eventually(Duration::from_secs(5), || listening_on(s.addr.port()) == 2),
        "{} listeners",
        listening_on(s.addr.port())
    );
    // The rest of the head: the old process answers, says it closes, and
    // does.
    c.write_all(b"\r\n").unwrap();
    let mut response = String::new();
    c.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("Connection: close\r\n"), "{response}");
    assert!(response.ends_with("Hello, World!"), "{response}");
    // Closing our end ends the server's lingering close at once.
    drop(c);
    let (status, took) = s
        .wait(Duration::from_secs(5))
        .expect("the old process exits");
    assert!(status.success(), "{status:?}");
    eprintln!("in-flight request answered by the old process; it exited {took:?} later");
    // And the new one serves.
    assert!(new.get("/plaintext").ends_with("Hello, World!"));
}

#[test]
fn an_unprivileged_takeover_works_with_the_kernel_hash_and_says_what_it_cannot_guarantee() {
    if !needs_root() {
        return;
    }
    let _g = serial();
    // Both as nobody with no capability: the first runs classic-cpu.
    let as_nobody = |addr: &str, extra: &[&str]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(harness::http_binary())
            .args(["--addr", addr, "--workers", "2", "--shutdown-timeout", "5s"])
            .args(extra);
        Http::spawn(cmd)
    };
    let mut old = as_nobody("127.0.0.1:0", &[]);
    assert!(
        old.start_line.contains("steering=classic-cpu"),
        "{}",
        old.log()
    );
    let url = old.url("/plaintext");
    let u = url.clone();
    let keep_alive = std::thread::spawn(move || load(&u, 16, Duration::from_secs(3), false, None));
    let per_request = std::thread::spawn(move || load(&url, 4, Duration::from_secs(3), true, None));
    std::thread::sleep(Duration::from_millis(800));
    let t0 = Instant::now();
    let new = as_nobody(&old.addr.to_string(), &["--takeover"]);
    let (status, _) = old
        .wait(Duration::from_secs(10))
        .expect("the old process exits");
    let took = t0.elapsed();
    let (keep_alive, per_request) = (keep_alive.join().unwrap(), per_request.join().unwrap());
    eprintln!(
        "unprivileged takeover in {took:?}: keep-alive {} requests, errors {:?}; per request {} requests, errors {:?}",
        keep_alive.requests, keep_alive.errors, per_request.requests, per_request.errors
    );
    assert!(status.success(), "{status:?}\n{}", old.log());
    let log = new.log();
    assert!(new.start_line.contains("steering=kernel"), "{log}");
    assert!(
        log.contains("detached the previous process's steering program"),
        "{log}"
    );
    assert!(log.contains("net.ipv4.tcp_migrate_req"), "{log}");
    assert!(old.log().contains("handing over"), "{}", old.log());
    // Whatever the kernel resets, nothing is garbled, and both served.
    for r in [&keep_alive, &per_request] {
        assert_eq!(r.errors.parse + r.errors.status, 0, "{r:?}");
    }
    assert!(new.get("/plaintext").ends_with("Hello, World!"));
}

/// Clients that connect, wait `pause`, then send one request with
/// `Connection: close`, in a loop until `stop`; returns (answered, failed).
/// With `--defer-accept` the server keeps each of them mid-handshake (a
/// request socket on a listener) during the pause, as a network's round
/// trips do at any moment on a real server.
fn late_senders(
    addr: std::net::SocketAddr,
    threads: usize,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u64, u64)>> {
    (0..threads)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let answered = TcpStream::connect(addr).is_ok_and(|mut c| {
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        std::thread::sleep(pause);
                        let mut response = String::new();
                        c.write_all(
                            b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        )
                        .is_ok()
                            && c.read_to_string(&mut response).is_ok()
                            && response.starts_with("HTTP/1.1 200")
                            && response.ends_with("Hello, World!")
                    });
                    if answered {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

/// Five takeovers while 16 clients are always mid-handshake; returns
/// (answered, failed).
fn takeovers_mid_handshake(steering: &str) -> (u64, u64) {
    let args = [
        "--workers",
        "2",
        "--defer-accept",
        "5s",
        "--shutdown-timeout",
        "5s",
        "--steering",
        steering,
    ];
    let mut s = Http::start(&args);
    let addr = s.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = late_senders(addr, 16, Duration::from_millis(50), Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..5 {
        let mut a = args.to_vec();
        a.push("--takeover");
        let next = Http::start_at(addr, &a);
        let (status, _) = s
            .wait(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("takeover {i}: the old process did not exit"));
        assert!(status.success(), "{status:?}\n{}", s.log());
        s = next;
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    clients
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(a, f), (ok, failed)| (a + ok, f + failed))
}

#[test]
fn connections_mid_handshake_survive_a_takeover_with_ebpf_and_are_reset_without() {
    let _g = serial();
    if !needs_root() {
        return;
    }
    let (ok, failed) = takeovers_mid_handshake("least-loaded");
    eprintln!("mid-handshake, eBPF: 5 takeovers, {ok} answered, {failed} failed");
    let (k_ok, k_failed) = takeovers_mid_handshake("kernel");
    eprintln!("mid-handshake, kernel hash: 5 takeovers, {k_ok} answered, {k_failed} failed");
    // Both kept serving (about 500–600 each here).
    assert!(ok > 100 && k_ok > 100, "{ok} {k_ok}");
    // The program migrates the request sockets of the closing listeners.
    assert_eq!(failed, 0);
    // Without it they are dropped with their listener, and the client's
    // next segment is answered with a reset, unless the kernel is told to
    // migrate by hash.
    let migrate_req = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|v| v.trim() == "1");
    if !migrate_req {
        assert!(k_failed > 0, "no connection was mid-handshake at a close");
    }
}
