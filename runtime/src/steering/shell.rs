//! The steering backend without eBPF (the `ebpf` feature off): nothing to
//! attach, every worker handle does nothing, and the ladder steps down to
//! classic BPF or the kernel's hash.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Policy, PreviousSteering, Steering, SteeringStats};

/// Why the program could not be attached: it is not built in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttachError;

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("corelane was built without its `ebpf` feature")
    }
}

/// No program is ever attached.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ebpf {}

/// A worker's handle on no program.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerSteer {}

impl Ebpf {
    pub(crate) fn is_some(&self) -> bool {
        false
    }

    pub(crate) fn worker(&self, _index: usize) -> WorkerSteer {
        WorkerSteer {}
    }

    pub(crate) fn unpin(&self) {}

    pub(crate) fn give_pins_to(&self, _uid: u32, _gid: u32) {}

    pub(crate) fn stats(&self, _mode: Steering) -> Option<SteeringStats> {
        None
    }
}

impl WorkerSteer {
    #[inline]
    pub(crate) fn turn_started(&mut self) {}

    #[inline]
    pub(crate) fn progress(&mut self) {}

    #[inline]
    pub(crate) fn turn_ended(&mut self, _conns: usize) {}

    #[inline]
    pub(crate) fn accept_queue_empty(&self, _conns: usize) {}

    #[inline]
    pub(crate) fn accepted(&mut self, _conns: usize) {}

    pub(crate) fn wake_within(&self) -> Option<Duration> {
        None
    }

    pub(crate) fn set_draining(&self) {}

    pub(crate) fn migrates(&self) -> bool {
        false
    }
}

/// # Errors
///
/// Always: there is no eBPF backend in this build.
pub(crate) fn attach(
    _policy: Policy,
    _listeners: &[mio::net::TcpListener],
    _cpus: &[Option<usize>],
    _stall: Option<Duration>,
    _addr: SocketAddr,
    _previous: Option<&PreviousSteering>,
) -> Result<Ebpf, AttachError> {
    Err(AttachError)
}
