//! The token that names a connection in the worker's poll.

use mio::Token;

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
