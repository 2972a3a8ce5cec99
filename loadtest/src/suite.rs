//! `corelane-loadtest suite`: starts the servers itself, pins server and
//! generator to separate CPUs, runs a fixed matrix in alternating rounds and
//! writes a Markdown report, JSON results and SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{run, RunOptions, Target};

/// A server under test: a name and a shell command with `{port}` in it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSpec {
    /// Name in the report.
    pub name: String,
    /// Shell command; `{port}` is replaced by the port to listen on.
    pub command: String,
    /// For corelane servers: a command running one worker per CPU, used to
    /// show how connections and requests spread over workers.
    pub multi_worker_command: Option<String>,
}

/// Suite settings.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Servers, in order.
    pub servers: Vec<ServerSpec>,
    /// Rounds per test; the report shows the median.
    pub rounds: usize,
    /// Length of each load run.
    pub duration: Duration,
    /// Connections held for the idle-memory test.
    pub idle_connections: usize,
    /// CPU for the servers, and for the generator.
    pub server_cpu: usize,
    /// CPU for the generator.
    pub client_cpu: usize,
    /// Output folder.
    pub out: PathBuf,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Test name.
    pub test: String,
    /// Server name.
    pub server: String,
    /// Round number.
    pub round: usize,
    /// Requests per second (0 for the idle test).
    pub requests_per_sec: f64,
    /// Server CPU (user+sys) per request, µs; per connection for `close`;
    /// RSS bytes per connection for `idle`.
    pub cost: f64,
    /// p50 / p99 / p99.9 latency, µs.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Errors of all kinds.
    pub errors: u64,
}

const TESTS: [&str; 4] = [
    "plaintext",
    "pipelined-16",
    "connection-per-request",
    "idle-memory",
];

/// Runs the suite and writes `report.md`, `results.json` and the charts.
///
/// # Errors
///
/// A message when a server does not start or the output cannot be written.
pub fn suite(o: &SuiteOptions) -> Result<Vec<Sample>, String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    // Before pinning ourselves: children inherit our mask, and the
    // multi-worker run must get every CPU back.
    let all_cpus = format!(
        "0-{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
    );
    pin_self(o.client_cpu);
    raise_nofile();
    let mut samples = Vec::new();
    let mut port = 18_000 + (std::process::id() % 1000) as u16 * 10;
    for round in 1..=o.rounds {
        for test in TESTS {
            // Alternate the order (A B, then B A) so drift hits all alike.
            let mut order: Vec<&ServerSpec> = o.servers.iter().collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for spec in order {
                port += 1;
                let mut server = start(spec, port, o.server_cpu)?;
                let sample = measure(test, spec, round, port, server.pid(), o);
                server.stop();
                let sample = sample?;
                eprintln!(
                    "round {round} {test:<24} {:<16} {:>12.0} req/s  cost {:>10.3}  p99 {:>6} µs  errors {}",
                    spec.name, sample.requests_per_sec, sample.cost, sample.p99, sample.errors
                );
                samples.push(sample);
            }
        }
    }
    let mut spread = Vec::new();
    for spec in &o.servers {
        let Some(command) = &spec.multi_worker_command else {
            continue;
        };
        port += 1;
        let mut server = start_command(&spec.name, command, port, &all_cpus)?;
        let result = distribution(&spec.name, port, o);
        server.stop();
        spread.push(result?);
    }
    let check = match o.servers.first() {
        Some(spec) => Some(wrk_check(spec, &mut port, o)?),
        None => None,
    };
    write_outputs(o, &samples, &spread, check.as_ref())?;
    Ok(samples)
}

/// The built-in generator against wrk, on the same server and load.
#[derive(Debug, Clone, Serialize)]
pub struct WrkCheck {
    /// Server name.
    pub server: String,
    /// Per round, the generator's run then wrk's.
    pub rounds: Vec<[ToolRun; 2]>,
    /// Medians over rounds of generator ÷ wrk: req/s, and server CPU per
    /// request.
    pub ratio_rps: Option<f64>,
    /// See `ratio_rps`.
    pub ratio_cost: Option<f64>,
    /// Why there is no comparison, if there is none.
    pub skipped: Option<String>,
}

/// One tool's run in the wrk check.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ToolRun {
    /// Requests per second the tool counted.
    pub requests_per_sec: f64,
    /// Server CPU (user+sys) per request, µs.
    pub cost: f64,
}

