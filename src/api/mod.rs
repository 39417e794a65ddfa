//! The library API: a host creates a session on a relay and gets its code; a
//! guest joins with the code; both get one [`Session`] stream carrying
//! end-to-end TLS 1.3, authenticated by the session code.
//!
//! ```text
//!   host                          relay                          guest
//!   host(cfg) ── CreateSession(rendezvous_id, token) ──►
//!   code() ─────────────── (out of band) ────────────────────► join(code, cfg)
//!                               ◄── Join(rendezvous_id) ─────────
//!   ◄──────── Paired, TLS ends ──┼── Paired, TLS ends ─────────►
//!   ◄─── preambles: TCP candidates sealed with a key from the code ───►
//!        (both dial direct at once, `crate::early`)
//!   ◄═══════ e2e TLS 1.3 + HMAC(auth_key, role ‖ exporter ‖ preambles), forwarded blindly ═══►
//! ```
//!
//! The relay only ever sees `rendezvous_id` (a one-way derivation of the
//! secret); the auth key never leaves the peers, so a relay that terminates
//! TLS itself, splices sessions or flips bits causes a clean failure, never
//! accepted data (see `spec/session.md`, `spec/relay.md`).

mod options;

pub use options::{Fingerprint, Options, OptionsBuilder};

use crate::direct::DirectOptions;
use crate::e2e::{self, E2eError, E2eOptions, Role};
use crate::relay::client::{self, RelayClientConfig, RelayError, RelayTrust, WaitingSession};
use crate::secret::SessionSecret;
use crate::session::{SessionControl, SessionStream};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use proto::session::Path;

/// Everything that can go wrong, with one short line each.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The session code did not parse (the reason attached).
    InvalidCode(String),
    /// No waiting session with this code on the relay (unknown, expired or already taken).
    UnknownSession,
    /// The host's session expired on the relay before a guest joined.
    Expired,
    /// The relay refuses joins from this source after too many failures; retry after this long.
    LockedOut(Duration),
    /// No relay could be reached (the last error attached).
    RelayUnreachable(String),
    /// The relay's certificate did not match the configured trust (details attached).
    RelayCertificateMismatch(String),
    /// The relay refused: the operator token is missing or wrong.
    Unauthorized,
    /// The peer's end-to-end tag did not verify: it does not know the code, or the relay interfered.
    PeerAuthFailed,
    /// The end-to-end handshake or tag exchange did not finish in time.
    TimedOut,
    /// Any other relay failure.
    Relay(RelayError),
    /// Any other end-to-end (TLS) failure.
    E2e(E2eError),
    /// An I/O error on the local side (randomness, sockets, the early phase).
    Io(io::Error),
    /// [`OptionsBuilder::build`] found a mistake (what attached).
    InvalidOptions(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidCode(e) => write!(f, "invalid session code: {e}"),
            Error::UnknownSession => f.write_str("unknown or expired session"),
            Error::Expired => f.write_str("session expired: no guest joined in time"),
            Error::LockedOut(d) => write!(f, "locked out, retry in {} s", d.as_secs().max(1)),
            Error::RelayUnreachable(e) => write!(f, "relay unreachable: {e}"),
            Error::RelayCertificateMismatch(e) => write!(f, "relay certificate mismatch ({e})"),
            Error::Unauthorized => f.write_str("relay refused: operator token missing or wrong"),
            Error::PeerAuthFailed => f.write_str("peer authentication failed"),
            Error::TimedOut => f.write_str("timed out"),
            Error::Relay(e) => write!(f, "relay: {e}"),
            Error::E2e(e) => write!(f, "end-to-end: {e}"),
            Error::Io(e) => write!(f, "i/o: {e}"),
            Error::InvalidOptions(e) => write!(f, "invalid options: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<RelayError> for Error {
    fn from(e: RelayError) -> Error {
        match e {
            RelayError::UnknownSession => Error::UnknownSession,
            RelayError::LockedOut { retry_after } => Error::LockedOut(retry_after),
            RelayError::Unreachable(s) => Error::RelayUnreachable(s),
            RelayError::CertificateMismatch(s) => Error::RelayCertificateMismatch(s),
            RelayError::Unauthorized => Error::Unauthorized,
            RelayError::Expired => Error::Expired,
            other => Error::Relay(other),
        }
    }
}

impl From<E2eError> for Error {
    fn from(e: E2eError) -> Error {
        match e {
            E2eError::PeerAuthFailed => Error::PeerAuthFailed,
            E2eError::Timeout => Error::TimedOut,
            other => Error::E2e(other),
        }
    }
}

/// A host's session, registered on a relay and waiting for its guest.
pub struct HostSession {
    secret: SessionSecret,
    waiting: WaitingSession,
    e2e: E2eOptions,
    direct: DirectOptions,
    /// Whether the host pins relay certificates (then its tickets carry a pin).
    pinned: bool,
    /// For setting the relay path up again.
    relay_cfg: RelayClientConfig,
}

impl fmt::Debug for HostSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostSession")
            .field("relay", &self.waiting.relay())
            .finish_non_exhaustive()
    }
}

