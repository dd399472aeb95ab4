//! Differential test: the conntrack model of `wgkeep_probe::middlebox` against the real kernel.
//!
//! Two labs (client ─ NAT router ─ server in network namespaces) run at the same time, each with
//! its own conntrack UDP timeouts. In each lab a dozen seeded random packet schedules run at once,
//! one flow each (own client port, the server's fixed port). Every packet goes through the kernel
//! and, at the instant measured just before its `send_to`, through a model [`Nat`]. Every
//! [`CHECK_EVERY`] the router's `conntrack -L -p udp` is compared with the model, flow by flow:
//! existence, `[ASSURED]`, `[UNREPLIED]`, the public port and the remaining seconds. At the end
//! every inbound packet the model dropped must not have reached the client, every one it forwarded
//! must have, and every outbound packet must have reached the server from the model's public port.
//!
//! Timing is real, so jitter of a few milliseconds is unavoidable: schedules keep every packet
//! [`GEN_MARGIN`] away from the model's `stream_ts` and deadlines, and comparisons that still land
//! close to one are skipped and counted (see [`CHECK_MARGIN`], [`RUN_MARGIN`]).
//!
//! `WGKEEP_DIFF_SEED=<u64>` replays with another base seed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgkeep_probe::middlebox::{
    Direction, Entry, FlowId, Nat, NatEventKind, Profile, Rules, TimeoutKind,
};
use wgkeep_probe::Time;
use wgkeep_tests::{CtEntry, LabConfig, NetLab, Ns};

const SERVER_PORT: u16 = 51820;
const CLIENT_PORT_BASE: u16 = 40000;
const FLOWS_PER_LAB: usize = 12;
const GRACE: Duration = Duration::from_secs(2);
/// Schedules keep every packet at least this far from the model's `stream_ts` and deadline.
const GEN_MARGIN: Duration = Duration::from_millis(150);
/// A packet that still lands this close to `stream_ts` (after a reply) or to the deadline is
/// ambiguous: its flow is not compared any more.
const RUN_MARGIN: Duration = Duration::from_millis(30);
/// A checkpoint this close to a flow's model deadline skips that flow.
const CHECK_MARGIN: Duration = Duration::from_millis(100);
const CHECK_EVERY: Duration = Duration::from_millis(400);
/// The last packet of any schedule is planned before this.
const HORIZON: Duration = Duration::from_secs(29);
const DEFAULT_BASE_SEED: u64 = 0x5EED_2024;
/// Disagreements shown per flow; more are only counted.
const SHOWN_PER_FLOW: u32 = 3;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn t(d: Duration) -> Time {
    Time::from_origin(d)
}

fn near(a: Time, b: Time, margin: Duration) -> bool {
    a.max(b) - a.min(b) < margin
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Original => "OUT",
        Direction::Reply => "IN ",
    }
}

// ---------------------------------------------------------------------------------------------
// Schedules

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Theme {
    /// Handshake-like burst, silence until expiry, then maybe more.
    HandshakeSilence,
    /// Burst, then follow-ups before the 2 s grace ends (no promotion), then after it.
    EarlyFollowUp,
    /// Burst, then one follow-up after the grace (promotion), then stream refreshes.
    LateFollowUp,
    /// Outbound, the first reply only after the grace, then one more packet.
    LateFirstReply,
    /// Never replied.
    OutboundOnly,
    /// Burst, expiry, an inbound packet to the dead mapping (dropped), re-creation.
    ExpireRecreate,
}

const THEMES: [Theme; 6] = [
    Theme::HandshakeSilence,
    Theme::EarlyFollowUp,
    Theme::LateFollowUp,
    Theme::LateFirstReply,
    Theme::OutboundOnly,
    Theme::ExpireRecreate,
];

#[derive(Clone, Debug)]
struct Schedule {
    seed: u64,
    theme: Theme,
    /// Planned send times since the lab's origin.
    steps: Vec<(Duration, Direction)>,
}

/// Builds a schedule while running it through a private model on the planned times, so that
/// packets can be kept away from ambiguous instants.
struct Gen {
    rng: StdRng,
    sim: Nat,
    internal: SocketAddrV4,
    remote: SocketAddrV4,
    public: Option<SocketAddrV4>,
    steps: Vec<(Duration, Direction)>,
    /// Time of the last step (or the flow's start).
    now: Duration,
    unreplied: Duration,
}

impl Gen {
    fn rand_ms(&mut self, lo: u64, hi: u64) -> Duration {
        ms(self.rng.gen_range(lo..=hi.max(lo)))
    }

