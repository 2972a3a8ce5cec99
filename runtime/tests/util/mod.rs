//! Shared helpers for the runtime's integration tests: servers started on
//! 127.0.0.1 ephemeral ports in this process, and two test protocols.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corelane::{
    Accepted, Action, CloseReason, Handler, Input, Metrics, Output, ServerBuilder, ShutdownHandle,
    WorkerInfo,
};

/// A server running on its own threads; shut down when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics: Metrics,
    pub shutdown: ShutdownHandle,
    thread: Option<JoinHandle<corelane::Result<()>>>,
}

impl TestServer {
    /// Builds from `builder` (address forced to 127.0.0.1:0, signals off) and runs.
    pub fn start<F, H>(builder: ServerBuilder, factory: F) -> TestServer
    where
        F: Fn(&WorkerInfo) -> H + Send + Sync + 'static,
        H: Handler,
    {
        TestServer::start_at(builder, "127.0.0.1:0".parse().unwrap(), factory)
    }

    /// Builds from `builder` on `addr` (signals off) and runs.
    pub fn start_at<F, H>(builder: ServerBuilder, addr: SocketAddr, factory: F) -> TestServer
    where
        F: Fn(&WorkerInfo) -> H + Send + Sync + 'static,
        H: Handler,
    {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let server = builder
            .addr(addr)
            .handle_signals(false)
            .build(factory)
            .expect("server builds");
        let addr = server.local_addr();
        let metrics = server.metrics();
        let shutdown = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.run());
        TestServer {
            addr,
            metrics,
            shutdown,
            thread: Some(thread),
        }
    }

    /// Starts a graceful shutdown and waits for `run` to return.
    pub fn stop(mut self) -> corelane::Result<()> {
        self.shutdown.shutdown();
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("run() does not panic")
    }

    /// Waits for `run` to return on its own (after a handover), at most
    /// `limit`; `None` if it is still running.
    pub fn finished(&mut self, limit: Duration) -> Option<corelane::Result<()>> {
        let start = Instant::now();
        while !self.thread.as_ref()?.is_finished() {
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(self.thread.take()?.join().expect("run() does not panic"))
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Waits until `cond` holds for the summed metrics, or panics after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&corelane::WorkerMetrics) -> bool,
    ) {
        let start = Instant::now();
        loop {
            let total = self.metrics.total();
            if cond(&total) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}: {total:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shutdown.shutdown_now();
            let _ = t.join();
        }
    }
}

/// Echoes every byte. Records the largest output it has seen queued.
#[derive(Default, Clone)]
pub struct Echo {
    pub max_output: Arc<AtomicUsize>,
}

impl Handler for Echo {
    type Conn = ();

    fn on_accept(&mut self, _conn: &Accepted) {}

    fn on_data(&mut self, _conn: &mut (), input: &mut Input<'_>, output: &mut Output) -> Action {
        let bytes = input.bytes();
        output.extend_from_slice(bytes);
        input.consume(bytes.len());
        self.max_output.fetch_max(output.len(), Ordering::Relaxed);
        Action::Continue
    }
}

/// A line protocol: each complete `\n`-terminated line is a message and is
/// echoed back; `quit\n` is answered with `bye\n` and closes; `stall\n`
/// blocks the worker for 300 ms before answering (to open race windows in
/// tests). An incomplete line stays unconsumed. When the server drains,
/// replies end with `(draining)`.
#[derive(Default, Clone)]
pub struct Lines {
    pub closed: Arc<std::sync::Mutex<Vec<CloseReason>>>,
}

impl Handler for Lines {
    type Conn = ();

    fn on_accept(&mut self, _conn: &Accepted) {}

    fn on_data(&mut self, _conn: &mut (), input: &mut Input<'_>, output: &mut Output) -> Action {
        while let Some(end) = input.bytes().iter().position(|&b| b == b'\n') {
            let line = &input.bytes()[..=end];
            if line == b"stall\n" {
                std::thread::sleep(Duration::from_millis(300));
            }
            if line == b"quit\n" {
                output.extend_from_slice(b"bye\n");
                input.consume(end + 1);
                return Action::Close;
            }
            output.extend_from_slice(line);
            if input.draining() {
                output.extend_from_slice(b"(draining)\n");
            }
            input.consume(end + 1);
        }
        Action::Continue
    }

    fn on_close(&mut self, _conn: (), reason: CloseReason) {
        self.closed.lock().unwrap().push(reason);
    }
}

/// Reads until `n` bytes arrived.
pub fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read reply");
    buf
}

/// Reads one `\n`-terminated line.
pub fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            Err(e) => panic!(
                "reading a line: {e} (so far {:?})",
                String::from_utf8_lossy(&line)
            ),
        }
    }
    String::from_utf8(line).unwrap()
}

/// Whether the peer closed: a read returns EOF or a reset within `timeout`.
pub fn closed_within(s: &mut TcpStream, timeout: Duration) -> io::Result<bool> {
    s.set_read_timeout(Some(timeout))?;
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => Ok(true),
        Ok(n) => Err(io::Error::other(format!("unexpected {n} bytes"))),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Sends `msg` and expects it echoed back.
pub fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    assert_eq!(read_exact_n(s, msg.len()), msg);
}

/// For tests that need root or a tool: returns whether to run. When the need
/// is not met, CI (`CI=true`) fails the test; elsewhere it is skipped with a
/// printed reason.
pub fn needs(met: bool, what: &str) -> bool {
    if met {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("this test needs {what}, and CI must run it");
    }
    eprintln!("skipping: this test needs {what}");
    false
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether `tool` runs (`tool --version`).
pub fn has_tool(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits until `cond` holds, at most `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}
