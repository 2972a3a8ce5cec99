//! corelane-proxy against real upstreams: `corelane-http` itself, and
//! deliberately broken ones (refusing, never answering, closing mid-body,
//! answering nonsense, dying idle in the pool), each case asserted with its
//! counter.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelane::Server;
use corelane_http::{Http, HttpOptions};
use corelane_proxy::{Proxy, ProxyCounters, ProxyOptions};
use corelane_test_support::TestServer;

struct Setup {
    proxy: TestServer,
    counters: ProxyCounters,
}

fn proxy_to(upstreams: &[SocketAddr], tweak: impl FnOnce(&mut ProxyOptions)) -> Setup {
    let mut opts = ProxyOptions {
        upstreams: upstreams.to_vec(),
        ..ProxyOptions::default()
    };
    tweak(&mut opts);
    let counters = ProxyCounters::new();
    let builder = Server::builder().workers(1).max_input(opts.max_input());
    let proxy = TestServer::start(builder, Proxy::factory(opts, counters.clone()));
    Setup { proxy, counters }
}

fn http_upstream() -> TestServer {
    TestServer::start(
        Server::builder().workers(1),
        Http::factory(HttpOptions::default()),
    )
}

/// A response as the client saw it.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The connection closed right after it.
    closed: bool,
}

/// Reads one response from `s` (Content-Length, chunked, or until close).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Response {
    read_response_to(s, buf, false)
}

/// Reads one response from `s`, to a HEAD request if `head_request` (the
/// head alone, whatever its framing says).
fn read_response_to(s: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Response {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).expect("read");
        assert!(
            n > 0,
            "closed before a response head: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    buf.drain(..head_end);
    let status: u16 = head[9..12].parse().unwrap();
    let lower = head.to_ascii_lowercase();
    let header = |name: &str| {
        lower
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    };
    let fill = |s: &mut TcpStream, buf: &mut Vec<u8>| -> bool {
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        n > 0
    };
    let mut closed = false;
    let body = if head_request {
        Vec::new()
    } else if let Some(len) = header("content-length") {
        let len: usize = len.trim().parse().unwrap();
        while buf.len() < len {
            if !fill(s, buf) {
                closed = true;
                break;
            }
        }
        let n = len.min(buf.len());
        buf.drain(..n).collect()
    } else if header("transfer-encoding").is_some() {
        let mut body = Vec::new();
        loop {
            while !buf.windows(2).any(|w| w == b"\r\n") {
                assert!(fill(s, buf), "closed inside a chunked body");
            }
            let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(
                std::str::from_utf8(&buf[..line_end])
                    .unwrap()
                    .split(';')
                    .next()
                    .unwrap(),
                16,
            )
            .unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                assert!(fill(s, buf), "closed inside a chunk");
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        while fill(s, buf) {}
        closed = true;
        std::mem::take(buf)
    };
    Response {
        status,
        head,
        body,
        closed,
    }
}

fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    read_response(&mut s, &mut Vec::new())
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

/// What a scripted upstream does with one request.
enum Reply {
    /// Sends these bytes and keeps the connection.
    Send(Vec<u8>),
    /// Sends these bytes, then closes.
    SendThenClose(Vec<u8>),
    /// Closes without answering.
    Close,
    /// Never answers (holds the connection open until the test ends).
    Stall,
}

/// An upstream on its own threads: `answer(connection, request, bytes)`
/// says what each request gets. Counts the requests it read.
fn scripted(
    answer: impl Fn(usize, usize, &[u8]) -> Reply + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, seen, _) = scripted_log(false, answer);
    (addr, seen)
}

/// A request as a scripted upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    /// The connection it came on (0 the first accepted).
    conn: usize,
    /// Its request line.
    line: String,
    /// Bytes of the next request were there before it was answered (it was
    /// pipelined behind); with `wait`, looked for over 50 ms.
    ahead: bool,
}

