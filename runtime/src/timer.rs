//! A hashed timer wheel (Varghese and Lauck, scheme 6) for per-connection
//! deadlines.
//!
//! Time is cut into ticks of a fixed resolution; an entry due at tick `t`
//! lives in slot `t % slots` and fires when the wheel reaches `t`. Inserting is
//! O(1); expiring walks only the slots of the ticks that have passed.
//!
//! Connections push their deadline *later* on almost every request (the idle
//! timeout restarts after each reply). Rescheduling on every request would
//! make the wheel grow with the request rate, so the owner keeps the real
//! deadline next to the connection and the wheel only holds the tick it was
//! last scheduled for. When an entry fires the owner checks the real deadline
//! and reschedules if it moved later ([`TimerWheel::schedule`] again); an
//! entry whose tick no longer matches the owner's is stale and ignored.

use std::time::{Duration, Instant};

/// A tick number: whole resolutions since the wheel's start.
pub type Tick = u64;

/// One scheduled entry: an owner key and generation, and its due tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Owner key (a connection's slab key).
    pub key: usize,
    /// Owner generation.
    pub generation: u32,
    /// The tick it is filed under.
    pub tick: Tick,
}

/// A hashed timer wheel.
#[derive(Debug)]
pub struct TimerWheel {
    start: Instant,
    resolution: Duration,
    /// The next tick to process: every entry due before it has been returned.
    cursor: Tick,
    /// When tick `cursor` is due (`start + cursor * resolution`): before
    /// then an expiry pass has nothing to do, which one comparison tells
    /// (most loop turns come well within one tick of the last).
    cursor_at: Instant,
    slots: Vec<Vec<Entry>>,
    len: usize,
    /// No entry is due before this tick (a lower bound, so waking at it is
    /// never late). `None` after an expiry pass until the next look-ahead.
    earliest: Option<Tick>,
}

/// Slots [`TimerWheel::next_due`] looks ahead at most; with nothing due
/// sooner the worker wakes at that horizon and looks again.
const LOOK_AHEAD: Tick = 64;

impl TimerWheel {
    /// A wheel of `slots` slots (rounded up to a power of two) of `resolution` each.
    pub fn new(start: Instant, resolution: Duration, slots: usize) -> Self {
        let slots = slots.max(1).next_power_of_two();
        let resolution = resolution.max(Duration::from_micros(100));
        TimerWheel {
            start,
            resolution,
            cursor: 0,
            cursor_at: start,
            slots: vec![Vec::new(); slots],
            len: 0,
            earliest: None,
        }
    }

    /// The tick on which a deadline at `at` fires: the first tick boundary at or
    /// after it, so a timer never fires early.
    pub fn tick_for(&self, at: Instant) -> Tick {
        let nanos = at.saturating_duration_since(self.start).as_nanos();
        let res = self.resolution.as_nanos();
        nanos.div_ceil(res) as Tick
    }

    /// Schedules `key`/`generation` to fire at `at` and returns the tick it was
    /// filed under (the owner keeps it to recognise this entry later).
    pub fn schedule(&mut self, key: usize, generation: u32, at: Instant) -> Tick {
        // Never file behind the cursor: that slot's turn has passed.
        let tick = self.tick_for(at).max(self.cursor);
        let mask = self.slots.len() - 1;
        self.slots[(tick as usize) & mask].push(Entry {
            key,
            generation,
            tick,
        });
        self.len += 1;
        if let Some(e) = self.earliest.as_mut() {
            *e = (*e).min(tick);
        }
        tick
    }

    /// Moves the wheel to `now` and appends every entry due by then to `due`.
    pub fn expire(&mut self, now: Instant, due: &mut Vec<Entry>) {
        if now < self.cursor_at {
            return;
        }
        self.expire_ticks(now, due);
        self.cursor_at = self.tick_at(self.cursor);
    }

    /// When tick `tick` is due.
    fn tick_at(&self, tick: Tick) -> Instant {
        self.start + Duration::from_nanos((self.resolution.as_nanos() as u64).saturating_mul(tick))
    }

    /// [`expire`](Self::expire) once tick `cursor` is due.
    fn expire_ticks(&mut self, now: Instant, due: &mut Vec<Entry>) {
        // Ticks whose boundary has fully passed (entries round their due
        // time up, `now` rounds down: nothing fires early).
        let now_tick = (now.saturating_duration_since(self.start).as_nanos()
            / self.resolution.as_nanos()) as Tick;
        if self.len == 0 {
            self.cursor = self.cursor.max(now_tick + 1);
            self.earliest = None;
            return;
        }
        let mask = self.slots.len() as Tick - 1;
        // Visiting more than one full turn would only revisit the same slots.
        let last = now_tick.min(self.cursor + mask);
        while self.cursor <= last {
            let slot = &mut self.slots[(self.cursor & mask) as usize];
            let before = slot.len();
            slot.retain(|e| {
                if e.tick <= now_tick {
                    due.push(*e);
                    false
                } else {
                    true
                }
            });
            self.len -= before - slot.len();
            self.cursor += 1;
        }
        self.cursor = self.cursor.max(now_tick + 1);
        if self.earliest.is_some_and(|e| e < self.cursor) {
            self.earliest = None;
        }
    }

