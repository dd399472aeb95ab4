//! Per-peer bookkeeping for the agent, sans-IO: turns periodic samples of a peer (last handshake,
//! byte counters, endpoint) into observations for its [`Keeper`], and notices what the metrics
//! report (handshakes, endpoint changes, counter resets, unconfirmed follow-ups).
//!
//! Samples only say that *some* packets passed between two polls. For the keeper's question "did
//! a packet pass after the grace period?" the conservative answer is the earliest possible time,
//! just after the previous poll; so that is when counter changes are reported.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use wgkeep_probe::Time;

use crate::keeper::{Action, Keeper, KeeperConfig, KeeperEvent, Queue, Side, Traffic};
use crate::wg::PeerInfo;

/// A counter change is reported this long after the previous poll (it happened after it).
const AFTER_POLL: Duration = Duration::from_millis(1);
/// A keepalive is 32 bytes on the wire; a kick is confirmed when tx_bytes grew at least this much.
pub const KEEPALIVE_BYTES: u64 = 32;

/// What the tracker noticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackerEvent {
    /// A new handshake completed at `at` (monotonic) / `wall` (epoch).
    Handshake {
        /// Monotonic time.
        at: Time,
        /// As WireGuard reported it.
        wall: SystemTime,
    },
    /// The peer's endpoint changed. After an idle gap this means its NAT mapping expired and it
    /// came back from a new public address or port.
    EndpointChanged {
        /// Before.
        from: SocketAddr,
        /// After.
        to: SocketAddr,
        /// Time since the last packet received from the peer before the change.
        idle: Option<Duration>,
    },
    /// rx/tx counters went down: the interface or the peer was re-created.
    CountersReset,
    /// A follow-up was confirmed by tx_bytes.
    FollowUpConfirmed,
    /// A follow-up left no trace in tx_bytes by the next poll.
    FollowUpUnconfirmed,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Time,
    last_handshake: Option<SystemTime>,
    rx: u64,
    tx: u64,
}

/// One peer of one interface.
#[derive(Debug)]
pub struct PeerTracker {
    keeper: Keeper,
    last: Option<Sample>,
    last_rx_change: Option<Time>,
    endpoint: Option<SocketAddr>,
    /// tx_bytes before a follow-up, waiting for the next sample to confirm it.
    confirming: Option<u64>,
    events: Queue<TrackerEvent>,
}

impl PeerTracker {
    /// A tracker that has not seen the peer yet.
    pub fn new(cfg: KeeperConfig) -> PeerTracker {
        PeerTracker::with_shared_config(Arc::new(cfg))
    }

    /// [`PeerTracker::new`] with a keeper configuration shared with other trackers (the agent's
    /// peers of one side share one).
    pub fn with_shared_config(cfg: Arc<KeeperConfig>) -> PeerTracker {
        PeerTracker {
            keeper: Keeper::with_shared_config(cfg),
            last: None,
            last_rx_change: None,
            endpoint: None,
            confirming: None,
            events: Queue::default(),
        }
    }

    /// The keeper's side for this peer.
    pub fn side(&self) -> Side {
        self.keeper.config().side
    }

