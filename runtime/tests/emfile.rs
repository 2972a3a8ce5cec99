//! Accepting when the process is out of descriptors: the worker pauses instead
//! of spinning, keeps serving the connections it has, and accepts the queued
//! ones once descriptors free up.
//!
//! The server runs in a child process (this test binary re-executed with a
//! low `RLIMIT_NOFILE`), so the limit does not affect the test's own sockets.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corelane::Server;
use util::{roundtrip, Echo};

const CHILD_ENV: &str = "CORELANE_EMFILE_CHILD";
const NOFILE: u64 = 64;

/// Not a test of its own: the server half of the test below, run only in the
/// child process it starts.
#[test]
fn emfile_server_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    corelane_test_support::proc::set_nofile_soft_limit(NOFILE);
    let server = Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .handle_signals(false)
        .raise_nofile_limit(false)
        .accept_pause(Duration::from_millis(50))
        .build(|_| Echo::default())
        .unwrap();
    let metrics = server.metrics();
    let shutdown = server.shutdown_handle();
    // Straight to the pipe: the test harness may capture `println!`.
    let say = |msg: String| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{msg}").and_then(|()| out.flush()).unwrap();
    };
    say(format!("PORT {}", server.local_addr().port()));
    std::thread::spawn(move || {
        // Serve until the parent closes our stdin.
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
            let m = metrics.total();
            say(format!(
                "METRICS accepted={} active={} pauses={}",
                m.accepted, m.active, m.accept_pauses
            ));
            line.clear();
        }
        shutdown.shutdown_now();
    });
    server.run().unwrap();
}

#[test]
fn accept_under_emfile_pauses_keeps_serving_and_recovers() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "emfile_server_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let port: u16 = loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child exited before printing its port"
        );
        // The harness may print its own text before ours on the same line.
        if let Some((_, p)) = line.trim().split_once("PORT ") {
            break p.parse().unwrap();
        }
    };
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };

    // More connections than the child has descriptors: the kernel completes
    // the handshakes into the backlog; the worker accepts until EMFILE.
    let mut clients: Vec<TcpStream> = (0..NOFILE as usize + 40).map(|_| connect()).collect();
    let mut metrics = |stdin: &mut std::process::ChildStdin| -> (u64, u64, u64) {
        writeln!(stdin).unwrap();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the server process exited"
            );
            if let Some((_, rest)) = line.trim().split_once("METRICS ") {
                let v: Vec<u64> = rest
                    .split(' ')
                    .map(|kv| kv.split('=').nth(1).unwrap().parse().unwrap())
                    .collect();
                return (v[0], v[1], v[2]);
            }
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let (accepted, active, pauses) = metrics(&mut stdin);
    assert!(
        accepted < clients.len() as u64,
        "all accepted despite the limit?"
    );
    assert!(accepted > 10, "accepted only {accepted}");
    assert_eq!(active, accepted);
    assert!(pauses >= 1, "EMFILE was never hit");

    // It does not spin while at the limit.
    let before = corelane_test_support::proc::cpu_ticks(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = corelane_test_support::proc::cpu_ticks(pid) - before;
    let ticks_per_sec = 100; // USER_HZ
    let share = used as f64 / (t0.elapsed().as_secs_f64() * ticks_per_sec as f64);
    assert!(
        share < 0.2,
        "server used {:.0}% CPU while out of descriptors",
        share * 100.0
    );

    // Accepted connections are still served.
    roundtrip(&mut clients[0], b"still here");

    // Free descriptors: close the accepted connections; the queued ones are
    // then accepted and served.
    let queued = clients.split_off(accepted as usize);
    drop(clients);
    for (i, mut c) in queued.into_iter().enumerate() {
        roundtrip(&mut c, format!("queued {i}").as_bytes());
    }
    let (accepted_after, _, _) = metrics(&mut stdin);
    assert_eq!(accepted_after, NOFILE + 40);
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success());
}
