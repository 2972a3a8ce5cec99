//! Per-worker buffer pool, and the connection input and output buffers.
//!
//! A connection holds a buffer only while bytes are in flight: a connection
//! with no unconsumed input reads into the pool's scratch buffer, and takes
//! a buffer of its own only for what the handler leaves there (a message
//! still arriving); the output buffer is taken when the handler writes and
//! returned as soon as it is flushed. An idle keep-alive connection
//! therefore holds no buffer.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Most slices handed to one `writev(2)`.
const MAX_IOVECS: usize = 64;

/// A worker's free list of equally sized byte buffers.
///
/// `take` and `give` are on every request's path (a connection takes its
/// buffers when bytes arrive and gives them back once they are handled),
/// so they only pop and push: how many buffers are lent out is derived
/// from counts kept on the slow paths (allocating, dropping), and whether
/// the free list stayed over its bound is sampled at ticks.
#[derive(Debug)]
pub struct BufferPool {
    free: Vec<Vec<u8>>,
    buf_size: usize,
    max_idle: usize,
    trim_after: Duration,
    /// Since when the free list has been seen holding more than `max_idle`
    /// buffers (sampled by [`trim_due`](Self::trim_due)).
    over_since: Option<Instant>,
    /// Buffers this pool allocated and has not let go of since (whether
    /// lent out or on the free list), the scratch buffer aside: handing it
    /// over to a connection takes a counted buffer in its place.
    owned: usize,
    /// What a connection holding no input reads into (see
    /// [`scratch`](Self::scratch)): empty between reads.
    scratch: Vec<u8>,
    /// The free buffer given back last (no capacity if none), in front of
    /// `free`: a reply takes its output buffer and gives it back once
    /// flushed, and one slot makes that a move each way, without the free
    /// list's length and capacity bookkeeping.
    hot: Vec<u8>,
}

impl BufferPool {
    /// A pool of `buf_size` buffers keeping at most `max_idle` idle ones
    /// beyond `trim_after`.
    pub fn new(buf_size: usize, max_idle: usize, trim_after: Duration) -> Self {
        BufferPool {
            free: Vec::new(),
            buf_size: buf_size.max(64),
            max_idle,
            trim_after,
            over_since: None,
            owned: 0,
            scratch: Vec::new(),
            hot: Vec::new(),
        }
    }

    /// The buffer a connection that holds no input reads into, empty and
    /// with the pool's buffer size of capacity. Its bytes go to the handler
    /// from here, and only what the handler leaves moves into a buffer of
    /// the connection's own ([`keep_scratch`](Self::keep_scratch)): a
    /// request read whole and answered costs no buffer taken and given
    /// back. It must be left empty (by the caller, once the handler is
    /// done) before the next connection reads.
    #[inline]
    pub(crate) fn scratch(&mut self) -> &mut Vec<u8> {
        debug_assert!(self.scratch.is_empty(), "scratch input left behind");
        if self.scratch.capacity() == 0 {
            self.scratch = Vec::with_capacity(self.buf_size);
        }
        &mut self.scratch
    }

    /// The scratch buffer's bytes, as read.
    #[inline]
    pub(crate) fn scratch_bytes(&self) -> &[u8] {
        &self.scratch
    }

    /// Empties the scratch buffer: its bytes are not wanted (the
    /// connection is closing).
    #[inline]
    pub(crate) fn clear_scratch(&mut self) {
        self.scratch.clear();
    }

    /// The handler consumed `consumed` of the scratch buffer's bytes: when
    /// some are left, the scratch buffer, holding them, becomes the
    /// connection's own (a pooled buffer replaces it) and is returned for
    /// the caller to drop the consumed ones from; else it is emptied and
    /// `None` returned.
    #[inline]
    pub(crate) fn keep_scratch(&mut self, consumed: usize) -> Option<Vec<u8>> {
        if consumed >= self.scratch.len() {
            self.clear_scratch();
            return None;
        }
        let fresh = self.take();
        Some(std::mem::replace(&mut self.scratch, fresh))
    }

    /// An empty buffer with at least the pool's buffer size of capacity.
    #[inline]
    pub fn take(&mut self) -> Vec<u8> {
        if self.hot.capacity() != 0 {
            return std::mem::take(&mut self.hot);
        }
        match self.free.pop() {
            Some(buf) => buf,
            None => {
                self.owned += 1;
                Vec::with_capacity(self.buf_size)
            }
        }
    }

