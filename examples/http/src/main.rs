//! `corelane-http`: the bundled HTTP/1.1 server.
//!
//! ```text
//! cargo run --release -p corelane-http
//! curl http://127.0.0.1:8080/plaintext
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use corelane::{Server, Steering};
use corelane_http::{Http, HttpOptions};

/// HTTP/1.1 server on corelane: one pinned worker per CPU, each with its own
/// epoll loop and SO_REUSEPORT listener.
///
/// Routes: GET /plaintext, GET /json (TechEmpower), GET / (index), POST /echo
/// (returns the body), GET /metrics (Prometheus text). HEAD works on every GET
/// route.
#[derive(Debug, Parser)]
#[command(name = "corelane-http", version)]
struct Args {
    /// Address to listen on (IPv4 or IPv6, e.g. `[::]:8080`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Number of workers (default: one per CPU this process may use).
    #[arg(long)]
    workers: Option<usize>,
    /// How new connections are spread over workers: `auto` (eBPF
    /// least-loaded when permitted, else classic-cpu, else kernel), an eBPF
    /// policy (`least-loaded`, `round-robin`, `cpu`, `hash`; need CAP_BPF or
    /// root), `classic-cpu` (classic BPF: the worker pinned to the CPU that
    /// processed the SYN; no privilege) or `kernel` (the kernel's flow hash).
    /// A mode that cannot be set up falls back down that list, with a log
    /// line saying why.
    #[arg(long, default_value = "auto")]
    steering: Steering,
    /// Close keep-alive connections idle this long (`0` disables).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Time allowed for a request to arrive in full, from its first byte (or,
    /// on a new connection, from accept). Slow senders are closed after it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body: usize,
    /// Largest request head (request line and headers), in bytes (431 above it).
    #[arg(long, default_value_t = 16 * 1024)]
    max_head: usize,
    /// Serve `GET /_test/stall/<ms>`, which blocks a worker for `<ms>`
    /// milliseconds (fault-injection tests only; never in production).
    #[arg(long, hide = true)]
    test_routes: bool,
    /// Serve as this user (e.g. `nobody`): bind, raise limits and attach
    /// steering as root first, then drop to it for good.
    #[arg(long)]
    user: Option<String>,
    /// Accept a connection only when its first request bytes arrive, waiting
    /// up to this long (`TCP_DEFER_ACCEPT`, whole seconds; like nginx's
    /// `listen ... deferred`).
    #[arg(long, value_parser = humantime::parse_duration)]
    defer_accept: Option<Duration>,
    /// Take the address over from the corelane process serving it, without
    /// dropping a connection: new connections come here, the old process
    /// drains (its queued connections migrate here; keep-alive clients are
    /// told `Connection: close`) and exits within its shutdown deadline.
    /// Without it, starting on an address corelane serves is an error.
    #[arg(long)]
    takeover: bool,
    /// Graceful shutdown deadline after SIGINT/SIGTERM (and for draining
    /// when taken over).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
}

fn main() -> ExitCode {
    corelane::logging::init();
    corelane::logging::exit_code(serve(Args::parse()))
}

fn serve(args: Args) -> corelane::Result<()> {
    let mut opts = HttpOptions::default();
    opts.limits.max_body = args.max_body;
    opts.limits.max_head = args.max_head;
    opts.test_routes = args.test_routes;
    let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
    let mut builder = Server::builder()
        .addr(args.addr)
        .steering(args.steering)
        .idle_timeout(nonzero(args.idle_timeout))
        .header_timeout(nonzero(args.header_timeout))
        .shutdown_timeout(args.shutdown_timeout)
        .user(args.user)
        .takeover(args.takeover)
        .defer_accept(args.defer_accept)
        .max_input(opts.max_input());
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    builder.build(Http::factory(opts))?.run()
}
