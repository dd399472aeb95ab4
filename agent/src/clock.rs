//! The only place production code reads the clock.

use std::time::{Instant, SystemTime};

use wgkeep_probe::Time;

/// The wall clock (for handshake timestamps, which WireGuard reports in wall time).
pub fn wall_now() -> SystemTime {
    SystemTime::now()
}

/// The monotonic clock, for I/O deadlines in drivers.
pub fn instant_now() -> Instant {
    Instant::now()
}

/// How far back a [`Clock`] can express events: a day. [`Time`] cannot be negative, and the
/// agent dates handshakes that happened before it started.
pub const HISTORY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// A monotonic clock for the sans-IO state machines: [`Clock::now`] is [`HISTORY`] plus the time
/// since the clock was made, so that events up to a day before the start have a `Time` too.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    started: Instant,
}

impl Clock {
    /// Start now.
    pub fn start() -> Clock {
        Clock {
            started: Instant::now(),
        }
    }

    /// Now, as [`Time`].
    pub fn now(&self) -> Time {
        Time::from_origin(HISTORY + self.started.elapsed())
    }

    /// The `Instant` of a [`Time`] (for timers); times before the start map to the start.
    pub fn instant(&self, t: Time) -> Instant {
        self.started + t.since_origin().saturating_sub(HISTORY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_leaves_room_for_the_past() {
        let c = Clock::start();
        let now = c.now();
        assert!(now.since_origin() >= HISTORY);
        assert_eq!(c.instant(Time::ZERO), c.started);
        assert!(c.instant(now) >= c.started);
    }
}
