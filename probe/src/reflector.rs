//! The reflector behind `wgkeep reflect`, sans-IO: it never reads a clock (every call takes `now`)
//! and never touches a socket (the driver feeds datagrams to [`Reflector::handle_input`] and sends
//! what [`Reflector::poll_transmit`] returns).
//!
//! The reflector runs on the public internet, so it assumes every packet may be hostile:
//!
//! - **Return routability.** Before it keeps any state for a source or sends anything delayed, the
//!   source must echo a stateless cookie, `BLAKE2s-MAC(secret of the epoch, IP || epoch)[..16]`,
//!   that only a host receiving packets at that IP can know. Cookie secrets rotate every
//!   [`Limits::cookie_epoch`]; a cookie is valid in its epoch and the next one.
//! - **No amplification.** Every immediate reply is at most as large as the request it answers
//!   (CookieReply 48 ≤ 64, Response 92 ≤ 148, CookieReply 48 ≤ 148, Ack 32 ≤ 64). Delayed packets
//!   (Check, Refresh) are paid from a per-IP byte credit, received minus sent; so for every IP
//!   address the reflector has sent at most as many bytes as it received from it.
//! - **Bounded state.** Only sources with a valid cookie get a record (credit, question count,
//!   token bucket), at most [`Limits::max_sources`] of them; questions are capped per IP and in
//!   total, and live at most [`Limits::max_delay`] after their last client packet. Packets without
//!   a valid cookie create nothing. The outgoing queue is capped at [`MAX_QUEUED_TRANSMITS`].
//! - **Rate limits.** Each source record has a token bucket; replies to sources without a record
//!   (cookie replies, and Acks for stateless refusals) share one global bucket.
//! - **Optional PSK.** With [`ReflectorConfig::key`] from a PSK, packets without the right MAC are
//!   dropped without an answer.
//!
//! `docs/probe-protocol.md` describes the exchange from the client's side.
//!
//! Driving it:
//!
//! ```text
//! loop {
//!     wait for a datagram or until poll_timeout()
//!     handle_input(now, src, data)  or  handle_timeout(now)
//!     while let Some(t) = poll_transmit() { send t.payload() to t.dst }
//! }
//! ```
//!
//! [`Reflector::handle_timeout`] stops firing timers while the outgoing queue is full; then
//! [`Reflector::poll_timeout`] is already due, and the driver calls it again after draining.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use blake2::digest::consts::U32;
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2sMac;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::Serialize;

use crate::time::Time;
use crate::wire::MAX_PACKET_LEN;
use crate::wire::{self, AckStatus, Key, Message, MessageType, WireError, COOKIE_LEN};

/// The most datagrams the reflector queues before the driver polls them.
pub const MAX_QUEUED_TRANSMITS: usize = 1024;

/// The reflector's limits. [`Limits::default`] gives the values `wgkeep reflect` uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest idle time a Schedule may ask for, and how long an unscheduled question lives
    /// after its last client packet. Default 1 h: far above the longest UDP timeouts worth
    /// measuring (Linux stream 120 s, RouterOS 180 s, RFC 4787 REQ-5's 2 min floor, CGNATs of
    /// a few minutes), while bounding how long a question can hold state.
    pub max_delay: Duration,
    /// Questions one IP address may hold at once. Default 1024: a probe runs a few hundred
    /// questions in parallel (several traffic patterns × a ladder of idle times), with room for a
    /// few clients behind the same NAT address.
    pub max_questions_per_ip: usize,
    /// Questions in total. Default 65 536: 64 clients at their per-IP cap; at about 260 bytes
    /// per question (hash-table slot and timer entry) that is about 17 MB at most.
    pub max_questions: usize,
    /// Source records (IP addresses that presented a valid cookie). Default 16 384: about 230
    /// bytes each (hash-table slot and eviction index), under 4 MB; when the table is full, the
    /// record without questions idle longest is evicted.
    pub max_sources: usize,
    /// Packets per second one source record accepts; the bucket holds as many (so a probe may
    /// open a batch of 1000 questions, Init and Follow each, at once). Default 2000.
    pub packets_per_sec_per_ip: u32,
    /// Replies per second, in total, to sources without a record (cookie replies, stateless
    /// Acks); the bucket holds as many. Default 20 000: at 48 bytes each at most 7.7 Mbit/s of
    /// reflected traffic (never more than the flood that triggers it), enough for any legitimate
    /// load.
    pub cookie_replies_per_sec: u32,
    /// How often the cookie secret rotates; a cookie stays valid for one to two epochs. Default
    /// 120 s, WireGuard's cookie secret lifetime (`COOKIE_SECRET_MAX_AGE`): short enough that a
    /// cookie seen on the path soon stops working, long enough that a client refreshes it only
    /// every couple of minutes (its control socket pings anyway).
    pub cookie_epoch: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_delay: Duration::from_secs(3600),
            max_questions_per_ip: 1024,
            max_questions: 65_536,
            max_sources: 16_384,
            packets_per_sec_per_ip: 2000,
            cookie_replies_per_sec: 20_000,
            cookie_epoch: Duration::from_secs(120),
        }
    }
}

/// The reflector's configuration.
#[derive(Clone, Debug)]
pub struct ReflectorConfig {
    /// The session key: [`Key::public`], or [`Key::from_psk`] to answer only PSK holders.
    pub key: Key,
    /// Its limits.
    pub limits: Limits,
}

impl Default for ReflectorConfig {
    fn default() -> ReflectorConfig {
        ReflectorConfig {
            key: Key::public(),
            limits: Limits::default(),
        }
    }
}

/// A datagram to send.
#[derive(Clone)]
pub struct Transmit {
    /// Where to.
    pub dst: SocketAddr,
    len: usize,
    buf: [u8; MAX_PACKET_LEN],
}

impl Transmit {
    /// The UDP payload.
    pub fn payload(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The payload's type.
    pub fn msg_type(&self) -> Option<MessageType> {
        wire::Packet::new_unchecked(self.payload()).msg_type()
    }
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transmit")
            .field("dst", &self.dst)
            .field("type", &self.msg_type())
            .field("len", &self.len)
            .finish()
    }
}

/// Decoded packets by type (of the types the reflector accepts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReceivedCounts {
    /// CookieRequests.
    pub cookie_requests: u64,
    /// Inits.
    pub inits: u64,
    /// Follows.
    pub follows: u64,
    /// Schedules.
    pub schedules: u64,
}

/// Immediate replies by type (delayed ones: [`ReflectorStats::checks_sent`],
/// [`ReflectorStats::refreshes_sent`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SentCounts {
    /// CookieReplies (to CookieRequests, and to Inits with a stale cookie).
    pub cookie_replies: u64,
    /// Responses.
    pub responses: u64,
    /// Acks.
    pub acks: u64,
}

