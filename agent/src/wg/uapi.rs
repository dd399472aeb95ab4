//! Userspace WireGuard over its UAPI socket (`/var/run/wireguard/NAME.sock`).
//!
//! The protocol (<https://www.wireguard.com/xplatform/>) is line based: `get=1\n\n` is answered
//! with `key=value` lines and a final `errno=0\n\n`; `set=1\n`, `key=value` lines and a blank line
//! are answered with `errno=N\n\n`. Two implementations speak it here:
//!
//! - **wireguard-go**: `private_key=` (secret, never kept or logged), `listen_port=`, `fwmark=`,
//!   then per peer `public_key=`, `preshared_key=`, `protocol_version=1`, `endpoint=`,
//!   `last_handshake_time_sec=`/`_nsec=` (Unix epoch, `0`/`0` for never), `tx_bytes=`,
//!   `rx_bytes=` (wire bytes: a keepalive counts 32), `persistent_keepalive_interval=` (always
//!   present, `0` for off) and repeated `allowed_ip=`. It reports errors as *negative* errno
//!   (`errno=-22`); [`WgError::Refused`] carries the positive value.
//! - **boringtun-cli 0.7.1**: see [`parse_get`] for exactly what it prints. It has no
//!   `protocol_version=` and prints `own_public_key=` instead of the private key, which is how
//!   it is told apart. Its handshake time is *relative*. It must never be written to: see
//!   [`UapiClient::kick`].
//!
//! [`parse_get`], [`parse_get_into`], [`kick_request`], [`set_keepalive_request`] and
//! [`parse_set_reply`] do no I/O; [`UapiClient`] does one blocking connection per call, bounded by
//! one overall timeout. A `get=1` reply (3 MB for 10 000 peers) is parsed as it is read, a chunk
//! at a time, into a [`DeviceInfo`] that the agent reuses from poll to poll.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use socket2::{Domain, SockAddr, Socket, Type};

use super::{AllowedIp, DeviceInfo, Implementation, Key, PeerInfo, WgError};

/// Where userspace implementations put their UAPI sockets (shared by all network namespaces).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The largest reply accepted: 10 000 peers take about 4 MB in wireguard-go's format (more with
/// many allowed IPs each); anything past this is not a WireGuard reply.
pub const MAX_REPLY_BYTES: usize = 64 << 20;

/// A `get=1` reply is read this much at a time and parsed while it is still in the CPU cache; it
/// is never held whole.
const READ_CHUNK: usize = 64 * 1024;

/// What boringtun is told when asked to write.
const BORINGTUN_REFUSAL: &str = "boringtun panics on UAPI writes to existing peers (\"Modifying \
     existing peers is not yet supported\") and then stops answering on its UAPI socket; wgkeep \
     never writes to it: use --follow-up-method tunnel-packet";

/// The UAPI socket of interface `iface`: `/var/run/wireguard/{iface}.sock`.
pub fn socket_path(iface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{iface}.sock"))
}

fn malformed(iface: &str, detail: impl Into<String>) -> WgError {
    WgError::Malformed {
        iface: iface.to_owned(),
        detail: detail.into(),
    }
}

/// The handshake lines of one peer section as read: what they mean depends on the
/// implementation, known only at the end of the reply.
#[derive(Clone, Copy, Default)]
struct RawHandshake {
    sec: Option<u64>,
    nsec: Option<u32>,
}

impl RawHandshake {
    fn resolve(
        self,
        implementation: Implementation,
        wall_now: SystemTime,
        iface: &str,
    ) -> Result<Option<SystemTime>, WgError> {
        let (sec, nsec) = match (self.sec, self.nsec) {
            (None, None) => return Ok(None),
            (sec, nsec) => (sec.unwrap_or(0), nsec.unwrap_or(0)),
        };
        let since = Duration::new(sec, nsec);
        match implementation {
            // Relative: how long ago the current session was established.
            Implementation::Boringtun => {
                let at = wall_now
                    .checked_sub(since)
                    .filter(|t| *t >= SystemTime::UNIX_EPOCH);
                Ok(Some(at.ok_or_else(|| {
                    malformed(iface, format!("handshake {since:?} ago is before 1970"))
                })?))
            }
            // Unix epoch; 0/0 is "never".
            _ if since.is_zero() => Ok(None),
            _ => Ok(Some(SystemTime::UNIX_EPOCH.checked_add(since).ok_or_else(
                || malformed(iface, format!("handshake time {since:?} out of range")),
            )?)),
        }
    }
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

fn parse_num<T: TryFrom<u64>>(iface: &str, key: &str, value: &[u8]) -> Result<T, WgError> {
    // Plain decimal digits, as every implementation prints them; a byte loop, since this runs
    // for several lines of every peer of every poll.
    let bad = || {
        malformed(
            iface,
            format!("`{key}={}`: not a valid number", lossy(value)),
        )
    };
    let n = match value.len() {
        // Up to 19 digits fit a u64: no overflow check per digit.
        1..=19 => {
            let mut n: u64 = 0;
            let mut invalid = false;
            for &b in value {
                let d = b.wrapping_sub(b'0');
                invalid |= d > 9;
                n = n.wrapping_mul(10).wrapping_add(u64::from(d));
            }
            if invalid {
                return Err(bad());
            }
            n
        }
        20 => {
            let mut n: u64 = 0;
            for &b in value {
                let d = b.wrapping_sub(b'0');
                if d > 9 {
                    return Err(bad());
                }
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .ok_or_else(bad)?;
            }
            n
        }
        _ => return Err(bad()),
    };
    T::try_from(n).map_err(|_| bad())
}

fn parse_key(iface: &str, key: &str, value: &[u8]) -> Result<Key, WgError> {
    Key::from_hex_bytes(value)
        .ok_or_else(|| malformed(iface, format!("`{key}=`: not 64 hex digits")))
}

/// An endpoint as wireguard-go (Go `netip.AddrPort`) or boringtun (Rust `SocketAddr`) prints it:
/// `1.2.3.4:5`, `[::1]:5`, `[fe80::1%2]:5`. A named IPv6 zone (`[fe80::1%eth0]:5`, which Go may
/// print) is dropped (scope id 0): resolving it would need the interface's namespace.
fn parse_endpoint(iface: &str, value: &[u8]) -> Result<SocketAddr, WgError> {
    let bad = || {
        malformed(
            iface,
            format!("`endpoint={}`: not an address", lossy(value)),
        )
    };
    let value = std::str::from_utf8(value).map_err(|_| bad())?;
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
    Err(bad())
}

fn parse_allowed_ip(iface: &str, value: &[u8]) -> Result<AllowedIp, WgError> {
    let bad = || {
        malformed(
            iface,
            format!("`allowed_ip={}`: not an address/prefix", lossy(value)),
        )
    };
    let value = std::str::from_utf8(value).map_err(|_| bad())?;
    let (addr, cidr) = value.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let cidr: u8 = cidr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if cidr > max {
        return Err(bad());
    }
    Ok(AllowedIp { addr, cidr })
}

/// The `N` of an `errno=N` line, made positive (wireguard-go sends `-22`, boringtun `22`).
fn parse_errno(iface: &str, value: &str) -> Result<i32, WgError> {
    let n: i32 = parse_num(
        iface,
        "errno",
        value.strip_prefix('-').unwrap_or(value).as_bytes(),
    )?;
    Ok(n)
}

/// Splits a reply into its body (every line before the final `errno=` line) and the value of
/// that line. Blank lines (the terminator) are skipped; an `errno=` line followed by data is an
/// error; a reply without one (cut off, or the peer closed the connection: what a panicking
/// boringtun does) is [`WgError::Malformed`]. The body is not copied: [`body_lines`] walks it.
fn split_reply<'a>(reply: &'a str, iface: &str) -> Result<(&'a str, i32), WgError> {
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
        // A second `errno=` inside the body is caught by the body's parsers (an unknown key in
        // `get`, an unexpected line in `set`).
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
fn body_lines(body: &str) -> impl Iterator<Item = &str> {
    // Lines are short (under 100 bytes): a plain byte scan is cheaper than a char searcher's
    // set-up, and this runs for every line of a 10 000-peer reply every second.
    let mut rest = body;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let end = rest.bytes().position(|b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !line.is_empty() {
            return Some(line);
        }
    })
}

/// The index of the first `\n` in `s`, eight bytes at a time (SWAR: a line is ~30 bytes, and
/// every byte of a 10 000-peer reply passes here every second).
fn find_newline(s: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut words = s.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes")) ^ NEWLINES;
        // The lowest set bit marks the first zero byte of x (higher ones may be false hits).
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(at + zero.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| at + i)
}

/// Decimal digits ending the line: their value and their length with the `\n`. `None` for more
/// than 19 digits (20 may overflow a u64) or anything but digits before the `\n`.
fn decimal_line(s: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    for (i, &b) in s.iter().enumerate().take(20) {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return (b == b'\n' && i > 0).then_some((n, i + 1));
        }
        if i == 19 {
            return None;
        }
        n = n * 10 + u64::from(d);
    }
    None
}

/// A dotted quad as Go and Rust print one (each octet `0` or 1 to 3 digits without a leading
/// zero, at most 255) at the start of `s`, and its length. `None` for anything else, including
/// forms the general parser may still accept.
fn dotted_quad(s: &[u8]) -> Option<(std::net::Ipv4Addr, usize)> {
    let mut octets = [0u8; 4];
    let mut at = 0;
    for (k, octet) in octets.iter_mut().enumerate() {
        if k > 0 {
            if s.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        let mut value: u32 = 0;
        let mut digits = 0;
        while let Some(d) = s
            .get(at + digits)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|d| *d <= 9)
        {
            if digits == 3 || (digits == 1 && value == 0) {
                return None;
            }
            value = value * 10 + u32::from(d);
            digits += 1;
        }
        if digits == 0 {
            return None;
        }
        *octet = u8::try_from(value).ok()?;
        at += digits;
    }
    Some((octets.into(), at))
}

