//! Helpers for the HTTP server's tests: an in-process server on an ephemeral
//! port, raw-socket clients, and a response reader.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corelane::{Metrics, Server, ServerBuilder, ShutdownHandle};
use corelane_http::{Http, HttpOptions};

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics: Metrics,
    shutdown: ShutdownHandle,
    thread: Option<JoinHandle<corelane::Result<()>>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::with(Server::builder().workers(2), HttpOptions::default())
    }

    pub fn with(builder: ServerBuilder, opts: HttpOptions) -> TestServer {
        let server = builder
            .addr("127.0.0.1:0".parse().unwrap())
            .handle_signals(false)
            .max_input(opts.max_input())
            .build(Http::factory(opts))
            .unwrap();
        let addr = server.local_addr();
        let metrics = server.metrics();
        let shutdown = server.shutdown_handle();
        let thread = Some(std::thread::spawn(move || server.run()));
        TestServer {
            addr,
            metrics,
            shutdown,
            thread,
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn wait_for(&self, what: &str, cond: impl Fn(&corelane::WorkerMetrics) -> bool) {
        let start = Instant::now();
        while !cond(&self.metrics.total()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.shutdown_now();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
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

pub fn has_curl() -> bool {
    std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
