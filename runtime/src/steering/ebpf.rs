//! The eBPF steering backend (feature `ebpf`): the `sk_reuseport` program of
//! `corelane-steering`, and each worker's handle on it.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use corelane_steering::{EbpfSteering, Settings, TurnLag, WorkerHandle};

use super::{Policy, PreviousSteering, Steering, SteeringStats};

/// Why the program could not be attached.
pub(crate) type AttachError = corelane_steering::Error;

/// The eBPF program attached to this server's group, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ebpf {
    inner: Option<Arc<EbpfSteering>>,
    /// The stall time in force (0: no stall check).
    stall_ns: u64,
}

/// One worker's handle on the program: publishes its load, sets its drain
/// flag. Does nothing when no program is in force.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerSteer {
    handle: Option<WorkerHandle>,
    /// Whether the loop must stamp its turns (stall detection is on).
    stamp_turns: bool,
    /// When the current turn began (stamping only).
    turn_start: u64,
    lag: TurnLag,
    /// The recent longest stretch without progress last published.
    published_lag: u64,
    /// The stall time in force (0: no stall check).
    stall_ns: u64,
}

impl Ebpf {
    pub(crate) fn is_some(&self) -> bool {
        self.inner.is_some()
    }

    /// The handle of worker `index`.
    pub(crate) fn worker(&self, index: usize) -> WorkerSteer {
        match &self.inner {
            Some(s) => WorkerSteer {
                stamp_turns: s.policy() == Policy::LeastLoaded && self.stall_ns != 0,
                handle: Some(s.worker(index)),
                stall_ns: self.stall_ns,
                ..WorkerSteer::default()
            },
            None => WorkerSteer::default(),
        }
    }

    /// At the end of the last process serving the address: removes the
    /// pins (not after a handover, nor when another process took over).
    pub(crate) fn unpin(&self) {
        let Some(s) = &self.inner else { return };
        match s.unpin() {
            Ok(true) => tracing::debug!("unpinned the steering program"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "removing the steering pins failed"),
        }
    }

    /// Makes the pins `uid`'s (before dropping privileges to it).
    pub(crate) fn give_pins_to(&self, uid: u32, gid: u32) {
        let Some(s) = &self.inner else { return };
        if let Err(e) = s.chown_pins(uid, gid) {
            tracing::warn!(error = %e, uid, "handing the steering pins to the user failed");
        }
    }

    /// The program's counters, if a program is in force.
    pub(crate) fn stats(&self, mode: Steering) -> Option<SteeringStats> {
        let s = self.inner.as_ref()?;
        match s.stats() {
            Ok(st) => Some(SteeringStats {
                mode,
                selected: st.selected,
                fallbacks: st.fallbacks,
                migrated: st.migrated,
                generation: s.generation(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "reading the steering counters failed");
                None
            }
        }
    }
}

impl WorkerSteer {
    /// The loop woke up with work.
    #[inline]
    pub(crate) fn turn_started(&mut self) {
        if !self.stamp_turns {
            return;
        }
        if let Some(h) = &self.handle {
            self.turn_start = corelane_steering::monotonic_ns();
            h.turn_started(self.turn_start);
        }
    }

    /// The loop made progress inside its turn (accepted a connection,
    /// handled a batch of events): the stall signal is time without
    /// progress, so a worker busy with a burst, or preempted for a moment,
    /// does not look stuck the way one blocked in a handler does.
    #[inline]
    pub(crate) fn progress(&mut self) {
        if !self.stamp_turns || self.turn_start == 0 {
            return;
        }
        if let Some(h) = &self.handle {
            let now = corelane_steering::monotonic_ns();
            record_lag(
                &mut self.lag,
                &mut self.published_lag,
                h,
                self.turn_start,
                now,
            );
            self.turn_start = now;
            h.turn_started(now);
        }
    }

    /// The loop goes back to waiting, serving `conns` connections.
    #[inline]
    pub(crate) fn turn_ended(&mut self, conns: usize) {
        let Some(h) = &self.handle else { return };
        h.set_connections(conns);
        if self.stamp_turns && self.turn_start != 0 {
            h.turn_ended();
            let end = corelane_steering::monotonic_ns();
            record_lag(
                &mut self.lag,
                &mut self.published_lag,
                h,
                self.turn_start,
                end,
            );
            self.turn_start = 0;
        }
    }

