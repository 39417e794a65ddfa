//! The relay server (`spec/relay.md`): TLS 1.3 control channel, session
//! registration by operator token, pairing by `rendezvous_id`, lockout of
//! brute-forcing sources, then blind forwarding of the paired TCP streams.
//!
//! ```text
//!  accept ─► TLS handshake ─► CREATE ─► token ok? ─► CREATED ─► wait (TTL) ─┐
//!         (unauth. limit,     JOIN ───► locked? ─► waiting? ─────────────────┤
//!          handshake timeout)                                                ▼
//!                                 PAIRED to both, close_notify both ways, forward
//! ```
//!
//! One task per connection; the host's task does the pairing and forwarding,
//! so a session is exactly one task once paired. One more task serves the UDP
//! address service (`spec/relay.md` §12): it answers "your public UDP address
//! is …" to requests that carry a token granted in a live session's `PAIRED`.

use super::admission::{GuessRules, GuessTable, Kind, Share, SourceKey, SourceShares, Verdict};
use super::ctl::{CtlChannel, CtlError};
use super::forward::{self, Activity, Counters, Mode, RateLimiter};
use super::refusals::{Refusal, Refusals, KINDS};
use proto::relay::udp_service;
use proto::relay::wire::{ErrorCode, Frame, UdpGrant, VERSION};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::time::Instant;

/// The relay's settings (TOML keys are the field names; durations in seconds,
/// fractions allowed). See `spec/relay.md` §8 for every limit and timeout.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// TLS listen address.
    pub listen: SocketAddr,
    /// PEM certificate chain file.
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key file.
    pub key: Option<std::path::PathBuf>,
    /// Generate a self-signed certificate at start (prints its fingerprint).
    pub self_signed: bool,
    /// Directory for state kept across restarts: the self-signed certificate
    /// and key, so the fingerprint clients pin survives a restart. Created
    /// with mode 0700.
    pub state_dir: Option<std::path::PathBuf>,
    /// SHA-256 hashes (hex) of the operator tokens that may create sessions.
    pub token_hashes: Vec<String>,
    /// Let hosts create sessions without a token (only if set explicitly).
    pub allow_anonymous_hosts: bool,
    /// How long a created session waits for its guest.
    pub waiting_ttl_secs: f64,
    /// A paired session with no byte in either direction for this long is closed.
    pub idle_timeout_secs: f64,
    /// TLS handshake plus the first frame must finish within this.
    pub handshake_timeout_secs: f64,
    /// Paired sessions at most.
    pub max_sessions: usize,
    /// Waiting sessions at most.
    pub max_waiting: usize,
    /// Connections that have not yet sent a valid first frame, at most.
    pub max_unauthenticated: usize,
    /// Optional bytes/s limit per paired session (both directions together).
    pub rate_limit_bytes_per_sec: Option<u64>,
    /// Failed joins from one source address before it is locked out.
    pub lockout_failures: u32,
    /// How long a locked-out source is refused (and the window failures count in).
    pub lockout_secs: f64,
    /// Per-direction forwarding buffer (pipe or user-space buffer), bytes.
    pub forward_buffer: usize,
    /// Use splice(2) (Linux) instead of user-space copies.
    pub splice: bool,
    /// On SIGTERM, paired sessions may run this long before they are cut.
    pub drain_secs: f64,
    /// Audit log path (JSON lines); "-" is standard output.
    pub audit_log: Option<std::path::PathBuf>,
    /// Prometheus text metrics on this HTTP address.
    pub metrics_listen: Option<SocketAddr>,
    /// UDP address service; `None` disables it (`spec/relay.md` §12). In TOML,
    /// an address string or `"off"`.
    #[serde(deserialize_with = "de_udp_listen")]
    pub udp_listen: Option<SocketAddr>,
    /// IPv4 addresses are one source per this many leading bits (`spec/relay.md` §9.6).
    pub source_prefix_v4: u8,
    /// IPv6 addresses are one source per this many leading bits (a /64 by default).
    pub source_prefix_v6: u8,
    /// Unauthenticated connections (before the first frame, or waiting for a
    /// guess slot) one source may hold.
    pub max_unauthenticated_per_source: usize,
    /// Waiting sessions one source may hold.
    pub max_waiting_per_source: usize,
    /// Paired-session connections (host or guest side) one source may hold.
    pub max_sessions_per_source: usize,
    /// The first byte of the TLS handshake must arrive within this after accept.
    pub first_byte_timeout_secs: f64,
    /// After `lockout_failures`, one guess per this many seconds per source.
    pub guess_interval_secs: f64,
    /// After `lockout_failures`, guesses one source may have waiting for their slot.
    pub guess_queue_per_source: usize,
    /// Sources tracked for failed guesses at most (least recently failed evicted).
    pub max_tracked_sources: usize,
    /// Repeated refusals from one source are logged as one line per this interval.
    pub log_interval_secs: f64,
}

/// Parse a `udp_listen` value: a socket address, or `off` for none.
pub fn parse_udp_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("udp_listen: {s:?} is neither an address (ip:port) nor \"off\""))
}

fn de_udp_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_udp_listen(&s).map_err(serde::de::Error::custom)
}

/// The default UDP address service port (DESIGN.md "Direct path and handover").
pub const DEFAULT_UDP_PORT: u16 = 15000;

/// Answers per token per [`UDP_RATE_WINDOW`] (`spec/relay.md` §12.4).
pub const UDP_ANSWERS_PER_WINDOW: u32 = 20;
/// The UDP address service's rate-limit window.
pub const UDP_RATE_WINDOW: Duration = Duration::from_secs(10);

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 443)),
            cert: None,
            key: None,
            self_signed: false,
            state_dir: None,
            token_hashes: Vec::new(),
            allow_anonymous_hosts: false,
            waiting_ttl_secs: 600.0,
            idle_timeout_secs: 3600.0,
            handshake_timeout_secs: 10.0,
            max_sessions: 100_000,
            max_waiting: 100_000,
            max_unauthenticated: 1024,
            rate_limit_bytes_per_sec: None,
            lockout_failures: 5,
            lockout_secs: 300.0,
            forward_buffer: 64 * 1024,
            splice: true,
            drain_secs: 30.0,
            audit_log: None,
            metrics_listen: None,
            udp_listen: Some(SocketAddr::from(([0, 0, 0, 0], DEFAULT_UDP_PORT))),
            source_prefix_v4: 32,
            source_prefix_v6: 64,
            max_unauthenticated_per_source: 32,
            max_waiting_per_source: 1024,
            max_sessions_per_source: 10_000,
            first_byte_timeout_secs: 3.0,
            guess_interval_secs: 1.0,
            guess_queue_per_source: 4,
            max_tracked_sources: 1 << 18,
            log_interval_secs: 60.0,
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Longest configurable duration: one year. Far below what `Instant`
/// arithmetic can hold, so no configured value can overflow a clock.
pub const MAX_CONFIG_SECS: f64 = 365.0 * 86_400.0;

