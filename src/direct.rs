//! Direct TCP paths between the peers (`spec/direct.md` §4): candidate
//! gathering, a listener on an OS-assigned port, outgoing connections from
//! that same port (TCP simultaneous open through NATs, RFC 9293 §3.5 figure
//! 8), and the end-to-end handshake that proves the session on each
//! connection, bound to the relay path's TLS exporter.
//!
//! Every connection that completes TCP is handed to
//! [`crate::e2e::handshake`] with the session secret and the binding
//! `"xtcp direct v1" ‖ relay exporter`: a party that knows everything the
//! relay knows (rendezvous id, addresses) but not the code fails the HMAC
//! tag and is dropped; a tag from another session (another exporter) fails
//! too. The first proven connection is offered to the session driver; the
//! host decides which one carries the session (`RESUME` on it).

use crate::e2e::{self, Role, SessionTls};
use crate::secret::SessionSecret;
use proto::session::slots::{AcceptSlots, LISTENER_SLOTS, LISTENER_SLOTS_PER_SOURCE};
use proto::session::{encode, Candidate, CandidateKind, Frame, Transport, PROVISIONAL_PATH};
use proto::session::{Path, PathPolicy};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

/// Tunables of the direct path and the session layer.
#[derive(Clone, Debug)]
pub struct DirectOptions {
    /// Which paths the session may use.
    pub policy: PathPolicy,
    /// Bound on one direct TCP connect.
    pub connect_timeout: Duration,
    /// Bound on the e2e handshake of one direct connection.
    pub handshake_timeout: Duration,
    /// Keepalive on a path that sent nothing for this long.
    pub keepalive_interval: Duration,
    /// A path that received nothing for this long is dead.
    pub keepalive_timeout: Duration,
    /// After losing the direct path, try again this much later.
    pub retry_after: Duration,
    /// Most application bytes sent but not yet acknowledged end to end.
    pub replay_capacity: usize,
    /// Try direct TCP (listener, simultaneous open).
    pub tcp: bool,
    /// Try direct UDP (XTCP through hole punching).
    pub udp: bool,
    /// Start UDP hole punching when no direct path exists this long after a
    /// round of direct attempts began (pairing, or a retry). Zero races TCP
    /// and UDP from the start.
    pub udp_after: Duration,
    /// Keepalive on the relay path when it sent nothing for this long (also
    /// keeps the relay's idle timer from firing). A relay path that received
    /// nothing for three of these is dead: the session fails if the relay
    /// was its path, else the relay is no longer a fallback.
    pub relay_keepalive_interval: Duration,
    /// Port prediction for endpoint-dependent ("symmetric") NATs: this many
    /// extra sockets probe the peer's public address and this many guessed
    /// ports of it are probed (0: off, the default). Bounded birthday
    /// search, `spec/direct.md` §4.3.4.
    pub port_prediction: usize,
    /// How long a lost relay path is set up again (with backoff, on the
    /// same relay, else the next of the list) before the session gives up;
    /// zero: a lost relay path that carries the session ends it
    /// (`spec/direct.md` §4.8).
    pub relay_resume: Duration,
}

impl Default for DirectOptions {
    fn default() -> Self {
        DirectOptions {
            policy: PathPolicy::Auto,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(10),
            replay_capacity: proto::session::DEFAULT_REPLAY_CAPACITY,
            tcp: true,
            udp: true,
            udp_after: Duration::from_secs(10),
            port_prediction: 0,
            relay_keepalive_interval: Duration::from_secs(15),
            relay_resume: proto::session::RELAY_RESUME,
        }
    }
}

/// A byte stream that can carry a session path.
pub trait PathIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> PathIo for T {}

/// A proven direct connection (e2e TLS done, peer's tag verified).
pub(crate) struct DirectConn {
    pub io: Box<dyn PathIo>,
    pub remote: SocketAddr,
    /// `DirectTcp` or `DirectUdp`.
    pub kind: Path,
    /// For XTCP: waits until the peer acknowledged everything (see the
    /// session driver's end).
    pub xtcp: Option<crate::transport::CloseWaiter>,
    /// Guest: the `received` of the early `RESUME(PROVISIONAL_PATH, …)` it
    /// sent (masked) right behind its tag (`spec/direct.md` §4.6).
    pub early_resume: Option<u64>,
    /// The local address of a TCP connection (the driver drops the path
    /// when this address goes away, `spec/direct.md` §4.9).
    pub local: Option<SocketAddr>,
}

