//! Hop-by-hop headers (RFC 9110 §7.6.1): what a proxy never forwards; and
//! copying the fields it does forward.

use corelane_http::head::eq_lower;

/// The header fields the proxy treats apart from the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Connection`.
    Connection,
    /// `Keep-Alive`, `TE`, `Upgrade`, `Trailer`, `Proxy-Connection`: the
    /// other hop-by-hop headers (RFC 9110 §7.6.1).
    HopByHop,
    /// `Host`.
    Host,
    /// `Expect`.
    Expect,
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// Any other.
    Other,
}

impl Name {
    /// What `name` is, judged by its length first: most names match none
    /// and cost one comparison.
    #[inline(always)]
    pub fn of(name: &[u8]) -> Name {
        match name.len() {
            2 if eq_lower(name, b"te") => Name::HopByHop,
            4 if eq_lower(name, b"host") => Name::Host,
            6 if eq_lower(name, b"expect") => Name::Expect,
            7 if eq_lower(name, b"upgrade") || eq_lower(name, b"trailer") => Name::HopByHop,
            10 if eq_lower(name, b"connection") => Name::Connection,
            10 if eq_lower(name, b"keep-alive") => Name::HopByHop,
            14 if eq_lower(name, b"content-length") => Name::ContentLength,
            15 if eq_lower(name, b"x-forwarded-for") => Name::XForwardedFor,
            16 if eq_lower(name, b"proxy-connection") => Name::HopByHop,
            17 if eq_lower(name, b"transfer-encoding") => Name::TransferEncoding,
            _ => Name::Other,
        }
    }

    /// A hop-by-hop header, or one the proxy re-frames itself
    /// (`Transfer-Encoding` is decoded): never copied as is.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::HopByHop | Name::Connection | Name::TransferEncoding
        )
    }
}

/// Whether `name` is listed in a `Connection` header (`listed`: its
/// tokens): then it is hop-by-hop too.
#[inline(always)]
pub fn is_listed(name: &[u8], listed: &[&[u8]]) -> bool {
    !listed.is_empty() && listed.iter().any(|l| l.eq_ignore_ascii_case(name))
}

/// The fields the `Connection` fields of a head name (the first 16). Rare:
/// kept in an `Option` set only when a `Connection` names one, so the
/// common head sets up nothing for it.
#[derive(Debug, Default)]
pub struct Listed<'a> {
    names: [&'a [u8]; 16],
    len: usize,
}

impl<'a> Listed<'a> {
    /// Adds a name a `Connection` token gives.
    pub fn push(&mut self, token: &'a [u8]) {
        if self.len < self.names.len() {
            self.names[self.len] = token;
            self.len += 1;
        }
    }

    /// Adds what a `Connection` value names (`keep-alive` or `close` alone,
    /// as nearly always, are judged without splitting the value).
    #[inline]
    pub fn add(listed: &mut Option<Self>, value: &'a [u8]) {
        if eq_lower(value, b"keep-alive") || eq_lower(value, b"close") {
            return;
        }
        for t in connection_tokens(value) {
            if !eq_lower(t, b"close") && !eq_lower(t, b"keep-alive") {
                listed.get_or_insert_default().push(t);
            }
        }
    }

    /// The names gathered.
    pub fn names(&self) -> &[&'a [u8]] {
        &self.names[..self.len]
    }
}

/// The tokens of a `Connection` header value (the headers it names are
/// hop-by-hop too).
pub fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(crate::response::trim)
        .filter(|t| !t.is_empty())
}

/// Copies the lines of a head that are forwarded to `out`, in as few
/// pieces as it can: a field sent in the very form it is forwarded in (one
/// space after the colon, no trailing whitespace, `CRLF`), as nearly every
/// field is, extends the run of such lines before it, and a run is copied
/// in one piece when a line breaks it ([`flush`](Self::flush) copies the
/// last). Offsets are into the head the names and values were scanned from.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lines {
    start: usize,
    end: usize,
}

impl Lines {
    /// `head[from..to]` goes out as it is.
    #[inline]
    pub fn keep(&mut self, head: &[u8], from: usize, to: usize, out: &mut Vec<u8>) {
        if self.end != from || self.start == self.end {
            self.flush(head, out);
            self.start = from;
        }
        self.end = to;
    }

    /// Copies the run kept so far.
    #[inline]
    pub fn flush(&mut self, head: &[u8], out: &mut Vec<u8>) {
        if self.end > self.start {
            out.extend_from_slice(&head[self.start..self.end]);
        }
        *self = Lines::default();
    }

    /// The field `name: value` of `head` goes out as `name: value CRLF`.
    #[inline(always)]
    pub fn field(&mut self, head: &[u8], name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let start = (name.as_ptr() as usize).checked_sub(head.as_ptr() as usize);
        let len = name.len() + value.len() + 4;
        match start.and_then(|s| Some((s, head.get(s..s + len)?))) {
            Some((start, line))
                if value.as_ptr() as usize == name.as_ptr() as usize + name.len() + 2
                    && line[name.len() + 1] == b' '
                    && line.ends_with(b"\r\n") =>
            {
                self.keep(head, start, start + len, out);
            }
            _ => {
                self.flush(head, out);
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// The start line of `head`, whose first field is `name`: everything
/// before it (with any empty lines before the start line).
#[inline]
pub fn start_line<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.get(..(name.as_ptr() as usize).checked_sub(head.as_ptr() as usize)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Lines` writes for the fields of `head`.
    fn copied(head: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut lines = Lines::default();
        let _ = corelane_http::head::scan(head, 8, |n, v| lines.field(head, n, v, &mut out));
        lines.flush(head, &mut out);
        out
    }

    #[test]
    fn fields_are_copied_in_canonical_form() {
        for (head, want) in [
            (
                &b"GET / HTTP/1.1\r\nAccept: a, b\r\n\r\n"[..],
                &b"Accept: a, b\r\n"[..],
            ),
            (b"GET / HTTP/1.1\r\nAccept:a\r\n\r\n", b"Accept: a\r\n"),
            (b"GET / HTTP/1.1\r\nAccept:\ta\r\n\r\n", b"Accept: a\r\n"),
            (b"GET / HTTP/1.1\r\nAccept:  a\r\n\r\n", b"Accept: a\r\n"),
            (b"GET / HTTP/1.1\r\nAccept: a \r\n\r\n", b"Accept: a\r\n"),
            (b"GET / HTTP/1.1\nAccept: a\n\n", b"Accept: a\r\n"),
            (b"GET / HTTP/1.1\r\nAccept: \r\n\r\n", b"Accept: \r\n"),
            (b"GET / HTTP/1.1\r\nAccept:\r\n\r\n", b"Accept: \r\n"),
            (
                b"GET / HTTP/1.1\r\nA: 1\r\nB:2\r\nC: 3\r\nD: 4\r\n\r\n",
                b"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n",
            ),
        ] {
            assert_eq!(copied(head), want, "{}", String::from_utf8_lossy(head));
        }
    }
}
