//! The server options every corelane binary takes on its command line
//! (feature `cli`): flatten [`ServerArgs`] into your own clap parser and
//! [`apply`](ServerArgs::apply) it to a builder.
//!
//! ```no_run
//! use clap::Parser;
//! use corelane::cli::ServerArgs;
//! # use corelane::{Accepted, Action, Context, Handler, Input, Output, Server};
//! # struct Echo;
//! # impl Handler for Echo {
//! #     type Conn = ();
//! #     fn on_accept(&mut self, _: &Accepted, _cx: &mut Context<'_>) {}
//! #     fn on_data(&mut self, _: &mut (), i: &mut Input<'_>, _: &mut Output, _: &mut Context<'_>) -> Action {
//! #         i.consume(i.bytes().len());
//! #         Action::Continue
//! #     }
//! # }
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     server: ServerArgs,
//!     /// An option of your own.
//!     #[arg(long)]
//!     verbose: bool,
//! }
//!
//! fn main() -> Result<(), corelane::Error> {
//!     let args = Args::parse();
//!     let builder = Server::builder().addr("127.0.0.1:9000".parse().unwrap());
//!     args.server.apply(builder).build(|_| Echo)?.run()
//! }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use crate::server::ServerBuilder;
use crate::steering::Steering;

/// `--addr --workers --steering --idle-timeout --header-timeout
/// --shutdown-timeout --drain-delay --user --defer-accept --takeover`, as a flattenable
/// clap argument group.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct ServerArgs {
    /// Address to listen on (IPv4 or IPv6, e.g. `[::]:8080`); without it,
    /// the address the program sets.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Number of workers (default: one per CPU this process may use).
    #[arg(long)]
    pub workers: Option<usize>,
    /// How new connections are spread over workers: `auto` (eBPF
    /// least-loaded when permitted, else classic-cpu, else kernel), an eBPF
    /// policy (`least-loaded`, `round-robin`, `cpu`, `hash`; need CAP_BPF or
    /// root), `classic-cpu` (classic BPF: the worker pinned to the CPU that
    /// processed the SYN; no privilege) or `kernel` (the kernel's flow hash).
    /// A mode that cannot be set up falls back down that list, with a log
    /// line saying why.
    #[arg(long, default_value = "auto")]
    pub steering: Steering,
    /// Close connections idle this long between messages (e.g. `30s`,
    /// `500ms`; `0` disables).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Time allowed for a message to arrive in full, from its first byte
    /// (or, on a new connection, from accept); slow senders are closed after
    /// it (`0` disables).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Graceful shutdown deadline after SIGINT/SIGTERM (and for draining
    /// when taken over).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// After SIGTERM, keep accepting and serving this long while `/readyz`
    /// already answers 503, so load balancers stop sending first (e.g.
    /// `5s` behind a balancer that checks every second); then drain within
    /// `--shutdown-timeout`. Not applied to a takeover.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,
    /// Serve as this user (e.g. `nobody`): bind, raise limits and attach
    /// steering as root first, then drop to it for good.
    #[arg(long)]
    pub user: Option<String>,
    /// Accept a connection only when its first bytes arrive, waiting up to
    /// this long (`TCP_DEFER_ACCEPT`, whole seconds; like nginx's
    /// `listen ... deferred`); for protocols whose client speaks first.
    /// `0` disables.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub defer_accept: Option<Duration>,
    /// Take the address over from the corelane process serving it, without
    /// dropping a connection: new connections come here, the old process
    /// drains (its queued connections migrate here) and exits within its
    /// shutdown deadline. Without it, starting on an address corelane
    /// serves is an error.
    #[arg(long)]
    pub takeover: bool,
}

/// Parses this process's command line into `A` (a clap parser that
/// flattens [`ServerArgs`]), with `default_addr` as `--addr`'s default (shown
/// in `--help`); prints the error or help and exits when it does not parse.
#[must_use]
pub fn parse<A: clap::Parser>(default_addr: &'static str) -> A {
    parse_with_defaults(&[("addr", default_addr)])
}

