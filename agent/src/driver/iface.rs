//! One interface: attach, poll, feed the trackers, send follow-ups, adapt, restore.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::{AgentConfig, Connector, Device, Method, Mode, SideChoice};
use crate::clock::{wall_now, Clock};
use crate::keeper::{keepalive_advice, Action, FollowUpReason, KeeperConfig, KeeperEvent, Side};
use crate::metrics::{Metrics, PeerMetrics};
use crate::state::{Change, Saved, StateDir};
use crate::tracker::{PeerTracker, TrackerEvent};
use crate::wg::{tunnel_packet, DeviceInfo, Implementation, Key, KeyMap, WgError};
use wgkeep_probe::middlebox::Rules;
use wgkeep_probe::Time;

/// One peer, kept small: 10 000 of them are looked up every poll. Its label in logs and metrics
/// is its key in base64 (`Key`'s `Display`), made when needed.
struct Peer {
    tracker: PeerTracker,
    keepalive: Option<u16>,
    /// Where a tunnel-packet follow-up goes: from its allowed IPs, as of the last poll.
    target: Option<SocketAddr>,
    /// The poll that last saw it.
    seen: u64,
    /// The last handshake (Unix seconds, 0: never) as last stored in `metrics` (`i64::MIN`: not
    /// yet), so that an unchanged value does not touch them.
    handshake_metric: i64,
    /// Its series (atomics: no lookup per poll).
    metrics: Arc<PeerMetrics>,
}

/// The peers of an interface: vectors with an index by key. The vectors are in the order of the
/// replies that added the peers, which later replies mostly follow: wireguard-go lists its peer
/// map from a random bucket, each bucket's (up to eight) entries rotated by a random offset, but
/// otherwise in the same order. So a poll looks for each peer right after the previous one, then
/// among the keys around it, and only then in the index: most of 10 000 look-ups are a few key
/// comparisons in memory read in sequence, not a hash lookup in a table of megabytes.
#[derive(Default)]
struct PeerTable {
    /// The key of `peers[i]`, densely, for the search around the expected slot.
    keys: Vec<Key>,
    peers: Vec<Peer>,
    index: KeyMap<u32>,
}

/// How far [`PeerTable::find`] looks around the expected slot: a bucket of Go's map.
const NEAR: usize = 8;

impl PeerTable {
    fn len(&self) -> usize {
        self.peers.len()
    }

    fn clear(&mut self) {
        *self = PeerTable::default();
    }

    /// Where `key` is, looking at `hint` first, then near it.
    fn find(&self, key: &Key, hint: usize) -> Option<usize> {
        if self.keys.get(hint) == Some(key) {
            return Some(hint);
        }
        let from = hint.saturating_sub(NEAR);
        let near = self.keys.get(from..(hint + NEAR).min(self.keys.len()));
        if let Some(i) = near.and_then(|near| near.iter().position(|k| k == key)) {
            return Some(from + i);
        }
        self.index.get(key).map(|&i| i as usize)
    }

    fn get_mut(&mut self, key: &Key) -> Option<&mut Peer> {
        let i = *self.index.get(key)?;
        self.peers.get_mut(i as usize)
    }

    /// Adds a peer that is not there yet; its slot.
    fn push(&mut self, key: Key, peer: Peer) -> usize {
        let slot = self.peers.len();
        self.index
            .insert(key, u32::try_from(slot).expect("under 2^32 peers"));
        self.keys.push(key);
        self.peers.push(peer);
        slot
    }

    fn iter(&self) -> impl Iterator<Item = (&Key, &Peer)> {
        self.keys.iter().zip(&self.peers)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&Key, &mut Peer)> {
        self.keys.iter().zip(&mut self.peers)
    }

    /// Room for `n` peers in all, allocated at once rather than doubling up to it.
    fn reserve_total(&mut self, n: usize) {
        let more = n.saturating_sub(self.peers.len());
        self.keys.reserve_exact(more);
        self.peers.reserve_exact(more);
        self.index.reserve(more);
    }

