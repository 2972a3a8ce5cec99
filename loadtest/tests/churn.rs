//! System test: Connection churn: thirty seconds of new connections leave no error and no leaked descriptor.
//!
//! The real `corelane-http` binary on 127.0.0.1, driven by the load
//! generator and plain sockets; bounded, and printing what it measured:
//! `cargo test --release -p corelane-loadtest --test churn -- --nocapture`.
//! Tests that need root skip without it, and fail under `CI=true`.

mod harness;

use std::time::Duration;

use corelane_test_support::eventually;
use harness::{load, serial, Http};

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
