//! Hop-by-hop headers (RFC 9110 §7.6.1): what a proxy never forwards; and
//! copying the fields it does forward.

use corelane_http::head::eq_lower;

/// Whether `name` is a hop-by-hop header, or one the proxy re-frames
/// itself (`Content-Length` of requests is written anew, `Transfer-Encoding`
/// decoded), so never copied as is.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    // By length first: most names match none and cost one comparison.
    match name.len() {
        2 => eq_lower(name, b"te"),
        7 => eq_lower(name, b"upgrade") || eq_lower(name, b"trailer"),
        10 => eq_lower(name, b"connection") || eq_lower(name, b"keep-alive"),
        16 => eq_lower(name, b"proxy-connection"),
        17 => eq_lower(name, b"transfer-encoding"),
        _ => false,
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

/// Appends the field `name: value` to `out` as `name: value CRLF`. `head`
/// is the head `name` and `value` were scanned from: a field sent in that
/// very form (one space after the colon, no trailing whitespace, `CRLF`),
/// as nearly every field is, is copied as one piece.
#[inline]
pub fn copy_field(head: &[u8], name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let sent = (name.as_ptr() as usize)
        .checked_sub(head.as_ptr() as usize)
        .and_then(|start| head.get(start..start + name.len() + value.len() + 4));
    match sent {
        Some(line)
            if value.as_ptr() as usize == name.as_ptr() as usize + name.len() + 2
                && line[name.len() + 1] == b' '
                && line.ends_with(b"\r\n") =>
        {
            out.extend_from_slice(line);
        }
        _ => {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
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

    /// What `copy_field` writes for the one field of `head`.
    fn copied(head: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = corelane_http::head::scan(head, 8, |n, v| copy_field(head, n, v, &mut out));
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
        ] {
            assert_eq!(copied(head), want, "{}", String::from_utf8_lossy(head));
        }
    }
}
