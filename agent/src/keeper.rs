//! The keeper policy: when WireGuard must send one more authenticated packet so that the NAT entry
//! it depends on reaches its long timeout, and which PersistentKeepalive the NAT can sustain.
//!
//! Sans-IO, in the style of quinn-proto: the driver reports what it saw with
//! [`Keeper::observe`] and [`Keeper::handshake`], asks [`Keeper::poll_timeout`] when to wake up,
//! calls [`Keeper::handle_timeout`] then, and drains [`Keeper::poll_action`] and
//! [`Keeper::poll_event`]. It never reads a clock.
//!
//! The keeper estimates the NAT entry with the same conntrack model the lab's NAT stage uses
//! ([`wgkeep_probe::middlebox::Entry`]), fed with the packets its peer sent and received. Two
//! rules produce a follow-up:
//!
//! 1. **After a handshake** completed at `t`, a packet in either direction strictly after
//!    `t + grace` is needed: the handshake's first packet may have created the entry (at most at
//!    `t`), and only a packet after that entry's `stream_ts` promotes it. The follow-up is due at
//!    `t + follow_up_delay` unless traffic after `t + grace` already did the job
//!    ([`SkipReason::Traffic`]). This rule does not trust the estimate, so a NAT that lost its
//!    entry, or timeouts longer than assumed, cannot make it skip.
//! 2. **From the estimate**: an entry that saw a reply but is still on the short timeout is
//!    promoted at `created + follow_up_delay` (or at once when noticed late); an entry re-created
//!    by a lone packet of the peer behind the NAT after an idle gap is first answered (far side
//!    only: a packet in the reply direction) and then promoted. Behind the NAT, a lone keepalive
//!    gets no reply (WireGuard never answers keepalives), so the keeper waits for one.
//!
//! Nothing is done for pf-style middleboxes: they have no grace rule, and only a
//! PersistentKeepalive below `udp.multiple` helps ([`keepalive_advice`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use wgkeep_probe::middlebox::{Direction, Entry, Rules};
use wgkeep_probe::Time;

/// Margin after the grace period for a follow-up: 0.5 s (the FACTS measurement promoted at
/// +2.3 s and +2.5 s; conntrack compares jiffies, so a few ms would do on the same host, but the
/// packet crosses a network first).
pub const FOLLOW_UP_MARGIN: Duration = Duration::from_millis(500);

/// Where the keeper's WireGuard peer sits relative to the NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// Behind the NAT (the road-warrior client): what it sends is the entry's original direction.
    Client,
    /// Outside (the server): what it receives from the peer is the original direction.
    Server,
}

impl Side {
    fn direction(self, traffic: Traffic) -> Direction {
        match (self, traffic) {
            (Side::Client, Traffic::Sent) | (Side::Server, Traffic::Received) => {
                Direction::Original
            }
            (Side::Client, Traffic::Received) | (Side::Server, Traffic::Sent) => Direction::Reply,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// A packet the keeper's peer exchanged with the remote peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Sent to the peer.
    Sent,
    /// Received from the peer (so it passed the NAT).
    Received,
}

/// Why a follow-up was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FollowUpReason {
    /// A handshake completed and nothing passed after the grace period since.
    Handshake,
    /// The estimated entry saw a reply but is still on the short timeout.
    Promote,
    /// Far side: the peer's lone packet re-created the entry after an idle gap; answer it so the
    /// entry sees a reply (a second follow-up then promotes it).
    Answer,
}

impl FollowUpReason {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FollowUpReason::Handshake => "handshake",
            FollowUpReason::Promote => "promote",
            FollowUpReason::Answer => "answer",
        }
    }
}

/// Why a due follow-up was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// A packet already passed after the grace period.
    Traffic,
    /// The estimated entry expired before the follow-up was due; a packet now would only create
    /// a new, unreplied entry.
    Expired,
}

impl SkipReason {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Traffic => "traffic",
            SkipReason::Expired => "expired",
        }
    }
}

/// What the driver must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make WireGuard send one authenticated packet to the peer now (a keepalive). Report the
    /// packet with [`Keeper::observe`] when it is sent.
    FollowUp(FollowUpReason),
}

