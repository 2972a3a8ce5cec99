//! `yardstick`: the raw-mio HTTP floor that corelane-http is measured against.
//!
//! No framework and no parsing: one thread, one listener, edge-triggered mio.
//! It reads until a short read, counts `\r\n\r\n` (carrying a partial match
//! across reads), and answers with that many canned TechEmpower plaintext
//! responses in one write per batch; what the socket does not take waits for
//! the writable edge. This is the least work a server can do per request
//! with the same syscalls, so it is an honest floor.
//!
//! ```text
//! taskset -c 0 yardstick --addr 127.0.0.1:8081
//! ```

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

#[derive(Debug, Parser)]
#[command(name = "yardstick", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
}

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    /// How many bytes of `\r\n\r\n` the previous read ended with.
    matched: usize,
    out: Vec<u8>,
    written: usize,
}

/// The canned response. A fixed Date is fine for a floor: formatting it once
/// a second would only add work to this side.
fn response() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nServer: y\r\nDate: Thu, 26 Nov 2026 00:00:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"
        .to_vec()
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let canned = response();
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(args.addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("yardstick listening on {}", listener.local_addr()?);
    let mut conns: Slab<Conn> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nodelay(true)?;
                            let key = conns.vacant_key();
                            poll.registry().register(
                                &mut stream,
                                Token(key),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns.insert(Conn {
                                stream,
                                matched: 0,
                                out: Vec::new(),
                                written: 0,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            let key = ev.token().0;
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            let mut close = false;
            if ev.is_readable() {
                let mut requests = 0;
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            close = true;
                            break;
                        }
                        Ok(n) => {
                            for &b in &buf[..n] {
                                let want = b"\r\n\r\n"[c.matched];
                                c.matched = if b == want {
                                    c.matched + 1
                                } else if b == b'\r' {
                                    1
                                } else {
                                    0
                                };
                                if c.matched == 4 {
                                    requests += 1;
                                    c.matched = 0;
                                }
                            }
                            if n < buf.len() {
                                break; // short read: drained
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
                for _ in 0..requests {
                    c.out.extend_from_slice(&canned);
                }
            }
            if !close && c.written < c.out.len() {
                match c.stream.write(&c.out[c.written..]) {
                    Ok(n) => c.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => close = true,
                }
                if c.written == c.out.len() {
                    c.out.clear();
                    c.written = 0;
                }
            }
            if close {
                conns.remove(key);
            }
        }
    }
}
