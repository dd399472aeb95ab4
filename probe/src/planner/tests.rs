//! The planner and the reflector through the conntrack / pf model, in virtual time.
//!
//! A small discrete-event network: client sockets (172.16.0.2) — the masquerading [`Nat`]
//! (public 198.51.100.1, 1 ms from the client) — the sans-IO [`Reflector`] (198.51.100.2,
//! 10 ms from the NAT). The true timeouts come from replaying each pattern on a model
//! [`Entry`], so the tests do not restate the rules they check.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::*;
use crate::middlebox::{Direction, Entry, Nat, PfTimeouts, Profile, ProfileName, Rules};
use crate::reflector::{Limits, Reflector, ReflectorConfig};

const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const REFLECTOR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 51900);
const CLIENT_NAT: Duration = Duration::from_millis(1);
const NAT_REFLECTOR: Duration = Duration::from_millis(10);

enum Hop {
    /// From a client socket (by local port) into the NAT.
    Out { port: u16, data: Vec<u8> },
    /// Translated, arriving at the reflector.
    AtReflector { src: SocketAddrV4, data: Vec<u8> },
    /// From the reflector, arriving at the NAT's public side.
    In { dst: SocketAddrV4, data: Vec<u8> },
    /// Delivered to a client socket.
    AtClient { port: u16, data: Vec<u8> },
}

pub(crate) struct World {
    pub now: Time,
    pub planner: Planner,
    pub reflector: Reflector,
    pub nat: Nat,
    queue: BTreeMap<(Time, u64), Hop>,
    seq: u64,
    ports: HashMap<SocketId, u16>,
    sockets: HashMap<u16, SocketId>,
    /// When the planner reached the reflector (its searches start then).
    pub peak_open: usize,
}

impl World {
    pub fn new(profile: Profile, config: PlannerConfig, reflector_key: Key, seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let reflector = Reflector::new(
            ReflectorConfig {
                key: reflector_key,
                limits: Limits::default(),
            },
            Time::ZERO,
            rng.gen(),
        );
        World {
            now: Time::ZERO,
            planner: Planner::new(config, Time::ZERO, rng.gen()),
            reflector,
            nat: Nat::new(profile, PUBLIC).without_events(),
            queue: BTreeMap::new(),
            seq: 0,
            ports: HashMap::new(),
            sockets: HashMap::new(),
            peak_open: 0,
        }
    }

    fn push(&mut self, at: Time, hop: Hop) {
        self.seq += 1;
        self.queue.insert((at, self.seq), hop);
    }

    fn flush(&mut self) {
        while let Some(ev) = self.planner.poll_event() {
            match ev {
                Event::Open(id) => {
                    let port = 20_000 + id.0 as u16;
                    self.ports.insert(id, port);
                    self.sockets.insert(port, id);
                    self.peak_open = self.peak_open.max(self.ports.len());
                }
                Event::Close(id) => {
                    if let Some(port) = self.ports.remove(&id) {
                        self.sockets.remove(&port);
                    }
                }
            }
        }
        while let Some(t) = self.planner.poll_transmit() {
            let port = self.ports[&t.socket];
            self.push(
                self.now + CLIENT_NAT,
                Hop::Out {
                    port,
                    data: t.payload,
                },
            );
        }
        while let Some(t) = self.reflector.poll_transmit() {
            let SocketAddr::V4(dst) = t.dst else {
                panic!("IPv4 only here")
            };
            let data = t.payload().to_vec();
            self.push(self.now + NAT_REFLECTOR, Hop::In { dst, data });
        }
    }

    fn deliver(&mut self, hop: Hop) {
        match hop {
            Hop::Out { port, data } => {
                let public =
                    self.nat
                        .outbound(self.now, SocketAddrV4::new(CLIENT, port), REFLECTOR);
                self.push(
                    self.now + NAT_REFLECTOR,
                    Hop::AtReflector { src: public, data },
                );
            }
            Hop::AtReflector { src, data } => {
                self.reflector
                    .handle_input(self.now, SocketAddr::V4(src), &data);
            }
            Hop::In { dst, data } => {
                if let Ok(internal) = self.nat.inbound(self.now, REFLECTOR, dst) {
                    self.push(
                        self.now + CLIENT_NAT,
                        Hop::AtClient {
                            port: internal.port(),
                            data,
                        },
                    );
                }
            }
            Hop::AtClient { port, data } => {
                if let Some(&socket) = self.sockets.get(&port) {
                    self.planner.handle_input(self.now, socket, &data);
                }
            }
        }
    }