/// A duration key: finite, within `min..=MAX_CONFIG_SECS` (`min` = 0 allows zero).
fn secs(v: f64, name: &str, allow_zero: bool) -> Result<Duration, ConfigError> {
    let ok = v.is_finite() && v <= MAX_CONFIG_SECS && (v > 0.0 || (allow_zero && v == 0.0));
    if !ok {
        let lo = if allow_zero { "0 <=" } else { "0 <" };
        return Err(ConfigError(format!(
            "{name}: {v} is out of range ({lo} seconds <= {MAX_CONFIG_SECS})"
        )));
    }
    Duration::try_from_secs_f64(v)
        .map_err(|_| ConfigError(format!("{name}: {v} is not a valid duration in seconds")))
}

/// A count key within `lo..=hi`.
fn count<T: Copy + Into<u64>>(v: T, name: &str, lo: u64, hi: u64) -> Result<(), ConfigError> {
    let x: u64 = v.into();
    if (lo..=hi).contains(&x) {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{name}: {x} is out of range ({lo}..={hi})"
        )))
    }
}

/// Validated runtime limits.
#[derive(Clone, Debug)]
struct Limits {
    waiting_ttl: Duration,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    first_byte_timeout: Duration,
    lockout: Duration,
    guess_interval: Duration,
    drain: Duration,
    log_interval: Duration,
}

/// Upper bound of the session and connection counts: far above what one
/// process can hold, low enough that no sum or product of them overflows.
pub const MAX_CONFIG_COUNT: u64 = 1 << 24;

impl RelayConfig {
    fn limits(&self) -> Result<Limits, ConfigError> {
        //= spec/relay.md#8-timeouts-and-limits
        //# A value out of range fails validation (and `--check-config`, exit 2)
        //# with a message naming the key
        let l = Limits {
            waiting_ttl: secs(self.waiting_ttl_secs, "waiting_ttl_secs", false)?,
            idle_timeout: secs(self.idle_timeout_secs, "idle_timeout_secs", false)?,
            handshake_timeout: secs(self.handshake_timeout_secs, "handshake_timeout_secs", false)?,
            first_byte_timeout: secs(
                self.first_byte_timeout_secs,
                "first_byte_timeout_secs",
                false,
            )?,
            lockout: secs(self.lockout_secs, "lockout_secs", false)?,
            guess_interval: secs(self.guess_interval_secs, "guess_interval_secs", false)?,
            drain: secs(self.drain_secs, "drain_secs", true)?,
            log_interval: secs(self.log_interval_secs, "log_interval_secs", false)?,
        };
        if let Some(r) = self.rate_limit_bytes_per_sec {
            count(r, "rate_limit_bytes_per_sec", 1, 1 << 40)?;
        }
        count(self.lockout_failures, "lockout_failures", 1, 1_000_000)?;
        let m = MAX_CONFIG_COUNT;
        let us = |v: usize| v as u64;
        count(
            us(self.max_unauthenticated),
            "max_unauthenticated",
            1,
            1 << 20,
        )?;
        count(us(self.max_waiting), "max_waiting", 1, m)?;
        count(us(self.max_sessions), "max_sessions", 1, m)?;
        count(
            us(self.max_unauthenticated_per_source),
            "max_unauthenticated_per_source",
            1,
            1 << 20,
        )?;
        count(
            us(self.max_waiting_per_source),
            "max_waiting_per_source",
            1,
            m,
        )?;
        count(
            us(self.max_sessions_per_source),
            "max_sessions_per_source",
            1,
            m,
        )?;
        count(
            us(self.guess_queue_per_source),
            "guess_queue_per_source",
            1,
            1024,
        )?;
        count(
            us(self.max_tracked_sources),
            "max_tracked_sources",
            16,
            1 << 22,
        )?;
        count(self.source_prefix_v4, "source_prefix_v4", 0, 32)?;
        count(self.source_prefix_v6, "source_prefix_v6", 0, 128)?;
        count(us(self.forward_buffer), "forward_buffer", 4096, 1 << 20)?;
        if let Some(u) = self.udp_listen {
            let unicast = match u.ip() {
                IpAddr::V4(ip) => !ip.is_multicast() && !ip.is_broadcast(),
                IpAddr::V6(ip) => !ip.is_multicast(),
            };
            if !unicast {
                return Err(ConfigError(format!(
                    "udp_listen: {u} is not a unicast address (use \"off\" to disable)"
                )));
            }
        }
        Ok(l)
    }

    /// Check everything that does not need files or sockets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits()?;
        parse_token_hashes(&self.token_hashes)?;
        Ok(())
    }
}

/// SHA-256 of an operator token, hex, as stored in the config.
pub fn token_hash(token: &str) -> String {
    crate::tls::hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn parse_token_hashes(v: &[String]) -> Result<Vec<[u8; 32]>, ConfigError> {
    v.iter()
        .map(|h| {
            crate::tls::unhex(h)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| ConfigError(format!("token hash {h:?} is not 64 hex digits")))
        })
        .collect()
}

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

/// Where audit events go.
pub type AuditSink = Arc<Mutex<Box<dyn Write + Send>>>;

/// A short, non-reversible session label for logs: logging the rendezvous id
/// itself would let anyone who reads the log join a waiting session.
fn session_label(rid: &[u8; 16]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    //= spec/relay.md#RL-AUDIT-1
    //# The log MUST NOT contain `rendezvous_id` itself
    ctx.update(b"xtcp relay audit label");
    ctx.update(rid);
    crate::tls::hex(&ctx.finish().as_ref()[..8])
}

