//! A connection the worker opens: [`Phase::Connecting`] until the connect's
//! outcome, then served like any accepted one.

use std::io;
use std::time::Instant;

use mio::net::TcpStream;

use super::{Activity, Conn, Phase, Readable};

impl<S> Conn<S> {
    /// A connection being opened (see [`Phase::Connecting`]); it has no
    /// handler state until it is established.
    pub(crate) fn connecting(
        stream: TcpStream,
        generation: u32,
        id: u64,
        now: Instant,
        deadline: Instant,
        tag: u64,
    ) -> Self {
        Conn {
            phase: Phase::Connecting { deadline, tag },
            // The connect's outcome comes as a writable edge.
            watch_writable: true,
            activity: Activity::Idle { since: now },
            ..Conn::new_open(stream, None, generation, id, now)
        }
    }

    /// The handler's tag while the connect is in progress.
    #[inline]
    pub(crate) fn connect_tag(&self) -> Option<u64> {
        match self.phase {
            Phase::Connecting { tag, .. } => Some(tag),
            _ => None,
        }
    }

    /// The connect completed: the handler's state, and from now on it is
    /// served as any other connection, idle until the peer's first byte
    /// (bytes may already be in the socket: read once).
    pub(crate) fn established(&mut self, user: S, now: Instant) {
        self.user = Some(user);
        self.phase = Phase::Open;
        self.activity = Activity::Idle { since: now };
        self.last_progress = now;
        self.readable = Readable::Yes;
    }

    /// The connect's outcome, once an event came: `Ok(Some(peer))`
    /// established, `Ok(None)` still in progress.
    ///
    /// # Errors
    ///
    /// Why it failed.
    pub(crate) fn connect_outcome(&self) -> io::Result<Option<std::net::SocketAddr>> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(peer) => Ok(Some(peer)),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(None),
            Err(e) => Err(e),
        }
    }
}
