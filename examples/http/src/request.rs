//! Request parsing and message framing (RFC 9112), strict where laxness
//! enables request smuggling.
//!
//! The head is scanned by [`head`](mod@crate::head); this module adds what the scan leaves to
//! the server: the version check, the framing rules for `Content-Length` and
//! `Transfer-Encoding`, `Host`, `Connection` and `Expect`, and a strict
//! chunked-body decoder.

use crate::head::{self, eq_lower, Baseline, HeadError, Lanes, Scan};
use crate::status::Status;

/// Most header fields in a request.
pub const MAX_HEADERS: usize = 64;

/// Size limits of a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes in the request line and header section.
    pub max_head: usize,
    /// Most bytes in a decoded body.
    pub max_body: usize,
}

impl Limits {
    /// Most bytes a chunked request may occupy while it arrives (chunk
    /// framing adds overhead to the body; this bounds it).
    pub fn max_chunked_wire(&self) -> usize {
        self.max_head + 2 * self.max_body + 4096
    }
}

/// Request methods the server routes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// Any other method.
    Other,
}

impl Method {
    /// The method a token names. By length first, then the token as one
    /// integer: a slice match compares byte by byte (~10 instructions more).
    #[inline(always)]
    fn of(token: &[u8]) -> Method {
        match *token {
            [a, b, c] if u32::from_le_bytes([a, b, c, 0]) == u32::from_le_bytes(*b"GET\0") => {
                Method::Get
            }
            [a, b, c, d] => match u32::from_le_bytes([a, b, c, d]) {
                m if m == u32::from_le_bytes(*b"HEAD") => Method::Head,
                m if m == u32::from_le_bytes(*b"POST") => Method::Post,
                _ => Method::Other,
            },
            _ => Method::Other,
        }
    }
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `Content-Length` bytes right after the head (0 when absent).
    Length(usize),
    /// `Transfer-Encoding: chunked`; `len` is the decoded length.
    Chunked {
        /// Decoded body length.
        len: usize,
    },
}

/// A complete request: head parsed and body fully buffered.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The method token, as sent.
    pub method_token: &'a [u8],
    /// The request target, as sent (with its query).
    pub target: &'a [u8],
    /// Path of the target, without the query (origin-form, or the path of an
    /// absolute-form target).
    pub path: &'a [u8],
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Bytes of the head.
    pub head_len: usize,
    /// The body framing.
    pub body: Body,
    /// Bytes of the whole message (head, body and framing).
    pub total_len: usize,
}

/// Result of looking at the start of the input.
#[derive(Debug)]
pub enum Parse<'a> {
    /// A complete request.
    Complete(Request<'a>),
    /// More bytes are needed; `expect_continue` when the head is complete and
    /// asks for `100 Continue` before the body.
    Partial {
        /// The head is complete and carries `Expect: 100-continue`.
        expect_continue: bool,
    },
    /// The request is malformed or over a limit: answer with this status and
    /// close.
    Error(Status),
}

/// What the header fields say about framing and the connection, gathered
/// while the head is scanned; the first problem found is kept and answered
/// once the head is complete (as if the fields were judged after it).
/// The flags are one word, which the scan keeps in a register; `ERROR`
/// among them repeats `error.is_some()` because testing the `Option` at
/// every field cost ~15 instructions per request more (measured).
#[derive(Default)]
struct Fields {
    /// [`Fields::HOST`] and the other flags.
    flags: u32,
    /// The `Content-Length`, when [`Fields::LENGTH`] is set.
    content_length: usize,
    /// The first problem, when [`Fields::ERROR`] is set.
    error: Option<Status>,
}

impl Fields {
    /// One `Host` field.
    const HOST: u32 = 1;
    /// More than one `Host` field.
    const HOSTS: u32 = 1 << 1;
    /// A `Content-Length` field.
    const LENGTH: u32 = 1 << 2;
    /// A `Transfer-Encoding` field.
    const CODING: u32 = 1 << 3;
    /// It says `chunked`, alone.
    const CHUNKED: u32 = 1 << 4;
    /// `Connection` names `close`.
    const CLOSE: u32 = 1 << 5;
    /// `Connection` names `keep-alive`.
    const KEEP_ALIVE: u32 = 1 << 6;
    /// `Expect: 100-continue`.
    const CONTINUE: u32 = 1 << 7;
    /// A problem was found (in `error`).
    const ERROR: u32 = 1 << 8;

