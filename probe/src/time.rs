//! Time as the sans-IO state machines see it.
//!
//! The models never read a clock: every call takes `now: Time`, a point on some monotonic clock
//! measured from an origin the driver chose (the lab's virtual clock, an `Instant` the agent took at
//! start, the moment a probe began). Only differences between two `Time`s carry meaning.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point in time: the [`Duration`] since the driver's chosen origin.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(Duration);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(Duration::ZERO);

    /// The point `since_origin` after the origin.
    pub const fn from_origin(since_origin: Duration) -> Time {
        Time(since_origin)
    }

    /// Whole seconds after the origin (handy in timeline tests).
    pub const fn from_secs(secs: u64) -> Time {
        Time(Duration::from_secs(secs))
    }

    /// Milliseconds after the origin (handy in timeline tests).
    pub const fn from_millis(ms: u64) -> Time {
        Time(Duration::from_millis(ms))
    }

    /// Fractional seconds after the origin. Panics on negative or non-finite input.
    pub fn from_secs_f64(secs: f64) -> Time {
        Time(Duration::from_secs_f64(secs))
    }

    /// The duration since the origin.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// Seconds since the origin, as a float (for reports).
    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self - d`, or the origin when `d` reaches before it.
    pub fn saturating_sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(d))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, rhs: Duration) -> Time {
        Time(self.0 + rhs)
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, rhs: Duration) {
        self.0 += rhs;
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    /// The time from `rhs` to `self`, saturating at zero.
    fn sub(self, rhs: Time) -> Duration {
        self.saturating_since(rhs)
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={:.3}s", self.0.as_secs_f64())
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.0.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_orders() {
        let a = Time::from_millis(1500);
        let b = a + Duration::from_millis(500);
        assert_eq!(b, Time::from_secs(2));
        assert_eq!(b - a, Duration::from_millis(500));
        assert_eq!(a - b, Duration::ZERO);
        assert!(a < b);
        assert_eq!(
            Time::from_secs(1).saturating_sub(Duration::from_secs(5)),
            Time::ZERO
        );
        assert_eq!(format!("{b}"), "2.000");
    }
}