/// Create a session on the relay chosen by rendezvous hashing.
pub async fn host(opts: &Options) -> Result<HostSession, Error> {
    let secret = SessionSecret::generate().map_err(|e| Error::Io(io::Error::other(e)))?;
    let waiting = client::create_session(&opts.relay, secret.rendezvous_id()).await?;
    Ok(HostSession {
        secret,
        waiting,
        e2e: opts.e2e.clone(),
        direct: opts.direct.clone(),
        pinned: matches!(opts.relay.trust, RelayTrust::Fingerprints(_)),
        relay_cfg: opts.relay.clone(),
    })
}

impl HostSession {
    /// The code the guest needs (give it out of band).
    pub fn code(&self) -> String {
        self.secret.code()
    }
    /// The relay the session lives on.
    pub fn relay(&self) -> &str {
        self.waiting.relay()
    }
    /// Wait for the guest, then run and verify the end-to-end handshake.
    /// Cancel safety: dropping the future abandons the session.
    pub async fn accept(self) -> Result<Session, Error> {
        let paired = self.waiting.paired().await?;
        Session::begin(
            paired,
            Role::Host,
            Arc::new(self.secret),
            &self.e2e,
            self.direct,
            self.relay_cfg,
        )
        .await
    }
}

/// Join the session named by `code`.
pub async fn join(code: &str, opts: &Options) -> Result<Session, Error> {
    let secret = SessionSecret::parse(code).map_err(|e| Error::InvalidCode(e.to_string()))?;
    let paired = client::join_session(&opts.relay, secret.rendezvous_id()).await?;
    Session::begin(
        paired,
        Role::Guest,
        Arc::new(secret),
        &opts.e2e,
        opts.direct.clone(),
        opts.relay.clone(),
    )
    .await
}

/// The relay's UDP address service from its PAIRED grant.
fn relay_udp(p: &client::Paired) -> Option<crate::direct_udp::RelayUdp> {
    p.udp.map(|u| crate::direct_udp::RelayUdp {
        addr: u.addr,
        token: u.token,
    })
}

