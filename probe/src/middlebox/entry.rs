//! One UDP entry of a stateful middlebox, packet by packet.
//!
//! [`Entry`] follows the kernel's `nf_conntrack_udp_packet` (Linux 6.18,
//! `net/netfilter/nf_conntrack_proto_udp.c`) or pf's UDP state update (`sys/net/pf.c`) to the
//! letter. In conntrack terms, for each packet of an entry:
//!
//! ```text
//! if !confirmed:           stream_ts = now + 2 s           (the packet that creates the entry)
//! if status & SEEN_REPLY:  timeout = time_after(now, stream_ts) ? stream : unreplied
//! else:                    timeout = unreplied
//! refresh: deadline = now + timeout
//! afterwards, for a reply-direction packet: status |= SEEN_REPLY
//! ```
//!
//! Two consequences matter for WireGuard: the packet that carries the *first* reply never
//! promotes (SEEN_REPLY is set after the handler ran), and a packet exactly at `stream_ts` does
//! not promote (`time_after` is strict). An entry is expired once `now >= deadline`
//! (`nf_ct_is_expired`: `(s32)(timeout - nfct_time_stamp) <= 0`).

use std::time::Duration;

use serde::Serialize;

use super::profile::{AssuredRule, Rules};
use crate::time::Time;

/// The direction of a packet relative to the entry: `Original` is the direction of the packet that
/// created it (client → server through a NAT), `Reply` the other one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Same direction as the entry's first packet.
    Original,
    /// The opposite direction.
    Reply,
}

/// Which timeout the last refresh applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeoutKind {
    /// conntrack `nf_conntrack_udp_timeout` (no reply yet, or no packet after the grace period).
    Unreplied,
    /// conntrack `nf_conntrack_udp_timeout_stream`.
    Stream,
    /// pf `udp.first`.
    PfFirst,
    /// pf `udp.single`.
    PfSingle,
    /// pf `udp.multiple`.
    PfMultiple,
}

impl TimeoutKind {
    /// Short name for timelines.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::Unreplied => "unreplied",
            TimeoutKind::Stream => "stream",
            TimeoutKind::PfFirst => "pf-first",
            TimeoutKind::PfSingle => "pf-single",
            TimeoutKind::PfMultiple => "pf-multiple",
        }
    }

    /// Whether this is the long-lived timeout a keeper aims for.
    pub fn is_sustained(self) -> bool {
        matches!(self, TimeoutKind::Stream | TimeoutKind::PfMultiple)
    }
}

/// pf's per-side UDP state (`PFUDPS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum PfSide {
    NoTraffic,
    Single,
    Multiple,
}

/// What one packet changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Refresh {
    /// The entry's timeout kind changed (also true for the creating packet).
    pub timeout_changed: bool,
    /// This packet was the first in the reply direction.
    pub first_reply: bool,
    /// This packet set `[ASSURED]`.
    pub newly_assured: bool,
}

/// A UDP entry: created by its first packet, refreshed by each later one, expired at its deadline.
#[derive(Clone, Debug)]
pub struct Entry {
    rules: Rules,
    created: Time,
    /// conntrack `ct->proto.udp.stream_ts`.
    stream_ts: Time,
    deadline: Time,
    last_packet: Time,
    timeout: TimeoutKind,
    seen_reply: bool,
    assured: bool,
    /// pf: (initiator, responder).
    pf: (PfSide, PfSide),
    packets: [u64; 2],
}

impl Entry {
    /// The entry created by a packet at `now` (in the original direction by definition).
    pub fn new(rules: Rules, now: Time) -> Entry {
        let (timeout, stream_ts) = match rules {
            // `if ((status & IPS_CONFIRMED) == 0) stream_ts = 2 * HZ + jiffies;` then, no reply
            // seen yet: `nf_ct_refresh_acct(ct, ctinfo, skb, timeouts[UDP_CT_UNREPLIED])`.
            Rules::Conntrack(t) => (TimeoutKind::Unreplied, now + t.grace),
            // pf_create_state: src SINGLE, dst NO_TRAFFIC, PFTM_UDP_FIRST_PACKET.
            Rules::Pf(_) => (TimeoutKind::PfFirst, now),
        };
        let mut e = Entry {
            rules,
            created: now,
            stream_ts,
            deadline: now,
            last_packet: now,
            timeout,
            seen_reply: false,
            assured: false,
            pf: (PfSide::Single, PfSide::NoTraffic),
            packets: [1, 0],
        };
        e.deadline = now + e.timeout_value(timeout);
        e
    }

