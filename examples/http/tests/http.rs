//! The HTTP server against real clients: curl, and raw sockets for what curl
//! will not send (pipelining, split requests, hostile bytes).

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use corelane::{CloseReason, Server};
use corelane_http::HttpOptions;
use util::{curl, one_shot_then_closed, read_response};

fn needs_curl() -> bool {
    util::needs(util::has_tool("curl"), "curl")
}

#[test]
fn curl_keep_alive_head_and_post() {
    if !needs_curl() {
        return;
    }
    let server = util::start();
    // Two URLs in one curl run share one keep-alive connection.
    let out = curl(&[&server.url("/plaintext"), &server.url("/json")]);
    assert_eq!(out, "Hello, World!{\"message\":\"Hello, World!\"}");
    server.wait_for("one connection", util::WAIT, |m| m.accepted == 1);

    let head = curl(&["-I", &server.url("/plaintext")]);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Length: 13\r\n"));
    assert!(head.contains("Server: corelane\r\n"));
    assert!(head.contains("Date: "));

    let echoed = curl(&["--data-binary", "the body", &server.url("/echo")]);
    assert_eq!(echoed, "the body");
    let big: String = (0..100_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let path = std::env::temp_dir().join(format!("corelane-http-body-{}", std::process::id()));
    std::fs::write(&path, &big).unwrap();
    let chunked = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", path.display()),
        &server.url("/echo"),
    ]);
    std::fs::remove_file(&path).unwrap();
    assert!(
        chunked == big,
        "chunked echo differs ({} bytes)",
        chunked.len()
    );

    let json = curl(&["-i", &server.url("/json")]);
    assert!(
        json.contains("Content-Type: application/json\r\n"),
        "{json}"
    );
    let metrics = curl(&[&server.url("/metrics")]);
    assert!(
        metrics.contains("corelane_connections_accepted_total{worker=\"0\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("corelane_http_requests_total{worker=\"1\"}"));
    // Two workers: eBPF least-loaded where permitted (root, as in CI), with
    // the program's counters; classic BPF otherwise.
    let ebpf = metrics.contains("corelane_steering_info{mode=\"least-loaded\"} 1");
    let classic = metrics.contains("corelane_steering_info{mode=\"classic-cpu\"} 1");
    assert!(ebpf || classic, "{metrics}");
    assert_eq!(
        metrics.contains("corelane_steering_selected_total{worker=\"1\"}"),
        ebpf,
        "{metrics}"
    );
}

#[test]
fn sixteen_pipelined_requests_are_answered_in_order_with_one_write() {
    let server = util::start_with(Server::builder().workers(1), HttpOptions::default());
    let mut s = server.connect();
    // Warm up so the connection is accepted and idle.
    s.write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf, false).status, 200);
    server.wait_for("first reply written", util::WAIT, |m| m.writes == 1);

    let mut batch = Vec::new();
    for i in 0..16 {
        let path = if i % 2 == 0 { "/plaintext" } else { "/json" };
        batch.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    s.write_all(&batch).unwrap();
    for i in 0..16 {
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!(r.status, 200);
        let want: &[u8] = if i % 2 == 0 {
            b"Hello, World!"
        } else {
            br#"{"message":"Hello, World!"}"#
        };
        assert_eq!(r.body, want, "response {i} out of order");
    }
    // Metrics are published at the end of the worker's loop turn, which may
    // come after the client has read the replies.
    server.wait_for("the turn's metrics", util::WAIT, |m| {
        m.reads >= 2 && m.writes >= 2
    });
    std::thread::sleep(Duration::from_millis(50));
    let m = server.metrics.total();
    assert_eq!(m.reads, 2, "the 16 requests arrived in one read");
    assert_eq!(m.writes, 2, "and their 16 replies left in one write");
}

#[test]
fn a_request_split_across_many_writes_is_served() {
    let server = util::start();
    let mut s = server.connect();
    s.set_nodelay(true).unwrap();
    let req = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world";
    for piece in req.chunks(3) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
}

#[test]
fn chunked_bodies_with_extensions_and_trailers() {
    let server = util::start();
    let mut s = server.connect();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: dropped\r\n\r\n\
          GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello world"[..]));
    assert!(r.header("X-Trailer").is_none());
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"Hello, World!"[..]));
}

