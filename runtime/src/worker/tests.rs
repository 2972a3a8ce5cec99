use std::time::{Duration, Instant};

use super::*;
use crate::buffer::Input;
use crate::context::Context;
use crate::handler::{Accepted, Action, CloseReason};
use crate::listener::bind_group;

struct Nop;

impl Handler for Nop {
    type Conn = ();
    fn on_accept(&mut self, _: &Accepted, _cx: &mut Context<'_>) {}
    fn on_data(
        &mut self,
        _: &mut (),
        input: &mut Input<'_>,
        _: &mut crate::Output,
        _cx: &mut Context<'_>,
    ) -> Action {
        input.consume(input.bytes().len());
        Action::Continue
    }
}

fn accept_one(w: &mut Worker<Nop>, addr: std::net::SocketAddr) -> std::net::TcpStream {
    let c = std::net::TcpStream::connect(addr).unwrap();
    let before = w.conns.len();
    for _ in 0..200 {
        w.set_accept(AcceptState::Open(Queue::Ready(w.opts.accept_budget)));
        w.accept_connections(Instant::now(), 1);
        if w.conns.len() > before {
            return c;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("connection was never accepted");
}

/// A worker on its own listener (127.0.0.1, any port), not running.
fn worker(opts: ServerOptions) -> (Worker<Nop>, std::net::SocketAddr) {
    let listener = bind_group("127.0.0.1:0".parse().unwrap(), 1, 16, true, None)
        .unwrap()
        .remove(0);
    let addr = listener.local_addr().unwrap();
    let info = WorkerInfo::detached(0, 1);
    let shutdown = ShutdownHandle::new(1, info.mailboxes.clone(), Duration::ZERO);
    let w = Worker::start(
        info,
        listener,
        Arc::new(opts),
        shutdown,
        WorkerSteer::default(),
        None,
        |_| Nop,
    )
    .unwrap();
    (w, addr)
}

/// One turn's accepting, as the loop runs it: waits up to `timeout` for
/// events, notes the listener's report, accepts. Returns whether the
/// listener was reported.
fn accept_turn(w: &mut Worker<Nop>, timeout: Duration) -> bool {
    let mut events = Events::with_capacity(EVENTS_CAPACITY);
    w.poll.poll(&mut events, Some(timeout)).unwrap();
    let reported = events.iter().any(|e| e.token() == LISTENER);
    if reported {
        w.listener_ready();
    }
    w.accept_connections(Instant::now(), events.iter().count());
    reported
}

/// Waits until `n` connections are in `addr`'s accept queue (the
/// handshakes complete in the kernel, not in the test's connect calls).
fn connect_queued(addr: std::net::SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    let clients: Vec<_> = (0..n)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    clients
}

#[test]
fn the_level_triggered_listener_takes_one_connection_a_turn_and_finds_the_rest_without_new_arrivals(
) {
    let (mut w, addr) = worker(ServerOptions::default());
    // The loop's first turn drains what queued before it started.
    assert!(!accept_turn(&mut w, Duration::ZERO));
    assert_eq!(w.accept, AcceptState::Open(Queue::Empty));
    let _clients = connect_queued(addr, 3);
    // Each report takes one; the connections still queued are reported
    // again at once (an edge-triggered listener would report nothing more
    // until a new connection arrived).
    for taken in 1..=3 {
        assert!(accept_turn(&mut w, Duration::from_secs(1)));
        assert_eq!(w.conns.len(), taken);
        assert_eq!(w.accept, AcceptState::Open(Queue::Took));
    }
    // Nothing left: no report, so the queue is known empty, with no
    // `accept4` to find it.
    assert!(!accept_turn(&mut w, Duration::from_millis(50)));
    assert_eq!(w.accept, AcceptState::Open(Queue::Empty));
    assert!(!accept_turn(&mut w, Duration::from_millis(50)));
    assert_eq!(w.conns.len(), 3);
    // Reported among a few other events: still one, and no `accept4`
    // asks whether more are queued.
    let _more = connect_queued(addr, 3);
    w.listener_ready();
    w.accept_connections(Instant::now(), 2);
    assert_eq!(w.conns.len(), 4);
    assert_eq!(w.accept, AcceptState::Open(Queue::Took));
    // Among sixteen (a busy turn): one more for every eight, here three,
    // of which two were queued: the third finds the queue empty.
    w.listener_ready();
    w.accept_connections(Instant::now(), 16);
    assert_eq!(w.conns.len(), 6);
    assert_eq!(w.accept, AcceptState::Open(Queue::Empty));
}

#[test]
fn at_the_connection_cap_a_queued_connection_does_not_wake_every_turn() {
    let (mut w, addr) = worker(ServerOptions {
        max_connections_per_worker: 1,
        ..ServerOptions::default()
    });
    let _clients = connect_queued(addr, 2);
    assert!(accept_turn(&mut w, Duration::from_secs(1)));
    assert_eq!(w.conns.len(), 1);
    // The second is queued; the cap is found on the next report.
    assert!(accept_turn(&mut w, Duration::from_secs(1)));
    assert_eq!(w.accept, AcceptState::AtCap);
    // Edge-triggered at the cap: the queued connection is not reported
    // turn after turn (a level-triggered listener would spin the loop).
    assert!(!accept_turn(&mut w, Duration::from_millis(50)));
    assert!(!accept_turn(&mut w, Duration::from_millis(50)));
    // A close makes room: the queued connection is taken (and the cap
    // reached again).
    let (key, first) = w.conns.iter().next().map(|(k, c)| (k, c.id())).unwrap();
    w.close(key, CloseReason::Handler, Instant::now());
    assert!(w.listener_level, "level-triggered again with room");
    accept_turn(&mut w, Duration::ZERO);
    assert_eq!(w.conns.len(), 1);
    assert_ne!(w.conns.iter().next().unwrap().1.id(), first);
    assert_eq!(w.accept, AcceptState::AtCap);
    assert!(!w.listener_level);
}

#[test]
fn an_event_for_a_reused_slot_is_recognised_as_stale() {
    let (mut w, addr) = worker(ServerOptions::default());
    let _c1 = accept_one(&mut w, addr);
    let (key, conn) = w.conns.iter().next().unwrap();
    let old = ConnToken {
        key,
        generation: conn.generation(),
    };
    assert_eq!(w.live_key(old), Some(key));

    w.close(key, CloseReason::Handler, Instant::now());
    assert_eq!(w.live_key(old), None, "event for a closed slot");

    let _c2 = accept_one(&mut w, addr);
    let (new_key, conn) = w.conns.iter().next().unwrap();
    assert_eq!(new_key, key, "the slab reuses the freed slot");
    let new = ConnToken {
        key,
        generation: conn.generation(),
    };
    assert_ne!(old, new);
    assert_eq!(
        w.live_key(old),
        None,
        "stale event for the reused slot must be dropped"
    );
    assert_eq!(w.live_key(new), Some(key));
    // A stale timer entry for the old connection is ignored too.
    let mut due = vec![Entry {
        key,
        generation: old.generation,
        tick: 0,
    }];
    std::mem::swap(&mut w.due, &mut due);
    w.expire_timers(Instant::now());
    assert_eq!(w.conns.len(), 1);
}
