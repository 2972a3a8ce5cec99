//! `blind-proxy`: the floor of any TCP reverse proxy, to measure
//! corelane-proxy and nginx against.
//!
//! No framework and no HTTP: one thread, one listener, edge-triggered mio.
//! Each accepted client connection is paired with its own new upstream
//! connection, and bytes are copied both ways as they come, with a read
//! until a short read and one write per read. What a socket does not take
//! waits in a buffer for its writable edge (and reading the other side
//! stops until it drains). This is the least work a proxy can do per
//! request: the same reads and writes any HTTP proxy makes, with no
//! parsing, no pooling and no rewriting. The upstream connect blocks the
//! loop (a measuring tool on loopback, where it completes at once; the
//! load keeps its connections open, so none are made while measuring).
//!
//! ```text
//! taskset -c 0 blind-proxy --addr 127.0.0.1:8090 --upstream 127.0.0.1:8080
//! ```

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

#[derive(Debug, Parser)]
#[command(name = "blind-proxy", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
    /// The upstream every client connection is paired with.
    #[arg(long)]
    upstream: SocketAddr,
}

const LISTENER: Token = Token(usize::MAX);

/// One side of a pair: its socket and what it has not yet taken.
struct Side {
    stream: TcpStream,
    pending: Vec<u8>,
}

/// A client connection and its upstream connection. Token `2k` is the
/// client of pair `k`, `2k + 1` its upstream.
struct Pair {
    sides: [Side; 2],
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(args.addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut pairs: Slab<Pair> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in &events {
            if event.token() == LISTENER {
                accept(&poll, &mut listener, &mut pairs, args.upstream);
                continue;
            }
            let (k, side) = (event.token().0 / 2, event.token().0 % 2);
            let Some(pair) = pairs.get_mut(k) else {
                continue;
            };
            let open = (!event.is_writable() || flush(pair, side, &mut buf).is_ok())
                && (!(event.is_readable() || event.is_read_closed())
                    || copy(pair, side, &mut buf).is_ok());
            if !open {
                let pair = pairs.remove(k);
                for mut s in pair.sides {
                    let _ = poll.registry().deregister(&mut s.stream);
                }
            }
        }
    }
}

/// Accepts every queued client and pairs each with a new upstream
/// connection (a refused upstream drops the client).
fn accept(poll: &Poll, listener: &mut TcpListener, pairs: &mut Slab<Pair>, up: SocketAddr) {
    loop {
        let (client, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                eprintln!("blind-proxy: accept: {e}");
                return;
            }
        };
        let upstream = match std::net::TcpStream::connect(up) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("blind-proxy: upstream {up}: {e}");
                continue;
            }
        };
        let _ = upstream.set_nodelay(true);
        let _ = client.set_nodelay(true);
        if upstream.set_nonblocking(true).is_err() {
            continue;
        }
        let entry = pairs.vacant_entry();
        let k = entry.key();
        let mut pair = Pair {
            sides: [
                Side {
                    stream: client,
                    pending: Vec::new(),
                },
                Side {
                    stream: TcpStream::from_std(upstream),
                    pending: Vec::new(),
                },
            ],
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        let registered = pair.sides.iter_mut().enumerate().all(|(i, s)| {
            poll.registry()
                .register(&mut s.stream, Token(2 * k + i), both)
                .is_ok()
        });
        if registered {
            entry.insert(pair);
        }
    }
}

/// Reads side `from` until a short read, writing each read to the other
/// side. `Err` when the pair is done (a close, an error).
fn copy(pair: &mut Pair, from: usize, buf: &mut [u8]) -> io::Result<()> {
    let to = 1 - from;
    // The other side has not taken the last bytes: wait for its edge.
    while pair.sides[to].pending.is_empty() {
        let n = match pair.sides[from].stream.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let written = match pair.sides[to].stream.write(&buf[..n]) {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        pair.sides[to].pending.extend_from_slice(&buf[written..n]);
        if n < buf.len() {
            return Ok(());
        }
    }
    Ok(())
}

/// Writes what side `side` has pending; once drained, reads the other side
/// again (it stopped while this side was full).
fn flush(pair: &mut Pair, side: usize, buf: &mut [u8]) -> io::Result<()> {
    let s = &mut pair.sides[side];
    while !s.pending.is_empty() {
        match s.stream.write(&s.pending) {
            Ok(w) => {
                s.pending.drain(..w);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    copy(pair, 1 - side, buf)
}