    fn timeout_value(&self, kind: TimeoutKind) -> Duration {
        match (self.rules, kind) {
            (Rules::Conntrack(t), TimeoutKind::Unreplied) => t.unreplied,
            (Rules::Conntrack(t), TimeoutKind::Stream) => t.stream,
            (Rules::Pf(t), TimeoutKind::PfFirst) => t.first,
            (Rules::Pf(t), TimeoutKind::PfSingle) => t.single,
            (Rules::Pf(t), TimeoutKind::PfMultiple) => t.multiple,
            (rules, kind) => unreachable!("timeout kind {kind:?} does not belong to {rules:?}"),
        }
    }

    /// Whether the entry still exists at `now`.
    pub fn is_alive(&self, now: Time) -> bool {
        now < self.deadline
    }

    /// The instant the entry expires unless refreshed before.
    pub fn deadline(&self) -> Time {
        self.deadline
    }

    /// When the first packet passed.
    pub fn created(&self) -> Time {
        self.created
    }

    /// When the last packet passed.
    pub fn last_packet(&self) -> Time {
        self.last_packet
    }

    /// conntrack's `stream_ts`: a packet strictly after it (with a reply seen before) promotes.
    /// `None` for pf.
    pub fn stream_ts(&self) -> Option<Time> {
        matches!(self.rules, Rules::Conntrack(_)).then_some(self.stream_ts)
    }

    /// The timeout the last refresh applied.
    pub fn timeout(&self) -> TimeoutKind {
        self.timeout
    }

    /// `IPS_SEEN_REPLY` (pf: the responder has sent).
    pub fn seen_reply(&self) -> bool {
        self.seen_reply
    }

    /// `[ASSURED]` as `conntrack -L` shows it.
    pub fn assured(&self) -> bool {
        self.assured
    }

    /// The rules this entry follows.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Packets seen in the original and reply directions.
    pub fn packets(&self, dir: Direction) -> u64 {
        self.packets[dir as usize]
    }

    /// Time left at `now` (zero once expired).
    pub fn remaining(&self, now: Time) -> Duration {
        self.deadline.saturating_since(now)
    }

    /// Whether one packet at `at`, in either direction, would move the entry to its sustained
    /// timeout (conntrack: a reply was seen and `at` is strictly after `stream_ts`).
    pub fn would_promote_at(&self, at: Time) -> bool {
        match self.rules {
            Rules::Conntrack(_) => self.seen_reply && at > self.stream_ts,
            Rules::Pf(_) => false,
        }
    }

