//! The request head scanner: the request line and the header fields, with
//! exactly the checks httparse 1.10 makes in its default configuration
//! (which this crate used before; `tests/head_differential.rs` holds the
//! two to the same answers), in one pass that hands each field to the
//! caller instead of filling an array.
//!
//! What is checked, byte for byte:
//!
//! - empty lines (`CRLF` or `LF`) before the request line are skipped;
//! - the method is a token (RFC 9110 `tchar`s), then one space;
//! - the target is one or more bytes of `!`..`~` or `0x80`..`0xFF` that
//!   form valid UTF-8, then one space;
//! - the version is exactly `HTTP/1.0` or `HTTP/1.1`, then `CRLF` or `LF`;
//! - each field name is a token, directly followed by `:`; spaces and tabs
//!   after the colon are skipped; the value is `HTAB`, `SP`..`~` and
//!   `0x80`..`0xFF`, ending in `CRLF` or `LF`; trailing spaces and tabs are
//!   not part of it; no obsolete line folding;
//! - at most `max_fields` fields (one more, once complete, is an error).
//!
//! The scan answers the same for a prefix of the head as httparse does:
//! [`Scan::Partial`] while every byte so far can still begin a valid head,
//! an error as soon as one cannot. On x86-64 the target and the values are
//! scanned 16 bytes at a time (SSE2, which every x86-64 CPU has), and, with
//! [`scan_in`] and [`Avx2`], the common shapes of the request line and of a
//! field 32 bytes at a time.

/// Why a head is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// The version is not `HTTP/1.0` or `HTTP/1.1`.
    Version,
    /// More header fields than allowed.
    TooManyFields,
    /// Any other malformation (a byte not allowed where it is, a missing
    /// space, a bad line ending).
    Malformed,
}

/// The request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// The method token.
    pub method: &'a [u8],
    /// The request target, as sent.
    pub target: &'a [u8],
    /// Bytes of `target` before its query (`?`), all of it if none.
    pub path_len: usize,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
}

/// What a scan found: `L` is the start line, a request's [`Line`] or a
/// response's [`StatusLine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan<L> {
    /// The whole head, `len` bytes including its final empty line.
    Complete {
        /// The start line.
        line: L,
        /// Bytes of the head.
        len: usize,
    },
    /// Every byte so far can begin a valid head; more are needed.
    Partial,
}

/// Scans the head at the start of `buf`, calling `field(name, value)` for
/// each header field in order (also for a head that then turns out
/// partial or malformed: callers act on the fields once the scan is
/// complete).
///
/// # Errors
///
/// Why the head is malformed, as soon as a byte shows it.
pub fn scan<'a>(
    buf: &'a [u8],
    max_fields: usize,
    field: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<Scan<Line<'a>>, HeadError> {
    scan_in(Baseline, buf, max_fields, field)
}

/// [`scan`] with the common shapes judged by `lanes`: the same answers
/// (the tests hold every [`Lanes`] to them), at a different cost. With
/// [`Avx2`], call it from a function compiled for AVX2
/// (`#[target_feature(enable = "avx2")]`), into which it is inlined:
/// elsewhere each 32-byte judgement is a call. `Http::serve` does that.
///
/// # Errors
///
/// As [`scan`].
#[inline(always)]
pub fn scan_in<'a, L: Lanes>(
    lanes: L,
    buf: &'a [u8],
    max_fields: usize,
    field: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<Scan<Line<'a>>, HeadError> {
    head(
        lanes,
        buf,
        max_fields,
        field,
        #[inline(always)]
        |buf| request_line(lanes, buf),
    )
}

/// How a scan judges the common shapes of a request line and of a field,
/// many bytes at a time: [`Baseline`] or [`Avx2`]. Sealed: the scan's
/// answers are proven for these two only.
pub trait Lanes: Copy + sealed::Sealed {
    /// The field at `pos` (a byte is there, not a line end) if it has the
    /// common shape: its name, its value and where the next line begins;
    /// `None` for the exact scan to judge.
    #[doc(hidden)]
    fn common_field(self, buf: &[u8], pos: usize) -> Option<Field<'_>>;
    /// The request line at the start of `buf` if it has the common shape,
    /// and where the fields begin; `None` for the exact scan to judge.
    #[doc(hidden)]
    fn common_request_line(self, buf: &[u8]) -> Option<(Line<'_>, usize)>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Baseline {}
    impl Sealed for super::Avx2 {}
}

/// 16 bytes at a time with SSE2 on x86-64 (part of the architecture, so
/// every x86-64 CPU has it); byte by byte elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline;

/// `Lanes` for `$lanes`, judging with the SIMD width `$width(self)`
/// makes (x86-64 only: elsewhere the exact scan judges every line).
macro_rules! lanes_by {
    ($lanes:ty, $width:expr) => {
        impl Lanes for $lanes {
            #[inline(always)]
            fn common_field(self, buf: &[u8], pos: usize) -> Option<Field<'_>> {
                #[cfg(target_arch = "x86_64")]
                return simd::common_field($width(self), buf, pos);
                #[cfg(not(target_arch = "x86_64"))]
                return {
                    let _ = (buf, pos);
                    None
                };
            }

            #[inline(always)]
            fn common_request_line(self, buf: &[u8]) -> Option<(Line<'_>, usize)> {
                #[cfg(target_arch = "x86_64")]
                return simd::common_request_line($width(self), buf);
                #[cfg(not(target_arch = "x86_64"))]
                return {
                    let _ = buf;
                    None
                };
            }
        }
    };
}

lanes_by!(Baseline, |_| simd::W16);

/// 32 bytes at a time with AVX2: proof, made by [`detect`](Avx2::detect),
/// that this CPU has it. A request line or a field up to 31 bytes long
/// then takes one judgement, a long value half as many as with
/// [`Baseline`].
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

impl Avx2 {
    /// `Some` if this CPU has AVX2 (x86-64 only; the answer is cached by
    /// the standard library).
    pub fn detect() -> Option<Avx2> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(Avx2(()));
        }
        None
    }
}

lanes_by!(Avx2, simd::W32);

