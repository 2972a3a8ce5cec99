//! Header, idle and write-stall timeouts close the right connections at the
//! right time, and leave the others alone.

mod util;

use std::io::Write;
use std::time::{Duration, Instant};

use corelane::{CloseReason, Server};
use util::{closed_within, read_line, Lines, TestServer};

fn lines_server(header: u64, idle: u64) -> (TestServer, Lines) {
    let lines = Lines::default();
    let l = lines.clone();
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .header_timeout(Some(Duration::from_millis(header)))
            .idle_timeout(Some(Duration::from_millis(idle))),
        move |_| l.clone(),
    );
    (server, lines)
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let (server, lines) = lines_server(300, 5_000);
    let start = Instant::now();
    let mut silent = server.connect();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).unwrap());
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(290), "closed early: {took:?}");
    assert!(took < Duration::from_millis(1500), "closed late: {took:?}");
    server.wait_for("close counted", Duration::from_secs(2), |m| m.active == 0);
    assert_eq!(
        *lines.closed.lock().unwrap(),
        vec![CloseReason::HeaderTimeout]
    );
    server.stop().unwrap();
}

#[test]
fn trickling_a_message_byte_by_byte_does_not_extend_the_header_timeout() {
    let (server, _) = lines_server(400, 5_000);
    let mut slow = server.connect();
    let mut normal = server.connect();
    normal.write_all(b"hello\n").unwrap();
    assert_eq!(read_line(&mut normal), "hello\n");
    let start = Instant::now();
    let mut closed_after = None;
    for _ in 0..40 {
        if slow.write_all(b"x").is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(50)).unwrap() {
            closed_after = Some(start.elapsed());
            break;
        }
    }
    let took = closed_after.expect("the slow sender was never closed");
    assert!(
        took < Duration::from_millis(1200),
        "header timeout was extended: {took:?}"
    );
    // The normal client is unaffected (its idle timeout is 5 s).
    normal.write_all(b"again\n").unwrap();
    assert_eq!(read_line(&mut normal), "again\n");
    assert_eq!(server.metrics.total().closed(CloseReason::HeaderTimeout), 1);
    server.stop().unwrap();
}

#[test]
fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let (server, lines) = lines_server(5_000, 400);
    let mut c = server.connect();
    // Activity keeps it open well past one idle timeout.
    for i in 0..6 {
        c.write_all(format!("ping {i}\n").as_bytes()).unwrap();
        assert_eq!(read_line(&mut c), format!("ping {i}\n"));
        std::thread::sleep(Duration::from_millis(150));
    }
    let start = Instant::now();
    assert!(closed_within(&mut c, Duration::from_secs(3)).unwrap());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    server.wait_for("close counted", Duration::from_secs(2), |m| m.active == 0);
    assert_eq!(
        *lines.closed.lock().unwrap(),
        vec![CloseReason::IdleTimeout]
    );
    let m = server.metrics.total();
    assert!(
        m.idle_sweeps >= 1,
        "the expiry pass that closed it is counted: {m:?}"
    );
    server.stop().unwrap();
}

#[test]
fn output_that_makes_no_progress_is_closed_at_the_write_timeout() {
    let lines = Lines::default();
    let l = lines.clone();
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .output_high_water(16 * 1024)
            .write_timeout(Some(Duration::from_millis(300))),
        move |_| l.clone(),
    );
    let mut c = server.connect();
    // A small receive buffer, so the echoes back up soon, but not smaller
    // than loopback's 64 KB segments: with 4 KB the client's kernel dropped
    // the server's segments, and the window updates they carried, and the
    // two kernels stalled each other with the server's output all handed
    // to its kernel (none left for the write timeout to see).
    socket2::SockRef::from(&c)
        .set_recv_buffer_size(256 * 1024)
        .unwrap();
    // Longer than the server's write timeout: the client keeps sending
    // until the server, its output stuck, stops reading and then closes.
    c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let line = [vec![b'y'; 1023], vec![b'\n']].concat();
    // Send lines without reading the echoes until the server stops reading
    // (past what the kernels' buffers hold: up to 4 MB of send buffer and
    // 6 MB of receive buffer each way).
    for _ in 0..60_000 {
        if c.write_all(&line).is_err() {
            break;
        }
    }
    server.wait_for("write timeout", Duration::from_secs(5), |m| {
        m.closed(CloseReason::WriteTimeout) == 1
    });
    assert_eq!(
        *lines.closed.lock().unwrap(),
        vec![CloseReason::WriteTimeout]
    );
    server.stop().unwrap();
}

/// On a request, writes one line every 100 ms for a second (a response
/// streamed from timers, as a proxy streams an upstream's body).
struct Ticker;

impl corelane::Handler for Ticker {
    type Conn = u32;

    fn on_accept(&mut self, _: &corelane::Accepted, _: &mut corelane::Context<'_>) -> u32 {
        0
    }

    fn on_data(
        &mut self,
        _: &mut u32,
        input: &mut corelane::Input<'_>,
        _: &mut corelane::Output,
        cx: &mut corelane::Context<'_>,
    ) -> corelane::Action {
        input.consume(input.bytes().len());
        cx.set_timer(cx.conn(), Duration::from_millis(100), 0)
            .unwrap();
        corelane::Action::Continue
    }

    fn on_timer(&mut self, n: Option<&mut u32>, _: u64, cx: &mut corelane::Context<'_>) {
        let (Some(n), Some(me)) = (n, cx.conn()) else {
            return;
        };
        *n += 1;
        cx.write(me, format!("line {n}\n").as_bytes()).unwrap();
        if *n < 10 {
            cx.set_timer(Some(me), Duration::from_millis(100), 0)
                .unwrap();
        }
    }
}

#[test]
fn a_response_still_being_written_is_not_idle() {
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .idle_timeout(Some(Duration::from_millis(300))),
        |_| Ticker,
    );
    let mut c = server.connect();
    c.write_all(b"go").unwrap();
    // A second of output, three idle timeouts long: every line arrives.
    for n in 1..=10 {
        assert_eq!(read_line(&mut c), format!("line {n}\n"));
    }
    // Then nothing either way: closed at the idle timeout.
    let start = Instant::now();
    assert!(closed_within(&mut c, Duration::from_secs(3)).unwrap());
    assert!(start.elapsed() < Duration::from_millis(1500));
    server.stop().unwrap();
}
