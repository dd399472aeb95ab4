//! Byte-for-byte message tests (against hand-written bytes) and parser tests on dumps built by
//! a small test-only encoder that shares no code with the production encoder.
//!
//! The hand-written bytes are little-endian (netlink headers and attributes are host order), so
//! the byte-exact tests only run on little-endian targets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, UNIX_EPOCH};

use super::client::devtype_is_wireguard;
use super::parse::{ext_ack_message, split_messages};
use super::*;

const FAM: u16 = 0x15; // a family id as the kernel might assign it
const SEQ: u32 = 7;

fn key(b: u8) -> Key {
    Key([b; 32])
}

// ----------------------------------------------------------------------------------------------
// Test-only encoder (independent of MsgBuilder).
// ----------------------------------------------------------------------------------------------

/// An attribute: nla_len (header + payload), nla_type, payload, zero padding to 4.
fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(payload);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// A nest with NLA_F_NESTED; children are already padded, so nla_len covers them all.
fn nest(ty: u16, children: &[Vec<u8>]) -> Vec<u8> {
    nla(ty | 0x8000, &children.concat())
}

/// A netlink message: 16-byte header then payload (padded).
fn msg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&4242u32.to_ne_bytes()); // the kernel puts our port id here
    v.extend_from_slice(payload);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// genlmsghdr (cmd, version, reserved) followed by attributes.
fn genl(cmd: u8, version: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![cmd, version, 0, 0];
    v.extend_from_slice(&attrs.concat());
    v
}

/// NLMSG_ERROR: int error, then the request's header (NLM_F_CAPPED style).
fn error_msg(seq: u32, errno: i32, ext_ack: Option<&str>) -> Vec<u8> {
    let mut p = (-errno).to_ne_bytes().to_vec();
    let mut req = Vec::new();
    req.extend_from_slice(&28u32.to_ne_bytes());
    req.extend_from_slice(&FAM.to_ne_bytes());
    req.extend_from_slice(&0x0305u16.to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    p.extend_from_slice(&req);
    let mut flags = 0x100; // NLM_F_CAPPED
    if let Some(m) = ext_ack {
        flags |= 0x200; // NLM_F_ACK_TLVS
        let mut s = m.as_bytes().to_vec();
        s.push(0);
        p.extend_from_slice(&nla(1, &s)); // NLMSGERR_ATTR_MSG
    }
    msg(2, flags, seq, &p)
}

fn done_msg(seq: u32, code: i32) -> Vec<u8> {
    msg(3, 0x2, seq, &code.to_ne_bytes())
}

fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut v = 2u16.to_ne_bytes().to_vec(); // sin_family = AF_INET
    v.extend_from_slice(&port.to_be_bytes()); // sin_port
    v.extend_from_slice(&ip); // sin_addr
    v.extend_from_slice(&[0; 8]); // sin_zero
    v
}

fn sockaddr_in6(ip: Ipv6Addr, port: u16, scope: u32) -> Vec<u8> {
    let mut v = 10u16.to_ne_bytes().to_vec(); // sin6_family = AF_INET6
    v.extend_from_slice(&port.to_be_bytes()); // sin6_port
    v.extend_from_slice(&0u32.to_be_bytes()); // sin6_flowinfo
    v.extend_from_slice(&ip.octets()); // sin6_addr
    v.extend_from_slice(&scope.to_ne_bytes()); // sin6_scope_id
    v
}

/// One allowed IP in the kernel's order: CIDR_MASK, FAMILY, IPADDR.
fn aip(addr: IpAddr, cidr: u8) -> Vec<u8> {
    let (family, bytes) = match addr {
        IpAddr::V4(a) => (2u16, a.octets().to_vec()),
        IpAddr::V6(a) => (10u16, a.octets().to_vec()),
    };
    nest(
        0,
        &[
            nla(3, &[cidr]),
            nla(1, &family.to_ne_bytes()),
            nla(2, &bytes),
        ],
    )
}

fn timespec(sec: i64, nsec: i64) -> Vec<u8> {
    let mut v = sec.to_ne_bytes().to_vec();
    v.extend_from_slice(&nsec.to_ne_bytes());
    v
}

