//! Parsing received netlink datagrams. Pure: no I/O, never panics on any input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    align4, allowed_ip, errno_error, malformed, parse_sockaddr, DeviceInfo, Implementation, Key,
    PeerInfo, WgError, CTRL_ATTR_FAMILY_ID, ENOENT, GENL_HDRLEN, GENL_ID_CTRL, NLA_F_NESTED,
    NLA_HDRLEN, NLA_TYPE_MASK, NLMSGERR_ATTR_MSG, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN,
    NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP_INTR,
    WGALLOWEDIP_A_CIDR_MASK, WGALLOWEDIP_A_FAMILY, WGALLOWEDIP_A_IPADDR, WGDEVICE_A_LISTEN_PORT,
    WGDEVICE_A_PEERS, WGDEVICE_A_PUBLIC_KEY, WGPEER_A_ALLOWEDIPS, WGPEER_A_ENDPOINT,
    WGPEER_A_LAST_HANDSHAKE_TIME, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, WGPEER_A_PUBLIC_KEY,
    WGPEER_A_RX_BYTES, WGPEER_A_TX_BYTES, WG_GENL_NAME,
};
use crate::wg::AllowedIp;

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy)]
pub(super) struct NlMsg<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the 16-byte header, up to `nlmsg_len`.
    pub payload: &'a [u8],
}

/// The messages of `datagram` that answer request `seq` (others, e.g. late replies to an earlier
/// request, are skipped); undecodable bytes are [`WgError::Malformed`].
pub(super) fn replies_to<'a>(
    iface: &str,
    seq: u32,
    datagram: &'a [u8],
) -> Result<Vec<NlMsg<'a>>, WgError> {
    let mut msgs = split_messages(datagram).map_err(|d| malformed(iface, d))?;
    msgs.retain(|m| {
        let ours = m.seq == seq;
        if !ours {
            tracing::debug!(
                seq = m.seq,
                expected = seq,
                "skipping unrelated netlink message"
            );
        }
        ours
    });
    Ok(msgs)
}

/// Splits a datagram into its netlink messages (`NLMSG_OK` / `NLMSG_NEXT`).
pub(super) fn split_messages(datagram: &[u8]) -> Result<Vec<NlMsg<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(format!(
                "{} trailing bytes, shorter than a netlink header",
                rest.len()
            ));
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(format!(
                "netlink message of length {len} with {} bytes left",
                rest.len()
            ));
        }
        out.push(NlMsg {
            msg_type: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]),
            payload: &rest[NLMSG_HDRLEN..len],
        });
        rest = &rest[align4(len).min(rest.len())..];
    }
    Ok(out)
}

/// One attribute.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attr<'a> {
    /// Type with `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` masked off.
    pub attr_type: u16,
    /// Whether `NLA_F_NESTED` was set (informational; not required).
    #[allow(dead_code)]
    pub nested: bool,
    pub payload: &'a [u8],
}

/// Iterates over a run of attributes (`nla_for_each_attr`); yields one error and stops on a
/// truncated or impossible attribute.
#[derive(Debug, Clone)]
pub(super) struct Attrs<'a> {
    rest: &'a [u8],
}

pub(super) fn attrs(data: &[u8]) -> Attrs<'_> {
    Attrs { rest: data }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.rest;
        if r.len() < NLA_HDRLEN {
            self.rest = &[];
            return Some(Err(format!("{} trailing bytes after attributes", r.len())));
        }
        let len = usize::from(u16::from_ne_bytes([r[0], r[1]]));
        let raw_type = u16::from_ne_bytes([r[2], r[3]]);
        if len < NLA_HDRLEN || len > r.len() {
            self.rest = &[];
            return Some(Err(format!(
                "attribute type {} of length {len} with {} bytes left",
                raw_type & NLA_TYPE_MASK,
                r.len()
            )));
        }
        self.rest = &r[align4(len).min(r.len())..];
        Some(Ok(Attr {
            attr_type: raw_type & NLA_TYPE_MASK,
            nested: raw_type & NLA_F_NESTED != 0,
            payload: &r[NLA_HDRLEN..len],
        }))
    }
}

fn exact<const N: usize>(a: &Attr<'_>, what: &str) -> Result<[u8; N], String> {
    <[u8; N]>::try_from(a.payload)
        .map_err(|_| format!("{what}: {} bytes instead of {N}", a.payload.len()))
}

