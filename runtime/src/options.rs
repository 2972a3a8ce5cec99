//! Server options and their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::Error;
use crate::steering::Steering;

/// Which workers to start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Workers {
    /// One worker per CPU in the process's affinity mask (what `taskset` or a
    /// cgroup cpuset allows), each pinned to its CPU.
    #[default]
    PerCpu,
    /// This many workers, pinned to the first CPUs of the affinity mask
    /// (round robin when there are more workers than CPUs).
    Count(usize),
    /// One worker per listed CPU, pinned to it.
    Cpus(Vec<usize>),
}

/// Everything a [`Server`](crate::Server) can be told. Build it with
/// [`Server::builder`](crate::Server::builder), or start from
/// `ServerOptions::default()` and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Address to listen on. Default `127.0.0.1:7000`.
    pub addr: SocketAddr,
    /// Which workers to start. Default one per allowed CPU.
    pub workers: Workers,
    /// Pin each worker thread to its CPU. Default `true`.
    pub pin: bool,
    /// Listen backlog of each listener. Default 4096 (the kernel caps it at
    /// `net.core.somaxconn`).
    pub backlog: i32,
    /// How new connections are spread over workers. Default
    /// [`Steering::Auto`]: eBPF `least-loaded` when permitted, else classic
    /// BPF by CPU, else the kernel's hash.
    pub steering: Steering,
    /// Under eBPF `least-loaded` steering, a worker whose loop has been in
    /// one turn for longer than this is stalled and gets no new connections
    /// while another worker is not. `None` disables the check. Default 10 ms.
    pub stall_threshold: Option<Duration>,
    /// `TCP_DEFER_ACCEPT`: the kernel completes a connection (and the worker
    /// accepts it) only when its first data arrives, waiting up to this long
    /// (whole seconds), like nginx's `listen ... deferred`: a client that
    /// connects and sends nothing costs no wakeup, descriptor or buffer.
    /// The worker then serves those first bytes at once and registers the
    /// socket with epoll only if it is still open after that turn: a
    /// connection that asks one thing and closes costs no `epoll_ctl`.
    /// Default `None`.
    pub defer_accept: Option<Duration>,
    /// Set `TCP_NODELAY` on accepted connections. Default `true`.
    pub nodelay: bool,
    /// Most open connections per worker; a worker at its cap stops accepting
    /// (its queue fills and, with steering, others take new connections).
    /// Default 65,536.
    pub max_connections_per_worker: usize,
    /// Most connections a worker accepts per loop turn before serving the ones
    /// it has, when its listener is drained (reported among other events,
    /// or at the loop's start; a listener reported alone gives one
    /// connection a turn). Default 64.
    pub accept_budget: usize,
    /// Most reads from one connection per loop turn, so one busy connection
    /// cannot starve the others. Default 16.
    pub read_budget: usize,
    /// Size of the pooled read and write buffers. Default 16 KiB.
    pub buffer_size: usize,
    /// Most unconsumed input a connection may hold (a message bigger than this
    /// closes it with [`CloseReason::InputTooLarge`](crate::CloseReason::InputTooLarge)).
    /// Default 1 MiB.
    pub max_input: usize,
    /// Output high-water mark: a connection with this much unwritten output is
    /// not read until it drains (backpressure). Default 256 KiB.
    pub output_high_water: usize,
    /// Output low-water mark: a connection whose unwritten output reached
    /// it gets [`Handler::on_writable`](crate::Handler::on_writable) once
    /// it falls below it again. Capped at `output_high_water`. Default
    /// 64 KiB.
    pub output_low_water: usize,
    /// Time for a message to arrive in full, from its first byte (or, for a
    /// new connection, from accept). `None` disables it. Default 10 s.
    pub header_timeout: Option<Duration>,
    /// Time a connection may sit idle between messages. `None` disables it.
    /// Default 60 s.
    pub idle_timeout: Option<Duration>,
    /// Time pending output may make no progress. `None` disables it. Default 30 s.
    pub write_timeout: Option<Duration>,
    /// Time an outbound connect ([`Context::connect`](crate::Context::connect))
    /// may take. Default 5 s.
    pub connect_timeout: Duration,
    /// Messages each worker's mailbox holds (see [`Mailboxes`](crate::Mailboxes));
    /// a post to a full one fails. Default 4096.
    pub mailbox_capacity: usize,
    /// Threads running offloaded jobs ([`Context::offload`](crate::Context::offload));
    /// 0 disables offloading. Started with the workers. Default 2.
    pub offload_threads: usize,
    /// Jobs waiting for an offload thread; offloading more fails at once.
    /// Default 1024.
    pub offload_queue: usize,
    /// After the handler closes a connection, time spent discarding what the
    /// peer still sends so the close does not turn into a reset that destroys
    /// the last reply (nginx's lingering close). Default 5 s.
    pub linger_timeout: Duration,
    /// Interval of [`Handler::on_tick`](crate::Handler::on_tick). Default 1 s.
    pub tick_interval: Duration,
    /// Resolution of the timer wheel. Default 10 ms.
    pub timer_resolution: Duration,
    /// How long accepting pauses after `EMFILE`, `ENFILE`, `ENOBUFS` or
    /// `ENOMEM`. Default 100 ms.
    pub accept_pause: Duration,
    /// Graceful shutdown deadline: connections still open after it are closed.
    /// Default 10 s.
    pub shutdown_timeout: Duration,
    /// Idle buffers a worker's pool keeps; more are freed after
    /// `reclaim_after`. Default 256.
    pub pool_max_idle: usize,
    /// How long memory may sit unused before a reclamation pass frees it:
    /// idle buffers beyond `pool_max_idle` (`pool_trim`), and a connection
    /// table at under a quarter occupancy after a spike (`slab_shrink`).
    /// Default 10 s.
    pub reclaim_after: Duration,
    /// Shut down gracefully on SIGINT and SIGTERM (a second signal forces it).
    /// Default `true`.
    pub handle_signals: bool,
    /// Raise the soft `RLIMIT_NOFILE` to the hard limit at start-up, as Go and
    /// nginx (`worker_rlimit_nofile`) do: the common soft default of 1024
    /// descriptors is far below what a server holds. Default `true`.
    pub raise_nofile_limit: bool,
    /// During a graceful shutdown, idle keep-alive connections stay open this
    /// long (at most the shutdown deadline) for a request the client may
    /// already have sent: it is answered, with the handler told the server is
    /// draining (HTTP answers `Connection: close`), instead of being lost in
    /// the close. Default 200 ms.
    pub drain_grace: Duration,
    /// After a graceful shutdown begins (SIGTERM, [`ShutdownHandle::shutdown`](crate::ShutdownHandle::shutdown)),
    /// keep the listeners open and serve as usual for this long while
    /// readiness is already off ([`ServerState::Draining`](crate::ServerState)),
    /// so load balancers that poll `/readyz` (or Kubernetes, which removes a
    /// terminating pod from its endpoints concurrently with the signal) stop
    /// sending new connections before the listeners close. Handlers are told
    /// [`Input::draining`](crate::Input::draining) from its start, so
    /// keep-alive clients are moved off with `Connection: close`. The
    /// [shutdown deadline](Self::shutdown_timeout) runs after it. A hand-over
    /// to a process taking over has no delay (the address stays served).
    /// Default zero.
    pub drain_delay: Duration,
    /// Serve as this user: [`build`](crate::ServerBuilder::build) binds the
    /// listeners, raises the descriptor limit and attaches steering first
    /// (all of which may need root), then switches the process to the user
    /// for good. Default `None` (stay who we are).
    pub user: Option<String>,
    /// Take the address over from the corelane process serving it (a
    /// restart without dropping a connection): the new listeners join the
    /// old process's reuseport group, steering switches to them, and the old
    /// process is told to drain through its control socket. Its queued and
    /// mid-handshake connections migrate here when its listeners close; its
    /// established ones finish their requests (keep-alive clients are told
    /// `Connection: close`) until its shutdown deadline. When nothing serves
    /// the address, the server simply starts. Default `false`: starting on
    /// an address another corelane process serves is an error.
    ///
    /// Steering switches in [`build`](crate::ServerBuilder::build) (new
    /// connections queue on this server's listeners from then on); the old
    /// process is told to drain when [`run`](crate::Server::run) has started
    /// the workers. Call `run` right after `build`.
    pub takeover: bool,
    /// Listen on the control socket (`@corelane/<addr>`, an abstract Unix
    /// socket of the network namespace) through which a process started
    /// with [`takeover`](ServerOptions::takeover) finds this one and tells
    /// it to hand over. Only root and this process's own user may use it.
    /// Default `true`.
    pub control_socket: bool,
    /// Speak TLS on every accepted connection with this configuration
    /// (see [`crate::tls`]). Default `None`: plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// The keys `tls`'s configuration seals session tickets with, handed
    /// to (or taken from) the process on the other side of a takeover, so
    /// sessions resume across it. Default `None`.
    #[cfg(feature = "tls")]
    pub tls_ticket_keys: Option<std::sync::Arc<crate::tls::TicketKeys>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            workers: Workers::PerCpu,
            pin: true,
            backlog: 4096,
            steering: Steering::default(),
            stall_threshold: Some(Duration::from_millis(10)),
            nodelay: true,
            max_connections_per_worker: 65_536,
            accept_budget: 64,
            read_budget: 16,
            buffer_size: 16 * 1024,
            max_input: 1024 * 1024,
            output_high_water: 256 * 1024,
            output_low_water: 64 * 1024,
            header_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            write_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(5),
            mailbox_capacity: 4096,
            offload_threads: 2,
            offload_queue: 1024,
            linger_timeout: Duration::from_secs(5),
            tick_interval: Duration::from_secs(1),
            timer_resolution: Duration::from_millis(10),
            accept_pause: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(10),
            pool_max_idle: 256,
            reclaim_after: Duration::from_secs(10),
            handle_signals: true,
            raise_nofile_limit: true,
            user: None,
            drain_grace: Duration::from_millis(200),
            drain_delay: Duration::ZERO,
            takeover: false,
            defer_accept: None,
            control_socket: true,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            tls_ticket_keys: None,
        }
    }
}