    /// Whether no entry is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How long from `now` until [`next_due`](Self::next_due).
    #[cfg(test)]
    pub fn next_timeout(&mut self, now: Instant) -> Option<Duration> {
        Some(self.next_due()?.saturating_duration_since(now))
    }

    /// When the next tick boundary at which an entry may be due comes, or
    /// `None` when the wheel is empty: what the poll timeout is made of.
    ///
    /// Cheap on every loop turn: the tick is cached as a lower bound and
    /// only recomputed, by looking at most [`LOOK_AHEAD`] slots ahead, after
    /// an expiry pass consumed it.
    pub fn next_due(&mut self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let first = match self.earliest {
            Some(e) => e,
            None => {
                let mask = self.slots.len() as Tick - 1;
                let horizon = LOOK_AHEAD.min(mask);
                // A non-empty slot may hold only later turns' entries; then
                // we wake early once and look again.
                let t = (self.cursor..self.cursor + horizon)
                    .find(|t| !self.slots[(t & mask) as usize].is_empty())
                    .unwrap_or(self.cursor + horizon);
                self.earliest = Some(t);
                t
            }
        };
        Some(self.tick_at(first))
    }

    /// Frees slot storage left over from a spike when the wheel holds few
    /// entries. Returns the number of entry slots released.
    pub fn shrink(&mut self) -> usize {
        let mut freed = 0;
        for slot in &mut self.slots {
            if slot.capacity() > 4 * slot.len().max(4) {
                freed += slot.capacity() - slot.len();
                slot.shrink_to(slot.len().max(4));
                freed -= slot.capacity() - slot.len();
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fires_on_time_never_early() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, ms(10), 8);
        w.schedule(1, 0, t0 + ms(25));
        let mut due = Vec::new();
        w.expire(t0 + ms(29), &mut due);
        assert!(due.is_empty(), "fired early: {due:?}");
        w.expire(t0 + ms(30), &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].key, 1);
        assert_eq!(w.len, 0);
    }

    #[test]
    fn entries_beyond_one_turn_wait_for_their_turn() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, ms(10), 4); // one turn = 40 ms
        w.schedule(7, 3, t0 + ms(110));
        let mut due = Vec::new();
        for step in 1..11 {
            w.expire(t0 + ms(step * 10), &mut due);
            assert!(due.is_empty(), "fired at {} ms", step * 10);
        }
        w.expire(t0 + ms(110), &mut due);
        assert_eq!(
            due,
            vec![Entry {
                key: 7,
                generation: 3,
                tick: 11
            }]
        );
    }

    #[test]
    fn a_long_pause_fires_everything_due() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, ms(1), 16);
        for k in 0..100 {
            w.schedule(k, 0, t0 + ms(k as u64 * 3));
        }
        let mut due = Vec::new();
        w.expire(t0 + ms(1000), &mut due);
        assert_eq!(due.len(), 100);
        assert_eq!(w.len, 0);
    }

    #[test]
    fn scheduling_in_the_past_fires_on_the_next_expire() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, ms(10), 8);
        let mut due = Vec::new();
        w.expire(t0 + ms(100), &mut due);
        w.schedule(1, 0, t0);
        w.expire(t0 + ms(110), &mut due);
        assert_eq!(
            due.len(),
            1,
            "a deadline in the past fires on the next tick"
        );
    }

    #[test]
    fn next_timeout_points_at_the_first_due_slot() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, ms(10), 1024);
        assert_eq!(w.next_timeout(t0), None);
        w.schedule(1, 0, t0 + ms(45));
        assert_eq!(w.next_timeout(t0), Some(ms(50)));
        // An earlier entry lowers the cached answer.
        w.schedule(2, 0, t0 + ms(25));
        assert_eq!(w.next_timeout(t0), Some(ms(30)));
        // After it fires, the look-ahead finds the next one.
        let mut due = Vec::new();
        w.expire(t0 + ms(30), &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!(w.next_timeout(t0 + ms(30)), Some(ms(20)));
        w.expire(t0 + ms(50), &mut due);
        // Far entries: wake at the look-ahead horizon, never later than due.
        w.schedule(3, 0, t0 + ms(5000));
        let wait = w.next_timeout(t0 + ms(50)).unwrap();
        assert!(wait <= ms(4950) && wait >= ms(600), "{wait:?}");
    }

    #[test]
    fn shrink_releases_spike_capacity() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, ms(10), 2);
        for k in 0..1000 {
            w.schedule(k, 0, t0 + ms(10));
        }
        let mut due = Vec::new();
        w.expire(t0 + ms(20), &mut due);
        assert_eq!(due.len(), 1000);
        assert!(w.shrink() >= 900);
    }
}
