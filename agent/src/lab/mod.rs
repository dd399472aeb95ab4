//! `wgkeep lab`: the failure and the fix, in virtual time, with nothing installed.
//!
//! Two userspace boringtun peers talk through the project's NAT stage (the conntrack model of
//! `wgkeep_probe::middlebox`). The client sits behind the NAT; the keeper runs on the client or
//! on the server, or not at all. **Reachability** is the share of virtual time, from the first
//! handshake on, during which a packet from the server would pass the NAT. It is read from the
//! model and adds no traffic: inbound traffic changes the outcome (WireGuard answers data with a
//! passive keepalive 10 s later, which can promote the entry by itself).
//!
//! With [`LabConfig::random_traffic`] both peers also exchange seeded random data (bursts in
//! either direction, idle gaps from a fraction of a second to 15 minutes): the soak scenario.

mod clock;
mod report;
mod sim;
mod traffic;

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
    /// Seeded random data in both directions from the first handshake on (`--random-traffic
    /// SEED`): bursts of 1–8 packets of 32–1400 B server → client, client → server, or a request
    /// and its response, separated by idle gaps of 0.1 s to 15 min. The same seed, the same traffic.
    pub random_traffic: Option<u64>,
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
    /// Data packets the server sent (`--inbound-every`, `--random-traffic`).
    pub inbound_sent: u64,
    /// Of those, delivered within 5 s.
    pub inbound_delivered: u64,
    /// Of those, delivered later (queued behind a new handshake).
    pub inbound_late: u64,
    /// Of those, passed the NAT but were rejected by the client's WireGuard. boringtun expires a
    /// session (REJECT_AFTER_TIME, 180 s) only on its 250 ms timer tick, and encrypts with it
    /// until then: a packet the server sends in that window can reach a client that already
    /// dropped the session. WireGuard's doing, not the NAT's.
    pub inbound_rejected: u64,
    /// Data packets the client sent (`--random-traffic`).
    pub outbound_sent: u64,
    /// Of those, delivered to the server (at any time).
    pub outbound_delivered: u64,
    /// Of those, rejected by the server's WireGuard (as `inbound_rejected`).
    pub outbound_rejected: u64,
    /// Datagrams both peers put on the wire.
    pub packets: u64,
    /// Their UDP payload bytes.
    pub bytes: u64,
    /// `packets` per hour of virtual time.
    pub packets_per_hour: f64,
    /// `bytes` per hour of virtual time.
    pub bytes_per_hour: f64,
    /// Datagrams the client put on the wire (each one a radio wake-up on a phone).
    pub client_packets: u64,
    /// Their UDP payload bytes (add 28 B of IPv4 and UDP header per datagram for the wire).
    pub client_bytes: u64,
    /// Datagrams that reached the client (passed the NAT).
    pub client_received: u64,
    /// `client_packets` per hour of virtual time.
    pub client_packets_per_hour: f64,
    /// `client_bytes` per hour of virtual time.
    pub client_bytes_per_hour: f64,
    /// NAT entries created.
    pub nat_entries_created: u64,
    /// Server → client datagrams the NAT dropped.
    pub nat_dropped_inbound: u64,
    /// Handshakes completed (client's count).
    pub handshakes: u64,
    /// The keeper's counters (zero without a keeper).
    pub keeper_stats: KeeperStats,
    /// What the simulation held at most: it must not grow with virtual time.
    pub peak: Peaks,
    /// Every event, when asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineEntry>,
}

/// The largest sizes of the simulation's own state during a run (the timeline aside, which
/// grows by design). A long run must show the same peaks as a short one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Peaks {
    /// Pending events (timer ticks, datagrams in flight, scheduled traffic).
    pub event_queue: usize,
    /// Entries in the NAT's table.
    pub nat_entries: usize,
    /// Inbound data packets remembered for the delivery check (those sent in the last 5 s).
    pub inbound_in_flight: usize,
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