/// One authenticated, end-to-end encrypted byte stream between host and guest.
/// Only [`HostSession::accept`] and [`join`] construct it, after the peer
/// proved knowledge of the session code.
///
/// Use it as any tokio stream (`AsyncReadExt`, `AsyncWriteExt`,
/// [`tokio::io::split`], [`tokio::io::copy`]). Errors are `io::Error`s
/// whose inner error is a [`SessionFailure`](crate::SessionFailure)
/// (`e.get_ref().and_then(|e| e.downcast_ref::<xtcp::SessionFailure>())`).
///
/// # Ending a session
///
/// - [`shutdown`](tokio::io::AsyncWriteExt::shutdown) ends our side: the
///   peer reads end of stream after every byte written; it completes once
///   the peer acknowledged all of them (and, if the peer's side had ended
///   too, once the session's last frames left).
/// - Reading returns end of stream (`Ok(0)`) after the peer's last byte;
///   when our side had ended too, only once the session's last frames left.
/// - [`close`](Session::close) does both ends at once: the one call before
///   returning from `main`.
///
/// So `shutdown()` plus reading to end of stream, or `close().await`, is
/// enough for the peer never to see an error.
///
/// Dropping a `Session` ends it too: the driver keeps delivering what was
/// written (for at most 30 s) while the tokio runtime runs, then closes.
/// A process that exits (or a runtime that shuts down) before that loses
/// the undelivered bytes, and the peer sees the session fail.
pub struct Session {
    inner: SessionStream,
    cipher: String,
    relay: String,
    observed: SocketAddr,
    /// The guest's relay round trip from its end-to-end handshake.
    relay_rtt: Option<Duration>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("path", &self.inner.path())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// From pairing to a running session: preambles (direct attempts begin,
    /// `crate::preamble`), the e2e handshake over the relay, the driver.
    async fn begin(
        paired: client::Paired,
        role: Role,
        secret: Arc<SessionSecret>,
        e2e_opts: &E2eOptions,
        direct: DirectOptions,
        relay_cfg: RelayClientConfig,
    ) -> Result<Session, Error> {
        let relay = paired.relay.clone();
        let reconnect = crate::session::Reconnect {
            relay_cfg,
            relay: relay.clone(),
            secret: secret.clone(),
            handshake_timeout: e2e_opts.handshake_timeout,
            binding: e2e_opts.binding.clone(),
        };
        let udp = relay_udp(&paired);
        let observed = paired.observed;
        let relay_local = paired.stream.local_addr().ok();
        let (early, pipe) =
            crate::early::Early::begin(paired.stream, role, secret.clone(), observed, &direct)
                .await
                .map_err(Error::Io)?;
        // The tags bind both preambles (and any binding the caller adds).
        let extra = e2e_opts.binding.clone();
        let preambles = early.relay_binding();
        let binding = async move {
            let mut b = extra;
            b.extend_from_slice(&preambles.await?);
            Some(b)
        };
        let publish = early.exporter_publisher();
        // The guest measures the relayed round trip on the way: ClientHello
        // out, the host's flight back (the agreed UDP start, §4.3.2).
        let started = tokio::time::Instant::now();
        let mut tls_done = None;
        let relay_path = e2e::handshake_with(
            early.tls(),
            pipe,
            &secret,
            e2e_opts.handshake_timeout,
            binding,
            // Direct attempts under way bind their tags to it at once.
            |e| {
                publish.send_replace(Some(e));
                tls_done = Some(started.elapsed());
            },
            Vec::new,
        )
        .await?;
        let relay_rtt = tls_done.filter(|_| role == Role::Guest);
        let cipher = relay_path
            .cipher_suite()
            .map(|s| format!("{s:?}"))
            .unwrap_or_default();
        let inner = crate::session::start(crate::session::Start {
            relay: Box::new(relay_path),
            relay_local,
            role,
            early,
            relay_rtt,
            observed,
            relay_udp: udp,
            opts: direct,
            reconnect: Some(reconnect),
        })
        .await
        // The peer's preamble did not open: the relay altered it.
        .map_err(|_| Error::PeerAuthFailed)?;
        Ok(Session {
            inner,
            cipher,
            relay,
            observed,
            relay_rtt,
        })
    }
    /// The path the bytes currently take.
    pub fn path(&self) -> Path {
        self.inner.path()
    }
    /// Path changes as they happen: `changed().await`, then `borrow()`.
    /// Every session starts on [`Path::Relay`].
    pub fn path_events(&self) -> tokio::sync::watch::Receiver<Path> {
        self.inner.path_events()
    }
    /// The peer's address on a direct path (`None` on the relay path).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.direct_peer().map(|(addr, _)| addr)
    }
    /// A round-trip time estimate: on a direct UDP path, XTCP's smoothed
    /// RTT of that path; otherwise the relay path's round trip (guest to
    /// relay to host and back) as the guest's end-to-end handshake measured
    /// it at setup. `None` when neither is known (on the host, which does
    /// not measure the relay path, unless the path is direct UDP).
    pub fn rtt(&self) -> Option<Duration> {
        self.inner
            .direct_peer()
            .and_then(|(_, rtt)| rtt)
            .or(self.relay_rtt)
    }
    /// Application bytes written so far (taken by the session; not all
    /// necessarily delivered yet).
    pub fn bytes_sent(&self) -> u64 {
        self.inner.bytes_written()
    }
    /// Application bytes read so far.
    pub fn bytes_received(&self) -> u64 {
        self.inner.bytes_read()
    }
    /// A handle to watch the session's path from another task while this
    /// one does I/O, and to wait until it is [finished](SessionControl::finished).
    pub fn control(&self) -> SessionControl {
        self.inner.control()
    }
    /// The negotiated TLS 1.3 cipher suite (of the relay path; direct paths
    /// use the same profile).
    pub fn cipher_suite(&self) -> String {
        self.cipher.clone()
    }
    /// The relay the session met on.
    pub fn relay(&self) -> &str {
        &self.relay
    }
    /// This peer's address as the relay observed it.
    pub fn observed_addr(&self) -> SocketAddr {
        self.observed
    }
    /// End the session: end our side and wait until the peer has every
    /// byte written ([`shutdown`](tokio::io::AsyncWriteExt::shutdown)),
    /// then close the session (bytes still arriving from the peer are
    /// discarded; a peer still writing gets an error) and wait until its
    /// last frames left this process. After `Ok`, the process may exit.
    pub async fn close(mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let control = self.control();
        self.shutdown().await?;
        drop(self);
        control.finished().await;
        Ok(())
    }
}

