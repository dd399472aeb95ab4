//! UAPI `get=1` replies for `uapi_reply`: the reference parser (the agent's `parse_get` as it was
//! before it became a streaming parser with fast paths, commit e4b890d, with its own hex decoder),
//! an encoder of a [`DeviceInfo`] in wireguard-go's or boringtun's format, the control byte of
//! the target's input, and the seed corpus.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wgkeep_agent::wg::{AllowedIp, DeviceInfo, Implementation, Key, PeerInfo, WgError};

/// The interface name the target parses with.
pub const IFACE: &str = "wg9";

/// The wall clock the target parses with (boringtun's handshake times are relative to it): the
/// moment `agent/tests/fixtures/uapi/boringtun-get.txt` was recorded.
pub fn wall_now() -> SystemTime {
    UNIX_EPOCH + Duration::new(1_795_559_224, 166_000_000)
}

/// How the target feeds a reply to the agent's socket reader, from the first input byte:
/// bits 0–2 the read sizes (cycled), bits 3–4 the reader's initial buffer size, bit 5 whether
/// the reader writes into a [`DeviceInfo`] left from an earlier parse.
#[derive(Debug, Clone, Copy)]
pub struct Control {
    pub sizes: &'static [usize],
    pub buffer: usize,
    pub reuse: bool,
}

const SIZES: [&[usize]; 8] = [
    &[65_536],
    &[1],
    &[2],
    &[3],
    &[7],
    &[64],
    &[5, 17, 1],
    &[31, 4096, 2],
];
const BUFFERS: [usize; 4] = [65_536, 16, 64, 1];

impl Control {
    pub fn from_byte(b: u8) -> Control {
        Control {
            sizes: SIZES[usize::from(b & 7)],
            buffer: BUFFERS[usize::from((b >> 3) & 3)],
            reuse: b & 0x20 != 0,
        }
    }
}

/// A [`DeviceInfo`] as an earlier parse may have left it: the parser must overwrite or drop all
/// of it.
pub fn dirty_info() -> DeviceInfo {
    let peer = |b: u8, n: usize| PeerInfo {
        public_key: Key([b; 32]),
        endpoint: Some(SocketAddr::from(([192, 0, 2, b], 1000 + u16::from(b)))),
        last_handshake: Some(UNIX_EPOCH + Duration::from_secs(u64::from(b) * 1000)),
        rx_bytes: u64::from(b) * 3,
        tx_bytes: u64::from(b) * 5,
        persistent_keepalive: Some(u16::from(b)),
        allowed_ips: (0..n)
            .map(|i| AllowedIp {
                addr: IpAddr::from([10, b, i as u8, 0]),
                cidr: 24,
            })
            .collect(),
    };
    DeviceInfo {
        implementation: Implementation::Boringtun,
        public_key: Some(Key([0xee; 32])),
        listen_port: Some(4242),
        peers: vec![peer(1, 3), peer(2, 0), peer(3, 9), peer(4, 1)],
    }
}

// ---------------------------------------------------------------------------------------------
// The reference parser.
// ---------------------------------------------------------------------------------------------

fn malformed(iface: &str, detail: impl Into<String>) -> WgError {
    WgError::Malformed {
        iface: iface.to_owned(),
        detail: detail.into(),
    }
}

struct RawPeer {
    public_key: Key,
    endpoint: Option<SocketAddr>,
    handshake_sec: Option<u64>,
    handshake_nsec: Option<u32>,
    rx_bytes: u64,
    tx_bytes: u64,
    persistent_keepalive: Option<u16>,
    allowed_ips: Vec<AllowedIp>,
}

impl RawPeer {
    fn new(public_key: Key) -> RawPeer {
        RawPeer {
            public_key,
            endpoint: None,
            handshake_sec: None,
            handshake_nsec: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: None,
            allowed_ips: Vec::new(),
        }
    }

