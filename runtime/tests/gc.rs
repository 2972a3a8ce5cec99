//! The GC-like reclamation passes: each one forced, and its effect checked.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use corelane::{CloseReason, Server};
use util::{read_line, roundtrip, Echo, Lines, TestServer};

#[test]
fn pool_trim_frees_idle_buffers_beyond_the_bound() {
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .pool_max_idle(4)
            .reclaim_after(Duration::from_millis(200))
            .tick_interval(Duration::from_millis(50)),
        |_| Lines::default(),
    );
    // 40 connections each hold an input buffer for an unfinished line.
    let mut clients: Vec<TcpStream> = (0..40).map(|_| server.connect()).collect();
    for c in &mut clients {
        c.write_all(b"half a line").unwrap();
    }
    server.wait_for("40 buffers lent", Duration::from_secs(5), |m| {
        m.pool_outstanding == 40
    });
    // Finish the lines: every buffer goes back to the pool.
    for c in &mut clients {
        c.write_all(b"\n").unwrap();
        assert_eq!(read_line(c), "half a line\n");
    }
    server.wait_for("buffers returned", Duration::from_secs(5), |m| {
        m.pool_outstanding == 0
    });
    let before = server.metrics.total();
    assert!(
        before.pool_idle > 4,
        "the pool should hold the returned buffers: {before:?}"
    );
    server.wait_for("a trim to the bound", Duration::from_secs(5), |m| {
        m.pool_trims >= 1 && m.pool_idle == 4
    });
    // Still serving with the trimmed pool.
    clients[0].write_all(b"after\n").unwrap();
    assert_eq!(read_line(&mut clients[0]), "after\n");
    server.stop().unwrap();
}

#[test]
fn idle_sweep_closes_timed_out_connections_and_is_counted() {
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .idle_timeout(Some(Duration::from_millis(200))),
        |_| Echo::default(),
    );
    let mut clients: Vec<TcpStream> = (0..25).map(|_| server.connect()).collect();
    for c in &mut clients {
        roundtrip(c, b"x");
    }
    server.wait_for("the idle sweep", Duration::from_secs(5), |m| {
        m.closed(CloseReason::IdleTimeout) == 25 && m.active == 0
    });
    assert!(server.metrics.total().idle_sweeps >= 1);
    server.stop().unwrap();
}

#[test]
fn slab_shrink_gives_back_the_table_after_a_spike_and_keeps_serving() {
    let (soft, hard) = corelane_test_support::proc::nofile_limit();
    if soft < 4096 {
        corelane_test_support::proc::set_nofile_soft_limit(hard.min(8192));
    }
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .reclaim_after(Duration::from_millis(200))
            .tick_interval(Duration::from_millis(50)),
        |_| Echo::default(),
    );
    // A spike of 1500 connections...
    let mut spike: Vec<TcpStream> = (0..1500).map(|_| server.connect()).collect();
    server.wait_for("spike accepted", Duration::from_secs(10), |m| {
        m.active == 1500
    });
    let peak = server.metrics.total().slab_capacity;
    assert!(peak >= 1500);
    // ...of which the last 50 stay: they sit at the end of the table and must
    // be moved to shrink it.
    let mut stay = spike.split_off(1450);
    drop(spike);
    server.wait_for("spike gone", Duration::from_secs(10), |m| m.active == 50);
    server.wait_for("the table to shrink", Duration::from_secs(5), |m| {
        m.slab_shrinks >= 1 && m.slab_capacity < peak / 4
    });
    // The moved connections were re-registered under their new tokens.
    for (i, c) in stay.iter_mut().enumerate() {
        roundtrip(c, format!("moved {i}").as_bytes());
    }
    drop(stay);
    server.wait_for("all closed", Duration::from_secs(5), |m| m.active == 0);
    server.stop().unwrap();
}
