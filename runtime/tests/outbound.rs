//! Outbound connections on the worker's own loop, mailboxes (posts from
//! another thread, a full mailbox refused), and offloaded jobs, on the real
//! runtime.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corelane::{
    Accepted, Action, CloseReason, ConnHandle, ConnectError, Connected, Context, Handler, Input,
    JobPanicked, Message, OffloadError, Origin, Output, PostError, Server,
};
use util::{read_line, TestServer};

/// A TCP tunnel: each client connection gets its own connection to
/// `target`, opened on the worker's loop, and bytes flow both ways. A
/// failed connect is told to the client (`ERR <reason>`) and closes it.
struct Tunnel {
    target: SocketAddr,
    timeout: Duration,
    /// Upstream connections still connecting: their client.
    pending: HashMap<u64, ConnHandle>,
}

enum Side {
    Client { upstream: ConnHandle },
    Upstream { client: ConnHandle },
}

impl Handler for Tunnel {
    type Conn = Side;

    fn on_accept(&mut self, conn: &Accepted, cx: &mut Context<'_>) -> Side {
        let upstream = cx.connect_with_timeout(self.target, self.timeout, conn.id);
        self.pending.insert(upstream.id(), conn.handle);
        Side::Client { upstream }
    }

    fn on_data(
        &mut self,
        side: &mut Side,
        input: &mut Input<'_>,
        _output: &mut Output,
        cx: &mut Context<'_>,
    ) -> Action {
        let to = match side {
            Side::Client { upstream } => *upstream,
            Side::Upstream { client } => *client,
        };
        // Written while the upstream still connects: sent once it is.
        if cx.write(to, input.bytes()).is_err() {
            return Action::Close;
        }
        input.consume(input.bytes().len());
        Action::Continue
    }

    fn on_connected(&mut self, conn: &Connected, _cx: &mut Context<'_>) -> Option<Side> {
        let client = self.pending.remove(&conn.handle.id())?;
        Some(Side::Upstream { client })
    }

    fn on_connect_failed(
        &mut self,
        conn: ConnHandle,
        _tag: u64,
        error: ConnectError,
        cx: &mut Context<'_>,
    ) {
        if let Some(client) = self.pending.remove(&conn.id()) {
            let _ = cx.write(client, format!("ERR {}\n", error.as_str()).as_bytes());
            let _ = cx.close(client);
        }
    }

    fn on_close(&mut self, side: Side, _reason: CloseReason, cx: &mut Context<'_>) {
        let other = match side {
            Side::Client { upstream } => {
                self.pending.remove(&upstream.id());
                upstream
            }
            Side::Upstream { client } => client,
        };
        let _ = cx.close(other);
    }
}

fn tunnel(target: SocketAddr, timeout: Duration) -> TestServer {
    TestServer::start(Server::builder().workers(1), move |_| Tunnel {
        target,
        timeout,
        pending: HashMap::new(),
    })
}

/// An upstream that answers each line with `up: <line>`.
fn line_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                let mut line = String::new();
                while std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) > 0 {
                    if w.write_all(format!("up: {line}").as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

#[test]
fn an_outbound_connection_carries_bytes_both_ways_and_closes_with_its_client() {
    let server = tunnel(line_upstream(), Duration::from_secs(5));
    let mut clients: Vec<TcpStream> = (0..8).map(|_| server.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        // Sent at once: may reach the worker before its upstream connect
        // completed, and must wait for it, not be lost.
        c.write_all(format!("hello {i}\n").as_bytes()).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(read_line(c), format!("up: hello {i}\n"));
        c.write_all(b"again\n").unwrap();
        assert_eq!(read_line(c), "up: again\n");
    }
    let m = server.metrics.total();
    assert_eq!(m.connects, 8);
    assert_eq!(m.connect_failures, 0);
    assert_eq!(m.active, 16, "eight clients and their upstreams");
    drop(clients);
    server.wait_for("all closed", Duration::from_secs(10), |m| m.active == 0);
    server.stop().unwrap();
}

#[test]
fn a_refused_connect_reaches_the_handler_with_its_reason() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = tunnel(closed, Duration::from_secs(5));
    let mut c = server.connect();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_line(&mut c), "ERR refused\n");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after the error");
    drop(c);
    server.wait_for("failure counted", Duration::from_secs(5), |m| {
        m.connect_failures == 1 && m.active == 0
    });
    server.stop().unwrap();
}

