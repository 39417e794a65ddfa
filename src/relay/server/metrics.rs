//! The relay's counters and their Prometheus text exposition, served over
//! plain HTTP on `metrics_listen`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Counters exported as Prometheus metrics (and read by tests and benches).
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Connections refused because the unauthenticated limit was reached.
    pub refused_unauthenticated: AtomicU64,
    /// Sessions created.
    pub sessions_created: AtomicU64,
    /// Sessions paired.
    pub sessions_paired: AtomicU64,
    /// Failed joins (unknown session).
    pub joins_failed: AtomicU64,
    /// Requests refused because the source was locked out.
    pub locked_out: AtomicU64,
    /// CREATEs refused for a bad or missing token.
    pub unauthorized: AtomicU64,
    /// Waiting sessions that expired.
    pub expired: AtomicU64,
    /// Bytes forwarded host → guest.
    pub bytes_host_to_guest: AtomicU64,
    /// Bytes forwarded guest → host.
    pub bytes_guest_to_host: AtomicU64,
    /// Sessions currently paired.
    pub active: AtomicUsize,
    /// Sessions currently waiting.
    pub waiting: AtomicUsize,
    /// Datagrams received by the UDP address service.
    pub udp_requests: AtomicU64,
    /// Address responses sent.
    pub udp_answers: AtomicU64,
    /// Datagrams dropped (malformed, unknown token, or rate-limited).
    pub udp_dropped: AtomicU64,
    /// Of the dropped datagrams, those over their token's rate limit.
    pub udp_rate_limited: AtomicU64,
    /// Live UDP tokens now.
    pub udp_grants: AtomicUsize,
    /// Connections closed at accept, or CREATE/JOIN refused, because the
    /// source holds its share (`spec/relay.md` §9.6).
    pub refused_source_share: AtomicU64,
    /// Connections closed because no byte arrived before `first_byte_timeout_secs`.
    pub first_byte_timeouts: AtomicU64,
    /// Guesses that waited for their source's slot (tarpit).
    pub tarpitted: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let c = |n: &str, h: &str, v: u64| {
            format!(
                "# HELP xtcp_relay_{n} {h}\n# TYPE xtcp_relay_{n} counter\nxtcp_relay_{n} {v}\n"
            )
        };
        let g = |n: &str, h: &str, v: usize| {
            format!("# HELP xtcp_relay_{n} {h}\n# TYPE xtcp_relay_{n} gauge\nxtcp_relay_{n} {v}\n")
        };
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            c(
                "connections_total",
                "TCP connections accepted",
                r(&self.connections),
            ),
            c(
                "refused_unauthenticated_total",
                "connections refused at the unauthenticated limit",
                r(&self.refused_unauthenticated),
            ),
            c(
                "sessions_created_total",
                "sessions created",
                r(&self.sessions_created),
            ),
            c(
                "sessions_paired_total",
                "sessions paired",
                r(&self.sessions_paired),
            ),
            c(
                "joins_failed_total",
                "joins for an unknown or expired session",
                r(&self.joins_failed),
            ),
            c(
                "locked_out_total",
                "requests refused because the source is locked out",
                r(&self.locked_out),
            ),
            c(
                "unauthorized_total",
                "session creations refused for the token",
                r(&self.unauthorized),
            ),
            c(
                "sessions_expired_total",
                "waiting sessions whose TTL expired",
                r(&self.expired),
            ),
            c(
                "bytes_host_to_guest_total",
                "bytes forwarded host to guest",
                r(&self.bytes_host_to_guest),
            ),
            c(
                "bytes_guest_to_host_total",
                "bytes forwarded guest to host",
                r(&self.bytes_guest_to_host),
            ),
            g(
                "sessions_active",
                "paired sessions",
                self.active.load(Ordering::Relaxed),
            ),
            g(
                "sessions_waiting",
                "sessions waiting for their guest",
                self.waiting.load(Ordering::Relaxed),
            ),
            c(
                "udp_requests_total",
                "datagrams received by the UDP address service",
                r(&self.udp_requests),
            ),
            c(
                "udp_answers_total",
                "UDP address responses sent",
                r(&self.udp_answers),
            ),
            c(
                "udp_dropped_total",
                "UDP datagrams dropped (malformed, unknown token, rate limit)",
                r(&self.udp_dropped),
            ),
            c(
                "udp_rate_limited_total",
                "UDP requests dropped by their token's rate limit",
                r(&self.udp_rate_limited),
            ),
            g(
                "udp_grants_active",
                "live UDP address service tokens",
                self.udp_grants.load(Ordering::Relaxed),
            ),
            c(
                "refused_source_share_total",
                "connections or requests refused because their source holds its share",
                r(&self.refused_source_share),
            ),
            c(
                "first_byte_timeouts_total",
                "connections closed before their first byte arrived",
                r(&self.first_byte_timeouts),
            ),
            c(
                "guesses_tarpitted_total",
                "guesses that waited for their source's slot",
                r(&self.tarpitted),
            ),
        ]
        .concat()
    }
}

/// Answer every HTTP request on `l` with the current metrics.
pub(super) async fn serve_metrics(l: TcpListener, m: Arc<Metrics>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let m = m.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut req)).await;
            let body = m.render();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_the_udp_counters() {
        let m = Metrics::default();
        m.udp_requests.store(3, Ordering::Relaxed);
        m.udp_dropped.store(1, Ordering::Relaxed);
        let t = m.render();
        for line in [
            "xtcp_relay_udp_requests_total 3",
            "xtcp_relay_udp_answers_total 0",
            "xtcp_relay_udp_dropped_total 1",
            "xtcp_relay_udp_rate_limited_total 0",
            "xtcp_relay_udp_grants_active 0",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing:\n{t}");
        }
    }
}