impl AsyncRead for Session {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Session {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl HostSession {
    /// A ticket for the guest: the code, the relay this session lives on and,
    /// if the host pins relay certificates, the fingerprint of the one that
    /// relay presented (one of the host's pins; `spec/session.md` §5).
    /// Give it out of band, like the code; [`join_ticket`] takes it.
    pub fn ticket(&self) -> String {
        let t = crate::ticket::Ticket {
            secret: self.secret.clone(),
            relays: vec![crate::ticket::TicketRelay {
                addr: self.waiting.relay().to_string(),
                //= spec/session.md#SE-TICKET-5
                //# the fingerprint of the certificate that relay presented when the session was
                //# registered
                pin: self.waiting.fingerprint().filter(|_| self.pinned),
            }],
        };
        // A relay name from the host's own config that breaks the ticket
        // bounds (over 255 bytes, not printable ASCII) is not representable.
        t.encode().unwrap_or_else(|_| self.code())
    }
}

/// Join by a ticket ([`HostSession::ticket`]): the ticket's relays are tried
/// in order, each pinned by its certificate fingerprint when the ticket
/// carries one (and by the pins in `opts.relay.trust`, if any, too), else
/// trusted as `opts.relay.trust` says; the rest of `opts` (timeouts, paths)
/// applies as in [`join`]. A bare code is passed to [`join`].
pub async fn join_ticket(ticket: &str, opts: &Options) -> Result<Session, Error> {
    if !crate::ticket::is_ticket(ticket) {
        return join(ticket, opts).await;
    }
    let t = crate::ticket::Ticket::parse(ticket)
        .map_err(|e| Error::InvalidCode(format!("ticket: {e}")))?;
    let rid = t.secret.rendezvous_id();
    let mut last = None;
    for r in &t.relays {
        let mut cfg = opts.relay.clone();
        cfg.relays = vec![r.addr.clone()];
        if let Some(pin) = r.pin {
            cfg.trust = ticket_trust(pin, &opts.relay.trust);
        }
        match client::join_session(&cfg, rid).await {
            Ok(paired) => {
                // Set up again on this relay only: the ticket names it.
                return Session::begin(
                    paired,
                    Role::Guest,
                    Arc::new(t.secret.clone()),
                    &opts.e2e,
                    opts.direct.clone(),
                    cfg,
                )
                .await;
            }
            Err(e @ RelayError::Unreachable(_)) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or(Error::UnknownSession, Error::from))
}

/// The trust for a ticket entry with a pin: that pin, and the guest's own
/// pins if it has any (so a relay that changed its certificate while the
/// session waited still passes when the guest knows the new one).
fn ticket_trust(pin: [u8; 32], own: &RelayTrust) -> RelayTrust {
    let mut pins = vec![pin];
    if let RelayTrust::Fingerprints(own) = own {
        pins.extend(own.iter().filter(|p| **p != pin));
    }
    RelayTrust::Fingerprints(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_trust_is_the_tickets_pin_and_the_guests_own_pins() {
        let t = ticket_trust([1; 32], &RelayTrust::SystemRoots);
        assert!(matches!(&t, RelayTrust::Fingerprints(p) if p == &[[1; 32]]));
        let own = RelayTrust::Fingerprints(vec![[2; 32], [1; 32], [3; 32]]);
        let t = ticket_trust([1; 32], &own);
        assert!(matches!(&t, RelayTrust::Fingerprints(p) if p == &[[1; 32], [2; 32], [3; 32]]));
    }
}