/// The guest's early `RESUME` on the wire: header and body (§2.2.3).
const EARLY_RESUME_LEN: usize = proto::session::HEADER_LEN + 12;

/// Most candidates this side advertises (the frame allows 32).
pub(crate) const MAX_OWN_CANDIDATES: usize = 16;

/// What a direct attempt needs to know.
#[derive(Clone)]
pub(crate) struct DirectCtx {
    pub secret: Arc<SessionSecret>,
    pub role: Role,
    /// The session's TLS configuration: the host's one certificate for all
    /// of the session's handshakes (`spec/session.md` §3.1).
    pub tls: SessionTls,
    /// The relay path's TLS exporter, once its e2e handshake is done
    /// (direct attempts begin earlier, at pairing: their tags wait for it).
    pub relay_exporter: watch::Receiver<Option<[u8; 32]>>,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub found: mpsc::Sender<DirectConn>,
    /// The session's `received` offset as the driver last published it (the
    /// guest's early `RESUME` carries it).
    pub received: Arc<AtomicU64>,
}

impl DirectCtx {
    /// The relay path's exporter if known yet.
    pub(crate) fn exporter_now(&self) -> Option<[u8; 32]> {
        *self.relay_exporter.borrow()
    }

    /// The binding of a direct path's tag, `"xtcp direct v1" ‖ relay
    /// exporter`, as soon as the exporter is known (None: the relay path's
    /// handshake failed).
    async fn binding(mut exporter: watch::Receiver<Option<[u8; 32]>>) -> Option<Vec<u8>> {
        let e = (*exporter.wait_for(Option::is_some).await.ok()?)?;
        let mut binding = b"xtcp direct v1".to_vec();
        binding.extend_from_slice(&e);
        Some(binding)
    }

    /// Prove the session on `tcp`, then offer it to the driver.
    async fn prove(self, tcp: TcpStream, remote: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        self.prove_io_from(tcp, local, remote, Path::DirectTcp, None)
            .await;
    }

    /// Prove the session on a direct connection of either transport (e2e
    /// TLS, then the tag bound to the relay path), then offer it.
    pub(crate) async fn prove_io<S: PathIo>(
        self,
        io: S,
        remote: SocketAddr,
        kind: Path,
        xtcp: Option<crate::transport::CloseWaiter>,
    ) {
        self.prove_io_from(io, None, remote, kind, xtcp).await;
    }

    /// [`DirectCtx::prove_io`] for a connection bound to `local`.
    async fn prove_io_from<S: PathIo>(
        self,
        io: S,
        local: Option<SocketAddr>,
        remote: SocketAddr,
        kind: Path,
        xtcp: Option<crate::transport::CloseWaiter>,
    ) {
        let binding = Self::binding(self.relay_exporter.clone());
        let timeout = self.handshake_timeout;
        // The guest's early RESUME: right behind its tag, so that the host
        // can switch the moment it has checked that tag, a round trip
        // sooner than answering the host's RESUME (§4.6). It goes before
        // the host's tag is checked, to whoever completed TLS with us (a
        // stranger on our listener included), so it is masked with a pad
        // only holders of the code can compute, fresh per connection: a
        // stranger learns nothing of how far the stream got.
        let exporter = std::sync::OnceLock::new();
        let early = AtomicU64::new(u64::MAX);
        let after_tag = || {
            let mut out = Vec::new();
            if let (Role::Guest, Some(e)) = (self.role, exporter.get()) {
                let received = self.received.load(Ordering::Acquire);
                early.store(received, Ordering::Relaxed);
                let f = Frame::Resume {
                    path_id: PROVISIONAL_PATH,
                    received,
                };
                // A RESUME always encodes.
                let _ = encode(&f, &mut out);
                //= spec/direct.md#DI-EARLY-3
                //# The guest MUST NOT send its early `RESUME` unmasked
                e2e::apply_mask(&mut out, &e2e::early_mask(&self.secret, e));
            }
            out
        };
        let r = e2e::handshake_with(
            &self.tls,
            io,
            &self.secret,
            timeout,
            binding,
            |e| {
                let _ = exporter.set(e);
            },
            after_tag,
        )
        .await;
        match r {
            Ok(s) => {
                let early = early.load(Ordering::Relaxed);
                let io: Box<dyn PathIo> = match self.role {
                    Role::Guest => Box::new(s),
                    // The guest's masked early RESUME comes first.
                    //= spec/direct.md#DI-EARLY-3
                    //# the host unmasks the first 15 bytes it reads after the guest's tag
                    Role::Host => {
                        let mask = e2e::early_mask(&self.secret, &s.exporter());
                        Box::new(e2e::Unmasked::new(s, mask, EARLY_RESUME_LEN))
                    }
                };
                let _ = self
                    .found
                    .send(DirectConn {
                        io,
                        remote,
                        kind,
                        xtcp,
                        early_resume: (early != u64::MAX).then_some(early),
                        local,
                    })
                    .await;
            }
            Err(e) => tracing::debug!(%remote, ?kind, "direct path: handshake failed: {e}"),
        }
    }
}

