//! The sans-IO probe client: which socket sends what, when, and what the answers mean.
//!
//! The planner owns no socket and reads no clock. The driver opens the sockets it asks for
//! ([`Event::Open`]), sends what [`Planner::poll_transmit`] hands back, feeds every received
//! datagram to [`Planner::handle_input`] and calls [`Planner::handle_timeout`] at
//! [`Planner::poll_timeout`]. Socket 0 is the *control* socket: it fetches the reflector's cookie,
//! measures the round trip and carries every `Schedule`. Every other socket is one NAT entry
//! that does one traffic pattern once and then stays quiet until its check arrives (or not).
//!
//! What each pattern measures (the definitions, WireGuard's packet sizes):
//! - handshake: `Init` 148 B out, `Response` 92 B back, `Follow` 32 B out at once, then silence;
//! - stream: the same plus one 32 B `Follow` at [`PlannerConfig::stream_follow_up`] (2.5 s:
//!   Linux's 2 s grace plus half a second);
//! - unreplied: one 148 B `Init`, no answer;
//! - grace: the handshake pattern plus one `Follow` at a delay `g` on a 0.25 s grid in 0.5–5 s,
//!   checked at an idle time the handshake timeout cannot survive but the stream timeout can;
//! - refresh: the handshake pattern, then the reflector alone sends a `Refresh` at half the
//!   handshake timeout and its check after the entry would have expired without it.
//!
//! The timeout searches themselves are in [`search`].

pub mod search;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

use crate::report::{
    Bracket, Observation, Pattern, Progress, Recommendation, Report, SearchProgress,
};
use crate::wire::{self, AckStatus, Key, Message, COOKIE_LEN};
use crate::Time;
use search::{Search, SearchParams, SerialSearch, Slot, TimeoutSearch};

/// Linux's grace (2 s) plus half a second: the stream pattern's follow-up, and the agent's
/// default follow-up delay.
pub const STREAM_FOLLOW_UP: Duration = Duration::from_millis(2500);
/// The grace search's grid: 0.375 s … 5.125 s in steps of 0.25 s. The points sit between
/// round values so that a grace of exactly 2 s is never tested at exactly 2 s.
pub const GRACE_FIRST: Duration = Duration::from_millis(375);
/// See [`GRACE_FIRST`].
pub const GRACE_STEP: Duration = Duration::from_millis(250);
/// See [`GRACE_FIRST`].
pub const GRACE_POINTS: u32 = 20;
/// Sockets for the refresh question (any one check that arrives answers it).
pub const REFRESH_SOCKETS: u32 = 2;
/// Cookie requests before the reflector is declared unreachable, one per second.
pub const CONNECT_ATTEMPTS: u32 = 5;
/// The smallest `--max-sockets` that can measure everything.
pub const MIN_SOCKETS: u32 = 64;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measure {
    /// The handshake pattern's timeout.
    pub handshake: bool,
    /// The stream pattern's timeout.
    pub stream: bool,
    /// The unreplied timeout.
    pub unreplied: bool,
    /// The grace period (needs handshake and stream, which are measured too).
    pub grace: bool,
    /// Whether inbound-only traffic refreshes (needs handshake, which is measured too).
    pub refresh: bool,
}

impl Measure {
    /// Everything.
    pub const ALL: Measure = Measure {
        handshake: true,
        stream: true,
        unreplied: true,
        grace: true,
        refresh: true,
    };

    /// The same with the measurements the others depend on switched on.
    pub fn with_dependencies(self) -> Measure {
        Measure {
            handshake: self.handshake || self.grace || self.refresh,
            stream: self.stream || self.grace,
            ..self
        }
    }
}

/// How the timeouts are searched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Many NAT entries at once ([`TimeoutSearch`]).
    Parallel,
    /// One at a time, doubling then bisecting (RFC 5780 §4.6), for comparison.
    Serial,
}

impl Strategy {
    fn as_str(self) -> &'static str {
        match self {
            Strategy::Parallel => "parallel",
            Strategy::Serial => "serial",
        }
    }
}

/// The planner's settings.
#[derive(Clone, Debug)]
pub struct PlannerConfig {
    /// Shown in the report.
    pub reflector: String,
    /// What to measure.
    pub measure: Measure,
    /// Bracket width to reach for the timeouts.
    pub resolution: Duration,
    /// The largest idle time asked about.
    pub max: Duration,
    /// NAT entries (sockets) to use at most, the control socket included.
    pub max_sockets: u32,
    /// Authenticates every packet.
    pub key: Key,
    /// Parallel (the point) or serial (the classic method).
    pub strategy: Strategy,
    /// When the stream pattern's follow-up goes out, after its first packet.
    pub stream_follow_up: Duration,
}

