//! The deployment files in `deploy/` checked against what corelane-http
//! does: the Kubernetes manifest's structure (capabilities, probes, timing,
//! whole-core resources, scrape annotations, the Service and the budget),
//! the systemd units' readiness settings, and both started for real: the
//! release binary runs with the manifest's and the units' arguments and
//! answers the probes' routes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_yaml::Value;

fn deploy(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The manifest's documents by kind.
fn manifest() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&deploy("kubernetes/corelane-http.yaml"))
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `--name=value` or `--name value` in `args`.
fn flag(args: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            Some(v.to_owned())
        } else if *a == long {
            args.get(i + 1).cloned()
        } else {
            None
        }
    })
}

fn duration(args: &[String], name: &str, default: &str) -> Duration {
    humantime::parse_duration(&flag(args, name).unwrap_or_else(|| default.to_owned()))
        .unwrap_or_else(|e| panic!("--{name}: {e}"))
}

/// The release binary, started with `args` (its `--addr` and `--user`
/// replaced: an ephemeral loopback port, this user), once listening.
struct Started {
    child: Child,
    addr: SocketAddr,
}

impl Started {
    fn new(args: &[String]) -> Started {
        let mut kept = Vec::new();
        let mut skip = false;
        for a in args {
            if std::mem::take(&mut skip) {
                continue;
            }
            if a == "--addr" || a == "--user" {
                skip = true;
            } else if !a.starts_with("--addr=") && !a.starts_with("--user=") {
                kept.push(a.clone());
            }
        }
        let bin = corelane_test_support::binary::release("corelane-http", "corelane-http");
        let mut child = Command::new(bin)
            .args(&kept)
            .args(["--addr", "127.0.0.1:0", "--workers", "1"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start corelane-http");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| corelane_test_support::binary::listening_addr(&l))
            .unwrap_or_else(|| panic!("corelane-http {kept:?} did not start"));
        std::thread::spawn(move || for _ in lines {});
        Started { child, addr }
    }

    fn status(&self, path: &str) -> u16 {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out[9..12].parse().unwrap()
    }

    fn signal(&self, sig: i32) {
        corelane_test_support::proc::signal(self.child.id(), sig);
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_kubernetes_manifest_fits_what_the_server_does() {
    let docs = manifest();
    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    let args = strs(&container["args"]);

    // Readiness and liveness on the server's own routes, on its port.
    let port = &container["ports"][0];
    let port_name = port["name"].as_str().expect("a named port");
    let port_number = port["containerPort"].as_u64().expect("containerPort");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], port_name);
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], port_name);
    let addr: SocketAddr = flag(&args, "addr").expect("--addr").parse().unwrap();
    assert_eq!(u64::from(addr.port()), port_number);

    // The kubelet waits for the drain delay and the drain, with margin.
    let drain_delay = duration(&args, "drain-delay", "0s");
    let shutdown = duration(&args, "shutdown-timeout", "10s");
    assert!(drain_delay >= Duration::from_secs(1), "no drain delay");
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        Duration::from_secs(grace) >= drain_delay + shutdown + Duration::from_secs(2),
        "terminationGracePeriodSeconds {grace} < drain delay {drain_delay:?} + shutdown {shutdown:?} + 2 s"
    );
    // The readiness probe notices a drain within the drain delay.
    let probe = &container["readinessProbe"];
    let notices =
        probe["periodSeconds"].as_u64().unwrap() * probe["failureThreshold"].as_u64().unwrap();
    assert!(Duration::from_secs(notices) < drain_delay);
    // No preStop hook: it would hold SIGTERM back, and with it /readyz's
    // turn to 503 and `Connection: close` to keep-alive clients.
    assert!(container["lifecycle"]["preStop"].is_null());

    // The capabilities it needs and no more.
    let sc = &container["securityContext"];
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    let mut needed = vec!["BPF".to_owned()];
    if addr.port() < 1024 {
        needed.push("NET_BIND_SERVICE".to_owned());
    }
    assert_eq!(strs(&sc["capabilities"]["add"]), needed);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    // bpffs where the steering pins go.
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let bpffs = mounts
        .iter()
        .find(|m| m["mountPath"] == "/sys/fs/bpf")
        .expect("bpffs mounted");
    let volume = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == bpffs["name"])
        .expect("the bpffs volume");
    assert_eq!(volume["hostPath"]["path"], "/sys/fs/bpf");

    // Whole cores, Guaranteed QoS: the static CPU manager pins them.
    let res = &container["resources"];
    assert_eq!(res["requests"], res["limits"]);
    let cpu = res["requests"]["cpu"].as_str().expect("cpu as a string");
    assert!(
        cpu.parse::<u32>().is_ok_and(|n| n >= 1),
        "cpu {cpu:?} is not whole cores"
    );
    assert!(!res["requests"]["memory"].is_null());

    // Prometheus scrapes /metrics on the server's port.
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    assert_eq!(ann["prometheus.io/port"], port_number.to_string().as_str());

    // A rolling update never has fewer ready pods than asked for.
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let labels = &pod["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    let service = kind(&docs, "Service");
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port_name);
    let pdb = kind(&docs, "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);

    // And the server, started with those arguments, answers the probes,
    // and turns unready at SIGTERM.
    let s = Started::new(&args);
    assert_eq!(s.status("/healthz"), 200);
    assert_eq!(s.status("/readyz"), 200);
    assert_eq!(s.status("/metrics"), 200);
    s.signal(libc::SIGTERM);
    assert!(corelane_test_support::eventually(
        Duration::from_secs(2),
        || { s.status("/readyz") == 503 }
    ));
    assert_eq!(s.status("/healthz"), 200, "alive within the drain delay");
    // A second signal ends the drain delay and the drain at once.
    s.signal(libc::SIGTERM);
}

/// `Key=value` lines of a unit's `[Service]` section.
fn service_section(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .skip_while(|l| l.trim() != "[Service]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn the_systemd_units_wait_for_readiness_and_outlast_the_drain() {
    for name in [
        "systemd/corelane-http@.service",
        "systemd/corelane-http.service",
    ] {
        let unit = service_section(&deploy(name));
        let get = |k: &str| {
            unit.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{name}: no {k}="))
        };
        assert_eq!(get("Type"), "notify", "{name}");
        assert_eq!(get("NotifyAccess"), "main", "{name}");
        let exec: Vec<String> = get("ExecStart")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert!(exec[0].ends_with("/corelane-http"), "{name}");
        let args = &exec[1..];
        let stop = humantime::parse_duration(&format!("{}s", get("TimeoutStopSec"))).unwrap();
        let needs = duration(args, "drain-delay", "0s") + duration(args, "shutdown-timeout", "10s");
        assert!(stop > needs, "{name}: TimeoutStopSec {stop:?} <= {needs:?}");
        // The arguments start the real server.
        let s = Started::new(args);
        assert_eq!(s.status("/readyz"), 200, "{name}");
    }
}