fn reuse_socket(local: SocketAddr) -> io::Result<TcpSocket> {
    let s = match local {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Listener and outgoing connections share one port: that is what lets a
    // NAT that maps endpoint-independently carry a simultaneous open.
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(local)?;
    Ok(s)
}

/// The listening side of direct TCP: an OS-assigned port on all IPv4
/// addresses, and the same port on all IPv6 addresses when this host has
/// IPv6 (a separate v6-only socket, so the IPv4 socket and its
/// simultaneous opens stay exactly as they are); every accepted connection
/// is proven (in an accept slot: at most [`LISTENER_SLOTS`] per socket,
/// [`LISTENER_SLOTS_PER_SOURCE`] of them from one source) and offered. It
/// lives for one round of direct attempts: [`DirectListener::stop`] closes
/// its sockets when a path is chosen or the round's TCP attempt is over
/// (`spec/direct.md` §4.1); dropping it also ends the handshakes under way.
pub(crate) struct DirectListener {
    pub port: u16,
    /// The IPv6 listener is up on `port` too.
    pub v6: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Drop for DirectListener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A v6-only socket bound to `[::]:port` with the reuse options.
fn reuse_socket_v6_only(port: u16) -> io::Result<TcpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
    Ok(TcpSocket::from_std_stream(s.into()))
}

impl DirectListener {
    pub fn start(ctx: DirectCtx) -> io::Result<DirectListener> {
        let s = reuse_socket(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))?;
        let l: TcpListener = s.listen(64)?;
        let port = l.local_addr()?.port();
        let (stop, stopped) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(Self::serve(l, ctx.clone(), stopped.clone()))];
        let v6 = has_ipv6()
            && match reuse_socket_v6_only(port).and_then(|s| s.listen(64)) {
                Ok(l6) => {
                    tasks.push(tokio::spawn(Self::serve(l6, ctx, stopped)));
                    true
                }
                Err(e) => {
                    tracing::debug!("direct tcp: no IPv6 listener: {e}");
                    false
                }
            };
        Ok(DirectListener {
            port,
            v6,
            tasks,
            stop,
        })
    }

    /// Close the listening sockets now (connections to the port are refused
    /// from here on); handshakes under way end within their bound.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    async fn serve(l: TcpListener, ctx: DirectCtx, mut stop: watch::Receiver<bool>) {
        let mut slots = AcceptSlots::new(LISTENER_SLOTS, LISTENER_SLOTS_PER_SOURCE);
        let mut set = tokio::task::JoinSet::new();
        let mut l = Some(l);
        loop {
            // Bounded: a flood of connections that never finish their
            // handshake cannot pile up tasks, nor one source take the slots.
            let accepting = l.is_some() && !slots.is_full();
            tokio::select! {
                r = accept(l.as_ref()), if accepting => match r {
                    Ok((tcp, remote)) => match slots.take(remote.ip()) {
                        Ok(slot) => {
                            let ctx = ctx.clone();
                            set.spawn(async move {
                                ctx.prove(tcp, remote).await;
                                slot
                            });
                        }
                        //= spec/direct.md#DI-SLOT-1
                        //# a connection from a source that holds its share is closed at once, unread
                        Err(e) => tracing::debug!(%remote, "direct tcp: accept refused: {e}"),
                    },
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                //= spec/direct.md#DI-LISTEN-1
                //# MUST close it once a direct path is chosen or the round's TCP attempt is over
                () = stopped(&mut stop), if l.is_some() => l = None,
                Some(r) = set.join_next(), if !set.is_empty() => {
                    if let Ok(slot) = r {
                        slots.give_back(slot);
                    }
                }
                else => return,
            }
        }
    }
}

