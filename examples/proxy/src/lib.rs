//! `corelane-proxy`: an HTTP/1.1 reverse proxy whose upstream connections
//! live on the same worker loop as its clients.
//!
//! Each worker keeps its own pool of keep-alive connections to every
//! upstream (no locks between workers) and balances requests over the
//! upstreams, round robin or to the one with the fewest clients
//! awaiting answers. A request is read whole (body included, as nginx's default
//! `proxy_request_buffering on`), checked by `corelane-http`'s strict
//! parser (no ambiguous message is ever forwarded), rewritten (hop-by-hop
//! headers dropped, body re-framed, `X-Forwarded-For` added) and sent on a
//! pooled connection or a new one. Idempotent requests a client pipelined
//! follow the first on the same upstream connection without waiting for
//! its answer (RFC 9112 §9.3.2, up to [`ProxyOptions::pipeline`]), so the
//! answers come back in order; a request of any other method waits until
//! those before it are answered, and none follows it before its own
//! answer. The response is streamed back as it
//! arrives, with backpressure: after a window of bytes the upstream is
//! paused until the client's output drains (`Context::notify_writable`).
//!
//! Errors: upstream refused or connect timeout → 502; no response within
//! the response timeout → 504; a malformed or ambiguous response → 502; an
//! upstream that closes mid-response → the client's connection is closed
//! (a body is never presented whole when it is not); an idempotent request
//! whose pooled connection turns out dead is sent once more on a fresh
//! connection. Everything is counted on the proxy's own route
//! `GET /_proxy/metrics`. `GET /_proxy/healthz` answers 200 while the
//! process serves, `GET /_proxy/readyz` 200 while it is ready for new
//! connections and 503 from the moment a shutdown or a takeover begins
//! (under `/_proxy/`, so that `/healthz` and `/readyz` still reach the
//! upstream application, which usually has its own).

pub mod forward;
pub mod hop;
pub mod response;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use corelane::{
    Accepted, Action, CloseReason, ConnHandle, ConnectError, Connected, Context, Handler, Input,
    Metrics, Output, ServerState, TimerId, WorkerInfo,
};
use corelane_http::date::{format_http_date, DATE_LEN};
use corelane_http::request::{parse_with, Limits, Parse};
use corelane_http::status::Status;
use slab::Slab;

use response::{parse_head, Chunked, ClientSide, Framing, Parsed};

/// How requests are spread over the upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// In turn.
    RoundRobin,
    /// To the upstream with the fewest clients awaiting answers from this worker
    /// (a client's pipelined requests count once).
    LeastOutstanding,
}

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Where requests go.
    pub upstreams: Vec<SocketAddr>,
    /// How they are spread.
    pub balance: Balance,
    /// Request size limits (as `corelane-http`'s).
    pub limits: Limits,
    /// Time to establish an upstream connection (502 after it).
    pub connect_timeout: Duration,
    /// Time the upstream may go without sending a byte of the response
    /// (504 before the response began; the client is closed after).
    pub response_timeout: Duration,
    /// Idle keep-alive connections kept per upstream per worker for good.
    /// More stay while they are used: those beyond it are closed at a tick
    /// (each second) once unused since the one before, so a burst wider
    /// than the pool does not close and reopen connections with each
    /// burst, as a fixed cap (nginx's `keepalive`) does.
    pub pool_idle: usize,
    /// Add `Via: 1.1 corelane` to requests and responses.
    pub via: bool,
    /// Largest response head accepted from an upstream (502 above it).
    pub max_response_head: usize,
    /// Most requests of one client in flight on its upstream connection.
    /// Only requests the client itself pipelined are sent ahead, and only
    /// idempotent ones (RFC 9112 §9.3.2): each waits in the proxy until
    /// the upstream answered the ones before it, never behind a POST, and
    /// those left unanswered when the connection fails are sent again on
    /// another. 1 (or 0) sends one request at a time, as nginx does.
    pub pipeline: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            upstreams: Vec::new(),
            balance: Balance::RoundRobin,
            limits: Limits {
                max_head: 16 * 1024,
                max_body: 1024 * 1024,
            },
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            pool_idle: 32,
            via: false,
            max_response_head: 16 * 1024,
            pipeline: 32,
        }
    }
}

impl ProxyOptions {
    /// The runtime's input limit this proxy needs (a whole request is
    /// held before it is forwarded).
    pub fn max_input(&self) -> usize {
        self.limits.max_chunked_wire()
    }
}

macro_rules! proxy_counters {
    ($( $name:ident => $help:literal ),* $(,)?) => {
        /// One worker's proxy counters.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct WorkerCounters {
            $( #[doc = $help] pub $name: AtomicU64, )*
        }

        impl WorkerCounters {
            /// Every counter: name, help, value.
            fn each(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$( (stringify!($name), $help, self.$name.load(Relaxed)), )*]
            }
        }
    };
}