/// A full peer entry as `get_peer` writes it (first appearance).
fn full_peer(
    k: &Key,
    endpoint: Option<Vec<u8>>,
    hs: (i64, i64),
    (pk, rx, tx): (u16, u64, u64),
    ips: &[Vec<u8>],
    pad: bool,
) -> Vec<u8> {
    let mut a = vec![
        nla(1, &k.0),                  // WGPEER_A_PUBLIC_KEY
        nla(2, &[0x77; 32]),           // WGPEER_A_PRESHARED_KEY
        nla(6, &timespec(hs.0, hs.1)), // WGPEER_A_LAST_HANDSHAKE_TIME
        nla(5, &pk.to_ne_bytes()),     // WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL
    ];
    if pad {
        a.push(nla(0, &[])); // 64-bit alignment pad (nla_put_u64_64bit, WGPEER_A_UNSPEC)
    }
    a.push(nla(8, &tx.to_ne_bytes())); // WGPEER_A_TX_BYTES
    a.push(nla(7, &rx.to_ne_bytes())); // WGPEER_A_RX_BYTES
    a.push(nla(10, &1u32.to_ne_bytes())); // WGPEER_A_PROTOCOL_VERSION
    if let Some(e) = endpoint {
        a.push(nla(4, &e)); // WGPEER_A_ENDPOINT
    }
    if !ips.is_empty() {
        a.push(nest(9, ips)); // WGPEER_A_ALLOWEDIPS
    }
    nest(0, &a)
}

/// A continuation entry: public key and more allowed IPs only.
fn continued_peer(k: &Key, ips: &[Vec<u8>]) -> Vec<u8> {
    nest(0, &[nla(1, &k.0), nest(9, ips)])
}

fn first_device_msg(seq: u32, peers: &[Vec<u8>]) -> Vec<u8> {
    msg(
        FAM,
        0x2, // NLM_F_MULTI
        seq,
        &genl(
            0,
            1,
            &[
                nla(6, &51820u16.to_ne_bytes()), // WGDEVICE_A_LISTEN_PORT
                nla(7, &0u32.to_ne_bytes()),     // WGDEVICE_A_FWMARK
                nla(1, &5u32.to_ne_bytes()),     // WGDEVICE_A_IFINDEX
                nla(2, b"wg0\0"),                // WGDEVICE_A_IFNAME
                nla(3, &[0x99; 32]),             // WGDEVICE_A_PRIVATE_KEY
                nla(4, &[0x01; 32]),             // WGDEVICE_A_PUBLIC_KEY
                nest(8, peers),                  // WGDEVICE_A_PEERS
            ],
        ),
    )
}

fn next_device_msg(seq: u32, peers: &[Vec<u8>]) -> Vec<u8> {
    msg(
        FAM,
        0x2,
        seq,
        &genl(
            0,
            1,
            &[
                nla(1, &5u32.to_ne_bytes()),
                nla(2, b"wg0\0"),
                nest(8, peers),
            ],
        ),
    )
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse().unwrap())
}

/// Three peers over two messages and three datagrams; peer B's allowed IPs continue in the
/// second message; an unrelated message in between; DONE.
fn three_peer_dump() -> Vec<Vec<u8>> {
    let a = full_peer(
        &key(0xa1),
        Some(sockaddr_in([203, 0, 113, 5], 51820)),
        (1_700_000_000, 500),
        (25, 1000, 2000),
        &[aip(v4(10, 0, 0, 2), 32)],
        false,
    );
    let b = full_peer(
        &key(0xb2),
        Some(sockaddr_in6("2001:db8::1".parse().unwrap(), 51821, 0)),
        (0, 0),
        (0, 0, 148),
        &[aip(v4(10, 0, 0, 3), 32), aip(v6("fd00::3"), 128)],
        true,
    );
    let b_more = continued_peer(
        &key(0xb2),
        &[aip(v4(10, 0, 1, 0), 24), aip(v6("2001:db8:1::"), 48)],
    );
    let c = full_peer(&key(0xc3), None, (0, 0), (0, 0, 0), &[], false);
    let d1 = first_device_msg(SEQ, &[a, b]);
    let unrelated = msg(FAM, 0x2, SEQ + 100, &genl(0, 1, &[nla(2, b"wg9\0")]));
    let d2 = next_device_msg(SEQ, &[b_more, c]);
    let mut d3 = d2.clone();
    d3.extend_from_slice(&done_msg(SEQ, 0));
    vec![d1, unrelated, d3]
}

