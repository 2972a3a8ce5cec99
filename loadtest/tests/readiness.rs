//! System test: health and readiness of the real `corelane-http` binary as
//! a load balancer and a service manager see them: `/healthz` and
//! `/readyz`, the drain delay after SIGTERM, readiness across a takeover,
//! and systemd's `sd_notify` (`READY=1`, `STOPPING=1`).
//!
//! `cargo test --release -p corelane-loadtest --test readiness`

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use corelane_test_support::eventually;
use harness::{serial, Http};

/// The status code of `GET path` on a fresh connection (`None`: refused).
fn status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.get(9..12)?.parse().ok()
}

/// `GET path` on a kept connection; the whole response head and body.
fn get_on(c: &mut TcpStream, path: &str) -> String {
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text.into_owned();
            }
        }
    }
}

#[test]
fn readyz_turns_503_at_sigterm_while_the_drain_delay_keeps_serving() {
    let _g = serial();
    let mut s = Http::start(&["--workers", "2", "--drain-delay", "1500ms"]);
    assert_eq!(status(s.addr, "/healthz"), Some(200));
    assert_eq!(status(s.addr, "/readyz"), Some(200));
    let mut kept = TcpStream::connect(s.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(get_on(&mut kept, "/plaintext").starts_with("HTTP/1.1 200"));

    let signalled = Instant::now();
    s.signal(libc::SIGTERM);
    assert!(eventually(Duration::from_secs(1), || status(
        s.addr, "/readyz"
    ) == Some(503)));
    // Within the delay: new connections are still accepted and served, and
    // a keep-alive client is moved off with `Connection: close`.
    assert_eq!(status(s.addr, "/plaintext"), Some(200));
    assert_eq!(status(s.addr, "/healthz"), Some(200));
    let reply = get_on(&mut kept, "/plaintext");
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("Connection: close"),
        "{reply}"
    );
    assert!(
        signalled.elapsed() < Duration::from_millis(1500),
        "checks too slow"
    );
    // Then the listeners close and the process exits.
    let (exit, _) = s.wait(Duration::from_secs(10)).expect("exits");
    assert!(exit.success(), "{exit:?}\n{}", s.log());
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "exited {:?} after SIGTERM, before the drain delay",
        signalled.elapsed()
    );
    assert!(
        s.log().contains("listeners stay open for the drain delay"),
        "{}",
        s.log()
    );
}

#[test]
fn the_old_process_reports_handed_over_and_the_new_one_ready() {
    let _g = serial();
    let mut old = Http::start(&["--workers", "2", "--shutdown-timeout", "3s"]);
    let mut kept = TcpStream::connect(old.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A request head in flight keeps the old connection open through the
    // drain: it completes after the takeover.
    kept.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let new = Http::start_at(old.addr, &["--workers", "2", "--takeover"]);
    assert!(
        eventually(Duration::from_secs(5), || old
            .log()
            .contains("handing over")),
        "{}",
        old.log()
    );
    kept.write_all(b"\r\n").unwrap();
    let mut reply = String::new();
    kept.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 503") && reply.ends_with("handed over\n"),
        "{reply}"
    );
    assert_eq!(status(new.addr, "/readyz"), Some(200));
    let (exit, _) = old.wait(Duration::from_secs(10)).expect("old exits");
    assert!(exit.success());
}

#[test]
fn systemd_is_told_ready_then_stopping() {
    let _g = serial();
    let dir = std::env::temp_dir().join(format!("corelane-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut cmd = std::process::Command::new(harness::http_binary());
    cmd.args(["--addr", "127.0.0.1:0", "--workers", "1"])
        .env("NOTIFY_SOCKET", &path);
    let mut s = Http::spawn(cmd);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(
        msg.contains(&format!("STATUS=serving on {}", s.addr)),
        "{msg}"
    );
    assert!(msg.contains(&format!("MAINPID={}", s.pid())), "{msg}");
    s.signal(libc::SIGTERM);
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("STOPPING=1"), "{msg}");
    assert!(s
        .wait(Duration::from_secs(10))
        .is_some_and(|(e, _)| e.success()));
    let _ = std::fs::remove_dir_all(&dir);
}
