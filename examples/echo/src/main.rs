//! `corelane-echo`: a TCP echo server on the corelane runtime.
//!
//! Every byte a client sends is sent back. Run it and talk to it:
//!
//! ```text
//! cargo run --release -p corelane-echo -- --addr 127.0.0.1:7000
//! nc 127.0.0.1 7000
//! ```

use std::process::ExitCode;

use clap::Parser;
use corelane::cli::ServerArgs;
use corelane::{Accepted, Action, Context, Handler, Input, Output, Server};

/// TCP echo server: one pinned worker per CPU, each with its own epoll loop
/// and SO_REUSEPORT listener.
#[derive(Debug, Parser)]
#[command(name = "corelane-echo", version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

/// Echoes whatever arrives.
struct Echo;

impl Handler for Echo {
    type Conn = ();

    fn on_accept(&mut self, _conn: &Accepted, _cx: &mut Context<'_>) {}

    // Tiny, and called from one place: inlined into the worker's loop.
    // The compiler stopped doing so by itself (even asked with `#[inline]`)
    // when the output's copy of small replies came inline, and the call
    // cost ~25 instructions a message.
    #[inline(always)]
    fn on_data(
        &mut self,
        _conn: &mut (),
        input: &mut Input<'_>,
        output: &mut Output,
        _cx: &mut Context<'_>,
    ) -> Action {
        let bytes = input.bytes();
        output.extend_from_slice(bytes);
        input.consume(bytes.len());
        Action::Continue
    }
}

fn main() -> ExitCode {
    corelane::logging::init();
    let args: Args = corelane::cli::parse("127.0.0.1:7000");
    corelane::logging::exit_code(serve(args))
}

fn serve(args: Args) -> corelane::Result<()> {
    // Echo has no message boundaries: any bytes are a whole message, so the
    // header timeout only bounds the wait for the first byte.
    args.server.apply(Server::builder()).build(|_| Echo)?.run()
}
