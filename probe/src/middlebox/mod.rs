//! The middlebox model: how a stateful UDP NAT treats WireGuard's packets.
//!
//! One model serves three masters: the lab's NAT stage, the agent's estimate of its own NAT entry,
//! and the ground truth in the probe's tests. It is checked against the real kernel by the
//! differential test in `tests/`.

mod entry;
mod nat;
mod profile;

pub use entry::{Direction, Entry, Refresh, TimeoutKind};
pub use nat::{Drop, FlowId, Nat, NatEvent, NatEventKind, NatStats};
pub use profile::{
    AssuredRule, ConntrackTimeouts, Overrides, PfTimeouts, Profile, ProfileError, ProfileName,
    Rules, UnknownProfile, LINUX_STREAM_GRACE, LINUX_UDP_TIMEOUT, LINUX_UDP_TIMEOUT_STREAM,
    OPENWRT_UDP_TIMEOUT, OPENWRT_UDP_TIMEOUT_STREAM, PF_UDP_FIRST, PF_UDP_MULTIPLE, PF_UDP_SINGLE,
    ROUTEROS_UDP_STREAM_TIMEOUT, ROUTEROS_UDP_TIMEOUT,
};
