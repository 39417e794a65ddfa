//! End-to-end TLS 1.3 between the peers, authenticated by the session code
//! (`spec/session.md` §3). The same code runs over any byte stream: the relay
//! pipe, a direct TCP connection, an XTCP stream.
//!
//! ```text
//!   guest = TLS client                         host = TLS server
//!   ── ClientHello ───────────────────────────────►   ephemeral self-signed cert,
//!   ◄──────────────── ServerHello … Finished ──────   fresh ECDHE (forward secrecy)
//!   ── Finished ──────────────────────────────────►
//!   E  = TLS-Exporter("EXPORTER-xtcp-e2e-auth", no context, 32)     RFC 8446 §7.5
//!   tag(role) = HMAC-SHA256(auth_key, "xtcp e2e v1" ‖ role ‖ E ‖ len16(binding) ‖ binding)
//!   ── tag(guest) ───────────►   ◄────── tag(host) ──   sent at once by both,
//!                                                     each checked in constant time
//!   application bytes, only after the peer's tag verified
//! ```
//!
//! Certificates carry no trust here: whoever terminates TLS (a relay acting as
//! man in the middle included) gets its own exporter value and cannot produce
//! the tag without `auth_key`, which only holders of the code can derive.

use crate::secret::SessionSecret;
use crate::tls;
use rustls::pki_types::ServerName;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

pub(crate) const EXPORTER_LABEL: &[u8] = b"EXPORTER-xtcp-e2e-auth";
const TAG_CONTEXT: &[u8] = b"xtcp e2e v1";
const TAG_LEN: usize = 32;
/// ALPN of the peers' TLS.
pub const ALPN: &[u8] = b"xtcp-e2e/1";
/// The name the guest asks for (the certificate is ephemeral and unchecked).
const PEER_NAME: &str = "peer.xtcp.invalid";

/// Which side of the session this peer is (the host is the TLS server,
/// the guest the TLS client).
pub use proto::session::Role;

/// Options of the end-to-end handshake.
#[derive(Clone, Debug)]
pub struct E2eOptions {
    /// Bound on TLS handshake plus tag exchange.
    pub handshake_timeout: Duration,
    /// Extra bytes both sides bind into the tag (e.g. the relay path's
    /// exporter when authenticating a direct path); empty for the relay path.
    pub binding: Vec<u8>,
}

impl Default for E2eOptions {
    fn default() -> Self {
        E2eOptions {
            handshake_timeout: Duration::from_secs(20),
            binding: Vec::new(),
        }
    }
}

/// Why the end-to-end channel could not be established.
#[derive(Debug)]
#[non_exhaustive]
pub enum E2eError {
    /// TLS failed (bad record, alert, wrong protocol …): e.g. a relay that
    /// flipped bits or injected bytes.
    Tls(String),
    /// The peer's tag did not verify: it does not know the session code, or a
    /// relay terminated TLS itself or spliced another session.
    PeerAuthFailed,
    /// The handshake or tag exchange did not finish within the timeout.
    Timeout,
    /// The stream closed during the handshake or tag exchange.
    Closed,
    /// Local setup failure (certificate generation, a binding over 65535 bytes).
    Setup(String),
}

impl fmt::Display for E2eError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            E2eError::Tls(e) => write!(f, "TLS failure: {e}"),
            E2eError::PeerAuthFailed => {
                f.write_str("peer authentication failed (wrong code or tampering)")
            }
            E2eError::Timeout => f.write_str("end-to-end handshake timed out"),
            E2eError::Closed => f.write_str("stream closed during the end-to-end handshake"),
            E2eError::Setup(e) => write!(f, "TLS setup: {e}"),
        }
    }
}

impl std::error::Error for E2eError {}

fn io_to_e2e(e: io::Error) -> E2eError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => E2eError::Closed,
        _ => E2eError::Tls(e.to_string()),
    }
}

fn client_config() -> Result<rustls::ClientConfig, E2eError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        //= spec/session.md#SE-TLS-1
        //# Both peers MUST use TLS 1.3 (RFC 8446) with the following profile
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| E2eError::Setup(e.to_string()))?
        .dangerous()
        // The certificate is ephemeral: trust comes from the tag, not from it.
        //= spec/session.md#SE-SIG-1
        //# the guest MUST verify the CertificateVerify signature with the certificate's key
        .with_custom_certificate_verifier(Arc::new(tls::SignatureOnlyVerifier::new(|_| Ok(()))))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.enable_early_data = false;
    Ok(cfg)
}

/// The TLS configuration of one session's end-to-end handshakes
/// (`spec/session.md` §3.1). For the host it holds the self-signed
/// certificate and its P-256 key, generated once, here, and presented in
/// every handshake of the session (the relay path's and each direct
/// path's): a stranger's ClientHello on a direct listener costs the host
/// an ECDHE share and one signature, no key generation. Cheap to clone.
#[derive(Clone)]
pub struct SessionTls(Side);