    /// A packet passes at `now`. The caller must have checked [`Entry::is_alive`]: an expired
    /// entry is gone, and the packet creates a new one instead.
    pub fn on_packet(&mut self, now: Time, dir: Direction) -> Refresh {
        debug_assert!(self.is_alive(now), "packet on an expired entry");
        debug_assert!(now >= self.last_packet, "time went backwards");
        let before = self.timeout;
        let mut out = Refresh::default();
        match self.rules {
            Rules::Conntrack(t) => {
                // `status` is read before the handler; SEEN_REPLY is set after it.
                if self.seen_reply {
                    let stream = now > self.stream_ts; // time_after(jiffies, stream_ts)
                    self.timeout = if stream {
                        TimeoutKind::Stream
                    } else {
                        TimeoutKind::Unreplied
                    };
                    let sets_assured = match t.assured {
                        AssuredRule::OnStream => stream,
                        AssuredRule::OnAnyReplied => true,
                    };
                    if sets_assured && !self.assured {
                        self.assured = true;
                        out.newly_assured = true;
                    }
                } else {
                    self.timeout = TimeoutKind::Unreplied;
                }
                if dir == Direction::Reply && !self.seen_reply {
                    self.seen_reply = true;
                    out.first_reply = true;
                }
            }
            Rules::Pf(_) => {
                let (src, dst) = match dir {
                    Direction::Original => (&mut self.pf.0, &mut self.pf.1),
                    Direction::Reply => (&mut self.pf.1, &mut self.pf.0),
                };
                if *src < PfSide::Single {
                    *src = PfSide::Single;
                }
                if *dst == PfSide::Single {
                    *dst = PfSide::Multiple;
                }
                self.timeout = if *src == PfSide::Multiple && *dst == PfSide::Multiple {
                    TimeoutKind::PfMultiple
                } else {
                    TimeoutKind::PfSingle
                };
                if dir == Direction::Reply && !self.seen_reply {
                    self.seen_reply = true;
                    out.first_reply = true;
                }
            }
        }
        self.deadline = now + self.timeout_value(self.timeout);
        self.last_packet = now;
        self.packets[dir as usize] += 1;
        out.timeout_changed = before != self.timeout;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middlebox::Profile;

    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    fn routeros() -> Rules {
        Profile::routeros().rules
    }

    fn linux() -> Rules {
        Profile::linux().rules
    }

    /// The WireGuard handshake at t=0: initiation out, response back, keepalive out.
    fn handshake(rules: Rules) -> Entry {
        let mut e = Entry::new(rules, t(0));
        e.on_packet(t(30), Direction::Reply);
        e.on_packet(t(31), Direction::Original);
        e
    }

    #[test]
    fn handshake_leaves_the_short_timeout() {
        let e = handshake(routeros());
        assert_eq!(e.timeout(), TimeoutKind::Unreplied);
        assert!(e.seen_reply());
        // RouterOS 10 s: deadline at 10.031 s; `conntrack -L` at +1 s shows 9 s left.
        assert_eq!(e.deadline(), t(10_031));
        assert_eq!(e.remaining(t(1_000)).as_secs(), 9);
    }

    #[test]
    fn exactly_at_stream_ts_does_not_promote_just_after_does() {
        let mut a = handshake(linux());
        a.on_packet(t(2_000), Direction::Original);
        assert_eq!(a.timeout(), TimeoutKind::Unreplied);
        assert!(!a.assured());
        assert_eq!(a.deadline(), t(32_000));

        let mut b = handshake(linux());
        let r = b.on_packet(t(2_001), Direction::Original);
        assert_eq!(b.timeout(), TimeoutKind::Stream);
        assert!(r.timeout_changed && r.newly_assured && b.assured());
        assert_eq!(b.deadline(), t(122_001));
    }

    #[test]
    fn a_reply_direction_packet_promotes_too() {
        let mut e = handshake(routeros());
        e.on_packet(t(2_500), Direction::Reply);
        assert_eq!(e.timeout(), TimeoutKind::Stream);
        assert_eq!(e.deadline(), t(182_500));
    }

    #[test]
    fn the_first_reply_never_promotes_even_late() {
        let mut e = Entry::new(linux(), t(0));
        e.on_packet(t(1_000), Direction::Original);
        let r = e.on_packet(t(5_000), Direction::Reply);
        assert!(r.first_reply);
        assert_eq!(e.timeout(), TimeoutKind::Unreplied);
        assert_eq!(e.deadline(), t(35_000));
        // The next packet, either way, promotes.
        e.on_packet(t(5_001), Direction::Original);
        assert_eq!(e.timeout(), TimeoutKind::Stream);
    }

    #[test]
    fn no_reply_means_unreplied_forever() {
        let mut e = Entry::new(linux(), t(0));
        for s in 1..=10 {
            e.on_packet(t(s * 20_000), Direction::Original);
            assert_eq!(e.timeout(), TimeoutKind::Unreplied);
        }
        assert!(!e.seen_reply());
    }

    #[test]
    fn expiry_exactly_at_last_refresh_plus_timeout() {
        let e = handshake(routeros());
        assert!(e.is_alive(t(10_030)));
        assert!(!e.is_alive(t(10_031)));
    }

    #[test]
    fn assured_rule_old_kernels_set_it_on_the_short_timeout() {
        // RouterOS (5.6 kernel): SAC with timeout=8s in the seed thread.
        let e = handshake(routeros());
        assert!(e.assured());
        assert_eq!(e.timeout(), TimeoutKind::Unreplied);
        // Current kernels: not assured until promoted.
        let e = handshake(linux());
        assert!(!e.assured());
    }

    #[test]
    fn pf_states_follow_pf_c() {
        let pf = Profile::pf().rules;
        let mut e = Entry::new(pf, t(0));
        assert_eq!(
            (e.timeout(), e.deadline()),
            (TimeoutKind::PfFirst, t(60_000))
        );
        // A second packet the same way: single (30 s).
        e.on_packet(t(1_000), Direction::Original);
        assert_eq!(
            (e.timeout(), e.deadline()),
            (TimeoutKind::PfSingle, t(31_000))
        );
        // The reply: responder SINGLE, initiator MULTIPLE: still single.
        e.on_packet(t(1_030), Direction::Reply);
        assert_eq!(e.timeout(), TimeoutKind::PfSingle);
        // Initiator again: both MULTIPLE (60 s); no grace rule.
        e.on_packet(t(1_031), Direction::Original);
        assert_eq!(
            (e.timeout(), e.deadline()),
            (TimeoutKind::PfMultiple, t(61_031))
        );
        assert!(!e.would_promote_at(t(5_000)));
    }

    #[test]
    fn pf_handshake_is_multiple_at_once() {
        let e = handshake(Profile::pf().rules);
        assert_eq!(e.timeout(), TimeoutKind::PfMultiple);
        assert_eq!(e.deadline(), t(60_031));
    }
}
