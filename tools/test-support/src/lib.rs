//! What corelane's test suites share: the one rule for tests that need root
//! or a tool, `/proc` readers, binaries of the workspace (and copies of them
//! another user can run), and an in-process server.
//!
//! A dev-dependency only: no library depends on it.

#![deny(missing_docs)]

pub mod binary;
pub mod net;
pub mod proc;
pub mod require;
mod server;
pub mod tracer;

use std::time::{Duration, Instant};

pub use server::TestServer;

/// Waits until `cond` holds, at most `limit` (checking every 5 ms); returns
/// whether it did.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// Runs `f` on a thread pinned to `cpu` and returns its result.
///
/// # Panics
///
/// If the thread cannot be pinned, or `f` panics.
pub fn on_cpu<T: Send + 'static>(cpu: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        pin_current_thread(cpu);
        f()
    })
    .join()
    .unwrap()
}

/// Pins the calling thread to `cpu`.
///
/// # Panics
///
/// If `sched_setaffinity(2)` refuses (no such CPU, or not allowed).
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t; CPU_SET checks the bound.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid set of the size given, for the calling thread (0).
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        rc,
        0,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}
