//! Serving: many connections over several workers, large payloads, backpressure,
//! resets and slot reuse, against real sockets on 127.0.0.1.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use corelane::{Accepted, Action, CloseReason, Context, Handler, Input, Output, Server};
use util::{read_exact_n, roundtrip, Echo, TestServer};

#[test]
fn many_connections_are_served_across_several_workers() {
    let server = TestServer::start(Server::builder().workers(4), |_| Echo::default());
    let mut clients: Vec<TcpStream> = (0..200).map(|_| server.connect()).collect();
    for round in 0..3 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(format!("client {i} round {round}\n").as_bytes())
                .unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let want = format!("client {i} round {round}\n");
            assert_eq!(read_exact_n(c, want.len()), want.as_bytes());
        }
    }
    let per_worker = server.metrics.snapshot();
    assert_eq!(per_worker.len(), 4);
    let accepted: u64 = per_worker.iter().map(|w| w.accepted).sum();
    assert_eq!(accepted, 200);
    let busy = per_worker.iter().filter(|w| w.accepted > 0).count();
    assert!(
        busy >= 3,
        "the kernel's hash should spread 200 connections: {per_worker:?}"
    );
    assert!(
        per_worker.iter().all(|w| w.cpu.is_some()),
        "workers are pinned by default"
    );
    drop(clients);
    server.wait_for("all closed as peer_closed", Duration::from_secs(5), |m| {
        m.active == 0 && m.closed(CloseReason::PeerClosed) == 200
    });
    server.stop().unwrap();
}

#[test]
fn large_payloads_survive_partial_writes() {
    // Small buffers and high-water mark force many partial writes and pauses.
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .buffer_size(4096)
            .max_input(4096)
            .output_high_water(8192),
        |_| Echo::default(),
    );
    let mut client = server.connect();
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut reader = client.try_clone().unwrap();
    let expected = payload.clone();
    let receiver = std::thread::spawn(move || {
        let mut got = vec![0; expected.len()];
        reader.read_exact(&mut got).unwrap();
        assert!(got == expected, "echoed bytes differ from what was sent");
    });
    client.write_all(&payload).unwrap();
    receiver.join().unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    server.wait_for("close", Duration::from_secs(5), |m| m.active == 0);
    let m = server.metrics.total();
    assert_eq!(m.bytes_read, payload.len() as u64);
    assert_eq!(m.bytes_written, payload.len() as u64);
    assert_eq!(m.pool_outstanding, 0, "buffers returned after close");
    server.stop().unwrap();
}

#[test]
fn a_client_that_never_reads_cannot_grow_server_memory() {
    let high_water = 64 * 1024;
    let echo = Echo::default();
    let max_output = echo.max_output.clone();
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .output_high_water(high_water)
            .buffer_size(16 * 1024),
        move |_| echo.clone(),
    );
    let mut writer = server.connect();
    writer
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    // Write until the kernel buffers on both sides are full and the server
    // has stopped reading (the write times out), or 256 MiB.
    while sent < 256 << 20 {
        match writer.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(sent < 256 << 20, "the server kept reading without bound");
    let m = server.metrics.total();
    // Queued output is bounded by the high-water mark plus one read; a read
    // fills at most one pooled buffer, and the pool keeps buffers of up to
    // twice its buffer size. The rest sits in kernel socket buffers.
    assert!(
        max_output.load(Ordering::Relaxed) <= high_water + 2 * 16 * 1024,
        "queued output {} exceeded the high-water mark",
        max_output.load(Ordering::Relaxed)
    );
    assert!(
        m.pool_outstanding <= 2,
        "one connection holds at most its two buffers: {m:?}"
    );
    // Another client is served meanwhile.
    let mut other = server.connect();
    roundtrip(&mut other, b"still serving\n");
    // Draining the first client's replies lets the server read on.
    let mut reader = writer.try_clone().unwrap();
    let drained = std::thread::spawn(move || {
        let mut buf = vec![0; 1 << 20];
        let mut total = 0;
        reader
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while total < sent {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    });
    assert_eq!(
        drained.join().unwrap(),
        sent,
        "every byte was echoed once the client read"
    );
    server.stop().unwrap();
}

#[test]
fn a_reset_peer_is_counted_and_others_keep_being_served() {
    let server = TestServer::start(Server::builder().workers(2), |_| Echo::default());
    let mut keeper = server.connect();
    roundtrip(&mut keeper, b"before\n");
    let victim = server.connect();
    let sock = socket2::SockRef::from(&victim);
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    (&victim).write_all(b"some bytes").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(victim); // SO_LINGER 0: close sends RST
    server.wait_for("the reset to be seen", Duration::from_secs(5), |m| {
        m.closed(CloseReason::Reset) == 1 && m.active == 1
    });
    roundtrip(&mut keeper, b"after\n");
    server.stop().unwrap();
}

#[test]
fn reused_slots_never_mix_up_connections() {
    // Connections come and go while others stay: slots are reused all the
    // time, and any event delivered to the wrong connection would corrupt a
    // stream. Every stream must come back exactly as sent.
    let server = TestServer::start(Server::builder().workers(1), |_| Echo::default());
    let mut steady: Vec<TcpStream> = (0..20).map(|_| server.connect()).collect();
    for round in 0..50 {
        let mut churn: Vec<TcpStream> = (0..10).map(|_| server.connect()).collect();
        for (i, c) in churn.iter_mut().enumerate() {
            c.write_all(format!("churn {round} {i};").as_bytes())
                .unwrap();
        }
        for (i, c) in steady.iter_mut().enumerate() {
            roundtrip(c, format!("steady {round} {i};").as_bytes());
        }
        for (i, c) in churn.iter_mut().enumerate() {
            let want = format!("churn {round} {i};");
            assert_eq!(read_exact_n(c, want.len()), want.as_bytes());
            if i % 2 == 0 {
                socket2::SockRef::from(&*c)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
        }
    }
    server.wait_for("churned connections closed", Duration::from_secs(5), |m| {
        m.active == 20
    });
    let m = server.metrics.total();
    assert_eq!(m.accepted, 20 + 50 * 10);
    server.stop().unwrap();
}

#[test]
fn ipv6_loopback_is_served() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("skipping: this host has no IPv6 loopback");
        return;
    };
    drop(probe);
    let server = Server::builder()
        .addr("[::1]:0".parse().unwrap())
        .workers(2)
        .handle_signals(false)
        .build(|_| Echo::default())
        .unwrap();
    let addr = server.local_addr();
    let handle = server.shutdown_handle();
    let t = std::thread::spawn(move || server.run());
    let mut c = TcpStream::connect(addr).unwrap();
    roundtrip(&mut c, b"over ipv6");
    handle.shutdown();
    t.join().unwrap().unwrap();
}

