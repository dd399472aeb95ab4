//! `wgkeep probe`: the planner's sockets.
//!
//! One UDP socket per [`SocketId`], each connected to the reflector (a new local port, so a new
//! NAT entry). A small task per socket receives and forwards `(socket, datagram)` to the main
//! loop, which feeds the planner, sends what it wants sent and sleeps until its next timeout.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use rand::RngCore;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{instant, since, PROGRESS_EVERY};
use crate::planner::{Event, Planner, PlannerConfig, ProbeError, SocketId, CONTROL};
use crate::report::{Progress, Report};

/// Why `wgkeep probe` stopped without a report.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The probe itself gave up (reflector unreachable, no responses).
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// A socket could not be opened.
    #[error(
        "could not open probe socket number {count}; raise the open-files limit \
         (`ulimit -n`, systemd LimitNOFILE=) or lower --max-sockets"
    )]
    SocketLimit {
        /// Sockets open at the time.
        count: usize,
        /// The error.
        source: io::Error,
    },
    /// The reflector's host said nothing listens on that port.
    #[error(
        "{reflector} answered \"port unreachable\": nothing listens there. Start `wgkeep reflect \
         --listen ADDR:PORT` on the far side, or check the port"
    )]
    PortUnreachable {
        /// The reflector's address.
        reflector: SocketAddr,
    },
    /// The reflector answered at first, then its port closed.
    #[error(
        "the reflector at {reflector} stopped after {after_s} s (its host now answers \"port \
         unreachable\"): was `wgkeep reflect` stopped or restarted? Probe again once it runs"
    )]
    ReflectorStopped {
        /// The reflector's address.
        reflector: SocketAddr,
        /// Seconds into the probe.
        after_s: u64,
    },
    /// Any other socket error.
    #[error("probe socket: {0}")]
    Io(#[from] io::Error),
}

struct Sockets {
    reflector: SocketAddr,
    open: HashMap<SocketId, (Arc<UdpSocket>, JoinHandle<()>)>,
    tx: mpsc::UnboundedSender<(SocketId, Instant, io::Result<Vec<u8>>)>,
}

impl Sockets {
    async fn open(&mut self, id: SocketId) -> Result<(), DriverError> {
        let bind: SocketAddr = if self.reflector.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let count = self.open.len();
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(|source| DriverError::SocketLimit { count, source })?;
        sock.connect(self.reflector).await?;
        let sock = Arc::new(sock);
        let rx = sock.clone();
        let tx = self.tx.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let r = rx.recv(&mut buf).await.map(|n| buf[..n].to_vec());
                let failed = r.is_err();
                if tx.send((id, Instant::now(), r)).is_err() || failed {
                    return;
                }
            }
        });
        self.open.insert(id, (sock, task));
        Ok(())
    }

    fn close(&mut self, id: SocketId) {
        if let Some((_, task)) = self.open.remove(&id) {
            task.abort();
        }
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for (_, (_, task)) in self.open.drain() {
            task.abort();
        }
    }
}

/// Probe the NAT between here and `reflector`; `progress` is called about four times a second.
pub async fn run_probe(
    config: PlannerConfig,
    reflector: SocketAddr,
    mut progress: impl FnMut(&Progress),
) -> Result<Report, DriverError> {
    let origin = Instant::now();
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let mut planner = Planner::new(config, since(origin, origin), seed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut sockets = Sockets {
        reflector,
        open: HashMap::new(),
        tx,
    };
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        while let Some(ev) = planner.poll_event() {
            match ev {
                Event::Open(id) => sockets.open(id).await?,
                Event::Close(id) => sockets.close(id),
            }
        }
        while let Some(t) = planner.poll_transmit() {
            if let Some((sock, _)) = sockets.open.get(&t.socket) {
                // A full send buffer or an ICMP error on a probe socket loses one datagram:
                // the planner treats it like loss on the path.
                if let Err(e) = sock.send(&t.payload).await {
                    if t.socket == CONTROL && e.kind() == io::ErrorKind::ConnectionRefused {
                        return Err(refused(&planner, reflector, origin));
                    }
                }
            }
        }
        if planner.is_done() {
            break;
        }
        let wake = planner
            .poll_timeout()
            .map(|t| instant(origin, t))
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(1));
        tokio::select! {
            got = rx.recv() => {
                let Some((id, at, r)) = got else { break };
                match r {
                    Ok(data) => planner.handle_input(since(origin, at), id, &data),
                    Err(e) if id == CONTROL && e.kind() == io::ErrorKind::ConnectionRefused => {
                        return Err(refused(&planner, reflector, origin));
                    }
                    // An ICMP error on a probe socket: its entry is gone anyway.
                    Err(_) => {}
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                planner.handle_timeout(since(origin, Instant::now()));
            }
            _ = tick.tick() => {
                progress(&planner.progress(since(origin, Instant::now())));
            }
        }
    }
    let now = since(origin, Instant::now());
    progress(&planner.progress(now));
    if let Some(e) = planner.error() {
        return Err(e.clone().into());
    }
    Ok(planner.report(now))
}

/// "Port unreachable" on the control socket: never there, or gone since.
fn refused(planner: &Planner, reflector: SocketAddr, origin: Instant) -> DriverError {
    if planner.connected() {
        DriverError::ReflectorStopped {
            reflector,
            after_s: origin.elapsed().as_secs(),
        }
    } else {
        DriverError::PortUnreachable { reflector }
    }
}