/// What the keeper decided, for logs, timelines and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeeperEvent {
    /// A follow-up was handed out as an [`Action`].
    FollowUp {
        /// When.
        at: Time,
        /// Why.
        reason: FollowUpReason,
    },
    /// A planned follow-up was dropped.
    Skipped {
        /// When.
        at: Time,
        /// Why.
        reason: SkipReason,
    },
}

/// Configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeeperConfig {
    /// The NAT's rules: measured, configured, or the Linux defaults.
    pub rules: Rules,
    /// Where this peer sits.
    pub side: Side,
    /// Delay of the follow-up after the handshake (or after the entry's first packet). Must be
    /// longer than the grace period; [`KeeperConfig::new`] uses grace + [`FOLLOW_UP_MARGIN`].
    pub follow_up_delay: Duration,
}

impl KeeperConfig {
    /// The default delay for these rules.
    pub fn new(rules: Rules, side: Side) -> KeeperConfig {
        let grace = rules.conntrack().map_or(Duration::ZERO, |t| t.grace);
        KeeperConfig {
            rules,
            side,
            follow_up_delay: grace + FOLLOW_UP_MARGIN,
        }
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeeperStats {
    /// Handshakes reported.
    pub handshakes: u64,
    /// Follow-ups handed out.
    pub follow_ups: u64,
    /// Follow-ups not needed because traffic did the job.
    pub skipped_traffic: u64,
    /// Follow-ups dropped because the entry was gone.
    pub skipped_expired: u64,
}

/// A FIFO that costs one pointer while empty. A keeper and a tracker per peer (10 000 in the
/// agent) each hold some, which are drained as soon as anything is queued: the storage exists only
/// while something waits in it.
#[derive(Debug)]
#[allow(
    clippy::box_collection,
    reason = "one pointer in the keeper instead of a 32-byte VecDeque"
)]
pub(crate) struct Queue<T>(Option<Box<VecDeque<T>>>);

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue(None)
    }
}

