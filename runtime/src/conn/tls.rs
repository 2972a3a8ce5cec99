//! TLS on a connection (feature `tls`): rustls's record layer sits between
//! the socket and the plaintext the handler sees, so every protection that
//! acts on unconsumed input and unwritten output (the header and idle
//! timeouts, the input limit, the high-water mark) acts on plaintext as it
//! does without TLS.
//!
//! - Reading: ciphertext goes from the socket into rustls
//!   ([`Tls::read_records`]), plaintext from rustls into the connection's
//!   input ([`Tls::take_plaintext`]), no more than the input has room for;
//!   what does not fit waits in rustls (which then stops reading).
//! - Writing: plaintext moves from the [`Output`] into rustls as far as its
//!   ciphertext buffer allows ([`MAX_CIPHERTEXT`]), and ciphertext from
//!   rustls to the socket ([`Tls::flush`]). Unwritten output stays in the
//!   `Output`, where the high-water mark sees it.
//! - Kernel TLS, when a kernel has it, would replace exactly these two
//!   steps after the handshake (rustls's `dangerous_extract_secrets` gives
//!   the keys to `setsockopt(TLS_TX/TLS_RX)`, and the plain read and send
//!   paths take over). This kernel has no `tls` module.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

use crate::buffer::Output;
use crate::handler::CloseReason;
use crate::sys;

/// Most ciphertext rustls holds for sending: plaintext beyond it stays in
/// the connection's [`Output`].
pub(crate) const MAX_CIPHERTEXT: usize = 64 * 1024;

/// One connection's TLS session.
#[derive(Debug)]
pub(crate) struct Tls {
    conn: ServerConnection,
    /// Decrypted bytes waiting in rustls for room in the input.
    plaintext: usize,
    /// The peer's FIN or `close_notify` was read: once the plaintext is
    /// taken, the input ends.
    eof: bool,
    /// The handshake finished (counted once).
    established: bool,
    close_notify_sent: bool,
}

/// What [`Tls::read_records`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Records {
    /// Ciphertext was read and processed (plaintext may be ready).
    Read,
    /// The peer's FIN (or its `close_notify`): no more plaintext will come
    /// after what waits.
    Eof,
    /// The socket is drained.
    Drained,
    /// Interrupted: read again.
    Again,
}

