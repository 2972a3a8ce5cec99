//! Shutdown, drain and hand-over state, shared by the server, its workers,
//! its signal thread and its control socket.
//!
//! A server is running, shutting down gracefully, or closing everything at
//! once; one worker may be asked to stop on its own; and the whole server
//! may have handed its address over to another process (and then says how
//! its listeners' queues are dealt with). Workers read this state at each
//! loop turn; whoever changes it wakes them.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::mailbox::{Mailboxes, PostError};
use crate::steering;

/// SIGINT/SIGTERM handling: the first signal starts a graceful shutdown,
/// a second closes everything at once. Installed by
/// [`build`](crate::ServerBuilder::build), as soon as the listeners are
/// open, so a signal that arrives before [`run`](crate::Server::run) stops
/// the server gracefully instead of killing the process. Uninstalled when
/// dropped.
#[derive(Debug)]
pub(crate) struct SignalThread {
    handle: signal_hook::iterator::backend::Handle,
}

impl SignalThread {
    /// Installs the handlers and starts the thread that acts on `shutdown`.
    pub(crate) fn spawn(shutdown: ShutdownHandle) -> std::io::Result<SignalThread> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        thread::Builder::new()
            .name("corelane-signals".into())
            .spawn(move || {
                // Act first, then log: nothing a log line does may stop the
                // signal from taking effect.
                for sig in signals.forever() {
                    if shutdown.is_shutting_down() {
                        shutdown.shutdown_now();
                        tracing::warn!(signal = sig, "second signal: closing all connections now");
                    } else {
                        shutdown.shutdown();
                        tracing::info!(signal = sig, "shutting down gracefully");
                    }
                }
            })?;
        Ok(SignalThread { handle })
    }
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        self.handle.close();
    }
}

const RUNNING: u8 = 0;
/// Stopping, within the drain delay: not ready, listeners still open.
const ANNOUNCED: u8 = 1;
const GRACEFUL: u8 = 2;
const IMMEDIATE: u8 = 3;

/// What a server is doing, for health and readiness checks (see
/// [`ShutdownHandle::state`] and [`Context::server_state`](crate::Context::server_state)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerState {
    /// Serving: a load balancer may send new connections here.
    Serving,
    /// A graceful shutdown has begun: not ready from this moment until the
    /// process exits. During the [drain
    /// delay](crate::ServerOptions::drain_delay) the listeners still accept
    /// (balancers need a moment to stop sending), then they close; in-flight
    /// and keep-alive work finishes either way, handlers being told
    /// [`Input::draining`](crate::Input::draining) (HTTP answers
    /// `Connection: close`).
    Draining,
    /// Another process took the address over (see
    /// [`ServerOptions::takeover`](crate::ServerOptions::takeover)): new
    /// connections go there, this one finishes what it has.
    HandedOver,
}

impl ServerState {
    /// Whether a balancer should send new connections here (`/readyz`).
    #[must_use]
    pub fn is_ready(self) -> bool {
        self == ServerState::Serving
    }

    /// `serving`, `draining` or `handed_over`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Serving => "serving",
            ServerState::Draining => "draining",
            ServerState::HandedOver => "handed_over",
        }
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stops a server, or one of its workers, from any thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    state: Arc<ShutdownState>,
    mailboxes: Mailboxes,
}

#[derive(Debug)]
struct ShutdownState {
    phase: AtomicU8,
    /// Per worker: asked to stop on its own ([`ShutdownHandle::stop_worker`]).
    stop: Vec<AtomicBool>,
    wakers: Mutex<Vec<Option<Arc<mio::Waker>>>>,
    /// The steering program, once attached: stopping a worker excludes it
    /// from new connections at once.
    ebpf: OnceLock<steering::Ebpf>,
    /// Handed over to another process: [`NO_HANDOVER`], [`MIGRATE`] or
    /// [`ACCEPT`] (how the listeners' queues are dealt with).
    handover: AtomicU8,
    /// The control connection of the process taken over by: held open until
    /// this server has finished, so that process sees the end.
    successor: Mutex<Option<std::os::unix::net::UnixStream>>,
    /// How long a graceful shutdown keeps the listeners open after readiness
    /// turns off ([`ServerOptions::drain_delay`](crate::ServerOptions::drain_delay)).
    drain_delay: Duration,
}