impl<T> Queue<T> {
    pub(crate) fn push_back(&mut self, item: T) {
        self.0.get_or_insert_with(Box::default).push_back(item);
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let queue = self.0.as_mut()?;
        let item = queue.pop_front();
        if queue.is_empty() {
            self.0 = None;
        }
        item
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Due {
    at: Time,
    reason: FollowUpReason,
}

/// The per-peer keeper. Kept small (the agent holds one per peer): the configuration may be
/// shared, the estimate is boxed.
#[derive(Debug)]
pub struct Keeper {
    cfg: Arc<KeeperConfig>,
    /// The estimated NAT entry.
    estimate: Option<Box<Entry>>,
    /// A handshake completed at this time and no packet has passed after `t + grace` yet.
    handshake_at: Option<Time>,
    /// The last packet seen, to notice events reported out of order.
    last_seen: Option<Time>,
    due: Option<Due>,
    actions: Queue<Action>,
    events: Queue<KeeperEvent>,
    stats: KeeperStats,
}

impl Keeper {
    /// A keeper that has seen nothing yet.
    pub fn new(cfg: KeeperConfig) -> Keeper {
        Keeper::with_shared_config(Arc::new(cfg))
    }

    /// [`Keeper::new`] with a configuration shared with other keepers.
    pub fn with_shared_config(cfg: Arc<KeeperConfig>) -> Keeper {
        Keeper {
            cfg,
            estimate: None,
            handshake_at: None,
            last_seen: None,
            due: None,
            actions: Queue::default(),
            events: Queue::default(),
            stats: KeeperStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &KeeperConfig {
        &self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> KeeperStats {
        self.stats
    }

    /// The estimated NAT entry, if the keeper believes one exists at `now`.
    pub fn estimate(&self, now: Time) -> Option<&Entry> {
        self.estimate.as_deref().filter(|e| e.is_alive(now))
    }

    /// Replaces the estimate, in the box of the previous one if there was one.
    fn set_estimate(&mut self, entry: Entry) {
        match &mut self.estimate {
            Some(b) => **b = entry,
            None => self.estimate = Some(Box::new(entry)),
        }
    }

    /// The peer sent or received one packet at `now`.
    pub fn observe(&mut self, now: Time, traffic: Traffic) {
        // Observations from counters can arrive slightly out of order: never go backwards.
        let now = self.last_seen.map_or(now, |t| t.max(now));
        self.last_seen = Some(now);
        let dir = self.cfg.side.direction(traffic);
        match self.estimate.as_mut().filter(|e| e.is_alive(now)) {
            Some(entry) => {
                entry.on_packet(now, dir);
            }
            None => match dir {
                // The original direction creates the entry.
                Direction::Original => self.set_estimate(Entry::new(self.cfg.rules, now)),
                // A reply-direction packet with no entry: on the server it is lost in the NAT;
                // on the client it arrived, so an entry exists that the estimate missed (longer
                // timeouts than assumed). Assume it is new and replied: the conservative guess.
                Direction::Reply => match self.cfg.side {
                    Side::Server => self.estimate = None,
                    Side::Client => {
                        let mut e = Entry::new(self.cfg.rules, now);
                        e.on_packet(now, Direction::Reply);
                        self.set_estimate(e);
                    }
                },
            },
        }
        if self.handshake_satisfied_at(now) {
            // A packet after the grace period did what the follow-up was for.
            self.handshake_at = None;
            self.skip(now, SkipReason::Traffic);
        }
        self.plan(now);
    }

    /// A handshake with the peer completed at `at` (the initiator received the response, or the
    /// responder sent it).
    pub fn handshake(&mut self, at: Time) {
        self.stats.handshakes += 1;
        if self.cfg.rules.conntrack().is_none() {
            return;
        }
        self.handshake_at = Some(at);
        self.plan(at);
    }

    /// When [`Keeper::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.due.map(|d| d.at)
    }

    /// Time has reached `now`: hand out what is due.
    pub fn handle_timeout(&mut self, now: Time) {
        let Some(due) = self.due else { return };
        if due.at > now {
            return;
        }
        self.due = None;
        let alive = self.estimate.as_ref().is_some_and(|e| e.is_alive(now));
        let still_needed = self.handshake_at.is_some() || self.estimate_needs(now).is_some();
        if !still_needed {
            return;
        }
        if !alive {
            // Gone already: a packet now would only create a new, unreplied entry.
            self.handshake_at = None;
            self.skip(now, SkipReason::Expired);
            return;
        }
        if self.handshake_satisfied_at(now) {
            // This follow-up is the packet after the grace period.
            self.handshake_at = None;
        }
        self.stats.follow_ups += 1;
        self.actions.push_back(Action::FollowUp(due.reason));
        self.events.push_back(KeeperEvent::FollowUp {
            at: now,
            reason: due.reason,
        });
    }

    /// The next action, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<KeeperEvent> {
        self.events.pop_front()
    }

    /// What the estimated entry needs at `now`, with the earliest time it can usefully be done.
    fn estimate_needs(&self, now: Time) -> Option<Due> {
        let entry = self.estimate.as_ref().filter(|e| e.is_alive(now))?;
        let conntrack = self.cfg.rules.conntrack()?;
        if entry.timeout().is_sustained() {
            return None;
        }
        if entry.seen_reply() {
            // Replied, short timeout: one packet after stream_ts promotes.
            let at = (entry.created() + self.cfg.follow_up_delay.max(conntrack.grace)).max(now);
            return Some(Due {
                at,
                reason: FollowUpReason::Promote,
            });
        }
        match self.cfg.side {
            // Only the far side can answer; its packet is the reply.
            Side::Server => Some(Due {
                at: now,
                reason: FollowUpReason::Answer,
            }),
            Side::Client => None,
        }
    }

    /// Whether a packet at `now` is strictly after the pending handshake's grace period.
    fn handshake_satisfied_at(&self, now: Time) -> bool {
        match (self.handshake_at, self.cfg.rules.conntrack()) {
            (Some(hs), Some(t)) => now > hs + t.grace,
            _ => false,
        }
    }

    /// The handshake rule governs while a handshake is pending (it does not trust the estimate);
    /// otherwise the estimate decides.
    fn plan(&mut self, now: Time) {
        self.due = match self.handshake_at {
            Some(hs) => Some(Due {
                at: (hs + self.cfg.follow_up_delay).max(now),
                reason: FollowUpReason::Handshake,
            }),
            None => self.estimate_needs(now),
        };
    }

    fn skip(&mut self, now: Time, reason: SkipReason) {
        match reason {
            SkipReason::Traffic => self.stats.skipped_traffic += 1,
            SkipReason::Expired => self.stats.skipped_expired += 1,
        }
        self.events
            .push_back(KeeperEvent::Skipped { at: now, reason });
    }
}

/// What to do about a peer's PersistentKeepalive on a NAT with these rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KeepaliveAdvice {
    /// `floor(0.8 × sustained timeout)`: what `wgkeep agent --mode adapt` sets.
    pub recommended: u16,
    /// Whether the configured value keeps the entry alive with margin
    /// (≤ `floor(0.9 × sustained timeout)`); `true` when none is configured.
    pub configured_is_safe: bool,
    /// What the keeper runs with: the configured value when safe, else the recommendation;
    /// `None` stays `None`.
    pub effective: Option<u16>,
}

/// PersistentKeepalive advice for `configured` on a NAT with `rules`. The sustained timeout is
/// the one the keeper can hold the entry on: conntrack's stream timeout once followed up, pf's
/// `udp.multiple`.
pub fn keepalive_advice(rules: &Rules, configured: Option<u16>) -> KeepaliveAdvice {
    let sustained = rules.sustained_timeout().as_secs();
    let recommended = u16::try_from(sustained * 8 / 10).unwrap_or(u16::MAX).max(1);
    let ceiling = sustained * 9 / 10;
    let configured_is_safe = configured.is_none_or(|pk| u64::from(pk) <= ceiling);
    KeepaliveAdvice {
        recommended,
        configured_is_safe,
        effective: configured.map(|pk| if configured_is_safe { pk } else { recommended }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgkeep_probe::middlebox::{Profile, TimeoutKind};

    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    fn keeper(profile: Profile, side: Side) -> Keeper {
        Keeper::new(KeeperConfig::new(profile.rules, side))
    }

    /// A client-side handshake at `at`: initiation sent, response received, keepalive sent.
    fn client_handshake(k: &mut Keeper, at: u64) {
        k.observe(t(at), Traffic::Sent);
        k.observe(t(at + 20), Traffic::Received);
        k.handshake(t(at + 20));
        k.observe(t(at + 20), Traffic::Sent);
    }

    fn drain(k: &mut Keeper) -> Vec<Action> {
        std::iter::from_fn(|| k.poll_action()).collect()
    }

    #[test]
    fn follow_up_exactly_at_handshake_plus_delay() {
        let mut k = keeper(Profile::routeros(), Side::Client);
        client_handshake(&mut k, 0);
        assert_eq!(k.poll_timeout(), Some(t(2_520)));
        k.handle_timeout(t(2_519));
        assert_eq!(drain(&mut k), vec![]);
        k.handle_timeout(t(2_520));
        assert_eq!(
            drain(&mut k),
            vec![Action::FollowUp(FollowUpReason::Handshake)]
        );
        k.observe(t(2_520), Traffic::Sent);
        assert_eq!(k.estimate(t(2_520)).unwrap().timeout(), TimeoutKind::Stream);
        assert_eq!(k.poll_timeout(), None);
    }

    #[test]
    fn traffic_after_the_grace_period_makes_it_skip() {
        let mut k = keeper(Profile::linux(), Side::Client);
        client_handshake(&mut k, 0);
        // Exactly at handshake + grace: not enough.
        k.observe(t(2_020), Traffic::Received);
        assert!(k.poll_timeout().is_some());
        k.observe(t(2_021), Traffic::Received);
        assert_eq!(k.poll_timeout(), None);
        assert_eq!(k.stats().skipped_traffic, 1);
        assert!(matches!(
            k.poll_event(),
            Some(KeeperEvent::Skipped {
                reason: SkipReason::Traffic,
                ..
            })
        ));
    }

    #[test]
    fn noticed_late_fires_at_once_while_alive_and_skips_when_gone() {
        let mut k = keeper(Profile::routeros(), Side::Client);
        k.observe(t(0), Traffic::Sent);
        k.observe(t(20), Traffic::Received);
        k.observe(t(20), Traffic::Sent);
        // The driver learns of the handshake 5 s late.
        k.handshake(t(20));
        k.handle_timeout(t(5_000));
        assert_eq!(
            drain(&mut k),
            vec![Action::FollowUp(FollowUpReason::Handshake)]
        );

        let mut k = keeper(Profile::routeros(), Side::Client);
        client_handshake(&mut k, 0);
        k.handle_timeout(t(10_020));
        assert_eq!(drain(&mut k), vec![]);
        assert_eq!(k.stats().skipped_expired, 1);
    }

    #[test]
    fn server_side_answers_a_lone_keepalive_then_promotes() {
        // Linux 30/120: the client's entry expired; its lone keepalive at 150 s re-creates it.
        let mut k = keeper(Profile::linux(), Side::Server);
        k.observe(t(150_000), Traffic::Received);
        assert_eq!(k.poll_timeout(), Some(t(150_000)));
        k.handle_timeout(t(150_000));
        assert_eq!(
            drain(&mut k),
            vec![Action::FollowUp(FollowUpReason::Answer)]
        );
        k.observe(t(150_000), Traffic::Sent);
        // Now replied but short: promote after the grace period of the entry.
        assert_eq!(k.poll_timeout(), Some(t(152_500)));
        k.handle_timeout(t(152_500));
        assert_eq!(
            drain(&mut k),
            vec![Action::FollowUp(FollowUpReason::Promote)]
        );
        k.observe(t(152_500), Traffic::Sent);
        assert_eq!(
            k.estimate(t(152_500)).unwrap().timeout(),
            TimeoutKind::Stream
        );
    }

    #[test]
    fn server_side_handshake_response_is_not_answered_twice() {
        let mut k = keeper(Profile::routeros(), Side::Server);
        // Initiation received, response sent at the same instant, keepalive received.
        k.observe(t(10), Traffic::Received);
        k.observe(t(10), Traffic::Sent);
        k.handshake(t(10));
        k.handle_timeout(t(10));
        assert_eq!(drain(&mut k), vec![]);
        k.observe(t(30), Traffic::Received);
        assert_eq!(k.poll_timeout(), Some(t(2_510)));
    }

    #[test]
    fn client_side_lone_keepalive_waits_for_a_reply() {
        let mut k = keeper(Profile::linux(), Side::Client);
        k.observe(t(150_000), Traffic::Sent);
        assert_eq!(k.poll_timeout(), None);
        k.observe(t(155_000), Traffic::Received);
        // Replied, created at 150 s: promotion is possible at once.
        assert_eq!(k.poll_timeout(), Some(t(155_000)));
    }

    #[test]
    fn pf_has_no_follow_ups() {
        let mut k = keeper(Profile::pf(), Side::Client);
        client_handshake(&mut k, 0);
        assert_eq!(k.poll_timeout(), None);
    }

    #[test]
    fn keepalive_advice_per_profile() {
        let a = keepalive_advice(&Profile::routeros().rules, Some(150));
        assert_eq!(
            (a.recommended, a.configured_is_safe, a.effective),
            (144, true, Some(150))
        );
        let a = keepalive_advice(&Profile::linux().rules, Some(150));
        assert_eq!(
            (a.recommended, a.configured_is_safe, a.effective),
            (96, false, Some(96))
        );
        let a = keepalive_advice(&Profile::pf().rules, Some(150));
        assert_eq!(a.effective, Some(48));
        let a = keepalive_advice(&Profile::pf().rules, None);
        assert_eq!(a.effective, None);
        // 47 s stream: floor(0.8 × 47) = 37.
        let p = Profile::conntrack(
            Duration::from_secs(10),
            Duration::from_secs(47),
            Duration::from_secs(2),
        );
        assert_eq!(keepalive_advice(&p.rules, Some(40)).recommended, 37);
    }
}
