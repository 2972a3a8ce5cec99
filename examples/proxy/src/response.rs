//! An upstream's response: its head parsed strictly and rewritten for the
//! client (hop-by-hop headers dropped, `Connection` set for the client),
//! and its body's framing, including an incremental, strict chunked
//! decoder. A response whose framing is ambiguous is refused (502), never
//! forwarded.

use corelane_http::head::{self, eq_lower, HeadError, Scan};

use crate::hop::{connection_tokens, is_listed, start_line, Lines, Listed, Name};

/// Most header fields in a response.
const MAX_HEADERS: usize = 96;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes (no framing header): the upstream
    /// connection is not reused and the client's is closed after it.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Bytes of the head.
    pub len: usize,
    /// The body's framing.
    pub framing: Framing,
    /// Whether the upstream connection may carry another request.
    pub reusable: bool,
}

/// The result of looking at the start of an upstream's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole head (rewritten into the output buffer given).
    Complete(Head),
    /// An interim (1xx) response of this many bytes: skipped.
    Interim(usize),
    /// More bytes are needed.
    Partial,
    /// Malformed or ambiguous: the reason, for the log and the 502.
    Invalid(&'static str),
}

/// What the rewritten head must say to the client.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide {
    /// The request was HEAD: no body whatever the headers say.
    pub head_request: bool,
    /// The client's HTTP minor version (a 1.0 client gets a chunked body
    /// decoded, and the connection closed after it).
    pub minor: u8,
    /// The client's connection stays open after this response.
    pub keep_alive: bool,
    /// Add `Via: 1.1 corelane`.
    pub via: bool,
}

impl ClientSide {
    /// Whether a chunked body is decoded for this client (HTTP/1.0 knows no
    /// chunked coding).
    pub fn dechunk(&self) -> bool {
        self.minor == 0
    }
}

/// Parses the response head at the start of `buf`; on success writes the
/// head to send the client into `out` (cleared first) and says whether the
/// client's connection stays open (`keep_alive` in the result's framing:
/// `UntilClose` or a decoded chunked body close it).
pub fn parse_head(buf: &[u8], max_head: usize, client: &ClientSide, out: &mut Vec<u8>) -> Parsed {
    let window = &buf[..buf.len().min(max_head)];
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut listed: Option<Listed<'_>> = None;
    // The first problem a field shows, judged once the head is whole.
    let mut invalid: Option<&'static str> = None;
    // The fields are written as they are scanned; the status line is put
    // in front of them at the end. When `Connection` lists fields (rare:
    // `close` and `keep-alive` name none), a second pass writes them again
    // without those.
    out.clear();
    let mut lines = Lines::default();
    // The status line as sent, when it is already what is forwarded.
    let mut line_sent = false;
    let mut first = true;
    let scanned = head::scan_response(window, MAX_HEADERS, |name, value| {
        if std::mem::take(&mut first) {
            line_sent = copy_status_line(window, name, &mut lines, out);
        }
        let kind = Name::of(name);
        write_field(window, name, value, kind, client, &[], &mut lines, out);
        if invalid.is_some() {
            return;
        }
        match kind {
            Name::ContentLength => {
                let Some(n) = parse_length(value) else {
                    invalid = Some("bad Content-Length");
                    return;
                };
                if content_length.is_some_and(|c| c != n) {
                    invalid = Some("conflicting Content-Length");
                    return;
                }
                content_length = Some(n);
            }
            Name::TransferEncoding => {
                if chunked || !eq_lower(trim(value), b"chunked") {
                    invalid = Some("unsupported Transfer-Encoding");
                    return;
                }
                chunked = true;
            }
            Name::Connection => {
                for token in connection_tokens(value) {
                    let is_close = eq_lower(token, b"close");
                    let is_keep_alive = eq_lower(token, b"keep-alive");
                    close |= is_close;
                    keep_alive_token |= is_keep_alive;
                    if !is_close && !is_keep_alive {
                        // Names a field: hop-by-hop too.
                        listed.get_or_insert_default().push(token);
                    }
                }
            }
            _ => {}
        }
    });
    let (status, len) = match scanned {
        Ok(Scan::Complete { line, len }) => (line, len),
        Ok(Scan::Partial) if buf.len() > max_head => {
            return Parsed::Invalid("response head too large")
        }
        Ok(Scan::Partial) => return Parsed::Partial,
        Err(HeadError::TooManyFields) => return Parsed::Invalid("too many header fields"),
        Err(_) => return Parsed::Invalid("malformed response head"),
    };
    let (code, minor) = (status.code, status.minor);
    if !(100..=599).contains(&code) {
        return Parsed::Invalid("status code out of range");
    }
    if code == 101 {
        // Upgrade is never asked for (the proxy drops it from requests).
        return Parsed::Invalid("unrequested protocol switch");
    }
    if code < 200 {
        return Parsed::Interim(len);
    }
    if let Some(why) = invalid {
        return Parsed::Invalid(why);
    }
    if chunked && content_length.is_some() {
        return Parsed::Invalid("both Content-Length and Transfer-Encoding");
    }
    let framing = if client.head_request || code == 204 || code == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let reusable = framing != Framing::UntilClose && !close && (minor == 1 || keep_alive_token);
    let keep_client = keeps_client(framing, client);

    if let Some(listed) = &listed {
        out.clear();
        lines = Lines::default();
        let listed = listed.names();
        let mut first = true;
        let _ = head::scan_response(window, MAX_HEADERS, |name, value| {
            if std::mem::take(&mut first) {
                line_sent = copy_status_line(window, name, &mut lines, out);
            }
            write_field(
                window,
                name,
                value,
                Name::of(name),
                client,
                listed,
                &mut lines,
                out,
            );
        });
    }
    lines.flush(window, out);
    if !line_sent {
        // Built after the fields, moved in front of them.
        let fields_len = out.len();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.reason);
        out.extend_from_slice(b"\r\n");
        out.rotate_left(fields_len);
    }
    if client.via {
        out.extend_from_slice(b"Via: 1.1 corelane\r\n");
    }
    if !keep_client {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client.minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Parsed::Complete(Head {
        status: code,
        len,
        framing,
        reusable,
    })
}

