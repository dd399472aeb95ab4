//! The driver against fake devices, in real (short) time: attach, follow-ups, interfaces coming
//! and going, adapt and restore, boringtun, a hung device.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use wgkeep_probe::middlebox::Profile;

use super::*;
use crate::wg::{DeviceInfo, Implementation, Key, PeerInfo, WgError};

#[derive(Debug, Default)]
struct FakeIface {
    present: bool,
    hang: bool,
    implementation: Option<Implementation>,
    peers: Vec<PeerInfo>,
    kicks: Vec<(Key, Option<u16>)>,
    tunnel_packets: Vec<SocketAddr>,
    sets: Vec<(Key, Option<u16>)>,
}

#[derive(Debug, Default, Clone)]
struct World(Arc<Mutex<HashMap<String, FakeIface>>>);

impl World {
    fn with<T>(&self, iface: &str, f: impl FnOnce(&mut FakeIface) -> T) -> T {
        f(self.0.lock().unwrap().entry(iface.to_owned()).or_default())
    }

    /// `wg-quick up`: the interface exists with these peers.
    fn present(&self, iface: &str, peers: Vec<PeerInfo>) {
        self.with(iface, |i| {
            i.present = true;
            i.peers = peers;
        });
    }
}

struct FakeDevice {
    name: String,
    world: World,
}

impl Device for FakeDevice {
    fn implementation(&self) -> Implementation {
        self.world.with(&self.name, |i| {
            i.implementation.unwrap_or(Implementation::WireguardGo)
        })
    }
    fn get(&mut self) -> Result<DeviceInfo, WgError> {
        let (present, hang) = self.world.with(&self.name, |i| (i.present, i.hang));
        if hang {
            std::thread::sleep(Duration::from_millis(300));
            return Err(WgError::Timeout(
                self.name.clone(),
                Duration::from_millis(300),
            ));
        }
        if !present {
            return Err(WgError::NotFound(self.name.clone()));
        }
        Ok(self.world.with(&self.name, |i| DeviceInfo {
            implementation: i.implementation.unwrap_or(Implementation::WireguardGo),
            public_key: None,
            listen_port: Some(51820),
            peers: i.peers.clone(),
        }))
    }
    fn kick(&mut self, peer: &Key, current: Option<u16>) -> Result<(), WgError> {
        self.world.with(&self.name, |i| {
            if i.implementation == Some(Implementation::Boringtun) {
                return Err(WgError::Unsupported("boringtun".into()));
            }
            i.kicks.push((*peer, current));
            if let Some(p) = i.peers.iter_mut().find(|p| p.public_key == *peer) {
                p.tx_bytes += 32;
                // The toggle ends on the value it was given, like the real set transaction.
                p.persistent_keepalive = current;
            }
            Ok(())
        })
    }
    fn set_keepalive(&mut self, peer: &Key, keepalive: Option<u16>) -> Result<(), WgError> {
        self.world.with(&self.name, |i| {
            i.sets.push((*peer, keepalive));
            if let Some(p) = i.peers.iter_mut().find(|p| p.public_key == *peer) {
                p.persistent_keepalive = keepalive;
            }
            Ok(())
        })
    }
    fn send_tunnel_packet(&mut self, to: SocketAddr) -> Result<(), WgError> {
        self.world.with(&self.name, |i| {
            i.tunnel_packets.push(to);
            for p in &mut i.peers {
                p.tx_bytes += 64;
            }
            Ok(())
        })
    }
}

struct FakeConnector(World);

impl Connector for FakeConnector {
    fn connect(&self, iface: &str, _timeout: Duration) -> Result<Box<dyn Device>, WgError> {
        if !self.0.with(iface, |i| i.present) {
            return Err(WgError::NotFound(iface.to_owned()));
        }
        Ok(Box::new(FakeDevice {
            name: iface.to_owned(),
            world: self.0.clone(),
        }))
    }
}

fn key(n: u8) -> Key {
    Key([n; 32])
}