fn get_u16(a: &Attr<'_>, what: &str) -> Result<u16, String> {
    exact::<2>(a, what).map(u16::from_ne_bytes)
}

fn get_u64(a: &Attr<'_>, what: &str) -> Result<u64, String> {
    exact::<8>(a, what).map(u64::from_ne_bytes)
}

fn get_key(a: &Attr<'_>, what: &str) -> Result<Key, String> {
    exact::<32>(a, what).map(Key)
}

/// The `int error` of an `NLMSG_ERROR` / `NLMSG_DONE` payload.
fn error_code(m: &NlMsg<'_>) -> Result<i32, String> {
    match m.payload.get(0..4) {
        Some(b) => Ok(i32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(format!(
            "message type {} with a {}-byte payload",
            m.msg_type,
            m.payload.len()
        )),
    }
}

/// The extended-ACK error string (`NLMSGERR_ATTR_MSG`) of an `NLMSG_ERROR`, if any.
pub(super) fn ext_ack_message(m: &NlMsg<'_>) -> Option<String> {
    if m.flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // struct nlmsgerr: int error; struct nlmsghdr msg (+ the request's payload unless capped).
    let inner = m.payload.get(4..4 + NLMSG_HDRLEN)?;
    let inner_len = if m.flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes([inner[0], inner[1], inner[2], inner[3]]) as usize
    };
    // A length beyond the payload has no TLVs after it (and must not overflow on 32-bit).
    if inner_len > m.payload.len() {
        return None;
    }
    let tlvs = m.payload.get(4 + align4(inner_len)..)?;
    for a in attrs(tlvs) {
        let a = a.ok()?;
        if a.attr_type == NLMSGERR_ATTR_MSG {
            let s = a.payload.split(|&c| c == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(s).into_owned());
        }
    }
    None
}

/// Checks an `NLMSG_ERROR`: `Ok(())` for an acknowledgement (errno 0), else the error.
fn check_error(iface: &str, what: &'static str, m: &NlMsg<'_>) -> Result<(), WgError> {
    let code = error_code(m).map_err(|d| malformed(iface, d))?;
    if code == 0 {
        return Ok(());
    }
    let errno = code.checked_neg().unwrap_or(i32::MAX);
    let message = ext_ack_message(m);
    tracing::debug!(
        iface,
        what,
        errno,
        message = message.as_deref(),
        "netlink error"
    );
    Err(errno_error(iface, what, errno))
}

/// Something that consumes the datagrams answering one request.
pub(super) trait Collect {
    /// Feeds one datagram; `Ok(true)` once the answer is complete.
    fn feed(&mut self, datagram: &[u8]) -> Result<bool, WgError>;
}

/// Waits for the acknowledgement (`NLMSG_ERROR` with errno 0) of request `seq`.
#[derive(Debug)]
pub(super) struct AckWait {
    pub iface: String,
    pub what: &'static str,
    pub seq: u32,
}

impl Collect for AckWait {
    fn feed(&mut self, datagram: &[u8]) -> Result<bool, WgError> {
        let msgs = replies_to(&self.iface, self.seq, datagram)?;
        for m in msgs {
            match m.msg_type {
                NLMSG_ERROR => {
                    check_error(&self.iface, self.what, &m)?;
                    return Ok(true);
                }
                NLMSG_OVERRUN => return Err(malformed(&self.iface, "NLMSG_OVERRUN")),
                _ => {}
            }
        }
        Ok(false)
    }
}

/// Collects the controller's answer to `CTRL_CMD_GETFAMILY`: the family id, then the ACK.
#[derive(Debug)]
pub(super) struct FamilyLookup {
    pub iface: String,
    pub seq: u32,
    pub id: Option<u16>,
}

/// The error for a missing "wireguard" generic netlink family.
pub(super) fn family_missing(iface: &str) -> WgError {
    WgError::Unsupported(format!(
        "kernel WireGuard is not available for {iface}: generic netlink family \
         \"{WG_GENL_NAME}\" not found (the wireguard kernel module is not loaded and could not \
         be loaded)"
    ))
}

