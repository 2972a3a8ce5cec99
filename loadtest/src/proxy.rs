//! `corelane-loadtest proxy`: corelane-proxy against nginx as reverse
//! proxies of the same upstream, in alternating rounds.
//!
//! The upstream (the yardstick: the raw mio loop, or any server command)
//! and the proxy under test run pinned to one CPU, the generator to the
//! other; the proxy has one worker (nginx: one process, `master_process
//! off`, an upstream `keepalive` pool, HTTP/1.1 with `Connection ""`, the
//! set-up nginx's documentation gives for keep-alive upstreams). What is
//! reported is the proxy's own CPU time per proxied request and its req/s,
//! plain and pipelined 16 deep, with the corelane ÷ nginx ratio of each
//! round (the two ran minutes apart on the same machine) and its median.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::suite::{closed_loop, cpu_seconds, median, pin_self, start_command, Running};
use crate::{run, wrk, Target};

/// Settings of the proxy comparison.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The corelane-proxy binary.
    pub proxy_bin: PathBuf,
    /// The upstream's command, `{port}` replaced.
    pub upstream: String,
    /// The nginx binary (`None`: corelane-proxy alone).
    pub nginx: Option<PathBuf>,
    /// The `blind-proxy` binary, the floor of any proxy (`None`: left
    /// out).
    pub floor: Option<PathBuf>,
    /// Rounds per test.
    pub rounds: usize,
    /// Length of each load run.
    pub duration: Duration,
    /// CPU of the upstream and the proxy.
    pub server_cpu: usize,
    /// CPU of the generator.
    pub client_cpu: usize,
    /// Output folder (`proxy.md`, `proxy.json`).
    pub out: PathBuf,
    /// What drives the load.
    pub generator: Generator,
}

/// What drives the proxy comparison's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// This crate's closed-loop generator (a request per connection in
    /// flight, TechEmpower's headers).
    Own,
    /// The system's `wrk -t1` with TechEmpower's headers (the generator
    /// issue 13's nginx figures were taken with).
    Wrk,
}

impl Generator {
    fn describe(self) -> &'static str {
        match self {
            Generator::Own => "corelane-loadtest's own generator",
            Generator::Wrk => "wrk -t1 with TechEmpower's headers",
        }
    }
}

/// One measurement of one proxy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxySample {
    /// `plaintext` or `pipelined-16`.
    pub test: String,
    /// `corelane-proxy` or `nginx`.
    pub proxy: String,
    /// Round number.
    pub round: usize,
    /// Requests per second through the proxy.
    pub requests_per_sec: f64,
    /// The proxy's CPU (user + system) per request, µs.
    pub cpu_us_per_request: f64,
    /// p99 latency, µs.
    pub p99: u64,
    /// Errors of all kinds.
    pub errors: u64,
}

/// The floor's name in the report.
const FLOOR: &str = "blind-proxy";
/// corelane-proxy sending one request at a time, as nginx does (in the
/// pipelined test: the two are the same program when the client does not
/// pipeline).
const SERIAL: &str = "corelane-proxy --pipeline 1";

const TESTS: [(&str, usize); 2] = [("plaintext", 1), ("pipelined-16", 16)];
/// The generator's connections, and the idle upstream connections each
/// proxy keeps (`--pool-idle`, nginx's `keepalive`): as many, so that
/// neither proxy opens and closes upstream connections in steady state
/// (with 32, both churned a new upstream connection every 3 to 4
/// requests, and the comparison measured that more than proxying).
const CLIENTS: usize = 64;

