//! The device seam: what the driver needs from a WireGuard interface, and how it finds one.

use std::net::SocketAddr;
use std::time::Duration;

use crate::wg::{DeviceInfo, Implementation, Key, WgError};

/// One attached WireGuard interface. Calls block (for at most the device timeout).
pub trait Device: Send {
    /// Which implementation serves it.
    fn implementation(&self) -> Implementation;
    /// Read the interface and its peers.
    fn get(&mut self) -> Result<DeviceInfo, WgError>;
    /// [`Device::get`] into `info`, reusing what it holds where the device can (the agent's poll:
    /// 10 000 peers every second). On error, `info` is left in an unspecified state.
    fn get_into(&mut self, info: &mut DeviceInfo) -> Result<(), WgError> {
        *info = self.get()?;
        Ok(())
    }
    /// Make WireGuard send a keepalive to `peer` now, leaving its PersistentKeepalive as it is.
    fn kick(&mut self, peer: &Key, current_keepalive: Option<u16>) -> Result<(), WgError>;
    /// Set `peer`'s PersistentKeepalive.
    fn set_keepalive(&mut self, peer: &Key, keepalive: Option<u16>) -> Result<(), WgError>;
    /// Send one datagram into the tunnel, to `to`.
    fn send_tunnel_packet(&mut self, to: SocketAddr) -> Result<(), WgError>;
}

/// Finds interfaces.
pub trait Connector: Send + Sync {
    /// Attach to `iface`; `WgError::NotFound` while it does not exist.
    fn connect(&self, iface: &str, timeout: Duration) -> Result<Box<dyn Device>, WgError>;
}
