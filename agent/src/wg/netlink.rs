//! Kernel WireGuard over generic netlink, with hand-built messages.
//!
//! Everything here follows the kernel's UAPI header `include/uapi/linux/wireguard.h` and its
//! implementation `drivers/net/wireguard/netlink.c`; the netlink framing follows
//! `include/uapi/linux/netlink.h` and `include/uapi/linux/genetlink.h`.
//!
//! - Message builders ([`kick_message`], [`set_keepalive_message`], [`get_device_message`],
//!   [`get_family_message`]) are pure and tested byte for byte.
//! - Parsers ([`parse_get_device`], [`parse_family_reply`], [`parse_ack`], and the incremental
//!   [`DeviceDump`]) work on received datagrams and do no I/O.
//! - [`KernelClient`] does the I/O: one `NETLINK_GENERIC` socket, a deadline per request.
//!
//! # Nested attributes carry `NLA_F_NESTED`
//!
//! Every nest this module builds (`WGDEVICE_A_PEERS` and each peer entry inside it) has the
//! `NLA_F_NESTED` bit set in its type, as libmnl's `mnl_attr_nest_start` (used by `wg(8)`) does.
//! This is not a matter of taste: WireGuard's genl ops set no `GENL_DONT_VALIDATE_STRICT`, so the
//! top level of a `WG_CMD_SET_DEVICE` message is parsed with `NL_VALIDATE_STRICT`, which
//! includes `NL_VALIDATE_NESTED` ("NLA_F_NESTED is missing" for an `NLA_NESTED` policy entry such
//! as `WGDEVICE_A_PEERS`), and `wg_set_device` parses each peer entry with `nla_parse_nested()`,
//! which rejects an attribute without `NLA_F_NESTED` with `-EINVAL`. The same strict mode also
//! means `NLA_F_NESTED` must *not* be set on plain attributes, that integer attributes must have
//! their exact size (`NL_VALIDATE_STRICT_ATTRS`: the u16 keepalive is 2 bytes + 2 bytes padding),
//! and that the interface name must be NUL-terminated within `IFNAMSIZ` bytes.
//! When parsing replies the nested bit is accepted either way (types are masked with
//! [`NLA_TYPE_MASK`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::{AllowedIp, DeviceInfo, Implementation, Key, PeerInfo, WgError};

mod client;
mod parse;
#[cfg(test)]
mod tests;

pub use client::{is_kernel_wireguard_link, KernelClient};
pub use parse::{parse_ack, parse_family_reply, parse_get_device, DeviceDump};

// ---------------------------------------------------------------------------------------------
// Constants. Values from the UAPI headers named in each group.
// ---------------------------------------------------------------------------------------------

// include/uapi/linux/netlink.h
/// `NETLINK_GENERIC`: the generic netlink protocol.
pub const NETLINK_GENERIC: isize = 16;
/// `sizeof(struct nlmsghdr)`: len u32, type u16, flags u16, seq u32, pid u32.
pub const NLMSG_HDRLEN: usize = 16;
/// `NLMSG_NOOP`.
pub const NLMSG_NOOP: u16 = 0x1;
/// `NLMSG_ERROR`: payload `struct nlmsgerr` (int error, then the request's header).
pub const NLMSG_ERROR: u16 = 0x2;
/// `NLMSG_DONE`: end of a dump; payload an int error code.
pub const NLMSG_DONE: u16 = 0x3;
/// `NLMSG_OVERRUN`.
pub const NLMSG_OVERRUN: u16 = 0x4;
/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x01;
/// `NLM_F_MULTI`: part of a multi-part reply, ended by `NLMSG_DONE`.
pub const NLM_F_MULTI: u16 = 0x02;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x04;
/// `NLM_F_DUMP_INTR`: the dump was inconsistent (the device changed while it ran).
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_DUMP` = `NLM_F_ROOT | NLM_F_MATCH` (0x100 | 0x200).
pub const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_CAPPED` (on `NLMSG_ERROR`): the request's payload was left out.
pub const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS` (on `NLMSG_ERROR`): extended-ACK attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: extended-ACK error string.
pub const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLA_HDRLEN`: len u16, type u16.
pub const NLA_HDRLEN: usize = 4;
/// `NLA_F_NESTED` (1 << 15).
pub const NLA_F_NESTED: u16 = 1 << 15;
/// `NLA_F_NET_BYTEORDER` (1 << 14).
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
/// `NLA_TYPE_MASK` = `~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)` = 0x3fff.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

