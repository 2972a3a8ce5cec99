//! The server: builder, start-up, shutdown and `run`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::listener;
use crate::metrics::Metrics;
use crate::options::{ServerOptions, Workers};
use crate::steering::{self, Steering};
use crate::sys;
use crate::takeover;
use crate::worker::Worker;

/// Where a worker runs, given to the handler factory on the worker's thread.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Worker index, `0..workers`.
    pub index: usize,
    /// Number of workers of the server.
    pub workers: usize,
    /// The CPU the worker is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// The server's metrics (every worker's), e.g. for a metrics endpoint.
    pub metrics: Metrics,
    /// The steering mode in force.
    pub steering: Steering,
}

impl WorkerInfo {
    /// Describes worker `index` of `workers` outside any server, with fresh
    /// metrics and kernel steering: for building a handler directly in tests,
    /// benches and fuzzers.
    #[must_use]
    pub fn detached(index: usize, workers: usize) -> Self {
        WorkerInfo {
            index,
            workers,
            cpu: None,
            metrics: Metrics::new(workers),
            steering: Steering::Kernel,
        }
    }
}

/// Builds a [`Server`]. Every setter returns the builder; finish with
/// [`build`](ServerBuilder::build).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ServerBuilder {
    opts: ServerOptions,
}

macro_rules! setters {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty ),* $(,)?) => {$(
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.opts.$name = value;
            self
        }
    )*};
}