/// A `get=1` reply parser fed as the reply arrives, a run of complete lines at a time
/// ([`GetParser::feed`]), then the unterminated rest ([`GetParser::feed_tail`]); see
/// [`parse_get`] for what it accepts. It gives exactly [`parse_get`]'s result for the
/// concatenation of what it was fed (the split into body and final `errno=` line is found as it
/// goes) and writes into a [`DeviceInfo`] whose peer entries (and their allowed-IP vectors) are
/// reused, so that a poll of 10 000 peers allocates nothing per peer.
struct GetParser<'a> {
    iface: &'a str,
    info: &'a mut DeviceInfo,
    /// Peer sections so far: `info.peers[..count]`; the entries after are left from a previous
    /// reply, to be reused.
    count: usize,
    handshakes: Vec<RawHandshake>,
    own_public_key: Option<Key>,
    listen_port: Option<u16>,
    saw_protocol_version: bool,
    /// The first error in the body; a non-zero `errno=` at the end takes precedence.
    error: Option<WgError>,
    /// The last `errno=` line while nothing but blank lines came after it: the end of the reply,
    /// or (when more follows) a body line, which is an error.
    held: Option<Vec<u8>>,
    saw_errno_line: bool,
    bytes: usize,
    not_utf8: bool,
    /// For [`GetParser::complete`], of the lines so far: the one before the last started with
    /// `errno=`, the last one did, the last one was empty.
    prev_errno: bool,
    last_errno: bool,
    last_empty: bool,
}

impl<'a> GetParser<'a> {
    fn new(iface: &'a str, info: &'a mut DeviceInfo) -> GetParser<'a> {
        let capacity = info.peers.len();
        GetParser {
            iface,
            info,
            count: 0,
            handshakes: Vec::with_capacity(capacity),
            own_public_key: None,
            listen_port: None,
            saw_protocol_version: false,
            error: None,
            held: None,
            saw_errno_line: false,
            bytes: 0,
            not_utf8: false,
            prev_errno: false,
            last_errno: false,
            last_empty: false,
        }
    }

    /// Complete lines: `data` ends with `\n`.
    fn feed(&mut self, data: &[u8]) {
        self.check_utf8(data);
        let mut rest = data;
        while !rest.is_empty() {
            let len = match self.fast_line(rest) {
                Some(len) => len,
                None => {
                    // (Callers cut `data` after a `\n`; without one, the rest is one line.)
                    let i = find_newline(rest).unwrap_or(rest.len());
                    self.line(&rest[..i]);
                    (i + 1).min(rest.len())
                }
            };
            rest = &rest[len..];
        }
    }

    /// The common lines of a wireguard-go peer section in their usual form, parsed in one pass
    /// without looking for the `=` and the `\n` first: the length of the line (with its `\n`)
    /// when it was one, with exactly what [`GetParser::line`] would have done; `None` (and
    /// nothing done) for anything else, which goes the general way.
    fn fast_line(&mut self, s: &[u8]) -> Option<usize> {
        if self.held.is_some() || self.error.is_some() {
            return None;
        }
        let len = match s[0] {
            b'p' => {
                if let Some(v) = s.strip_prefix(b"public_key=") {
                    let key = v.get(..64).and_then(Key::from_hex_bytes)?;
                    if v.get(64) != Some(&b'\n') {
                        return None;
                    }
                    self.start_peer(key);
                    11 + 65
                } else if let Some(v) = s.strip_prefix(b"preshared_key=") {
                    // A secret, skipped: only the line's end matters.
                    if v.get(64) != Some(&b'\n') || find_newline(&v[..64]).is_some() {
                        return None;
                    }
                    14 + 65
                } else if s.starts_with(b"protocol_version=1\n") {
                    self.saw_protocol_version = true;
                    19
                } else if let Some(v) = s.strip_prefix(b"persistent_keepalive_interval=") {
                    let i = self.count.checked_sub(1)?;
                    let (secs, len) = decimal_line(v)?;
                    let secs = u16::try_from(secs).ok()?;
                    self.info.peers[i].persistent_keepalive = (secs != 0).then_some(secs);
                    30 + len
                } else {
                    return None;
                }
            }
            b'l' => {
                let i = self.count.checked_sub(1)?;
                if let Some(v) = s.strip_prefix(b"last_handshake_time_sec=") {
                    let (sec, len) = decimal_line(v)?;
                    self.handshakes[i].sec = Some(sec);
                    24 + len
                } else if let Some(v) = s.strip_prefix(b"last_handshake_time_nsec=") {
                    let (nsec, len) = decimal_line(v)?;
                    let nsec = u32::try_from(nsec).ok().filter(|n| *n < 1_000_000_000)?;
                    self.handshakes[i].nsec = Some(nsec);
                    25 + len
                } else {
                    return None;
                }
            }
            b't' => {
                let i = self.count.checked_sub(1)?;
                let (n, len) = decimal_line(s.strip_prefix(b"tx_bytes=")?)?;
                self.info.peers[i].tx_bytes = n;
                9 + len
            }
            b'r' => {
                let i = self.count.checked_sub(1)?;
                let (n, len) = decimal_line(s.strip_prefix(b"rx_bytes=")?)?;
                self.info.peers[i].rx_bytes = n;
                9 + len
            }
            b'a' => {
                let i = self.count.checked_sub(1)?;
                let v = s.strip_prefix(b"allowed_ip=")?;
                let (addr, at) = dotted_quad(v)?;
                if v.get(at) != Some(&b'/') {
                    return None;
                }
                let (cidr, len) = decimal_line(&v[at + 1..])?;
                let cidr = u8::try_from(cidr).ok().filter(|c| *c <= 32)?;
                if len > 3 {
                    return None; // leading zeros: the general way decides
                }
                self.info.peers[i].allowed_ips.push(AllowedIp {
                    addr: IpAddr::V4(addr),
                    cidr,
                });
                11 + at + 1 + len
            }
            b'e' => {
                let i = self.count.checked_sub(1)?;
                let v = s.strip_prefix(b"endpoint=")?;
                let (addr, at) = dotted_quad(v)?;
                if v.get(at) != Some(&b':') {
                    return None;
                }
                let (port, len) = decimal_line(&v[at + 1..])?;
                let port = u16::try_from(port).ok()?;
                self.info.peers[i].endpoint = Some(SocketAddr::new(IpAddr::V4(addr), port));
                9 + at + 1 + len
            }
            _ => return None,
        };
        self.prev_errno = self.last_errno;
        self.last_errno = false;
        self.last_empty = false;
        Some(len)
    }

    /// The end of the reply after its last `\n`.
    fn feed_tail(&mut self, data: &[u8]) {
        if !data.is_empty() {
            self.check_utf8(data);
            self.line(data);
        }
    }

    fn check_utf8(&mut self, data: &[u8]) {
        self.bytes += data.len();
        // Runs end at a line end, which never splits a UTF-8 sequence.
        if !data.is_ascii() && std::str::from_utf8(data).is_err() {
            self.not_utf8 = true;
        }
    }

    /// Whether what was fed so far ends like a complete reply (see [`reply_complete`]).
    fn complete(&self) -> bool {
        self.last_empty && self.prev_errno
    }

    /// One line, without its `\n`.
    fn line(&mut self, raw: &[u8]) {
        let errno_line = raw.starts_with(b"errno=");
        self.prev_errno = self.last_errno;
        self.last_errno = errno_line;
        self.last_empty = raw.is_empty();
        if errno_line {
            self.saw_errno_line = true;
            if let Some(held) = self.held.take() {
                self.body_line(&held);
            }
            self.held = Some(raw.to_vec());
        } else if raw.iter().all(|&b| b == b'\r') {
            // Blank: after a held `errno=` line it either ends the reply (trimmed) or comes after
            // that line's error; elsewhere it is part of the body.
            if self.held.is_none() {
                self.body_line(raw);
            }
        } else {
            if let Some(held) = self.held.take() {
                self.body_line(&held);
            }
            self.body_line(raw);
        }
    }

    /// A line of the body (everything before the final `errno=` line).
    fn body_line(&mut self, raw: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            return;
        }
        if let Err(e) = self.parse_line(line) {
            self.error = Some(e);
        }
    }

    fn parse_line(&mut self, line: &[u8]) -> Result<(), WgError> {
        let iface = self.iface;
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            let shown: String = lossy(line).chars().take(40).collect();
            return Err(malformed(iface, format!("line without `=`: `{shown}`")));
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        match key {
            b"errno" => return Err(malformed(iface, "data after the errno= line")),
            b"protocol_version" => {
                self.saw_protocol_version = true;
                return Ok(());
            }
            b"public_key" => {
                let key = parse_key(iface, "public_key", value)?;
                self.start_peer(key);
                return Ok(());
            }
            _ => {}
        }
        let Some(i) = self.count.checked_sub(1) else {
            match key {
                b"own_public_key" => {
                    self.own_public_key = Some(parse_key(iface, "own_public_key", value)?)
                }
                b"listen_port" => self.listen_port = Some(parse_num(iface, "listen_port", value)?),
                // private_key, fwmark and whatever comes in the future.
                _ => {}
            }
            return Ok(());
        };
        let peer = &mut self.info.peers[i];
        match key {
            b"endpoint" => peer.endpoint = Some(parse_endpoint(iface, value)?),
            b"last_handshake_time_sec" => {
                self.handshakes[i].sec = Some(parse_num(iface, "last_handshake_time_sec", value)?)
            }
            b"last_handshake_time_nsec" => {
                let nsec: u32 = parse_num(iface, "last_handshake_time_nsec", value)?;
                if nsec >= 1_000_000_000 {
                    return Err(malformed(
                        iface,
                        format!("`last_handshake_time_nsec={}`: over a second", lossy(value)),
                    ));
                }
                self.handshakes[i].nsec = Some(nsec);
            }
            b"rx_bytes" => peer.rx_bytes = parse_num(iface, "rx_bytes", value)?,
            b"tx_bytes" => peer.tx_bytes = parse_num(iface, "tx_bytes", value)?,
            b"persistent_keepalive_interval" => {
                let secs: u16 = parse_num(iface, "persistent_keepalive_interval", value)?;
                peer.persistent_keepalive = (secs != 0).then_some(secs);
            }
            b"allowed_ip" => peer.allowed_ips.push(parse_allowed_ip(iface, value)?),
            // preshared_key (secret) and whatever comes in the future.
            _ => {}
        }
        Ok(())
    }

    fn start_peer(&mut self, public_key: Key) {
        match self.info.peers.get_mut(self.count) {
            Some(p) => {
                p.public_key = public_key;
                p.endpoint = None;
                p.last_handshake = None;
                p.rx_bytes = 0;
                p.tx_bytes = 0;
                p.persistent_keepalive = None;
                p.allowed_ips.clear();
            }
            None => self.info.peers.push(PeerInfo {
                public_key,
                endpoint: None,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                persistent_keepalive: None,
                allowed_ips: Vec::new(),
            }),
        }
        self.handshakes.push(RawHandshake::default());
        self.count += 1;
    }

    /// The end of the reply: the verdict, in [`parse_get`]'s order of precedence (not UTF-8, the
    /// final `errno=` line, the body, the handshake times).
    fn finish(self, wall_now: SystemTime) -> Result<(), WgError> {
        let iface = self.iface;
        if self.not_utf8 {
            return Err(malformed(iface, "reply to get is not UTF-8"));
        }
        let errno = match &self.held {
            Some(line) => {
                let line = lossy(line);
                let line = line.trim_end_matches('\r');
                parse_errno(iface, &line["errno=".len()..])?
            }
            None if self.bytes == 0 => {
                return Err(malformed(iface, "empty reply (connection closed)"))
            }
            None if self.saw_errno_line => {
                return Err(malformed(iface, "data after the errno= line"))
            }
            None => {
                return Err(malformed(
                    iface,
                    format!("no errno= line after {} bytes (reply cut off?)", self.bytes),
                ))
            }
        };
        if errno != 0 {
            return Err(WgError::Refused {
                iface: iface.to_owned(),
                what: "get",
                errno,
            });
        }
        if let Some(e) = self.error {
            return Err(e);
        }
        let implementation = if self.own_public_key.is_some() && !self.saw_protocol_version {
            Implementation::Boringtun
        } else {
            Implementation::WireguardGo
        };
        let info = self.info;
        info.peers.truncate(self.count);
        for (p, h) in info.peers.iter_mut().zip(&self.handshakes) {
            p.last_handshake = h.resolve(implementation, wall_now, iface)?;
        }
        info.implementation = implementation;
        info.public_key = self.own_public_key;
        info.listen_port = self.listen_port;
        Ok(())
    }
}

