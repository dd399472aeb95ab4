//! A masquerading UDP NAT: one public address, a conntrack-style table of [`Entry`]s.
//!
//! - The first outbound packet of a flow (internal address:port → remote address:port) creates an
//!   entry. Masquerade keeps the internal source port when the reply tuple (remote → public:port)
//!   is free (`nf_nat_used_tuple`), otherwise it picks another port in 1024–65535 (the kernel
//!   hashes; the model uses a fixed pseudo-random sequence, so only "unique and in range" match).
//! - Inbound packets are matched on the reply tuple. Without a live entry they are dropped and
//!   counted: a router's input chain drops new inbound UDP (the seed's RouterOS `drop
//!   in-interface=ether1`), so they never create entries of their own.
//! - Expiry happens at `deadline` exactly; [`Nat::handle_timeout`] reports it, and a packet that
//!   arrives at or after the deadline finds the entry gone even before the timeout was handled.
//!
//! The NAT never reads a clock: every call takes `now`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};

use super::entry::{Direction, Entry, Refresh, TimeoutKind};
use super::profile::Profile;
use crate::time::Time;

/// Identifies one entry over its life (a re-created flow gets a new id).
pub type FlowId = u64;

/// What happened to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatEventKind {
    /// Created by an outbound packet; `public` is the translated source.
    Created {
        /// The internal source.
        internal: SocketAddrV4,
        /// The remote destination.
        remote: SocketAddrV4,
        /// The translated source.
        public: SocketAddrV4,
    },
    /// The first reply-direction packet passed.
    Replied,
    /// A refresh applied a different timeout than before.
    Timeout(TimeoutKind),
    /// `[ASSURED]` was set.
    Assured,
    /// The entry expired (at its deadline, not when it was noticed).
    Expired,
}

/// One entry's life event, at the virtual instant it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatEvent {
    /// When.
    pub at: Time,
    /// Which entry.
    pub flow: FlowId,
    /// What.
    pub kind: NatEventKind,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Entries created.
    pub created: u64,
    /// Entries expired.
    pub expired: u64,
    /// Outbound packets translated.
    pub outbound: u64,
    /// Inbound packets forwarded.
    pub inbound: u64,
    /// Inbound packets dropped because no live entry matched.
    pub dropped_inbound: u64,
}

/// Why an inbound packet did not pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    /// No live entry matches the reply tuple (never created, or expired).
    #[error("no NAT entry for this remote and public port")]
    NoEntry,
    /// Sent to an address that is not the NAT's public address.
    #[error("not addressed to the NAT's public address")]
    NotOurs,
}

#[derive(Clone, Debug)]
struct Flow {
    internal: SocketAddrV4,
    remote: SocketAddrV4,
    public_port: u16,
    entry: Entry,
}

/// A masquerading UDP NAT following one [`Profile`].
#[derive(Debug)]
pub struct Nat {
    profile: Profile,
    public_ip: Ipv4Addr,
    flows: HashMap<FlowId, Flow>,
    by_original: HashMap<(SocketAddrV4, SocketAddrV4), FlowId>,
    by_reply: HashMap<(SocketAddrV4, u16), FlowId>,
    expiry: BTreeSet<(Time, FlowId)>,
    next_id: FlowId,
    port_seq: u32,
    events: VecDeque<NatEvent>,
    record_events: bool,
    stats: NatStats,
}

impl Nat {
    /// A NAT with no entries, translating to `public_ip`.
    pub fn new(profile: Profile, public_ip: Ipv4Addr) -> Nat {
        Nat {
            profile,
            public_ip,
            flows: HashMap::new(),
            by_original: HashMap::new(),
            by_reply: HashMap::new(),
            expiry: BTreeSet::new(),
            next_id: 1,
            port_seq: 0x9e37_79b9,
            events: VecDeque::new(),
            record_events: true,
            stats: NatStats::default(),
        }
    }

    /// Stop queueing [`NatEvent`]s (for long runs that only want counters).
    pub fn without_events(mut self) -> Nat {
        self.record_events = false;
        self
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The public address.
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_ip
    }

    /// Counters so far.
    pub fn stats(&self) -> NatStats {
        self.stats
    }

