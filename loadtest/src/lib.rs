//! `corelane-loadtest`: a closed-loop HTTP/1.1 load generator.
//!
//! One mio event loop per `--threads`, each driving its share of
//! `--connections`. A connection keeps `--pipeline` requests in flight: it
//! writes them in one batch and writes the next batch once every response of
//! the previous one has arrived. With `--close` every request gets its own
//! connection (`Connection: close`), which measures accept throughput.
//! Latencies (batch sent to response complete) go into an HdrHistogram.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

pub mod proxy;
pub mod scrape;
pub mod suite;
pub mod wrk;

/// A connection whose connect failed tries again after this long (wrk
/// reconnects at once; a pause keeps a refusing server from making the
/// generator spin).
const CONNECT_RETRY: Duration = Duration::from_millis(10);
/// A parsed `http://host[:port]/path` target.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Path and query.
    pub path: String,
}

impl Target {
    /// Parses and resolves `url`.
    ///
    /// # Errors
    ///
    /// A message for URLs that are not plain `http://` or do not resolve.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}`: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("`{authority}`: {e}"))?
            .next()
            .ok_or_else(|| format!("`{authority}` resolves to no address"))?;
        Ok(Target {
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Event-loop threads.
    pub threads: usize,
    /// Concurrent connections (split over threads).
    pub connections: usize,
    /// How long to run.
    pub duration: Duration,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// A new connection for every request.
    pub close: bool,
    /// A response not complete after this long counts as a timeout.
    pub timeout: Duration,
    /// Print a progress line every second (to stderr).
    pub progress: bool,
    /// Open loop: this many requests per second in total, on schedule
    /// whatever the server does, with latency counted from the scheduled
    /// time (coordinated omission corrected, as wrk2 does), at most
    /// `pipeline` in flight per connection (1: a request waits for the
    /// previous response, as clients that do not pipeline do; the wait
    /// counts in its latency). `None`: closed loop, `pipeline` requests in
    /// flight per connection.
    pub rate: Option<f64>,
}

/// Errors by kind.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Errors {
    /// Connecting failed.
    pub connect: u64,
    /// Reading failed, or the server closed with requests in flight.
    pub read: u64,
    /// Writing failed.
    pub write: u64,
    /// A response took longer than the timeout.
    pub timeout: u64,
    /// A response with a status other than 2xx.
    pub status: u64,
    /// A response that could not be parsed.
    pub parse: u64,
}

impl Errors {
    fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.read += o.read;
        self.write += o.write;
        self.timeout += o.timeout;
        self.status += o.status;
        self.parse += o.parse;
    }

    /// All errors.
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout + self.status + self.parse
    }
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Responses received in full.
    pub requests: u64,
    /// Of them, 2xx.
    pub ok: u64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Response bytes per second.
    pub bytes_per_sec: f64,
    /// Connections opened.
    pub connections_opened: u64,
    /// Latency percentiles, microseconds: p50, p90, p99, p99.9, max.
    pub latency_us: Latency,
    /// Errors by kind.
    pub errors: Errors,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
}

