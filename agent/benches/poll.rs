//! The agent's per-poll CPU work for 10 000 peers, without I/O: parsing a wireguard-go `get=1`
//! reply and feeding every peer's tracker. `cargo bench -p wgkeep-agent --bench poll`.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use wgkeep_agent::keeper::{KeeperConfig, Side};
use wgkeep_agent::tracker::PeerTracker;
use wgkeep_agent::wg::uapi::parse_get;
use wgkeep_probe::middlebox::Profile;
use wgkeep_probe::Time;

fn reply(peers: usize) -> String {
    let mut s = String::from("private_key=0000000000000000000000000000000000000000000000000000000000000000\nlisten_port=51820\n");
    for i in 0..peers {
        let _ = write!(
            s,
            "public_key={:064x}\nendpoint=198.51.{}.{}:51820\nlast_handshake_time_sec=1800000000\nlast_handshake_time_nsec=5\n\
             rx_bytes={}\ntx_bytes={}\npersistent_keepalive_interval=25\nallowed_ip=10.{}.{}.{}/32\nprotocol_version=1\n",
            i + 1,
            i / 256 % 256,
            i % 256,
            i * 7,
            i * 9,
            100 + i / 65536,
            i / 256 % 256,
            i % 256
        );
    }
    s.push_str("errno=0\n\n");
    s
}

fn main() {
    let text = reply(10_000);
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_100);
    let rounds = 20;
    let t0 = Instant::now();
    let mut info = None;
    for _ in 0..rounds {
        info = Some(parse_get(&text, "wg0", wall).unwrap());
    }
    let parse = t0.elapsed() / rounds;
    let info = info.unwrap();
    let cfg = KeeperConfig::new(Profile::linux().rules, Side::Server);
    let mut trackers: Vec<PeerTracker> = info.peers.iter().map(|_| PeerTracker::new(cfg)).collect();
    let t0 = Instant::now();
    for r in 0..rounds {
        let now = Time::from_secs(u64::from(r) + 1);
        for (t, p) in trackers.iter_mut().zip(&info.peers) {
            t.on_sample(now, wall, p);
            while t.poll_event().is_some() {}
        }
    }
    let track = t0.elapsed() / rounds;
    println!(
        "10 000 peers, {} bytes: parse_get {:.2} ms, trackers {:.2} ms per poll",
        text.len(),
        parse.as_secs_f64() * 1e3,
        track.as_secs_f64() * 1e3
    );
}
