//! The lab's virtual clock: the only place that drives boringtun's mock clock.
//!
//! boringtun built with `mock-instant` reads `mock_instant::Instant`, whose clock is thread-local:
//! a lab run owns the thread it runs on, and two runs on two threads do not disturb each other.

use std::time::Duration;

use wgkeep_probe::Time;

/// Virtual time for one lab run, starting at zero.
#[derive(Debug)]
pub struct VirtualClock {
    now: Time,
}

impl VirtualClock {
    /// Start the thread's mock clock at zero.
    pub fn start() -> VirtualClock {
        mock_instant::MockClock::set_time(Duration::ZERO);
        VirtualClock { now: Time::ZERO }
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Move to `t` (never backwards).
    pub fn advance_to(&mut self, t: Time) {
        debug_assert!(t >= self.now, "virtual time went backwards");
        self.now = t.max(self.now);
        mock_instant::MockClock::set_time(self.now.since_origin());
    }
}
