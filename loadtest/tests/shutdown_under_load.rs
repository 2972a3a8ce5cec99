//! System test: SIGTERM under load: whole responses, exit 0, in time.
//!
//! The real `corelane-http` binary on 127.0.0.1, driven by the load
//! generator and plain sockets; bounded, and printing what it measured:
//! `cargo test --release -p corelane-loadtest --test shutdown_under_load -- --nocapture`.
//! Tests that need root skip without it, and fail under `CI=true`.

mod harness;

use std::time::Duration;

use harness::{load, serial, Http};

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