/// A response's status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusLine<'a> {
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The three-digit status code (any digits: judging its range is the
    /// caller's).
    pub code: u16,
    /// The reason phrase, as sent; empty when it holds bytes above `0x7F`
    /// (obsolete text, as httparse reports it).
    pub reason: &'a [u8],
}

/// Scans the response head at the start of `buf` as [`scan`] does a
/// request's: the status line is `HTTP/1.x SP 3DIGIT`, then `SP reason` or
/// nothing, then `CRLF` or `LF`; the reason is `HTAB`, `SP`, `!`..`~` and
/// `0x80`..`0xFF`. The fields follow the same rules as a request's.
///
/// # Errors
///
/// Why the head is malformed (a missing space after the version is a
/// [`HeadError::Version`], as httparse says), as soon as a byte shows it.
pub fn scan_response<'a>(
    buf: &'a [u8],
    max_fields: usize,
    field: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<Scan<StatusLine<'a>>, HeadError> {
    head(Baseline, buf, max_fields, field, status_line)
}

/// A head: the start line `start` reads, then the fields.
#[inline(always)]
fn head<'a, L>(
    lanes: impl Lanes,
    buf: &'a [u8],
    max_fields: usize,
    field: impl FnMut(&'a [u8], &'a [u8]),
    start: impl FnOnce(&'a [u8]) -> Result<Option<(L, usize)>, HeadError>,
) -> Result<Scan<L>, HeadError> {
    let Some((line, pos)) = start(buf)? else {
        return Ok(Scan::Partial);
    };
    Ok(match fields(lanes, buf, pos, max_fields, field)? {
        Some(len) => Scan::Complete { line, len },
        None => Scan::Partial,
    })
}

/// The header fields from `pos` to the empty line that ends the head:
/// where the head ends, `Ok(None)` while partial.
#[inline(always)]
fn fields<'a>(
    lanes: impl Lanes,
    buf: &'a [u8],
    mut pos: usize,
    max_fields: usize,
    mut field: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<Option<usize>, HeadError> {
    let mut fields = 0;
    loop {
        let Some(&b) = buf.get(pos) else {
            return Ok(None);
        };
        if b == b'\r' || b == b'\n' {
            return newline(buf, pos);
        }
        let (name, value, next) = match lanes.common_field(buf, pos) {
            Some(f) => f,
            None => match header_field(buf, pos)? {
                Some(f) => f,
                None => return Ok(None),
            },
        };
        fields += 1;
        if fields > max_fields {
            return Err(HeadError::TooManyFields);
        }
        field(name, value);
        pos = next;
    }
}

/// Empty lines (`CRLF` or `LF`) before a start line are skipped: where the
/// start line begins, `Ok(None)` while only empty lines are there.
#[inline(always)]
fn skip_empty_lines(buf: &[u8]) -> Result<Option<usize>, HeadError> {
    let mut pos = 0;
    loop {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'\r') => match buf.get(pos + 1) {
                None => return Ok(None),
                Some(b'\n') => pos += 2,
                Some(_) => return Err(HeadError::Malformed),
            },
            Some(b'\n') => pos += 1,
            Some(_) => return Ok(Some(pos)),
        }
    }
}

/// The two versions, as words read little-endian.
const HTTP_11: u64 = u64::from_le_bytes(*b"HTTP/1.1");
const HTTP_10: u64 = u64::from_le_bytes(*b"HTTP/1.0");

/// `HTTP/1.1` or `HTTP/1.0` at `pos`: the minor version, `Ok(None)` while
/// fewer than 8 bytes are there and they begin `HTTP/1.`.
#[inline(always)]
fn version(buf: &[u8], pos: usize) -> Result<Option<u8>, HeadError> {
    match buf.get(pos..pos + 8) {
        Some(v) => match u64::from_le_bytes(v.try_into().unwrap_or_default()) {
            HTTP_11 => Ok(Some(1)),
            HTTP_10 => Ok(Some(0)),
            _ => Err(HeadError::Version),
        },
        None => {
            // Fewer than 8 bytes: wrong already, or a prefix of a version.
            let have = &buf[pos.min(buf.len())..];
            if b"HTTP/1."[..have.len().min(7)] == have[..have.len().min(7)] {
                Ok(None)
            } else {
                Err(HeadError::Version)
            }
        }
    }
}

/// The status line: `Ok(None)` while partial, else the line and where the
/// fields begin.
fn status_line(buf: &[u8]) -> Result<Option<(StatusLine<'_>, usize)>, HeadError> {
    let Some(mut pos) = skip_empty_lines(buf)? else {
        return Ok(None);
    };
    let Some(minor) = version(buf, pos)? else {
        return Ok(None);
    };
    pos += 8;
    match buf.get(pos) {
        None => return Ok(None),
        Some(b' ') => pos += 1,
        Some(_) => return Err(HeadError::Version),
    }
    let mut code = 0u16;
    for _ in 0..3 {
        match buf.get(pos) {
            None => return Ok(None),
            Some(&d @ b'0'..=b'9') => code = code * 10 + u16::from(d - b'0'),
            Some(_) => return Err(HeadError::Malformed),
        }
        pos += 1;
    }
    let reason_start = match buf.get(pos) {
        None => return Ok(None),
        Some(b' ') => pos + 1,
        Some(b'\r' | b'\n') => pos,
        Some(_) => return Err(HeadError::Malformed),
    };
    // The reason allows exactly what a field value does.
    let reason_end = value_end(buf, reason_start);
    let Some(next) = newline(buf, reason_end)? else {
        return Ok(None);
    };
    let reason = &buf[reason_start..reason_end];
    let status = StatusLine {
        minor,
        code,
        reason: if reason.is_ascii() { reason } else { b"" },
    };
    Ok(Some((status, next)))
}

/// The request line: `Ok(None)` while partial, else the line and where the
/// fields begin. The common shape's fast path is inlined into the caller;
/// any other line is a call.
#[inline(always)]
fn request_line(lanes: impl Lanes, buf: &[u8]) -> Result<Option<(Line<'_>, usize)>, HeadError> {
    if let Some(line) = lanes.common_request_line(buf) {
        return Ok(Some(line));
    }
    exact_request_line(buf)
}