/// The socket as rustls writes to it: `send(2)` with `MSG_NOSIGNAL`.
struct Socket(RawFd);

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send(self.0, buf, false)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        sys::send_vectored(self.0, bufs, false)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Tls {
    /// A server session for a connection just accepted.
    pub(crate) fn new(config: &Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let mut conn = ServerConnection::new(Arc::clone(config))?;
        conn.set_buffer_limit(Some(MAX_CIPHERTEXT));
        Ok(Tls {
            conn,
            plaintext: 0,
            eof: false,
            established: false,
            close_notify_sent: false,
        })
    }

    /// Decrypted bytes wait for room in the input.
    pub(crate) fn has_plaintext(&self) -> bool {
        self.plaintext > 0
    }

    /// The input has ended: the peer's FIN or `close_notify` was read and
    /// every decrypted byte taken.
    pub(crate) fn ended(&self) -> bool {
        self.eof && self.plaintext == 0
    }

    /// One `recvfrom(2)` of ciphertext into rustls, and its records processed.
    /// Called only when no plaintext waits (rustls refuses to read more
    /// while its plaintext buffer is full).
    ///
    /// # Errors
    ///
    /// The socket failed, or the peer sent what TLS refuses (a bad
    /// handshake, garbage, a bad record): [`CloseReason::TlsError`], after
    /// the alert rustls queued is sent (best effort).
    pub(crate) fn read_records(
        &mut self,
        stream: &TcpStream,
        worker: usize,
        conn_id: u64,
    ) -> Result<Records, CloseReason> {
        let mut socket: &TcpStream = stream;
        let n = match self.conn.read_tls(&mut socket as &mut dyn Read) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Records::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Records::Again),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(CloseReason::Reset),
            Err(_) => return Err(CloseReason::Error),
        };
        match self.conn.process_new_packets() {
            Ok(state) => {
                self.plaintext = state.plaintext_bytes_to_read();
                if n == 0 || state.peer_has_closed() {
                    self.eof = true;
                    return Ok(Records::Eof);
                }
                Ok(Records::Read)
            }
            Err(e) => {
                tracing::debug!(worker, conn_id, error = %e, "TLS error; closing the connection");
                crate::probes::tls_error(worker, conn_id, error_reason(&e));
                // The alert rustls queued tells the peer why.
                let _ = self.conn.write_tls(&mut Socket(fd_of(stream)));
                Err(CloseReason::TlsError)
            }
        }
    }

    /// Whether the handshake just finished: `true` once.
    pub(crate) fn just_established(&mut self) -> bool {
        if self.established || self.conn.is_handshaking() {
            return false;
        }
        self.established = true;
        true
    }

    /// Whether a full handshake or a resumption finished.
    pub(crate) fn resumed(&self) -> bool {
        matches!(
            self.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        )
    }

    /// Moves decrypted plaintext into `input`, up to its spare capacity.
    /// Returns the bytes moved.
    pub(crate) fn take_plaintext(&mut self, input: &mut Vec<u8>) -> usize {
        let start = input.len();
        let n = self.plaintext.min(input.capacity() - start);
        if n == 0 {
            return 0;
        }
        // rustls reads into initialised bytes: zeroed first, only as many
        // as wait (so this costs what the copy does).
        input.resize(start + n, 0);
        let read = self.conn.reader().read(&mut input[start..]).unwrap_or(0);
        input.truncate(start + read);
        self.plaintext -= read;
        read
    }

    /// Encrypts what `output` holds (as far as the ciphertext buffer
    /// allows) and writes ciphertext to the socket until it is all written
    /// or the socket is full. Returns the write calls made and the
    /// ciphertext bytes written.
    ///
    /// # Errors
    ///
    /// The socket failed.
    /// `closing`: once `output` is all encrypted, `close_notify` follows.
    pub(crate) fn flush(
        &mut self,
        fd: RawFd,
        output: &mut Output,
        closing: bool,
    ) -> io::Result<(u64, u64)> {
        let (mut writes, mut written) = (0, 0);
        loop {
            if !output.is_empty() {
                let mut writer = self.conn.writer();
                // Takes what the ciphertext buffer has room for: a full
                // buffer says `Ok(0)`, which ends the encrypting here.
                match output.flush_to(|iov| match writer.write_vectored(iov)? {
                    0 => Err(io::ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                }) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if closing && output.is_empty() {
                self.close_notify();
            }
            if !self.conn.wants_write() {
                return Ok((writes, written));
            }
            match self.conn.write_tls(&mut Socket(fd)) {
                Ok(n) => {
                    writes += 1;
                    written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((writes, written)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether ciphertext waits to be written.
    pub(crate) fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Queues `close_notify` (once): the peer learns the close is
    /// deliberate, not a truncation.
    pub(crate) fn close_notify(&mut self) {
        if !self.close_notify_sent {
            self.close_notify_sent = true;
            self.conn.send_close_notify();
        }
    }

    /// Queues `close_notify` and writes what is pending, once, without
    /// waiting: for a close that does not wait for the flush.
    pub(crate) fn close_now(&mut self, fd: RawFd) {
        self.close_notify();
        let _ = self.conn.write_tls(&mut Socket(fd));
    }

    /// The rustls session (what the handshake negotiated: ALPN, SNI).
    pub(crate) fn session(&self) -> &ServerConnection {
        &self.conn
    }
}

/// The `tls_error` probe's reason for a rustls error.
fn error_reason(e: &rustls::Error) -> &'static std::ffi::CStr {
    match e {
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => c"invalid_message",
        rustls::Error::PeerIncompatible(_) => c"peer_incompatible",
        rustls::Error::PeerMisbehaved(_) => c"peer_misbehaved",
        rustls::Error::AlertReceived(_) => c"alert_received",
        rustls::Error::DecryptError => c"decrypt_error",
        _ => c"other",
    }
}

fn fd_of(stream: &TcpStream) -> RawFd {
    std::os::fd::AsRawFd::as_raw_fd(stream)
}