/// Parses a `get=1` reply (including its `errno=` line and blank terminator).
///
/// A non-zero `errno=` gives [`WgError::Refused`] (`what: "get"`); a line without `=`, a bad
/// number, key, address or prefix of a known key, or a missing `errno=` gives
/// [`WgError::Malformed`]. Unknown keys are ignored, and so are `private_key=`,
/// `preshared_key=` and `fwmark=` (secrets are never kept nor put in error messages).
///
/// The implementation is [`Implementation::Boringtun`] when the reply has `own_public_key=` and
/// no `protocol_version=` anywhere, else [`Implementation::WireguardGo`]. (boringtun cannot have
/// peers without a private key, so a boringtun without `own_public_key=` has nothing to write
/// to; wireguard-go prints `protocol_version=1` in every peer section.)
///
/// # What boringtun-cli 0.7.1 prints
///
/// From `boringtun-0.7.1/src/device/api.rs` (`api_get`), checked against a recording
/// (`agent/tests/fixtures/uapi/boringtun-get.txt`):
///
/// ```text
/// own_public_key=<hex>                  only with a private key (which is never printed)
/// listen_port=<port>                    only when non-zero
/// fwmark=<n>                            only when set
/// public_key=<hex>                      then per peer, in hash-map order:
/// preshared_key=<hex>                   only when set
/// persistent_keepalive_interval=<s>     only when non-zero
/// endpoint=<SocketAddr>                 Rust Display: 1.2.3.4:5, [::1]:5; only when known
/// allowed_ip=<ip>/<cidr>                repeated
/// last_handshake_time_sec=<s>           only while the peer has a current session
/// last_handshake_time_nsec=<ns>
/// rx_bytes=<n>                          inner (decrypted IP packet) bytes, not wire bytes
/// tx_bytes=<n>                          inner bytes: a keepalive adds 0
/// errno=0
/// (blank line)
/// ```
///
/// The handshake pair is `Tunn::time_since_last_handshake()` split into whole seconds and
/// nanoseconds: `Instant::now() - time_started - timers[TimeSessionEstablished]`, the time
/// elapsed *since* the session was established, on boringtun's own monotonic clock
/// (`CLOCK_BOOTTIME`), with the ~250 ms granularity of its timer tick. It is **not** a Unix
/// time, so it is converted as `wall_now - (sec, nsec)`; `wall_now` should be read right after
/// the reply arrived. Recorded here: two `get=1` 2.12 s apart printed `9.807691489` and
/// `11.952101401`, and `wall time − value` (1795559218.83) matched the epoch second the
/// wireguard-go peer reported for the same handshake (1795559218); `wg show` on the boringtun
/// interface prints "56 years ago" for it. No lines means no current session (never, or expired
/// after 3 × REJECT_AFTER_TIME), not necessarily "never".
pub fn parse_get(reply: &str, iface: &str, wall_now: SystemTime) -> Result<DeviceInfo, WgError> {
    let mut info = DeviceInfo::empty();
    parse_get_into(reply.as_bytes(), iface, wall_now, &mut info)?;
    Ok(info)
}

/// [`parse_get`] of a reply as received (bytes: one that is not UTF-8 is
/// [`WgError::Malformed`]) into `info`, reusing its peer entries and their allowed-IP vectors.
/// On error, `info` is left half-written.
pub fn parse_get_into(
    reply: &[u8],
    iface: &str,
    wall_now: SystemTime,
    info: &mut DeviceInfo,
) -> Result<(), WgError> {
    let mut parser = GetParser::new(iface, info);
    let cut = reply.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    parser.feed(&reply[..cut]);
    parser.feed_tail(&reply[cut..]);
    parser.finish(wall_now)
}

/// For the fuzz target `uapi_reply` (`fuzz/`), not a stable API: what [`UapiClient::get_into`]
/// makes of `reply` when it arrives in reads of `sizes` bytes (cycled; 0 counts as 1) into a
/// line buffer of initially `buffer` bytes (at least 1), without a socket. The verdict, and how
/// many bytes were read (a complete reply ends the reading, as on the socket).
#[doc(hidden)]
pub fn parse_get_in_reads(
    reply: &[u8],
    sizes: &[usize],
    buffer: usize,
    iface: &str,
    wall_now: SystemTime,
    info: &mut DeviceInfo,
) -> (Result<(), WgError>, usize) {
    let mut parser = GetParser::new(iface, info);
    let mut reader = LineReader {
        buf: vec![0; buffer.max(1)],
        start: 0,
        parser: &mut parser,
    };
    let mut sizes = sizes.iter().cycle();
    let mut read = 0;
    while read < reply.len() {
        let size = sizes.next().map_or(usize::MAX, |&s| s.max(1));
        let space = reader.space();
        let n = size.min(space.len()).min(reply.len() - read);
        space[..n].copy_from_slice(&reply[read..read + n]);
        read += n;
        if reader.filled(n) {
            break;
        }
    }
    let (buf, start) = (reader.buf, reader.start);
    parser.feed_tail(&buf[..start]);
    (parser.finish(wall_now), read)
}

fn peer_section(out: &mut String, peer: &Key, keepalive: u16) {
    out.push_str("public_key=");
    out.push_str(&peer.to_hex());
    out.push_str("\nupdate_only=true\npersistent_keepalive_interval=");
    out.push_str(&keepalive.to_string());
    out.push('\n');
}

/// The kick: one `set=1` transaction that makes wireguard-go send one keepalive to `peer` now
/// (a handshake initiation if it has no session) and leaves its PersistentKeepalive as it was.
///
/// The peer section comes twice, each with `update_only=true` (so an unknown peer is not created:
/// wireguard-go removes a peer that its `public_key=` line has just created, and answers
/// `errno=0`). wireguard-go's `device/uapi.go`: `persistent_keepalive_interval` sets
/// `pkaOn = old == 0 && secs != 0`, and when a peer section ends (at the next `public_key=` or the
/// blank line) `handlePostConfig` calls `SendKeepalive()` if `pkaOn` and the device is up. So:
///
/// - PK on (`Some(n)`): `0` then `n`. The second section turns it on: keepalive when the
///   transaction ends. The first section only switches it off for an instant.
/// - PK off (`None`, or `Some(0)`): `1` then `0`. The first section turns it on: keepalive when
///   the second `public_key=` line is read; the second turns it off again before the 1 s timer
///   could fire (and that timer re-checks the interval when it expires).
///
/// The whole transaction runs under wireguard-go's IPC lock. `current_keepalive` must be the
/// value just read: it is written back. Nothing is sent (and the reply is still `errno=0`) when
/// the interface is down, the peer has no endpoint, or the device does not have the peer.
///
/// Measured with Debian's wireguard-go 0.0.20220316 between two namespaces: `errno=0` after
/// ~0.3 ms, tx_bytes +32 within ~0.5 ms, the other end's rx_bytes +32, no further packet in the
/// next 1.5 s, the setting unchanged, for both `Some(150)` and `None`.
pub fn kick_request(peer: &Key, current_keepalive: Option<u16>) -> String {
    let (first, second) = match current_keepalive {
        Some(n) if n != 0 => (0, n),
        _ => (1, 0),
    };
    let mut out = String::from("set=1\n");
    peer_section(&mut out, peer, first);
    peer_section(&mut out, peer, second);
    out.push('\n');
    out
}