/// Writes one response field for the client, unless it is hop-by-hop or
/// listed in `Connection` (`listed`); `Transfer-Encoding` is kept for a
/// client that gets the chunked body as is.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn write_field(
    head: &[u8],
    name: &[u8],
    value: &[u8],
    kind: Name,
    client: &ClientSide,
    listed: &[&[u8]],
    lines: &mut Lines,
    out: &mut Vec<u8>,
) {
    let keep_te = kind == Name::TransferEncoding && !client.dechunk();
    if !keep_te && (kind.is_hop_by_hop() || is_listed(name, listed)) {
        return;
    }
    lines.field(head, name, value, out);
}

/// Copies the status line of `head` (whose first field is `name`) to `out`
/// if it is already what the client gets: `HTTP/1.1 ddd reason CRLF`, in
/// ASCII, with no empty lines before it. Whether it did.
fn copy_status_line(head: &[u8], name: &[u8], lines: &mut Lines, out: &mut Vec<u8>) -> bool {
    match start_line(head, name) {
        Some(line)
            if line.starts_with(b"HTTP/1.1 ")
                && line.get(12) == Some(&b' ')
                && line.ends_with(b"\r\n")
                && line.is_ascii() =>
        {
            lines.keep(head, 0, line.len(), out);
            true
        }
        _ => false,
    }
}

/// Whether the client's connection stays open after a response with this
/// framing.
pub fn keeps_client(framing: Framing, client: &ClientSide) -> bool {
    client.keep_alive
        && framing != Framing::UntilClose
        && !(framing == Framing::Chunked && client.dechunk())
}

/// A `Content-Length` value: digits only (a list of equal values, as
/// RFC 9110 §8.6 allows, also passes).
fn parse_length(value: &[u8]) -> Option<u64> {
    let mut found: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let v = trim(part);
        if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

pub(crate) use corelane_http::request::trim;

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Reading the chunk size's hex digits.
    #[default]
    Size,
    /// Skipping a chunk extension until CR.
    Ext,
    /// The LF after the size line.
    SizeLf,
    /// Chunk data.
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The LF of the final CRLF.
    EndLf,
    /// The body is complete.
    Done,
}

/// Most trailer bytes accepted.
const MAX_TRAILERS: usize = 8 * 1024;

/// An incremental, strict decoder of a chunked body: every line ends in
/// CRLF, sizes are at most 15 hex digits, extensions are skipped,
/// trailers bounded.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: State,
    /// Bytes left in the current chunk (or its size so far).
    size: u64,
    digits: u8,
    trailer_bytes: usize,
}

