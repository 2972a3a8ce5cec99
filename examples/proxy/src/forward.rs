//! The request as forwarded: HTTP/1.1, hop-by-hop headers dropped (and the
//! ones `Connection` names), the body re-framed with a `Content-Length` of
//! its own (a chunked body decoded), `X-Forwarded-For` extended, `Via`
//! added on request. The request has passed `corelane-http`'s strict
//! parser first, so nothing ambiguous reaches this point.

use corelane_http::request::{decode_chunked, Body, Request, MAX_HEADERS};

use crate::hop::{connection_tokens, is_hop_by_hop};

/// What the proxy needs to know about the request it forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// The method is idempotent (RFC 9110 §9.2.2): safe to send again
    /// when a pooled connection turns out dead.
    pub idempotent: bool,
}

/// Writes the request at the start of `buf` (parsed as `req`), as sent to
/// the upstream, into `out` (cleared first).
pub fn write_request(
    buf: &[u8],
    req: &Request<'_>,
    client: &[u8],
    via: bool,
    out: &mut Vec<u8>,
) -> Forwarded {
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    // Already parsed whole by `corelane_http::request::parse`.
    let _ = parsed.parse_with_uninit_headers(&buf[..req.head_len], &mut headers);
    let method = parsed.method.unwrap_or("GET");
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(parsed.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut listed: [&[u8]; 16] = [b""; 16];
    let mut n_listed = 0;
    let mut host = false;
    let mut had_framing = false;
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            for t in connection_tokens(h.value) {
                if n_listed < listed.len() {
                    listed[n_listed] = t;
                    n_listed += 1;
                }
            }
        }
    }
    let listed = &listed[..n_listed];
    let mut xff: Option<&[u8]> = None;
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            had_framing = true;
            continue;
        }
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"expect")
            || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            // Folded into one field below, with the client appended.
            if xff.is_none() {
                xff = Some(h.value);
                continue;
            }
            out.extend_from_slice(b"X-Forwarded-For: ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
            continue;
        }
        host |= name.eq_ignore_ascii_case(b"host");
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !host {
        // An HTTP/1.0 request may lack Host; HTTP/1.1 requires one.
        out.extend_from_slice(b"Host: upstream\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(v) = xff {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client);
    out.extend_from_slice(b"\r\n");
    if via {
        out.extend_from_slice(b"Via: 1.1 corelane\r\n");
    }
    let body_len = match req.body {
        Body::Length(n) | Body::Chunked { len: n } => n,
    };
    if body_len > 0 || had_framing {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let body = &buf[req.head_len..req.total_len];
    match req.body {
        Body::Length(_) => out.extend_from_slice(body),
        Body::Chunked { .. } => {
            // Validated by the parser already.
            let _ = decode_chunked(body, body_len, |data| out.extend_from_slice(data));
        }
    }
    Forwarded {
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corelane_http::request::{parse, Limits, Parse};

    fn forward(raw: &[u8]) -> (String, Forwarded) {
        let limits = Limits {
            max_head: 8192,
            max_body: 1 << 20,
        };
        let Parse::Complete(req) = parse(raw, &limits) else {
            panic!("does not parse")
        };
        let mut out = Vec::new();
        let f = write_request(raw, &req, b"10.1.2.3", true, &mut out);
        (String::from_utf8(out).unwrap(), f)
    }

    #[test]
    fn hop_by_hop_headers_go_and_forwarding_headers_come() {
        let (out, f) = forward(
            b"GET /a?b=1 HTTP/1.1\r\nHost: example\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\nTE: trailers\r\nUpgrade: websocket\r\nX-Forwarded-For: 1.1.1.1\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: example\r\nAccept: */*\r\nX-Forwarded-For: 1.1.1.1, 10.1.2.3\r\nVia: 1.1 corelane\r\n\r\n"
        );
        assert!(f.idempotent);
    }

    #[test]
    fn a_chunked_body_is_forwarded_with_a_length() {
        let (out, f) = forward(
            b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
        );
        assert!(out.ends_with("Content-Length: 9\r\n\r\nWikipedia"), "{out}");
        assert!(!out.contains("chunked"));
        assert!(!f.idempotent);
    }

    #[test]
    fn an_http10_request_gets_a_host() {
        let (out, _) = forward(b"GET / HTTP/1.0\r\n\r\n");
        assert!(
            out.starts_with("GET / HTTP/1.1\r\nHost: upstream\r\n"),
            "{out}"
        );
    }
}
