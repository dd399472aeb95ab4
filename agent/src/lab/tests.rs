//! The lab's scenarios, each a claim the README makes.

use std::time::Duration;

use wgkeep_probe::middlebox::Profile;

use super::*;
use crate::keeper::Side;

/// The seed thread: PersistentKeepalive 150 s, one hour.
fn seed(profile: Profile) -> LabConfig {
    LabConfig {
        profile,
        keepalive: Some(150),
        duration: Duration::from_secs(3600),
        rtt: Duration::from_millis(20),
        inbound_every: None,
        random_traffic: None,
        timeline: false,
    }
}

fn one(cfg: &LabConfig, side: Option<Side>) -> RunReport {
    let runs = if side.is_some() {
        KeeperRuns::On
    } else {
        KeeperRuns::Off
    };
    run(cfg, runs, side.unwrap_or(Side::Client)).runs.remove(0)
}

#[test]
fn seed_routeros_fails_without_the_keeper() {
    let r = one(&seed(Profile::routeros()), None);
    assert!(r.reachability < 0.2, "reachability {}", r.reachability);
    // The entry dies 10 s after each handshake and is re-created again and again.
    assert!(r.nat_entries_created >= 20, "{r:?}");
    assert_eq!(r.keeper_stats.follow_ups, 0);
}

#[test]
fn seed_routeros_is_fixed_from_the_client() {
    let r = one(&seed(Profile::routeros()), Some(Side::Client));
    assert_eq!(r.reachability, 1.0, "{r:?}");
    assert_eq!(r.nat_entries_created, 1);
    // 150 s is safe under a 180 s stream timeout: the keeper leaves it alone.
    assert_eq!(r.client_keepalive, Some(150));
    assert!(r.keeper_stats.follow_ups >= 1);
}

#[test]
fn seed_routeros_is_fixed_from_the_server() {
    let r = one(&seed(Profile::routeros()), Some(Side::Server));
    assert_eq!(r.reachability, 1.0, "{r:?}");
    assert_eq!(r.nat_entries_created, 1);
    assert_eq!(r.client_keepalive, Some(150));
}

#[test]
fn linux_profile_needs_follow_up_and_a_shorter_keepalive() {
    let cfg = seed(Profile::linux());
    let off = one(&cfg, None);
    // 30 s of every 150 s.
    assert!((off.reachability - 0.2).abs() < 0.01, "{off:?}");
    let on = one(&cfg, Some(Side::Client));
    assert_eq!(on.reachability, 1.0, "{on:?}");
    assert_eq!(on.client_keepalive, Some(96));
    // From the server alone, 150 s keepalives outlive the 120 s stream timeout: the keeper
    // answers each re-created entry and promotes it, which is all it can do.
    let server = one(&cfg, Some(Side::Server));
    assert!(
        server.reachability > off.reachability && server.reachability < 1.0,
        "{server:?}"
    );
    assert!(
        server.keeper_stats.follow_ups > server.handshakes,
        "{server:?}"
    );
}

#[test]
fn pf_profile_is_fixed_by_the_keepalive_alone() {
    let cfg = seed(Profile::pf());
    let off = one(&cfg, None);
    // udp.multiple 60 s of every 150 s.
    assert!((off.reachability - 0.4).abs() < 0.01, "{off:?}");
    let on = one(&cfg, Some(Side::Client));
    assert_eq!(on.reachability, 1.0, "{on:?}");
    assert_eq!(on.client_keepalive, Some(48));
    assert_eq!(
        on.keeper_stats.follow_ups, 0,
        "pf has no grace rule: follow-ups cannot help"
    );
}

#[test]
fn a_short_keepalive_works_without_the_keeper_at_a_price() {
    let mut cfg = seed(Profile::routeros());
    cfg.keepalive = Some(8);
    let off = one(&cfg, None);
    let on = one(&seed(Profile::routeros()), Some(Side::Client));
    assert_eq!(off.reachability, 1.0);
    assert!(
        off.packets_per_hour > 5.0 * on.packets_per_hour,
        "{off:?} vs {on:?}"
    );
}

#[test]
fn inbound_data_is_lost_without_the_keeper_and_delivered_with_it() {
    let mut cfg = seed(Profile::routeros());
    cfg.inbound_every = Some(Duration::from_secs(30));
    let off = one(&cfg, None);
    assert_eq!(off.inbound_sent, 119);
    assert!(off.inbound_delivered < off.inbound_sent / 2, "{off:?}");
    assert!(off.nat_dropped_inbound > 0);
    let on = one(&cfg, Some(Side::Client));
    assert_eq!(on.inbound_delivered, on.inbound_sent, "{on:?}");
    assert_eq!(on.reachability, 1.0);
}

