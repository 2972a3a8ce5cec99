//! Shared helpers for the runtime's integration tests: servers started on
//! 127.0.0.1 ephemeral ports in this process, and two test protocols.

// Each test binary uses a different part.
#![allow(dead_code, unused_imports)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corelane::{Accepted, Action, CloseReason, Context, Handler, Input, Output};
pub use corelane_test_support::require::{has_tool, is_root, needs};
pub use corelane_test_support::{eventually, TestServer};

/// Echoes every byte. Records the largest output it has seen queued.
#[derive(Default, Clone)]
pub struct Echo {
    pub max_output: Arc<AtomicUsize>,
}

impl Handler for Echo {
    type Conn = ();

    fn on_accept(&mut self, _conn: &Accepted, _cx: &mut Context<'_>) {}

    fn on_data(
        &mut self,
        _conn: &mut (),
        input: &mut Input<'_>,
        output: &mut Output,
        _cx: &mut Context<'_>,
    ) -> Action {
        let bytes = input.bytes();
        output.extend_from_slice(bytes);
        input.consume(bytes.len());
        self.max_output.fetch_max(output.len(), Ordering::Relaxed);
        Action::Continue
    }
}

/// A line protocol: each complete `\n`-terminated line is a message and is
/// echoed back; `quit\n` is answered with `bye\n` and closes; `stall\n`
/// blocks the worker for 300 ms before answering (to open race windows in
/// tests); `state\n` is answered with the server's state (`serving\n`,
/// `draining\n`, `handed_over\n`). An incomplete line stays unconsumed.
/// When the server drains, replies end with `(draining)`.
#[derive(Default, Clone)]
pub struct Lines {
    pub closed: Arc<std::sync::Mutex<Vec<CloseReason>>>,
}

impl Handler for Lines {
    type Conn = ();

    fn on_accept(&mut self, _conn: &Accepted, _cx: &mut Context<'_>) {}

    fn on_data(
        &mut self,
        _conn: &mut (),
        input: &mut Input<'_>,
        output: &mut Output,
        cx: &mut Context<'_>,
    ) -> Action {
        while let Some(end) = input.bytes().iter().position(|&b| b == b'\n') {
            let line = &input.bytes()[..=end];
            if line == b"stall\n" {
                std::thread::sleep(Duration::from_millis(300));
            }
            if line == b"quit\n" {
                output.extend_from_slice(b"bye\n");
                input.consume(end + 1);
                return Action::Close;
            }
            if line == b"state\n" {
                output.extend_from_slice(cx.server_state().as_str().as_bytes());
                output.extend_from_slice(b"\n");
            } else {
                output.extend_from_slice(line);
            }
            if input.draining() {
                output.extend_from_slice(b"(draining)\n");
            }
            input.consume(end + 1);
        }
        Action::Continue
    }

    fn on_close(&mut self, _conn: (), reason: CloseReason, _cx: &mut Context<'_>) {
        self.closed.lock().unwrap().push(reason);
    }
}

/// Reads until `n` bytes arrived.
pub fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read reply");
    buf
}

/// Reads one `\n`-terminated line.
pub fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            Err(e) => panic!(
                "reading a line: {e} (so far {:?})",
                String::from_utf8_lossy(&line)
            ),
        }
    }
    String::from_utf8(line).unwrap()
}

/// Whether the peer closed: a read returns EOF or a reset within `timeout`.
pub fn closed_within(s: &mut TcpStream, timeout: Duration) -> io::Result<bool> {
    s.set_read_timeout(Some(timeout))?;
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => Ok(true),
        Ok(n) => Err(io::Error::other(format!("unexpected {n} bytes"))),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Sends `msg` and expects it echoed back.
pub fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    assert_eq!(read_exact_n(s, msg.len()), msg);
}
