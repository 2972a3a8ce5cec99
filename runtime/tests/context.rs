//! Beyond request→reply: connection handles (write to, close, pause and
//! resume any connection of the worker from any callback), timers, and the
//! writable event for streaming, on the real runtime.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corelane::{
    Accepted, Action, ConnHandle, Context, HandleError, Handler, Input, Output, Server,
};
use util::TestServer;

fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l
}

/// Every line a client sends goes to every other client; `bye` closes the
/// sender through its handle.
#[derive(Default)]
struct Chat {
    members: Vec<ConnHandle>,
    refused: Arc<AtomicUsize>,
}

impl Handler for Chat {
    type Conn = ConnHandle;

    fn on_accept(&mut self, conn: &Accepted, _cx: &mut Context<'_>) -> ConnHandle {
        self.members.push(conn.handle);
        conn.handle
    }

    fn on_data(
        &mut self,
        me: &mut ConnHandle,
        input: &mut Input<'_>,
        _output: &mut Output,
        cx: &mut Context<'_>,
    ) -> Action {
        while let Some(end) = input.bytes().iter().position(|&b| b == b'\n') {
            let msg = &input.bytes()[..=end];
            if msg == b"bye\n" {
                cx.close(*me).unwrap();
            } else {
                for &other in self.members.iter().filter(|&&h| h != *me) {
                    if cx.write(other, msg) == Err(HandleError::Closed) {
                        self.refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            input.consume(end + 1);
        }
        Action::Continue
    }

    fn on_close(&mut self, _me: ConnHandle, _r: corelane::CloseReason, _cx: &mut Context<'_>) {
        // Keeps the closed member's handle on purpose: writing to it must be
        // refused, never reach a later connection in its slot.
    }
}

#[test]
fn a_handle_writes_to_and_closes_other_connections_and_a_stale_one_is_refused() {
    let refused = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&refused);
    let server = TestServer::start(Server::builder().workers(1), move |_| Chat {
        members: Vec::new(),
        refused: Arc::clone(&r),
    });
    let mut a = server.connect();
    let mut b = BufReader::new(server.connect());
    let mut c = BufReader::new(server.connect());
    server.wait_for("three members", Duration::from_secs(10), |m| m.active == 3);
    a.write_all(b"hi\n").unwrap();
    assert_eq!(line(&mut b), "hi\n");
    assert_eq!(line(&mut c), "hi\n");
    // B leaves (closed through its own handle); a new connection may take
    // its slot, and must not receive what was meant for B.
    b.get_mut().write_all(b"bye\n").unwrap();
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(b);
    server.wait_for("B closed", Duration::from_secs(10), |m| m.active == 2);
    let mut d = BufReader::new(server.connect());
    server.wait_for("D joined", Duration::from_secs(10), |m| m.active == 3);
    a.write_all(b"again\n").unwrap();
    assert_eq!(line(&mut c), "again\n");
    assert_eq!(line(&mut d), "again\n");
    assert_eq!(
        refused.load(Ordering::SeqCst),
        1,
        "B's stale handle refused once"
    );
    drop((a, c, d));
    server.stop().unwrap();
}

/// `pause` pauses the sender's reading for 150 ms (a connection timer
/// resumes it); `hold` too, leaving the rest of the read unconsumed; `in <ms> <tag>` sets a timer that writes `tag <tag>`;
/// `cancel` sets one and cancels it; anything else is echoed.
#[derive(Default)]
struct Timed {
    fired: Arc<AtomicUsize>,
    worker_ticks: Arc<AtomicUsize>,
}

const RESUME: u64 = u64::MAX;

impl Handler for Timed {
    type Conn = ();

    fn on_accept(&mut self, _conn: &Accepted, _cx: &mut Context<'_>) {}

    fn on_data(
        &mut self,
        _conn: &mut (),
        input: &mut Input<'_>,
        output: &mut Output,
        cx: &mut Context<'_>,
    ) -> Action {
        let me = cx.conn().unwrap();
        while let Some(end) = input.bytes().iter().position(|&b| b == b'\n') {
            let text = std::str::from_utf8(&input.bytes()[..end])
                .unwrap()
                .to_owned();
            input.consume(end + 1);
            let words: Vec<&str> = text.split(' ').collect();
            match words[..] {
                ["pause"] => {
                    cx.pause_reading(me).unwrap();
                    cx.set_timer(Some(me), Duration::from_millis(150), RESUME)
                        .unwrap();
                    // What follows in this read is still answered.
                }
                ["hold"] => {
                    // Pause and leave the rest of this read unconsumed:
                    // resuming must present it without new bytes.
                    cx.pause_reading(me).unwrap();
                    cx.set_timer(Some(me), Duration::from_millis(150), RESUME)
                        .unwrap();
                    break;
                }
                ["in", ms, tag] => {
                    let after = Duration::from_millis(ms.parse().unwrap());
                    cx.set_timer(Some(me), after, tag.parse().unwrap()).unwrap();
                }
                ["cancel"] => {
                    let t = cx
                        .set_timer(Some(me), Duration::from_millis(20), 99)
                        .unwrap();
                    assert!(cx.cancel_timer(t));
                    assert!(!cx.cancel_timer(t), "cancelled once");
                }
                ["worker"] => {
                    cx.set_timer(None, Duration::from_millis(20), 5).unwrap();
                }
                _ => output.extend_from_slice(format!("{text}\n").as_bytes()),
            }
        }
        Action::Continue
    }

    fn on_timer(&mut self, conn: Option<&mut ()>, tag: u64, cx: &mut Context<'_>) {
        match (conn, cx.conn()) {
            (Some(_), Some(me)) if tag == RESUME => cx.resume_reading(me).unwrap(),
            (Some(_), Some(me)) => {
                self.fired.fetch_add(1, Ordering::SeqCst);
                cx.write(me, format!("tag {tag}\n").as_bytes()).unwrap();
            }
            (None, None) => {
                self.worker_ticks.fetch_add(1, Ordering::SeqCst);
            }
            other => panic!("a timer with a connection has its handle: {other:?}"),
        }
    }
}

#[test]
fn timers_fire_with_their_tag_are_cancelled_and_never_fire_for_a_closed_connection() {
    let fired = Arc::new(AtomicUsize::new(0));
    let ticks = Arc::new(AtomicUsize::new(0));
    let (f, t) = (Arc::clone(&fired), Arc::clone(&ticks));
    let server = TestServer::start(Server::builder().workers(1), move |_| Timed {
        fired: Arc::clone(&f),
        worker_ticks: Arc::clone(&t),
    });
    let mut c = BufReader::new(server.connect());
    let start = Instant::now();
    c.get_mut()
        .write_all(b"in 60 7\ncancel\nworker\nhello\n")
        .unwrap();
    assert_eq!(line(&mut c), "hello\n");
    assert_eq!(line(&mut c), "tag 7\n");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    // The cancelled one never fires; the worker timer did.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(fired.load(Ordering::SeqCst), 1);
    assert_eq!(ticks.load(Ordering::SeqCst), 1);

    // A connection that closes before its timer: the timer never fires.
    let mut gone = server.connect();
    gone.write_all(b"in 100 8\n").unwrap();
    drop(gone);
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(
        fired.load(Ordering::SeqCst),
        1,
        "no timer for a closed connection"
    );
    server.stop().unwrap();
}

#[test]
fn pausing_reading_holds_the_bytes_until_resumed() {
    let server = TestServer::start(Server::builder().workers(1), |_| Timed::default());
    let mut c = BufReader::new(server.connect());
    c.get_mut().write_all(b"pause\n").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let start = Instant::now();
    c.get_mut().write_all(b"after\n").unwrap();
    assert_eq!(line(&mut c), "after\n");
    let held = start.elapsed();
    assert!(
        held >= Duration::from_millis(100),
        "answered after {held:?}: reading was not paused"
    );
    server.stop().unwrap();
}

#[test]
fn resuming_presents_input_held_unconsumed_without_new_bytes() {
    let server = TestServer::start(Server::builder().workers(1), |_| Timed::default());
    let mut c = BufReader::new(server.connect());
    let start = Instant::now();
    // One write: `after` arrives with `hold` and waits in the input.
    c.get_mut().write_all(b"hold\nafter\n").unwrap();
    assert_eq!(line(&mut c), "after\n");
    let held = start.elapsed();
    assert!(
        held >= Duration::from_millis(100),
        "answered after {held:?}: reading was not paused"
    );
    server.stop().unwrap();
}

/// `stream <n>` sends n bytes, a chunk per `on_writable`.
struct Streamer {
    writables: Arc<AtomicUsize>,
    high_water: usize,
}

const CHUNK: usize = 16 * 1024;

impl Streamer {
    fn refill(&self, left: &mut usize, output: &mut Output) {
        // Up to the high-water mark: never the whole body at once.
        while *left > 0 && output.len() < self.high_water {
            let n = (*left).min(CHUNK);
            output.extend_from_slice(&vec![b'x'; n]);
            *left -= n;
        }
    }
}

impl Handler for Streamer {
    type Conn = usize; // bytes left to send

    fn on_accept(&mut self, _conn: &Accepted, _cx: &mut Context<'_>) -> usize {
        0
    }

    fn on_data(
        &mut self,
        left: &mut usize,
        input: &mut Input<'_>,
        output: &mut Output,
        _cx: &mut Context<'_>,
    ) -> Action {
        let text = std::str::from_utf8(input.bytes()).unwrap();
        if let Some(n) = text
            .strip_prefix("stream ")
            .and_then(|t| t.trim().parse().ok())
        {
            *left = n;
            input.consume(input.bytes().len());
            self.refill(left, output);
        }
        Action::Continue
    }

    fn on_writable(&mut self, left: &mut usize, output: &mut Output, _cx: &mut Context<'_>) {
        self.writables.fetch_add(1, Ordering::SeqCst);
        self.refill(left, output);
    }
}

#[test]
fn a_large_body_streams_to_a_slow_reader_through_writable_events() {
    const BODY: usize = 8 * 1024 * 1024;
    let writables = Arc::new(AtomicUsize::new(0));
    let w = Arc::clone(&writables);
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .output_low_water(32 * 1024)
            .output_high_water(128 * 1024),
        move |_| Streamer {
            writables: Arc::clone(&w),
            high_water: 128 * 1024,
        },
    );
    let mut c = server.connect();
    c.write_all(b"stream 8388608\n").unwrap();
    // A slow reader: the server holds at most about the high-water mark.
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut slow_reads = 0;
    while got < BODY {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got} bytes");
        assert!(buf[..n].iter().all(|&b| b == b'x'));
        got += n;
        if slow_reads < 20 {
            slow_reads += 1;
            std::thread::sleep(Duration::from_millis(5));
            let out = server.metrics.total().pool_outstanding;
            assert!(out <= 4, "buffers lent while streaming: {out}");
        }
    }
    assert_eq!(got, BODY);
    let calls = writables.load(Ordering::SeqCst);
    assert!(
        calls >= 20,
        "the body went out through writable events ({calls})"
    );
    server.stop().unwrap();
}

/// `hold` pauses the sender; `wake` answers `ok` and resumes the held
/// connection, whose held lines then go to the waker: operations queued by
/// callbacks that operations ran.
#[derive(Default)]
struct Relay {
    held: Option<ConnHandle>,
    waker: Option<ConnHandle>,
}

impl Handler for Relay {
    type Conn = ();

