//! How long a worker's loop turns take, on the clock the program reads.

/// The longest loop turn of a worker's recent past: the maximum over the
/// current window and the previous one (a quarter second each), so a stall
/// is remembered for a quarter to half a second after it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurnLag {
    window_start: u64,
    current: u64,
    previous: u64,
}

impl TurnLag {
    /// The length of a window.
    pub const WINDOW: std::time::Duration = std::time::Duration::from_millis(250);
    const WINDOW_NS: u64 = 250_000_000;

    /// Records a turn from `start` to `end` (nanoseconds of
    /// [`monotonic_ns`]); returns the value to publish.
    #[inline]
    pub fn record(&mut self, start: u64, end: u64) -> u64 {
        if end.saturating_sub(self.window_start) >= Self::WINDOW_NS {
            // A whole quiet window in between forgets the old one too.
            self.previous = if end - self.window_start >= 2 * Self::WINDOW_NS {
                0
            } else {
                self.current
            };
            self.current = 0;
            self.window_start = end;
        }
        self.current = self.current.max(end.saturating_sub(start));
        self.current.max(self.previous)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`, which
/// the program compares [`WorkerHandle::turn_started`](crate::WorkerHandle::turn_started) against.
#[must_use]
#[inline]
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::TurnLag;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_long_turn_is_remembered_for_a_quarter_to_half_a_second() {
        let mut lag = TurnLag::default();
        let t0 = 1_000 * MS;
        assert_eq!(lag.record(t0, t0 + MS), MS);
        assert_eq!(lag.record(t0 + 10 * MS, t0 + 60 * MS), 50 * MS, "the stall");
        assert_eq!(
            lag.record(t0 + 100 * MS, t0 + 101 * MS),
            50 * MS,
            "same window"
        );
        // Next window: the previous one still counts.
        assert_eq!(lag.record(t0 + 300 * MS, t0 + 301 * MS), 50 * MS);
        // The one after: forgotten.
        assert_eq!(lag.record(t0 + 560 * MS, t0 + 561 * MS), MS);
        // A long quiet gap forgets everything at once.
        assert_eq!(lag.record(t0 + 600 * MS, t0 + 650 * MS), 50 * MS);
        assert_eq!(lag.record(t0 + 2_000 * MS, t0 + 2_001 * MS), MS);
    }
}
