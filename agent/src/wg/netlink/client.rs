//! The I/O: one `NETLINK_GENERIC` socket per client, requests with a deadline.

use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use netlink_sys::Socket;

use super::parse::{family_missing, AckWait, Collect, DeviceDump, FamilyLookup};
use super::{
    get_device_message, get_family_message, kick_message, set_keepalive_message, valid_ifname,
    DeviceInfo, Key, WgError, NETLINK_GENERIC, WG_GENL_NAME,
};

/// Initial receive buffer. The kernel caps dump datagrams near 32 KiB
/// (`SKB_WITH_OVERHEAD(32768)` in `netlink_recvmsg`); larger datagrams are still received whole
/// (their size is peeked first).
const RECV_BUF: usize = 64 * 1024;

/// How many times a dump marked `NLM_F_DUMP_INTR` is retried before its result is used anyway.
const DUMP_ATTEMPTS: usize = 3;

/// Kernel WireGuard for one interface, over generic netlink.
///
/// Opening resolves the "wireguard" family (which makes the kernel load the module if it can).
/// Each request waits for its answer (dump end or acknowledgement) within the timeout given to
/// [`KernelClient::open`], matching sequence numbers and skipping unrelated messages. After a
/// timeout, an I/O error or a malformed answer the socket is replaced (and the family resolved
/// again) before the next request, so that a half-read dump cannot confuse it.
#[derive(Debug)]
pub struct KernelClient {
    iface: String,
    timeout: Duration,
    socket: Socket,
    family: u16,
    seq: u32,
    buf: Vec<u8>,
    broken: bool,
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> WgError {
    move |source| WgError::Io { context, source }
}

fn open_socket(iface: &str) -> Result<Socket, WgError> {
    let mut socket = Socket::new(NETLINK_GENERIC).map_err(io_error(format!(
        "opening a generic netlink socket for {iface}"
    )))?;
    socket.bind_auto().map_err(io_error(format!(
        "binding a generic netlink socket for {iface}"
    )))?;
    // Best effort: the kernel's error strings (logged at debug level), and no echo of the
    // request in error messages.
    let _ = socket.set_ext_ack(true);
    let _ = socket.set_cap_ack(true);
    Ok(socket)
}

impl KernelClient {
    /// Opens a generic netlink socket and resolves the "wireguard" family.
    ///
    /// Errors: [`WgError::Unsupported`] when the family does not exist (no WireGuard kernel
    /// module); [`WgError::NotFound`] for a name no interface can have; [`WgError::Io`],
    /// [`WgError::Timeout`]. Does not check that `iface` exists: [`KernelClient::get`] does.
    pub fn open(iface: &str, timeout: Duration) -> Result<KernelClient, WgError> {
        let mut client = KernelClient::unresolved(iface, timeout)?;
        client.resolve_family()?;
        Ok(client)
    }

