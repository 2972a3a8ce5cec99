//! System test: a fleet of three hosts behind a real L4 balancer, restarted
//! host by host under load.
//!
//! Every "host" is a network namespace this test creates (and removes, also
//! when it fails), joined by a veth pair to a balancer namespace. The
//! balancer is the kernel's own nftables: a virtual address, DNAT'ed to the
//! hosts in turn (`numgen inc mod N`), the way small L4 balancers are set up
//! on Linux; conntrack keeps each connection on the host it was given. A
//! health checker (a thread of this test in the balancer's namespace) polls
//! every host's readiness route and rewrites the rule without the hosts that
//! fail it, adding them back when they pass again. The client (the
//! load-test generator) runs in a namespace of its own against the virtual
//! address, with keep-alive and connection-per-request load at the same time.
//!
//! Hosts 0 and 1 run `corelane-http`; host 2 runs `corelane-proxy` in front
//! of a `corelane-http` in its own namespace. Measured, and printed:
//! - a rolling takeover of every host (`--takeover`): 0 failed requests;
//! - a rolling stop-and-start (SIGTERM, `--drain-delay`, start again), each
//!   host taken out by the checker when `/readyz` turns 503: 0 failed;
//! - a host killed with SIGKILL: how many requests fail, and how long until
//!   the checker takes it out; the others keep serving.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); skips without them,
//! fails under `CI=true`.
//! `cargo test --release -p corelane-loadtest --test fleet -- --nocapture`

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelane_loadtest::Report;
use corelane_test_support::eventually;
use corelane_test_support::require::{has_tool, needs, needs_root};
use harness::{http_binary, serial, Http};

/// The balancer's virtual address.
const VIP: &str = "10.77.100.1";
const PORT: u16 = 8080;
const HOSTS: usize = 3;
/// Checker: poll every `CHECK_EVERY`; out after `FALL` failures in a row,
/// back after `RISE` successes (HAProxy's `inter`, `fall`, `rise`).
const CHECK_EVERY: Duration = Duration::from_millis(100);
const CHECK_TIMEOUT: Duration = Duration::from_millis(300);
const FALL: u32 = 2;
const RISE: u32 = 2;
/// Longer than the checker needs to take a host out (FALL checks).
const DRAIN_DELAY: &str = "1s";

/// Runs `cmd`, panicking with its output when it fails.
fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, removed when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Moves the calling thread (and the threads it starts) into it.
    fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        // SAFETY: a valid namespace descriptor; only this thread moves.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "setns {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }

    /// Runs `args` inside it.
    fn exec(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair from the balancer (`dev`, `10.77.<net>.1`) to `peer`
/// (`eth0`, `10.77.<net>.2`, routing everything through the balancer).
fn wire(lb: &Netns, dev: &str, peer: &Netns, net: usize) {
    let (here, there) = (format!("10.77.{net}.1"), format!("10.77.{net}.2"));
    for args in [
        vec![
            "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
        ],
        vec!["addr", "add", &format!("{here}/24"), "dev", dev],
        vec!["link", "set", dev, "up"],
    ] {
        sh(&[&["ip", "-n", &lb.name][..], &args].concat());
    }
    for args in [
        vec!["addr", "add", &format!("{there}/24"), "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
        vec!["route", "add", "default", "via", &here],
    ] {
        sh(&[&["ip", "-n", &peer.name][..], &args].concat());
    }
}

/// What a host runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Http,
    Proxy,
}

/// One host: its namespace, its address and its server (and the proxy's
/// upstream).
struct Host {
    ns: Netns,
    ip: String,
    kind: Kind,
    server: Option<Http>,
    upstream: Option<Http>,
}

impl Host {
    fn addr(&self) -> SocketAddr {
        format!("{}:{PORT}", self.ip).parse().unwrap()
    }

    fn ready_path(&self) -> &'static str {
        match self.kind {
            Kind::Http => "/readyz",
            Kind::Proxy => "/_proxy/readyz",
        }
    }

    /// Starts its server (with `--takeover` when `takeover`), returning it.
    fn start(&self, takeover: bool) -> Http {
        let addr = self.addr().to_string();
        let bin = match self.kind {
            Kind::Http => http_binary(),
            Kind::Proxy => {
                corelane_test_support::binary::release("corelane-proxy", "corelane-proxy")
            }
        };
        let bin = bin.to_str().unwrap().to_owned();
        // Debug logs (connections left at each drain) for the failure output.
        let mut args = vec![
            "env",
            "RUST_LOG=info,corelane=debug",
            bin.as_str(),
            "--addr",
            &addr,
            "--workers",
            "1",
            "--shutdown-timeout",
            "5s",
            "--drain-delay",
            DRAIN_DELAY,
        ];
        if self.kind == Kind::Proxy {
            args.extend(["--upstream", "127.0.0.1:8081", "--pool-idle", "16"]);
        }
        if takeover {
            args.push("--takeover");
        }
        Http::spawn(self.ns.exec(&args))
    }
}

