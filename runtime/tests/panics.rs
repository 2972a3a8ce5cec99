//! A panic in a handler closes only the connection it was handling; the
//! worker serves everyone else, and every worker's end is seen by `run`.

mod util;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use corelane::{Accepted, Action, CloseReason, Context, Handler, Input, Output, Server};
use util::{roundtrip, TestServer};

/// Echoes; panics on `boom`, and when asked to, on the third accept and
/// on its first tick.
struct Fragile {
    accepts: usize,
    /// Panic in the third `on_accept` and the first `on_tick`.
    more_panics: bool,
    tick_panics: bool,
    closes: Arc<AtomicUsize>,
}

impl Handler for Fragile {
    type Conn = ();

    fn on_accept(&mut self, _conn: &Accepted, _cx: &mut Context<'_>) {
        self.accepts += 1;
        assert!(!self.more_panics || self.accepts != 3, "the third accept");
    }

    fn on_data(
        &mut self,
        _conn: &mut (),
        input: &mut Input<'_>,
        output: &mut Output,
        _cx: &mut Context<'_>,
    ) -> Action {
        let bytes = input.bytes();
        if bytes.starts_with(b"boom") {
            // Output appended before the panic must not reach the client.
            output.extend_from_slice(b"half a reply");
            panic!("boom requested");
        }
        output.extend_from_slice(bytes);
        input.consume(bytes.len());
        Action::Continue
    }

    fn on_close(&mut self, _conn: (), reason: CloseReason, _cx: &mut Context<'_>) {
        if reason == CloseReason::Panic {
            self.closes.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn on_tick(&mut self, _now: SystemTime, _cx: &mut Context<'_>) {
        if self.tick_panics {
            self.tick_panics = false;
            panic!("tick");
        }
    }
}

fn fragile(
    closes: &Arc<AtomicUsize>,
    more_panics: bool,
) -> impl Fn(&corelane::WorkerInfo) -> Fragile {
    let closes = Arc::clone(closes);
    move |_| Fragile {
        accepts: 0,
        more_panics,
        tick_panics: more_panics,
        closes: Arc::clone(&closes),
    }
}

#[test]
fn a_panic_in_on_data_closes_only_its_connection() {
    let closes = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(Server::builder().workers(1), fragile(&closes, false));
    let mut calm = server.connect();
    roundtrip(&mut calm, b"before\n");

    let mut victim = server.connect();
    victim.write_all(b"boom\n").unwrap();
    let mut got = Vec::new();
    // Closed at once, and nothing of the half reply was sent.
    let _ = victim.read_to_end(&mut got);
    assert!(got.is_empty(), "{got:?}");

    server.wait_for("the panic counted", Duration::from_secs(10), |m| {
        m.handler_panics == 1 && m.closed(CloseReason::Panic) == 1
    });
    assert_eq!(closes.load(Ordering::SeqCst), 1, "on_close ran with Panic");
    // The worker goes on: the other connection and new ones are served.
    roundtrip(&mut calm, b"after\n");
    let mut fresh = server.connect();
    roundtrip(&mut fresh, b"fresh\n");
    server.stop().unwrap();
}

#[test]
fn a_panic_in_on_accept_or_on_tick_is_contained() {
    let closes = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(
        Server::builder()
            .workers(1)
            .tick_interval(Duration::from_millis(20)),
        fragile(&closes, true),
    );
    let mut first = server.connect();
    roundtrip(&mut first, b"one\n");
    let mut second = server.connect();
    roundtrip(&mut second, b"two\n");
    // The third accept panics: that connection is closed, nothing else.
    let mut third = server.connect();
    let mut got = Vec::new();
    let _ = third.read_to_end(&mut got);
    assert!(got.is_empty());
    // And the tick panicked once (the first tick after the start).
    server.wait_for("both panics counted", Duration::from_secs(10), |m| {
        m.handler_panics == 2 && m.closed(CloseReason::Panic) == 1 && m.accepted == 3
    });
    let mut fourth = server.connect();
    roundtrip(&mut fourth, b"four\n");
    roundtrip(&mut first, b"still\n");
    server.stop().unwrap();
}

#[test]
fn a_worker_that_dies_stops_the_server_whichever_it_is() {
    // The factory of worker 1 (not 0) panics: `run` returns that error,
    // and promptly, instead of serving on with one worker gone.
    let server = Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .handle_signals(false)
        .build(|info| {
            assert!(info.index != 1, "worker 1 cannot start");
            util::Echo::default()
        })
        .unwrap();
    let started = std::time::Instant::now();
    let err = server.run().unwrap_err();
    assert!(
        matches!(err, corelane::Error::Panic { worker: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("worker 1 cannot start"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