    /// Records a problem; the first one found is the one answered.
    fn fail(&mut self, status: Status) {
        if self.flags & Fields::ERROR == 0 {
            self.error = Some(status);
        }
        self.flags |= Fields::ERROR;
    }

    /// Takes one field into account. Fields after a problem still are
    /// (cheaper than a test on every field), but only the first problem
    /// is answered, and any problem makes the request an error.
    #[inline(always)]
    fn field(&mut self, name: &[u8], value: &[u8]) {
        // Dispatch on length first: most headers (Accept, User-Agent, ...)
        // match no interesting name and cost one comparison.
        match name.len() {
            14 if eq_lower(name, b"content-length") => {
                if self.flags & Fields::LENGTH != 0 {
                    return self.fail(Status::BadRequest); // repeated: smuggling risk
                }
                match parse_length(value) {
                    Some(n) => {
                        self.flags |= Fields::LENGTH;
                        self.content_length = n;
                    }
                    None => self.fail(Status::BadRequest),
                }
            }
            17 if eq_lower(name, b"transfer-encoding") => {
                if self.flags & Fields::CODING != 0 {
                    return self.fail(Status::BadRequest);
                }
                self.flags |= Fields::CODING;
                match transfer_coding(value) {
                    Ok(()) => self.flags |= Fields::CHUNKED,
                    Err(status) => self.fail(status),
                }
            }
            // A second `Host` sets `HOSTS`.
            4 if eq_lower(name, b"host") => self.flags |= (self.flags & Fields::HOST) << 1 | 1,
            10 if eq_lower(name, b"connection") => {
                if eq_lower(value, b"keep-alive") {
                    self.flags |= Fields::KEEP_ALIVE;
                } else {
                    for token in value.split(|&b| b == b',') {
                        let token = trim(token);
                        if eq_lower(token, b"close") {
                            self.flags |= Fields::CLOSE;
                        }
                        if eq_lower(token, b"keep-alive") {
                            self.flags |= Fields::KEEP_ALIVE;
                        }
                    }
                }
            }
            6 if eq_lower(name, b"expect") => {
                if eq_lower(trim(value), b"100-continue") {
                    self.flags |= Fields::CONTINUE;
                } else {
                    self.fail(Status::ExpectationFailed);
                }
            }
            _ => {}
        }
    }
}

/// Parses the request at the start of `buf`. Inlined: its one caller on
/// the request path (`Http::serve`) then takes the answer without a copy.
#[inline(always)]
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parse<'a> {
    parse_with(buf, limits, |_, _| {})
}

/// [`parse`], also handing each header field to `field(name, value)` as
/// the head is scanned, so a caller that needs the fields (a proxy
/// rewriting them) scans the head once. Fields are handed over before the
/// answer is known: act on them only if it is [`Parse::Complete`].
pub fn parse_with<'a>(
    buf: &'a [u8],
    limits: &Limits,
    field: impl FnMut(&'a [u8], &'a [u8]),
) -> Parse<'a> {
    parse_in(Baseline, buf, limits, field)
}

