//! One lab run: two boringtun peers, the client behind the NAT stage, in virtual time.
//!
//! A small discrete-event loop. Every 250 ms of virtual time both peers' `update_timers` run (as
//! boringtun's own device does); datagrams take half the RTT to cross; the NAT sits at the
//! client's end of the path (outbound translated when sent, inbound checked when it arrives). The
//! NAT's expiries and the keeper's timers are events too, so between two events nothing changes
//! and reachability is integrated exactly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use wgkeep_probe::middlebox::{Nat, NatEventKind};
use wgkeep_probe::Time;

use super::clock::VirtualClock;
use super::traffic::{self, Dir, RandomTraffic};
use super::{LabConfig, Peaks, RunReport, TimelineEntry};
use crate::keeper::{keepalive_advice, Action, Keeper, KeeperConfig, KeeperEvent, Side, Traffic};

/// boringtun's device calls `update_timers` every 250 ms.
pub const TIMER_TICK: Duration = Duration::from_millis(250);
/// An inbound data packet counts as delivered when it arrives within REKEY_TIMEOUT (5 s,
/// whitepaper §6.1) of being sent; later it was queued behind a new handshake.
const DELIVERY_WINDOW: Duration = Duration::from_secs(5);
/// The largest datagram the lab produces (handshake initiation 148 B; data 32 B + padded inner).
const BUF: usize = 2048;

const CLIENT_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 2), 51820);
const SERVER_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 51820);
const NAT_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const CLIENT_TUNNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const SERVER_TUNNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Client,
    Server,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
    fn side(self) -> Side {
        match self {
            Role::Client => Side::Client,
            Role::Server => Side::Server,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Both peers' `update_timers`.
    Tick,
    /// A datagram reaches the server (already translated by the NAT).
    AtServer { src: SocketAddrV4, data: Vec<u8> },
    /// A datagram from the server reaches the NAT.
    AtNat { dst: SocketAddrV4, data: Vec<u8> },
    /// The server sends one data packet to the client (`--inbound-every`).
    Inbound,
    /// One data packet of a random burst (`--random-traffic`), of `size` bytes inside the tunnel.
    Data { dir: Dir, size: usize },
    /// The next random burst starts.
    Burst,
}

struct Peer {
    tunn: Tunn,
    keeper: Option<Keeper>,
    packets: u64,
    bytes: u64,
    handshakes: u64,
}

/// What a WireGuard datagram is, from its type byte and length.
fn describe(data: &[u8]) -> &'static str {
    match (data.first(), data.len()) {
        (Some(1), _) => "handshake initiation",
        (Some(2), _) => "handshake response",
        (Some(3), _) => "cookie reply",
        (Some(4), 32) => "keepalive",
        (Some(4), _) => "data",
        _ => "unknown",
    }
}

/// A minimal IPv4/UDP packet of `size` bytes (at least 32) to the discard port, carrying `seq`:
/// server → client for [`Dir::Inbound`], client → server for [`Dir::Outbound`].
fn data_packet(dir: Dir, seq: u32, size: usize) -> Vec<u8> {
    let size = size.max(traffic::MIN_SIZE);
    let (src, dst) = match dir {
        Dir::Inbound => (SERVER_TUNNEL_IP, CLIENT_TUNNEL_IP),
        Dir::Outbound => (CLIENT_TUNNEL_IP, SERVER_TUNNEL_IP),
    };
    let mut p = vec![0u8; size];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&9u16.to_be_bytes());
    p[22..24].copy_from_slice(&9u16.to_be_bytes());
    p[24..26].copy_from_slice(&((size - 20) as u16).to_be_bytes());
    p[28..32].copy_from_slice(&seq.to_be_bytes());
    p
}

/// The datagram boringtun wants sent, if any.
fn to_network(r: TunnResult<'_>) -> Option<Vec<u8>> {
    match r {
        TunnResult::WriteToNetwork(p) => Some(p.to_vec()),
        _ => None,
    }
}

/// The sequence number of one of the lab's data packets (UDP to port 9).
fn data_seq(p: &[u8]) -> Option<u32> {
    (p.len() >= traffic::MIN_SIZE && p[9] == 17 && p[22..24] == 9u16.to_be_bytes())
        .then(|| u32::from_be_bytes([p[28], p[29], p[30], p[31]]))
}