// include/uapi/linux/genetlink.h
/// `GENL_HDRLEN`: `struct genlmsghdr` is cmd u8, version u8, reserved u16.
pub const GENL_HDRLEN: usize = 4;
/// `GENL_ID_CTRL` (= `NLMSG_MIN_TYPE`, 0x10): the controller family.
pub const GENL_ID_CTRL: u16 = 0x10;
/// `CTRL_CMD_NEWFAMILY` (the controller's reply to `CTRL_CMD_GETFAMILY`).
pub const CTRL_CMD_NEWFAMILY: u8 = 1;
/// `CTRL_CMD_GETFAMILY`.
pub const CTRL_CMD_GETFAMILY: u8 = 3;
/// Version byte we put in controller requests (libnl and libmnl users send 1; not checked).
pub const CTRL_VERSION: u8 = 1;
/// `CTRL_ATTR_FAMILY_ID`: u16.
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// `CTRL_ATTR_FAMILY_NAME`: NUL-terminated string.
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;

// include/uapi/linux/wireguard.h
/// `WG_GENL_NAME`.
pub const WG_GENL_NAME: &str = "wireguard";
/// `WG_GENL_VERSION`.
pub const WG_GENL_VERSION: u8 = 1;
/// `WG_KEY_LEN`.
pub const WG_KEY_LEN: usize = 32;
/// `WG_CMD_GET_DEVICE` (dump only).
pub const WG_CMD_GET_DEVICE: u8 = 0;
/// `WG_CMD_SET_DEVICE`.
pub const WG_CMD_SET_DEVICE: u8 = 1;
/// `WGDEVICE_A_IFINDEX`: u32.
pub const WGDEVICE_A_IFINDEX: u16 = 1;
/// `WGDEVICE_A_IFNAME`: NUL-terminated string, at most `IFNAMSIZ - 1` characters.
pub const WGDEVICE_A_IFNAME: u16 = 2;
/// `WGDEVICE_A_PRIVATE_KEY`: 32 bytes (never kept by this module).
pub const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
/// `WGDEVICE_A_PUBLIC_KEY`: 32 bytes.
pub const WGDEVICE_A_PUBLIC_KEY: u16 = 4;
/// `WGDEVICE_A_FLAGS`: u32.
pub const WGDEVICE_A_FLAGS: u16 = 5;
/// `WGDEVICE_A_LISTEN_PORT`: u16 (host byte order).
pub const WGDEVICE_A_LISTEN_PORT: u16 = 6;
/// `WGDEVICE_A_FWMARK`: u32.
pub const WGDEVICE_A_FWMARK: u16 = 7;
/// `WGDEVICE_A_PEERS`: nested array of peers.
pub const WGDEVICE_A_PEERS: u16 = 8;
/// `WGPEER_F_REMOVE_ME`.
pub const WGPEER_F_REMOVE_ME: u32 = 1 << 0;
/// `WGPEER_F_REPLACE_ALLOWEDIPS`.
pub const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 1 << 1;
/// `WGPEER_F_UPDATE_ONLY`: only touch the peer if it exists.
pub const WGPEER_F_UPDATE_ONLY: u32 = 1 << 2;
/// `WGPEER_A_PUBLIC_KEY`: 32 bytes.
pub const WGPEER_A_PUBLIC_KEY: u16 = 1;
/// `WGPEER_A_PRESHARED_KEY`: 32 bytes (never kept by this module).
pub const WGPEER_A_PRESHARED_KEY: u16 = 2;
/// `WGPEER_A_FLAGS`: u32.
pub const WGPEER_A_FLAGS: u16 = 3;
/// `WGPEER_A_ENDPOINT`: `struct sockaddr_in` or `struct sockaddr_in6`.
pub const WGPEER_A_ENDPOINT: u16 = 4;
/// `WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL`: u16 seconds, 0 = off.
pub const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
/// `WGPEER_A_LAST_HANDSHAKE_TIME`: `struct __kernel_timespec` (two native-endian i64).
pub const WGPEER_A_LAST_HANDSHAKE_TIME: u16 = 6;
/// `WGPEER_A_RX_BYTES`: u64.
pub const WGPEER_A_RX_BYTES: u16 = 7;
/// `WGPEER_A_TX_BYTES`: u64.
pub const WGPEER_A_TX_BYTES: u16 = 8;
/// `WGPEER_A_ALLOWEDIPS`: nested array of allowed IPs.
pub const WGPEER_A_ALLOWEDIPS: u16 = 9;
/// `WGPEER_A_PROTOCOL_VERSION`: u32.
pub const WGPEER_A_PROTOCOL_VERSION: u16 = 10;
/// `WGALLOWEDIP_A_FAMILY`: u16, `AF_INET` or `AF_INET6`.
pub const WGALLOWEDIP_A_FAMILY: u16 = 1;
/// `WGALLOWEDIP_A_IPADDR`: `struct in_addr` or `struct in6_addr`.
pub const WGALLOWEDIP_A_IPADDR: u16 = 2;
/// `WGALLOWEDIP_A_CIDR_MASK`: u8.
pub const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