/// [`parse_with`] with the head scanned by `lanes` (see
/// [`scan_in`](head::scan_in)): the same answers.
#[inline(always)]
pub fn parse_in<'a>(
    lanes: impl Lanes,
    buf: &'a [u8],
    limits: &Limits,
    mut field: impl FnMut(&'a [u8], &'a [u8]),
) -> Parse<'a> {
    // Only the first `max_head` bytes can hold the head: judging no further
    // makes the answer the same however the bytes were split across reads.
    let head_window = &buf[..buf.len().min(limits.max_head)];
    let mut fields = Fields::default();
    let scanned = head::scan_in(
        lanes,
        head_window,
        MAX_HEADERS,
        #[inline(always)]
        |name, value| {
            fields.field(name, value);
            field(name, value);
        },
    );
    let (line, head_len) = match scanned {
        Ok(Scan::Complete { line, len }) => (line, len),
        Ok(Scan::Partial) => {
            return if buf.len() > limits.max_head {
                Parse::Error(Status::HeaderFieldsTooLarge)
            } else {
                Parse::Partial {
                    expect_continue: false,
                }
            };
        }
        Err(HeadError::TooManyFields) => return Parse::Error(Status::HeaderFieldsTooLarge),
        Err(HeadError::Version) => {
            // Judge the version only on a whole request line, so the answer
            // does not depend on how the bytes were split.
            if !buf.contains(&b'\n') && buf.len() <= limits.max_head {
                return Parse::Partial {
                    expect_continue: false,
                };
            }
            return Parse::Error(if well_formed_other_version(buf) {
                Status::VersionNotSupported
            } else {
                Status::BadRequest
            });
        }
        Err(HeadError::Malformed) => return Parse::Error(Status::BadRequest),
    };
    let flags = fields.flags;
    let minor = line.minor;
    // A head that starts `GET ` has the method `GET` (its line starts at
    // the first byte, and a token ends at a space): one comparison of
    // bytes at hand rather than of the token, kept from long before.
    let method = if buf.starts_with(b"GET ") {
        Method::Get
    } else {
        Method::of(line.method)
    };
    let path = route_path(line.target, line.path_len);
    // Almost every request: HTTP/1.1, one `Host`, no body, nothing about
    // the connection but perhaps `keep-alive`: the rules (`framing`) say
    // exactly this then, and one test instead of theirs is ~30
    // instructions less per request (measured).
    let complete = |keep_alive, body, body_wire| {
        Parse::Complete(Request {
            method,
            method_token: line.method,
            target: line.target,
            path,
            minor,
            keep_alive,
            head_len,
            body,
            total_len: head_len + body_wire,
        })
    };
    if minor == 1 && flags & !Fields::KEEP_ALIVE == Fields::HOST {
        return complete(true, Body::Length(0), 0);
    }
    match framing(&fields, minor, buf, head_len, limits) {
        Ok((keep_alive, body, body_wire)) => complete(keep_alive, body, body_wire),
        Err(answer) => answer,
    }
}

/// The framing rules (RFC 9112 section 6) for a request whose head, of
/// `head_len` bytes, starts `buf` and whose fields gave `fields`: whether
/// the connection stays open, the body and its bytes on the wire; or the
/// answer to give instead (an error, or a partial request).
#[inline(always)]
fn framing(
    fields: &Fields,
    minor: u8,
    buf: &[u8],
    head_len: usize,
    limits: &Limits,
) -> Result<(bool, Body, usize), Parse<'static>> {
    let flags = fields.flags;
    if flags & Fields::ERROR != 0 {
        return Err(Parse::Error(fields.error.unwrap_or(Status::BadRequest)));
    }
    let has = |flag: u32| flags & flag != 0;
    // `100 Continue` is an HTTP/1.1 interim response.
    let expect_continue = has(Fields::CONTINUE) && minor == 1;
    if has(Fields::CODING) && (has(Fields::LENGTH) || minor == 0) {
        return Err(Parse::Error(Status::BadRequest));
    }
    if has(Fields::HOSTS) || (minor == 1 && !has(Fields::HOST)) {
        return Err(Parse::Error(Status::BadRequest));
    }
    let keep_alive = !has(Fields::CLOSE) && (minor == 1 || has(Fields::KEEP_ALIVE));
    let rest = &buf[head_len..];
    if has(Fields::CHUNKED) {
        return match decode_chunked(rest, limits.max_body, |_| {}) {
            // The same bound as while it arrives (below), so a request is
            // judged alike whether it came in one read or many.
            Ok(Some((wire, _))) if head_len + wire > limits.max_chunked_wire() => {
                Err(Parse::Error(Status::PayloadTooLarge))
            }
            Ok(Some((wire, len))) => Ok((keep_alive, Body::Chunked { len }, wire)),
            Ok(None) if buf.len() > limits.max_chunked_wire() => {
                Err(Parse::Error(Status::PayloadTooLarge))
            }
            Ok(None) => Err(Parse::Partial { expect_continue }),
            Err(status) => Err(Parse::Error(status)),
        };
    }
    let len = if has(Fields::LENGTH) {
        fields.content_length
    } else {
        0
    };
    if len > limits.max_body {
        return Err(Parse::Error(Status::PayloadTooLarge));
    }
    if rest.len() < len {
        return Err(Parse::Partial { expect_continue });
    }
    Ok((keep_alive, Body::Length(len), len))
}

