//! The tunnel-packet follow-up: one small UDP datagram sent *into* the tunnel, towards an address
//! inside the peer's AllowedIPs, so that WireGuard encrypts it and sends one data packet to the
//! peer. It works with every implementation (and is the only method for boringtun, which must
//! never be written to). Needs CAP_NET_RAW for `SO_BINDTODEVICE`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

use super::{AllowedIp, WgError};

/// The discard port (RFC 863): nothing answers, nothing is delivered.
pub const DISCARD_PORT: u16 = 9;
/// The datagram's payload.
pub const PAYLOAD: &[u8] = b"wgkeep";

/// Where to send the datagram: the most specific allowed IP (a /32 or /128 is the peer itself),
/// its first host address for a wider prefix; for a default route only (`0.0.0.0/0`), the
/// documentation address 192.0.2.1 (RFC 5737), which the peer decrypts and drops or routes to
/// nowhere. IPv4 is preferred.
pub fn target(allowed_ips: &[AllowedIp]) -> Option<SocketAddr> {
    let best = allowed_ips
        .iter()
        .filter(|a| a.addr.is_ipv4())
        .max_by_key(|a| a.cidr)
        .or_else(|| allowed_ips.iter().max_by_key(|a| a.cidr))?;
    let ip = match best.addr {
        IpAddr::V4(a) => {
            if best.cidr == 0 {
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
            } else if best.cidr >= 31 {
                IpAddr::V4(a)
            } else {
                let mask = u32::MAX << (32 - best.cidr);
                IpAddr::V4(Ipv4Addr::from((u32::from(a) & mask) + 1))
            }
        }
        IpAddr::V6(a) => {
            if best.cidr == 0 {
                IpAddr::V6("2001:db8::1".parse().expect("literal"))
            } else if best.cidr >= 127 {
                IpAddr::V6(a)
            } else {
                let mask = u128::MAX << (128 - best.cidr);
                IpAddr::V6(Ipv6Addr::from((u128::from(a) & mask) + 1))
            }
        }
    };
    Some(SocketAddr::new(ip, DISCARD_PORT))
}

/// Send the datagram through `iface` to `to`.
pub fn send(iface: &str, to: SocketAddr) -> Result<(), WgError> {
    let ctx = |what: &str| {
        let what = what.to_owned();
        move |source| WgError::Io {
            context: format!("tunnel-packet to {to} via {iface}: {what}"),
            source,
        }
    };
    let domain = if to.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(ctx("socket"))?;
    socket
        .bind_device(Some(iface.as_bytes()))
        .map_err(ctx("SO_BINDTODEVICE (needs CAP_NET_RAW)"))?;
    socket.send_to(PAYLOAD, &to.into()).map_err(ctx("send"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> AllowedIp {
        let (addr, cidr) = s.split_once('/').unwrap();
        AllowedIp {
            addr: addr.parse().unwrap(),
            cidr: cidr.parse().unwrap(),
        }
    }

    #[test]
    fn targets() {
        assert_eq!(
            target(&[a("10.0.0.2/32")]),
            Some("10.0.0.2:9".parse().unwrap())
        );
        assert_eq!(
            target(&[a("0.0.0.0/0"), a("10.7.0.0/24")]),
            Some("10.7.0.1:9".parse().unwrap())
        );
        assert_eq!(
            target(&[a("0.0.0.0/0")]),
            Some("192.0.2.1:9".parse().unwrap())
        );
        assert_eq!(
            target(&[a("fd00::/64")]),
            Some("[fd00::1]:9".parse().unwrap())
        );
        assert_eq!(
            target(&[a("fd00::5/128"), a("10.1.2.3/32")]),
            Some("10.1.2.3:9".parse().unwrap())
        );
        assert_eq!(target(&[]), None);
    }
}