#[test]
fn a_connect_that_gets_no_answer_times_out() {
    // A listener that never accepts, its queue filled: further SYNs are
    // dropped, and a connect waits for an answer that never comes.
    let (full, held) = corelane_test_support::net::unanswering_listener();
    let server = tunnel(full, Duration::from_millis(300));
    let mut c = server.connect();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(read_line(&mut c), "ERR timed_out\n");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "timed out after {took:?}"
    );
    server.stop().unwrap();
    drop(held);
}

/// Posts from outside: a message for the worker is broadcast to every
/// connection; one for a connection is written to it. `stall` holds the
/// worker (so its mailbox fills up).
#[derive(Default)]
struct Board {
    members: Vec<ConnHandle>,
    /// Every member's handle, for the test's own thread.
    shared: Arc<Mutex<Vec<ConnHandle>>>,
}

impl Handler for Board {
    type Conn = ConnHandle;

    fn on_accept(&mut self, conn: &Accepted, _cx: &mut Context<'_>) -> ConnHandle {
        self.members.push(conn.handle);
        self.shared.lock().unwrap().push(conn.handle);
        conn.handle
    }

    fn on_data(
        &mut self,
        _me: &mut ConnHandle,
        input: &mut Input<'_>,
        output: &mut Output,
        _cx: &mut Context<'_>,
    ) -> Action {
        if input.bytes().starts_with(b"stall\n") {
            std::thread::sleep(Duration::from_millis(400));
            output.extend_from_slice(b"stalled\n");
        }
        input.consume(input.bytes().len());
        Action::Continue
    }

    fn on_message(
        &mut self,
        conn: Option<&mut ConnHandle>,
        message: Message,
        cx: &mut Context<'_>,
    ) {
        assert_eq!(message.origin, Origin::Outside);
        let text: String = message.downcast().expect("a String");
        match conn {
            Some(me) => cx
                .write(*me, format!("to you: {text}\n").as_bytes())
                .unwrap(),
            None => {
                for &m in &self.members {
                    let _ = cx.write(m, format!("to all: {text}\n").as_bytes());
                }
            }
        }
    }
}