impl ServerOptions {
    /// Checks ranges and consistency.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the offending option.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: &str| Err(Error::Config(msg.to_owned()));
        match &self.workers {
            Workers::Count(0) => return bad("workers must be at least 1"),
            Workers::Cpus(c) if c.is_empty() => return bad("the CPU list is empty"),
            _ => {}
        }
        if self.backlog <= 0 {
            return bad("backlog must be positive");
        }
        if self.max_connections_per_worker == 0 {
            return bad("max_connections_per_worker must be at least 1");
        }
        if self.accept_budget == 0 || self.read_budget == 0 {
            return bad("accept_budget and read_budget must be at least 1");
        }
        if self.buffer_size < 512 {
            return bad("buffer_size must be at least 512 bytes");
        }
        if self.max_input < self.buffer_size {
            return bad("max_input must be at least buffer_size");
        }
        if self.output_high_water == 0 {
            return bad("output_high_water must be positive");
        }
        if self.output_low_water == 0 {
            return bad("output_low_water must be positive");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be positive");
        }
        if self.mailbox_capacity == 0 || self.offload_queue == 0 {
            return bad("mailbox_capacity and offload_queue must be at least 1");
        }
        if self.tick_interval.is_zero() || self.timer_resolution.is_zero() {
            return bad("tick_interval and timer_resolution must be positive");
        }
        for (name, t) in [
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("write_timeout", self.write_timeout),
            ("stall_threshold", self.stall_threshold),
        ] {
            if t.is_some_and(|t| t.is_zero()) {
                return Err(Error::Config(format!(
                    "{name} must be positive (use None to disable)"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ServerOptions::default().validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let o = ServerOptions {
            workers: Workers::Count(0),
            ..ServerOptions::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("workers"));
        let o = ServerOptions {
            idle_timeout: Some(Duration::ZERO),
            ..ServerOptions::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("idle_timeout"));
    }
}
