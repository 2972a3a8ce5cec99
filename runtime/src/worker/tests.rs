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
        w.accept = AcceptState::Open { pending: true };
        w.accept_connections(Instant::now());
        if w.conns.len() > before {
            return c;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("connection was never accepted");
}

#[test]
fn an_event_for_a_reused_slot_is_recognised_as_stale() {
    let listener = bind_group("127.0.0.1:0".parse().unwrap(), 1, 16, true, None)
        .unwrap()
        .remove(0);
    let addr = listener.local_addr().unwrap();
    let opts = Arc::new(ServerOptions::default());
    let info = WorkerInfo::detached(0, 1);
    let shutdown = ShutdownHandle::new(1, info.mailboxes.clone(), Duration::ZERO);
    let mut w = Worker::start(
        info,
        listener,
        opts,
        shutdown,
        WorkerSteer::default(),
        None,
        |_| Nop,
    )
    .unwrap();
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
