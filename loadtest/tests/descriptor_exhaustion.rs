//! System test: Descriptor exhaustion: no spin, old clients served, recovery.
//!
//! The real `corelane-http` binary on 127.0.0.1, driven by the load
//! generator and plain sockets; bounded, and printing what it measured:
//! `cargo test --release -p corelane-loadtest --test descriptor_exhaustion -- --nocapture`.
//! Tests that need root skip without it, and fail under `CI=true`.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::{serial, Http};

#[test]
fn at_the_descriptor_limit_it_does_not_spin_keeps_serving_and_recovers() {
    let _g = serial();
    corelane_test_support::proc::raise_nofile();
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
