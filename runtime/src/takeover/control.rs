//! The serving process's side: the control socket through which a process
//! taking over finds this one and tells it to drain.

use std::io::{self, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{banner_line, read_line, socket_addr, ANSWER_TIMEOUT};
use crate::shutdown::ShutdownHandle;
use crate::sys;

/// This process's control socket: answers takeover requests until closed,
/// or until it hands over (when it frees the name at once, for the process
/// taking over).
#[derive(Debug)]
pub(crate) struct Control {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// How often the control thread checks whether it should stop.
const CONTROL_POLL_MS: i32 = 50;

/// What the control socket tells a process taking over.
#[derive(Debug, Clone)]
pub(crate) struct Describe {
    pub(crate) steering: String,
    pub(crate) workers: usize,
    /// The TLS session-ticket keys, for `tls-keys`.
    #[cfg(feature = "tls")]
    pub(crate) tickets: Option<std::sync::Arc<crate::tls::TicketKeys>>,
}

/// Binds `@corelane/<addr>`, waiting up to `wait` for a previous holder
/// that is handing over to let go of it.
pub(crate) fn claim(addr: SocketAddr, wait: Duration) -> io::Result<UnixListener> {
    let sa = socket_addr(addr)?;
    let deadline = Instant::now() + wait;
    loop {
        match UnixListener::bind_addr(&sa) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Answers on a [claimed](claim) control socket from a thread.
pub(crate) fn serve(
    listener: UnixListener,
    describe: Describe,
    shutdown: ShutdownHandle,
) -> io::Result<Control> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name("corelane-control".into())
        .spawn(move || answer(listener, &describe, &shutdown, &s))?;
    Ok(Control {
        stop,
        thread: Some(thread),
    })
}

impl Control {
    /// Stops answering and frees the name (within [`CONTROL_POLL_MS`]).
    pub(crate) fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The control thread: owns the listener, so that handing over (returning)
/// frees the name at once.
fn answer(
    listener: UnixListener,
    describe: &Describe,
    shutdown: &ShutdownHandle,
    stop: &AtomicBool,
) {
    let pid = std::process::id();
    while !stop.load(Ordering::Relaxed) {
        if !sys::poll_readable(listener.as_raw_fd(), CONTROL_POLL_MS) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Anything else (EMFILE) is retried after a pause.
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match handle(stream, pid, describe) {
            Ok(Some((peer, stream, migrate))) => {
                // Act first, then log (as for signals); free the name for
                // the process taking over.
                drop(listener);
                shutdown.hand_over(migrate, stream);
                tracing::info!(
                    to = peer,
                    queued = if migrate { "migrate" } else { "accepted first" },
                    "handing over: listeners closing, draining connections"
                );
                return;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "control socket: request failed"),
        }
    }
}

/// One control connection: `Some` when the peer asked us to drain.
fn handle(
    stream: UnixStream,
    pid: u32,
    describe: &Describe,
) -> io::Result<Option<(u32, UnixStream, bool)>> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let peer = sys::peer_credentials(stream.as_raw_fd())?;
    let euid = sys::effective_uid();
    let mut writer = stream.try_clone()?;
    if peer.uid != 0 && peer.uid != euid {
        writer.write_all(
            format!(
                "refused: uid {} may not control this server (only root or uid {euid})\n",
                peer.uid
            )
            .as_bytes(),
        )?;
        return Ok(None);
    }
    writer.write_all(banner_line(pid, &describe.steering, describe.workers).as_bytes())?;
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_line(&mut reader) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        };
        let migrate = match line.as_str() {
            "drain migrate" => true,
            "drain accept" => false,
            "tls-keys" => {
                #[cfg(feature = "tls")]
                if let Some(keys) = &describe.tickets {
                    writer.write_all(format!("tls-keys {}\n", keys.export()).as_bytes())?;
                    continue;
                }
                writer.write_all(b"tls-keys none\n")?;
                continue;
            }
            _ => {
                writer.write_all(b"error: expected `drain migrate` or `drain accept`\n")?;
                continue;
            }
        };
        writer.write_all(b"draining\n")?;
        return Ok(Some((peer.pid, writer, migrate)));
    }
}
