//! The `WORKERS` map mapped into this process, and each worker's handle on
//! its slot: the only place in this crate with `unsafe`.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::{WorkerSlot, SLOTS};

/// The `WORKERS` array mapped into this process: workers publish their load
/// with plain atomic stores, no system call.
#[derive(Clone)]
pub(crate) struct WorkerTable {
    mapping: Arc<Mapping>,
}

struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics;
// the pointer is valid until `Drop` unmaps it, which needs the last `Arc`.
unsafe impl Send for Mapping {}
// SAFETY: as above; every access is an atomic load or store.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what `mmap` returned; no
        // reference into the mapping outlives the last `Arc<Mapping>`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

impl WorkerTable {
    /// Maps all [`SLOTS`] slots of every generation.
    pub(crate) fn map(fd: BorrowedFd<'_>) -> io::Result<WorkerTable> {
        let page = 4096usize;
        let bytes = std::mem::size_of::<WorkerSlot>() * SLOTS as usize;
        let len = bytes.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of a BPF array map created with
        // BPF_F_MMAPABLE; the kernel checks the length against the map.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(WorkerTable {
            mapping: Arc::new(Mapping { base, len }),
        })
    }

    fn slot(&self, index: usize) -> *mut WorkerSlot {
        assert!(index < SLOTS as usize, "no slot {index}");
        // SAFETY: `index < SLOTS`, so the slot lies inside the mapping;
        // array values are laid out back to back (32 bytes, already a
        // multiple of 8).
        unsafe { self.mapping.base.as_ptr().cast::<WorkerSlot>().add(index) }
    }

    /// Zeroes slot `index`, field by field (atomically: a worker of an old
    /// generation that has not noticed the takeover yet may still write).
    pub(crate) fn reset(&self, index: usize) {
        let slot = self.slot(index).cast::<u8>();
        let size = std::mem::size_of::<WorkerSlot>();
        for offset in (0..size).step_by(8) {
            let field = slot.wrapping_add(offset).cast::<u64>();
            // SAFETY: an 8-aligned offset inside a valid slot of the
            // mapping, which `self` keeps alive; only atomics touch it.
            unsafe { AtomicU64::from_ptr(field) }.store(0, Ordering::Relaxed);
        }
    }
}

/// One worker's slot in the shared `WORKERS` array.
#[derive(Clone)]
pub struct WorkerHandle {
    table: WorkerTable,
    /// Worker index within its generation.
    index: usize,
    /// Slot in `WORKERS`: the generation's base plus `index`.
    slot: usize,
}

impl WorkerHandle {
    /// Worker `index`'s handle on `slot` of `table`.
    pub(crate) fn new(table: WorkerTable, index: usize, slot: usize) -> Self {
        WorkerHandle { table, index, slot }
    }
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("index", &self.index)
            .field("slot", &self.snapshot())
            .finish()
    }
}

impl WorkerHandle {
    fn u32_field(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is a u32 field's offset inside a valid slot; the
        // mapping lives as long as `self.table`; the kernel program and other
        // threads access the field only atomically or with single loads.
        let field = self
            .table
            .slot(self.slot)
            .wrapping_byte_add(offset)
            .cast::<u32>();
        // SAFETY: see above.
        unsafe { AtomicU32::from_ptr(field) }
    }

    fn u64_field(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as in `u32_field`, for an 8-aligned u64 field.
        let field = self
            .table
            .slot(self.slot)
            .wrapping_byte_add(offset)
            .cast::<u64>();
        // SAFETY: see above.
        unsafe { AtomicU64::from_ptr(field) }
    }

    /// The worker index.
    #[must_use]
    pub fn index(&self) -> usize {
        self.index
    }

    /// Publishes the worker's live connection count.
    #[inline]
    pub fn set_connections(&self, conns: usize) {
        let v = u32::try_from(conns).unwrap_or(u32::MAX);
        self.u32_field(std::mem::offset_of!(WorkerSlot, conns))
            .store(v, Ordering::Relaxed);
    }

    /// The worker took one connection from its accept queue and now serves
    /// `conns`: counted as live, and one fewer pending (never below zero:
    /// an emptied queue may have reset the count already). Keeps the load
    /// true while a worker takes one connection per wake, without learning
    /// (at the cost of an `accept4` that fails) whether its queue is empty.
    #[inline]
    pub fn accepted(&self, conns: usize) {
        self.set_connections(conns);
        let _ = self
            .u64_field(std::mem::offset_of!(WorkerSlot, pending))
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| p.checked_sub(1));
    }

    /// The worker's accept queue is empty: nothing steered to it is pending.
    #[inline]
    pub fn accept_queue_empty(&self) {
        self.u64_field(std::mem::offset_of!(WorkerSlot, pending))
            .store(0, Ordering::Relaxed);
    }

    /// The worker's loop starts a turn (`now_ns` from [`monotonic_ns`](crate::monotonic_ns)).
    #[inline]
    pub fn turn_started(&self, now_ns: u64) {
        self.u64_field(std::mem::offset_of!(WorkerSlot, busy_since_ns))
            .store(now_ns.max(1), Ordering::Relaxed);
    }

    /// The worker's loop waits for events again.
    #[inline]
    pub fn turn_ended(&self) {
        self.u64_field(std::mem::offset_of!(WorkerSlot, busy_since_ns))
            .store(0, Ordering::Relaxed);
    }

    /// Publishes the longest loop turn of the worker's recent past (see
    /// [`TurnLag`](crate::TurnLag)).
    #[inline]
    pub fn set_recent_turn(&self, ns: u64) {
        self.u64_field(std::mem::offset_of!(WorkerSlot, recent_turn_ns))
            .store(ns, Ordering::Relaxed);
    }

    /// Excludes the worker from new connections (or lets it have them
    /// again). Takes effect for the next SYN.
    pub fn set_draining(&self, draining: bool) {
        self.u32_field(std::mem::offset_of!(WorkerSlot, draining))
            .store(u32::from(draining), Ordering::SeqCst);
    }

    /// The slot as the program sees it now.
    #[must_use]
    pub fn snapshot(&self) -> WorkerSlot {
        WorkerSlot {
            conns: self
                .u32_field(std::mem::offset_of!(WorkerSlot, conns))
                .load(Ordering::Relaxed),
            draining: self
                .u32_field(std::mem::offset_of!(WorkerSlot, draining))
                .load(Ordering::Relaxed),
            pending: self
                .u64_field(std::mem::offset_of!(WorkerSlot, pending))
                .load(Ordering::Relaxed),
            busy_since_ns: self
                .u64_field(std::mem::offset_of!(WorkerSlot, busy_since_ns))
                .load(Ordering::Relaxed),
            recent_turn_ns: self
                .u64_field(std::mem::offset_of!(WorkerSlot, recent_turn_ns))
                .load(Ordering::Relaxed),
        }
    }
}