    /// Returns a buffer taken with [`take`](Self::take). A buffer that grew past
    /// twice the pool size goes back to the allocator instead of being kept.
    #[inline]
    pub fn give(&mut self, mut buf: Vec<u8>) {
        // Almost every buffer comes back as it was made: one comparison.
        let cap = buf.capacity();
        if cap != self.buf_size && (cap < self.buf_size || cap > 2 * self.buf_size) {
            self.owned = self.owned.saturating_sub(1);
            return;
        }
        buf.clear();
        if self.hot.capacity() == 0 {
            self.hot = buf;
        } else {
            self.free.push(buf);
        }
    }

    /// Whether a trim pass is due: the free list has been over its bound
    /// at every sample (each call) for at least the trim period. Called
    /// once per tick, so a dip under the bound between two ticks goes
    /// unseen: the excess is then freed up to a tick early, never kept
    /// longer.
    pub fn trim_due(&mut self, now: Instant) -> bool {
        if self.idle() <= self.max_idle {
            self.over_since = None;
            return false;
        }
        let since = *self.over_since.get_or_insert(now);
        now.saturating_duration_since(since) >= self.trim_after
    }

    /// Frees idle buffers down to the bound. Returns how many were freed.
    pub fn trim(&mut self) -> usize {
        let freed = self.idle().saturating_sub(self.max_idle);
        if self.max_idle == 0 {
            self.hot = Vec::new();
        }
        self.free
            .truncate(self.max_idle.saturating_sub(self.hot_idle()));
        self.free.shrink_to_fit();
        self.over_since = None;
        self.owned = self.owned.saturating_sub(freed);
        freed
    }

    /// Buffers on the free list.
    pub fn idle(&self) -> usize {
        self.free.len() + self.hot_idle()
    }

    /// Whether the hot slot holds a free buffer (1) or not (0).
    fn hot_idle(&self) -> usize {
        usize::from(self.hot.capacity() != 0)
    }

    /// Buffers currently lent to connections.
    pub fn outstanding(&self) -> usize {
        self.owned.saturating_sub(self.idle())
    }
}

/// The unconsumed bytes a connection has received, handed to
/// [`Handler::on_data`](crate::Handler::on_data).
///
/// The handler consumes whole messages with [`consume`](Input::consume); what
/// it leaves is kept and presented again, with more bytes appended, on the
/// next call.
#[derive(Debug)]
pub struct Input<'a> {
    bytes: &'a [u8],
    consumed: usize,
    peer_closed: bool,
    draining: bool,
    /// The TLS session, on a TLS connection.
    #[cfg(feature = "tls")]
    tls: Option<&'a rustls::ServerConnection>,
}

/// What a TLS connection's handshake settled (feature `tls`), as a handler
/// sees it in [`Input::tls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo<'a> {
    /// The application protocol agreed with ALPN (`h2`, `http/1.1`), if any.
    pub alpn: Option<&'a [u8]>,
    /// The server name the client asked for (SNI), if it sent one.
    pub server_name: Option<&'a str>,
}

impl<'a> Input<'a> {
    /// Input over `bytes`, as the worker builds it for
    /// [`Handler::on_data`](crate::Handler::on_data). Public so handlers can be
    /// driven directly in unit tests, benches and fuzzers.
    #[must_use]
    pub fn new(bytes: &'a [u8], peer_closed: bool, draining: bool) -> Self {
        Input {
            bytes,
            consumed: 0,
            peer_closed,
            draining,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The same input, on a TLS connection.
    #[cfg(feature = "tls")]
    pub(crate) fn with_tls(mut self, tls: Option<&'a rustls::ServerConnection>) -> Self {
        self.tls = tls;
        self
    }

    /// On a TLS connection, what its handshake settled (ALPN, SNI); `None`
    /// on a plain one.
    #[must_use]
    pub fn tls(&self) -> Option<TlsInfo<'a>> {
        #[cfg(feature = "tls")]
        if let Some(conn) = self.tls {
            return Some(TlsInfo {
                alpn: conn.alpn_protocol(),
                server_name: conn.server_name(),
            });
        }
        None
    }

    /// The bytes not consumed yet.
    #[must_use]
    pub fn bytes(&self) -> &'a [u8] {
        &self.bytes[self.consumed..]
    }

    /// Marks the first `n` unconsumed bytes as handled.
    ///
    /// # Panics
    ///
    /// Panics if `n` is more than [`bytes`](Input::bytes) holds.
    pub fn consume(&mut self, n: usize) {
        assert!(
            n <= self.bytes.len() - self.consumed,
            "consumed past the end of the input"
        );
        self.consumed += n;
    }

