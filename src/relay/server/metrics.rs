//! The relay's metrics (`spec/relay.md` §9.4): counters, gauges and
//! histograms in a `prometheus_client` registry, read by tests and benches
//! through [`Metrics`]' fields and served in the OpenMetrics text format by a
//! bounded HTTP endpoint on `metrics_listen`.
//!
//! Every value has one home: a field's `Counter` or `Gauge` is the very
//! metric the registry encodes (a clone shares its atomic). What another
//! table already counts (tracked sources, unauthenticated connections) is
//! read at scrape time from that table's O(1) counters, never by a scan.

use crate::relay::admission::{GuessTable, SourceShares};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connections to the metrics endpoint served at once; more are closed at accept.
pub const METRICS_MAX_CONNECTIONS: usize = 16;
/// Bytes of request (request line and headers) read at most.
pub const METRICS_MAX_REQUEST: usize = 8192;
/// Time one metrics connection may take, from accept to the end of the answer.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bounds (seconds) of the TLS handshake histogram's buckets: 1 ms to
/// the default handshake timeout (10 s).
const HANDSHAKE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds (seconds) of the pairing histogram's buckets: a pairing is a
/// few frames on two established connections, unless the guess was tarpitted.
const PAIRING_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// Why the relay refused a connection or request: the `reason` label of
/// `xtcp_relay_refused_total` (`spec/relay.md` §9.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Closed at accept: `max_unauthenticated` connections are unauthenticated.
    UnauthenticatedLimit,
    /// Closed at accept, or `OVER_CAPACITY`: the source holds its share (§9.6).
    SourceShare,
    /// Closed: no byte within `first_byte_timeout_secs`.
    FirstByteTimeout,
    /// `TIMEOUT`: no first frame within `handshake_timeout_secs`.
    HandshakeTimeout,
    /// Closed: the TLS handshake failed or the client left before its first frame.
    HandshakeFailed,
    /// `MALFORMED`: the first frame is unparseable or not CREATE/JOIN.
    Malformed,
    /// `UNSUPPORTED_VERSION`: another version, or no ALPN `xtcp-relay/1`.
    UnsupportedVersion,
    /// `LOCKED_OUT`: the source is throttled and its guess queue is full (§9.2).
    LockedOut,
    /// `UNAUTHORIZED`: a CREATE without a valid operator token.
    Unauthorized,
    /// `UNKNOWN_SESSION`: a JOIN for no waiting session.
    UnknownSession,
    /// `SESSION_EXISTS`: a CREATE for a session that already waits.
    SessionExists,
    /// `OVER_CAPACITY`: `max_sessions` or `max_waiting` is reached.
    OverCapacity,
    /// `SHUTTING_DOWN`: a request that arrived while the relay drains.
    ShuttingDown,
    /// `OVER_CAPACITY`: the host's operator token holds its quota (§9.1).
    TokenQuota,
}

impl RefusalReason {
    /// Every reason, in label order of the documentation.
    pub const ALL: [RefusalReason; 14] = [
        RefusalReason::UnauthenticatedLimit,
        RefusalReason::SourceShare,
        RefusalReason::FirstByteTimeout,
        RefusalReason::HandshakeTimeout,
        RefusalReason::HandshakeFailed,
        RefusalReason::Malformed,
        RefusalReason::UnsupportedVersion,
        RefusalReason::LockedOut,
        RefusalReason::Unauthorized,
        RefusalReason::UnknownSession,
        RefusalReason::SessionExists,
        RefusalReason::OverCapacity,
        RefusalReason::ShuttingDown,
        RefusalReason::TokenQuota,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::UnauthenticatedLimit => "unauthenticated_limit",
            RefusalReason::SourceShare => "source_share",
            RefusalReason::FirstByteTimeout => "first_byte_timeout",
            RefusalReason::HandshakeTimeout => "handshake_timeout",
            RefusalReason::HandshakeFailed => "handshake_failed",
            RefusalReason::Malformed => "malformed",
            RefusalReason::UnsupportedVersion => "unsupported_version",
            RefusalReason::LockedOut => "locked_out",
            RefusalReason::Unauthorized => "unauthorized",
            RefusalReason::UnknownSession => "unknown_session",
            RefusalReason::SessionExists => "session_exists",
            RefusalReason::OverCapacity => "over_capacity",
            RefusalReason::ShuttingDown => "shutting_down",
            RefusalReason::TokenQuota => "token_quota",
        }
    }

    fn index(self) -> usize {
        RefusalReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// The relay's metrics, exported on `metrics_listen` and read by tests and
/// benches (`.get()`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// TCP connections accepted.
    pub connections: Counter,
    /// Sessions created.
    pub sessions_created: Counter,
    /// Sessions paired.
    pub sessions_paired: Counter,
    /// Waiting sessions that expired.
    pub expired: Counter,
    /// Bytes forwarded host → guest, added per forwarded chunk.
    pub bytes_host_to_guest: Counter,
    /// Bytes forwarded guest → host, added per forwarded chunk.
    pub bytes_guest_to_host: Counter,
    /// Sessions currently paired.
    pub active: Gauge,
    /// Sessions currently waiting.
    pub waiting: Gauge,
    /// Datagrams received by the UDP address service.
    pub udp_requests: Counter,
    /// Address responses sent.
    pub udp_answers: Counter,
    /// Datagrams dropped (malformed, unknown token, or rate-limited).
    pub udp_dropped: Counter,
    /// Of the dropped datagrams, those over their token's rate limit.
    pub udp_rate_limited: Counter,
    /// Live UDP tokens now.
    pub udp_grants: Gauge,
    /// Guesses that waited for their source's slot (tarpit).
    pub tarpitted: Counter,
    /// Seconds from accept to the first frame (TLS handshake included).
    pub handshake_seconds: Histogram,
    /// Seconds from the guest's JOIN to `PAIRED` sent to both sides.
    pub pairing_seconds: Histogram,
    /// One counter per [`RefusalReason`], children of one labelled family.
    refused: [Counter; RefusalReason::ALL.len()],
}