fn expected_three_peers() -> DeviceInfo {
    DeviceInfo {
        implementation: Implementation::Kernel,
        public_key: Some(key(0x01)),
        listen_port: Some(51820),
        peers: vec![
            PeerInfo {
                public_key: key(0xa1),
                endpoint: Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::new(203, 0, 113, 5),
                    51820,
                ))),
                last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500)),
                rx_bytes: 1000,
                tx_bytes: 2000,
                persistent_keepalive: Some(25),
                allowed_ips: vec![AllowedIp {
                    addr: v4(10, 0, 0, 2),
                    cidr: 32,
                }],
            },
            PeerInfo {
                public_key: key(0xb2),
                endpoint: Some(SocketAddr::V6(SocketAddrV6::new(
                    "2001:db8::1".parse().unwrap(),
                    51821,
                    0,
                    0,
                ))),
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 148,
                persistent_keepalive: None,
                allowed_ips: vec![
                    AllowedIp {
                        addr: v4(10, 0, 0, 3),
                        cidr: 32,
                    },
                    AllowedIp {
                        addr: v6("fd00::3"),
                        cidr: 128,
                    },
                    AllowedIp {
                        addr: v4(10, 0, 1, 0),
                        cidr: 24,
                    },
                    AllowedIp {
                        addr: v6("2001:db8:1::"),
                        cidr: 48,
                    },
                ],
            },
            PeerInfo {
                public_key: key(0xc3),
                endpoint: None,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                persistent_keepalive: None,
                allowed_ips: vec![],
            },
        ],
    }
}

fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(|d| d.as_slice()).collect()
}

// ----------------------------------------------------------------------------------------------
// Messages, byte for byte.
// ----------------------------------------------------------------------------------------------

/// One peer entry of a WG_CMD_SET_DEVICE message, written out: 56 bytes.
fn expected_peer_entry(keepalive_lo: u8) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(&[0x38, 0x00]); // nla_len = 56 (4 + 36 + 8 + 8)
    e.extend_from_slice(&[0x00, 0x80]); // nla_type = 0 | NLA_F_NESTED (0x8000): array element
    e.extend_from_slice(&[0x24, 0x00]); //   nla_len = 36 (4 + WG_KEY_LEN)
    e.extend_from_slice(&[0x01, 0x00]); //   nla_type = WGPEER_A_PUBLIC_KEY (1)
    e.extend_from_slice(&[0xab; 32]); //     the key
    e.extend_from_slice(&[0x08, 0x00]); //   nla_len = 8
    e.extend_from_slice(&[0x03, 0x00]); //   nla_type = WGPEER_A_FLAGS (3)
    e.extend_from_slice(&[0x04, 0x00, 0x00, 0x00]); // WGPEER_F_UPDATE_ONLY (1U << 2), u32
    e.extend_from_slice(&[0x06, 0x00]); //   nla_len = 6 (4 + u16)
    e.extend_from_slice(&[0x05, 0x00]); //   nla_type = WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL (5)
    e.extend_from_slice(&[keepalive_lo, 0x00]); // the interval, u16
    e.extend_from_slice(&[0x00, 0x00]); //   padding to 4 bytes
    e
}

/// nlmsghdr + genlmsghdr + WGDEVICE_A_IFNAME "wg0" of a WG_CMD_SET_DEVICE request.
fn expected_set_device_head(total_len: u8) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&[total_len, 0x00, 0x00, 0x00]); // nlmsg_len
    m.extend_from_slice(&[0x15, 0x00]); // nlmsg_type = family id (0x15)
    m.extend_from_slice(&[0x05, 0x00]); // nlmsg_flags = NLM_F_REQUEST (1) | NLM_F_ACK (4)
    m.extend_from_slice(&[0x07, 0x00, 0x00, 0x00]); // nlmsg_seq = 7
    m.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]); // nlmsg_pid = 0
    m.push(0x01); // genlmsghdr.cmd = WG_CMD_SET_DEVICE (1)
    m.push(0x01); // genlmsghdr.version = WG_GENL_VERSION (1)
    m.extend_from_slice(&[0x00, 0x00]); // genlmsghdr.reserved
    m.extend_from_slice(&[0x08, 0x00]); // nla_len = 8 (4 + "wg0\0")
    m.extend_from_slice(&[0x02, 0x00]); // nla_type = WGDEVICE_A_IFNAME (2)
    m.extend_from_slice(b"wg0\0"); // NUL-terminated name (already 4-aligned)
    m
}

#[cfg(target_endian = "little")]
#[test]
fn kick_message_with_keepalive_on_is_zero_then_n() {
    let mut want = expected_set_device_head(0x90); // 144 = 16 + 4 + 8 + 116
    want.extend_from_slice(&[0x74, 0x00]); // nla_len = 116 (4 + 2 * 56)
    want.extend_from_slice(&[0x08, 0x80]); // nla_type = WGDEVICE_A_PEERS (8) | NLA_F_NESTED
    want.extend_from_slice(&expected_peer_entry(0)); // first: keepalive 0
    want.extend_from_slice(&expected_peer_entry(25)); // then: keepalive back to 25 -> sends one
    assert_eq!(want.len(), 144);
    assert_eq!(kick_message(FAM, SEQ, "wg0", &key(0xab), Some(25)), want);
}

