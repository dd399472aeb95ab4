//! wgkeep's knowledge of middleboxes.
//!
//! - [`middlebox`]: a sans-IO model of Linux conntrack and BSD pf UDP entries and a masquerading
//!   NAT built on it. It never reads a clock: time is an argument ([`time::Time`]).
//! - [`report`]: what `wgkeep probe` found (timeout brackets, the recommended
//!   PersistentKeepalive; its JSON is read by `wgkeep agent --timeouts-from`) and its progress.
//! - [`wire`]: the probe's wire format (v1) between `wgkeep probe` and `wgkeep reflect`.
//! - [`reflector`]: the sans-IO reflector behind `wgkeep reflect` (cookies, no amplification,
//!   bounded state).
//! - [`planner`]: the sans-IO probe client: which NAT entry asks which idle time, and the
//!   parallel timeout search ([`planner::search`]) that needs about one stream timeout.
//! - [`driver`]: the thin tokio drivers (sockets and clock) around the planner and the reflector.

pub mod driver;
pub mod middlebox;
pub mod planner;
pub mod reflector;
pub mod report;
pub mod time;
pub mod wire;

pub use time::Time;
