//! wgkeep's knowledge of middleboxes.
//!
//! - [`middlebox`]: a sans-IO model of Linux conntrack and BSD pf UDP entries and a masquerading
//!   NAT built on it. It never reads a clock: time is an argument ([`time::Time`]).
//!
//! The probe (measuring a real middlebox against a reflector) will live here too.

pub mod middlebox;
pub mod time;

pub use time::Time;
