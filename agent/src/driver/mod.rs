//! `wgkeep agent`: the driver around the keeper.
//!
//! One tokio task per interface owns its [`Device`] (kernel netlink or UAPI) and one
//! [`PeerTracker`](crate::tracker::PeerTracker) per peer. It polls the device every
//! `poll_interval`, feeds the trackers, and sleeps until the earliest keeper timer between polls,
//! so a follow-up leaves at handshake time + delay, not at the next poll. Blocking device calls run
//! on tokio's blocking pool, so a hung UAPI socket delays only its own interface (and only up to
//! the device timeout).

mod device;
mod iface;
mod system;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use wgkeep_probe::middlebox::Rules;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::state::StateDir;

pub use device::{Connector, Device};
pub use system::SystemConnector;

/// What the agent may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Metrics only; never writes (except restoring what a crashed agent left changed).
    Observe,
    /// Follow-ups only; never changes a setting.
    FollowUp,
    /// Follow-ups, and PersistentKeepalive of every peer that has one set to
    /// `floor(0.8 × stream timeout)`.
    Adapt,
}

/// How a follow-up is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// keepalive-toggle on kernel and wireguard-go, tunnel-packet on boringtun.
    Auto,
    /// PersistentKeepalive `[0, N]` (or `[1, 0]`) in one set transaction.
    KeepaliveToggle,
    /// A datagram into the tunnel.
    TunnelPacket,
}

impl Method {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Auto => "auto",
            Method::KeepaliveToggle => "keepalive-toggle",
            Method::TunnelPacket => "tunnel-packet",
        }
    }
}

/// Which side of the NAT the agent's peers are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideChoice {
    /// Per peer: a peer we send PersistentKeepalive to is reached through our NAT (we are the
    /// client); one without is behind its own NAT (we are the server).
    Auto,
    /// We are behind the NAT.
    Client,
    /// We are the far side.
    Server,
}

/// The agent's configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Interfaces to watch.
    pub interfaces: Vec<String>,
    /// What it may change.
    pub mode: Mode,
    /// Follow-up delay after a handshake.
    pub follow_up_delay: Duration,
    /// How often to read the devices.
    pub poll_interval: Duration,
    /// The NAT's rules.
    pub rules: Rules,
    /// How to send follow-ups.
    pub method: Method,
    /// Side.
    pub side: SideChoice,
    /// Where to serve metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to record changes.
    pub state_dir: PathBuf,
    /// How long a device may take to answer.
    pub device_timeout: Duration,
    /// Probe the NAT against this reflector at start and every 24 h, and use what it measures.
    pub reflector: Option<ReflectorTarget>,
}

/// `--reflector`: where to probe, with which key.
#[derive(Clone, Debug)]
pub struct ReflectorTarget {
    /// HOST:PORT.
    pub addr: String,
    /// The probe's key (`--psk-file`, else public).
    pub key: wgkeep_probe::wire::Key,
}

/// Run until `stop` turns true; restore what adapt mode changed.
pub async fn run(
    cfg: AgentConfig,
    connector: Arc<dyn Connector>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    metrics.set_nat(&cfg.rules);
    let state =
        StateDir::open(&cfg.state_dir).context("opening the state directory (--state-dir)")?;
    if let Some(addr) = cfg.metrics_listen {
        let listener = crate::metrics::bind(addr)
            .await
            .with_context(|| format!("listening for metrics on {addr} (--metrics-listen)"))?;
        tracing::info!(
            "serving /metrics and /healthz on http://{}",
            listener.local_addr()?
        );
        tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    }
    let clock = Clock::start();
    let cfg = Arc::new(cfg);
    tracing::info!(
        "wgkeep {} agent: interfaces {}, mode {:?}, follow-up {} after each handshake, polling every {}",
        env!("CARGO_PKG_VERSION"),
        cfg.interfaces.join(", "),
        cfg.mode,
        humantime::format_duration(cfg.follow_up_delay),
        humantime::format_duration(cfg.poll_interval),
    );
    let (rules_tx, rules_rx) = watch::channel(cfg.rules);
    let prober = cfg
        .reflector
        .clone()
        .map(|target| tokio::spawn(probe_loop(target, rules_tx, metrics.clone())));
    let mut tasks = tokio::task::JoinSet::new();
    for name in &cfg.interfaces {
        let task = iface::IfaceTask::new(
            name.clone(),
            cfg.clone(),
            rules_rx.clone(),
            metrics.clone(),
            clock,
            connector.clone(),
            state.clone(),
        );
        tasks.spawn(task.run(stop.clone()));
    }
    while let Some(r) = tasks.join_next().await {
        r.context("interface task")?;
    }
    if let Some(p) = prober {
        p.abort();
    }
    Ok(())
}

/// `--reflector`: probe now and every [`REPROBE_EVERY`](crate::probe_cmd::REPROBE_EVERY) (an hour
/// after a failure); publish the measured timeouts and hand them to the interface tasks.
async fn probe_loop(
    target: ReflectorTarget,
    rules: watch::Sender<wgkeep_probe::middlebox::Rules>,
    metrics: Arc<Metrics>,
) {
    use wgkeep_probe::planner::PlannerConfig;
    loop {
        let mut config = PlannerConfig::new(target.addr.clone());
        config.key = target.key.clone();
        tracing::info!(
            "probing the NAT against {} (takes about 1.25 x its stream timeout)",
            target.addr
        );
        let result = async {
            let addr = crate::probe_cmd::resolve(&target.addr).await?;
            let report = wgkeep_probe::driver::run_probe(config, addr, |_| {}).await?;
            let profile = crate::probe_json::profile_from_str(&report.to_json_pretty())
                .map_err(|e| anyhow::anyhow!(e))?;
            anyhow::Ok((report, profile))
        }
        .await;
        let wait = match result {
            Ok((report, profile)) => {
                tracing::info!(
                    "probe: handshake {}, stream {}, grace {}; using these from now on",
                    fmt_bracket(report.handshake.as_ref()),
                    fmt_bracket(report.stream.as_ref()),
                    fmt_bracket(report.grace.as_ref()),
                );
                metrics.set_nat(&profile.rules);
                let _ = rules.send(profile.rules);
                crate::probe_cmd::REPROBE_EVERY
            }
            Err(e) => {
                tracing::warn!(
                    "probe against {} failed: {e:#}; trying again in an hour",
                    target.addr
                );
                Duration::from_secs(3600)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn fmt_bracket(b: Option<&wgkeep_probe::report::Bracket>) -> String {
    match b {
        Some(b) => b.describe("T"),
        None => "not measured".to_string(),
    }
}

/// Turn SIGTERM or SIGINT into `stop`.
pub async fn stop_on_signal(stop: watch::Sender<bool>) -> anyhow::Result<()> {
    wait_for_signal().await?;
    let _ = stop.send(true);
    Ok(())
}

/// Wait for SIGTERM or SIGINT.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("stopping");
    Ok(())
}

#[cfg(test)]
mod tests;
