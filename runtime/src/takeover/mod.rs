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
//! Before `drain`, the new process may ask `tls-keys`: the old one answers
//! `tls-keys <hex> [<hex>]` (its session-ticket keys, current first) or
//! `tls-keys none`.
//!
//! `migrate`: the group migrates a closing listener's queue (eBPF steering
//! with `SELECT_OR_MIGRATE`, or `net.ipv4.tcp_migrate_req=1`), so the old
//! process closes its listeners at once. `accept`: it accepts what is queued
//! first. The old process keeps the connection open until it exits, so the
//! new one sees end-of-file when the handover is complete.
//!
//! The name is abstract, so any local user could bind it first. A process
//! trusts the holder only if the kernel says (`SO_PEERCRED`) it runs as
//! root, as this process's user, or as the user this process will serve as;
//! a holder that fails the check is logged and ignored, and its claims (the
//! banner's pid) are never believed: the pid comes from the kernel too.

mod control;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::options::ServerOptions;
use crate::shutdown::ShutdownHandle;
use crate::steering::PreviousSteering;
use crate::sys;

pub(crate) use control::Control;

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

/// The process serving an address, as its control socket and the kernel
/// describe it.
#[derive(Debug)]
pub(crate) struct Predecessor {
    /// Its pid, from `SO_PEERCRED` (not from what it says).
    pub(crate) pid: u32,
    /// Its steering mode's name (`least-loaded`, `kernel`, ...).
    pub(crate) steering: String,
    pub(crate) workers: usize,
    addr: SocketAddr,
    /// The users whose holders are trusted.
    trusted: Trusted,
}

/// Who may hold the control name: root, this process's user, and the user
/// it will serve as.
#[derive(Debug, Clone, Copy)]
struct Trusted {
    euid: u32,
    serve_as: Option<u32>,
}

impl Trusted {
    fn for_options(opts: &ServerOptions) -> Trusted {
        Trusted {
            euid: sys::effective_uid(),
            serve_as: opts
                .user
                .as_deref()
                .and_then(|u| sys::lookup_user(u).ok())
                .map(|(uid, _)| uid),
        }
    }

    fn admits(self, uid: u32) -> bool {
        uid == 0 || uid == self.euid || Some(uid) == self.serve_as
    }
}

/// Who serves `opts.addr`, asked before binding (a listener that joined
/// the group would receive connections), and whether this start may go on.
///
/// # Errors
///
/// [`Error::Served`] when a corelane process serves the address and
/// takeover was not asked for; [`Error::Takeover`] when its control socket
/// answers something unexpected.
pub(crate) fn predecessor(opts: &ServerOptions) -> Result<Option<Predecessor>> {
    if !opts.control_socket || opts.addr.port() == 0 {
        return Ok(None);
    }
    let addr = opts.addr;
    let previous = find(addr, Trusted::for_options(opts))
        .map_err(|source| Error::Takeover { addr, source })?;
    match (&previous, opts.takeover) {
        (Some(p), false) => return Err(Error::Served { addr, pid: p.pid }),
        (Some(p), true) => tracing::info!(
            %addr,
            pid = p.pid,
            steering = %p.steering,
            workers = p.workers,
            "taking over"
        ),
        (None, true) => tracing::info!(
            %addr,
            "takeover: no corelane process serves the address; starting afresh"
        ),
        (None, false) => {}
    }
    Ok(previous)
}

/// Asks who serves `addr`: `None` when no corelane process does, or when
/// the name's holder is not trusted (logged).
fn find(addr: SocketAddr, trusted: Trusted) -> io::Result<Option<Predecessor>> {
    Ok(ask(addr, trusted)?.map(|(pid, banner, _)| Predecessor {
        pid,
        steering: banner.steering,
        workers: banner.workers,
        addr,
        trusted,
    }))
}