/// The path to route on: the query is dropped, and an absolute-form target
/// (`http://host/path`) is reduced to its path.
#[inline]
fn route_path(target: &[u8], path_len: usize) -> &[u8] {
    if target.first() == Some(&b'/') {
        // Origin form, the common case: the path is what precedes the query.
        return &target[..path_len];
    }
    let mut t = target;
    if let Some(after) = t
        .strip_prefix(b"http://")
        .or_else(|| t.strip_prefix(b"https://"))
    {
        t = after
            .iter()
            .position(|&b| b == b'/')
            .map_or(b"/", |i| &after[i..]);
    }
    match t.iter().position(|&b| b == b'?') {
        Some(i) => &t[..i],
        None => t,
    }
}

/// Whether the request line is well formed except for its version (so the
/// right answer is 505, not 400): `METHOD SP target SP HTTP/d.d CRLF`.
fn well_formed_other_version(buf: &[u8]) -> bool {
    let line_end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let line = &buf[..line_end];
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.iter().all(|b| b.is_ascii_alphabetic())
        && !target.is_empty()
        && version.len() == 8
        && version.starts_with(b"HTTP/")
        && version[5].is_ascii_digit()
        && version[6] == b'.'
        && version[7].is_ascii_digit()
}

/// A `Content-Length` value: one or more digits and nothing else.
fn parse_length(value: &[u8]) -> Option<usize> {
    let v = trim(value);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

/// Accepts exactly `chunked`; a list whose last coding is `chunked` names
/// codings we do not implement (501); anything else is malformed or unknown.
fn transfer_coding(value: &[u8]) -> Result<(), Status> {
    let mut last = None;
    let mut count = 0;
    let mut chunked_before_last = false;
    for c in value.split(|&b| b == b',').map(trim) {
        if c.is_empty() {
            return Err(Status::BadRequest);
        }
        if let Some(prev) = last {
            chunked_before_last |= eq_lower(prev, b"chunked");
        }
        last = Some(c);
        count += 1;
    }
    match last {
        _ if chunked_before_last => Err(Status::BadRequest),
        Some(c) if eq_lower(c, b"chunked") && count == 1 => Ok(()),
        Some(c) if eq_lower(c, b"chunked") => Err(Status::NotImplemented),
        // Chunked must be the final coding of a request (RFC 9112 §6.3).
        Some(c) if is_token(c) => Err(Status::NotImplemented),
        _ => Err(Status::BadRequest),
    }
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `s` without leading and trailing spaces and tabs (optional whitespace,
/// RFC 9110 §5.6.3).
pub fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &s[start..end]
}

/// Decodes a chunked body at the start of `buf`, calling `data` with each
/// chunk's bytes. Returns `Ok(None)` when incomplete, `Ok(Some((wire, len)))`
/// with the bytes the body occupies (framing and trailers included) and its
/// decoded length, or the status to answer a malformed or oversized body with.
///
/// Strict: every line ends in CRLF (a bare LF or CR is an error), sizes are
/// hex digits only, chunk extensions are skipped, trailers are discarded.
pub fn decode_chunked(
    buf: &[u8],
    max_body: usize,
    mut data: impl FnMut(&[u8]),
) -> Result<Option<(usize, usize)>, Status> {
    let mut pos = 0;
    let mut len = 0usize;
    loop {
        // chunk-size [ chunk-ext ] CRLF
        let mut size = 0usize;
        let mut digits = 0;
        while let Some(&b) = buf.get(pos) {
            let Some(d) = (b as char).to_digit(16) else {
                break;
            };
            if digits == 15 {
                return Err(Status::BadRequest); // far beyond any limit
            }
            size = size * 16 + d as usize;
            digits += 1;
            pos += 1;
        }
        if pos == buf.len() {
            return Ok(None);
        }
        if digits == 0 {
            return Err(Status::BadRequest);
        }
        let Some(line_end) = line_end(buf, pos, true)? else {
            return Ok(None);
        };
        pos = line_end;
        if size == 0 {
            break;
        }
        len = len.checked_add(size).ok_or(Status::BadRequest)?;
        if len > max_body {
            return Err(Status::PayloadTooLarge);
        }
        // chunk-data CRLF
        if buf.len() < pos + size + 2 {
            if buf.len() > pos + size {
                check_crlf_prefix(&buf[pos + size..])?;
            }
            return Ok(None);
        }
        data(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Err(Status::BadRequest);
        }
        pos += 2;
    }
    // trailer-section CRLF: header lines, discarded, then an empty line.
    loop {
        if buf.len() < pos + 2 {
            // One byte: the CR of the final CRLF, or the start of a field line.
            if buf.len() > pos && matches!(buf[pos], b' ' | b'\t' | b'\n') {
                return Err(Status::BadRequest);
            }
            return Ok(None);
        }
        if &buf[pos..pos + 2] == b"\r\n" {
            return Ok(Some((pos + 2, len)));
        }
        if matches!(buf[pos], b' ' | b'\t' | b'\r' | b'\n') {
            return Err(Status::BadRequest); // obs-fold or a bare line ending
        }
        let Some(end) = line_end(buf, pos, false)? else {
            return Ok(None);
        };
        pos = end;
    }
}

/// From `pos`, finds the end of a line (just after its CRLF). With `ext`, the
/// rest of the line must be chunk extensions (`;name[=value]`). A CR not
/// followed by LF, or an LF not preceded by CR, is an error.
fn line_end(buf: &[u8], pos: usize, ext: bool) -> Result<Option<usize>, Status> {
    let rest = &buf[pos..];
    if ext && !rest.is_empty() && !matches!(rest[0], b';' | b'\r' | b' ' | b'\t') {
        return Err(Status::BadRequest);
    }
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b'\n' => return Err(Status::BadRequest),
            b'\r' => {
                return match rest.get(i + 1) {
                    Some(b'\n') => Ok(Some(pos + i + 2)),
                    Some(_) => Err(Status::BadRequest),
                    None => Ok(None),
                };
            }
            0..=8 | 11..=31 | 127 => return Err(Status::BadRequest),
            _ => {}
        }
    }
    Ok(None)
}