proxy_counters! {
    proxied => "Requests answered with an upstream's response.",
    bad_gateway => "Requests answered 502: the upstream refused, timed out connecting, closed before responding, or sent a malformed response.",
    gateway_timeout => "Requests answered 504: no response within the response timeout.",
    truncated => "Responses cut short: the upstream closed or failed mid-body, and the client's connection was closed.",
    retries => "Requests sent again on a fresh connection after a pooled one was found dead.",
    connect_failures => "Upstream connects that failed.",
    bad_responses => "Malformed or ambiguous upstream responses.",
    bad_requests => "Client requests refused as malformed or too large (4xx).",
    reused => "Upstream connections reused from the pool.",
    pool_trimmed => "Idle upstream connections closed beyond --pool-idle, after a whole tick unused.",
}

/// Every worker's proxy counters; sized by the first worker that starts.
#[derive(Debug, Clone, Default)]
pub struct ProxyCounters {
    workers: Arc<OnceLock<Box<[WorkerCounters]>>>,
}

impl ProxyCounters {
    /// Counters to be shared by a server's workers.
    pub fn new() -> Self {
        ProxyCounters::default()
    }

    fn size(&self, workers: usize) {
        self.workers
            .get_or_init(|| (0..workers).map(|_| WorkerCounters::default()).collect());
    }

    /// Worker `w`'s counters.
    ///
    /// # Panics
    ///
    /// Before any worker started, or for a worker the server does not have.
    pub fn worker(&self, w: usize) -> &WorkerCounters {
        &self
            .workers
            .get()
            .expect("counters sized by the first worker")[w]
    }

