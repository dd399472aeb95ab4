//! Fuzzes the UAPI reply parsers (`wgkeep_agent::wg::uapi`): the first input byte chooses how
//! the reply arrives at the socket reader ([`Control`]), the rest is the reply.
//!
//! - `parse_get` on the reply (as text, invalid UTF-8 replaced) gives exactly what the reference
//!   parser gives (the pre-streaming `parse_get`, `wgkeep_fuzz::uapi`), errors included;
//! - `parse_get_into` on the raw bytes gives the same, into a fresh or a reused `DeviceInfo`, and
//!   a reply that is not UTF-8 is `Malformed`;
//! - the socket reader (`parse_get_in_reads`) gives `parse_get_into`'s result on what it read,
//!   whatever the read sizes and buffer;
//! - an accepted reply has no keepalive of 0 and no prefix longer than its address, and
//!   re-encoded (`encode_get`, with `\n` or `\r\n`) parses to the same device;
//! - `parse_set_reply` accepts only a lone `errno=0` line and refuses with a positive errno.
//!
//! Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wgkeep_agent::wg::uapi::{parse_get, parse_get_in_reads, parse_get_into, parse_set_reply};
use wgkeep_agent::wg::{DeviceInfo, WgError};
use wgkeep_fuzz::assert_same;
use wgkeep_fuzz::uapi::{self as reference, dirty_info, encode_get, wall_now, Control, IFACE};

fuzz_target!(|data: &[u8]| {
    let Some((&control, reply)) = data.split_first() else {
        return;
    };
    let control = Control::from_byte(control);
    let wall = wall_now();
    let text = String::from_utf8_lossy(reply);

    // The agent's parser against the reference.
    let whole = parse_get(&text, IFACE, wall);
    assert_same!(
        whole,
        reference::parse_get(&text, IFACE, wall),
        "parse_get ≠ reference on {text:?}"
    );

    // From bytes, into a fresh and into a reused DeviceInfo.
    let mut fresh = DeviceInfo::empty();
    let from_bytes = parse_get_into(reply, IFACE, wall, &mut fresh).map(|()| fresh);
    if std::str::from_utf8(reply).is_ok() {
        assert_same!(from_bytes, whole, "parse_get_into ≠ parse_get");
    } else {
        assert!(
            matches!(&from_bytes, Err(WgError::Malformed { detail, .. }) if detail.contains("UTF-8")),
            "not UTF-8 but {from_bytes:?}"
        );
    }
    let mut reused = dirty_info();
    let r = parse_get_into(reply, IFACE, wall, &mut reused).map(|()| reused);
    assert_same!(r, from_bytes, "parse_get_into into a used DeviceInfo");

    // As the socket reader gets it: in reads of any size, stopping at a complete reply.
    let mut info = if control.reuse {
        dirty_info()
    } else {
        DeviceInfo::empty()
    };
    let (r, read) =
        parse_get_in_reads(reply, control.sizes, control.buffer, IFACE, wall, &mut info);
    assert!(read <= reply.len());
    let mut fresh = DeviceInfo::empty();
    let at_once = parse_get_into(&reply[..read], IFACE, wall, &mut fresh).map(|()| fresh);
    assert_same!(
        r.map(|()| info),
        at_once,
        "read in {control:?}: {read} of {} bytes",
        reply.len()
    );

    // Invariants of an accepted reply, and its round trip.
    if let Ok(info) = &whole {
        for p in &info.peers {
            assert_ne!(p.persistent_keepalive, Some(0));
            for ip in &p.allowed_ips {
                assert!(ip.cidr <= if ip.addr.is_ipv4() { 32 } else { 128 });
            }
        }
        for crlf in [false, true] {
            let again = encode_get(info, wall, crlf);
            assert_same!(
                parse_get(&again, IFACE, wall),
                whole,
                "round trip of {again:?}"
            );
        }
    }

    // The reply to a `set=1`.
    match parse_set_reply(&text, IFACE, "kick") {
        Ok(()) => {
            let trimmed = text.trim_end_matches(['\n', '\r']);
            let lines: Vec<&str> = reference::body_lines(trimmed).collect();
            assert!(
                matches!(&lines[..], [l] if l.strip_prefix("errno=").is_some_and(
                    |v| reference::parse_errno(IFACE, v).is_ok_and(|e| e == 0))),
                "accepted as a set reply: {text:?}"
            );
        }
        Err(WgError::Refused { errno, .. }) => assert!(errno > 0, "errno {errno}"),
        Err(WgError::Malformed { .. }) => {}
        Err(e) => panic!("set reply: {e:?}"),
    }
});
