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
//!
//! This module holds the running [`Relay`] (start, reload, drain, stop) and
//! the state its tasks share. The steps live in submodules:
//!
//! * `config`: [`RelayConfig`], its validation and the token hashes;
//! * `connection`: accept, first byte, TLS and first frame, guess slots, the
//!   `CREATE` and `JOIN` paths;
//! * `session`: a host waiting for its guest, pairing, forwarding;
//! * `udp`: the UDP address service and its grants;
//! * `metrics`: [`Metrics`] and their HTTP endpoint;
//! * `audit`: the audit log and aggregated refusals.

mod audit;
mod config;
mod connection;
mod metrics;
mod session;
mod udp;

pub use audit::AuditSink;
pub use config::{
    parse_udp_listen, token_hash, ConfigError, RelayConfig, DEFAULT_UDP_PORT, MAX_CONFIG_COUNT,
    MAX_CONFIG_SECS,
};
pub use metrics::{
    Metrics, RefusalReason, METRICS_MAX_CONNECTIONS, METRICS_MAX_REQUEST, METRICS_TIMEOUT,
};
pub use udp::{UDP_ANSWERS_PER_WINDOW, UDP_RATE_WINDOW};

use super::admission::{GuessRules, GuessTable, SourceKey, SourceShares};
use super::refusals::Refusals;
use super::token_quota::TokenQuotas;
use audit::{spawn_refusal_log, MAX_LOGGED_SOURCES};
use config::{parse_token_hashes, Limits};
use connection::accept_loop;
use metrics::{serve_metrics, Live};
use session::Waiting;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use udp::{udp_loop, UdpToken};

/// The state every task of one relay shares.
struct Shared {
    cfg: RelayConfig,
    limits: Limits,
    tls: RwLock<Arc<rustls::ServerConfig>>,
    /// Operator token hashes; swapped whole on reload, so a check clones
    /// the `Arc` and compares without holding the lock.
    tokens: RwLock<Arc<Vec<[u8; 32]>>>,
    /// What each operator token's hosts hold now (`spec/relay.md` §9.1).
    token_quotas: Arc<TokenQuotas>,
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
    /// The admission key of an address.
    fn source(&self, ip: IpAddr) -> SourceKey {
        SourceKey::new(ip, self.cfg.source_prefix_v4, self.cfg.source_prefix_v6)
    }

    /// The state of a relay about to start: empty tables, phase `RUNNING`.
    fn new(
        cfg: RelayConfig,
        limits: Limits,
        tls: Arc<rustls::ServerConfig>,
        tokens: Vec<[u8; 32]>,
        udp_port: Option<u16>,
        audit: Option<AuditSink>,
    ) -> Arc<Shared> {
        let token_quotas = TokenQuotas::new([
            clamp_u32(cfg.max_waiting_per_token),
            clamp_u32(cfg.max_sessions_per_token),
        ]);
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
        let unauth = Arc::new(Semaphore::new(cfg.max_unauthenticated));
        let mut metrics = Metrics::new();
        metrics.watch(Live {
            unauth: unauth.clone(),
            max_unauth: cfg.max_unauthenticated,
            shares: shares.clone(),
            guesses: guesses.clone(),
        });
        Arc::new(Shared {
            unauth,
            cfg,
            limits,
            tls: RwLock::new(tls),
            tokens: RwLock::new(Arc::new(tokens)),
            token_quotas,
            waiting: Mutex::new(HashMap::new()),
            shares,
            guesses,
            refusals: Refusals::new(MAX_LOGGED_SOURCES),
            finishing: AtomicUsize::new(0),
            udp_tokens: Mutex::new(HashMap::new()),
            udp_port,
            rng: ring::rand::SystemRandom::new(),
            metrics: Arc::new(metrics),
            audit,
            phase,
        })
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

/// Bind the UDP address service socket, unless `udp_listen` is off
/// (`spec/relay.md` §12); with its bound address.
async fn bind_udp(cfg: &RelayConfig) -> Result<Option<(UdpSocket, SocketAddr)>, StartError> {
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
    let Some(addr) = udp_listen else {
        return Ok(None);
    };
    let sock = UdpSocket::bind(addr)
        .await
        .map_err(bind_error("udp_listen (--udp-listen)", addr))?;
    let local = sock.local_addr().map_err(StartError::Io)?;
    Ok(Some((sock, local)))
}

/// Run a background task of the relay until it ends or the relay stops
/// (phase `ABORT`).
fn spawn_until_abort(shared: &Shared, task: impl Future<Output = ()> + Send + 'static) {
    let mut phase = shared.phase.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            _ = task => {}
            _ = phase.wait_for(|p| *p == ABORT) => {}
        }
    });
}

/// A count as `u32`, saturated.
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
    // A waiting host's channel keeps only its secrets (`CtlChannel::compact`).
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}

/// A running relay.
pub struct Relay {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    udp_local_addr: Option<SocketAddr>,
    metrics_local_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("local_addr", &self.local_addr)
            .field("udp_local_addr", &self.udp_local_addr)
            .field("metrics_local_addr", &self.metrics_local_addr)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Bind and start serving. `cfg.listen`, the limits and tokens come from
    /// `cfg`; certificates from `tls`. Every socket is bound before any task
    /// starts, so an error leaves nothing running.
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
        let udp = bind_udp(&cfg).await?;
        let udp_local_addr = udp.as_ref().map(|&(_, addr)| addr);
        let udp_port = udp_local_addr.map(|a| a.port());
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(bind_error("metrics_listen (--metrics-listen)", addr))?,
            ),
            None => None,
        };
        let metrics_local_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr().map_err(StartError::Io)?),
            None => None,
        };
        let shared = Shared::new(cfg, limits, tls, tokens, udp_port, audit);
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        spawn_refusal_log(&shared);
        if let Some((sock, _)) = udp {
            // Runs through a drain (paired sessions may still punch) and stops
            // with the relay.
            spawn_until_abort(&shared, udp_loop(sock, shared.clone()));
        }
        if let Some(l) = metrics_listener {
            spawn_until_abort(&shared, serve_metrics(l, shared.metrics.clone()));
        }
        Ok(Relay {
            shared,
            local_addr,
            udp_local_addr,
            metrics_local_addr,
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

    /// The bound metrics address (`spec/relay.md` §9.4); `None` when
    /// `metrics_listen` is not set.
    pub fn metrics_local_addr(&self) -> Option<SocketAddr> {
        self.metrics_local_addr
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
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(t);
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
            s.metrics.active.get() > 0
                || s.metrics.waiting.get() > 0
                || s.finishing.load(Ordering::Relaxed) > 0
        };
        while busy(&self.shared) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.shared.phase.send(ABORT);
        // The cut sessions write their `session_closed` records (bounded: 1 s).
        let end = Instant::now() + Duration::from_secs(1);
        while self.shared.metrics.active.get() > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop at once, closing every connection (as a crash or restart would).
    pub fn abort(self) {
        let _ = self.shared.phase.send(ABORT);
        self.task.abort();
    }
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