const NO_HANDOVER: u8 = 0;
const MIGRATE: u8 = 1;
const ACCEPT: u8 = 2;

impl ShutdownHandle {
    pub(crate) fn new(workers: usize, mailboxes: Mailboxes, drain_delay: Duration) -> Self {
        ShutdownHandle {
            mailboxes,
            state: Arc::new(ShutdownState {
                phase: AtomicU8::new(RUNNING),
                stop: (0..workers).map(|_| AtomicBool::new(false)).collect(),
                wakers: Mutex::new(vec![None; workers]),
                ebpf: OnceLock::new(),
                handover: AtomicU8::new(NO_HANDOVER),
                successor: Mutex::new(None),
                drain_delay,
            }),
        }
    }

    /// Every worker's mailbox (see [`Mailboxes`]).
    #[must_use]
    pub fn mailboxes(&self) -> &Mailboxes {
        &self.mailboxes
    }

    /// Posts `body` to worker `worker` from any thread: see
    /// [`Mailboxes::post`].
    ///
    /// # Errors
    ///
    /// [`PostError`]: the mailbox is full (the body comes back), or there
    /// is no such worker, or it has stopped.
    pub fn post(
        &self,
        worker: usize,
        tag: u64,
        body: impl std::any::Any + Send,
    ) -> std::result::Result<(), PostError> {
        self.mailboxes.post(worker, tag, body)
    }

    /// Starts a graceful shutdown: the server stops being ready at once
    /// ([`state`](Self::state) is [`ServerState::Draining`]); after the
    /// [drain delay](crate::ServerOptions::drain_delay), if any, workers stop
    /// accepting, finish and flush the messages in flight, close idle
    /// connections, and stop when they have none left or at the [shutdown
    /// deadline](crate::ServerOptions::shutdown_timeout). Called again
    /// within the drain delay, it ends the delay.
    pub fn shutdown(&self) {
        let delay = self.state.drain_delay;
        if delay.is_zero() || !self.advance(ANNOUNCED) {
            self.advance(GRACEFUL);
            return;
        }
        tracing::info!(
            delay_ms = delay.as_millis(),
            "not ready: listeners stay open for the drain delay, then drain"
        );
        let handle = self.clone();
        let delayed = thread::Builder::new()
            .name("corelane-drain".into())
            .spawn(move || {
                thread::sleep(delay);
                handle.advance(GRACEFUL);
            });
        if let Err(e) = delayed {
            tracing::warn!(error = %e, "no drain delay: its timer thread did not start");
            self.advance(GRACEFUL);
        }
    }

    /// Whether the server is serving, draining or handed over: what a
    /// readiness check reports.
    #[must_use]
    pub fn state(&self) -> ServerState {
        if self.handed_over() {
            ServerState::HandedOver
        } else if self.is_shutting_down() {
            ServerState::Draining
        } else {
            ServerState::Serving
        }
    }

    /// Closes every connection at once and stops the workers.
    pub fn shutdown_now(&self) {
        self.advance(IMMEDIATE);
    }