/// [`scripted`], also logging each request read.
fn scripted_log(
    wait: bool,
    answer: impl Fn(usize, usize, &[u8]) -> Reply + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<Seen>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let answer = Arc::new(answer);
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = Arc::clone(&seen);
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = Arc::clone(&log);
    std::thread::spawn(move || {
        for (conn, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { return };
            let answer = Arc::clone(&answer);
            let seen = Arc::clone(&seen2);
            let log = Arc::clone(&log2);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                for req in 0.. {
                    let Some(raw) = read_request(&mut s, &mut buf) else {
                        return;
                    };
                    let mut ahead = !buf.is_empty();
                    if wait && !ahead {
                        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                        ahead = s.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
                        s.set_read_timeout(None).unwrap();
                    }
                    let line = String::from_utf8_lossy(&raw)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    log.lock().unwrap().push(Seen { conn, line, ahead });
                    seen.fetch_add(1, Ordering::SeqCst);
                    match answer(conn, req, &raw) {
                        Reply::Send(b) => {
                            if s.write_all(&b).is_err() {
                                return;
                            }
                        }
                        Reply::SendThenClose(b) => {
                            let _ = s.write_all(&b);
                            return;
                        }
                        Reply::Close => return,
                        Reply::Stall => {
                            std::thread::sleep(Duration::from_secs(30));
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, seen, log)
}

/// One request (head and Content-Length body) from `s`.
fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= i + 4 + len {
                return Some(buf.drain(..i + 4 + len).collect());
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn ok(body: &str) -> Reply {
    Reply::Send(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[test]
fn requests_of_every_framing_are_forwarded_and_pooled_connections_reused() {
    let up = http_upstream();
    let p = proxy_to(&[up.addr], |_| {});
    let r = request(p.proxy.addr, &get("/plaintext"));
    assert_eq!((r.status, &r.body[..]), (200, &b"Hello, World!"[..]));
    let r = request(
        p.proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    // A chunked request body arrives at the upstream re-framed.
    let r = request(
        p.proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
    );
    assert_eq!((r.status, &r.body[..]), (200, &b"Wikipedia"[..]));
    // HEAD: the head only, though it names a length.
    let mut s = p.proxy.connect();
    s.write_all(
        b"HEAD /plaintext HTTP/1.1\r\nHost: t\r\n\r\nGET /json HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    // Pipelined behind the HEAD: answered after it, in order.
    let mut buf = Vec::new();
    let mut all = Vec::new();
    while !String::from_utf8_lossy(&all).contains("Hello, World!\"}") {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0);
        all.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(
        text.find("text/plain") < text.find("application/json"),
        "{text}"
    );
    buf.clear();
    // Keep-alive on both sides: 100 requests on one client connection use
    // one pooled upstream connection.
    for _ in 0..100 {
        s.write_all(&get("/plaintext")).unwrap();
        let r = read_response(&mut s, &mut buf);
        assert_eq!(r.status, 200);
    }
    let c = p.counters.worker(0);
    assert!(c.reused.load(Ordering::Relaxed) >= 100);
    assert_eq!(c.bad_gateway.load(Ordering::Relaxed), 0);
    assert_eq!(
        up.metrics.total().accepted,
        1,
        "one upstream connection served everything"
    );
}

#[test]
fn hop_by_hop_headers_never_cross_and_forwarding_headers_are_added() {
    // Answers with the request head it received.
    let (addr, _) = scripted(|_, _, raw| {
        let head = String::from_utf8_lossy(raw).into_owned();
        Reply::Send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: X-Up-Private\r\nX-Up-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Up-Public: 1\r\n\r\n{head}",
                head.len()
            )
            .into_bytes(),
        )
    });
    let p = proxy_to(&[addr], |o| o.via = true);
    let r = request(
        p.proxy.addr,
        b"GET /h HTTP/1.1\r\nHost: t\r\nConnection: X-Private\r\nX-Private: secret\r\nTE: trailers\r\nUpgrade: websocket\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n",
    );
    let seen = String::from_utf8(r.body).unwrap().to_ascii_lowercase();
    for gone in ["x-private", "te:", "upgrade", "connection"] {
        assert!(!seen.contains(gone), "{gone} reached the upstream: {seen}");
    }
    assert!(
        seen.contains("x-forwarded-for: 192.0.2.1, 127.0.0.1"),
        "{seen}"
    );
    assert!(seen.contains("via: 1.1 corelane"), "{seen}");
    let head = r.head.to_ascii_lowercase();
    assert!(
        !head.contains("x-up-private") && !head.contains("keep-alive"),
        "{head}"
    );
    assert!(
        head.contains("x-up-public: 1") && head.contains("via: 1.1 corelane"),
        "{head}"
    );
}

/// An address nothing listens on (bound, then let go).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_refused_or_unanswered_connect_is_a_502() {
    let closed = closed_port();
    let p = proxy_to(&[closed], |_| {});
    let r = request(p.proxy.addr, &get("/"));
    assert_eq!(r.status, 502);
    assert_eq!(
        p.counters
            .worker(0)
            .connect_failures
            .load(Ordering::Relaxed),
        1
    );

    // A listener that never accepts, its queue full: SYNs go unanswered.
    let (full, held) = corelane_test_support::net::unanswering_listener();
    let p = proxy_to(&[full], |o| o.connect_timeout = Duration::from_millis(300));
    let started = Instant::now();
    let r = request(p.proxy.addr, &get("/"));
    assert_eq!(r.status, 502);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // The client's connection stays usable.
    assert!(!r.closed);
    drop(held);
}

#[test]
fn an_upstream_that_never_answers_is_a_504_and_the_worker_keeps_serving() {
    let (stalled, _) = scripted(|_, _, _| Reply::Stall);
    let up = http_upstream();
    let p = proxy_to(&[stalled, up.addr], |o| {
        o.response_timeout = Duration::from_millis(400);
    });
    // Round robin: the first request goes to the second upstream (fine),
    // the next to the stalled one.
    let mut slow = p.proxy.connect();
    let mut fast = p.proxy.connect();
    fast.write_all(&get("/plaintext")).unwrap();
    assert_eq!(read_response(&mut fast, &mut Vec::new()).status, 200);
    let started = Instant::now();
    slow.write_all(&get("/plaintext")).unwrap();
    // Meanwhile others are served: the stall holds nothing but its request.
    fast.write_all(&get("/plaintext")).unwrap();
    assert_eq!(read_response(&mut fast, &mut Vec::new()).status, 200);
    let r = read_response(&mut slow, &mut Vec::new());
    assert_eq!(r.status, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        p.counters.worker(0).gateway_timeout.load(Ordering::Relaxed),
        1
    );
}

#[test]
fn an_upstream_closing_mid_body_closes_the_client_never_a_short_body_as_whole() {
    let (addr, _) = scripted(|_, _, _| {
        Reply::SendThenClose(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..".to_vec())
    });
    let p = proxy_to(&[addr], |_| {});
    let r = request(p.proxy.addr, &get("/"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"only ten..");
    assert!(r.closed, "the client must see the connection end, not wait");
    let (chunked, _) = scripted(|_, _, _| {
        Reply::SendThenClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
        )
    });
    let p2 = proxy_to(&[chunked], |_| {});
    let mut s = TcpStream::connect(p2.proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&get("/")).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.ends_with("5\r\nhello\r\n"),
        "no terminating chunk invented: {text}"
    );
    assert!(eventually(|| p
        .counters
        .worker(0)
        .truncated
        .load(Ordering::Relaxed)
        == 1));
    assert!(eventually(|| p2
        .counters
        .worker(0)
        .truncated
        .load(Ordering::Relaxed)
        == 1));
}

fn eventually(cond: impl FnMut() -> bool) -> bool {
    corelane_test_support::eventually(Duration::from_secs(5), cond)
}

#[test]
fn malformed_or_ambiguous_responses_are_a_502() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"NOT HTTP AT ALL\r\n\r\n",
    ] {
        let bad = bad.to_vec();
        let (addr, _) = scripted(move |_, _, _| Reply::SendThenClose(bad.clone()));
        let p = proxy_to(&[addr], |_| {});
        let r = request(p.proxy.addr, &get("/"));
        assert_eq!(r.status, 502, "{}", r.head);
        assert_eq!(
            p.counters.worker(0).bad_responses.load(Ordering::Relaxed),
            1
        );
    }
    // A head that was fine went out before its body proved bad: the
    // client is closed, the body left unfinished.
    let (addr, _) = scripted(|_, _, _| {
        Reply::SendThenClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        )
    });
    let p = proxy_to(&[addr], |_| {});
    let mut s = TcpStream::connect(p.proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&get("/")).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.1 200") && !text.contains("0\r\n\r\n"),
        "{text}"
    );
    assert_eq!(
        p.counters.worker(0).bad_responses.load(Ordering::Relaxed),
        1
    );
}

#[test]
fn an_idempotent_request_on_a_pooled_connection_found_dead_is_sent_again() {
    // Each connection answers its first request and closes at the second
    // without answering (as an upstream whose keep-alive timer fired).
    let (addr, seen) = scripted(|_, req, _| if req == 0 { ok("fresh") } else { Reply::Close });
    let p = proxy_to(&[addr], |_| {});
    let mut s = p.proxy.connect();
    let mut buf = Vec::new();
    for _ in 0..3 {
        s.write_all(&get("/")).unwrap();
        let r = read_response(&mut s, &mut buf);
        assert_eq!((r.status, &r.body[..]), (200, &b"fresh"[..]));
    }
    let c = p.counters.worker(0);
    assert_eq!(c.retries.load(Ordering::Relaxed), 2);
    assert_eq!(seen.load(Ordering::SeqCst), 5);
    // Not so a POST: it may have had its effect.
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
        .unwrap();
    let r = read_response(&mut s, &mut buf);
    assert_eq!(r.status, 502);
    assert_eq!(c.retries.load(Ordering::Relaxed), 2);
}

#[test]
fn ambiguous_requests_are_refused_and_never_reach_the_upstream() {
    let (addr, seen) = scripted(|_, _, _| ok("x"));
    let p = proxy_to(&[addr], |_| {});
    for smuggle in [
        &b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        let r = request(p.proxy.addr, smuggle);
        assert!(r.status == 400 || r.status == 501, "{}", r.head);
        assert!(r.head.to_ascii_lowercase().contains("connection: close"), "{}", r.head);
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    assert_eq!(p.counters.worker(0).bad_requests.load(Ordering::Relaxed), 4);
}

#[test]
fn a_slow_client_does_not_make_the_proxy_buffer_the_whole_response() {
    const SIZE: usize = 64 << 20;
    let written = Arc::new(AtomicUsize::new(0));
    let w = Arc::clone(&written);
    // Streams SIZE bytes, counting what the proxy has taken.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let _ = read_request(&mut s, &mut Vec::new());
        s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes())
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < SIZE {
            let Ok(n) = s.write(&chunk[..chunk.len().min(SIZE - sent)]) else {
                return;
            };
            sent += n;
            w.store(sent, Ordering::SeqCst);
        }
    });
    let p = proxy_to(&[addr], |_| {});
    let mut s = p.proxy.connect();
    s.write_all(&get("/big")).unwrap();
    // The client reads nothing for a while: the proxy takes its window
    // and the sockets' buffers fill, then the upstream is held.
    std::thread::sleep(Duration::from_millis(1500));
    let taken = written.load(Ordering::SeqCst);
    assert!(
        taken < 24 << 20,
        "the proxy took {taken} bytes for a client that read nothing"
    );
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    let started = Instant::now();
    while got < SIZE + 30 {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0);
        got += n;
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    assert_eq!(written.load(Ordering::SeqCst), SIZE);
}

#[test]
fn a_burst_wider_than_the_pool_keeps_its_connections_until_a_tick_finds_them_unused() {
    let up = http_upstream();
    let p = proxy_to(&[up.addr], |o| o.pool_idle = 2);
    // Eight clients at once, round after round: eight upstream connections
    // in use together, six more than the pool keeps for good. With a fixed
    // cap, six would be closed after every round and opened for the next.
    let mut clients: Vec<TcpStream> = (0..8).map(|_| p.proxy.connect()).collect();
    let mut bufs = vec![Vec::new(); clients.len()];
    for _ in 0..20 {
        for c in &mut clients {
            c.write_all(&get("/plaintext")).unwrap();
        }
        for (c, buf) in clients.iter_mut().zip(&mut bufs) {
            assert_eq!(read_response(c, buf).status, 200);
        }
    }
    let accepted = up.metrics.total().accepted;
    assert!(
        accepted <= 8,
        "{accepted} upstream connections for 8 concurrent clients"
    );
    // Unused for a whole tick (a second), those beyond the pool close.
    let c = p.counters.worker(0);
    assert!(
        eventually(|| up.metrics.total().active == 2),
        "upstream still has {} connections open; {} trimmed",
        up.metrics.total().active,
        c.pool_trimmed.load(Ordering::Relaxed)
    );
    assert_eq!(c.pool_trimmed.load(Ordering::Relaxed), accepted - 2);
    // The two kept still serve.
    for (c, buf) in clients.iter_mut().zip(&mut bufs).take(2) {
        c.write_all(&get("/plaintext")).unwrap();
        assert_eq!(read_response(c, buf).status, 200);
    }
    assert_eq!(up.metrics.total().accepted, accepted);
}

/// Answers each request with its path as the body (a HEAD with the head
/// only).
fn path_reply(raw: &[u8], close: bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let path = text.split(' ').nth(1).unwrap_or("?").to_owned();
    let close = if close { "Connection: close\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{close}\r\n",
        path.len()
    );
    if text.starts_with("HEAD ") {
        head.into_bytes()
    } else {
        (head + &path).into_bytes()
    }
}

/// Sends `raw` (requests pipelined in one write) and reads `n` responses.
fn pipelined(addr: SocketAddr, raw: &str, n: usize) -> Vec<Response> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let heads: Vec<bool> = raw
        .split("\r\n\r\n")
        .map(|r| r.starts_with("HEAD "))
        .collect();
    let mut buf = Vec::new();
    (0..n)
        .map(|i| read_response_to(&mut s, &mut buf, heads[i]))
        .collect()
}