/// Ready once the listener is told to stop (or its owner is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accept on `l` (never ready without one).
async fn accept(l: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Whether an interface has a global IPv6 address (worth a listener).
fn has_ipv6() -> bool {
    !ipv6_addrs().is_empty()
}

/// This host's IPv6 addresses worth offering: not loopback, not link-local
/// (fe80::/10, which needs a scope), not unspecified, not multicast.
fn ipv6_addrs() -> Vec<Ipv6Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifa| {
            ifa.address
                .as_ref()
                .and_then(|a| a.as_sockaddr_in6())
                .map(|s| s.ip())
        })
        .filter(|ip| {
            !ip.is_loopback()
                && !ip.is_unspecified()
                && !ip.is_multicast()
                && (ip.segments()[0] & 0xffc0) != 0xfe80
        })
        .collect()
}

/// Connect from `local_port` to every candidate at once (simultaneous open
/// where the peer connects to us at the same time); each connection that
/// completes is proven and offered. Returns when all attempts ended.
pub(crate) async fn dial_all(ctx: DirectCtx, local_port: u16, peers: Vec<SocketAddr>) {
    let mut set = tokio::task::JoinSet::new();
    for peer in peers {
        let ctx = ctx.clone();
        set.spawn(async move {
            let sock = match peer {
                SocketAddr::V4(_) => reuse_socket(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    local_port,
                )),
                SocketAddr::V6(_) => reuse_socket_v6_only(local_port),
            };
            let Ok(sock) = sock else {
                return;
            };
            match tokio::time::timeout(ctx.connect_timeout, sock.connect(peer)).await {
                Ok(Ok(tcp)) => ctx.prove(tcp, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, "direct tcp: connect: {e}"),
                Err(_) => tracing::debug!(%peer, "direct tcp: connect timed out"),
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// This host's candidates for a listener on `port`: its IPv4 interface
/// addresses (loopback only when the relay saw us on loopback, i.e. both
/// peers and the relay share a machine) and the address the relay observed
/// (server-reflexive) with the same port, which a port-preserving NAT keeps.
pub(crate) fn gather(port: u16, observed: SocketAddr, v6: bool) -> Vec<Candidate> {
    let mut c = gather_for(Transport::Tcp, port, observed);
    // IPv6 host candidates (global addresses need no NAT traversal), unless
    // the relay saw us on loopback (then loopback is all that is offered).
    if v6 && !observed.ip().is_loopback() {
        for ip in ipv6_addrs() {
            let addr = SocketAddr::new(IpAddr::V6(ip), port);
            if c.len() < MAX_OWN_CANDIDATES && !c.iter().any(|x| x.addr == addr) {
                c.push(Candidate {
                    kind: CandidateKind::Host,
                    transport: Transport::Tcp,
                    addr,
                });
            }
        }
    }
    c
}

/// [`gather`] for either transport (the UDP reflexive address comes from the
/// relay's UDP service instead, `crate::direct_udp`).
pub(crate) fn gather_for(transport: Transport, port: u16, observed: SocketAddr) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let mut push = |kind, ip: IpAddr| {
        let addr = SocketAddr::new(ip, port);
        if out.len() < MAX_OWN_CANDIDATES && !out.iter().any(|c| c.addr == addr) {
            out.push(Candidate {
                kind,
                transport,
                addr,
            });
        }
    };
    // Seen on loopback: the peers share this machine with the relay, and
    // loopback is the only address worth offering.
    if observed.ip().is_loopback() {
        push(CandidateKind::Host, observed.ip());
        return out;
    }
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(ip) = ifa
                .address
                .as_ref()
                .and_then(|a| a.as_sockaddr_in())
                .map(|s| IpAddr::V4(s.ip()))
            else {
                continue;
            };
            if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
                continue;
            }
            push(CandidateKind::Host, ip);
        }
    }
    if transport == Transport::Tcp && observed.is_ipv4() && !observed.ip().is_unspecified() {
        push(CandidateKind::ServerReflexiveTcp, observed.ip());
    }
    out
}