#[test]
fn timeline_shows_the_packets_and_the_entry_life() {
    let mut cfg = seed(Profile::routeros());
    cfg.duration = Duration::from_secs(200);
    cfg.timeline = true;
    let report = run(&cfg, KeeperRuns::Both, Side::Client);
    let text = render_timeline(&report);
    for needle in [
        "148 B  → server handshake initiation",
        " 92 B  → client handshake response",
        " 32 B  → server keepalive",
        "entry #1 created",
        "entry #1 saw a reply",
        "entry #1 on the stream timeout (180 s)",
        "entry #1 expired",
        "keeper: follow-up (handshake)",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
    // Keeper off: the entry expires exactly 10 s after the handshake's last packet.
    let off = &report.runs[0].timeline;
    let last_hs_packet = off
        .iter()
        .find(|e| e.event.contains("keepalive"))
        .unwrap()
        .t;
    let expired = off
        .iter()
        .find(|e| e.event == "entry #1 expired")
        .unwrap()
        .t;
    assert!(
        (expired - last_hs_packet - 10.0).abs() < 1e-9,
        "{last_hs_packet} → {expired}"
    );
    // Keeper on: the follow-up is 2.5 s after the handshake completed.
    let on = &report.runs[1].timeline;
    let hs = on
        .iter()
        .find(|e| e.source == "client" && e.event == "handshake complete")
        .unwrap()
        .t;
    let fu = on
        .iter()
        .find(|e| e.event.starts_with("keeper: follow-up"))
        .unwrap()
        .t;
    assert!((fu - hs - 2.5).abs() < 1e-9, "{hs} → {fu}");
}

#[test]
fn json_contract() {
    let report = run(&seed(Profile::routeros()), KeeperRuns::Both, Side::Server);
    let v: serde_json::Value = serde_json::from_str(&render_json(&report)).unwrap();
    assert_eq!(v["profile"], "routeros");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["keeper"], "off");
    assert!(runs[0]["side"].is_null());
    assert_eq!(runs[1]["keeper"], "on");
    assert_eq!(runs[1]["side"], "server");
    for r in runs {
        for key in [
            "reachability",
            "inbound_sent",
            "inbound_delivered",
            "packets_per_hour",
            "nat_entries_created",
        ] {
            assert!(r[key].is_number(), "{key} in {r}");
        }
        assert!((0.0..=1.0).contains(&r["reachability"].as_f64().unwrap()));
    }
}

#[test]
fn runs_are_deterministic() {
    let mut cfg = seed(Profile::routeros());
    cfg.timeline = true;
    cfg.inbound_every = Some(Duration::from_secs(45));
    let a = render_json(&run(&cfg, KeeperRuns::Both, Side::Client));
    let b = render_json(&run(&cfg, KeeperRuns::Both, Side::Client));
    assert_eq!(a, b);
}

#[test]
fn human_output_names_the_outcome() {
    let text = render_human(&run(
        &seed(Profile::routeros()),
        KeeperRuns::Both,
        Side::Client,
    ));
    assert!(text.contains("reachability"), "{text}");
    assert!(text.contains("6.7%"), "{text}");
    assert!(text.contains("100.0%"), "{text}");
    assert!(text.contains("all the time"), "{text}");
}

/// The soak (issue 6), shortened for the suite: seeded random data in both directions, wgkeep
/// on the client with the seed's 150 s keepalive. Every profile keeps the server's reachability
/// at 100% and delivers every packet in time, and the simulation's state stays at the same small
/// size however long it runs. `scripts/soak.sh` runs 24 h per profile in release.
#[test]
fn soak_random_traffic_is_always_reachable_with_bounded_state() {
    let hours = |h: u64| Duration::from_secs(h * 3600);
    for (profile, long) in [
        (Profile::routeros(), hours(24)),
        (Profile::linux(), hours(6)),
        (Profile::openwrt(), hours(6)),
        (Profile::pf(), hours(6)),
    ] {
        let mut cfg = seed(profile);
        cfg.random_traffic = Some(6);
        for duration in [hours(1), long] {
            cfg.duration = duration;
            let r = one(&cfg, Some(Side::Client));
            let name = &cfg.profile.name;
            assert_eq!(r.reachability, 1.0, "{name}: {r:?}");
            assert!(
                r.inbound_sent > 20 * duration.as_secs() / 3600,
                "{name}: {r:?}"
            );
            // The NAT drops nothing. (boringtun may reject a packet encrypted with a session
            // the receiver has just expired: `inbound_rejected`; this seed has none.)
            assert_eq!(r.nat_dropped_inbound, 0, "{name}: {r:?}");
            assert_eq!(r.inbound_delivered, r.inbound_sent, "{name}: {r:?}");
            assert_eq!(r.outbound_delivered, r.outbound_sent, "{name}: {r:?}");
            assert_eq!(r.nat_entries_created, 1, "{name}: {r:?}");
            if cfg.profile.rules.conntrack().is_none() {
                // pf: nothing to promote; the lowered keepalive does it all.
                assert_eq!(r.keeper_stats.follow_ups, 0, "{name}: {r:?}");
            }
            // A tick, the next burst, one burst's 16 packets, a few datagrams in flight.
            assert!(r.peak.event_queue <= 32, "{name}: {:?}", r.peak);
            assert_eq!(r.peak.nat_entries, 1, "{name}: {:?}", r.peak);
            assert!(r.peak.inbound_in_flight <= 16, "{name}: {:?}", r.peak);
        }
    }
}