fn check_crlf_prefix(rest: &[u8]) -> Result<(), Status> {
    match rest {
        [] | [b'\r'] | [b'\r', b'\n', ..] => Ok(()),
        _ => Err(Status::BadRequest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 8192,
        max_body: 1 << 20,
    };

    fn status_of(req: &[u8]) -> Option<Status> {
        match parse(req, &LIMITS) {
            Parse::Error(s) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn methods_are_told_apart_exactly() {
        for (token, method) in [
            (&b"GET"[..], Method::Get),
            (b"HEAD", Method::Head),
            (b"POST", Method::Post),
            (b"get", Method::Other),
            (b"GE", Method::Other),
            (b"GETS", Method::Other),
            (b"GET\0", Method::Other),
            (b"HEADS", Method::Other),
            (b"PUT", Method::Other),
            (b"", Method::Other),
        ] {
            assert_eq!(
                Method::of(token),
                method,
                "{:?}",
                String::from_utf8_lossy(token)
            );
        }
    }

    /// The method as `parse` gives it, by the head's first bytes or by its
    /// token.
    #[test]
    fn parsed_methods() {
        for (head, method) in [
            (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], Method::Get),
            (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Method::Get),
            (b"GETS / HTTP/1.1\r\nHost: a\r\n\r\n", Method::Other),
            (b"GE / HTTP/1.1\r\nHost: a\r\n\r\n", Method::Other),
            (b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", Method::Head),
            (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", Method::Other),
        ] {
            let Parse::Complete(r) = parse(head, &LIMITS) else {
                panic!("{:?}", String::from_utf8_lossy(head))
            };
            assert_eq!(r.method, method, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn a_simple_get_is_complete() {
        let Parse::Complete(r) = parse(b"GET /plaintext?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", &LIMITS)
        else {
            panic!()
        };
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, b"/plaintext");
        assert!(r.keep_alive);
        assert_eq!(r.body, Body::Length(0));
        assert_eq!(r.total_len, r.head_len);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |req: &[u8]| match parse(req, &LIMITS) {
            Parse::Complete(r) => r.keep_alive,
            other => panic!("{other:?}"),
        };
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n"
        ));
    }

    /// Every combination of the fields the framing rules read, on both
    /// versions, is judged as the rules say, whether or not it takes the
    /// common request's one-test way.
    #[test]
    fn framing_rules_over_every_combination_of_fields() {
        let fields: [(&str, &str); 8] = [
            ("Host: a\r\n", ""),
            ("Host: b\r\n", ""),
            ("Connection: close\r\n", ""),
            ("Connection: keep-alive\r\n", ""),
            ("Content-Length: 2\r\n", "hi"),
            ("Transfer-Encoding: chunked\r\n", "0\r\n\r\n"),
            ("Expect: 100-continue\r\n", ""),
            ("Content-Length: x\r\n", ""),
        ];
        for minor in [0u8, 1] {
            for set in 0u32..1 << fields.len() {
                let has = |i: usize| set & 1 << i != 0;
                let mut head = format!("GET / HTTP/1.{minor}\r\n");
                let mut body = String::new();
                for (i, (field, bytes)) in fields.iter().enumerate() {
                    if has(i) {
                        head.push_str(field);
                        body.push_str(bytes);
                    }
                }
                let request = format!("{head}\r\n{body}");
                let hosts = usize::from(has(0)) + usize::from(has(1));
                let length = has(4) || has(7);
                let expected = if has(7)
                    || (has(5) && (length || minor == 0))
                    || hosts > 1
                    || (minor == 1 && hosts == 0)
                {
                    Err(Status::BadRequest)
                } else {
                    let keep_alive = !has(2) && (minor == 1 || has(3));
                    Ok((keep_alive, body.len()))
                };
                let got = match parse(request.as_bytes(), &LIMITS) {
                    Parse::Complete(r) => {
                        assert_eq!(r.head_len, head.len() + 2, "{request:?}");
                        Ok((r.keep_alive, r.total_len - r.head_len))
                    }
                    Parse::Error(status) => Err(status),
                    Parse::Partial { .. } => panic!("partial: {request:?}"),
                };
                assert_eq!(got, expected, "{request:?}");
            }
        }
    }

    #[test]
    fn framing_attacks_are_rejected() {
        let bad = Some(Status::BadRequest);
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            bad
        );
        assert_eq!(
            status_of(
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
            ),
            bad
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n"),
            bad
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 4\r\n\r\n"),
            bad
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\n"),
            bad
        );
        assert_eq!(
            status_of(
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
            ),
            bad
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            bad
        );
        assert_eq!(
            status_of(b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n"),
            bad
        );
        assert_eq!(
            status_of(b"GET / HTTP/1.1\r\n\r\n"),
            bad,
            "HTTP/1.1 without Host"
        );
        assert_eq!(
            status_of(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            bad
        );
        assert_eq!(status_of(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"), bad);
    }

    #[test]
    fn unsupported_things_get_their_own_status() {
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Some(Status::NotImplemented)
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Some(Status::NotImplemented)
        );
        assert_eq!(
            status_of(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
            Some(Status::VersionNotSupported)
        );
        assert_eq!(
            status_of(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
            Some(Status::VersionNotSupported)
        );
        assert_eq!(
            status_of(b"GET / HTTQ/1.1\r\nHost: a\r\n\r\n"),
            Some(Status::BadRequest)
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n"),
            Some(Status::PayloadTooLarge)
        );
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(status_of(&big), Some(Status::HeaderFieldsTooLarge));
    }

    #[test]
    fn chunked_bodies_decode_strictly() {
        let mut got = Vec::new();
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let r = decode_chunked(body, 100, |d| got.extend_from_slice(d)).unwrap();
        assert_eq!(r, Some((body.len() - 4, 9)));
        assert_eq!(got, b"Wikipedia");
        for bad in [
            &b"4\nWiki\r\n0\r\n\r\n"[..],
            b"4\r\nWiki\n0\r\n\r\n",
            b"4\r\nWikiXX0\r\n\r\n",
            b"g\r\n",
            b"4\rX",
            b"0\r\nTrailer: x\n\r\n",
            b"0\r\n\n",
            b"-1\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(
                decode_chunked(bad, 100, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for partial in [
            &b""[..],
            b"4",
            b"4\r",
            b"4\r\nWi",
            b"4\r\nWiki\r",
            b"0\r\n",
            b"0\r\nT: x\r\n",
            b"0\r\nT",
            b"0\r\n\r",
        ] {
            assert_eq!(
                decode_chunked(partial, 100, |_| {}),
                Ok(None),
                "{partial:?}"
            );
        }
        assert_eq!(
            decode_chunked(b"65\r\n", 100, |_| {}),
            Err(Status::PayloadTooLarge)
        );
    }

    #[test]
    fn absolute_form_targets_route_on_their_path() {
        assert_eq!(route_path(b"http://example.com/json?x", 23), b"/json");
        assert_eq!(route_path(b"http://example.com", 18), b"/");
        assert_eq!(route_path(b"/a/b", 4), b"/a/b");
        assert_eq!(route_path(b"/a?b=c/d", 2), b"/a");
    }
}
