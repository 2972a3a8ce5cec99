//! A connection: its state machine, its buffers, and the token that names it.
//!
//! A connection moves through one [`Phase`]:
//!
//! ```text
//!   Connecting ──(established)──▶ Open          (a connection the worker opened)
//!            read 0 (peer's FIN)
//!   Open ─────────────────────────▶ PeerClosed ──▶ closed (peer_closed) once flushed
//!    │  handler: Action::Close
//!    ▼
//!   Closing { reason, linger } ──▶ closed (reason) once flushed, or, with linger:
//!                                  Lingering: FIN sent, input discarded until the
//!                                  peer's FIN or the linger deadline
//! ```
//!
//! Beside the phase it tracks whether the socket may hold unread bytes
//! ([`Readable`], the edge-triggered contract) and where the current message
//! is ([`Activity`], which picks the header or idle deadline). The worker
//! reports events and asks the connection what to do; it never flips the
//! connection's state itself.
//!
//! Nothing after [`Phase::Open`] depends on how the socket came to be: an
//! accepted connection starts there with [`Activity::New`] (the peer speaks
//! first: the header timeout runs), and a connection the worker opened
//! starts in [`Phase::Connecting`] (bytes written to it wait; the connect
//! deadline runs), then goes to [`Phase::Open`] with [`Activity::Idle`]
//! (we speak first: the idle timeout runs until the peer's first byte).

mod connect;
mod deadline;
#[cfg(feature = "tls")]
mod tls;
mod token;
mod writable;

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use mio::net::TcpStream;

use crate::buffer::{BufferPool, Input, Output};
use crate::handler::{Action, CloseReason};
use crate::metrics::Counters;
use crate::options::ServerOptions;
use crate::panic;
use crate::probes;
use crate::sys;
use crate::timer::{Tick, TimerWheel};
use deadline::Rule;

pub use token::ConnToken;

/// Where a connection is in its life.
///
/// `repr(u8)`: the phase is tested several times per request, and a tag
/// byte makes each test one comparison. Without it the compiler hides the
/// tag in `Connecting`'s `Instant` (its nanoseconds past 999,999,999), and
/// every test decodes it first (~5 instructions each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// A connect is in progress: nothing is read or written until it is
    /// established, and it fails at `deadline`. `tag` is the handler's.
    Connecting { deadline: Instant, tag: u64 },
    /// Reading, handing bytes to the handler, writing its replies.
    Open,
    /// The peer shut down its sending side: flush what is left, then close.
    PeerClosed,
    /// Close once the output is flushed; `linger`: send FIN first and wait
    /// for the peer's (the peer may still be sending).
    Closing { reason: CloseReason, linger: bool },
    /// Our FIN is sent; reading discards until the peer's FIN.
    Lingering { since: Instant },
}

/// Whether the socket may hold bytes we have not read (edge-triggered: no
/// new event comes for bytes already signalled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readable {
    /// Drained: the next event says when bytes arrive.
    No,
    /// An edge arrived, or a budget or the high-water mark stopped reading.
    Yes,
    /// FIN or an error was signalled: a short read is no proof of drain,
    /// read until 0 or the error.
    UntilEof,
}

/// Where the current message is, which decides the deadline in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activity {
    /// No message consumed yet; the first one's clock runs from `since`
    /// (accepted or connected).
    New { since: Instant },
    /// A message is arriving, since its first byte.
    Receiving { since: Instant },
    /// Between messages, since the last one was consumed.
    Idle { since: Instant },
}

/// What one read did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// `n` bytes were appended to the input.
    Bytes(usize),
    /// The peer's FIN: no more bytes will come.
    Eof,
    /// The socket is drained.
    Drained,
    /// Nothing for the handler (interrupted, or discarded while lingering):
    /// read again.
    Again,
}

/// What the connection needs once its I/O for this turn is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep it: wait for events or deadlines.
    Keep,
    /// Close it now.
    Close(CloseReason),
    /// Send FIN and linger.
    Linger,
}