/// A membership change the checker made.
#[derive(Debug, Clone)]
struct Change {
    at: Instant,
    host: usize,
    up: bool,
}

/// The balancer and its health checker.
struct Balancer {
    /// Held until the checker has stopped, then removed.
    _ns: Arc<Netns>,
    changes: Arc<Mutex<Vec<Change>>>,
    in_rotation: Arc<Mutex<Vec<bool>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Writes the DNAT rule spreading the virtual address over `up` hosts.
fn write_rule(ns: &Netns, ips: &[String], up: &[bool]) {
    let members: Vec<&String> = ips
        .iter()
        .zip(up)
        .filter(|(_, u)| **u)
        .map(|(ip, _)| ip)
        .collect();
    let action = if members.is_empty() {
        "reject with tcp reset".to_owned()
    } else {
        let map: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("{i} : {ip}"))
            .collect();
        format!(
            "dnat to numgen inc mod {} map {{ {} }}",
            members.len(),
            map.join(", ")
        )
    };
    let rules = format!(
        "flush chain ip fleet prerouting\n\
         add rule ip fleet prerouting ip daddr {VIP} tcp dport {PORT} {action}\n"
    );
    let mut nft = ns
        .exec(&["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    nft.stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    let out = nft.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One readiness check: `GET path` answered 200 within the timeout.
fn ready(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, CHECK_TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(CHECK_TIMEOUT));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: check\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

impl Balancer {
    fn start(ns: Netns, hosts: &[(SocketAddr, &'static str)]) -> Balancer {
        let ns = Arc::new(ns);
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let table = "add table ip fleet\n\
             add chain ip fleet prerouting { type nat hook prerouting priority dstnat; policy accept; }\n";
        let mut nft = ns
            .exec(&["nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        nft.stdin
            .take()
            .unwrap()
            .write_all(table.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft table");
        let ips: Vec<String> = hosts.iter().map(|(a, _)| a.ip().to_string()).collect();
        let in_rotation = Arc::new(Mutex::new(vec![false; hosts.len()]));
        write_rule(&ns, &ips, &in_rotation.lock().unwrap());
        let changes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ns, changes, in_rotation, stop) = (
                Arc::clone(&ns),
                Arc::clone(&changes),
                Arc::clone(&in_rotation),
                Arc::clone(&stop),
            );
            let hosts = hosts.to_vec();
            std::thread::spawn(move || {
                ns.enter();
                // Consecutive results: positive successes, negative failures.
                let mut streak = vec![0i64; hosts.len()];
                let mut up = vec![false; hosts.len()];
                while !stop.load(Ordering::Relaxed) {
                    let round = Instant::now();
                    let mut flipped = Vec::new();
                    for (i, (addr, path)) in hosts.iter().enumerate() {
                        let ok = ready(*addr, path);
                        streak[i] = match (ok, streak[i] > 0) {
                            (true, true) => streak[i] + 1,
                            (true, false) => 1,
                            (false, false) => streak[i] - 1,
                            (false, true) => -1,
                        };
                        let flip = if up[i] {
                            streak[i] <= -i64::from(FALL)
                        } else {
                            streak[i] >= i64::from(RISE)
                        };
                        if flip {
                            up[i] = !up[i];
                            flipped.push(i);
                        }
                    }
                    if !flipped.is_empty() {
                        // The rule first: a host counts as in (or out of)
                        // rotation once the balancer sends it traffic (or
                        // no longer does).
                        write_rule(&ns, &ips, &up);
                        let at = Instant::now();
                        in_rotation.lock().unwrap().clone_from(&up);
                        let mut changes = changes.lock().unwrap();
                        for host in flipped {
                            changes.push(Change {
                                at,
                                host,
                                up: up[host],
                            });
                        }
                    }
                    std::thread::sleep(CHECK_EVERY.saturating_sub(round.elapsed()));
                }
            })
        };
        Balancer {
            _ns: ns,
            changes,
            in_rotation,
            stop,
            thread: Some(thread),
        }
    }

    fn in_rotation(&self, host: usize) -> bool {
        self.in_rotation.lock().unwrap()[host]
    }

    /// Waits until `host` is in (`true`) or out of rotation.
    fn wait_for(&self, host: usize, up: bool, limit: Duration) {
        assert!(
            eventually(limit, || self.in_rotation(host) == up),
            "host {host} not {} rotation within {limit:?}",
            if up { "in" } else { "out of" }
        );
    }

    /// When the checker last took `host` out (`up: false`) or in, after `since`.
    fn change_after(&self, host: usize, up: bool, since: Instant) -> Option<Instant> {
        self.changes
            .lock()
            .unwrap()
            .iter()
            .find(|c| c.host == host && c.up == up && c.at >= since)
            .map(|c| c.at)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The whole set-up. Dropped in field order: servers first, then the
/// namespaces.
struct Fleet {
    hosts: Vec<Host>,
    balancer: Balancer,
    client: Arc<Netns>,
}

impl Fleet {
    fn start() -> Fleet {
        let tag = std::process::id() % 100_000;
        let lb = Netns::new(format!("cl{tag}lb"));
        let client = Netns::new(format!("cl{tag}c"));
        wire(&lb, "c0", &client, 0);
        let mut hosts = Vec::new();
        for i in 0..HOSTS {
            let ns = Netns::new(format!("cl{tag}h{i}"));
            let net = i + 1;
            wire(&lb, &format!("h{i}"), &ns, net);
            let kind = if i == HOSTS - 1 {
                Kind::Proxy
            } else {
                Kind::Http
            };
            let mut host = Host {
                ns,
                ip: format!("10.77.{net}.2"),
                kind,
                server: None,
                upstream: None,
            };
            if kind == Kind::Proxy {
                let bin = http_binary();
                let bin = bin.to_str().unwrap();
                host.upstream = Some(Http::spawn(host.ns.exec(&[
                    bin,
                    "--addr",
                    "127.0.0.1:8081",
                    "--workers",
                    "1",
                ])));
            }
            host.server = Some(host.start(false));
            hosts.push(host);
        }
        let checks: Vec<(SocketAddr, &'static str)> =
            hosts.iter().map(|h| (h.addr(), h.ready_path())).collect();
        let balancer = Balancer::start(lb, &checks);
        for i in 0..HOSTS {
            balancer.wait_for(i, true, Duration::from_secs(5));
        }
        Fleet {
            hosts,
            balancer,
            client: Arc::new(client),
        }
    }

    /// Keep-alive and connection-per-request load on the virtual address
    /// for `duration`, from the client's namespace, while `during` runs.
    fn under_load<T>(
        &mut self,
        duration: Duration,
        during: impl FnOnce(&mut Fleet) -> T,
    ) -> (Report, Report, T) {
        let start = |close: bool, connections: usize, rate: f64| {
            let client = Arc::clone(&self.client);
            std::thread::spawn(move || {
                // The generator's threads start from this one: in its namespace.
                client.enter();
                let url = format!("http://{VIP}:{PORT}/plaintext");
                harness::load_on(1, &url, connections, duration, close, Some(rate))
            })
        };
        let keep_alive = start(false, 16, 3000.0);
        let per_request = start(true, 8, 600.0);
        std::thread::sleep(Duration::from_millis(500));
        let t = during(self);
        (keep_alive.join().unwrap(), per_request.join().unwrap(), t)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.server.take();
            h.upstream.take();
        }
    }
}

fn print(what: &str, keep_alive: &Report, per_request: &Report) {
    eprintln!(
        "{what}: keep-alive {} requests, errors {:?}; connection per request {} requests, errors {:?}",
        keep_alive.requests, keep_alive.errors, per_request.requests, per_request.errors
    );
}

#[test]
fn a_fleet_behind_nftables_restarts_host_by_host_without_failing_a_request() {
    let _g = serial();
    if !needs_root()
        || !needs(has_tool("nft"), "nft (nftables)")
        || !needs(has_tool("ip"), "ip (iproute2)")
    {
        return;
    }
    let mut fleet = Fleet::start();

    // 1. Rolling takeover: each host's new process takes the address over;
    // the checker never sees a host unready (new connections go to the new
    // process at once).
    let (ka, pr, took) = fleet.under_load(Duration::from_secs(7), |f| {
        let mut took = Vec::new();
        for i in 0..HOSTS {
            let t0 = Instant::now();
            let next = f.hosts[i].start(true);
            let old = f.hosts[i].server.as_mut().unwrap();
            let (exit, _) = old
                .wait(Duration::from_secs(10))
                .expect("the old process exits");
            assert!(exit.success(), "host {i}: {exit:?}\n{}", old.log());
            if t0.elapsed() > Duration::from_secs(1) {
                eprintln!(
                    "host {i}'s old process took {:?} to exit:\n{}",
                    t0.elapsed(),
                    old.log()
                );
            }
            took.push(t0.elapsed());
            f.hosts[i].server = Some(next);
            std::thread::sleep(Duration::from_millis(400));
        }
        took
    });
    print("rolling takeover", &ka, &pr);
    eprintln!("  per host, start to old process gone: {took:?}");
    // Nothing holds an old process to its shutdown deadline (5 s).
    assert!(took.iter().all(|t| *t < Duration::from_secs(2)), "{took:?}");
    assert_eq!(ka.errors.total(), 0, "{ka:?}");
    assert_eq!(pr.errors.total(), 0, "{pr:?}");
    assert!(ka.ok > 10_000 && pr.ok > 2_000, "{ka:?} {pr:?}");

    // 2. Rolling stop and start: SIGTERM turns /readyz 503, the checker
    // takes the host out within the drain delay, the old process drains
    // and exits, a new one starts and is taken back in.
    let (ka, pr, out) = fleet.under_load(Duration::from_secs(12), |f| {
        let mut out = Vec::new();
        for i in 0..HOSTS {
            let t0 = Instant::now();
            let old = f.hosts[i].server.as_mut().unwrap();
            old.signal(libc::SIGTERM);
            let (exit, _) = old.wait(Duration::from_secs(10)).expect("exits on SIGTERM");
            assert!(exit.success(), "host {i}: {exit:?}\n{}", old.log());
            let removed = f
                .balancer
                .change_after(i, false, t0)
                .unwrap_or_else(|| panic!("host {i} exited before the checker took it out"));
            f.hosts[i].server = Some(f.hosts[i].start(false));
            f.balancer.wait_for(i, true, Duration::from_secs(5));
            out.push((removed - t0, t0.elapsed()));
        }
        out
    });
    print("rolling stop and start", &ka, &pr);
    for (i, (removed, back)) in out.iter().enumerate() {
        eprintln!("  host {i}: out of rotation {removed:?} after SIGTERM, back after {back:?}");
    }
    assert_eq!(ka.errors.total(), 0, "{ka:?}");
    assert_eq!(pr.errors.total(), 0, "{pr:?}");

    // 3. A host killed: what fails, and for how long.
    let (ka, pr, (removed, served_meanwhile)) = fleet.under_load(Duration::from_secs(5), |f| {
        let victim = 1;
        let killed = Instant::now();
        f.hosts[victim]
            .server
            .as_ref()
            .unwrap()
            .signal(libc::SIGKILL);
        f.balancer.wait_for(victim, false, Duration::from_secs(5));
        let removed = f.balancer.change_after(victim, false, killed).unwrap() - killed;
        // The others stay in rotation (and serve: see the figures).
        let others = (0..HOSTS).filter(|&h| h != victim).all(|h| {
            f.balancer.in_rotation(h) && f.balancer.change_after(h, false, killed).is_none()
        });
        let mut dead = f.hosts[victim].server.take().unwrap();
        dead.wait(Duration::from_secs(5));
        f.hosts[victim].server = Some(f.hosts[victim].start(false));
        f.balancer.wait_for(victim, true, Duration::from_secs(5));
        (removed, others)
    });
    print("SIGKILL of one host", &ka, &pr);
    eprintln!(
        "  out of rotation {removed:?} after the kill; failed: keep-alive {}, connection per request {}",
        ka.errors.total(),
        pr.errors.total()
    );
    assert!(served_meanwhile);
    assert!(ka.ok > 5_000 && pr.ok > 1_000, "{ka:?} {pr:?}");
    assert!(removed < Duration::from_secs(2), "{removed:?}");
}
