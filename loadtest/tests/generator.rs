//! The generator against a server whose answers are known: corelane-http
//! in this process. Request counts must equal the server's own counters
//! exactly (the server also counts the one /metrics request made before the
//! run), with and without pipelining and with a connection per request.

use std::time::Duration;

use corelane::Server;
use corelane_http::{Http, HttpOptions};
use corelane_loadtest::{run, scrape, RunOptions, Target};

fn server() -> (
    std::net::SocketAddr,
    corelane::ShutdownHandle,
    std::thread::JoinHandle<corelane::Result<()>>,
    String,
) {
    let opts = HttpOptions::default();
    let s = Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .handle_signals(false)
        .max_input(opts.max_input())
        .build(Http::factory(opts))
        .unwrap();
    let (addr, handle) = (s.local_addr(), s.shutdown_handle());
    let mode = s.metrics().steering_mode().to_string();
    (addr, handle, std::thread::spawn(move || s.run()), mode)
}

fn opts(pipeline: usize, close: bool) -> RunOptions {
    RunOptions {
        threads: 2,
        connections: 16,
        duration: Duration::from_millis(700),
        pipeline,
        close,
        timeout: Duration::from_secs(5),
        progress: false,
        rate: None,
    }
}

#[test]
fn counts_match_the_servers_exactly() {
    let (addr, shutdown, t, mode) = server();
    let target = Target::parse(&format!("http://{addr}/plaintext")).unwrap();
    for (pipeline, close) in [(1, false), (16, false), (1, true)] {
        let before = scrape::fetch(addr, &target.host).expect("/metrics");
        let report = run(&target, &opts(pipeline, close)).unwrap();
        let after = scrape::fetch(addr, &target.host).expect("/metrics");
        let server = after.since(&before);
        let served: u64 = server.requests.values().sum();
        assert!(
            report.requests > 1000,
            "too little load to mean anything: {report:?}"
        );
        assert_eq!(report.errors.total(), 0, "{report:?}");
        assert_eq!(report.ok, report.requests);
        // +1: the `before` scrape is counted once its response is written.
        assert_eq!(
            served,
            report.requests + 1,
            "pipeline {pipeline}, close {close}"
        );
        if close {
            let accepted: u64 = server.accepted.values().sum();
            // +2: both scrapes' connections.
            assert_eq!(accepted, report.connections_opened + 2);
        }
        // The mode in force (eBPF as root, classic BPF otherwise).
        assert_eq!(server.steering.as_deref(), Some(mode.as_str()));
    }
    shutdown.shutdown();
    t.join().unwrap().unwrap();
}

#[test]
fn a_target_that_does_not_answer_is_a_clear_error() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let target = Target::parse(&format!("http://{addr}/")).unwrap();
    let err = run(&target, &opts(1, false)).unwrap_err();
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn rate_holds_within_a_few_percent_and_counts_still_match() {
    let (addr, shutdown, t, _) = server();
    let target = Target::parse(&format!("http://{addr}/plaintext")).unwrap();
    let rate = 4000.0;
    let o = RunOptions {
        rate: Some(rate),
        duration: Duration::from_millis(1500),
        ..opts(1, false)
    };
    let before = scrape::fetch(addr, &target.host).expect("/metrics");
    let report = run(&target, &o).unwrap();
    let after = scrape::fetch(addr, &target.host).expect("/metrics");
    let expected = rate * 1.5;
    let got = report.requests as f64;
    assert!(
        (got - expected).abs() / expected < 0.03,
        "{got} requests, expected {expected}"
    );
    assert_eq!(report.errors.total(), 0);
    let served: u64 = after.since(&before).requests.values().sum();
    assert_eq!(served, report.requests + 1);
    shutdown.shutdown();
    t.join().unwrap().unwrap();
}