/// Plaintext, 64 connections, one thread each, alternating which tool goes
/// first, each on a freshly started server: req/s (which on a small machine
/// measures the client) and server CPU per request (which should agree).
fn wrk_check(spec: &ServerSpec, port: &mut u16, o: &SuiteOptions) -> Result<WrkCheck, String> {
    let mut check = WrkCheck {
        server: spec.name.clone(),
        rounds: Vec::new(),
        ratio_rps: None,
        ratio_cost: None,
        skipped: None,
    };
    for round in 0..o.rounds {
        let mut pair = [ToolRun::default(); 2];
        for tool in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            *port += 1;
            let mut server = start(spec, *port, o.server_cpu)?;
            let url = format!("http://127.0.0.1:{port}/plaintext");
            let cpu0 = cpu_seconds(server.pid())?;
            let report = if tool == 1 {
                crate::wrk::run(&url, 1, 64, o.duration, 1)
            } else {
                let opts = closed_loop(64, o.duration, 1, false);
                Target::parse(&url).and_then(|t| run(&t, &opts))
            };
            let cpu = cpu_seconds(server.pid())? - cpu0;
            server.stop();
            match report {
                Ok(r) => {
                    pair[tool] = ToolRun {
                        requests_per_sec: r.requests_per_sec,
                        cost: cpu * 1e6 / r.requests.max(1) as f64,
                    };
                }
                Err(e) if tool == 1 => {
                    eprintln!("generator vs wrk: skipped ({e})");
                    check.skipped = Some(e);
                    return Ok(check);
                }
                Err(e) => return Err(e),
            }
        }
        eprintln!(
            "round {} generator vs wrk {:<16} {:>10.0} vs {:>10.0} req/s, {:.3} vs {:.3} µs CPU/request",
            round + 1,
            spec.name,
            pair[0].requests_per_sec,
            pair[1].requests_per_sec,
            pair[0].cost,
            pair[1].cost
        );
        check.rounds.push(pair);
    }
    let ratio = |f: fn(&ToolRun) -> f64| {
        median(
            check
                .rounds
                .iter()
                .map(|[g, w]| f(g) / f(w).max(1e-9))
                .collect(),
        )
    };
    check.ratio_rps = Some(ratio(|r| r.requests_per_sec));
    check.ratio_cost = Some(ratio(|r| r.cost));
    Ok(check)
}

/// How one multi-worker run spread over workers.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    /// Server name.
    pub server: String,
    /// Steering mode the server reported.
    pub steering: Option<String>,
    /// Per worker: (connections accepted, requests answered).
    pub workers: BTreeMap<usize, (u64, u64)>,
}

fn distribution(name: &str, port: u16, o: &SuiteOptions) -> Result<Spread, String> {
    let target = Target::parse(&format!("http://127.0.0.1:{port}/plaintext"))?;
    let before = crate::scrape::fetch(target.addr, &target.host).ok_or("no /metrics")?;
    run(&target, &closed_loop(64, o.duration, 1, false))?;
    let after = crate::scrape::fetch(target.addr, &target.host).ok_or("no /metrics")?;
    let d = after.since(&before);
    let workers = d
        .accepted
        .iter()
        .map(|(w, a)| (*w, (*a, d.requests.get(w).copied().unwrap_or(0))))
        .collect();
    Ok(Spread {
        server: name.to_owned(),
        steering: d.steering,
        workers,
    })
}

pub(crate) struct Running {
    child: Child,
    /// The server process (the child of `taskset`/`sh` exec's into it).
    pid: u32,
}