impl Collect for FamilyLookup {
    fn feed(&mut self, datagram: &[u8]) -> Result<bool, WgError> {
        let iface = self.iface.as_str();
        let msgs = replies_to(iface, self.seq, datagram)?;
        for m in msgs {
            match m.msg_type {
                GENL_ID_CTRL => {
                    let attrs_data = m
                        .payload
                        .get(GENL_HDRLEN..)
                        .ok_or_else(|| malformed(iface, "controller reply without genl header"))?;
                    for a in attrs(attrs_data) {
                        let a = a.map_err(|d| malformed(iface, d))?;
                        if a.attr_type == CTRL_ATTR_FAMILY_ID {
                            self.id = Some(
                                get_u16(&a, "CTRL_ATTR_FAMILY_ID")
                                    .map_err(|d| malformed(iface, d))?,
                            );
                        }
                    }
                }
                NLMSG_ERROR => {
                    let code = error_code(&m).map_err(|d| malformed(iface, d))?;
                    if code == -ENOENT {
                        return Err(family_missing(iface));
                    }
                    check_error(iface, "resolve the wireguard generic netlink family", &m)?;
                    return match self.id {
                        Some(_) => Ok(true),
                        None => Err(malformed(
                            iface,
                            "controller acknowledged without a family id",
                        )),
                    };
                }
                NLMSG_OVERRUN => return Err(malformed(iface, "NLMSG_OVERRUN")),
                _ => {}
            }
        }
        Ok(false)
    }
}

/// One peer entry of one dump message, before merging.
#[derive(Debug, Default)]
struct PeerDraft {
    public_key: Option<Key>,
    endpoint: Option<std::net::SocketAddr>,
    last_handshake: Option<Option<SystemTime>>,
    rx_bytes: Option<u64>,
    tx_bytes: Option<u64>,
    persistent_keepalive: Option<u16>,
    allowed_ips: Vec<AllowedIp>,
}

fn parse_allowed_ip(data: &[u8]) -> Result<AllowedIp, String> {
    let (mut family, mut addr, mut cidr) = (None, None, None);
    for a in attrs(data) {
        let a = a?;
        match a.attr_type {
            WGALLOWEDIP_A_FAMILY => family = Some(get_u16(&a, "WGALLOWEDIP_A_FAMILY")?),
            WGALLOWEDIP_A_IPADDR => addr = Some(a.payload),
            WGALLOWEDIP_A_CIDR_MASK => cidr = Some(exact::<1>(&a, "WGALLOWEDIP_A_CIDR_MASK")?[0]),
            _ => {} // e.g. WGALLOWEDIP_A_FLAGS of newer kernels
        }
    }
    match (family, addr, cidr) {
        (Some(f), Some(a), Some(c)) => allowed_ip(f, a, c),
        _ => Err("allowed IP without family, address or prefix length".to_owned()),
    }
}

/// `struct __kernel_timespec`: two native-endian i64; 0/0 means never.
fn parse_timespec(b: [u8; 16]) -> Result<Option<SystemTime>, String> {
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[..8]);
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[8..]);
    let (sec, nsec) = (i64::from_ne_bytes(s), i64::from_ne_bytes(n));
    if sec == 0 && nsec == 0 {
        return Ok(None);
    }
    let bad = || format!("last handshake time {sec}.{nsec:09}");
    let sec = u64::try_from(sec).map_err(|_| bad())?;
    let nsec = u32::try_from(nsec)
        .ok()
        .filter(|&n| n < 1_000_000_000)
        .ok_or_else(bad)?;
    UNIX_EPOCH
        .checked_add(Duration::new(sec, nsec))
        .map(Some)
        .ok_or_else(bad)
}