    /// A fresh sample of the peer at `now` (monotonic) and `wall_now` (epoch).
    pub fn on_sample(&mut self, now: Time, wall_now: SystemTime, peer: &PeerInfo) {
        let prev = self.last;
        let handshake = peer.last_handshake.filter(|&t| t > SystemTime::UNIX_EPOCH);
        // boringtun reports the handshake as "seconds ago", which we turn into wall time: that
        // moves by up to a timer tick (250 ms) between polls. Keep the first reading of a
        // handshake so that it is not taken for a new one.
        let handshake = match (prev.and_then(|p| p.last_handshake), handshake) {
            (Some(old), Some(new)) if same_handshake(Some(old), new) => Some(old),
            (_, h) => h,
        };
        let sample = Sample {
            at: now,
            last_handshake: handshake,
            rx: peer.rx_bytes,
            tx: peer.tx_bytes,
        };
        self.last = Some(sample);

        // Endpoint changes (roaming, or a NAT mapping that expired and came back elsewhere).
        if let (Some(from), Some(to)) = (self.endpoint, peer.endpoint) {
            if from != to {
                let idle = self.last_rx_change.map(|t| now - t);
                self.events
                    .push_back(TrackerEvent::EndpointChanged { from, to, idle });
            }
        }
        if peer.endpoint.is_some() {
            self.endpoint = peer.endpoint;
        }

        let Some(prev) = prev else {
            // First sight: a handshake recent enough that its entry may still be on the short
            // timeout is followed up like a new one.
            if let Some(wall) = handshake {
                // Judged in wall time: the monotonic clock may not reach that far back.
                let age = wall_now.duration_since(wall).unwrap_or_default();
                let short = self.keeper.config().rules.initial_timeout();
                if age < short {
                    self.new_handshake(monotonic(now, wall_now, wall), wall);
                }
            }
            return;
        };

        if peer.rx_bytes < prev.rx || peer.tx_bytes < prev.tx {
            // Re-created interface or peer: a new baseline, never a negative delta.
            self.events.push_back(TrackerEvent::CountersReset);
            self.confirming = None;
        } else {
            let after = prev.at + AFTER_POLL;
            if let Some(before) = self.confirming.take() {
                self.events
                    .push_back(if peer.tx_bytes >= before + KEEPALIVE_BYTES {
                        TrackerEvent::FollowUpConfirmed
                    } else {
                        TrackerEvent::FollowUpUnconfirmed
                    });
            }
            if peer.tx_bytes > prev.tx {
                self.keeper.observe(after, Traffic::Sent);
            }
            if peer.rx_bytes > prev.rx {
                self.keeper.observe(after, Traffic::Received);
                self.last_rx_change = Some(after);
            }
        }
        if let Some(wall) = handshake {
            if !same_handshake(prev.last_handshake, wall) {
                let at = monotonic(now, wall_now, wall)
                    .max(prev.at + AFTER_POLL)
                    .min(now);
                self.new_handshake(at, wall);
            }
        }
    }

    fn new_handshake(&mut self, at: Time, wall: SystemTime) {
        // A handshake is a packet each way; the initiator's is the entry's original direction,
        // whichever peer initiated (the far side only ever answers through the entry).
        let (first, second) = match self.keeper.config().side {
            Side::Client => (Traffic::Sent, Traffic::Received),
            Side::Server => (Traffic::Received, Traffic::Sent),
        };
        self.keeper.observe(at, first);
        self.keeper.observe(at, second);
        self.keeper.handshake(at);
        self.last_rx_change = Some(at);
        self.events.push_back(TrackerEvent::Handshake { at, wall });
    }

    /// The driver sent a follow-up at `now`; `tx_bytes` is the last value it saw.
    pub fn on_follow_up_sent(&mut self, now: Time) {
        self.confirming = Some(self.last.map_or(0, |s| s.tx));
        self.keeper.observe(now, Traffic::Sent);
    }

    /// When [`PeerTracker::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.keeper.poll_timeout()
    }

    /// Let the keeper act at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.keeper.handle_timeout(now);
    }

    /// The next follow-up to send.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.keeper.poll_action()
    }

    /// The keeper's next decision (for logs and metrics).
    pub fn poll_keeper_event(&mut self) -> Option<KeeperEvent> {
        self.keeper.poll_event()
    }

    /// The tracker's next observation (for logs and metrics).
    pub fn poll_event(&mut self) -> Option<TrackerEvent> {
        self.events.pop_front()
    }
}

/// Two readings this close are the same handshake. WireGuard handshakes are at least
/// REKEY_TIMEOUT (5 s) apart; boringtun's relative times jitter by a timer tick.
const SAME_HANDSHAKE: Duration = Duration::from_secs(1);