struct Sim<'a> {
    cfg: &'a LabConfig,
    clock: VirtualClock,
    end: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64, Event)>>,
    nat: Nat,
    client: Peer,
    server: Peer,
    /// The server's idea of the client's endpoint: the source of the last authenticated packet.
    endpoint: Option<SocketAddrV4>,
    first_handshake: Option<Time>,
    reachable: Duration,
    inbound_sent: u64,
    /// Inbound packets sent within the last DELIVERY_WINDOW, oldest first: one that arrives and
    /// is no longer here is late. Bounded by the send rate, whatever the duration.
    inbound_recent: VecDeque<(u32, Time)>,
    inbound_delivered: u64,
    inbound_late: u64,
    inbound_rejected: u64,
    outbound_sent: u64,
    outbound_delivered: u64,
    outbound_rejected: u64,
    client_received: u64,
    random: Option<RandomTraffic>,
    burst: Vec<traffic::Packet>,
    peak: Peaks,
    timeline: Vec<TimelineEntry>,
    buf: Vec<u8>,
}

/// Run one scenario.
pub fn run(cfg: &LabConfig, keeper_side: Option<Side>) -> RunReport {
    let client_secret = StaticSecret::from([0x11; 32]);
    let server_secret = StaticSecret::from([0x22; 32]);
    let client_public = PublicKey::from(&client_secret);
    let server_public = PublicKey::from(&server_secret);

    let keeper_for = |role: Role| -> Option<Keeper> {
        (keeper_side == Some(role.side()))
            .then(|| Keeper::new(KeeperConfig::new(cfg.profile.rules, role.side())))
    };
    // The keeper runs with a PersistentKeepalive the NAT can sustain (on its own side only).
    let client_pk = match keeper_side {
        Some(Side::Client) => keepalive_advice(&cfg.profile.rules, cfg.keepalive).effective,
        _ => cfg.keepalive,
    };
    let clock = VirtualClock::start();
    let client = Peer {
        tunn: Tunn::new(client_secret, server_public, None, client_pk, 1, None),
        keeper: keeper_for(Role::Client),
        packets: 0,
        bytes: 0,
        handshakes: 0,
    };
    let server = Peer {
        tunn: Tunn::new(server_secret, client_public, None, None, 2, None),
        keeper: keeper_for(Role::Server),
        packets: 0,
        bytes: 0,
        handshakes: 0,
    };
    let mut nat = Nat::new(cfg.profile, NAT_PUBLIC);
    if !cfg.timeline {
        nat = nat.without_events();
    }
    let mut sim = Sim {
        cfg,
        clock,
        end: Time::ZERO + cfg.duration,
        seq: 0,
        queue: BinaryHeap::new(),
        nat,
        client,
        server,
        endpoint: None,
        first_handshake: None,
        reachable: Duration::ZERO,
        inbound_sent: 0,
        inbound_recent: VecDeque::new(),
        inbound_delivered: 0,
        inbound_late: 0,
        inbound_rejected: 0,
        outbound_sent: 0,
        outbound_delivered: 0,
        outbound_rejected: 0,
        client_received: 0,
        random: cfg.random_traffic.map(RandomTraffic::new),
        burst: Vec::new(),
        peak: Peaks::default(),
        timeline: Vec::new(),
        buf: vec![0u8; BUF],
    };
    sim.main_loop();
    let duration_h = cfg.duration.as_secs_f64() / 3600.0;
    let observed = sim.first_handshake.map_or(Duration::ZERO, |t| sim.end - t);
    let keeper_stats = sim
        .client
        .keeper
        .as_ref()
        .or(sim.server.keeper.as_ref())
        .map(Keeper::stats)
        .unwrap_or_default();
    let packets = sim.client.packets + sim.server.packets;
    let bytes = sim.client.bytes + sim.server.bytes;
    RunReport {
        keeper: keeper_side.is_some(),
        side: keeper_side,
        client_keepalive: client_pk,
        reachability: if observed.is_zero() {
            0.0
        } else {
            sim.reachable.as_secs_f64() / observed.as_secs_f64()
        },
        first_handshake_s: sim.first_handshake.map(Time::as_secs_f64),
        inbound_sent: sim.inbound_sent,
        inbound_delivered: sim.inbound_delivered,
        inbound_late: sim.inbound_late,
        inbound_rejected: sim.inbound_rejected,
        outbound_sent: sim.outbound_sent,
        outbound_delivered: sim.outbound_delivered,
        outbound_rejected: sim.outbound_rejected,
        packets,
        bytes,
        packets_per_hour: packets as f64 / duration_h,
        bytes_per_hour: bytes as f64 / duration_h,
        client_packets: sim.client.packets,
        client_bytes: sim.client.bytes,
        client_received: sim.client_received,
        client_packets_per_hour: sim.client.packets as f64 / duration_h,
        client_bytes_per_hour: sim.client.bytes as f64 / duration_h,
        nat_entries_created: sim.nat.stats().created,
        nat_dropped_inbound: sim.nat.stats().dropped_inbound,
        handshakes: sim.client.handshakes,
        keeper_stats,
        peak: sim.peak,
        timeline: sim.timeline,
    }
}

