//! System test: Takeovers while clients are mid-handshake: eBPF migrates them, the kernel hash resets them.
//!
//! The real `corelane-http` binary on 127.0.0.1, driven by the load
//! generator and plain sockets; bounded, and printing what it measured:
//! `cargo test --release -p corelane-loadtest --test takeover_mid_handshake -- --nocapture`.
//! Tests that need root skip without it, and fail under `CI=true`.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corelane_test_support::require::needs_root;
use harness::{serial, Http};

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
