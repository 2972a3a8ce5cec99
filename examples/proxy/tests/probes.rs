//! The probes an outbound connection fires, seen by bpftrace attached to
//! this process: `connect` and `connected` for each upstream connection,
//! then `read`, `write` and `close` as for an accepted one, and `close`
//! with `connect_failed` for a refused connect. Needs root and bpftrace
//! (CI installs it and runs this as root).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use corelane::Server;
use corelane_proxy::{Proxy, ProxyCounters, ProxyOptions};
use corelane_test_support::require::{has_tool, is_root, needs};
use corelane_test_support::tracer::Tracer;
use corelane_test_support::TestServer;

const SCRIPT: &str = r#"
BEGIN { printf("READY\n"); }
usdt:*:corelane:accept { @n["accept"] = count(); }
usdt:*:corelane:connect { @n["connect"] = count(); }
usdt:*:corelane:connected { @n["connected"] = count(); @up[arg2] = 1; }
usdt:*:corelane:read /@up[arg2]/ { @n["upstream_read"] = count(); }
usdt:*:corelane:write /@up[arg2]/ { @n["upstream_write"] = count(); }
usdt:*:corelane:close { @closed[str(arg3)] = count(); }
"#;

/// An upstream answering every request on a connection with a fixed reply.
fn upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                loop {
                    let Ok(n) = s.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn outbound_connections_fire_connect_connected_and_the_io_probes() {
    if !needs(is_root() && has_tool("bpftrace"), "root and bpftrace") {
        return;
    }
    let up = upstream();
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let counters = ProxyCounters::new();
    let opts = ProxyOptions {
        // Round robin: requests alternate between the live upstream and the
        // refusing one.
        upstreams: vec![up, refused],
        ..ProxyOptions::default()
    };
    let proxy = TestServer::start(
        Server::builder().workers(1).max_input(opts.max_input()),
        Proxy::factory(opts, counters.clone()),
    );
    let tracer = Tracer::attach(SCRIPT);
    // Four clients, two requests each: the first of each pair goes to the
    // refusing upstream (502), the second to the live one (200), on a pooled
    // connection after the first.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut c: TcpStream = proxy.connect();
        for _ in 0..2 {
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let mut buf = [0u8; 512];
            let n = c.read(&mut buf).unwrap();
            statuses.push(String::from_utf8_lossy(&buf[..12]).into_owned());
            assert!(n > 12);
        }
    }
    proxy.wait_for("upstream connects counted", Duration::from_secs(5), |m| {
        m.connects == 5 && m.connect_failures == 4
    });
    let dump = tracer.finish();
    let count = |key: &str| {
        dump.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    assert_eq!(
        statuses.iter().filter(|s| s.ends_with("502")).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(count("@n[accept]"), 4, "{dump}");
    // 4 refused, 1 to the live upstream (then pooled).
    assert_eq!(count("@n[connect]"), 5, "{dump}");
    assert_eq!(count("@n[connected]"), 1, "{dump}");
    assert_eq!(count("@closed[connect_failed]"), 4, "{dump}");
    // The request and its answer, four times on the one upstream connection.
    assert_eq!(count("@n[upstream_write]"), 4, "{dump}");
    assert_eq!(count("@n[upstream_read]"), 4, "{dump}");
}