fn bodies(responses: &[Response]) -> Vec<String> {
    responses
        .iter()
        .map(|r| format!("{} {}", r.status, String::from_utf8_lossy(&r.body)))
        .collect()
}

#[test]
fn pipelined_idempotent_requests_go_ahead_on_one_upstream_connection_and_come_back_in_order() {
    let (addr, _, log) = scripted_log(false, |_, _, raw| Reply::Send(path_reply(raw, false)));
    let p = proxy_to(&[addr], |_| {});
    let raw: String = ["/1", "/2", "/3", "/4", "/5", "/6", "/7", "/8"]
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let method = if i == 2 { "HEAD" } else { "GET" };
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n")
        })
        .collect();
    let got = pipelined(p.proxy.addr, &raw, 8);
    assert_eq!(
        bodies(&got),
        ["200 /1", "200 /2", "200 ", "200 /4", "200 /5", "200 /6", "200 /7", "200 /8"]
    );
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 8);
    assert!(log.iter().all(|s| s.conn == 0), "{log:?}");
    // Sent in one write: each was in the upstream's hands before the one
    // ahead of it was answered.
    assert!(log[..7].iter().all(|s| s.ahead), "{log:?}");
    assert_eq!(p.counters.worker(0).proxied.load(Ordering::Relaxed), 8);
}