/// Runs the comparison and writes `proxy.md` and `proxy.json`.
///
/// # Errors
///
/// A message when a server does not start or the output cannot be written.
pub fn compare(o: &ProxyOptions) -> Result<Vec<ProxySample>, String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    pin_self(o.client_cpu);
    let cpu = o.server_cpu.to_string();
    let mut port = 19_000 + (std::process::id() % 500) as u16 * 4;
    let upstream_port = port;
    let mut upstream = start_command("upstream", &o.upstream, upstream_port, &cpu)?;
    let conf_dir = o.out.join("nginx");
    let mut samples = Vec::new();
    let mut names = vec!["corelane-proxy", SERIAL];
    if o.nginx.is_some() {
        names.push("nginx");
    }
    if o.floor.is_some() {
        names.push(FLOOR);
    }
    for round in 1..=o.rounds {
        for (test, pipeline) in TESTS {
            // Each proxy goes first in turn (with two, alternating).
            let mut order = names.clone();
            if pipeline == 1 {
                order.retain(|&n| n != SERIAL);
            }
            let first = (round - 1) % order.len();
            order.rotate_left(first);
            for name in order {
                port += 1;
                let command = match (name, &o.nginx, &o.floor) {
                    ("nginx", Some(bin), _) => nginx_command(bin, &conf_dir, port, upstream_port)?,
                    (FLOOR, _, Some(bin)) => format!(
                        "{} --addr 127.0.0.1:{{port}} --upstream 127.0.0.1:{upstream_port}",
                        bin.display()
                    ),
                    _ => format!(
                        "{} --addr 127.0.0.1:{{port}} --workers 1 --steering kernel --pool-idle {CLIENTS} --upstream 127.0.0.1:{upstream_port}{}",
                        o.proxy_bin.display(),
                        if name == SERIAL { " --pipeline 1" } else { "" }
                    ),
                };
                let mut proxy = start_command(name, &command, port, &cpu)?;
                let sample = measure(test, pipeline, name, round, port, &proxy, o);
                proxy.stop();
                let sample = sample?;
                eprintln!(
                    "round {round} {test:<14} {name:<16} {:>10.0} req/s  {:>7.2} µs CPU/request  p99 {:>6} µs  errors {}",
                    sample.requests_per_sec, sample.cpu_us_per_request, sample.p99, sample.errors
                );
                samples.push(sample);
            }
        }
    }
    upstream.stop();
    write_report(o, &samples)?;
    Ok(samples)
}

fn measure(
    test: &str,
    pipeline: usize,
    name: &str,
    round: usize,
    port: u16,
    proxy: &Running,
    o: &ProxyOptions,
) -> Result<ProxySample, String> {
    let url = format!("http://127.0.0.1:{port}/plaintext");
    let target = Target::parse(&url)?;
    let load = |duration| match o.generator {
        Generator::Own => run(&target, &closed_loop(CLIENTS, duration, pipeline, false)),
        // wrk runs whole seconds, on this process's (the generator's) CPU.
        Generator::Wrk => wrk::run(&url, 1, CLIENTS, duration, pipeline),
    };
    // Warm: pools filled, caches hot.
    load(Duration::from_millis(300))?;
    let cpu0 = cpu_seconds(proxy.pid())?;
    let r = load(o.duration)?;
    let cpu = cpu_seconds(proxy.pid())? - cpu0;
    Ok(ProxySample {
        test: test.to_owned(),
        proxy: name.to_owned(),
        round,
        requests_per_sec: r.requests_per_sec,
        cpu_us_per_request: cpu * 1e6 / r.requests.max(1) as f64,
        p99: r.latency_us.p99,
        errors: r.errors.total(),
    })
}

