//! `echo-load`: a closed-loop load generator for echo servers.
//!
//! One thread, mio, `--connections` sockets each keeping `--depth` messages of
//! `--size` bytes in flight; counts messages echoed back in full. Pin it to a
//! CPU other than the server's (`taskset -c 1`).
//!
//! ```text
//! echo-load --addr 127.0.0.1:7000 --connections 32 --depth 4 --duration 5s
//! ```

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

#[derive(Debug, Parser)]
#[command(name = "echo-load", version)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// How long to run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

struct Conn {
    stream: TcpStream,
    /// Bytes echoed back, not yet a whole message.
    partial: usize,
    /// Messages sent and not yet echoed.
    in_flight: usize,
    /// Bytes of the current send batch not yet written.
    unsent: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok((messages, secs)) => {
            println!(
                "messages={messages} seconds={secs:.3} rate={:.0}/s connections={} depth={} size={}",
                messages as f64 / secs,
                args.connections,
                args.depth,
                args.size
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo-load: {}: {e}", args.addr);
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> io::Result<(u64, f64)> {
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let std = std::net::TcpStream::connect(args.addr)?;
        std.set_nodelay(true)?;
        std.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std);
        poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conns.push(Conn {
            stream,
            partial: 0,
            in_flight: 0,
            unsent: 0,
        });
    }
    let msg = vec![b'e'; args.size.max(1)];
    let batch: Vec<u8> = msg
        .iter()
        .copied()
        .cycle()
        .take(msg.len() * args.depth)
        .collect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    let start = Instant::now();
    let end = start + args.duration;
    let mut done = 0u64;
    for c in &mut conns {
        c.in_flight = args.depth;
        c.unsent = batch.len();
        send(c, &batch)?;
    }
    while Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if ev.is_writable() && c.unsent > 0 {
                send(c, &batch)?;
            }
            if !ev.is_readable() {
                continue;
            }
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "server closed",
                        ))
                    }
                    Ok(n) => {
                        let total = c.partial + n;
                        let whole = total / msg.len();
                        c.partial = total % msg.len();
                        c.in_flight -= whole;
                        done += whole as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            // Refill when the whole batch came back (closed loop).
            if c.in_flight == 0 && c.unsent == 0 {
                c.in_flight = args.depth;
                c.unsent = batch.len();
                send(c, &batch)?;
            }
        }
    }
    Ok((done, start.elapsed().as_secs_f64()))
}

fn send(c: &mut Conn, batch: &[u8]) -> io::Result<()> {
    while c.unsent > 0 {
        match c.stream.write(&batch[batch.len() - c.unsent..]) {
            Ok(n) => c.unsent -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