fn parse_peer(data: &[u8]) -> Result<PeerDraft, String> {
    let mut p = PeerDraft::default();
    for a in attrs(data) {
        let a = a?;
        match a.attr_type {
            WGPEER_A_PUBLIC_KEY => p.public_key = Some(get_key(&a, "WGPEER_A_PUBLIC_KEY")?),
            WGPEER_A_ENDPOINT => p.endpoint = parse_sockaddr(a.payload)?,
            WGPEER_A_LAST_HANDSHAKE_TIME => {
                p.last_handshake = Some(parse_timespec(exact::<16>(
                    &a,
                    "WGPEER_A_LAST_HANDSHAKE_TIME",
                )?)?)
            }
            WGPEER_A_RX_BYTES => p.rx_bytes = Some(get_u64(&a, "WGPEER_A_RX_BYTES")?),
            WGPEER_A_TX_BYTES => p.tx_bytes = Some(get_u64(&a, "WGPEER_A_TX_BYTES")?),
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL => {
                p.persistent_keepalive =
                    Some(get_u16(&a, "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")?)
            }
            WGPEER_A_ALLOWEDIPS => {
                for ip in attrs(a.payload) {
                    p.allowed_ips.push(parse_allowed_ip(ip?.payload)?);
                }
            }
            // Preshared key (never kept), protocol version, 64-bit alignment padding
            // (type 0, from nla_put_u64_64bit on some architectures), future attributes.
            _ => {}
        }
    }
    if p.public_key.is_none() {
        return Err("peer without WGPEER_A_PUBLIC_KEY".to_owned());
    }
    Ok(p)
}

/// Incremental parser of a `WG_CMD_GET_DEVICE` dump: feed it every received datagram (in
/// order) until [`DeviceDump::feed`] returns `Ok(true)`, then call [`DeviceDump::finish`].
///
/// Messages with another sequence number are skipped. Device attributes come in the first
/// message; peers may be spread over many messages, and one peer whose allowed IPs did not fit
/// continues in the next message (with only its public key and more allowed IPs): adjacent
/// entries with the same public key are merged. Private and preshared keys are never copied.
#[derive(Debug)]
pub struct DeviceDump {
    iface: String,
    family: u16,
    seq: u32,
    public_key: Option<Key>,
    listen_port: Option<u16>,
    peers: Vec<PeerInfo>,
    done: bool,
    interrupted: bool,
}

impl DeviceDump {
    /// A parser for the answer to request `seq` of family `family` about `iface`.
    pub fn new(iface: &str, family: u16, seq: u32) -> DeviceDump {
        DeviceDump {
            iface: iface.to_owned(),
            family,
            seq,
            public_key: None,
            listen_port: None,
            peers: Vec::new(),
            done: false,
            interrupted: false,
        }
    }

    /// Feeds one received datagram. `Ok(true)` once `NLMSG_DONE` has been seen (anything after
    /// it is ignored). `NLMSG_ERROR` with `ENODEV` (or a `NLMSG_DONE` carrying it) is
    /// [`WgError::NotFound`], other errors [`WgError::Refused`], undecodable bytes
    /// [`WgError::Malformed`].
    pub fn feed(&mut self, datagram: &[u8]) -> Result<bool, WgError> {
        if self.done {
            return Ok(true);
        }
        let msgs = replies_to(&self.iface, self.seq, datagram)?;
        for m in msgs {
            if m.flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match m.msg_type {
                NLMSG_NOOP => {}
                // A successful dump is not acknowledged; an errno 0 here is harmless.
                NLMSG_ERROR => check_error(&self.iface, "get device", &m)?,
                NLMSG_DONE => {
                    // The int is absent in some very old kernels' DONE messages: then 0.
                    let code = error_code(&m).unwrap_or(0);
                    if code < 0 {
                        let errno = code.checked_neg().unwrap_or(i32::MAX);
                        return Err(errno_error(&self.iface, "get device", errno));
                    }
                    self.done = true;
                    return Ok(true);
                }
                NLMSG_OVERRUN => return Err(malformed(&self.iface, "NLMSG_OVERRUN")),
                t if t == self.family => self
                    .device_message(m.payload)
                    .map_err(|d| malformed(&self.iface, d))?,
                t => tracing::debug!(msg_type = t, "skipping netlink message of another type"),
            }
        }
        Ok(false)
    }

    fn device_message(&mut self, payload: &[u8]) -> Result<(), String> {
        let data = payload
            .get(GENL_HDRLEN..)
            .ok_or("WireGuard message without genl header")?;
        for a in attrs(data) {
            let a = a?;
            match a.attr_type {
                WGDEVICE_A_PUBLIC_KEY => {
                    self.public_key = Some(get_key(&a, "WGDEVICE_A_PUBLIC_KEY")?)
                }
                WGDEVICE_A_LISTEN_PORT => {
                    self.listen_port = Some(get_u16(&a, "WGDEVICE_A_LISTEN_PORT")?)
                }
                WGDEVICE_A_PEERS => {
                    for entry in attrs(a.payload) {
                        let draft = parse_peer(entry?.payload)?;
                        self.merge(draft);
                    }
                }
                // IFINDEX, IFNAME, FWMARK; PRIVATE_KEY is deliberately not copied.
                _ => {}
            }
        }
        Ok(())
    }