/// Sources whose refusals are counted one by one per log interval; beyond,
/// they share one line (`spec/relay.md` §9.3).
const MAX_LOGGED_SOURCES: usize = 16_384;

struct Waiting {
    tx: oneshot::Sender<Guest>,
}

/// A guest whose JOIN found its session, handed to the host's task.
struct Guest {
    ctl: CtlChannel,
    addr: SocketAddr,
    /// The guest source's unit of its paired share.
    share: Share,
}

/// A live UDP address service token: its rate-limit window
/// (`spec/relay.md` §12.4). Present in the table exactly while its session lives.
struct UdpToken {
    window_start: Instant,
    answers: u32,
}

/// The two tokens of one paired session. Dropping it (however the session
/// ends, including its task being cancelled) removes them from the table.
struct UdpGrants {
    shared: Arc<Shared>,
    tokens: [[u8; 16]; 2],
}

impl Drop for UdpGrants {
    fn drop(&mut self) {
        //= spec/relay.md#123-tokens-and-their-lifetime
        //# Then both of the session's tokens are removed.
        let mut t = self
            .shared
            .udp_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for tok in &self.tokens {
            t.remove(tok);
        }
        self.shared
            .metrics
            .udp_grants
            .store(t.len(), Ordering::Relaxed);
    }
}

struct Shared {
    cfg: RelayConfig,
    limits: Limits,
    tls: RwLock<Arc<rustls::ServerConfig>>,
    tokens: RwLock<Vec<[u8; 32]>>,
    waiting: Mutex<HashMap<[u8; 16], Waiting>>,
    /// What each source holds now (`spec/relay.md` §9.6).
    shares: Arc<SourceShares>,
    /// Failed guesses per source (`spec/relay.md` §9.2).
    guesses: Arc<GuessTable>,
    /// Refusals aggregated per source and interval (`spec/relay.md` §9.3).
    refusals: Refusals,
    /// Waiting sessions ending now (see [`Finishing`]).
    finishing: AtomicUsize,
    /// Live UDP address service tokens, at most 2 × `max_sessions`.
    udp_tokens: Mutex<HashMap<[u8; 16], UdpToken>>,
    /// The bound UDP address service port; `None` when the service is off.
    udp_port: Option<u16>,
    rng: ring::rand::SystemRandom,
    unauth: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    audit: Option<AuditSink>,
    /// 0 = running, 1 = draining (no new sessions), 2 = abort everything.
    phase: watch::Sender<u8>,
}

/// A waiting session's last steps (its final frame, or pairing) in
/// progress; a drain waits for them (`spec/relay.md` §9.5).
struct Finishing(Arc<Shared>);

impl Finishing {
    fn new(shared: &Arc<Shared>) -> Finishing {
        shared.finishing.fetch_add(1, Ordering::Relaxed);
        Finishing(shared.clone())
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        self.0.finishing.fetch_sub(1, Ordering::Relaxed);
    }
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORT: u8 = 2;

impl Shared {
    fn audit(
        &self,
        event: &str,
        label: Option<&str>,
        peer: Option<SocketAddr>,
        extra: serde_json::Value,
    ) {
        // Every audit event is also a structured log event.
        tracing::info!(
            event,
            session = label.unwrap_or("-"),
            peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
            detail = %extra,
        );
        let Some(sink) = &self.audit else { return };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut v = serde_json::json!({ "ts": ts, "event": event });
        if let Some(l) = label {
            v["session"] = serde_json::Value::from(l);
        }
        if let Some(p) = peer {
            v["peer"] = serde_json::Value::from(p.to_string());
        }
        if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            obj.extend(extra);
        }
        // One write per event: a queued writer (`AuditFile`) takes it as one line.
        let line = format!("{v}\n");
        if let Ok(mut w) = sink.lock() {
            let _ = w.write_all(line.as_bytes());
            let _ = w.flush();
        }
    }

    /// Log a refusal: in full if it is the first of its kind from its
    /// source in this interval, else only counted (`spec/relay.md` §9.3).
    fn refusal(&self, peer: SocketAddr, kind: Refusal, extra: serde_json::Value) {
        if self.refusals.record(self.source(peer.ip()), kind) {
            self.audit(kind.event(), None, Some(peer), extra);
        }
    }

    /// End a log interval: one `refusals` line per source with suppressed refusals.
    fn flush_refusals(&self) {
        const NAMES: [&str; KINDS] = [
            "refused_source_share",
            "join_failed",
            "create_refused",
            "refused_locked_out",
            "refused_over_source_share",
        ];
        for (source, counts) in self.refusals.take() {
            let mut v = serde_json::json!({
                "source": source.map_or_else(|| "*".to_string(), |k| k.addr().to_string()),
                "interval_secs": self.limits.log_interval.as_secs_f64(),
            });
            for (name, n) in NAMES.iter().zip(counts) {
                if n > 0 {
                    v[*name] = serde_json::Value::from(n);
                }
            }
            self.audit("refusals", None, None, v);
        }
    }

    /// The admission key of an address.
    fn source(&self, ip: IpAddr) -> SourceKey {
        SourceKey::new(ip, self.cfg.source_prefix_v4, self.cfg.source_prefix_v6)
    }

    /// Draw and register the UDP address service tokens of a session being
    /// paired (host's, guest's). `None` (PAIRED without a grant) if the service
    /// is off, the table is full or the CSPRNG fails (`spec/relay.md` §12.3).
    fn grant(self: &Arc<Self>) -> Option<(UdpGrants, [UdpGrant; 2])> {
        let port = self.udp_port?;
        let mut tokens = [[0u8; 16]; 2];
        for t in &mut tokens {
            ring::rand::SecureRandom::fill(&self.rng, t).ok()?;
        }
        if tokens[0] == tokens[1] {
            return None;
        }
        {
            let mut table = self.udp_tokens.lock().unwrap_or_else(|p| p.into_inner());
            //= spec/relay.md#123-tokens-and-their-lifetime
            //# The table holds at most 2 × `max_sessions` tokens.
            if table.len() + 2 > self.cfg.max_sessions.saturating_mul(2)
                || tokens.iter().any(|t| table.contains_key(t))
            {
                return None;
            }
            let now = Instant::now();
            for t in tokens {
                table.insert(
                    t,
                    UdpToken {
                        window_start: now,
                        answers: 0,
                    },
                );
            }
            self.metrics
                .udp_grants
                .store(table.len(), Ordering::Relaxed);
        }
        Some((
            UdpGrants {
                shared: self.clone(),
                tokens,
            },
            tokens.map(|token| UdpGrant { port, token }),
        ))
    }

