//! The `corelane-echo` binary as a user runs it: start it, talk to it, stop it
//! with a signal, read what it logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use corelane_test_support::binary;
use corelane_test_support::require::{is_root, needs_root};

const BIN: &str = env!("CARGO_BIN_EXE_corelane-echo");

/// A running echo server; killed (by its PID) if the test ends early.
struct Running {
    child: Child,
    addr: SocketAddr,
    start_line: String,
    /// What it logged before the start-up line.
    early_log: String,
    log: BufReader<ChildStderr>,
}

impl Running {
    /// Starts the echo server on an ephemeral port; waits for its start-up line.
    fn start(args: &[&str]) -> Running {
        Running::start_as(args, None)
    }

    /// Starts it as user `uid` (and group `uid`) when given.
    fn start_as(args: &[&str], uid: Option<u32>) -> Running {
        Running::start_at("127.0.0.1:0", args, uid)
    }

    /// Starts it on `addr`.
    fn start_at(addr: &str, args: &[&str], uid: Option<u32>) -> Running {
        use std::os::unix::process::CommandExt;
        // Another user must be able to reach the binary wherever the clone is.
        let bin = match uid {
            Some(_) => binary::reachable_by_all(Path::new(BIN)),
            None => BIN.into(),
        };
        let mut cmd = Command::new(bin);
        cmd.args(["--addr", addr])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let mut child = cmd.spawn().expect("start corelane-echo");
        let mut log = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let mut early_log = String::new();
        loop {
            line.clear();
            if log.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                panic!("corelane-echo exited before logging its start-up line:\n{early_log}");
            }
            if line.contains("corelane listening") {
                break;
            }
            early_log.push_str(&line);
        }
        let addr = corelane_test_support::binary::listening_addr(&line)
            .expect("address in the start-up line");
        Running {
            addr,
            child,
            start_line: line,
            early_log,
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
    let server = Running::start(&["--workers", "1", "--steering", "kernel"]);
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

/// Opens `n` connections and checks each one echoes.
fn serves_all(addr: SocketAddr, n: usize) {
    let mut conns: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let msg = format!("connection {i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0; msg.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
}

#[test]
fn without_privilege_ebpf_steering_falls_back_to_classic_bpf_and_serves_everyone() {
    // As root, run the server as `nobody`; otherwise this process is
    // unprivileged already.
    let uid = is_root().then_some(65534);
    let server = Running::start_as(&["--workers", "2", "--steering", "least-loaded"], uid);
    let log = &server.early_log;
    assert!(
        log.contains("eBPF steering `least-loaded` unavailable (")
            && log.contains("needs CAP_BPF")
            && log.contains("using classic BPF CPU steering"),
        "the fallback and its reason are logged: {log}"
    );
    assert!(
        server.start_line.contains("steering=classic-cpu"),
        "{}",
        server.start_line
    );
    serves_all(server.addr, 200);
}

#[test]
fn as_root_the_default_is_ebpf_least_loaded() {
    if !needs_root() {
        return;
    }
    let server = Running::start(&["--workers", "2"]);
    assert!(
        server.start_line.contains("steering=least-loaded"),
        "{}\n{}",
        server.early_log,
        server.start_line
    );
    serves_all(server.addr, 200);
}

#[test]
fn sigterm_still_stops_it_when_stderr_is_gone() {
    let mut server = Running::start(&["--workers", "1"]);
    // Close the reading end of its stderr: every later log line fails.
    let log = std::mem::replace(
        &mut server.log,
        BufReader::new(
            Command::new("true")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
                .stderr
                .take()
                .unwrap(),
        ),
    );
    drop(log);
    server.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGTERM ignored after stderr closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_server_is_refused_and_takeover_replaces_the_first_closing_cleanly() {
    let mut old = Running::start(&["--workers", "2"]);
    let addr = old.addr.to_string();
    let out = Command::new(BIN).args(["--addr", &addr]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already served by corelane"), "{err}");

    let mut c = TcpStream::connect(old.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"before\n").unwrap();
    let mut buf = [0u8; 7];
    c.read_exact(&mut buf).unwrap();

    let new = Running::start_at(&addr, &["--workers", "2", "--takeover"], None);
    // The old server's idle connection ends with a clean close (no reset),
    // and the old server exits 0.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("a clean close");
    assert!(rest.is_empty());
    let status = old.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    old.log.read_to_string(&mut log).unwrap();
    assert!(log.contains("handing over"), "{log}");
    // New connections are the new server's.
    let mut c = TcpStream::connect(new.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"after\n").unwrap();
    let mut buf = [0u8; 6];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after\n");
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn sigterm_the_moment_the_port_accepts_stops_it_gracefully() {
    // Two workers: as root the eBPF program is loaded after the listeners
    // are open, which leaves time for a signal before `run`.
    for round in 0..3 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = Command::new(BIN)
            .args(["--addr", &addr.to_string(), "--workers", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Connected: the port accepts; closed at once, so the drain has
            // nothing to wait for.
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "the port never accepted");
            std::thread::sleep(Duration::from_micros(200));
        }
        corelane_test_support::proc::signal(child.id(), libc::SIGTERM);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "round {round}: {status:?}");
    }
}

#[test]
fn a_control_name_squatted_by_another_user_neither_stops_a_start_nor_is_believed() {
    use std::os::unix::process::CommandExt;
    if !needs_root() {
        return;
    }
    let port = free_port();
    // As `nobody`: bind the control name first and claim to be corelane
    // (this test binary, re-run as the squatter).
    let exe = binary::reachable_by_all(&std::env::current_exe().unwrap());
    let mut squat = Command::new(exe)
        .args(["--exact", "squatter_child", "--nocapture"])
        .env("CORELANE_SQUAT_PORT", port.to_string())
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(squat.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("squatting") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the squatter failed");
    }
    let addr = format!("127.0.0.1:{port}");
    for args in [&["--workers", "1"][..], &["--workers", "1", "--takeover"]] {
        let mut server = Running::start_at(&addr, args, None);
        serves_all(server.addr, 10);
        assert!(
            server
                .early_log
                .contains("held by a process of another user")
                && server.early_log.contains("uid=65534"),
            "the squatter is logged: {}",
            server.early_log
        );
        assert!(
            !server.early_log.contains("pid=1 "),
            "the squatter's pid is not believed: {}",
            server.early_log
        );
        server.signal("-TERM");
        let status = server.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
    let _ = squat.kill();
    let _ = squat.wait();
}

/// The squatter of the test above, run as its own process (and user); does
/// nothing in a normal test run.
#[test]
fn squatter_child() {
    use std::os::linux::net::SocketAddrExt;
    let Ok(port) = std::env::var("CORELANE_SQUAT_PORT") else {
        return;
    };
    let name = format!("corelane/127.0.0.1:{port}");
    let name = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&name).unwrap();
    println!("squatting");
    for conn in listener.incoming() {
        let _ = conn
            .unwrap()
            .write_all(b"corelane-control 1 pid=1 steering=kernel workers=1\n");
    }
}
