//! The `corelane-echo` binary as a user runs it: start it, talk to it, stop it
//! with a signal, read what it logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_corelane-echo");

/// A running echo server; killed (by its PID) if the test ends early.
struct Running {
    child: Child,
    addr: SocketAddr,
    start_line: String,
    log: BufReader<ChildStderr>,
}

impl Running {
    /// Starts the echo server on an ephemeral port; waits for its start-up line.
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start corelane-echo");
        let mut log = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if log.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                panic!("corelane-echo exited before logging its start-up line");
            }
            if line.contains("corelane listening") {
                break;
            }
        }
        let addr = line
            .split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        Running {
            addr: addr.parse().unwrap(),
            child,
            start_line: line,
            log,
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn echoes_and_exits_cleanly_on_sigterm() {
    let mut server = Running::start(&["--workers", "2"]);
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"hello corelane\n").unwrap();
    let mut buf = [0u8; 15];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello corelane\n");

    let start = Instant::now();
    server.signal("-TERM");
    // The idle keep-alive connection is closed by the drain.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let mut log = String::new();
    server.log.read_to_string(&mut log).unwrap();
    assert!(log.contains("shutting down gracefully"), "{log}");
    assert!(log.contains("corelane stopped"), "{log}");
}

#[test]
fn the_start_up_line_names_address_workers_cpus_and_steering() {
    let server = Running::start(&["--workers", "1"]);
    for field in ["addr=127.0.0.1:", "workers=1", "cpus=", "steering=kernel"] {
        assert!(
            server.start_line.contains(field),
            "{field} missing from {}",
            server.start_line
        );
    }
    assert!(
        !server.start_line.contains('\x1b'),
        "no colour codes when not on a terminal"
    );
}

#[test]
fn a_taken_address_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN).args(["--addr", &addr]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("binding {addr}")) && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn help_explains_the_options() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in ["--addr", "--workers", "--idle-timeout", "--steering"] {
        assert!(help.contains(opt), "{opt} missing from --help");
    }
}