/// Writes an nginx configuration for a reverse proxy on `port` to the
/// upstream, and returns the command running it in the foreground, one
/// process.
fn nginx_command(bin: &Path, dir: &Path, port: u16, upstream: u16) -> Result<String, String> {
    let dir = dir.join(port.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log crit;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream up {{ server 127.0.0.1:{upstream}; keepalive {CLIENTS}; keepalive_requests 1000000; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 1000000;\n    location / {{\n      proxy_pass http://up;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!(
        "{} -p {d} -c {} -e {d}/error.log",
        bin.display(),
        path.display()
    ))
}

fn write_report(o: &ProxyOptions, samples: &[ProxySample]) -> Result<(), String> {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# corelane-proxy vs nginx\n\nOne proxy worker and the upstream on CPU {}, the generator ({}) on CPU {} ({CLIENTS} connections, {:?} per run, {} rounds, alternating order; each proxy keeps up to {CLIENTS} idle upstream connections). CPU is the proxy's own (user + system).\n",
        o.server_cpu, o.generator.describe(), o.client_cpu, o.duration, o.rounds
    );
    if o.floor.is_some() {
        let _ = writeln!(
            md,
            "`{FLOOR}` is the floor of any proxy: each client connection paired with its own upstream connection, bytes copied both ways with no HTTP (benches/src/bin/blind-proxy.rs).\n"
        );
    }
    let _ = writeln!(
        md,
        "corelane-proxy sends the idempotent requests a client pipelined to its upstream connection without waiting for each answer (as `{FLOOR}` passes them on); nginx sends one at a time, and so does `{SERIAL}`.\n"
    );
    let _ = writeln!(
        md,
        "| test | proxy | req/s (median) | CPU µs/request (median) | CPU µs/request (best … worst) | p99 µs (median) | errors |\n|---|---|---|---|---|---|---|"
    );
    for (test, _) in TESTS {
        for name in ["corelane-proxy", SERIAL, "nginx", FLOOR] {
            let mine: Vec<&ProxySample> = samples
                .iter()
                .filter(|s| s.test == test && s.proxy == name)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let cost: Vec<f64> = mine.iter().map(|s| s.cpu_us_per_request).collect();
            let best = cost.iter().copied().fold(f64::INFINITY, f64::min);
            let worst = cost.iter().copied().fold(0.0, f64::max);
            // wrk reports no per-request latency when pipelining.
            let p99 = match median(mine.iter().map(|s| s.p99 as f64).collect()) {
                p if p > 0.0 => format!("{p:.0}"),
                _ => "—".to_owned(),
            };
            let _ = writeln!(
                md,
                "| {test} | {name} | {:.0} | {:.2} | {best:.2} … {worst:.2} | {p99} | {} |",
                median(mine.iter().map(|s| s.requests_per_sec).collect()),
                median(cost),
                mine.iter().map(|s| s.errors).sum::<u64>()
            );
        }
    }
    for (mine, theirs, why) in [
        ("corelane-proxy", "nginx", "the target"),
        (SERIAL, "nginx", "both one request at a time"),
        (FLOOR, "nginx", "where the floor lies in this run"),
        (
            "corelane-proxy",
            FLOOR,
            "what corelane-proxy costs above the floor",
        ),
    ] {
        let rows: Vec<String> = TESTS
            .iter()
            .filter_map(|(test, _)| {
                let ratios = round_ratios(samples, test, mine, theirs, o.rounds);
                if ratios.is_empty() {
                    return None;
                }
                let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
                Some(format!(
                    "| {test} | {} | {:.2} |",
                    each.join(", "),
                    median(ratios)
                ))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(
            md,
            "\n{mine} ÷ {theirs}, CPU per request ({why}):\n\n| test | each round | median |\n|---|---|---|\n{}",
            rows.join("\n")
        );
    }
    let md_path = o.out.join("proxy.md");
    std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let json_path = o.out.join("proxy.json");
    let json = serde_json::to_string_pretty(samples).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, json).map_err(|e| format!("{}: {e}", json_path.display()))?;
    Ok(())
}

/// `mine ÷ theirs` CPU per request in each round both ran.
fn round_ratios(
    samples: &[ProxySample],
    test: &str,
    mine: &str,
    theirs: &str,
    rounds: usize,
) -> Vec<f64> {
    (1..=rounds)
        .filter_map(|round| {
            let get = |name: &str| {
                samples
                    .iter()
                    .find(|s| s.test == test && s.proxy == name && s.round == round)
                    .map(|s| s.cpu_us_per_request)
            };
            Some(get(mine)? / get(theirs)?)
        })
        .collect()
}
