//! Prometheus metrics and the `/metrics` + `/healthz` endpoint.
//!
//! Names and labels are a contract (see the README's metrics table). `public_key` is the peer's
//! base64 key, as in other WireGuard exporters. Every counter here counts wgkeep's own events, so
//! an interface restart (which resets WireGuard's byte counters) never makes one go backwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wgkeep_probe::middlebox::Rules;

/// All of the agent's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `wgkeep_handshakes_total{interface,public_key}`.
    pub handshakes: IntCounterVec,
    /// `wgkeep_follow_ups_total{interface,public_key,method}`.
    pub follow_ups: IntCounterVec,
    /// `wgkeep_follow_ups_skipped_total{interface,public_key,reason}`.
    pub follow_ups_skipped: IntCounterVec,
    /// `wgkeep_follow_up_failures_total{interface,public_key}`.
    pub follow_up_failures: IntCounterVec,
    /// `wgkeep_peer_persistent_keepalive_seconds{interface,public_key}`.
    pub persistent_keepalive: IntGaugeVec,
    /// `wgkeep_peer_last_handshake_timestamp_seconds{interface,public_key}`.
    pub last_handshake: IntGaugeVec,
    /// `wgkeep_peer_endpoint_changes_total{interface,public_key}`.
    pub endpoint_changes: IntCounterVec,
    /// `wgkeep_nat_timeout_seconds{kind}`.
    pub nat_timeout: prometheus::GaugeVec,
    /// `wgkeep_interface_up{interface}`: 1 while the interface is attached.
    pub interface_up: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Metrics {
    /// A registry with every metric, `wgkeep_build_info` set.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let peer = &["interface", "public_key"];
        let m = Metrics {
            handshakes: counter(&registry, "wgkeep_handshakes_total", "Handshakes seen per peer.", peer),
            follow_ups: counter(
                &registry,
                "wgkeep_follow_ups_total",
                "Follow-up packets wgkeep made WireGuard send.",
                &["interface", "public_key", "method"],
            ),
            follow_ups_skipped: counter(
                &registry,
                "wgkeep_follow_ups_skipped_total",
                "Follow-ups not sent, by reason (traffic: a packet already passed after the grace period; \
                 expired: the NAT entry was gone already).",
                &["interface", "public_key", "reason"],
            ),
            follow_up_failures: counter(
                &registry,
                "wgkeep_follow_up_failures_total",
                "Follow-ups that failed or were not confirmed by tx_bytes.",
                peer,
            ),
            persistent_keepalive: gauge(
                &registry,
                "wgkeep_peer_persistent_keepalive_seconds",
                "The peer's PersistentKeepalive (0: off).",
                peer,
            ),
            last_handshake: gauge(
                &registry,
                "wgkeep_peer_last_handshake_timestamp_seconds",
                "Unix time of the peer's last handshake (0: never).",
                peer,
            ),
            endpoint_changes: counter(
                &registry,
                "wgkeep_peer_endpoint_changes_total",
                "Changes of the peer's endpoint (after an idle gap: its NAT mapping expired).",
                peer,
            ),
            nat_timeout: {
                let g = prometheus::GaugeVec::new(
                    Opts::new("wgkeep_nat_timeout_seconds", "The NAT timeouts wgkeep assumes."),
                    &["kind"],
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            interface_up: gauge(
                &registry,
                "wgkeep_interface_up",
                "1 while wgkeep is attached to the interface.",
                &["interface"],
            ),
            registry,
        };
        let build = gauge(
            &m.registry,
            "wgkeep_build_info",
            "wgkeep's version.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m
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

    /// Forget a peer's gauges (it was removed); its counters stay.
    pub fn remove_peer(&self, iface: &str, key: &str) {
        let _ = self.persistent_keepalive.remove_label_values(&[iface, key]);
        let _ = self.last_handshake.remove_label_values(&[iface, key]);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to memory");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
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
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
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
            let (status, content_type, body) = respond(&request, &metrics);
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

fn respond(request: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
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
            metrics.render(),
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
        m.handshakes.with_label_values(&["wg0", "k"]).inc();
        m.follow_ups
            .with_label_values(&["wg0", "k", "keepalive-toggle"])
            .inc();
        m.follow_ups_skipped
            .with_label_values(&["wg0", "k", "traffic"])
            .inc();
        m.follow_up_failures
            .with_label_values(&["wg0", "k"])
            .inc_by(0);
        m.persistent_keepalive
            .with_label_values(&["wg0", "k"])
            .set(150);
        m.last_handshake
            .with_label_values(&["wg0", "k"])
            .set(1_800_000_000);
        m.endpoint_changes
            .with_label_values(&["wg0", "k"])
            .inc_by(0);
        let text = m.render();
        for needle in [
            "wgkeep_handshakes_total{interface=\"wg0\",public_key=\"k\"} 1",
            "wgkeep_follow_ups_total{interface=\"wg0\",method=\"keepalive-toggle\",public_key=\"k\"} 1",
            "wgkeep_follow_ups_skipped_total{interface=\"wg0\",public_key=\"k\",reason=\"traffic\"} 1",
            "wgkeep_follow_up_failures_total{interface=\"wg0\",public_key=\"k\"} 0",
            "wgkeep_peer_persistent_keepalive_seconds{interface=\"wg0\",public_key=\"k\"} 150",
            "wgkeep_peer_last_handshake_timestamp_seconds{interface=\"wg0\",public_key=\"k\"} 1800000000",
            "wgkeep_peer_endpoint_changes_total{interface=\"wg0\",public_key=\"k\"} 0",
            "wgkeep_nat_timeout_seconds{kind=\"unreplied\"} 10",
            "wgkeep_nat_timeout_seconds{kind=\"stream\"} 180",
            "wgkeep_nat_timeout_seconds{kind=\"grace\"} 2",
            "wgkeep_build_info{version=\"",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn routes() {
        let m = Metrics::new();
        assert_eq!(respond("GET /healthz HTTP/1.1\r\n\r\n", &m).0, "200 OK");
        assert_eq!(respond("GET /metrics HTTP/1.1\r\n\r\n", &m).0, "200 OK");
        assert_eq!(respond("GET / HTTP/1.1\r\n\r\n", &m).0, "404 Not Found");
        assert_eq!(
            respond("POST /metrics HTTP/1.1\r\n\r\n", &m).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond("", &m).0, "405 Method Not Allowed");
    }
}
