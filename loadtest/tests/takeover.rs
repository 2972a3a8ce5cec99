//! System test: Zero-downtime restarts: takeovers under load, an in-flight request, an unprivileged takeover.
//!
//! The real `corelane-http` binary on 127.0.0.1, driven by the load
//! generator and plain sockets; bounded, and printing what it measured:
//! `cargo test --release -p corelane-loadtest --test takeover -- --nocapture`.
//! Tests that need root skip without it, and fail under `CI=true`.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use corelane_loadtest::Report;
use corelane_test_support::eventually;
use corelane_test_support::proc::listening_on;
use corelane_test_support::require::needs_root;
use harness::{load, serial, Http};

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
            .arg(harness::http_binary_for_all())
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