fn peer(n: u8, keepalive: Option<u16>) -> PeerInfo {
    PeerInfo {
        public_key: key(n),
        endpoint: Some("198.51.100.2:51820".parse().unwrap()),
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        persistent_keepalive: keepalive,
        allowed_ips: vec![crate::wg::AllowedIp {
            addr: "10.9.0.1".parse().unwrap(),
            cidr: 32,
        }],
    }
}

/// A handshake now: counters as after initiation, response, keepalive.
fn handshake(world: &World, iface: &str, n: u8) {
    world.with(iface, |i| {
        let p = i.peers.iter_mut().find(|p| p.public_key == key(n)).unwrap();
        p.last_handshake = Some(SystemTime::now());
        p.tx_bytes += 180;
        p.rx_bytes += 92;
    });
}

/// Linux rules with a short grace so tests run quickly: follow-up 300 ms after the handshake.
fn config(ifaces: &[&str], mode: Mode, state_dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
        mode,
        follow_up_delay: Duration::from_millis(300),
        poll_interval: Duration::from_millis(50),
        rules: Profile::conntrack(
            Duration::from_secs(30),
            Duration::from_secs(47),
            Duration::from_millis(200),
        )
        .rules,
        method: Method::Auto,
        side: SideChoice::Auto,
        metrics_listen: None,
        state_dir: state_dir.to_owned(),
        device_timeout: Duration::from_millis(200),
        reflector: None,
    }
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("wgkeep-driver-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: Arc<Metrics>,
}

