//! The handler trait: what a server built on corelane implements.

use std::ffi::CStr;
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::buffer::{Input, Output};
use crate::context::{ConnHandle, Context};
use crate::mailbox::Message;

/// A protocol implementation, one instance per worker.
///
/// Each worker builds its own handler on its own thread from the factory given
/// to [`ServerBuilder::build`](crate::ServerBuilder::build), so a handler need
/// not be `Send` and may keep per-worker caches (a formatted `Date` header,
/// scratch buffers) without locks.
///
/// The worker calls the handler for one connection at a time:
/// [`on_accept`](Handler::on_accept) once, [`on_data`](Handler::on_data) each
/// time new bytes arrive, and [`on_close`](Handler::on_close) once at the end.
///
/// # Panics
///
/// A panic in a callback is caught on the worker's thread: the connection it
/// was handling is closed at once with [`CloseReason::Panic`] (in
/// `on_accept` and `on_data`; `on_close` still runs for it), the panic is
/// counted ([`WorkerMetrics::handler_panics`](crate::WorkerMetrics::handler_panics),
/// the `panic` probe) and logged with the worker and connection, and the
/// worker goes on serving every other connection. The handler itself is
/// kept, so it must not be left in a state its other connections cannot
/// live with (as with any `catch_unwind`). Built with `panic = "abort"`, a
/// panic aborts the whole process instead: run it under a supervisor
/// (systemd `Restart=`) that restarts it.
pub trait Handler {
    /// Per-connection state, created by [`on_accept`](Handler::on_accept).
    type Conn;

    /// A new connection was accepted. Returns its state.
    ///
    /// `cx` acts on this worker's connections and sets timers (see
    /// [`Context`]); [`Accepted::handle`] names this connection for later.
    fn on_accept(&mut self, conn: &Accepted, cx: &mut Context<'_>) -> Self::Conn;

    /// Bytes arrived. Consume whole messages from `input` (what is left is
    /// presented again with more bytes on the next call), append replies to
    /// `output`, and say whether to keep the connection.
    ///
    /// Replies appended during one turn of the worker are flushed together,
    /// with one write, after the read that brought their requests.
    fn on_data(
        &mut self,
        conn: &mut Self::Conn,
        input: &mut Input<'_>,
        output: &mut Output,
        cx: &mut Context<'_>,
    ) -> Action;

    /// The connection was closed, for `reason`. Its output, if any was left,
    /// has been flushed or dropped as the reason says.
    fn on_close(&mut self, conn: Self::Conn, reason: CloseReason, cx: &mut Context<'_>) {
        let _ = (conn, reason, cx);
    }

    /// Called once when this worker begins to drain (a graceful shutdown
    /// past its drain delay, a hand-over to a process taking over, or the
    /// worker stopping alone), right after its listener closed. The worker
    /// stops when its last connection has closed, so close here what the
    /// handler keeps open on its own account, such as idle pooled outbound
    /// connections (nginx closes its upstream keep-alive connections the
    /// same way); connections with work in flight finish as usual.
    fn on_drain(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// Called on every worker at the tick interval (one second by default),
    /// and once when the worker starts: refresh per-worker caches here.
    fn on_tick(&mut self, now: SystemTime, cx: &mut Context<'_>) {
        let _ = (now, cx);
    }

    /// A timer set with [`Context::set_timer`] fired, with its `tag`: for
    /// a connection (`conn` is its state, [`Context::conn`] its handle), or
    /// for the worker (`None`).
    fn on_timer(&mut self, conn: Option<&mut Self::Conn>, tag: u64, cx: &mut Context<'_>) {
        let _ = (conn, tag, cx);
    }

    /// The connection's unwritten output fell below the low-water mark
    /// ([`output_low_water`](crate::ServerOptions::output_low_water)) after
    /// having reached it: append the next part of a large body to
    /// `output` here, instead of queueing all of it at once.
    fn on_writable(&mut self, conn: &mut Self::Conn, output: &mut Output, cx: &mut Context<'_>) {
        let _ = (conn, output, cx);
    }

    /// A connection opened with [`Context::connect`] is established.
    /// Returns its state; from here on it is served as an accepted one
    /// (`on_data`, `on_writable`, timers, `on_close`). `None` (the
    /// default, for handlers that never connect) closes it.
    fn on_connected(&mut self, conn: &Connected, cx: &mut Context<'_>) -> Option<Self::Conn> {
        let _ = (conn, cx);
        None
    }

    /// A connection opened with [`Context::connect`] could not be
    /// established, for `error`; its handle is closed.
    fn on_connect_failed(
        &mut self,
        conn: ConnHandle,
        tag: u64,
        error: ConnectError,
        cx: &mut Context<'_>,
    ) {
        let _ = (conn, tag, error, cx);
    }

    /// A message arrived in this worker's mailbox (see
    /// [`Mailboxes`](crate::Mailboxes)): posted by a worker or another
    /// thread, or an offloaded job's result. `conn` is the state of the
    /// connection it was posted to (then [`Context::conn`] is its handle),
    /// `None` for the worker.
    fn on_message(
        &mut self,
        conn: Option<&mut Self::Conn>,
        message: Message,
        cx: &mut Context<'_>,
    ) {
        let _ = (conn, message, cx);
    }
}

/// What a worker knows about a connection it opened, once established.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Connected {
    /// The address connected to.
    pub peer: SocketAddr,
    /// Index of the worker that opened it.
    pub worker: usize,
    /// An id unique within the worker (also the `conn_id` of the probes).
    pub id: u64,
    /// The handle [`Context::connect`] returned.
    pub handle: ConnHandle,
    /// The tag given to [`Context::connect`].
    pub tag: u64,
}

/// Why a connection opened with [`Context::connect`] was not established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The peer refused it (nothing listens there: `ECONNREFUSED`).
    #[error("connection refused")]
    Refused,
    /// No answer within the connect timeout.
    #[error("connect timed out")]
    TimedOut,
    /// No route to the address (`ENETUNREACH`, `EHOSTUNREACH`).
    #[error("address unreachable")]
    Unreachable,
    /// Out of descriptors, memory or local ports, or the worker is at its
    /// connection cap.
    #[error("out of resources to connect")]
    NoResources,
    /// The server is closing every connection.
    #[error("the server is shutting down")]
    Shutdown,
    /// Another error.
    #[error("connect failed: {0}")]
    Other(std::io::ErrorKind),
}