/// One connection of a worker.
#[derive(Debug)]
pub(crate) struct Conn<S> {
    stream: TcpStream,
    /// The handler's state; taken out when the connection closes.
    user: Option<S>,
    generation: u32,
    id: u64,
    /// Unconsumed input; holds no allocation while empty.
    input: Vec<u8>,
    output: Output,
    phase: Phase,
    readable: Readable,
    activity: Activity,
    /// When output last made progress.
    last_progress: Instant,
    /// The handler paused reading ([`Context::pause_reading`](crate::Context::pause_reading)).
    paused: bool,
    /// Unwritten output reached the low-water mark: tell the handler when
    /// it falls below.
    above_low_water: bool,
    /// The tick of this connection's live timer-wheel entry.
    scheduled: Option<Tick>,
    /// The rule in force when the deadline was last computed (the entry,
    /// if any, is no later than that deadline): while the rule stays the
    /// same its deadline only moves later, so nothing needs computing.
    armed_rule: Option<Rule>,
    /// Registered for writable edges too. A connection starts registered
    /// for readable edges only (each ACK that frees send-buffer space would
    /// otherwise wake the loop for nothing); the first flush that leaves
    /// output behind adds writable edges, for good.
    watch_writable: bool,
    /// The TLS session, on a TLS listener's connections.
    #[cfg(feature = "tls")]
    tls: Option<Box<tls::Tls>>,
}

impl<S> Conn<S> {
    pub(crate) fn new(stream: TcpStream, user: S, generation: u32, id: u64, now: Instant) -> Self {
        Conn::new_open(stream, Some(user), generation, id, now)
    }