impl PlannerConfig {
    /// Defaults: everything, 1 s resolution, 600 s max, 256 sockets, no PSK, parallel.
    pub fn new(reflector: impl Into<String>) -> PlannerConfig {
        PlannerConfig {
            reflector: reflector.into(),
            measure: Measure::ALL,
            resolution: Duration::from_secs(1),
            max: Duration::from_secs(600),
            max_sockets: 256,
            key: Key::public(),
            strategy: Strategy::Parallel,
            stream_follow_up: STREAM_FOLLOW_UP,
        }
    }
}

/// A socket of the planner: 0 is the control socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u32);

/// The control socket.
pub const CONTROL: SocketId = SocketId(0);

/// What the driver must do besides sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Open a new UDP socket (a new local port, so a new NAT entry) towards the reflector.
    Open(SocketId),
    /// The socket is no longer needed.
    Close(SocketId),
}

/// A datagram to send to the reflector from `socket`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The socket to send from.
    pub socket: SocketId,
    /// The datagram.
    pub payload: Vec<u8>,
}

/// Why a probe cannot go on.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProbeError {
    /// No cookie reply to any of the first requests.
    #[error(
        "no answer from the reflector after {attempts} tries in {secs} s: check the address and port, \
         that `wgkeep reflect` runs there, that no firewall drops UDP on the way, and that both sides use \
         the same --psk-file (a reflector with a PSK silently ignores packets without it)"
    )]
    Unreachable {
        /// Requests sent.
        attempts: u32,
        /// Seconds waited.
        secs: u64,
    },
    /// The reflector answered the cookie but then no pattern got its response.
    #[error(
        "the reflector answers cookie requests but no probe socket got a response: a NAT or firewall \
         drops new flows, or the reflector refuses questions (its per-source limits)"
    )]
    NoResponses,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// Slot of the search for this pattern.
    Search(Pattern, Slot),
    /// Grace point number.
    Grace(u32),
    /// Refresh socket number.
    Refresh(u32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum QState {
    /// `Init` sent (with REPLY) at `sent`, waiting for the `Response`.
    AwaitResponse { sent: Time },
    /// The pattern's extra follow-up goes out at `at`.
    FollowUpAt { at: Time },
    /// Quiet since `idle_since`, no question yet.
    Ready { idle_since: Time },
    /// Question sent: check at idle `check`; `acked` once the reflector said so.
    Scheduled {
        idle_since: Time,
        check: Duration,
        refresh: Duration,
        acked: bool,
        sent: Time,
        tries: u32,
    },
    /// Answered or lost.
    Finished,
}

#[derive(Clone, Debug)]
struct Question {
    qid: u64,
    owner: Owner,
    /// The first packet of the pattern.
    opened: Time,
    /// An extra follow-up this long after the first packet (stream, grace).
    follow_up: Option<Duration>,
    /// Whether the pattern wants a response.
    reply: bool,
    state: QState,
    refresh_seen: bool,
}

#[derive(Clone, Debug)]
struct PatternSearch {
    pattern: Pattern,
    search: Search,
}

#[derive(Clone, Copy, Debug, Default)]
struct GracePoint {
    socket: Option<SocketId>,
    idle_since: Option<Time>,
    asked: Option<Duration>,
    survived: Option<bool>,
    void: bool,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Connecting { attempts: u32, next: Time },
    Running,
    Failed,
}

/// The probe client.
#[derive(Debug)]
pub struct Planner {
    config: PlannerConfig,
    rng: StdRng,
    phase: Phase,
    error: Option<ProbeError>,
    began: Time,
    start: Option<Time>,
    finished: Option<Time>,
    cookie: Option<[u8; COOKIE_LEN]>,
    cookie_refresh_at: Time,
    /// Cookie requests in flight: nonce → sent.
    pings: HashMap<u64, Time>,
    rtt_min: Option<Duration>,
    rtt_max: Duration,
    ask_lead: Duration,
    det_margin: Duration,
    next_socket: u32,
    questions: HashMap<SocketId, Question>,
    by_qid: HashMap<u64, SocketId>,
    searches: Vec<PatternSearch>,
    grace: Vec<GracePoint>,
    grace_started: bool,
    refresh: Vec<Option<bool>>,
    refresh_plan: Option<(Duration, Duration)>,
    refresh_started: bool,
    /// When the grace points and the refresh question had all their answers.
    grace_done: Option<Time>,
    refresh_done: Option<Time>,
    observations: Vec<Observation>,
    notes: Vec<String>,
    responses: u32,
    events: VecDeque<Event>,
    transmits: VecDeque<Transmit>,
}

impl Planner {
    /// A planner that starts connecting at `now`. `seed` feeds the question ids.
    pub fn new(config: PlannerConfig, now: Time, seed: [u8; 32]) -> Planner {
        let mut p = Planner {
            config: PlannerConfig {
                measure: config.measure.with_dependencies(),
                ..config
            },
            rng: StdRng::from_seed(seed),
            phase: Phase::Connecting {
                attempts: 0,
                next: now,
            },
            error: None,
            began: now,
            start: None,
            finished: None,
            cookie: None,
            cookie_refresh_at: now,
            pings: HashMap::new(),
            rtt_min: None,
            rtt_max: Duration::ZERO,
            ask_lead: Duration::from_millis(200),
            det_margin: Duration::from_millis(250),
            next_socket: 1,
            questions: HashMap::new(),
            by_qid: HashMap::new(),
            searches: Vec::new(),
            grace: Vec::new(),
            grace_started: false,
            refresh: Vec::new(),
            refresh_plan: None,
            refresh_started: false,
            grace_done: None,
            refresh_done: None,
            observations: Vec::new(),
            notes: Vec::new(),
            responses: 0,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
        };
        p.events.push_back(Event::Open(CONTROL));
        p.handle_timeout(now);
        p
    }

    /// Whether the probe is over (finished or failed).
    pub fn is_done(&self) -> bool {
        self.finished.is_some() || matches!(self.phase, Phase::Failed)
    }

    /// Whether the reflector has answered (the probe got past connecting).
    pub fn connected(&self) -> bool {
        self.start.is_some()
    }

    /// Why the probe failed, if it did.
    pub fn error(&self) -> Option<&ProbeError> {
        self.error.as_ref()
    }

    /// The next socket event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn send(&mut self, socket: SocketId, msg: Message) {
        let payload = msg.to_vec(&self.config.key);
        self.transmits.push_back(Transmit { socket, payload });
    }

    fn send_ping(&mut self, now: Time) {
        let nonce = self.rng.gen();
        self.pings.insert(nonce, now);
        self.send(CONTROL, Message::CookieRequest { nonce });
    }

    /// A datagram arrived on `socket`.
    pub fn handle_input(&mut self, now: Time, socket: SocketId, data: &[u8]) {
        if self.is_done() {
            return;
        }
        let Ok(msg) = wire::decode(data, &self.config.key) else {
            return;
        };
        if socket == CONTROL {
            self.control_input(now, msg);
        } else {
            self.question_input(now, socket, msg);
        }
        self.drive(now);
    }

    fn control_input(&mut self, now: Time, msg: Message) {
        match msg {
            Message::CookieReply {
                nonce,
                cookie,
                valid_ms,
            } => {
                let Some(sent) = self.pings.remove(&nonce) else {
                    return;
                };
                let rtt = now.saturating_since(sent);
                self.rtt_min = Some(self.rtt_min.map_or(rtt, |r| r.min(rtt)));
                self.rtt_max = self.rtt_max.max(rtt);
                self.cookie = Some(cookie);
                // Renew at half the validity the reflector promised.
                let valid = Duration::from_millis(u64::from(valid_ms));
                self.cookie_refresh_at = now + (valid / 2).max(Duration::from_secs(5));
                if matches!(self.phase, Phase::Connecting { .. }) {
                    self.begin(now);
                }
            }
            Message::Ack { qid, status } => {
                let Some(&socket) = self.by_qid.get(&qid) else {
                    return;
                };
                match status {
                    AckStatus::Scheduled | AckStatus::AlreadyScheduled => {
                        if let Some(q) = self.questions.get_mut(&socket) {
                            if let QState::Scheduled { acked, .. } = &mut q.state {
                                *acked = true;
                            }
                        }
                    }
                    AckStatus::BadCookie => {
                        // Resent with the new cookie once it arrives.
                        self.cookie_refresh_at = now;
                    }
                    AckStatus::TooLate
                    | AckStatus::UnknownQuestion
                    | AckStatus::LimitReached
                    | AckStatus::BadDelay => {
                        if let Some(q) = self.questions.get(&socket) {
                            if matches!(q.state, QState::Scheduled { .. }) {
                                self.void(now, socket);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn question_input(&mut self, now: Time, socket: SocketId, msg: Message) {
        let Some(q) = self.questions.get_mut(&socket) else {
            return;
        };
        match msg {
            Message::Response { qid } if qid == q.qid => {
                if let QState::AwaitResponse { .. } = q.state {
                    self.responses += 1;
                    let qid = q.qid;
                    // The confirming keepalive goes out at once.
                    q.state = match q.follow_up {
                        Some(d) => QState::FollowUpAt { at: q.opened + d },
                        None => QState::Ready { idle_since: now },
                    };
                    let owner = q.owner;
                    let ready = matches!(q.state, QState::Ready { .. });
                    self.send(socket, Message::Follow { qid, seq: 0 });
                    if ready {
                        self.on_ready(owner, socket, now);
                    }
                }
            }
            Message::Check { qid, .. } if qid == q.qid => {
                if let QState::Scheduled { check, .. } = q.state {
                    self.answer(now, socket, check, true);
                }
            }
            Message::Refresh { qid, .. } if qid == q.qid => {
                q.refresh_seen = true;
            }
            Message::CookieReply { nonce, cookie, .. } if nonce == q.qid => {
                // The reflector did not take our cookie: this entry saw an unplanned reply.
                self.cookie = Some(cookie);
                self.cookie_refresh_at = now;
                self.void(now, socket);
            }
            _ => {}
        }
    }

    fn begin(&mut self, now: Time) {
        self.phase = Phase::Running;
        self.start = Some(now);
        let rtt = self.rtt_max;
        // A question must reach the reflector before its check is due; an expiry is declared
        // when the check is this late.
        self.ask_lead = Duration::from_millis(200) + rtt * 2;
        self.det_margin = Duration::from_millis(250) + rtt * 2;
        let m = self.config.measure;
        let c = &self.config;
        let mut pool = c.max_sockets.saturating_sub(1);
        if m.grace {
            pool = pool.saturating_sub(GRACE_POINTS);
        }
        if m.refresh {
            pool = pool.saturating_sub(REFRESH_SOCKETS);
        }
        // Shares of the pool: the stream search runs longest and needs the most entries.
        let wanted: Vec<(Pattern, f64)> = [
            (Pattern::Stream, m.stream, 0.42),
            (Pattern::Handshake, m.handshake, 0.33),
            (Pattern::Unreplied, m.unreplied, 0.25),
        ]
        .into_iter()
        .filter(|w| w.1)
        .map(|w| (w.0, w.2))
        .collect();
        let total: f64 = wanted.iter().map(|w| w.1).sum();
        for (pattern, share) in wanted {
            let budget = ((f64::from(pool) * share / total).floor() as u32).max(1);
            let base = match pattern {
                Pattern::Unreplied => SearchParams::secondary,
                _ => SearchParams::primary,
            };
            let params = SearchParams {
                budget,
                // The NAT's idle time exceeds the reflector's by up to one round trip.
                death_margin: rtt + Duration::from_millis(5),
                ..base(c.resolution, c.max, self.ask_lead)
            };
            let search = match c.strategy {
                Strategy::Parallel => Search::Parallel(TimeoutSearch::new(params, now)),
                Strategy::Serial => Search::Serial(SerialSearch::new(params)),
            };
            self.searches.push(PatternSearch { pattern, search });
        }
        if m.grace {
            self.grace = vec![GracePoint::default(); GRACE_POINTS as usize];
        }
        if m.refresh {
            self.refresh = vec![None; REFRESH_SOCKETS as usize];
        }
    }

    fn open(&mut self, now: Time, owner: Owner) -> SocketId {
        let socket = SocketId(self.next_socket);
        self.next_socket += 1;
        let qid = loop {
            let q: u64 = self.rng.gen();
            if !self.by_qid.contains_key(&q) {
                break q;
            }
        };
        let (reply, follow_up) = match owner {
            Owner::Search(Pattern::Unreplied, _) => (false, None),
            Owner::Search(Pattern::Stream, _) => (true, Some(self.config.stream_follow_up)),
            Owner::Grace(i) => (true, Some(GRACE_FIRST + GRACE_STEP * i)),
            _ => (true, None),
        };
        let state = if reply {
            QState::AwaitResponse { sent: now }
        } else {
            QState::Ready { idle_since: now }
        };
        self.questions.insert(
            socket,
            Question {
                qid,
                owner,
                opened: now,
                follow_up,
                reply,
                state,
                refresh_seen: false,
            },
        );
        self.by_qid.insert(qid, socket);
        self.events.push_back(Event::Open(socket));
        let cookie = self.cookie.unwrap_or_default();
        self.send(socket, Message::Init { qid, cookie, reply });
        if !reply {
            self.on_ready(owner, socket, now);
        }
        socket
    }

    fn on_ready(&mut self, owner: Owner, socket: SocketId, idle_since: Time) {
        match owner {
            Owner::Search(pattern, slot) => {
                if let Some(s) = self.search_mut(pattern) {
                    s.on_ready(slot, idle_since);
                }
            }
            Owner::Grace(i) => {
                if let Some(g) = self.grace.get_mut(i as usize) {
                    g.idle_since = Some(idle_since);
                    g.socket = Some(socket);
                }
            }
            Owner::Refresh(_) => {
                if let Some((refresh, check)) = self.refresh_plan {
                    self.schedule(idle_since, socket, check, refresh);
                }
            }
        }
    }

    fn search_mut(&mut self, pattern: Pattern) -> Option<&mut Search> {
        self.searches
            .iter_mut()
            .find(|s| s.pattern == pattern)
            .map(|s| &mut s.search)
    }

    fn search(&self, pattern: Pattern) -> Option<&Search> {
        self.searches
            .iter()
            .find(|s| s.pattern == pattern)
            .map(|s| &s.search)
    }

    /// Ask the reflector (over the control socket) to check `socket` at idle `check`.
    fn schedule(&mut self, now: Time, socket: SocketId, check: Duration, refresh: Duration) {
        let Some(q) = self.questions.get_mut(&socket) else {
            return;
        };
        let QState::Ready { idle_since } = q.state else {
            return;
        };
        q.state = QState::Scheduled {
            idle_since,
            check,
            refresh,
            acked: false,
            sent: now,
            tries: 1,
        };
        let qid = q.qid;
        self.send_schedule(qid, check, refresh);
    }

    fn send_schedule(&mut self, qid: u64, check: Duration, refresh: Duration) {
        let cookie = self.cookie.unwrap_or_default();
        self.send(
            CONTROL,
            Message::Schedule {
                qid,
                cookie,
                check_ms: millis(check),
                refresh_ms: millis(refresh),
            },
        );
    }

    fn answer(&mut self, now: Time, socket: SocketId, idle: Duration, survived: bool) {
        let Some(q) = self.questions.get_mut(&socket) else {
            return;
        };
        q.state = QState::Finished;
        let owner = q.owner;
        let follow_up = q.follow_up;
        let refresh_seen = q.refresh_seen;
        self.events.push_back(Event::Close(socket));
        match owner {
            Owner::Search(pattern, slot) => {
                self.observations.push(Observation {
                    pattern,
                    idle_s: idle.as_secs_f64(),
                    survived,
                    follow_up_s: None,
                });
                if let Some(s) = self.search_mut(pattern) {
                    s.on_answer(slot, survived, now);
                }
            }
            Owner::Grace(i) => {
                if let Some(g) = self.grace.get_mut(i as usize) {
                    g.survived = Some(survived);
                }
                self.observations.push(Observation {
                    pattern: Pattern::Grace,
                    idle_s: idle.as_secs_f64(),
                    survived,
                    follow_up_s: follow_up.map(|d| d.as_secs_f64()),
                });
            }
            Owner::Refresh(i) => {
                // A check that arrived answers yes; one that did not answers no only if the
                // reflector's refresh got through (else the entry died before it: no answer).
                let result = if survived {
                    Some(true)
                } else if refresh_seen {
                    Some(false)
                } else {
                    None
                };
                if let Some(r) = self.refresh.get_mut(i as usize) {
                    *r = result;
                }
                self.observations.push(Observation {
                    pattern: Pattern::Refresh,
                    idle_s: idle.as_secs_f64(),
                    survived,
                    follow_up_s: None,
                });
            }
        }
    }

    fn void(&mut self, now: Time, socket: SocketId) {
        let Some(q) = self.questions.get_mut(&socket) else {
            return;
        };
        if q.state == QState::Finished {
            return;
        }
        q.state = QState::Finished;
        let owner = q.owner;
        self.events.push_back(Event::Close(socket));
        match owner {
            Owner::Search(pattern, slot) => {
                if let Some(s) = self.search_mut(pattern) {
                    s.on_void(slot, now);
                }
            }
            Owner::Grace(i) => {
                if let Some(g) = self.grace.get_mut(i as usize) {
                    g.void = true;
                }
            }
            Owner::Refresh(i) => {
                if let Some(r) = self.refresh.get_mut(i as usize) {
                    *r = None;
                }
            }
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.is_done() {
            return;
        }
        if let Phase::Connecting { attempts, next } = self.phase {
            if now >= next {
                if attempts >= CONNECT_ATTEMPTS {
                    self.phase = Phase::Failed;
                    self.error = Some(ProbeError::Unreachable {
                        attempts,
                        secs: now.saturating_since(self.began).as_secs(),
                    });
                    return;
                }
                self.send_ping(now);
                self.phase = Phase::Connecting {
                    attempts: attempts + 1,
                    next: now + Duration::from_secs(1),
                };
            }
            return;
        }
        // Keep the cookie fresh (and the control entry alive, and the round trip measured).
        if now >= self.cookie_refresh_at {
            self.send_ping(now);
            self.cookie_refresh_at = now + Duration::from_secs(5);
        }
        let mut due: Vec<(SocketId, QState)> = self
            .questions
            .iter()
            .filter(|(_, q)| q.state != QState::Finished)
            .map(|(s, q)| (*s, q.state))
            .collect();
        due.sort_by_key(|d| d.0);
        for (socket, state) in due {
            match state {
                QState::AwaitResponse { sent } if now >= sent + self.response_timeout() => {
                    self.void(now, socket);
                }
                QState::FollowUpAt { at } if now >= at => {
                    let q = self.questions.get_mut(&socket).expect("listed");
                    q.state = QState::Ready { idle_since: now };
                    let (qid, owner) = (q.qid, q.owner);
                    self.send(socket, Message::Follow { qid, seq: 1 });
                    self.on_ready(owner, socket, now);
                }
                QState::Scheduled {
                    idle_since,
                    check,
                    refresh,
                    acked,
                    sent,
                    tries,
                } => {
                    if now >= idle_since + check + self.rtt_max + self.det_margin {
                        self.answer(now, socket, check, false);
                    } else if !acked && now >= sent + self.ack_timeout() && tries < 4 {
                        let q = self.questions.get_mut(&socket).expect("listed");
                        q.state = QState::Scheduled {
                            idle_since,
                            check,
                            refresh,
                            acked,
                            sent: now,
                            tries: tries + 1,
                        };
                        let qid = q.qid;
                        self.send_schedule(qid, check, refresh);
                    }
                }
                _ => {}
            }
        }
        self.drive(now);
    }

    fn response_timeout(&self) -> Duration {
        Duration::from_secs(1) + self.rtt_max * 4
    }

    fn ack_timeout(&self) -> Duration {
        Duration::from_millis(300) + self.rtt_max * 3
    }

    /// Open sockets and ask questions the searches want now; finish when all is answered.
    fn drive(&mut self, now: Time) {
        if !matches!(self.phase, Phase::Running) || self.finished.is_some() {
            return;
        }
        let start = self.start.expect("running");
        for i in 0..self.searches.len() {
            let pattern = self.searches[i].pattern;
            while let Some(slot) = self.searches[i].search.poll_open(now) {
                self.open(now, Owner::Search(pattern, slot));
            }
            while let Some((slot, idle)) = self.searches[i].search.poll_ask(now) {
                let socket = self
                    .questions
                    .iter()
                    .find(|(_, q)| q.owner == Owner::Search(pattern, slot))
                    .map(|(s, _)| *s);
                if let Some(socket) = socket {
                    self.schedule(now, socket, idle, Duration::ZERO);
                }
            }
        }
        self.drive_grace(now);
        self.drive_refresh(now);
        if self.responses == 0
            && now.saturating_since(start) > self.response_timeout() * 3
            && self.questions.values().any(|q| q.reply)
            && self
                .questions
                .values()
                .filter(|q| q.reply)
                .all(|q| q.state == QState::Finished)
        {
            self.phase = Phase::Failed;
            self.error = Some(ProbeError::NoResponses);
            return;
        }
        self.note_completions(now);
        if self.all_answered() {
            self.finished = Some(now);
            for (socket, q) in &self.questions {
                if q.state != QState::Finished {
                    self.events.push_back(Event::Close(*socket));
                }
            }
            self.events.push_back(Event::Close(CONTROL));
        }
    }

    fn drive_grace(&mut self, now: Time) {
        if self.grace.is_empty() {
            return;
        }
        if !self.grace_started {
            self.grace_started = true;
            for i in 0..GRACE_POINTS {
                self.open(now, Owner::Grace(i));
            }
        }
        // A check the handshake timeout cannot survive: at or above its upper bound.
        let Some(hs) = self.search(Pattern::Handshake) else {
            return;
        };
        let (hs_done, hi_h) = (hs.is_done(), hs.bracket().1);
        let Some(hi_h) = hi_h else {
            if hs_done && !self.grace.iter().all(|g| g.void) {
                // No check can tell promoted from not: nothing outlives the handshake timeout
                // within --max.
                for i in 0..self.grace.len() {
                    self.grace[i].void = true;
                    if let Some(socket) = self.grace[i].socket {
                        self.void(now, socket);
                    }
                }
                self.notes
                    .push("grace not measured: the handshake timeout exceeds --max".to_string());
            }
            return;
        };
        for i in 0..self.grace.len() {
            let g = self.grace[i];
            let (Some(socket), Some(idle_since), None, false) =
                (g.socket, g.idle_since, g.asked, g.void)
            else {
                continue;
            };
            let age = now.saturating_since(idle_since);
            let check = (hi_h + Duration::from_millis(100)).max(age + self.ask_lead);
            self.grace[i].asked = Some(check);
            self.schedule(now, socket, check, Duration::ZERO);
        }
    }

    fn drive_refresh(&mut self, now: Time) {
        if self.refresh.is_empty() || self.refresh_started {
            return;
        }
        let Some((true, (lo, hi))) = self
            .search(Pattern::Handshake)
            .map(|hs| (hs.is_done(), hs.bracket()))
        else {
            return;
        };
        self.refresh_started = true;
        let Some(hi) = hi else {
            self.notes
                .push("refresh not measured: the handshake timeout exceeds --max".to_string());
            return;
        };
        // Refresh at half the handshake timeout; check after the entry would have expired
        // without it but before it expires with it.
        let refresh = lo / 2;
        let check = (hi + refresh + lo) / 2;
        if refresh + lo < hi + Duration::from_millis(400) || refresh < self.ask_lead {
            self.notes.push(format!(
                "refresh not measured: the handshake timeout ({} s) is too short to tell",
                fmt_secs(lo)
            ));
            return;
        }
        self.refresh_plan = Some((refresh, check));
        for i in 0..REFRESH_SOCKETS {
            self.open(now, Owner::Refresh(i));
        }
    }

    fn note_completions(&mut self, now: Time) {
        if self.grace_done.is_none()
            && !self.grace.is_empty()
            && self.grace.iter().all(|g| g.void || g.survived.is_some())
        {
            self.grace_done = Some(now);
        }
        if self.refresh_done.is_none()
            && self.refresh_started
            && !self
                .questions
                .values()
                .any(|q| matches!(q.owner, Owner::Refresh(_)) && q.state != QState::Finished)
        {
            self.refresh_done = Some(now);
        }
    }

    fn all_answered(&self) -> bool {
        if !self.searches.iter().all(|s| s.search.is_done()) {
            return false;
        }
        if !self.grace.is_empty() && !self.grace.iter().all(|g| g.void || g.survived.is_some()) {
            return false;
        }
        if !self.refresh.is_empty() {
            if !self.refresh_started {
                return false;
            }
            if self.refresh_plan.is_some()
                && self
                    .questions
                    .values()
                    .any(|q| matches!(q.owner, Owner::Refresh(_)) && q.state != QState::Finished)
            {
                return false;
            }
        }
        true
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.is_done() {
            return None;
        }
        if let Phase::Connecting { next, .. } = self.phase {
            return Some(next);
        }
        let mut next = self.cookie_refresh_at;
        for q in self.questions.values() {
            let t = match q.state {
                QState::AwaitResponse { sent } => Some(sent + self.response_timeout()),
                QState::FollowUpAt { at } => Some(at),
                QState::Scheduled {
                    idle_since,
                    check,
                    acked,
                    sent,
                    ..
                } => {
                    let expiry = idle_since + check + self.rtt_max + self.det_margin;
                    Some(if acked {
                        expiry
                    } else {
                        expiry.min(sent + self.ack_timeout())
                    })
                }
                _ => None,
            };
            if let Some(t) = t {
                next = next.min(t);
            }
        }
        for s in &self.searches {
            if let Some(t) = s.search.poll_timeout() {
                next = next.min(t);
            }
        }
        Some(next)
    }

    /// NAT entries used so far, the control socket included.
    pub fn sockets_used(&self) -> u32 {
        self.next_socket
    }

    /// A snapshot for a progress display.
    pub fn progress(&self, now: Time) -> Progress {
        let searches = self
            .searches
            .iter()
            .map(|s| {
                let (lo, hi) = s.search.bracket();
                SearchProgress {
                    pattern: s.pattern,
                    low_s: lo.as_secs_f64(),
                    high_s: hi.map(|h| h.as_secs_f64()),
                    done: s.search.is_done(),
                }
            })
            .collect();
        let elapsed = now.saturating_since(self.began).as_secs_f64();
        // The stream search's bound, once an expiry has been seen.
        let expected_total_s = self
            .search(Pattern::Stream)
            .and_then(|s| s.bracket().1)
            .map(|hi| 1.25 * hi.as_secs_f64() + 10.0);
        Progress {
            elapsed_s: elapsed,
            sockets_used: self.sockets_used(),
            searches,
            inbound_refresh: self.inbound_refresh(),
            expected_total_s,
        }
    }

    fn inbound_refresh(&self) -> Option<bool> {
        if self.refresh.contains(&Some(true)) {
            Some(true)
        } else if self.refresh.contains(&Some(false)) {
            Some(false)
        } else {
            None
        }
    }

    fn bracket_of(&self, pattern: Pattern) -> Option<Bracket> {
        let (lo, hi) = self.search(pattern)?.bracket();
        Some(Bracket {
            low_s: round_ms(lo),
            high_s: hi.map(round_ms),
        })
    }

    /// The grace bracket from the grace points whose check can tell promoted from not.
    fn grace_bracket(&self, notes: &mut Vec<String>) -> Option<Bracket> {
        if self.grace.is_empty() {
            return None;
        }
        let stream_lo = self.search(Pattern::Stream)?.bracket().0;
        let mut promoted: Option<Duration> = None;
        let mut not_promoted: Vec<Duration> = Vec::new();
        let mut usable = 0;
        for (i, g) in self.grace.iter().enumerate() {
            let (Some(check), Some(survived)) = (g.asked, g.survived) else {
                continue;
            };
            // Surviving the check needs the stream timeout: only then does it tell.
            if stream_lo <= check {
                continue;
            }
            usable += 1;
            let at = GRACE_FIRST + GRACE_STEP * i as u32;
            if survived {
                promoted = Some(promoted.map_or(at, |p| p.min(at)));
            } else {
                not_promoted.push(at);
            }
        }
        if self.grace.iter().all(|g| g.void) {
            // Already explained when the points were given up.
            return None;
        }
        if usable == 0 {
            notes.push(
                "grace not measured: no entry outlived the handshake timeout, so a promotion \
                 could not be seen (is the stream timeout longer than the handshake timeout?)"
                    .to_string(),
            );
            return None;
        }
        let low = |below: Option<Duration>| {
            not_promoted
                .iter()
                .copied()
                .filter(|n| below.is_none_or(|b| *n < b))
                .max()
                .unwrap_or(Duration::ZERO)
        };
        match promoted {
            Some(p) => Some(Bracket {
                low_s: round_ms(low(Some(p))),
                high_s: Some(round_ms(p)),
            }),
            None => {
                notes.push(format!(
                    "no follow-up up to {} s promoted the entry",
                    fmt_secs(GRACE_FIRST + GRACE_STEP * (GRACE_POINTS - 1))
                ));
                Some(Bracket {
                    low_s: round_ms(low(None)),
                    high_s: None,
                })
            }
        }
    }

    fn finished_times(&self) -> std::collections::BTreeMap<Pattern, f64> {
        let since = |t: Time| round_ms(t.saturating_since(self.began));
        let mut m: std::collections::BTreeMap<Pattern, f64> = self
            .searches
            .iter()
            .filter_map(|s| Some((s.pattern, since(s.search.finished_at()?))))
            .collect();
        if let Some(t) = self.grace_done {
            m.insert(Pattern::Grace, since(t));
        }
        if let Some(t) = self.refresh_done {
            m.insert(Pattern::Refresh, since(t));
        }
        m
    }

    /// The report (meaningful once [`is_done`](Self::is_done)).
    pub fn report(&self, now: Time) -> Report {
        let mut notes = self.notes.clone();
        let m = self.config.measure;
        let handshake = m
            .handshake
            .then(|| self.bracket_of(Pattern::Handshake))
            .flatten();
        let stream = m.stream.then(|| self.bracket_of(Pattern::Stream)).flatten();
        let unreplied = m
            .unreplied
            .then(|| self.bracket_of(Pattern::Unreplied))
            .flatten();
        let grace = self.grace_bracket(&mut notes);
        for s in &self.searches {
            let (lo, hi) = s.search.bracket();
            if let Some(hi) = hi {
                if hi.saturating_sub(lo) > self.config.resolution {
                    notes.push(format!(
                        "{}: ran out of NAT entries before reaching the resolution (raise --max-sockets)",
                        s.pattern.as_str()
                    ));
                }
            }
        }
        let recommendation = Recommendation::from_brackets(
            handshake.as_ref(),
            stream.as_ref(),
            unreplied.as_ref(),
            grace.as_ref(),
        );
        let end = self.finished.unwrap_or(now);
        Report {
            reflector: self.config.reflector.clone(),
            duration_s: round_ms(end.saturating_since(self.began)),
            sockets_used: self.sockets_used(),
            resolution_s: self.config.resolution.as_secs_f64(),
            max_s: self.config.max.as_secs_f64(),
            rtt_ms: self.rtt_min.unwrap_or_default().as_secs_f64() * 1000.0,
            strategy: self.config.strategy.as_str().to_string(),
            handshake,
            stream,
            unreplied,
            grace,
            inbound_refresh: self.inbound_refresh(),
            stream_follow_up_s: self.config.stream_follow_up.as_secs_f64(),
            recommendation,
            notes,
            observations: self.observations.clone(),
            finished_s: self.finished_times(),
        }
    }
}

/// Whole milliseconds, rounded up: the reflector then waits at least the idle time asked about,
/// so a survival proves at least what the search records.
fn millis(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn fmt_secs(d: Duration) -> String {
    format!("{}", round_ms(d))
}