    /// Entries currently in the table (some may be past their deadline until
    /// [`Nat::handle_timeout`] runs).
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The next instant an entry expires.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.expiry.first().map(|&(t, _)| t)
    }

    /// Expire every entry whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(&(deadline, id)) = self.expiry.first() {
            if deadline > now {
                break;
            }
            self.remove(id);
        }
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<NatEvent> {
        self.events.pop_front()
    }

    /// An outbound packet from `internal` to `remote` at `now`: returns the translated source.
    pub fn outbound(
        &mut self,
        now: Time,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> SocketAddrV4 {
        self.expire_stale(now, self.by_original.get(&(internal, remote)).copied());
        self.stats.outbound += 1;
        if let Some(&id) = self.by_original.get(&(internal, remote)) {
            let refresh = self.refresh(id, now, Direction::Original);
            self.emit_refresh(now, id, refresh);
            let port = self.flows[&id].public_port;
            return SocketAddrV4::new(self.public_ip, port);
        }
        let port = self.choose_port(internal.port(), remote);
        let id = self.next_id;
        self.next_id += 1;
        let entry = Entry::new(self.profile.rules, now);
        self.expiry.insert((entry.deadline(), id));
        let timeout = entry.timeout();
        self.flows.insert(
            id,
            Flow {
                internal,
                remote,
                public_port: port,
                entry,
            },
        );
        self.by_original.insert((internal, remote), id);
        self.by_reply.insert((remote, port), id);
        self.stats.created += 1;
        let public = SocketAddrV4::new(self.public_ip, port);
        self.push(
            now,
            id,
            NatEventKind::Created {
                internal,
                remote,
                public,
            },
        );
        self.push(now, id, NatEventKind::Timeout(timeout));
        public
    }

    /// An inbound packet from `remote` to `public` at `now`: the internal destination, or why it
    /// was dropped.
    pub fn inbound(
        &mut self,
        now: Time,
        remote: SocketAddrV4,
        public: SocketAddrV4,
    ) -> Result<SocketAddrV4, Drop> {
        if *public.ip() != self.public_ip {
            self.stats.dropped_inbound += 1;
            return Err(Drop::NotOurs);
        }
        self.expire_stale(now, self.by_reply.get(&(remote, public.port())).copied());
        let Some(&id) = self.by_reply.get(&(remote, public.port())) else {
            self.stats.dropped_inbound += 1;
            return Err(Drop::NoEntry);
        };
        let refresh = self.refresh(id, now, Direction::Reply);
        self.emit_refresh(now, id, refresh);
        self.stats.inbound += 1;
        Ok(self.flows[&id].internal)
    }

    /// Whether an inbound packet from `remote` to `public` would pass at `now` (changes nothing).
    pub fn would_pass_inbound(
        &self,
        now: Time,
        remote: SocketAddrV4,
        public: SocketAddrV4,
    ) -> bool {
        self.entry_for_reply(remote, public)
            .is_some_and(|e| e.is_alive(now))
    }

    /// The live-or-stale entry an inbound packet from `remote` to `public` would match.
    pub fn entry_for_reply(&self, remote: SocketAddrV4, public: SocketAddrV4) -> Option<&Entry> {
        if *public.ip() != self.public_ip {
            return None;
        }
        let id = self.by_reply.get(&(remote, public.port()))?;
        Some(&self.flows[id].entry)
    }

    /// The entry of the flow `internal` → `remote`, if one is in the table.
    pub fn entry_for_flow(
        &self,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<(FlowId, SocketAddrV4, &Entry)> {
        let id = *self.by_original.get(&(internal, remote))?;
        let f = &self.flows[&id];
        Some((
            id,
            SocketAddrV4::new(self.public_ip, f.public_port),
            &f.entry,
        ))
    }

    fn refresh(&mut self, id: FlowId, now: Time, dir: Direction) -> Refresh {
        let flow = self.flows.get_mut(&id).expect("indexed flow exists");
        let old = flow.entry.deadline();
        let refresh = flow.entry.on_packet(now, dir);
        let new = flow.entry.deadline();
        self.expiry.remove(&(old, id));
        self.expiry.insert((new, id));
        refresh
    }

    fn emit_refresh(&mut self, now: Time, id: FlowId, r: Refresh) {
        if r.first_reply {
            self.push(now, id, NatEventKind::Replied);
        }
        if r.timeout_changed {
            let kind = self.flows[&id].entry.timeout();
            self.push(now, id, NatEventKind::Timeout(kind));
        }
        if r.newly_assured {
            self.push(now, id, NatEventKind::Assured);
        }
    }

    /// A packet at `now` must not see an entry past its deadline: expire it first (the event is
    /// dated at the deadline).
    fn expire_stale(&mut self, now: Time, id: Option<FlowId>) {
        if let Some(id) = id {
            if !self.flows[&id].entry.is_alive(now) {
                self.remove(id);
            }
        }
    }

    fn remove(&mut self, id: FlowId) {
        let Some(flow) = self.flows.remove(&id) else {
            return;
        };
        let deadline = flow.entry.deadline();
        self.expiry.remove(&(deadline, id));
        self.by_original.remove(&(flow.internal, flow.remote));
        self.by_reply.remove(&(flow.remote, flow.public_port));
        self.stats.expired += 1;
        self.push(deadline, id, NatEventKind::Expired);
    }

    fn choose_port(&mut self, wanted: u16, remote: SocketAddrV4) -> u16 {
        if wanted != 0 && !self.by_reply.contains_key(&(remote, wanted)) {
            return wanted;
        }
        loop {
            // xorshift32: a fixed sequence, so runs are reproducible.
            let mut x = self.port_seq;
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            self.port_seq = x;
            let port = 1024 + (x % (65536 - 1024)) as u16;
            if !self.by_reply.contains_key(&(remote, port)) {
                return port;
            }
        }
    }

    fn push(&mut self, at: Time, flow: FlowId, kind: NatEventKind) {
        if self.record_events {
            self.events.push_back(NatEvent { at, flow, kind });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    fn client() -> SocketAddrV4 {
        "172.16.0.2:40000".parse().unwrap()
    }
    fn server() -> SocketAddrV4 {
        "198.51.100.2:51820".parse().unwrap()
    }
    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    fn kinds(nat: &mut Nat) -> Vec<(Time, NatEventKind)> {
        std::iter::from_fn(|| nat.poll_event())
            .map(|e| (e.at, e.kind))
            .collect()
    }

    #[test]
    fn masquerade_keeps_the_port_and_replies_pass_until_expiry() {
        let mut nat = Nat::new(Profile::routeros(), PUBLIC);
        let public = nat.outbound(t(0), client(), server());
        assert_eq!(public, SocketAddrV4::new(PUBLIC, 40000));
        assert_eq!(nat.inbound(t(30), server(), public), Ok(client()));
        nat.outbound(t(31), client(), server());
        // Handshake done: 10 s from the last packet. Nothing happens just before the deadline.
        nat.handle_timeout(t(10_030));
        assert_eq!(nat.len(), 1);
        assert!(nat.would_pass_inbound(t(10_030), server(), public));
        assert!(!nat.would_pass_inbound(t(10_031), server(), public));
        assert_eq!(nat.poll_timeout(), Some(t(10_031)));
        nat.handle_timeout(t(10_031));
        assert!(nat.is_empty());
        assert_eq!(nat.inbound(t(15_000), server(), public), Err(Drop::NoEntry));
        assert_eq!(nat.stats().dropped_inbound, 1);
        let ev = kinds(&mut nat);
        assert_eq!(ev.last(), Some(&(t(10_031), NatEventKind::Expired)));
        assert!(ev.contains(&(t(30), NatEventKind::Replied)));
        // RouterOS' kernel marks it assured on the short timeout.
        assert!(ev.contains(&(t(31), NatEventKind::Assured)));
    }

    #[test]
    fn follow_up_promotes_and_stream_refreshes_both_ways() {
        let mut nat = Nat::new(Profile::routeros(), PUBLIC);
        let public = nat.outbound(t(0), client(), server());
        nat.inbound(t(30), server(), public).unwrap();
        nat.outbound(t(31), client(), server());
        nat.inbound(t(2_500), server(), public).unwrap(); // a server-side follow-up
        let (_, _, e) = nat.entry_for_flow(client(), server()).unwrap();
        assert_eq!(e.timeout(), TimeoutKind::Stream);
        assert_eq!(e.deadline(), t(182_500));
        let ev = kinds(&mut nat);
        assert!(ev.contains(&(t(2_500), NatEventKind::Timeout(TimeoutKind::Stream))));
    }

    #[test]
    fn a_packet_at_the_deadline_recreates_the_entry() {
        let mut nat = Nat::new(Profile::linux(), PUBLIC);
        nat.outbound(t(0), client(), server());
        // No handle_timeout call: the packet at the deadline still finds the entry gone.
        nat.outbound(t(30_000), client(), server());
        assert_eq!(nat.stats().created, 2);
        assert_eq!(nat.stats().expired, 1);
        let ev = kinds(&mut nat);
        assert!(ev.contains(&(t(30_000), NatEventKind::Expired)));
    }

    #[test]
    fn port_clash_picks_another_port() {
        let mut nat = Nat::new(Profile::linux(), PUBLIC);
        let a = nat.outbound(t(0), client(), server());
        let other: SocketAddrV4 = "172.16.0.3:40000".parse().unwrap();
        let b = nat.outbound(t(0), other, server());
        assert_eq!(a.port(), 40000);
        assert_ne!(b.port(), 40000);
        assert!(b.port() >= 1024);
        assert_eq!(nat.inbound(t(1), server(), b), Ok(other));
        // Another remote can reuse the same public port.
        let remote2: SocketAddrV4 = "198.51.100.3:51820".parse().unwrap();
        assert_eq!(nat.outbound(t(0), other, remote2).port(), 40000);
    }

    #[test]
    fn not_our_address_is_dropped() {
        let mut nat = Nat::new(Profile::linux(), PUBLIC);
        nat.outbound(t(0), client(), server());
        let wrong: SocketAddrV4 = "198.51.100.9:40000".parse().unwrap();
        assert_eq!(nat.inbound(t(1), server(), wrong), Err(Drop::NotOurs));
    }
}
