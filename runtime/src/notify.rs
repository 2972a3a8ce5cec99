//! Readiness for service managers: systemd's `sd_notify` protocol, spoken
//! over the datagram socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`). Without that variable (not
//! started by systemd with `Type=notify`) every call does nothing.
//!
//! The server says `READY=1` once its workers run (after a takeover: once
//! the old process has been told to drain), and `STOPPING=1` the moment a
//! shutdown or a hand-over begins, each with a `STATUS=` line that
//! `systemctl status` shows.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=value` assignments) to the
/// service manager, if there is one; a failure is logged, never fatal.
pub(crate) fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&path, state) {
        tracing::warn!(socket = ?path, error = %e, "could not notify the service manager");
    }
}

fn send_to(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// The server is serving on `addr`.
pub(crate) fn ready(addr: std::net::SocketAddr) {
    send(&format!(
        "READY=1\nSTATUS=serving on {addr}\nMAINPID={}",
        std::process::id()
    ));
}

/// A shutdown or a hand-over has begun.
pub(crate) fn stopping() {
    send("STOPPING=1\nSTATUS=draining");
}
