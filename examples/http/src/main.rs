//! `corelane-http`: the bundled HTTP/1.1 server.
//!
//! ```text
//! cargo run --release -p corelane-http
//! curl http://127.0.0.1:8080/plaintext
//! ```

use std::process::ExitCode;

use clap::Parser;
use corelane::cli::ServerArgs;
use corelane::Server;
use corelane_http::{Http, HttpOptions};

/// HTTP/1.1 server on corelane: one pinned worker per CPU, each with its own
/// epoll loop and SO_REUSEPORT listener.
///
/// Routes: GET /plaintext, GET /json (TechEmpower), GET / (index), POST /echo
/// (returns the body), GET /metrics (Prometheus text), GET /healthz (200
/// while serving), GET /readyz (503 from SIGTERM or a takeover on). HEAD works
/// on every GET route. Tells systemd READY=1 / STOPPING=1 under
/// `Type=notify`. A connection is accepted when its request arrives
/// (`--defer-accept`, 1 s by default: an HTTP client speaks first).
#[derive(Debug, Parser)]
#[command(name = "corelane-http", version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body: usize,
    /// Largest request head (request line and headers), in bytes (431 above it).
    #[arg(long, default_value_t = 16 * 1024)]
    max_head: usize,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs
    /// `--tls-key`. The files are read again when they change or on SIGHUP.
    #[arg(long, requires = "tls_key", value_name = "PATH")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert", value_name = "PATH")]
    tls_key: Option<std::path::PathBuf>,
    /// Serve `GET /_test/stall/<ms>`, which blocks a worker for `<ms>`
    /// milliseconds (fault-injection tests only; never in production).
    #[arg(long, hide = true)]
    test_routes: bool,
    /// Scan request heads 16 bytes at a time (SSE2) even where the CPU has
    /// AVX2 (32 at a time, the default there). The answers are the same;
    /// only the cost differs.
    #[arg(long)]
    no_avx2: bool,
}

fn main() -> ExitCode {
    corelane::logging::init();
    // HTTP clients speak first: accepting a connection when its request
    // has arrived saves a wakeup and an `epoll_ctl` per connection (as
    // Apache does on Linux, and nginx with `listen ... deferred`).
    let args: Args =
        corelane::cli::parse_with_defaults(&[("addr", "127.0.0.1:8080"), ("defer_accept", "1s")]);
    corelane::logging::exit_code(serve(args))
}

fn serve(args: Args) -> corelane::Result<()> {
    let mut opts = HttpOptions::default();
    opts.limits.max_body = args.max_body;
    opts.limits.max_head = args.max_head;
    opts.test_routes = args.test_routes;
    opts.wide_scan = !args.no_avx2;
    let width = opts.scan_width();
    let why = match (width, args.no_avx2) {
        (32, _) => "AVX2",
        (_, true) => "SSE2: --no-avx2",
        _ => "SSE2: this CPU has no AVX2",
    };
    tracing::info!("request heads are scanned {width} bytes at a time ({why})");
    let mut builder = Server::builder().max_input(opts.max_input());
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let config_error = |e: &dyn std::fmt::Display| corelane::Error::Config(e.to_string());
        let files = corelane::tls::CertFiles::load(cert, key).map_err(|e| config_error(&e))?;
        // New certificate files (or SIGHUP) take effect without a restart.
        files
            .watch(std::time::Duration::from_secs(2))
            .map_err(|e| config_error(&e))?;
        // Session tickets resume on any worker, and across a takeover.
        let tickets = corelane::tls::TicketKeys::new().map_err(|e| config_error(&e))?;
        let config = files
            .server_config(&[b"http/1.1"], &tickets)
            .map_err(|e| config_error(&e))?;
        builder = builder.tls(config).tls_ticket_keys(tickets);
    }
    args.server.apply(builder).build(Http::factory(opts))?.run()
}