/// Packets not acted upon, by reason. Some of them still got an answer: an Ack with the matching
/// status (`too_late`, `bad_delay`, `already_scheduled`, `unknown_question`, `bad_cookie` for a
/// Schedule, some `limit_reached`) or a CookieReply (`bad_cookie` for an Init).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounts {
    /// Not a packet of this protocol (structure check failed).
    pub malformed: u64,
    /// Wrong MAC: corrupted, or another PSK.
    pub bad_mac: u64,
    /// A type the reflector never receives (CookieReply, Response, Ack, Check, Refresh).
    pub unexpected_type: u64,
    /// Init or Schedule whose cookie is not valid for its source IP.
    pub bad_cookie: u64,
    /// Over the source's token bucket, or the global one for sources without a record.
    pub rate_limited: u64,
    /// Over a question or source cap.
    pub limit_reached: u64,
    /// Follow or Schedule for a question that does not exist (for that IP).
    pub unknown_question: u64,
    /// Follow from another address than the question's.
    pub wrong_source: u64,
    /// Init for an existing question id from another address.
    pub duplicate_question: u64,
    /// Schedule whose check (or refresh) time has passed.
    pub too_late: u64,
    /// Schedule with a delay out of range.
    pub bad_delay: u64,
    /// Second Schedule for a question.
    pub already_scheduled: u64,
    /// Check or Refresh not covered by the IP's byte credit.
    pub no_credit: u64,
    /// Reply not queued because the driver did not drain [`Reflector::poll_transmit`].
    pub queue_full: u64,
}

/// What the reflector did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReflectorStats {
    /// Datagrams given to [`Reflector::handle_input`].
    pub received_packets: u64,
    /// Their bytes.
    pub received_bytes: u64,
    /// Datagrams queued for sending.
    pub sent_packets: u64,
    /// Their bytes.
    pub sent_bytes: u64,
    /// Decoded packets by type.
    pub received: ReceivedCounts,
    /// Immediate replies by type.
    pub sent: SentCounts,
    /// Packets not acted upon, by reason.
    pub dropped: DropCounts,
    /// Questions created.
    pub questions_created: u64,
    /// Unscheduled questions that expired [`Limits::max_delay`] after their last packet.
    pub questions_expired: u64,
    /// Schedules answered with [`AckStatus::Scheduled`].
    pub schedules_accepted: u64,
    /// Source records evicted to make room for new ones.
    pub sources_evicted: u64,
    /// Questions held now.
    pub questions_pending: usize,
    /// Source records held now.
    pub sources_tracked: usize,
    /// Checks sent.
    pub checks_sent: u64,
    /// Refreshes sent.
    pub refreshes_sent: u64,
}

/// A token bucket whose capacity equals its rate per second; `units` counts nano-tokens.
#[derive(Clone, Copy, Debug)]
struct TokenBucket {
    units: u64,
    last: Time,
}

const UNITS_PER_TOKEN: u64 = 1_000_000_000;

impl TokenBucket {
    fn full(rate: u32, now: Time) -> TokenBucket {
        TokenBucket {
            units: u64::from(rate) * UNITS_PER_TOKEN,
            last: now,
        }
    }

    /// Refills for the time since the last call and takes one token if there is one.
    fn take(&mut self, now: Time, rate: u32) -> bool {
        let capacity = u64::from(rate) * UNITS_PER_TOKEN;
        let refill = now
            .saturating_since(self.last)
            .as_nanos()
            .saturating_mul(u128::from(rate));
        let level = (u128::from(self.units) + refill).min(u128::from(capacity));
        self.units = u64::try_from(level).unwrap_or(capacity);
        self.last = self.last.max(now);
        if self.units >= UNITS_PER_TOKEN {
            self.units -= UNITS_PER_TOKEN;
            true
        } else {
            false
        }
    }
}

/// An IP address as 16 bytes (IPv4 mapped to `::ffff:a.b.c.d`), so that a dual-stack socket's
/// mapped addresses and plain IPv4 ones are the same source.
type IpKey = [u8; 16];

fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// What the reflector keeps per IP address that presented a valid cookie.
#[derive(Clone, Copy, Debug)]
struct Source {
    /// Bytes of decoded, admitted packets from this IP since the record was created.
    received: u64,
    /// Bytes queued to this IP since then.
    sent: u64,
    questions: usize,
    bucket: TokenBucket,
    last_seen: Time,
}

impl Source {
    fn credit(&self) -> u64 {
        self.received.saturating_sub(self.sent)
    }
}

/// A Schedule that was accepted.
#[derive(Clone, Copy, Debug)]
struct Armed {
    check: Duration,
    /// Idle time of the Refresh still to send.
    refresh: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
struct Question {
    addr: SocketAddr,
    last_rx: Time,
    armed: Option<Armed>,
    /// The deadline of its entry in the timer queue.
    timer: Time,
}

impl Question {
    fn ip(&self) -> IpKey {
        ip_key(self.addr.ip())
    }

