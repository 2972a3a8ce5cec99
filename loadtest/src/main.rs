//! `corelane-loadtest`: load-test an HTTP/1.1 server.
//!
//! ```text
//! corelane-loadtest run http://127.0.0.1:8080/plaintext --connections 64 --duration 10s
//! corelane-loadtest run http://127.0.0.1:8080/plaintext --pipeline 16
//! corelane-loadtest run http://127.0.0.1:8080/plaintext --close
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use corelane_loadtest::{proxy, run, scrape, suite, wrk, Report, RunOptions, Target};

#[derive(Debug, Parser)]
#[command(
    name = "corelane-loadtest",
    version,
    about = "Load-test an HTTP/1.1 server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `run` and `wrk` share.
#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Target, `http://host[:port]/path`.
    url: String,
    /// Load threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long to run (wrk: whole seconds).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Requests in flight per connection, written in one batch (TechEmpower
    /// uses 16).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl LoadArgs {
    fn options(&self, close: bool, timeout: Duration, rate: Option<f64>) -> RunOptions {
        RunOptions {
            threads: self.threads,
            connections: self.connections,
            duration: self.duration,
            pipeline: self.pipeline,
            close,
            timeout,
            progress: !self.json,
            rate,
        }
    }
}

/// What the suite and the proxy comparison share: rounds, their length,
/// where to write, where the binaries are.
#[derive(Debug, clap::Args)]
struct RoundArgs {
    /// Output folder.
    #[arg(long, default_value = "loadtest-report")]
    out: std::path::PathBuf,
    /// A short run for CI: 1 round of 1 s (the suite: 1,000 idle connections).
    #[arg(long)]
    quick: bool,
    /// Rounds per test (the report shows the median).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of each load run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Where the binaries (corelane-http, corelane-proxy, yardstick) are
    /// (default: next to this program).
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

impl RoundArgs {
    fn rounds(&self) -> usize {
        if self.quick {
            1
        } else {
            self.rounds.max(1)
        }
    }

    fn duration(&self) -> Duration {
        if self.quick {
            Duration::from_secs(1)
        } else {
            self.duration
        }
    }

