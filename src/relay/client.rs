//! The client side of the relay protocol: create or join a session on the
//! relay chosen by rendezvous hashing, and get back the raw TCP stream that
//! the relay now forwards blindly (`spec/relay.md` §3, §5).

use super::ctl::{CtlChannel, CtlError};
use proto::relay::wire::{ErrorCode, Frame, VERSION};
use rustls::pki_types::{CertificateDer, ServerName};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// How the relay's certificate is trusted.
#[derive(Clone, Debug)]
pub enum RelayTrust {
    /// The operating system's root store.
    SystemRoots,
    /// These CA certificates (e.g. from `--relay-ca FILE`).
    Ca(Vec<CertificateDer<'static>>),
    /// Any certificate whose SHA-256 (of its DER, as `xtcp-relay --self-signed`
    /// prints it) is one of these pins: one per relay of a self-signed fleet,
    /// or the old and the new one across a certificate change. Pins are
    /// public values; an empty list trusts nothing and is refused.
    Fingerprints(Vec<[u8; 32]>),
}

impl RelayTrust {
    /// Trust exactly the certificate with this SHA-256 fingerprint.
    pub fn pinned(fingerprint: [u8; 32]) -> Self {
        RelayTrust::Fingerprints(vec![fingerprint])
    }
}

/// Client settings for reaching relays.
#[derive(Clone, Debug)]
pub struct RelayClientConfig {
    /// The relay list (`host:port`); rendezvous hashing picks the order.
    pub relays: Vec<String>,
    /// How to trust the relays' certificates.
    pub trust: RelayTrust,
    /// Operator token for creating sessions.
    pub token: Option<String>,
    /// TCP connect plus TLS handshake, per relay.
    pub connect_timeout: Duration,
}

impl Default for RelayClientConfig {
    /// No relay yet, the system's roots, no token, 10 s to connect.
    fn default() -> Self {
        RelayClientConfig {
            relays: Vec::new(),
            trust: RelayTrust::SystemRoots,
            token: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl RelayClientConfig {
    /// A config for one relay pinned by fingerprint.
    pub fn pinned(relay: impl Into<String>, fingerprint: [u8; 32]) -> Self {
        RelayClientConfig {
            relays: vec![relay.into()],
            trust: RelayTrust::pinned(fingerprint),
            ..RelayClientConfig::default()
        }
    }
}

/// Errors talking to relays.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayError {
    /// No relay in the list could be reached (last error attached).
    Unreachable(String),
    /// The relay's certificate did not match the configured trust.
    CertificateMismatch(String),
    /// The operator token was missing or wrong.
    Unauthorized,
    /// No waiting session with this code on the relay (unknown, expired or taken).
    UnknownSession,
    /// This source failed too many joins.
    LockedOut {
        /// When to try again.
        retry_after: Duration,
    },
    /// The session's waiting TTL expired before a guest joined.
    Expired,
    /// The relay is at a limit.
    OverCapacity,
    /// The relay is shutting down.
    ShuttingDown,
    /// The relay broke the protocol or closed the connection.
    Protocol(String),
    /// The relay list is empty or an address is invalid.
    Config(String),
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayError::Unreachable(e) => write!(f, "relay unreachable: {e}"),
            RelayError::CertificateMismatch(e) => write!(f, "relay certificate mismatch: {e}"),
            RelayError::Unauthorized => {
                f.write_str("relay refused: operator token missing or wrong")
            }
            RelayError::UnknownSession => f.write_str("unknown or expired session"),
            RelayError::LockedOut { retry_after } => {
                write!(
                    f,
                    "locked out after too many failed attempts; retry in {} s",
                    retry_after.as_secs()
                )
            }
            RelayError::Expired => f.write_str("session expired before the guest joined"),
            RelayError::OverCapacity => f.write_str("relay over capacity"),
            RelayError::ShuttingDown => f.write_str("relay shutting down"),
            RelayError::Protocol(e) => write!(f, "relay protocol error: {e}"),
            RelayError::Config(e) => write!(f, "relay configuration: {e}"),
        }
    }
}

impl std::error::Error for RelayError {}

/// The stream the peers' end-to-end TLS runs over once paired.
pub type RelayedStream = TcpStream;

/// Order `relays` by highest-random-weight hashing of `rid` (DESIGN.md "Relay
/// fleet"): every client given the same set computes the same order.
pub fn rendezvous_order(relays: &[String], rid: &[u8; 16]) -> Vec<String> {
    let mut scored: Vec<(u64, String)> = relays
        .iter()
        .map(|r| {
            let name = r.trim().to_ascii_lowercase();
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(b"xtcp hrw v1");
            ctx.update(rid);
            ctx.update(name.as_bytes());
            let d = ctx.finish();
            let mut w = [0u8; 8];
            w.copy_from_slice(&d.as_ref()[..8]);
            (u64::from_be_bytes(w), name)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, n)| n).collect()
}

/// A pinned relay presented a certificate that matches none of the pins.
#[derive(Debug)]
struct PinMismatch {
    presented: [u8; 32],
    expected: Vec<[u8; 32]>,
}

/// At most this many expected pins are spelled out in a mismatch error.
const PINS_SHOWN: usize = 4;

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "presented SHA-256 {}, expected ",
            crate::tls::hex(&self.presented)
        )?;
        if self.expected.len() > 1 {
            f.write_str("one of ")?;
        }
        for (i, pin) in self.expected.iter().take(PINS_SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&crate::tls::hex(pin))?;
        }
        if self.expected.len() > PINS_SHOWN {
            write!(f, " (and {} more)", self.expected.len() - PINS_SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for PinMismatch {}

fn client_tls(trust: &RelayTrust) -> Result<Arc<rustls::ClientConfig>, RelayError> {
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RelayError::Config(e.to_string()))?;
    //= spec/relay.md#RL-TLS-1
    //# A client MUST verify it in one of three ways (`RelayTrust`)
    let mut cfg = match trust {
        RelayTrust::Fingerprints(pins) => {
            if pins.is_empty() {
                return Err(RelayError::Config("no relay fingerprint to pin".into()));
            }
            let pins = pins.clone();
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(crate::tls::SignatureOnlyVerifier::new(
                    move |cert| {
                        let got = sha256(cert.as_ref());
                        //= spec/relay.md#RL-TLS-5
                        //# accepts the certificate if its fingerprint equals any of the pins
                        if pins.contains(&got) {
                            Ok(())
                        } else {
                            //= spec/relay.md#RL-TLS-6
                            //# MUST name the fingerprint the relay presented and the pins it expected
                            Err(rustls::Error::InvalidCertificate(
                                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                                    PinMismatch {
                                        presented: got,
                                        expected: pins.clone(),
                                    },
                                ))),
                            ))
                        }
                    },
                )))
                .with_no_client_auth()
        }
        RelayTrust::SystemRoots | RelayTrust::Ca(_) => {
            let mut roots = rustls::RootCertStore::empty();
            match trust {
                RelayTrust::Ca(cas) => {
                    for c in cas {
                        roots
                            .add(c.clone())
                            .map_err(|e| RelayError::Config(e.to_string()))?;
                    }
                }
                _ => {
                    for c in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(c);
                    }
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    //= spec/relay.md#RL-ALPN-1
    //# A client MUST offer exactly this protocol
    cfg.alpn_protocols = vec![proto::relay::wire::ALPN.to_vec()];
    //= spec/relay.md#RL-TLS-4
    //# Clients MUST NOT attempt resumption or 0-RTT.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

fn sha256(der: &[u8]) -> [u8; 32] {
    let mut d = [0; 32];
    d.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    d
}

fn server_name(relay: &str) -> Result<ServerName<'static>, RelayError> {
    let host = match relay.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => relay,
    };
    ServerName::try_from(host.to_string()).map_err(|e| RelayError::Config(format!("{relay}: {e}")))
}

