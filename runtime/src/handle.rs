//! Connection handles: how callbacks, other workers and other threads name a
//! connection of a worker.

/// Names a connection of one worker, from any of that worker's callbacks,
/// for as long as it is open: copyable, and never aliased to a later
/// connection (it holds the connection's id, unique within the worker, not
/// its table slot; an operation on a closed connection's handle is refused
/// with [`HandleError::Closed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnHandle {
    worker: u32,
    id: u64,
}

impl ConnHandle {
    pub(crate) fn new(worker: usize, id: u64) -> Self {
        ConnHandle {
            worker: worker as u32,
            id,
        }
    }

    /// The worker that owns the connection.
    #[must_use]
    pub fn worker(self) -> usize {
        self.worker as usize
    }

    /// The connection's id within its worker (the probes' `conn_id`).
    #[must_use]
    pub fn id(self) -> u64 {
        self.id
    }
}

/// Why an operation on a [`ConnHandle`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// The connection has closed (its slot may hold another one now).
    #[error("the connection is closed")]
    Closed,
    /// The handle names a connection of another worker: only its own worker
    /// acts on a connection.
    #[error("the connection belongs to worker {0}")]
    OtherWorker(usize),
}
