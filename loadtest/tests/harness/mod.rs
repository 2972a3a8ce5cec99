//! Harness of the system tests: the real `corelane-http` binary (release
//! build, built once by the first test that needs it), started on an
//! ephemeral 127.0.0.1 port, watched through `/proc` and `/metrics`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One system test at a time: each loads the whole machine.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the serial lock (a failed test does not poison the others).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `target/release/corelane-http`, built (or found up to date) once.
pub fn http_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-q", "-p", "corelane-http"])
            .current_dir(&root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building corelane-http failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        target.join("release").join("corelane-http")
    })
    .clone()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
    })
}

/// For tests that need root: skip with a reason, or fail under CI.
pub fn needs_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI runs as root and must run this test"
    );
    eprintln!("skipping: needs root");
    false
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
        let addr = start_line
            .split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
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
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident memory, bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// User + system CPU seconds of the server so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
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

    /// Sends `sig` to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0);
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

/// Runs `f` on a thread pinned to `cpu` and returns its result.
pub fn on_cpu<T: Send + 'static>(cpu: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        corelane::sys::pin_current_thread(cpu).expect("pin");
        f()
    })
    .join()
    .unwrap()
}

/// Waits until `cond` holds, at most `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Raises this process's soft descriptor limit to the hard one.
pub fn raise_nofile() -> u64 {
    let (_, hard) = corelane::sys::nofile_limit().unwrap();
    corelane::sys::set_nofile_soft_limit(hard).unwrap();
    hard
}
