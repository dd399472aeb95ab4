//! Thin tokio drivers around the sans-IO [`Planner`](crate::planner::Planner) and
//! [`Reflector`](crate::reflector::Reflector): they own the sockets and the clock, nothing else.

mod client;
mod reflector;

pub use client::{run_probe, DriverError};
pub use reflector::{run_reflector, ReflectorHandle};

use std::time::Duration;

use crate::Time;

/// Driver time: the [`Time`] since `origin` (a tokio `Instant`, so tests can pause it).
fn since(origin: tokio::time::Instant, at: tokio::time::Instant) -> Time {
    Time::from_origin(at.saturating_duration_since(origin))
}

/// The tokio instant of a planner/reflector [`Time`].
fn instant(origin: tokio::time::Instant, t: Time) -> tokio::time::Instant {
    origin + t.since_origin()
}

/// How often the progress callback runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
