//! Hop-by-hop headers (RFC 9110 §7.6.1): what a proxy never forwards.

use corelane_http::head::eq_lower;

/// Whether `name` is a hop-by-hop header, or one the proxy re-frames
/// itself (`Content-Length` of requests is written anew, `Transfer-Encoding`
/// decoded), so never copied as is.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
    ];
    // `eq_lower` compares lengths first: most names cost one comparison each.
    NAMES.iter().any(|n| eq_lower(name, n))
}

/// The tokens of a `Connection` header value (the headers it names are
/// hop-by-hop too).
pub fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(crate::response::trim)
        .filter(|t| !t.is_empty())
}