    fn finish(
        self,
        implementation: Implementation,
        wall_now: SystemTime,
        iface: &str,
    ) -> Result<PeerInfo, WgError> {
        let last_handshake = match (self.handshake_sec, self.handshake_nsec) {
            (None, None) => None,
            (sec, nsec) => {
                let since = Duration::new(sec.unwrap_or(0), nsec.unwrap_or(0));
                match implementation {
                    Implementation::Boringtun => {
                        let at = wall_now
                            .checked_sub(since)
                            .filter(|t| *t >= SystemTime::UNIX_EPOCH);
                        Some(at.ok_or_else(|| {
                            malformed(iface, format!("handshake {since:?} ago is before 1970"))
                        })?)
                    }
                    _ if since.is_zero() => None,
                    _ => Some(SystemTime::UNIX_EPOCH.checked_add(since).ok_or_else(|| {
                        malformed(iface, format!("handshake time {since:?} out of range"))
                    })?),
                }
            }
        };
        Ok(PeerInfo {
            public_key: self.public_key,
            endpoint: self.endpoint,
            last_handshake,
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
            persistent_keepalive: self.persistent_keepalive,
            allowed_ips: self.allowed_ips,
        })
    }
}

fn parse_num<T: TryFrom<u64>>(iface: &str, key: &str, value: &str) -> Result<T, WgError> {
    let bad = || malformed(iface, format!("`{key}={value}`: not a valid number"));
    if value.is_empty() || value.len() > 20 {
        return Err(bad());
    }
    let mut n: u64 = 0;
    for b in value.bytes() {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return Err(bad());
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d)))
            .ok_or_else(bad)?;
    }
    T::try_from(n).map_err(|_| bad())
}

/// 64 hex digits, a digit at a time (the agent's decoder takes eight at a time).
fn hex_key(s: &str) -> Option<Key> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |b: u8| char::from(b).to_digit(16).filter(|_| b.is_ascii_hexdigit());
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = u8::try_from(digit(pair[0])? << 4 | digit(pair[1])?).ok()?;
    }
    Some(Key(out))
}

fn parse_key(iface: &str, key: &str, value: &str) -> Result<Key, WgError> {
    hex_key(value).ok_or_else(|| malformed(iface, format!("`{key}=`: not 64 hex digits")))
}

fn parse_endpoint(iface: &str, value: &str) -> Result<SocketAddr, WgError> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    if let (Some(pct), Some(close)) = (value.find('%'), value.rfind(']')) {
        if pct < close {
            let unzoned = format!("{}{}", &value[..pct], &value[close..]);
            if let Ok(addr) = unzoned.parse() {
                return Ok(addr);
            }
        }
    }
    Err(malformed(
        iface,
        format!("`endpoint={value}`: not an address"),
    ))
}

fn parse_allowed_ip(iface: &str, value: &str) -> Result<AllowedIp, WgError> {
    let bad = || {
        malformed(
            iface,
            format!("`allowed_ip={value}`: not an address/prefix"),
        )
    };
    let (addr, cidr) = value.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let cidr: u8 = cidr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if cidr > max {
        return Err(bad());
    }
    Ok(AllowedIp { addr, cidr })
}

/// The `N` of an `errno=N` line, made positive.
pub fn parse_errno(iface: &str, value: &str) -> Result<i32, WgError> {
    parse_num(iface, "errno", value.strip_prefix('-').unwrap_or(value))
}

/// The body (every line before the final `errno=` line) and that line's value.
pub fn split_reply<'a>(reply: &'a str, iface: &str) -> Result<(&'a str, i32), WgError> {
    let trimmed = reply.trim_end_matches(['\n', '\r']);
    let (body, last) = match trimmed.rfind('\n') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => ("", trimmed),
    };
    match last
        .strip_suffix('\r')
        .unwrap_or(last)
        .strip_prefix("errno=")
    {
        Some(value) => Ok((body, parse_errno(iface, value)?)),
        None if reply.is_empty() => Err(malformed(iface, "empty reply (connection closed)")),
        None if body_lines(trimmed).any(|l| l.starts_with("errno=")) => {
            Err(malformed(iface, "data after the errno= line"))
        }
        None => Err(malformed(
            iface,
            format!(
                "no errno= line after {} bytes (reply cut off?)",
                reply.len()
            ),
        )),
    }
}

/// The non-blank lines of a reply body, without `\r`.
pub fn body_lines(body: &str) -> impl Iterator<Item = &str> {
    body.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty())
}

