//! System test: Least privilege: the server as `nobody` (after binding as root), and with CAP_BPF alone, keeps eBPF steering.
//!
//! The real `corelane-http` binary on 127.0.0.1, driven by the load
//! generator and plain sockets; bounded, and printing what it measured:
//! `cargo test --release -p corelane-loadtest --test least_privilege -- --nocapture`.
//! Tests that need root skip without it, and fail under `CI=true`.

mod harness;

use std::time::Duration;

use corelane_test_support::require::needs_root;
use harness::{load, serial, Http};

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
    .arg(harness::http_binary_for_all())
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