pub(crate) use proto::session::paths::dialable;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_offers_the_reflexive_address_with_the_listening_port() {
        let obs: SocketAddr = "198.18.0.7:40000".parse().unwrap();
        let c = gather(5555, obs, false);
        assert!(c.iter().any(|c| c.kind == CandidateKind::ServerReflexiveTcp
            && c.addr == "198.18.0.7:5555".parse().unwrap()));
        assert!(c.iter().all(|c| c.addr.port() == 5555));
        assert!(
            c.iter().all(|c| !c.addr.ip().is_loopback()),
            "no loopback unless the relay saw loopback"
        );
        let c = gather(5555, "127.0.0.1:1".parse().unwrap(), true);
        assert_eq!(c.len(), 1, "loopback only, when the relay saw loopback");
        assert_eq!(c[0].addr, "127.0.0.1:5555".parse().unwrap());
    }

    #[test]
    fn dialable_skips_udp_port_zero_foreign_loopback_and_v6_without_a_v6_listener() {
        let mk = |t, a: &str| Candidate {
            kind: CandidateKind::Host,
            transport: t,
            addr: a.parse().unwrap(),
        };
        let peer = vec![
            mk(Transport::Tcp, "198.18.1.1:7"),
            mk(Transport::Udp, "198.18.1.1:8"),
            mk(Transport::Tcp, "[2001:db8::1]:7"),
            mk(Transport::Tcp, "198.18.1.2:0"),
            mk(Transport::Tcp, "127.0.0.1:7"),
        ];
        let v = dialable(&peer, "198.18.0.9:1".parse().unwrap(), false);
        assert_eq!(v, vec!["198.18.1.1:7".parse::<SocketAddr>().unwrap()]);
        let v = dialable(&peer, "198.18.0.9:1".parse().unwrap(), true);
        assert_eq!(
            v,
            vec![
                "198.18.1.1:7".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:7".parse().unwrap()
            ],
            "IPv6 candidates when this side listens on IPv6"
        );
        let v = dialable(&peer, "127.0.0.1:1".parse().unwrap(), true);
        assert_eq!(v.len(), 2);
    }
}

#[cfg(test)]
pub(crate) mod forged {
    use super::*;

    pub(crate) fn ctx(
        secret: SessionSecret,
        role: Role,
        exporter: [u8; 32],
    ) -> (DirectCtx, mpsc::Receiver<DirectConn>) {
        let (tx, rx) = mpsc::channel(4);
        (
            DirectCtx {
                secret: Arc::new(secret),
                role,
                tls: SessionTls::new(role).expect("TLS configuration"),
                relay_exporter: watch::channel(Some(exporter)).1,
                received: Arc::new(AtomicU64::new(0)),
                handshake_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(2),
                found: tx,
            },
            rx,
        )
    }