/// Runs the load and returns the report.
///
/// # Errors
///
/// A message when the target does not accept a first connection.
pub fn run(target: &Target, opts: &RunOptions) -> Result<Report, String> {
    // Fail fast, with a clear message, when nothing answers.
    StdStream::connect_timeout(&target.addr, Duration::from_secs(3))
        .map_err(|e| format!("{}: cannot connect: {e}", target.addr))?;
    let threads = opts.threads.clamp(1, opts.connections.max(1));
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let conns = opts.connections / threads + usize::from(t < opts.connections % threads);
            let (target, opts, live) = (target.clone(), opts.clone(), Arc::clone(&live));
            std::thread::spawn(move || Worker::new(&target, &opts, conns, live, start).run(start))
        })
        .collect();
    if opts.progress {
        let live = Arc::clone(&live);
        let duration = opts.duration;
        std::thread::spawn(move || {
            let mut last = 0;
            while !live.done.load(Relaxed) && start.elapsed() < duration {
                std::thread::sleep(Duration::from_secs(1));
                let now = live.requests.load(Relaxed);
                eprintln!(
                    "  {:>4.0}s  {:>10} req/s  {:>12} requests  {:>6} errors",
                    start.elapsed().as_secs_f64(),
                    now - last,
                    now,
                    live.errors.load(Relaxed)
                );
                last = now;
            }
        });
    }
    let mut hist = new_histogram();
    let mut total = ThreadResult::new();
    for h in handles {
        let r = h.join().map_err(|_| "a load thread panicked".to_owned())?;
        hist.add(&r.hist).map_err(|e| e.to_string())?;
        total.requests += r.requests;
        total.ok += r.ok;
        total.bytes += r.bytes;
        total.opened += r.opened;
        total.errors.add(&r.errors);
    }
    live.done.store(true, Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    Ok(Report {
        requests: total.requests,
        ok: total.ok,
        seconds,
        requests_per_sec: total.requests as f64 / seconds,
        bytes_per_sec: total.bytes as f64 / seconds,
        connections_opened: total.opened,
        latency_us: Latency {
            p50: hist.value_at_quantile(0.5),
            p90: hist.value_at_quantile(0.9),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        },
        errors: total.errors,
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[derive(Default)]
struct Live {
    requests: AtomicU64,
    errors: AtomicU64,
    done: AtomicBool,
}

struct ThreadResult {
    requests: u64,
    ok: u64,
    bytes: u64,
    opened: u64,
    errors: Errors,
    hist: Histogram<u64>,
}

impl ThreadResult {
    fn new() -> Self {
        ThreadResult {
            requests: 0,
            ok: 0,
            bytes: 0,
            opened: 0,
            errors: Errors::default(),
            hist: new_histogram(),
        }
    }
}

struct Conn {
    stream: Option<TcpStream>,
    /// Response bytes not yet parsed.
    buf: Vec<u8>,
    /// For each request sent and not yet answered, the instant its latency
    /// counts from: when its batch was written (closed loop), or when it was
    /// scheduled (`--rate`, so a stalled server is not let off the hook:
    /// coordinated omission is corrected as wrk2 does).
    expected: VecDeque<Instant>,
    /// Request bytes to write, and how many are written.
    out: Vec<u8>,
    written: usize,
    /// `--rate`: when this connection's next request is due.
    next_send: Instant,
    /// `--rate --close`: requests whose time came while this connection's
    /// one request was in flight; each goes out on the next connection, its
    /// latency still counted from its scheduled time.
    backlog: VecDeque<Instant>,
}

struct Worker {
    poll: Poll,
    conns: Vec<Conn>,
    request: Vec<u8>,
    /// Requests per batch (closed loop).
    depth: usize,
    /// `--rate`: time between two requests of one connection.
    interval: Option<Duration>,
    opts: RunOptions,
    addr: SocketAddr,
    live: Arc<Live>,
    out: ThreadResult,
    /// Past the deadline: no new requests or connections; in-flight requests
    /// are still awaited, so the counts match the server's.
    stopping: bool,
}

impl Worker {
    fn new(
        target: &Target,
        opts: &RunOptions,
        conns: usize,
        live: Arc<Live>,
        start: Instant,
    ) -> Worker {
        // The request wrk sends with TechEmpower's headers, so that both
        // tools put the same bytes on the wire and their figures compare.
        let connection = if opts.close { "close" } else { "keep-alive" };
        let accept = crate::wrk::TECHEMPOWER_HEADERS[1];
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\n{accept}\r\nConnection: {connection}\r\n\r\n",
            target.path, target.host
        )
        .into_bytes();
        let interval = opts
            .rate
            .filter(|r| *r > 0.0)
            .map(|rate| Duration::from_secs_f64(opts.connections.max(1) as f64 / rate));
        Worker {
            poll: Poll::new().expect("epoll instance"),
            conns: (0..conns)
                .map(|i| Conn {
                    stream: None,
                    buf: Vec::with_capacity(4096),
                    expected: VecDeque::new(),
                    out: Vec::new(),
                    written: 0,
                    // Stagger the connections over one interval.
                    next_send: start
                        + interval.map_or(Duration::ZERO, |iv| {
                            iv.mul_f64(i as f64 / conns.max(1) as f64)
                        }),
                    backlog: VecDeque::new(),
                })
                .collect(),
            depth: if opts.close { 1 } else { opts.pipeline.max(1) },
            interval,
            request,
            opts: opts.clone(),
            addr: target.addr,
            live,
            out: ThreadResult::new(),
            stopping: false,
        }
    }

    fn run(mut self, start: Instant) -> ThreadResult {
        let end = start + self.opts.duration;
        for i in 0..self.conns.len() {
            self.open(i);
        }
        let mut events = Events::with_capacity(1024);
        let mut scratch = vec![0u8; 64 * 1024];
        loop {
            let now = Instant::now();
            if now >= end {
                self.stopping = true;
            }
            if self.stopping
                && (self
                    .conns
                    .iter()
                    .all(|c| c.expected.is_empty() || c.stream.is_none())
                    || now >= end + self.opts.timeout)
            {
                break;
            }
            if self.interval.is_some() && !self.stopping {
                self.send_due(now);
            }
            let wait = match self.interval {
                Some(_) => self
                    .conns
                    .iter()
                    .map(|c| c.next_send.saturating_duration_since(now))
                    .min()
                    .unwrap_or(Duration::ZERO)
                    .min(Duration::from_millis(20)),
                None => Duration::from_millis(20),
            };
            let _ = self.poll.poll(&mut events, Some(wait));
            for ev in events.iter() {
                let i = ev.token().0;
                if ev.is_writable() {
                    self.send(i);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.receive(i, &mut scratch);
                }
            }
            let now = Instant::now();
            for i in 0..self.conns.len() {
                let late = self.conns[i]
                    .expected
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.opts.timeout);
                if late {
                    self.fail(i, Kind::Timeout);
                }
            }
        }
        self.out
    }

    /// `--rate`: queues every request whose time has come, on its connection.
    fn send_due(&mut self, now: Instant) {
        let Some(interval) = self.interval else {
            return;
        };
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.stream.is_none() {
                continue;
            }
            let mut queued = false;
            while c.next_send <= now {
                if c.expected.len() >= self.depth {
                    // At most `depth` in flight, as a client that does not
                    // pipeline (every browser) waits for the response; with
                    // `--close` one request per connection (the server
                    // would close after the first). The wait counts in the
                    // latency, from the scheduled time.
                    c.backlog.push_back(c.next_send);
                } else {
                    c.expected.push_back(c.next_send);
                    c.out.extend_from_slice(&self.request);
                    queued = true;
                }
                c.next_send += interval;
            }
            if queued {
                self.send(i);
            }
        }
    }

    /// Connects conn `i` and, in closed loop, sends its first batch. A
    /// refused connection is counted and retried after [`CONNECT_RETRY`].
    fn open(&mut self, i: usize) {
        if self.stopping {
            return;
        }
        let std = match StdStream::connect(self.addr) {
            Ok(s) => s,
            Err(_) => {
                self.error(Kind::Connect);
                // Retry in CONNECT_RETRY (as if a request sent then timed
                // out), rather than spinning or idling for a whole timeout.
                let now = Instant::now();
                let due = now
                    .checked_sub(self.opts.timeout.saturating_sub(CONNECT_RETRY))
                    .unwrap_or(now);
                self.conns[i].expected.push_back(due);
                return;
            }
        };
        let _ = std.set_nodelay(true);
        let _ = std.set_nonblocking(true);
        let mut stream = TcpStream::from_std(std);
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.error(Kind::Connect);
            return;
        }
        self.out.opened += 1;
        let c = &mut self.conns[i];
        c.stream = Some(stream);
        c.buf.clear();
        if self.interval.is_none() {
            self.start_batch(i);
        } else {
            self.send_backlog(i);
        }
    }

    /// Open loop: sends what fell due while `depth` requests were in flight,
    /// up to `depth` again.
    fn send_backlog(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let mut queued = false;
        while c.expected.len() < self.depth {
            let Some(due) = c.backlog.pop_front() else {
                break;
            };
            c.expected.push_back(due);
            c.out.extend_from_slice(&self.request);
            queued = true;
        }
        if queued {
            self.send(i);
        }
    }

    /// Closed loop: writes `depth` requests at once.
    fn start_batch(&mut self, i: usize) {
        let now = Instant::now();
        let c = &mut self.conns[i];
        for _ in 0..self.depth {
            c.expected.push_back(now);
            c.out.extend_from_slice(&self.request);
        }
        self.send(i);
    }

    fn send(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        while c.written < c.out.len() {
            match stream.write(&c.out[c.written..]) {
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.fail(i, Kind::Write);
                    return;
                }
            }
        }
        c.out.clear();
        c.written = 0;
    }

    fn receive(&mut self, i: usize, scratch: &mut [u8]) {
        loop {
            let c = &mut self.conns[i];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            match stream.read(scratch) {
                Ok(0) => {
                    // Closed: fine after a `Connection: close` response.
                    self.parse_responses(i);
                    if self.conns[i].expected.is_empty() {
                        self.reopen(i);
                    } else {
                        self.fail(i, Kind::Read);
                    }
                    return;
                }
                Ok(n) => {
                    c.buf.extend_from_slice(&scratch[..n]);
                    self.out.bytes += n as u64;
                    if !self.parse_responses(i) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.fail(i, Kind::Read);
                    return;
                }
            }
        }
    }

    /// Consumes complete responses; in closed loop, starts the next batch
    /// when all arrived. Returns false when the connection was replaced.
    fn parse_responses(&mut self, i: usize) -> bool {
        let mut server_closes = false;
        loop {
            let c = &mut self.conns[i];
            let Some(&since) = c.expected.front() else {
                break;
            };
            match parse_response(&c.buf) {
                Ok(Some(Parsed { status, len, close })) => {
                    server_closes |= close;
                    c.buf.drain(..len);
                    c.expected.pop_front();
                    let latency = since.elapsed().as_micros().max(1) as u64;
                    self.out.requests += 1;
                    self.live.requests.fetch_add(1, Relaxed);
                    let _ = self.out.hist.record(latency.min(60_000_000));
                    if (200..300).contains(&status) {
                        self.out.ok += 1;
                    } else {
                        self.error(Kind::Status);
                    }
                }
                Ok(None) => return true,
                Err(BadResponse) => {
                    self.fail(i, Kind::Parse);
                    return false;
                }
            }
        }
        if server_closes && !self.opts.close {
            // The server said `Connection: close` (it is shutting down, or
            // done with this connection): nothing more may be sent on it.
            // Requests already pipelined behind that response go unanswered.
            for _ in 0..self.conns[i].expected.len() {
                self.error(Kind::Read);
            }
            self.reopen(i);
            return false;
        }
        if self.opts.close {
            // One request per connection: close it ourselves (servers that
            // ignore `Connection: close` are measured alike) and open the next.
            self.reopen(i);
            return false;
        }
        if self.stopping {
            // Past the deadline nothing new is sent.
            return true;
        }
        if self.interval.is_some() {
            // With a rate, the schedule sends; what it held back for want
            // of room goes now.
            self.send_backlog(i);
            return true;
        }
        self.start_batch(i);
        true
    }

    fn error(&mut self, kind: Kind) {
        let e = &mut self.out.errors;
        match kind {
            Kind::Connect => e.connect += 1,
            Kind::Read => e.read += 1,
            Kind::Write => e.write += 1,
            Kind::Timeout => e.timeout += 1,
            Kind::Status => e.status += 1,
            Kind::Parse => e.parse += 1,
        }
        self.live.errors.fetch_add(1, Relaxed);
    }

    /// Counts the error and replaces the connection.
    fn fail(&mut self, i: usize, kind: Kind) {
        if self.conns[i].stream.is_some() || kind != Kind::Timeout {
            self.error(kind);
        }
        self.reopen(i);
    }

    fn reopen(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.expected.clear();
        c.out.clear();
        c.written = 0;
        self.open(i);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connect,
    Read,
    Write,
    Timeout,
    Status,
    Parse,
}