impl Chunked {
    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the start of `buf`, calling `data` with chunk data;
    /// returns how many bytes of `buf` belong to the body (all of it,
    /// unless the body ended inside it).
    ///
    /// # Errors
    ///
    /// The body is malformed.
    pub fn feed(&mut self, buf: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Size => {
                    if let Some(d) = (b as char).to_digit(16) {
                        if self.digits == 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    } else if self.digits == 0 {
                        return Err("bad chunk size");
                    } else if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        self.state = State::Ext;
                    } else {
                        return Err("bad chunk size");
                    }
                    i += 1;
                }
                State::Ext => {
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err("bare LF in chunk extension"),
                        _ => {}
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err("chunk size line not ended by CRLF");
                    }
                    i += 1;
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let n = (buf.len() - i).min(self.size.min(usize::MAX as u64) as usize);
                    data(&buf[i..i + n]);
                    i += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::DataCr | State::DataLf => {
                    let want = if self.state == State::DataCr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if b != want {
                        return Err("chunk data not followed by CRLF");
                    }
                    i += 1;
                    self.state = if self.state == State::DataCr {
                        State::DataLf
                    } else {
                        State::Size
                    };
                }
                State::TrailerStart | State::TrailerLine => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err("trailers too large");
                    }
                    self.state = match (self.state, b) {
                        (State::TrailerStart, b'\r') => State::EndLf,
                        (_, b'\r') => State::TrailerLf,
                        (_, b'\n') => return Err("bare LF in trailers"),
                        _ => State::TrailerLine,
                    };
                    i += 1;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err("trailer line not ended by CRLF");
                    }
                    i += 1;
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err("chunked body not ended by CRLF");
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientSide {
        ClientSide {
            head_request: false,
            minor: 1,
            keep_alive: true,
            via: false,
        }
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_the_rest_kept() {
        let mut out = Vec::new();
        // X-Secret comes before the Connection field that names it.
        let r = b"HTTP/1.1 200 OK\r\nX-Secret: 1\r\nContent-Length: 2\r\nConnection: x-secret, keep-alive\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\nhi";
        let Parsed::Complete(h) = parse_head(r, 8192, &client(), &mut out) else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.reusable);
        assert_eq!(h.len, r.len() - 2);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\n"
        );
    }

    #[test]
    fn the_status_line_is_forwarded_as_http11_whatever_its_form() {
        for (sent, forwarded) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], &b"HTTP/1.1 200 OK\r\n"[..]),
            (b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 200 OK\r\n"),
            (b"HTTP/1.1 200 OK\n", b"HTTP/1.1 200 OK\r\n"),
            (b"\r\nHTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\n"),
            (b"HTTP/1.1 200\r\n", b"HTTP/1.1 200 \r\n"),
            (b"HTTP/1.1 200 \xe2\x9c\x93\r\n", b"HTTP/1.1 200 \r\n"),
        ] {
            let mut r = sent.to_vec();
            r.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            let mut out = Vec::new();
            let Parsed::Complete(_) = parse_head(&r, 8192, &client(), &mut out) else {
                panic!("{}", String::from_utf8_lossy(sent))
            };
            let mut want = forwarded.to_vec();
            want.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want),
                "{}",
                String::from_utf8_lossy(sent)
            );
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let mut out = Vec::new();
        for r in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n folded\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(r, 8192, &client(), &mut out), Parsed::Invalid(_)),
                "{}",
                String::from_utf8_lossy(r)
            );
        }
    }

    #[test]
    fn bodiless_and_close_delimited_responses() {
        let mut out = Vec::new();
        let head_req = ClientSide {
            head_request: true,
            ..client()
        };
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert!(matches!(
            parse_head(r, 8192, &head_req, &mut out),
            Parsed::Complete(Head {
                framing: Framing::Empty,
                ..
            })
        ));
        let r = b"HTTP/1.1 200 OK\r\n\r\nuntil close";
        let Parsed::Complete(h) = parse_head(r, 8192, &client(), &mut out) else {
            panic!()
        };
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.reusable);
        assert!(out.ends_with(b"Connection: close\r\n\r\n"));
        assert_eq!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\n", 8192, &client(), &mut out),
            Parsed::Interim(25)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nX: y", 8192, &client(), &mut out),
            Parsed::Partial
        );
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut d = Chunked::default();
            let mut data = Vec::new();
            let end = body.len() - 4;
            let a = d
                .feed(&body[..split], |b| data.extend_from_slice(b))
                .unwrap();
            assert_eq!(a, split.min(end));
            let b = if d.is_done() {
                0
            } else {
                d.feed(&body[split..], |b| data.extend_from_slice(b))
                    .unwrap()
            };
            assert!(d.is_done(), "split {split}");
            assert_eq!(a + b, end, "stops before the next message");
            assert_eq!(data, b"Wikipedia");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for body in [
            &b"4\nWiki\r\n0\r\n\r\n"[..],
            b"4\r\nWikiX\r\n",
            b"g\r\n",
            b"\r\n",
            b"1234567890abcdef0\r\n",
            b"0\r\nX: 1\n\r\n",
        ] {
            let mut d = Chunked::default();
            assert!(
                d.feed(body, |_| {}).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
