//! Runs the system's `wrk` with TechEmpower's command line and reads its
//! output into the same [`Report`] the built-in generator makes.

use std::process::Command;
use std::time::Duration;

use crate::{Errors, Latency, Report};

/// TechEmpower's request headers.
pub const TECHEMPOWER_HEADERS: [&str; 3] = [
    "Host: localhost",
    "Accept: text/plain,text/html;q=0.9,application/xhtml+xml;q=0.9,application/xml;q=0.8,*/*;q=0.7",
    "Connection: keep-alive",
];

/// The bundled `pipeline.lua` (depth from its argument; prints exact latency
/// percentiles).
pub const PIPELINE_LUA: &str = include_str!("../pipeline.lua");

/// Runs `wrk` against `url` and parses its output.
///
/// # Errors
///
/// A message when wrk is missing (with how to install it), fails, or prints
/// something unparseable.
pub fn run(
    url: &str,
    threads: usize,
    connections: usize,
    duration: Duration,
    pipeline: usize,
) -> Result<Report, String> {
    let script = std::env::temp_dir().join(format!("corelane-pipeline-{}.lua", std::process::id()));
    // Without pipelining only the script's `done` (exact percentiles) is
    // wanted: a Lua `request` function would run per request and make wrk,
    // the bottleneck on a small machine, slower than it is.
    let text = if pipeline > 1 {
        PIPELINE_LUA
    } else {
        PIPELINE_LUA
            .find("done = function")
            .map_or(PIPELINE_LUA, |i| &PIPELINE_LUA[i..])
    };
    std::fs::write(&script, text).map_err(|e| format!("writing {}: {e}", script.display()))?;
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency");
    for h in TECHEMPOWER_HEADERS {
        cmd.args(["-H", h]);
    }
    cmd.arg("-s")
        .arg(&script)
        .arg(url)
        .arg("--")
        .arg(pipeline.max(1).to_string());
    let out = cmd.output();
    let _ = std::fs::remove_file(&script);
    let out = out.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            "wrk is not installed (Debian/Ubuntu: apt-get install wrk)".to_owned()
        } else {
            format!("running wrk: {e}")
        }
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            stdout
        ));
    }
    parse(&stdout)
}

/// Parses wrk's output (run with `--latency` and the bundled script).
///
/// # Errors
///
/// A message naming the line that is missing.
pub fn parse(out: &str) -> Result<Report, String> {
    let mut requests = None;
    let mut seconds = None;
    let mut bytes_per_sec = None;
    let mut latency = None;
    let mut errors = Errors::default();
    for line in out.lines().map(str::trim) {
        if let Some((n, rest)) = line.split_once(" requests in ") {
            requests = n.trim().parse::<u64>().ok();
            seconds = rest.split(',').next().and_then(parse_duration_secs);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let mut kv = part.split_whitespace();
                let (Some(k), Some(v)) = (kv.next(), kv.next().and_then(|v| v.parse::<u64>().ok()))
                else {
                    continue;
                };
                match k {
                    "connect" => errors.connect = v,
                    "read" => errors.read = v,
                    "write" => errors.write = v,
                    "timeout" => errors.timeout = v,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors.status = rest.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Transfer/sec:") {
            bytes_per_sec = parse_size(rest.trim());
        } else if let Some(rest) = line.strip_prefix("corelane-latency-us ") {
            let get = |k: &str| {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            latency = Some(Latency {
                p50: get("p50").unwrap_or(0),
                p90: get("p90").unwrap_or(0),
                p99: get("p99").unwrap_or(0),
                p999: get("p999").unwrap_or(0),
                max: get("max").unwrap_or(0),
            });
        }
    }
    let requests = requests.ok_or("no `N requests in T` line in wrk's output")?;
    let seconds = seconds.ok_or("unreadable duration in wrk's output")?;
    Ok(Report {
        requests,
        ok: requests.saturating_sub(errors.status),
        seconds,
        requests_per_sec: requests as f64 / seconds,
        bytes_per_sec: bytes_per_sec.unwrap_or(0.0),
        connections_opened: 0,
        latency_us: latency.ok_or("no latency line: was wrk run with the bundled pipeline.lua?")?,
        errors,
    })
}

/// `4.10s`, `500.00ms`, `1.00m` to seconds.
fn parse_duration_secs(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix("us") {
        (v, 1e-6)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3600.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

/// `8.80MB` to bytes.
fn parse_size(s: &str) -> Option<f64> {
    let units = [
        ("GB", 1024.0 * 1024.0 * 1024.0),
        ("MB", 1024.0 * 1024.0),
        ("KB", 1024.0),
        ("B", 1.0),
    ];
    units.iter().find_map(|(u, m)| {
        s.strip_suffix(u)
            .and_then(|n| n.parse::<f64>().ok())
            .map(|n| n * m)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `wrk -t1 -c64 -d4s --latency -s pipeline.lua` on this machine.
    const CAPTURED: &str = "Running 4s test @ http://127.0.0.1:8500/plaintext
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   299.37us  441.82us   4.87ms   95.39%
    Req/Sec   136.30k    34.57k  159.35k    95.24%
  Latency Distribution
     50%  234.00us
     75%  301.00us
     90%  412.00us
     99%    2.10ms
  284471 requests in 4.10s, 36.08MB read
  Socket errors: connect 0, read 64, write 224056, timeout 0
  Non-2xx or 3xx responses: 5
Requests/sec:  69367.62
Transfer/sec:      8.80MB
corelane-latency-us p50=234 p90=412 p99=2100 p999=4100 max=4870
";

    #[test]
    fn parses_captured_output() {
        let r = parse(CAPTURED).unwrap();
        assert_eq!(r.requests, 284_471);
        assert!((r.seconds - 4.10).abs() < 1e-9);
        assert_eq!(
            r.errors,
            Errors {
                connect: 0,
                read: 64,
                write: 224_056,
                timeout: 0,
                status: 5,
                parse: 0
            }
        );
        assert_eq!(r.ok, 284_466);
        assert_eq!(
            (r.latency_us.p50, r.latency_us.p999, r.latency_us.max),
            (234, 4100, 4870)
        );
        assert!((r.bytes_per_sec - 8.80 * 1024.0 * 1024.0).abs() < 1.0);
    }

    #[test]
    fn output_without_the_script_line_is_an_error() {
        let without: String = CAPTURED
            .lines()
            .filter(|l| !l.starts_with("corelane"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse(&without).unwrap_err().contains("pipeline.lua"));
        assert!(parse("nonsense").is_err());
    }
}
