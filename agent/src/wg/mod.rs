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
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
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