    /// The entry in the private model's table (possibly past its deadline).
    fn entry(&self) -> Option<&Entry> {
        self.sim
            .entry_for_flow(self.internal, self.remote)
            .map(|(_, _, e)| e)
    }

    fn alive_entry(&self, at: Duration) -> Option<&Entry> {
        self.entry().filter(|e| e.is_alive(t(at)))
    }

    fn created(&self) -> Duration {
        self.entry()
            .map_or(self.now, |e| e.created().since_origin())
    }

    fn safe(&self, at: Duration) -> bool {
        match self.entry() {
            Some(e) => {
                !near(t(at), e.deadline(), GEN_MARGIN)
                    && !near(t(at), e.stream_ts().expect("conntrack"), GEN_MARGIN)
            }
            None => true,
        }
    }

    /// Plans a packet at `at` (moved later if it is too close to an ambiguous instant). False once
    /// past the horizon.
    fn send(&mut self, at: Duration, dir: Direction) -> bool {
        let mut at = at.max(self.now + ms(5));
        while !self.safe(at) {
            at += ms(50);
        }
        if at > HORIZON {
            return false;
        }
        match dir {
            Direction::Original => {
                self.public = Some(self.sim.outbound(t(at), self.internal, self.remote));
            }
            Direction::Reply => {
                let public = self.public.expect("first packet is outbound");
                let _ = self.sim.inbound(t(at), self.remote, public);
            }
        }
        self.steps.push((at, dir));
        self.now = at;
        true
    }

    /// out, in, out within ~50 ms, like a WireGuard handshake.
    fn burst(&mut self, at: Duration) -> bool {
        let a = self.rand_ms(5, 25);
        let b = self.rand_ms(5, 25);
        self.send(at, Direction::Original)
            && self.send(self.now + a, Direction::Reply)
            && self.send(self.now + b, Direction::Original)
    }

    fn random_dir(&mut self) -> Direction {
        if self.rng.gen_bool(0.55) {
            Direction::Original
        } else {
            Direction::Reply
        }
    }

    /// Time left on the live entry after the last step, if any.
    fn remaining(&self) -> Option<Duration> {
        self.alive_entry(self.now).map(|e| e.remaining(t(self.now)))
    }

    /// Waits past the entry's expiry; then maybe an inbound packet to the dead mapping, then a new
    /// outbound packet or burst.
    fn expire_and_recreate(&mut self, allow_inbound: bool) -> bool {
        let rem = self.remaining().unwrap_or_default();
        let idle = rem + self.rand_ms(300, 2500);
        let at = self.now + idle;
        if allow_inbound && self.rng.gen_bool(0.6) {
            if !self.send(at, Direction::Reply) {
                return false;
            }
            let gap = self.rand_ms(200, 900);
            if allow_inbound && self.rng.gen_bool(0.5) {
                return self.burst(self.now + gap);
            }
            return self.send(self.now + gap, Direction::Original);
        }
        if allow_inbound && self.rng.gen_bool(0.4) {
            self.burst(at)
        } else {
            self.send(at, Direction::Original)
        }
    }

    /// Random steps until the horizon.
    fn continue_randomly(&mut self, allow_inbound: bool) {
        loop {
            let rem = self.remaining();
            let roll: f64 = self.rng.gen();
            let ok = match rem {
                // Refresh the live entry, either direction.
                Some(rem) if roll < 0.6 && rem > ms(1000) => {
                    let hi = (rem - ms(300)).min(ms(6000)).as_millis() as u64;
                    let at = self.now + self.rand_ms(300, hi);
                    let dir = if allow_inbound {
                        self.random_dir()
                    } else {
                        Direction::Original
                    };
                    self.send(at, dir)
                }
                // A burst on the live entry.
                Some(rem) if roll < 0.7 && allow_inbound && rem > ms(1000) => {
                    let hi = (rem - ms(300)).min(ms(5000)).as_millis() as u64;
                    let at = self.now + self.rand_ms(300, hi);
                    self.burst(at)
                }
                // Let it expire (only when that fits before the horizon).
                Some(rem) if self.now + rem + ms(500) < HORIZON => {
                    self.expire_and_recreate(allow_inbound)
                }
                Some(rem) => {
                    // A long stream timeout: keep refreshing.
                    let hi = (rem - ms(300)).min(ms(6000)).as_millis() as u64;
                    let at = self.now + self.rand_ms(300, hi);
                    self.send(at, Direction::Original)
                }
                None => {
                    let at = self.now + self.rand_ms(300, 3000);
                    self.send(at, Direction::Original)
                }
            };
            if !ok {
                return;
            }
        }
    }
}

