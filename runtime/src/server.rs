//! The server: builder, start-up, shutdown and `run`.

use std::net::SocketAddr;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::listener;
use crate::mailbox::{Job, Mailboxes, OffloadPool};
use crate::metrics::Metrics;
use crate::options::{ServerOptions, Workers};
use crate::panic;
use crate::shutdown::{ShutdownHandle, SignalThread};
use crate::steering::{self, Steering};
use crate::sys;
use crate::takeover;
use crate::worker::{Worker, WorkerInfo};

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

    /// The options set so far.
    #[must_use]
    pub fn into_options(self) -> ServerOptions {
        self.opts
    }

    /// Speaks TLS on every accepted connection, with rustls and this
    /// configuration (see [`crate::tls`]).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: std::sync::Arc<rustls::ServerConfig>) -> Self {
        self.opts.tls = Some(config);
        self
    }

    /// The keys the [`tls`](Self::tls) configuration seals session tickets
    /// with ([`crate::tls::TicketKeys`], set as its `ticketer`): a takeover
    /// hands them from the old process to the new one, so sessions resume
    /// across it.
    #[cfg(feature = "tls")]
    pub fn tls_ticket_keys(mut self, keys: std::sync::Arc<crate::tls::TicketKeys>) -> Self {
        self.opts.tls_ticket_keys = Some(keys);
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
        /// Output low-water mark (see [`ServerOptions::output_low_water`]).
        output_low_water: usize,
        /// Header / first-byte timeout (see [`ServerOptions::header_timeout`]).
        header_timeout: Option<Duration>,
        /// Idle keep-alive timeout (see [`ServerOptions::idle_timeout`]).
        idle_timeout: Option<Duration>,
        /// Write-stall timeout (see [`ServerOptions::write_timeout`]).
        write_timeout: Option<Duration>,
        /// Outbound connect timeout (see [`ServerOptions::connect_timeout`]).
        connect_timeout: Duration,
        /// Messages per worker mailbox (see [`ServerOptions::mailbox_capacity`]).
        mailbox_capacity: usize,
        /// Offload threads (see [`ServerOptions::offload_threads`]).
        offload_threads: usize,
        /// Offload queue (see [`ServerOptions::offload_queue`]).
        offload_queue: usize,
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
        /// Listeners stay open this long after readiness turns off (see [`ServerOptions::drain_delay`]).
        drain_delay: Duration,
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
    /// CPU mask cannot be read, [`Error::Signals`] when signal handling
    /// cannot be installed, [`Error::Served`] or [`Error::Takeover`] when
    /// another corelane process serves the address, [`Error::Socket`],
    /// [`Error::Bind`] or [`Error::Listen`] when the address cannot be
    /// served, and [`Error::Privileges`] when the user cannot be switched to.
    pub fn build<F, H>(self, factory: F) -> Result<Server<F>>
    where
        F: Fn(&WorkerInfo) -> H + Send + Sync + 'static,
        H: Handler,
    {
        let mut opts = self.opts;
        opts.validate()?;
        opts.output_low_water = opts.output_low_water.min(opts.output_high_water);
        let cpus = worker_cpus(&opts)?;
        let mailboxes = Mailboxes::new(cpus.len(), opts.mailbox_capacity);
        let shutdown = ShutdownHandle::new(cpus.len(), mailboxes.clone(), opts.drain_delay);
        // Before the port accepts anything: a signal from here on stops the
        // server gracefully instead of killing the process.
        let signals = if opts.handle_signals {
            Some(SignalThread::spawn(shutdown.clone()).map_err(Error::Signals)?)
        } else {
            None
        };
        if opts.raise_nofile_limit {
            raise_nofile_limit();
        }
        let previous = takeover::predecessor(&opts)?;
        #[cfg(feature = "tls")]
        if let (Some(previous), Some(keys)) = (&previous, &opts.tls_ticket_keys) {
            previous.take_ticket_keys(keys);
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
        let control = takeover::claim_at_build(&opts, local_addr, previous.is_some())?;
        let cpus: Vec<Option<usize>> = cpus.into_iter().map(|c| opts.pin.then_some(c)).collect();
        // Every listener is listening: the group is complete, steer it.
        let applied = steering::apply(
            opts.steering,
            &listeners,
            &cpus,
            opts.stall_threshold,
            local_addr,
            previous
                .as_ref()
                .map(takeover::Predecessor::steering)
                .as_ref(),
        );
        opts.steering = applied.mode;
        shutdown.set_steering(applied.ebpf.clone());
        if let Some(user) = &opts.user {
            serve_as(user, &applied.ebpf, applied.mode)?;
        }
        Ok(Server {
            metrics: Metrics::new(cpus.len()).with_steering(applied.mode, applied.ebpf.clone()),
            shutdown,
            mailboxes,
            signals,
            ebpf: applied.ebpf,
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

/// The CPUs the workers run on, one per worker.
fn worker_cpus(opts: &ServerOptions) -> Result<Vec<usize>> {
    let allowed = sys::allowed_cpus().map_err(Error::Affinity)?;
    Ok(match &opts.workers {
        Workers::PerCpu => allowed,
        Workers::Count(n) => (0..*n).map(|i| allowed[i % allowed.len()]).collect(),
        Workers::Cpus(list) => {
            if let Some(bad) = list.iter().find(|c| !allowed.contains(c)) {
                return Err(Error::Config(format!(
                    "CPU {bad} is not in this process's affinity mask {allowed:?}"
                )));
            }
            list.clone()
        }
    })
}

/// Switches the process to `user` for good, handing it the steering pins
/// first so that the last process of the address can remove them.
fn serve_as(user: &str, ebpf: &steering::Ebpf, mode: Steering) -> Result<()> {
    let privileges = |source| Error::Privileges {
        user: user.to_owned(),
        source,
    };
    let (uid, gid) = sys::lookup_user(user).map_err(privileges)?;
    ebpf.give_pins_to(uid, gid);
    let (uid, gid) = sys::drop_privileges(user).map_err(privileges)?;
    tracing::info!(user = %user, uid, gid, steering = %mode, "dropped privileges");
    Ok(())
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
    mailboxes: Mailboxes,
    /// SIGINT/SIGTERM handling, installed by `build`.
    signals: Option<SignalThread>,
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

    /// Every worker's mailbox: post to a worker, or to one of its
    /// connections, from any thread (see [`Mailboxes`]).
    #[must_use]
    pub fn mailboxes(&self) -> Mailboxes {
        self.mailboxes.clone()
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
    /// [`Error::Worker`], [`Error::Panic`].
    pub fn run(mut self) -> Result<()> {
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

        let workers = self.listeners.len();
        let (offload, jobs) = match OffloadPool::start(
            self.opts.offload_threads,
            self.opts.offload_queue,
            &self.mailboxes,
        ) {
            Ok(started) => started,
            Err(source) => return Err(Error::Offload(source)),
        };
        let (threads, spawn_error) = self.spawn_workers(jobs);
        let control = takeover::start(
            self.previous,
            self.control,
            self.migrates,
            &self.shutdown,
            &self.opts,
            self.local_addr,
            workers,
        );
        if spawn_error.is_none() && !self.shutdown.is_shutting_down() {
            crate::notify::ready(self.local_addr);
        }

        // Joined even after a failed spawn: the started workers are stopping.
        let joined = join_workers(threads, &self.shutdown);
        // Every worker (and so every sender of jobs) is gone: the offload
        // threads finish the jobs they hold and end.
        offload.join();
        let first_error = spawn_error.or(joined);
        drop(self.signals);
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

    /// Starts one thread per worker, each taking its listener. A failed
    /// spawn stops the ones started (gracefully) and is returned.
    fn spawn_workers(
        &mut self,
        jobs: Option<SyncSender<Job>>,
    ) -> (Vec<WorkerThread>, Option<Error>) {
        let mut threads = Vec::with_capacity(self.listeners.len());
        for (index, listener) in std::mem::take(&mut self.listeners).into_iter().enumerate() {
            let steer = self.ebpf.worker(index);
            let info = WorkerInfo {
                index,
                workers: self.cpus.len(),
                cpu: self.cpus[index],
                metrics: self.metrics.clone(),
                steering: self.opts.steering,
                mailboxes: self.mailboxes.clone(),
            };
            let jobs = jobs.clone();
            let opts = Arc::clone(&self.opts);
            let shutdown = self.shutdown.clone();
            let factory = Arc::clone(&self.factory);
            let spawned = thread::Builder::new()
                .name(format!("corelane-w{index}"))
                .spawn(move || {
                    // Handler callbacks catch their own panics; this catches
                    // one in the factory or in the runtime, so that every
                    // worker's end is seen, whichever it is.
                    let result = panic::catch(|| {
                        Worker::start(info, listener, opts, shutdown.clone(), steer, jobs, |i| {
                            factory(i)
                        })
                        .and_then(Worker::run)
                    })
                    .unwrap_or_else(|message| {
                        Err(Error::Panic {
                            worker: index,
                            message,
                        })
                    });
                    if result.is_err() {
                        // One worker down takes the server down, gracefully.
                        shutdown.shutdown();
                    }
                    result
                });
            match spawned {
                Ok(t) => threads.push((index, t)),
                Err(source) => {
                    self.shutdown.shutdown();
                    return (
                        threads,
                        Some(Error::Spawn {
                            worker: index,
                            source,
                        }),
                    );
                }
            }
        }
        (threads, None)
    }
}

/// A worker's index and thread.
type WorkerThread = (usize, thread::JoinHandle<Result<()>>);

/// Waits for every worker; returns the first error (a panic is one, and
/// stops the others).
fn join_workers(threads: Vec<WorkerThread>, shutdown: &ShutdownHandle) -> Option<Error> {
    let mut first_error = None;
    for (index, t) in threads {
        let result = match t.join() {
            Ok(r) => r,
            Err(payload) => {
                shutdown.shutdown();
                Err(Error::Panic {
                    worker: index,
                    message: panic::message(&*payload),
                })
            }
        };
        if let Err(e) = result {
            tracing::error!(worker = index, error = %e, "worker stopped with an error");
            first_error.get_or_insert(e);
        }
    }
    first_error
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