/// [`parse`] with the program's own defaults for options of
/// [`ServerArgs`] (shown in `--help`): pairs of an option's name as a
/// field (`"addr"`, `"defer_accept"`) and its default as typed on the
/// command line (`"127.0.0.1:8080"`, `"1s"`).
///
/// # Panics
///
/// If a name is not an option of `A` (a programming error).
#[must_use]
pub fn parse_with_defaults<A: clap::Parser>(defaults: &[(&'static str, &'static str)]) -> A {
    let cli = with_defaults::<A>(defaults);
    A::from_arg_matches(&cli.get_matches()).unwrap_or_else(|e| e.exit())
}

/// `A`'s command with `defaults` set (see [`parse_with_defaults`]).
fn with_defaults<A: clap::Parser>(defaults: &[(&'static str, &'static str)]) -> clap::Command {
    defaults.iter().fold(A::command(), |cli, &(name, value)| {
        cli.mut_arg(name, |a| a.default_value(value))
    })
}

impl ServerArgs {
    /// Sets these options on `builder`; options not given keep the
    /// builder's values (the address) or the defaults shown in `--help`.
    pub fn apply(&self, builder: ServerBuilder) -> ServerBuilder {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let mut builder = builder
            .steering(self.steering)
            .idle_timeout(nonzero(self.idle_timeout))
            .header_timeout(nonzero(self.header_timeout))
            .shutdown_timeout(self.shutdown_timeout)
            .drain_delay(self.drain_delay)
            .user(self.user.clone())
            .defer_accept(self.defer_accept.and_then(nonzero))
            .takeover(self.takeover);
        if let Some(addr) = self.addr {
            builder = builder.addr(addr);
        }
        if let Some(n) = self.workers {
            builder = builder.workers(n);
        }
        builder
    }
}

#[cfg(test)]
mod tests {
    use clap::{FromArgMatches, Parser};

    use super::*;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        server: ServerArgs,
    }

    #[test]
    fn defaults_match_the_runtime_and_given_options_apply() {
        let args = Args::parse_from(["x"]);
        let opts = args.server.apply(ServerBuilder::default()).into_options();
        let default = crate::ServerOptions::default();
        assert_eq!(opts.idle_timeout, default.idle_timeout);
        assert_eq!(opts.header_timeout, default.header_timeout);
        assert_eq!(opts.shutdown_timeout, default.shutdown_timeout);
        assert_eq!(opts.drain_delay, default.drain_delay);
        assert_eq!(opts.addr, default.addr);

        let args = Args::parse_from([
            "x",
            "--addr",
            "127.0.0.1:1234",
            "--workers",
            "3",
            "--steering",
            "kernel",
            "--idle-timeout",
            "0",
            "--takeover",
        ]);
        let opts = args.server.apply(ServerBuilder::default()).into_options();
        assert_eq!(opts.addr, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(opts.workers, crate::Workers::Count(3));
        assert_eq!(opts.steering, Steering::Kernel);
        assert_eq!(opts.idle_timeout, None);
        assert!(opts.takeover);
        assert!(Args::try_parse_from(["x", "--steering", "fastest"]).is_err());
    }

    /// A program's own defaults apply unless the option is given; a zero
    /// `--defer-accept` turns deferred accepts off.
    #[test]
    fn program_defaults_and_defer_accept() {
        let defer = |argv: &[&str]| {
            let cli = with_defaults::<Args>(&[("defer_accept", "1s")]);
            let matches = cli.try_get_matches_from(argv).unwrap();
            let args = Args::from_arg_matches(&matches).unwrap();
            args.server
                .apply(ServerBuilder::default())
                .into_options()
                .defer_accept
        };
        assert_eq!(defer(&["x"]), Some(Duration::from_secs(1)));
        assert_eq!(
            defer(&["x", "--defer-accept", "3s"]),
            Some(Duration::from_secs(3))
        );
        assert_eq!(defer(&["x", "--defer-accept", "0"]), None);
        let args = Args::parse_from(["x"]);
        let opts = args.server.apply(ServerBuilder::default()).into_options();
        assert_eq!(opts.defer_accept, None, "no default of the program's: off");
    }
}
