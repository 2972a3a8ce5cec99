//! The reuseport group: one listening socket per worker, all on one address.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Error;

/// Creates `count` listeners bound to `addr`, in one SO_REUSEPORT group.
///
/// `SO_REUSEPORT` is set before bind, as the kernel requires for every member
/// of a group. When `addr` has port 0, the first listener picks the port and
/// the others bind to the port it got. Every listener is listening before this
/// returns, so no connection can arrive before the group is complete; listener
/// `i` is the `i`-th member of the group (the index classic and eBPF steering
/// programs select by).
///
/// `TCP_NODELAY` is set on the listeners: Linux copies it to every socket
/// they accept, which saves a `setsockopt(2)` per connection.
///
/// # Errors
///
/// [`Error::Socket`], [`Error::Bind`] or [`Error::Listen`] with the address
/// and the operating system's reason.
pub(crate) fn bind_group(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
    nodelay: bool,
    defer_accept: Option<std::time::Duration>,
) -> Result<Vec<mio::net::TcpListener>, Error> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = new_socket(addr, nodelay, defer_accept)
            .map_err(|source| Error::Socket { addr, source })?;
        socket
            .bind(&addr.into())
            .map_err(|source| Error::Bind { addr, source })?;
        socket.listen(backlog).map_err(|source| Error::Listen {
            addr,
            backlog,
            source,
        })?;
        if addr.port() == 0 {
            let local = socket
                .local_addr()
                .map_err(|source| Error::Bind { addr, source })?;
            if let Some(local) = local.as_socket() {
                addr.set_port(local.port());
            }
        }
        listeners.push(mio::net::TcpListener::from_std(socket.into()));
    }
    Ok(listeners)
}

fn new_socket(
    addr: SocketAddr,
    nodelay: bool,
    defer_accept: Option<std::time::Duration>,
) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too unless the system says otherwise; a specific
        // IPv6 address is IPv6 only either way.
        socket.set_only_v6(false).ok();
    }
    if nodelay {
        socket.set_tcp_nodelay(true)?;
    }
    if let Some(wait) = defer_accept {
        use std::os::fd::AsRawFd;
        crate::sys::set_defer_accept(socket.as_raw_fd(), wait)?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn group_shares_one_port_and_accepted_sockets_inherit_nodelay() {
        let listeners = bind_group("127.0.0.1:0".parse().unwrap(), 3, 128, true, None).unwrap();
        let port = listeners[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &listeners {
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
        // Connect until one of the listeners has a connection to accept.
        let _clients: Vec<_> = (0..16)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut accepted = 0;
        for l in &listeners {
            while let Ok((s, _)) = l.accept() {
                assert!(s.nodelay().unwrap(), "accepted socket lost TCP_NODELAY");
                accepted += 1;
            }
        }
        assert_eq!(accepted, 16);
    }

    #[test]
    fn ipv6_loopback_binds() {
        match bind_group("[::1]:0".parse().unwrap(), 2, 128, true, None) {
            Ok(l) => assert_eq!(l.len(), 2),
            // Hosts without IPv6 cannot run this test.
            Err(Error::Bind { source, .. }) | Err(Error::Socket { source, .. })
                if source.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                    || source.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                eprintln!("skipping: no IPv6 loopback here ({source})");
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn defer_accept_is_set_on_every_listener() {
        use std::os::fd::AsRawFd;
        let wait = std::time::Duration::from_secs(3);
        let listeners =
            bind_group("127.0.0.1:0".parse().unwrap(), 2, 128, true, Some(wait)).unwrap();
        for l in &listeners {
            let v =
                crate::sys::int_option(l.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT)
                    .unwrap();
            // The kernel rounds up to its SYN-ACK retransmission schedule.
            assert!(v >= 3, "{v}");
        }
    }

    #[test]
    fn a_taken_address_names_itself_in_the_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_group(addr, 1, 128, true, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&addr.to_string()), "{msg}");
        assert!(matches!(err, Error::Bind { .. }), "{err:?}");
    }
}