/// `flip` picks the direction of the theme's decisive packet (outbound when false, inbound when
/// true), so that each theme's two flows per lab cover both.
fn generate(
    seed: u64,
    theme: Theme,
    flip: bool,
    profile: Profile,
    internal: SocketAddrV4,
    remote: SocketAddrV4,
) -> Schedule {
    let Rules::Conntrack(ct) = profile.rules else {
        unreachable!("conntrack profile")
    };
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        sim: Nat::new(profile, *internal.ip()),
        internal,
        remote,
        public: None,
        steps: Vec::new(),
        now: Duration::ZERO,
        unreplied: ct.unreplied,
    };
    let start = g.rand_ms(200, 1500);
    let u = g.unreplied.as_millis() as u64;
    let grace = GRACE.as_millis() as u64;
    let decisive = if flip {
        Direction::Reply
    } else {
        Direction::Original
    };
    match theme {
        Theme::HandshakeSilence => {
            g.burst(start);
            g.expire_and_recreate(true);
            g.continue_randomly(true);
        }
        Theme::EarlyFollowUp => {
            g.burst(start);
            let n = g.rng.gen_range(1..=2);
            for _ in 0..n {
                let created = g.created();
                let at = created + g.rand_ms(300, grace - 200);
                let dir = g.random_dir();
                g.send(at.max(g.now + ms(100)), dir);
            }
            if g.rng.gen_bool(0.6) {
                // And one after the grace: promotes.
                let created = g.created();
                let last = g.now;
                let hi = (last + ms(u - 300)).min(created + ms(grace + 2500));
                let lo = created + ms(grace + 150);
                let at = lo + g.rand_ms(0, (hi.saturating_sub(lo)).as_millis() as u64);
                let dir = g.random_dir();
                g.send(at, dir);
            }
            g.continue_randomly(true);
        }
        Theme::LateFollowUp => {
            g.burst(start);
            let created = g.created();
            let lo = created + ms(grace + 150);
            let hi = (g.now + ms(u - 300)).min(created + ms(grace + 2500));
            let at = lo + g.rand_ms(0, hi.saturating_sub(lo).as_millis() as u64);
            g.send(at, decisive);
            g.continue_randomly(true);
        }
        Theme::LateFirstReply => {
            g.send(start, Direction::Original);
            if g.rng.gen_bool(0.5) {
                let at = start + g.rand_ms(300, grace - 300);
                g.send(at, Direction::Original);
            }
            let created = g.created();
            let lo = created + ms(grace + 150);
            let hi = (g.now + ms(u - 300)).min(created + ms(grace + 3000));
            let at = lo + g.rand_ms(0, hi.saturating_sub(lo).as_millis() as u64);
            g.send(at, Direction::Reply);
            // The first reply never promotes; the next packet, either way, does.
            let at = g.now + g.rand_ms(200, 1500);
            g.send(at, decisive);
            g.continue_randomly(true);
        }
        Theme::OutboundOnly => {
            g.send(start, Direction::Original);
            g.continue_randomly(false);
        }
        Theme::ExpireRecreate => {
            g.burst(start);
            let rem = g.remaining().unwrap_or_default();
            let at = g.now + rem + g.rand_ms(300, 2000);
            g.send(at, Direction::Reply); // to the dead mapping: dropped
            let at = g.now + g.rand_ms(200, 800);
            g.send(at, Direction::Original); // re-created, unreplied
            let at = g.now + g.rand_ms(20, 200);
            g.send(at, Direction::Reply); // the new entry's first reply passes
            g.continue_randomly(true);
        }
    }
    Schedule {
        seed,
        theme,
        steps: g.steps,
    }
}

// ---------------------------------------------------------------------------------------------
// Running a lab

struct LabSpec {
    name: &'static str,
    unreplied: u32,
    stream: u32,
    seeds: Vec<u64>,
}

struct FlowRun {
    idx: usize,
    schedule: Schedule,
    internal: SocketAddrV4,
    sock: UdpSocket,
    public: Option<SocketAddrV4>,
    /// Deadline of the flow's current or last model entry.
    model_deadline: Option<Time>,
    /// From this instant on the flow's model state is ambiguous.
    tainted: Option<(Time, String)>,
    next_seq: u32,
    /// Inbound packets: (seq, sent at, model forwarded it).
    sent_in: Vec<(u32, Time, bool)>,
    /// Outbound packets: (seq, sent at, model's translated source).
    sent_out: Vec<(u32, Time, SocketAddrV4)>,
    received_in: Vec<u32>,
    log: Vec<String>,
    /// Disagreements found, by [`FailKind`].
    failures: [u32; 2],
    /// Kernel state summary at the last checkpoint, to log changes only.
    last_kernel: Option<String>,
}

