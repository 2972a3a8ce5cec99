//! Graceful shutdown: in-flight messages are finished and flushed, idle
//! connections are closed, and `run` returns before the deadline.

mod util;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use corelane::{
    Accepted, Action, CloseReason, Context, Handler, Input, Output, Server, ServerState,
};
use util::{closed_within, eventually, read_line, Lines, TestServer};

#[test]
fn graceful_shutdown_delivers_in_flight_replies_then_closes() {
    let lines = Lines::default();
    let l = lines.clone();
    let server = TestServer::start(
        Server::builder()
            .workers(2)
            .shutdown_timeout(Duration::from_secs(5)),
        move |_| l.clone(),
    );
    let mut idle = server.connect();
    idle.write_all(b"served once\n").unwrap();
    assert_eq!(read_line(&mut idle), "served once\n");

    // A message in flight: half a line is sent before shutdown starts.
    let mut busy = server.connect();
    busy.write_all(b"served once\n").unwrap();
    assert_eq!(read_line(&mut busy), "served once\n");
    let big = vec![b'z'; 200_000];
    busy.write_all(&big[..100_000]).unwrap();
    server.wait_for("the first half read", Duration::from_secs(5), |m| {
        m.bytes_read >= 100_024
    });

    let started = Instant::now();
    server.shutdown.shutdown();
    // The idle keep-alive connection is closed at once.
    assert!(closed_within(&mut idle, Duration::from_secs(2)).unwrap());
    // New connections are refused once the listeners are closed.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "still accepting while draining"
    );

    // The rest of the in-flight message is still read and answered in full.
    busy.write_all(&big[100_000..]).unwrap();
    busy.write_all(b"\n").unwrap();
    let mut reply = Vec::new();
    busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    busy.read_to_end(&mut reply).unwrap();
    let mut want = big.clone();
    want.extend_from_slice(b"\n(draining)\n");
    assert_eq!(reply.len(), want.len());
    assert!(reply == want, "reply differs");

    server.stop().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    let reasons = lines.closed.lock().unwrap().clone();
    assert_eq!(reasons, vec![CloseReason::Shutdown, CloseReason::Shutdown]);
}

#[test]
fn the_shutdown_deadline_closes_connections_that_do_not_finish() {
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .shutdown_timeout(Duration::from_millis(300)),
        |_| Lines::default(),
    );
    let mut stuck = server.connect();
    stuck.write_all(b"a line that never ends").unwrap();
    server.wait_for("read", Duration::from_secs(5), |m| m.bytes_read > 0);
    let started = Instant::now();
    let m = server.metrics.clone();
    server.stop().unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(closed_within(&mut stuck, Duration::from_secs(1)).unwrap());
    assert_eq!(m.total().closed(CloseReason::Shutdown), 1);
}

#[test]
fn quit_closes_after_the_reply_without_a_reset() {
    let server = TestServer::start(Server::builder().workers(1), |_| Lines::default());
    let mut c = server.connect();
    // Pipeline bytes after `quit`: unread input must not turn the close into
    // a reset that destroys the reply (lingering close).
    c.write_all(b"one\nquit\nthese bytes are never read\n")
        .unwrap();
    assert_eq!(read_line(&mut c), "one\n");
    assert_eq!(read_line(&mut c), "bye\n");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("a clean FIN, not a reset");
    assert!(rest.is_empty());
    drop(c);
    server.wait_for("closed by the handler", Duration::from_secs(6), |m| {
        m.closed(CloseReason::Handler) == 1 && m.active == 0
    });
    server.stop().unwrap();
}

#[test]
fn quit_with_nothing_unread_closes_at_once_without_lingering() {
    let server = TestServer::start(Server::builder().workers(1), |_| Lines::default());
    let mut c = server.connect();
    c.write_all(b"quit\n").unwrap();
    assert_eq!(read_line(&mut c), "bye\n");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("a clean FIN, not a reset");
    assert!(rest.is_empty());
    // Every byte consumed and the socket drained: the server closed at
    // once (no shutdown, no waiting for our FIN), while we still hold the
    // connection open. A lingering close would keep it until we close.
    server.wait_for("closed without lingering", Duration::from_secs(2), |m| {
        m.closed(CloseReason::Handler) == 1 && m.active == 0
    });
    drop(c);
    server.stop().unwrap();
}

/// Answers every connection from `on_accept` with `busy` and closes it,
/// before reading anything (a connection limit, say).
struct Busy;

impl Handler for Busy {
    type Conn = ();

    fn on_accept(&mut self, conn: &Accepted, cx: &mut Context<'_>) {
        cx.write(conn.handle, b"busy\n").unwrap();
        cx.close(conn.handle).unwrap();
    }

    fn on_data(
        &mut self,
        _: &mut (),
        _: &mut Input<'_>,
        _: &mut Output,
        _: &mut Context<'_>,
    ) -> Action {
        Action::Continue
    }
}