    /// Appends every counter, per worker, to a Prometheus page.
    pub fn write_prometheus(&self, page: &mut Vec<u8>) {
        let Some(workers) = self.workers.get() else {
            return;
        };
        let per: Vec<_> = workers.iter().map(WorkerCounters::each).collect();
        let Some(first) = per.first() else {
            return;
        };
        for (i, (name, help, _)) in first.iter().enumerate() {
            let values: Vec<u64> = per.iter().map(|w| w[i].2).collect();
            corelane::prometheus_family(
                page,
                &format!("proxy_{name}_total"),
                "counter",
                help,
                &values,
            );
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// The timer tag of an upstream's response timeout.
const RESPONSE_TIMER: u64 = 1;
/// Response bytes forwarded to a client before the upstream is paused
/// until the client's output drains below the low-water mark.
const WINDOW: usize = 64 * 1024;

/// What a connection is to the proxy (the handler's per-connection state):
/// keys into the worker's tables.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// A client connection.
    Client(usize),
    /// A connection to an upstream.
    Upstream(usize),
}

/// A client's request forwarded and not yet answered.
#[derive(Debug, Clone, Copy)]
struct Pending {
    side: ClientSide,
    idempotent: bool,
    /// Its length as forwarded, in [`Client::request`].
    len: usize,
}

#[derive(Debug)]
struct Client {
    handle: ConnHandle,
    /// The peer's address as text, for `X-Forwarded-For`.
    ip: IpText,
    /// The upstream connection carrying its requests, while any is in
    /// flight (all of them on the one connection, so that the answers come
    /// back in order).
    up: Option<usize>,
    /// The requests in flight, oldest first.
    queue: VecDeque<Pending>,
    /// The requests in flight as forwarded, from `answered` on (kept to be
    /// sent again; the capacity is reused).
    request: Vec<u8>,
    /// Bytes at the start of `request` already answered.
    answered: usize,
    /// The oldest request in flight was sent again already.
    retried: bool,
    /// Bytes of the oldest one's response have been sent to the client.
    responded: bool,
    continue_sent: bool,
    /// Reading is paused until the requests in flight are answered.
    paused: bool,
}

impl Client {
    /// The oldest request in flight.
    fn front(&mut self) -> &mut Pending {
        self.queue.front_mut().expect("a request in flight")
    }

    /// Whether another request may follow those in flight on their
    /// connection before they are answered.
    fn takes_more(&self, depth: usize) -> bool {
        self.queue.len() < depth
            && self
                .queue
                .back()
                .is_some_and(|p| p.idempotent && p.side.keep_alive)
    }

    /// Stops reading the client until the requests in flight are answered.
    fn pause(&mut self, cx: &mut Context<'_>) {
        if !self.paused {
            self.paused = true;
            let _ = cx.pause_reading(self.handle);
        }
    }
}

#[derive(Debug)]
enum Body {
    /// Waiting for the response head.
    Head,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

#[derive(Debug)]
struct Upstream {
    handle: ConnHandle,
    /// Index into the upstream list.
    target: usize,
    /// The client whose request it carries, if any (idle in the pool if not).
    client: Option<usize>,
    body: Body,
    /// Was taken from the pool for this request (it may have died idle).
    reused: bool,
    /// The connect completed (until then the runtime holds no state for it:
    /// closing it cancels the connect, and no `on_close` follows).
    connected: bool,
    /// Bytes of the response arrived.
    got_bytes: bool,
    reusable: bool,
    /// Response bytes forwarded since the client last drained.
    window: usize,
    paused: bool,
    /// Its response-timeout timer, if armed. It stays armed across
    /// requests and re-arms itself lazily (no timer churn per request).
    timer: Option<TimerId>,
    /// When it last sent the request or received a byte.
    active_since: Instant,
}

/// An IP address formatted once, when its connection is accepted.
#[derive(Debug, Clone, Copy)]
struct IpText {
    buf: [u8; 45],
    len: u8,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        use std::io::Write as _;
        let mut buf = [0u8; 45];
        let mut w = &mut buf[..];
        let _ = write!(w, "{ip}");
        let len = 45 - w.len();
        IpText {
            buf,
            len: len as u8,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// One upstream's connections on this worker.
#[derive(Debug, Default)]
struct Pool {
    /// Idle connections, a stack: the most recently used on top, so the
    /// bottom ones are those unused longest.
    idle: Vec<usize>,
    outstanding: usize,
    /// The fewest idle connections since the last tick: the bottom `low`
    /// of `idle` went unused all that time.
    low: usize,
}

impl Pool {
    /// Takes the most recently used idle connection.
    fn pop(&mut self) -> Option<usize> {
        let u = self.idle.pop();
        self.low = self.low.min(self.idle.len());
        u
    }

    /// Drops `u` from the idle ones, if there (it closed), keeping the
    /// order of the rest.
    fn forget(&mut self, u: usize) {
        if let Some(i) = self.idle.iter().position(|&x| x == u) {
            self.idle.remove(i);
            self.low = self.low.min(self.idle.len());
        }
    }

    /// Idle connections to close at a tick: beyond `bound`, those unused
    /// since the last one (a burst's connections stay while bursts go on,
    /// instead of being closed and opened again with every burst).
    fn trim(&mut self, bound: usize) -> std::vec::Drain<'_, usize> {
        let excess = self.idle.len().saturating_sub(bound).min(self.low);
        self.low = self.idle.len() - excess;
        self.idle.drain(..excess)
    }
}

/// The proxy handler, one per worker.
#[derive(Debug)]
pub struct Proxy {
    worker: usize,
    opts: Arc<ProxyOptions>,
    metrics: Metrics,
    counters: ProxyCounters,
    clients: Slab<Client>,
    ups: Slab<Upstream>,
    pools: Vec<Pool>,
    next: usize,
    /// Reused for response heads, decoded chunks and error responses.
    scratch: Vec<u8>,
    /// Reused for a request as rewritten for the upstream.
    fwd: Vec<u8>,
    date: [u8; DATE_LEN],
}

impl Proxy {
    /// A factory for [`ServerBuilder::build`](corelane::ServerBuilder::build).
    pub fn factory(
        opts: ProxyOptions,
        counters: ProxyCounters,
    ) -> impl Fn(&WorkerInfo) -> Proxy + Send + Sync + 'static {
        let opts = Arc::new(opts);
        move |info| Proxy::new(info, Arc::clone(&opts), counters.clone())
    }

    /// Worker `info`'s proxy.
    pub fn new(info: &WorkerInfo, opts: Arc<ProxyOptions>, counters: ProxyCounters) -> Self {
        counters.size(info.workers);
        let mut date = [0; DATE_LEN];
        format_http_date(SystemTime::now(), &mut date);
        Proxy {
            worker: info.index,
            pools: opts.upstreams.iter().map(|_| Pool::default()).collect(),
            opts,
            metrics: info.metrics.clone(),
            counters,
            clients: Slab::new(),
            ups: Slab::new(),
            next: 0,
            scratch: Vec::new(),
            fwd: Vec::new(),
            date,
        }
    }

    fn count(&self) -> &WorkerCounters {
        self.counters.worker(self.worker)
    }

    /// The upstream for the next request.
    fn pick(&mut self) -> usize {
        let n = self.pools.len();
        match self.opts.balance {
            Balance::RoundRobin => {
                self.next = (self.next + 1) % n;
                self.next
            }
            Balance::LeastOutstanding => {
                // Ties go round, so equal upstreams share the load.
                self.next = (self.next + 1) % n;
                (0..n)
                    .map(|i| (self.next + i) % n)
                    .min_by_key(|&i| self.pools[i].outstanding)
                    .unwrap_or(0)
            }
        }
    }

    /// Sends client `k`'s requests in flight on a pooled connection, or a
    /// new one (`fresh`: never a pooled one, for a retry).
    fn dispatch(&mut self, k: usize, fresh: bool, cx: &mut Context<'_>) {
        let target = self.pick();
        let pooled = if fresh {
            None
        } else {
            self.pools[target].pop()
        };
        let u = match pooled {
            Some(u) => {
                bump(&self.count().reused);
                let up = &mut self.ups[u];
                up.reused = true;
                u
            }
            None => {
                let key = self.ups.vacant_key();
                let addr = self.opts.upstreams[target];
                let handle = cx.connect_with_timeout(addr, self.opts.connect_timeout, key as u64);
                self.ups.insert(Upstream {
                    handle,
                    target,
                    client: None,
                    body: Body::Head,
                    reused: false,
                    connected: false,
                    got_bytes: false,
                    reusable: false,
                    window: 0,
                    paused: false,
                    timer: None,
                    active_since: cx.now(),
                })
            }
        };
        let up = &mut self.ups[u];
        up.client = Some(k);
        up.body = Body::Head;
        up.got_bytes = false;
        up.window = 0;
        self.pools[up.target].outstanding += 1;
        let client = &mut self.clients[k];
        client.up = Some(u);
        // Queued while connecting: sent once established.
        let _ = cx.write(up.handle, &client.request[client.answered..]);
        up.active_since = cx.now();
        if up.timer.is_none() {
            up.timer = cx
                .set_timer(Some(up.handle), self.opts.response_timeout, RESPONSE_TIMER)
                .ok();
        }
    }

    /// Detaches upstream `u` from its client; it goes back to the pool if
    /// it may carry another request, else it is closed.
    fn release(&mut self, u: usize, reusable: bool, cx: &mut Context<'_>) {
        let up = &mut self.ups[u];
        // Its timer stays: it finds the connection idle and ends.
        if up.client.take().is_some() {
            self.pools[up.target].outstanding -= 1;
        }
        if up.paused {
            up.paused = false;
            let _ = cx.resume_reading(up.handle);
        }
        let pool = &mut self.pools[up.target];
        // Kept even beyond `pool_idle`: the excess is closed at a tick
        // once unused for a whole tick (`on_tick`).
        if reusable && up.connected {
            pool.idle.push(u);
        } else {
            let _ = cx.close(up.handle);
            if !up.connected {
                // Cancelled: no `on_close` will come for it.
                self.ups.remove(u);
            }
        }
    }

    /// The response to client `k`'s oldest request in flight is complete
    /// (or was an error of the proxy's own). The client then reads its next
    /// request, or closes; requests left in flight go on on its upstream
    /// connection (`true`) or, when the caller let that one go
    /// (`Client::up` unset), on another.
    fn answered(&mut self, k: usize, cx: &mut Context<'_>) -> bool {
        let Some(c) = self.clients.get_mut(k) else {
            return false;
        };
        let p = c.queue.pop_front().expect("a request in flight");
        c.answered += p.len;
        c.responded = false;
        c.retried = false;
        if !p.side.keep_alive {
            // Those pipelined after it go unanswered: the client sees the
            // close, and sends them again (RFC 9112 §9.3.2).
            c.up = None;
            c.queue.clear();
            let _ = cx.close(c.handle);
            return false;
        }
        if c.queue.is_empty() {
            c.up = None;
            c.request.clear();
            c.answered = 0;
        } else if c.answered >= 4096 && c.answered * 2 >= c.request.len() {
            // A client that keeps its pipeline full never empties it.
            c.request.drain(..c.answered);
            c.answered = 0;
        }
        if c.paused {
            // Presents a pipelined request already read, if any.
            c.paused = false;
            let _ = cx.resume_reading(c.handle);
        }
        if c.up.is_some() {
            return true;
        }
        if !c.queue.is_empty() {
            // The caller let the connection go: the rest go on another.
            self.dispatch(k, false, cx);
        }
        false
    }

    /// Client `k`'s response is complete, and its upstream connection let
    /// go.
    fn client_done(&mut self, k: usize, cx: &mut Context<'_>) {
        bump(&self.counters.worker(self.worker).proxied);
        if let Some(c) = self.clients.get_mut(k) {
            c.up = None;
            self.answered(k, cx);
        }
    }

    /// Client `k`'s oldest request failed with `status` (or, once its
    /// response began, the connection is closed: it is cut short); its
    /// upstream connection has been let go.
    fn client_failed(&mut self, k: usize, status: Status, cx: &mut Context<'_>) {
        let Some(c) = self.clients.get_mut(k) else {
            return;
        };
        c.up = None;
        if c.responded {
            bump(&self.counters.worker(self.worker).truncated);
            c.queue.clear();
            let _ = cx.close(c.handle);
            return;
        }
        let side = c.front().side;
        let handle = c.handle;
        self.error_response(status, side.keep_alive, side.head_request);
        let _ = cx.write(handle, &self.scratch);
        self.answered(k, cx);
    }

    /// An error response of the proxy's own, into `scratch` (to a HEAD
    /// request, without its body).
    fn error_response(&mut self, status: Status, keep_alive: bool, head_request: bool) {
        let body = status.reason_body();
        let out = &mut self.scratch;
        out.clear();
        out.extend_from_slice(status.line());
        out.extend_from_slice(b"Server: corelane-proxy\r\nDate: ");
        out.extend_from_slice(&self.date);
        out.extend_from_slice(b"\r\nContent-Type: text/plain\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        if !keep_alive {
            out.extend_from_slice(b"\r\nConnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");
        if !head_request {
            out.extend_from_slice(body);
        }
    }

    /// `/_proxy/...`: answered by the proxy itself (to a HEAD request,
    /// without the body).
    fn admin(
        &mut self,
        path: &[u8],
        (keep_alive, head_request): (bool, bool),
        state: ServerState,
        output: &mut Output,
    ) {
        let mut page = Vec::new();
        let status = match path {
            b"/_proxy/metrics" => {
                self.metrics.write_prometheus(&mut page);
                self.counters.write_prometheus(&mut page);
                Status::Ok
            }
            b"/_proxy/healthz" => {
                page.extend_from_slice(b"ok\n");
                Status::Ok
            }
            b"/_proxy/readyz" if state.is_ready() => {
                page.extend_from_slice(b"ready\n");
                Status::Ok
            }
            b"/_proxy/readyz" => {
                page.extend_from_slice(state.as_str().as_bytes());
                page.push(b'\n');
                Status::ServiceUnavailable
            }
            _ => {
                page.extend_from_slice(Status::NotFound.reason_body());
                Status::NotFound
            }
        };
        output.extend_from_slice(status.line());
        output.extend_from_slice(
            b"Server: corelane-proxy\r\nContent-Type: text/plain\r\nContent-Length: ",
        );
        output.extend_from_slice(itoa::Buffer::new().format(page.len()).as_bytes());
        if !keep_alive {
            output.extend_from_slice(b"\r\nConnection: close");
        }
        output.extend_from_slice(b"\r\n\r\n");
        if !head_request {
            output.extend_from_slice(&page);
        }
    }

    /// A client's bytes: each whole request is forwarded. Those it
    /// pipelined follow the first on the same upstream connection while
    /// they are idempotent (up to [`ProxyOptions::pipeline`]); any other
    /// waits, the client paused, until those in flight are answered.
    fn client_data(
        &mut self,
        k: usize,
        input: &mut Input<'_>,
        output: &mut Output,
        cx: &mut Context<'_>,
    ) -> Action {
        // Where this call's requests begin in the client's buffer: they
        // go to the upstream in one write.
        let start = self.clients[k].request.len();
        loop {
            let c = &mut self.clients[k];
            if input.bytes().is_empty() {
                break;
            }
            let ahead = !c.queue.is_empty();
            if ahead && !c.takes_more(self.opts.pipeline) {
                c.pause(cx);
                break;
            }
            // The request is rewritten for the upstream as it is parsed
            // (one scan of its head).
            let mut rewrite = forward::Rewrite::new(input.bytes(), std::mem::take(&mut self.fwd));
            let parsed = parse_with(input.bytes(), &self.opts.limits, |name, value| {
                rewrite.field(name, value)
            });
            let req = match parsed {
                Parse::Complete(req) => req,
                _ if ahead => {
                    // Answered after those in flight: read again then.
                    self.fwd = rewrite.into_buffer();
                    c.pause(cx);
                    break;
                }
                Parse::Partial { expect_continue } => {
                    self.fwd = rewrite.into_buffer();
                    if expect_continue && !c.continue_sent {
                        c.continue_sent = true;
                        output.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    break;
                }
                Parse::Error(status) => {
                    self.fwd = rewrite.into_buffer();
                    bump(&self.count().bad_requests);
                    self.error_response(status, false, false);
                    output.extend_from_slice(&self.scratch);
                    return Action::Close;
                }
            };
            let idempotent = forward::idempotent(req.method_token);
            let admin = req.path.starts_with(b"/_proxy/");
            if ahead && (admin || !idempotent) {
                // Never pipelined: answered after those in flight.
                self.fwd = rewrite.into_buffer();
                c.pause(cx);
                break;
            }
            c.continue_sent = false;
            let keep_alive = req.keep_alive && !input.draining();
            if admin {
                self.fwd = rewrite.into_buffer();
                let path = req.path;
                let len = req.total_len;
                let head_request = req.method == corelane_http::request::Method::Head;
                self.admin(path, (keep_alive, head_request), cx.server_state(), output);
                input.consume(len);
                if !keep_alive {
                    return Action::Close;
                }
                continue;
            }
            let mut request = rewrite.finish(input.bytes(), &req, c.ip.as_bytes(), self.opts.via);
            let len = request.len();
            if c.request.is_empty() {
                std::mem::swap(&mut c.request, &mut request);
            } else {
                c.request.extend_from_slice(&request);
            }
            self.fwd = request;
            c.queue.push_back(Pending {
                side: ClientSide {
                    head_request: req.method == corelane_http::request::Method::Head,
                    minor: req.minor,
                    keep_alive,
                    via: self.opts.via,
                },
                idempotent,
                len,
            });
            input.consume(req.total_len);
        }
        let c = &mut self.clients[k];
        if c.request.len() > start {
            match c.up {
                // Pipelined behind those in flight.
                Some(u) => {
                    let _ = cx.write(self.ups[u].handle, &c.request[start..]);
                }
                None => {
                    c.responded = false;
                    c.retried = false;
                    self.dispatch(k, false, cx);
                }
            }
        }
        Action::Continue
    }

    /// An upstream's bytes: each response head is rewritten for the
    /// client, the body forwarded as it comes.
    fn upstream_data(&mut self, u: usize, input: &mut Input<'_>, cx: &mut Context<'_>) -> Action {
        let Some(k) = self.ups[u].client else {
            // An idle pooled connection has nothing to say.
            input.consume(input.bytes().len());
            return Action::Close;
        };
        // The response timeout runs between two reads, as nginx's
        // proxy_read_timeout.
        self.ups[u].active_since = cx.now();
        let mut forwarded = 0;
        loop {
            self.ups[u].got_bytes |= !input.bytes().is_empty();
            if let Err(action) = self.response(u, k, input, &mut forwarded, cx) {
                return action;
            }
            let up = &mut self.ups[u];
            if self.clients[k].queue.len() > 1 && up.reusable {
                // The next response comes on this connection.
                up.body = Body::Head;
                up.got_bytes = false;
                // It has answered on this request's connection already: a
                // close before the next answer is the race of a keep-alive
                // close, and the requests left are sent again.
                up.reused = true;
                bump(&self.counters.worker(self.worker).proxied);
                if self.answered(k, cx) {
                    continue;
                }
                // The client closes after that one: the answers to come
                // have no reader.
                self.release(u, false, cx);
                return Action::Close;
            }
            // Bytes after the last response, unasked for: the connection is
            // not reused.
            let reusable = up.reusable
                && self.clients[k].queue.len() == 1
                && input.bytes().is_empty()
                && !input.draining();
            self.release(u, reusable, cx);
            self.client_done(k, cx);
            return if reusable {
                Action::Continue
            } else {
                Action::Close
            };
        }
    }

    /// Upstream `u`'s bytes of the response to client `k`'s oldest
    /// request, forwarded to the client (`forwarded` counts them): `Ok`
    /// once it is complete, else what the upstream connection does next.
    fn response(
        &mut self,
        u: usize,
        k: usize,
        input: &mut Input<'_>,
        forwarded: &mut usize,
        cx: &mut Context<'_>,
    ) -> Result<(), Action> {
        let up = &mut self.ups[u];
        let client = &mut self.clients[k];
        let to = client.handle;
        loop {
            let bytes = input.bytes();
            match &mut up.body {
                Body::Head => {
                    let side = &mut client.queue.front_mut().expect("in flight").side;
                    match parse_head(bytes, self.opts.max_response_head, side, &mut self.scratch) {
                        // More to come (or, closed, `on_close` says what failed).
                        Parsed::Partial => return Err(Action::Continue),
                        Parsed::Interim(n) => input.consume(n),
                        Parsed::Invalid(why) => return Err(self.bad_response(u, why, cx)),
                        Parsed::Complete(head) => {
                            client.responded = true;
                            input.consume(head.len);
                            up.reusable = head.reusable;
                            if !response::keeps_client(head.framing, side) {
                                side.keep_alive = false;
                            }
                            up.body = match head.framing {
                                Framing::Length(len) if len > 0 => {
                                    // The body, or what came of it, goes
                                    // out with the head: one write.
                                    let body = input.bytes();
                                    let n =
                                        body.len().min(usize::try_from(len).unwrap_or(usize::MAX));
                                    self.scratch.extend_from_slice(&body[..n]);
                                    input.consume(n);
                                    let _ = cx.write(to, &self.scratch);
                                    *forwarded += self.scratch.len();
                                    let left = len - n as u64;
                                    if left == 0 {
                                        return Ok(());
                                    }
                                    up.body = Body::Length(left);
                                    return Err(self.backpressure(u, *forwarded, cx));
                                }
                                _ => {
                                    let _ = cx.write(to, &self.scratch);
                                    *forwarded += self.scratch.len();
                                    match head.framing {
                                        Framing::Chunked => Body::Chunked(Chunked::default()),
                                        Framing::UntilClose => Body::UntilClose,
                                        Framing::Empty | Framing::Length(_) => return Ok(()),
                                    }
                                }
                            };
                        }
                    }
                }
                Body::Length(left) => {
                    let n = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let _ = cx.write(to, &bytes[..n]);
                    *forwarded += n;
                    input.consume(n);
                    *left -= n as u64;
                    if *left == 0 {
                        return Ok(());
                    }
                    return Err(self.backpressure(u, *forwarded, cx));
                }
                Body::Chunked(decoder) => {
                    let dechunk = client.front().side.dechunk();
                    let scratch = &mut self.scratch;
                    scratch.clear();
                    let fed = decoder.feed(bytes, |d| {
                        if dechunk {
                            scratch.extend_from_slice(d);
                        }
                    });
                    let n = match fed {
                        Ok(n) => n,
                        Err(why) => return Err(self.bad_response(u, why, cx)),
                    };
                    let out = if dechunk { &scratch[..] } else { &bytes[..n] };
                    let _ = cx.write(to, out);
                    *forwarded += out.len();
                    input.consume(n);
                    if decoder.is_done() {
                        return Ok(());
                    }
                    return Err(self.backpressure(u, *forwarded, cx));
                }
                Body::UntilClose => {
                    let _ = cx.write(to, bytes);
                    *forwarded += bytes.len();
                    input.consume(bytes.len());
                    if input.peer_closed() {
                        up.reusable = false;
                        return Ok(());
                    }
                    return Err(self.backpressure(u, *forwarded, cx));
                }
            }
        }
    }

    /// Upstream `u` sent a malformed or ambiguous response (`why`): its
    /// client gets a 502 (or, once the response began, is closed), and the
    /// upstream connection is closed.
    fn bad_response(&mut self, u: usize, why: &'static str, cx: &mut Context<'_>) -> Action {
        tracing::debug!(worker = self.worker, why, "bad upstream response");
        bump(&self.count().bad_responses);
        let up = &mut self.ups[u];
        if let Some(k) = up.client.take() {
            self.pools[up.target].outstanding -= 1;
            if !self.clients.get(k).is_some_and(|c| c.responded) {
                bump(&self.count().bad_gateway);
            }
            self.client_failed(k, Status::BadGateway, cx);
        }
        Action::Close
    }

    /// After forwarding `n` more bytes: pauses the upstream once a window
    /// has gone to the client, until the client's output drains.
    fn backpressure(&mut self, u: usize, n: usize, cx: &mut Context<'_>) -> Action {
        let up = &mut self.ups[u];
        up.window += n;
        if up.window >= WINDOW && !up.paused {
            if let Some(k) = up.client {
                up.paused = true;
                let _ = cx.pause_reading(up.handle);
                let _ = cx.notify_writable(self.clients[k].handle);
            }
        }
        Action::Continue
    }

    /// An upstream connection closed (`reason`); if it carried a request,
    /// the request is retried, answered 502, or (mid-response) its client
    /// is closed.
    fn upstream_closed(&mut self, u: usize, reason: CloseReason, cx: &mut Context<'_>) {
        let up = self.ups.remove(u);
        let pool = &mut self.pools[up.target];
        pool.forget(u);
        let Some(k) = up.client else {
            return;
        };
        pool.outstanding -= 1;
        if matches!(up.body, Body::UntilClose) && reason == CloseReason::PeerClosed {
            // The close is the end of this body (and of the client's
            // connection: such a body is never followed).
            return self.client_done(k, cx);
        }
        let Some(c) = self.clients.get_mut(k) else {
            return;
        };
        c.up = None;
        if !c.responded && up.reused && !up.got_bytes && c.front().idempotent && !c.retried {
            // The pooled connection had died while idle: once more, fresh.
            c.retried = true;
            bump(&self.count().retries);
            return self.dispatch(k, true, cx);
        }
        if !c.responded {
            bump(&self.count().bad_gateway);
        }
        self.client_failed(k, Status::BadGateway, cx);
    }
}

impl Handler for Proxy {
    type Conn = Role;

    fn on_accept(&mut self, conn: &Accepted, _cx: &mut Context<'_>) -> Role {
        Role::Client(self.clients.insert(Client {
            handle: conn.handle,
            ip: IpText::new(conn.peer.ip()),
            up: None,
            queue: VecDeque::new(),
            request: Vec::new(),
            answered: 0,
            retried: false,
            responded: false,
            continue_sent: false,
            paused: false,
        }))
    }

    fn on_data(
        &mut self,
        role: &mut Role,
        input: &mut Input<'_>,
        output: &mut Output,
        cx: &mut Context<'_>,
    ) -> Action {
        match *role {
            Role::Client(k) => self.client_data(k, input, output, cx),
            Role::Upstream(u) => self.upstream_data(u, input, cx),
        }
    }

    fn on_close(&mut self, role: Role, reason: CloseReason, cx: &mut Context<'_>) {
        match role {
            Role::Client(k) => {
                let c = self.clients.remove(k);
                if let Some(u) = c.up {
                    // Mid-response: that upstream connection cannot be reused.
                    self.release(u, false, cx);
                }
            }
            Role::Upstream(u) => self.upstream_closed(u, reason, cx),
        }
    }

    fn on_connected(&mut self, conn: &Connected, _cx: &mut Context<'_>) -> Option<Role> {
        let u = conn.tag as usize;
        let up = self.ups.get_mut(u).filter(|up| up.handle == conn.handle)?;
        up.connected = true;
        Some(Role::Upstream(u))
    }

    fn on_connect_failed(
        &mut self,
        conn: ConnHandle,
        tag: u64,
        error: ConnectError,
        cx: &mut Context<'_>,
    ) {
        let u = tag as usize;
        if self.ups.get(u).is_none_or(|up| up.handle != conn) {
            return;
        }
        let up = self.ups.remove(u);
        bump(&self.count().connect_failures);
        tracing::debug!(
            worker = self.worker,
            upstream = %self.opts.upstreams[up.target],
            %error,
            "upstream connect failed"
        );
        if let Some(k) = up.client {
            self.pools[up.target].outstanding -= 1;
            bump(&self.count().bad_gateway);
            self.client_failed(k, Status::BadGateway, cx);
        }
    }

    fn on_timer(&mut self, role: Option<&mut Role>, tag: u64, cx: &mut Context<'_>) {
        if tag != RESPONSE_TIMER {
            return;
        }
        let u = match role {
            Some(&mut Role::Upstream(u)) => u,
            Some(&mut Role::Client(_)) => return,
            // Still connecting: it has no state yet, only its handle.
            None => {
                let Some((u, _)) = self.ups.iter().find(|(_, up)| Some(up.handle) == cx.conn())
                else {
                    return;
                };
                u
            }
        };
        let up = &mut self.ups[u];
        up.timer = None;
        if up.client.is_none() {
            return; // idle: the timer ends here, the next request arms one
        }
        let due = up.active_since + self.opts.response_timeout;
        if cx.now() < due {
            // Activity since it was set: wait for the rest.
            up.timer = cx
                .set_timer(Some(up.handle), due - cx.now(), RESPONSE_TIMER)
                .ok();
            return;
        }
        let Some(k) = up.client.take() else {
            return;
        };
        self.pools[up.target].outstanding -= 1;
        let handle = up.handle;
        let connected = up.connected;
        bump(&self.count().gateway_timeout);
        self.client_failed(k, Status::GatewayTimeout, cx);
        let _ = cx.close(handle);
        if !connected {
            self.ups.remove(u);
        }
    }

    fn on_writable(&mut self, role: &mut Role, _output: &mut Output, cx: &mut Context<'_>) {
        let Role::Client(k) = *role else {
            return;
        };
        if let Some(u) = self.clients[k].up {
            let up = &mut self.ups[u];
            up.window = 0;
            if up.paused {
                up.paused = false;
                let _ = cx.resume_reading(up.handle);
            }
        }
    }

    fn on_tick(&mut self, now: SystemTime, cx: &mut Context<'_>) {
        format_http_date(now, &mut self.date);
        for pool in &mut self.pools {
            for u in pool.trim(self.opts.pool_idle) {
                bump(&self.counters.worker(self.worker).pool_trimmed);
                let _ = cx.close(self.ups[u].handle);
            }
        }
    }

    /// Draining: the idle pooled upstream connections are closed (they
    /// would hold the worker until its shutdown deadline); those carrying a
    /// request finish it and are then closed, not pooled (`draining`).
    fn on_drain(&mut self, cx: &mut Context<'_>) {
        for pool in &mut self.pools {
            for u in pool.idle.drain(..) {
                let _ = cx.close(self.ups[u].handle);
            }
        }
    }
}
