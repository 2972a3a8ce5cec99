//! USDT probes: the one place the runtime fires them.
//!
//! Provider `corelane`, SystemTap SDT notes emitted by the `probe` crate: each
//! probe site is a single `nop` plus an ELF note naming it and saying where its
//! arguments are. Untraced, the cost is that `nop` and keeping the arguments
//! in registers; when a tracer attaches (`bpftrace -p PID`), the kernel turns
//! the `nop` into a breakpoint. Argument 0 is always the worker index. Every
//! argument is passed as a 64-bit integer; strings are pointers to static,
//! NUL-terminated C strings (`str(arg1)` in bpftrace).
//!
//! | probe | arguments |
//! |---|---|
//! | `accept` | worker, fd, conn_id |
//! | `connect` | worker, fd, conn_id (an outbound connect started) |
//! | `connected` | worker, fd, conn_id (it is established) |
//! | `read` | worker, fd, conn_id, bytes |
//! | `write` | worker, fd, conn_id, bytes |
//! | `close` | worker, fd, conn_id, reason |
//! | `gc_start` | worker, kind |
//! | `gc_done` | worker, kind, freed, nanoseconds |
//! | `steer` | worker, mode |
//! | `panic` | worker, conn_id (`u64::MAX` outside a connection) |
//! | `tls_handshake` | worker, conn_id, nanoseconds since accept, resumed (0 or 1) |
//! | `tls_error` | worker, conn_id, reason |
//!
//! An outbound connection fires `connect` and `connected` instead of
//! `accept`, then `read`, `write` and `close` as an accepted one does; a
//! connect that fails fires `close` with the reason `connect_failed`.
//!
//! The `tls_*` probes exist in builds with the `tls` feature. `tls_error`'s
//! reason is one of `invalid_message` (not TLS, or malformed),
//! `peer_incompatible` (no shared version or cipher suite),
//! `peer_misbehaved`, `alert_received`, `decrypt_error`, `other`.
//!
//! Built without the `probes` feature, every function here is empty.

use std::ffi::CStr;

/// A reclamation pass, the runtime's GC-like events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GcKind {
    /// The buffer pool freed idle buffers beyond its bound.
    PoolTrim,
    /// The timer wheel's expiry pass closed timed-out connections.
    IdleSweep,
    /// The connection table shrank after a spike.
    SlabShrink,
}

impl GcKind {
    pub(crate) fn as_cstr(self) -> &'static CStr {
        match self {
            GcKind::PoolTrim => c"pool_trim",
            GcKind::IdleSweep => c"idle_sweep",
            GcKind::SlabShrink => c"slab_shrink",
        }
    }
}

#[cfg(feature = "probes")]
macro_rules! fire {
    ($name:ident $(, $arg:expr)*) => { probe::probe!(corelane, $name $(, $arg)*) };
}

#[cfg(not(feature = "probes"))]
macro_rules! fire {
    ($name:ident $(, $arg:expr)*) => {{ $( let _ = $arg; )* }};
}

/// A connection was accepted.
#[inline(always)]
pub(crate) fn accept(worker: usize, fd: i32, conn_id: u64) {
    fire!(accept, worker, fd, conn_id);
}

/// An outbound connect started.
#[inline(always)]
pub(crate) fn connect(worker: usize, fd: i32, conn_id: u64) {
    fire!(connect, worker, fd, conn_id);
}

/// An outbound connect completed.
#[inline(always)]
pub(crate) fn connected(worker: usize, fd: i32, conn_id: u64) {
    fire!(connected, worker, fd, conn_id);
}

/// One `recvfrom(2)` returned `bytes` (> 0).
#[inline(always)]
pub(crate) fn read(worker: usize, fd: i32, conn_id: u64, bytes: usize) {
    fire!(read, worker, fd, conn_id, bytes);
}

/// One `send(2)`/`sendmsg(2)` wrote `bytes` (> 0).
#[inline(always)]
pub(crate) fn write(worker: usize, fd: i32, conn_id: u64, bytes: usize) {
    fire!(write, worker, fd, conn_id, bytes);
}

/// A connection is being closed for `reason`.
#[inline(always)]
pub(crate) fn close(worker: usize, fd: i32, conn_id: u64, reason: &'static CStr) {
    fire!(close, worker, fd, conn_id, reason.as_ptr());
}

/// A reclamation pass starts.
#[inline(always)]
pub(crate) fn gc_start(worker: usize, kind: GcKind) {
    fire!(gc_start, worker, kind.as_cstr().as_ptr());
}

/// A reclamation pass ended, having freed `freed` items in `nanos` ns.
#[inline(always)]
pub(crate) fn gc_done(worker: usize, kind: GcKind, freed: usize, nanos: u64) {
    fire!(gc_done, worker, kind.as_cstr().as_ptr(), freed, nanos);
}

/// The steering mode in force for this worker (at start-up and on change).
#[inline(always)]
pub(crate) fn steer(worker: usize, mode: &'static CStr) {
    fire!(steer, worker, mode.as_ptr());
}

/// A handler callback panicked; `conn_id` is `u64::MAX` for a callback
/// outside any connection (`on_tick`).
#[inline(always)]
pub(crate) fn panic(worker: usize, conn_id: u64) {
    fire!(panic, worker, conn_id);
}

/// A TLS handshake completed, `nanos` after the accept.
#[cfg(feature = "tls")]
#[inline(always)]
pub(crate) fn tls_handshake(worker: usize, conn_id: u64, nanos: u64, resumed: bool) {
    fire!(tls_handshake, worker, conn_id, nanos, u64::from(resumed));
}

/// TLS failed on a connection (it is closed with `tls_error`).
#[cfg(feature = "tls")]
#[inline(always)]
pub(crate) fn tls_error(worker: usize, conn_id: u64, reason: &'static CStr) {
    fire!(tls_error, worker, conn_id, reason.as_ptr());
}