/// The reference `parse_get`.
pub fn parse_get(reply: &str, iface: &str, wall_now: SystemTime) -> Result<DeviceInfo, WgError> {
    let (body, errno) = split_reply(reply, iface)?;
    if errno != 0 {
        return Err(WgError::Refused {
            iface: iface.to_owned(),
            what: "get",
            errno,
        });
    }
    let mut own_public_key = None;
    let mut listen_port = None;
    let mut saw_protocol_version = false;
    let mut peers: Vec<RawPeer> = Vec::new();
    for line in body_lines(body) {
        let Some((key, value)) = line.split_once('=') else {
            let shown: String = line.chars().take(40).collect();
            return Err(malformed(iface, format!("line without `=`: `{shown}`")));
        };
        if key == "errno" {
            return Err(malformed(iface, "data after the errno= line"));
        }
        if key == "protocol_version" {
            saw_protocol_version = true;
            continue;
        }
        if key == "public_key" {
            peers.push(RawPeer::new(parse_key(iface, key, value)?));
            continue;
        }
        match peers.last_mut() {
            None => match key {
                "own_public_key" => own_public_key = Some(parse_key(iface, key, value)?),
                "listen_port" => listen_port = Some(parse_num(iface, key, value)?),
                _ => {}
            },
            Some(peer) => match key {
                "endpoint" => peer.endpoint = Some(parse_endpoint(iface, value)?),
                "last_handshake_time_sec" => {
                    peer.handshake_sec = Some(parse_num(iface, key, value)?)
                }
                "last_handshake_time_nsec" => {
                    let nsec: u32 = parse_num(iface, key, value)?;
                    if nsec >= 1_000_000_000 {
                        return Err(malformed(iface, format!("`{key}={value}`: over a second")));
                    }
                    peer.handshake_nsec = Some(nsec);
                }
                "rx_bytes" => peer.rx_bytes = parse_num(iface, key, value)?,
                "tx_bytes" => peer.tx_bytes = parse_num(iface, key, value)?,
                "persistent_keepalive_interval" => {
                    let secs: u16 = parse_num(iface, key, value)?;
                    peer.persistent_keepalive = (secs != 0).then_some(secs);
                }
                "allowed_ip" => peer.allowed_ips.push(parse_allowed_ip(iface, value)?),
                _ => {}
            },
        }
    }
    let implementation = if own_public_key.is_some() && !saw_protocol_version {
        Implementation::Boringtun
    } else {
        Implementation::WireguardGo
    };
    let peers = peers
        .into_iter()
        .map(|p| p.finish(implementation, wall_now, iface))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DeviceInfo {
        implementation,
        public_key: own_public_key,
        listen_port,
        peers,
    })
}

// ---------------------------------------------------------------------------------------------
// The encoder.
// ---------------------------------------------------------------------------------------------

/// `info` as its implementation prints it (wireguard-go: `protocol_version=1`, absolute
/// handshake times, every line; boringtun: `own_public_key=`, relative times, only what is set),
/// ending `errno=0\n\n`; `crlf` ends lines with `\r\n`. Parsing it back at `wall_now` gives
/// `info` (for a wireguard-go reply, `info.implementation` must be
/// [`Implementation::WireguardGo`] unless `info.public_key` is set).
pub fn encode_get(info: &DeviceInfo, wall_now: SystemTime, crlf: bool) -> String {
    let boringtun = info.implementation == Implementation::Boringtun;
    let mut out = String::new();
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        out.push_str(&format!("{k}={v}"));
        out.push_str(if crlf { "\r\n" } else { "\n" });
    };
    let hex = |k: &Key| k.to_hex();
    match (&info.public_key, boringtun) {
        (Some(k), _) => line("own_public_key", &hex(k)),
        (None, false) => line("private_key", &"0".repeat(64)),
        (None, true) => {}
    }
    if let Some(p) = info.listen_port {
        line("listen_port", &p);
    }
    if !boringtun && info.public_key.is_some() && info.peers.is_empty() {
        // Otherwise read as boringtun: wireguard-go prints this line in peer sections only.
        line("protocol_version", &1);
    }
    for p in &info.peers {
        line("public_key", &hex(&p.public_key));
        line("preshared_key", &"5".repeat(64));
        if !boringtun {
            line("protocol_version", &1);
        }
        if let Some(e) = &p.endpoint {
            line("endpoint", e);
        }
        let hs = match p.last_handshake {
            Some(t) if boringtun => Some(wall_now.duration_since(t).expect("before now")),
            Some(t) => Some(t.duration_since(UNIX_EPOCH).expect("after 1970")),
            None if boringtun => None,
            None => Some(Duration::ZERO),
        };
        if let Some(d) = hs {
            line("last_handshake_time_sec", &d.as_secs());
            line("last_handshake_time_nsec", &d.subsec_nanos());
        }
        line("tx_bytes", &p.tx_bytes);
        line("rx_bytes", &p.rx_bytes);
        if p.persistent_keepalive.is_some() || !boringtun {
            line(
                "persistent_keepalive_interval",
                &p.persistent_keepalive.unwrap_or(0),
            );
        }
        for ip in &p.allowed_ips {
            line("allowed_ip", &format!("{}/{}", ip.addr, ip.cidr));
        }
    }
    line("errno", &0);
    out.push_str(if crlf { "\r\n" } else { "\n" });
    out
}