fn same_handshake(prev: Option<SystemTime>, new: SystemTime) -> bool {
    prev.is_some_and(|p| {
        let d = new.duration_since(p).unwrap_or_else(|e| e.duration());
        d < SAME_HANDSHAKE
    })
}

/// The monotonic time of a wall-clock instant `wall`, given that `wall_now` is `now`.
fn monotonic(now: Time, wall_now: SystemTime, wall: SystemTime) -> Time {
    match wall_now.duration_since(wall) {
        Ok(ago) => now.saturating_sub(ago),
        Err(_) => now, // reported in the future (clock step): take it as now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keeper::{FollowUpReason, SkipReason};
    use crate::wg::Key;
    use wgkeep_probe::middlebox::Profile;

    const WALL0: u64 = 1_800_000_000;

    fn wall(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(WALL0) + Duration::from_millis(ms)
    }

    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    fn peer(hs_ms: Option<u64>, rx: u64, tx: u64) -> PeerInfo {
        PeerInfo {
            public_key: Key([7; 32]),
            endpoint: Some("198.51.100.2:51820".parse().unwrap()),
            last_handshake: hs_ms.map(wall),
            rx_bytes: rx,
            tx_bytes: tx,
            persistent_keepalive: Some(150),
            allowed_ips: vec![],
        }
    }

    fn tracker(side: Side) -> PeerTracker {
        PeerTracker::new(KeeperConfig::new(Profile::routeros().rules, side))
    }

    /// Polling every second, with wall time = monotonic time + WALL0.
    fn sample(tr: &mut PeerTracker, ms: u64, p: &PeerInfo) {
        tr.on_sample(t(ms), wall(ms), p);
    }

    #[test]
    fn a_handshake_between_polls_is_followed_up_at_its_time_plus_delay() {
        let mut tr = tracker(Side::Client);
        sample(&mut tr, 0, &peer(None, 0, 0));
        sample(&mut tr, 1_000, &peer(Some(400), 92, 180));
        assert!(
            matches!(tr.poll_event(), Some(TrackerEvent::Handshake { at, .. }) if at == t(400))
        );
        assert_eq!(tr.poll_timeout(), Some(t(2_900)));
        // Quiet polls do not change that.
        sample(&mut tr, 2_000, &peer(Some(400), 92, 180));
        assert_eq!(tr.poll_timeout(), Some(t(2_900)));
        tr.handle_timeout(t(2_900));
        assert_eq!(
            tr.poll_action(),
            Some(Action::FollowUp(FollowUpReason::Handshake))
        );
        tr.on_follow_up_sent(t(2_900));
        sample(&mut tr, 3_000, &peer(Some(400), 92, 212));
        assert_eq!(tr.poll_event(), Some(TrackerEvent::FollowUpConfirmed));
    }

    #[test]
    fn counters_after_the_grace_period_skip_the_follow_up() {
        let mut tr = tracker(Side::Client);
        sample(&mut tr, 0, &peer(None, 0, 0));
        sample(&mut tr, 1_000, &peer(Some(100), 92, 180));
        sample(&mut tr, 2_250, &peer(Some(100), 92, 180));
        // Traffic between 2.25 and 2.5 s (a faster poll): surely after 0.1 + 2 s.
        sample(&mut tr, 2_500, &peer(Some(100), 500, 500));
        assert_eq!(tr.poll_timeout(), None);
        let ev: Vec<_> = std::iter::from_fn(|| tr.poll_keeper_event()).collect();
        assert!(ev.iter().any(|e| matches!(
            e,
            KeeperEvent::Skipped {
                reason: SkipReason::Traffic,
                ..
            }
        )));
    }

    #[test]
    fn counters_that_may_predate_the_grace_period_do_not_skip() {
        let mut tr = tracker(Side::Client);
        sample(&mut tr, 0, &peer(None, 0, 0));
        sample(&mut tr, 1_000, &peer(Some(900), 92, 180));
        // Traffic between 1.0 and 2.0 s: not surely after 0.9 + 2 s.
        sample(&mut tr, 2_000, &peer(Some(900), 500, 500));
        assert_eq!(tr.poll_timeout(), Some(t(3_400)));
    }

    #[test]
    fn an_unconfirmed_follow_up_is_reported() {
        let mut tr = tracker(Side::Client);
        sample(&mut tr, 0, &peer(Some(0), 92, 180));
        tr.handle_timeout(t(2_500));
        assert!(tr.poll_action().is_some());
        tr.on_follow_up_sent(t(2_500));
        sample(&mut tr, 3_000, &peer(Some(0), 92, 180));
        let ev: Vec<_> = std::iter::from_fn(|| tr.poll_event()).collect();
        assert!(ev.contains(&TrackerEvent::FollowUpUnconfirmed), "{ev:?}");
    }

    #[test]
    fn boringtun_relative_handshake_jitter_is_one_handshake() {
        let mut tr = tracker(Side::Client);
        sample(&mut tr, 0, &peer(None, 0, 0));
        sample(&mut tr, 1_000, &peer(Some(400), 92, 180));
        // Converted from "seconds ago" at 250 ms granularity: the same handshake drifts.
        for (at, hs) in [(2_000, 650), (3_000, 150), (4_000, 900)] {
            sample(&mut tr, at, &peer(Some(hs), 92, 180));
        }
        let handshakes = std::iter::from_fn(|| tr.poll_event())
            .filter(|e| matches!(e, TrackerEvent::Handshake { .. }))
            .count();
        assert_eq!(handshakes, 1);
        assert_eq!(tr.poll_timeout(), Some(t(2_900)));
        // A real new handshake is seconds later.
        sample(&mut tr, 130_000, &peer(Some(129_500), 300, 400));
        assert!(matches!(
            tr.poll_event(),
            Some(TrackerEvent::Handshake { .. })
        ));
    }

    #[test]
    fn counters_going_down_are_a_reset_not_a_negative_delta() {
        let mut tr = tracker(Side::Server);
        sample(&mut tr, 0, &peer(None, 1_000, 1_000));
        sample(&mut tr, 1_000, &peer(None, 10, 10));
        assert_eq!(tr.poll_event(), Some(TrackerEvent::CountersReset));
    }

    #[test]
    fn an_old_handshake_at_start_is_left_alone() {
        let mut tr = tracker(Side::Client);
        // Agent started 60 s after the handshake: a RouterOS entry on its 10 s timeout is gone
        // or was promoted by traffic; either way a follow-up is not the fix.
        tr.on_sample(t(60_000), wall(60_000), &peer(Some(0), 92, 180));
        assert_eq!(tr.poll_timeout(), None);
        // Judged by wall time even when the monotonic clock is young (the agent just started).
        let mut tr = tracker(Side::Client);
        tr.on_sample(t(1_000), wall(60_000), &peer(Some(45_000), 92, 180));
        assert_eq!(tr.poll_timeout(), None);
        // A fresh one (1 s ago) is followed up.
        let mut tr = tracker(Side::Client);
        tr.on_sample(t(60_000), wall(60_000), &peer(Some(59_000), 92, 180));
        assert_eq!(tr.poll_timeout(), Some(t(61_500)));
    }

    #[test]
    fn endpoint_change_reports_the_idle_gap() {
        let mut tr = tracker(Side::Server);
        sample(&mut tr, 0, &peer(Some(0), 92, 148));
        let mut p = peer(Some(0), 92, 148);
        for s in 1..=40 {
            sample(&mut tr, s * 1_000, &p);
        }
        while tr.poll_event().is_some() {}
        p.endpoint = Some("198.51.100.2:40001".parse().unwrap());
        p.rx_bytes += 148;
        sample(&mut tr, 41_000, &p);
        let ev: Vec<_> = std::iter::from_fn(|| tr.poll_event()).collect();
        assert!(
            ev.iter().any(|e| matches!(e, TrackerEvent::EndpointChanged { idle: Some(d), .. } if *d == Duration::from_secs(41))),
            "{ev:?}"
        );
    }
}