/// Whether trying the next relay makes sense after this error.
fn try_next(e: &RelayError) -> bool {
    matches!(
        e,
        RelayError::Unreachable(_) | RelayError::ShuttingDown | RelayError::OverCapacity
    )
}

async fn connect(
    relay: &str,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<CtlChannel, RelayError> {
    let name = server_name(relay)?;
    let fut = async {
        let tcp = TcpStream::connect(relay)
            .await
            .map_err(|e| RelayError::Unreachable(format!("{relay}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let conn = rustls::ClientConnection::new(tls.clone(), name)
            .map_err(|e| RelayError::Config(e.to_string()))?;
        let mut ctl = CtlChannel::new(tcp, conn);
        ctl.handshake().await.map_err(|e| match e {
            CtlError::Tls(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                o,
            ))) => RelayError::CertificateMismatch(format!("{relay}: {o}")),
            CtlError::Tls(rustls::Error::InvalidCertificate(c)) => {
                RelayError::CertificateMismatch(format!("{relay}: {c:?}"))
            }
            CtlError::Tls(e) => RelayError::Protocol(format!("{relay}: TLS: {e}")),
            e => RelayError::Unreachable(format!("{relay}: {e}")),
        })?;
        //= spec/relay.md#RL-ALPN-2
        //# and MUST abort if the relay did not select it ("not an xtcp relay")
        if ctl.alpn() != Some(proto::relay::wire::ALPN) {
            return Err(RelayError::Protocol(format!(
                "{relay}: not an xtcp relay (ALPN)"
            )));
        }
        Ok(ctl)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(RelayError::Unreachable(format!("{relay}: timed out"))),
    }
}

fn error_from_frame(bytes: &[u8]) -> RelayError {
    match Frame::parse(bytes) {
        Ok((
            Frame::Error {
                code,
                retry_after_secs,
                reason,
                ..
            },
            _,
            //= spec/relay.md#RL-ERR-2
            //# A receiver MUST NOT base any decision on it
        )) => match code {
            ErrorCode::Unauthorized => RelayError::Unauthorized,
            ErrorCode::UnknownSession => RelayError::UnknownSession,
            ErrorCode::LockedOut => RelayError::LockedOut {
                retry_after: Duration::from_secs(u64::from(retry_after_secs)),
            },
            ErrorCode::Expired => RelayError::Expired,
            ErrorCode::OverCapacity => RelayError::OverCapacity,
            ErrorCode::ShuttingDown => RelayError::ShuttingDown,
            other => RelayError::Protocol(format!(
                "{}: {}",
                other.name(),
                //= spec/relay.md#RL-ERR-3
                //# MUST tolerate invalid UTF-8.
                String::from_utf8_lossy(reason)
            )),
        },
        Ok((f, _)) => RelayError::Protocol(format!("unexpected frame {f:?}")),
        Err(e) => RelayError::Protocol(e.to_string()),
    }
}

fn ctl_err(e: CtlError) -> RelayError {
    RelayError::Protocol(e.to_string())
}

/// Read PAIRED, then end the control TLS at its record boundary.
async fn await_paired(mut ctl: CtlChannel) -> Result<Paired, RelayError> {
    let bytes = ctl.recv().await.map_err(|e| match e {
        CtlError::Io(_) | CtlError::Closed => {
            RelayError::Unreachable(format!("relay closed the connection: {e}"))
        }
        e => ctl_err(e),
    })?;
    match Frame::parse(&bytes) {
        Ok((Frame::Paired { observed, udp }, _)) => {
            //= spec/relay.md#RL-CLOSE-1
            //# The client MUST NOT send any e2e byte before its own close_notify
            let stream = ctl.finish().await.map_err(ctl_err)?;
            // The service listens on the relay's IP as we reached it over TCP
            // (spec/relay.md §4.2.4); without a peer address there is nowhere
            // to ask, so no service.
            let udp = match (udp, stream.peer_addr()) {
                (Some(g), Ok(relay)) => Some(UdpService {
                    //= spec/relay.md#RL-GRANT-3
                    //# MUST NOT reveal the token to anyone but the relay
                    addr: SocketAddr::new(relay.ip(), g.port),
                    token: g.token,
                }),
                _ => None,
            };
            Ok(Paired {
                stream,
                observed,
                udp,
                relay: String::new(),
            })
        }
        _ => Err(error_from_frame(&bytes)),
    }
}

/// Where and how to ask the relay for this client's public UDP address
/// (`spec/relay.md` §12): send `proto::relay::udp_service::encode_request(&token, nonce)`
/// to `addr`. Valid while the paired session lives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UdpService {
    /// The relay's IP address as this client connected to it, and the granted UDP port.
    pub addr: SocketAddr,
    /// This client's token (secret: known only to it and the relay).
    pub token: [u8; 16],
}

impl std::fmt::Debug for UdpService {
    // The token is a secret: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpService")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A paired connection: the raw TCP stream and the address the relay saw.
#[derive(Debug)]
pub struct Paired {
    /// The blind pipe to the peer.
    pub stream: RelayedStream,
    /// This client's address as the relay observed it.
    pub observed: SocketAddr,
    /// The relay's UDP address service, if it granted one.
    pub udp: Option<UdpService>,
    /// The relay that paired us.
    pub relay: String,
}

/// A session registered on a relay, waiting for its guest.
#[derive(Debug)]
pub struct WaitingSession {
    reg: Registered,
    cfg: RelayClientConfig,
    tls: Arc<rustls::ClientConfig>,
    rid: [u8; 16],
}

/// Where a session got registered.
#[derive(Debug)]
struct Registered {
    ctl: CtlChannel,
    relay: String,
    /// Relays after this one in rendezvous order (failover while waiting).
    rest: Vec<String>,
    ttl: Duration,
    /// SHA-256 of the certificate the relay presented.
    fingerprint: Option<[u8; 32]>,
}

impl WaitingSession {
    /// The relay the session is registered on.
    pub fn relay(&self) -> &str {
        &self.reg.relay
    }
    /// How long the relay keeps it waiting.
    pub fn ttl(&self) -> Duration {
        self.reg.ttl
    }
    /// The SHA-256 of the certificate the relay presented when the session
    /// was registered (it passed the configured trust: with
    /// [`RelayTrust::Fingerprints`], it is one of the pins).
    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        self.reg.fingerprint
    }
    /// Wait for the guest. If the relay goes away while waiting, the session
    /// is registered again on the next relay in rendezvous order (the guest
    /// computes the same order, so it follows).
    pub async fn paired(self) -> Result<Paired, RelayError> {
        let WaitingSession {
            mut reg,
            cfg,
            tls,
            rid,
        } = self;
        loop {
            let Registered {
                ctl, relay, rest, ..
            } = reg;
            match await_paired(ctl).await {
                Err(e) if try_next(&e) && !rest.is_empty() => {
                    tracing::info!("relay {relay} lost while waiting ({e}); moving on");
                    reg = register(&cfg, &tls, rid, rest).await?;
                }
                r => {
                    return r.map(|mut p| {
                        p.relay = relay;
                        p
                    })
                }
            }
        }
    }
}

async fn register(
    cfg: &RelayClientConfig,
    tls: &Arc<rustls::ClientConfig>,
    rid: [u8; 16],
    order: Vec<String>,
) -> Result<Registered, RelayError> {
    let token = cfg.token.clone().unwrap_or_default();
    let mut last = RelayError::Config("empty relay list".into());
    for (i, relay) in order.iter().enumerate() {
        let attempt = async {
            let mut ctl = connect(relay, tls, cfg.connect_timeout).await?;
            //= spec/relay.md#RL-ONE-1
            //# A client MUST send exactly one frame (CREATE or JOIN) and nothing after it but
            //# close_notify.
            ctl.send(&Frame::Create {
                version: VERSION,
                rendezvous_id: rid,
                token: token.as_bytes(),
            })
            .await
            .map_err(ctl_err)?;
            let bytes = tokio::time::timeout(cfg.connect_timeout, ctl.recv())
                .await
                .map_err(|_| RelayError::Unreachable(format!("{relay}: timed out")))?
                .map_err(|e| RelayError::Unreachable(format!("{relay}: {e}")))?;
            match Frame::parse(&bytes) {
                Ok((Frame::Created { ttl_secs }, _)) => {
                    Ok((ctl, Duration::from_secs(u64::from(ttl_secs))))
                }
                _ => Err(error_from_frame(&bytes)),
            }
        };
        match attempt.await {
            Ok((ctl, ttl)) => {
                return Ok(Registered {
                    fingerprint: ctl.peer_certificate().map(|c| sha256(c.as_ref())),
                    ctl,
                    relay: relay.clone(),
                    rest: order[i + 1..].to_vec(),
                    ttl,
                })
            }
            Err(e) if try_next(&e) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// The order in which a lost relay path is set up again (`spec/direct.md`
/// §4.8): the relay that carried the session first, then the ones after it
/// in the session's rendezvous order, then those before it.
pub(crate) fn resume_order(relays: &[String], rid: &[u8; 16], current: &str) -> Vec<String> {
    let mut order = rendezvous_order(relays, rid);
    let cur = current.trim().to_ascii_lowercase();
    match order.iter().position(|r| *r == cur) {
        Some(i) => order.rotate_left(i),
        None => order.insert(0, cur),
    }
    order
}

/// Register a session (host side).
pub async fn create_session(
    cfg: &RelayClientConfig,
    rid: [u8; 16],
) -> Result<WaitingSession, RelayError> {
    create_session_in(cfg, rid, rendezvous_order(&cfg.relays, &rid)).await
}

/// [`create_session`] on the relays of `order`, in that order.
pub(crate) async fn create_session_in(
    cfg: &RelayClientConfig,
    rid: [u8; 16],
    order: Vec<String>,
) -> Result<WaitingSession, RelayError> {
    if cfg
        .token
        .as_ref()
        //= spec/relay.md#RL-TOKEN-1
        //# A sender MUST NOT emit more than 128 bytes
        .is_some_and(|t| t.len() > proto::relay::wire::MAX_TOKEN)
    {
        return Err(RelayError::Config("token too long".into()));
    }
    let tls = client_tls(&cfg.trust)?;
    let reg = register(cfg, &tls, rid, order).await?;
    Ok(WaitingSession {
        reg,
        cfg: cfg.clone(),
        tls,
        rid,
    })
}

/// Join a session (guest side): returns once the relay paired us.
pub async fn join_session(cfg: &RelayClientConfig, rid: [u8; 16]) -> Result<Paired, RelayError> {
    join_session_in(cfg, rid, rendezvous_order(&cfg.relays, &rid)).await
}

/// [`join_session`] on the relays of `order`, in that order.
pub(crate) async fn join_session_in(
    cfg: &RelayClientConfig,
    rid: [u8; 16],
    order: Vec<String>,
) -> Result<Paired, RelayError> {
    let tls = client_tls(&cfg.trust)?;
    let mut last = RelayError::Config("empty relay list".into());
    let mut unknown = false;
    for relay in &order {
        let attempt = async {
            let mut ctl = connect(relay, &tls, cfg.connect_timeout).await?;
            //= spec/relay.md#RL-ONE-1
            ctl.send(&Frame::Join {
                version: VERSION,
                rendezvous_id: rid,
            })
            .await
            .map_err(ctl_err)?;
            // The relay answers at once (PAIRED or ERROR): bound it.
            match tokio::time::timeout(cfg.connect_timeout, await_paired(ctl)).await {
                Ok(r) => r,
                Err(_) => Err(RelayError::Unreachable(format!("{relay}: timed out"))),
            }
        };
        match attempt.await {
            Ok(mut p) => {
                p.relay = relay.clone();
                return Ok(p);
            }
            Err(e) if try_next(&e) => last = e,
            // The host may have moved past this relay while it was down (it registers on
            // the first reachable one in the same order): try on, and report the unknown
            // session only if no relay knows it.
            Err(RelayError::UnknownSession) => unknown = true,
            Err(e) => return Err(e),
        }
    }
    Err(if unknown {
        RelayError::UnknownSession
    } else {
        last
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    //= spec/relay.md#RL-TLS-6
    #[test]
    fn pin_mismatch_names_the_presented_and_the_expected_pins() {
        let one = PinMismatch {
            presented: [0xaa; 32],
            expected: vec![[0x01; 32]],
        }
        .to_string();
        assert_eq!(
            one,
            format!(
                "presented SHA-256 {}, expected {}",
                "aa".repeat(32),
                "01".repeat(32)
            )
        );
        let many = PinMismatch {
            presented: [0xaa; 32],
            expected: (1..=6).map(|i| [i; 32]).collect(),
        }
        .to_string();
        let shown: Vec<String> = (1..=4u8).map(|i| crate::tls::hex(&[i; 32])).collect();
        assert_eq!(
            many,
            format!(
                "presented SHA-256 {}, expected one of {} (and 2 more)",
                "aa".repeat(32),
                shown.join(", ")
            )
        );
    }

    #[test]
    fn an_empty_pin_set_is_refused() {
        assert!(matches!(
            client_tls(&RelayTrust::Fingerprints(Vec::new())),
            Err(RelayError::Config(_))
        ));
        assert!(client_tls(&RelayTrust::Fingerprints(vec![[1; 32], [2; 32]])).is_ok());
    }

    /// The informative fleet vector of spec/relay.md §10, read from the spec.
    #[test]
    fn rendezvous_order_matches_the_spec_vector() {
        let spec = include_str!("../../spec/relay.md");
        let order_line = spec
            .lines()
            .find_map(|l| l.trim().strip_prefix("order = "))
            .expect("order line in spec/relay.md §10");
        let expected: Vec<String> = order_line.split(", ").map(str::to_string).collect();
        let rid = crate::secret::SessionSecret::from_bytes([0; 16]).rendezvous_id();
        let relays: Vec<String> = [
            "relay-a.example:443",
            "Relay-C.example:443 ",
            "relay-b.example:443",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(rendezvous_order(&relays, &rid), expected);
        // Any input order gives the same result.
        let mut rev = relays.clone();
        rev.reverse();
        assert_eq!(rendezvous_order(&rev, &rid), expected);
    }
}