/// [`request_line`] byte by byte (bar SIMD for the target): any shape.
#[inline(never)]
fn exact_request_line(buf: &[u8]) -> Result<Option<(Line<'_>, usize)>, HeadError> {
    let Some(mut pos) = skip_empty_lines(buf)? else {
        return Ok(None);
    };
    let start = pos;
    let method_end = if buf[pos..].starts_with(b"GET ") {
        pos + 3
    } else {
        let end = token_end(buf, pos);
        match buf.get(end) {
            None => return Ok(None),
            Some(b' ') if end > pos => end,
            Some(_) => return Err(HeadError::Malformed),
        }
    };
    pos = method_end + 1;
    let target_start = pos;
    let Target {
        end: target_end,
        query,
        non_ascii,
    } = target(buf, pos);
    match buf.get(target_end) {
        None => return Ok(None),
        Some(b' ') if target_end > target_start => {}
        Some(_) => return Err(HeadError::Malformed),
    }
    let target = &buf[target_start..target_end];
    if non_ascii && std::str::from_utf8(target).is_err() {
        return Err(HeadError::Malformed);
    }
    pos = target_end + 1;
    let Some(minor) = version(buf, pos)? else {
        return Ok(None);
    };
    pos += 8;
    let Some(end) = newline(buf, pos)? else {
        return Ok(None);
    };
    let line = Line {
        method: &buf[start..method_end],
        target,
        path_len: query.min(target_end) - target_start,
        minor,
    };
    Ok(Some((line, end)))
}

/// A field's name, its value, and where the next line begins.
pub type Field<'a> = (&'a [u8], &'a [u8], usize);

/// One field starting at `pos` (a byte is there, not a line end): its name,
/// its value, and where the next line begins; `Ok(None)` while partial.
/// A call: the common shape is judged inline, and this code there would
/// only crowd it.
#[inline(never)]
fn header_field(buf: &[u8], pos: usize) -> Result<Option<Field<'_>>, HeadError> {
    let name_end = token_end(buf, pos);
    match buf.get(name_end) {
        None => return Ok(None),
        Some(b':') if name_end > pos => {}
        Some(_) => return Err(HeadError::Malformed),
    }
    let name = &buf[pos..name_end];
    let mut at = name_end + 1;
    // Spaces and tabs after the colon.
    loop {
        match buf.get(at) {
            None => return Ok(None),
            Some(b' ' | b'\t') => at += 1,
            Some(_) => break,
        }
    }
    let value_start = at;
    let value_end = value_end(buf, at);
    let Some(next) = newline(buf, value_end)? else {
        return Ok(None);
    };
    let mut value = &buf[value_start..value_end];
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    Ok(Some((name, value, next)))
}

/// A line end at `pos`: `CRLF` or `LF`. Where the next line begins,
/// `Ok(None)` if the bytes end first, malformed if another byte is there.
#[inline]
fn newline(buf: &[u8], pos: usize) -> Result<Option<usize>, HeadError> {
    match buf.get(pos) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(pos + 1)),
        Some(b'\r') => match buf.get(pos + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some(pos + 2)),
            Some(_) => Err(HeadError::Malformed),
        },
        Some(_) => Err(HeadError::Malformed),
    }
}

/// Whether `s`, bytes of a token or a field value, equals `lower` ignoring
/// ASCII case. `lower` is lowercase letters, digits and `-` (a header name
/// or a keyword such as `keep-alive`): for those, setting bit 5 of each
/// byte of `s` (`| 0x20`) folds case exactly, since no byte a token or a
/// value may hold becomes one of them that way unless it already matched
/// (the bytes that would, `CR` and `0x10`..`0x19`, are controls). Eight
/// bytes are compared at a time.
#[inline]
pub fn eq_lower(s: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower
        .iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let word =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let n = s.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        if n < 4 {
            return s.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b);
        }
        // The first four bytes and the last four (overlapping).
        const FOLD4: u32 = 0x2020_2020;
        let word4 =
            |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
        return word4(s, 0) | FOLD4 == word4(lower, 0)
            && word4(s, n - 4) | FOLD4 == word4(lower, n - 4);
    }
    let mut i = 0;
    while i + 8 <= n {
        if word(s, i) | FOLD != word(lower, i) {
            return false;
        }
        i += 8;
    }
    // The last bytes, in the last eight (overlapping what was compared).
    i == n || word(s, n - 8) | FOLD == word(lower, n - 8)
}