    /// Someone who knows what the relay knows (rendezvous id, addresses, the
    /// listening port) but not the code, or who replays another session's
    /// binding, gets no direct path; the rightful peer does.
    #[tokio::test]
    async fn direct_attempt_without_the_code_or_with_another_binding_is_rejected() {
        let s = SessionSecret::generate().unwrap();
        let code = s.code();
        let exporter = [7u8; 32];
        let (host, mut found) = ctx(SessionSecret::parse(&code).unwrap(), Role::Host, exporter);
        let l = DirectListener::start(host).unwrap();
        let target: SocketAddr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), l.port);
        // (1) a stranger's own secret, right binding.
        let (stranger, mut sfound) = ctx(SessionSecret::generate().unwrap(), Role::Guest, exporter);
        dial_all(stranger, 0, vec![target]).await;
        // (2) the right code, but the binding of another relay path.
        let (replayer, mut rfound) =
            ctx(SessionSecret::parse(&code).unwrap(), Role::Guest, [8u8; 32]);
        dial_all(replayer, 0, vec![target]).await;
        assert!(sfound.try_recv().is_err() && rfound.try_recv().is_err());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), found.recv())
                .await
                .is_err(),
            "the host accepted no forged direct path"
        );
        // (3) the rightful guest gets through, on both ends.
        let (guest, mut gfound) = ctx(SessionSecret::parse(&code).unwrap(), Role::Guest, exporter);
        dial_all(guest, 0, vec![target]).await;
        assert!(gfound.try_recv().is_ok(), "guest proved the path");
        let got = tokio::time::timeout(Duration::from_secs(5), found.recv()).await;
        assert!(matches!(got, Ok(Some(_))), "host proved the path");
    }

    /// A TLS server that accepts anyone and presents any certificate, as a
    /// stranger who connected to the guest's listener would.
    pub(crate) fn stranger_tls_server() -> tokio_rustls::TlsAcceptor {
        let ck = crate::tls::self_signed(&["stranger.invalid"]).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(ck.chain, ck.key)
            .unwrap();
        cfg.alpn_protocols = vec![e2e::ALPN.to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    }

    /// A stranger connects to the guest's listener and plays TLS server
    /// with any certificate, twice: it reads the guest's 32-byte tag and 15
    /// masked bytes, other ones each time, that are not the early `RESUME`
    /// (the guest's `received`, 123456 here) but turn into it under the
    /// session's mask, which the stranger cannot compute; after the
    /// stranger's bogus tag the guest closes, nothing more.
    //= spec/direct.md#DI-EARLY-3
    //= spec/session.md#SE-TAG-2
    #[tokio::test]
    async fn a_stranger_on_the_guests_listener_learns_nothing_from_the_early_resume() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let secret = SessionSecret::generate().unwrap();
        let code = secret.code();
        let (guest, _found) = ctx(secret, Role::Guest, [7; 32]);
        guest.received.store(123_456, Ordering::Release);
        let l = DirectListener::start(guest).unwrap();
        let mut plain = Vec::new();
        let f = Frame::Resume {
            path_id: PROVISIONAL_PATH,
            received: 123_456,
        };
        encode(&f, &mut plain).unwrap();
        let bound = Duration::from_secs(5);
        let mut seen = Vec::new();
        for _ in 0..2 {
            let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, l.port))
                .await
                .unwrap();
            let mut tls = tokio::time::timeout(bound, stranger_tls_server().accept(tcp))
                .await
                .unwrap()
                .unwrap();
            let mut flight = [0u8; 32 + EARLY_RESUME_LEN];
            tokio::time::timeout(bound, tls.read_exact(&mut flight))
                .await
                .unwrap()
                .unwrap();
            let early = flight[32..].to_vec();
            assert_ne!(early, plain, "the early RESUME in the clear");
            // Only the session's mask (auth_key, the stranger's own E) opens it.
            let e = tls
                .get_ref()
                .1
                .export_keying_material([0u8; 32], e2e::EXPORTER_LABEL, None)
                .unwrap();
            let mut opened = early.clone();
            e2e::apply_mask(
                &mut opened,
                &e2e::early_mask(&SessionSecret::parse(&code).unwrap(), &e),
            );
            assert_eq!(opened, plain);
            seen.push(early);
            tls.write_all(&[0x5a; 32]).await.unwrap();
            tls.flush().await.unwrap();
            let mut rest = Vec::new();
            let end = tokio::time::timeout(bound, tls.read_to_end(&mut rest)).await;
            assert!(end.is_ok(), "the guest closed after the bogus tag");
            assert!(
                rest.is_empty(),
                "bytes beyond the early RESUME: {rest:02x?}"
            );
        }
        assert_ne!(seen[0], seen[1], "a fresh mask per connection");
    }

    /// One stranger address (127.0.0.2) opens 100 connections to the host's
    /// listener and leaves them idle: it holds 4 slots, the rest are closed
    /// at once, and the rightful guest is proven at once (not after the
    /// stranger's handshakes time out, 5 s here). Then the listener is
    /// stopped: its port refuses connections.
    //= spec/direct.md#DI-SLOT-1
    //= spec/direct.md#DI-LISTEN-1
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_stranger_address_cannot_take_every_listener_slot() {
        let s = SessionSecret::generate().unwrap();
        let code = s.code();
        let exporter = [7u8; 32];
        let (host, mut found) = ctx(SessionSecret::parse(&code).unwrap(), Role::Host, exporter);
        let l = DirectListener::start(host).unwrap();
        let target = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), l.port);
        let mut idle = Vec::new();
        for _ in 0..100 {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            idle.push(sock.connect(target).await.unwrap());
        }
        let t = std::time::Instant::now();
        let (guest, mut gfound) = ctx(SessionSecret::parse(&code).unwrap(), Role::Guest, exporter);
        dial_all(guest, 0, vec![target]).await;
        assert!(gfound.try_recv().is_ok(), "the guest proved the path");
        let got = tokio::time::timeout(Duration::from_secs(2), found.recv()).await;
        assert!(
            matches!(got, Ok(Some(_))),
            "the host offers the guest's path"
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        l.stop();
        let refused = async {
            loop {
                match TcpStream::connect(target).await {
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return,
                    _ => tokio::task::yield_now().await,
                }
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(2), refused)
                .await
                .is_ok(),
            "a stopped listener refuses connections"
        );
        drop(idle);
    }
}
