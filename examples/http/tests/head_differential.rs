//! The head scanner (`corelane_http::head`) against httparse 1.10, which the
//! server (requests) and the proxy (responses) used before: for the fuzz
//! corpus, every prefix of each input, and seeded mutations of well-formed
//! heads (200,000 requests, 100,000 responses), both must give the same
//! answer (complete with the same length, start line and fields; partial;
//! or the same kind of error). Requests are scanned both 16 bytes at a
//! time and, where the CPU has AVX2, 32. What the server checks must not
//! change when how it scans does.

use std::fmt::Debug;

use corelane_http::head::{scan, scan_in, scan_response, Avx2, HeadError, Line, Scan, StatusLine};

const MAX: usize = 64;

/// A complete head's start line and length, `None` while partial.
type Answer<L> = Result<Option<(L, usize)>, HeadError>;
/// The fields of a complete head, in order.
type FieldList<'a> = Vec<(&'a [u8], &'a [u8])>;

/// httparse's outcome in the scanner's terms: `complete` describes a
/// complete head (its start line and fields).
fn from_httparse<'a, L>(
    parsed: httparse::Result<usize>,
    complete: impl FnOnce() -> (L, FieldList<'a>),
) -> (Answer<L>, FieldList<'a>) {
    match parsed {
        Ok(httparse::Status::Complete(len)) => {
            let (line, fields) = complete();
            (Ok(Some((line, len))), fields)
        }
        Ok(httparse::Status::Partial) => (Ok(None), Vec::new()),
        Err(httparse::Error::Version) => (Err(HeadError::Version), Vec::new()),
        Err(httparse::Error::TooManyHeaders) => (Err(HeadError::TooManyFields), Vec::new()),
        Err(_) => (Err(HeadError::Malformed), Vec::new()),
    }
}

/// The scanner's answer (`ours`, with the fields it handed out) must be
/// httparse's (`theirs`).
fn agree<L: PartialEq + Debug>(
    buf: &[u8],
    ours: Result<Scan<L>, HeadError>,
    fields: FieldList<'_>,
    (theirs, their_fields): (Answer<L>, FieldList<'_>),
) {
    let ours = ours.map(|s| match s {
        Scan::Complete { line, len } => Some((line, len)),
        Scan::Partial => None,
    });
    assert_eq!(ours, theirs, "input {:?}", String::from_utf8_lossy(buf));
    if let Ok(Some(_)) = ours {
        assert_eq!(
            fields,
            their_fields,
            "input {:?}",
            String::from_utf8_lossy(buf)
        );
    }
}

fn same_answer(buf: &[u8]) {
    let mut fields = Vec::new();
    let ours = scan(buf, MAX, |n, v| fields.push((n, v)));
    let mut headers = [httparse::EMPTY_HEADER; MAX];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(buf);
    let theirs = from_httparse(parsed, || {
        let target = req.path.unwrap().as_bytes();
        let line = Line {
            method: req.method.unwrap().as_bytes(),
            target,
            path_len: target
                .iter()
                .position(|&b| b == b'?')
                .unwrap_or(target.len()),
            minor: req.version.unwrap(),
        };
        (
            line,
            req.headers
                .iter()
                .map(|h| (h.name.as_bytes(), h.value))
                .collect(),
        )
    });
    // The 32-byte lanes answer exactly the same, where the CPU has them
    // (a CPU without AVX2 checks the baseline only: the unit tests say so).
    if let Some(avx2) = Avx2::detect() {
        let mut wide_fields = Vec::new();
        let wide = scan_in(avx2, buf, MAX, |n, v| wide_fields.push((n, v)));
        agree(buf, wide, wide_fields, theirs.clone());
    }
    agree(buf, ours, fields, theirs);
}

fn same_response_answer(buf: &[u8]) {
    let mut fields = Vec::new();
    let ours = scan_response(buf, MAX, |n, v| fields.push((n, v)));
    let mut headers = [httparse::EMPTY_HEADER; MAX];
    let mut resp = httparse::Response::new(&mut headers);
    let parsed = resp.parse(buf);
    let theirs = from_httparse(parsed, || {
        let status = StatusLine {
            minor: resp.version.unwrap(),
            code: resp.code.unwrap(),
            reason: resp.reason.unwrap().as_bytes(),
        };
        (
            status,
            resp.headers
                .iter()
                .map(|h| (h.name.as_bytes(), h.value))
                .collect(),
        )
    });
    agree(buf, ours, fields, theirs);
}

fn every_prefix(buf: &[u8]) {
    for n in 0..=buf.len() {
        same_answer(&buf[..n]);
    }
}

const SEEDS: &[&[u8]] = &[
    b"GET /plaintext HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain,text/html;q=0.9,application/xhtml+xml;q=0.9,application/xml;q=0.8,*/*;q=0.7\r\nConnection: keep-alive\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
    b"\r\n\nHEAD http://example.com/a?b=c HTTP/1.0\nConnection: Keep-Alive, close\nExpect:   100-continue \t\n\n",
    b"PATCH /\xc3\xa9t\xc3\xa9 HTTP/1.1\r\nX-Empty:\r\nX-Tabs:\t\tv\t\r\nX-Obs: \x80\xff text\r\n\r\n",
];

#[test]
fn every_prefix_of_the_seeds() {
    for seed in SEEDS {
        every_prefix(seed);
    }
}

#[test]
fn the_fuzz_corpus_and_its_prefixes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/request");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        every_prefix(&data[..data.len().min(4096)]);
        n += 1;
    }
    assert!(n >= 10, "the seed corpus went missing ({n} files)");
}