/// Sets `peer`'s PersistentKeepalive (`None`: off) in one `set=1` transaction with
/// `update_only=true`. Note that turning it on from off also makes wireguard-go send one
/// keepalive at once.
pub fn set_keepalive_request(peer: &Key, keepalive: Option<u16>) -> String {
    let mut out = String::from("set=1\n");
    peer_section(&mut out, peer, keepalive.unwrap_or(0));
    out.push('\n');
    out
}

/// Parses the reply to a `set=1` transaction: `errno=0\n\n` is success, another errno is
/// [`WgError::Refused`] (positive errno), anything else (including an empty reply: the
/// connection closed, as when boringtun panics) is [`WgError::Malformed`].
pub fn parse_set_reply(reply: &str, iface: &str, what: &'static str) -> Result<(), WgError> {
    let (body, errno) = split_reply(reply, iface)?;
    if let Some(line) = body_lines(body).next() {
        let shown: String = line.chars().take(40).collect();
        return Err(malformed(
            iface,
            format!("unexpected `{shown}` in reply to {what}"),
        ));
    }
    if errno != 0 {
        return Err(WgError::Refused {
            iface: iface.to_owned(),
            what,
            errno,
        });
    }
    Ok(())
}

/// Whether `buf` ends with a complete reply: its last line is `errno=…` followed by a blank line.
fn reply_complete(buf: &[u8]) -> bool {
    let Some(rest) = buf.strip_suffix(b"\n\n") else {
        return false;
    };
    let last_line = match rest.iter().rposition(|&b| b == b'\n') {
        Some(i) => &rest[i + 1..],
        None => rest,
    };
    last_line.starts_with(b"errno=")
}

/// Where [`UapiClient::exchange`] puts a reply.
trait ReplySink {
    /// Room for the next read (never empty).
    fn space(&mut self) -> &mut [u8];
    /// `n` bytes were read into [`ReplySink::space`]; true once the reply is complete.
    fn filled(&mut self, n: usize) -> bool;
}

/// The whole reply, for the short answers to `set=1`.
struct WholeReply {
    buf: Vec<u8>,
    len: usize,
}

impl ReplySink for WholeReply {
    fn space(&mut self) -> &mut [u8] {
        if self.buf.len() - self.len < READ_CHUNK / 2 {
            self.buf.resize(self.len + READ_CHUNK, 0);
        }
        &mut self.buf[self.len..]
    }

    fn filled(&mut self, n: usize) -> bool {
        self.len += n;
        reply_complete(&self.buf[..self.len])
    }
}

/// A `get=1` reply, handed to the parser a run of complete lines at a time; only a partial last
/// line is carried over to the next read.
struct LineReader<'p, 'a> {
    buf: Vec<u8>,
    /// `buf[..start]` is the carried-over partial line.
    start: usize,
    parser: &'p mut GetParser<'a>,
}

impl ReplySink for LineReader<'_, '_> {
    fn space(&mut self) -> &mut [u8] {
        if self.start == self.buf.len() {
            // One line longer than the buffer: not WireGuard, but MAX_REPLY_BYTES bounds it.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        &mut self.buf[self.start..]
    }

    fn filled(&mut self, n: usize) -> bool {
        let end = self.start + n;
        // The carried-over part has no `\n`.
        let Some(i) = self.buf[self.start..end].iter().rposition(|&b| b == b'\n') else {
            self.start = end;
            return false;
        };
        let cut = self.start + i + 1;
        self.parser.feed(&self.buf[..cut]);
        self.buf.copy_within(cut..end, 0);
        self.start = end - cut;
        self.start == 0 && self.parser.complete()
    }
}

/// A client for one interface's UAPI socket. Every call is one connection, bounded as a whole by
/// the timeout (connect, write and read together).
#[derive(Debug, Clone)]
pub struct UapiClient {
    iface: String,
    path: PathBuf,
    timeout: Duration,
}

impl UapiClient {
    /// For interface `iface` at [`socket_path`]`(iface)`.
    pub fn new(iface: &str, timeout: Duration) -> UapiClient {
        UapiClient::with_path(iface, socket_path(iface), timeout)
    }

    /// For a socket somewhere else (tests; other run directories).
    pub fn with_path(iface: &str, path: impl Into<PathBuf>, timeout: Duration) -> UapiClient {
        UapiClient {
            iface: iface.to_owned(),
            path: path.into(),
            timeout,
        }
    }

    /// The interface name.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the socket file exists (says nothing about whether anything listens on it).
    pub fn exists(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.file_type().is_socket())
    }

    /// Reads the interface (`get=1`). The wall clock is read once the reply is in, for
    /// boringtun's relative handshake times.
    pub fn get(&self) -> Result<DeviceInfo, WgError> {
        let mut info = DeviceInfo::empty();
        self.get_into(&mut info)?;
        Ok(info)
    }

    /// [`get`](Self::get) into `info`, reusing its peer entries and their allowed-IP vectors
    /// (the agent polls 10 000 peers every second). The reply is parsed as it arrives, never held
    /// whole. On error, `info` is left half-written.
    pub fn get_into(&self, info: &mut DeviceInfo) -> Result<(), WgError> {
        let mut parser = GetParser::new(&self.iface, info);
        let mut reader = LineReader {
            buf: vec![0; READ_CHUNK],
            start: 0,
            parser: &mut parser,
        };
        self.exchange(b"get=1\n\n", "get", &mut reader)?;
        let (buf, start) = (reader.buf, reader.start);
        parser.feed_tail(&buf[..start]);
        parser.finish(crate::clock::wall_now())
    }

    /// Makes the implementation send one authenticated packet to `peer` now ([`kick_request`]).
    /// `current_keepalive` is the peer's PersistentKeepalive as just read; `implementation` as
    /// [`get`](Self::get) detected it. Refused with [`WgError::Unsupported`] for boringtun (and
    /// for the kernel, which is not driven over UAPI) without touching the socket.
    pub fn kick(
        &self,
        peer: &Key,
        current_keepalive: Option<u16>,
        implementation: Implementation,
    ) -> Result<(), WgError> {
        self.check_writable(implementation)?;
        let reply = self.transact(kick_request(peer, current_keepalive).as_bytes(), "kick")?;
        parse_set_reply(&reply, &self.iface, "kick")
    }

    /// Sets `peer`'s PersistentKeepalive ([`set_keepalive_request`]). Refused like
    /// [`kick`](Self::kick) for boringtun.
    pub fn set_keepalive(
        &self,
        peer: &Key,
        keepalive: Option<u16>,
        implementation: Implementation,
    ) -> Result<(), WgError> {
        self.check_writable(implementation)?;
        let request = set_keepalive_request(peer, keepalive);
        let reply = self.transact(request.as_bytes(), "set keepalive")?;
        parse_set_reply(&reply, &self.iface, "set keepalive")
    }

    fn check_writable(&self, implementation: Implementation) -> Result<(), WgError> {
        match implementation {
            Implementation::WireguardGo => Ok(()),
            Implementation::Boringtun => Err(WgError::Unsupported(format!(
                "{}: {BORINGTUN_REFUSAL}",
                self.iface
            ))),
            Implementation::Kernel => Err(WgError::Unsupported(format!(
                "{}: kernel WireGuard is written over netlink, not UAPI",
                self.iface
            ))),
        }
    }

    fn timeout_error(&self) -> WgError {
        WgError::Timeout(self.iface.clone(), self.timeout)
    }

    fn io_error(&self, what: &str, step: &str, source: io::Error) -> WgError {
        WgError::Io {
            context: format!("UAPI {what} on {} ({step})", self.path.display()),
            source,
        }
    }

    /// One request, one reply, one connection. The reply is returned as received, up to and
    /// including the blank line after `errno=` (or whatever came before the connection closed;
    /// the parsers reject a reply without `errno=`).
    fn transact(&self, request: &[u8], what: &'static str) -> Result<String, WgError> {
        let mut reply = WholeReply {
            buf: Vec::new(),
            len: 0,
        };
        self.exchange(request, what, &mut reply)?;
        let mut buf = reply.buf;
        buf.truncate(reply.len);
        String::from_utf8(buf)
            .map_err(|_| malformed(&self.iface, format!("reply to {what} is not UTF-8")))
    }

    /// One request, one reply, one connection: reads into `reply` until it is complete, the
    /// connection closes, or the deadline.
    fn exchange(
        &self,
        request: &[u8],
        what: &'static str,
        reply: &mut impl ReplySink,
    ) -> Result<(), WgError> {
        let deadline = crate::clock::instant_now() + self.timeout;
        // Time left, or the timeout error if none is.
        let remaining = || {
            deadline
                .checked_duration_since(crate::clock::instant_now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| self.timeout_error())
        };
        let is_timeout = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        };

