//! Reads a corelane server's `/metrics` (Prometheus text) for the per-worker
//! distribution of connections and requests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::Serialize;

/// Per-worker counters from one scrape.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ServerMetrics {
    /// Steering mode in force (`corelane_steering_info{mode=...}`).
    pub steering: Option<String>,
    /// Connections accepted, per worker.
    pub accepted: BTreeMap<usize, u64>,
    /// HTTP requests answered, per worker.
    pub requests: BTreeMap<usize, u64>,
}

impl ServerMetrics {
    /// Parses Prometheus text exposition.
    pub fn parse(text: &str) -> ServerMetrics {
        let mut m = ServerMetrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let worker = label(series, "worker").and_then(|w| w.parse::<usize>().ok());
            if series.starts_with("corelane_connections_accepted_total{") {
                if let Some(w) = worker {
                    m.accepted.insert(w, value);
                }
            } else if series.starts_with("corelane_http_requests_total{") {
                if let Some(w) = worker {
                    m.requests.insert(w, value);
                }
            } else if series.starts_with("corelane_steering_info{") {
                m.steering = label(series, "mode").map(str::to_owned);
            }
        }
        m
    }

    /// `self - before`, per worker.
    pub fn since(&self, before: &ServerMetrics) -> ServerMetrics {
        let diff = |now: &BTreeMap<usize, u64>, then: &BTreeMap<usize, u64>| {
            now.iter()
                .map(|(w, v)| (*w, v.saturating_sub(*then.get(w).unwrap_or(&0))))
                .collect()
        };
        ServerMetrics {
            steering: self.steering.clone(),
            accepted: diff(&self.accepted, &before.accepted),
            requests: diff(&self.requests, &before.requests),
        }
    }
}

fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

/// Fetches `http://addr/metrics`; `None` when the server has no such page.
pub fn fetch(addr: SocketAddr, host: &str) -> Option<ServerMetrics> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).ok()?;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| ServerMetrics::parse(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exposition() {
        let text = "# HELP x\ncorelane_connections_accepted_total{worker=\"0\"} 3\n\
            corelane_connections_accepted_total{worker=\"1\"} 5\n\
            corelane_http_requests_total{worker=\"1\"} 9\n\
            corelane_steering_info{mode=\"kernel\"} 1\n";
        let m = ServerMetrics::parse(text);
        assert_eq!(m.accepted.get(&1), Some(&5));
        assert_eq!(m.requests.get(&1), Some(&9));
        assert_eq!(m.steering.as_deref(), Some("kernel"));
        let before = ServerMetrics::parse("corelane_connections_accepted_total{worker=\"1\"} 2\n");
        assert_eq!(m.since(&before).accepted.get(&1), Some(&3));
    }
}
