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
    on_cpu(1, move || run(&target, &opts).expect("load run"))
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
) -> Vec<Option<Duration>> {
    const HEAD: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut conns: Vec<(TcpStream, Instant, usize, Option<Duration>)> = (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("slowloris connect");
            s.set_nonblocking(true).unwrap();
            (s, Instant::now(), 0, None)
        })
        .collect();
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        for (s, opened, sent, closed) in &mut conns {
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
        std::thread::sleep(every.saturating_sub(round.elapsed()));
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
    let attack = {
        let (addr, stop) = (s.addr, Arc::clone(&stop));
        std::thread::spawn(move || {
            on_cpu(0, move || {
                slowloris(addr, 5000, Duration::from_millis(1000), stop)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let attacked = load(&url, 16, Duration::from_secs(3), false, rate);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let closed = attack.join().unwrap();
    let cut: Vec<Duration> = closed.iter().flatten().copied().collect();
    let latest = cut.iter().max().copied().unwrap_or_default();
    eprintln!(
        "slowloris: normal client p99 {} µs quiet, {} µs under 5000 slow connections; {} of {} cut, the last after {latest:?}",
        quiet.latency_us.p99,
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
        attacked.latency_us.p99 <= 2 * quiet.latency_us.p99.max(100),
        "p99 {} µs under attack vs {} µs quiet",
        attacked.latency_us.p99,
        quiet.latency_us.p99
    );
}

// ----- 5. stalled worker ------------------------------------------------------

/// Keeps one worker's loop stalled 50 ms at a time (a keep-alive connection
/// asking for `/_test/stall/50` back to back) until `stop`.
fn staller(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut n = 0;
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            c.write_all(b"GET /_test/stall/50 HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut got = 0;
            while !buf[..got].ends_with(b"\n")
                || !std::str::from_utf8(&buf[..got]).unwrap().contains("worker")
            {
                let k = c.read(&mut buf[got..]).unwrap();
                assert!(k > 0, "staller closed");
                got += k;
            }
            n += 1;
        }
        n
    })
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
        // New connections: one per request, on a fixed schedule.
        let rate = Some(1000.0);
        let calm = load(&url, 32, Duration::from_secs(3), true, rate);
        let stop = Arc::new(AtomicBool::new(false));
        let st = staller(s.addr, Arc::clone(&stop));
        std::thread::sleep(Duration::from_millis(200));
        let stalled = load(&url, 32, Duration::from_secs(3), true, rate);
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
    assert!(
        ll.1 <= 2 * ll.0.max(500),
        "least-loaded: p99.9 {} µs stalled vs {} µs calm",
        ll.1,
        ll.0
    );
    assert!(
        kernel.1 > 2 * kernel.0.max(500) && kernel.1 > 20_000,
        "the kernel's hash should show the stall: p99.9 {} µs stalled vs {} µs calm",
        kernel.1,
        kernel.0
    );
}