impl FlowRun {
    fn failed(&self) -> bool {
        self.failures.iter().any(|&n| n > 0)
    }
}

/// What kind of check disagreed (each is capped separately in the report).
#[derive(Clone, Copy, Debug)]
enum FailKind {
    Checkpoint = 0,
    Delivery = 1,
}

#[derive(Default)]
struct Outcome {
    report: String,
    failures: Vec<String>,
    comparisons: u64,
    entry_comparisons: u64,
    /// Entry comparisons where the remaining seconds matched to within 20 ms of slack.
    remaining_exact: u64,
    skips: u64,
    checkpoints: u64,
    /// Kernel entries that belong to no flow (each checkpoint counts them again).
    stray_entries: u64,
    features: BTreeMap<&'static str, u64>,
}

fn model_state(e: &Entry, now: Time) -> String {
    format!(
        "{} {}, remaining {:.3}s (deadline {}), stream_ts {}, seen_reply={}, assured={}",
        if e.is_alive(now) { "alive" } else { "EXPIRED" },
        e.timeout().as_str(),
        e.remaining(now).as_secs_f64(),
        e.deadline(),
        e.stream_ts().map_or("-".into(), |s| s.to_string()),
        e.seen_reply(),
        e.assured(),
    )
}

struct LabRun<'a> {
    spec: &'a LabSpec,
    lab: &'a NetLab,
    origin: Instant,
    nat: Nat,
    flows: Vec<FlowRun>,
    server: UdpSocket,
    remote: SocketAddrV4,
    /// Model flow id → flow index.
    ids: HashMap<FlowId, usize>,
    /// Outbound payloads the server received: (flow, seq) → source.
    at_server: HashMap<(usize, u32), SocketAddrV4>,
    out: Outcome,
}