    /// Whether a request with this token may be answered now: the token is
    /// live and within its rate limit (`spec/relay.md` §12.4).
    fn udp_admit(&self, token: &[u8; 16]) -> Admit {
        let mut table = self.udp_tokens.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = table.get_mut(token) else {
            return Admit::Unknown;
        };
        let now = Instant::now();
        if now.duration_since(t.window_start) >= UDP_RATE_WINDOW {
            t.window_start = now;
            t.answers = 0;
        }
        //= spec/relay.md#124-processing-and-rate-limit
        //# at most 20 answers (`UDP_ANSWERS_PER_WINDOW`) per 10 s window
        if t.answers >= UDP_ANSWERS_PER_WINDOW {
            return Admit::RateLimited;
        }
        t.answers += 1;
        Admit::Answer
    }
}

/// What the UDP address service does with a well-formed request.
enum Admit {
    Answer,
    Unknown,
    RateLimited,
}

/// The UDP address service (`spec/relay.md` §12): answer authenticated,
/// rate-limited requests with their source address; drop everything else
/// silently. Requests are handled one at a time, in arrival order.
async fn udp_loop(sock: UdpSocket, shared: Arc<Shared>) {
    // One byte more than a request: recv truncates silently, so a longer
    // datagram must read as REQUEST_LEN + 1 bytes (refused), never as a
    // valid-looking 48.
    let mut buf = [0u8; udp_service::REQUEST_LEN + 1];
    let m = &shared.metrics;
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // E.g. an ICMP error reported on the socket: nothing to do
                // but go on (yield so a persistent error cannot starve others).
                tracing::debug!("udp address service: {e}");
                tokio::task::yield_now().await;
                continue;
            }
        };
        m.udp_requests.fetch_add(1, Ordering::Relaxed);
        let admit = match udp_service::parse_request(buf.get(..n).unwrap_or(&[])) {
            Ok(req) => match shared.udp_admit(&req.token) {
                Admit::Answer => Some(req.nonce),
                Admit::Unknown => None,
                Admit::RateLimited => {
                    m.udp_rate_limited.fetch_add(1, Ordering::Relaxed);
                    None
                }
            },
            //= spec/relay.md#RL-UDP-2
            //# a shorter or longer datagram, or one with a non-zero padding byte, MUST be dropped
            Err(_) => None,
        };
        let Some(nonce) = admit else {
            m.udp_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        //= spec/relay.md#124-processing-and-rate-limit
        //# sends the response (§12.2) to the datagram's source address.
        let (resp, len) = udp_service::encode_response(nonce, from);
        match sock.send_to(resp.get(..len).unwrap_or(&[]), from).await {
            Ok(_) => m.udp_answers.fetch_add(1, Ordering::Relaxed),
            Err(_) => m.udp_dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Why a relay could not start.
#[derive(Debug)]
pub enum StartError {
    /// Invalid configuration.
    Config(ConfigError),
    /// Could not bind.
    Io(io::Error),
    /// Could not bind a socket: which one (config key and flag), where, why.
    Bind {
        /// The config key and flag that set the address, e.g. "listen (--listen)".
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        error: io::Error,
    },
}

fn bind_error(what: &'static str, addr: SocketAddr) -> impl FnOnce(io::Error) -> StartError {
    move |error| StartError::Bind { what, addr, error }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "configuration: {e}"),
            StartError::Io(e) => write!(f, "i/o: {e}"),
            StartError::Bind { what, addr, error } => {
                write!(f, "cannot bind {addr} (set by {what}): {error}")?;
                if error.kind() == io::ErrorKind::PermissionDenied && addr.port() < 1024 {
                    write!(
                        f,
                        "; ports below 1024 need root or CAP_NET_BIND_SERVICE \
                         (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE)"
                    )?;
                }
                if error.kind() == io::ErrorKind::AddrInUse {
                    write!(f, "; another process (another relay?) listens there")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for StartError {}

fn clamp_u32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Build the relay's TLS server config (TLS 1.3, ALPN `xtcp-relay/1`, no tickets).
pub fn server_tls(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    //= spec/relay.md#RL-ALPN-3
    //# A relay MUST select it when offered.
    cfg.alpn_protocols = vec![proto::relay::wire::ALPN.to_vec()];
    // Tickets would be extra records after the handshake; the control channel
    // is short-lived and must end at a record boundary both sides can see.
    //= spec/relay.md#RL-TLS-3
    //# The relay MUST NOT send NewSessionTicket messages (`send_tls13_tickets = 0`)
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A running relay.
pub struct Relay {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    udp_local_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("local_addr", &self.local_addr)
            .field("udp_local_addr", &self.udp_local_addr)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Bind and start serving. `cfg.listen`, the limits and tokens come from
    /// `cfg`; certificates from `tls`.
    pub async fn start(
        cfg: RelayConfig,
        tls: Arc<rustls::ServerConfig>,
        audit: Option<AuditSink>,
    ) -> Result<Relay, StartError> {
        let limits = cfg.limits().map_err(StartError::Config)?;
        let tokens = parse_token_hashes(&cfg.token_hashes).map_err(StartError::Config)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(bind_error("listen (--listen)", cfg.listen))?;
        let local_addr = listener.local_addr().map_err(StartError::Io)?;
        // A relay reachable at one address of a host with several must answer
        // from that address: a reply from another one does not match the
        // peer's NAT state (`spec/relay.md` §12). So an unspecified UDP
        // address takes the TLS listener's specific one.
        let udp_listen = match cfg.udp_listen {
            Some(u) if u.ip().is_unspecified() && !cfg.listen.ip().is_unspecified() => {
                Some(SocketAddr::new(cfg.listen.ip(), u.port()))
            }
            other => other,
        };
        let udp = match udp_listen {
            Some(addr) => Some(
                UdpSocket::bind(addr)
                    .await
                    .map_err(bind_error("udp_listen (--udp-listen)", addr))?,
            ),
            None => None,
        };
        let udp_local_addr = match &udp {
            Some(u) => Some(u.local_addr().map_err(StartError::Io)?),
            None => None,
        };
        let shares = SourceShares::new([
            clamp_u32(cfg.max_unauthenticated_per_source),
            clamp_u32(cfg.max_waiting_per_source),
            clamp_u32(cfg.max_sessions_per_source),
        ]);
        let guesses = GuessTable::new(
            GuessRules {
                threshold: cfg.lockout_failures,
                window: limits.lockout,
                interval: limits.guess_interval,
                queue: clamp_u32(cfg.guess_queue_per_source),
                capacity: cfg.max_tracked_sources,
            },
            Instant::now(),
        );
        let (phase, _) = watch::channel(RUNNING);
        let shared = Arc::new(Shared {
            unauth: Arc::new(Semaphore::new(cfg.max_unauthenticated)),
            cfg,
            limits,
            tls: RwLock::new(tls),
            tokens: RwLock::new(tokens),
            waiting: Mutex::new(HashMap::new()),
            shares,
            guesses,
            refusals: Refusals::new(MAX_LOGGED_SOURCES),
            finishing: AtomicUsize::new(0),
            udp_tokens: Mutex::new(HashMap::new()),
            udp_port: udp_local_addr.map(|a| a.port()),
            rng: ring::rand::SystemRandom::new(),
            metrics: Arc::new(Metrics::default()),
            audit,
            phase,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        {
            // Aggregated refusal lines, once per interval, until the relay stops.
            let mut phase = shared.phase.subscribe();
            let shared = shared.clone();
            tokio::spawn(async move {
                let every = shared.limits.log_interval;
                let mut tick = tokio::time::interval_at(
                    Instant::now()
                        .checked_add(every)
                        .unwrap_or_else(Instant::now),
                    every,
                );
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => shared.flush_refusals(),
                        _ = phase.wait_for(|p| *p == ABORT) => {
                            shared.flush_refusals();
                            return;
                        }
                    }
                }
            });
        }
        if let Some(sock) = udp {
            // Runs through a drain (paired sessions may still punch) and stops
            // with the relay.
            let mut phase = shared.phase.subscribe();
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = udp_loop(sock, shared) => {}
                    _ = phase.wait_for(|p| *p == ABORT) => {}
                }
            });
        }
        if let Some(addr) = shared.cfg.metrics_listen {
            let m = shared.metrics.clone();
            let mut phase = shared.phase.subscribe();
            let l = TcpListener::bind(addr)
                .await
                .map_err(bind_error("metrics_listen (--metrics-listen)", addr))?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = serve_metrics(l, m) => {}
                    _ = phase.wait_for(|p| *p == ABORT) => {}
                }
            });
        }
        Ok(Relay {
            shared,
            local_addr,
            udp_local_addr,
            task,
        })
    }

    /// The bound TLS address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound UDP address service address (`spec/relay.md` §12); `None`
    /// when `udp_listen` is off.
    pub fn udp_local_addr(&self) -> Option<SocketAddr> {
        self.udp_local_addr
    }

    /// Live UDP address service tokens (two per paired session, at most
    /// 2 × `max_sessions`).
    pub fn udp_grants(&self) -> usize {
        self.shared
            .udp_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Live counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Sizes of the relay's per-source and per-session tables:
    /// (waiting sessions, tracked source addresses, unauthenticated connections).
    /// Every one is bounded by a configured limit.
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        let waiting = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let sources = self.shared.guesses.len();
        let unauth = self.shared.cfg.max_unauthenticated - self.shared.unauth.available_permits();
        (waiting, sources, unauth)
    }

    /// Replace the certificate (new connections use it; sessions stay).
    pub fn reload_tls(&self, tls: Arc<rustls::ServerConfig>) {
        *self.shared.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
    }

    /// Replace the operator token hashes (sessions stay).
    pub fn reload_tokens(&self, hashes: &[String]) -> Result<(), ConfigError> {
        let t = parse_token_hashes(hashes)?;
        *self
            .shared
            .tokens
            .write()
            .unwrap_or_else(|p| p.into_inner()) = t;
        Ok(())
    }

    /// Graceful stop: refuse new connections and sessions, let paired sessions
    /// run up to the drain deadline, then cut what is left.
    pub async fn shutdown(self) {
        let _ = self.shared.phase.send(DRAINING);
        self.task.abort();
        let now = Instant::now();
        let deadline = now.checked_add(self.shared.limits.drain).unwrap_or(now);
        // Bounded: at most drain / 20 ms iterations. Waiting hosts are told
        // SHUTTING_DOWN (and logged) before the rest is cut.
        let busy = |s: &Shared| {
            s.metrics.active.load(Ordering::Relaxed) > 0
                || s.metrics.waiting.load(Ordering::Relaxed) > 0
                || s.finishing.load(Ordering::Relaxed) > 0
        };
        while busy(&self.shared) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.shared.phase.send(ABORT);
        // The cut sessions write their `session_closed` records (bounded: 1 s).
        let end = Instant::now() + Duration::from_secs(1);
        while self.shared.metrics.active.load(Ordering::Relaxed) > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop at once, closing every connection (as a crash or restart would).
    pub fn abort(self) {
        let _ = self.shared.phase.send(ABORT);
        self.task.abort();
    }
}