/// RFC 9110 `tchar`s.
static TOKEN: [bool; 256] = {
    let mut map = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        map[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    map
};

/// Where the token starting at `start` ends: the first byte from `start`
/// on that is not a token character, or `buf.len()`.
#[inline]
fn token_end(buf: &[u8], start: usize) -> usize {
    // Most names and methods are letters, digits and `-`: those are
    // skipped 16 at a time; any other token character one at a time.
    #[cfg(target_arch = "x86_64")]
    let start = simd::first::<_, { simd::NAME }>(simd::W16, buf, start, |c| {
        c.is_ascii_alphanumeric() || c == b'-'
    });
    match buf.get(start) {
        Some(&c) if TOKEN[c as usize] => scalar_end(buf, start, |c| TOKEN[c as usize]),
        _ => start,
    }
}

/// A request target's scan: where it ends (the first byte that is not
/// `!`..`~` or `0x80`..`0xFF`, or `buf.len()`), where its query begins
/// (the first `?`, or `buf.len()`), and whether it holds bytes above `0x7F`
/// (which must then form UTF-8).
struct Target {
    end: usize,
    query: usize,
    non_ascii: bool,
}

#[inline]
fn target(buf: &[u8], start: usize) -> Target {
    #[cfg(target_arch = "x86_64")]
    {
        simd::target(buf, start)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        scalar_target(buf, start)
    }
}

/// [`target`] one byte at a time.
fn scalar_target(buf: &[u8], start: usize) -> Target {
    let end = scalar_end(buf, start, |c| c > b' ' && c != 0x7F);
    let t = &buf[start..end];
    Target {
        end,
        query: t
            .iter()
            .position(|&c| c == b'?')
            .map_or(buf.len(), |q| start + q),
        non_ascii: !t.is_ascii(),
    }
}

/// Where the field value starting at `start` ends: the first byte that is
/// not `HTAB`, `SP`..`~` or `0x80`..`0xFF`, or `buf.len()`.
#[inline]
fn value_end(buf: &[u8], start: usize) -> usize {
    let allowed = |c: u8| (c >= b' ' && c != 0x7F) || c == b'\t';
    #[cfg(target_arch = "x86_64")]
    {
        simd::first::<_, { simd::VALUE }>(simd::W16, buf, start, allowed)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        scalar_end(buf, start, allowed)
    }
}

/// The first byte from `start` on that `allowed` refuses, or `buf.len()`.
#[inline]
fn scalar_end(buf: &[u8], start: usize, allowed: impl Fn(u8) -> bool) -> usize {
    buf[start..]
        .iter()
        .position(|&c| !allowed(c))
        .map_or(buf.len(), |n| start + n)
}

/// SIMD scanning: 16 bytes at a time with SSE2 ([`W16`]: SSE2 is part of
/// x86-64, so it needs no run-time detection), 32 with AVX2 ([`W32`],
/// made only from an [`Avx2`](super::Avx2), the proof that the CPU has
/// it).
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::{_mm256_loadu_si256, _mm_set_epi64x};

    /// Which bytes a scan stops at.
    pub(super) const VALUE: u8 = 1;
    pub(super) const NAME: u8 = 2;
    pub(super) const CONTROL: u8 = 3;

    /// How many bytes are judged at once, and with which instructions.
    pub(super) trait Width: Copy {
        /// Bytes per judgement (16 or 32: the masks are `u32`).
        const N: usize;
        /// A bit per byte of `chunk` (`N` bytes) that ends a `KIND` scan.
        fn flagged<const KIND: u8>(self, chunk: &[u8]) -> u32;
        /// For a target: the bytes of `chunk` (`N` bytes) that end it,
        /// `?`s, and bytes above `0x7F`.
        fn masks_target(self, chunk: &[u8]) -> [u32; 3];
        /// [`common_field`] where fewer than `N` bytes are left from `pos`
        /// (the last field of a head read whole, say).
        fn near_end_field(self, buf: &[u8], pos: usize) -> Option<super::Field<'_>>;
        /// [`common_request_line`] where fewer than `N` bytes are left for
        /// one of its loads, the same way.
        fn near_end_line(self, buf: &[u8]) -> Option<(super::Line<'_>, usize)>;
    }

    /// 16 bytes at a time, SSE2.
    #[derive(Clone, Copy)]
    pub(super) struct W16;

    /// 32 bytes at a time, AVX2.
    #[derive(Clone, Copy)]
    pub(super) struct W32(pub(super) super::Avx2);

    /// The `N` bytes to judge from `i` on, and how many at their start
    /// come before `i` (to shift out of the masks): `buf[i..i + N]`, or,
    /// with fewer left, the last `N` of `buf`. `None` when nothing is left,
    /// or `buf` is shorter than `N` (then the caller goes byte by byte).
    #[inline]
    fn window<W: Width>(buf: &[u8], i: usize) -> Option<(&[u8], usize)> {
        match buf.get(i..i + W::N) {
            Some(chunk) => Some((chunk, 0)),
            None if i < buf.len() && buf.len() >= W::N => {
                let base = buf.len() - W::N;
                Some((&buf[base..], i - base))
            }
            None => None,
        }
    }

    /// The first byte from `start` on that is not allowed in a field value
    /// (`KIND` [`VALUE`]), is a control byte ([`CONTROL`]), or is not a
    /// letter, digit or `-` ([`NAME`]); `buf.len()` if none. `N` bytes at
    /// a time; in a buffer shorter than that, one at a time with
    /// `allowed`. Inlined: a call here cost the common field path its SIMD
    /// constants, reloaded after it.
    #[inline(always)]
    pub(super) fn first<W: Width, const KIND: u8>(
        w: W,
        buf: &[u8],
        start: usize,
        allowed: impl Fn(u8) -> bool,
    ) -> usize {
        let mut i = start;
        // Whole chunks first, the last window once: one loop over
        // `window` costs ~80 instructions more per plain request.
        while let Some(chunk) = buf.get(i..i + W::N) {
            let mask = w.flagged::<KIND>(chunk);
            if mask != 0 {
                return i + mask.trailing_zeros() as usize;
            }
            i += W::N;
        }
        match window::<W>(buf, i) {
            Some((chunk, skip)) => {
                let mask = w.flagged::<KIND>(chunk) >> skip;
                if mask != 0 {
                    i + mask.trailing_zeros() as usize
                } else {
                    buf.len()
                }
            }
            None => super::scalar_end(buf, i, allowed),
        }
    }

    /// The field at `pos` if it has the shape almost every field has, in
    /// one `N`-byte load for its name and the start of its value: a name
    /// of letters, digits and `-` shorter than `N` bytes, its colon, at
    /// most one space, a value of no control byte (not even `HTAB`) not
    /// ending in a space, and `CRLF`. Then exactly what
    /// [`header_field`](super::header_field) finds (the caller's unit test
    /// holds the two to that); `None` for any other shape, a partial line
    /// or a malformed one, which the byte-exact scan then judges.
    #[inline(always)]
    pub(super) fn common_field<W: Width>(w: W, buf: &[u8], pos: usize) -> Option<super::Field<'_>> {
        let Some(chunk) = buf.get(pos..pos + W::N) else {
            return w.near_end_field(buf, pos);
        };
        let (ctl, not_name) = (w.flagged::<CONTROL>(chunk), w.flagged::<NAME>(chunk));
        // The name ends at its first byte that is not a letter, digit or
        // `-`: a colon, in the common shape, and then no control byte came
        // before it, so the first control byte is the line's end.
        let colon = not_name.trailing_zeros() as usize;
        if colon == 0 || chunk.get(colon) != Some(&b':') {
            return None;
        }
        let end = if ctl != 0 {
            pos + ctl.trailing_zeros() as usize
        } else {
            first::<W, CONTROL>(w, buf, pos + W::N, |c| c >= b' ' && c != 0x7F)
        };
        if !crlf_at(buf, end) {
            return None;
        }
        field_of(buf.get(pos..end)?, colon, end + 2)
    }

    /// The field whose `line` (without its `CRLF`) has its colon at
    /// `colon`, the next line at `next`: its name and its value (after at
    /// most one space; `None`, for the exact scan, if more spaces lead or
    /// any trail).
    #[inline(always)]
    fn field_of(line: &[u8], colon: usize, next: usize) -> Option<super::Field<'_>> {
        // The colon and the line's end delimit the value (the line ends
        // past the colon, as the colon is no control).
        let (name, value) = (line.get(..colon)?, line.get(colon + 1..)?);
        let value = match value {
            [b' ', rest @ ..] => rest,
            _ => value,
        };
        if let [b' ', ..] | [.., b' '] = value {
            return None;
        }
        Some((name, value, next))
    }

    /// [`common_field`] where fewer than `N` bytes are left from `pos`
    /// (the last field of a head read whole): judged in `buf`'s last `N`
    /// bytes, their masks shifted to start at `pos`. `None` (for the exact
    /// scan) when `buf` is shorter than `N` or the line does not end in it.
    #[inline(always)]
    fn field_near_end<W: Width>(w: W, buf: &[u8], pos: usize) -> Option<super::Field<'_>> {
        let base = buf.len().checked_sub(W::N)?;
        let (chunk, skip) = (&buf[base..], pos.checked_sub(base)?);
        let ctl = w.flagged::<CONTROL>(chunk) >> skip;
        let not_name = w.flagged::<NAME>(chunk) >> skip;
        let colon = not_name.trailing_zeros() as usize;
        if colon == 0 || ctl == 0 || buf.get(pos + colon) != Some(&b':') {
            return None;
        }
        let end = pos + ctl.trailing_zeros() as usize;
        if !crlf_at(buf, end) {
            return None;
        }
        field_of(buf.get(pos..end)?, colon, end + 2)
    }

    /// The request line if it has the shape almost every one has: a method
    /// of letters, digits and `-`, one space, an ASCII target shorter than
    /// `N` bytes, one space, `HTTP/1.1` or `HTTP/1.0`, `CRLF`; in two
    /// `N`-byte loads. Then exactly what the byte-exact scan finds (a unit
    /// test holds the two to that); `None` for any other shape, a partial
    /// line or a malformed one, which that scan then judges.
    #[inline(always)]
    pub(super) fn common_request_line<W: Width>(
        w: W,
        buf: &[u8],
    ) -> Option<(super::Line<'_>, usize)> {
        let Some(chunk) = buf.get(..W::N) else {
            return w.near_end_line(buf);
        };
        // `GET ` in one comparison; other methods by their letters.
        let method_end = if chunk[..4] == *b"GET " {
            3
        } else {
            let end = w.flagged::<NAME>(chunk).trailing_zeros() as usize;
            if end == 0 || chunk.get(end) != Some(&b' ') {
                return None;
            }
            end
        };
        let start = method_end + 1;
        let Some(chunk) = buf.get(start..start + W::N) else {
            return w.near_end_line(buf);
        };
        let [end, q, high] = w.masks_target(chunk);
        if end == 0 {
            return None;
        }
        let len = end.trailing_zeros() as usize;
        let before = (1u32 << len) - 1;
        let target_end = start + len;
        if len == 0 || high & before != 0 || buf[target_end] != b' ' {
            return None;
        }
        // As `version` does, without its partial case (one branch less).
        let version = buf.get(target_end + 1..target_end + 9)?;
        let minor = match u64::from_le_bytes(version.try_into().unwrap_or_default()) {
            super::HTTP_11 => 1,
            super::HTTP_10 => 0,
            _ => return None,
        };
        if !crlf_at(buf, target_end + 9) {
            return None;
        }
        let path_len = if q & before != 0 {
            (q & before).trailing_zeros() as usize
        } else {
            len
        };
        let line = super::Line {
            method: &buf[..method_end],
            target: &buf[start..target_end],
            path_len,
            minor,
        };
        Some((line, target_end + 11))
    }

    /// Whether `CRLF` is at `i`.
    #[inline(always)]
    fn crlf_at(buf: &[u8], i: usize) -> bool {
        buf.get(i..i + 2)
            .is_some_and(|b| u16::from_le_bytes([b[0], b[1]]) == u16::from_le_bytes(*b"\r\n"))
    }

    /// The request target's scan, 16 bytes at a time: its end, its first
    /// `?` and whether a byte above `0x7F` came before the end.
    #[inline]
    pub(super) fn target(buf: &[u8], start: usize) -> super::Target {
        let mut i = start;
        let mut query = buf.len();
        let mut high = 0;
        while let Some((chunk, skip)) = window::<W16>(buf, i) {
            let [end, q, hi] = W16.masks_target(chunk).map(|m| m >> skip);
            let before = if end != 0 {
                (1u32 << end.trailing_zeros()) - 1
            } else {
                u32::MAX
            };
            if query == buf.len() && q & before != 0 {
                query = i + (q & before).trailing_zeros() as usize;
            }
            high |= hi & before;
            if end != 0 {
                return super::Target {
                    end: i + end.trailing_zeros() as usize,
                    query,
                    non_ascii: high != 0,
                };
            }
            i += 16 - skip;
        }
        // Nothing left, or a buffer shorter than 16: byte by byte.
        let rest = super::scalar_target(buf, i);
        super::Target {
            end: rest.end,
            query: query.min(rest.query),
            non_ascii: high != 0 || rest.non_ascii,
        }
    }

    /// The 16 bytes of `chunk` as two little-endian words, for the SSE2
    /// functions (which take no slice: a slice would keep their loads
    /// from being folded into the caller's).
    #[inline(always)]
    fn halves(chunk: &[u8]) -> (u64, u64) {
        let word = |at: usize| u64::from_le_bytes(chunk[at..at + 8].try_into().unwrap_or_default());
        (word(0), word(8))
    }

    impl Width for W16 {
        const N: usize = 16;

        #[inline]
        fn flagged<const KIND: u8>(self, chunk: &[u8]) -> u32 {
            let (lo, hi) = halves(chunk);
            // SAFETY: SSE2 is enabled on every x86-64 target (it is part of
            // the architecture's baseline), which is all `flagged_sse2`
            // needs.
            unsafe { flagged_sse2::<KIND>(lo, hi) }
        }

        #[inline]
        fn masks_target(self, chunk: &[u8]) -> [u32; 3] {
            let (lo, hi) = halves(chunk);
            // SAFETY: SSE2 is enabled on every x86-64 target (see `flagged`).
            unsafe { masks_target_sse2(lo, hi) }
        }

        #[inline(always)]
        fn near_end_field(self, buf: &[u8], pos: usize) -> Option<super::Field<'_>> {
            field_near_end(self, buf, pos)
        }

        #[inline(always)]
        fn near_end_line(self, _: &[u8]) -> Option<(super::Line<'_>, usize)> {
            None
        }
    }

    impl Width for W32 {
        const N: usize = 32;

        #[inline]
        fn flagged<const KIND: u8>(self, chunk: &[u8]) -> u32 {
            let chunk = &chunk[..32];
            // SAFETY: a `W32` holds an `Avx2`, which exists only where the
            // CPU has AVX2; `chunk` holds the 32 bytes read.
            unsafe { flagged_avx2::<KIND>(chunk.as_ptr()) }
        }

        #[inline]
        fn masks_target(self, chunk: &[u8]) -> [u32; 3] {
            let chunk = &chunk[..32];
            // SAFETY: as in `flagged`.
            unsafe { masks_target_avx2(chunk.as_ptr()) }
        }

        #[inline(always)]
        fn near_end_field(self, buf: &[u8], pos: usize) -> Option<super::Field<'_>> {
            if buf.len() < 32 {
                return common_field(W16, buf, pos);
            }
            field_near_end(self, buf, pos)
        }

        #[inline(always)]
        fn near_end_line(self, buf: &[u8]) -> Option<(super::Line<'_>, usize)> {
            common_request_line(W16, buf)
        }
    }

    /// The byte classes of a vector `v`, written once for both widths:
    /// `$feature` names the instructions' CPU feature, `$all` masks a
    /// movemask to the width's bits, the rest are that width's intrinsics.
    macro_rules! classes {
        ($feature:literal, $vec:ty, $all:expr, $cmpeq:ident, $min:ident, $set1:ident,
         $or:ident, $andnot:ident, $sub:ident, $movemask:ident) => {
            /// For a target: the bytes that end it, `?`s, and bytes above
            /// `0x7F`.
            #[inline]
            #[target_feature(enable = $feature)]
            pub(super) fn target(v: $vec) -> [u32; 3] {
                let low = $cmpeq($min(v, $set1(0x20)), v);
                let end = $or(low, $cmpeq(v, $set1(0x7F)));
                let q = $cmpeq(v, $set1(b'?' as i8));
                [
                    $movemask(end) as u32,
                    $movemask(q) as u32,
                    $movemask(v) as u32,
                ]
            }

            /// A bit per byte that ends a `KIND` scan.
            #[inline]
            #[target_feature(enable = $feature)]
            pub(super) fn flagged<const KIND: u8>(v: $vec) -> u32 {
                // `x <= max` for unsigned bytes.
                let at_most = |x: $vec, max: u8| $cmpeq($min(x, $set1(max as i8)), x);
                let eq = |c: u8| $cmpeq(v, $set1(c as i8));
                let bad = match KIND {
                    super::VALUE => $or($andnot(eq(b'\t'), at_most(v, 0x1F)), eq(0x7F)),
                    super::CONTROL => $or(at_most(v, 0x1F), eq(0x7F)),
                    _ => {
                        // Letters (case folded), digits and `-` are fine.
                        let lower = $or(v, $set1(0x20));
                        let alpha = at_most($sub(lower, $set1(b'a' as i8)), 25);
                        let digit = at_most($sub(v, $set1(b'0' as i8)), 9);
                        let fine = $or($or(alpha, digit), eq(b'-'));
                        return !($movemask(fine) as u32) & $all;
                    }
                };
                $movemask(bad) as u32
            }
        };
    }

    /// The classes 16 bytes at a time.
    mod sse2 {
        use std::arch::x86_64::{
            __m128i, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8,
            _mm_or_si128, _mm_set1_epi8, _mm_sub_epi8,
        };
        classes!(
            "sse2",
            __m128i,
            0xFFFF,
            _mm_cmpeq_epi8,
            _mm_min_epu8,
            _mm_set1_epi8,
            _mm_or_si128,
            _mm_andnot_si128,
            _mm_sub_epi8,
            _mm_movemask_epi8
        );
    }

    /// The classes 32 bytes at a time.
    mod avx2 {
        use std::arch::x86_64::{
            __m256i, _mm256_andnot_si256, _mm256_cmpeq_epi8, _mm256_min_epu8, _mm256_movemask_epi8,
            _mm256_or_si256, _mm256_set1_epi8, _mm256_sub_epi8,
        };
        classes!(
            "avx2",
            __m256i,
            u32::MAX,
            _mm256_cmpeq_epi8,
            _mm256_min_epu8,
            _mm256_set1_epi8,
            _mm256_or_si256,
            _mm256_andnot_si256,
            _mm256_sub_epi8,
            _mm256_movemask_epi8
        );
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn masks_target_sse2(lo: u64, hi: u64) -> [u32; 3] {
        sse2::target(_mm_set_epi64x(hi as i64, lo as i64))
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn flagged_sse2<const KIND: u8>(lo: u64, hi: u64) -> u32 {
        sse2::flagged::<KIND>(_mm_set_epi64x(hi as i64, lo as i64))
    }

    /// [`masks_target_sse2`] for the 32 bytes at `at`.
    ///
    /// # Safety
    ///
    /// 32 bytes must be readable at `at`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn masks_target_avx2(at: *const u8) -> [u32; 3] {
        // SAFETY: the caller's.
        avx2::target(unsafe { _mm256_loadu_si256(at.cast()) })
    }

    /// [`flagged_sse2`] for the 32 bytes at `at`.
    ///
    /// # Safety
    ///
    /// 32 bytes must be readable at `at`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn flagged_avx2<const KIND: u8>(at: *const u8) -> u32 {
        // SAFETY: the caller's.
        avx2::flagged::<KIND>(unsafe { _mm256_loadu_si256(at.cast()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Scanned<'a> = Result<Scan<Line<'a>>, HeadError>;

    fn fields(buf: &[u8]) -> (Scanned<'_>, Vec<(String, String)>) {
        let mut seen = Vec::new();
        let r = scan(buf, 64, |n, v| {
            seen.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        });
        (r, seen)
    }

    #[test]
    fn a_whole_head() {
        let buf = b"\r\nGET /p?q HTTP/1.1\r\nHost: x\r\nAccept:  a b \t\r\nE:\r\n\r\nbody";
        let (r, seen) = fields(buf);
        assert_eq!(
            r,
            Ok(Scan::Complete {
                line: Line {
                    method: b"GET",
                    target: b"/p?q",
                    path_len: 2,
                    minor: 1
                },
                len: buf.len() - 4
            })
        );
        assert_eq!(
            seen,
            [("Host", "x"), ("Accept", "a b"), ("E", "")]
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn every_prefix_of_a_valid_head_is_partial() {
        let buf = b"PATCH /a/long/enough/target/to/take/two/chunks HTTP/1.0\nX-A: \x80value with obs-text and more than sixteen bytes\n\n";
        for n in 0..buf.len() {
            assert_eq!(fields(&buf[..n]).0, Ok(Scan::Partial), "prefix {n}");
        }
        assert!(matches!(fields(buf).0, Ok(Scan::Complete { .. })));
    }

    #[test]
    fn eq_lower_folds_case_and_nothing_else() {
        for (s, lower, eq) in [
            (&b"Content-Length"[..], &b"content-length"[..], true),
            (b"CONTENT-LENGTH", b"content-length", true),
            (b"content-lengtH", b"content-length", true),
            (b"content.length", b"content-length", false),
            (b"content-lengt", b"content-length", false),
            (b"Keep-Alive", b"keep-alive", true),
            (b"Keep_Alive", b"keep-alive", false),
            (b"HOST", b"host", true),
            (b"hosT", b"host", true),
            (b"h@st", b"host", false),
            (b"hos", b"host", false),
            (b"Close", b"close", true),
            (b"clOSE", b"close", true),
            (b"clos\x05", b"close", false),
            (b"\x03lose", b"close", false),
            (b"c|ose", b"close", false),
            (b"EXPECT", b"expect", true),
            (b"Expec\x14", b"expect", false),
            (b"Upgrade", b"upgrade", true),
            (b"Upgr\x01de", b"upgrade", false),
            (b"100-Continue", b"100-continue", true),
            (b"100-continu\x05", b"100-continue", false),
            (b"Transfer-Encoding", b"transfer-encoding", true),
            (b"Transfer-EncodinG", b"transfer-encoding", true),
            (b"Transfer-Encodin{", b"transfer-encoding", false),
        ] {
            assert_eq!(eq_lower(s, lower), eq, "{}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn malformations() {
        for (bad, why) in [
            (&b"GET  / HTTP/1.1\r\n\r\n"[..], HeadError::Malformed),
            (b"G@T / HTTP/1.1\r\n\r\n", HeadError::Malformed),
            (b"GET /\x7f HTTP/1.1\r\n\r\n", HeadError::Malformed),
            (b"GET /\xff HTTP/1.1\r\n\r\n", HeadError::Malformed),
            (b"GET / HTTP/1.2\r\n\r\n", HeadError::Version),
            (b"GET / HTTP/2", HeadError::Version),
            (b"GET / HTTP/1.1\rX", HeadError::Malformed),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", HeadError::Malformed),
            (b"GET / HTTP/1.1\r\n folded\r\n\r\n", HeadError::Malformed),
            (b"GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n", HeadError::Malformed),
            (b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", HeadError::Malformed),
        ] {
            assert_eq!(fields(bad).0, Err(why), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// A fast path (`fast`) against the exact scan (`exact`), their
    /// answers compared in `Debug` form (they borrow the line): on each of
    /// `common` it answers, and the same; on 200,000 mutants of `seed`
    /// (each byte replaced by one of `alphabet` about one time in four,
    /// then `shape`d with the round's random word), whenever it answers,
    /// the exact scan answers the same, and it answers more than 1,000.
    #[cfg(target_arch = "x86_64")]
    fn agrees(
        common: &[&[u8]],
        (seed, alphabet, mut rng): (&[u8], &[u8], u64),
        shape: impl Fn(&mut Vec<u8>, u64),
        fast: impl Fn(&[u8]) -> Option<String>,
        exact: impl Fn(&[u8]) -> Result<Option<String>, HeadError>,
    ) {
        for &line in common {
            let f = fast(line);
            assert!(f.is_some(), "{}", String::from_utf8_lossy(line));
            assert_eq!(Ok(f), exact(line));
        }
        let mut taken = 0;
        for _ in 0..200_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut line = seed.to_vec();
            let mut r = rng;
            for b in &mut line {
                if r.is_multiple_of(4) {
                    *b = alphabet[(r >> 2) as usize % alphabet.len()];
                }
                r = r.rotate_right(5) ^ 0x9e37_79b9;
            }
            shape(&mut line, rng);
            if let Some(f) = fast(&line) {
                taken += 1;
                assert_eq!(
                    exact(&line),
                    Ok(Some(f)),
                    "{}",
                    String::from_utf8_lossy(&line)
                );
            }
        }
        assert!(taken > 1_000, "the fast path took {taken} lines");
    }

    /// A field judged by `lanes`' fast path, in `Debug` form, after `pad`
    /// (bytes of earlier lines: with them, a line near the buffer's end
    /// takes the near-end path).
    #[cfg(target_arch = "x86_64")]
    fn common_field(lanes: impl Lanes, pad: &[u8], line: &[u8]) -> Option<String> {
        let buf = [pad, line].concat();
        lanes
            .common_field(&buf, pad.len())
            .map(|f| format!("{f:?}"))
    }

    /// A field judged by the exact scan, in `Debug` form, after `pad`.
    #[cfg(target_arch = "x86_64")]
    fn exact_field(pad: &[u8], line: &[u8]) -> Result<Option<String>, HeadError> {
        let buf = [pad, line].concat();
        header_field(&buf, pad.len()).map(|f| f.map(|f| format!("{f:?}")))
    }

    /// What comes before the field judged: nothing, or a line of 40 bytes.
    #[cfg(target_arch = "x86_64")]
    const PADS: [&[u8]; 2] = [b"", b"X-Pad: 0123456789abcdef0123456789abcd\r\n"];

    /// The common fields (each in a buffer of at least 32 bytes, which
    /// the 32-byte lanes need to judge the last field of a head).
    const COMMON_FIELDS: [&[u8]; 5] = [
        b"Host: localhost\r\n\r\nGET / HTTP/1.1\r\n",
        b"Accept: text/plain,text/html;q=0.9,application/xhtml+xml;q=0.9\r\n\r\n",
        b"Connection: keep-alive\r\n\r\n\r\n\r\n\r\n",
        b"Content-Length:12\r\n\r\n0123456789ab",
        b"X-Empty: \r\nHost: x\r\n\r\nGET / HTTP",
    ];

    /// Bytes that matter to a field's scan, for mutations.
    const FIELD_BYTES: &[u8] = b"aZ9-_:: \t\r\n\x01\x7f\x80x";

    /// Mutants of a field seed: a longer value, then up to two line ends.
    #[cfg(target_arch = "x86_64")]
    fn field_shape(line: &mut Vec<u8>, rng: u64) {
        line.extend(std::iter::repeat_n(b'v', (rng >> 40) as usize % 48));
        line.extend_from_slice(&b"\r\n\r\n"[..(rng >> 50) as usize % 5]);
    }

    /// The common-shape field path finds exactly what the byte-exact scan
    /// finds, on lines made of the bytes that matter to either, and takes
    /// the lines it is for: 16 bytes at a time, and 32 where the CPU has
    /// AVX2 (also on names of 16 to 31 bytes, which only it takes).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_common_field_path_agrees_with_the_exact_scan() {
        let seed = (&b"Name: value \r\n"[..], FIELD_BYTES, 0x2545_f491_4f6c_dd1d);
        let avx2 = Avx2::detect();
        if avx2.is_none() {
            eprintln!("this CPU has no AVX2: its lanes were not checked");
        }
        for pad in PADS {
            let exact = |l: &[u8]| exact_field(pad, l);
            agrees(
                &COMMON_FIELDS,
                seed,
                field_shape,
                |l| common_field(Baseline, pad, l),
                exact,
            );
            let Some(avx2) = avx2 else { continue };
            agrees(
                &COMMON_FIELDS,
                seed,
                field_shape,
                |l| common_field(avx2, pad, l),
                exact,
            );
            let long = b"Upgrade-Insecure-Requests: 1 \r\n";
            agrees(
                &[b"Upgrade-Insecure-Requests: 1\r\nHost: x\r\n\r\n"],
                // More name bytes: a long name survives mutation more often.
                (
                    &long[..],
                    b"aZ9-aZ9-aZ9-_:: \t\r\n\x01\x7f\x80x",
                    0x51_7cc1_b727_220a,
                ),
                field_shape,
                |l| common_field(avx2, pad, l),
                exact,
            );
        }
    }

    /// A request line judged by `lanes`' fast path, in `Debug` form.
    #[cfg(target_arch = "x86_64")]
    fn common_line(lanes: impl Lanes, line: &[u8]) -> Option<String> {
        lanes.common_request_line(line).map(|l| format!("{l:?}"))
    }

    /// A request line judged by the exact scan, in `Debug` form.
    #[cfg(target_arch = "x86_64")]
    fn exact_line(line: &[u8]) -> Result<Option<String>, HeadError> {
        exact_request_line(line).map(|l| l.map(|l| format!("{l:?}")))
    }

    /// The common request lines (in buffers of at least 36 bytes).
    const COMMON_LINES: [&[u8]; 3] = [
        b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /a?b=c HTTP/1.0\r\n\r\n0123456789abcdef",
        b"M-SEARCH * HTTP/1.1\r\n\r\n0123456789abcdef",
    ];

    /// Bytes that matter to a request line's scan, for mutations.
    const LINE_BYTES: &[u8] = b"aZ9-_/?  \t\r\n\x01\x7f\x80\xc3\xa9H.1";

    /// The common-shape request line agrees with the exact scan the same
    /// way (mutants of the line, the rest of the head after it, cut short
    /// by up to 15 bytes).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_common_request_line_agrees_with_the_exact_scan() {
        let seed = b"GET /abc?d HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        let shape = |line: &mut Vec<u8>, rng: u64| {
            line.extend_from_slice(&seed[22..]);
            line.truncate(line.len() - (rng >> 58) as usize % 16);
        };
        let mutate = (&seed[..22], LINE_BYTES, 0x9e37_79b9_7f4a_7c15);
        agrees(
            &COMMON_LINES,
            mutate,
            shape,
            |l| common_line(Baseline, l),
            exact_line,
        );
        let Some(avx2) = Avx2::detect() else {
            eprintln!("this CPU has no AVX2: its lanes were not checked");
            return;
        };
        agrees(
            &COMMON_LINES,
            mutate,
            shape,
            |l| common_line(avx2, l),
            exact_line,
        );
        // Targets of 16 to 31 bytes, which only the 32-byte lanes take.
        let seed = b"GET /a/longer/target?q=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        agrees(
            &[b"GET /a/longer/target?q=1 HTTP/1.1\r\nHost: x\r\n\r\n"],
            (&seed[..25], LINE_BYTES, 0x2f1e_c3b4_a596_8778),
            |line, rng| {
                line.extend_from_slice(&seed[25..]);
                line.truncate(line.len() - (rng >> 58) as usize % 16);
            },
            |l| common_line(avx2, l),
            exact_line,
        );
    }

    #[test]
    fn the_field_after_the_limit_is_an_error_once_complete() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..3 {
            buf.extend_from_slice(b"A: b\r\n");
        }
        assert_eq!(scan(&buf, 2, |_, _| {}), Err(HeadError::TooManyFields));
        assert_eq!(scan(&buf[..buf.len() - 1], 2, |_, _| {}), Ok(Scan::Partial));
    }
}