impl LabRun<'_> {
    fn now(&self) -> Time {
        t(self.origin.elapsed())
    }

    fn log(&mut self, f: usize, line: String) {
        self.flows[f].log.push(line);
    }

    /// Records a disagreement. Each flow's first [`SHOWN_PER_FLOW`] are shown in its timeline and
    /// the summary; later ones (usually the same disagreement again) are only counted.
    fn fail(&mut self, f: usize, kind: FailKind, line: String) {
        let fl = &mut self.flows[f];
        fl.failures[kind as usize] += 1;
        let n = fl.failures[kind as usize];
        if n > SHOWN_PER_FLOW {
            return;
        }
        fl.log.push(format!("  !!! {line}"));
        if n == SHOWN_PER_FLOW {
            fl.log.push(format!(
                "  (further {kind:?} disagreements of this flow are counted, not shown)"
            ));
        }
        self.out.failures.push(format!(
            "[{}] flow {} (seed {:#x}, {:?}): {line}",
            self.spec.name, fl.idx, fl.schedule.seed, fl.schedule.theme
        ));
    }

    fn bump(&mut self, feature: &'static str) {
        *self.out.features.entry(feature).or_default() += 1;
    }

    /// Moves the model's queued events into the flows' logs.
    fn drain_model_events(&mut self) {
        while let Some(ev) = self.nat.poll_event() {
            if let NatEventKind::Created { internal, .. } = ev.kind {
                let f = self
                    .flows
                    .iter()
                    .position(|fl| fl.internal == internal)
                    .expect("known flow");
                self.ids.insert(ev.flow, f);
            }
            let Some(&f) = self.ids.get(&ev.flow) else {
                continue;
            };
            let text = match ev.kind {
                NatEventKind::Created { public, .. } => format!("created, public {public}"),
                NatEventKind::Replied => "first reply".into(),
                NatEventKind::Timeout(k) => format!("timeout -> {}", k.as_str()),
                NatEventKind::Assured => "assured".into(),
                NatEventKind::Expired => "expired".into(),
            };
            self.log(f, format!("  {:>7} model: {text}", ev.at.to_string()));
        }
    }

    fn packet(&mut self, f: usize, dir: Direction) {
        let seq = self.flows[f].next_seq;
        self.flows[f].next_seq += 1;
        let payload = format!("{f}:{seq}");
        let internal = self.flows[f].internal;
        let remote = self.remote;
        // Model state before, for the ambiguity check and the feature counters.
        let before = self
            .nat
            .entry_for_flow(internal, remote)
            .map(|(_, _, e)| e.clone());
        let target = match dir {
            Direction::Original => remote,
            Direction::Reply => self.flows[f].public.expect("outbound first"),
        };
        let first = self.flows[f].sent_out.is_empty() && self.flows[f].sent_in.is_empty();
        let now = self.now();
        let sent = match dir {
            Direction::Original => self.flows[f].sock.send_to(payload.as_bytes(), target),
            Direction::Reply => self.server.send_to(payload.as_bytes(), target),
        };
        if let Err(e) = sent {
            panic!(
                "[{}] flow {f}: send_to {target} failed: {e}",
                self.spec.name
            );
        }

        let alive_before = before.as_ref().filter(|e| e.is_alive(now));
        let mut ambiguous = Vec::new();
        if let Some(d) = self.flows[f].model_deadline {
            if near(now, d, RUN_MARGIN) {
                ambiguous.push(format!("packet {:.3}s from the deadline {d}", {
                    (now.max(d) - now.min(d)).as_secs_f64()
                }));
            }
        }
        if let Some(e) = alive_before {
            let sts = e.stream_ts().expect("conntrack");
            if e.seen_reply() && near(now, sts, RUN_MARGIN) {
                ambiguous.push(format!("packet close to stream_ts {sts}"));
            }
        }
        if !ambiguous.is_empty() && self.flows[f].tainted.is_none() {
            self.flows[f].tainted = Some((now, ambiguous.join(", ")));
        }

        let result = match dir {
            Direction::Original => {
                let public = self.nat.outbound(now, internal, remote);
                self.flows[f].public = Some(public);
                self.flows[f].sent_out.push((seq, now, public));
                format!("-> {remote} as {public}")
            }
            Direction::Reply => {
                let r = self.nat.inbound(now, remote, target);
                self.flows[f].sent_in.push((seq, now, r.is_ok()));
                match r {
                    Ok(to) => format!("to {target} -> {to}"),
                    Err(e) => format!("to {target} DROPPED ({e})"),
                }
            }
        };
        let after = self
            .nat
            .entry_for_flow(internal, remote)
            .map(|(_, _, e)| e.clone());
        if let Some(e) = &after {
            self.flows[f].model_deadline = Some(e.deadline());
        }

        // Feature counters.
        match (alive_before, dir) {
            (None, Direction::Original) if !first => self.bump("re-created"),
            (None, Direction::Reply) => self.bump("inbound to a dead mapping"),
            (Some(e), _) => {
                let sts = e.stream_ts().expect("conntrack");
                if e.timeout() == TimeoutKind::Stream {
                    self.bump("stream refresh");
                } else if e.seen_reply() && now <= sts {
                    self.bump("follow-up within the grace");
                } else if e.seen_reply() {
                    self.bump(if dir == Direction::Original {
                        "promoted by OUT"
                    } else {
                        "promoted by IN"
                    });
                } else if dir == Direction::Reply && now > sts {
                    self.bump("first reply after the grace");
                }
            }
            _ => {}
        }

        self.log(
            f,
            format!(
                "  {:>7} {} #{seq} {result} | model: {}",
                now.to_string(),
                dir_name(dir),
                after.map_or("no entry".into(), |e| model_state(&e, now))
            ),
        );
        if let Some((at, why)) = &self.flows[f].tainted {
            if *at == now {
                let why = why.clone();
                self.log(f, format!("  (ambiguous from here on: {why})"));
            }
        }
        self.drain_model_events();
    }

    fn drain_sockets(&mut self) {
        let mut buf = [0u8; 256];
        for f in 0..self.flows.len() {
            loop {
                match self.flows[f].sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        match text.split_once(':').and_then(|(a, b)| {
                            Some((a.parse::<usize>().ok()?, b.parse::<u32>().ok()?))
                        }) {
                            Some((g, seq)) if g == f => self.flows[f].received_in.push(seq),
                            _ => self.fail(
                                f,
                                FailKind::Delivery,
                                format!("client socket received unexpected {text:?} from {from}"),
                            ),
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("recv on client socket: {e}"),
                }
            }
        }
        loop {
            match self.server.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let parsed = text.split_once(':').and_then(|(a, b)| {
                        Some((a.parse::<usize>().ok()?, b.parse::<u32>().ok()?))
                    });
                    let std::net::SocketAddr::V4(from) = from else {
                        panic!("IPv6 source {from}");
                    };
                    match parsed {
                        Some(key) if key.0 < self.flows.len() => {
                            self.at_server.insert(key, from);
                        }
                        _ => self.out.failures.push(format!(
                            "[{}] server received unexpected {text:?} from {from}",
                            self.spec.name
                        )),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv on server socket: {e}"),
            }
        }
    }

    fn checkpoint(&mut self) {
        let tb = self.now();
        let kernel = self
            .lab
            .conntrack_udp()
            .unwrap_or_else(|e| panic!("[{}] {e:#}", self.spec.name));
        let ta = self.now();
        self.out.checkpoints += 1;
        self.nat.handle_timeout(tb);
        self.drain_model_events();
        self.drain_sockets();

        let mut matched = vec![false; kernel.len()];
        for f in 0..self.flows.len() {
            let internal = self.flows[f].internal;
            let mine: Vec<usize> = kernel
                .iter()
                .enumerate()
                .filter(|(_, k)| k.original_src() == internal && k.original_dst() == self.remote)
                .map(|(i, _)| i)
                .collect();
            for &i in &mine {
                matched[i] = true;
            }
            let k: Option<&CtEntry> = mine.first().map(|&i| &kernel[i]);
            let summary = k.map_or("no entry".to_string(), |k| {
                format!(
                    "{}{}{}",
                    if k.unreplied { "[UNREPLIED] " } else { "" },
                    if k.assured { "[ASSURED] " } else { "" },
                    "entry"
                )
            });
            if self.flows[f].last_kernel.as_deref() != Some(summary.as_str()) {
                let line = k.map_or("no entry".to_string(), |k| k.line.clone());
                self.log(f, format!("  {:>7} kernel: {line}", tb.to_string()));
                self.flows[f].last_kernel = Some(summary);
            }

            if self.flows[f].tainted.is_some() {
                self.out.skips += 1;
                continue;
            }
            if let Some(d) = self.flows[f].model_deadline {
                if d + CHECK_MARGIN > tb && d < ta + CHECK_MARGIN {
                    self.out.skips += 1;
                    continue;
                }
            }
            self.out.comparisons += 1;
            let model = self
                .nat
                .entry_for_flow(internal, self.remote)
                .map(|(_, public, e)| (public, e.clone()))
                .filter(|(_, e)| e.is_alive(tb));
            let when = format!("checkpoint [{tb}, {ta}]");
            if mine.len() > 1 {
                let lines: Vec<&str> = mine.iter().map(|&i| kernel[i].line.as_str()).collect();
                self.fail(
                    f,
                    FailKind::Checkpoint,
                    format!("{when}: several kernel entries: {lines:#?}"),
                );
                continue;
            }
            match (k, model) {
                (None, None) => {}
                (Some(k), None) => {
                    self.fail(
                        f,
                        FailKind::Checkpoint,
                        format!("{when}: kernel has an entry, the model none\n      kernel: {k}"),
                    );
                }
                (None, Some((_, e))) => {
                    let state = model_state(&e, tb);
                    self.fail(
                        f,
                        FailKind::Checkpoint,
                        format!("{when}: kernel has no entry, model: {state}"),
                    );
                }
                (Some(k), Some((public, e))) => {
                    self.out.entry_comparisons += 1;
                    let mut bad = Vec::new();
                    if k.assured != e.assured() {
                        bad.push(format!(
                            "assured: kernel {} model {}",
                            k.assured,
                            e.assured()
                        ));
                    }
                    if k.unreplied == e.seen_reply() {
                        bad.push(format!(
                            "unreplied: kernel {} model seen_reply {}",
                            k.unreplied,
                            e.seen_reply()
                        ));
                    }
                    if k.public() != public {
                        bad.push(format!("public: kernel {} model {public}", k.public()));
                    }
                    let lo = e.remaining(ta).as_secs().saturating_sub(1);
                    let hi = e.remaining(tb).as_secs() + 1;
                    // Without jitter the kernel's truncated seconds are exactly this (jiffies
                    // lag by up to 1/HZ); counted, not asserted.
                    let exact_lo = e.remaining(ta).saturating_sub(ms(20)).as_secs();
                    let exact_hi = (e.remaining(tb) + ms(20)).as_secs();
                    if (exact_lo..=exact_hi).contains(&k.remaining_secs) {
                        self.out.remaining_exact += 1;
                    }
                    if !(lo..=hi).contains(&k.remaining_secs) {
                        bad.push(format!(
                            "remaining: kernel {} s, model {:.3}..{:.3} s (accepting {lo}..={hi})",
                            k.remaining_secs,
                            e.remaining(ta).as_secs_f64(),
                            e.remaining(tb).as_secs_f64()
                        ));
                    }
                    if !bad.is_empty() {
                        let state = model_state(&e, tb);
                        self.fail(
                            f,
                            FailKind::Checkpoint,
                            format!(
                                "{when}: {}\n      kernel: {k}\n      model:  {state}",
                                bad.join("; ")
                            ),
                        );
                    }
                }
            }
        }
        for (i, k) in kernel.iter().enumerate() {
            if !matched[i] {
                self.out.stray_entries += 1;
                if self.out.stray_entries > u64::from(SHOWN_PER_FLOW) {
                    continue;
                }
                self.out.failures.push(format!(
                    "[{}] checkpoint [{tb}, {ta}]: kernel entry of no flow (created by an inbound \
                     packet?): {k}",
                    self.spec.name
                ));
            }
        }
    }

    /// After the run: deliveries inbound and outbound.
    fn check_deliveries(&mut self) {
        for f in 0..self.flows.len() {
            let taint_at = self.flows[f].tainted.as_ref().map(|(at, _)| *at);
            let received: HashSet<u32> = self.flows[f].received_in.iter().copied().collect();
            let sent_in = self.flows[f].sent_in.clone();
            for (seq, at, pass) in sent_in {
                if taint_at.is_some_and(|ta| at >= ta) {
                    continue;
                }
                let got = received.contains(&seq);
                self.bump(if pass {
                    "inbound forwarded"
                } else {
                    "inbound dropped"
                });
                if got != pass {
                    self.fail(
                        f,
                        FailKind::Delivery,
                        format!(
                            "inbound #{seq} sent at {at}: model {} it, but the client {}",
                            if pass { "forwarded" } else { "dropped" },
                            if got {
                                "received it"
                            } else {
                                "never received it"
                            }
                        ),
                    );
                }
            }
            let sent_out = self.flows[f].sent_out.clone();
            for (seq, at, public) in sent_out {
                match self.at_server.get(&(f, seq)).copied() {
                    None => self.fail(
                        f,
                        FailKind::Delivery,
                        format!("outbound #{seq} sent at {at} never arrived"),
                    ),
                    Some(src) if src != public && taint_at.is_none_or(|ta| at < ta) => self.fail(
                        f,
                        FailKind::Delivery,
                        format!("outbound #{seq} sent at {at} arrived from {src}, model {public}"),
                    ),
                    Some(_) => {}
                }
            }
        }
    }
}