#[test]
fn head_routes_statuses_and_allow() {
    let server = util::start();
    let mut s = server.connect();
    let mut buf = Vec::new();
    let mut ask = |req: &str, head_only: bool| {
        s.write_all(req.as_bytes()).unwrap();
        read_response(&mut s, &mut buf, head_only)
    };
    let r = ask("HEAD /json HTTP/1.1\r\nHost: x\r\n\r\n", true);
    assert_eq!((r.status, r.header("Content-Length")), (200, Some("27")));
    let r = ask("GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert!(r.body.starts_with(b"corelane"));
    let r = ask("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert_eq!(r.status, 404);
    let r = ask(
        "POST /plaintext HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
    let r = ask("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
    let r = ask(
        "GET http://example.com/plaintext?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 200, "absolute-form target");
}

#[test]
fn connection_close_both_ways_and_http_1_0() {
    let server = util::start();
    // Client asks to close: the response says so and the server closes.
    let r = one_shot_then_closed(
        &server,
        b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    // HTTP/1.0 closes by default...
    let r = one_shot_then_closed(&server, b"GET /plaintext HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    // ...and stays open when it asks for keep-alive.
    let mut s = server.connect();
    let mut buf = Vec::new();
    for _ in 0..3 {
        s.write_all(b"GET /json HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!(
            (r.status, r.header("Connection")),
            (200, Some("keep-alive"))
        );
    }
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = util::start();
    let mut s = server.connect();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf, false).status, 100);
    s.write_all(b"body").unwrap();
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));
}

/// Each hostile or malformed request: its status, then the connection closes,
/// and another client is served throughout.
#[test]
fn bad_input_gets_its_status_and_the_connection_closes() {
    let mut opts = HttpOptions::default();
    opts.limits.max_head = 4096;
    opts.limits.max_body = 1000;
    let server = util::start_with(Server::builder().workers(2), opts);
    let mut bystander = server.connect();
    let mut bbuf = Vec::new();
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "a".repeat(5000)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("bad header name", b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n".to_vec(), 400),
        ("missing host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("header section too large", long_header.into_bytes(), 431),
        ("body too large", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n".to_vec(), 413),
        (
            "chunked body too large",
            [&b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n"[..], &[b'a'; 1001][..]]
                .concat(),
            413,
        ),
        ("unknown transfer coding", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 501),
        ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), 505),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n".to_vec(), 505),
        (
            "content-length with transfer-encoding",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "repeated content-length",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab".to_vec(),
            400,
        ),
        ("non-numeric content-length", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(), 400),
        (
            "negative content-length",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "bad chunk size",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "bare LF in chunk framing",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "bare CR in chunk framing",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\rab\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "chunk data without CRLF",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n".to_vec(), 400),
        ("unsupported expectation", b"GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n".to_vec(), 417),
    ];
    for (what, req, status) in cases {
        let r = one_shot_then_closed(&server, &req);
        assert_eq!(r.status, status, "{what}");
        assert_eq!(r.header("Connection"), Some("close"), "{what}");
        bystander
            .write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(
            read_response(&mut bystander, &mut bbuf, false).status,
            200,
            "after {what}"
        );
    }
}

#[test]
fn silent_and_byte_at_a_time_clients_are_closed_at_the_header_timeout() {
    let server = util::start_with(
        Server::builder()
            .workers(1)
            .header_timeout(Some(Duration::from_millis(300))),
        HttpOptions::default(),
    );
    let mut silent = server.connect();
    let mut trickle = server.connect();
    trickle.set_nodelay(true).unwrap();
    let start = std::time::Instant::now();
    let header = b"GET /plaintext HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    // One byte every 10 ms for 1.5 s: far past the 300 ms header timeout.
    for b in header.iter().chain(std::iter::repeat(&b'a')).take(150) {
        if trickle.write_all(&[*b]).is_err() {
            break; // closed (reset) by the server
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    assert!(rest.is_empty());
    server.wait_for("both closed at the header timeout", util::WAIT, |m| {
        m.closed(CloseReason::HeaderTimeout) == 2
    });
    assert!(start.elapsed() < Duration::from_secs(3));
}
