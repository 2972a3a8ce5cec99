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
    /// How request ends are found: `simd` (memchr's `memmem`, the strictest
    /// floor) or `bytes` (a byte-at-a-time state machine, the yardstick as
    /// DESIGN.md describes it).
    #[arg(long, default_value = "simd")]
    scan: Scan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scan {
    Simd,
    Bytes,
}

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    /// How many bytes of `\r\n\r\n` the previous read ended with.
    matched: usize,
    out: Vec<u8>,
    written: usize,
}

const END: &[u8; 4] = b"\r\n\r\n";

/// Counts request ends (`\r\n\r\n`) in `buf`, including one that started in
/// the previous read (`matched` bytes of it), and leaves in `matched` how much
/// of a match `buf` ends with. The whole-buffer search is memchr's SIMD
/// `memmem`, so the floor is not slowed by a byte-at-a-time loop.
fn count_ends(buf: &[u8], matched: &mut usize) -> usize {
    let step = |state: usize, b: u8| {
        if b == END[state] {
            state + 1
        } else if b == b'\r' {
            1
        } else {
            0
        }
    };
    if buf.len() < END.len() {
        let mut n = 0;
        for &b in buf {
            *matched = step(*matched, b);
            if *matched == END.len() {
                n += 1;
                *matched = 0;
            }
        }
        return n;
    }
    let mut n = 0;
    // A match that began in the previous read ends within the first 3 bytes.
    let mut state = *matched;
    for &b in &buf[..END.len() - 1] {
        if state == 0 {
            break;
        }
        state = step(state, b);
        if state == END.len() {
            n += 1;
            break;
        }
    }
    n += memchr::memmem::find_iter(buf, END).count();
    *matched = if buf.ends_with(b"\r\n\r") {
        3
    } else if buf.ends_with(b"\r\n") {
        2
    } else {
        usize::from(buf.ends_with(b"\r"))
    };
    n
}

/// The same count, one byte at a time.
fn count_ends_bytewise(buf: &[u8], matched: &mut usize) -> usize {
    let mut n = 0;
    for &b in buf {
        *matched = if b == END[*matched] {
            *matched + 1
        } else {
            usize::from(b == b'\r')
        };
        if *matched == END.len() {
            n += 1;
            *matched = 0;
        }
    }
    n
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
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            // A signal (callgrind_control, a debugger) interrupted the wait.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            // A peer that already left (a readiness probe)
                            // makes this fail; the read will see it.
                            let _ = stream.set_nodelay(true);
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
                            requests += match args.scan {
                                Scan::Simd => count_ends(&buf[..n], &mut c.matched),
                                Scan::Bytes => count_ends_bytewise(&buf[..n], &mut c.matched),
                            };
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

#[cfg(test)]
mod tests {
    use super::count_ends;

    #[test]
    fn counts_request_ends_across_any_split() {
        let stream: Vec<u8> = (0..50)
            .flat_map(|i| format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes())
            .collect();
        for chunk in 1..40 {
            let mut matched = 0;
            let total: usize = stream
                .chunks(chunk)
                .map(|c| count_ends(c, &mut matched))
                .sum();
            assert_eq!(total, 50, "chunk size {chunk}");
        }
    }
}
