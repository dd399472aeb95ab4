//! `wgkeep reflect`: one UDP socket around the sans-IO reflector.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rand::RngCore;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{instant, since};
use crate::reflector::{Reflector, ReflectorConfig, ReflectorStats};

/// What a running reflector shares: its address and a copy of its counters.
#[derive(Clone, Debug)]
pub struct ReflectorHandle {
    /// The bound address (useful with port 0).
    pub local: SocketAddr,
    stats: Arc<Mutex<ReflectorStats>>,
}

impl ReflectorHandle {
    /// The counters as of the last packet or timer.
    pub fn stats(&self) -> ReflectorStats {
        self.stats.lock().expect("stats lock").clone()
    }
}

/// Bind `listen`, then serve until `shutdown` completes. `ready` gets the handle once bound.
pub async fn run_reflector(
    listen: SocketAddr,
    config: ReflectorConfig,
    ready: impl FnOnce(ReflectorHandle),
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let socket = UdpSocket::bind(listen).await?;
    let origin = Instant::now();
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let mut reflector = Reflector::new(config, since(origin, origin), seed);
    let stats = Arc::new(Mutex::new(reflector.stats().clone()));
    ready(ReflectorHandle {
        local: socket.local_addr()?,
        stats: stats.clone(),
    });
    tokio::pin!(shutdown);
    let mut buf = [0u8; 2048];
    loop {
        while let Some(t) = reflector.poll_transmit() {
            // A datagram that cannot be sent now is dropped, never queued: the reflector must
            // not grow buffers for anyone.
            let _ = socket.try_send_to(t.payload(), t.dst);
        }
        *stats.lock().expect("stats lock") = reflector.stats().clone();
        let wake = reflector.poll_timeout().map(|t| instant(origin, t));
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                match r {
                    Ok((n, src)) => reflector.handle_input(since(origin, Instant::now()), src, &buf[..n]),
                    // ICMP errors from earlier sends surface here on Linux; they are not ours to fix.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(e),
                }
            }
            _ = async {
                match wake {
                    Some(w) => tokio::time::sleep_until(w).await,
                    None => std::future::pending().await,
                }
            } => {
                reflector.handle_timeout(since(origin, Instant::now()));
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}
