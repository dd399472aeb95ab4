//! The real devices: UAPI and kernel netlink.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Connector, Device};
use crate::wg::netlink::KernelClient;
use crate::wg::uapi::UapiClient;
use crate::wg::{tunnel_packet, DeviceInfo, Implementation, Key, WgError};

/// The real thing: the UAPI socket `/var/run/wireguard/IFACE.sock` when it exists (wireguard-go,
/// boringtun), otherwise kernel WireGuard over generic netlink.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemConnector;

impl Connector for SystemConnector {
    fn connect(&self, iface: &str, timeout: Duration) -> Result<Box<dyn Device>, WgError> {
        let uapi = UapiClient::new(iface, timeout);
        if uapi.exists() {
            let info = uapi.get()?;
            return Ok(Box::new(Userspace {
                iface: iface.to_owned(),
                client: uapi,
                implementation: info.implementation,
            }));
        }
        match KernelClient::open(iface, timeout) {
            Ok(mut client) => {
                client.get()?;
                Ok(Box::new(Kernel {
                    iface: iface.to_owned(),
                    client,
                }))
            }
            // No WireGuard family (module not loaded) means no such interface yet.
            Err(WgError::NotFound(_)) | Err(WgError::Unsupported(_)) => {
                Err(WgError::NotFound(iface.to_owned()))
            }
            Err(e) => Err(e),
        }
    }
}

struct Userspace {
    iface: String,
    client: UapiClient,
    implementation: Implementation,
}

impl Device for Userspace {
    fn implementation(&self) -> Implementation {
        self.implementation
    }
    fn get(&mut self) -> Result<DeviceInfo, WgError> {
        let info = self.client.get()?;
        self.implementation = info.implementation;
        Ok(info)
    }
    fn get_into(&mut self, info: &mut DeviceInfo) -> Result<(), WgError> {
        self.client.get_into(info)?;
        self.implementation = info.implementation;
        Ok(())
    }
    fn kick(&mut self, peer: &Key, current_keepalive: Option<u16>) -> Result<(), WgError> {
        self.client
            .kick(peer, current_keepalive, self.implementation)
    }
    fn set_keepalive(&mut self, peer: &Key, keepalive: Option<u16>) -> Result<(), WgError> {
        self.client
            .set_keepalive(peer, keepalive, self.implementation)
    }
    fn send_tunnel_packet(&mut self, to: SocketAddr) -> Result<(), WgError> {
        tunnel_packet::send(&self.iface, to)
    }
}

struct Kernel {
    iface: String,
    client: KernelClient,
}

impl Device for Kernel {
    fn implementation(&self) -> Implementation {
        Implementation::Kernel
    }
    fn get(&mut self) -> Result<DeviceInfo, WgError> {
        self.client.get()
    }
    fn kick(&mut self, peer: &Key, current_keepalive: Option<u16>) -> Result<(), WgError> {
        self.client.kick(peer, current_keepalive)
    }
    fn set_keepalive(&mut self, peer: &Key, keepalive: Option<u16>) -> Result<(), WgError> {
        self.client.set_keepalive(peer, keepalive)
    }
    fn send_tunnel_packet(&mut self, to: SocketAddr) -> Result<(), WgError> {
        tunnel_packet::send(&self.iface, to)
    }
}