#[cfg(target_endian = "little")]
#[test]
fn kick_message_with_keepalive_off_is_one_then_zero() {
    let mut want = expected_set_device_head(0x90);
    want.extend_from_slice(&[0x74, 0x00]); // nla_len = 116
    want.extend_from_slice(&[0x08, 0x80]); // WGDEVICE_A_PEERS | NLA_F_NESTED
    want.extend_from_slice(&expected_peer_entry(1)); // first: 0 -> 1 sends the keepalive
    want.extend_from_slice(&expected_peer_entry(0)); // then: back to off
    assert_eq!(kick_message(FAM, SEQ, "wg0", &key(0xab), None), want);
    // Some(0) means off too.
    assert_eq!(kick_message(FAM, SEQ, "wg0", &key(0xab), Some(0)), want);
}

#[cfg(target_endian = "little")]
#[test]
fn set_keepalive_message_bytes() {
    let mut want = expected_set_device_head(0x58); // 88 = 16 + 4 + 8 + 60
    want.extend_from_slice(&[0x3c, 0x00]); // nla_len = 60 (4 + 56)
    want.extend_from_slice(&[0x08, 0x80]); // WGDEVICE_A_PEERS | NLA_F_NESTED
    want.extend_from_slice(&expected_peer_entry(150)); // 150 = 0x96
    assert_eq!(want.len(), 88);
    assert_eq!(
        set_keepalive_message(FAM, SEQ, "wg0", &key(0xab), Some(150)),
        want
    );

    let mut off = expected_set_device_head(0x58);
    off.extend_from_slice(&[0x3c, 0x00, 0x08, 0x80]);
    off.extend_from_slice(&expected_peer_entry(0));
    assert_eq!(
        set_keepalive_message(FAM, SEQ, "wg0", &key(0xab), None),
        off
    );
}

#[cfg(target_endian = "little")]
#[test]
fn get_device_message_bytes() {
    let want: Vec<u8> = [
        &[0x24, 0x00, 0x00, 0x00][..], // nlmsg_len = 36 = 16 + 4 + 16
        &[0x15, 0x00],                 // nlmsg_type = family id
        &[0x05, 0x03],                 // nlmsg_flags = REQUEST (0x1) | ACK (0x4) | DUMP (0x300)
        &[0x07, 0x00, 0x00, 0x00],     // nlmsg_seq = 7
        &[0x00, 0x00, 0x00, 0x00],     // nlmsg_pid = 0
        &[0x00],                       // genlmsghdr.cmd = WG_CMD_GET_DEVICE (0)
        &[0x01],                       // genlmsghdr.version = WG_GENL_VERSION (1)
        &[0x00, 0x00],                 // genlmsghdr.reserved
        &[0x0e, 0x00],                 // nla_len = 14 (4 + "wg-office\0")
        &[0x02, 0x00],                 // nla_type = WGDEVICE_A_IFNAME (2)
        b"wg-office\0",                // the name, NUL-terminated
        &[0x00, 0x00],                 // padding to 4 bytes
    ]
    .concat();
    assert_eq!(get_device_message(FAM, SEQ, "wg-office"), want);
}

#[cfg(target_endian = "little")]
#[test]
fn get_family_message_bytes() {
    let want: Vec<u8> = [
        &[0x24, 0x00, 0x00, 0x00][..], // nlmsg_len = 36
        &[0x10, 0x00],                 // nlmsg_type = GENL_ID_CTRL (0x10)
        &[0x05, 0x00],                 // nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK
        &[0x07, 0x00, 0x00, 0x00],     // nlmsg_seq = 7
        &[0x00, 0x00, 0x00, 0x00],     // nlmsg_pid = 0
        &[0x03],                       // genlmsghdr.cmd = CTRL_CMD_GETFAMILY (3)
        &[0x01],                       // genlmsghdr.version = 1
        &[0x00, 0x00],                 // reserved
        &[0x0e, 0x00],                 // nla_len = 14 (4 + "wireguard\0")
        &[0x02, 0x00],                 // nla_type = CTRL_ATTR_FAMILY_NAME (2)
        b"wireguard\0",
        &[0x00, 0x00], // padding
    ]
    .concat();
    assert_eq!(get_family_message(SEQ, WG_GENL_NAME), want);
}

