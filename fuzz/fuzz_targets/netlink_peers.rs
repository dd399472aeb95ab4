//! Fuzzes the kernel WireGuard dump parser (`wgkeep_agent::wg::netlink`): the input is a list of
//! datagrams, each a little-endian u16 length and its bytes (`wgkeep_fuzz::datagrams`), parsed as
//! the answer to request 7 of family 0x15 about `wg0`.
//!
//! - `parse_get_device` never panics, and gives what `DeviceDump` fed datagram by datagram gives;
//! - an accepted dump: kernel implementation, no two adjacent peers with the same key (a peer
//!   continued in the next entry is merged), no keepalive of 0, prefixes within the address;
//!   the same messages one per datagram parse to the same device; and the device encoded as the
//!   kernel would dump it (`wgkeep_fuzz::netlink::encode_dump`, with allowed IPs split over
//!   continuation entries and messages) parses back to itself;
//! - `parse_family_reply` and `parse_ack` never panic on the same datagrams.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wgkeep_agent::wg::netlink::{parse_ack, parse_family_reply, parse_get_device, DeviceDump};
use wgkeep_agent::wg::Implementation;
use wgkeep_fuzz::assert_same;
use wgkeep_fuzz::netlink::{encode_dump, messages, FAMILY, IFACE, SEQ};

fuzz_target!(|data: &[u8]| {
    let datagrams = wgkeep_fuzz::datagrams(data);
    let result = parse_get_device(IFACE, FAMILY, SEQ, &datagrams);

    // Incrementally, noting the datagram that ended the dump.
    let mut dump = DeviceDump::new(IFACE, FAMILY, SEQ);
    let mut end = None;
    let mut error = None;
    for (i, d) in datagrams.iter().enumerate() {
        match dump.feed(d) {
            Ok(true) => {
                assert!(dump.is_done());
                assert!(matches!(dump.feed(b"anything"), Ok(true)));
                end = Some(i);
                break;
            }
            Ok(false) => assert!(!dump.is_done()),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let interrupted = dump.interrupted();
    let incremental = match error {
        Some(e) => Err(e),
        None => dump.finish(),
    };
    assert_same!(incremental, result, "DeviceDump ≠ parse_get_device");

    if let (Ok(info), Some(end)) = (&result, end) {
        assert_eq!(info.implementation, Implementation::Kernel);
        for pair in info.peers.windows(2) {
            assert_ne!(
                pair[0].public_key, pair[1].public_key,
                "unmerged continuation"
            );
        }
        for p in &info.peers {
            assert_ne!(p.persistent_keepalive, Some(0));
            for ip in &p.allowed_ips {
                assert!(ip.cidr <= if ip.addr.is_ipv4() { 32 } else { 128 });
            }
        }

        // One message per datagram.
        let single: Vec<&[u8]> = datagrams[..=end]
            .iter()
            .flat_map(|d| messages(d).expect("an accepted datagram splits"))
            .collect();
        let mut again = DeviceDump::new(IFACE, FAMILY, SEQ);
        for d in &single {
            if again.feed(d).expect("the same messages") {
                break;
            }
        }
        assert_eq!(again.interrupted(), interrupted);
        assert_same!(again.finish(), result, "one message per datagram");

        // Re-encoded as the kernel would dump it.
        let (per_msg, ips) = (1 + data.len() % 4, 1 + data.len() % 3);
        let encoded = encode_dump(info, SEQ, per_msg, ips);
        let refs: Vec<&[u8]> = encoded.iter().map(|d| d.as_slice()).collect();
        let back = parse_get_device(IFACE, FAMILY, SEQ, &refs);
        assert_same!(back, result, "round trip of {encoded:02x?}");
    }

    let _ = parse_family_reply(IFACE, SEQ, &datagrams);
    let _ = parse_ack(IFACE, "kick", SEQ, &datagrams);
});