#[test]
fn a_request_that_is_not_idempotent_is_neither_pipelined_nor_followed() {
    let (addr, _, log) = scripted_log(true, |_, _, raw| Reply::Send(path_reply(raw, false)));
    let p = proxy_to(&[addr], |_| {});
    let got = pipelined(
        p.proxy.addr,
        "GET /a HTTP/1.1\r\nHost: t\r\n\r\nPOST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\nHost: t\r\n\r\n",
        3,
    );
    assert_eq!(bodies(&got), ["200 /a", "200 /b", "200 /c"]);
    let log = log.lock().unwrap();
    let lines: Vec<&str> = log.iter().map(|s| s.line.as_str()).collect();
    assert_eq!(
        lines,
        ["GET /a HTTP/1.1", "POST /b HTTP/1.1", "GET /c HTTP/1.1"]
    );
    assert!(log.iter().all(|s| !s.ahead), "{log:?}");
}

#[test]
fn with_a_pipeline_of_one_requests_go_one_at_a_time() {
    let (addr, _, log) = scripted_log(true, |_, _, raw| Reply::Send(path_reply(raw, false)));
    let p = proxy_to(&[addr], |o| o.pipeline = 1);
    let raw = "GET /1 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(3);
    let got = pipelined(p.proxy.addr, &raw, 3);
    assert_eq!(bodies(&got), ["200 /1", "200 /1", "200 /1"]);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|s| !s.ahead && s.conn == 0), "{log:?}");
}

