//! The log set-up of the bundled binaries, for servers that want the same.

use std::io::IsTerminal;
use std::process::ExitCode;

/// Logs to stderr at the level `RUST_LOG` sets (default `info`), with colour
/// only when stderr is a terminal.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

/// stderr that drops what it cannot write. A log line must never take a
/// thread down: tracing-subscriber reports a failed write with `eprintln!`,
/// which panics when stderr is gone (a closed pipe), and a panic in the
/// signal thread would leave the server deaf to SIGTERM.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process exit code for a server's result, logging the error if any:
/// `fn main() -> ExitCode { corelane::logging::exit_code(serve()) }`.
pub fn exit_code(result: crate::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
