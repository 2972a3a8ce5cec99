//! `corelane-echo`: a TCP echo server on the corelane runtime.
//!
//! Every byte a client sends is sent back. Run it and talk to it:
//!
//! ```text
//! cargo run --release -p corelane-echo -- --addr 127.0.0.1:7000
//! nc 127.0.0.1 7000
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use corelane::{Accepted, Action, Handler, Input, Output, Server, Steering};

/// TCP echo server: one pinned worker per CPU, each with its own epoll loop
/// and SO_REUSEPORT listener.
#[derive(Debug, Parser)]
#[command(name = "corelane-echo", version)]
struct Args {
    /// Address to listen on (IPv4 or IPv6, e.g. `[::1]:7000`).
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// Number of workers (default: one per CPU this process may use).
    #[arg(long)]
    workers: Option<usize>,
    /// Close connections idle this long (e.g. `30s`, `500ms`; `0` disables).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// How new connections are spread over workers: `auto` (eBPF
    /// least-loaded when permitted, else classic-cpu, else kernel), an eBPF
    /// policy (`least-loaded`, `round-robin`, `cpu`, `hash`; need CAP_BPF or
    /// root), `classic-cpu` (classic BPF: the worker pinned to the CPU that
    /// processed the SYN; no privilege) or `kernel` (the kernel's flow hash).
    /// A mode that cannot be set up falls back down that list, with a log
    /// line saying why.
    #[arg(long, default_value = "auto")]
    steering: Steering,
    /// Take the address over from the corelane process serving it (a
    /// restart that drops no connection; see `corelane-http --help`).
    #[arg(long)]
    takeover: bool,
}

/// Echoes whatever arrives.
struct Echo;

impl Handler for Echo {
    type Conn = ();

    fn on_accept(&mut self, _conn: &Accepted) {}

    fn on_data(&mut self, _conn: &mut (), input: &mut Input<'_>, output: &mut Output) -> Action {
        let bytes = input.bytes();
        output.extend_from_slice(bytes);
        input.consume(bytes.len());
        Action::Continue
    }
}

fn main() -> ExitCode {
    corelane::logging::init();
    corelane::logging::exit_code(serve(Args::parse()))
}

fn serve(args: Args) -> corelane::Result<()> {
    let mut builder = Server::builder()
        .addr(args.addr)
        .steering(args.steering)
        .takeover(args.takeover)
        // Echo has no message boundaries: any bytes are a whole message, so
        // the header timeout only bounds the wait for the first byte.
        .idle_timeout((!args.idle_timeout.is_zero()).then_some(args.idle_timeout));
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    builder.build(|_| Echo)?.run()
}