    /// Removes the peers for which `remove` is true.
    fn remove_where(&mut self, mut remove: impl FnMut(&Key, &Peer) -> bool) {
        let mut i = 0;
        while i < self.peers.len() {
            if !remove(&self.keys[i], &self.peers[i]) {
                i += 1;
                continue;
            }
            self.peers.swap_remove(i);
            let gone = self.keys.swap_remove(i);
            self.index.remove(&gone);
            if let Some(moved) = self.keys.get(i) {
                self.index.insert(*moved, i as u32);
            }
        }
    }
}

/// A follow-up to send.
struct Job {
    key: Key,
    reason: FollowUpReason,
    method: Method,
    keepalive: Option<u16>,
    target: Option<SocketAddr>,
}

pub(super) struct IfaceTask {
    name: String,
    cfg: Arc<AgentConfig>,
    metrics: Arc<Metrics>,
    clock: Clock,
    connector: Arc<dyn Connector>,
    state: StateDir,
    device: Option<Arc<Mutex<Box<dyn Device>>>>,
    implementation: Option<Implementation>,
    peers: PeerTable,
    /// adapt mode's changes in force (mirrors the state file).
    saved: Saved,
    /// A state file may be waiting to be restored (checked on each attach).
    restore_pending: bool,
    /// The keeper configurations of client-side and server-side peers, shared by their trackers.
    keeper_cfgs: [Arc<KeeperConfig>; 2],
    /// The NAT's rules: the configured ones, replaced by what `--reflector` measures.
    rules: watch::Receiver<Rules>,
    /// Counts polls, to find removed peers without a set.
    generation: u64,
    /// The previous poll's reply, read into again by the next one (no allocations per peer).
    spare: Option<DeviceInfo>,
    /// The earliest keeper timer of any peer (kept up to date by every pass over the peers).
    next_due: Option<Time>,
    waiting_logged: bool,
    last_error: Option<String>,
    warned: HashSet<&'static str>,
}