    /// When its next timer fires: Refresh, then Check, or expiry when unscheduled.
    fn next_deadline(&self, max_delay: Duration) -> Time {
        match self.armed {
            Some(Armed {
                refresh: Some(r), ..
            }) => self.last_rx + r,
            Some(Armed { check, .. }) => self.last_rx + check,
            None => self.last_rx + max_delay,
        }
    }
}

/// The reflector state machine. See the [module documentation](self).
pub struct Reflector {
    key: Key,
    limits: Limits,
    start: Time,
    rng: StdRng,
    epoch: u64,
    secret: [u8; 32],
    previous_secret: [u8; 32],
    questions: HashMap<u64, Question>,
    sources: HashMap<IpKey, Source>,
    /// Records without questions, by `last_seen`: the eviction order.
    idle_sources: BTreeSet<(Time, IpKey)>,
    /// One entry per question: its next deadline.
    timers: BTreeSet<(Time, u64)>,
    cookie_bucket: TokenBucket,
    out: VecDeque<Transmit>,
    stats: ReflectorStats,
}

impl fmt::Debug for Reflector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Leaves out the cookie secrets and the rng.
        f.debug_struct("Reflector")
            .field("key", &self.key)
            .field("limits", &self.limits)
            .field("epoch", &self.epoch)
            .field("questions", &self.questions.len())
            .field("sources", &self.sources.len())
            .field("queued", &self.out.len())
            .finish_non_exhaustive()
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Reflector {
    /// A reflector started at `now`; `seed` seeds the rng the cookie secrets come from (the driver
    /// takes it from the OS; tests pass a constant).
    pub fn new(config: ReflectorConfig, now: Time, seed: [u8; 32]) -> Reflector {
        let mut limits = config.limits;
        limits.cookie_epoch = limits.cookie_epoch.max(Duration::from_millis(1));
        let mut rng = StdRng::from_seed(seed);
        let mut secret = [0u8; 32];
        let mut previous_secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        rng.fill_bytes(&mut previous_secret);
        let cookie_bucket = TokenBucket::full(limits.cookie_replies_per_sec, now);
        Reflector {
            key: config.key,
            limits,
            start: now,
            rng,
            epoch: 0,
            secret,
            previous_secret,
            questions: HashMap::new(),
            sources: HashMap::new(),
            idle_sources: BTreeSet::new(),
            timers: BTreeSet::new(),
            cookie_bucket,
            out: VecDeque::new(),
            stats: ReflectorStats::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What the reflector did so far.
    pub fn stats(&self) -> &ReflectorStats {
        &self.stats
    }

    /// An upper estimate of the memory the reflector holds, in bytes: hash tables by capacity
    /// (slots plus control bytes), B-trees at twice their entries, the queue by capacity.
    pub fn state_bytes(&self) -> usize {
        fn table<K, V>(capacity: usize) -> usize {
            // hashbrown: buckets = next power of two ≥ capacity × 8/7; one control byte each.
            let buckets = (capacity * 8).div_ceil(7).next_power_of_two();
            buckets * (size_of::<(K, V)>() + 1) + 16
        }
        size_of::<Reflector>()
            + table::<u64, Question>(self.questions.capacity())
            + table::<IpKey, Source>(self.sources.capacity())
            + 2 * self.idle_sources.len() * size_of::<(Time, IpKey)>()
            + 2 * self.timers.len() * size_of::<(Time, u64)>()
            + self.out.capacity() * size_of::<Transmit>()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// When [`Reflector::handle_timeout`] has something to do: the earliest Refresh, Check or
    /// question expiry. Cookie secrets rotate lazily and need no wake-up.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// Fires every timer due at `now`: Refresh and Check packets, question expiry. Stops early
    /// while the outgoing queue is full.
    pub fn handle_timeout(&mut self, now: Time) {
        self.rotate(now);
        while self.out.len() < MAX_QUEUED_TRANSMITS {
            let Some(&(deadline, qid)) = self.timers.first() else {
                break;
            };
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            self.fire(now, qid);
        }
        self.update_gauges();
    }

    /// Handles one datagram from `src`.
    pub fn handle_input(&mut self, now: Time, src: SocketAddr, data: &[u8]) {
        self.stats.received_packets += 1;
        self.stats.received_bytes += data.len() as u64;
        self.rotate(now);
        let msg = match wire::decode(data, &self.key) {
            Ok(msg) => msg,
            Err(WireError::BadMac) => {
                self.stats.dropped.bad_mac += 1;
                return;
            }
            Err(_) => {
                self.stats.dropped.malformed += 1;
                return;
            }
        };
        let ip = ip_key(src.ip());
        let len = data.len() as u64;
        match msg {
            Message::CookieRequest { nonce } => {
                self.stats.received.cookie_requests += 1;
                if self.admit(now, ip, len) {
                    let reply = self.cookie_reply(now, ip, nonce);
                    self.send(src, reply);
                }
            }
            Message::Init { qid, cookie, reply } => {
                self.stats.received.inits += 1;
                self.on_init(now, src, ip, len, qid, &cookie, reply);
            }
            Message::Follow { qid, .. } => {
                self.stats.received.follows += 1;
                self.on_follow(now, src, ip, len, qid);
            }
            Message::Schedule {
                qid,
                cookie,
                check_ms,
                refresh_ms,
            } => {
                self.stats.received.schedules += 1;
                if !self.cookie_valid(&ip, &cookie) {
                    self.stats.dropped.bad_cookie += 1;
                    if self.admit(now, ip, len) {
                        self.ack(src, qid, AckStatus::BadCookie);
                    }
                } else if self.admit(now, ip, len) {
                    let status = self.schedule(now, ip, qid, check_ms, refresh_ms);
                    self.ack(src, qid, status);
                }
            }
            Message::CookieReply { .. }
            | Message::Response { .. }
            | Message::Ack { .. }
            | Message::Check { .. }
            | Message::Refresh { .. } => self.stats.dropped.unexpected_type += 1,
        }
        self.update_gauges();
    }

    fn update_gauges(&mut self) {
        self.stats.questions_pending = self.questions.len();
        self.stats.sources_tracked = self.sources.len();
    }

    // --- cookies ---

    /// Moves to the epoch of `now`, drawing new secrets. Time never goes back an epoch.
    fn rotate(&mut self, now: Time) {
        let epoch = self.epoch_at(now);
        if epoch <= self.epoch {
            return;
        }
        if epoch == self.epoch + 1 {
            self.previous_secret = self.secret;
        } else {
            // Nobody holds a cookie of epoch - 1: a fresh secret makes them all invalid.
            self.rng.fill_bytes(&mut self.previous_secret);
        }
        self.rng.fill_bytes(&mut self.secret);
        self.epoch = epoch;
    }

    fn epoch_at(&self, now: Time) -> u64 {
        let elapsed = now.saturating_since(self.start).as_nanos();
        u64::try_from(elapsed / self.limits.cookie_epoch.as_nanos()).unwrap_or(u64::MAX)
    }

    fn cookie_mac(secret: &[u8; 32], ip: &IpKey, epoch: u64) -> Blake2sMac<U32> {
        let mut mac = <Blake2sMac<U32> as KeyInit>::new(&(*secret).into());
        Mac::update(&mut mac, ip);
        Mac::update(&mut mac, &epoch.to_be_bytes());
        mac
    }

    /// The cookie for `ip` in the current epoch.
    fn cookie(&self, ip: &IpKey) -> [u8; COOKIE_LEN] {
        let full = Self::cookie_mac(&self.secret, ip, self.epoch)
            .finalize()
            .into_bytes();
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(&full[..COOKIE_LEN]);
        cookie
    }

    /// Whether `cookie` is `ip`'s for this epoch or the previous one (constant-time compares).
    fn cookie_valid(&self, ip: &IpKey, cookie: &[u8; COOKIE_LEN]) -> bool {
        let current = Self::cookie_mac(&self.secret, ip, self.epoch)
            .verify_truncated_left(cookie)
            .is_ok();
        let previous = self.epoch > 0
            && Self::cookie_mac(&self.previous_secret, ip, self.epoch - 1)
                .verify_truncated_left(cookie)
                .is_ok();
        current | previous
    }

    /// A CookieReply for `ip`; `valid_ms` is the rest of this epoch plus the next one (rounded
    /// down).
    fn cookie_reply(&self, now: Time, ip: IpKey, nonce: u64) -> Message {
        let epoch_ns = self.limits.cookie_epoch.as_nanos();
        let elapsed = now.saturating_since(self.start).as_nanos();
        let left_ns = epoch_ns - elapsed % epoch_ns + epoch_ns;
        Message::CookieReply {
            nonce,
            cookie: self.cookie(&ip),
            valid_ms: u32::try_from(left_ns / 1_000_000).unwrap_or(u32::MAX),
        }
    }

    // --- sources ---

    /// Rate-limits and accounts a decoded packet from `ip`: against its record's bucket and credit
    /// when it has one, else against the global bucket for replies to unknown sources. Counts
    /// `rate_limited` and returns false when over the limit.
    fn admit(&mut self, now: Time, ip: IpKey, len: u64) -> bool {
        let rate = self.limits.packets_per_sec_per_ip;
        let ok = match self.sources.get_mut(&ip) {
            Some(source) => {
                let ok = source.bucket.take(now, rate);
                if ok {
                    source.received += len;
                    let old = source.last_seen;
                    source.last_seen = now.max(old);
                    if source.questions == 0 {
                        self.idle_sources.remove(&(old, ip));
                        self.idle_sources.insert((source.last_seen, ip));
                    }
                }
                ok
            }
            None => self
                .cookie_bucket
                .take(now, self.limits.cookie_replies_per_sec),
        };
        if !ok {
            self.stats.dropped.rate_limited += 1;
        }
        ok
    }

    /// Creates a record for `ip` (which just presented a valid cookie), evicting the record
    /// without questions idle longest when the table is full. False when none can be evicted.
    fn create_source(&mut self, now: Time, ip: IpKey) -> bool {
        if self.sources.len() >= self.limits.max_sources {
            let Some((_, victim)) = self.idle_sources.pop_first() else {
                return false;
            };
            self.sources.remove(&victim);
            self.stats.sources_evicted += 1;
        }
        if self.sources.len() >= self.limits.max_sources {
            return false;
        }
        self.sources.insert(
            ip,
            Source {
                received: 0,
                sent: 0,
                questions: 0,
                bucket: TokenBucket::full(self.limits.packets_per_sec_per_ip, now),
                last_seen: now,
            },
        );
        self.idle_sources.insert((now, ip));
        true
    }

    /// Whether a new question from `ip` would exceed a cap.
    fn at_question_cap(&self, ip: &IpKey) -> bool {
        if self.questions.len() >= self.limits.max_questions {
            return true;
        }
        match self.sources.get(ip) {
            Some(source) => source.questions >= self.limits.max_questions_per_ip,
            None => {
                self.limits.max_questions_per_ip == 0
                    || (self.sources.len() >= self.limits.max_sources
                        && self.idle_sources.is_empty())
            }
        }
    }

    // --- sending ---

    /// Queues `msg` for `dst` and counts it against `dst`'s record, if any.
    fn send(&mut self, dst: SocketAddr, msg: Message) -> bool {
        if self.out.len() >= MAX_QUEUED_TRANSMITS {
            self.stats.dropped.queue_full += 1;
            return false;
        }
        let mut buf = [0u8; MAX_PACKET_LEN];
        let len = msg.emit(&self.key, &mut buf);
        self.stats.sent_packets += 1;
        self.stats.sent_bytes += len as u64;
        match msg.msg_type() {
            MessageType::CookieReply => self.stats.sent.cookie_replies += 1,
            MessageType::Response => self.stats.sent.responses += 1,
            MessageType::Ack => self.stats.sent.acks += 1,
            MessageType::Check => self.stats.checks_sent += 1,
            MessageType::Refresh => self.stats.refreshes_sent += 1,
            _ => {}
        }
        if let Some(source) = self.sources.get_mut(&ip_key(dst.ip())) {
            source.sent += len as u64;
        }
        self.out.push_back(Transmit { dst, len, buf });
        true
    }

    fn ack(&mut self, dst: SocketAddr, qid: u64, status: AckStatus) {
        self.send(dst, Message::Ack { qid, status });
    }

    /// Sends a Check or Refresh if `dst`'s credit covers it.
    fn send_delayed(&mut self, dst: SocketAddr, msg: Message) {
        let len = msg.buffer_len() as u64;
        let covered = self
            .sources
            .get(&ip_key(dst.ip()))
            .is_some_and(|s| s.credit() >= len);
        if covered {
            self.send(dst, msg);
        } else {
            self.stats.dropped.no_credit += 1;
        }
    }

    // --- questions ---

    #[allow(clippy::too_many_arguments)]
    fn on_init(
        &mut self,
        now: Time,
        src: SocketAddr,
        ip: IpKey,
        len: u64,
        qid: u64,
        cookie: &[u8; COOKIE_LEN],
        reply: bool,
    ) {
        if !self.cookie_valid(&ip, cookie) {
            // Tell the client a fresh cookie (48 ≤ 148 bytes), keep nothing.
            self.stats.dropped.bad_cookie += 1;
            if self.admit(now, ip, len) {
                let reply = self.cookie_reply(now, ip, qid);
                self.send(src, reply);
            }
            return;
        }
        if let Some(q) = self.questions.get(&qid) {
            if q.addr != src {
                self.stats.dropped.duplicate_question += 1;
                return;
            }
            // The same Init again (a retransmission): one more client packet of the question.
            if self.admit(now, ip, len) {
                self.client_packet(now, qid);
                if reply {
                    self.send(src, Message::Response { qid });
                }
            }
            return;
        }
        if self.at_question_cap(&ip)
            || (!self.sources.contains_key(&ip) && !self.create_source(now, ip))
        {
            self.stats.dropped.limit_reached += 1;
            return;
        }
        if !self.admit(now, ip, len) {
            return;
        }
        let q = Question {
            addr: src,
            last_rx: now,
            armed: None,
            timer: now + self.limits.max_delay,
        };
        self.timers.insert((q.timer, qid));
        self.questions.insert(qid, q);
        if let Some(source) = self.sources.get_mut(&ip) {
            if source.questions == 0 {
                self.idle_sources.remove(&(source.last_seen, ip));
            }
            source.questions += 1;
        }
        self.stats.questions_created += 1;
        if reply {
            self.send(src, Message::Response { qid });
        }
    }

    fn on_follow(&mut self, now: Time, src: SocketAddr, ip: IpKey, len: u64, qid: u64) {
        match self.questions.get(&qid) {
            None => self.stats.dropped.unknown_question += 1,
            Some(q) if q.addr != src => self.stats.dropped.wrong_source += 1,
            Some(_) => {
                if self.admit(now, ip, len) {
                    self.client_packet(now, qid);
                }
            }
        }
    }

    /// A client packet of question `qid` arrived: the idle time starts again.
    fn client_packet(&mut self, now: Time, qid: u64) {
        if let Some(q) = self.questions.get_mut(&qid) {
            q.last_rx = q.last_rx.max(now);
        }
        self.rearm(qid);
    }

    /// Moves `qid`'s timer to its next deadline.
    fn rearm(&mut self, qid: u64) {
        let max_delay = self.limits.max_delay;
        if let Some(q) = self.questions.get_mut(&qid) {
            self.timers.remove(&(q.timer, qid));
            q.timer = q.next_deadline(max_delay);
            self.timers.insert((q.timer, qid));
        }
    }

    fn schedule(
        &mut self,
        now: Time,
        ip: IpKey,
        qid: u64,
        check_ms: u32,
        refresh_ms: u32,
    ) -> AckStatus {
        let check = Duration::from_millis(u64::from(check_ms));
        let refresh = (refresh_ms > 0).then(|| Duration::from_millis(u64::from(refresh_ms)));
        if check_ms == 0
            || check > self.limits.max_delay
            || (refresh_ms != 0 && refresh_ms >= check_ms)
        {
            self.stats.dropped.bad_delay += 1;
            return AckStatus::BadDelay;
        }
        let Some(q) = self.questions.get_mut(&qid).filter(|q| q.ip() == ip) else {
            // The likely reason the question does not exist: its Init hit a cap.
            if self.at_question_cap(&ip) {
                self.stats.dropped.limit_reached += 1;
                return AckStatus::LimitReached;
            }
            self.stats.dropped.unknown_question += 1;
            return AckStatus::UnknownQuestion;
        };
        if q.armed.is_some() {
            self.stats.dropped.already_scheduled += 1;
            return AckStatus::AlreadyScheduled;
        }
        let passed = |d: Duration| q.last_rx + d <= now;
        if passed(check) || refresh.is_some_and(passed) {
            self.stats.dropped.too_late += 1;
            return AckStatus::TooLate;
        }
        q.armed = Some(Armed { check, refresh });
        self.rearm(qid);
        self.stats.schedules_accepted += 1;
        AckStatus::Scheduled
    }

    /// `qid`'s timer fired at `now`.
    fn fire(&mut self, now: Time, qid: u64) {
        let Some(q) = self.questions.get_mut(&qid) else {
            return;
        };
        let addr = q.addr;
        let idle_ms = millis_u32(now.saturating_since(q.last_rx));
        match q.armed {
            None => {
                self.remove_question(qid);
                self.stats.questions_expired += 1;
            }
            Some(Armed {
                refresh: Some(_), ..
            }) => {
                if let Some(armed) = q.armed.as_mut() {
                    armed.refresh = None;
                }
                // Popped already: insert the Check's timer.
                q.timer = q.next_deadline(self.limits.max_delay);
                self.timers.insert((q.timer, qid));
                self.send_delayed(addr, Message::Refresh { qid, idle_ms });
            }
            Some(Armed { refresh: None, .. }) => {
                self.remove_question(qid);
                self.send_delayed(addr, Message::Check { qid, idle_ms });
            }
        }
    }

    fn remove_question(&mut self, qid: u64) {
        let Some(q) = self.questions.remove(&qid) else {
            return;
        };
        self.timers.remove(&(q.timer, qid));
        if let Some(source) = self.sources.get_mut(&q.ip()) {
            source.questions = source.questions.saturating_sub(1);
            if source.questions == 0 {
                self.idle_sources.insert((source.last_seen, q.ip()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

    const SEED: [u8; 32] = [7; 32];

    fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))
    }

    const CLIENT_IP: [u8; 4] = [198, 51, 100, 7];

    fn client(port: u16) -> SocketAddr {
        addr(CLIENT_IP, port)
    }

    fn control() -> SocketAddr {
        client(40000)
    }

    /// A reflector and a client that talks to it, in virtual time.
    struct Rig {
        r: Reflector,
        key: Key,
        now: Time,
    }

    impl Rig {
        fn new() -> Rig {
            Rig::with(ReflectorConfig::default())
        }

        fn with(config: ReflectorConfig) -> Rig {
            let key = config.key.clone();
            Rig {
                r: Reflector::new(config, Time::ZERO, SEED),
                key,
                now: Time::ZERO,
            }
        }

        fn at(&mut self, ms: u64) -> &mut Rig {
            self.now = Time::from_millis(ms);
            self
        }

        fn send(&mut self, src: SocketAddr, msg: Message) -> Vec<(SocketAddr, Message)> {
            let bytes = msg.to_vec(&self.key);
            self.r.handle_input(self.now, src, &bytes);
            self.drain()
        }

        fn drain(&mut self) -> Vec<(SocketAddr, Message)> {
            let mut out = Vec::new();
            while let Some(t) = self.r.poll_transmit() {
                let msg = wire::decode(t.payload(), &self.key).expect("reflector output decodes");
                out.push((t.dst, msg));
            }
            out
        }

        fn timeout(&mut self) -> Vec<(SocketAddr, Message)> {
            self.r.handle_timeout(self.now);
            self.drain()
        }

        fn cookie_for(&mut self, src: SocketAddr) -> [u8; 16] {
            let out = self.send(src, Message::CookieRequest { nonce: 99 });
            match out[..] {
                [(dst, Message::CookieReply { nonce, cookie, .. })] => {
                    assert_eq!((dst, nonce), (src, 99));
                    cookie
                }
                _ => panic!("no cookie reply: {out:?}"),
            }
        }

        fn init(
            &mut self,
            src: SocketAddr,
            qid: u64,
            cookie: [u8; 16],
        ) -> Vec<(SocketAddr, Message)> {
            self.send(
                src,
                Message::Init {
                    qid,
                    cookie,
                    reply: true,
                },
            )
        }

        fn schedule(
            &mut self,
            src: SocketAddr,
            qid: u64,
            cookie: [u8; 16],
            check_ms: u32,
            refresh_ms: u32,
        ) -> Option<AckStatus> {
            let out = self.send(
                src,
                Message::Schedule {
                    qid,
                    cookie,
                    check_ms,
                    refresh_ms,
                },
            );
            match out[..] {
                [] => None,
                [(dst, Message::Ack { qid: q, status })] => {
                    assert_eq!((dst, q), (src, qid));
                    Some(status)
                }
                _ => panic!("unexpected answer to a Schedule: {out:?}"),
            }
        }

        /// Opens question `qid` from `client(port)` with the WireGuard-like pattern: Init (with a
        /// Response) at `t0`, Follow at `t0 + 20 ms`. Returns the cookie.
        fn question(&mut self, port: u16, qid: u64, t0: u64) -> [u8; 16] {
            self.at(t0);
            let cookie = self.cookie_for(control());
            let out = self.init(client(port), qid, cookie);
            assert_eq!(out, vec![(client(port), Message::Response { qid })]);
            self.at(t0 + 20);
            let out = self.send(client(port), Message::Follow { qid, seq: 1 });
            assert!(out.is_empty());
            cookie
        }
    }

    #[test]
    fn happy_path_check_fires_exactly_at_last_rx_plus_check_ms() {
        let mut rig = Rig::new();
        let cookie = rig.question(5000, 1, 1000);
        // last_rx = 1020 ms. Schedule a Check after 30 s of idle.
        rig.at(2000);
        assert_eq!(
            rig.schedule(control(), 1, cookie, 30_000, 0),
            Some(AckStatus::Scheduled)
        );
        assert_eq!(rig.r.poll_timeout(), Some(Time::from_millis(31_020)));
        rig.at(31_019);
        assert!(rig.timeout().is_empty(), "a millisecond early");
        rig.now = Time::from_millis(31_020).saturating_sub(Duration::from_nanos(1));
        assert!(rig.timeout().is_empty(), "a nanosecond early");
        rig.at(31_020);
        assert_eq!(
            rig.timeout(),
            vec![(
                client(5000),
                Message::Check {
                    qid: 1,
                    idle_ms: 30_000
                }
            )]
        );
        // The question is gone.
        assert_eq!(rig.r.poll_timeout(), None);
        assert_eq!(rig.r.stats().questions_pending, 0);
        assert_eq!(rig.r.stats().checks_sent, 1);
        assert_eq!(
            rig.schedule(control(), 1, cookie, 40_000, 0),
            Some(AckStatus::UnknownQuestion)
        );
        assert_eq!(
            rig.send(client(5000), Message::Follow { qid: 1, seq: 2 }),
            vec![]
        );
        let s = rig.r.stats();
        assert!(s.sent_bytes <= s.received_bytes);
    }

    #[test]
    fn follow_rearms_a_scheduled_check() {
        let mut rig = Rig::new();
        let cookie = rig.question(5000, 1, 0);
        rig.at(100);
        assert_eq!(
            rig.schedule(control(), 1, cookie, 10_000, 0),
            Some(AckStatus::Scheduled)
        );
        rig.at(5000);
        rig.send(client(5000), Message::Follow { qid: 1, seq: 2 });
        rig.at(10_020);
        assert!(rig.timeout().is_empty());
        assert_eq!(rig.r.poll_timeout(), Some(Time::from_millis(15_000)));
        rig.at(15_000);
        assert_eq!(
            rig.timeout(),
            vec![(
                client(5000),
                Message::Check {
                    qid: 1,
                    idle_ms: 10_000
                }
            )]
        );
    }

    #[test]
    fn refresh_then_check() {
        let mut rig = Rig::new();
        let cookie = rig.question(6000, 42, 0);
        rig.at(500);
        assert_eq!(
            rig.schedule(control(), 42, cookie, 90_000, 25_000),
            Some(AckStatus::Scheduled)
        );
        rig.at(25_019);
        assert!(rig.timeout().is_empty());
        rig.at(25_020);
        assert_eq!(
            rig.timeout(),
            vec![(
                client(6000),
                Message::Refresh {
                    qid: 42,
                    idle_ms: 25_000
                }
            )]
        );
        assert_eq!(rig.r.poll_timeout(), Some(Time::from_millis(90_020)));
        rig.at(90_019);
        assert!(rig.timeout().is_empty());
        // A late driver: the Check reports the idle time actually waited.
        rig.at(90_025);
        assert_eq!(
            rig.timeout(),
            vec![(
                client(6000),
                Message::Check {
                    qid: 42,
                    idle_ms: 90_005
                }
            )]
        );
        assert_eq!(rig.r.stats().refreshes_sent, 1);
        assert_eq!(rig.r.stats().dropped.no_credit, 0);
    }

    #[test]
    fn schedule_refusals() {
        let mut rig = Rig::new();
        let cookie = rig.question(5000, 1, 0);
        rig.at(1000);
        // Delays out of range: zero, above one hour, refresh not below check.
        assert_eq!(
            rig.schedule(control(), 1, cookie, 0, 0),
            Some(AckStatus::BadDelay)
        );
        assert_eq!(
            rig.schedule(control(), 1, cookie, 3_600_001, 0),
            Some(AckStatus::BadDelay)
        );
        assert_eq!(
            rig.schedule(control(), 1, cookie, 20_000, 20_000),
            Some(AckStatus::BadDelay)
        );
        assert_eq!(
            rig.schedule(control(), 1, cookie, 20_000, 30_000),
            Some(AckStatus::BadDelay)
        );
        // Too late: last_rx = 20 ms, now = 1000 ms.
        assert_eq!(
            rig.schedule(control(), 1, cookie, 980, 0),
            Some(AckStatus::TooLate)
        );
        assert_eq!(
            rig.schedule(control(), 1, cookie, 60_000, 980),
            Some(AckStatus::TooLate)
        );
        assert_eq!(
            rig.schedule(control(), 2, cookie, 60_000, 0),
            Some(AckStatus::UnknownQuestion)
        );
        // Exactly one hour is fine; a second Schedule is refused.
        assert_eq!(
            rig.schedule(control(), 1, cookie, 3_600_000, 0),
            Some(AckStatus::Scheduled)
        );
        assert_eq!(
            rig.schedule(control(), 1, cookie, 60_000, 0),
            Some(AckStatus::AlreadyScheduled)
        );
        // A Schedule with a cookie that is not its source's.
        assert_eq!(
            rig.schedule(control(), 1, [0; 16], 60_000, 0),
            Some(AckStatus::BadCookie)
        );
        let d = &rig.r.stats().dropped;
        assert_eq!(
            (
                d.bad_delay,
                d.too_late,
                d.unknown_question,
                d.already_scheduled,
                d.bad_cookie
            ),
            (4, 2, 1, 1, 1)
        );
        rig.at(3_600_019);
        assert!(rig.timeout().is_empty());
        rig.at(3_600_020);
        assert_eq!(rig.timeout().len(), 1);
    }

    #[test]
    fn unscheduled_questions_expire_after_max_delay() {
        let mut rig = Rig::new();
        rig.question(5000, 1, 0);
        assert_eq!(rig.r.poll_timeout(), Some(Time::from_millis(3_600_020)));
        rig.at(3_600_020);
        assert!(rig.timeout().is_empty());
        assert_eq!(rig.r.stats().questions_pending, 0);
        assert_eq!(rig.r.stats().questions_expired, 1);
        assert_eq!(rig.r.poll_timeout(), None);
    }

    #[test]
    fn spoofed_sources_never_schedule_anything() {
        let mut rig = Rig::new();
        let victim = addr([203, 0, 113, 9], 7000);
        let attacker = addr([192, 0, 2, 66], 7000);
        let attacker_cookie = rig.cookie_for(attacker);
        // Spoofed Init: the attacker's cookie, the victim's address. The victim gets at most a
        // CookieReply, smaller than the Init; no question.
        let out = rig.init(victim, 1, attacker_cookie);
        assert!(matches!(out[..], [(dst, Message::CookieReply { nonce: 1, .. })] if dst == victim));
        assert_eq!(rig.r.stats().questions_pending, 0);
        assert_eq!(rig.r.stats().sources_tracked, 0);
        // Spoofed Schedule for the victim's real question.
        let victim_cookie = rig.cookie_for(victim);
        assert_eq!(
            rig.init(victim, 2, victim_cookie),
            vec![(victim, Message::Response { qid: 2 })]
        );
        assert_eq!(
            rig.schedule(attacker, 2, attacker_cookie, 1000, 0),
            Some(AckStatus::UnknownQuestion)
        );
        assert_eq!(
            rig.schedule(attacker, 2, victim_cookie, 1000, 0),
            Some(AckStatus::BadCookie)
        );
        // Spoofed as the victim's IP but with the attacker's cookie.
        assert_eq!(
            rig.schedule(addr([203, 0, 113, 9], 1), 2, attacker_cookie, 1000, 0),
            Some(AckStatus::BadCookie)
        );
        // A Follow from the attacker does not move the victim's question.
        rig.send(attacker, Message::Follow { qid: 2, seq: 1 });
        assert_eq!(rig.r.stats().dropped.wrong_source, 1);
        // An Init reusing the victim's qid from elsewhere is dropped.
        assert!(rig.init(attacker, 2, attacker_cookie).is_empty());
        assert_eq!(rig.r.stats().dropped.duplicate_question, 1);
        // Nothing was scheduled: the only timer is the victim's question expiry.
        assert_eq!(rig.r.stats().schedules_accepted, 0);
        rig.at(3_600_000);
        assert!(rig.timeout().is_empty());
        assert_eq!(rig.r.stats().checks_sent, 0);
    }

    #[test]
    fn wrong_psk_gets_no_output_at_all() {
        let config = ReflectorConfig {
            key: Key::from_psk(b"the reflector's secret psk").unwrap(),
            limits: Limits::default(),
        };
        let mut r = Reflector::new(config, Time::ZERO, SEED);
        let public = Key::public();
        let other = Key::from_psk(b"somebody else's secret psk").unwrap();
        for key in [public, other] {
            let msgs = [
                Message::CookieRequest { nonce: 1 },
                Message::Init {
                    qid: 1,
                    cookie: [0; 16],
                    reply: true,
                },
                Message::Follow { qid: 1, seq: 1 },
                Message::Schedule {
                    qid: 1,
                    cookie: [0; 16],
                    check_ms: 1000,
                    refresh_ms: 0,
                },
            ];
            for m in msgs {
                r.handle_input(Time::from_secs(1), client(5000), &m.to_vec(&key));
                assert!(r.poll_transmit().is_none());
            }
        }
        assert_eq!(r.stats().dropped.bad_mac, 8);
        assert_eq!(r.stats().sent_packets, 0);
        assert_eq!(r.stats().sources_tracked, 0);
        // The right PSK works.
        let mut rig = Rig::with(ReflectorConfig {
            key: Key::from_psk(b"the reflector's secret psk").unwrap(),
            limits: Limits::default(),
        });
        rig.question(5000, 1, 0);
    }

    #[test]
    fn junk_and_other_types_are_dropped_silently() {
        let mut rig = Rig::new();
        let junk: [&[u8]; 4] = [b"", b"hello", &[0u8; 148], &[0xffu8; 64]];
        for j in junk {
            rig.r.handle_input(Time::ZERO, client(1), j);
        }
        let others = [
            Message::CookieReply {
                nonce: 1,
                cookie: [1; 16],
                valid_ms: 1,
            },
            Message::Response { qid: 1 },
            Message::Ack {
                qid: 1,
                status: AckStatus::Scheduled,
            },
            Message::Check { qid: 1, idle_ms: 1 },
            Message::Refresh { qid: 1, idle_ms: 1 },
        ];
        for m in others {
            assert!(rig.send(client(1), m).is_empty());
        }
        let s = rig.r.stats();
        assert_eq!(s.dropped.malformed, 4);
        assert_eq!(s.dropped.unexpected_type, 5);
        assert_eq!(s.sent_packets, 0);
        assert_eq!(s.sources_tracked, 0);
    }

    #[test]
    fn cookie_is_valid_for_its_epoch_and_the_next_only() {
        let mut rig = Rig::new();
        // Epoch 0 = [0, 120 s). A cookie fetched at 100 s is valid until 240 s.
        rig.at(100_000);
        let out = rig.send(control(), Message::CookieRequest { nonce: 5 });
        let [(
            _,
            Message::CookieReply {
                cookie, valid_ms, ..
            },
        )] = out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(valid_ms, 140_000);
        rig.at(239_999);
        assert_eq!(
            rig.init(client(1), 1, cookie),
            vec![(client(1), Message::Response { qid: 1 })]
        );
        rig.at(240_000);
        let out = rig.init(client(2), 2, cookie);
        let [(
            dst,
            Message::CookieReply {
                nonce: 2,
                cookie: fresh,
                valid_ms,
            },
        )] = out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(dst, client(2));
        assert_eq!(valid_ms, 240_000);
        assert_ne!(fresh, cookie);
        assert_eq!(rig.r.stats().dropped.bad_cookie, 1);
        // The fresh cookie works, from any port of the same IP.
        assert_eq!(
            rig.init(client(2), 2, fresh),
            vec![(client(2), Message::Response { qid: 2 })]
        );
        // After a long silence (several epochs), old cookies are all invalid.
        rig.at(1_000_000);
        assert!(matches!(
            rig.init(client(3), 3, fresh)[..],
            [(_, Message::CookieReply { .. })]
        ));
        // A cookie is bound to the IP.
        let other = addr([198, 51, 100, 8], 1);
        let c = rig.cookie_for(client(9));
        assert!(matches!(
            rig.init(other, 4, c)[..],
            [(_, Message::CookieReply { .. })]
        ));
    }

    #[test]
    fn ipv4_and_mapped_ipv6_are_one_source() {
        let mut rig = Rig::new();
        let v4 = client(1);
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::from(CLIENT_IP).to_ipv6_mapped()), 2);
        let cookie = rig.cookie_for(v4);
        assert_eq!(
            rig.init(mapped, 1, cookie),
            vec![(mapped, Message::Response { qid: 1 })]
        );
        let v6 = SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            3,
        );
        let c6 = rig.cookie_for(v6);
        assert_ne!(c6, cookie);
        assert_eq!(
            rig.init(v6, 2, c6),
            vec![(v6, Message::Response { qid: 2 })]
        );
    }

    #[test]
    fn question_caps() {
        let limits = Limits {
            max_questions_per_ip: 3,
            max_questions: 5,
            ..Limits::default()
        };
        let mut rig = Rig::with(ReflectorConfig {
            key: Key::public(),
            limits,
        });
        let cookie = rig.cookie_for(control());
        for qid in 0..3 {
            assert_eq!(rig.init(client(100 + qid as u16), qid, cookie).len(), 1);
        }
        assert!(rig.init(client(200), 3, cookie).is_empty(), "per-IP cap");
        assert_eq!(rig.r.stats().dropped.limit_reached, 1);
        // The Schedule for the refused question says why.
        assert_eq!(
            rig.schedule(control(), 3, cookie, 1000, 0),
            Some(AckStatus::LimitReached)
        );
        // Another IP: two more questions reach the total cap.
        let other = addr([198, 51, 100, 99], 1);
        let c2 = rig.cookie_for(other);
        assert_eq!(rig.init(other, 10, c2).len(), 1);
        assert_eq!(rig.init(other, 11, c2).len(), 1);
        assert!(rig.init(other, 12, c2).is_empty(), "total cap");
        assert_eq!(rig.r.stats().questions_pending, 5);
        // A check frees a slot.
        assert_eq!(
            rig.schedule(control(), 0, cookie, 1000, 0),
            Some(AckStatus::Scheduled)
        );
        rig.at(1000);
        assert_eq!(rig.timeout().len(), 1);
        assert_eq!(rig.init(other, 12, c2).len(), 1);
    }

    #[test]
    fn source_cap_evicts_idle_records_only() {
        let limits = Limits {
            max_sources: 2,
            ..Limits::default()
        };
        let mut rig = Rig::with(ReflectorConfig {
            key: Key::public(),
            limits,
        });
        let a = addr([10, 0, 0, 1], 1);
        let b = addr([10, 0, 0, 2], 1);
        let c = addr([10, 0, 0, 3], 1);
        let ca = rig.cookie_for(a);
        let cb = rig.cookie_for(b);
        let cc = rig.cookie_for(c);
        assert_eq!(rig.init(a, 1, ca).len(), 1);
        assert_eq!(rig.init(b, 2, cb).len(), 1);
        // Both records hold a question: no room for c.
        assert!(rig.init(c, 3, cc).is_empty());
        assert_eq!(rig.r.stats().dropped.limit_reached, 1);
        assert_eq!(
            rig.schedule(c, 3, cc, 1000, 0),
            Some(AckStatus::LimitReached)
        );
        // a's question is checked: a's record is now idle and gets evicted for c.
        assert_eq!(rig.schedule(a, 1, ca, 1000, 0), Some(AckStatus::Scheduled));
        rig.at(1000);
        assert_eq!(rig.timeout().len(), 1);
        assert_eq!(rig.init(c, 3, cc).len(), 1);
        assert_eq!(rig.r.stats().sources_evicted, 1);
        assert_eq!(rig.r.stats().sources_tracked, 2);
    }

    #[test]
    fn per_ip_rate_limit() {
        let limits = Limits {
            packets_per_sec_per_ip: 10,
            ..Limits::default()
        };
        let mut rig = Rig::with(ReflectorConfig {
            key: Key::public(),
            limits,
        });
        let cookie = rig.cookie_for(control());
        let answered = (0..20)
            .filter(|&q| !rig.init(client(1000 + q as u16), q, cookie).is_empty())
            .count();
        assert_eq!(answered, 10, "the bucket holds one second's worth");
        assert_eq!(rig.r.stats().dropped.rate_limited, 10);
        rig.at(100);
        assert_eq!(rig.init(client(2000), 100, cookie).len(), 1, "refilled one");
        assert!(rig.init(client(2001), 101, cookie).is_empty());
    }

    /// One IP with a valid cookie floods Inits, Follows and Schedules from random ports: the
    /// reflector never sends that IP more bytes than it received from it, and its state stays
    /// bounded by the per-IP cap.
    #[test]
    fn flood_from_one_ip_with_a_valid_cookie() {
        let mut rig = Rig::new();
        let mut rng = StdRng::seed_from_u64(1);
        let cookie = rig.cookie_for(control());
        let mut received = 0u64;
        let mut sent = 0u64;
        let mut known = Vec::new();
        for i in 0..100_000u64 {
            // 100k packets over 50 virtual seconds.
            rig.now = Time::from_origin(Duration::from_micros(i * 500));
            let src = client(rng.gen_range(1024..=65535));
            let qid = if known.is_empty() || rng.gen_bool(0.5) {
                rng.gen::<u64>()
            } else {
                known[rng.gen_range(0..known.len())]
            };
            let msg = match rng.gen_range(0..4) {
                0 | 1 => {
                    known.push(qid);
                    Message::Init {
                        qid,
                        cookie,
                        reply: rng.gen(),
                    }
                }
                2 => Message::Follow { qid, seq: 1 },
                _ => Message::Schedule {
                    qid,
                    cookie,
                    check_ms: rng.gen_range(1..4_000_000),
                    refresh_ms: rng.gen_range(0..100_000),
                },
            };
            let bytes = msg.to_vec(&rig.key);
            received += bytes.len() as u64;
            rig.r.handle_input(rig.now, src, &bytes);
            while let Some(t) = rig.r.poll_transmit() {
                assert_eq!(ip_key(t.dst.ip()), ip_key(IpAddr::from(CLIENT_IP)));
                sent += t.payload().len() as u64;
            }
            assert!(rig.r.stats().questions_pending <= 1024);
            assert!(sent <= received);
        }
        let bound = 1024 * 400 + 64 * 1024;
        assert!(rig.r.state_bytes() < bound, "{} bytes", rig.r.state_bytes());
        // Let every timer fire.
        while let Some(t) = rig.r.poll_timeout() {
            rig.now = t;
            rig.r.handle_timeout(t);
            while let Some(t) = rig.r.poll_transmit() {
                sent += t.payload().len() as u64;
            }
        }
        assert!(sent <= received, "sent {sent} > received {received}");
        let s = rig.r.stats();
        assert_eq!(s.sources_tracked, 1);
        assert_eq!(s.questions_pending, 0);
        assert!(s.checks_sent > 0);
        let source = rig.r.sources.values().next().unwrap();
        assert!(source.sent <= source.received);
    }

    /// 100k spoofed IPs send junk, CookieRequests and Inits with made-up cookies: no per-source
    /// state, replies never larger than requests, the global bucket caps replies.
    #[test]
    fn flood_from_spoofed_ips_creates_no_state() {
        let mut rig = Rig::new();
        let mut rng = StdRng::seed_from_u64(2);
        let baseline = rig.r.state_bytes();
        let mut received = 0u64;
        let mut sent = 0u64;
        for i in 0..100_000u64 {
            rig.now = Time::from_origin(Duration::from_micros(i * 10));
            let src = addr(rng.gen(), rng.gen());
            let bytes = match i % 4 {
                0 => Message::CookieRequest { nonce: i }.to_vec(&rig.key),
                1 => Message::Init {
                    qid: i,
                    cookie: rng.gen(),
                    reply: true,
                }
                .to_vec(&rig.key),
                2 => Message::Schedule {
                    qid: i,
                    cookie: rng.gen(),
                    check_ms: 1000,
                    refresh_ms: 0,
                }
                .to_vec(&rig.key),
                _ => {
                    let mut junk = vec![0u8; rng.gen_range(0..200)];
                    rng.fill(&mut junk[..]);
                    junk
                }
            };
            received += bytes.len() as u64;
            rig.r.handle_input(rig.now, src, &bytes);
            while let Some(t) = rig.r.poll_transmit() {
                assert_eq!(t.dst, src);
                assert!(t.payload().len() <= bytes.len());
                sent += t.payload().len() as u64;
            }
        }
        let s = rig.r.stats();
        assert_eq!(s.sources_tracked, 0);
        assert_eq!(s.questions_pending, 0);
        assert_eq!(rig.r.poll_timeout(), None);
        assert!(sent <= received);
        // 1 virtual second: the bucket's 20k plus 20k refilled.
        assert!(s.sent_packets <= 40_000, "{}", s.sent_packets);
        assert!(s.dropped.rate_limited > 0);
        assert!(rig.r.state_bytes() <= baseline + MAX_QUEUED_TRANSMITS * size_of::<Transmit>());
    }

    #[test]
    fn delayed_packets_need_credit() {
        let mut rig = Rig::new();
        let cookie = rig.question(5000, 1, 0);
        rig.at(100);
        assert_eq!(
            rig.schedule(control(), 1, cookie, 10_000, 5_000),
            Some(AckStatus::Scheduled)
        );
        // Spend the IP's credit behind the reflector's back.
        let source = rig
            .r
            .sources
            .get_mut(&ip_key(IpAddr::from(CLIENT_IP)))
            .unwrap();
        source.sent = source.received - 40;
        rig.at(5020);
        assert_eq!(rig.timeout().len(), 1, "the Refresh fits in 40 bytes");
        rig.at(10_020);
        assert!(
            rig.timeout().is_empty(),
            "the Check does not fit in the 8 left"
        );
        assert_eq!(rig.r.stats().dropped.no_credit, 1);
        assert_eq!(rig.r.stats().questions_pending, 0);
    }

    #[test]
    fn full_queue_defers_timers() {
        let mut rig = Rig::new();
        let cookie = rig.cookie_for(control());
        let n = MAX_QUEUED_TRANSMITS as u64 + 10;
        // Two IPs, since one may hold at most 1024 questions.
        let other = addr([198, 51, 100, 200], 1);
        let c2 = rig.cookie_for(other);
        for qid in 0..n {
            let (src, c) = if qid < 1000 {
                (client(1000 + qid as u16), cookie)
            } else {
                (SocketAddr::new(other.ip(), 1000 + qid as u16), c2)
            };
            rig.now = Time::from_millis(qid);
            rig.init(src, qid, c);
            let ctl = SocketAddr::new(src.ip(), 40000);
            assert_eq!(
                rig.schedule(ctl, qid, c, (10_000 - qid) as u32, 0),
                Some(AckStatus::Scheduled)
            );
        }
        // Every Check is due at 10 s.
        rig.at(10_000);
        rig.r.handle_timeout(rig.now);
        assert_eq!(rig.r.out.len(), MAX_QUEUED_TRANSMITS);
        assert_eq!(rig.r.poll_timeout(), Some(Time::from_secs(10)));
        let first = rig.drain().len();
        let rest = rig.timeout().len();
        assert_eq!((first + rest) as u64, n);
        assert_eq!(rig.r.stats().dropped.queue_full, 0);
    }

    /// The worst case at the default limits: every question slot taken (64 IPs × 1024), each
    /// scheduled with a Refresh. Documented in docs/probe-protocol.md. Calls the handlers below
    /// the wire layer, which is slow in debug builds.
    #[test]
    fn state_at_full_caps() {
        let mut r = Reflector::new(ReflectorConfig::default(), Time::ZERO, SEED);
        let limits = Limits::default();
        let mut now = Time::ZERO;
        let mut qid = 0u64;
        for host in 0..64u8 {
            let ip = IpAddr::from([100, 64, 0, host]);
            let cookie = r.cookie(&ip_key(ip));
            for port in 0..1024u16 {
                // Within the per-IP rate: 2 packets per question, 1 ms apart.
                now += Duration::from_millis(1);
                let src = SocketAddr::new(ip, 10_000 + port);
                r.on_init(now, src, ip_key(ip), 148, qid, &cookie, false);
                let status = r.schedule(now, ip_key(ip), qid, 3_000_000, 1_000_000);
                assert_eq!(status, AckStatus::Scheduled);
                qid += 1;
            }
        }
        r.update_gauges();
        assert_eq!(r.stats().questions_pending, limits.max_questions);
        assert_eq!(r.stats().sources_tracked, 64);
        let bytes = r.state_bytes();
        println!("state at full caps: {bytes} bytes");
        assert!(bytes < 24 << 20, "{bytes} bytes");
    }

    #[test]
    fn debug_does_not_show_secrets() {
        let r = Reflector::new(ReflectorConfig::default(), Time::ZERO, SEED);
        let s = format!("{r:?}");
        assert!(s.contains("Key(public)"));
        assert!(!s.contains("secret"));
    }
}