#[test]
fn too_many_fields_at_the_limit_and_beyond() {
    for count in [MAX - 1, MAX, MAX + 1, MAX + 2] {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..count {
            buf.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        every_prefix(&buf);
    }
}

/// Seeded mutations of `seeds`: bytes replaced, inserted or removed, with
/// the bytes that matter to a head (`interesting`: line ends, spaces,
/// colons, controls, DEL, obs-text) far more likely than others. Each
/// mutant and a random prefix of it go to `check`.
fn mutations(seeds: &[&[u8]], interesting: &[u8], rounds: usize, mut rng: u64, check: fn(&[u8])) {
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..rounds {
        let mut buf = seeds[round % seeds.len()].to_vec();
        for _ in 0..1 + next() % 3 {
            let at = (next() as usize) % (buf.len() + 1);
            let byte = if next() % 4 == 0 {
                next() as u8
            } else {
                interesting[(next() as usize) % interesting.len()]
            };
            match next() % 3 {
                0 if at < buf.len() => buf[at] = byte,
                1 if at < buf.len() => {
                    buf.remove(at);
                }
                _ => buf.insert(at, byte),
            }
        }
        check(&buf);
        let cut = (next() as usize) % (buf.len() + 1);
        check(&buf[..cut]);
    }
}

#[test]
fn seeded_mutations() {
    let interesting = b"\r\n \t:\x00\x01\x7f\x80\xff\xc3/HTTP1.0?";
    mutations(
        SEEDS,
        interesting,
        200_000,
        0x9E37_79B9_7F4A_7C15,
        same_answer,
    );
}

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nServer: corelane\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!",
    b"\r\nHTTP/1.0 404 Not \tFound\nConnection: close\n\n",
    b"HTTP/1.1 204\r\nX-A:\r\n\r\n",
    b"HTTP/1.1 503 Service \x80 Unavailable\r\nRetry-After:  5 \r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
];

#[test]
fn responses_every_prefix_and_seeded_mutations() {
    for seed in RESPONSES {
        for n in 0..=seed.len() {
            same_response_answer(&seed[..n]);
        }
    }
    let interesting = b"\r\n \t:\x00\x01\x7f\x80\xff09HTTP1.0";
    mutations(
        RESPONSES,
        interesting,
        100_000,
        0x2545_F491_4F6C_DD1D,
        same_response_answer,
    );
}
