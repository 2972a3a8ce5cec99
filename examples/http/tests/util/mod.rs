//! Helpers for the HTTP server's tests: an in-process server on an ephemeral
//! port, raw-socket clients, and a response reader.

// Each test binary uses a different part.
#![allow(dead_code, unused_imports)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use corelane::{Server, ServerBuilder};
use corelane_http::{Http, HttpOptions};

pub use corelane_test_support::require::{has_tool, needs};
pub use corelane_test_support::TestServer;

/// How long a test waits for the server's metrics to show something.
pub const WAIT: Duration = Duration::from_secs(10);

/// corelane-http with the default options and two workers.
pub fn start() -> TestServer {
    start_with(Server::builder().workers(2), HttpOptions::default())
}

/// corelane-http on `builder` with `opts`.
pub fn start_with(builder: ServerBuilder, opts: HttpOptions) -> TestServer {
    TestServer::start(builder.max_input(opts.max_input()), Http::factory(opts))
}

/// One parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (Content-Length framed; `head_only` for HEAD).
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Response {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let status: u16 = lines
                .next()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            let headers: Vec<(String, String)> = lines
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.to_owned(), v.trim().to_owned())
                })
                .collect();
            let len: usize = if head_only || status == 100 {
                0
            } else {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap())
            };
            let total = end + 4 + len;
            while buf.len() < total {
                fill(s, buf);
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Response {
                status,
                headers,
                body,
            };
        }
        fill(s, buf);
    }
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 65536];
    let n = s.read(&mut chunk).expect("reading a response");
    assert!(
        n > 0,
        "connection closed mid-response; have {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

/// Sends `req` on a fresh connection, reads one response, and checks that the
/// server then closes the connection (EOF).
pub fn one_shot_then_closed(server: &TestServer, req: &[u8]) -> Response {
    let mut s = server.connect();
    s.write_all(req).unwrap();
    let mut buf = Vec::new();
    let resp = read_response(&mut s, &mut buf, false);
    assert!(
        buf.is_empty(),
        "bytes after the response: {:?}",
        String::from_utf8_lossy(&buf)
    );
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "more bytes after an error response"),
        Err(e) => panic!("expected a clean close after {}, got {e}", resp.status),
    }
    resp
}

/// Runs curl with `args`; returns stdout. Panics with stderr on failure.
pub fn curl(args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