// include/linux/socket.h, include/uapi/linux/if.h, errno
/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;
/// `IFNAMSIZ` (including the terminating NUL).
pub const IFNAMSIZ: usize = 16;
/// `ENOENT`: the controller's answer for an unknown family.
pub const ENOENT: i32 = 2;
/// `ENODEV`: WireGuard's answer for an interface that does not exist.
pub const ENODEV: i32 = 19;

// ---------------------------------------------------------------------------------------------
// Message building.
// ---------------------------------------------------------------------------------------------

/// `NLMSG_ALIGN` / `NLA_ALIGN`: round up to 4 bytes.
pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one generic netlink message: header, genl header, attributes, nests.
struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    /// `struct nlmsghdr` (length filled in by [`MsgBuilder::finish`]) and `struct genlmsghdr`.
    fn new(msg_type: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> MsgBuilder {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in finish()
        buf.extend_from_slice(&msg_type.to_ne_bytes()); // nlmsg_type
        buf.extend_from_slice(&flags.to_ne_bytes()); // nlmsg_flags
        buf.extend_from_slice(&seq.to_ne_bytes()); // nlmsg_seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: 0, the kernel fills it in
        buf.push(cmd); // genlmsghdr.cmd
        buf.push(version); // genlmsghdr.version
        buf.extend_from_slice(&0u16.to_ne_bytes()); // genlmsghdr.reserved
        MsgBuilder { buf }
    }

    /// One attribute: `struct nlattr` (len = header + payload, without padding), payload,
    /// zero padding to 4 bytes.
    fn attr(&mut self, attr_type: u16, payload: &[u8]) {
        let len = NLA_HDRLEN + payload.len();
        debug_assert!(len <= usize::from(u16::MAX));
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&attr_type.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn attr_u16(&mut self, attr_type: u16, value: u16) {
        self.attr(attr_type, &value.to_ne_bytes());
    }

    fn attr_u32(&mut self, attr_type: u16, value: u32) {
        self.attr(attr_type, &value.to_ne_bytes());
    }

    /// A NUL-terminated string attribute (`NLA_NUL_STRING`).
    fn attr_str(&mut self, attr_type: u16, value: &str) {
        let mut payload = Vec::with_capacity(value.len() + 1);
        payload.extend_from_slice(value.as_bytes());
        payload.push(0);
        self.attr(attr_type, &payload);
    }

    /// Opens a nest (type | `NLA_F_NESTED`); returns its offset for [`MsgBuilder::nest_end`].
    fn nest_start(&mut self, attr_type: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes()); // nla_len, patched in nest_end()
        self.buf
            .extend_from_slice(&(attr_type | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Closes a nest: its length covers everything added since, padding included (as libmnl's
    /// `mnl_attr_nest_end` and the kernel's `nla_nest_end` do).
    fn nest_end(&mut self, start: usize) {
        let len = self.buf.len() - start;
        debug_assert!(len <= usize::from(u16::MAX));
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// Appends one update-only peer entry (public key, flags, PersistentKeepalive) to an open
/// `WGDEVICE_A_PEERS` nest.
fn peer_entry(b: &mut MsgBuilder, peer: &Key, keepalive: u16) {
    let nest = b.nest_start(0); // array element: type 0 | NLA_F_NESTED
    b.attr(WGPEER_A_PUBLIC_KEY, &peer.0);
    b.attr_u32(WGPEER_A_FLAGS, WGPEER_F_UPDATE_ONLY);
    b.attr_u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, keepalive);
    b.nest_end(nest);
}

/// A `WG_CMD_SET_DEVICE` request for `iface` with one peer entry per element of `keepalives`.
fn set_peer_keepalives(
    family: u16,
    seq: u32,
    iface: &str,
    peer: &Key,
    keepalives: &[u16],
) -> Vec<u8> {
    let mut b = MsgBuilder::new(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        WG_CMD_SET_DEVICE,
        WG_GENL_VERSION,
    );
    b.attr_str(WGDEVICE_A_IFNAME, iface);
    let peers = b.nest_start(WGDEVICE_A_PEERS);
    for &k in keepalives {
        peer_entry(&mut b, peer, k);
    }
    b.nest_end(peers);
    b.finish()
}

/// The kick: ONE `WG_CMD_SET_DEVICE` message (`NLM_F_REQUEST | NLM_F_ACK`) with
/// `WGDEVICE_A_IFNAME` and `WGDEVICE_A_PEERS` carrying the same peer twice, each entry with
/// `WGPEER_A_PUBLIC_KEY`, `WGPEER_A_FLAGS = WGPEER_F_UPDATE_ONLY` and
/// `WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL`: `[0, N]` when PersistentKeepalive is on at `N`,
/// `[1, 0]` when it is off (`None` or `Some(0)`).
///
/// The kernel's `set_peer` sends a keepalive at once when the interval goes from 0 to non-zero on
/// a running interface, and `wg_set_device` applies the entries in order under the device's
/// update lock, so the message sends exactly one keepalive (or a handshake initiation when there
/// is no session) and leaves the setting as it was. With `WGPEER_F_UPDATE_ONLY` a peer that no
/// longer exists is silently left alone (the kernel still answers with errno 0).
///
/// `iface` must be a valid interface name (at most 15 bytes, no NUL); the kernel rejects others
/// with `EINVAL`.
pub fn kick_message(
    family: u16,
    seq: u32,
    iface: &str,
    peer: &Key,
    current_keepalive: Option<u16>,
) -> Vec<u8> {
    let pair = match current_keepalive {
        Some(n) if n > 0 => [0, n],
        _ => [1, 0],
    };
    set_peer_keepalives(family, seq, iface, peer, &pair)
}

/// Sets one peer's PersistentKeepalive (`None` or `Some(0)` = off): one `WG_CMD_SET_DEVICE`
/// message with one update-only peer entry. Note that turning it on from off makes the kernel
/// send a keepalive at once.
pub fn set_keepalive_message(
    family: u16,
    seq: u32,
    iface: &str,
    peer: &Key,
    keepalive: Option<u16>,
) -> Vec<u8> {
    set_peer_keepalives(family, seq, iface, peer, &[keepalive.unwrap_or(0)])
}

/// `WG_CMD_GET_DEVICE` with `NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP` (as `wg(8)` sends it) and
/// `WGDEVICE_A_IFNAME`. The reply is a multi-part dump ended by `NLMSG_DONE`, or an
/// `NLMSG_ERROR` (`ENODEV`: no such interface; `EOPNOTSUPP`: not a WireGuard interface).
pub fn get_device_message(family: u16, seq: u32, iface: &str) -> Vec<u8> {
    let mut b = MsgBuilder::new(
        family,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
        seq,
        WG_CMD_GET_DEVICE,
        WG_GENL_VERSION,
    );
    b.attr_str(WGDEVICE_A_IFNAME, iface);
    b.finish()
}

/// `CTRL_CMD_GETFAMILY` for family `name` to the controller (`GENL_ID_CTRL`), flags
/// `NLM_F_REQUEST | NLM_F_ACK`. The reply is a `CTRL_CMD_NEWFAMILY` message carrying
/// `CTRL_ATTR_FAMILY_ID`, then the ACK; or `NLMSG_ERROR` with `ENOENT` when no such family is
/// registered (for "wireguard": the module is not loaded; the kernel tries to load it first).
pub fn get_family_message(seq: u32, name: &str) -> Vec<u8> {
    let mut b = MsgBuilder::new(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        CTRL_VERSION,
    );
    b.attr_str(CTRL_ATTR_FAMILY_NAME, name);
    b.finish()
}

/// Whether `name` can be a Linux interface name (`dev_valid_name`: 1 to 15 bytes, not `.` or
/// `..`, no `/`, `:` or whitespace, and no NUL).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|c| c == b'/' || c == b':' || c == 0 || c.is_ascii_whitespace())
}

/// The error for a negative errno from the kernel: `ENODEV` is [`WgError::NotFound`].
fn errno_error(iface: &str, what: &'static str, errno: i32) -> WgError {
    if errno == ENODEV {
        WgError::NotFound(iface.to_owned())
    } else {
        WgError::Refused {
            iface: iface.to_owned(),
            what,
            errno,
        }
    }
}

fn malformed(iface: &str, detail: impl Into<String>) -> WgError {
    WgError::Malformed {
        iface: iface.to_owned(),
        detail: detail.into(),
    }
}

/// `struct sockaddr_in` (16 bytes) or `struct sockaddr_in6` (28 bytes): family in host order,
/// port and address in network order, IPv6 flowinfo in network order, scope id in host order.
fn parse_sockaddr(b: &[u8]) -> Result<Option<SocketAddr>, String> {
    let family = match b.get(0..2) {
        Some(f) => u16::from_ne_bytes([f[0], f[1]]),
        None => return Err(format!("endpoint of {} bytes", b.len())),
    };
    match family {
        AF_INET => {
            if b.len() < 16 {
                return Err(format!("sockaddr_in of {} bytes", b.len()));
            }
            let port = u16::from_be_bytes([b[2], b[3]]);
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Ok(Some(SocketAddr::V4(SocketAddrV4::new(ip, port))))
        }
        AF_INET6 => {
            if b.len() < 28 {
                return Err(format!("sockaddr_in6 of {} bytes", b.len()));
            }
            let port = u16::from_be_bytes([b[2], b[3]]);
            let flowinfo = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[8..24]);
            let scope_id = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
            Ok(Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(octets),
                port,
                flowinfo,
                scope_id,
            ))))
        }
        // The kernel only sends AF_INET / AF_INET6 endpoints; anything else is "no endpoint".
        _ => Ok(None),
    }
}

/// An allowed IP from its family (`AF_INET`/`AF_INET6`), address bytes and prefix length.
fn allowed_ip(family: u16, addr: &[u8], cidr: u8) -> Result<AllowedIp, String> {
    let addr = match (family, addr.len()) {
        (AF_INET, 4) => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        (AF_INET6, 16) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(addr);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        (f, n) => return Err(format!("allowed IP of family {f} with {n} address bytes")),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if cidr > max {
        return Err(format!("allowed IP {addr}/{cidr}"));
    }
    Ok(AllowedIp { addr, cidr })
}