    fn on_accept(&mut self, _conn: &Accepted, _cx: &mut Context<'_>) {}

    fn on_data(
        &mut self,
        _conn: &mut (),
        input: &mut Input<'_>,
        _output: &mut Output,
        cx: &mut Context<'_>,
    ) -> Action {
        let me = cx.conn().unwrap();
        while let Some(end) = input.bytes().iter().position(|&b| b == b'\n') {
            match &input.bytes()[..end] {
                b"hold" => {
                    cx.pause_reading(me).unwrap();
                    self.held = Some(me);
                }
                b"wake" => {
                    self.waker = Some(me);
                    cx.write(me, b"ok\n").unwrap();
                    cx.resume_reading(self.held.take().unwrap()).unwrap();
                }
                line => {
                    let line = [line, b"\n"].concat();
                    cx.write(self.waker.unwrap(), &line).unwrap();
                }
            }
            input.consume(end + 1);
        }
        Action::Continue
    }
}

#[test]
fn operations_queued_while_operations_run_carry_their_own_bytes() {
    let server = TestServer::start(Server::builder().workers(1), |_| Relay::default());
    let mut held = server.connect();
    held.write_all(b"hold\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    held.write_all(b"data\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut waker = BufReader::new(server.connect());
    waker.get_mut().write_all(b"wake\n").unwrap();
    assert_eq!(line(&mut waker), "ok\n");
    assert_eq!(line(&mut waker), "data\n");
    drop((held, waker));
    server.stop().unwrap();
}
