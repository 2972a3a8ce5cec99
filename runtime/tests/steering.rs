//! Steering without privileges: classic BPF sends each connection to the
//! worker pinned to the CPU that processed its SYN. On loopback that is the
//! CPU the connecting thread runs on.

mod util;

use std::net::TcpStream;
use std::time::Duration;

use corelane::{Server, Steering};
use util::{roundtrip, Echo, TestServer};

fn connect_from_cpu(server: &TestServer, cpu: usize, n: usize) -> Vec<TcpStream> {
    let addr = server.addr;
    std::thread::spawn(move || {
        corelane_test_support::pin_current_thread(cpu);
        (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
    })
    .join()
    .unwrap()
}

/// A 2-worker echo server pinned to CPUs 0 and 1; `None` on a 1-CPU host.
fn two_cpu_server(steering: Steering) -> Option<TestServer> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !util::needs(available >= 2, "2 CPUs") {
        return None;
    }
    Some(TestServer::start(
        Server::builder().cpus(vec![0, 1]).steering(steering),
        |_| Echo::default(),
    ))
}

#[test]
fn classic_cpu_steering_keeps_connections_on_the_clients_cpu() {
    let Some(server) = two_cpu_server(Steering::ClassicCpu) else {
        return;
    };
    let mut on0 = connect_from_cpu(&server, 0, 100);
    let mut on1 = connect_from_cpu(&server, 1, 60);
    for c in on0.iter_mut().chain(on1.iter_mut()) {
        roundtrip(c, b"x");
    }
    server.wait_for("accepted", Duration::from_secs(5), |m| m.accepted == 160);
    let per = server.metrics.snapshot();
    assert_eq!((per[0].accepted, per[1].accepted), (100, 60), "{per:?}");
    server.stop().unwrap();
}

#[test]
fn the_kernel_hash_ignores_the_clients_cpu() {
    let Some(server) = two_cpu_server(Steering::Kernel) else {
        return;
    };
    let mut on0 = connect_from_cpu(&server, 0, 200);
    for c in &mut on0 {
        roundtrip(c, b"x");
    }
    let per = server.metrics.snapshot();
    // The hash spreads them: both workers get a share (P(all on one) = 2^-199).
    assert!(per[0].accepted > 0 && per[1].accepted > 0, "{per:?}");
    server.stop().unwrap();
}