impl ConnectError {
    /// A short, stable name (`refused`, `timed_out`, ...), for metrics and
    /// logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectError::Refused => "refused",
            ConnectError::TimedOut => "timed_out",
            ConnectError::Unreachable => "unreachable",
            ConnectError::NoResources => "no_resources",
            ConnectError::Shutdown => "shutdown",
            ConnectError::Other(_) => "other",
        }
    }

    pub(crate) fn from_io(e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => ConnectError::Refused,
            Some(libc::ETIMEDOUT) => ConnectError::TimedOut,
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => ConnectError::Unreachable,
            Some(
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL,
            ) => ConnectError::NoResources,
            _ => ConnectError::Other(e.kind()),
        }
    }
}

/// What a worker knows about a connection it has just accepted.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Accepted {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Index of the worker that accepted it.
    pub worker: usize,
    /// An id unique within the worker (also the `conn_id` of the probes).
    pub id: u64,
    /// Names the connection from any later callback of this worker.
    pub handle: ConnHandle,
}

/// What the handler wants done with the connection after [`Handler::on_data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep the connection open and wait for more bytes.
    Continue,
    /// Flush the output, then close the connection. Input left
    /// unconsumed makes the close linger (FIN first, then what the peer
    /// still sends is read and dropped until its FIN or the linger
    /// timeout), so a reply to a request the handler refused (say, a body
    /// too large) is not destroyed by a reset: leave the unread bytes
    /// unconsumed when more may be on their way. A handler that consumed
    /// everything, on a socket that was drained, is closed at once.
    Close,
}

/// Why a connection was closed. Counted per worker in
/// [`WorkerMetrics::closed`](crate::WorkerMetrics::closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its side and every reply was flushed.
    PeerClosed,
    /// The peer reset the connection (or it broke: `EPIPE`).
    Reset,
    /// The handler returned [`Action::Close`].
    Handler,
    /// No bytes arrived within the idle keep-alive timeout.
    IdleTimeout,
    /// A message (or the first byte) did not arrive in full within the header timeout.
    HeaderTimeout,
    /// Output made no progress within the write-stall timeout.
    WriteTimeout,
    /// The handler left more unconsumed input than the input limit allows.
    InputTooLarge,
    /// The server shut down.
    Shutdown,
    /// Another I/O error.
    Error,
    /// A handler callback panicked while handling the connection: it was
    /// closed at once (its unwritten output dropped), and the worker went on
    /// serving the others.
    Panic,
    /// TLS failed: a handshake that could not complete (no shared version
    /// or cipher, not TLS at all) or a record that did not decrypt. The
    /// alert saying why was sent.
    TlsError,
}

impl CloseReason {
    /// Every reason, in the order of [`index`](CloseReason::index).
    pub const ALL: [CloseReason; 11] = [
        CloseReason::PeerClosed,
        CloseReason::Reset,
        CloseReason::Handler,
        CloseReason::IdleTimeout,
        CloseReason::HeaderTimeout,
        CloseReason::WriteTimeout,
        CloseReason::InputTooLarge,
        CloseReason::Shutdown,
        CloseReason::Error,
        CloseReason::Panic,
        CloseReason::TlsError,
    ];

    /// A short, stable name (`peer_closed`, `idle_timeout`, ...), used in
    /// metrics and as the `close` probe's reason string.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.as_cstr().to_str().unwrap_or("?")
    }

    /// The name as a static C string, for probes.
    #[must_use]
    pub fn as_cstr(self) -> &'static CStr {
        match self {
            CloseReason::PeerClosed => c"peer_closed",
            CloseReason::Reset => c"reset",
            CloseReason::Handler => c"handler",
            CloseReason::IdleTimeout => c"idle_timeout",
            CloseReason::HeaderTimeout => c"header_timeout",
            CloseReason::WriteTimeout => c"write_timeout",
            CloseReason::InputTooLarge => c"input_too_large",
            CloseReason::Shutdown => c"shutdown",
            CloseReason::Error => c"error",
            CloseReason::Panic => c"panic",
            CloseReason::TlsError => c"tls_error",
        }
    }

    /// Position in [`ALL`](CloseReason::ALL).
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_in_order_and_have_distinct_names() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut names: Vec<_> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CloseReason::ALL.len());
    }
}
