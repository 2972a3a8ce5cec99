//! Steady state allocates nothing per request: a counting global allocator
//! counts every allocation made on the server's worker threads while they
//! serve keep-alive and pipelined requests.

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use corelane::Server;
use corelane_http::{Http, HttpOptions};
use util::read_response;

struct Counting;

static WORKER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on worker threads (by the handler factory, which runs there).
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: defers to the system allocator; only adds a counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON_WORKER.with(Cell::get) {
            WORKER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON_WORKER.with(Cell::get) {
            WORKER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn keep_alive_and_pipelined_requests_allocate_nothing() {
    let opts = HttpOptions::default();
    let factory = Http::factory(opts);
    let server = Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .handle_signals(false)
        .max_input(opts.max_input())
        .build(move |info| {
            ON_WORKER.with(|c| c.set(true));
            factory(info)
        })
        .unwrap();
    let addr = server.local_addr();
    let shutdown = server.shutdown_handle();
    let t = std::thread::spawn(move || server.run());

    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    let mut piped = std::net::TcpStream::connect(addr).unwrap();
    let one = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n";
    let sixteen: Vec<u8> = (0..16)
        .flat_map(|i| {
            if i % 2 == 0 {
                &one[..]
            } else {
                &b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n"[..]
            }
        })
        .copied()
        .collect();
    let mut buf = Vec::with_capacity(1 << 16);
    let mut round = |plain: &mut std::net::TcpStream, piped: &mut std::net::TcpStream| {
        plain.write_all(one).unwrap();
        assert_eq!(read_response(plain, &mut buf, false).status, 200);
        piped.write_all(&sixteen).unwrap();
        for _ in 0..16 {
            assert_eq!(read_response(piped, &mut buf, false).status, 200);
        }
        plain
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
        assert_eq!(read_response(plain, &mut buf, false).body, b"hello");
    };
    // Warm up: the pool, the connection table and the timer wheel reach
    // their working size.
    for _ in 0..200 {
        round(&mut plain, &mut piped);
    }
    let before = WORKER_ALLOCATIONS.load(Ordering::Relaxed);
    // Long enough for the once-a-second tick (Date, cached responses) to run
    // at least twice.
    let start = std::time::Instant::now();
    let mut requests = 0;
    while start.elapsed() < std::time::Duration::from_millis(2500) {
        round(&mut plain, &mut piped);
        requests += 18;
    }
    let after = WORKER_ALLOCATIONS.load(Ordering::Relaxed);
    assert!(
        before > 0,
        "the counter sees worker allocations (start-up allocates)"
    );
    assert_eq!(
        after - before,
        0,
        "{} allocations for {requests} requests",
        after - before
    );
    shutdown.shutdown_now();
    t.join().unwrap().unwrap();
}
