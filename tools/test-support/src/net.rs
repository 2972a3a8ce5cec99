//! Network set-ups tests share.

use std::net::SocketAddr;

/// A listener that never accepts, with its queue filled: a connect to it
/// gets no answer (its SYN is dropped) until the returned sockets are
/// dropped. For connect-timeout tests.
///
/// # Panics
///
/// If a socket cannot be made or bound.
#[must_use]
pub fn unanswering_listener() -> (SocketAddr, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut held = vec![listener];
    for _ in 0..4 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        held.push(s);
    }
    // Let the handshakes that fit complete and fill the queue.
    std::thread::sleep(std::time::Duration::from_millis(200));
    (addr, held)
}
