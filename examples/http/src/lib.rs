//! An HTTP/1.1 origin server on the corelane runtime.
//!
//! Routes: `GET /plaintext` and `GET /json` (TechEmpower), `GET /` a short
//! page, `POST /echo` returns the request body, `GET /metrics` the runtime's
//! per-worker metrics in Prometheus text format, `GET /healthz` 200 while the
//! process serves (liveness) and `GET /readyz` 200 while it is ready for new
//! connections, 503 from the moment a shutdown or a takeover begins (see
//! [`corelane::ServerState`]). `HEAD` works on every `GET`
//! route; a known path with another method gets 405 with `Allow`; anything
//! else 404.
//!
//! Keep-alive is the default for HTTP/1.1, HTTP/1.0 closes unless it asks for
//! keep-alive, and pipelined requests are answered in order, the replies of
//! one read going out in one write. Malformed or hostile requests get their
//! status (400, 413, 417, 431, 501, 505) and the connection is closed; see
//! [`request`] for the framing rules.
//!
//! Steady state allocates nothing per request: the `Date` header and the
//! complete TechEmpower responses are formatted once per second per worker,
//! on the runtime's tick.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

use corelane::{
    Accepted, Action, Context, Handler, Input, Metrics, Output, ServerState, WorkerInfo,
};

pub mod date;
/// The fuzz target's property, shared with `tests/fuzz_corpus.rs`: test
/// support, not API.
#[doc(hidden)]
pub mod fuzzing;
pub mod head;
pub mod request;
pub mod status;

use date::{format_http_date, DATE_LEN};
use head::{Avx2, Baseline, Lanes};
use request::{decode_chunked, parse_in, Body, Limits, Method, Parse, Request};
use status::Status;

const PLAINTEXT_BODY: &[u8] = b"Hello, World!";
const JSON_BODY: &[u8] = br#"{"message":"Hello, World!"}"#;
/// The routes whose `GET` is answered whole from [`Http::cached`], in its
/// order: path, content type, body.
const CACHED: [(&[u8], &[u8], &[u8]); 2] = [
    (b"/plaintext", b"text/plain", PLAINTEXT_BODY),
    (b"/json", b"application/json", JSON_BODY),
];
const INDEX_BODY: &[u8] = b"corelane HTTP/1.1 server\n\n\
GET  /plaintext  TechEmpower plaintext\n\
GET  /json       TechEmpower JSON\n\
POST /echo       returns the request body\n\
GET  /metrics    per-worker runtime metrics (Prometheus text format)\n\
GET  /healthz    200 while the process serves (liveness)\n\
GET  /readyz     200 while ready for new connections, 503 once draining\n";

/// Options of the HTTP server.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct HttpOptions {
    /// Request size limits. Defaults: 16 KiB head, 1 MiB body.
    pub limits: Limits,
    /// Serve `GET /_test/stall/<ms>`, which blocks the worker's loop for
    /// `<ms>` milliseconds (at most 10 s) and answers with the worker's
    /// index: for fault-injection tests of steering. Never enable it in
    /// production. Default `false`.
    pub test_routes: bool,
    /// Scan request heads 32 bytes at a time where the CPU has AVX2
    /// (detected at start); `false` keeps the 16-byte SSE2 scan every
    /// x86-64 CPU has. Both answer exactly the same. Default `true`.
    pub wide_scan: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            limits: Limits {
                max_head: 16 * 1024,
                max_body: 1024 * 1024,
            },
            test_routes: false,
            wide_scan: true,
        }
    }
}

impl HttpOptions {
    /// The runtime's unconsumed-input limit these limits need (the handler
    /// enforces the exact limits itself; this is the backstop).
    pub fn max_input(&self) -> usize {
        self.limits.max_chunked_wire().max(64 * 1024)
    }

    /// How wide the head scan is with these options on this CPU: 32
    /// (AVX2) or 16 bytes.
    pub fn scan_width(&self) -> usize {
        if self.avx2().is_some() {
            32
        } else {
            16
        }
    }

    fn avx2(&self) -> Option<Avx2> {
        self.wide_scan.then(Avx2::detect).flatten()
    }
}