    fn new_open(
        stream: TcpStream,
        user: Option<S>,
        generation: u32,
        id: u64,
        now: Instant,
    ) -> Self {
        Conn {
            stream,
            user,
            generation,
            id,
            input: Vec::new(),
            output: Output::default(),
            phase: Phase::Open,
            readable: Readable::No,
            activity: Activity::New { since: now },
            last_progress: now,
            paused: false,
            above_low_water: false,
            scheduled: None,
            armed_rule: None,
            watch_writable: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Speaks TLS with `config` from now on (an accepted connection, before
    /// any byte was read).
    ///
    /// # Errors
    ///
    /// rustls refused the configuration.
    #[cfg(feature = "tls")]
    pub(crate) fn start_tls(
        &mut self,
        config: &std::sync::Arc<rustls::ServerConfig>,
    ) -> Result<(), rustls::Error> {
        self.tls = Some(Box::new(tls::Tls::new(config)?));
        Ok(())
    }

    /// Whether bytes wait to be written: output, or (TLS) ciphertext.
    #[inline]
    pub(crate) fn unflushed(&self) -> bool {
        if !self.output.is_empty() {
            return true;
        }
        #[cfg(feature = "tls")]
        if self.tls.as_ref().is_some_and(|t| t.wants_write()) {
            return true;
        }
        false
    }

    /// The handler's state (`None` only while it is being closed).
    pub(crate) fn state_mut(&mut self) -> Option<&mut S> {
        self.user.as_mut()
    }

    /// Stops reading until [`resume`](Self::resume).
    pub(crate) fn pause(&mut self) {
        self.paused = true;
    }

    /// Reads again. Bytes that arrived while paused are known: their edge
    /// was recorded (events keep coming while paused, only reading
    /// stops), and a socket not drained before the pause is still marked
    /// readable. Reading without either would only hear `EAGAIN` (it did,
    /// once per proxied request, before this).
    pub(crate) fn resume(&mut self) {
        self.paused = false;
    }

    /// Gives the output a pooled buffer to append to, if it holds none.
    #[inline]
    fn output_buffer(&mut self, pool: &mut BufferPool) {
        if !self.output.has_buffer() {
            self.output.set_buffer(pool.take());
        }
    }

    /// Appends bytes a callback queued for this connection.
    pub(crate) fn append(&mut self, pool: &mut BufferPool, bytes: &[u8]) {
        self.output_buffer(pool);
        self.output.extend_from_slice(bytes);
    }

    /// The state and output, for `on_writable`.
    pub(crate) fn state_and_output(&mut self) -> Option<(&mut S, &mut Output)> {
        Some((self.user.as_mut()?, &mut self.output))
    }

    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    /// The id unique within the worker (the probes' `conn_id`).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The socket, to register it under a new token.
    pub(crate) fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Bytes waiting to be written.
    pub(crate) fn pending_output(&self) -> usize {
        self.output.len()
    }

    // ----- events -------------------------------------------------------------

    /// An epoll event: `readable`, and `hangup` for the peer's FIN or an
    /// error.
    pub(crate) fn on_event(&mut self, readable: bool, hangup: bool) {
        if hangup {
            self.readable = Readable::UntilEof;
        } else if readable && self.readable == Readable::No {
            self.readable = Readable::Yes;
        }
    }

    /// Reads once more even without an event (a drain checks whether a
    /// request is already in the socket).
    pub(crate) fn recheck_readable(&mut self) {
        if self.readable == Readable::No {
            self.readable = Readable::Yes;
        }
    }

    /// Whether input held unconsumed may be handed to the handler now
    /// (reading is not paused and the connection is open).
    pub(crate) fn takes_input(&self) -> bool {
        !self.paused && self.phase == Phase::Open
    }

    /// Whether the socket should be read now: when open and not paused by
    /// the handler, and always while lingering (what is read then is
    /// discarded, and the peer's FIN ends the linger: a connection the
    /// handler paused and then closed must not wait out the linger timeout).
    pub(crate) fn wants_read(&self) -> bool {
        self.readable != Readable::No
            && match self.phase {
                Phase::Open => !self.paused,
                Phase::Lingering { .. } => true,
                _ => false,
            }
    }

    // ----- reading ------------------------------------------------------------

    /// One `recvfrom(2)` into the input buffer (taken from `pool` if the
    /// connection holds none), or, while lingering, into a scratch buffer
    /// that is discarded.
    ///
    /// # Errors
    ///
    /// The reason to close: a reset or another error, input beyond
    /// `max_input`, or the end of a lingering close.
    ///
    /// A TLS handshake that completes counts in `counters` (of worker
    /// `worker`, for the probes).
    pub(crate) fn read(
        &mut self,
        pool: &mut BufferPool,
        max_input: usize,
        #[allow(unused_variables)] (worker, counters): (usize, &mut Counters),
    ) -> Result<ReadOutcome, CloseReason> {
        if let Phase::Lingering { .. } = self.phase {
            return self.discard_some();
        }
        if self.input.capacity() == 0 {
            #[cfg(feature = "tls")]
            if self.tls.is_some() {
                self.input = pool.take();
                return self.read_tls(worker, counters);
            }
            // Holding no input: read into the pool's scratch buffer
            // (`call` hands the handler the bytes there).
            let fd = self.stream.as_raw_fd();
            return recv(fd, pool.scratch(), &mut self.phase, &mut self.readable);
        }
        if self.input.len() == self.input.capacity() {
            if self.input.len() >= max_input {
                return Err(CloseReason::InputTooLarge);
            }
            let grow = self.input.len().min(max_input - self.input.len());
            self.input.reserve_exact(grow);
        }
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return self.read_tls(worker, counters);
        }
        let fd = self.stream.as_raw_fd();
        recv(fd, &mut self.input, &mut self.phase, &mut self.readable)
    }

    /// [`read`](Self::read) on a TLS connection (the input has room):
    /// plaintext that waits in rustls first, else one read of ciphertext.
    /// Reads on to `EAGAIN` (a short read of ciphertext proves nothing:
    /// rustls reads at most its own buffer's worth).
    #[cfg(feature = "tls")]
    fn read_tls(
        &mut self,
        worker: usize,
        counters: &mut Counters,
    ) -> Result<ReadOutcome, CloseReason> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(ReadOutcome::Again);
        };
        if !tls.has_plaintext() {
            if tls.ended() {
                self.phase = Phase::PeerClosed;
                self.readable = Readable::No;
                return Ok(ReadOutcome::Eof);
            }
            match tls.read_records(&self.stream, worker, self.id)? {
                tls::Records::Drained => {
                    self.readable = Readable::No;
                    return Ok(ReadOutcome::Drained);
                }
                tls::Records::Again => return Ok(ReadOutcome::Again),
                tls::Records::Read | tls::Records::Eof => {}
            }
            if tls.just_established() {
                let resumed = tls.resumed();
                counters.tls_handshakes += 1;
                counters.tls_resumed += u64::from(resumed);
                if let Activity::New { since } = self.activity {
                    let nanos = since.elapsed().as_nanos() as u64;
                    probes::tls_handshake(worker, self.id, nanos, resumed);
                }
            }
        }
        match tls.take_plaintext(&mut self.input) {
            // Handshake records, or an end with nothing before it: the
            // next read says which.
            0 => Ok(ReadOutcome::Again),
            n => Ok(ReadOutcome::Bytes(n)),
        }
    }