#[test]
fn built_messages_parse_back_with_nested_flags_where_the_kernel_requires_them() {
    let m = kick_message(FAM, SEQ, "wg0", &key(0xab), Some(25));
    let msgs = split_messages(&m).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        (msgs[0].msg_type, msgs[0].flags, msgs[0].seq),
        (FAM, 0x5, SEQ)
    );
    let top: Vec<_> = parse::attrs(&msgs[0].payload[4..])
        .map(Result::unwrap)
        .collect();
    assert_eq!(top.len(), 2);
    assert!(!top[0].nested && top[0].attr_type == WGDEVICE_A_IFNAME);
    assert!(top[1].nested && top[1].attr_type == WGDEVICE_A_PEERS);
    let entries: Vec<_> = parse::attrs(top[1].payload).map(Result::unwrap).collect();
    assert_eq!(entries.len(), 2);
    for e in &entries {
        assert!(e.nested && e.attr_type == 0);
        for a in parse::attrs(e.payload) {
            assert!(!a.unwrap().nested);
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Parsing.
// ----------------------------------------------------------------------------------------------

#[test]
fn parses_a_three_peer_dump_split_over_messages() {
    let dump = three_peer_dump();
    let got = parse_get_device("wg0", FAM, SEQ, &refs(&dump)).unwrap();
    assert_eq!(got, expected_three_peers());
}

#[test]
fn incremental_dump_reports_done_and_interrupted() {
    let dump = three_peer_dump();
    let mut d = DeviceDump::new("wg0", FAM, SEQ);
    assert!(!d.feed(&dump[0]).unwrap());
    assert!(!d.feed(&dump[1]).unwrap());
    assert!(!d.is_done());
    assert!(d.feed(&dump[2]).unwrap());
    assert!(d.is_done() && !d.interrupted());
    assert_eq!(d.finish().unwrap(), expected_three_peers());

    // NLM_F_DUMP_INTR on a message.
    let mut d = DeviceDump::new("wg0", FAM, SEQ);
    let first = msg(
        FAM,
        0x2 | 0x10,
        SEQ,
        &genl(0, 1, &[nla(6, &1u16.to_ne_bytes())]),
    );
    assert!(!d.feed(&first).unwrap());
    assert!(d.feed(&done_msg(SEQ, 0)).unwrap());
    assert!(d.interrupted());
    assert_eq!(d.finish().unwrap().listen_port, Some(1));
}

#[test]
fn a_device_without_peers_or_key() {
    let m = msg(
        FAM,
        0x2,
        SEQ,
        &genl(0, 1, &[nla(6, &0u16.to_ne_bytes()), nla(2, b"wg0\0")]),
    );
    let got = parse_get_device("wg0", FAM, SEQ, &[&m, &done_msg(SEQ, 0)]).unwrap();
    assert_eq!(
        got,
        DeviceInfo {
            implementation: Implementation::Kernel,
            public_key: None,
            listen_port: Some(0),
            peers: vec![]
        }
    );
}

#[test]
fn enodev_is_not_found() {
    let e = error_msg(SEQ, 19, None);
    match parse_get_device("wg7", FAM, SEQ, &[&e]) {
        Err(WgError::NotFound(i)) => assert_eq!(i, "wg7"),
        other => panic!("{other:?}"),
    }
    // The same errno in NLMSG_DONE.
    match parse_get_device("wg7", FAM, SEQ, &[&done_msg(SEQ, -19)]) {
        Err(WgError::NotFound(i)) => assert_eq!(i, "wg7"),
        other => panic!("{other:?}"),
    }
    match parse_ack("wg7", "kick", SEQ, &[&e]) {
        Err(WgError::NotFound(i)) => assert_eq!(i, "wg7"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_errno_is_refused_with_the_ext_ack_message_readable() {
    let e = error_msg(SEQ, 95, Some("not a wireguard device"));
    match parse_get_device("eth0", FAM, SEQ, &[&e]) {
        Err(WgError::Refused { iface, what, errno }) => {
            assert_eq!((iface.as_str(), what, errno), ("eth0", "get device", 95))
        }
        other => panic!("{other:?}"),
    }
    let m = split_messages(&e).unwrap();
    assert_eq!(
        ext_ack_message(&m[0]).as_deref(),
        Some("not a wireguard device")
    );
    let e = error_msg(SEQ, 22, Some("NLA_F_NESTED is missing"));
    match parse_ack("wg0", "kick", SEQ, &[&e]) {
        Err(WgError::Refused {
            what: "kick",
            errno: 22,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn acks_match_sequence_numbers() {
    let other = error_msg(SEQ - 1, 19, None); // an old request's error: skipped
    let ack = error_msg(SEQ, 0, None);
    parse_ack("wg0", "kick", SEQ, &[&other, &ack]).unwrap();
    match parse_ack("wg0", "kick", SEQ, &[&other]) {
        Err(WgError::Malformed { .. }) => {}
        r => panic!("{r:?}"),
    }
}

#[test]
fn truncated_attribute_is_malformed() {
    // A peer entry claiming 200 bytes inside a PEERS nest of 40.
    let mut raw = 200u16.to_ne_bytes().to_vec();
    raw.extend_from_slice(&0x8000u16.to_ne_bytes());
    raw.extend_from_slice(&nla(1, &[0xa1; 32]));
    let m = msg(FAM, 0x2, SEQ, &genl(0, 1, &[nla(8 | 0x8000, &raw)]));
    match parse_get_device("wg0", FAM, SEQ, &[&m, &done_msg(SEQ, 0)]) {
        Err(WgError::Malformed { iface, detail }) => {
            assert_eq!(iface, "wg0");
            assert!(detail.contains("length 200"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // A key of the wrong size.
    let m = first_device_msg(SEQ, &[nest(0, &[nla(1, &[0xa1; 31])])]);
    assert!(matches!(
        parse_get_device("wg0", FAM, SEQ, &[&m, &done_msg(SEQ, 0)]),
        Err(WgError::Malformed { .. })
    ));
    // A datagram cut in the middle of a message.
    let dump = three_peer_dump();
    let cut = &dump[0][..dump[0].len() - 10];
    assert!(matches!(
        parse_get_device("wg0", FAM, SEQ, &[cut]),
        Err(WgError::Malformed { .. })
    ));
    // No NLMSG_DONE.
    assert!(matches!(
        parse_get_device("wg0", FAM, SEQ, &[&dump[0]]),
        Err(WgError::Malformed { .. })
    ));
}

#[test]
fn bad_values_are_malformed() {
    for bad in [
        nest(0, &[nla(1, &[1; 32]), nla(6, &timespec(-1, 0))]),
        nest(0, &[nla(1, &[1; 32]), nla(6, &timespec(1, 1_000_000_000))]),
        nest(
            0,
            &[nla(1, &[1; 32]), nla(4, &sockaddr_in([1, 2, 3, 4], 1)[..8])],
        ),
        nest(0, &[nla(1, &[1; 32]), nest(9, &[aip(v4(10, 0, 0, 0), 33)])]),
        nest(
            0,
            &[
                nla(1, &[1; 32]),
                nest(9, &[nest(0, &[nla(1, &2u16.to_ne_bytes())])]),
            ],
        ),
        nest(0, &[nla(5, &25u16.to_ne_bytes())]), // no public key
    ] {
        let m = first_device_msg(SEQ, &[bad]);
        assert!(
            matches!(
                parse_get_device("wg0", FAM, SEQ, &[&m, &done_msg(SEQ, 0)]),
                Err(WgError::Malformed { .. })
            ),
            "{m:02x?}"
        );
    }
}

#[test]
fn ipv6_endpoint_keeps_scope_id() {
    let p = full_peer(
        &key(5),
        Some(sockaddr_in6("fe80::1".parse().unwrap(), 51820, 3)),
        (0, 0),
        (0, 0, 0),
        &[],
        false,
    );
    let m = first_device_msg(SEQ, &[p]);
    let got = parse_get_device("wg0", FAM, SEQ, &[&m, &done_msg(SEQ, 0)]).unwrap();
    assert_eq!(
        got.peers[0].endpoint,
        Some(SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            51820,
            0,
            3
        )))
    );
}

#[test]
fn ten_thousand_peers_over_many_datagrams() {
    const N: u32 = 10_000;
    let peer_key = |i: u32| {
        let mut k = [0x5a; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        Key(k)
    };
    let ip = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    let mut datagrams = Vec::new();
    let mut entries: Vec<Vec<u8>> = Vec::new();
    let mut size = 0;
    let mut first = true;
    let flush = |entries: &mut Vec<Vec<u8>>, first: &mut bool, datagrams: &mut Vec<Vec<u8>>| {
        let m = if *first {
            first_device_msg(SEQ, entries)
        } else {
            next_device_msg(SEQ, entries)
        };
        *first = false;
        datagrams.push(m);
        entries.clear();
    };
    for i in 0..N {
        let e = full_peer(
            &peer_key(i),
            Some(sockaddr_in([192, 0, 2, (i % 250) as u8], 51820)),
            (i64::from(i) + 1, 0),
            (0, u64::from(i), 1),
            &[aip(ip(i), 32)],
            false,
        );
        if size + e.len() > 32_000 {
            flush(&mut entries, &mut first, &mut datagrams);
            // Let this boundary also split a peer: its second allowed IP goes in the next message.
            size = 0;
        }
        size += e.len();
        entries.push(e);
        if i == 5000 {
            flush(&mut entries, &mut first, &mut datagrams);
            entries.push(continued_peer(
                &peer_key(i),
                &[aip(v6("2001:db8::5000"), 128)],
            ));
            size = 0;
        }
    }
    flush(&mut entries, &mut first, &mut datagrams);
    datagrams.push(done_msg(SEQ, 0));
    assert!(datagrams.len() > 50, "{}", datagrams.len());
    let got = parse_get_device("wg0", FAM, SEQ, &refs(&datagrams)).unwrap();
    assert_eq!(got.peers.len(), N as usize);
    for (i, p) in got.peers.iter().enumerate() {
        let i = i as u32;
        assert_eq!(p.public_key, peer_key(i));
        assert_eq!(p.rx_bytes, u64::from(i));
        assert_eq!(
            p.last_handshake,
            Some(UNIX_EPOCH + Duration::from_secs(u64::from(i) + 1))
        );
    }
    assert_eq!(
        got.peers[5000].allowed_ips,
        vec![
            AllowedIp {
                addr: ip(5000),
                cidr: 32
            },
            AllowedIp {
                addr: v6("2001:db8::5000"),
                cidr: 128
            }
        ]
    );
}

/// xorshift64*: a dependency-free PRNG for the fuzz loop.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn fuzz_no_panics_on_truncated_mutated_or_random_input() {
    let dump = three_peer_dump();
    let all: Vec<u8> = dump.concat();
    // Every truncation of every datagram.
    for d in &dump {
        for n in 0..d.len() {
            let _ = parse_get_device("wg0", FAM, SEQ, &[&d[..n], &done_msg(SEQ, 0)]);
            let _ = parse_family_reply("wg0", SEQ, &[&d[..n]]);
            let _ = parse_ack("wg0", "kick", SEQ, &[&d[..n]]);
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..20_000 {
        let mut v = match round % 3 {
            0 => all.clone(),
            1 => dump[rng.below(dump.len())].clone(),
            _ => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
        };
        for _ in 0..rng.below(8) {
            if v.is_empty() {
                break;
            }
            let i = rng.below(v.len());
            v[i] = rng.next() as u8;
        }
        if !v.is_empty() && rng.below(2) == 0 {
            let n = rng.below(v.len());
            v.truncate(n);
        }
        let _ = parse_get_device("wg0", FAM, SEQ, &[&v]);
        let _ = parse_get_device("wg0", FAM, SEQ, &[&v, &done_msg(SEQ, 0)]);
        let _ = parse_family_reply("wg0", SEQ, &[&v]);
        let _ = parse_ack("wg0", "kick", SEQ, &[&v]);
        if let Ok(ms) = split_messages(&v) {
            for m in ms {
                let _ = ext_ack_message(&m);
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Family resolution.
// ----------------------------------------------------------------------------------------------

fn newfamily_reply(seq: u32, id: u16) -> Vec<u8> {
    msg(
        0x10, // GENL_ID_CTRL
        0,
        seq,
        &genl(
            1, // CTRL_CMD_NEWFAMILY
            2,
            &[
                nla(2, b"wireguard\0"),      // CTRL_ATTR_FAMILY_NAME
                nla(1, &id.to_ne_bytes()),   // CTRL_ATTR_FAMILY_ID
                nla(3, &1u32.to_ne_bytes()), // CTRL_ATTR_VERSION
                nla(4, &0u32.to_ne_bytes()), // CTRL_ATTR_HDRSIZE
                nla(5, &8u32.to_ne_bytes()), // CTRL_ATTR_MAXATTR
                nest(
                    6,
                    &[
                        // CTRL_ATTR_OPS
                        nest(
                            1,
                            &[nla(1, &0u32.to_ne_bytes()), nla(2, &0x1cu32.to_ne_bytes())],
                        ),
                        nest(
                            2,
                            &[nla(1, &1u32.to_ne_bytes()), nla(2, &0x1au32.to_ne_bytes())],
                        ),
                    ],
                ),
            ],
        ),
    )
}

#[test]
fn parses_the_controller_reply() {
    let mut d = newfamily_reply(SEQ, 0x23);
    d.extend_from_slice(&error_msg(SEQ, 0, None)); // the ACK, same datagram
    assert_eq!(parse_family_reply("wg0", SEQ, &[&d]).unwrap(), 0x23);
    // Reply and ACK in separate datagrams, an unrelated message first.
    let stale = newfamily_reply(SEQ - 1, 0x99);
    let r = newfamily_reply(SEQ, 0x24);
    let ack = error_msg(SEQ, 0, None);
    assert_eq!(
        parse_family_reply("wg0", SEQ, &[&stale, &r, &ack]).unwrap(),
        0x24
    );
}

#[test]
fn missing_family_is_unsupported() {
    let e = error_msg(SEQ, 2, None); // ENOENT
    match parse_family_reply("wg0", SEQ, &[&e]) {
        Err(WgError::Unsupported(m)) => {
            assert!(m.contains("\"wireguard\" not found"), "{m}");
            assert!(m.contains("wg0"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // An ACK without a family id.
    assert!(matches!(
        parse_family_reply("wg0", SEQ, &[&error_msg(SEQ, 0, None)]),
        Err(WgError::Malformed { .. })
    ));
}

// ----------------------------------------------------------------------------------------------
// Helpers and the live host.
// ----------------------------------------------------------------------------------------------

#[test]
fn interface_names() {
    assert!(valid_ifname("wg0"));
    assert!(valid_ifname("a23456789012345")); // 15 bytes
    assert!(!valid_ifname("a234567890123456")); // 16 bytes
    for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\0b"] {
        assert!(!valid_ifname(bad), "{bad:?}");
    }
}

#[test]
fn sysfs_devtype_detection() {
    let dir = std::env::temp_dir().join(format!("wgkeep-netlink-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("wg0")).unwrap();
    std::fs::create_dir_all(dir.join("eth0")).unwrap();
    std::fs::write(
        dir.join("wg0/uevent"),
        "DEVTYPE=wireguard\nINTERFACE=wg0\nIFINDEX=5\n",
    )
    .unwrap();
    std::fs::write(dir.join("eth0/uevent"), "INTERFACE=eth0\nIFINDEX=2\n").unwrap();
    assert!(devtype_is_wireguard(&dir, "wg0"));
    assert!(!devtype_is_wireguard(&dir, "eth0"));
    assert!(!devtype_is_wireguard(&dir, "missing0"));
    assert!(!devtype_is_wireguard(&dir, "../wg0"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// On a host without the wireguard module, opening fails with a clear error instead of
/// panicking; where the module exists, a made-up interface is NotFound.
#[test]
fn open_on_this_host_fails_cleanly_or_finds_no_such_interface() {
    match KernelClient::open("wgkeepnone0", Duration::from_secs(2)) {
        Err(WgError::Unsupported(m)) => {
            eprintln!("open on this host: {m}");
            assert!(
                m.contains("generic netlink family \"wireguard\" not found"),
                "{m}"
            )
        }
        Ok(mut c) => {
            assert!(c.family() >= 0x10);
            match c.get() {
                Err(WgError::NotFound(i)) => assert_eq!(i, "wgkeepnone0"),
                other => panic!("{other:?}"),
            }
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    assert!(matches!(
        KernelClient::open("no/such", Duration::from_secs(1)),
        Err(WgError::NotFound(_))
    ));
    assert!(!is_kernel_wireguard_link("wgkeepnone0"));
}

/// The real kernel's controller: resolving a family that always exists ("nlctrl" is
/// GENL_ID_CTRL itself) goes through the whole receive path and the NEWFAMILY parser.
#[test]
fn resolves_a_real_family_on_this_host() {
    let mut c = KernelClient::test_unresolved("wg0", Duration::from_secs(2)).unwrap();
    assert_eq!(c.test_resolve("nlctrl").unwrap(), GENL_ID_CTRL);
    assert!(!c.test_broken());
}

/// A request the kernel does not answer (NLMSG_NOOP without NLM_F_ACK) times out and marks the
/// client for a fresh socket.
#[test]
fn unanswered_request_times_out() {
    let mut c = KernelClient::test_unresolved("wg0", Duration::from_millis(200)).unwrap();
    let seq = c.test_next_seq();
    let noop = msg(NLMSG_NOOP, NLM_F_REQUEST, seq, &[]);
    let t = std::time::Instant::now();
    match c.test_exchange_ack(&noop, seq) {
        Err(WgError::Timeout(who, d)) => {
            assert_eq!(d, Duration::from_millis(200));
            assert!(who.contains("wg0"), "{who}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        t.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t.elapsed()
    );
    assert!(c.test_broken());
    // With NLM_F_ACK the kernel acknowledges it.
    let seq = c.test_next_seq();
    let noop = msg(NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, seq, &[]);
    c.test_exchange_ack(&noop, seq).unwrap();
}
