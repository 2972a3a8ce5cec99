//! corelane's `sk_reuseport` program: picks the worker (listener) of the
//! reuseport group that receives each new TCP connection, and moves the
//! connections queued on a closing listener to a live one.
//!
//! Built for `bpfel-unknown-none` by `ebpf-steering/build-program.sh`; the
//! object is committed in `ebpf-steering/` and loaded by `corelane-steering`.
//! The choice itself is [`corelane_steering_common::pick`], shared with
//! userspace tests and benches. On any other target this compiles to an empty
//! binary, so that workspace-wide `cargo clippy` and `cargo doc` still check
//! the source.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The bpf target has 64-bit atomic adds (XADD) but no compare-and-swap, so
// `core` offers no `fetch_add`; the intrinsic is the add itself. The build
// script compiles with `RUSTC_BOOTSTRAP=1` already (for `-Z build-std`).
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]

use core::ptr::read_volatile;

use aya_ebpf::bindings::sk_action::SK_PASS;
use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use aya_ebpf::macros::{map, sk_reuseport};
use aya_ebpf::maps::{Array, PerCpuArray, ReusePortSockArray};
use aya_ebpf::programs::SkReuseportContext;
use corelane_steering_common::{
    self as common, Config, CpuWorkers, Input, Policy, WorkerSlot, GENERATIONS, MAX_CPUS,
    NO_WORKER, SLOTS, STAT_ENTRIES, STAT_FALLBACK, STAT_MIGRATED,
};

/// `BPF_F_MMAPABLE`: workers write their slots through a shared mapping.
const BPF_F_MMAPABLE: u32 = 1 << 10;
const IPPROTO_TCP: u32 = 6;

#[map(name = "SOCKETS")]
static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(SLOTS, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "WORKERS")]
static WORKERS: Array<WorkerSlot> = Array::with_max_entries(SLOTS, BPF_F_MMAPABLE);

#[map(name = "CPU_WORKER")]
static CPU_WORKER: Array<CpuWorkers> = Array::with_max_entries(MAX_CPUS * GENERATIONS, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_ENTRIES, 0);

#[map(name = "RR")]
static RR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Entry point, attached with `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`: runs for
/// every new connection (SYN) and for every connection queued or
/// mid-handshake on a listener that closes. Always passes: a connection the
/// program does not place is placed by the kernel's hash, never dropped.
#[sk_reuseport(migrate)]
pub fn corelane_steer(ctx: SkReuseportContext) -> u32 {
    if ctx.ip_protocol() == IPPROTO_TCP {
        steer(&ctx);
    }
    SK_PASS
}

/// The live view of the serving generation's workers (worker `i` is slot
/// `base + i`), read from the shared `WORKERS` slots.
///
/// Every slot is reached through a map lookup, never by pointer arithmetic
/// on a looked-up value: without CAP_PERFMON the verifier rejects variable
/// offsets into map values that differ between paths (Spectre v1), while a
/// lookup does its own masking.
struct Live {
    base: u32,
    now_ns: u64,
    stall_ns: u64,
}

impl common::Workers for Live {
    #[inline(always)]
    fn eligible(&self, i: u32) -> bool {
        match WORKERS.get_ptr(self.base + i) {
            Some(slot) => {
                let draining = slot
                    .wrapping_byte_add(core::mem::offset_of!(WorkerSlot, draining))
                    .cast::<u32>();
                // SAFETY: a field of a slot from a successful lookup, valid
                // for the program's run; workers write it concurrently,
                // hence the volatile read.
                unsafe { read_volatile(draining) == 0 }
            }
            None => false,
        }
    }

    #[inline(always)]
    fn load(&self, i: u32) -> u32 {
        match WORKERS.get_ptr(self.base + i) {
            // SAFETY: as in `eligible`, the whole slot.
            Some(slot) => unsafe { read_volatile(slot) }.load(self.now_ns, self.stall_ns),
            None => u32::MAX,
        }
    }
}

#[inline(always)]
fn steer(ctx: &SkReuseportContext) {
    let Some(config) = CONFIG.get_ptr(0) else {
        return;
    };
    // SAFETY: a successful lookup of entry 0; written only by the loader.
    let config = unsafe { read_volatile(config) };
    // The generation steered to; a takeover rewrites CONFIG in one update.
    let base = config.base();
    let migrating = ctx.migrating_sk().is_some();
    // Connections leaving a closing listener go to the least loaded live
    // worker whatever the policy: the closing worker's CPU (or hash bucket)
    // is exactly where they must not go.
    let policy = if migrating {
        Policy::LeastLoaded
    } else {
        match Policy::from_u32(config.policy) {
            Some(p) => p,
            None => return,
        }
    };
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let entry = match common::cpu_key(base, cpu) {
        Some(key) => CPU_WORKER.get_ptr(key),
        None => None,
    };
    let cpu_worker = match entry {
        Some(entry) => {
            // Each field by its own volatile load at a constant offset: the
            // compiler may not merge them into one load at a computed
            // offset, which the unprivileged verifier refuses.
            let field = |offset: usize| {
                // SAFETY: a u32 field of the entry from a successful lookup.
                unsafe { read_volatile(entry.wrapping_byte_add(offset).cast::<u32>()) }
            };
            let base = core::mem::offset_of!(CpuWorkers, workers);
            common::pick_of(
                field(core::mem::offset_of!(CpuWorkers, count)),
                [
                    field(base),
                    field(base + 4),
                    field(base + 8),
                    field(base + 12),
                ],
                ctx.hash(),
            )
        }
        None => NO_WORKER,
    };
    let turn = match RR.get_ptr_mut(0) {
        Some(p) => {
            // SAFETY: this CPU's own entry; programs on one CPU do not
            // interleave, so a plain read-modify-write is exact.
            let t = unsafe { *p };
            // SAFETY: as above.
            unsafe { *p = t.wrapping_add(1) };
            t
        }
        None => 0,
    };
    let needs_clock = policy == Policy::LeastLoaded && config.stall_ns != 0;
    let now_ns = if needs_clock {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    let live = Live {
        base,
        now_ns,
        stall_ns: config.stall_ns,
    };
    let input = Input {
        policy,
        workers: config.workers,
        hash: ctx.hash(),
        cpu_worker,
        turn,
    };
    let picked = common::pick(&input, &live, |k| {
        SOCKETS.select_reuseport(ctx, base + k).is_ok()
    });
    match picked {
        Some(k) => {
            if let Some(slot) = WORKERS.get_ptr_mut(base + k) {
                let pending = slot
                    .wrapping_byte_add(core::mem::offset_of!(WorkerSlot, pending))
                    .cast::<u64>();
                // SAFETY: a field of a slot from a successful lookup,
                // 8-byte aligned.
                unsafe { atomic_add(pending, 1) };
            }
            count(base + k);
            if migrating {
                count(STAT_MIGRATED);
            }
        }
        None => count(STAT_FALLBACK),
    }
}

/// Adds `v` to `*p` atomically: the worker resets the field concurrently and
/// several CPUs may steer to one worker at once.
///
/// # Safety
///
/// `p` is valid for writes and 8-byte aligned.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller's contract; the result is unused, so this lowers to
    // a plain XADD.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller's contract.
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(p)
            .fetch_add(v, core::sync::atomic::Ordering::Relaxed);
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: this CPU's own counter (see `RR`).
        unsafe { *p += 1 };
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    let _ = corelane_steer;
}