async fn serve_metrics(l: TcpListener, m: Arc<Metrics>) {
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

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
        //= spec/relay.md#96-admission-per-source
        //# A connection over its source's unauthenticated share is closed at
        //# accept, before TLS
        let Some(share) = shared
            .shares
            .try_take(shared.source(peer.ip()), Kind::Unauthenticated)
        else {
            shared
                .metrics
                .refused_source_share
                .fetch_add(1, Ordering::Relaxed);
            shared.refusal(peer, Refusal::SourceShare, serde_json::json!({}));
            drop(tcp);
            continue;
        };
        let Ok(permit) = shared.unauth.clone().try_acquire_owned() else {
            shared
                .metrics
                .refused_unauthenticated
                .fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut phase = shared.phase.subscribe();
            tokio::select! {
                _ = handle(tcp, peer, &shared, (permit, share)) => {}
                _ = phase.wait_for(|p| *p == ABORT) => {}
            }
        });
    }
}

enum Request {
    Create([u8; 16], bool),
    Join([u8; 16]),
}

/// What an unauthenticated connection holds: its global slot and its
/// source's unit of `max_unauthenticated_per_source`.
type Unauth = (tokio::sync::OwnedSemaphorePermit, Share);

async fn handle(tcp: TcpStream, peer: SocketAddr, shared: &Arc<Shared>, unauth: Unauth) {
    let accepted = Instant::now();
    let key = shared.source(peer.ip());
    //= spec/relay.md#RL-TIME-2
    //# The first byte MUST arrive within `first_byte_timeout_secs` of the accept (or
    //# `handshake_timeout_secs` if shorter), else close silently.
    let mut one = [0u8; 1];
    let first_byte = shared
        .limits
        .first_byte_timeout
        .min(shared.limits.handshake_timeout);
    match tokio::time::timeout(first_byte, tcp.peek(&mut one)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return,
        Err(_) => {
            shared
                .metrics
                .first_byte_timeouts
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let tls = shared.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
    let conn = match rustls::ServerConnection::new(tls) {
        Ok(c) => c,
        Err(_) => return,
    };
    let mut ctl = CtlChannel::new(tcp, conn);
    // Handshake timeout: from the accept to the first frame.
    //= spec/relay.md#RL-TIME-1
    //# TLS handshake and the first complete frame MUST arrive within
    //# `handshake_timeout_secs`
    let deadline = accepted
        .checked_add(shared.limits.handshake_timeout)
        .unwrap_or(accepted);
    let first = tokio::time::timeout_at(deadline, async {
        ctl.handshake().await?;
        ctl.recv().await
    })
    .await;
    let bytes = match first {
        Ok(Ok(_)) if ctl.alpn() != Some(proto::relay::wire::ALPN) => {
            let f = Frame::error(
                ErrorCode::UnsupportedVersion,
                0,
                "ALPN xtcp-relay/1 required",
            );
            ctl.fail(&f).await;
            return;
        }
        Ok(Ok(b)) => b,
        Ok(Err(CtlError::Frame(_))) => {
            ctl.fail(&Frame::error(ErrorCode::Malformed, 0, "malformed frame"))
                .await;
            return;
        }
        Ok(Err(_)) => return,
        Err(_) => {
            ctl.fail(&Frame::error(ErrorCode::Timeout, 0, "handshake timeout"))
                .await;
            return;
        }
    };
    let req = match Frame::parse(&bytes) {
        Ok((Frame::Create { version, .. } | Frame::Join { version, .. }, _))
            //= spec/relay.md#RL-VER-1
            //# A relay that receives another version MUST answer
            //# `ERROR UNSUPPORTED_VERSION` (§6) and close
            if version != VERSION =>
        {
            ctl.fail(&Frame::error(
                ErrorCode::UnsupportedVersion,
                0,
                "this relay speaks version 1",
            ))
            .await;
            return;
        }
        Ok((
            Frame::Create {
                rendezvous_id,
                token,
                ..
            },
            _,
        )) => {
            let ok = token_ok(shared, token);
            Request::Create(rendezvous_id, ok)
        }
        Ok((Frame::Join { rendezvous_id, .. }, _)) => Request::Join(rendezvous_id),
        _ => {
            ctl.fail(&Frame::error(
                ErrorCode::Malformed,
                0,
                "expected CREATE or JOIN",
            ))
            .await;
            return;
        }
    };
    drop(bytes);
    let draining = || *shared.phase.borrow() != RUNNING;
    if draining() {
        ctl.fail(&Frame::error(
            ErrorCode::ShuttingDown,
            0,
            "relay shutting down",
        ))
        .await;
        return;
    }
    // Guessing is slowed per source: joins and token-less or wrong-token
    // creates. A host with a valid operator token is never slowed.
    let _ticket = if matches!(req, Request::Create(_, true)) {
        None
    } else {
        match shared.guesses.admit(key, Instant::now()) {
            Verdict::Go(t) => Some(t),
            Verdict::Wait(at, t) => {
                //= spec/relay.md#92-guessing
                //# the connection waits for it (tarpit; the client sees a slow
                //# answer), and only then is the JOIN looked up
                shared.metrics.tarpitted.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    // The client gave up: its slot stays spent.
                    _ = ctl.peer_activity() => return,
                }
                if draining() {
                    ctl.fail(&Frame::error(
                        ErrorCode::ShuttingDown,
                        0,
                        "relay shutting down",
                    ))
                    .await;
                    return;
                }
                Some(t)
            }
            Verdict::Refuse(retry) => {
                shared.metrics.locked_out.fetch_add(1, Ordering::Relaxed);
                shared.refusal(peer, Refusal::LockedOut, serde_json::json!({}));
                let secs = u32::try_from(retry.as_secs().saturating_add(1)).unwrap_or(u32::MAX);
                ctl.fail(&Frame::error(
                    ErrorCode::LockedOut,
                    secs,
                    "too many failed attempts; retry later",
                ))
                .await;
                return;
            }
        }
    };
    match req {
        Request::Create(_, false) => {
            shared.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            let locked = shared.guesses.fail(key, Instant::now());
            shared.refusal(
                peer,
                Refusal::Unauthorized,
                serde_json::json!({"reason": "unauthorized", "locked_out": locked}),
            );
            ctl.fail(&Frame::error(
                ErrorCode::Unauthorized,
                0,
                "operator token missing or wrong",
            ))
            .await;
        }
        Request::Create(rid, true) => {
            //= spec/relay.md#96-admission-per-source
            //# A CREATE or JOIN over the waiting or paired share is answered
            //# `OVER_CAPACITY`.
            let waiting = shared.shares.try_take(key, Kind::Waiting);
            let paired = shared.shares.held(key)[Kind::Paired as usize];
            match waiting {
                Some(w) if (paired as usize) < shared.cfg.max_sessions_per_source => {
                    host(ctl, peer, rid, shared, unauth, w).await
                }
                _ => {
                    shared
                        .metrics
                        .refused_source_share
                        .fetch_add(1, Ordering::Relaxed);
                    shared.refusal(peer, Refusal::OverSourceShare, serde_json::json!({}));
                    ctl.fail(&Frame::error(
                        ErrorCode::OverCapacity,
                        0,
                        "too many sessions from this address",
                    ))
                    .await;
                }
            }
        }
        Request::Join(rid) => {
            if shared.metrics.active.load(Ordering::Relaxed) >= shared.cfg.max_sessions {
                // Checked before the lookup so a full relay never disturbs the
                // waiting table.
                ctl.fail(&Frame::error(
                    ErrorCode::OverCapacity,
                    0,
                    "too many sessions",
                ))
                .await;
                return;
            }
            let Some(share) = shared.shares.try_take(key, Kind::Paired) else {
                shared
                    .metrics
                    .refused_source_share
                    .fetch_add(1, Ordering::Relaxed);
                shared.refusal(peer, Refusal::OverSourceShare, serde_json::json!({}));
                ctl.fail(&Frame::error(
                    ErrorCode::OverCapacity,
                    0,
                    "too many sessions from this address",
                ))
                .await;
                return;
            };
            let waiting = shared
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&rid);
            match waiting {
                Some(w) => {
                    drop(unauth);
                    let guest = Guest {
                        ctl,
                        addr: peer,
                        share,
                    };
                    if let Err(g) = w.tx.send(guest) {
                        // The host left between lookup and hand-over.
                        let f = Frame::error(
                            ErrorCode::UnknownSession,
                            0,
                            "unknown or expired session",
                        );
                        g.ctl.fail(&f).await;
                    }
                }
                None => {
                    drop(share);
                    shared.metrics.joins_failed.fetch_add(1, Ordering::Relaxed);
                    let locked = shared.guesses.fail(key, Instant::now());
                    shared.refusal(
                        peer,
                        Refusal::UnknownSession,
                        serde_json::json!({"reason": "unknown_session", "locked_out": locked}),
                    );
                    ctl.fail(&Frame::error(
                        ErrorCode::UnknownSession,
                        0,
                        "unknown or expired session",
                    ))
                    .await;
                }
            }
        }
    }
}

