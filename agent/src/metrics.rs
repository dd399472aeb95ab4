//! Prometheus metrics and the `/metrics` + `/healthz` endpoint.
//!
//! Names and labels are a contract (see the README's metrics table). `public_key` is the peer's
//! base64 key, as in other WireGuard exporters. Every counter here counts wgkeep's own events, so
//! an interface restart (which resets WireGuard's byte counters) never makes one go backwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::RwLock;

use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wgkeep_probe::middlebox::Rules;

/// Follow-up methods, in label order.
pub const METHODS: [&str; 2] = ["keepalive-toggle", "tunnel-packet"];
/// Skip reasons, in label order.
pub const SKIP_REASONS: [&str; 2] = ["traffic", "expired"];

/// One peer's series. Plain atomics, updated by its interface's task without a lock and rendered
/// on scrape: 10 000 peers cost about 1 MB instead of one registry entry per series.
#[derive(Debug, Default)]
pub struct PeerMetrics {
    /// Handshakes seen.
    pub handshakes: AtomicU64,
    /// Follow-ups sent, by [`METHODS`].
    pub follow_ups: [AtomicU64; 2],
    /// Follow-ups skipped, by [`SKIP_REASONS`].
    pub skipped: [AtomicU64; 2],
    /// Follow-ups that failed or were not confirmed.
    pub failures: AtomicU64,
    /// Endpoint changes.
    pub endpoint_changes: AtomicU64,
    /// PersistentKeepalive (0: off).
    pub keepalive: AtomicI64,
    /// Unix time of the last handshake (0: never).
    pub last_handshake: AtomicI64,
    /// Whether the peer is on an attached interface: the gauges are shown only then; the
    /// counters always (they survive an interface restart).
    pub present: AtomicBool,
    /// Non-zero once the peer was removed (the removal's sequence number): nothing is shown,
    /// but the counters are kept a while, so a peer that comes back (a `wg-quick down` seen
    /// half-way, `wg syncconf`) continues its counters instead of restarting them at zero.
    pub removed: AtomicU64,
}

/// Removed peers whose counters are kept for a return; beyond it the oldest go.
pub const KEEP_REMOVED: usize = 1024;

