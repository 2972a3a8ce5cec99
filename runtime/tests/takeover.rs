//! Zero-downtime takeover through the runtime API: a second server started
//! with `takeover(true)` on a served address takes every new connection,
//! while the first finishes what it was doing and returns from `run`.

mod util;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corelane::{Error, Server, Steering};
use util::{read_line, Lines, TestServer};

fn builder() -> corelane::ServerBuilder {
    Server::builder().workers(2)
}

/// The first line the control socket of `addr` answers with.
fn control_banner(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::BufRead;
    use std::os::linux::net::SocketAddrExt;
    let name =
        std::os::unix::net::SocketAddr::from_abstract_name(format!("corelane/{addr}")).unwrap();
    let s = std::os::unix::net::UnixStream::connect_addr(&name).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).ok()?;
    Some(line.trim_end().to_owned())
}

#[test]
fn a_served_address_is_refused_without_takeover_and_handed_over_with_it() {
    let mut old = TestServer::start(builder(), |_| Lines::default());
    let addr = old.addr;

    // Without takeover: a clear error, and the old server is untouched.
    let Err(e) = builder()
        .addr(addr)
        .handle_signals(false)
        .build(|_| Lines::default())
    else {
        panic!("a second server started on a served address");
    };
    assert!(
        matches!(e, Error::Served { pid, .. } if pid == std::process::id()),
        "{e}"
    );
    assert!(e.to_string().contains("already served by corelane"), "{e}");

    // A request in flight on the old server: half a line now, the rest
    // after the takeover.
    let mut inflight = old.connect();
    inflight.write_all(b"hello").unwrap();
    old.wait_for("the in-flight connection", Duration::from_secs(5), |m| {
        m.accepted >= 1
    });

    // A client opening a connection per request all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let churn = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = std::net::TcpStream::connect(addr).is_ok_and(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    c.write_all(b"ping\n").is_ok() && read_line(&mut c).starts_with("ping")
                });
                let n = if ok { &served } else { &failed };
                n.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));

    let new = TestServer::start_at(builder().workers(1).takeover(true), addr, |_| {
        Lines::default()
    });
    assert!(
        util::eventually(Duration::from_secs(5), || old.shutdown.handed_over()),
        "the old server was not told to hand over"
    );
    // While the old server still drains, the new one (one worker) answers
    // on the control socket: the next takeover finds it.
    assert!(
        util::eventually(Duration::from_secs(5), || control_banner(addr)
            .is_some_and(|b| b.ends_with("workers=1"))),
        "{:?}",
        control_banner(addr)
    );
    // The old server finishes the request it had, saying it is draining
    // (once its workers have closed their listeners: only the new one's
    // listens).
    assert!(util::eventually(Duration::from_secs(5), || {
        corelane_test_support::proc::listening_on(addr.port()) == 1
    }));
    inflight.write_all(b" world\n").unwrap();
    assert_eq!(read_line(&mut inflight), "hello world\n");
    assert_eq!(read_line(&mut inflight), "(draining)\n");
    let result = old
        .finished(Duration::from_secs(10))
        .expect("the old server finishes");
    result.unwrap();

    // New connections are the new server's.
    let before = new.metrics.total().accepted;
    let mut c = new.connect();
    util::roundtrip(&mut c, b"after\n");
    assert!(new.metrics.total().accepted > before);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();

    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "takeover in process: steering {}, {served} requests on fresh connections, {failed} failed",
        new.metrics.steering_mode()
    );
    assert!(served > 10, "{served}");
    if new.metrics.steering_mode().is_ebpf() {
        assert_eq!(failed, 0);
    }
    // A third server takes over from the second: the generation slot the
    // first one used is reused.
    let mut second = new;
    let third = TestServer::start_at(builder().takeover(true), addr, |_| Lines::default());
    second
        .finished(Duration::from_secs(10))
        .expect("the second server finishes")
        .unwrap();
    let mut c = third.connect();
    util::roundtrip(&mut c, b"third\n");
    if third.metrics.steering_mode() != Steering::Kernel {
        let stats = third.metrics.steering().unwrap();
        assert_eq!(stats.selected.iter().sum::<u64>(), 1, "{stats:?}");
    }
    third.stop().unwrap();
}
