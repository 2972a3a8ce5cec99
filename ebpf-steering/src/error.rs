//! Why eBPF steering could not be set up.

use std::io;

use corelane_steering_common::{MAX_WORKERS, VERSION};

/// Why eBPF steering could not be set up: the step that failed and the
/// kernel's (or aya's) reason, or what was wrong with the group or the
/// pinned program. Its message names the step and the innermost cause, and
/// for permission errors says what is missing, e.g. `creating map SOCKETS:
/// Operation not permitted (os error 1); needs CAP_BPF (or root)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A step in the kernel or in aya failed.
    #[error("{step}: {}{}", innermost(.source.inner()), hint(.source))]
    Step {
        /// What was being done (`creating map SOCKETS`, `writing CONFIG`).
        step: String,
        /// Why it failed (boxed: aya's errors are large).
        source: Box<Source>,
    },
    /// The group has no listener, or more than the program can steer.
    #[error("checking the group: {listeners} listeners; eBPF steering handles 1 to {MAX_WORKERS}")]
    GroupSize {
        /// How many listeners were given.
        listeners: usize,
    },
    /// The program object lacks a map or program this crate needs.
    #[error(
        "finding {name} in the program object: not found: the object does not match this crate"
    )]
    Missing {
        /// The map or program.
        name: String,
    },
    /// The pinned program has another map layout.
    #[error("checking the pinned program: its maps have layout version {found}, this build needs {VERSION}")]
    Version {
        /// The pinned layout version.
        found: u32,
    },
    /// The pinned program steers for another process: stale pins.
    #[error("checking the pinned program: it steers for pid {owner}, not for pid {expected}, which serves the address (stale pins)")]
    NotOwner {
        /// The pid its `CONFIG` names.
        owner: u32,
        /// The pid that serves the address.
        expected: u32,
    },
}

/// The underlying failure of an [`Error::Step`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Source {
    /// Loading the object or creating its maps.
    #[error(transparent)]
    Load(#[from] aya::EbpfError),
    /// Opening, reading or writing a map.
    #[error(transparent)]
    Map(#[from] aya::maps::MapError),
    /// Opening, verifying, loading or attaching the program.
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    /// Pinning the program or a map.
    #[error(transparent)]
    Pin(#[from] aya::pin::PinError),
    /// A system call.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Source {
    /// The wrapped error itself.
    fn inner(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            Source::Load(e) => e,
            Source::Map(e) => e,
            Source::Program(e) => e,
            Source::Pin(e) => e,
            Source::Io(e) => e,
        }
    }

    fn is_permission(&self) -> bool {
        let mut e = Some(self.inner());
        while let Some(err) = e {
            if let Some(io) = err.downcast_ref::<io::Error>() {
                if matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                    return true;
                }
            }
            e = err.source();
        }
        false
    }
}

impl Error {
    pub(crate) fn new(step: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::Step {
            step: step.into(),
            source: Box::new(source.into()),
        }
    }

    pub(crate) fn missing(name: &str) -> Self {
        Error::Missing { name: name.into() }
    }

    /// Whether the kernel refused for lack of privilege (`EPERM`/`EACCES`).
    #[must_use]
    pub fn is_permission(&self) -> bool {
        matches!(self, Error::Step { source, .. } if source.is_permission())
    }
}

/// The innermost cause carries the kernel's reason; the outer ones repeat
/// the step in aya's words.
fn innermost(mut e: &(dyn std::error::Error + 'static)) -> String {
    while let Some(inner) = e.source() {
        e = inner;
    }
    e.to_string()
}

fn hint(source: &Source) -> &'static str {
    if source.is_permission() {
        "; needs CAP_BPF (or root)"
    } else {
        ""
    }
}