    /// Lingering: reads and drops what the peer still sends; its FIN (or an
    /// error) ends the linger.
    fn discard_some(&mut self) -> Result<ReadOutcome, CloseReason> {
        let mut scratch = [0u8; 512];
        match self.stream.read(&mut scratch) {
            Ok(0) => Err(CloseReason::Handler),
            Ok(_) => Ok(ReadOutcome::Again),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.readable = Readable::No;
                Ok(ReadOutcome::Drained)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(ReadOutcome::Again),
            Err(_) => Err(CloseReason::Handler),
        }
    }

    /// Whether unconsumed input is held.
    pub(crate) fn has_input(&self) -> bool {
        !self.input.is_empty()
    }

    // ----- the handler ----------------------------------------------------------

    /// Hands the unconsumed input to `on_data` (with an output buffer from
    /// `pool`), then applies what it consumed and the action it returned.
    ///
    /// # Errors
    ///
    /// `on_data` panicked: the panic's message (nothing is applied; the
    /// connection is to be closed).
    pub(crate) fn call(
        &mut self,
        pool: &mut BufferPool,
        draining: bool,
        now: Instant,
        on_data: impl FnOnce(&mut S, &mut Input<'_>, &mut Output) -> Action,
    ) -> Result<(), String> {
        self.output_buffer(pool);
        // Input not held by the connection was read into the pool's
        // scratch buffer (see `read`).
        let scratch = self.input.capacity() == 0;
        let Some(user) = self.user.as_mut() else {
            if scratch {
                pool.clear_scratch();
            }
            return Ok(());
        };
        let peer_closed = self.phase == Phase::PeerClosed;
        let bytes: &[u8] = if scratch {
            pool.scratch_bytes()
        } else {
            &self.input
        };
        let input = Input::new(bytes, peer_closed, draining);
        // What the TLS handshake settled, for the handler to ask.
        #[cfg(feature = "tls")]
        let input = input.with_tls(self.tls.as_deref().map(tls::Tls::session));
        let mut input = input;
        let output = &mut self.output;
        let action = panic::catch(|| on_data(user, &mut input, output));
        let consumed = input.consumed();
        if scratch {
            if action.is_err() {
                // A panic: the connection closes, its bytes with it.
                pool.clear_scratch();
            } else if let Some(kept) = pool.keep_scratch(consumed) {
                // What the handler left becomes the connection's own
                // input, from which `after_call` drops what it consumed.
                self.input = kept;
            } else {
                // All consumed, and the connection's own input is empty.
                return self.after_call(action, 0, now);
            }
        }
        self.after_call(action, consumed, now)
    }

    /// Applies what `on_data` consumed and the action it returned.
    #[inline(always)]
    fn after_call(
        &mut self,
        action: Result<Action, String>,
        consumed: usize,
        now: Instant,
    ) -> Result<(), String> {
        let action = action?;
        self.consumed(consumed, now);
        if action == Action::Close {
            self.close_after_flush(CloseReason::Handler);
        }
        Ok(())
    }

    fn consumed(&mut self, consumed: usize, now: Instant) {
        if consumed == self.input.len() {
            self.input.clear();
        } else if consumed > 0 {
            self.input.drain(..consumed);
        }
        if self.input.is_empty() {
            self.activity = Activity::Idle { since: now };
        } else if consumed > 0 || matches!(self.activity, Activity::Idle { .. }) {
            // A new message began in these bytes: its header clock starts
            // now. A message still arriving keeps its clock (slow senders
            // gain nothing by trickling bytes).
            self.activity = Activity::Receiving { since: now };
        }
    }

    /// Stops reading; closes for `reason` once the output is flushed,
    /// lingering first if the peer may still be sending: input is left
    /// unconsumed, the socket was not seen drained, or nothing was read yet
    /// (a handler that answers from `on_accept`, say "busy", while the
    /// request is on its way). A close with unread bytes in the socket, or
    /// arriving after it, sends a reset that can destroy the reply before
    /// the peer reads it. When the handler took every byte and the last read
    /// drained the socket, as after a request that asked to close, the close
    /// is at once, as nginx does: no `shutdown` and no draining read.
    pub(crate) fn close_after_flush(&mut self, reason: CloseReason) {
        let linger = self.phase == Phase::Open
            && (!self.input.is_empty()
                || self.readable != Readable::No
                || matches!(self.activity, Activity::New { .. }));
        if matches!(self.phase, Phase::Open | Phase::PeerClosed) {
            self.phase = Phase::Closing { reason, linger };
        }
        self.readable = Readable::No;
    }

    // ----- writing --------------------------------------------------------------

    /// Writes pending output until it is all written or the socket is full:
    /// one `send(2)`, or `sendmsg(2)` when the output is in pieces. Returns
    /// the write calls made and the bytes written.
    ///
    /// # Errors
    ///
    /// The reason to close when the socket fails.
    pub(crate) fn flush(&mut self, worker: usize, now: Instant) -> Result<(u64, u64), CloseReason> {
        // With nothing pending the plain path below makes no call.
        if matches!(self.phase, Phase::Connecting { .. }) {
            return Ok((0, 0));
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut() {
            if self.output.is_empty() && !tls.wants_write() {
                return Ok((0, 0));
            }
            let fd = self.stream.as_raw_fd();
            let before = self.output.len();
            // Closing: `close_notify` follows the last of the output.
            let closing = matches!(self.phase, Phase::Closing { .. } | Phase::PeerClosed);
            let (writes, bytes) = tls
                .flush(fd, &mut self.output, closing)
                .map_err(|e| classify(&e))?;
            if bytes > 0 {
                probes::write(worker, fd, self.id, bytes as usize);
            }
            if bytes > 0 || self.output.len() < before {
                self.last_progress = now;
            }
            return Ok((writes, bytes));
        }
        let stream = &self.stream;
        let (fd, id) = (stream.as_raw_fd(), self.id);
        // Closing: the FIN follows this output as soon as it is written.
        let fin_follows = matches!(self.phase, Phase::Closing { .. });
        let mut writes = 0;
        let written = self
            .output
            .flush_to(|iov| {
                let n = if iov.len() == 1 {
                    // The common case: one piece, one send(2).
                    sys::send(fd, &iov[0], fin_follows)
                } else {
                    sys::send_vectored(fd, iov, fin_follows)
                }?;
                probes::write(worker, fd, id, n);
                writes += 1;
                Ok(n)
            })
            .map_err(|e| classify(&e))?;
        if written > 0 {
            self.last_progress = now;
        }
        Ok((writes, written as u64))
    }

    /// [`flush`](Self::flush) with its common case inlined into the
    /// worker's loop: a plain connection's output, one inline piece,
    /// written whole by one `send(2)`. Anything else (TLS, shared chunks, a
    /// connect in progress, a short write, an error) goes the general way.
    /// The writes and bytes are counted in `counters`.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush).
    #[inline(always)]
    pub(crate) fn flush_quick(
        &mut self,
        worker: usize,
        now: Instant,
        counters: &mut Counters,
    ) -> Result<(), CloseReason> {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return self.flush_counted(None, worker, now, counters);
        }
        let bytes = match self.output.inline_unwritten() {
            Some(bytes) if !bytes.is_empty() && !matches!(self.phase, Phase::Connecting { .. }) => {
                bytes
            }
            _ => return self.flush_counted(None, worker, now, counters),
        };
        // Closing: the FIN follows this output as soon as it is written.
        let fin_follows = matches!(self.phase, Phase::Closing { .. });
        match sys::send(self.fd(), bytes, fin_follows) {
            Ok(n) if n == bytes.len() => {
                self.output.inline_written();
                self.wrote(n, worker, now, counters);
                Ok(())
            }
            sent => self.flush_counted(Some(sent), worker, now, counters),
        }
    }

    /// One `send(2)` wrote `n` bytes: traced, counted in `counters`, and
    /// the connection made progress.
    #[inline(always)]
    fn wrote(&mut self, n: usize, worker: usize, now: Instant, counters: &mut Counters) {
        probes::write(worker, self.fd(), self.id, n);
        self.last_progress = now;
        counters.writes += 1;
        counters.bytes_written += n as u64;
    }

    /// [`flush_quick`](Self::flush_quick) the general way, after the
    /// result of a `send(2)` that did not write everything, if one was
    /// made: records what it wrote, then flushes the rest.
    #[cold]
    #[inline(never)]
    fn flush_counted(
        &mut self,
        sent: Option<io::Result<usize>>,
        worker: usize,
        now: Instant,
        counters: &mut Counters,
    ) -> Result<(), CloseReason> {
        match sent {
            None => {}
            Some(Ok(0)) => return Err(CloseReason::Error),
            Some(Ok(n)) => {
                self.output.written(n);
                self.wrote(n, worker, now, counters);
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Some(Err(e)) => return Err(classify(&e)),
        }
        let (writes, bytes) = self.flush(worker, now)?;
        counters.writes += writes;
        counters.bytes_written += bytes;
        Ok(())
    }

    // ----- closing --------------------------------------------------------------

    /// What to do once this turn's I/O is done. `drain_idle`: a drain is
    /// closing idle keep-alive connections.
    pub(crate) fn next(&self, drain_idle: bool) -> Next {
        if self.unflushed() {
            return Next::Keep;
        }
        match self.phase {
            Phase::Connecting { .. } => Next::Keep,
            Phase::Open if drain_idle && self.is_idle_keepalive() => {
                Next::Close(CloseReason::Shutdown)
            }
            Phase::Open | Phase::Lingering { .. } => Next::Keep,
            Phase::PeerClosed => Next::Close(CloseReason::PeerClosed),
            Phase::Closing { linger: true, .. } => Next::Linger,
            Phase::Closing { reason, .. } => Next::Close(reason),
        }
    }

    /// The end of a turn for this connection: what it needs next
    /// ([`next`](Self::next)); when it stays, its buffers it no longer
    /// needs go back to `pool` and its timer (entry `key` of `wheel`) is
    /// re-armed.
    #[inline(always)]
    pub(crate) fn settle(
        &mut self,
        drain_idle: bool,
        pool: &mut BufferPool,
        (wheel, key): (&mut TimerWheel, usize),
        opts: &ServerOptions,
        grace: Option<Instant>,
    ) -> Next {
        let next = self.next(drain_idle);
        if next == Next::Keep {
            self.release_buffers(pool);
            self.update_timer(wheel, key, opts, grace);
        }
        next
    }

    /// Sends FIN and starts discarding what the peer still sends, so unread
    /// request bytes do not turn our close into a reset that destroys the
    /// reply.
    ///
    /// # Errors
    ///
    /// `shutdown(2)` failed: close at once.
    pub(crate) fn start_linger(&mut self, now: Instant) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)?;
        self.phase = Phase::Lingering { since: now };
        self.readable = Readable::Yes;
        Ok(())
    }