    /// Stops one worker gracefully while the others keep serving, dropping
    /// nothing: with eBPF steering the worker is excluded from new
    /// connections at once, and when it closes its listener the connections
    /// queued there (and those mid-handshake) migrate to the other workers;
    /// otherwise it accepts what is queued before closing. It then finishes
    /// its connections as in a graceful shutdown and its thread ends.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if there is no worker `index`.
    pub fn stop_worker(&self, index: usize) -> Result<()> {
        let Some(flag) = self.state.stop.get(index) else {
            return Err(Error::Config(format!(
                "no worker {index} (the server has {})",
                self.state.stop.len()
            )));
        };
        if let Some(ebpf) = self.state.ebpf.get().filter(|e| e.is_some()) {
            ebpf.worker(index).set_draining();
        }
        if !flag.swap(true, Ordering::SeqCst) {
            let wakers = self.state.wakers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(Some(w)) = wakers.get(index) {
                if let Err(e) = w.wake() {
                    tracing::warn!(worker = index, error = %e, "waking a worker to stop failed");
                }
            }
        }
        Ok(())
    }

    /// Tells the handle which steering program is in force.
    pub(crate) fn set_steering(&self, ebpf: steering::Ebpf) {
        let _ = self.state.ebpf.set(ebpf);
    }

    /// Whether a shutdown has started (also within the drain delay).
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.phase() != RUNNING
    }

    /// Whether workers are to close their listeners and finish: a shutdown
    /// past its drain delay.
    pub(crate) fn is_draining(&self) -> bool {
        self.phase() >= GRACEFUL
    }

    /// Whether another process has taken the address over (see
    /// [`ServerOptions::takeover`](crate::ServerOptions::takeover)): this server is draining, and
    /// [`run`](crate::Server::run) returns once it has finished.
    #[must_use]
    pub fn handed_over(&self) -> bool {
        self.state.handover.load(Ordering::SeqCst) != NO_HANDOVER
    }

    /// A process taking over the address asked this one to drain
    /// (`migrate`: the group migrates closing listeners' queues). `peer` is
    /// its control connection, kept open until this server has finished.
    pub(crate) fn hand_over(&self, migrate: bool, peer: std::os::unix::net::UnixStream) {
        *self
            .state
            .successor
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(peer);
        let how = if migrate { MIGRATE } else { ACCEPT };
        let _ = self.state.handover.compare_exchange(
            NO_HANDOVER,
            how,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.advance(GRACEFUL);
    }

    /// `Some(migrate)` once handed over (see [`hand_over`]).
    pub(crate) fn handover(&self) -> Option<bool> {
        match self.state.handover.load(Ordering::SeqCst) {
            MIGRATE => Some(true),
            ACCEPT => Some(false),
            _ => None,
        }
    }

    /// Lets the process that took over see that this one has finished.
    pub(crate) fn release_successor(&self) {
        drop(
            self.state
                .successor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }

    /// Moves the phase forward to `to`; whether it moved.
    fn advance(&self, to: u8) -> bool {
        let prev = self.state.phase.fetch_max(to, Ordering::SeqCst);
        if prev == RUNNING {
            crate::notify::stopping();
        }
        if prev < to {
            self.wake_all();
        }
        prev < to
    }

    fn wake_all(&self) {
        let wakers = self.state.wakers.lock().unwrap_or_else(|e| e.into_inner());
        for w in wakers.iter().flatten() {
            if let Err(e) = w.wake() {
                tracing::warn!(error = %e, "waking a worker for shutdown failed");
            }
        }
    }

    fn phase(&self) -> u8 {
        self.state.phase.load(Ordering::SeqCst)
    }

    pub(crate) fn is_immediate(&self) -> bool {
        self.phase() == IMMEDIATE
    }

    /// Whether worker `index` was asked to stop on its own.
    pub(crate) fn worker_stop_requested(&self, index: usize) -> bool {
        self.state
            .stop
            .get(index)
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Registers worker `index`'s waker. A shutdown that started before is
    /// not missed: the worker checks the phase after registering.
    pub(crate) fn register(&self, index: usize, waker: Arc<mio::Waker>) {
        let mut wakers = self.state.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if index >= wakers.len() {
            wakers.resize(index + 1, None);
        }
        wakers[index] = Some(waker);
    }
}