/// Requests answered, per worker, shared by all workers' handlers so that
/// whichever worker serves `/metrics` can report every worker's count.
#[derive(Debug)]
pub struct RequestCounters {
    /// Each worker's handler holds its own counter as well: publishing is
    /// one store, with no index to check.
    per_worker: Box<[Arc<PaddedCounter>]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct PaddedCounter(AtomicU64);

impl RequestCounters {
    /// Counters for `workers` workers.
    pub fn new(workers: usize) -> Self {
        RequestCounters {
            per_worker: (0..workers).map(|_| Arc::default()).collect(),
        }
    }

    /// Worker `worker`'s counter (a counter of its own, not reported,
    /// for a worker beyond those counted).
    fn slot(&self, worker: usize) -> Arc<PaddedCounter> {
        self.per_worker.get(worker).cloned().unwrap_or_default()
    }

    /// Requests answered by `worker`.
    pub fn get(&self, worker: usize) -> u64 {
        self.per_worker.get(worker).map_or(0, |c| c.0.load(Relaxed))
    }
}

/// The HTTP handler of one worker.
#[derive(Debug)]
pub struct Http {
    worker: usize,
    limits: Limits,
    date: [u8; DATE_LEN],
    /// The whole answers to a `GET` of each of the [`CACHED`] routes, for
    /// each `Connection` header one may carry (indexed by [`ConnHeader`]),
    /// rebuilt each tick for the new `Date`.
    cached: [[Vec<u8>; 3]; 2],
    metrics: Metrics,
    requests: Arc<RequestCounters>,
    /// Requests answered by this worker (published to `published`).
    answered: u64,
    /// This worker's counter in `requests`.
    published: Arc<PaddedCounter>,
    test_routes: bool,
    scratch: Vec<u8>,
    /// The server's state as of the last callback, for `/readyz`.
    state: ServerState,
    /// Heads are scanned 32 bytes at a time (when the CPU has AVX2; never
    /// set elsewhere).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    avx2: Option<Avx2>,
}

/// Per-connection state.
#[derive(Debug, Default)]
pub struct HttpConn {
    /// `100 Continue` was sent for the request now arriving.
    continue_sent: bool,
}

/// The routes, told apart by the path's length first (most requests cost
/// one comparison of lengths and one of bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Plaintext,
    Json,
    Index,
    Metrics,
    Health,
    Ready,
    Echo,
    Other,
}

impl Route {
    fn of(path: &[u8]) -> Route {
        match path.len() {
            10 if path == b"/plaintext" => Route::Plaintext,
            5 if path == b"/json" => Route::Json,
            5 if path == b"/echo" => Route::Echo,
            8 if path == b"/metrics" => Route::Metrics,
            8 if path == b"/healthz" => Route::Health,
            7 if path == b"/readyz" => Route::Ready,
            1 if path == b"/" => Route::Index,
            _ => Route::Other,
        }
    }
}

/// The `Connection` header a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnHeader {
    None = 0,
    Close = 1,
    KeepAlive = 2,
}

impl ConnHeader {
    /// What the response to an HTTP/1.`minor` request says, when the
    /// connection stays open (`keep`) or not.
    fn of(keep: bool, minor: u8) -> ConnHeader {
        match (keep, minor) {
            (false, _) => ConnHeader::Close,
            (true, 0) => ConnHeader::KeepAlive,
            (true, _) => ConnHeader::None,
        }
    }

    const ALL: [ConnHeader; 3] = [ConnHeader::None, ConnHeader::Close, ConnHeader::KeepAlive];
}