impl PeerMetrics {
    /// Count a follow-up sent with `method` (a [`METHODS`] entry).
    pub fn follow_up(&self, method: &str) {
        if let Some(i) = METHODS.iter().position(|m| *m == method) {
            self.follow_ups[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count a skipped follow-up (a [`SKIP_REASONS`] entry).
    pub fn skip(&self, reason: &str) {
        if let Some(i) = SKIP_REASONS.iter().position(|r| *r == reason) {
            self.skipped[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

type PeerMap = BTreeMap<(String, String), Arc<PeerMetrics>>;

/// All of the agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    peers: RwLock<PeerMap>,
    /// Removals so far (orders the removed peers kept).
    removals: AtomicU64,
    /// `wgkeep_nat_timeout_seconds{kind}`.
    pub nat_timeout: prometheus::GaugeVec,
    /// `wgkeep_interface_up{interface}`: 1 while the interface is attached.
    pub interface_up: IntGaugeVec,
}

impl Metrics {
    /// A registry with every metric, `wgkeep_build_info` set.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let nat_timeout = prometheus::GaugeVec::new(
            Opts::new(
                "wgkeep_nat_timeout_seconds",
                "The NAT timeouts wgkeep assumes.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(nat_timeout.clone()))
            .expect("unique metric");
        let interface_up = IntGaugeVec::new(
            Opts::new(
                "wgkeep_interface_up",
                "1 while wgkeep is attached to the interface.",
            ),
            &["interface"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(interface_up.clone()))
            .expect("unique metric");
        let build = IntGaugeVec::new(
            Opts::new("wgkeep_build_info", "wgkeep's version."),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build.clone()))
            .expect("unique metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Metrics {
            registry,
            peers: RwLock::new(BTreeMap::new()),
            removals: AtomicU64::new(0),
            nat_timeout,
            interface_up,
        }
    }

    /// Publish the assumed NAT timeouts.
    pub fn set_nat(&self, rules: &Rules) {
        let (unreplied, stream, grace) = match rules {
            Rules::Conntrack(t) => (t.unreplied, t.stream, t.grace),
            Rules::Pf(t) => (t.single, t.multiple, Duration::ZERO),
        };
        for (kind, d) in [
            ("unreplied", unreplied),
            ("stream", stream),
            ("grace", grace),
        ] {
            self.nat_timeout
                .with_label_values(&[kind])
                .set(d.as_secs_f64());
        }
    }

    /// The series of `key` (base64) on `iface`, created at zero and marked present.
    pub fn peer(&self, iface: &str, key: &str) -> Arc<PeerMetrics> {
        let m = {
            let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
            peers
                .entry((iface.to_owned(), key.to_owned()))
                .or_default()
                .clone()
        };
        m.removed.store(0, Ordering::Relaxed);
        m.present.store(true, Ordering::Relaxed);
        m
    }

    /// The peer was removed from the interface: its series disappear (the counters are kept
    /// for [`KEEP_REMOVED`] removals, should it come back).
    pub fn remove_peer(&self, iface: &str, key: &str) {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        let Some(m) = peers.get(&(iface.to_owned(), key.to_owned())) else {
            return;
        };
        let seq = self.removals.fetch_add(1, Ordering::Relaxed) + 1;
        m.present.store(false, Ordering::Relaxed);
        m.removed.store(seq, Ordering::Relaxed);
        let removed = peers
            .values()
            .filter(|m| m.removed.load(Ordering::Relaxed) != 0)
            .count();
        if removed > KEEP_REMOVED {
            // Forget the oldest removals (rare: only under heavy churn).
            let cutoff = seq - KEEP_REMOVED as u64;
            peers.retain(|_, m| {
                let r = m.removed.load(Ordering::Relaxed);
                r == 0 || r > cutoff
            });
        }
    }

    /// The interface went away: hide its peers' gauges, keep their counters.
    pub fn detach(&self, iface: &str) {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        for ((i, _), m) in peers.iter() {
            if i == iface {
                m.present.store(false, Ordering::Relaxed);
            }
        }
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(256 + peers.len() * 1400);
        // One family: HELP, TYPE, then a sample per peer (per peer and `extra` label value).
        // Labels are written in name order, as Prometheus' own encoder does.
        let mut family = |name: &str,
                          kind: &str,
                          help: &str,
                          extra: Option<(&str, &[&str])>,
                          gauge: bool,
                          value: &dyn Fn(&PeerMetrics, usize) -> i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let (label, values) = extra.unwrap_or(("", &[""]));
            for ((iface, key), m) in peers.iter() {
                if m.removed.load(Ordering::Relaxed) != 0 {
                    continue;
                }
                if gauge && !m.present.load(Ordering::Relaxed) {
                    continue;
                }
                for (i, v) in values.iter().enumerate() {
                    let (before, after) = match label {
                        "" => (String::new(), String::new()),
                        l if l < "public_key" => (format!(",{l}=\"{v}\""), String::new()),
                        l => (String::new(), format!(",{l}=\"{v}\"")),
                    };
                    let _ = writeln!(
                        out,
                        "{name}{{interface=\"{}\"{before},public_key=\"{}\"{after}}} {}",
                        escape(iface),
                        escape(key),
                        value(m, i)
                    );
                }
            }
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        family(
            "wgkeep_handshakes_total",
            "counter",
            "Handshakes seen per peer.",
            None,
            false,
            &|m, _| load(&m.handshakes),
        );
        family(
            "wgkeep_follow_ups_total",
            "counter",
            "Follow-up packets wgkeep made WireGuard send.",
            Some(("method", &METHODS)),
            false,
            &|m, i| load(&m.follow_ups[i]),
        );
        family(
            "wgkeep_follow_ups_skipped_total",
            "counter",
            "Follow-ups not sent: traffic (a packet already passed after the grace period), expired \
             (the NAT entry was gone already).",
            Some(("reason", &SKIP_REASONS)),
            false,
            &|m, i| load(&m.skipped[i]),
        );
        family(
            "wgkeep_follow_up_failures_total",
            "counter",
            "Follow-ups that failed or were not confirmed by tx_bytes.",
            None,
            false,
            &|m, _| load(&m.failures),
        );
        family(
            "wgkeep_peer_endpoint_changes_total",
            "counter",
            "Changes of the peer's endpoint (after an idle gap: its NAT mapping expired).",
            None,
            false,
            &|m, _| load(&m.endpoint_changes),
        );
        family(
            "wgkeep_peer_persistent_keepalive_seconds",
            "gauge",
            "The peer's PersistentKeepalive (0: off).",
            None,
            true,
            &|m, _| m.keepalive.load(Ordering::Relaxed),
        );
        family(
            "wgkeep_peer_last_handshake_timestamp_seconds",
            "gauge",
            "Unix time of the peer's last handshake (0: never).",
            None,
            true,
            &|m, _| m.last_handshake.load(Ordering::Relaxed),
        );
        drop(peers);
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to memory");
        out.push_str(&String::from_utf8_lossy(&buf));
        out
    }
}

/// Label value escaping of the text format: `\`, `"` and newlines.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Serve `/metrics` and `/healthz` on `listener` until the task is dropped. A deliberately small
/// HTTP/1.x responder: one request per connection, 2 s to send it, 8 KiB at most.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    serve_fn(listener, Arc::new(move || metrics.render())).await
}

/// The same responder around any renderer of the text exposition format.
pub async fn serve_fn(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(2), async {
                while len < buf.len() {
                    let n = stream.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
                        || buf[..len].windows(2).any(|w| w == b"\n\n")
                    {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let (status, content_type, body) = respond(&request, &*render);
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

fn respond(request: &str, render: &dyn Fn() -> String) -> (&'static str, &'static str, String) {
    let mut parts = request
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(),
        ),
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".into()),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try /metrics or /healthz\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET only\n".into(),
        ),
    }
}

/// Bind the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgkeep_probe::middlebox::Profile;

    #[test]
    fn exposition_has_the_contract_names() {
        let m = Metrics::new();
        m.set_nat(&Profile::routeros().rules);
        let p = m.peer("wg0", "k");
        p.handshakes.fetch_add(1, Ordering::Relaxed);
        p.follow_up("keepalive-toggle");
        p.skip("traffic");
        p.keepalive.store(150, Ordering::Relaxed);
        p.last_handshake.store(1_800_000_000, Ordering::Relaxed);
        let text = m.render();
        for needle in [
            "wgkeep_handshakes_total{interface=\"wg0\",public_key=\"k\"} 1",
            "wgkeep_follow_ups_total{interface=\"wg0\",method=\"keepalive-toggle\",public_key=\"k\"} 1",
            "wgkeep_follow_ups_total{interface=\"wg0\",method=\"tunnel-packet\",public_key=\"k\"} 0",
            "wgkeep_follow_ups_skipped_total{interface=\"wg0\",public_key=\"k\",reason=\"traffic\"} 1",
            "wgkeep_follow_ups_skipped_total{interface=\"wg0\",public_key=\"k\",reason=\"expired\"} 0",
            "wgkeep_follow_up_failures_total{interface=\"wg0\",public_key=\"k\"} 0",
            "wgkeep_peer_persistent_keepalive_seconds{interface=\"wg0\",public_key=\"k\"} 150",
            "wgkeep_peer_last_handshake_timestamp_seconds{interface=\"wg0\",public_key=\"k\"} 1800000000",
            "wgkeep_peer_endpoint_changes_total{interface=\"wg0\",public_key=\"k\"} 0",
            "wgkeep_nat_timeout_seconds{kind=\"unreplied\"} 10",
            "wgkeep_nat_timeout_seconds{kind=\"stream\"} 180",
            "wgkeep_nat_timeout_seconds{kind=\"grace\"} 2",
            "wgkeep_build_info{version=\"",
            "# TYPE wgkeep_follow_ups_total counter",
            "# TYPE wgkeep_peer_persistent_keepalive_seconds gauge",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // An interface restart hides the gauges and keeps the counters.
        m.detach("wg0");
        let text = m.render();
        assert!(!text.contains("wgkeep_peer_persistent_keepalive_seconds{"));
        assert!(text.contains("wgkeep_handshakes_total{interface=\"wg0\",public_key=\"k\"} 1"));
        let again = m.peer("wg0", "k");
        assert_eq!(again.handshakes.load(Ordering::Relaxed), 1);
        m.remove_peer("wg0", "k");
        assert!(!m.render().contains("public_key=\"k\""));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("wg0"), "wg0");
    }

    #[test]
    fn a_removed_peer_disappears_and_continues_its_counters_if_it_returns() {
        let m = Metrics::new();
        let p = m.peer("wg0", "k");
        p.handshakes.fetch_add(3, Ordering::Relaxed);
        m.remove_peer("wg0", "k");
        assert!(!m.render().contains("public_key=\"k\""));
        let p = m.peer("wg0", "k");
        assert_eq!(p.handshakes.load(Ordering::Relaxed), 3);
        assert!(m.render().contains("public_key=\"k\""));
        // Heavy churn: only the newest removals are kept.
        for i in 0..KEEP_REMOVED + 10 {
            m.peer("wg0", &format!("c{i}"));
            m.remove_peer("wg0", &format!("c{i}"));
        }
        assert!(m.peers.read().unwrap().len() <= KEEP_REMOVED + 1);
    }

    #[test]
    fn routes() {
        let m = Metrics::new();
        let r = || m.render();
        assert_eq!(respond("GET /healthz HTTP/1.1\r\n\r\n", &r).0, "200 OK");
        assert_eq!(respond("GET /metrics HTTP/1.1\r\n\r\n", &r).0, "200 OK");
        assert_eq!(respond("GET / HTTP/1.1\r\n\r\n", &r).0, "404 Not Found");
        assert_eq!(
            respond("POST /metrics HTTP/1.1\r\n\r\n", &r).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond("", &r).0, "405 Method Not Allowed");
    }
}
