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
        let bad = || BadKey(s.to_owned());
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        // A table lookup per digit (0xff: not hex); this runs for every peer of every poll.
        const HEX: [u8; 256] = {
            let mut t = [0xffu8; 256];
            let mut i = 0;
            while i < 10 {
                t[b'0' as usize + i] = i as u8;
                i += 1;
            }
            let mut i = 0;
            while i < 6 {
                t[b'a' as usize + i] = 10 + i as u8;
                t[b'A' as usize + i] = 10 + i as u8;
                i += 1;
            }
            t
        };
        let bytes = s.as_bytes();
        let mut out = [0u8; 32];
        let mut invalid = 0u8;
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let (hi, lo) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
            invalid |= (hi | lo) & 0xf0;
            *o = (hi << 4) | (lo & 0x0f);
        }
        if invalid != 0 {
            return Err(bad());
        }
        Ok(Key(out))
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
