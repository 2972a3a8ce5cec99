//! A connection's state inside a worker, and the token that names it.

use std::time::Instant;

use mio::net::TcpStream;
use mio::Token;

use crate::buffer::Output;
use crate::handler::CloseReason;
use crate::options::ServerOptions;
use crate::timer::Tick;

/// A mio token for a connection: its slab key in the low 32 bits and a
/// generation in the high bits, so an event for a slot that was closed and
/// reused in the meantime is recognised (the generations differ) and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnToken {
    /// Slab key.
    pub key: usize,
    /// Generation of the connection in that slot.
    pub generation: u32,
}

impl ConnToken {
    /// Generations wrap below this, which keeps connection tokens clear of the
    /// listener and waker tokens at the top of the range.
    pub const GENERATION_MASK: u32 = 0x7fff_ffff;
}

impl From<ConnToken> for Token {
    fn from(t: ConnToken) -> Token {
        debug_assert!(t.key <= u32::MAX as usize);
        Token(((t.generation as usize) << 32) | (t.key & 0xffff_ffff))
    }
}

impl From<Token> for ConnToken {
    fn from(t: Token) -> ConnToken {
        ConnToken {
            key: t.0 & 0xffff_ffff,
            generation: ((t.0 >> 32) as u32) & Self::GENERATION_MASK,
        }
    }
}

/// One accepted connection.
#[derive(Debug)]
pub(crate) struct Conn<S> {
    pub(crate) stream: TcpStream,
    /// The handler's state; taken out when the connection closes.
    pub(crate) state: Option<S>,
    pub(crate) generation: u32,
    pub(crate) id: u64,
    /// Unconsumed input; holds no allocation while empty.
    pub(crate) input: Vec<u8>,
    pub(crate) output: Output,
    /// The socket may have bytes to read (an edge arrived, or a budget or the
    /// high-water mark stopped reading early).
    pub(crate) want_read: bool,
    /// FIN or an error was signalled: read until 0 or the error.
    pub(crate) eof_hint: bool,
    /// The peer shut down its sending side.
    pub(crate) read_closed: bool,
    /// At least one message was consumed by the handler.
    pub(crate) served: bool,
    /// Close once the output is flushed.
    pub(crate) close_after_flush: Option<CloseReason>,
    /// Our side sent FIN; discarding input until the peer's FIN.
    pub(crate) lingering: bool,
    pub(crate) linger_since: Instant,
    /// When the message now being received started (or, before the first
    /// message, when the connection was accepted). `None` between messages.
    pub(crate) message_start: Option<Instant>,
    /// When the last message was finished.
    pub(crate) last_active: Instant,
    /// When output last made progress.
    pub(crate) last_progress: Instant,
    /// The tick of this connection's live timer-wheel entry.
    pub(crate) scheduled: Option<Tick>,
}

impl<S> Conn<S> {
    pub(crate) fn new(stream: TcpStream, state: S, generation: u32, id: u64, now: Instant) -> Self {
        Conn {
            stream,
            state: Some(state),
            generation,
            id,
            input: Vec::new(),
            output: Output::default(),
            want_read: false,
            eof_hint: false,
            read_closed: false,
            served: false,
            close_after_flush: None,
            lingering: false,
            linger_since: now,
            message_start: Some(now),
            last_active: now,
            last_progress: now,
            scheduled: None,
        }
    }

    /// Nothing received and not consumed, nothing waiting to be written.
    pub(crate) fn is_idle(&self) -> bool {
        self.input.is_empty() && self.output.is_empty() && !self.lingering
    }

    /// The deadline in force and the reason to close at it, from the
    /// connection's state: lingering, stalled output, a message in progress,
    /// or idle between messages.
    pub(crate) fn deadline(&self, opts: &ServerOptions) -> Option<(Instant, CloseReason)> {
        if self.lingering {
            return Some((
                self.linger_since + opts.linger_timeout,
                CloseReason::Handler,
            ));
        }
        if !self.output.is_empty() {
            return opts
                .write_timeout
                .map(|t| (self.last_progress + t, CloseReason::WriteTimeout));
        }
        if let Some(start) = self.message_start {
            return opts
                .header_timeout
                .map(|t| (start + t, CloseReason::HeaderTimeout));
        }
        opts.idle_timeout
            .map(|t| (self.last_active + t, CloseReason::IdleTimeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_tells_generations_apart() {
        for (key, generation) in [(0, 0), (1, 1), (12345, 0x7fff_ffff), (u32::MAX as usize, 7)] {
            let t: Token = ConnToken { key, generation }.into();
            assert_eq!(ConnToken::from(t), ConnToken { key, generation });
        }
        let old: Token = ConnToken {
            key: 3,
            generation: 10,
        }
        .into();
        let new: Token = ConnToken {
            key: 3,
            generation: 11,
        }
        .into();
        assert_ne!(old, new);
    }

    #[test]
    fn connection_tokens_never_collide_with_reserved_ones() {
        let t: Token = ConnToken {
            key: u32::MAX as usize,
            generation: ConnToken::GENERATION_MASK,
        }
        .into();
        assert!(t.0 < usize::MAX - 1);
    }
}