#[test]
fn an_outside_thread_posts_to_a_worker_and_to_a_connection_and_a_full_mailbox_says_so() {
    let handles = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&handles);
    let server = TestServer::start(
        Server::builder().workers(1).mailbox_capacity(2),
        move |_| Board {
            members: Vec::new(),
            shared: Arc::clone(&shared),
        },
    );
    let mut a = server.connect();
    let mut b = server.connect();
    for c in [&mut a, &mut b] {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    server.wait_for("two members", Duration::from_secs(10), |m| m.active == 2);
    let mailboxes = server.shutdown.mailboxes().clone();
    let poster = std::thread::spawn(move || mailboxes.post(0, 1, String::from("news")));
    poster.join().unwrap().unwrap();
    assert_eq!(read_line(&mut a), "to all: news\n");
    assert_eq!(read_line(&mut b), "to all: news\n");
    // To one connection, by its handle.
    let b_handle = handles.lock().unwrap()[1];
    server
        .shutdown
        .mailboxes()
        .post_to(b_handle, 2, String::from("psst"))
        .unwrap();
    assert_eq!(read_line(&mut b), "to you: psst\n");
    // Hold the worker, then post three: the third finds the mailbox full.
    a.write_all(b"stall\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut results = Vec::new();
    for i in 0..3 {
        results.push(server.shutdown.post(0, i, format!("m{i}")));
    }
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    match &results[2] {
        Err(PostError::Full { worker: 0, body }) => {
            assert_eq!(
                body.downcast_ref::<String>().unwrap(),
                "m2",
                "the body comes back"
            );
        }
        other => panic!("expected a full mailbox, got {other:?}"),
    }
    assert_eq!(read_line(&mut a), "stalled\n");
    assert_eq!(read_line(&mut a), "to all: m0\n");
    assert_eq!(read_line(&mut a), "to all: m1\n");
    assert!(matches!(
        server.shutdown.post(7, 0, ()),
        Err(PostError::NoWorker(7))
    ));
    server.wait_for("messages counted", Duration::from_secs(5), |m| {
        m.messages == 4
    });
    drop((a, b));
    server.stop().unwrap();
}

/// `work <n>` offloads a job that sleeps and returns n * 2; `boom` one that
/// panics; `flood` offloads more than the pool takes.
struct Offloader;

const FLOOD: u64 = 1;

impl Offloader {
    fn line(&mut self, line: &str, output: &mut Output, cx: &mut Context<'_>) {
        let me = cx.conn();
        if let Some(n) = line.strip_prefix("work ") {
            let n: u64 = n.parse().unwrap();
            cx.offload(me, 0, move || {
                // Blocking work: the worker's loop goes on meanwhile.
                std::thread::sleep(Duration::from_millis(50));
                n * 2
            })
            .unwrap();
        } else if line == "boom" {
            cx.offload(me, 0, || -> u64 { panic!("the job failed") })
                .unwrap();
        } else if line == "flood" {
            let (mut ok, mut full) = (0, 0);
            for _ in 0..8 {
                match cx.offload(me, FLOOD, || std::thread::sleep(Duration::from_millis(100))) {
                    Ok(()) => ok += 1,
                    Err(OffloadError::Full) => full += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            output.extend_from_slice(format!("flood {ok} {full}\n").as_bytes());
        } else {
            output.extend_from_slice(b"ping\n");
        }
    }
}

impl Handler for Offloader {
    type Conn = ();

    fn on_accept(&mut self, _conn: &Accepted, _cx: &mut Context<'_>) {}

    fn on_data(
        &mut self,
        _conn: &mut (),
        input: &mut Input<'_>,
        output: &mut Output,
        cx: &mut Context<'_>,
    ) -> Action {
        while let Some(end) = input.bytes().iter().position(|&b| b == b'\n') {
            let line = std::str::from_utf8(&input.bytes()[..end])
                .unwrap()
                .to_owned();
            input.consume(end + 1);
            self.line(&line, output, cx);
        }
        Action::Continue
    }

    fn on_message(&mut self, _conn: Option<&mut ()>, message: Message, cx: &mut Context<'_>) {
        assert_eq!(message.origin, Origin::Offload);
        let me = cx.conn().expect("for the connection that asked");
        if message.tag == FLOOD {
            return;
        }
        let reply = match message.downcast::<Result<u64, JobPanicked>>() {
            Ok(Ok(v)) => format!("result {v}\n"),
            Ok(Err(p)) => format!("{p}\n"),
            Err(m) => panic!("unexpected body in {m:?}"),
        };
        cx.write(me, reply.as_bytes()).unwrap();
    }
}

#[test]
fn offloaded_work_returns_to_its_connection_without_holding_the_loop() {
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .offload_threads(1)
            .offload_queue(2),
        |_| Offloader,
    );
    let mut c = server.connect();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"work 21\nping\n").unwrap();
    // The loop answered `ping` while the job slept.
    assert_eq!(read_line(&mut c), "ping\n");
    assert_eq!(read_line(&mut c), "result 42\n");
    c.write_all(b"boom\n").unwrap();
    assert_eq!(
        read_line(&mut c),
        "offloaded job panicked: the job failed\n"
    );
    // One thread and a queue of two: of eight jobs at once, two or three
    // are taken, the rest refused at once.
    c.write_all(b"flood\n").unwrap();
    let flood = read_line(&mut c);
    let counts: Vec<u32> = flood
        .trim()
        .split(' ')
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        (2..=3).contains(&counts[0]) && counts[0] + counts[1] == 8,
        "{flood}"
    );
    // A connection that closes before its job ends: the result is dropped.
    c.write_all(b"work 1\n").unwrap();
    drop(c);
    let mut d = server.connect();
    d.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    d.write_all(b"ping\n").unwrap();
    assert_eq!(read_line(&mut d), "ping\n");
    drop(d);
    server.stop().unwrap();
}