    /// Returns the buffers the connection no longer needs to the pool: an
    /// idle connection holds none.
    #[inline(always)]
    pub(crate) fn release_buffers(&mut self, pool: &mut BufferPool) {
        if self.input.is_empty() && self.input.capacity() != 0 {
            pool.give(std::mem::take(&mut self.input));
        }
        if self.output.is_empty() {
            if let Some(buf) = self.output.take_buffer() {
                pool.give(buf);
            }
        }
    }

    /// Closing: drops unwritten output, returns every buffer to the pool and
    /// hands back the handler's state. Dropping the connection then closes
    /// the descriptor (which also removes it from the epoll set).
    pub(crate) fn finish(&mut self, pool: &mut BufferPool) -> Option<S> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut() {
            // A close that did not wait for a flush (a timeout, a drain of
            // idle connections): `close_notify`, best effort.
            tls.close_now(self.stream.as_raw_fd());
        }
        if self.input.capacity() != 0 {
            pool.give(std::mem::take(&mut self.input));
        }
        if let Some(buf) = self.output.discard() {
            pool.give(buf);
        }
        self.user.take()
    }
}

/// One `recvfrom(2)` on `fd` into `buf`'s spare capacity, and what it
/// says about the connection's `phase` and `readable`.
#[inline(always)]
fn recv(
    fd: RawFd,
    buf: &mut Vec<u8>,
    phase: &mut Phase,
    readable: &mut Readable,
) -> Result<ReadOutcome, CloseReason> {
    let space = buf.capacity() - buf.len();
    match sys::read_spare(fd, buf) {
        Ok(0) => {
            *phase = Phase::PeerClosed;
            *readable = Readable::No;
            Ok(ReadOutcome::Eof)
        }
        Ok(n) => {
            if n < space && *readable != Readable::UntilEof {
                // A short read drained the socket; the next edge reports
                // new bytes. Saves the read that would say WouldBlock.
                *readable = Readable::No;
            }
            Ok(ReadOutcome::Bytes(n))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            *readable = Readable::No;
            Ok(ReadOutcome::Drained)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(ReadOutcome::Again),
        Err(e) => Err(classify(&e)),
    }
}

fn classify(e: &io::Error) -> CloseReason {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => CloseReason::Reset,
        _ => CloseReason::Error,
    }
}