impl IfaceTask {
    pub(super) fn new(
        name: String,
        cfg: Arc<AgentConfig>,
        rules: watch::Receiver<Rules>,
        metrics: Arc<Metrics>,
        clock: Clock,
        connector: Arc<dyn Connector>,
        state: StateDir,
    ) -> IfaceTask {
        metrics.interface_up.with_label_values(&[&name]).set(0);
        // Indexed by `side == Side::Server`.
        let keeper_cfgs = keeper_configs(*rules.borrow(), cfg.follow_up_delay);
        IfaceTask {
            keeper_cfgs,
            rules,
            saved: Saved {
                interface: name.clone(),
                ..Saved::default()
            },
            name,
            cfg,
            metrics,
            clock,
            connector,
            state,
            device: None,
            implementation: None,
            peers: PeerTable::default(),
            restore_pending: true,
            generation: 0,
            spare: None,
            next_due: None,
            waiting_logged: false,
            last_error: None,
            warned: HashSet::new(),
        }
    }

    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                break;
            }
            let deadline = self
                .next_due
                .map(|t| tokio::time::Instant::from_std(self.clock.instant(t)));
            let timer = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                _ = timer => self.fire().await,
                _ = tick.tick() => self.poll().await,
            }
        }
        self.shutdown().await;
    }

    /// Run `f` on the device in the blocking pool. `None` when detached or the task panicked.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Device) -> T + Send + 'static,
    ) -> Option<T> {
        let dev = self.device.clone()?;
        tokio::task::spawn_blocking(move || {
            let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
            f(d.as_mut())
        })
        .await
        .ok()
    }

    fn warn_once(&mut self, what: &'static str, msg: String) {
        if self.warned.insert(what) {
            tracing::warn!("{}: {msg}", self.name);
        } else {
            tracing::debug!("{}: {msg}", self.name);
        }
    }

    async fn attach(&mut self) -> bool {
        let (connector, name, timeout) = (
            self.connector.clone(),
            self.name.clone(),
            self.cfg.device_timeout,
        );
        let result = tokio::task::spawn_blocking(move || connector.connect(&name, timeout)).await;
        match result {
            Ok(Ok(device)) => {
                let implementation = device.implementation();
                tracing::info!("{}: attached ({})", self.name, implementation.as_str());
                self.implementation = Some(implementation);
                self.device = Some(Arc::new(Mutex::new(device)));
                self.waiting_logged = false;
                self.last_error = None;
                self.restore_pending = true;
                self.metrics
                    .interface_up
                    .with_label_values(&[&self.name])
                    .set(1);
                true
            }
            Ok(Err(WgError::NotFound(_))) => {
                if !self.waiting_logged {
                    tracing::info!("{}: waiting for the interface to appear", self.name);
                    self.waiting_logged = true;
                }
                false
            }
            Ok(Err(e)) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("{}: cannot attach: {msg}", self.name);
                    self.last_error = Some(msg);
                }
                false
            }
            Err(e) => {
                tracing::error!("{}: attach task failed: {e}", self.name);
                false
            }
        }
    }

    fn detach(&mut self, why: &str) {
        tracing::info!("{}: {why}; waiting for it to come back", self.name);
        self.device = None;
        self.implementation = None;
        self.peers.clear();
        self.spare = None;
        self.next_due = None;
        self.metrics.detach(&self.name);
        self.metrics
            .interface_up
            .with_label_values(&[&self.name])
            .set(0);
        self.waiting_logged = true;
    }

    async fn poll(&mut self) {
        if self.device.is_none() && !self.attach().await {
            return;
        }
        let mut info = self.spare.take().unwrap_or_else(DeviceInfo::empty);
        let read = self
            .blocking(move |d| {
                let r = d.get_into(&mut info);
                (info, r)
            })
            .await;
        match read {
            Some((mut info, Ok(()))) => {
                self.last_error = None;
                if self.restore_pending {
                    self.restore_pending = false;
                    self.restore_leftovers(&mut info).await;
                }
                self.on_info(&info).await;
                self.spare = Some(info);
            }
            Some((info, Err(e))) => {
                self.spare = Some(info);
                match e {
                    WgError::NotFound(_) => self.detach("interface is gone"),
                    e @ WgError::Timeout(..) => {
                        self.warn_once("timeout", format!("{e}; will retry"));
                    }
                    e => {
                        tracing::warn!("{}: reading the interface failed: {e}", self.name);
                        self.detach("cannot read the interface");
                    }
                }
            }
            None => {}
        }
        self.fire().await;
    }

    fn side_for(&self, keepalive: Option<u16>) -> Side {
        match self.cfg.side {
            SideChoice::Client => Side::Client,
            SideChoice::Server => Side::Server,
            SideChoice::Auto if keepalive.is_some() => Side::Client,
            SideChoice::Auto => Side::Server,
        }
    }

    fn rules(&self) -> Rules {
        *self.rules.borrow()
    }

    /// New NAT rules (from `--reflector`): every tracker starts over with them.
    fn take_new_rules(&mut self) {
        if !self.rules.has_changed().unwrap_or(false) {
            return;
        }
        let rules = *self.rules.borrow_and_update();
        self.keeper_cfgs = keeper_configs(rules, self.cfg.follow_up_delay);
        for (_, peer) in self.peers.iter_mut() {
            let cfg = &self.keeper_cfgs[usize::from(peer.tracker.side() == Side::Server)];
            peer.tracker = PeerTracker::with_shared_config(cfg.clone());
        }
        tracing::info!("{}: using the measured NAT timeouts", self.name);
    }

    async fn on_info(&mut self, info: &DeviceInfo) {
        self.take_new_rules();
        let now = self.clock.now();
        let wall = wall_now();
        self.generation += 1;
        let generation = self.generation;
        let mut added = 0usize;
        let stream_timeout = self.rules().initial_timeout();
        let mut next_due: Option<Time> = None;
        // One allocation of the right size, not a doubling (with copies) while the first poll
        // inserts 10 000 peers.
        self.peers.reserve_total(info.peers.len());
        let mut hint = 0;
        // Where a tunnel-packet follow-up would go matters only when one can be sent (the
        // implementation is known from the attach, which comes with an empty peer table).
        let tunnel_packets = matches!(
            (self.cfg.method, self.implementation),
            (Method::TunnelPacket, _) | (Method::Auto, Some(Implementation::Boringtun))
        );
        for p in &info.peers {
            let side = self.side_for(p.persistent_keepalive);
            let keeper_cfg = &self.keeper_cfgs[usize::from(side == Side::Server)];
            let slot = match self.peers.find(&p.public_key, hint) {
                Some(slot) => slot,
                None => {
                    added += 1;
                    tracing::debug!(
                        "{}: peer {} added ({} side)",
                        self.name,
                        p.public_key,
                        side.as_str()
                    );
                    let metrics = self.metrics.peer(&self.name, &p.public_key.to_base64());
                    metrics.keepalive.store(
                        i64::from(p.persistent_keepalive.unwrap_or(0)),
                        Ordering::Relaxed,
                    );
                    self.peers.push(
                        p.public_key,
                        Peer {
                            tracker: PeerTracker::with_shared_config(keeper_cfg.clone()),
                            metrics,
                            keepalive: p.persistent_keepalive,
                            target: None,
                            seen: generation,
                            handshake_metric: i64::MIN,
                        },
                    )
                }
            };
            hint = slot + 1;
            let peer = &mut self.peers.peers[slot];
            peer.seen = generation;
            if peer.tracker.side() != side {
                // PersistentKeepalive turned on or off: the auto side follows it.
                tracing::debug!(
                    "{}: peer {} is now on the {} side",
                    self.name,
                    p.public_key,
                    side.as_str()
                );
                peer.tracker = PeerTracker::with_shared_config(keeper_cfg.clone());
            }
            if peer.keepalive != p.persistent_keepalive {
                peer.keepalive = p.persistent_keepalive;
                peer.metrics.keepalive.store(
                    i64::from(p.persistent_keepalive.unwrap_or(0)),
                    Ordering::Relaxed,
                );
            }
            if tunnel_packets {
                peer.target = tunnel_packet::target(&p.allowed_ips);
            }
            peer.tracker.on_sample(now, wall, p);
            let hs = p
                .last_handshake
                .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            if peer.handshake_metric != hs {
                peer.handshake_metric = hs;
                peer.metrics.last_handshake.store(hs, Ordering::Relaxed);
            }
            // Everything about this peer while it is in cache: 10 000 peers are megabytes.
            drain_peer_events(&self.name, stream_timeout, &p.public_key, peer);
            next_due = min_time(next_due, peer.tracker.poll_timeout());
        }
        self.next_due = next_due;
        if self.peers.len() != info.peers.len() {
            let name = self.name.clone();
            let metrics = self.metrics.clone();
            self.peers.remove_where(|key, p| {
                let gone = p.seen != generation;
                if gone {
                    tracing::info!("{name}: peer {key} removed");
                    metrics.remove_peer(&name, &key.to_base64());
                }
                gone
            });
        }
        if added > 0 {
            tracing::info!(
                "{}: {added} peer(s) added, {} in all",
                self.name,
                self.peers.len()
            );
        }
        if self.cfg.mode == Mode::Adapt {
            self.adapt().await;
        }
    }

    /// Send the follow-ups that are due.
    async fn fire(&mut self) {
        let now = self.clock.now();
        if self.next_due.is_none_or(|t| t > now) {
            return;
        }
        let implementation = self.implementation;
        let stream_timeout = self.rules().initial_timeout();
        let mut jobs = Vec::new();
        let mut next_due = None;
        for (key, peer) in self.peers.iter_mut() {
            if peer.tracker.poll_timeout().is_some_and(|t| t <= now) {
                peer.tracker.handle_timeout(now);
            }
            drain_peer_events(&self.name, stream_timeout, key, peer);
            while let Some(Action::FollowUp(reason)) = peer.tracker.poll_action() {
                if self.cfg.mode == Mode::Observe {
                    continue;
                }
                let method = match (self.cfg.method, implementation) {
                    (Method::Auto, Some(Implementation::Boringtun)) => Method::TunnelPacket,
                    (Method::Auto, _) => Method::KeepaliveToggle,
                    (m, _) => m,
                };
                jobs.push(Job {
                    key: *key,
                    reason,
                    method,
                    keepalive: peer.keepalive,
                    target: peer.target,
                });
            }
            next_due = min_time(next_due, peer.tracker.poll_timeout());
        }
        self.next_due = next_due;
        if jobs.is_empty() {
            return;
        }
        let results = self
            .blocking(move |d| {
                jobs.into_iter()
                    .map(|j| {
                        let r = match j.method {
                            Method::TunnelPacket => match j.target {
                                Some(to) => d.send_tunnel_packet(to),
                                None => Err(WgError::Unsupported(
                                    "the peer has no allowed IPs to send into".into(),
                                )),
                            },
                            _ => d.kick(&j.key, j.keepalive),
                        };
                        (j, r)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        for (job, result) in results {
            let Some(peer) = self.peers.get_mut(&job.key) else {
                continue;
            };
            match result {
                Ok(()) => {
                    peer.tracker.on_follow_up_sent(now);
                    self.next_due = min_time(self.next_due, peer.tracker.poll_timeout());
                    peer.metrics.follow_up(job.method.as_str());
                    tracing::debug!(
                        "{}: follow-up to {} ({}, {})",
                        self.name,
                        job.key,
                        job.reason.as_str(),
                        job.method.as_str()
                    );
                }
                Err(e) => {
                    peer.metrics.failures.fetch_add(1, Ordering::Relaxed);
                    let msg = format!("follow-up to {} failed: {e}", job.key);
                    self.warn_once("follow-up", msg);
                }
            }
        }
    }

    /// adapt mode: every peer with a PersistentKeepalive gets `floor(0.8 × stream timeout)`.
    /// The originals are written to the state file before anything changes.
    async fn adapt(&mut self) {
        if self.implementation == Some(Implementation::Boringtun) {
            self.warn_once(
                "adapt-boringtun",
                "adapt mode cannot change PersistentKeepalive on boringtun (it panics on UAPI writes); \
                 only follow-ups are sent"
                    .into(),
            );
            return;
        }
        let target = keepalive_advice(&self.rules(), None).recommended;
        let mut changes = Vec::new();
        for (key, peer) in self.peers.iter() {
            let Some(current) = peer.keepalive else {
                continue;
            };
            if current == target {
                continue;
            }
            let label = key.to_base64();
            // Someone else changed it since we set it, or we never did: it is the new original.
            self.saved.peers.insert(
                label,
                Change {
                    original: Some(current),
                    set: Some(target),
                },
            );
            changes.push((*key, current));
        }
        if changes.is_empty() {
            return;
        }
        if let Err(e) = self.state.save(&self.saved) {
            self.warn_once(
                "state",
                format!("not changing PersistentKeepalive: cannot record the originals: {e}"),
            );
            return;
        }
        let results = self
            .blocking(move |d| {
                changes
                    .into_iter()
                    .map(|(key, current)| (key, current, d.set_keepalive(&key, Some(target))))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        for (key, current, r) in results {
            match r {
                Ok(()) => {
                    if let Some(p) = self.peers.get_mut(&key) {
                        p.keepalive = Some(target);
                        p.metrics
                            .keepalive
                            .store(i64::from(target), Ordering::Relaxed);
                    }
                    tracing::info!(
                        "{}: peer {key} PersistentKeepalive {current} -> {target} s",
                        self.name
                    );
                }
                Err(e) => tracing::warn!(
                    "{}: setting PersistentKeepalive of {key} failed: {e}",
                    self.name
                ),
            }
        }
    }

    /// Put back what a previous agent (crashed, or this one before the interface went away) left
    /// changed: only where the value is still the one wgkeep set.
    ///
    /// `info` is the poll this runs in; it is updated to the restored values, because the same
    /// poll goes on to the keepers, and a first-sight follow-up toggles the keepalive to what it
    /// read (writing the stale adapted value back would lose the user's for good).
    async fn restore_leftovers(&mut self, info: &mut DeviceInfo) {
        let saved = match self.state.load(&self.name) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                self.warn_once("state", format!("cannot read the state file: {e}"));
                return;
            }
        };
        let (restored, done) = self.restore(&saved, info).await;
        for p in info.peers.iter_mut() {
            if restored.contains(&p.public_key) {
                if let Some(change) = saved.peers.get(&p.public_key.to_base64()) {
                    p.persistent_keepalive = change.original;
                }
            }
        }
        if done {
            self.saved.peers.clear();
            if let Err(e) = self.state.remove(&self.name) {
                self.warn_once("state", format!("cannot remove the state file: {e}"));
            }
        }
    }

    /// Restore `saved` on the device: the peers set back, and whether nothing is left to do.
    async fn restore(&mut self, saved: &Saved, info: &DeviceInfo) -> (Vec<Key>, bool) {
        let mut todo = Vec::new();
        for p in &info.peers {
            let Some(change) = saved.peers.get(&p.public_key.to_base64()) else {
                continue;
            };
            if p.persistent_keepalive == change.set && change.set != change.original {
                todo.push((p.public_key, change.original));
            }
        }
        if todo.is_empty() {
            return (Vec::new(), true);
        }
        let Some(results) = self
            .blocking(move |d| {
                todo.into_iter()
                    .map(|(k, v)| (k, v, d.set_keepalive(&k, v)))
                    .collect::<Vec<_>>()
            })
            .await
        else {
            // Not attached: nothing was written, the record stays.
            return (Vec::new(), false);
        };
        let mut ok = true;
        let mut restored = Vec::new();
        for (key, value, r) in results {
            match r {
                Ok(()) => {
                    restored.push(key);
                    tracing::info!(
                        "{}: restored PersistentKeepalive of {key} to {}",
                        self.name,
                        value.map_or_else(|| "off".to_owned(), |v| format!("{v} s"))
                    )
                }
                Err(e) => {
                    ok = false;
                    tracing::warn!(
                        "{}: restoring PersistentKeepalive of {key} failed: {e}",
                        self.name
                    );
                }
            }
        }
        (restored, ok)
    }

    async fn shutdown(&mut self) {
        if self.saved.peers.is_empty() {
            return;
        }
        let info = match self.blocking(|d| d.get()).await {
            Some(Ok(info)) => info,
            // The interface is gone (or was never attached): so are the values wgkeep set.
            None | Some(Err(WgError::NotFound(_))) => {
                let _ = self.state.remove(&self.name);
                return;
            }
            // It exists but does not answer (a hung wireguard-go): keep the record, so that the
            // next start restores what this one cannot.
            Some(Err(e)) => {
                tracing::warn!(
                    "{}: cannot restore PersistentKeepalive now ({e}); the state file stays for the next start",
                    self.name
                );
                return;
            }
        };
        let saved = self.saved.clone();
        if self.restore(&saved, &info).await.1 {
            if let Err(e) = self.state.remove(&self.name) {
                tracing::warn!("{}: cannot remove the state file: {e}", self.name);
            }
        }
    }
}

/// Log and count what one peer's tracker and keeper noticed.
fn drain_peer_events(name: &str, stream_timeout: Duration, key: &Key, peer: &mut Peer) {
    while let Some(ev) = peer.tracker.poll_event() {
        match ev {
            TrackerEvent::Handshake { .. } => {
                peer.metrics.handshakes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("{name}: handshake with {}", key);
            }
            TrackerEvent::EndpointChanged { from, to, idle } => {
                peer.metrics
                    .endpoint_changes
                    .fetch_add(1, Ordering::Relaxed);
                match idle {
                    Some(idle) if idle > stream_timeout => tracing::info!(
                        "{name}: peer {} came back from {to} (was {from}) after {} idle: its NAT mapping expired",
                        key,
                        humantime::format_duration(Duration::from_secs(idle.as_secs()))
                    ),
                    _ => tracing::info!("{name}: peer {} endpoint {from} -> {to}", key),
                }
            }
            TrackerEvent::CountersReset => {
                tracing::info!(
                    "{name}: counters of peer {} went down (interface or peer re-created)",
                    key
                );
            }
            TrackerEvent::FollowUpConfirmed => {
                tracing::debug!("{name}: follow-up to {} confirmed by tx_bytes", key);
            }
            TrackerEvent::FollowUpUnconfirmed => {
                peer.metrics.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "{name}: follow-up to {} not seen in tx_bytes by the next poll",
                    key
                );
            }
        }
    }
    while let Some(ev) = peer.tracker.poll_keeper_event() {
        if let KeeperEvent::Skipped { reason, .. } = ev {
            peer.metrics.skip(reason.as_str());
            tracing::debug!(
                "{name}: follow-up to {} not needed ({})",
                key,
                reason.as_str()
            );
        }
    }
}

fn min_time(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn keeper_configs(rules: Rules, follow_up_delay: Duration) -> [Arc<KeeperConfig>; 2] {
    // Indexed by `side == Side::Server`.
    [Side::Client, Side::Server].map(|side| {
        Arc::new(KeeperConfig {
            rules,
            side,
            follow_up_delay,
        })
    })
}
