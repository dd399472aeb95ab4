//! WireGuard backends: read an interface's peers, and make WireGuard send one packet now.
//!
//! Writing is only ever the kick (and, in adapt mode, the keepalive setting):
//! - kernel ([`netlink`]): one `WG_CMD_SET_DEVICE` message carrying the peer twice with
//!   `WGPEER_F_UPDATE_ONLY`, PersistentKeepalive `[0, N]` when it is on, `[1, 0]` when off;
//! - wireguard-go ([`uapi`]): one `set=1` transaction with the peer section twice and
//!   `update_only=true`;
//! - boringtun: never written to (any UAPI write to an existing peer panics it); the follow-up is
//!   a datagram sent into the tunnel ([`tunnel_packet`]).
//!
//! Parsers and message builders do no I/O and are tested on recorded replies and byte for byte.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::SystemTime;

use base64::Engine as _;

pub mod netlink;
pub mod tunnel_packet;
pub mod uapi;

/// A WireGuard public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

/// A key that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a WireGuard key (32 bytes as base64 or hex): `{0}`")]
pub struct BadKey(pub String);

impl Key {
    /// Standard base64, as `wg` and every exporter print it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Lower-case hex, as the UAPI speaks it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// From 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Key, BadKey> {
        Key::from_hex_bytes(s.as_bytes()).ok_or_else(|| BadKey(s.to_owned()))
    }

    /// From 64 hex digits, as bytes (a UAPI reply is parsed as bytes).
    pub(crate) fn from_hex_bytes(bytes: &[u8]) -> Option<Key> {
        if bytes.len() != 64 {
            return None;
        }
        // Eight digits at a time (SWAR): this runs for every peer of every poll.
        let mut out = [0u8; 32];
        let mut invalid = 0;
        for (o, digits) in out.chunks_exact_mut(4).zip(bytes.chunks_exact(8)) {
            let (value, bad) = hex8(u64::from_le_bytes(digits.try_into().expect("8 bytes")));
            o.copy_from_slice(&value.to_le_bytes());
            invalid |= bad;
        }
        (invalid == 0).then_some(Key(out))
    }

    /// From standard base64.
    pub fn from_base64(s: &str) -> Result<Key, BadKey> {
        let v = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| BadKey(s.to_owned()))?;
        <[u8; 32]>::try_from(v)
            .map(Key)
            .map_err(|_| BadKey(s.to_owned()))
    }
}

/// Eight hex digits, the first in the lowest byte of `x`, as four bytes (the first pair in the
/// lowest), and a mask that is non-zero when any of them is not a hex digit.
fn hex8(x: u64) -> (u32, u64) {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = ONES * 0x80;
    // Per byte on 7-bit values (no carries between bytes): `b + (0x80 - lo)` has bit 7 set iff
    // `b >= lo`, `b + (0x7f - hi)` iff `b > hi`.
    let in_range = |v: u64, lo: u8, hi: u8| {
        (v + ONES * u64::from(0x80 - lo)) & !(v + ONES * u64::from(0x7f - hi)) & HIGH
    };
    let low7 = x & !HIGH;
    let digit = in_range(low7, b'0', b'9');
    let letter = in_range(low7 | (ONES * 0x20), b'a', b'f');
    let bad = (x & HIGH) | ((digit | letter) ^ HIGH);
    // Nibble values, one per byte: '0'..'9' → 0..9, 'a'..'f' and 'A'..'F' → 10..15.
    let nibbles = (x & (ONES * 0x0f)) + (letter >> 7) * 9;
    // Byte 2k becomes nibble 2k << 4 | nibble 2k+1; then the even bytes are packed.
    let pairs = ((nibbles << 4) | (nibbles >> 8)) & 0x00ff_00ff_00ff_00ff;
    let pairs = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    let pairs = pairs | (pairs >> 16);
    (pairs as u32, bad)
}

/// A hasher for maps keyed by [`Key`]: public keys are uniformly random (and chosen by the
/// administrator, not by the network), so eight of their bytes are already a good hash, and
/// hashing 10 000 keys every poll with SipHash is measurable.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Keys hash as one 32-byte write (plus a length prefix, which lands in write_usize).
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
    }
    fn write_usize(&mut self, i: usize) {
        self.0 = self.0.rotate_left(5) ^ i as u64;
    }
}

