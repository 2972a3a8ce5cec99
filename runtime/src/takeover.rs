//! Zero-downtime restarts: the control socket through which a process
//! started with [`takeover`](crate::ServerOptions::takeover) finds the one
//! serving its address and tells it to hand over.
//!
//! The socket is an abstract Unix socket, `@corelane/<addr>`: it lives in the
//! network namespace, exactly where the reuseport group lives, needs no file
//! and vanishes with the process. The protocol is a line each way:
//!
//! ```text
//! old → new   corelane-control 1 pid=<pid> steering=<mode> workers=<n>
//! new → old   drain migrate        (or: drain accept)
//! old → new   draining
//! ```
//!
//! `migrate`: the group migrates a closing listener's queue (eBPF steering
//! with `SELECT_OR_MIGRATE`, or `net.ipv4.tcp_migrate_req=1`), so the old
//! process closes its listeners at once. `accept`: it accepts what is queued
//! first. The old process keeps the connection open until it exits, so the
//! new one sees end-of-file when the handover is complete.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::server::ShutdownHandle;

/// Version of the line protocol.
const PROTOCOL: u32 = 1;
/// How long either side waits for the other's line.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn name(addr: SocketAddr) -> String {
    format!("corelane/{addr}")
}

fn socket_addr(addr: SocketAddr) -> io::Result<std::os::unix::net::SocketAddr> {
    std::os::unix::net::SocketAddr::from_abstract_name(name(addr).as_bytes())
}

/// The process serving an address, as its control socket describes it.
#[derive(Debug)]
pub(crate) struct Predecessor {
    pub(crate) pid: u32,
    /// Its steering mode's name (`least-loaded`, `kernel`, ...).
    pub(crate) steering: String,
    pub(crate) workers: usize,
    addr: SocketAddr,
}

/// Asks who serves `addr`: `None` when no corelane process does.
pub(crate) fn find(addr: SocketAddr) -> io::Result<Option<Predecessor>> {
    Ok(ask(addr)?.map(|(banner, _)| Predecessor {
        pid: banner.pid,
        steering: banner.steering,
        workers: banner.workers,
        addr,
    }))
}

/// Connects to the control socket of `addr` and reads its banner.
fn ask(addr: SocketAddr) -> io::Result<Option<(Banner, BufReader<UnixStream>)>> {
    let stream = match UnixStream::connect_addr(&socket_addr(addr)?) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    let line = read_line(&mut reader)?;
    let banner = parse_banner(&line).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer on @{}: {line:?}", name(addr)),
        )
    })?;
    Ok(Some((banner, reader)))
}

fn read_line(reader: &mut BufReader<UnixStream>) -> io::Result<String> {
    let mut line = String::new();
    if reader.by_ref().take(512).read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the control socket closed without answering",
        ));
    }
    Ok(line.trim_end().to_owned())
}

#[derive(Debug, PartialEq, Eq)]
struct Banner {
    pid: u32,
    steering: String,
    workers: usize,
}

fn banner_line(pid: u32, steering: &str, workers: usize) -> String {
    format!("corelane-control {PROTOCOL} pid={pid} steering={steering} workers={workers}\n")
}

fn parse_banner(line: &str) -> Option<Banner> {
    let mut words = line.split(' ');
    if words.next()? != "corelane-control" || words.next()?.parse::<u32>().ok()? != PROTOCOL {
        return None;
    }
    let mut field = |key: &str| words.next()?.strip_prefix(key)?.strip_prefix('=');
    Some(Banner {
        pid: field("pid")?.parse().ok()?,
        steering: field("steering")?.to_owned(),
        workers: field("workers")?.parse().ok()?,
    })
}

impl Predecessor {
    /// Whether it steers with eBPF.
    pub(crate) fn is_ebpf(&self) -> bool {
        self.steering
            .parse::<crate::Steering>()
            .is_ok_and(crate::Steering::is_ebpf)
    }

    /// Tells the serving process to drain (on a connection of its own, so
    /// however long the caller took between `build` and `run`); returns
    /// once it has started, with the connection to [`watch`].
    /// `migrate`: closing listeners' queues migrate (see the module docs).
    pub(crate) fn drain(&self, migrate: bool) -> io::Result<Draining> {
        let (banner, mut reader) = ask(self.addr)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "it has stopped in the meantime")
        })?;
        if banner.pid != self.pid {
            return Err(io::Error::other(format!(
                "pid {} serves the address now",
                banner.pid
            )));
        }
        let how = if migrate { "migrate" } else { "accept" };
        reader
            .get_mut()
            .write_all(format!("drain {how}\n").as_bytes())?;
        let line = read_line(&mut reader)?;
        if line == "draining" {
            Ok(Draining {
                pid: self.pid,
                reader,
            })
        } else {
            Err(io::Error::other(format!(
                "pid {} answered {line:?} to `drain`",
                self.pid
            )))
        }
    }
}

/// The control connection of a process that is draining for us.
#[derive(Debug)]
pub(crate) struct Draining {
    pid: u32,
    reader: BufReader<UnixStream>,
}

impl Draining {
    /// Logs when the drained process has exited (its end of the control
    /// connection closes), from a thread of its own.
    pub(crate) fn watch(mut self, since: Instant) {
        let spawned = thread::Builder::new()
            .name("corelane-handover".into())
            .spawn(move || {
                let _ = self.reader.get_ref().set_read_timeout(None);
                let mut rest = Vec::new();
                let _ = self.reader.read_to_end(&mut rest);
                tracing::info!(
                    pid = self.pid,
                    ms = since.elapsed().as_millis() as u64,
                    "handover complete: the previous process has finished"
                );
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "not watching the previous process");
        }
    }
}

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

/// Waits up to [`CONTROL_POLL_MS`] for a connection on `listener`.
fn readable(listener: &UnixListener) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, CONTROL_POLL_MS) > 0 }
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
        if !readable(&listener) {
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
    let peer = crate::sys::peer_credentials(stream.as_raw_fd())?;
    // SAFETY: no arguments, cannot fail.
    let euid = unsafe { libc::geteuid() };
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
            _ => {
                writer.write_all(b"error: expected `drain migrate` or `drain accept`\n")?;
                continue;
            }
        };
        writer.write_all(b"draining\n")?;
        return Ok(Some((peer.pid, writer, migrate)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_round_trips_and_strangers_are_not_parsed() {
        let line = banner_line(42, "least-loaded", 2);
        assert_eq!(
            parse_banner(line.trim_end()),
            Some(Banner {
                pid: 42,
                steering: "least-loaded".into(),
                workers: 2
            })
        );
        assert_eq!(
            parse_banner("corelane-control 2 pid=1 steering=x workers=1"),
            None
        );
        assert_eq!(parse_banner("SSH-2.0-OpenSSH"), None);
        assert_eq!(
            parse_banner("corelane-control 1 pid=x steering=y workers=1"),
            None
        );
    }
}
