//! A corelane server run in the test process, on its own threads.

use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corelane::{Handler, Metrics, ServerBuilder, ShutdownHandle, WorkerInfo};

/// A server running on its own threads; shut down at once when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its metrics.
    pub metrics: Metrics,
    /// Its shutdown handle.
    pub shutdown: ShutdownHandle,
    thread: Option<JoinHandle<corelane::Result<()>>>,
}

impl TestServer {
    /// Builds from `builder` on 127.0.0.1, an ephemeral port, signals off,
    /// and runs it.
    ///
    /// # Panics
    ///
    /// If the server does not build.
    pub fn start<F, H>(builder: ServerBuilder, factory: F) -> TestServer
    where
        F: Fn(&WorkerInfo) -> H + Send + Sync + 'static,
        H: Handler,
    {
        TestServer::start_at(builder, "127.0.0.1:0".parse().unwrap(), factory)
    }

    /// Builds from `builder` on `addr` (signals off) and runs it.
    ///
    /// # Panics
    ///
    /// If the server does not build.
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
    ///
    /// # Errors
    ///
    /// What `run` returned.
    ///
    /// # Panics
    ///
    /// If `run` panicked.
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

    /// A connection to it, with a 10 s read timeout and `TCP_NODELAY`.
    ///
    /// # Panics
    ///
    /// If it cannot connect.
    #[must_use]
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// `http://<addr><path>`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until `cond` holds for the summed metrics.
    ///
    /// # Panics
    ///
    /// After `timeout`, naming `what`.
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