/// Register a new counter under `name` (the encoder appends `_total`).
fn counter(r: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    r.register(name, help, c.clone());
    c
}

/// Register a new gauge under `name`.
fn gauge(r: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    r.register(name, help, g.clone());
    g
}

/// Register a new histogram in seconds under `name` (+ `_seconds`).
fn seconds(r: &mut Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::new(buckets.iter().copied());
    r.register_with_unit(name, help, Unit::Seconds, h.clone());
    h
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// All metrics at zero, registered under the prefix `xtcp_relay`, with
    /// `xtcp_relay_build_info{version="…"} 1`.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("xtcp_relay");
        r.register(
            "build",
            "the relay's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        r.register(
            "refused",
            "connections and requests refused, by reason",
            family.clone(),
        );
        let refused =
            RefusalReason::ALL.map(|x| family.get_or_create_owned(&[("reason", x.label())]));
        Metrics {
            connections: counter(&mut r, "connections", "TCP connections accepted"),
            sessions_created: counter(&mut r, "sessions_created", "sessions created"),
            sessions_paired: counter(&mut r, "sessions_paired", "sessions paired"),
            expired: counter(
                &mut r,
                "sessions_expired",
                "waiting sessions whose TTL expired",
            ),
            bytes_host_to_guest: counter(
                &mut r,
                "bytes_host_to_guest",
                "bytes forwarded host to guest",
            ),
            bytes_guest_to_host: counter(
                &mut r,
                "bytes_guest_to_host",
                "bytes forwarded guest to host",
            ),
            active: gauge(&mut r, "sessions_active", "paired sessions"),
            waiting: gauge(
                &mut r,
                "sessions_waiting",
                "sessions waiting for their guest",
            ),
            udp_requests: counter(
                &mut r,
                "udp_requests",
                "datagrams received by the UDP address service",
            ),
            udp_answers: counter(&mut r, "udp_answers", "UDP address responses sent"),
            udp_dropped: counter(
                &mut r,
                "udp_dropped",
                "UDP datagrams dropped (malformed, unknown token, rate limit)",
            ),
            udp_rate_limited: counter(
                &mut r,
                "udp_rate_limited",
                "UDP requests dropped by their token's rate limit",
            ),
            udp_grants: gauge(
                &mut r,
                "udp_grants_active",
                "live UDP address service tokens",
            ),
            tarpitted: counter(
                &mut r,
                "guesses_tarpitted",
                "guesses that waited for their source's slot",
            ),
            handshake_seconds: seconds(
                &mut r,
                "handshake",
                "time from accept to the first frame, TLS handshake included",
                &HANDSHAKE_BUCKETS,
            ),
            pairing_seconds: seconds(
                &mut r,
                "pairing",
                "time from the guest's JOIN to PAIRED sent to both sides",
                &PAIRING_BUCKETS,
            ),
            refused,
            registry: r,
        }
    }

    /// Count a refusal.
    pub fn refuse(&self, reason: RefusalReason) {
        if let Some(c) = self.refused.get(reason.index()) {
            c.inc();
        }
    }

    /// Refusals so far for `reason`.
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused.get(reason.index()).map_or(0, |c| c.get())
    }

    /// Also export what the relay's tables count: unauthenticated
    /// connections, sources holding shares, the guess table.
    pub(super) fn watch(&mut self, live: Live) {
        self.registry.register_collector(Box::new(live));
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, nor can the collectors' reads.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Values the relay's tables keep anyway, read at scrape time in O(1).
#[derive(Debug)]
pub(super) struct Live {
    pub(super) unauth: Arc<Semaphore>,
    pub(super) max_unauth: usize,
    pub(super) shares: Arc<SourceShares>,
    pub(super) guesses: Arc<GuessTable>,
}

fn const_gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn const_counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for Live {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let unauth = self
            .max_unauth
            .saturating_sub(self.unauth.available_permits());
        const_gauge(
            &mut e,
            "connections_unauthenticated",
            "connections before their first frame (or waiting for a guess slot)",
            unauth as u64,
        )?;
        const_gauge(
            &mut e,
            "share_sources",
            "sources holding unauthenticated connections, waiting or paired sessions",
            self.shares.sources() as u64,
        )?;
        const_gauge(
            &mut e,
            "guess_sources_tracked",
            "sources remembered for failed guesses",
            self.guesses.len() as u64,
        )?;
        const_gauge(
            &mut e,
            "guesses_queued",
            "guesses of throttled sources waiting for their slot",
            self.guesses.queued(),
        )?;
        const_counter(
            &mut e,
            "guess_throttles",
            "times a source became throttled",
            self.guesses.throttles(),
        )?;
        const_counter(
            &mut e,
            "guess_sources_evicted",
            "tracked sources evicted to make room",
            self.guesses.evicted(),
        )
    }
}

