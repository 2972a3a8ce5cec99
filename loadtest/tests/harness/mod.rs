//! Harness of the system tests: the real `corelane-http` binary (release
//! build, built once by the first test that needs it), started on an
//! ephemeral 127.0.0.1 port, watched through `/proc` and `/metrics`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelane_loadtest::{run, Report, RunOptions, Target};
use corelane_test_support::{on_cpu, proc};

/// One system test at a time: each loads the whole machine.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the serial lock (a failed test does not poison the others).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `target/release/corelane-http`, built (or found up to date) once.
pub fn http_binary() -> PathBuf {
    corelane_test_support::binary::release("corelane-http", "corelane-http")
}

/// A copy of [`http_binary`] that another user (`setpriv --reuid=nobody`)
/// can run, wherever the clone is.
pub fn http_binary_for_all() -> PathBuf {
    corelane_test_support::binary::reachable_by_all(&http_binary())
}

/// A running `corelane-http`.
pub struct Http {
    pub child: Child,
    pub addr: SocketAddr,
    pub start_line: String,
    /// Everything it logged so far.
    pub log: Arc<Mutex<String>>,
}

impl Http {
    /// Starts it with `args` (plus `--addr 127.0.0.1:0`) and waits for its
    /// start-up line.
    pub fn start(args: &[&str]) -> Http {
        let mut cmd = Command::new(http_binary());
        cmd.args(["--addr", "127.0.0.1:0"]).args(args);
        Http::spawn(cmd)
    }

    /// Starts it on `addr` (for a takeover: an address already served)
    /// with `args`, and waits for its start-up line.
    pub fn start_at(addr: SocketAddr, args: &[&str]) -> Http {
        let mut cmd = Command::new(http_binary());
        cmd.arg("--addr").arg(addr.to_string()).args(args);
        Http::spawn(cmd)
    }

    /// Runs `cmd`, which starts corelane-http with `--addr 127.0.0.1:0`
    /// (directly or through a wrapper such as `setpriv`).
    pub fn spawn(mut cmd: Command) -> Http {
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start corelane-http");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("corelane listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let start_line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("corelane-http did not start:\n{}", log.lock().unwrap());
            }
        };
        let addr = corelane_test_support::binary::listening_addr(&start_line)
            .expect("address in the start-up line");
        Http {
            child,
            addr,
            start_line,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Open descriptors of the server process.
    pub fn fds(&self) -> usize {
        proc::fds(self.pid())
    }

    /// Resident memory, bytes.
    pub fn rss(&self) -> u64 {
        proc::rss(self.pid())
    }

    /// User + system CPU seconds of the server so far.
    pub fn cpu_seconds(&self) -> f64 {
        proc::cpu_seconds(self.pid())
    }

    /// `GET path` on a fresh connection; the whole response.
    pub fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// A metric's value (summed over its series), from `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let page = self.get("/metrics");
        page.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// A per-worker metric's series (`name{worker="i"}`), in worker order.
    pub fn metric_per_worker(&self, name: &str, workers: usize) -> Vec<u64> {
        let page = self.get("/metrics");
        (0..workers)
            .map(|w| {
                let series = format!("{name}{{worker=\"{w}\"}} ");
                page.lines()
                    .find_map(|l| l.strip_prefix(&series)?.parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Sends `sig` to the server.
    pub fn signal(&self, sig: i32) {
        proc::signal(self.pid(), sig);
    }

    /// Waits for it to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A load run from a thread pinned to CPU 1 (the server's workers run on
/// both CPUs; the generator is the same for every run compared).
pub fn load(
    url: &str,
    connections: usize,
    duration: Duration,
    close: bool,
    rate: Option<f64>,
) -> Report {
    load_on(1, url, connections, duration, close, rate)
}

/// [`load`] from a thread pinned to `cpu`.
pub fn load_on(
    cpu: usize,
    url: &str,
    connections: usize,
    duration: Duration,
    close: bool,
    rate: Option<f64>,
) -> Report {
    let target = Target::parse(url).unwrap();
    let opts = RunOptions {
        threads: 1,
        connections,
        duration,
        pipeline: 1,
        close,
        timeout: Duration::from_secs(5),
        progress: false,
        rate,
    };
    on_cpu(cpu, move || run(&target, &opts).expect("load run"))
}