/// Regression (issue 6 soak): the delivery check used to remember the send time of every inbound
/// packet, so `--inbound-every 1s --duration 30days` held 2.6 M timestamps. It now remembers the
/// last 5 s only, and counts exactly as before.
#[test]
fn inbound_delivery_check_holds_only_the_last_five_seconds() {
    let mut cfg = seed(Profile::routeros());
    cfg.inbound_every = Some(Duration::from_secs(1));
    cfg.duration = Duration::from_secs(2 * 3600);
    let on = one(&cfg, Some(Side::Client));
    assert_eq!(on.inbound_sent, 7199);
    assert_eq!(on.inbound_delivered, on.inbound_sent);
    assert!(on.peak.inbound_in_flight <= 6, "{:?}", on.peak);
    // Without the keeper, packets sent into a dead entry are lost (never delivered), and those
    // queued behind the next handshake arrive late: both are still counted.
    cfg.inbound_every = Some(Duration::from_secs(30));
    let off = one(&cfg, None);
    assert!(off.inbound_delivered < off.inbound_sent / 2, "{off:?}");
    assert!(off.peak.inbound_in_flight <= 2, "{:?}", off.peak);
}

#[test]
fn random_traffic_is_reported_and_reproducible() {
    let mut cfg = seed(Profile::linux());
    cfg.random_traffic = Some(3);
    let report = run(&cfg, KeeperRuns::Both, Side::Client);
    let text = render_human(&report);
    assert!(text.contains("random traffic (seed 3)"), "{text}");
    assert!(text.contains("inbound delivered"), "{text}");
    let json = render_json(&report);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["random_traffic_seed"], 3);
    for r in v["runs"].as_array().unwrap() {
        for key in [
            "outbound_sent",
            "outbound_delivered",
            "client_packets",
            "client_bytes",
            "client_received",
            "client_packets_per_hour",
            "client_bytes_per_hour",
        ] {
            assert!(r[key].is_number(), "{key} in {r}");
        }
        assert!(r["peak"]["event_queue"].is_number(), "{r}");
    }
    let (off, on) = (&report.runs[0], &report.runs[1]);
    assert!(off.outbound_sent > 0 && off.inbound_sent > 0, "{off:?}");
    // The same traffic both times; without wgkeep Linux forgets the client in the idle gaps.
    assert_eq!(
        (off.inbound_sent, off.outbound_sent),
        (on.inbound_sent, on.outbound_sent)
    );
    assert!(off.reachability < 1.0, "{off:?}");
    assert_eq!(on.reachability, 1.0, "{on:?}");
    assert!(off.client_packets < off.packets && off.client_bytes < off.bytes);
    assert_eq!(
        json,
        render_json(&run(&cfg, KeeperRuns::Both, Side::Client))
    );
    cfg.random_traffic = Some(4);
    let other = run(&cfg, KeeperRuns::Off, Side::Client);
    assert_ne!(other.runs[0].inbound_sent, off.inbound_sent);
}

/// boringtun expires a session only on its 250 ms timer tick and encrypts with it until then: a
/// packet the server sends just after the session's 180 s can reach a client that already dropped
/// the session. The lab counts it as rejected by WireGuard, not as lost in the NAT (seed 2,
/// RouterOS, inbound data #1299 at 40680.246 s).
#[test]
fn packets_rejected_by_wireguard_are_not_blamed_on_the_nat() {
    let mut cfg = seed(Profile::routeros());
    cfg.random_traffic = Some(2);
    cfg.duration = Duration::from_secs(40_700);
    cfg.timeline = true;
    let r = one(&cfg, Some(Side::Client));
    assert_eq!(r.reachability, 1.0, "{r:?}");
    assert_eq!(r.nat_dropped_inbound, 0);
    assert_eq!(r.inbound_rejected, 1, "{r:?}");
    assert_eq!(r.inbound_delivered + r.inbound_rejected, r.inbound_sent);
    let e = r
        .timeline
        .iter()
        .find(|e| e.event.starts_with("WireGuard rejected inbound data"))
        .unwrap();
    assert!((e.t - 40680.256).abs() < 1e-6, "{e:?}");
}
