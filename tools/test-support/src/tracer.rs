//! bpftrace attached to the test's own process.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};

/// A running bpftrace: started with [`Tracer::attach`], it has attached
/// once that returns; [`Tracer::finish`] stops it and returns what it printed.
#[derive(Debug)]
pub struct Tracer {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Tracer {
    /// Runs `script` (which must print `READY` in its `BEGIN` block) against
    /// this process, and waits until it has attached.
    ///
    /// # Panics
    ///
    /// If bpftrace cannot start, or exits before attaching (with its error).
    #[must_use]
    // The child is waited for by `finish`, or by `Drop` if the test fails
    // before it.
    #[allow(clippy::zombie_processes)]
    pub fn attach(script: &str) -> Tracer {
        let mut child = Command::new("bpftrace")
            .args(["-p", &std::process::id().to_string(), "-e", script])
            .env("BPFTRACE_STRLEN", "32")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bpftrace");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                let _ = child.wait();
                panic!("bpftrace exited before attaching: {err}");
            }
            if line.trim() == "READY" {
                return Tracer { child, out };
            }
        }
    }

    /// Stops bpftrace (SIGINT: it prints its maps and exits) and returns
    /// what it printed after `READY`.
    ///
    /// # Panics
    ///
    /// If the signal cannot be sent.
    pub fn finish(mut self) -> String {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let mut dump = String::new();
        self.out.read_to_string(&mut dump).unwrap();
        let _ = self.child.wait();
        dump
    }
}

impl Drop for Tracer {
    /// A test that failed before [`Tracer::finish`]: bpftrace is stopped,
    /// not left attached to a process that is about to exit.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