fn token_ok(shared: &Shared, token: &[u8]) -> bool {
    let tokens = shared.tokens.read().unwrap_or_else(|p| p.into_inner());
    if tokens.is_empty() && token.is_empty() {
        return shared.cfg.allow_anonymous_hosts;
    }
    //= spec/relay.md#RL-TOK-1
    //# It MUST NOT store or log tokens.
    let h = ring::digest::digest(&ring::digest::SHA256, token);
    let mut ok = false;
    for t in tokens.iter() {
        // Compare every stored hash in full (no early exit).
        let diff = t
            .iter()
            .zip(h.as_ref())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        ok |= diff == 0;
    }
    ok || (shared.cfg.allow_anonymous_hosts && token.is_empty())
}

async fn host(
    mut ctl: CtlChannel,
    peer: SocketAddr,
    rid: [u8; 16],
    shared: &Arc<Shared>,
    unauth: Unauth,
    waiting_share: Share,
) {
    let label = session_label(&rid);
    let (tx, rx) = oneshot::channel();
    let refused = {
        let mut w = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if w.contains_key(&rid) {
            Some(Frame::error(
                ErrorCode::SessionExists,
                0,
                "session already registered",
            ))
        } else if w.len() >= shared.cfg.max_waiting {
            Some(Frame::error(
                ErrorCode::OverCapacity,
                0,
                "too many waiting sessions",
            ))
        } else {
            w.insert(rid, Waiting { tx });
            None
        }
    };
    if let Some(f) = refused {
        ctl.fail(&f).await;
        return;
    }
    drop(unauth);
    shared.metrics.waiting.fetch_add(1, Ordering::Relaxed);
    shared
        .metrics
        .sessions_created
        .fetch_add(1, Ordering::Relaxed);
    shared.audit(
        "session_created",
        Some(&label),
        Some(peer),
        serde_json::json!({}),
    );
    let ttl = shared.limits.waiting_ttl;
    let sent = ctl
        .send(&Frame::Created {
            ttl_secs: ttl.as_secs().min(u64::from(u32::MAX)) as u32,
        })
        .await;
    let mut phase = shared.phase.subscribe();
    let outcome = if sent.is_err() {
        Err(WaitEnd::HostGone)
    } else {
        tokio::select! {
            r = rx => r.map_err(|_| WaitEnd::HostGone),
            _ = tokio::time::sleep(ttl) => Err(WaitEnd::Expired),
            _ = ctl.peer_activity() => Err(WaitEnd::HostGone),
            _ = phase.wait_for(|p| *p != RUNNING) => Err(WaitEnd::ShuttingDown),
        }
    };
    shared
        .waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&rid);
    // Counted as finishing before it stops counting as waiting, so a drain
    // that waits for both never misses a host still being told.
    let finishing = Finishing::new(shared);
    shared.metrics.waiting.fetch_sub(1, Ordering::Relaxed);
    drop(waiting_share);
    let Guest {
        ctl: guest,
        addr: guest_addr,
        share: guest_share,
    } = match outcome {
        Ok(g) => g,
        Err(reason) => {
            shared.audit(
                "session_closed",
                Some(&label),
                Some(peer),
                serde_json::json!({"reason": reason.as_str(), "paired": false}),
            );
            match reason {
                WaitEnd::Expired => {
                    shared.metrics.expired.fetch_add(1, Ordering::Relaxed);
                    ctl.fail(&Frame::error(
                        ErrorCode::Expired,
                        0,
                        "no guest joined before the TTL",
                    ))
                    .await;
                }
                WaitEnd::ShuttingDown => {
                    ctl.fail(&Frame::error(
                        ErrorCode::ShuttingDown,
                        0,
                        "relay shutting down",
                    ))
                    .await
                }
                WaitEnd::HostGone => {}
            }
            return;
        }
    };
    shared.audit(
        "session_joined",
        Some(&label),
        Some(guest_addr),
        serde_json::json!({}),
    );
    // Pair: PAIRED to both, then end both TLS sessions at a record boundary.
    // The UDP tokens live exactly as long as `grants` (dropped when pairing
    // fails below, or when the forwarding task ends however it ends).
    //= spec/relay.md#RL-GRANT-1
    //# A relay that runs the service MUST send a grant to both clients, unless its
    //# token table is full
    let (grants, [host_udp, guest_udp]) = match shared.grant() {
        Some((g, [h, u])) => (Some(g), [Some(h), Some(u)]),
        None => (None, [None, None]),
    };
    let mut guest = guest;
    let pair = async {
        ctl.send(&Frame::Paired {
            observed: peer,
            udp: host_udp,
        })
        .await?;
        guest
            .send(&Frame::Paired {
                observed: guest_addr,
                udp: guest_udp,
            })
            .await?;
        let (a, b) = tokio::try_join!(ctl.finish(), guest.finish())?;
        Ok::<_, CtlError>((a, b))
    };
    //= spec/relay.md#RL-PAIR-1
    //# All of this MUST complete within `handshake_timeout_secs`
    let (a, b) = match tokio::time::timeout(shared.limits.handshake_timeout, pair).await {
        Ok(Ok(x)) => x,
        _ => {
            shared.audit(
                "session_closed",
                Some(&label),
                Some(peer),
                serde_json::json!({"reason": "pairing failed", "paired": false}),
            );
            return;
        }
    };
    shared
        .metrics
        .sessions_paired
        .fetch_add(1, Ordering::Relaxed);
    shared.metrics.active.fetch_add(1, Ordering::Relaxed);
    shared.audit(
        "session_paired",
        Some(&label),
        None,
        serde_json::json!({"host": peer.to_string(), "guest": guest_addr.to_string()}),
    );
    // Forward in a task of its own: the pairing state above (TLS, frames) is
    // freed now, so an idle paired session costs only this small future and
    // its two sockets.
    drop(finishing);
    // The host's source holds one paired unit too (may exceed its share by
    // the pairings in progress, like `max_sessions`).
    let host_share = shared.shares.take(shared.source(peer.ip()), Kind::Paired);
    let shared = shared.clone();
    tokio::spawn(async move {
        let _shares = (host_share, guest_share);
        let started = Instant::now();
        let (h2g, g2h, reason) = forward_session(&a, &b, &shared).await;
        // Tokens go before `active` drops, so a caller that saw the session
        // end in the gauge also sees its tokens gone.
        drop(grants);
        shared.audit(
            "session_closed",
            Some(&label),
            None,
            serde_json::json!({
                "paired": true,
                "bytes_host_to_guest": h2g,
                "bytes_guest_to_host": g2h,
                "duration_secs": started.elapsed().as_secs_f64(),
                "reason": reason,
            }),
        );
        // Last: whoever sees the session gone in the gauge (a drain) also
        // finds its record written.
        shared.metrics.active.fetch_sub(1, Ordering::Relaxed);
    });
}

