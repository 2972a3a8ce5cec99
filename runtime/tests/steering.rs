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
        corelane::sys::pin_current_thread(cpu).unwrap();
        (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
    })
    .join()
    .unwrap()
}

#[test]
fn classic_cpu_steering_keeps_connections_on_the_clients_cpu() {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !util::needs(available >= 2, "2 CPUs") {
        return;
    }
    let server = TestServer::start(
        Server::builder()
            .cpus(vec![0, 1])
            .steering(Steering::ClassicCpu),
        |_| Echo::default(),
    );
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
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !util::needs(available >= 2, "2 CPUs") {
        return;
    }
    let server = TestServer::start(
        Server::builder()
            .cpus(vec![0, 1])
            .steering(Steering::Kernel),
        |_| Echo::default(),
    );
    let mut on0 = connect_from_cpu(&server, 0, 200);
    for c in &mut on0 {
        roundtrip(c, b"x");
    }
    let per = server.metrics.snapshot();
    // The hash spreads them: both workers get a share (P(all on one) = 2^-199).
    assert!(per[0].accepted > 0 && per[1].accepted > 0, "{per:?}");
    server.stop().unwrap();
}
