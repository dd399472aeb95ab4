//! The agent's per-poll CPU work for 10 000 peers, without I/O: parsing a wireguard-go `get=1`
//! reply and feeding every peer's tracker. `cargo bench -p wgkeep-agent --bench poll`.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use wgkeep_agent::keeper::{KeeperConfig, Side};
use wgkeep_agent::tracker::PeerTracker;
use wgkeep_agent::wg::uapi::{parse_get, parse_get_into};
use wgkeep_agent::wg::DeviceInfo;
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

/// What wireguard-go 0.0.20220316 prints, in its order: a preshared key line (zeros when none),
/// every other peer with an endpoint and a handshake.
fn wireguard_go_reply(peers: usize) -> String {
    let mut s = String::from("private_key=0000000000000000000000000000000000000000000000000000000000000000\nlisten_port=51820\n");
    for i in 0..peers {
        let _ = write!(
            s,
            "public_key={:064x}\npreshared_key={:064}\nprotocol_version=1\n",
            (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835,
            0
        );
        if i % 2 == 0 {
            let _ = write!(
                s,
                "endpoint=198.51.{}.{}:51820\nlast_handshake_time_sec={}\nlast_handshake_time_nsec={}\n",
                i / 256 % 256,
                i % 256,
                1_800_000_000 + i,
                i * 7919 % 1_000_000_000
            );
        } else {
            s.push_str("last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n");
        }
        let _ = write!(
            s,
            "tx_bytes={}\nrx_bytes={}\npersistent_keepalive_interval={}\nallowed_ip=10.{}.{}.{}/32\n",
            i * 9,
            i * 7,
            if i % 2 == 0 { 25 } else { 0 },
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

    // What the agent does: wireguard-go's format, parsed into the previous poll's DeviceInfo.
    let text = wireguard_go_reply(10_000);
    let mut info = DeviceInfo::empty();
    parse_get_into(text.as_bytes(), "wg0", wall, &mut info).unwrap();
    assert_eq!(info.peers.len(), 10_000);
    let t0 = Instant::now();
    for _ in 0..rounds {
        parse_get_into(text.as_bytes(), "wg0", wall, &mut info).unwrap();
    }
    let parse = t0.elapsed() / rounds;
    println!(
        "10 000 peers, {} bytes in wireguard-go's format: parse_get_into a reused DeviceInfo {:.2} ms per poll",
        text.len(),
        parse.as_secs_f64() * 1e3
    );
}