    /// Bytes consumed during this call.
    #[must_use]
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Whether the peer has shut down its sending side: no more bytes will
    /// follow these.
    #[must_use]
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether the server is shutting down gracefully. Protocols that can say
    /// so (HTTP's `Connection: close`) should tell the peer not to send more.
    #[must_use]
    pub fn draining(&self) -> bool {
        self.draining
    }
}

/// Bytes queued for a connection, flushed by the worker with one `write(2)`,
/// or one `writev(2)` when the output is split into several pieces.
///
/// Small replies are copied into a pooled buffer with
/// [`extend_from_slice`](Output::extend_from_slice) (or `write!` through
/// [`io::Write`]); large or shared payloads are queued without copying with
/// [`push_bytes`](Output::push_bytes).
#[derive(Debug, Default)]
pub struct Output {
    /// Inline bytes; `buf[pos..]` is not written yet.
    buf: Vec<u8>,
    pos: usize,
    /// When shared chunks are queued: the order of inline runs and chunks.
    /// The inline run after the last segment (`buf[last_end..]`) is implicit.
    segs: VecDeque<Segment>,
    /// Bytes of the front shared chunk already written.
    chunk_pos: usize,
    pending: usize,
}

/// Appends `bytes` (33 to 256 of them) to `buf`, which has room for them,
/// 32 bytes at a time: the whole chunks, then the last 32 bytes, which
/// overlap what was copied. Inlined, the copies are a few vector moves
/// (what `memcpy` does for these sizes, less its call and its dispatch on
/// the size).
#[inline(always)]
fn copy_small(buf: &mut Vec<u8>, bytes: &[u8]) {
    const CHUNK: usize = 32;
    let n = bytes.len();
    assert!((CHUNK + 1..=8 * CHUNK).contains(&n) && buf.capacity() - buf.len() >= n);
    let len = buf.len();
    let dst = buf.as_mut_ptr().wrapping_add(len);
    let copy = |at: usize| {
        // Within `bytes` for every `at` below: a checked read.
        let Some(chunk) = bytes.get(at..).and_then(<[u8]>::first_chunk::<CHUNK>) else {
            return;
        };
        // SAFETY: `at` is at most `n - CHUNK`, so the write is inside the
        // `n` bytes of capacity `buf` has past `len` (asserted above);
        // unaligned, as a byte buffer is.
        unsafe { std::ptr::write_unaligned(dst.wrapping_add(at).cast::<[u8; CHUNK]>(), *chunk) };
    };
    // The whole chunks before the last one, then the last one. A fixed
    // count of tests, which the compiler unrolls: a loop that ends where
    // the last chunk begins it turns back into a call to `memcpy` (+34
    // instructions per plain request, measured).
    let last = n - CHUNK;
    copy(0);
    for k in 1..7 {
        if last > k * CHUNK {
            copy(k * CHUNK);
        }
    }
    copy(last);
    // SAFETY: the `n` bytes after `len` were all written above, inside
    // the capacity.
    unsafe { buf.set_len(len + n) };
}

#[derive(Debug)]
enum Segment {
    /// Inline bytes up to this offset of `buf`.
    Inline(usize),
    Shared(Bytes),
}

impl Output {
    /// Appends bytes, copying them. A reply of 33 to 256 bytes (most are)
    /// is copied inline where the buffer has room for it, 32 bytes at a
    /// time with the last 32 overlapping, no call to `memcpy`.
    #[inline(always)]
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        if (33..=256).contains(&n) && self.buf.capacity() - self.buf.len() >= n {
            copy_small(&mut self.buf, bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
        self.pending += n;
    }

    /// Queues a shared or static chunk without copying it.
    pub fn push_bytes(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.pending += chunk.len();
        self.segs.push_back(Segment::Inline(self.buf.len()));
        self.segs.push_back(Segment::Shared(chunk));
    }

    /// Bytes queued and not written yet.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pending
    }