/// Serve `GET /metrics` on `l`: at most [`METRICS_MAX_CONNECTIONS`] at
/// once (more are closed at accept), each read at most
/// [`METRICS_MAX_REQUEST`] bytes and closed after [`METRICS_TIMEOUT`].
pub(super) async fn serve_metrics(l: TcpListener, m: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(METRICS_MAX_CONNECTIONS));
    loop {
        let s = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        //= spec/relay.md#RL-MET-1
        //# The metrics endpoint MUST serve at most 16 connections at once
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(s);
            continue;
        };
        let m = m.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut s = s;
            //= spec/relay.md#RL-MET-2
            //# and MUST close a connection 5 s after its accept
            let _ = tokio::time::timeout(METRICS_TIMEOUT, answer(&mut s, &m)).await;
        });
    }
}

/// Read one request (up to the end of its headers) and answer it.
async fn answer(s: &mut TcpStream, m: &Metrics) -> io::Result<()> {
    let mut buf = vec![0u8; METRICS_MAX_REQUEST];
    let mut len = 0;
    let end = loop {
        if let Some(end) = head_end(buf.get(..len).unwrap_or(&[])) {
            break end;
        }
        //= spec/relay.md#RL-MET-2
        //# The endpoint MUST read at most 8192 bytes of request
        let Some(free) = buf.get_mut(len..).filter(|f| !f.is_empty()) else {
            return respond(s, "431 Request Header Fields Too Large", "").await;
        };
        let n = s.read(free).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    };
    //= spec/relay.md#RL-MET-3
    //# It MUST answer only `GET /metrics` with the metrics
    if is_get_metrics(buf.get(..end).unwrap_or(&[])) {
        respond(s, "200 OK", &m.render()).await
    } else {
        respond(s, "404 Not Found", "").await
    }
}

/// Where the request's headers end (after the empty line), if they do.
fn head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether the request line is `GET /metrics` (a query string allowed).
fn is_get_metrics(head: &[u8]) -> bool {
    let line = head.split(|&c| c == b'\n').next().unwrap_or(&[]);
    let mut parts = line.split(|&c| c == b' ').filter(|p| !p.is_empty());
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|&c| c == b'?').next().unwrap_or(&[]));
    method == Some(b"GET".as_slice()) && path == Some(b"/metrics".as_slice())
}

/// Send a complete response and close.
async fn respond(s: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let kind = if body.is_empty() {
        "text/plain; charset=utf-8"
    } else {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_counters_gauges_and_build_info() {
        let m = Metrics::default();
        m.udp_requests.inc_by(3);
        m.udp_dropped.inc();
        m.refuse(RefusalReason::LockedOut);
        let t = m.render();
        for line in [
            "xtcp_relay_udp_requests_total 3",
            "xtcp_relay_udp_answers_total 0",
            "xtcp_relay_udp_dropped_total 1",
            "xtcp_relay_udp_rate_limited_total 0",
            "xtcp_relay_udp_grants_active 0",
            "xtcp_relay_refused_total{reason=\"locked_out\"} 1",
            "xtcp_relay_refused_total{reason=\"unknown_session\"} 0",
            "xtcp_relay_handshake_seconds_count 0",
            concat!(
                "xtcp_relay_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
            "# EOF",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing:\n{t}");
        }
        assert_eq!(m.refused(RefusalReason::LockedOut), 1);
    }

    #[test]
    fn only_get_metrics_is_served() {
        assert!(is_get_metrics(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n"));
        assert!(is_get_metrics(b"GET /metrics?x=1 HTTP/1.0\n\n"));
        assert!(!is_get_metrics(b"POST /metrics HTTP/1.1\r\n\r\n"));
        assert!(!is_get_metrics(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!is_get_metrics(b"GET /metricsx HTTP/1.1\r\n\r\n"));
        assert!(!is_get_metrics(b""));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: x\r\n"), None);
    }
}