async fn forward_session(
    a: &TcpStream,
    b: &TcpStream,
    shared: &Arc<Shared>,
) -> (u64, u64, &'static str) {
    let mode = if shared.cfg.splice {
        Mode::Splice
    } else {
        Mode::Copy
    };
    let buffer = shared.cfg.forward_buffer;
    let (ca, cb) = (Counters::default(), Counters::default());
    let activity = Activity::new();
    let limiter = shared.cfg.rate_limit_bytes_per_sec.map(RateLimiter::new);
    let m = &shared.metrics;
    let h2g = forward::pump(a, b, mode, buffer, &ca, &activity, limiter.as_ref());
    let g2h = forward::pump(b, a, mode, buffer, &cb, &activity, limiter.as_ref());
    let idle = shared.limits.idle_timeout;
    let watchdog = async {
        loop {
            let left = idle.saturating_sub(activity.idle_for());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    };
    let mut phase = shared.phase.subscribe();
    let reason = tokio::select! {
        r = async { tokio::try_join!(h2g, g2h) } => if r.is_ok() { "completed" } else { "reset" },
        _ = watchdog => "idle timeout",
        _ = phase.wait_for(|p| *p == ABORT) => "relay stopped",
    };
    let (x, y) = (
        ca.bytes.load(Ordering::Relaxed),
        cb.bytes.load(Ordering::Relaxed),
    );
    m.bytes_host_to_guest.fetch_add(x, Ordering::Relaxed);
    m.bytes_guest_to_host.fetch_add(y, Ordering::Relaxed);
    (x, y, reason)
}

/// Lift the soft RLIMIT_NOFILE to the hard limit (a relay, and a test that
/// opens thousands of sessions, needs many descriptors). Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            // Root may also raise the hard limit; others settle for it.
            let want = hard.max(1 << 18);
            if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
                want
            } else if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 0,
    }
}

