//! The HTTP request path without sockets: parse, route and write the
//! response into an `Output`, as the worker calls it after a read.
//!
//! ```text
//! cargo bench -p corelane-benches --bench http
//! ```

use std::hint::black_box;

use corelane::{Handler, Input, Output, WorkerInfo};
use corelane_http::{Http, HttpOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const PLAINTEXT: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: localhost\r\n\
Accept: text/plain,text/html;q=0.9,application/xhtml+xml;q=0.9,application/xml;q=0.8,*/*;q=0.7\r\n\
Connection: keep-alive\r\n\r\n";

fn serve(http: &mut Http, conn: &mut <Http as Handler>::Conn, bytes: &[u8], out: &mut Output) {
    let mut input = Input::new(bytes, false, false);
    black_box(http.serve(conn, &mut input, out));
    assert_eq!(input.consumed(), bytes.len());
    out.clear();
}

fn bench(c: &mut Criterion) {
    let info = WorkerInfo::detached(0, 1);
    let mut http = Http::factory(HttpOptions::default())(&info);
    let mut conn = http.on_accept_detached();
    let mut out = Output::default();
    out.reserve(64 * 1024);

    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Elements(1));
    g.bench_function("plaintext", |b| {
        b.iter(|| serve(&mut http, &mut conn, PLAINTEXT, &mut out))
    });
    let json = String::from_utf8_lossy(PLAINTEXT)
        .replace("/plaintext", "/json")
        .into_bytes();
    g.bench_function("json", |b| {
        b.iter(|| serve(&mut http, &mut conn, &json, &mut out))
    });
    let post: Vec<u8> = [
        &b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n"[..],
        &[b'p'; 1024][..],
    ]
    .concat();
    g.bench_function("post_echo_1k", |b| {
        b.iter(|| serve(&mut http, &mut conn, &post, &mut out))
    });
    let chunked: Vec<u8> = [
        &b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        &b"200\r\n"[..],
        &[b'c'; 512][..],
        &b"\r\n200\r\n"[..],
        &[b'c'; 512][..],
        &b"\r\n0\r\n\r\n"[..],
    ]
    .concat();
    g.bench_function("post_echo_chunked_1k", |b| {
        b.iter(|| serve(&mut http, &mut conn, &chunked, &mut out))
    });

    let pipelined: Vec<u8> = PLAINTEXT.repeat(16);
    g.throughput(Throughput::Elements(16));
    g.bench_function("plaintext_pipelined_16", |b| {
        b.iter(|| serve(&mut http, &mut conn, &pipelined, &mut out))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