        // Connect. A Unix stream connect blocks only while the listener's backlog is full, for at
        // most SO_SNDTIMEO, and then fails with EAGAIN.
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
            .map_err(|e| self.io_error(what, "socket", e))?;
        socket
            .set_write_timeout(Some(remaining()?))
            .map_err(|e| self.io_error(what, "set timeout", e))?;
        let addr = SockAddr::unix(&self.path).map_err(|e| self.io_error(what, "address", e))?;
        if let Err(e) = socket.connect(&addr) {
            return Err(match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    WgError::NotFound(self.iface.clone())
                }
                _ if is_timeout(&e) => self.timeout_error(),
                _ => self.io_error(what, "connect", e),
            });
        }
        let mut stream = UnixStream::from(socket);

        // Write.
        stream
            .set_write_timeout(Some(remaining()?))
            .map_err(|e| self.io_error(what, "set timeout", e))?;
        if let Err(e) = stream.write_all(request) {
            return Err(if is_timeout(&e) {
                self.timeout_error()
            } else {
                self.io_error(what, "write", e)
            });
        }

        // Read until the blank line after `errno=`, end of stream, or the deadline.
        let mut total = 0usize;
        loop {
            stream
                .set_read_timeout(Some(remaining()?))
                .map_err(|e| self.io_error(what, "set timeout", e))?;
            match stream.read(reply.space()) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    if total > MAX_REPLY_BYTES {
                        return Err(malformed(
                            &self.iface,
                            format!("reply to {what} larger than {MAX_REPLY_BYTES} bytes"),
                        ));
                    }
                    if reply.filled(n) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(self.timeout_error()),
                Err(e) => return Err(self.io_error(what, "read", e)),
            }
        }
        tracing::trace!(iface = %self.iface, what, bytes = total, "UAPI reply");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
    use std::os::unix::net::UnixListener;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;
    use std::thread::{self, JoinHandle};
    use std::time::Instant;

    /// `get=1` of wireguard-go 0.0.20220316 (Debian), recorded: three peers, one with a
    /// handshake, PSK and PK 25 (the other end was a second wireguard-go over a veth), one with an
    /// IPv6 endpoint that never answered, one bare. Throwaway keys. See the README next to it.
    const WG_GO_GET: &str = include_str!("../../tests/fixtures/uapi/wireguard-go-get.txt");
    /// `get=1` of boringtun-cli 0.7.1, recorded 5.35 s after a handshake with a wireguard-go
    /// peer. Its second peer shows boringtun's `set=1` leaking the PSK and PK of the previous
    /// peer section onto the next one (`wg set` configured neither for it).
    const BORINGTUN_GET: &str = include_str!("../../tests/fixtures/uapi/boringtun-get.txt");

    static COUNTER: AtomicU32 = AtomicU32::new(0);

    fn unique() -> u32 {
        COUNTER.fetch_add(1, Ordering::Relaxed)
    }

    fn key(hex: &str) -> Key {
        Key::from_hex(hex).unwrap()
    }

    fn ip(s: &str, cidr: u8) -> AllowedIp {
        AllowedIp {
            addr: s.parse().unwrap(),
            cidr,
        }
    }

    fn at(sec: u64, nsec: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(sec, nsec)
    }

    fn is_malformed<T: std::fmt::Debug>(r: Result<T, WgError>) -> String {
        match r {
            Err(WgError::Malformed { iface, detail }) => {
                assert_eq!(iface, "wg9");
                detail
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    // ---- parse_get on recorded replies -------------------------------------------------------

    #[test]
    fn wireguard_go_fixture() {
        let now = at(1_795_559_178, 0);
        let dev = parse_get(WG_GO_GET, "wgkrecA", now).unwrap();
        assert_eq!(dev.implementation, Implementation::WireguardGo);
        assert_eq!(
            dev.public_key, None,
            "private_key is ignored, nothing derived"
        );
        assert_eq!(dev.listen_port, Some(51820));
        assert_eq!(dev.peers.len(), 3);

        let p = &dev.peers[0];
        assert_eq!(
            p.public_key,
            key("29989f9f68288e25dfb5d2279d0aab69bfc1b72aecde58d20a75450a5a66fb43")
        );
        assert_eq!(
            p.public_key.to_base64(),
            "KZifn2gojiXftdInnQqrab/Btyrs3ljSCnVFClpm+0M="
        );
        assert_eq!(p.endpoint, Some("192.0.2.2:51821".parse().unwrap()));
        assert_eq!(p.last_handshake, Some(at(1_795_559_175, 990_686_817)));
        assert_eq!((p.rx_bytes, p.tx_bytes), (476, 712));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert_eq!(p.allowed_ips, vec![ip("10.77.0.2", 32), ip("fd77::2", 128)]);

        let p = &dev.peers[1];
        assert_eq!(
            p.public_key,
            key("6286827bcc24ee5852585daae05b6dedf91b3b7ae96a252f8dda1498d83a5c28")
        );
        assert_eq!(
            p.endpoint,
            Some(SocketAddr::new(
                IpAddr::V6("fd00:77::9".parse().unwrap()),
                51999
            ))
        );
        assert_eq!(p.last_handshake, None, "0/0 is never");
        assert_eq!((p.rx_bytes, p.tx_bytes), (0, 296), "two initiations");
        assert_eq!(p.persistent_keepalive, None, "0 is off");
        assert_eq!(p.allowed_ips, vec![ip("10.77.1.0", 24), ip("fd77:1::", 64)]);

        let p = &dev.peers[2];
        assert_eq!(p.endpoint, None);
        assert_eq!(p.last_handshake, None);
        assert_eq!(p.allowed_ips, vec![ip("10.77.2.0", 24)]);
    }

    #[test]
    fn boringtun_fixture_relative_handshake() {
        let now = at(1_795_559_224, 166_067_566); // when it was recorded
        let dev = parse_get(BORINGTUN_GET, "wgkrecC", now).unwrap();
        assert_eq!(dev.implementation, Implementation::Boringtun);
        assert_eq!(
            dev.public_key,
            Some(key(
                "9f942adb2103101cf0da69b08157aa0dc4a97d489957a80205e77562f33d3938"
            ))
        );
        assert_eq!(
            dev.public_key.unwrap().to_base64(),
            "n5Qq2yEDEBzw2mmwgVeqDcSpfUiZV6gCBed1YvM9OTg="
        );
        assert_eq!(dev.listen_port, Some(51830));
        assert_eq!(dev.peers.len(), 2);

        let p = &dev.peers[0];
        assert_eq!(
            p.public_key,
            key("46b5504368d22da87ccb8508144338205339b738baea111d3f1675d6ef3e0630")
        );
        assert_eq!(p.endpoint, Some("192.0.2.4:51831".parse().unwrap()));
        // 5.346652100 s before `now`, not 1970-01-01T00:00:05.
        assert_eq!(p.last_handshake, Some(now - Duration::new(5, 346_652_100)));
        assert_eq!(p.last_handshake, Some(at(1_795_559_218, 819_415_466)));
        assert_eq!((p.rx_bytes, p.tx_bytes), (252, 252));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert_eq!(p.allowed_ips, vec![ip("10.78.0.2", 32), ip("fd78::2", 128)]);

        let p = &dev.peers[1];
        assert_eq!(p.endpoint, Some("[fd00:78::9]:51999".parse().unwrap()));
        assert_eq!(p.last_handshake, None, "no lines: no current session");
        assert_eq!((p.rx_bytes, p.tx_bytes), (0, 0));
        assert_eq!(p.allowed_ips, vec![ip("10.78.1.0", 24), ip("fd78:1::", 64)]);
    }

    #[test]
    fn boringtun_relative_time_follows_the_wall_clock() {
        let later = at(1_800_000_000, 0);
        let dev = parse_get(BORINGTUN_GET, "b", later).unwrap();
        assert_eq!(
            dev.peers[0].last_handshake,
            Some(later - Duration::new(5, 346_652_100))
        );
        // Zero seconds ago is "now", not "never" (boringtun prints nothing for never).
        let r = "own_public_key=9f942adb2103101cf0da69b08157aa0dc4a97d489957a80205e77562f33d3938\n\
                 public_key=46b5504368d22da87ccb8508144338205339b738baea111d3f1675d6ef3e0630\n\
                 last_handshake_time_sec=0\nlast_handshake_time_nsec=0\nerrno=0\n\n";
        let dev = parse_get(r, "b", later).unwrap();
        assert_eq!(dev.peers[0].last_handshake, Some(later));
        // More seconds ago than since 1970.
        let r = r.replace("time_sec=0", "time_sec=99999999999");
        is_malformed(parse_get(&r, "wg9", later));
    }

    #[test]
    fn detection() {
        let pk =
            "own_public_key=9f942adb2103101cf0da69b08157aa0dc4a97d489957a80205e77562f33d3938\n";
        let peer = "public_key=46b5504368d22da87ccb8508144338205339b738baea111d3f1675d6ef3e0630\n";
        let now = at(1_700_000_000, 0);
        let imp = |r: String| parse_get(&r, "x", now).unwrap().implementation;
        assert_eq!(
            imp(format!("{pk}listen_port=1\nerrno=0\n\n")),
            Implementation::Boringtun,
            "boringtun without peers"
        );
        assert_eq!(
            imp(format!("{pk}{peer}protocol_version=1\nerrno=0\n\n")),
            Implementation::WireguardGo
        );
        assert_eq!(imp("errno=0\n\n".into()), Implementation::WireguardGo);
        assert_eq!(
            imp(format!("{peer}protocol_version=1\nerrno=0\n\n")),
            Implementation::WireguardGo
        );
        // The same line is epoch for wireguard-go and relative for boringtun.
        let hs = "last_handshake_time_sec=100\nlast_handshake_time_nsec=5\n";
        let go = parse_get(
            &format!("{peer}protocol_version=1\n{hs}errno=0\n\n"),
            "x",
            now,
        )
        .unwrap();
        assert_eq!(go.peers[0].last_handshake, Some(at(100, 5)));
        let bt = parse_get(&format!("{pk}{peer}{hs}errno=0\n\n"), "x", now).unwrap();
        assert_eq!(
            bt.peers[0].last_handshake,
            Some(now - Duration::new(100, 5))
        );
    }

    #[test]
    fn unknown_and_secret_keys_are_ignored() {
        let r = "private_key=78bc7e81cec905b34ff398be2744696b61499b2da9775b8163be92550a26fe58\n\
                 listen_port=51820\nfwmark=51\njc=4\nfuture_device_key=whatever\n\
                 public_key=29989f9f68288e25dfb5d2279d0aab69bfc1b72aecde58d20a75450a5a66fb43\n\
                 preshared_key=not-even-hex\nprotocol_version=1\nfuture_peer_key=x=y\n\
                 last_handshake_time_sec=12\n\
                 tx_bytes=1\nrx_bytes=2\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\n\
                 errno=0\n\n";
        let dev = parse_get(r, "x", at(1_700_000_000, 0)).unwrap();
        assert_eq!(dev.listen_port, Some(51820));
        let p = &dev.peers[0];
        assert_eq!(p.last_handshake, Some(at(12, 0)), "nsec missing: 0");
        assert_eq!((p.rx_bytes, p.tx_bytes), (2, 1));
        assert_eq!(p.persistent_keepalive, None, "absent: off");
        assert_eq!(p.allowed_ips, vec![ip("0.0.0.0", 0), ip("::", 0)]);
    }

    #[test]
    fn endpoints() {
        let ep = |e: &str| {
            let r = format!(
                "public_key=29989f9f68288e25dfb5d2279d0aab69bfc1b72aecde58d20a75450a5a66fb43\n\
                 endpoint={e}\nerrno=0\n\n"
            );
            parse_get(&r, "wg9", at(1, 0)).map(|d| d.peers[0].endpoint.unwrap())
        };
        assert_eq!(
            ep("1.2.3.4:5").unwrap(),
            SocketAddr::new(Ipv4Addr::new(1, 2, 3, 4).into(), 5)
        );
        assert_eq!(
            ep("[::1]:5").unwrap(),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 5)
        );
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        assert_eq!(
            ep("[fe80::1%3]:51820").unwrap(),
            SocketAddr::V6(SocketAddrV6::new(ll, 51820, 0, 3))
        );
        assert_eq!(
            ep("[fe80::1%eth0]:51820").unwrap(),
            SocketAddr::V6(SocketAddrV6::new(ll, 51820, 0, 0))
        );
        is_malformed(ep("1.2.3.4"));
        is_malformed(ep("example.com:5"));
        is_malformed(ep("[fe80::1%eth0:5"));
    }

    #[test]
    fn malformed_replies() {
        let now = at(1_700_000_000, 0);
        let peer = "public_key=29989f9f68288e25dfb5d2279d0aab69bfc1b72aecde58d20a75450a5a66fb43\n";
        let bad = |body: &str| is_malformed(parse_get(body, "wg9", now));

        assert!(bad("").contains("empty"));
        assert!(bad("listen_port=1\n").contains("no errno"));
        // Cut off in the middle of a large reply.
        assert!(bad(&WG_GO_GET[..WG_GO_GET.len() / 2]).contains("no errno"));
        let without_errno = WG_GO_GET.strip_suffix("errno=0\n\n").unwrap();
        assert!(bad(without_errno).contains("no errno"));
        assert!(bad("garbage\nerrno=0\n\n").contains("without `=`"));
        assert!(bad("listen_port=99999\nerrno=0\n\n").contains("listen_port"));
        assert!(bad("public_key=abcd\nerrno=0\n\n").contains("public_key"));
        assert!(bad("own_public_key=zz\nerrno=0\n\n").contains("own_public_key"));
        bad(&format!("{peer}rx_bytes=-1\nerrno=0\n\n"));
        bad(&format!("{peer}tx_bytes=1e3\nerrno=0\n\n"));
        bad(&format!(
            "{peer}persistent_keepalive_interval=65536\nerrno=0\n\n"
        ));
        bad(&format!("{peer}last_handshake_time_sec=x\nerrno=0\n\n"));
        bad(&format!(
            "{peer}last_handshake_time_nsec=1000000000\nerrno=0\n\n"
        ));
        bad(&format!("{peer}allowed_ip=10.0.0.0/33\nerrno=0\n\n"));
        bad(&format!("{peer}allowed_ip=fd00::/129\nerrno=0\n\n"));
        bad(&format!("{peer}allowed_ip=10.0.0.0\nerrno=0\n\n"));
        assert!(bad("errno=0\n\nlisten_port=1\n").contains("after the errno"));
        bad("errno=zero\n\n");
        // Secrets do not end up in error messages.
        let d = bad("private_key=78bc7e81cec905b3\npublic_key=78bc7e81cec905b3\nerrno=0\n\n");
        assert!(!d.contains("78bc7e81"), "{d}");
    }

    #[test]
    fn errno_in_get_reply() {
        // wireguard-go reports errors negated; a partial body before it is not parsed.
        let r = parse_get(
            "listen_port=5\npublic_key=zz\nerrno=-22\n\n",
            "wg9",
            at(1, 0),
        );
        match r {
            Err(WgError::Refused { iface, what, errno }) => {
                assert_eq!((iface.as_str(), what, errno), ("wg9", "get", 22))
            }
            other => panic!("{other:?}"),
        }
        let r = parse_get("errno=5\n\n", "wg9", at(1, 0));
        assert!(matches!(r, Err(WgError::Refused { errno: 5, .. })), "{r:?}");
        // CRLF is tolerated.
        let dev = parse_get("listen_port=5\r\nerrno=0\r\n\r\n", "wg9", at(1, 0)).unwrap();
        assert_eq!(dev.listen_port, Some(5));
    }

    // ---- requests ----------------------------------------------------------------------------

    const PEER_HEX: &str = "29989f9f68288e25dfb5d2279d0aab69bfc1b72aecde58d20a75450a5a66fb43";

    #[test]
    fn kick_request_pk_on() {
        let k = key(PEER_HEX);
        assert_eq!(
            kick_request(&k, Some(150)),
            format!(
                "set=1\n\
                 public_key={PEER_HEX}\nupdate_only=true\npersistent_keepalive_interval=0\n\
                 public_key={PEER_HEX}\nupdate_only=true\npersistent_keepalive_interval=150\n\
                 \n"
            )
        );
    }

    #[test]
    fn kick_request_pk_off() {
        let k = key(PEER_HEX);
        let off = format!(
            "set=1\n\
             public_key={PEER_HEX}\nupdate_only=true\npersistent_keepalive_interval=1\n\
             public_key={PEER_HEX}\nupdate_only=true\npersistent_keepalive_interval=0\n\
             \n"
        );
        assert_eq!(kick_request(&k, None), off);
        assert_eq!(kick_request(&k, Some(0)), off, "0 is off");
    }

    #[test]
    fn set_keepalive_requests() {
        let k = key(PEER_HEX);
        assert_eq!(
            set_keepalive_request(&k, Some(25)),
            format!(
                "set=1\npublic_key={PEER_HEX}\nupdate_only=true\n\
                 persistent_keepalive_interval=25\n\n"
            )
        );
        assert_eq!(
            set_keepalive_request(&k, None),
            format!(
                "set=1\npublic_key={PEER_HEX}\nupdate_only=true\n\
                 persistent_keepalive_interval=0\n\n"
            )
        );
    }

    #[test]
    fn set_replies() {
        parse_set_reply("errno=0\n\n", "wg9", "kick").unwrap();
        parse_set_reply("errno=0\n", "wg9", "kick").unwrap();
        match parse_set_reply("errno=-22\n\n", "wg9", "kick") {
            Err(WgError::Refused { iface, what, errno }) => {
                assert_eq!((iface.as_str(), what, errno), ("wg9", "kick", 22))
            }
            other => panic!("{other:?}"),
        }
        // boringtun's positive errno.
        assert!(matches!(
            parse_set_reply("errno=22\n\n", "wg9", "kick"),
            Err(WgError::Refused { errno: 22, .. })
        ));
        for bad in [
            "",
            "\n",
            "listen_port=1\nerrno=0\n\n",
            "errno=0\n\nerrno=0\n\n",
        ] {
            assert!(
                matches!(
                    parse_set_reply(bad, "wg9", "kick"),
                    Err(WgError::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reply_completion() {
        assert!(reply_complete(b"errno=0\n\n"));
        assert!(reply_complete(b"a=1\nerrno=-22\n\n"));
        assert!(!reply_complete(b"errno=0\n"));
        assert!(!reply_complete(b"a=1\n\n"));
        assert!(!reply_complete(b"a=1\nerrno=0"));
        assert!(!reply_complete(b""));
        assert_eq!(
            socket_path("wg0"),
            PathBuf::from("/var/run/wireguard/wg0.sock")
        );
    }

    // ---- the client against fake servers ----------------------------------------------------

    /// A fresh directory under the temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "wgkeep-uapi-{}-{}",
                std::process::id(),
                unique()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        fn sock(&self) -> PathBuf {
            self.0.join("wg9.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Serves one connection: reads the request up to its blank line, answers `reply`, returns
    /// the request.
    fn serve_once(listener: UnixListener, reply: Vec<u8>) -> JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 4096];
            while !req.ends_with(b"\n\n") {
                let n = s.read(&mut b).unwrap();
                assert!(n > 0, "client closed before the blank line");
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(&reply).unwrap();
            req
        })
    }

    fn client(dir: &TempDir, timeout_ms: u64) -> UapiClient {
        UapiClient::with_path("wg9", dir.sock(), Duration::from_millis(timeout_ms))
    }

    #[test]
    fn get_over_a_socket() {
        let dir = TempDir::new();
        let server = serve_once(
            UnixListener::bind(dir.sock()).unwrap(),
            WG_GO_GET.as_bytes().to_vec(),
        );
        let c = client(&dir, 2000);
        assert!(c.exists());
        let dev = c.get().unwrap();
        assert_eq!(server.join().unwrap(), b"get=1\n\n");
        assert_eq!(dev, parse_get(WG_GO_GET, "wg9", at(0, 0)).unwrap());
    }

    #[test]
    fn kick_over_a_socket_and_refusal() {
        let dir = TempDir::new();
        let k = key(PEER_HEX);
        let server = serve_once(
            UnixListener::bind(dir.sock()).unwrap(),
            b"errno=-22\n\n".to_vec(),
        );
        let r = client(&dir, 2000).kick(&k, Some(25), Implementation::WireguardGo);
        assert!(
            matches!(
                r,
                Err(WgError::Refused {
                    what: "kick",
                    errno: 22,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(
            server.join().unwrap(),
            kick_request(&k, Some(25)).as_bytes()
        );

        let server = serve_once(
            UnixListener::bind({
                std::fs::remove_file(dir.sock()).unwrap();
                dir.sock()
            })
            .unwrap(),
            b"errno=0\n\n".to_vec(),
        );
        client(&dir, 2000)
            .set_keepalive(&k, None, Implementation::WireguardGo)
            .unwrap();
        assert_eq!(
            server.join().unwrap(),
            set_keepalive_request(&k, None).as_bytes()
        );
    }

    #[test]
    fn boringtun_is_never_written_to() {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.sock()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let c = client(&dir, 2000);
        let k = key(PEER_HEX);
        for r in [
            c.kick(&k, Some(25), Implementation::Boringtun),
            c.kick(&k, None, Implementation::Boringtun),
            c.set_keepalive(&k, Some(25), Implementation::Boringtun),
        ] {
            match r {
                Err(WgError::Unsupported(msg)) => {
                    assert!(msg.contains("boringtun panics"), "{msg}");
                    assert!(msg.contains("--follow-up-method tunnel-packet"), "{msg}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            c.kick(&k, None, Implementation::Kernel),
            Err(WgError::Unsupported(_))
        ));
        let e = listener.accept().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "nobody connected");
    }

    #[test]
    fn missing_or_dead_socket_is_not_found() {
        let dir = TempDir::new();
        let c = client(&dir, 2000);
        assert!(!c.exists());
        assert!(matches!(c.get(), Err(WgError::NotFound(i)) if i == "wg9"));
        // A socket file nobody listens on (a crashed daemon): ECONNREFUSED.
        drop(UnixListener::bind(dir.sock()).unwrap());
        assert!(c.exists());
        assert!(matches!(c.get(), Err(WgError::NotFound(_))));
        // Not a socket at all.
        assert!(!UapiClient::new("wgkeep-surely-missing", Duration::from_secs(1)).exists());
    }

    #[test]
    fn silent_server_times_out() {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.sock()).unwrap();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let server = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            // Hold the connection open without answering (a hung or panicked daemon).
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
            drop(s);
        });
        let c = client(&dir, 200);
        let t0 = Instant::now();
        let r = c.get();
        let took = t0.elapsed();
        done_tx.send(()).unwrap();
        server.join().unwrap();
        assert!(
            matches!(&r, Err(WgError::Timeout(i, d)) if i == "wg9" && *d == Duration::from_millis(200)),
            "{r:?}"
        );
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_millis(700),
            "{took:?}"
        );
    }

    #[test]
    fn dripping_server_times_out_on_the_overall_deadline() {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.sock()).unwrap();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // One byte every 50 ms: each read succeeds, the whole never ends.
            while done_rx.recv_timeout(Duration::from_millis(50)).is_err() {
                if s.write_all(b"x").is_err() {
                    break;
                }
            }
        });
        let t0 = Instant::now();
        let r = client(&dir, 200).get();
        let took = t0.elapsed();
        done_tx.send(()).unwrap();
        server.join().unwrap();
        assert!(matches!(r, Err(WgError::Timeout(..))), "{r:?}");
        assert!(took < Duration::from_millis(700), "{took:?}");
    }

    #[test]
    fn full_backlog_times_out_on_connect() {
        let dir = TempDir::new();
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        listener.bind(&SockAddr::unix(dir.sock()).unwrap()).unwrap();
        listener.listen(0).unwrap();
        // Fill the accept queue (never accepted).
        let mut queued = Vec::new();
        for _ in 0..16 {
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            match s.connect(&SockAddr::unix(dir.sock()).unwrap()) {
                Ok(()) => queued.push(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(!queued.is_empty() && queued.len() < 16, "{}", queued.len());
        let t0 = Instant::now();
        let r = client(&dir, 200).get();
        let took = t0.elapsed();
        assert!(matches!(r, Err(WgError::Timeout(..))), "{r:?}");
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_millis(700),
            "{took:?}"
        );
    }

    /// A reply for `n` peers in wireguard-go's format.
    fn synthetic_reply(n: u32) -> String {
        let mut r = String::from("private_key=0000000000000000000000000000000000000000000000000000000000000001\nlisten_port=51820\n");
        for i in 0..n {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            let [_, _, hi, lo] = i.to_be_bytes();
            r.push_str(&format!(
                "public_key={}\n\
                 preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
                 protocol_version=1\nendpoint=[2001:db8::{i:x}]:51820\n\
                 last_handshake_time_sec={}\nlast_handshake_time_nsec=123456789\n\
                 tx_bytes={}\nrx_bytes={}\npersistent_keepalive_interval=25\n\
                 allowed_ip=10.{hi}.{lo}.0/24\nallowed_ip=fd00:{i:x}::/64\n",
                Key(k).to_hex(),
                1_700_000_000 + u64::from(i),
                u64::from(i) * 1000,
                u64::from(i) * 2000,
            ));
        }
        r.push_str("errno=0\n\n");
        r
    }

    /// `reply` in reads of `sizes` (cycled) through a 16-byte line buffer, as
    /// [`UapiClient::get_into`] reads it (see [`parse_get_in_reads`]).
    fn parse_in_reads(
        reply: &[u8],
        sizes: &[usize],
        info: &mut DeviceInfo,
    ) -> (Result<(), WgError>, usize) {
        parse_get_in_reads(reply, sizes, 16, "wg9", at(1_795_559_224, 0), info)
    }

    #[test]
    fn replies_parse_the_same_in_any_reads() {
        let peer = "public_key=29989f9f68288e25dfb5d2279d0aab69bfc1b72aecde58d20a75450a5a66fb43\n";
        let replies = [
            WG_GO_GET.to_owned(),
            BORINGTUN_GET.to_owned(),
            WG_GO_GET.replace('\n', "\r\n"),
            synthetic_reply(40),
            "listen_port=5\npublic_key=zz\nerrno=-22\n\n".to_owned(),
            format!("{peer}tx_bytes=1e3\nerrno=0\n\n"),
            format!("{peer}allowed_ip=10.0.0.0/33\nendpoint=01.2.3.4:5\nerrno=0\n\n"),
            format!("{peer}endpoint=1.2.3.4:0005\nallowed_ip=10.0.0.0/032\nerrno=0\n\n"),
            "errno=0\n\nlisten_port=1\n".to_owned(),
            "a=1\nerrno=0\r\r\n\r\nerrno=0".to_owned(),
            WG_GO_GET[..WG_GO_GET.len() / 2].to_owned(),
        ];
        let mut reused = DeviceInfo::empty();
        for reply in &replies {
            for sizes in [&[1][..], &[2], &[3], &[7], &[64], &[5, 17, 1], &[4096]] {
                let mut fresh = DeviceInfo::empty();
                let (r, read) = parse_in_reads(reply.as_bytes(), sizes, &mut fresh);
                let whole = parse_get(&reply[..read], "wg9", at(1_795_559_224, 0));
                let got = r.map(|()| fresh);
                assert_eq!(
                    format!("{got:?}"),
                    format!("{whole:?}"),
                    "{reply:?} {sizes:?}"
                );
                // Into the entries of whatever was parsed before.
                let (r, _) = parse_in_reads(reply.as_bytes(), sizes, &mut reused);
                if let Ok(whole) = whole {
                    r.unwrap();
                    assert_eq!(reused, whole, "{reply:?} {sizes:?}");
                }
            }
        }
        // Not UTF-8, however it is read.
        let (r, _) = parse_in_reads(b"listen_port=5\xff\nerrno=0\n\n", &[3], &mut reused);
        assert!(is_malformed(r).contains("UTF-8"));
        let r = parse_get_into(b"a=\xc3\nerrno=-22\n\n", "wg9", at(1, 0), &mut reused);
        assert!(is_malformed(r).contains("UTF-8"));
    }

    #[test]
    fn ten_thousand_peers() {
        let reply = synthetic_reply(10_000);
        assert!(reply.len() > 3_500_000, "{}", reply.len());
        let dir = TempDir::new();
        let server = serve_once(
            UnixListener::bind(dir.sock()).unwrap(),
            reply.clone().into_bytes(),
        );
        let t0 = Instant::now();
        let dev = client(&dir, 10_000).get().unwrap();
        let took = t0.elapsed();
        server.join().unwrap();
        assert_eq!(dev.peers.len(), 10_000);
        let p = &dev.peers[9_999];
        assert_eq!(p.last_handshake, Some(at(1_700_009_999, 123_456_789)));
        assert_eq!(p.tx_bytes, 9_999_000);
        assert_eq!(p.allowed_ips[0], ip("10.39.15.0", 24));
        eprintln!("10 000 peers: {} bytes, get took {took:?}", reply.len());
    }

    #[test]
    fn oversized_reply_is_cut_off() {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.sock()).unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let line = [b'x'; 1 << 20];
            // Stops when the client hangs up.
            for _ in 0..(MAX_REPLY_BYTES >> 20) + 8 {
                if s.write_all(&line).is_err() {
                    break;
                }
            }
        });
        let r = client(&dir, 10_000).get();
        server.join().unwrap();
        match r {
            Err(WgError::Malformed { detail, .. }) => {
                assert!(detail.contains("larger"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
    }

    // ---- live wireguard-go (root) -----------------------------------------------------------

    /// True when the live tests can run (root, `ip`, `wg` and `wireguard-go` present). Otherwise a
    /// loud skip notice, or, under `CI=true`, a panic: a skipped live test is a failure there.
    fn require_live(test: &str) -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        let tools = ["ip", "wg", "wireguard-go", "ping"].into_iter().all(|t| {
            Command::new(t)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        });
        let why = match (euid == Some(0), tools) {
            (true, true) => return true,
            (false, _) => "needs root (network namespaces, wireguard-go)",
            (true, false) => "needs ip, wg, ping and wireguard-go installed",
        };
        let msg = format!("SKIPPED: {test} {why}");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg} (CI=true: a skip is a failure)");
        }
        eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
        false
    }

    fn run(args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn wg_keypair() -> (Key, Key) {
        let private = run(&["wg", "genkey"]);
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(private.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let public = String::from_utf8(out.stdout).unwrap();
        (
            Key::from_base64(private.trim()).unwrap(),
            Key::from_base64(public.trim()).unwrap(),
        )
    }

    /// Two wireguard-go instances, each in its own fresh namespace, joined by a veth
    /// (192.0.2.1 ─ 192.0.2.2), tunnel 10.99.0.1 ─ 10.99.0.2, with a completed handshake. Side 0
    /// has PersistentKeepalive `pk`. Dropping it stops both daemons and deletes the namespaces.
    struct WgGoPair {
        ns: Vec<String>,
        ifaces: [String; 2],
        daemons: Vec<Child>,
        public: [Key; 2],
    }

    impl WgGoPair {
        fn new(pk: Option<u16>) -> WgGoPair {
            let (pid, n) = (std::process::id(), unique());
            let ifaces = [format!("wgu{pid}x{n}a"), format!("wgu{pid}x{n}b")];
            let (priv_a, pub_a) = wg_keypair();
            let (priv_b, pub_b) = wg_keypair();
            let mut lab = WgGoPair {
                ns: Vec::new(),
                ifaces: ifaces.clone(),
                daemons: Vec::new(),
                public: [pub_a, pub_b],
            };
            for side in ["a", "b"] {
                let ns = format!("wgkuapi{pid}x{n}{side}");
                run(&["ip", "netns", "add", &ns]);
                lab.ns.push(ns);
            }
            let (ns_a, ns_b) = (lab.ns[0].clone(), lab.ns[1].clone());
            run(&[
                "ip", "link", "add", "veth0", "netns", &ns_a, "type", "veth", "peer", "name",
                "veth0", "netns", &ns_b,
            ]);
            for (ns, addr, iface) in [
                (&ns_a, "192.0.2.1/24", &ifaces[0]),
                (&ns_b, "192.0.2.2/24", &ifaces[1]),
            ] {
                run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
                run(&["ip", "-n", ns, "addr", "add", addr, "dev", "veth0"]);
                run(&["ip", "-n", ns, "link", "set", "veth0", "up"]);
                let child = Command::new("ip")
                    .args(["netns", "exec", ns, "wireguard-go", "-f", iface])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                lab.daemons.push(child);
            }
            let t0 = Instant::now();
            while !lab.client(0).exists() || !lab.client(1).exists() {
                assert!(t0.elapsed() < Duration::from_secs(5), "no UAPI sockets");
                thread::sleep(Duration::from_millis(20));
            }
            // Configure both over UAPI (the same transport as the code under test).
            for (side, own, peer, peer_addr, peer_tun, keepalive) in [
                (0, priv_a, pub_b, "192.0.2.2", "10.99.0.2", pk.unwrap_or(0)),
                (1, priv_b, pub_a, "192.0.2.1", "10.99.0.1", 0),
            ] {
                let req = format!(
                    "set=1\nprivate_key={}\nlisten_port=51820\npublic_key={}\n\
                     endpoint={peer_addr}:51820\nallowed_ip={peer_tun}/32\n\
                     persistent_keepalive_interval={keepalive}\n\n",
                    own.to_hex(),
                    peer.to_hex()
                );
                let c = lab.client(side);
                let reply = c.transact(req.as_bytes(), "configure").unwrap();
                parse_set_reply(&reply, &lab.ifaces[side], "configure").unwrap();
            }
            for (ns, iface, addr) in [
                (&ns_a, &ifaces[0], "10.99.0.1/24"),
                (&ns_b, &ifaces[1], "10.99.0.2/24"),
            ] {
                run(&["ip", "-n", ns, "addr", "add", addr, "dev", iface]);
                run(&["ip", "-n", ns, "link", "set", iface, "up"]);
            }
            run(&[
                "ip",
                "netns",
                "exec",
                &ns_a,
                "ping",
                "-c",
                "1",
                "-W",
                "8",
                "10.99.0.2",
            ]);
            lab
        }

        fn client(&self, side: usize) -> UapiClient {
            UapiClient::new(&self.ifaces[side], Duration::from_secs(2))
        }

        /// Side `side`'s view of the other side.
        fn peer(&self, side: usize) -> (Implementation, PeerInfo) {
            let dev = self.client(side).get().unwrap();
            let other = self.public[1 - side];
            let p = dev
                .peers
                .into_iter()
                .find(|p| p.public_key == other)
                .expect("peer present");
            (dev.implementation, p)
        }

        /// Waits until side 0's counters stop moving (the handshake and ping have settled).
        fn settle(&self) -> PeerInfo {
            let mut last = self.peer(0).1;
            loop {
                thread::sleep(Duration::from_millis(200));
                let now = self.peer(0).1;
                if now.tx_bytes == last.tx_bytes && now.rx_bytes == last.rx_bytes {
                    return now;
                }
                last = now;
            }
        }
    }

    impl Drop for WgGoPair {
        fn drop(&mut self) {
            for child in &mut self.daemons {
                // SIGTERM first, so wireguard-go removes its socket and TUN.
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(2) {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            for iface in &self.ifaces {
                let _ = std::fs::remove_file(socket_path(iface));
            }
            for ns in &self.ns {
                let _ = Command::new("ip")
                    .args(["netns", "del", ns])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    fn live_kick(pk: Option<u16>) {
        let lab = WgGoPair::new(pk);
        let before = lab.settle();
        let (implementation, _) = lab.peer(0);
        assert_eq!(implementation, Implementation::WireguardGo);
        assert!(before.last_handshake.is_some(), "handshake done");
        assert_eq!(before.persistent_keepalive, pk);
        let b_before = lab.peer(1).1;

        let t0 = Instant::now();
        lab.client(0)
            .kick(&lab.public[1], before.persistent_keepalive, implementation)
            .unwrap();
        let set_took = t0.elapsed();
        let seen = loop {
            let now = lab.peer(0).1;
            if now.tx_bytes != before.tx_bytes {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "no packet within 1 s of the kick"
            );
            thread::sleep(Duration::from_millis(2));
        };
        // Exactly one keepalive, and nothing more once the transient setting is gone.
        thread::sleep(Duration::from_millis(1500));
        let after = lab.peer(0).1;
        assert_eq!(after.tx_bytes - before.tx_bytes, 32, "one 32 B keepalive");
        assert_eq!(after.persistent_keepalive, pk, "setting unchanged");
        assert_eq!(
            after.last_handshake, before.last_handshake,
            "no new handshake"
        );
        let b_after = lab.peer(1).1;
        assert_eq!(
            b_after.rx_bytes - b_before.rx_bytes,
            32,
            "the other end got it"
        );
        eprintln!(
            "kick with PK {pk:?}: set=1 answered in {set_took:?}, tx +32 B seen after {seen:?}"
        );
    }

    #[test]
    fn live_wireguard_go_kick_pk_on() {
        if require_live("wg::uapi::tests::live_wireguard_go_kick_pk_on") {
            live_kick(Some(150));
        }
    }

    #[test]
    fn live_wireguard_go_kick_pk_off() {
        if require_live("wg::uapi::tests::live_wireguard_go_kick_pk_off") {
            live_kick(None);
        }
    }

    #[test]
    fn live_wireguard_go_set_keepalive_and_unknown_peer() {
        if !require_live("wg::uapi::tests::live_wireguard_go_set_keepalive_and_unknown_peer") {
            return;
        }
        let lab = WgGoPair::new(None);
        let c = lab.client(0);
        c.set_keepalive(&lab.public[1], Some(25), Implementation::WireguardGo)
            .unwrap();
        assert_eq!(lab.peer(0).1.persistent_keepalive, Some(25));
        c.set_keepalive(&lab.public[1], None, Implementation::WireguardGo)
            .unwrap();
        assert_eq!(lab.peer(0).1.persistent_keepalive, None);
        // update_only: kicking a peer the device does not have creates nothing.
        let (_, stranger) = wg_keypair();
        c.kick(&stranger, None, Implementation::WireguardGo)
            .unwrap();
        c.kick(&stranger, Some(25), Implementation::WireguardGo)
            .unwrap();
        let dev = c.get().unwrap();
        assert_eq!(dev.peers.len(), 1);
        assert_eq!(dev.listen_port, Some(51820));
        // A request wireguard-go refuses (negative errno on the wire).
        let reply = c.transact(b"set=1\nbogus_key=1\n\n", "bogus").unwrap();
        assert!(matches!(
            parse_set_reply(&reply, c.iface(), "bogus"),
            Err(WgError::Refused { errno: 22, .. })
        ));
    }
}