    /// Run until the planner is done (or `limit` of virtual time).
    pub fn run(&mut self, limit: Duration) {
        let end = Time::ZERO + limit;
        loop {
            self.flush();
            if self.planner.is_done() || self.now > end {
                return;
            }
            let next = [
                self.queue.keys().next().map(|k| k.0),
                self.planner.poll_timeout(),
                self.reflector.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("something is always pending");
            assert!(next >= self.now, "time runs forward");
            self.now = next;
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let hop = entry.remove();
                self.deliver(hop);
                self.flush();
            }
            if self.reflector.poll_timeout().is_some_and(|t| t <= self.now) {
                self.reflector.handle_timeout(self.now);
            }
            if self.planner.poll_timeout().is_some_and(|t| t <= self.now) {
                self.planner.handle_timeout(self.now);
            }
        }
    }
}

/// The true timeout of each pattern, replayed on a model entry with the simulated timing.
#[derive(Debug)]
struct Truth {
    handshake: f64,
    stream: f64,
    unreplied: f64,
    grace: Option<f64>,
}

fn truth(rules: Rules) -> Truth {
    let t0 = Time::from_secs(100);
    // `t0`: the Init passes the NAT; the Response passes it one NAT–reflector round trip
    // later, the confirming Follow one client–NAT round trip after that.
    let rtt = NAT_REFLECTOR * 2 + CLIENT_NAT * 2;
    let replied = |e: &mut Entry| {
        e.on_packet(t0 + NAT_REFLECTOR * 2, Direction::Reply);
        e.on_packet(t0 + rtt, Direction::Original);
    };
    let mut h = Entry::new(rules, t0);
    replied(&mut h);
    let handshake = (h.deadline() - (t0 + rtt)).as_secs_f64();
    let mut s = Entry::new(rules, t0);
    replied(&mut s);
    s.on_packet(t0 + STREAM_FOLLOW_UP, Direction::Original);
    let stream = (s.deadline() - (t0 + STREAM_FOLLOW_UP)).as_secs_f64();
    let unreplied = (Entry::new(rules, t0).deadline() - t0).as_secs_f64();
    let grace = rules.conntrack().map(|c| c.grace.as_secs_f64());
    Truth {
        handshake,
        stream,
        unreplied,
        grace,
    }
}

fn check(label: &str, r: &Report, t: &Truth, bound: f64) {
    let within = |name: &str, b: &Option<Bracket>, v: f64, width: f64| {
        let b = b.unwrap_or_else(|| panic!("{label}: {name} not measured: {r:#?}"));
        let hi = b
            .high_s
            .unwrap_or_else(|| panic!("{label}: {name} has no upper bound: {b:?}"));
        assert!(
            b.low_s < v && v <= hi,
            "{label}: {name} = {v} not in ({}, {hi}]",
            b.low_s
        );
        assert!(
            hi - b.low_s <= width + 1e-9,
            "{label}: {name} bracket ({}, {hi}] wider than {width}",
            b.low_s
        );
    };
    within("handshake", &r.handshake, t.handshake, 1.0);
    within("stream", &r.stream, t.stream, 1.0);
    within("unreplied", &r.unreplied, t.unreplied, 1.0);
    match t.grace {
        Some(g) if t.stream > t.handshake + 1.0 => within("grace", &r.grace, g, 0.25),
        _ => assert_eq!(r.grace, None, "{label}: no promotion to see"),
    }
    assert_eq!(r.inbound_refresh, Some(true), "{label}: refresh");
    // The bound is about the handshake, stream and grace answers; unreplied and refresh come
    // later only when the short timeouts are nearly as long as the stream timeout.
    let bounded = [Pattern::Handshake, Pattern::Stream, Pattern::Grace]
        .iter()
        .filter_map(|p| r.finished_s.get(p))
        .fold(0.0_f64, |a, b| a.max(*b));
    assert!(
        bounded <= bound,
        "{label}: handshake, stream and grace took {bounded} s, bound {bound} s: {:?}",
        r.finished_s
    );
    assert!(r.sockets_used <= 256, "{label}: {} sockets", r.sockets_used);
}

fn probe(profile: Profile, seed: u64) -> (Report, World) {
    let mut w = World::new(profile, PlannerConfig::new("sim"), Key::public(), seed);
    w.run(Duration::from_secs(3600));
    assert!(w.planner.is_done(), "finished");
    assert_eq!(w.planner.error(), None);
    (w.planner.report(w.now), w)
}

#[test]
fn routeros_10_180() {
    let profile = Profile::conntrack(
        Duration::from_secs(10),
        Duration::from_secs(180),
        Duration::from_secs(2),
    );
    let t = truth(profile.rules);
    let (r, w) = probe(profile, 1);
    check("routeros", &r, &t, 1.25 * 180.0 + 10.0);
    assert_eq!(r.recommendation.persistent_keepalive_s, 143);
    assert_eq!(
        r.recommendation.persistent_keepalive_without_agent_s,
        Some(7)
    );
    assert_eq!(r.recommendation.follow_up_delay_s, 2.5);
    // The reflector sent no more than it received, from the one public address there is.
    let s = w.reflector.stats();
    assert!(s.sent_bytes <= s.received_bytes, "{s:?}");
}