#[test]
fn a_close_before_anything_was_read_lingers() {
    let server = TestServer::start(Server::builder().workers(1), |_| Busy);
    let mut c = server.connect();
    assert_eq!(read_line(&mut c), "busy\n");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("a clean FIN, not a reset");
    // Our request may still be on its way: the server waits for our FIN
    // (up to the linger timeout) instead of closing under it.
    std::thread::sleep(Duration::from_millis(300));
    let m = server.metrics.total();
    assert_eq!(
        (m.active, m.closed(CloseReason::Handler)),
        (1, 0),
        "closed without lingering"
    );
    drop(c);
    server.wait_for("closed after our FIN", Duration::from_secs(2), |m| {
        m.closed(CloseReason::Handler) == 1 && m.active == 0
    });
    server.stop().unwrap();
}

/// Pauses reading each connection, answers `bye` and closes it, leaving
/// its bytes unconsumed (a proxy closing a paused client, say).
struct PauseThenClose;

impl Handler for PauseThenClose {
    type Conn = ();

    fn on_accept(&mut self, _: &Accepted, _: &mut Context<'_>) {}

    fn on_data(
        &mut self,
        _: &mut (),
        _: &mut Input<'_>,
        output: &mut Output,
        cx: &mut Context<'_>,
    ) -> Action {
        cx.pause_reading(cx.conn().unwrap()).unwrap();
        output.extend_from_slice(b"bye\n");
        Action::Close
    }
}

#[test]
fn a_paused_connection_closed_with_unread_bytes_ends_its_linger_at_the_peers_fin() {
    // The linger timeout (5 s) far beyond the wait below: the close must
    // come from reading our FIN, which a paused connection used not to do.
    let server = TestServer::start(Server::builder().workers(1), |_| PauseThenClose);
    let mut c = server.connect();
    c.write_all(b"left unread\n").unwrap();
    assert_eq!(read_line(&mut c), "bye\n");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("a clean FIN, not a reset");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(server.metrics.total().active, 1, "did not linger");
    drop(c);
    server.wait_for("closed after our FIN", Duration::from_secs(2), |m| {
        m.closed(CloseReason::Handler) == 1 && m.active == 0
    });
    server.stop().unwrap();
}

#[test]
fn a_request_already_in_the_socket_when_draining_starts_is_answered() {
    let server = TestServer::start(Server::builder().workers(1), |_| Lines::default());
    let mut idle = server.connect();
    idle.write_all(b"first\n").unwrap();
    assert_eq!(read_line(&mut idle), "first\n");
    // Keep the worker busy in a handler call; meanwhile a request reaches the
    // idle keep-alive connection's socket and the shutdown starts. When the
    // worker gets to the shutdown, that connection looks idle, but a request
    // is waiting in its socket: it must be answered, not dropped.
    let mut staller = server.connect();
    staller.write_all(b"stall\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    idle.write_all(b"second\n").unwrap();
    server.shutdown.shutdown();
    let mut reply = String::new();
    idle.read_to_string(&mut reply).unwrap();
    assert_eq!(
        reply, "second\n(draining)\n",
        "the waiting request was dropped"
    );
    assert_eq!(read_line(&mut staller), "stall\n");
    server.stop().unwrap();
}

#[test]
fn within_the_drain_delay_the_server_is_not_ready_but_still_accepts_and_serves() {
    let delay = Duration::from_millis(1500);
    let server = TestServer::start(
        Server::builder()
            .workers(2)
            .drain_delay(delay)
            .shutdown_timeout(Duration::from_secs(3)),
        |_| Lines::default(),
    );
    let mut kept = server.connect();
    kept.write_all(b"state\n").unwrap();
    assert_eq!(read_line(&mut kept), "serving\n");
    assert_eq!(server.shutdown.state(), ServerState::Serving);

    let started = Instant::now();
    server.shutdown.shutdown();
    assert_eq!(server.shutdown.state(), ServerState::Draining);
    assert!(!server.shutdown.state().is_ready());

    // A connection opened within the delay is accepted and served; handlers
    // see the state and are told they are draining (so keep-alive clients
    // can be moved off).
    let mut fresh = server.connect();
    fresh.write_all(b"state\n").unwrap();
    assert_eq!(read_line(&mut fresh), "draining\n");
    assert_eq!(read_line(&mut fresh), "(draining)\n");
    kept.write_all(b"still here\n").unwrap();
    assert_eq!(read_line(&mut kept), "still here\n");
    assert_eq!(read_line(&mut kept), "(draining)\n");
    assert!(
        started.elapsed() < delay,
        "the checks took longer than the delay"
    );

    // Then the listeners close, not before the delay.
    assert!(eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(server.addr).is_err()
    }));
    assert!(
        started.elapsed() >= delay,
        "refused after {:?}, before the drain delay",
        started.elapsed()
    );
    drop((kept, fresh));
    server.stop().unwrap();
}

#[test]
fn a_second_shutdown_within_the_drain_delay_ends_it() {
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .drain_delay(Duration::from_secs(30)),
        |_| Lines::default(),
    );
    let started = Instant::now();
    server.shutdown.shutdown();
    std::thread::sleep(Duration::from_millis(100));
    assert!(std::net::TcpStream::connect(server.addr).is_ok());
    server.shutdown.shutdown();
    server.stop().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
}