    /// The worker accepted a connection and now serves `conns`: counted,
    /// no longer pending, and progress.
    #[inline]
    pub(crate) fn accepted(&mut self, conns: usize) {
        if let Some(h) = &self.handle {
            h.accepted(conns);
        }
        self.progress();
    }

    /// The listener's accept queue is empty, and the worker serves `conns`
    /// connections: both published together, so the program never sees the
    /// just-accepted connections neither pending nor counted.
    #[inline]
    pub(crate) fn accept_queue_empty(&self, conns: usize) {
        if let Some(h) = &self.handle {
            h.set_connections(conns);
            h.accept_queue_empty();
        }
    }

    /// How soon the loop must wake, even with nothing to do, so that a long
    /// stretch it published ages out (the program reads no clock of its
    /// own for it): a worker steered around because it looked stalled gets
    /// no events, and would otherwise keep looking stalled.
    pub(crate) fn wake_within(&self) -> Option<Duration> {
        (self.stall_ns != 0 && self.published_lag > self.stall_ns).then_some(TurnLag::WINDOW)
    }

    /// Excludes the worker from new connections.
    pub(crate) fn set_draining(&self) {
        if let Some(h) = &self.handle {
            h.set_draining(true);
        }
    }

    /// Whether connections queued on the worker's listener migrate to other
    /// workers when it closes (`SELECT_OR_MIGRATE` in force).
    pub(crate) fn migrates(&self) -> bool {
        self.handle.is_some()
    }
}

/// Records the stretch without progress from `start` to `now` in `lag`,
/// publishing the recent longest when it changes.
#[inline]
fn record_lag(lag: &mut TurnLag, published: &mut u64, h: &WorkerHandle, start: u64, now: u64) {
    let longest = lag.record(start, now);
    if longest != *published {
        *published = longest;
        h.set_recent_turn(longest);
    }
}

/// Loads the program for `listeners` (all listening) with `policy`, pinned
/// under the address's directory; taking over from an eBPF `previous`,
/// joins its pinned program instead.
///
/// # Errors
///
/// Why the program could not be loaded or attached (no CAP_BPF, an old
/// kernel, ...).
pub(crate) fn attach(
    policy: Policy,
    listeners: &[mio::net::TcpListener],
    cpus: &[Option<usize>],
    stall: Option<Duration>,
    addr: SocketAddr,
    previous: Option<&PreviousSteering>,
) -> Result<Ebpf, AttachError> {
    let fds: Vec<_> = listeners.iter().map(|l| l.as_fd()).collect();
    let mut settings = Settings::new(policy);
    settings.stall = stall;
    let dir = corelane_steering::pin_dir(addr);
    match corelane_steering::ensure_bpffs() {
        Ok(()) => {
            settings.pin = Some(dir.clone());
            let stale = corelane_steering::remove_stale_pins();
            if stale > 0 {
                tracing::info!(
                    stale,
                    "removed the steering pins of servers that were killed"
                );
            }
        }
        Err(e) => tracing::debug!(error = %e, "not pinning the steering program"),
    }
    let stall_ns = stall.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let wrap = |s: EbpfSteering| Ebpf {
        inner: Some(Arc::new(s)),
        stall_ns,
    };
    if let Some(previous) = previous.filter(|p| p.ebpf && settings.pin.is_some()) {
        if let Some(s) = join(&dir, &fds, cpus, &settings, previous.pid) {
            return Ok(wrap(s));
        }
    }
    let s = EbpfSteering::attach(&fds, cpus, &settings)?;
    if settings.pin.is_some() {
        if let Err(e) = s.pinned() {
            tracing::warn!(
                "steering program not pinned ({e}): a process taking over {addr} will load its own"
            );
        }
    }
    Ok(wrap(s))
}

/// Joins the program pinned by process `owner`; `None` (logged) when it
/// cannot, and a new program is loaded instead.
fn join(
    dir: &Path,
    fds: &[std::os::fd::BorrowedFd<'_>],
    cpus: &[Option<usize>],
    settings: &Settings,
    owner: u32,
) -> Option<EbpfSteering> {
    match EbpfSteering::join(dir, fds, cpus, settings, owner) {
        Ok(s) => {
            tracing::info!(
                pinned = %dir.display(),
                generation = s.generation(),
                "took over the pinned steering program: new connections come here"
            );
            Some(s)
        }
        Err(e) => {
            tracing::info!("cannot take over the pinned steering program ({e}); loading a new one");
            None
        }
    }
}