/// Where a response is written: a connection's output, or a cached answer.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Output {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Http {
    /// A factory for [`ServerBuilder::build`](corelane::ServerBuilder::build):
    /// every worker gets its own handler, all sharing one set of request
    /// counters for `/metrics`.
    pub fn factory(opts: HttpOptions) -> impl Fn(&WorkerInfo) -> Http + Send + Sync + 'static {
        let shared: std::sync::OnceLock<Arc<RequestCounters>> = std::sync::OnceLock::new();
        move |info| {
            let requests = shared.get_or_init(|| Arc::new(RequestCounters::new(info.workers)));
            Http::new(info, opts, Arc::clone(requests))
        }
    }

    /// Connection state for driving the handler outside a server (benches,
    /// fuzzers); the runtime calls [`Handler::on_accept`] itself.
    pub fn on_accept_detached(&mut self) -> HttpConn {
        HttpConn::default()
    }

    /// A handler for the worker described by `info`.
    pub fn new(info: &WorkerInfo, opts: HttpOptions, requests: Arc<RequestCounters>) -> Self {
        let mut http = Http {
            worker: info.index,
            limits: opts.limits,
            date: *b"Thu, 01 Jan 1970 00:00:00 GMT",
            cached: std::array::from_fn(|_| std::array::from_fn(|_| Vec::with_capacity(256))),
            metrics: info.metrics.clone(),
            published: requests.slot(info.index),
            requests,
            answered: 0,
            test_routes: opts.test_routes,
            scratch: Vec::new(),
            state: ServerState::Serving,
            avx2: opts.avx2(),
        };
        http.tick(SystemTime::now());
        http
    }

    fn head(
        &self,
        out: &mut impl Sink,
        status: Status,
        content_type: &[u8],
        len: usize,
        conn: ConnHeader,
        extra: &[u8],
    ) {
        out.put(status.line());
        out.put(b"Server: corelane\r\nDate: ");
        out.put(&self.date);
        out.put(b"\r\nContent-Type: ");
        out.put(content_type);
        out.put(b"\r\nContent-Length: ");
        out.put(itoa::Buffer::new().format(len).as_bytes());
        out.put(b"\r\n");
        out.put(extra);
        match conn {
            ConnHeader::None => {}
            ConnHeader::Close => out.put(b"Connection: close\r\n"),
            ConnHeader::KeepAlive => out.put(b"Connection: keep-alive\r\n"),
        }
        out.put(b"\r\n");
    }

    #[allow(clippy::too_many_arguments)]
    fn simple(
        &self,
        out: &mut impl Sink,
        status: Status,
        content_type: &[u8],
        body: &[u8],
        conn: ConnHeader,
        head_only: bool,
        extra: &[u8],
    ) {
        self.head(out, status, content_type, body.len(), conn, extra);
        if !head_only {
            out.put(body);
        }
    }

    /// Answers a bad request; the connection closes after it.
    #[cold]
    #[inline(never)]
    fn error(&self, out: &mut Output, status: Status) {
        self.simple(
            out,
            status,
            b"text/plain",
            status.reason_body(),
            ConnHeader::Close,
            false,
            b"",
        );
    }

    /// Answers `req`: `GET /plaintext` and `GET /json` are copied whole
    /// from [`cached`](Self::cached) here; everything else is written by
    /// [`respond_other`](Self::respond_other), out of line and handed only
    /// what it reads, so that the request loop neither keeps the other
    /// routes' state in registers nor lays the whole request out for a
    /// call (together ~40 instructions per plain request, measured).
    #[inline(always)]
    fn respond(&mut self, req: &Request<'_>, buf: &[u8], keep: bool, out: &mut Output) {
        let conn = ConnHeader::of(keep, req.minor);
        if req.method == Method::Get {
            // The paths by themselves: cheaper than `Route::of`'s table
            // of lengths.
            // (`position` over them costs the plain request 6 more.)
            let cached = if req.path == CACHED[0].0 {
                Some(&self.cached[0])
            } else if req.path == CACHED[1].0 {
                Some(&self.cached[1])
            } else {
                None
            };
            if let Some(answers) = cached {
                out.extend_from_slice(&answers[conn as usize]);
                self.answered += 1;
                return;
            }
        }
        let payload = buf.get(req.head_len..req.total_len).unwrap_or_default();
        self.respond_other(req.method, conn, req.path, req.body, payload, out);
    }

    /// [`respond`](Self::respond) for every other request: `payload` is the
    /// body as it came (chunked or not, as `body` says).
    #[inline(never)]
    fn respond_other(
        &mut self,
        method: Method,
        conn: ConnHeader,
        path: &[u8],
        body: Body,
        payload: &[u8],
        out: &mut Output,
    ) {
        let route = Route::of(path);
        let head_only = method == Method::Head;
        let get = matches!(method, Method::Get | Method::Head);
        match route {
            // `GET` was answered from the cache.
            Route::Plaintext | Route::Json if get => {
                let (_, content_type, body) = CACHED[usize::from(route == Route::Json)];
                self.head(out, Status::Ok, content_type, body.len(), conn, b"");
            }
            Route::Index if get => self.simple(
                out,
                Status::Ok,
                b"text/plain; charset=utf-8",
                INDEX_BODY,
                conn,
                head_only,
                b"",
            ),
            Route::Metrics if get => {
                let mut page = std::mem::take(&mut self.scratch);
                page.clear();
                self.render_metrics(&mut page);
                self.simple(
                    out,
                    Status::Ok,
                    b"text/plain; version=0.0.4",
                    &page,
                    conn,
                    head_only,
                    b"",
                );
                self.scratch = page;
            }
            Route::Health if get => {
                self.simple(
                    out,
                    Status::Ok,
                    b"text/plain",
                    b"ok\n",
                    conn,
                    head_only,
                    b"",
                );
            }
            Route::Ready if get => {
                let (status, body): (Status, &[u8]) = match self.state {
                    ServerState::Serving => (Status::Ok, b"ready\n"),
                    ServerState::HandedOver => (Status::ServiceUnavailable, b"handed over\n"),
                    _ => (Status::ServiceUnavailable, b"draining\n"),
                };
                self.simple(out, status, b"text/plain", body, conn, head_only, b"");
            }
            Route::Other if self.test_routes && get && path.starts_with(b"/_test/stall/") => {
                let ms = std::str::from_utf8(&path[b"/_test/stall/".len()..])
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                match ms {
                    Some(ms) => {
                        std::thread::sleep(std::time::Duration::from_millis(ms.min(10_000)));
                        let mut body = *b"worker 00\n";
                        body[7] = b'0' + (self.worker / 10 % 10) as u8;
                        body[8] = b'0' + (self.worker % 10) as u8;
                        self.simple(out, Status::Ok, b"text/plain", &body, conn, head_only, b"");
                    }
                    None => self.error(out, Status::BadRequest),
                }
            }
            Route::Echo if method == Method::Post => {
                match body {
                    Body::Length(_) => self.simple(
                        out,
                        Status::Ok,
                        b"application/octet-stream",
                        payload,
                        conn,
                        false,
                        b"",
                    ),
                    Body::Chunked { len } => {
                        self.head(out, Status::Ok, b"application/octet-stream", len, conn, b"");
                        // Already validated by `parse`; this pass copies the data.
                        let _ = decode_chunked(payload, self.limits.max_body, |d| {
                            out.extend_from_slice(d)
                        });
                    }
                }
            }
            Route::Plaintext
            | Route::Json
            | Route::Index
            | Route::Metrics
            | Route::Health
            | Route::Ready
            | Route::Echo => {
                let allow: &[u8] = if route == Route::Echo {
                    b"Allow: POST\r\n"
                } else {
                    b"Allow: GET, HEAD\r\n"
                };
                let status = Status::MethodNotAllowed;
                self.simple(
                    out,
                    status,
                    b"text/plain",
                    status.reason_body(),
                    conn,
                    head_only,
                    allow,
                );
            }
            Route::Other => self.simple(
                out,
                Status::NotFound,
                b"text/plain",
                Status::NotFound.reason_body(),
                conn,
                head_only,
                b"",
            ),
        }
        self.answered += 1;
    }

    /// The runtime's metrics and the requests answered, in Prometheus text
    /// exposition format.
    fn render_metrics(&self, page: &mut Vec<u8>) {
        self.metrics.write_prometheus(page);
        let answered: Vec<u64> = (0..self.metrics.workers())
            .map(|w| self.requests.get(w))
            .collect();
        corelane::prometheus_family(
            page,
            "http_requests_total",
            "counter",
            "HTTP requests answered.",
            &answered,
        );
    }

    /// Writes [`cached`](Self::cached) again, for the new `Date`.
    fn rebuild_cached(&mut self) {
        let mut cached = std::mem::take(&mut self.cached);
        for (answers, &(_, content_type, body)) in cached.iter_mut().zip(&CACHED) {
            for (answer, conn) in answers.iter_mut().zip(ConnHeader::ALL) {
                answer.clear();
                self.simple(answer, Status::Ok, content_type, body, conn, false, b"");
            }
        }
        self.cached = cached;
    }

    /// Answers the whole requests in `input` into `output` (what
    /// [`Handler::on_data`] does; public so benches and fuzzers can drive
    /// it without a server).
    pub fn serve(
        &mut self,
        conn: &mut HttpConn,
        input: &mut Input<'_>,
        output: &mut Output,
    ) -> Action {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = self.avx2 {
            // SAFETY: an `Avx2` exists only where the CPU has AVX2.
            return unsafe { self.serve_avx2(avx2, conn, input, output) };
        }
        self.serve_baseline(conn, input, output)
    }

    /// [`serve`](Self::serve) where the CPU has no AVX2. Not inlined, so
    /// that `serve` only chooses (it would otherwise save and restore the
    /// registers this one needs on either way).
    #[inline(never)]
    fn serve_baseline(
        &mut self,
        conn: &mut HttpConn,
        input: &mut Input<'_>,
        output: &mut Output,
    ) -> Action {
        self.serve_in(Baseline, conn, input, output, Http::serve_rest_baseline)
    }

    /// The requests after the first of a pipelined batch, where the CPU
    /// has no AVX2.
    #[inline(never)]
    fn serve_rest_baseline(
        &mut self,
        conn: &mut HttpConn,
        input: &mut Input<'_>,
        output: &mut Output,
    ) -> Action {
        self.serve_all(Baseline, conn, input, output)
    }

    /// [`serve`](Self::serve) compiled for AVX2, into which the head scan
    /// with `avx2` is inlined.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn serve_avx2(
        &mut self,
        avx2: Avx2,
        conn: &mut HttpConn,
        input: &mut Input<'_>,
        output: &mut Output,
    ) -> Action {
        // The closure is compiled for AVX2 too, so the call is safe.
        self.serve_in(avx2, conn, input, output, |http, conn, input, output| {
            http.serve_rest_avx2(avx2, conn, input, output)
        })
    }

    /// The requests after the first of a pipelined batch, compiled for
    /// AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline(never)]
    fn serve_rest_avx2(
        &mut self,
        avx2: Avx2,
        conn: &mut HttpConn,
        input: &mut Input<'_>,
        output: &mut Output,
    ) -> Action {
        self.serve_all(avx2, conn, input, output)
    }

    /// Answers the first request in `input` here and hands any others
    /// to `rest`. The common call has one request, and a function with
    /// no loop in it keeps nothing in hand for a next turn: with the loop
    /// here, the compiler set up and saved loop-invariant values on every
    /// call (~25 instructions per plain request, measured).
    #[inline(always)]
    fn serve_in(
        &mut self,
        lanes: impl Lanes,
        conn: &mut HttpConn,
        input: &mut Input<'_>,
        output: &mut Output,
        rest: impl FnOnce(&mut Self, &mut HttpConn, &mut Input<'_>, &mut Output) -> Action,
    ) -> Action {
        let answered = self.answered;
        let action = match self.serve_one(lanes, conn, input, output) {
            Some(action) => action,
            None if input.bytes().is_empty() => Action::Continue,
            None => rest(self, conn, input, output),
        };
        if self.answered != answered {
            self.published.0.store(self.answered, Relaxed);
        }
        action
    }

    /// Answers the requests in `input` until one is partial or the
    /// connection is to close.
    #[inline(always)]
    fn serve_all(
        &mut self,
        lanes: impl Lanes,
        conn: &mut HttpConn,
        input: &mut Input<'_>,
        output: &mut Output,
    ) -> Action {
        loop {
            if let Some(action) = self.serve_one(lanes, conn, input, output) {
                return action;
            }
        }
    }

    /// Answers the request at the start of `input`, if it is whole:
    /// `None` when the connection stays open for the next one, else what
    /// comes next.
    #[inline(always)]
    fn serve_one(
        &mut self,
        lanes: impl Lanes,
        conn: &mut HttpConn,
        input: &mut Input<'_>,
        output: &mut Output,
    ) -> Option<Action> {
        let buf = input.bytes();
        if buf.is_empty() {
            return Some(Action::Continue);
        }
        match parse_in(lanes, buf, &self.limits, |_, _| {}) {
            Parse::Complete(req) => {
                conn.continue_sent = false;
                let keep = req.keep_alive && !input.draining();
                self.respond(&req, buf, keep, output);
                input.consume(req.total_len);
                if !keep {
                    return Some(Action::Close);
                }
                None
            }
            Parse::Partial { expect_continue } => {
                if input.peer_closed() {
                    // The peer stopped sending in the middle of a request.
                    return Some(Action::Close);
                }
                if expect_continue && !conn.continue_sent {
                    output.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    conn.continue_sent = true;
                }
                Some(Action::Continue)
            }
            Parse::Error(status) => {
                self.error(output, status);
                // Left unconsumed: the close lingers, so the rest of a
                // refused request still on its way is read and dropped
                // instead of resetting the connection under the reply.
                self.answered += 1;
                Some(Action::Close)
            }
        }
    }

    /// Refreshes the `Date` header and the cached responses for `now` (what
    /// [`Handler::on_tick`] does).
    pub fn tick(&mut self, now: SystemTime) {
        format_http_date(now, &mut self.date);
        self.rebuild_cached();
    }
}

