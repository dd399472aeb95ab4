//! `wgkeep lab`: the failure and the fix, in virtual time, with nothing installed.
//!
//! Two userspace boringtun peers talk through the project's NAT stage (the conntrack model of
//! `wgkeep_probe::middlebox`). The client sits behind the NAT; the keeper runs on the client or
//! on the server, or not at all. **Reachability** is the share of virtual time, from the first
//! handshake on, during which a packet from the server would pass the NAT. It is read from the
//! model and adds no traffic: inbound traffic changes the outcome (WireGuard answers data with a
//! passive keepalive 10 s later, which can promote the entry by itself).

mod clock;
mod report;
mod sim;

use std::time::Duration;

use serde::Serialize;
use wgkeep_probe::middlebox::Profile;

use crate::keeper::{KeeperStats, Side};

pub use report::{render_human, render_json, render_timeline};
pub use sim::TIMER_TICK;

/// Which runs to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeeperRuns {
    /// Only without the keeper.
    Off,
    /// Only with the keeper.
    On,
    /// Without, then with.
    Both,
}

/// A lab scenario.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// The NAT.
    pub profile: Profile,
    /// The client's PersistentKeepalive in seconds (`None`: off).
    pub keepalive: Option<u16>,
    /// Virtual time to simulate.
    pub duration: Duration,
    /// Round-trip time between the peers.
    pub rtt: Duration,
    /// The server sends a data packet to the client this often (from the first handshake on).
    pub inbound_every: Option<Duration>,
    /// Record every packet and NAT event.
    pub timeline: bool,
}

/// One line of a timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineEntry {
    /// Virtual seconds.
    pub t: f64,
    /// `client`, `server` or `nat`.
    pub source: &'static str,
    /// What happened.
    pub event: String,
    /// UDP payload size, for packets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
}

/// The outcome of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Whether the keeper ran.
    #[serde(serialize_with = "report::keeper_label")]
    pub keeper: bool,
    /// Where it ran.
    pub side: Option<Side>,
    /// The client's PersistentKeepalive during the run (the keeper may have lowered it).
    pub client_keepalive: Option<u16>,
    /// Share of time from the first handshake on during which the server could reach the client.
    pub reachability: f64,
    /// When the first handshake completed (virtual seconds).
    pub first_handshake_s: Option<f64>,
    /// Data packets the server sent (`--inbound-every`).
    pub inbound_sent: u64,
    /// Of those, delivered within 5 s.
    pub inbound_delivered: u64,
    /// Of those, delivered later (queued behind a new handshake).
    pub inbound_late: u64,
    /// Datagrams both peers put on the wire.
    pub packets: u64,
    /// Their UDP payload bytes.
    pub bytes: u64,
    /// `packets` per hour of virtual time.
    pub packets_per_hour: f64,
    /// `bytes` per hour of virtual time.
    pub bytes_per_hour: f64,
    /// NAT entries created.
    pub nat_entries_created: u64,
    /// Server → client datagrams the NAT dropped.
    pub nat_dropped_inbound: u64,
    /// Handshakes completed (client's count).
    pub handshakes: u64,
    /// The keeper's counters (zero without a keeper).
    pub keeper_stats: KeeperStats,
    /// Every event, when asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineEntry>,
}

/// All runs of one `wgkeep lab` call.
#[derive(Clone, Debug)]
pub struct LabReport {
    /// The scenario.
    pub config: LabConfig,
    /// The runs, keeper off first.
    pub runs: Vec<RunReport>,
}

/// Run the scenario without and/or with the keeper on `side`.
pub fn run(config: &LabConfig, runs: KeeperRuns, side: Side) -> LabReport {
    let mut out = Vec::new();
    if matches!(runs, KeeperRuns::Off | KeeperRuns::Both) {
        out.push(sim::run(config, None));
    }
    if matches!(runs, KeeperRuns::On | KeeperRuns::Both) {
        out.push(sim::run(config, Some(side)));
    }
    LabReport {
        config: config.clone(),
        runs: out,
    }
}

#[cfg(test)]
mod tests;
