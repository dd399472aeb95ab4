//! wgkeep: keeps the NAT entries WireGuard depends on in their long-lived state.
//!
//! - [`keeper`]: the sans-IO policy (when a follow-up packet is due, which PersistentKeepalive a
//!   NAT can sustain);
//! - [`lab`]: two boringtun peers through the conntrack model, in virtual time.

pub mod clock;
pub mod docs_cmd;
pub mod driver;
pub mod keeper;
pub mod lab;
pub mod metrics;
pub mod probe_cmd;
pub mod probe_json;
pub mod probe_ui;
pub mod state;
pub mod tracker;
pub mod wg;
