//! The request as forwarded: HTTP/1.1, hop-by-hop headers dropped (and the
//! ones `Connection` names), the body re-framed with a `Content-Length` of
//! its own (a chunked body decoded), `X-Forwarded-For` extended, `Via`
//! added on request. The request has passed `corelane-http`'s strict
//! parser first, so nothing ambiguous reaches this point.

use corelane_http::head::{self, eq_lower, Scan};
use corelane_http::request::{decode_chunked, Body, Request, MAX_HEADERS};

use crate::hop::{connection_tokens, is_hop_by_hop};

/// What the proxy needs to know about the request it forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// The method is idempotent (RFC 9110 §9.2.2): safe to send again
    /// when a pooled connection turns out dead.
    pub idempotent: bool,
}

/// What the fields said, as they were written.
#[derive(Default)]
struct Fields<'a> {
    host: bool,
    had_framing: bool,
    /// The first `X-Forwarded-For` value, extended with the client at the
    /// end.
    xff: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// Writes one field as forwarded, unless it is hop-by-hop, listed in
    /// `Connection` (`listed`), re-framed or folded.
    fn write(&mut self, name: &'a [u8], value: &'a [u8], listed: &[&[u8]], out: &mut Vec<u8>) {
        if eq_lower(name, b"content-length") || eq_lower(name, b"transfer-encoding") {
            self.had_framing = true;
            return;
        }
        if is_hop_by_hop(name)
            || eq_lower(name, b"expect")
            || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
        {
            return;
        }
        if eq_lower(name, b"x-forwarded-for") && self.xff.is_none() {
            // Folded into one field at the end, with the client appended.
            self.xff = Some(value);
            return;
        }
        self.host |= eq_lower(name, b"host");
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
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
    let head = &buf[..req.head_len];
    out.clear();
    // One pass writes the fields; the fields `Connection` lists are known
    // only once it is seen, so when it lists any (rare: `close` and
    // `keep-alive` name no field), a second pass writes them again
    // without those.
    let mut listed: [&[u8]; 16] = [b""; 16];
    let mut n_listed = 0;
    let mut fields = Fields::default();
    let scanned = head::scan(head, MAX_HEADERS, |name, value| {
        if eq_lower(name, b"connection") {
            for t in connection_tokens(value) {
                if n_listed < listed.len() && !eq_lower(t, b"close") && !eq_lower(t, b"keep-alive")
                {
                    listed[n_listed] = t;
                    n_listed += 1;
                }
            }
        }
        fields.write(name, value, &[], out);
    });
    let (method, target): (&[u8], &[u8]) = match scanned {
        Ok(Scan::Complete { line, .. }) => (line.method, line.target),
        _ => (b"GET", b"/"),
    };
    if n_listed > 0 {
        out.clear();
        fields = Fields::default();
        let _ = head::scan(head, MAX_HEADERS, |name, value| {
            fields.write(name, value, &listed[..n_listed], out);
        });
    }
    // The request line goes before the fields: built after them, moved in front.
    let fields_len = out.len();
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    out.rotate_left(fields_len);
    let Fields {
        host,
        had_framing,
        xff,
    } = fields;
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
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
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
            b"GET /a?b=1 HTTP/1.1\r\nHost: example\r\nX-Private: 1\r\nConnection: keep-alive, X-Private\r\nTE: trailers\r\nUpgrade: websocket\r\nX-Forwarded-For: 1.1.1.1\r\nAccept: */*\r\n\r\n",
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