#[derive(Clone)]
enum Side {
    Guest(Arc<rustls::ClientConfig>),
    Host(Arc<rustls::ServerConfig>),
}

impl fmt::Debug for SessionTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SessionTls").field(&self.role()).finish()
    }
}

impl SessionTls {
    /// The configuration of `role`'s handshakes for one session (the host's
    /// certificate is generated now).
    pub fn new(role: Role) -> Result<SessionTls, E2eError> {
        Ok(SessionTls(match role {
            Role::Guest => Side::Guest(Arc::new(client_config()?)),
            Role::Host => Side::Host(Arc::new(server_config()?)),
        }))
    }

    /// The role whose handshakes this configures.
    pub fn role(&self) -> Role {
        match self.0 {
            Side::Guest(_) => Role::Guest,
            Side::Host(_) => Role::Host,
        }
    }
}

fn server_config() -> Result<rustls::ServerConfig, E2eError> {
    //= spec/session.md#SE-CERT-1
    //# The host MUST generate its certificate and key once per session
    let ck = tls::self_signed(&[PEER_NAME]).map_err(|e| E2eError::Setup(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(tls::crypto_provider())
        //= spec/session.md#SE-TLS-1
        //# Both peers MUST use TLS 1.3 (RFC 8446) with the following profile
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| E2eError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(ck.chain, ck.key)
        .map_err(|e| E2eError::Setup(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.send_tls13_tickets = 0;
    cfg.max_early_data_size = 0;
    // Shared by the session's handshakes: nothing of one may resume another.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

/// The bytes a role's tag covers (`spec/session.md` §3.2).
fn tag_input(role: Role, exporter: &[u8; 32], binding: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(TAG_CONTEXT.len() + 1 + 32 + 2 + binding.len());
    msg.extend_from_slice(TAG_CONTEXT);
    msg.push(role.byte());
    msg.extend_from_slice(exporter);
    msg.extend_from_slice(&(binding.len() as u16).to_be_bytes());
    msg.extend_from_slice(binding);
    msg
}

/// Run the end-to-end handshake over `io` and verify the peer's knowledge of
/// the session code. Returns only after the peer's tag verified.
pub async fn handshake<S>(
    io: S,
    role: Role,
    secret: &SessionSecret,
    opts: &E2eOptions,
) -> Result<E2eStream<S>, E2eError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let binding = opts.binding.clone();
    handshake_bound(
        io,
        role,
        secret,
        opts.handshake_timeout,
        async { Some(binding) },
        |_| {},
        Vec::new,
    )
    .await
}

/// [`handshake`] with a binding that may become known only while TLS runs
/// (a direct path whose TLS starts before the relay path's exporter exists,
/// `spec/direct.md` §4.2): TLS proceeds at once, the tag waits for
/// `binding`. `None` from it (the relay path failed) ends the handshake
/// with [`E2eError::Closed`]. `timeout` bounds everything, the wait included.
/// `on_tls` gets the exporter as soon as TLS is done, before the tags (the
/// relay path hands it to direct attempts already under way: their own
/// tags then bind it, so nothing is trusted on it yet). `after_tag` gives
/// bytes sent right behind this side's tag, in the same flight, before the
/// peer's tag is checked: the caller makes them unreadable to anyone but
/// the peer (the guest's masked early `RESUME` on a direct path,
/// `spec/direct.md` §4.6); it sees them as already sent on the returned
/// stream.
//= spec/session.md#SE-TAG-4
//# It MUST NOT retry on the same stream.
pub async fn handshake_bound<S, F>(
    io: S,
    role: Role,
    secret: &SessionSecret,
    timeout: Duration,
    binding: F,
    on_tls: impl FnOnce([u8; 32]),
    after_tag: impl FnOnce() -> Vec<u8>,
) -> Result<E2eStream<S>, E2eError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: std::future::Future<Output = Option<Vec<u8>>>,
{
    let tls = SessionTls::new(role)?;
    handshake_with(&tls, io, secret, timeout, binding, on_tls, after_tag).await
}

/// [`handshake_bound`] with the session's TLS configuration (one host
/// certificate per session, [`SessionTls`]); the role is the
/// configuration's.
pub async fn handshake_with<S, F>(
    tls: &SessionTls,
    io: S,
    secret: &SessionSecret,
    timeout: Duration,
    binding: F,
    on_tls: impl FnOnce([u8; 32]),
    after_tag: impl FnOnce() -> Vec<u8>,
) -> Result<E2eStream<S>, E2eError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: std::future::Future<Output = Option<Vec<u8>>>,
{
    let run = handshake_inner(io, tls, secret, binding, on_tls, after_tag);
    //= spec/session.md#SE-TAG-5
    //# TLS handshake plus tag exchange MUST be bounded in time
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(E2eError::Timeout),
    }
}

async fn handshake_inner<S, F>(
    io: S,
    tls: &SessionTls,
    secret: &SessionSecret,
    binding: F,
    on_tls: impl FnOnce([u8; 32]),
    after_tag: impl FnOnce() -> Vec<u8>,
) -> Result<E2eStream<S>, E2eError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: std::future::Future<Output = Option<Vec<u8>>>,
{
    let role = tls.role();
    let mut stream: TlsStream<S> = match &tls.0 {
        Side::Guest(cfg) => {
            let name =
                ServerName::try_from(PEER_NAME).map_err(|e| E2eError::Setup(e.to_string()))?;
            TlsConnector::from(cfg.clone())
                .connect(name, io)
                .await
                .map_err(io_to_e2e)?
                .into()
        }
        Side::Host(cfg) => TlsAcceptor::from(cfg.clone())
            .accept(io)
            .await
            .map_err(io_to_e2e)?
            .into(),
    };
    //= spec/session.md#SE-ALPN-1
    //# a peer MUST abort if it was not negotiated
    if stream.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(E2eError::Tls(
            "peer did not negotiate ALPN xtcp-e2e/1".into(),
        ));
    }
    let exported = match &stream {
        TlsStream::Client(s) => {
            s.get_ref()
                .1
                .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        }
        TlsStream::Server(s) => {
            s.get_ref()
                .1
                .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        }
    };
    let exporter: [u8; 32] = exported.map_err(|e| E2eError::Tls(e.to_string()))?;
    on_tls(exporter);
    let binding = binding.await.ok_or(E2eError::Closed)?;
    if binding.len() > usize::from(u16::MAX) {
        return Err(E2eError::Setup(
            "channel binding longer than 65535 bytes".into(),
        ));
    }
    let binding = binding.as_slice();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret.auth_key());
    let mine = ring::hmac::sign(&key, &tag_input(role, &exporter, binding));
    //= spec/session.md#SE-TAG-1
    //# A peer MUST NOT send application bytes before its tag
    let mut flight = mine.as_ref().to_vec();
    flight.extend_from_slice(&after_tag());
    stream.write_all(&flight).await.map_err(io_to_e2e)?;
    stream.flush().await.map_err(io_to_e2e)?;
    let mut theirs = [0u8; TAG_LEN];
    stream
        .read_exact(&mut theirs)
        .await
        .map_err(|e| match e.kind() {
            // A close_notify before the tag: the peer (or the relay) gave up.
            io::ErrorKind::UnexpectedEof => E2eError::PeerAuthFailed,
            _ => io_to_e2e(e),
        })?;
    // Constant-time comparison (ring::hmac::verify).
    //= spec/session.md#SE-TAG-3
    //# If the tag does not verify, if the stream ends (EOF or close_notify) before 32 bytes
    //# arrive, or if TLS fails, the peer MUST close the connection and report failure
    ring::hmac::verify(&key, &tag_input(role.peer(), &exporter, binding), &theirs)
        .map_err(|_| E2eError::PeerAuthFailed)?;
    let suite = stream
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .map(|s| s.suite());
    //= spec/session.md#SE-TAG-2
    //# MUST NOT deliver any received application byte, nor send any of its own beyond the
    //# tag, before the peer's tag has verified.
    Ok(E2eStream {
        inner: stream,
        suite,
        exporter,
    })
}

/// What the early-bytes mask of a connection is derived under.
const EARLY_LABEL: &[u8] = b"xtcp early resume v1";

/// The one-time mask of the bytes a peer sends behind its tag, before the
/// other's tag is checked (the guest's early `RESUME` on a direct path,
/// `spec/direct.md` §4.6): HMAC-SHA256(auth_key, "xtcp early resume v1" ‖
/// E), with E this connection's exporter. Whoever completed TLS without the
/// code (a stranger on a listener) cannot compute it, and no two
/// connections share an E, so masked bytes tell it nothing.
pub(crate) fn early_mask(secret: &SessionSecret, exporter: &[u8; 32]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret.auth_key());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(EARLY_LABEL);
    ctx.update(exporter);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// XOR `bytes` with `mask` (at most its 32 bytes; masking twice unmasks).
pub(crate) fn apply_mask(bytes: &mut [u8], mask: &[u8; 32]) {
    for (b, m) in bytes.iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// A stream whose first `len` bytes read are unmasked with `mask` (the
/// host's side of a direct path: the guest's early `RESUME`); everything
/// else passes through.
pub(crate) struct Unmasked<S> {
    inner: S,
    mask: [u8; 32],
    /// How many of the first bytes are masked, and how many were read.
    len: usize,
    done: usize,
}

impl<S> Unmasked<S> {
    /// Unmask the first `len` (at most 32) bytes read from `inner`.
    pub(crate) fn new(inner: S, mask: [u8; 32], len: usize) -> Self {
        Unmasked {
            inner,
            mask,
            len: len.min(32),
            done: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Unmasked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.done < this.len {
            let fresh = buf.filled_mut().get_mut(before..).unwrap_or_default();
            let mask = this.mask.get(this.done..this.len).unwrap_or_default();
            for (b, m) in fresh.iter_mut().zip(mask) {
                *b ^= m;
            }
            this.done = (this.done + fresh.len()).min(this.len);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Unmasked<S> {
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

/// An authenticated end-to-end stream. Constructed only by [`handshake`],
/// after the peer's tag verified.
pub struct E2eStream<S> {
    inner: TlsStream<S>,
    suite: Option<rustls::CipherSuite>,
    exporter: [u8; 32],
}

impl<S> fmt::Debug for E2eStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E2eStream")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl<S> E2eStream<S> {
    /// The negotiated cipher suite.
    pub fn cipher_suite(&self) -> Option<rustls::CipherSuite> {
        self.suite
    }
    /// This channel's exporter value (used to bind a later direct path to it).
    pub fn exporter(&self) -> [u8; 32] {
        self.exporter
    }
    /// The transport under TLS.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref().0
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for E2eStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for E2eStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<S> E2eStream<S> {
        /// The certificate the TLS server presented (on the guest's side).
        fn peer_certificate(&self) -> Option<Vec<u8>> {
            let certs = match &self.inner {
                TlsStream::Client(c) => c.get_ref().1.peer_certificates(),
                TlsStream::Server(c) => c.get_ref().1.peer_certificates(),
            };
            certs.and_then(|c| c.first()).map(|c| c.as_ref().to_vec())
        }
    }

    async fn run(host: &SessionTls, secret: &SessionSecret) -> Vec<u8> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let guest = SessionTls::new(Role::Guest).expect("config");
        let t = Duration::from_secs(5);
        let none = || async { Some(Vec::new()) };
        let (h, g) = tokio::join!(
            handshake_with(host, a, secret, t, none(), |_| {}, Vec::new),
            handshake_with(&guest, b, secret, t, none(), |_| {}, Vec::new)
        );
        assert!(h.is_ok(), "host: {h:?}");
        g.expect("guest").peer_certificate().expect("a certificate")
    }

    /// The host's certificate (and its key) is made once per session and
    /// presented in each of the session's handshakes; another session has
    /// another one.
    //= spec/session.md#SE-CERT-1
    #[tokio::test]
    async fn the_host_presents_one_certificate_per_session() {
        let secret = SessionSecret::generate().expect("rng");
        let host = SessionTls::new(Role::Host).expect("config");
        let first = run(&host, &secret).await;
        let second = run(&host.clone(), &secret).await;
        assert_eq!(
            first, second,
            "one certificate for the session's handshakes"
        );
        let other = run(&SessionTls::new(Role::Host).expect("config"), &secret).await;
        assert_ne!(first, other, "another session, another certificate");
    }

    /// The early `RESUME`'s mask: the known answer of `spec/direct.md` §4.6
    /// (computed with Python's `hmac`), and the host's unmasking through
    /// reads of any size.
    //= spec/direct.md#DI-EARLY-3
    #[tokio::test]
    async fn early_resume_mask_matches_the_spec_vector_and_unmasks_in_pieces() {
        let mask = early_mask(&SessionSecret::from_bytes([0; 16]), &[0; 32]);
        let mut frame = Vec::new();
        let resume = proto::session::Frame::Resume {
            path_id: proto::session::PROVISIONAL_PATH,
            received: 65541,
        };
        proto::session::encode(&resume, &mut frame).expect("encodes");
        let plain = frame.clone();
        apply_mask(&mut frame, &mask);
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let lines = [
            format!("mask[0..15] = {}", hex(&mask[..15])),
            format!("frame       = {}", hex(&plain)),
            format!("sent        = {}", hex(&frame)),
        ];
        let spec = include_str!("../spec/direct.md");
        for l in &lines {
            assert!(
                spec.lines().any(|s| s.trim() == l),
                "not in spec/direct.md: {l}"
            );
        }
        // The host reads it back in pieces, then the stream as it is.
        let (mut a, b) = tokio::io::duplex(64);
        let mut wire = frame.clone();
        wire.extend_from_slice(b"after");
        a.write_all(&wire).await.expect("write");
        drop(a);
        let mut r = Unmasked::new(b, mask, plain.len());
        let mut got = Vec::new();
        let mut one = [0u8; 4];
        loop {
            let n = r.read(&mut one[..1 + got.len() % 4]).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&one[..n]);
        }
        assert_eq!(&got[..plain.len()], &plain[..]);
        assert_eq!(&got[plain.len()..], b"after");
    }
}
