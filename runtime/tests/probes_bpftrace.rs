//! The USDT probes fire exactly as often as the runtime says: bpftrace attached
//! to this very process counts accepts, bytes read and written, closes and
//! idle sweeps per worker, and the counts must equal the runtime's own
//! per-worker metrics and the traffic the test made. Needs root and bpftrace
//! (CI installs it and runs this as root).

mod util;

use std::collections::HashMap;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use corelane::{CloseReason, Server};
use corelane_test_support::tracer::Tracer;
use util::{has_tool, is_root, needs, roundtrip, Echo, TestServer};

/// Both tests trace this whole process: they must not overlap, or one would
/// count the other's traffic.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const SCRIPT: &str = r#"
BEGIN { printf("READY\n"); }
usdt:*:corelane:accept { @accept[arg0] = count(); }
usdt:*:corelane:read { @read_bytes[arg0] = sum(arg3); }
usdt:*:corelane:write { @write_bytes[arg0] = sum(arg3); }
usdt:*:corelane:close { @close[arg0] = count(); }
usdt:*:corelane:gc_done /str(arg1) == "idle_sweep"/ { @idle_sweep[arg0] = count(); @swept[arg0] = sum(arg2); }
"#;

/// A 2-worker echo server with the given idle timeout, for a test that traces
/// this process; `None` (test skipped) without root or bpftrace. The guard
/// keeps the tracing tests from overlapping.
fn traced_echo_server(idle_ms: u64) -> Option<(std::sync::MutexGuard<'static, ()>, TestServer)> {
    if !needs(is_root() && has_tool("bpftrace"), "root and bpftrace") {
        return None;
    }
    let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = TestServer::start(
        Server::builder()
            .workers(2)
            .idle_timeout(Some(Duration::from_millis(idle_ms))),
        |_| Echo::default(),
    );
    Some((serial, server))
}

/// Parses bpftrace's map dump (`@name[0]: 12`) into name -> worker -> value.
fn parse_maps(out: &str) -> HashMap<String, HashMap<usize, u64>> {
    let mut maps: HashMap<String, HashMap<usize, u64>> = HashMap::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix('@') else {
            continue;
        };
        let Some((key, value)) = rest.split_once("]: ") else {
            continue;
        };
        let Some((name, worker)) = key.split_once('[') else {
            continue;
        };
        maps.entry(name.to_owned()).or_default().insert(
            worker.trim().parse().unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    maps
}

#[test]
fn bpftrace_counts_equal_the_traffic_and_the_metrics_per_worker() {
    let Some((_serial, server)) = traced_echo_server(300) else {
        return;
    };
    let tracer = Tracer::attach(SCRIPT);

    // Known traffic: 60 connections; 40 close themselves after 3 messages,
    // 20 stay idle until the idle sweep closes them.
    const CONNS: usize = 60;
    let mut sent = 0u64;
    let mut idle = Vec::new();
    for i in 0..CONNS {
        let mut c: TcpStream = server.connect();
        for m in 0..3 {
            let msg = format!("connection {i} message {m} {}\n", "x".repeat(i * 7 % 300));
            roundtrip(&mut c, msg.as_bytes());
            sent += msg.len() as u64;
        }
        if i % 3 == 0 {
            idle.push(c);
        }
    }
    // The idle ones are held open (not closed by us) until the sweep closes them.
    server.wait_for("every connection closed", Duration::from_secs(10), |m| {
        m.closed_total() == CONNS as u64 && m.active == 0
    });
    let metrics = server.metrics.snapshot();
    drop(idle);

    // Stop bpftrace: on SIGINT it prints its maps and exits.
    let dump = tracer.finish();
    // Stale timer entries of closed connections may still expire after the
    // snapshot, each an idle-sweep pass that closes nothing: sweeps are
    // bounded by the snapshots either side of the trace's end.
    let after = server.metrics.snapshot();
    let maps = parse_maps(&dump);
    let get = |map: &str, w: usize| maps.get(map).and_then(|m| m.get(&w)).copied().unwrap_or(0);

    let total = |map: &str| (0..2).map(|w| get(map, w)).sum::<u64>();
    assert_eq!(total("accept"), CONNS as u64, "{dump}");
    assert_eq!(total("close"), CONNS as u64, "{dump}");
    assert_eq!(total("read_bytes"), sent, "{dump}");
    assert_eq!(total("write_bytes"), sent, "{dump}");
    for w in &metrics {
        let i = w.worker;
        assert_eq!(get("accept", i), w.accepted, "worker {i} accepts\n{dump}");
        assert_eq!(
            get("close", i),
            w.closed_total(),
            "worker {i} closes\n{dump}"
        );
        assert_eq!(
            get("read_bytes", i),
            w.bytes_read,
            "worker {i} bytes read\n{dump}"
        );
        assert_eq!(
            get("write_bytes", i),
            w.bytes_written,
            "worker {i} bytes written\n{dump}"
        );
        assert!(
            (w.idle_sweeps..=after[i].idle_sweeps).contains(&get("idle_sweep", i)),
            "worker {i} idle sweeps: {} traced, {} then {} counted\n{dump}",
            get("idle_sweep", i),
            w.idle_sweeps,
            after[i].idle_sweeps
        );
        assert_eq!(
            get("swept", i),
            w.closed(CloseReason::IdleTimeout),
            "worker {i} swept\n{dump}"
        );
    }
    assert_eq!(
        metrics
            .iter()
            .map(|w| w.closed(CloseReason::IdleTimeout))
            .sum::<u64>(),
        (CONNS / 3) as u64
    );
    server.stop().unwrap();
}

/// Runs `tools/NAME.bt` against this process while traffic flows and returns
/// what it printed.
fn run_tool(name: &str, server: &TestServer) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/").to_owned() + name;
    let tracer = Command::new("bpftrace")
        .args(["-p", &std::process::id().to_string(), &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bpftrace");
    // Give it time to attach (the scripts have no READY line of their own).
    std::thread::sleep(Duration::from_millis(1500));
    let mut idle = Vec::new();
    for i in 0..20 {
        let mut c = server.connect();
        roundtrip(&mut c, format!("tool traffic {i}\n").as_bytes());
        if i % 2 == 0 {
            idle.push(c); // left for the idle sweep
        }
    }
    server.wait_for("swept", Duration::from_secs(5), |m| m.active == 0);
    std::thread::sleep(Duration::from_millis(1100)); // one `interval:s:1` for top.bt
    let ok = Command::new("kill")
        .args(["-INT", &tracer.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let output = tracer.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_shipped_bpftrace_tools_run_and_show_their_maps() {
    let Some((_serial, server)) = traced_echo_server(200) else {
        return;
    };
    for (tool, expect) in [
        ("top.bt", &["@calls[0, accept]", "@bytes[1, read]"][..]),
        ("io-sizes.bt", &["@read_bytes[", "@write_bytes["]),
        (
            "lifetime.bt",
            &[
                "@lifetime_us[idle_timeout]",
                "@lifetime_us[peer_closed]",
                "@closes[",
            ],
        ),
        (
            "gc.bt",
            &["idle_sweep", "@pause_ns[idle_sweep]", "@freed[idle_sweep, "],
        ),
    ] {
        let out = run_tool(tool, &server);
        for e in expect {
            assert!(out.contains(e), "{tool}: `{e}` missing from\n{out}");
        }
    }
    server.stop().unwrap();
}
