//! The namespace lab itself: NAT, firewall, conntrack parsing and cleanup.

use std::net::SocketAddrV4;
use std::time::Duration;

use wgkeep_tests::{netns_path, LabConfig, NetLab, Ns};

#[test]
fn lab_nats_drops_unsolicited_inbound_and_cleans_up() {
    if !wgkeep_tests::require_root("lab") {
        return;
    }
    let lab = NetLab::new(LabConfig::new(10, 180)).expect("lab");
    let names: Vec<String> = [Ns::Client, Ns::Router, Ns::Server]
        .iter()
        .map(|&n| lab.ns(n).to_owned())
        .collect();
    assert!(names.iter().all(|n| netns_path(n).exists()));
    assert_eq!(
        lab.exec_ok(
            Ns::Router,
            &["sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout"]
        )
        .trim(),
        "10"
    );

    let server_addr = SocketAddrV4::new(lab.server_ip(), 51820);
    let client_addr = SocketAddrV4::new(lab.client_ip(), 40000);
    let server = lab.udp_socket(Ns::Server, server_addr).unwrap();
    let client = lab.udp_socket(Ns::Client, client_addr).unwrap();
    for s in [&server, &client] {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    let mut buf = [0u8; 64];

    // Unsolicited inbound to the router's public address: dropped, and no entry created.
    let public = SocketAddrV4::new(lab.router_public_ip(), 40000);
    server.send_to(b"early", public).unwrap();
    assert!(
        client.recv_from(&mut buf).is_err(),
        "unsolicited packet passed"
    );
    assert_eq!(lab.conntrack_udp().unwrap(), vec![]);

    // Outbound: masqueraded, port kept.
    client.send_to(b"hello", server_addr).unwrap();
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"hello"[..], public.into()));
    let ct = lab.conntrack_udp().unwrap();
    assert_eq!(ct.len(), 1, "{ct:?}");
    assert_eq!(ct[0].original_src(), client_addr);
    assert_eq!(ct[0].public(), public);
    assert!(ct[0].unreplied && !ct[0].assured);
    assert!((8..=10).contains(&ct[0].remaining_secs), "{}", ct[0]);

    // The reply passes.
    server.send_to(b"reply", public).unwrap();
    let (n, from) = client.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"reply"[..], server_addr.into()));
    let ct = lab.conntrack_udp().unwrap();
    assert!(!ct[0].unreplied && !ct[0].assured, "{}", ct[0]);

    drop(lab);
    assert!(names.iter().all(|n| !netns_path(n).exists()));
}
