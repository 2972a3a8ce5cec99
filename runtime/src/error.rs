//! The error type of the runtime.

use std::io;
use std::net::SocketAddr;

/// Why a server could not start, or why it stopped with an error.
///
/// Each variant says what was being done and to what, so the message alone is
/// enough to act on (`binding 0.0.0.0:80: Permission denied (os error 13)`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options contradict each other or are out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Creating or configuring a listening socket failed.
    #[error("creating a listening socket for {addr}: {source}")]
    Socket {
        /// The address the socket was for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: io::Error,
    },
    /// Binding a listener failed (address in use, not permitted, not local).
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The operating system's reason.
        source: io::Error,
    },
    /// `listen(2)` failed.
    #[error("listening on {addr} (backlog {backlog}): {source}")]
    Listen {
        /// The bound address.
        addr: SocketAddr,
        /// The backlog asked for.
        backlog: i32,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The process's CPU affinity mask could not be read.
    #[error("reading the CPU affinity mask: {0}")]
    Affinity(#[source] io::Error),
    /// A worker could not be pinned to its CPU.
    #[error("pinning worker {worker} to CPU {cpu}: {source}")]
    Pin {
        /// Worker index.
        worker: usize,
        /// The CPU asked for.
        cpu: usize,
        /// The operating system's reason.
        source: io::Error,
    },
    /// A worker thread could not be started.
    #[error("starting worker {worker}: {source}")]
    Spawn {
        /// Worker index.
        worker: usize,
        /// The operating system's reason.
        source: io::Error,
    },
    /// An offload thread could not be started.
    #[error("starting the offload threads: {0}")]
    Offload(#[source] io::Error),
    /// A worker's event loop failed (creating or waiting on its epoll instance).
    #[error("worker {worker}: {source}")]
    Worker {
        /// Worker index.
        worker: usize,
        /// The operating system's reason.
        source: io::Error,
    },
    /// A worker panicked outside a handler callback (in the handler
    /// factory, or a bug in the runtime); the other workers were shut down.
    /// A panic inside a callback only closes its connection (see
    /// [`Handler`](crate::Handler#panics)).
    #[error("worker {worker} panicked: {message}")]
    Panic {
        /// Worker index.
        worker: usize,
        /// The panic message.
        message: String,
    },
    /// [`ServerOptions::user`](crate::ServerOptions::user) could not be
    /// switched to.
    #[error("dropping privileges to user `{user}`: {source}")]
    Privileges {
        /// The user asked for.
        user: String,
        /// Why it failed (`EPERM` when not started as root).
        #[source]
        source: io::Error,
    },
    /// Another corelane process serves the address, and
    /// [`takeover`](crate::ServerOptions::takeover) was not asked for.
    #[error("{addr} is already served by corelane (pid {pid}); to replace it without dropping connections, start the new server with takeover (`ServerBuilder::takeover`)")]
    Served {
        /// The address.
        addr: SocketAddr,
        /// The serving process.
        pid: u32,
    },
    /// The corelane process serving the address could not be asked who it
    /// is (its control socket answered something unexpected, or refused
    /// this user).
    #[error("asking the corelane process serving {addr} through its control socket: {source}")]
    Takeover {
        /// The address.
        addr: SocketAddr,
        /// What went wrong talking to the serving process.
        source: io::Error,
    },
    /// SIGINT/SIGTERM handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(#[source] io::Error),
}

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
