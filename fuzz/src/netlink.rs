//! Kernel WireGuard dumps for `netlink_peers`: an encoder independent of the agent's (a copy of
//! the test-only encoder in `agent/src/wg/netlink/tests.rs`), an encoder of a whole
//! [`DeviceInfo`] as the kernel would dump it, a message splitter, and the seed corpus.

use std::net::{IpAddr, SocketAddr};
use std::time::UNIX_EPOCH;

use wgkeep_agent::wg::{AllowedIp, DeviceInfo, Key, PeerInfo};

/// The family id, sequence number and interface the target parses with (as in the agent's
/// tests).
pub const FAMILY: u16 = 0x15;
pub const SEQ: u32 = 7;
pub const IFACE: &str = "wg0";

/// An attribute: nla_len (header + payload), nla_type, payload, zero padding to 4.
pub fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let len = u16::try_from(4 + payload.len()).expect("attribute under 64 KiB");
    v.extend_from_slice(&len.to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(payload);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// A nest with NLA_F_NESTED; children are already padded, so nla_len covers them all.
pub fn nest(ty: u16, children: &[Vec<u8>]) -> Vec<u8> {
    nla(ty | 0x8000, &children.concat())
}

/// A netlink message: 16-byte header then payload (padded).
pub fn msg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
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
pub fn genl(cmd: u8, version: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![cmd, version, 0, 0];
    v.extend_from_slice(&attrs.concat());
    v
}

/// NLMSG_ERROR: int error, then the request's header (NLM_F_CAPPED style), and the extended-ACK
/// message if any.
pub fn error_msg(seq: u32, errno: i32, ext_ack: Option<&str>) -> Vec<u8> {
    let mut p = (-errno).to_ne_bytes().to_vec();
    p.extend_from_slice(&28u32.to_ne_bytes());
    p.extend_from_slice(&FAMILY.to_ne_bytes());
    p.extend_from_slice(&0x0305u16.to_ne_bytes());
    p.extend_from_slice(&seq.to_ne_bytes());
    p.extend_from_slice(&0u32.to_ne_bytes());
    let mut flags = 0x100; // NLM_F_CAPPED
    if let Some(m) = ext_ack {
        flags |= 0x200; // NLM_F_ACK_TLVS
        let mut s = m.as_bytes().to_vec();
        s.push(0);
        p.extend_from_slice(&nla(1, &s)); // NLMSGERR_ATTR_MSG
    }
    msg(2, flags, seq, &p)
}

/// NLMSG_DONE with its int.
pub fn done_msg(seq: u32, code: i32) -> Vec<u8> {
    msg(3, 0x2, seq, &code.to_ne_bytes())
}

/// `struct sockaddr_in` / `struct sockaddr_in6`.
pub fn sockaddr(addr: &SocketAddr) -> Vec<u8> {
    match addr {
        SocketAddr::V4(a) => {
            let mut v = 2u16.to_ne_bytes().to_vec(); // AF_INET
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&[0; 8]);
            v
        }
        SocketAddr::V6(a) => {
            let mut v = 10u16.to_ne_bytes().to_vec(); // AF_INET6
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&a.flowinfo().to_be_bytes());
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.scope_id().to_ne_bytes());
            v
        }
    }
}

/// One allowed IP in the kernel's order: CIDR_MASK, FAMILY, IPADDR.
pub fn aip(ip: &AllowedIp) -> Vec<u8> {
    let (family, bytes) = match ip.addr {
        IpAddr::V4(a) => (2u16, a.octets().to_vec()),
        IpAddr::V6(a) => (10u16, a.octets().to_vec()),
    };
    nest(
        0,
        &[
            nla(3, &[ip.cidr]),
            nla(1, &family.to_ne_bytes()),
            nla(2, &bytes),
        ],
    )
}

/// `struct __kernel_timespec`.
pub fn timespec(sec: i64, nsec: i64) -> Vec<u8> {
    let mut v = sec.to_ne_bytes().to_vec();
    v.extend_from_slice(&nsec.to_ne_bytes());
    v
}