fn run_lab(spec: &LabSpec) -> Outcome {
    let profile = Profile::conntrack(
        Duration::from_secs(spec.unreplied.into()),
        Duration::from_secs(spec.stream.into()),
        GRACE,
    );
    let lab = NetLab::new(LabConfig::new(spec.unreplied, spec.stream))
        .unwrap_or_else(|e| panic!("[{}] lab setup: {e:#}", spec.name));
    let remote = SocketAddrV4::new(lab.server_ip(), SERVER_PORT);
    let server = lab.udp_socket(Ns::Server, remote).expect("server socket");
    server.set_nonblocking(true).unwrap();

    let mut flows = Vec::new();
    for (idx, &seed) in spec.seeds.iter().enumerate() {
        let internal = SocketAddrV4::new(lab.client_ip(), CLIENT_PORT_BASE + idx as u16);
        let theme = THEMES[idx % THEMES.len()];
        let flip = (idx / THEMES.len()) % 2 == 1;
        let schedule = generate(seed, theme, flip, profile, internal, remote);
        let sock = lab.udp_socket(Ns::Client, internal).expect("client socket");
        sock.set_nonblocking(true).unwrap();
        flows.push(FlowRun {
            idx,
            schedule,
            internal,
            sock,
            public: None,
            model_deadline: None,
            tainted: None,
            next_seq: 0,
            sent_in: Vec::new(),
            sent_out: Vec::new(),
            received_in: Vec::new(),
            log: Vec::new(),
            failures: [0; 2],
            last_kernel: None,
        });
    }

    // The merged plan: every flow's packets and the periodic checkpoints.
    enum Ev {
        Packet(usize, Direction),
        Check,
    }
    let mut plan: Vec<(Duration, u8, Ev)> = Vec::new();
    for (f, fl) in flows.iter().enumerate() {
        for &(at, dir) in &fl.schedule.steps {
            plan.push((at, 0, Ev::Packet(f, dir)));
        }
    }
    let last_packet = plan.iter().map(|p| p.0).max().unwrap_or_default();
    let mut c = ms(250);
    while c < last_packet + ms(1200) {
        plan.push((c, 1, Ev::Check));
        c += CHECK_EVERY;
    }
    plan.sort_by_key(|p| (p.0, p.1));

    let mut run = LabRun {
        spec,
        lab: &lab,
        origin: Instant::now(),
        nat: Nat::new(profile, lab.router_public_ip()),
        flows,
        server,
        remote,
        ids: HashMap::new(),
        at_server: HashMap::new(),
        out: Outcome::default(),
    };
    for (at, _, ev) in plan {
        let wait = at.saturating_sub(run.origin.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        match ev {
            Ev::Packet(f, dir) => run.packet(f, dir),
            Ev::Check => run.checkpoint(),
        }
    }
    std::thread::sleep(ms(200));
    run.checkpoint();
    run.drain_sockets();
    run.check_deliveries();
    let elapsed = run.origin.elapsed();

    // The report: a summary line per flow, the full timeline of failed ones.
    let mut r = String::new();
    let _ = writeln!(
        r,
        "== lab {} (udp_timeout {} s, stream {} s): {:.1} s, {} checkpoints, {} comparisons \
         ({} with both entries present, {} of them with the exact remaining seconds), {} skipped, \
         {} kernel entries of no flow",
        spec.name,
        spec.unreplied,
        spec.stream,
        elapsed.as_secs_f64(),
        run.out.checkpoints,
        run.out.comparisons,
        run.out.entry_comparisons,
        run.out.remaining_exact,
        run.out.skips,
        run.out.stray_entries
    );
    for fl in &run.flows {
        let _ = writeln!(
            r,
            "   flow {:>2} seed {:#x} {:<16} {:>2} packets{}{}",
            fl.idx,
            fl.schedule.seed,
            format!("{:?}", fl.schedule.theme),
            fl.schedule.steps.len(),
            if fl.tainted.is_some() {
                " (ambiguous timing, partly skipped)"
            } else {
                ""
            },
            if fl.failed() {
                format!(
                    "  FAILED ({} at checkpoints, {} in deliveries)",
                    fl.failures[0], fl.failures[1]
                )
            } else {
                String::new()
            }
        );
    }
    for fl in run.flows.iter().filter(|fl| fl.failed()) {
        let _ = writeln!(
            r,
            "\n-- lab {} flow {} seed {:#x} theme {:?}, client {}, server {}; times in s since the \
             lab's origin",
            spec.name,
            fl.idx,
            fl.schedule.seed,
            fl.schedule.theme,
            fl.internal,
            remote
        );
        for line in &fl.log {
            let _ = writeln!(r, "{line}");
        }
    }
    run.out.report = r;
    let out = std::mem::take(&mut run.out);
    drop(run);
    drop(lab);
    out
}

fn base_seed() -> u64 {
    match std::env::var("WGKEEP_DIFF_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("WGKEEP_DIFF_SEED={s}: {e}"))
        }
        Err(_) => DEFAULT_BASE_SEED,
    }
}

