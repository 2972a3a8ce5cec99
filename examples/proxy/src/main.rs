//! `corelane-proxy`: the HTTP/1.1 reverse proxy on corelane.
//!
//! ```text
//! cargo run --release -p corelane-http -- --addr 127.0.0.1:8080 &
//! cargo run --release -p corelane-proxy -- --addr 127.0.0.1:8090 --upstream 127.0.0.1:8080
//! curl http://127.0.0.1:8090/plaintext
//! curl http://127.0.0.1:8090/_proxy/metrics
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use corelane::cli::ServerArgs;
use corelane::Server;
use corelane_proxy::{Balance, Proxy, ProxyCounters, ProxyOptions};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BalanceArg {
    /// Each upstream in turn.
    RoundRobin,
    /// The upstream with the fewest clients awaiting answers from this worker (a
    /// client's pipelined requests count once).
    LeastOutstanding,
}

/// HTTP/1.1 reverse proxy on corelane: each worker keeps its own keep-alive
/// pool to every upstream, on its own event loop. `GET /_proxy/metrics`
/// (Prometheus text), `GET /_proxy/healthz` and `GET /_proxy/readyz` are answered by the proxy.
#[derive(Debug, Parser)]
#[command(name = "corelane-proxy", version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// An upstream to forward to (repeat for several).
    #[arg(long = "upstream", required = true)]
    upstreams: Vec<SocketAddr>,
    /// How requests are spread over the upstreams.
    #[arg(long, value_enum, default_value = "round-robin")]
    balance: BalanceArg,
    /// Time to connect to an upstream (502 after it).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Time an upstream may go without sending a byte of its response
    /// (504 if it had not begun; the client is closed if it had).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    response_timeout: Duration,
    /// Idle keep-alive connections kept per upstream, per worker (more stay
    /// while in use; those beyond it are closed once unused for a second).
    #[arg(long, default_value_t = 32)]
    pool_idle: usize,
    /// Add `Via: 1.1 corelane` to requests and responses.
    #[arg(long)]
    via: bool,
    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body: usize,
    /// Largest request head, in bytes (431 above it).
    #[arg(long, default_value_t = 16 * 1024)]
    max_head: usize,
    /// Most requests of one client in flight on its upstream connection:
    /// idempotent requests the client pipelined follow the first without
    /// waiting for its answer (RFC 9112 §9.3.2; never behind a POST, and
    /// sent again if the connection fails before answering them). 1 sends
    /// one at a time, as nginx does.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pipeline: u16,
}

fn main() -> ExitCode {
    corelane::logging::init();
    let args: Args = corelane::cli::parse("127.0.0.1:8090");
    corelane::logging::exit_code(serve(args))
}

fn serve(args: Args) -> corelane::Result<()> {
    let mut opts = ProxyOptions {
        upstreams: args.upstreams,
        balance: match args.balance {
            BalanceArg::RoundRobin => Balance::RoundRobin,
            BalanceArg::LeastOutstanding => Balance::LeastOutstanding,
        },
        connect_timeout: args.connect_timeout,
        response_timeout: args.response_timeout,
        pool_idle: args.pool_idle,
        via: args.via,
        pipeline: usize::from(args.pipeline),
        ..ProxyOptions::default()
    };
    opts.limits.max_body = args.max_body;
    opts.limits.max_head = args.max_head;
    let builder = args
        .server
        .apply(Server::builder().max_input(opts.max_input()));
    builder
        .build(Proxy::factory(opts, ProxyCounters::new()))?
        .run()
}