    /// A client whose family is not resolved yet.
    fn unresolved(iface: &str, timeout: Duration) -> Result<KernelClient, WgError> {
        if !valid_ifname(iface) {
            return Err(WgError::NotFound(iface.to_owned()));
        }
        let seq = crate::clock::wall_now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let client = KernelClient {
            iface: iface.to_owned(),
            timeout,
            socket: open_socket(iface)?,
            family: 0,
            seq,
            buf: Vec::with_capacity(RECV_BUF),
            broken: false,
        };
        Ok(client)
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The resolved generic netlink family id of "wireguard".
    pub fn family(&self) -> u16 {
        self.family
    }

    /// Reads the device: `WG_CMD_GET_DEVICE` dump. [`WgError::NotFound`] when the interface
    /// does not exist; [`WgError::Refused`] with `EOPNOTSUPP` (95) when it is not a WireGuard
    /// interface. A dump the kernel marks inconsistent (`NLM_F_DUMP_INTR`, the device changed
    /// meanwhile) is retried a few times.
    pub fn get(&mut self) -> Result<DeviceInfo, WgError> {
        self.repair()?;
        let mut attempt = 1;
        loop {
            let seq = self.next_seq();
            let mut dump = DeviceDump::new(&self.iface, self.family, seq);
            self.exchange(
                &get_device_message(self.family, seq, &self.iface),
                &mut dump,
            )?;
            if dump.interrupted() {
                if attempt < DUMP_ATTEMPTS {
                    attempt += 1;
                    continue;
                }
                tracing::warn!(
                    iface = %self.iface,
                    "WireGuard dump still inconsistent after {DUMP_ATTEMPTS} attempts; using it"
                );
            }
            return dump.finish();
        }
    }

    /// The kick: one `WG_CMD_SET_DEVICE` message with the peer twice (see
    /// [`super::kick_message`]); waits for the kernel's acknowledgement. `current_keepalive` is
    /// the peer's PersistentKeepalive as last read (the setting it keeps afterwards).
    pub fn kick(&mut self, peer: &Key, current_keepalive: Option<u16>) -> Result<(), WgError> {
        self.repair()?;
        let seq = self.next_seq();
        let msg = kick_message(self.family, seq, &self.iface, peer, current_keepalive);
        self.exchange(&msg, &mut self.ack("kick", seq))
    }

    /// Sets one peer's PersistentKeepalive (`None` = off), update-only; waits for the
    /// acknowledgement.
    pub fn set_keepalive(&mut self, peer: &Key, keepalive: Option<u16>) -> Result<(), WgError> {
        self.repair()?;
        let seq = self.next_seq();
        let msg = set_keepalive_message(self.family, seq, &self.iface, peer, keepalive);
        self.exchange(&msg, &mut self.ack("set persistent keepalive", seq))
    }

    fn ack(&self, what: &'static str, seq: u32) -> AckWait {
        AckWait {
            iface: self.iface.clone(),
            what,
            seq,
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    fn resolve_family(&mut self) -> Result<(), WgError> {
        self.family = self.resolve(WG_GENL_NAME)?;
        Ok(())
    }

    /// The id of generic netlink family `name`.
    fn resolve(&mut self, name: &str) -> Result<u16, WgError> {
        let seq = self.next_seq();
        let mut lookup = FamilyLookup {
            iface: self.iface.clone(),
            seq,
            id: None,
        };
        self.exchange(&get_family_message(seq, name), &mut lookup)?;
        lookup.id.ok_or_else(|| family_missing(&self.iface))
    }

    /// After a failed exchange: a fresh socket and a fresh family id (the module may have been
    /// reloaded).
    fn repair(&mut self) -> Result<(), WgError> {
        if self.broken {
            self.socket = open_socket(&self.iface)?;
            self.broken = false;
            self.resolve_family()?;
        }
        Ok(())
    }

    /// Sends `request` and feeds received datagrams to `collector` until it is complete or the
    /// deadline passes. Marks the client broken when the exchange did not finish cleanly.
    fn exchange(&mut self, request: &[u8], collector: &mut dyn Collect) -> Result<(), WgError> {
        let result = self.exchange_inner(request, collector);
        if let Err(WgError::Timeout(..) | WgError::Io { .. } | WgError::Malformed { .. }) = result {
            self.broken = true;
        }
        result
    }

    fn exchange_inner(
        &mut self,
        request: &[u8],
        collector: &mut dyn Collect,
    ) -> Result<(), WgError> {
        let deadline = crate::clock::instant_now() + self.timeout;
        loop {
            match self.socket.send(request, 0) {
                Ok(n) if n == request.len() => break,
                Ok(n) => {
                    return Err(WgError::Io {
                        context: format!("netlink request for {}", self.iface),
                        source: std::io::Error::other(format!(
                            "sent {n} of {} bytes",
                            request.len()
                        )),
                    })
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(format!("netlink request for {}", self.iface))(e)),
            }
        }
        loop {
            let n = self.recv_datagram(deadline)?;
            let fed = collector.feed(&self.buf[..n]);
            // The dump carries the private key: do not leave it in the buffer.
            self.buf.fill(0);
            if fed? {
                return Ok(());
            }
        }
    }

    /// Receives one whole datagram into `self.buf`; returns its length.
    fn recv_datagram(&mut self, deadline: Instant) -> Result<usize, WgError> {
        loop {
            let remaining = deadline.saturating_duration_since(crate::clock::instant_now());
            if remaining.is_zero() {
                return Err(WgError::Timeout(
                    format!("kernel WireGuard ({})", self.iface),
                    self.timeout,
                ));
            }
            // A zero timeout would mean "forever": at least 1 ms.
            socket2::SockRef::from(&self.socket)
                .set_read_timeout(Some(remaining.max(Duration::from_millis(1))))
                .map_err(io_error(format!(
                    "netlink socket timeout for {}",
                    self.iface
                )))?;
            // Peek the datagram's real size (MSG_TRUNC), make room, then read it.
            self.buf.clear();
            let size = match self
                .socket
                .recv(&mut self.buf, libc::MSG_PEEK | libc::MSG_TRUNC)
            {
                Ok(size) => size,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue; // the deadline check above turns this into Timeout
                }
                Err(e) => return Err(io_error(format!("netlink receive for {}", self.iface))(e)),
            };
            self.buf.fill(0);
            self.buf.clear();
            if size > self.buf.capacity() {
                self.buf.reserve(size);
            }
            match self.socket.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) if n == self.buf.len() => return Ok(n),
                Ok(n) => {
                    return Err(WgError::Malformed {
                        iface: self.iface.clone(),
                        detail: format!(
                            "netlink datagram of {n} bytes truncated to {}",
                            self.buf.len()
                        ),
                    })
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(format!("netlink receive for {}", self.iface))(e)),
            }
        }
    }
}

#[cfg(test)]
impl KernelClient {
    /// Test access: an unresolved client, family lookup by name, a raw exchange waiting for an
    /// acknowledgement, and the broken flag.
    pub(super) fn test_unresolved(iface: &str, timeout: Duration) -> Result<KernelClient, WgError> {
        KernelClient::unresolved(iface, timeout)
    }

    pub(super) fn test_resolve(&mut self, name: &str) -> Result<u16, WgError> {
        self.resolve(name)
    }

    pub(super) fn test_exchange_ack(&mut self, request: &[u8], seq: u32) -> Result<(), WgError> {
        self.exchange(request, &mut self.ack("test", seq))
    }

    pub(super) fn test_next_seq(&mut self) -> u32 {
        self.next_seq()
    }

    pub(super) fn test_broken(&self) -> bool {
        self.broken
    }
}

/// Whether `/sys/class/net/IFACE/uevent` says `DEVTYPE=wireguard`: a kernel WireGuard link (the
/// kernel's `wg_setup` sets the device type to its module name). Sees the network namespace
/// `/sys` was mounted in. `false` for invalid names and unreadable files.
pub fn is_kernel_wireguard_link(iface: &str) -> bool {
    devtype_is_wireguard(Path::new("/sys/class/net"), iface)
}

pub(super) fn devtype_is_wireguard(class_net: &Path, iface: &str) -> bool {
    if !valid_ifname(iface) {
        return false;
    }
    std::fs::read_to_string(class_net.join(iface).join("uevent"))
        .map(|s| s.lines().any(|l| l.trim() == "DEVTYPE=wireguard"))
        .unwrap_or(false)
}