#[test]
fn pipelined_requests_left_unanswered_by_a_closing_upstream_are_sent_again() {
    let raw: String = (1..=4)
        .map(|i| format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    // Each connection answers one request, then closes: without a word,
    // and saying so in its answer.
    for warned in [false, true] {
        let (addr, seen, log) = scripted_log(false, move |_, _, raw| {
            Reply::SendThenClose(path_reply(raw, warned))
        });
        let p = proxy_to(&[addr], |_| {});
        let got = pipelined(p.proxy.addr, &raw, 4);
        assert_eq!(
            bodies(&got),
            ["200 /1", "200 /2", "200 /3", "200 /4"],
            "warned: {warned}"
        );
        assert!(got.iter().all(|r| !r.closed));
        assert_eq!(seen.load(Ordering::SeqCst), 4);
        let conns: Vec<usize> = log.lock().unwrap().iter().map(|s| s.conn).collect();
        assert_eq!(conns, [0, 1, 2, 3], "warned: {warned}");
        let c = p.counters.worker(0);
        // A close announced is no failure: the rest simply go elsewhere.
        let retries = if warned { 0 } else { 3 };
        assert_eq!(
            c.retries.load(Ordering::Relaxed),
            retries,
            "warned: {warned}"
        );
        assert_eq!(c.bad_gateway.load(Ordering::Relaxed), 0);
    }
    // An upstream that answers nothing: each request gets its 502, in
    // order, and the client's connection stays.
    let (addr, _) = scripted(|_, _, _| Reply::Close);
    let p = proxy_to(&[addr], |_| {});
    let got = pipelined(p.proxy.addr, &raw, 4);
    assert!(got.iter().all(|r| r.status == 502 && !r.closed), "{got:?}");
    assert_eq!(p.counters.worker(0).bad_gateway.load(Ordering::Relaxed), 4);
}

#[test]
fn a_failure_in_the_middle_of_a_pipeline_answers_that_request_and_the_rest_go_on() {
    let raw: String = (1..=3)
        .map(|i| format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    // The first connection answers /1, then stalls: /2 times out (504),
    // and /3 goes again on a new connection, which answers it.
    let (addr, _, log) = scripted_log(false, |conn, req, raw| match (conn, req) {
        (0, 0) | (1, _) => Reply::Send(path_reply(raw, false)),
        _ => Reply::Stall,
    });
    let p = proxy_to(&[addr], |o| o.response_timeout = Duration::from_millis(300));
    let got = pipelined(p.proxy.addr, &raw, 3);
    assert_eq!(bodies(&got), ["200 /1", "504 Gateway Timeout\n", "200 /3"]);
    assert!(got.iter().all(|r| !r.closed));
    let lines: Vec<(usize, String)> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.conn, s.line.clone()))
        .collect();
    assert_eq!(
        lines[..2],
        [(0, "GET /1 HTTP/1.1".into()), (0, "GET /2 HTTP/1.1".into())]
    );
    assert!(lines.contains(&(1, "GET /3 HTTP/1.1".into())), "{lines:?}");
    assert_eq!(
        p.counters.worker(0).gateway_timeout.load(Ordering::Relaxed),
        1
    );
    // A malformed answer to /2: a 502 for it, /3 answered on another
    // connection.
    let (addr, _) = scripted(|conn, req, raw| match (conn, req) {
        (0, 1) => Reply::Send(b"NOT HTTP AT ALL\r\n\r\n".to_vec()),
        _ => Reply::Send(path_reply(raw, false)),
    });
    let p = proxy_to(&[addr], |_| {});
    let got = pipelined(p.proxy.addr, &raw, 3);
    assert_eq!(bodies(&got), ["200 /1", "502 Bad Gateway\n", "200 /3"]);
    let c = p.counters.worker(0);
    assert_eq!(c.bad_responses.load(Ordering::Relaxed), 1);
    assert_eq!(c.proxied.load(Ordering::Relaxed), 2);
}

#[test]
fn answers_of_the_proxy_s_own_to_a_head_request_have_no_body() {
    let closed = closed_port();
    let p = proxy_to(&[closed], |_| {});
    // A 502 to a HEAD, then to a GET, then the health route both ways: if
    // a body followed the HEAD's head, the next response would start
    // inside it.
    let got = pipelined(
        p.proxy.addr,
        "HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
        2,
    );
    assert_eq!(bodies(&got), ["502 ", "502 Bad Gateway\n"]);
    assert!(got[0]
        .head
        .to_ascii_lowercase()
        .contains("content-length: 12"));
    let got = pipelined(
        p.proxy.addr,
        "HEAD /_proxy/healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /_proxy/healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        2,
    );
    assert_eq!(bodies(&got), ["200 ", "200 ok\n"]);
}
