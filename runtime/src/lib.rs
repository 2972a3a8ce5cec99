//! corelane: a thread-per-core TCP server runtime for Linux.
//!
//! One worker thread per CPU, pinned to it, runs its own edge-triggered epoll
//! loop (mio) over its own listening socket. The listeners share one port
//! through `SO_REUSEPORT`, so the kernel spreads new connections over the
//! workers without any lock or handoff between threads. Each worker owns its
//! connections, buffers and timers outright.
//!
//! You write a [`Handler`]: per-connection state, what to do with bytes that
//! arrived, and optionally what to do on close, on each tick, when a timer
//! fires and when output drains. Every callback gets a [`Context`], which
//! acts on any connection of the worker by [`ConnHandle`] and sets timers. The runtime
//! does the rest: accepting under budgets, reading until the socket drains,
//! flushing replies in one write, backpressure, header/idle/write timeouts,
//! descriptor exhaustion, graceful shutdown and per-worker metrics.
//!
//! # Example: an echo server
//!
//! ```no_run
//! use corelane::{Accepted, Action, Context, Handler, Input, Output, Server};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Conn = ();
//!
//!     fn on_accept(&mut self, _conn: &Accepted, _cx: &mut Context<'_>) {}
//!
//!     fn on_data(
//!         &mut self,
//!         _conn: &mut (),
//!         input: &mut Input<'_>,
//!         output: &mut Output,
//!         _cx: &mut Context<'_>,
//!     ) -> Action {
//!         let bytes = input.bytes();
//!         output.extend_from_slice(bytes);
//!         input.consume(bytes.len());
//!         Action::Continue
//!     }
//! }
//!
//! fn main() -> Result<(), corelane::Error> {
//!     let server = Server::builder()
//!         .addr("127.0.0.1:7000".parse().unwrap())
//!         .build(|_worker| Echo)?;
//!     println!("echo on {}", server.local_addr());
//!     server.run() // until SIGINT/SIGTERM
//! }
//! ```
//!
//! # The edge-triggered contract
//!
//! Sockets are registered edge-triggered: epoll reports a socket once when it
//! becomes readable, not again while bytes remain. The worker therefore reads
//! until `WouldBlock` or a short read, and when a budget stops it earlier
//! (accepts per turn, reads per connection per turn) it resumes that work
//! itself on its next turn. Handlers never see this: they get all the bytes
//! that arrived, and whatever they leave unconsumed is presented again.
//!
//! # Memory
//!
//! An idle connection holds no buffer: read and write buffers come from the
//! worker's pool when bytes arrive and go back when drained.
//!
//! # Probes
//!
//! The runtime fires USDT probes (SystemTap SDT notes, provider `corelane`)
//! that `bpftrace -p PID` or `perf` can attach to while the server runs. Each
//! is a single `nop` when nobody traces; the `probes` feature (on by default)
//! compiles them in. All arguments are 64-bit integers; argument 0 is always
//! the worker index; strings are pointers to static C strings (`str(argN)`).
//!
//! | probe | arguments | when it fires |
//! |---|---|---|
//! | `accept` | worker, fd, conn_id | a connection was accepted (`conn_id` is unique per worker) |
//! | `read` | worker, fd, conn_id, bytes | a `recvfrom(2)` returned `bytes` > 0 |
//! | `write` | worker, fd, conn_id, bytes | a `send(2)`/`sendmsg(2)` wrote `bytes` > 0 |
//! | `close` | worker, fd, conn_id, reason | a connection is closed; `reason` is a [`CloseReason`] name |
//! | `gc_start` | worker, kind | a reclamation pass begins: `pool_trim`, `idle_sweep` or `slab_shrink` |
//! | `gc_done` | worker, kind, freed, nanoseconds | it ended, freeing `freed` buffers / timed-out connections / table slots |
//! | `steer` | worker, mode | the steering mode in force, at worker start |
//! | `panic` | worker, conn_id | a handler callback panicked (`conn_id` is `u64::MAX` in `on_tick`); the connection is closed with reason `panic` |
//!
//! The reclamation passes are the runtime's GC-like events: `pool_trim`
//! returns idle pooled buffers beyond
//! [`pool_max_idle`](ServerOptions::pool_max_idle) to the allocator once the
//! pool has held them for [`reclaim_after`](ServerOptions::reclaim_after);
//! `idle_sweep` is the timer wheel's expiry pass; `slab_shrink` compacts the
//! connection table when it stays under a quarter full after a spike.
//!
//! Binaries linked by rust-lld need `-z separate-loadable-segments` for perf
//! 6.1 to place uprobes correctly (see the README).

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod buffer;
#[cfg(feature = "cli")]
pub mod cli;
mod conn;
mod context;
mod error;
mod handle;
mod handler;
mod listener;
#[cfg(feature = "logging")]
pub mod logging;
mod mailbox;
mod metrics;
mod notify;
mod options;
mod panic;
mod probes;
mod prometheus;
mod server;
mod shutdown;
mod steering;
mod sys;
mod takeover;
mod timer;
#[cfg(feature = "tls")]
pub mod tls;
mod worker;

pub use buffer::{Input, Output, TlsInfo};
pub use context::{ConnHandle, Context, DetachedContext, HandleError, TimerId};
pub use error::{Error, Result};
pub use handler::{Accepted, Action, CloseReason, ConnectError, Connected, Handler};
pub use mailbox::{JobPanicked, Mailboxes, Message, OffloadError, Origin, PostError};
pub use metrics::{Metrics, WorkerMetrics};
pub use options::{ServerOptions, Workers};
pub use prometheus::prometheus_family;
pub use server::{Server, ServerBuilder};
pub use shutdown::{ServerState, ShutdownHandle};
pub use steering::{Policy, Steering, SteeringStats};
pub use worker::WorkerInfo;

/// Re-exported so handlers can queue shared chunks with [`Output::push_bytes`].
pub use bytes::Bytes;

/// Internals exposed for benchmarks only (feature `internals`): no
/// stability promise.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::buffer::BufferPool;
    pub use crate::conn::ConnToken;
    pub use crate::timer::{Entry, Tick, TimerWheel};
}

/// `docs/handlers.md`: a runnable example of each thing a handler can do
/// beyond answering (handles, outbound connects, timers, streaming,
/// mailboxes, offloading, panic isolation), run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/handlers.md")]
pub struct HandlerDocs;

/// The README's examples, compiled and run as doctests so they stay true
/// (they use the `cli` feature, which the workspace's binaries turn on).
#[cfg(all(doctest, feature = "cli"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