impl Running {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn start(spec: &ServerSpec, port: u16, cpu: usize) -> Result<Running, String> {
    start_command(&spec.name, &spec.command, port, &cpu.to_string())
}

/// Starts `command` (with `{port}` filled in) on the CPUs `cpus` (a taskset
/// list), and waits until it accepts connections.
pub(crate) fn start_command(
    name: &str,
    command: &str,
    port: u16,
    cpus: &str,
) -> Result<Running, String> {
    let command = command.replace("{port}", &port.to_string());
    // `exec` so the pid we hold is the server's own (for /proc and signals).
    let shell = format!("exec {command}");
    let child = Command::new("taskset")
        .args(["-c", cpus, "sh", "-c", &shell])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {name} (`{command}`): {e} (is taskset installed?)"))?;
    let pid = child.id();
    let mut running = Running { child, pid };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || matches!(running.child.try_wait(), Ok(Some(_))) {
            running.stop();
            return Err(format!(
                "{name} did not start listening on port {port} (`{command}`)"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(running)
}

fn measure(
    test: &str,
    spec: &ServerSpec,
    round: usize,
    port: u16,
    pid: u32,
    o: &SuiteOptions,
) -> Result<Sample, String> {
    let target = Target::parse(&format!("http://127.0.0.1:{port}/plaintext"))?;
    let mut sample = Sample {
        test: test.to_owned(),
        server: spec.name.clone(),
        round,
        requests_per_sec: 0.0,
        cost: 0.0,
        p50: 0,
        p99: 0,
        p999: 0,
        errors: 0,
    };
    if test == "idle-memory" {
        sample.cost = idle_rss_per_connection(pid, port, o.idle_connections)?;
        return Ok(sample);
    }
    let (pipeline, close, connections) = match test {
        "pipelined-16" => (16, false, 64),
        "connection-per-request" => (1, true, 16),
        _ => (1, false, 64),
    };
    let opts = closed_loop(connections, o.duration, pipeline, close);
    let cpu0 = cpu_seconds(pid)?;
    let r = run(&target, &opts)?;
    let cpu = cpu_seconds(pid)? - cpu0;
    let per = if close {
        r.connections_opened
    } else {
        r.requests
    }
    .max(1);
    sample.requests_per_sec = r.requests_per_sec;
    sample.cost = cpu * 1e6 / per as f64;
    sample.p50 = r.latency_us.p50;
    sample.p99 = r.latency_us.p99;
    sample.p999 = r.latency_us.p999;
    sample.errors = r.errors.total();
    Ok(sample)
}

/// One generator thread, closed loop, the suite's 5 s response timeout.
pub(crate) fn closed_loop(
    connections: usize,
    duration: Duration,
    pipeline: usize,
    close: bool,
) -> RunOptions {
    RunOptions {
        threads: 1,
        connections,
        duration,
        pipeline,
        close,
        timeout: Duration::from_secs(5),
        progress: false,
        rate: None,
    }
}

/// utime + stime of a process, seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let after = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

fn rss_bytes(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no VmRSS".to_owned())
}

/// Opens `n` keep-alive connections, one request each, and returns the
/// server's RSS growth per connection.
fn idle_rss_per_connection(pid: u32, port: u16, n: usize) -> Result<f64, String> {
    use std::io::{Read, Write};
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_bytes(pid)?;
    let mut conns = Vec::with_capacity(n);
    let mut buf = [0u8; 4096];
    for i in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("idle connection {i}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
            .map_err(|e| e.to_string())?;
        if s.read(&mut buf)
            .map_err(|e| format!("idle connection {i}: {e}"))?
            == 0
        {
            return Err(format!("idle connection {i} closed by the server"));
        }
        conns.push(s);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_bytes(pid)?;
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

pub(crate) fn pin_self(cpu: usize) {
    // All generator threads are created after this and inherit it.
    let _ = Command::new("taskset")
        .args(["-pc", &cpu.to_string(), &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit that outlives the call.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians per (test, server): req/s, cost, p99, errors.
fn medians(samples: &[Sample]) -> BTreeMap<(String, String), (f64, f64, f64, u64)> {
    let mut groups: BTreeMap<(String, String), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups
            .entry((s.test.clone(), s.server.clone()))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .map(|(k, v)| {
            let m = (
                median(v.iter().map(|s| s.requests_per_sec).collect()),
                median(v.iter().map(|s| s.cost).collect()),
                median(v.iter().map(|s| s.p99 as f64).collect()),
                v.iter().map(|s| s.errors).sum(),
            );
            (k, m)
        })
        .collect()
}

fn write_outputs(
    o: &SuiteOptions,
    samples: &[Sample],
    spread: &[Spread],
    check: Option<&WrkCheck>,
) -> Result<(), String> {
    let write = |name: &str, text: &str| {
        let p = o.out.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let json =
        serde_json::json!({ "samples": samples, "distribution": spread, "wrk_check": check });
    write(
        "results.json",
        &serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?,
    )?;
    let m = medians(samples);
    let mut md = String::new();
    let _ = writeln!(md, "# corelane load-test report\n");
    let _ = writeln!(
        md,
        "Servers pinned to CPU {}, generator to CPU {}; {} round(s) of {:?} per test, servers alternating; medians.\n",
        o.server_cpu, o.client_cpu, o.rounds, o.duration
    );
    for s in &o.servers {
        let _ = writeln!(md, "- `{}`: `{}`", s.name, s.command);
    }
    let _ = writeln!(
        md,
        "\n| test | server | req/s | server cost | p99 µs | errors |\n|---|---|---|---|---|---|"
    );
    for ((test, server), (rps, cost, p99, errors)) in &m {
        let unit = match test.as_str() {
            "idle-memory" => "B RSS/connection",
            "connection-per-request" => "µs CPU/connection",
            _ => "µs CPU/request",
        };
        let _ = writeln!(
            md,
            "| {test} | {server} | {rps:.0} | {cost:.3} {unit} | {p99:.0} | {errors} |"
        );
    }
    // Latency percentiles per test (medians over rounds).
    let mut lat: BTreeMap<(String, String), (f64, f64, f64, u64)> = BTreeMap::new();
    for test in TESTS.iter().filter(|t| **t != "idle-memory") {
        for spec in &o.servers {
            let of = |f: fn(&Sample) -> u64| {
                median(
                    samples
                        .iter()
                        .filter(|s| s.test == *test && s.server == spec.name)
                        .map(|s| f(s) as f64)
                        .collect(),
                )
            };
            for (pct, v) in [
                ("p50", of(|s| s.p50)),
                ("p99", of(|s| s.p99)),
                ("p99.9", of(|s| s.p999)),
            ] {
                lat.insert(
                    (format!("{test} {pct}"), spec.name.clone()),
                    (v, 0.0, 0.0, 0),
                );
            }
        }
    }
    if !spread.is_empty() {
        let _ = writeln!(
            md,
            "\n## Per-worker distribution (one worker per CPU, plaintext)\n"
        );
        let _ = writeln!(
            md,
            "| server | steering | worker | connections | requests |\n|---|---|---|---|---|"
        );
        for sp in spread {
            for (w, (conns, reqs)) in &sp.workers {
                let mode = sp.steering.as_deref().unwrap_or("?");
                let _ = writeln!(md, "| {} | {mode} | {w} | {conns} | {reqs} |", sp.server);
            }
        }
    }
    if let Some(c) = check {
        let _ = writeln!(
            md,
            "\n## Built-in generator vs wrk (plaintext, 64 connections, {}, one thread each)\n",
            c.server
        );
        match (&c.skipped, c.ratio_rps, c.ratio_cost) {
            (Some(why), _, _) => {
                let _ = writeln!(md, "Skipped: {why}.");
            }
            (None, Some(rps), Some(cost)) => {
                let _ = writeln!(
                    md,
                    "| round | generator req/s | wrk req/s | generator: server µs CPU/request | wrk: server µs CPU/request |\n|---|---|---|---|---|"
                );
                for (i, [g, w]) in c.rounds.iter().enumerate() {
                    let _ = writeln!(
                        md,
                        "| {} | {:.0} | {:.0} | {:.3} | {:.3} |",
                        i + 1,
                        g.requests_per_sec,
                        w.requests_per_sec,
                        g.cost,
                        w.cost
                    );
                }
                let _ = writeln!(
                    md,
                    "\nMedian ratio generator ÷ wrk: {rps:.3} in req/s (the client is the limit here, and the generator is the lighter client), {cost:.3} in server CPU per request (the figure the suite compares servers by)."
                );
            }
            _ => {}
        }
    }
    let _ = writeln!(
        md,
        "\n![requests per second](rps.svg)\n\n![server cost](cost.svg)\n\n![latency](latency.svg)\n\n![distribution](distribution.svg)"
    );
    write("report.md", &md)?;
    write(
        "rps.svg",
        &bar_chart("Requests per second (median)", &m, |v| v.0, o),
    )?;
    write(
        "cost.svg",
        &bar_chart(
            "Server cost per request / connection / idle connection (median)",
            &m,
            |v| v.1,
            o,
        ),
    )?;
    write(
        "latency.svg",
        &bar_chart(
            "Latency percentiles, µs (median over rounds)",
            &lat,
            |v| v.0,
            o,
        ),
    )?;
    write("distribution.svg", &distribution_chart(spread))?;
    Ok(())
}

/// Requests per worker, one group per server.
fn distribution_chart(spread: &[Spread]) -> String {
    let mut svg = String::new();
    let rows: usize = spread.iter().map(|s| s.workers.len() + 1).sum();
    let height = 40.0 + 20.0 * rows as f64;
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">Requests per worker (one worker per CPU)</text>"#
    );
    let max = spread
        .iter()
        .flat_map(|s| s.workers.values().map(|v| v.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut y = 40.0;
    for sp in spread {
        let mode = sp.steering.as_deref().unwrap_or("?");
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{y}">{} (steering {})</text>"#,
            escape(&sp.server),
            escape(mode)
        );
        y += 20.0;
        for (w, (conns, reqs)) in &sp.workers {
            let width = (*reqs as f64 / max * 600.0).max(1.0);
            let _ = writeln!(
                svg,
                r##"<text x="20" y="{}">worker {w}</text><rect x="90" y="{}" width="{width:.1}" height="14" fill="#3b6ea8"/><text x="{:.1}" y="{}">{reqs} requests, {conns} connections</text>"##,
                y - 4.0,
                y - 15.0,
                96.0 + width,
                y - 4.0
            );
            y += 20.0;
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// A grouped horizontal bar chart: one group per test, one bar per server.
fn bar_chart(
    title: &str,
    m: &BTreeMap<(String, String), (f64, f64, f64, u64)>,
    value: impl Fn(&(f64, f64, f64, u64)) -> f64,
    o: &SuiteOptions,
) -> String {
    const COLOURS: [&str; 6] = [
        "#3b6ea8", "#d08a2e", "#5a9e5a", "#a05195", "#c44e52", "#777777",
    ];
    let rows: Vec<(&str, &str, f64)> = m
        .iter()
        .map(|((t, s), v)| (t.as_str(), s.as_str(), value(v)))
        .collect();
    let tests: Vec<&str> = {
        let mut t: Vec<&str> = rows.iter().map(|r| r.0).collect();
        t.dedup();
        t
    };
    let bar_h = 18.0;
    let group_h = bar_h * o.servers.len() as f64 + 16.0;
    let (left, width) = (190.0, 760.0);
    let height = 50.0 + group_h * tests.len() as f64 + 20.0 * o.servers.len() as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
        left + width + 120.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let mut y = 40.0;
    for test in &tests {
        let max = rows
            .iter()
            .filter(|r| r.0 == *test)
            .map(|r| r.2)
            .fold(0.0_f64, f64::max)
            .max(1e-9);
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{}">{}</text>"#,
            y + group_h / 2.0,
            escape(test)
        );
        for (i, spec) in o.servers.iter().enumerate() {
            let v = rows
                .iter()
                .find(|r| r.0 == *test && r.1 == spec.name)
                .map_or(0.0, |r| r.2);
            let w = (v / max * width).max(1.0);
            let by = y + i as f64 * bar_h;
            let _ = writeln!(
                svg,
                r#"<rect x="{left}" y="{by}" width="{w:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                bar_h - 3.0,
                COLOURS[i % COLOURS.len()],
                left + w + 4.0,
                by + bar_h - 6.0,
                fmt_value(v)
            );
        }
        y += group_h;
    }
    for (i, spec) in o.servers.iter().enumerate() {
        let ly = y + 14.0 + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{left}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{ly}">{}</text>"#,
            ly - 10.0,
            COLOURS[i % COLOURS.len()],
            left + 18.0,
            escape(&spec.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn fmt_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The built-in servers: binaries next to this program.
pub fn default_servers(bin_dir: &Path) -> Vec<ServerSpec> {
    let bin = |name: &str| bin_dir.join(name).display().to_string();
    vec![
        ServerSpec {
            name: "corelane-http".into(),
            command: format!(
                "{} --addr 127.0.0.1:{{port}} --workers 1",
                bin("corelane-http")
            ),
            multi_worker_command: Some(format!(
                "{} --addr 127.0.0.1:{{port}}",
                bin("corelane-http")
            )),
        },
        ServerSpec {
            name: "yardstick".into(),
            command: format!("{} --addr 127.0.0.1:{{port}}", bin("yardstick")),
            multi_worker_command: None,
        },
    ]
}