/// Why a host stopped waiting for its guest (audit reason, and what the host is told).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WaitEnd {
    /// The host's connection ended or failed.
    HostGone,
    /// No guest joined before the TTL (spec/relay.md §9.3).
    Expired,
    /// The relay is draining (spec/relay.md §9.5).
    ShuttingDown,
}

impl WaitEnd {
    /// The audit log's `reason` value.
    fn as_str(self) -> &'static str {
        match self {
            WaitEnd::HostGone => "host gone",
            WaitEnd::Expired => "expired",
            WaitEnd::ShuttingDown => "shutting down",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `udp_listen` in TOML (spec/relay.md §8): absent → 0.0.0.0:15000, an
    /// address, or "off"; anything else is an error naming the key.
    #[test]
    fn udp_listen_config() {
        let parse = |t: &str| toml::from_str::<RelayConfig>(t).map(|c| c.udp_listen);
        assert_eq!(parse(""), Ok(Some("0.0.0.0:15000".parse().unwrap())));
        assert_eq!(
            parse("udp_listen = \"127.0.0.1:0\""),
            Ok(Some("127.0.0.1:0".parse().unwrap()))
        );
        assert_eq!(parse("udp_listen = \"off\""), Ok(None));
        for bad in ["udp_listen = \"x\"", "udp_listen = 1", "udp_listen = \"\""] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains("udp_listen"), "{bad}: {e}");
        }
        let multicast = RelayConfig {
            udp_listen: Some("239.1.2.3:15000".parse().unwrap()),
            ..RelayConfig::default()
        };
        assert!(multicast.validate().is_err());
        assert!(RelayConfig::default().validate().is_ok());
    }

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