#[test]
fn kernel_conntrack_matches_the_model() {
    if !wgkeep_tests::require_root("differential") {
        return;
    }
    let base = base_seed();
    let specs = [
        LabSpec {
            name: "routeros-10s-180s",
            unreplied: 10,
            stream: 180,
            seeds: (0..FLOWS_PER_LAB as u64).map(|i| base + i).collect(),
        },
        LabSpec {
            name: "short-4s-12s",
            unreplied: 4,
            stream: 12,
            seeds: (0..FLOWS_PER_LAB as u64).map(|i| base + 1000 + i).collect(),
        },
    ];
    eprintln!("differential: base seed {base:#x} (WGKEEP_DIFF_SEED to change)");
    for s in &specs {
        let seeds: Vec<String> = s.seeds.iter().map(|x| format!("{x:#x}")).collect();
        eprintln!("  {}: seeds {}", s.name, seeds.join(" "));
    }
    let started = Instant::now();
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| scope.spawn(move || run_lab(spec)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });

    let mut features: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut comparisons, mut exact, mut skips, mut failures) = (0, 0, 0, Vec::new());
    for o in &outcomes {
        eprintln!("{}", o.report);
        comparisons += o.comparisons;
        exact += o.remaining_exact;
        skips += o.skips;
        failures.extend(o.failures.iter().cloned());
        for (k, v) in &o.features {
            *features.entry(k).or_default() += v;
        }
    }
    eprintln!(
        "differential: {:.1} s wall, {comparisons} comparisons ({exact} with the exact remaining \
         seconds), {skips} skipped; exercised: {features:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "kernel and model disagree ({} findings, base seed {base:#x}):\n{}\n(timelines above)",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        skips * 20 <= comparisons,
        "too many skipped comparisons: {skips} of {}",
        comparisons + skips
    );
    for feature in [
        "follow-up within the grace",
        "promoted by OUT",
        "promoted by IN",
        "first reply after the grace",
        "stream refresh",
        "re-created",
        "inbound dropped",
        "inbound forwarded",
    ] {
        assert!(
            features.get(feature).copied().unwrap_or(0) > 0,
            "no schedule exercised {feature:?}: {features:?}"
        );
    }
}