impl Handler for Http {
    type Conn = HttpConn;

    fn on_accept(&mut self, _conn: &Accepted, _cx: &mut Context<'_>) -> HttpConn {
        HttpConn::default()
    }

    fn on_data(
        &mut self,
        conn: &mut HttpConn,
        input: &mut Input<'_>,
        output: &mut Output,
        cx: &mut Context<'_>,
    ) -> Action {
        self.state = cx.server_state();
        self.serve(conn, input, output)
    }

    fn on_tick(&mut self, now: SystemTime, _cx: &mut Context<'_>) {
        self.tick(now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// Serves `requests` (one read) on a fresh connection of `http`: what
    /// it wrote and what comes next.
    fn serve(http: &mut Http, requests: &[u8]) -> (String, Action) {
        let mut conn = http.on_accept_detached();
        let mut out = Output::default();
        let mut input = Input::new(requests, false, false);
        let action = http.serve(&mut conn, &mut input, &mut out);
        (String::from_utf8(out.to_vec()).unwrap(), action)
    }

    fn answer(date: &str, content_type: &str, body: &str, connection: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nServer: corelane\r\nDate: {date}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n{connection}\r\n{body}",
            body.len()
        )
    }

    /// The cached answers carry the `Connection` header each request needs,
    /// on both scans, and the `Date` of the last tick; a pipelined batch is
    /// answered in order (the first request and the rest take different
    /// paths), up to the one that closes.
    #[test]
    fn cached_answers_for_every_connection_header_and_the_latest_date() {
        for wide_scan in [false, true] {
            let opts = HttpOptions {
                wide_scan,
                ..HttpOptions::default()
            };
            let info = WorkerInfo::detached(0, 1);
            let mut http = Http::new(&info, opts, Arc::new(RequestCounters::new(1)));
            let plain = |date: &str, connection: &str| {
                answer(date, "text/plain", "Hello, World!", connection)
            };
            let json = |date: &str, connection: &str| {
                answer(
                    date,
                    "application/json",
                    r#"{"message":"Hello, World!"}"#,
                    connection,
                )
            };
            for (secs, date) in [
                (1_700_000_000, "Tue, 14 Nov 2023 22:13:20 GMT"),
                (1_700_000_061, "Tue, 14 Nov 2023 22:14:21 GMT"),
            ] {
                http.tick(UNIX_EPOCH + Duration::from_secs(secs));
                let (out, action) = serve(
                    &mut http,
                    b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n\
                      GET /json HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
                      GET /json HTTP/1.1\r\nHost: x\r\n\r\n\
                      GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
                      GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n",
                );
                let expected = [
                    plain(date, ""),
                    json(date, "Connection: keep-alive\r\n"),
                    json(date, ""),
                    plain(date, "Connection: close\r\n"),
                ]
                .concat();
                assert_eq!(
                    (out, action),
                    (expected, Action::Close),
                    "AVX2: {wide_scan}"
                );
                // HTTP/1.0 without keep-alive closes; `HEAD` is not cached.
                let (out, action) = serve(&mut http, b"GET /json HTTP/1.0\r\n\r\n");
                assert_eq!(
                    (out, action),
                    (json(date, "Connection: close\r\n"), Action::Close)
                );
                let (out, action) =
                    serve(&mut http, b"HEAD /plaintext HTTP/1.1\r\nHost: x\r\n\r\n");
                let head = plain(date, "");
                let head = head.strip_suffix("Hello, World!").unwrap();
                assert_eq!((out.as_str(), action), (head, Action::Continue));
            }
        }
    }
}