fn start(cfg: AgentConfig, world: &World) -> Running {
    let (stop, rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let task = tokio::spawn(run(
        cfg,
        Arc::new(FakeConnector(world.clone())),
        metrics.clone(),
        rx,
    ));
    Running {
        stop,
        task,
        metrics,
    }
}

impl Running {
    async fn stop(self) -> Arc<Metrics> {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
        self.metrics
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test]
async fn follows_up_once_per_handshake_and_changes_nothing() {
    let world = World::default();
    world.present("wgt0", vec![peer(1, Some(150))]);
    let dir = temp_dir("followup");
    let agent = start(config(&["wgt0"], Mode::FollowUp, &dir), &world);
    sleep_ms(150).await;
    handshake(&world, "wgt0", 1);
    sleep_ms(200).await;
    assert!(world.with("wgt0", |i| i.kicks.is_empty()), "too early");
    sleep_ms(400).await;
    assert_eq!(
        world.with("wgt0", |i| i.kicks.clone()),
        vec![(key(1), Some(150))]
    );
    sleep_ms(300).await;
    assert_eq!(
        world.with("wgt0", |i| i.kicks.len()),
        1,
        "exactly one follow-up"
    );
    assert!(
        world.with("wgt0", |i| i.sets.is_empty()),
        "follow-up mode never changes settings"
    );
    let metrics = agent.stop().await.render();
    let k = key(1).to_base64();
    assert!(metrics.contains(&format!(
        "wgkeep_follow_ups_total{{interface=\"wgt0\",method=\"keepalive-toggle\",public_key=\"{k}\"}} 1"
    )));
    assert!(metrics.contains(&format!(
        "wgkeep_handshakes_total{{interface=\"wgt0\",public_key=\"{k}\"}} 1"
    )));
    assert!(
        metrics.contains(&format!(
            "wgkeep_follow_up_failures_total{{interface=\"wgt0\",public_key=\"{k}\"}} 0"
        )) || !metrics.contains("wgkeep_follow_up_failures_total{")
    );
}

#[tokio::test]
async fn observe_mode_never_writes() {
    let world = World::default();
    world.present("wgt1", vec![peer(1, Some(150))]);
    let dir = temp_dir("observe");
    let agent = start(config(&["wgt1"], Mode::Observe, &dir), &world);
    sleep_ms(100).await;
    handshake(&world, "wgt1", 1);
    sleep_ms(700).await;
    let metrics = agent.stop().await.render();
    assert!(world.with("wgt1", |i| i.kicks.is_empty() && i.sets.is_empty()));
    assert!(metrics.contains("wgkeep_handshakes_total"));
}

#[tokio::test]
async fn waits_for_the_interface_and_survives_down_up() {
    let world = World::default();
    let dir = temp_dir("downup");
    let agent = start(config(&["wgt2"], Mode::FollowUp, &dir), &world);
    sleep_ms(200).await;
    // wg-quick up
    world.present("wgt2", vec![peer(1, Some(25))]);
    sleep_ms(150).await;
    handshake(&world, "wgt2", 1);
    sleep_ms(600).await;
    assert_eq!(world.with("wgt2", |i| i.kicks.len()), 1);
    // wg-quick down, then up with fresh counters
    world.with("wgt2", |i| i.present = false);
    sleep_ms(200).await;
    assert!(agent
        .metrics
        .render()
        .contains("wgkeep_interface_up{interface=\"wgt2\"} 0"));
    world.present("wgt2", vec![peer(1, Some(25))]);
    sleep_ms(150).await;
    handshake(&world, "wgt2", 1);
    sleep_ms(600).await;
    assert_eq!(
        world.with("wgt2", |i| i.kicks.len()),
        2,
        "kicks the handshake after re-attaching"
    );
    let metrics = agent.stop().await.render();
    assert!(metrics.contains("wgkeep_interface_up{interface=\"wgt2\"} 1"));
}

#[tokio::test]
async fn adapt_sets_and_restores_keepalive() {
    let world = World::default();
    world.present("wgt3", vec![peer(1, Some(40)), peer(2, None)]);
    let dir = temp_dir("adapt");
    let agent = start(config(&["wgt3"], Mode::Adapt, &dir), &world);
    sleep_ms(300).await;
    // floor(0.8 × 47) = 37; the peer without keepalive stays without.
    assert_eq!(
        world.with("wgt3", |i| i.sets.clone()),
        vec![(key(1), Some(37))]
    );
    let saved = std::fs::read_to_string(dir.join("wgt3.json")).unwrap();
    assert!(saved.contains("\"original\": 40"), "{saved}");
    agent.stop().await;
    assert_eq!(
        world.with("wgt3", |i| i.peers[0].persistent_keepalive),
        Some(40)
    );
    assert_eq!(
        world.with("wgt3", |i| i.peers[1].persistent_keepalive),
        None
    );
    assert!(
        !dir.join("wgt3.json").exists(),
        "state file removed after a clean restore"
    );
}

#[tokio::test]
async fn after_a_crash_the_next_start_restores() {
    let world = World::default();
    world.present("wgt4", vec![peer(1, Some(150))]);
    let dir = temp_dir("crash");
    let agent = start(config(&["wgt4"], Mode::Adapt, &dir), &world);
    sleep_ms(300).await;
    assert_eq!(
        world.with("wgt4", |i| i.peers[0].persistent_keepalive),
        Some(37)
    );
    // kill -9: no shutdown path runs.
    agent.task.abort();
    let _ = agent.task.await;
    assert!(dir.join("wgt4.json").exists());
    // Next start, in observe mode (which otherwise never writes).
    let agent = start(config(&["wgt4"], Mode::Observe, &dir), &world);
    sleep_ms(300).await;
    assert_eq!(
        world.with("wgt4", |i| i.peers[0].persistent_keepalive),
        Some(150)
    );
    assert!(!dir.join("wgt4.json").exists());
    agent.stop().await;
}

#[tokio::test]
async fn a_value_changed_by_the_user_is_not_restored() {
    let world = World::default();
    world.present("wgt5", vec![peer(1, Some(150))]);
    let dir = temp_dir("userchange");
    let agent = start(config(&["wgt5"], Mode::Adapt, &dir), &world);
    sleep_ms(300).await;
    agent.task.abort();
    let _ = agent.task.await;
    world.with("wgt5", |i| i.peers[0].persistent_keepalive = Some(60));
    let agent = start(config(&["wgt5"], Mode::FollowUp, &dir), &world);
    sleep_ms(300).await;
    assert_eq!(
        world.with("wgt5", |i| i.peers[0].persistent_keepalive),
        Some(60)
    );
    agent.stop().await;
}

#[tokio::test]
async fn boringtun_gets_tunnel_packets_and_no_writes() {
    let world = World::default();
    world.with("wgt6", |i| {
        i.present = true;
        i.implementation = Some(Implementation::Boringtun);
        i.peers = vec![peer(1, Some(150))];
    });
    let dir = temp_dir("boringtun");
    let agent = start(config(&["wgt6"], Mode::Adapt, &dir), &world);
    sleep_ms(150).await;
    handshake(&world, "wgt6", 1);
    sleep_ms(700).await;
    let metrics = agent.stop().await.render();
    world.with("wgt6", |i| {
        assert!(i.kicks.is_empty() && i.sets.is_empty(), "{i:?}");
        assert_eq!(i.tunnel_packets, vec!["10.9.0.1:9".parse().unwrap()]);
    });
    assert!(metrics.contains("method=\"tunnel-packet\""));
}

#[tokio::test]
async fn a_hung_interface_does_not_stall_the_others() {
    let world = World::default();
    world.with("wgt7", |i| {
        i.present = true;
        i.hang = true;
        i.peers = vec![peer(1, Some(150))];
    });
    world.present("wgt8", vec![peer(2, Some(150))]);
    let dir = temp_dir("hung");
    let agent = start(config(&["wgt7", "wgt8"], Mode::FollowUp, &dir), &world);
    sleep_ms(150).await;
    handshake(&world, "wgt8", 2);
    sleep_ms(700).await;
    assert_eq!(world.with("wgt8", |i| i.kicks.len()), 1);
    agent.stop().await;
}

/// A restart after `kill -9` restores the user's value and then follows up the recent handshake:
/// the follow-up must toggle back to the restored value, not to the adapted one it read before.
#[tokio::test]
async fn a_restart_after_a_crash_does_not_write_the_adapted_value_back() {
    let world = World::default();
    world.present("wgt9", vec![peer(1, Some(150))]);
    let dir = temp_dir("crash-kick");
    let agent = start(config(&["wgt9"], Mode::Adapt, &dir), &world);
    sleep_ms(300).await;
    assert_eq!(
        world.with("wgt9", |i| i.peers[0].persistent_keepalive),
        Some(37)
    );
    agent.task.abort();
    let _ = agent.task.await;
    // A handshake the next agent sees first: a second old, so its follow-up is due at once (in
    // the very poll that restores), yet young enough to follow up.
    handshake(&world, "wgt9", 1);
    world.with("wgt9", |i| {
        i.peers[0].last_handshake = Some(SystemTime::now() - Duration::from_secs(1));
    });
    let agent = start(config(&["wgt9"], Mode::FollowUp, &dir), &world);
    sleep_ms(700).await;
    world.with("wgt9", |i| {
        assert_eq!(i.peers[0].persistent_keepalive, Some(150), "{i:?}");
        assert_eq!(i.kicks.last(), Some(&(key(1), Some(150))), "{i:?}");
    });
    assert!(!dir.join("wgt9.json").exists());
    agent.stop().await;
    assert_eq!(
        world.with("wgt9", |i| i.peers[0].persistent_keepalive),
        Some(150)
    );
}

/// SIGTERM while the device does not answer: the record stays for the next start.
#[tokio::test]
async fn a_hung_device_at_shutdown_keeps_the_record() {
    let world = World::default();
    world.present("wgt10", vec![peer(1, Some(150))]);
    let dir = temp_dir("hung-stop");
    let agent = start(config(&["wgt10"], Mode::Adapt, &dir), &world);
    sleep_ms(300).await;
    assert!(dir.join("wgt10.json").exists());
    world.with("wgt10", |i| i.hang = true);
    agent.stop().await;
    assert!(
        dir.join("wgt10.json").exists(),
        "the record must survive a shutdown that could not restore"
    );
    world.with("wgt10", |i| i.hang = false);
    let agent = start(config(&["wgt10"], Mode::Observe, &dir), &world);
    sleep_ms(300).await;
    assert_eq!(
        world.with("wgt10", |i| i.peers[0].persistent_keepalive),
        Some(150)
    );
    assert!(!dir.join("wgt10.json").exists());
    agent.stop().await;
}