#[test]
fn with_deferred_accept_a_connection_is_served_before_it_is_registered() {
    // The first bytes are there at accept: the worker serves them before
    // registering the connection, so what a first turn leaves (a second
    // request to come, output the socket did not take) must still be
    // followed by its edges once it is registered.
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .defer_accept(Some(Duration::from_secs(1))),
        |_| Echo::default(),
    );
    // Keep-alive: a second round needs the registration.
    let mut c = server.connect();
    for round in 0..3 {
        let msg = format!("round {round}\n");
        c.write_all(msg.as_bytes()).unwrap();
        assert_eq!(read_exact_n(&mut c, msg.len()), msg.as_bytes());
    }
    // Short connections, each served and closed by its peer.
    // Short connections, each served and closed by its peer.
    for i in 0..100 {
        let mut s = server.connect();
        let msg = format!("short {i}\n");
        s.write_all(msg.as_bytes()).unwrap();
        assert_eq!(read_exact_n(&mut s, msg.len()), msg.as_bytes());
    }
    drop(c);
    server.wait_for("all closed", Duration::from_secs(5), |m| {
        m.active == 0 && m.accepted == 101
    });
    assert_eq!(server.metrics.total().pool_outstanding, 0);
    server.stop().unwrap();
}

/// Answers any bytes with `len` bytes of `byte`, then does `then`; with
/// `keep_input`, leaves the bytes unconsumed (a close then lingers).
struct Answer {
    len: usize,
    byte: u8,
    keep_input: bool,
    then: Action,
}

impl Answer {
    /// 16 MiB of `x`, more than a socket takes at once, keeping the
    /// connection.
    fn flood() -> Answer {
        Answer {
            len: 16 << 20,
            byte: b'x',
            keep_input: false,
            then: Action::Continue,
        }
    }
}

impl Handler for Answer {
    type Conn = ();

    fn on_accept(&mut self, _conn: &Accepted, _cx: &mut Context<'_>) {}

    fn on_data(
        &mut self,
        _: &mut (),
        input: &mut Input<'_>,
        output: &mut Output,
        _cx: &mut Context<'_>,
    ) -> Action {
        if !self.keep_input {
            input.consume(input.bytes().len());
        }
        output.extend_from_slice(&vec![self.byte; self.len]);
        self.then
    }
}

#[test]
fn with_deferred_accept_output_left_by_the_first_turn_is_still_sent() {
    // The reply to the bytes found at accept does not fit in the socket:
    // writable edges are asked for before the connection is registered.
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .defer_accept(Some(Duration::from_secs(1))),
        |_| Answer::flood(),
    );
    let mut c = server.connect();
    c.write_all(b"go").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let got = read_exact_n(&mut c, 16 << 20);
    assert!(got.iter().all(|&b| b == b'x'));
    drop(c);
    server.wait_for("closed", Duration::from_secs(5), |m| m.active == 0);
    server.stop().unwrap();
}

#[test]
fn a_reply_before_a_close_arrives_whole_and_ends_with_the_fin() {
    // The last write before a close holds its tail for the FIN to leave
    // in it (`MSG_MORE`): the close must push it, on the at-once path and
    // the lingering one, for a reply that fits in the socket and for one
    // written over many turns (each partial write passing the flag too).
    for (len, keep_input) in [(150, false), (150, true), (3 << 20, false), (3 << 20, true)] {
        let server = TestServer::start(Server::builder().workers(1), move |_| Answer {
            len,
            byte: b'y',
            keep_input,
            then: Action::Close,
        });
        for _ in 0..20 {
            let mut c = server.connect();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(b"go").unwrap();
            if len > 1 << 20 {
                // Let the socket fill: the reply goes out over many turns.
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap_or_else(|e| {
                panic!(
                    "{len} bytes, keep_input {keep_input}: {e} after {} bytes",
                    got.len()
                )
            });
            assert_eq!(got.len(), len, "keep_input {keep_input}");
            assert!(got.iter().all(|&b| b == b'y'));
        }
        server.wait_for("closed", Duration::from_secs(5), |m| m.active == 0);
        server.stop().unwrap();
    }
}