/// A peer entry as the kernel's `get_peer` writes it on a peer's first appearance, with the
/// allowed IPs `ips` (the rest may follow in [`continued_peer`] entries).
pub fn full_peer(p: &PeerInfo, ips: &[AllowedIp], pad: bool) -> Vec<u8> {
    let (sec, nsec) = match p.last_handshake {
        Some(t) => {
            let d = t.duration_since(UNIX_EPOCH).expect("after 1970");
            (
                i64::try_from(d.as_secs()).expect("in range"),
                i64::from(d.subsec_nanos()),
            )
        }
        None => (0, 0),
    };
    let pk = p.persistent_keepalive.unwrap_or(0);
    let mut a = vec![
        nla(1, &p.public_key.0),      // WGPEER_A_PUBLIC_KEY
        nla(2, &[0x77; 32]),          // WGPEER_A_PRESHARED_KEY
        nla(6, &timespec(sec, nsec)), // WGPEER_A_LAST_HANDSHAKE_TIME
        nla(5, &pk.to_ne_bytes()),    // WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL
    ];
    if pad {
        a.push(nla(0, &[])); // 64-bit alignment pad (nla_put_u64_64bit, WGPEER_A_UNSPEC)
    }
    a.push(nla(8, &p.tx_bytes.to_ne_bytes())); // WGPEER_A_TX_BYTES
    a.push(nla(7, &p.rx_bytes.to_ne_bytes())); // WGPEER_A_RX_BYTES
    a.push(nla(10, &1u32.to_ne_bytes())); // WGPEER_A_PROTOCOL_VERSION
    if let Some(e) = &p.endpoint {
        a.push(nla(4, &sockaddr(e))); // WGPEER_A_ENDPOINT
    }
    if !ips.is_empty() {
        a.push(nest(9, &ips.iter().map(aip).collect::<Vec<_>>())); // WGPEER_A_ALLOWEDIPS
    }
    nest(0, &a)
}

/// A continuation entry: public key and more allowed IPs only.
pub fn continued_peer(k: &Key, ips: &[AllowedIp]) -> Vec<u8> {
    nest(
        0,
        &[
            nla(1, &k.0),
            nest(9, &ips.iter().map(aip).collect::<Vec<_>>()),
        ],
    )
}

/// A `WG_CMD_GET_DEVICE` dump message: device attributes, then the peer entries.
pub fn device_msg(seq: u32, flags: u16, device: &[Vec<u8>], entries: &[Vec<u8>]) -> Vec<u8> {
    let mut attrs = vec![
        nla(1, &5u32.to_ne_bytes()), // WGDEVICE_A_IFINDEX
        nla(2, b"wg0\0"),            // WGDEVICE_A_IFNAME
    ];
    attrs.extend_from_slice(device);
    if !entries.is_empty() {
        attrs.push(nest(8, entries)); // WGDEVICE_A_PEERS
    }
    msg(FAMILY, flags, seq, &genl(0, 1, &attrs))
}

/// `info` as the kernel would dump it: device attributes in the first message; at most
/// `peers_per_msg` entries (and about 16 KiB) per message, one message per datagram; each peer's
/// allowed IPs `ips_per_entry` at a time, the rest in continuation entries; then `NLMSG_DONE`.
pub fn encode_dump(
    info: &DeviceInfo,
    seq: u32,
    peers_per_msg: usize,
    ips_per_entry: usize,
) -> Vec<Vec<u8>> {
    let mut entries = Vec::new();
    for (i, p) in info.peers.iter().enumerate() {
        let mut chunks = p.allowed_ips.chunks(ips_per_entry.max(1));
        entries.push(full_peer(p, chunks.next().unwrap_or(&[]), i % 2 == 1));
        entries.extend(chunks.map(|c| continued_peer(&p.public_key, c)));
    }
    let mut device = vec![
        nla(7, &0u32.to_ne_bytes()), // WGDEVICE_A_FWMARK
        nla(3, &[0x99; 32]),         // WGDEVICE_A_PRIVATE_KEY
    ];
    if let Some(port) = info.listen_port {
        device.push(nla(6, &port.to_ne_bytes()));
    }
    if let Some(k) = &info.public_key {
        device.push(nla(4, &k.0));
    }
    let mut datagrams = Vec::new();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut size = 0;
    for e in entries {
        if !batch.is_empty() && (batch.len() >= peers_per_msg.max(1) || size + e.len() > 16_000) {
            datagrams.push(device_msg(seq, 0x2, &device, &batch));
            device.clear();
            batch.clear();
            size = 0;
        }
        size += e.len();
        batch.push(e);
    }
    datagrams.push(device_msg(seq, 0x2, &device, &batch));
    datagrams.push(done_msg(seq, 0));
    datagrams
}

/// The messages of a datagram as the agent splits them (`NLMSG_OK` / `NLMSG_NEXT`), each without
/// its trailing padding; `None` where the agent reports the datagram malformed.
pub fn messages(datagram: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let len = usize::try_from(u32::from_ne_bytes(*rest.first_chunk::<4>()?)).ok()?;
        if len < 16 || len > rest.len() {
            return None;
        }
        out.push(&rest[..len]);
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    Some(out)
}