impl ServerBuilder {
    /// Starts from the given options instead of the defaults.
    pub fn options(mut self, opts: ServerOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Starts one worker per CPU of the affinity mask (the default).
    pub fn workers_per_cpu(mut self) -> Self {
        self.opts.workers = Workers::PerCpu;
        self
    }

    /// Starts `n` workers.
    pub fn workers(mut self, n: usize) -> Self {
        self.opts.workers = Workers::Count(n);
        self
    }

    /// Starts one worker on each listed CPU.
    pub fn cpus(mut self, cpus: impl Into<Vec<usize>>) -> Self {
        self.opts.workers = Workers::Cpus(cpus.into());
        self
    }

    setters! {
        /// Address to listen on (see [`ServerOptions::addr`]).
        addr: SocketAddr,
        /// Pin workers to their CPUs (see [`ServerOptions::pin`]).
        pin: bool,
        /// Listen backlog (see [`ServerOptions::backlog`]).
        backlog: i32,
        /// Steering policy (see [`ServerOptions::steering`]).
        steering: Steering,
        /// Stall time for least-loaded steering (see [`ServerOptions::stall_threshold`]).
        stall_threshold: Option<Duration>,
        /// `TCP_NODELAY` on accepted connections (see [`ServerOptions::nodelay`]).
        nodelay: bool,
        /// Connection cap per worker (see [`ServerOptions::max_connections_per_worker`]).
        max_connections_per_worker: usize,
        /// Accepts per loop turn (see [`ServerOptions::accept_budget`]).
        accept_budget: usize,
        /// Reads per connection per loop turn (see [`ServerOptions::read_budget`]).
        read_budget: usize,
        /// Pooled buffer size (see [`ServerOptions::buffer_size`]).
        buffer_size: usize,
        /// Unconsumed input limit (see [`ServerOptions::max_input`]).
        max_input: usize,
        /// Output high-water mark (see [`ServerOptions::output_high_water`]).
        output_high_water: usize,
        /// Header / first-byte timeout (see [`ServerOptions::header_timeout`]).
        header_timeout: Option<Duration>,
        /// Idle keep-alive timeout (see [`ServerOptions::idle_timeout`]).
        idle_timeout: Option<Duration>,
        /// Write-stall timeout (see [`ServerOptions::write_timeout`]).
        write_timeout: Option<Duration>,
        /// Lingering-close time (see [`ServerOptions::linger_timeout`]).
        linger_timeout: Duration,
        /// Tick interval (see [`ServerOptions::tick_interval`]).
        tick_interval: Duration,
        /// Timer wheel resolution (see [`ServerOptions::timer_resolution`]).
        timer_resolution: Duration,
        /// Pause after descriptor exhaustion (see [`ServerOptions::accept_pause`]).
        accept_pause: Duration,
        /// Graceful shutdown deadline (see [`ServerOptions::shutdown_timeout`]).
        shutdown_timeout: Duration,
        /// Idle buffers kept per worker (see [`ServerOptions::pool_max_idle`]).
        pool_max_idle: usize,
        /// Delay before memory is reclaimed (see [`ServerOptions::reclaim_after`]).
        reclaim_after: Duration,
        /// SIGINT/SIGTERM handling (see [`ServerOptions::handle_signals`]).
        handle_signals: bool,
        /// Raise the descriptor limit (see [`ServerOptions::raise_nofile_limit`]).
        raise_nofile_limit: bool,
        /// Serve as this user after setting up (see [`ServerOptions::user`]).
        user: Option<String>,
        /// Idle connections' grace in a drain (see [`ServerOptions::drain_grace`]).
        drain_grace: Duration,
        /// Accept a connection only once its first data arrives (see [`ServerOptions::defer_accept`]).
        defer_accept: Option<Duration>,
        /// Take the address over from the process serving it (see [`ServerOptions::takeover`]).
        takeover: bool,
        /// Listen on the control socket (see [`ServerOptions::control_socket`]).
        control_socket: bool,
    }

    /// Validates the options, binds the listeners of the reuseport group and
    /// returns a server ready to [`run`](Server::run).
    ///
    /// `factory` runs once on each worker's own thread and returns that
    /// worker's handler, so the handler need not be `Send`. It is told which
    /// worker it builds for ([`WorkerInfo`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for inconsistent options, [`Error::Affinity`] when the
    /// CPU mask cannot be read, and [`Error::Socket`], [`Error::Bind`] or
    /// [`Error::Listen`] when the address cannot be served.
    pub fn build<F, H>(self, factory: F) -> Result<Server<F>>
    where
        F: Fn(&WorkerInfo) -> H + Send + Sync + 'static,
        H: Handler,
    {
        let opts = self.opts;
        opts.validate()?;
        let allowed = sys::allowed_cpus().map_err(Error::Affinity)?;
        let cpus: Vec<usize> = match &opts.workers {
            Workers::PerCpu => allowed.clone(),
            Workers::Count(n) => (0..*n).map(|i| allowed[i % allowed.len()]).collect(),
            Workers::Cpus(list) => {
                if let Some(bad) = list.iter().find(|c| !allowed.contains(c)) {
                    return Err(Error::Config(format!(
                        "CPU {bad} is not in this process's affinity mask {allowed:?}"
                    )));
                }
                list.clone()
            }
        };
        if opts.raise_nofile_limit {
            raise_nofile_limit();
        }
        // Who serves the address now: asked before binding, because a
        // listener that joined the group would receive connections.
        let previous = if opts.control_socket && opts.addr.port() != 0 {
            takeover::find(opts.addr).map_err(|source| Error::Takeover {
                addr: opts.addr,
                source,
            })?
        } else {
            None
        };
        match (&previous, opts.takeover) {
            (Some(p), false) => {
                return Err(Error::Served {
                    addr: opts.addr,
                    pid: p.pid,
                })
            }
            (Some(p), true) => tracing::info!(
                addr = %opts.addr,
                pid = p.pid,
                steering = %p.steering,
                workers = p.workers,
                "taking over"
            ),
            (None, true) => tracing::info!(
                addr = %opts.addr,
                "takeover: no corelane process serves the address; starting afresh"
            ),
            (None, false) => {}
        }
        let listeners = listener::bind_group(
            opts.addr,
            cpus.len(),
            opts.backlog,
            opts.nodelay,
            opts.defer_accept,
        )?;
        let local_addr = listeners[0].local_addr().map_err(|source| Error::Bind {
            addr: opts.addr,
            source,
        })?;
        // Claim the control socket now, so a server started from here on
        // finds this one; when taking over, the previous process lets go of
        // it once told to drain (in `run`).
        let control = if opts.control_socket && previous.is_none() {
            match takeover::claim(local_addr, Duration::ZERO) {
                Ok(l) => Some(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(Error::Takeover {
                        addr: local_addr,
                        source: std::io::Error::new(
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
                    None
                }
            }
        } else {
            None
        };
        let cpus: Vec<Option<usize>> = if opts.pin {
            cpus.into_iter().map(Some).collect()
        } else {
            vec![None; cpus.len()]
        };
        let mut opts = opts;
        // Every listener is listening: the group is complete, steer it.
        let applied = steering::apply(
            opts.steering,
            &listeners,
            &cpus,
            opts.stall_threshold,
            local_addr,
            previous.as_ref(),
        );
        let (mode, ebpf) = (applied.mode, applied.ebpf);
        opts.steering = mode;
        if let Some(user) = &opts.user {
            let privileges = |source| Error::Privileges {
                user: user.clone(),
                source,
            };
            // The pins become the user's, so that the last process of the
            // address can remove them as it stops.
            let (uid, gid) = sys::lookup_user(user).map_err(privileges)?;
            ebpf.give_pins_to(uid, gid);
            let (uid, gid) = sys::drop_privileges(user).map_err(privileges)?;
            tracing::info!(user = %user, uid, gid, steering = %mode, "dropped privileges");
        }
        Ok(Server {
            metrics: Metrics::new(cpus.len()).with_steering(mode, ebpf.clone()),
            shutdown: ShutdownHandle::new(cpus.len(), ebpf.clone()),
            ebpf,
            cpus,
            listeners,
            local_addr,
            previous,
            control,
            migrates: applied.migrates,
            opts: Arc::new(opts),
            factory: Arc::new(factory),
        })
    }
}

/// A bound server: listeners are listening; [`run`](Server::run) starts the
/// workers.
#[derive(Debug)]
pub struct Server<F> {
    opts: Arc<ServerOptions>,
    ebpf: steering::Ebpf,
    listeners: Vec<mio::net::TcpListener>,
    local_addr: SocketAddr,
    /// The process being taken over, told to drain once the workers run.
    previous: Option<takeover::Predecessor>,
    /// This address's control socket, claimed (unless taking over).
    control: Option<std::os::unix::net::UnixListener>,
    /// Whether the group migrates closing listeners' queues.
    migrates: bool,
    cpus: Vec<Option<usize>>,
    metrics: Metrics,
    shutdown: ShutdownHandle,
    factory: Arc<F>,
}

impl Server<()> {
    /// A builder with the default options.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }
}

impl<F, H> Server<F>
where
    F: Fn(&WorkerInfo) -> H + Send + Sync + 'static,
    H: Handler,
{
    /// The address the listeners are bound to (with the real port when the
    /// options asked for port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of workers (and listeners).
    #[must_use]
    pub fn workers(&self) -> usize {
        self.listeners.len()
    }

    /// The options in force.
    #[must_use]
    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// A handle to the per-worker counters, valid during and after `run`.
    #[must_use]
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// A handle that stops the server from any thread.
    #[must_use]
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Starts one thread per worker and serves until shutdown.
    ///
    /// Returns when every worker has stopped: after a graceful shutdown (by a
    /// [`ShutdownHandle`], or SIGINT/SIGTERM when
    /// [`handle_signals`](ServerOptions::handle_signals) is on), or when a
    /// worker failed, in which case the others are shut down too.
    ///
    /// # Errors
    ///
    /// The first worker error: [`Error::Pin`], [`Error::Spawn`],
    /// [`Error::Worker`], [`Error::Panic`]; or [`Error::Signals`].
    pub fn run(self) -> Result<()> {
        let signals = if self.opts.handle_signals {
            Some(spawn_signal_thread(self.shutdown.clone()).map_err(Error::Signals)?)
        } else {
            None
        };
        let cpu_list: Vec<String> = self
            .cpus
            .iter()
            .map(|c| c.map_or_else(|| "-".to_owned(), |c| c.to_string()))
            .collect();
        tracing::info!(
            addr = %self.local_addr,
            workers = self.listeners.len(),
            cpus = %cpu_list.join(","),
            steering = %self.opts.steering,
            "corelane listening"
        );

        let mut threads = Vec::with_capacity(self.listeners.len());
        let mut first_error = None;
        let workers = self.listeners.len();
        for (index, listener) in self.listeners.into_iter().enumerate() {
            let steer = self.ebpf.worker(index);
            let info = WorkerInfo {
                index,
                workers: self.cpus.len(),
                cpu: self.cpus[index],
                metrics: self.metrics.clone(),
                steering: self.opts.steering,
            };
            let opts = Arc::clone(&self.opts);
            let metrics = self.metrics.clone();
            let shutdown = self.shutdown.clone();
            let factory = Arc::clone(&self.factory);
            let spawned = thread::Builder::new()
                .name(format!("corelane-w{index}"))
                .spawn(move || {
                    let result = Worker::start(
                        info,
                        listener,
                        opts,
                        metrics,
                        shutdown.clone(),
                        steer,
                        |i| factory(i),
                    )
                    .and_then(Worker::run);
                    if result.is_err() {
                        // One worker down takes the server down, gracefully.
                        shutdown.shutdown();
                    }
                    result
                });
            match spawned {
                Ok(t) => threads.push((index, t)),
                Err(source) => {
                    first_error = Some(Error::Spawn {
                        worker: index,
                        source,
                    });
                    self.shutdown.shutdown();
                    break;
                }
            }
        }

        let control = hand_over_and_listen(
            self.previous,
            self.control,
            self.migrates,
            &self.shutdown,
            &self.opts,
            self.local_addr,
            workers,
        );

        for (index, t) in threads {
            let result = match t.join() {
                Ok(r) => r,
                Err(payload) => {
                    self.shutdown.shutdown();
                    Err(Error::Panic {
                        worker: index,
                        message: panic_message(&payload),
                    })
                }
            };
            if let Err(e) = result {
                tracing::error!(worker = index, error = %e, "worker stopped with an error");
                first_error.get_or_insert(e);
            }
        }
        if let Some(handle) = signals {
            handle.close();
        }
        if let Some(c) = control {
            c.close();
        }
        if self.shutdown.handed_over() {
            tracing::info!(addr = %self.local_addr, "corelane stopped: handed over");
            self.shutdown.release_successor();
            return first_error.map_or(Ok(()), Err);
        }
        self.ebpf.unpin();
        tracing::info!(addr = %self.local_addr, "corelane stopped");
        first_error.map_or(Ok(()), Err)
    }
}

/// With the workers running: tells the process being taken over (if any) to
/// drain, then answers on this address's control socket.
fn hand_over_and_listen(
    previous: Option<takeover::Predecessor>,
    claimed: Option<std::os::unix::net::UnixListener>,
    migrates: bool,
    shutdown: &ShutdownHandle,
    opts: &ServerOptions,
    local_addr: SocketAddr,
    workers: usize,
) -> Option<takeover::Control> {
    if let Some(previous) = previous {
        let started = Instant::now();
        if shutdown.is_shutting_down() {
            tracing::warn!(
                pid = previous.pid,
                "not taking over: this server is stopping already"
            );
            return None;
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
    if !opts.control_socket {
        return None;
    }
    let describe = takeover::Describe {
        steering: opts.steering.as_str().to_owned(),
        workers,
    };
    let listener = match claimed {
        Some(l) => Ok(l),
        None => takeover::claim(local_addr, Duration::from_secs(10)),
    };
    match listener.and_then(|l| takeover::serve(l, describe, shutdown.clone())) {
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

fn raise_nofile_limit() {
    match sys::nofile_limit() {
        Ok((soft, hard)) if soft < hard => match sys::set_nofile_soft_limit(hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the descriptor limit"),
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "could not raise the descriptor limit")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the descriptor limit"),
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

fn spawn_signal_thread(
    shutdown: ShutdownHandle,
) -> std::io::Result<signal_hook::iterator::backend::Handle> {
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
    Ok(handle)
}

const RUNNING: u8 = 0;
const GRACEFUL: u8 = 1;
const IMMEDIATE: u8 = 2;

/// Stops a server, or one of its workers, from any thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    state: Arc<ShutdownState>,
}

#[derive(Debug)]
struct ShutdownState {
    phase: AtomicU8,
    /// Per worker: asked to stop on its own ([`ShutdownHandle::stop_worker`]).
    stop: Vec<AtomicBool>,
    wakers: Mutex<Vec<Option<Arc<mio::Waker>>>>,
    ebpf: steering::Ebpf,
    /// Handed over to another process: [`NO_HANDOVER`], [`MIGRATE`] or
    /// [`ACCEPT`] (how the listeners' queues are dealt with).
    handover: AtomicU8,
    /// The control connection of the process taken over by: held open until
    /// this server has finished, so that process sees the end.
    successor: Mutex<Option<std::os::unix::net::UnixStream>>,
}

const NO_HANDOVER: u8 = 0;
const MIGRATE: u8 = 1;
const ACCEPT: u8 = 2;

impl ShutdownHandle {
    pub(crate) fn new(workers: usize, ebpf: steering::Ebpf) -> Self {
        ShutdownHandle {
            state: Arc::new(ShutdownState {
                phase: AtomicU8::new(RUNNING),
                stop: (0..workers).map(|_| AtomicBool::new(false)).collect(),
                wakers: Mutex::new(vec![None; workers]),
                ebpf,
                handover: AtomicU8::new(NO_HANDOVER),
                successor: Mutex::new(None),
            }),
        }
    }

    /// Starts a graceful shutdown: workers stop accepting, finish and flush
    /// the messages in flight, close idle connections, and stop when they have
    /// none left or at the [shutdown deadline](ServerOptions::shutdown_timeout).
    pub fn shutdown(&self) {
        self.advance(GRACEFUL);
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
        if self.state.ebpf.is_some() {
            self.state.ebpf.worker(index).set_draining();
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

    /// Whether a shutdown has started.
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.phase() != RUNNING
    }

    /// Whether another process has taken the address over (see
    /// [`ServerOptions::takeover`]): this server is draining, and
    /// [`run`](Server::run) returns once it has finished.
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

    fn advance(&self, to: u8) {
        let prev = self.state.phase.fetch_max(to, Ordering::SeqCst);
        if prev < to {
            self.wake_all();
        }
    }

    fn wake_all(&self) {
        let wakers = self.state.wakers.lock().unwrap_or_else(|e| e.into_inner());
        for w in wakers.iter().flatten() {
            if let Err(e) = w.wake() {
                tracing::warn!(error = %e, "waking a worker for shutdown failed");
            }
        }
    }

    pub(crate) fn phase(&self) -> u8 {
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