    fn merge(&mut self, d: PeerDraft) {
        let Some(key) = d.public_key else { return };
        if let Some(last) = self.peers.last_mut().filter(|p| p.public_key == key) {
            // A continuation: only the public key and more allowed IPs, in practice.
            if d.endpoint.is_some() {
                last.endpoint = d.endpoint;
            }
            if let Some(h) = d.last_handshake {
                last.last_handshake = h;
            }
            if let Some(rx) = d.rx_bytes {
                last.rx_bytes = rx;
            }
            if let Some(tx) = d.tx_bytes {
                last.tx_bytes = tx;
            }
            if let Some(k) = d.persistent_keepalive {
                last.persistent_keepalive = Some(k).filter(|&k| k > 0);
            }
            last.allowed_ips.extend(d.allowed_ips);
            return;
        }
        self.peers.push(PeerInfo {
            public_key: key,
            endpoint: d.endpoint,
            last_handshake: d.last_handshake.flatten(),
            rx_bytes: d.rx_bytes.unwrap_or(0),
            tx_bytes: d.tx_bytes.unwrap_or(0),
            persistent_keepalive: d.persistent_keepalive.filter(|&k| k > 0),
            allowed_ips: d.allowed_ips,
        });
    }

    /// Whether `NLMSG_DONE` has been seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether a message carried `NLM_F_DUMP_INTR`: the device changed during the dump, whose
    /// result may be inconsistent (`wg(8)` retries then).
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// The device; [`WgError::Malformed`] when `NLMSG_DONE` was not seen.
    pub fn finish(self) -> Result<DeviceInfo, WgError> {
        if !self.done {
            return Err(malformed(&self.iface, "dump ended without NLMSG_DONE"));
        }
        Ok(DeviceInfo {
            implementation: Implementation::Kernel,
            public_key: self.public_key,
            listen_port: self.listen_port,
            peers: self.peers,
        })
    }
}

impl Collect for DeviceDump {
    fn feed(&mut self, datagram: &[u8]) -> Result<bool, WgError> {
        DeviceDump::feed(self, datagram)
    }
}

/// Parses the datagrams answering a `WG_CMD_GET_DEVICE` dump request `seq` (see
/// [`DeviceDump`]). Ignores an `NLM_F_DUMP_INTR` mark (use [`DeviceDump`] to see it).
pub fn parse_get_device(
    iface: &str,
    family: u16,
    seq: u32,
    datagrams: &[&[u8]],
) -> Result<DeviceInfo, WgError> {
    let mut dump = DeviceDump::new(iface, family, seq);
    for d in datagrams {
        if dump.feed(d)? {
            break;
        }
    }
    dump.finish()
}

/// Parses the controller's answer to [`super::get_family_message`] request `seq`: the family id.
/// `ENOENT` (no such family: the module is not loaded) is [`WgError::Unsupported`].
pub fn parse_family_reply(iface: &str, seq: u32, datagrams: &[&[u8]]) -> Result<u16, WgError> {
    let mut lookup = FamilyLookup {
        iface: iface.to_owned(),
        seq,
        id: None,
    };
    for d in datagrams {
        if lookup.feed(d)? {
            break;
        }
    }
    lookup
        .id
        .ok_or_else(|| malformed(iface, "no family id in the controller's reply"))
}

/// Parses the acknowledgement of a `WG_CMD_SET_DEVICE` request `seq` (errno 0 = done).
/// `what` names the request in errors.
pub fn parse_ack(
    iface: &str,
    what: &'static str,
    seq: u32,
    datagrams: &[&[u8]],
) -> Result<(), WgError> {
    let mut wait = AckWait {
        iface: iface.to_owned(),
        what,
        seq,
    };
    for d in datagrams {
        if wait.feed(d)? {
            return Ok(());
        }
    }
    Err(malformed(iface, "no acknowledgement"))
}
