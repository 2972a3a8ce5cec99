//! System test: Scale: keep-alive connections up to the descriptor limit.
//!
//! The real `corelane-http` binary on 127.0.0.1, driven by the load
//! generator and plain sockets; bounded, and printing what it measured:
//! `cargo test --release -p corelane-loadtest --test scale -- --nocapture`.
//! Tests that need root skip without it, and fail under `CI=true`.

mod harness;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use corelane_test_support::proc::nofile_hard_limit;
use harness::{serial, Http};

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
    // The scrape's own connection counts too unless it was accepted and
    // answered in one turn (deferred accept: the counters are published
    // after the turn).
    assert!(active >= target, "{active} active");
    assert!(per_conn < 2048.0, "{per_conn} B per connection");
}
