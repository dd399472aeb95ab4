//! `wgkeep probe` and `wgkeep reflect`: the commands around the probe crate's drivers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use wgkeep_probe::driver::{run_probe, run_reflector, ReflectorHandle};
use wgkeep_probe::planner::PlannerConfig;
use wgkeep_probe::reflector::{Limits, ReflectorConfig, ReflectorStats};
use wgkeep_probe::report::Report;
use wgkeep_probe::wire::Key;

use crate::probe_ui::{write_plot, ProgressUi};

/// The key from `--psk-file` (the same file on both sides), or the public key without one.
pub fn read_key(path: Option<&Path>) -> Result<Key, String> {
    let Some(path) = path else {
        return Ok(Key::public());
    };
    let contents = std::fs::read(path)
        .map_err(|e| format!("--psk-file {}: cannot read it: {e}", path.display()))?;
    Key::from_psk(&contents).map_err(|e| {
        format!(
            "--psk-file {}: {e}; write one with `wg genpsk > {}` and copy it to both sides",
            path.display(),
            path.display()
        )
    })
}

/// Resolve `HOST:PORT` (one address; IPv4 first).
pub async fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("cannot resolve the reflector `{target}` (write HOST:PORT)"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("`{target}` resolves to no address"))
}

/// What `wgkeep probe` prints and writes.
#[derive(Debug)]
pub struct ProbeOutput {
    /// JSON on stdout instead of the table.
    pub json: bool,
    /// An SVG plot to write.
    pub plot: Option<PathBuf>,
    /// No progress bar.
    pub quiet: bool,
}

/// Run a probe with a progress bar; print the report.
pub async fn probe_command(
    target: &str,
    mut config: PlannerConfig,
    out: ProbeOutput,
) -> anyhow::Result<()> {
    let addr = resolve(target).await?;
    config.reflector = target.to_string();
    let enabled = !out.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let ui = ProgressUi::new(enabled, config.max.as_secs_f64());
    let report = run_probe(config, addr, |p| ui.update(p)).await;
    ui.finish();
    let report = report.with_context(|| format!("probing through {target} ({addr})"))?;
    if let Some(path) = &out.plot {
        write_plot(&report, path)?;
    }
    print_report(&report, out.json)
}

fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{}", report.to_json_pretty())
    } else {
        write!(stdout, "{}", report.render_table())
    }
    .context("writing the report to stdout")
}

/// Serve probes on `listen` until SIGTERM/SIGINT.
pub async fn reflect_command(
    listen: SocketAddr,
    key: Key,
    metrics_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let psk = !key.is_public();
    let config = ReflectorConfig {
        key,
        limits: Limits::default(),
    };
    let handle: Arc<Mutex<Option<ReflectorHandle>>> = Arc::default();
    // Bound now (an error is reported before anything runs), served only once the UDP socket is
    // bound: /healthz answering means the reflector is ready.
    let mut listener = match metrics_listen {
        Some(addr) => Some(
            crate::metrics::bind(addr)
                .await
                .with_context(|| format!("listening for metrics on {addr} (--metrics-listen)"))?,
        ),
        None => None,
    };
    let stop = async {
        let _ = crate::driver::wait_for_signal().await;
    };
    run_reflector(
        listen,
        config,
        |h| {
            tracing::info!(
                "wgkeep {} reflector on udp {}{}",
                env!("CARGO_PKG_VERSION"),
                h.local,
                if psk {
                    ", every packet authenticated with the PSK"
                } else {
                    ""
                }
            );
            *handle.lock().expect("handle lock") = Some(h);
            if let Some(listener) = listener.take() {
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!("serving /metrics and /healthz on http://{addr}");
                }
                let h = handle.clone();
                let render = move || {
                    let stats = h
                        .lock()
                        .expect("handle lock")
                        .as_ref()
                        .map(|h| h.stats())
                        .unwrap_or_default();
                    render_reflector_metrics(&stats)
                };
                tokio::spawn(crate::metrics::serve_fn(listener, Arc::new(render)));
            }
        },
        stop,
    )
    .await
    .with_context(|| format!("reflector on udp {listen} (--listen)"))
}

/// The reflector's counters in the Prometheus text format.
pub fn render_reflector_metrics(s: &ReflectorStats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        "wgkeep_reflector_received_packets_total",
        "Datagrams received.",
        s.received_packets,
    );
    counter(
        "wgkeep_reflector_received_bytes_total",
        "Bytes received (UDP payload).",
        s.received_bytes,
    );
    counter(
        "wgkeep_reflector_sent_packets_total",
        "Datagrams sent.",
        s.sent_packets,
    );
    counter(
        "wgkeep_reflector_sent_bytes_total",
        "Bytes sent (UDP payload); never more than received, per source address.",
        s.sent_bytes,
    );
    counter(
        "wgkeep_reflector_checks_sent_total",
        "Delayed check packets sent.",
        s.checks_sent,
    );
    let _ = writeln!(
        out,
        "# HELP wgkeep_reflector_dropped_total Datagrams dropped, by reason.\n# TYPE wgkeep_reflector_dropped_total counter"
    );
    let d = &s.dropped;
    for (reason, n) in [
        ("malformed", d.malformed),
        ("bad_mac", d.bad_mac),
        ("unexpected_type", d.unexpected_type),
        ("bad_cookie", d.bad_cookie),
        ("rate_limited", d.rate_limited),
        ("limit_reached", d.limit_reached),
        ("unknown_question", d.unknown_question),
        ("wrong_source", d.wrong_source),
        ("duplicate_question", d.duplicate_question),
        ("too_late", d.too_late),
        ("bad_delay", d.bad_delay),
        ("already_scheduled", d.already_scheduled),
        ("no_credit", d.no_credit),
        ("queue_full", d.queue_full),
    ] {
        let _ = writeln!(
            out,
            "wgkeep_reflector_dropped_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "wgkeep_reflector_questions_pending",
        "Questions waiting for their check.",
        s.questions_pending as u64,
    );
    gauge(
        "wgkeep_reflector_sources_tracked",
        "Source addresses with state (only those that proved they receive there).",
        s.sources_tracked as u64,
    );
    let _ = writeln!(
        out,
        "# HELP wgkeep_build_info wgkeep's version.\n# TYPE wgkeep_build_info gauge\nwgkeep_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}

/// How often `wgkeep agent --reflector` probes again.
pub const REPROBE_EVERY: Duration = Duration::from_secs(24 * 3600);