/// Connects to the control socket of `addr`, checks who holds it and reads
/// its banner. Returns the holder's real pid with it.
fn ask(
    addr: SocketAddr,
    trusted: Trusted,
) -> io::Result<Option<(u32, Banner, BufReader<UnixStream>)>> {
    let stream = match UnixStream::connect_addr(&socket_addr(addr)?) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(e),
    };
    let holder = sys::peer_credentials(stream.as_raw_fd())?;
    if !trusted.admits(holder.uid) {
        tracing::warn!(
            name = %format!("@{}", name(addr)),
            uid = holder.uid,
            pid = holder.pid,
            "the control name is held by a process of another user: ignoring it (not corelane, or not ours); starting without takeover"
        );
        return Ok(None);
    }
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
    if banner.pid != holder.pid {
        tracing::debug!(
            said = banner.pid,
            pid = holder.pid,
            "the control socket's banner names another pid; using the kernel's"
        );
    }
    Ok(Some((holder.pid, banner, reader)))
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
    /// Takes the TLS session-ticket keys of the serving process into
    /// `keys` (logged either way: without them, sessions from before the
    /// takeover do one full handshake).
    #[cfg(feature = "tls")]
    pub(crate) fn take_ticket_keys(&self, keys: &crate::tls::TicketKeys) {
        let answer = (|| -> io::Result<String> {
            let (_, _, mut reader) = ask(self.addr, self.trusted)?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "it has stopped in the meantime")
            })?;
            reader.get_mut().write_all(b"tls-keys\n")?;
            read_line(&mut reader)
        })();
        let taken = match answer {
            Ok(line) => match line.strip_prefix("tls-keys ") {
                Some("none") => Err("it has none".to_owned()),
                Some(text) => keys.import(text).map_err(str::to_owned),
                None => Err(format!("it answered {line:?}")),
            },
            Err(e) => Err(e.to_string()),
        };
        match taken {
            Ok(()) => tracing::info!(pid = self.pid, "TLS session-ticket keys taken over"),
            Err(why) => tracing::warn!(
                pid = self.pid,
                why,
                "TLS session-ticket keys not taken over; sessions from before do a full handshake"
            ),
        }
    }

    /// What it steers with, for the steering set-up.
    pub(crate) fn steering(&self) -> PreviousSteering {
        PreviousSteering {
            pid: self.pid,
            ebpf: self
                .steering
                .parse::<crate::Steering>()
                .is_ok_and(crate::Steering::is_ebpf),
            mode: self.steering.clone(),
        }
    }

    /// Tells the serving process to drain (on a connection of its own, so
    /// however long the caller took between `build` and `run`); returns
    /// once it has started, with the connection to [`Draining::watch`].
    /// `migrate`: closing listeners' queues migrate (see the module docs).
    fn drain(&self, migrate: bool) -> io::Result<Draining> {
        let (pid, _, mut reader) = ask(self.addr, self.trusted)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "it has stopped in the meantime")
        })?;
        if pid != self.pid {
            return Err(io::Error::other(format!(
                "pid {pid} serves the address now"
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

/// Claims the control socket in `build`, so a server started from then on
/// finds this one. Not when taking over: the previous process lets go of
/// the name once told to drain, and [`start`] claims it then.
///
/// # Errors
///
/// [`Error::Takeover`] when another corelane process claimed the name in
/// the meantime (two started at once).
pub(crate) fn claim_at_build(
    opts: &ServerOptions,
    local_addr: SocketAddr,
    taking_over: bool,
) -> Result<Option<UnixListener>> {
    if !opts.control_socket || taking_over {
        return Ok(None);
    }
    match control::claim(local_addr, Duration::ZERO) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if matches!(find(local_addr, Trusted::for_options(opts)), Ok(None)) {
                // Held by a stranger (logged by `find`), or it just went.
                tracing::warn!(
                    "no control socket: its name is taken; a process started with takeover will not find this one"
                );
                return Ok(None);
            }
            Err(Error::Takeover {
                addr: local_addr,
                source: io::Error::new(
                    e.kind(),
                    "another corelane process started on this address at the same time",
                ),
            })
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "no control socket: a process started with takeover will not find this one"
            );
            Ok(None)
        }
    }
}

/// With the workers running: tells the process being taken over (if any)
/// to drain, then answers on this address's control socket.
pub(crate) fn start(
    previous: Option<Predecessor>,
    claimed: Option<UnixListener>,
    migrates: bool,
    shutdown: &ShutdownHandle,
    opts: &ServerOptions,
    local_addr: SocketAddr,
    workers: usize,
) -> Option<Control> {
    let taking_over = previous.is_some();
    if let Some(previous) = previous {
        hand_over_from(&previous, migrates, shutdown);
    }
    if !opts.control_socket || claimed.is_none() && !taking_over {
        // Not wanted, or its name is taken (logged in `build`).
        return None;
    }
    let describe = control::Describe {
        steering: opts.steering.as_str().to_owned(),
        workers,
        #[cfg(feature = "tls")]
        tickets: opts.tls_ticket_keys.clone(),
    };
    let listener = match claimed {
        Some(l) => Ok(l),
        None => control::claim(local_addr, Duration::from_secs(10)),
    };
    match listener.and_then(|l| control::serve(l, describe, shutdown.clone())) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "no control socket: a process started with takeover will not find this one"
            );
            None
        }
    }
}

/// Tells `previous` to drain, and watches it finish.
fn hand_over_from(previous: &Predecessor, migrates: bool, shutdown: &ShutdownHandle) {
    let started = Instant::now();
    if shutdown.is_shutting_down() {
        tracing::warn!(
            pid = previous.pid,
            "not taking over: this server is stopping already"
        );
        return;
    }
    match previous.drain(migrates) {
        Ok(draining) => {
            tracing::info!(
                pid = previous.pid,
                queued = if migrates {
                    "migrate here"
                } else {
                    "accepted there first"
                },
                "took over: the previous process is draining"
            );
            draining.watch(started);
        }
        Err(e) => tracing::warn!(
            pid = previous.pid,
            error = %e,
            "the previous process did not confirm the handover; both serve until it stops"
        ),
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
    fn watch(mut self, since: Instant) {
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