#[cfg(test)]
mod seeds {
    use std::path::Path;

    use wgkeep_agent::wg::uapi;

    use super::*;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../agent/tests/fixtures/uapi")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Each seed: its name, its control byte, the reply.
    fn seeds() -> Vec<(&'static str, u8, String)> {
        let wg_go = fixture("wireguard-go-get.txt");
        let boringtun = fixture("boringtun-get.txt");
        let mut synthetic = uapi::parse_get(&wg_go, IFACE, wall_now()).unwrap();
        synthetic.peers[1].endpoint = Some("[fe80::1%2]:51820".parse().unwrap());
        synthetic.peers[2].persistent_keepalive = Some(65_535);
        synthetic.peers[2].rx_bytes = u64::MAX;
        vec![
            ("wireguard-go", 0x00, wg_go.clone()),
            ("wireguard-go-bytewise", 0x01 | 0x20, wg_go.clone()),
            (
                "wireguard-go-crlf",
                0x06 | 0x08,
                wg_go.replace('\n', "\r\n"),
            ),
            ("boringtun", 0x00, boringtun.clone()),
            ("boringtun-small-reads", 0x04 | 0x10 | 0x20, boringtun),
            (
                "wireguard-go-zoned",
                0x03,
                encode_get(&synthetic, wall_now(), false).replace(
                    "endpoint=[fe80::1%2]:51820",
                    "endpoint=[fe80::1%eth0]:51820",
                ),
            ),
            ("refused", 0x00, "errno=-22\n\n".to_owned()),
            (
                "refused-after-body",
                0x02,
                "listen_port=5\npublic_key=zz\nerrno=-22\n\n".to_owned(),
            ),
            ("set-ok", 0x00, "errno=0\n\n".to_owned()),
            ("cut-off", 0x05, wg_go[..wg_go.len() / 2].to_owned()),
        ]
    }

    #[test]
    fn reference_parser_agrees_on_the_fixtures() {
        for (name, _, reply) in seeds() {
            let agent = format!("{:?}", uapi::parse_get(&reply, IFACE, wall_now()));
            let reference = format!("{:?}", parse_get(&reply, IFACE, wall_now()));
            assert_eq!(agent, reference, "{name}");
            // The socket reader, however the reply is read.
            for control in 0..64 {
                let c = Control::from_byte(control);
                let mut info = if c.reuse {
                    dirty_info()
                } else {
                    DeviceInfo::empty()
                };
                let (r, read) = uapi::parse_get_in_reads(
                    reply.as_bytes(),
                    c.sizes,
                    c.buffer,
                    IFACE,
                    wall_now(),
                    &mut info,
                );
                assert_eq!(read, reply.len(), "{name} {c:?}");
                let got = format!("{:?}", r.map(|()| info));
                assert_eq!(got, agent, "{name} {c:?}");
            }
        }
        let boringtun = uapi::parse_get(&fixture("boringtun-get.txt"), IFACE, wall_now()).unwrap();
        assert_eq!(boringtun.implementation, Implementation::Boringtun);
        for info in [
            boringtun,
            uapi::parse_get(&fixture("wireguard-go-get.txt"), IFACE, wall_now()).unwrap(),
        ] {
            for crlf in [false, true] {
                let text = encode_get(&info, wall_now(), crlf);
                assert_eq!(uapi::parse_get(&text, IFACE, wall_now()).unwrap(), info);
            }
        }
    }

    #[test]
    fn seed_corpus_is_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/uapi_reply");
        crate::check_or_write_seeds(
            &dir,
            seeds().into_iter().map(|(name, control, reply)| {
                let mut bytes = vec![control];
                bytes.extend_from_slice(reply.as_bytes());
                (name.to_owned(), bytes)
            }),
        );
    }
}
