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

/// A monotonic clock whose origin is when it was made: turns `Instant`s into [`Time`]s for the
/// sans-IO state machines.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// Start now.
    pub fn start() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Now, as [`Time`].
    pub fn now(&self) -> Time {
        Time::from_origin(self.origin.elapsed())
    }

    /// The `Instant` of a [`Time`] (for timers).
    pub fn instant(&self, t: Time) -> Instant {
        self.origin + t.since_origin()
    }
}
