//! The relay's settings (`spec/relay.md` §8): [`RelayConfig`] as read from
//! TOML or flags, its validation into the runtime limits, and the operator
//! token hashes.

use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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
    /// Waiting sessions the hosts of one operator token may hold (§9.1).
    pub max_waiting_per_token: usize,
    /// Paired sessions the hosts of one operator token may hold (§9.1).
    pub max_sessions_per_token: usize,
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
            max_waiting_per_token: 10_000,
            max_sessions_per_token: 50_000,
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
pub(super) struct Limits {
    pub(super) waiting_ttl: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) handshake_timeout: Duration,
    pub(super) first_byte_timeout: Duration,
    pub(super) lockout: Duration,
    pub(super) guess_interval: Duration,
    pub(super) drain: Duration,
    pub(super) log_interval: Duration,
}

/// Upper bound of the session and connection counts: far above what one
/// process can hold, low enough that no sum or product of them overflows.
pub const MAX_CONFIG_COUNT: u64 = 1 << 24;

impl RelayConfig {
    /// Validate every key and derive the runtime limits.
    pub(super) fn limits(&self) -> Result<Limits, ConfigError> {
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
            us(self.max_waiting_per_token),
            "max_waiting_per_token",
            1,
            m,
        )?;
        count(
            us(self.max_sessions_per_token),
            "max_sessions_per_token",
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

    /// Every duration [`Self::limits`] derives, by key (the fuzz oracle checks
    /// that each one can be added to a clock; the destructuring makes a new
    /// field of [`Limits`] a compile error here until it is listed).
    pub(crate) fn limit_durations(&self) -> Result<[(&'static str, Duration); 8], ConfigError> {
        let Limits {
            waiting_ttl,
            idle_timeout,
            handshake_timeout,
            first_byte_timeout,
            lockout,
            guess_interval,
            drain,
            log_interval,
        } = self.limits()?;
        Ok([
            ("waiting_ttl_secs", waiting_ttl),
            ("idle_timeout_secs", idle_timeout),
            ("handshake_timeout_secs", handshake_timeout),
            ("first_byte_timeout_secs", first_byte_timeout),
            ("lockout_secs", lockout),
            ("guess_interval_secs", guess_interval),
            ("drain_secs", drain),
            ("log_interval_secs", log_interval),
        ])
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

/// The configured token hashes as bytes; an error names the first bad one.
pub(super) fn parse_token_hashes(v: &[String]) -> Result<Vec<[u8; 32]>, ConfigError> {
    v.iter()
        .map(|h| {
            crate::tls::unhex(h)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| ConfigError(format!("token hash {h:?} is not 64 hex digits")))
        })
        .collect()
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
}