    fn bin_dir(&self) -> std::path::PathBuf {
        self.bin_dir
            .clone()
            .or_else(|| {
                std::env::current_exe()
                    .ok()?
                    .parent()
                    .map(|p| p.to_path_buf())
            })
            .unwrap_or_default()
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive URL with the built-in closed-loop generator and report req/s,
    /// latency percentiles, errors by kind, and (for corelane servers) the
    /// per-worker distribution from /metrics.
    Run {
        #[command(flatten)]
        load: LoadArgs,
        /// A new connection for every request (measures accept throughput).
        #[arg(long)]
        close: bool,
        /// A response slower than this counts as a timeout.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Open loop: send this many requests per second in total, on
        /// schedule, and count latency from the scheduled time (corrects
        /// coordinated omission, as wrk2 does), with at most --pipeline
        /// requests in flight per connection.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Start the servers, pin them and the generator to separate CPUs, run
    /// plaintext, pipelined-16, connection-per-request and idle-memory tests
    /// in alternating rounds, and write report.md, results.json and SVG
    /// charts.
    Suite {
        #[command(flatten)]
        rounds: RoundArgs,
        /// Idle keep-alive connections for the memory test.
        #[arg(long, default_value_t = 10_000)]
        idle_connections: usize,
        /// Another server to compare: `NAME=COMMAND`, `{port}` in COMMAND is
        /// replaced by the port (e.g. `nginx='nginx -c /tmp/nginx.conf'`).
        #[arg(long = "server", value_name = "NAME=COMMAND")]
        servers: Vec<String>,
        /// Print the results as JSON instead of the Markdown report.
        #[arg(long)]
        json: bool,
    },
    /// corelane-proxy against nginx as reverse proxies of the same upstream
    /// (one worker each, pinned beside the upstream; the generator on the
    /// other CPU), plain and pipelined-16, in alternating rounds: writes
    /// proxy.md and proxy.json with the proxies' CPU per request.
    Proxy {
        #[command(flatten)]
        rounds: RoundArgs,
        /// The upstream's command, `{port}` replaced (default: the yardstick).
        #[arg(long)]
        upstream: Option<String>,
        /// nginx binary (default: `nginx` on the PATH; `none` to skip it).
        #[arg(long, default_value = "nginx")]
        nginx: String,
        /// What drives the load: `own` (this tool's closed-loop
        /// generator) or `wrk` (`wrk -t1`, issue 13's set-up); both send
        /// TechEmpower's headers.
        #[arg(long, default_value = "own", value_parser = ["own", "wrk"])]
        generator: String,
        /// Leave out `blind-proxy`, the floor of any proxy (it runs when
        /// the binary is next to this program: `cargo build --release -p
        /// corelane-benches`).
        #[arg(long)]
        no_floor: bool,
    },
    /// Run the system's wrk with TechEmpower's headers (and the bundled
    /// pipeline.lua) and report its results the same way.
    Wrk {
        #[command(flatten)]
        load: LoadArgs,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Proxy {
            rounds,
            upstream,
            nginx,
            generator,
            no_floor,
        } => {
            let dir = rounds.bin_dir();
            let floor = Some(dir.join("blind-proxy")).filter(|p| !no_floor && p.exists());
            if floor.is_none() && !no_floor {
                eprintln!(
                    "corelane-loadtest: {} is not built: the report leaves out the floor (cargo build --release -p corelane-benches)",
                    dir.join("blind-proxy").display()
                );
            }
            let out = rounds.out.clone();
            let nginx = match nginx.as_str() {
                "none" => None,
                bin => match which(bin) {
                    Some(p) => Some(p),
                    None => {
                        eprintln!("corelane-loadtest: {bin} not found (apt-get install nginx, or --nginx none)");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let o = proxy::ProxyOptions {
                proxy_bin: dir.join("corelane-proxy"),
                upstream: upstream.unwrap_or_else(|| {
                    format!(
                        "{} --addr 127.0.0.1:{{port}}",
                        dir.join("yardstick").display()
                    )
                }),
                nginx,
                floor,
                rounds: rounds.rounds(),
                duration: rounds.duration(),
                server_cpu: 0,
                client_cpu: 1,
                out: out.clone(),
                generator: if generator == "wrk" {
                    proxy::Generator::Wrk
                } else {
                    proxy::Generator::Own
                },
            };
            match proxy::compare(&o) {
                Ok(_) => {
                    match std::fs::read_to_string(out.join("proxy.md")) {
                        Ok(md) => println!("{md}"),
                        Err(e) => eprintln!("corelane-loadtest: reading the report: {e}"),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("corelane-loadtest: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Suite {
            rounds,
            idle_connections,
            servers,
            json,
        } => {
            let out = rounds.out.clone();
            let mut specs = suite::default_servers(&rounds.bin_dir());
            for s in &servers {
                let Some((name, command)) = s.split_once('=') else {
                    eprintln!("corelane-loadtest: --server takes NAME=COMMAND, got `{s}`");
                    return ExitCode::FAILURE;
                };
                specs.push(suite::ServerSpec {
                    name: name.to_owned(),
                    command: command.to_owned(),
                    multi_worker_command: None,
                });
            }
            let o = suite::SuiteOptions {
                servers: specs,
                rounds: rounds.rounds(),
                duration: rounds.duration(),
                idle_connections: if rounds.quick { 1000 } else { idle_connections },
                server_cpu: 0,
                client_cpu: 1,
                out: out.clone(),
            };
            match suite::suite(&o) {
                Ok(samples) if json => {
                    println!("{}", serde_json::to_string(&samples).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Ok(_) => {
                    match std::fs::read_to_string(out.join("report.md")) {
                        Ok(md) => println!("{md}"),
                        Err(e) => eprintln!("corelane-loadtest: reading the report: {e}"),
                    }
                    println!("report written to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("corelane-loadtest: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            load,
            close,
            timeout,
            rate,
        } => load_and_report(
            &load.url,
            &load.options(close, timeout, rate),
            load.json,
            run,
        ),
        Command::Wrk { load } => {
            let opts = load.options(false, Duration::from_secs(2), None);
            load_and_report(&load.url, &opts, load.json, |_, o| {
                wrk::run(&load.url, o.threads, o.connections, o.duration, o.pipeline)
            })
        }
    }
}

/// Resolves the target, scrapes /metrics, runs the load, scrapes again and
/// prints the report. Exits non-zero when the target does not answer.
fn load_and_report(
    url: &str,
    opts: &RunOptions,
    json: bool,
    drive: impl FnOnce(&Target, &RunOptions) -> Result<Report, String>,
) -> ExitCode {
    let target = match Target::parse(url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("corelane-loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::net::TcpStream::connect_timeout(&target.addr, Duration::from_secs(3)) {
        eprintln!("corelane-loadtest: {}: cannot connect: {e}", target.addr);
        return ExitCode::FAILURE;
    }
    let before = scrape::fetch(target.addr, &target.host);
    let report = match drive(&target, opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corelane-loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = before.and_then(|b| scrape::fetch(target.addr, &target.host).map(|a| a.since(&b)));
    if json {
        let out = serde_json::json!({ "target": url, "report": report, "server": server });
        println!("{out}");
    } else {
        print_report(url, opts, &report, server.as_ref());
    }
    if report.requests == 0 {
        eprintln!("corelane-loadtest: no request was answered");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn print_report(url: &str, o: &RunOptions, r: &Report, server: Option<&scrape::ServerMetrics>) {
    let mode = match (o.rate, o.close) {
        (Some(r), _) => format!("open loop at {r} req/s"),
        (None, true) => "connection per request".to_owned(),
        (None, false) => format!("pipeline {}", o.pipeline),
    };
    println!(
        "{url}: {} connections, {} threads, {mode}, {:.1}s",
        o.connections, o.threads, r.seconds
    );
    println!(
        "  {} requests ({} 2xx), {:.0} req/s, {:.2} MB/s, {} connections opened",
        r.requests,
        r.ok,
        r.requests_per_sec,
        r.bytes_per_sec / 1e6,
        r.connections_opened
    );
    let l = &r.latency_us;
    // wrk's histogram reports 0 for high percentiles when pipelining.
    let show = |v: u64| {
        if v == 0 && l.max > 0 {
            "n/a".to_owned()
        } else {
            v.to_string()
        }
    };
    println!(
        "  latency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        show(l.p50),
        show(l.p90),
        show(l.p99),
        show(l.p999),
        l.max
    );
    let e = &r.errors;
    println!(
        "  errors: connect {} read {} write {} timeout {} status {} parse {}",
        e.connect, e.read, e.write, e.timeout, e.status, e.parse
    );
    if let Some(s) = server {
        println!(
            "  server (steering {}):",
            s.steering.as_deref().unwrap_or("?")
        );
        for (w, acc) in &s.accepted {
            println!(
                "    worker {w}: {acc} connections accepted, {} requests",
                s.requests.get(w).copied().unwrap_or(0)
            );
        }
    }
}

/// `bin` as given if it holds a slash, else found on the PATH (nginx lives
/// in /usr/sbin, which a user's PATH may lack: looked at too).
fn which(bin: &str) -> Option<std::path::PathBuf> {
    if bin.contains('/') {
        return Some(std::path::PathBuf::from(bin)).filter(|p| p.exists());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| std::path::Path::new(d).join(bin))
        .find(|p| p.exists());
    found
}