/// A response the generator cannot parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse;

impl std::fmt::Display for BadResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed or chunked HTTP response")
    }
}

impl std::error::Error for BadResponse {}

/// Parses one response at the start of `buf`: `Ok(Some((status, length)))`
/// when complete, `Ok(None)` when more bytes are needed. Bodies must be
/// framed by `Content-Length` (what corelane-http and most benchmark targets
/// send); chunked responses are reported as parse errors.
pub fn parse_response(buf: &[u8]) -> Result<Option<Parsed>, BadResponse> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 {
            Err(BadResponse)
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| BadResponse)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(BadResponse)?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().ok_or(BadResponse)?.starts_with("HTTP/1.") {
        return Err(BadResponse);
    }
    let status: u16 = parts
        .next()
        .ok_or(BadResponse)?
        .parse()
        .map_err(|_| BadResponse)?;
    let mut length = None;
    let mut close = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(BadResponse)?;
        if name.eq_ignore_ascii_case("connection") {
            close = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse::<usize>().map_err(|_| BadResponse)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(BadResponse);
        }
    }
    // 1xx, 204 and 304 have no body.
    let body = if status < 200 || status == 204 || status == 304 {
        0
    } else {
        length.ok_or(BadResponse)?
    };
    let total = head_end + 4 + body;
    Ok((buf.len() >= total).then_some(Parsed {
        status,
        len: total,
        close,
    }))
}

/// One complete response at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Status code.
    pub status: u16,
    /// Length of the whole response, head and body.
    pub len: usize,
    /// It carries `Connection: close`.
    pub close: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_in_pieces() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_response(&r[..10]), Ok(None));
        assert_eq!(parse_response(&r[..40]), Ok(None));
        let p = parse_response(r).unwrap().unwrap();
        assert_eq!((p.status, p.len, p.close), (200, 43, false));
        let len = p.len;
        assert_eq!(
            parse_response(&r[len..]),
            Ok(Some(Parsed {
                status: 404,
                len: r.len() - len,
                close: false
            }))
        );
        let closing = b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_response(closing).unwrap().unwrap().close);
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(BadResponse)
        );
        assert_eq!(parse_response(b"garbage\r\n\r\n"), Err(BadResponse));
    }

    #[test]
    fn urls_parse() {
        let t = Target::parse("http://127.0.0.1:8080/plaintext?x=1").unwrap();
        assert_eq!(t.addr.port(), 8080);
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/plaintext?x=1")
        );
        assert_eq!(Target::parse("http://127.0.0.1").unwrap().path, "/");
        assert!(Target::parse("https://x/").is_err());
    }
}