/// `HashMap<Key, V>` with [`KeyHasher`].
pub type KeyMap<V> = std::collections::HashMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;

impl FromStr for Key {
    type Err = BadKey;
    fn from_str(s: &str) -> Result<Key, BadKey> {
        if s.len() == 64 {
            Key::from_hex(s)
        } else {
            Key::from_base64(s)
        }
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn hex_and_base64_round_trip() {
        let k = Key([0xab; 32]);
        assert_eq!(Key::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(Key::from_hex(&k.to_hex().to_uppercase()).unwrap(), k);
        assert_eq!(k.to_base64().parse::<Key>().unwrap(), k);
        assert!(Key::from_hex(&"g".repeat(64)).is_err());
        assert!(Key::from_hex("abcd").is_err());
        assert!("not a key".parse::<Key>().is_err());
    }

    #[test]
    fn hex_digits_eight_at_a_time() {
        // Every byte value at every position, against a digit-by-digit decoder.
        let digit = |b: u8| char::from(b).to_digit(16).filter(|_| b.is_ascii_hexdigit());
        let reference = |s: &[u8]| -> Option<[u8; 32]> {
            let mut out = [0u8; 32];
            for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
                *o = u8::try_from(digit(pair[0])? << 4 | digit(pair[1])?).ok()?;
            }
            Some(out)
        };
        let base = *b"0123456789abcdefABCDEF0123456789abcdef0123456789ABCDEFabcdef0123";
        for pos in 0..64 {
            for v in 0..=255u8 {
                let mut s = base;
                s[pos] = v;
                assert_eq!(
                    Key::from_hex_bytes(&s).map(|k| k.0),
                    reference(&s),
                    "{v:#04x} at {pos}"
                );
            }
        }
        assert_eq!(Key::from_hex_bytes(&base[..62]), None);
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_base64())
    }
}

/// Which WireGuard implementation serves an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Implementation {
    /// The Linux kernel module, over generic netlink.
    Kernel,
    /// wireguard-go (or another UAPI implementation that reports `protocol_version=1`).
    WireguardGo,
    /// boringtun-cli: its `get=1` reply has `own_public_key=` and no `protocol_version=`; never
    /// write to it.
    Boringtun,
}

impl Implementation {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Implementation::Kernel => "kernel",
            Implementation::WireguardGo => "wireguard-go",
            Implementation::Boringtun => "boringtun",
        }
    }
}

/// An allowed IP network of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllowedIp {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub cidr: u8,
}

/// One peer as the implementation reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its public key.
    pub public_key: Key,
    /// Its current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake completed (wall clock); `None` for never (`0` on the wire).
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// PersistentKeepalive in seconds; `None` when off.
    pub persistent_keepalive: Option<u16>,
    /// Its allowed IPs.
    pub allowed_ips: Vec<AllowedIp>,
}

/// An interface's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Which implementation answered.
    pub implementation: Implementation,
    /// Own public key, when the implementation tells.
    pub public_key: Option<Key>,
    /// Listen port.
    pub listen_port: Option<u16>,
    /// Its peers.
    pub peers: Vec<PeerInfo>,
}

impl DeviceInfo {
    /// No peers, nothing known (wireguard-go is the default guess): a buffer to read into.
    pub fn empty() -> DeviceInfo {
        DeviceInfo {
            implementation: Implementation::WireguardGo,
            public_key: None,
            listen_port: None,
            peers: Vec::new(),
        }
    }
}

/// What can go wrong talking to WireGuard.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// The interface does not exist (yet, or any more).
    #[error("interface {0} not found")]
    NotFound(String),
    /// The implementation did not answer in time.
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, std::time::Duration),
    /// The implementation refused a request (UAPI `errno=N`, netlink error).
    #[error("{what} refused by {iface}: errno {errno}")]
    Refused {
        /// Interface.
        iface: String,
        /// What was asked.
        what: &'static str,
        /// The error number.
        errno: i32,
    },
    /// A reply that does not parse.
    #[error("malformed reply from {iface}: {detail}")]
    Malformed {
        /// Interface.
        iface: String,
        /// What was wrong.
        detail: String,
    },
    /// The operation is not allowed on this implementation (writes to boringtun).
    #[error("{0}")]
    Unsupported(String),
    /// An I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