#[test]
fn linux_defaults() {
    let profile = Profile::linux();
    let t = truth(profile.rules);
    let (r, _) = probe(profile, 2);
    check("linux", &r, &t, 1.25 * 120.0 + 10.0);
}

#[test]
fn dozens_of_random_conntrack_settings() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for i in 0..24 {
        let u = rng.gen_range(3.0..60.0_f64);
        let s = rng.gen_range(u + 5.0..300.0_f64);
        let g = rng.gen_range(0.6..2.3_f64);
        let profile = Profile::conntrack(
            Duration::from_secs_f64(u),
            Duration::from_secs_f64(s),
            Duration::from_secs_f64(g),
        );
        let t = truth(profile.rules);
        let (r, _) = probe(profile, 100 + i);
        check(
            &format!("conntrack #{i} u={u:.3} s={s:.3} g={g:.3}"),
            &r,
            &t,
            1.25 * t.stream + 10.0,
        );
    }
}

#[test]
fn dozens_of_random_pf_settings() {
    let mut rng = StdRng::seed_from_u64(0xbf);
    for i in 0..12 {
        let first = rng.gen_range(10.0..120.0_f64);
        let single = rng.gen_range(10.0..60.0_f64);
        let multiple = rng.gen_range(20.0..300.0_f64);
        let profile = Profile {
            name: ProfileName::Custom,
            rules: Rules::Pf(PfTimeouts {
                first: Duration::from_secs_f64(first),
                single: Duration::from_secs_f64(single),
                multiple: Duration::from_secs_f64(multiple),
            }),
        };
        let t = truth(profile.rules);
        let (r, _) = probe(profile, 200 + i);
        let longest = t.stream.max(t.handshake);
        check(
            &format!("pf #{i} first={first:.1} single={single:.1} multiple={multiple:.1}"),
            &r,
            &t,
            1.25 * longest + 10.0,
        );
    }
}

#[test]
fn serial_bisection_agrees_and_is_slower() {
    let profile = Profile::conntrack(
        Duration::from_secs(10),
        Duration::from_secs(60),
        Duration::from_secs(2),
    );
    let t = truth(profile.rules);
    let mut config = PlannerConfig::new("sim");
    config.strategy = Strategy::Serial;
    config.measure = Measure {
        handshake: true,
        stream: true,
        unreplied: false,
        grace: false,
        refresh: false,
    };
    let mut w = World::new(profile, config, Key::public(), 9);
    w.run(Duration::from_secs(24 * 3600));
    let serial = w.planner.report(w.now);
    let s = serial.stream.unwrap();
    assert!(s.low_s < t.stream && t.stream <= s.high_s.unwrap());
    let (parallel, _) = probe(profile, 9);
    assert!(
        serial.duration_s > 4.0 * parallel.duration_s,
        "serial {} s, parallel {} s",
        serial.duration_s,
        parallel.duration_s
    );
}

#[test]
fn an_unreachable_reflector_is_an_error_after_five_seconds() {
    let mut p = Planner::new(PlannerConfig::new("x"), Time::ZERO, [1; 32]);
    let mut now = Time::ZERO;
    while let Some(t) = p.poll_timeout() {
        now = t;
        p.handle_timeout(now);
    }
    assert!(matches!(p.error(), Some(ProbeError::Unreachable { .. })));
    assert_eq!(now, Time::from_secs(5));
    let pings = std::iter::from_fn(|| p.poll_transmit()).count();
    assert_eq!(pings, 5);
}

#[test]
fn a_wrong_psk_gets_nothing_and_says_what_to_check() {
    let mut config = PlannerConfig::new("sim");
    config.key = Key::from_psk(b"0123456789abcdef0123456789abcdef").unwrap();
    let mut w = World::new(Profile::linux(), config, Key::public(), 3);
    w.run(Duration::from_secs(60));
    let err = w.planner.error().expect("fails").to_string();
    assert!(err.contains("--psk-file"), "{err}");
    assert_eq!(w.reflector.stats().sent_packets, 0);
}

#[test]
fn a_timeout_above_max_has_no_upper_bound() {
    let profile = Profile::conntrack(
        Duration::from_secs(10),
        Duration::from_secs(300),
        Duration::from_secs(2),
    );
    let mut config = PlannerConfig::new("sim");
    config.max = Duration::from_secs(60);
    let mut w = World::new(profile, config, Key::public(), 4);
    w.run(Duration::from_secs(3600));
    let r = w.planner.report(w.now);
    assert_eq!(r.stream.unwrap().high_s, None);
    assert_eq!(r.stream.unwrap().low_s, 60.0);
    assert!(r.duration_s < 1.25 * 60.0 + 10.0, "{}", r.duration_s);
}