/// The controller's answer to `CTRL_CMD_GETFAMILY` "wireguard".
pub fn newfamily_reply(seq: u32, id: u16) -> Vec<u8> {
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
                    6, // CTRL_ATTR_OPS
                    &[
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

#[cfg(test)]
mod seeds {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    use std::path::Path;
    use std::time::Duration;

    use wgkeep_agent::wg::netlink::{parse_ack, parse_family_reply, parse_get_device};
    use wgkeep_agent::wg::{Implementation, WgError};

    use super::*;

    fn key(b: u8) -> Key {
        Key([b; 32])
    }

    fn ip(s: &str, cidr: u8) -> AllowedIp {
        AllowedIp {
            addr: s.parse().unwrap(),
            cidr,
        }
    }

    fn peer(k: u8, endpoint: Option<SocketAddr>, ips: Vec<AllowedIp>) -> PeerInfo {
        PeerInfo {
            public_key: key(k),
            endpoint,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: None,
            allowed_ips: ips,
        }
    }

    /// The agent's `three_peer_dump`: three peers over two messages and three datagrams; peer
    /// B's allowed IPs continue in the second message; an unrelated message in between.
    fn three_peers() -> (DeviceInfo, Vec<Vec<u8>>) {
        let mut a = peer(
            0xa1,
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(203, 0, 113, 5),
                51820,
            ))),
            vec![ip("10.0.0.2", 32)],
        );
        a.last_handshake = Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500));
        (a.persistent_keepalive, a.rx_bytes, a.tx_bytes) = (Some(25), 1000, 2000);
        let mut b = peer(
            0xb2,
            Some(SocketAddr::V6(SocketAddrV6::new(
                "2001:db8::1".parse().unwrap(),
                51821,
                0,
                0,
            ))),
            vec![
                ip("10.0.0.3", 32),
                ip("fd00::3", 128),
                ip("10.0.1.0", 24),
                ip("2001:db8:1::", 48),
            ],
        );
        b.tx_bytes = 148;
        let c = peer(0xc3, None, vec![]);
        let info = DeviceInfo {
            implementation: Implementation::Kernel,
            public_key: Some(key(0x01)),
            listen_port: Some(51820),
            peers: vec![a, b, c],
        };
        let device = [nla(6, &51820u16.to_ne_bytes()), nla(4, &[0x01; 32])];
        let p = &info.peers;
        let d1 = device_msg(
            SEQ,
            0x2,
            &device,
            &[
                full_peer(&p[0], &p[0].allowed_ips, false),
                full_peer(&p[1], &p[1].allowed_ips[..2], true),
            ],
        );
        let unrelated = msg(FAMILY, 0x2, SEQ + 100, &genl(0, 1, &[nla(2, b"wg9\0")]));
        let mut d3 = device_msg(
            SEQ,
            0x2,
            &[],
            &[
                continued_peer(&p[1].public_key, &p[1].allowed_ips[2..]),
                full_peer(&p[2], &[], false),
            ],
        );
        d3.extend_from_slice(&done_msg(SEQ, 0));
        (info, vec![d1, unrelated, d3])
    }

    /// 40 peers of every kind over several datagrams, some allowed IPs in continuation entries.
    fn many_peers() -> DeviceInfo {
        let peers = (0u8..40)
            .map(|i| {
                let endpoint = match i % 4 {
                    0 => None,
                    1 => Some(SocketAddr::V4(SocketAddrV4::new(
                        Ipv4Addr::new(192, 0, 2, i),
                        51820 + u16::from(i),
                    ))),
                    2 => Some(SocketAddr::V6(SocketAddrV6::new(
                        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)),
                        51820,
                        u32::from(i) << 8,
                        0,
                    ))),
                    _ => Some(SocketAddr::V6(SocketAddrV6::new(
                        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
                        51820,
                        0,
                        u32::from(i),
                    ))),
                };
                let ips = (0..i % 5)
                    .map(|j| match j % 2 {
                        0 => ip(&format!("10.{i}.{j}.0"), 24),
                        _ => ip(&format!("fd00:{i:x}:{j:x}::"), 64),
                    })
                    .collect();
                let mut p = peer(i.wrapping_mul(37).wrapping_add(1), endpoint, ips);
                if i % 3 != 0 {
                    p.last_handshake = Some(
                        UNIX_EPOCH + Duration::new(1_795_559_000 + u64::from(i), u32::from(i) * 7),
                    );
                    p.rx_bytes = u64::from(i) * 92;
                    p.tx_bytes = u64::from(i) * 148 + u64::MAX / 2;
                }
                p.persistent_keepalive = (i % 2 == 0).then_some(u16::from(i) + 1);
                p
            })
            .collect();
        DeviceInfo {
            implementation: Implementation::Kernel,
            public_key: Some(key(0x42)),
            listen_port: Some(51820),
            peers,
        }
    }

    /// Every seed: its name, its datagrams, and what the agent makes of them.
    fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
        let (_, three) = three_peers();
        let mut interrupted = msg(
            FAMILY,
            0x2 | 0x10, // NLM_F_MULTI | NLM_F_DUMP_INTR
            SEQ,
            &genl(0, 1, &[nla(6, &1u16.to_ne_bytes())]),
        );
        interrupted.extend_from_slice(&done_msg(SEQ, 0));
        let mut ipv6_scope = peer(
            5,
            Some(SocketAddr::V6(SocketAddrV6::new(
                "fe80::1".parse().unwrap(),
                51820,
                0,
                3,
            ))),
            vec![],
        );
        ipv6_scope.persistent_keepalive = Some(25);
        let mut family = newfamily_reply(SEQ, 0x23);
        family.extend_from_slice(&error_msg(SEQ, 0, None));
        vec![
            ("three-peers", three),
            ("many-peers", encode_dump(&many_peers(), SEQ, 8, 2)),
            (
                "no-peers",
                vec![
                    device_msg(SEQ, 0x2, &[nla(6, &0u16.to_ne_bytes())], &[]),
                    done_msg(SEQ, 0),
                ],
            ),
            ("interrupted", vec![interrupted]),
            (
                "ipv6-scope",
                vec![
                    device_msg(SEQ, 0x2, &[], &[full_peer(&ipv6_scope, &[], false)]),
                    done_msg(SEQ, 0),
                ],
            ),
            ("enodev", vec![error_msg(SEQ, 19, None)]),
            ("enodev-in-done", vec![done_msg(SEQ, -19)]),
            (
                "refused-ext-ack",
                vec![error_msg(SEQ, 95, Some("not a wireguard device"))],
            ),
            ("family-reply", vec![newfamily_reply(SEQ - 1, 0x99), family]),
            ("family-enoent", vec![error_msg(SEQ, 2, None)]),
            (
                "ack",
                vec![error_msg(SEQ - 1, 19, None), error_msg(SEQ, 0, None)],
            ),
        ]
    }

    #[test]
    fn seeds_parse_as_intended() {
        let get = |ds: &[Vec<u8>]| {
            let refs: Vec<&[u8]> = ds.iter().map(|d| d.as_slice()).collect();
            parse_get_device(IFACE, FAMILY, SEQ, &refs)
        };
        let all: std::collections::HashMap<_, _> = seeds().into_iter().collect();
        assert_eq!(get(&all["three-peers"]).unwrap(), three_peers().0);
        assert_eq!(get(&all["many-peers"]).unwrap(), many_peers());
        assert_eq!(get(&all["no-peers"]).unwrap().listen_port, Some(0));
        assert_eq!(get(&all["interrupted"]).unwrap().listen_port, Some(1));
        let p = &get(&all["ipv6-scope"]).unwrap().peers[0];
        assert_eq!(p.endpoint.unwrap().to_string(), "[fe80::1%3]:51820");
        assert!(matches!(get(&all["enodev"]), Err(WgError::NotFound(_))));
        assert!(matches!(
            get(&all["enodev-in-done"]),
            Err(WgError::NotFound(_))
        ));
        assert!(matches!(
            get(&all["refused-ext-ack"]),
            Err(WgError::Refused { errno: 95, .. })
        ));
        let refs = |ds: &'static str| -> Vec<Vec<u8>> { all[ds].clone() };
        let family = refs("family-reply");
        let family: Vec<&[u8]> = family.iter().map(|d| d.as_slice()).collect();
        assert_eq!(parse_family_reply(IFACE, SEQ, &family).unwrap(), 0x23);
        let enoent = refs("family-enoent");
        assert!(matches!(
            parse_family_reply(IFACE, SEQ, &[&enoent[0]]),
            Err(WgError::Unsupported(_))
        ));
        let ack = refs("ack");
        let ack: Vec<&[u8]> = ack.iter().map(|d| d.as_slice()).collect();
        parse_ack(IFACE, "kick", SEQ, &ack).unwrap();

        // The round trip the target checks, on the seeds.
        for info in [three_peers().0, many_peers()] {
            for (per, ips) in [(1, 1), (3, 2), (100, 100)] {
                assert_eq!(get(&encode_dump(&info, SEQ, per, ips)).unwrap(), info);
            }
        }
    }

    #[test]
    fn seed_corpus_is_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/netlink_peers");
        crate::check_or_write_seeds(
            &dir,
            seeds()
                .into_iter()
                .map(|(name, ds)| (name.to_owned(), crate::frame(&ds))),
        );
    }
}
