//! The request as forwarded: HTTP/1.1, hop-by-hop headers dropped (and the
//! ones `Connection` names), the body re-framed with a `Content-Length` of
//! its own (a chunked body decoded), `X-Forwarded-For` extended, `Via`
//! added on request. The request has passed `corelane-http`'s strict
//! parser first, so nothing ambiguous reaches this point.

use corelane_http::head;
use corelane_http::request::{decode_chunked, Body, Request, MAX_HEADERS};

use crate::hop::{is_listed, start_line, Lines, Listed, Name};

/// What the fields said, as they were written.
#[derive(Debug, Default)]
struct Fields<'a> {
    host: bool,
    had_framing: bool,
    /// The first `X-Forwarded-For` value, extended with the client at the
    /// end.
    xff: Option<&'a [u8]>,
    /// Fields seen so far.
    seen: usize,
    /// The request line was copied as sent, before the first field.
    line: bool,
    /// What is copied as sent.
    lines: Lines,
}

impl<'a> Fields<'a> {
    /// Writes one field of `head` as forwarded, unless it is hop-by-hop,
    /// listed in `Connection` (`listed`), re-framed or folded. Before the
    /// first, the request line as sent when it is already what is
    /// forwarded (HTTP/1.1, `CRLF`).
    fn write(
        &mut self,
        head: &'a [u8],
        name: &'a [u8],
        value: &'a [u8],
        kind: Name,
        listed: &[&[u8]],
        out: &mut Vec<u8>,
    ) {
        if self.seen == 0 {
            if let Some(line) = start_line(head, name) {
                if line.ends_with(b" HTTP/1.1\r\n") && !matches!(line[0], b'\r' | b'\n') {
                    self.lines.keep(head, 0, line.len(), out);
                    self.line = true;
                }
            }
        }
        self.seen += 1;
        match kind {
            Name::ContentLength | Name::TransferEncoding => {
                self.had_framing = true;
                return;
            }
            Name::Connection | Name::HopByHop | Name::Expect => return,
            _ if is_listed(name, listed) => return,
            Name::XForwardedFor if self.xff.is_none() => {
                // Folded into one field at the end, with the client appended.
                self.xff = Some(value);
                return;
            }
            Name::Host => self.host = true,
            _ => {}
        }
        self.lines.field(head, name, value, out);
    }
}

/// The request as forwarded, written while it is parsed, so its head is
/// scanned once: hand [`Rewrite::field`] to
/// [`parse_with`](corelane_http::request::parse_with), then, once the
/// request is complete, [`Rewrite::finish`] adds the request line, the
/// forwarding fields and the body.
#[derive(Debug)]
pub struct Rewrite<'a> {
    /// The bytes the request is at the start of.
    head: &'a [u8],
    out: Vec<u8>,
    fields: Fields<'a>,
    /// The fields `Connection` names (besides `close` and `keep-alive`).
    listed: Option<Listed<'a>>,
}

impl<'a> Rewrite<'a> {
    /// A rewrite of the request at the start of `buf` into `out`
    /// (cleared; its capacity is reused).
    pub fn new(buf: &'a [u8], mut out: Vec<u8>) -> Self {
        out.clear();
        Rewrite {
            head: buf,
            out,
            fields: Fields::default(),
            listed: None,
        }
    }

    /// One field of the request, in order.
    #[inline]
    pub fn field(&mut self, name: &'a [u8], value: &'a [u8]) {
        let kind = Name::of(name);
        if kind == Name::Connection {
            Listed::add(&mut self.listed, value);
        }
        self.fields
            .write(self.head, name, value, kind, &[], &mut self.out);
    }

    /// The buffer back, the request being incomplete or refused.
    pub fn into_buffer(self) -> Vec<u8> {
        self.out
    }

    /// Completes the request at the start of `buf` (parsed as `req`, its
    /// fields handed to [`field`](Self::field)) as sent to the upstream:
    /// the buffer holding it.
    pub fn finish(self, buf: &'a [u8], req: &Request<'a>, client: &[u8], via: bool) -> Vec<u8> {
        let Rewrite {
            head: _,
            mut out,
            mut fields,
            listed,
        } = self;
        // The fields `Connection` lists are known only once it is seen:
        // when it lists any (rare: `close` and `keep-alive` name no
        // field), a second pass writes the fields again without those.
        if let Some(listed) = listed {
            out.clear();
            fields = Fields::default();
            let _ = head::scan(&buf[..req.head_len], MAX_HEADERS, |name, value| {
                let kind = Name::of(name);
                fields.write(buf, name, value, kind, listed.names(), &mut out);
            });
        }
        fields.lines.flush(buf, &mut out);
        finish(buf, req, fields, client, via, &mut out);
        out
    }
}

/// The request line, the forwarding fields, the framing and the body,
/// around the fields already in `out`.
fn finish(
    buf: &[u8],
    req: &Request<'_>,
    fields: Fields<'_>,
    client: &[u8],
    via: bool,
    out: &mut Vec<u8>,
) {
    let (method, target) = (req.method_token, req.target);
    let Fields {
        host,
        had_framing,
        xff,
        line,
        ..
    } = fields;
    if !line {
        // The request line goes before the fields: built after them,
        // moved in front.
        let fields_len = out.len();
        out.extend_from_slice(method);
        out.push(b' ');
        out.extend_from_slice(target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        out.rotate_left(fields_len);
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
}

/// Whether `method` is idempotent (RFC 9110 §9.2.2): a request with it
/// may be sent again when a pooled connection turns out dead, and
/// pipelined.
pub fn idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use corelane_http::request::{parse_with, Limits, Parse};

    /// What the proxy learns of a request it forwards.
    struct Forwarded {
        idempotent: bool,
    }

    fn forward(raw: &[u8]) -> (String, Forwarded) {
        let limits = Limits {
            max_head: 8192,
            max_body: 1 << 20,
        };
        let mut rewrite = Rewrite::new(raw, Vec::new());
        let Parse::Complete(req) = parse_with(raw, &limits, |n, v| rewrite.field(n, v)) else {
            panic!("does not parse")
        };
        let out = rewrite.finish(raw, &req, b"10.1.2.3", true);
        let f = Forwarded {
            idempotent: idempotent(req.method_token),
        };
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
    fn the_request_line_is_forwarded_as_http11_whatever_its_form() {
        for (sent, forwarded) in [
            ("GET /a?b HTTP/1.1\r\n", "GET /a?b HTTP/1.1\r\n"),
            ("GET /a?b HTTP/1.0\r\n", "GET /a?b HTTP/1.1\r\n"),
            ("GET /a?b HTTP/1.1\n", "GET /a?b HTTP/1.1\r\n"),
            ("\r\nPUT /\u{e9} HTTP/1.1\r\n", "PUT /\u{e9} HTTP/1.1\r\n"),
        ] {
            // The first field dropped, the second kept.
            let (out, _) =
                forward(format!("{sent}Connection: close\r\nHost: h\r\n\r\n").as_bytes());
            assert_eq!(
                out,
                format!(
                    "{forwarded}Host: h\r\nX-Forwarded-For: 10.1.2.3\r\nVia: 1.1 corelane\r\n\r\n"
                ),
                "{sent:?}"
            );
        }
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