impl Sim<'_> {
    fn now(&self) -> Time {
        self.clock.now()
    }

    fn schedule(&mut self, at: Time, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    fn note(&mut self, source: &'static str, event: String, bytes: Option<usize>) {
        if self.cfg.timeline {
            self.timeline.push(TimelineEntry {
                t: self.now().as_secs_f64(),
                source,
                event,
                bytes,
            });
        }
    }

    fn main_loop(&mut self) {
        // Like `wg-quick up` with PersistentKeepalive: the client speaks first.
        self.schedule(Time::ZERO, Event::Tick);
        if let Some(p) = self.with_tunn(Role::Client, |t, buf| to_network(t.encapsulate(&[], buf)))
        {
            self.transmit(Role::Client, p);
        }
        loop {
            let next = [
                self.queue.peek().map(|Reverse((t, _, _))| *t),
                self.nat.poll_timeout(),
                self.client.keeper.as_ref().and_then(Keeper::poll_timeout),
                self.server.keeper.as_ref().and_then(Keeper::poll_timeout),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { break };
            let next = next.max(self.now());
            self.account(next.min(self.end));
            if next >= self.end {
                break;
            }
            self.clock.advance_to(next);
            self.step();
            self.peak.event_queue = self.peak.event_queue.max(self.queue.len());
            self.peak.nat_entries = self.peak.nat_entries.max(self.nat.len());
            self.peak.inbound_in_flight =
                self.peak.inbound_in_flight.max(self.inbound_recent.len());
        }
        self.drain_nat_events();
    }

    /// Reachability over `[now, until)`: the NAT state does not change in between.
    fn account(&mut self, until: Time) {
        let now = self.now();
        let Some(first) = self.first_handshake else {
            return;
        };
        let from = now.max(first);
        if until <= from {
            return;
        }
        if let Some(ep) = self.endpoint {
            if self.nat.would_pass_inbound(now, SERVER_ADDR, ep) {
                self.reachable += until - from;
            }
        }
    }

    fn step(&mut self) {
        let now = self.now();
        self.nat.handle_timeout(now);
        self.drain_nat_events();
        while let Some(Reverse((t, _, _))) = self.queue.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, _, ev))) = self.queue.pop() else {
                break;
            };
            self.handle(ev);
        }
        for role in [Role::Client, Role::Server] {
            self.run_keeper(role);
        }
        self.drain_nat_events();
    }

    fn handle(&mut self, ev: Event) {
        let now = self.now();
        match ev {
            Event::Tick => {
                for role in [Role::Client, Role::Server] {
                    if let Some(p) = self.with_tunn(role, |t, buf| to_network(t.update_timers(buf)))
                    {
                        self.transmit(role, p);
                    }
                }
                self.schedule(now + TIMER_TICK, Event::Tick);
            }
            Event::AtServer { src, data } => self.receive(Role::Server, src, data),
            Event::AtNat { dst, data } => match self.nat.inbound(now, SERVER_ADDR, dst) {
                Ok(_) => {
                    self.drain_nat_events();
                    self.receive(Role::Client, SERVER_ADDR, data);
                }
                Err(e) => {
                    let what = describe(&data);
                    self.note(
                        "nat",
                        format!("dropped server → client {what}: {e}"),
                        Some(data.len()),
                    );
                }
            },
            Event::Inbound => {
                self.send_data(Dir::Inbound, traffic::MIN_SIZE);
                if let Some(every) = self.cfg.inbound_every {
                    self.schedule(now + every, Event::Inbound);
                }
            }
            Event::Data { dir, size } => self.send_data(dir, size),
            Event::Burst => {
                let Some(random) = self.random.as_mut() else {
                    return;
                };
                random.burst(&mut self.burst);
                let mut last = now;
                for i in 0..self.burst.len() {
                    let traffic::Packet { after, dir, size } = self.burst[i];
                    last = now + after;
                    self.schedule(last, Event::Data { dir, size });
                }
                let gap = self
                    .random
                    .as_mut()
                    .map_or(Duration::ZERO, RandomTraffic::gap);
                self.schedule(last + gap, Event::Burst);
            }
        }
    }

    /// The server (inbound) or the client (outbound) sends one data packet into the tunnel.
    fn send_data(&mut self, dir: Dir, size: usize) {
        let now = self.now();
        let (role, seq) = match dir {
            Dir::Inbound => {
                let seq = self.inbound_sent as u32;
                self.inbound_sent += 1;
                self.forget_old_inbound(now);
                self.inbound_recent.push_back((seq, now));
                (Role::Server, seq)
            }
            Dir::Outbound => {
                let seq = self.outbound_sent as u32;
                self.outbound_sent += 1;
                (Role::Client, seq)
            }
        };
        let packet = data_packet(dir, seq, size);
        if let Some(p) = self.with_tunn(role, |t, buf| to_network(t.encapsulate(&packet, buf))) {
            self.transmit(role, p);
        }
    }

    /// Inbound packets sent more than DELIVERY_WINDOW ago count as late when they arrive.
    fn forget_old_inbound(&mut self, now: Time) {
        while let Some(&(_, sent)) = self.inbound_recent.front() {
            if now - sent <= DELIVERY_WINDOW {
                break;
            }
            self.inbound_recent.pop_front();
        }
    }

    fn with_tunn<R>(&mut self, role: Role, f: impl FnOnce(&mut Tunn, &mut [u8]) -> R) -> R {
        let tunn = match role {
            Role::Client => &mut self.client.tunn,
            Role::Server => &mut self.server.tunn,
        };
        f(tunn, &mut self.buf)
    }

    fn peer(&mut self, role: Role) -> &mut Peer {
        match role {
            Role::Client => &mut self.client,
            Role::Server => &mut self.server,
        }
    }

    /// `role` puts a datagram on the wire.
    fn transmit(&mut self, role: Role, data: Vec<u8>) {
        let now = self.now();
        let half_rtt = self.cfg.rtt / 2;
        let what = describe(&data);
        let len = data.len();
        {
            let peer = self.peer(role);
            peer.packets += 1;
            peer.bytes += len as u64;
            if let Some(k) = peer.keeper.as_mut() {
                k.observe(now, Traffic::Sent);
            }
        }
        // The responder's handshake is complete when it sends its response.
        if data.first() == Some(&2) {
            self.handshake_done(role);
        }
        match role {
            Role::Client => {
                let public = self.nat.outbound(now, CLIENT_ADDR, SERVER_ADDR);
                self.note(
                    "client",
                    format!("→ server {what} (NAT source {public})"),
                    Some(len),
                );
                self.drain_nat_events();
                self.schedule(now + half_rtt, Event::AtServer { src: public, data });
            }
            Role::Server => {
                let Some(dst) = self.endpoint else {
                    self.note(
                        "server",
                        format!("has no endpoint for the client: {what} not sent"),
                        Some(len),
                    );
                    return;
                };
                self.note("server", format!("→ client {what}"), Some(len));
                self.schedule(now + half_rtt, Event::AtNat { dst, data });
            }
        }
    }

    /// A datagram reaches `role`'s WireGuard.
    fn receive(&mut self, role: Role, src: SocketAddrV4, data: Vec<u8>) {
        let now = self.now();
        if role == Role::Client {
            self.client_received += 1;
        }
        if let Some(k) = self.peer(role).keeper.as_mut() {
            k.observe(now, Traffic::Received);
        }
        let kind = data.first().copied();
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut ok = false;
        let mut delivered: Option<u32> = None;
        {
            let buf = &mut self.buf;
            let tunn = match role {
                Role::Client => &mut self.client.tunn,
                Role::Server => &mut self.server.tunn,
            };
            let mut r = tunn.decapsulate(Some((*src.ip()).into()), &data, buf);
            loop {
                match r {
                    TunnResult::WriteToNetwork(p) => {
                        ok = true;
                        out.push(p.to_vec());
                        r = tunn.decapsulate(None, &[], buf);
                    }
                    TunnResult::WriteToTunnelV4(p, _) => {
                        ok = true;
                        delivered = data_seq(p);
                        break;
                    }
                    TunnResult::WriteToTunnelV6(..) | TunnResult::Done => {
                        ok = true;
                        break;
                    }
                    TunnResult::Err(_) => break,
                }
            }
        }
        // Keepalives are 32 B; anything longer of type 4 is one of the lab's data packets.
        if !ok && kind == Some(4) && data.len() > 32 {
            let what = match role {
                Role::Client => {
                    self.inbound_rejected += 1;
                    "inbound"
                }
                Role::Server => {
                    self.outbound_rejected += 1;
                    "outbound"
                }
            };
            self.note(
                role.name(),
                format!("WireGuard rejected {what} data (no valid session)"),
                Some(data.len()),
            );
        }
        if ok && role == Role::Server {
            if self.endpoint != Some(src) {
                self.note("server", format!("client endpoint is now {src}"), None);
            }
            self.endpoint = Some(src);
        }
        match (role, delivered) {
            (Role::Client, Some(seq)) => {
                self.forget_old_inbound(now);
                match self.inbound_recent.iter().position(|&(s, _)| s == seq) {
                    Some(i) => {
                        self.inbound_recent.remove(i);
                        self.inbound_delivered += 1;
                    }
                    None => self.inbound_late += 1,
                }
                self.note("client", format!("received inbound data #{seq}"), None);
            }
            (Role::Server, Some(seq)) => {
                self.outbound_delivered += 1;
                self.note("server", format!("received outbound data #{seq}"), None);
            }
            _ => {}
        }
        // The initiator's handshake is complete when the response authenticates.
        if ok && kind == Some(2) {
            self.handshake_done(role);
        }
        for p in out {
            self.transmit(role, p);
        }
    }

    fn handshake_done(&mut self, role: Role) {
        let now = self.now();
        if self.first_handshake.is_none() {
            self.first_handshake = Some(now);
            if let Some(every) = self.cfg.inbound_every {
                self.schedule(now + every, Event::Inbound);
            }
            if let Some(random) = self.random.as_mut() {
                let gap = random.gap();
                self.schedule(now + gap, Event::Burst);
            }
        }
        let peer = self.peer(role);
        peer.handshakes += 1;
        if let Some(k) = peer.keeper.as_mut() {
            k.handshake(now);
        }
        self.note(role.name(), "handshake complete".into(), None);
    }

    fn run_keeper(&mut self, role: Role) {
        let now = self.now();
        let mut actions = Vec::new();
        let mut events = Vec::new();
        {
            let peer = self.peer(role);
            let Some(k) = peer.keeper.as_mut() else {
                return;
            };
            k.handle_timeout(now);
            actions.extend(std::iter::from_fn(|| k.poll_action()));
            events.extend(std::iter::from_fn(|| k.poll_event()));
        }
        for ev in events {
            let text = match ev {
                KeeperEvent::FollowUp { reason, .. } => {
                    format!("keeper: follow-up ({})", reason.as_str())
                }
                KeeperEvent::Skipped { reason, .. } => {
                    format!("keeper: follow-up not needed ({})", reason.as_str())
                }
            };
            self.note(
                if role == Role::Client {
                    "client"
                } else {
                    "server"
                },
                text,
                None,
            );
        }
        for Action::FollowUp(_) in actions {
            // The lab's kick: WireGuard's own keepalive on the current session (a handshake
            // initiation if the session is gone, as with the real kick).
            if let Some(p) = self.with_tunn(role, |t, buf| to_network(t.encapsulate(&[], buf))) {
                self.transmit(role, p);
            }
        }
    }

    fn drain_nat_events(&mut self) {
        while let Some(ev) = self.nat.poll_event() {
            let text = match ev.kind {
                NatEventKind::Created { public, .. } => {
                    format!("entry #{} created as {public}", ev.flow)
                }
                NatEventKind::Replied => format!("entry #{} saw a reply", ev.flow),
                NatEventKind::Timeout(kind) => {
                    let secs = self
                        .nat
                        .entry_for_flow(CLIENT_ADDR, SERVER_ADDR)
                        .map(|(_, _, e)| (e.deadline() - ev.at).as_secs_f64())
                        .unwrap_or_default();
                    format!(
                        "entry #{} on the {} timeout ({secs:.0} s)",
                        ev.flow,
                        kind.as_str()
                    )
                }
                NatEventKind::Assured => format!("entry #{} [ASSURED]", ev.flow),
                NatEventKind::Expired => format!("entry #{} expired", ev.flow),
            };
            if self.cfg.timeline {
                self.timeline.push(TimelineEntry {
                    t: ev.at.as_secs_f64(),
                    source: "nat",
                    event: text,
                    bytes: None,
                });
            }
        }
    }
}