    /// Whether nothing is waiting to be written.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Drops everything queued and not yet written.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.segs.clear();
        self.chunk_pos = 0;
        self.pending = 0;
    }

    /// The queued bytes, copied out in order (for tests and inspection; the
    /// worker writes them without copying).
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending);
        let mut start = self.pos;
        for (i, seg) in self.segs.iter().enumerate() {
            match seg {
                Segment::Inline(end) => {
                    if *end > start {
                        out.extend_from_slice(&self.buf[start..*end]);
                    }
                    start = start.max(*end);
                }
                Segment::Shared(b) => {
                    out.extend_from_slice(&b[if i == 0 { self.chunk_pos } else { 0 }..]);
                }
            }
        }
        if self.buf.len() > start {
            out.extend_from_slice(&self.buf[start..]);
        }
        out
    }

    /// Makes sure the inline buffer can take `additional` more bytes.
    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    pub(crate) fn has_buffer(&self) -> bool {
        self.buf.capacity() != 0
    }

    /// Gives the output a buffer to append to; it holds none (see
    /// [`has_buffer`](Self::has_buffer)), so nothing is dropped, and its
    /// `pos` is 0 (as [`take_buffer`](Self::take_buffer) leaves it).
    #[inline]
    pub(crate) fn set_buffer(&mut self, buf: Vec<u8>) {
        debug_assert!(self.buf.capacity() == 0 && self.pending == 0 && self.pos == 0);
        // The buffer replaced has no capacity: forgetting it frees nothing
        // and spares a test of it (which `self.buf = buf` makes).
        std::mem::forget(std::mem::replace(&mut self.buf, buf));
    }

    /// Takes the (empty) inline buffer back out, for the pool.
    pub(crate) fn take_buffer(&mut self) -> Option<Vec<u8>> {
        debug_assert_eq!(self.pending, 0);
        if self.buf.capacity() == 0 {
            return None;
        }
        self.pos = 0;
        Some(std::mem::take(&mut self.buf))
    }

    /// Drops whatever is unwritten and takes the buffer out, for the pool.
    pub(crate) fn discard(&mut self) -> Option<Vec<u8>> {
        self.clear();
        self.take_buffer()
    }

    /// The unwritten bytes, in order, as at most [`MAX_IOVECS`] slices.
    fn slices<'s>(&'s self, out: &mut [IoSlice<'s>; MAX_IOVECS]) -> usize {
        let mut n = 0;
        let mut start = self.pos;
        for (i, seg) in self.segs.iter().enumerate() {
            if n == MAX_IOVECS {
                return n;
            }
            match seg {
                Segment::Inline(end) => {
                    if *end > start {
                        out[n] = IoSlice::new(&self.buf[start..*end]);
                        n += 1;
                    }
                    start = start.max(*end);
                }
                Segment::Shared(b) => {
                    // Only the front chunk can be partly written (`advance`
                    // pops written inline markers before it).
                    let from = if i == 0 { self.chunk_pos } else { 0 };
                    out[n] = IoSlice::new(&b[from..]);
                    n += 1;
                }
            }
        }
        if n < MAX_IOVECS && self.buf.len() > start {
            out[n] = IoSlice::new(&self.buf[start..]);
            n += 1;
        }
        n
    }

    /// The unwritten bytes when they are one inline piece (no shared chunk
    /// queued): what one `send(2)` writes whole in the common case.
    #[inline(always)]
    pub(crate) fn inline_unwritten(&self) -> Option<&[u8]> {
        if !self.segs.is_empty() {
            return None;
        }
        self.buf.get(self.pos..)
    }

    /// All of [`inline_unwritten`](Self::inline_unwritten) was written.
    #[inline(always)]
    pub(crate) fn inline_written(&mut self) {
        debug_assert!(self.segs.is_empty() && self.pending == self.buf.len() - self.pos);
        self.buf.clear();
        self.pos = 0;
        self.pending = 0;
    }

    /// Records that `n` bytes were written (by the caller, not through
    /// [`flush_to`](Self::flush_to)).
    pub(crate) fn written(&mut self, n: usize) {
        self.advance(n);
    }

    /// Records that `n` bytes were written. All inline (the common case),
    /// in place; across shared segments, [`advance_segments`](Self::advance_segments).
    #[inline]
    fn advance(&mut self, n: usize) {
        if !self.segs.is_empty() {
            return self.advance_segments(n);
        }
        self.pending -= n;
        self.pos += n;
        if self.pending == 0 {
            self.buf.clear();
            self.pos = 0;
        } else {
            self.compact();
        }
    }

    /// [`advance`](Self::advance) with shared segments queued.
    #[inline(never)]
    fn advance_segments(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            match self.segs.front() {
                Some(Segment::Inline(end)) => {
                    let take = n.min(end.saturating_sub(self.pos));
                    self.pos += take;
                    n -= take;
                    if self.pos >= *end {
                        self.segs.pop_front();
                    }
                }
                Some(Segment::Shared(b)) => {
                    let take = n.min(b.len() - self.chunk_pos);
                    self.chunk_pos += take;
                    n -= take;
                    if self.chunk_pos == b.len() {
                        self.segs.pop_front();
                        self.chunk_pos = 0;
                    }
                }
                None => {
                    self.pos += n;
                    n = 0;
                }
            }
        }
        // Drop inline markers that are now fully written.
        while let Some(Segment::Inline(end)) = self.segs.front() {
            if *end > self.pos {
                break;
            }
            self.segs.pop_front();
        }
        if self.pending == 0 {
            self.buf.clear();
            self.pos = 0;
            self.segs.clear();
        } else if self.segs.is_empty() {
            self.compact();
        }
    }

    /// Keeps the unwritten tail at the front so the buffer does not creep.
    fn compact(&mut self) {
        if self.pos > self.buf.len() / 2 && self.pos >= 4096 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Writes as much as the sink takes, with one call per round, until
    /// everything is written or the sink would block. Returns bytes written.
    ///
    /// # Errors
    ///
    /// Any error of the sink other than `WouldBlock` and `Interrupted`.
    pub(crate) fn flush_to(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut total = 0;
        while self.pending > 0 {
            let written = if self.segs.is_empty() {
                // The common case, all inline: one slice, no vector to fill.
                write(&[IoSlice::new(&self.buf[self.pos..])])
            } else {
                let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
                let cnt = self.slices(&mut iov);
                write(&iov[..cnt])
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    total += n;
                    self.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

impl io::Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `limit` bytes per call, then would block
    /// after `calls` calls.
    fn drain(out: &mut Output, limit: usize, calls: usize) -> (Vec<u8>, usize) {
        let mut got = Vec::new();
        let mut n = 0;
        let mut syscalls = 0;
        let res = out.flush_to(|iov| {
            if n == calls {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            n += 1;
            syscalls += 1;
            let mut left = limit;
            for s in iov {
                let take = s.len().min(left);
                got.extend_from_slice(&s[..take]);
                left -= take;
            }
            Ok(limit - left)
        });
        res.unwrap();
        (got, syscalls)
    }

    #[test]
    fn inline_and_shared_pieces_keep_their_order_through_partial_writes() {
        let mut expect = Vec::new();
        let mut out = Output::default();
        for i in 0..20u8 {
            let inline = vec![i; (i as usize * 7) % 13 + 1];
            out.extend_from_slice(&inline);
            expect.extend_from_slice(&inline);
            if i % 3 == 0 {
                let chunk = Bytes::from(vec![100 + i; 17]);
                expect.extend_from_slice(&chunk);
                out.push_bytes(chunk);
            }
        }
        assert_eq!(out.len(), expect.len());
        let mut got = Vec::new();
        for limit in [1, 5, 16, 3, 1000] {
            let (part, _) = drain(&mut out, limit, 3);
            got.extend(part);
        }
        assert_eq!(got, expect);
        assert!(out.is_empty());
        assert!(out.segs.is_empty());
    }

    /// Every length, inline (33 to 256 bytes with room) or not, after
    /// every prefix length around a chunk: the bytes appended are the
    /// bytes given, in order, and nothing else moves.
    #[test]
    fn appended_bytes_arrive_whole_at_every_length() {
        let source: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for prefix in [0, 1, 31, 32, 33, 100] {
            for n in 0..=300 {
                for room in [0, n, n + 40] {
                    let mut out = Output::default();
                    out.set_buffer(Vec::with_capacity(prefix + room));
                    out.extend_from_slice(&source[..prefix]);
                    out.extend_from_slice(&source[source.len() - n..]);
                    let want = [&source[..prefix], &source[source.len() - n..]].concat();
                    assert_eq!(
                        out.to_vec(),
                        want,
                        "prefix {prefix}, {n} bytes, room {room}"
                    );
                    assert_eq!(out.len(), prefix + n);
                }
            }
        }
    }

    #[test]
    fn one_write_when_the_sink_takes_everything() {
        let mut out = Output::default();
        out.extend_from_slice(b"a");
        out.push_bytes(Bytes::from_static(b"bcd"));
        out.extend_from_slice(b"ef");
        assert_eq!(out.to_vec(), b"abcdef");
        let (got, syscalls) = drain(&mut out, 1 << 20, 100);
        assert_eq!(got, b"abcdef");
        assert_eq!(syscalls, 1);
    }

    #[test]
    fn appending_after_a_partial_write_continues_in_order() {
        let mut out = Output::default();
        out.extend_from_slice(b"hello ");
        out.push_bytes(Bytes::from_static(b"big "));
        let (first, _) = drain(&mut out, 8, 1);
        assert_eq!(first, b"hello bi");
        out.extend_from_slice(b"world");
        let (rest, _) = drain(&mut out, 100, 10);
        assert_eq!(rest, b"g world");
    }

    #[test]
    fn the_buffer_given_back_last_is_taken_first_and_trimmed_like_the_rest() {
        let mut pool = BufferPool::new(4096, 0, Duration::ZERO);
        let (mut a, b) = (pool.take(), pool.take());
        a.extend_from_slice(b"left");
        let a_ptr = a.as_ptr();
        pool.give(a);
        pool.give(b);
        assert_eq!((pool.idle(), pool.outstanding()), (2, 0));
        let again = pool.take();
        assert_eq!(again.as_ptr(), a_ptr, "the hot buffer first");
        assert!(again.is_empty(), "given back cleared");
        pool.give(again);
        assert!(pool.trim_due(Instant::now()));
        assert_eq!(pool.trim(), 2);
        assert_eq!((pool.idle(), pool.outstanding()), (0, 0));
    }

    #[test]
    fn pool_reuses_and_trims() {
        let t0 = Instant::now();
        let mut pool = BufferPool::new(4096, 2, Duration::from_secs(1));
        let bufs: Vec<_> = (0..5).map(|_| pool.take()).collect();
        assert_eq!(pool.outstanding(), 5);
        for b in bufs {
            pool.give(b);
        }
        assert_eq!(pool.idle(), 5);
        assert_eq!(pool.outstanding(), 0);
        assert!(!pool.trim_due(t0));
        assert!(pool.trim_due(t0 + Duration::from_secs(1)));
        assert_eq!(pool.trim(), 3);
        assert_eq!(pool.idle(), 2);
        let b = pool.take();
        assert!(b.capacity() >= 4096 && b.is_empty());
        assert_eq!(pool.outstanding(), 1);
        pool.give(b);
        assert_eq!(pool.outstanding(), 0);
    }

    /// Over the bound at one tick, under it at the next: the period
    /// starts again.
    #[test]
    fn a_dip_under_the_bound_restarts_the_trim_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut pool = BufferPool::new(4096, 1, s);
        let bufs: Vec<_> = (0..3).map(|_| pool.take()).collect();
        for b in bufs {
            pool.give(b);
        }
        assert!(!pool.trim_due(t0));
        let (a, b) = (pool.take(), pool.take());
        assert!(
            !pool.trim_due(t0 + s),
            "one idle buffer is within the bound"
        );
        pool.give(a);
        pool.give(b);
        assert!(
            !pool.trim_due(t0 + 2 * s),
            "over again: a new period starts"
        );
        assert!(pool.trim_due(t0 + 3 * s));
        assert_eq!(pool.trim(), 2);
        assert_eq!((pool.idle(), pool.outstanding()), (1, 0));
    }

    /// Bytes read into the scratch buffer: all consumed, nothing moves;
    /// some left, the scratch buffer (with them) becomes the connection's
    /// and a pooled one replaces it, and the counts see one lent buffer.
    #[test]
    fn the_scratch_buffer_is_kept_only_for_what_the_handler_leaves() {
        let mut pool = BufferPool::new(4096, 8, Duration::from_secs(1));
        pool.scratch().extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(pool.keep_scratch(18), None);
        assert!(pool.scratch_bytes().is_empty());
        assert_eq!((pool.idle(), pool.outstanding()), (0, 0));

        pool.scratch()
            .extend_from_slice(b"GET / HTTP/1.1\r\n\r\nGET /");
        let kept = pool.keep_scratch(18).expect("5 bytes were left");
        assert_eq!(&kept[18..], b"GET /");
        assert!(pool.scratch().is_empty() && pool.scratch().capacity() >= 4096);
        assert_eq!(pool.outstanding(), 1);
        pool.give(kept);
        assert_eq!((pool.idle(), pool.outstanding()), (1, 0));
    }

    #[test]
    fn oversized_buffers_go_back_to_the_allocator() {
        let mut pool = BufferPool::new(4096, 8, Duration::from_secs(1));
        let mut b = pool.take();
        b.reserve(1 << 20);
        pool.give(b);
        assert_eq!(pool.idle(), 0);
        assert_eq!(pool.outstanding(), 0);
    }
}
