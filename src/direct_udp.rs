//! Direct UDP paths: XTCP through NATs by hole punching (`spec/direct.md`
//! §4.3, §4.4).
//!
//! Each side binds one UDP socket carrying an [`XtcpEndpoint`] on an
//! OS-assigned port and asks the relay's UDP address service, from that same
//! socket, for the address its NAT gives it (the server-reflexive UDP
//! candidate). Candidates travel inside the session (CANDIDATES on the relay
//! path); the host then sends `PUNCH(attempt, UDP)`.
//!
//! Punching: both sides send small probes (first byte `0xA2`, never an XTCP
//! datagram) to every candidate of the other, from the endpoint's socket, so
//! that each NAT opens a mapping and a filter entry towards the other. A
//! probe carries a tag only the two peers can compute (HMAC over the attempt
//! number, keyed with the relay path's exporter); a probe with a good tag from
//! an address not among the candidates is a peer-reflexive candidate (the
//! peer's NAT chose another port for us, as a symmetric NAT does) and is
//! probed back. The guest (the TLS client) opens XTCP to every address it
//! received a probe from (the path is then open both ways) once the agreed
//! time has come; the host accepts. Each XTCP
//! connection runs the same e2e TLS and tag as direct TCP
//! (`DirectCtx::prove_io`), so the first proven connection wins.
//!
//! Everything is bounded: probes per address and in total, peer-reflexive
//! addresses, connection attempts, and the attempt's duration.

use crate::direct::{self, DirectCtx};
use crate::e2e::Role;
use crate::transport::{EndpointOptions, XtcpEndpoint};
use proto::session::probe::ProbeKey;
use proto::session::punch::{Punch, PunchAction, GUESS_PHASE, MAX_CONNECTS, PROBE_SLOW};
use proto::session::Path;
use proto::session::{Candidate, CandidateKind, Transport};
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

// The punch probe's length (`spec/direct.md` §4.3; the codec is
// `proto::session::probe`).
use proto::session::probe::PROBE_LEN;
/// Requests sent to the relay's UDP service before giving up on it.
const SERVICE_TRIES: u32 = 5;
/// Wait for one answer of the UDP service.
const SERVICE_WAIT: Duration = Duration::from_millis(250);

/// The relay's UDP address service as granted in `PAIRED` (no `Debug`: the
/// token is a secret).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayUdp {
    pub addr: SocketAddr,
    pub token: [u8; 16],
}

/// One side's UDP socket for an attempt, its candidates and its side channel.
pub(crate) struct Prepared {
    pub ep: XtcpEndpoint,
    pub candidates: Vec<Candidate>,
    side: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

/// The side that opens the XTCP connections: the guest (the TLS client),
/// so that its ClientHello follows its handshake at once; the host accepts
/// (§4.3.2).
fn connects(role: Role) -> bool {
    role == Role::Guest
}

/// The XTCP settings of a direct UDP path: Nagle off (the session layer
/// writes whole batches and wants its small control frames out at once).
fn endpoint_options(role: Role) -> EndpointOptions {
    let mut o = EndpointOptions {
        listen: !connects(role),
        accept_backlog: MAX_CONNECTS,
        max_half_open: MAX_CONNECTS * 2,
        ..EndpointOptions::default()
    };
    o.conn.nagle = false;
    o
}

/// Bind the attempt's endpoint, learn its public address from the relay's UDP
/// service (when the relay offers one), and gather its candidates.
pub(crate) async fn prepare(
    role: Role,
    observed: SocketAddr,
    service: Option<RelayUdp>,
) -> io::Result<Prepared> {
    let ep = XtcpEndpoint::bind(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        endpoint_options(role),
    )?;
    let mut side = ep.side_channel();
    let port = ep.local_addr().port();
    let mut candidates = direct::gather_for(Transport::Udp, port, observed);
    if let Some(svc) = service {
        match query_reflexive(&ep, &mut side, svc).await {
            Some(public) => {
                if !candidates.iter().any(|c| c.addr == public)
                    && candidates.len() < direct::MAX_OWN_CANDIDATES
                {
                    candidates.push(Candidate {
                        kind: CandidateKind::ServerReflexiveUdp,
                        transport: Transport::Udp,
                        addr: public,
                    });
                }
            }
            None => tracing::debug!("direct udp: no answer from the relay's UDP service"),
        }
    }
    Ok(Prepared {
        ep,
        candidates,
        side,
    })
}

/// Ask the relay's UDP service (a few times, each bounded) which address it
/// sees this endpoint's socket at.
async fn query_reflexive(
    ep: &XtcpEndpoint,
    side: &mut mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    svc: RelayUdp,
) -> Option<SocketAddr> {
    let mut nonce_bytes = [0u8; 8];
    //= spec/relay.md#RL-UDP-1
    //# a client SHOULD use a fresh random nonce per request
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce_bytes).ok()?;
    let nonce = u64::from_be_bytes(nonce_bytes);
    let req = proto::relay::udp_service::encode_request(&svc.token, nonce);
    for _ in 0..SERVICE_TRIES {
        //= spec/relay.md#RL-GRANT-3
        //# MUST NOT reveal the token to anyone but the relay
        if ep.send_raw(svc.addr, &req).await.is_err() {
            return None;
        }
        let deadline = Instant::now() + SERVICE_WAIT;
        loop {
            let got = tokio::time::timeout_at(deadline, side.recv()).await;
            let Ok(Some((from, d))) = got else { break };
            if from != svc.addr {
                continue;
            }
            if let Ok(r) = proto::relay::udp_service::parse_response(&d) {
                //= spec/relay.md#RL-UDP-3
                //# A client MUST ignore a response whose nonce it did not send, and any datagram
                //# that does not parse.
                if r.nonce == nonce {
                    return Some(r.observed);
                }
            }
        }
    }
    None
}

/// What one UDP attempt does.
pub(crate) struct PunchPlan {
    pub attempt: u32,
    /// The peer's candidates to probe.
    pub peers: Vec<SocketAddr>,
    /// The peer's server-reflexive UDP addresses (port prediction's targets).
    pub reflexive: Vec<SocketAddr>,
    pub duration: Duration,
    /// Port prediction budget (0: off), §4.3.4.
    pub prediction: usize,
    /// The agreed start: the guest connects no earlier, the host proves no
    /// accepted connection earlier (the UDP window); probing starts at once.
    pub start_at: Option<Instant>,
}

/// Run a UDP attempt: probe the peer's candidates, follow peer-reflexive
/// addresses, connect (host) or accept (guest), and offer every proven
/// connection to the driver. Ends after `duration`, or earlier when the
/// driver aborts it (a path was chosen).
pub(crate) async fn punch(prep: Prepared, ctx: DirectCtx, plan: PunchPlan) {
    let PunchPlan {
        attempt,
        peers,
        reflexive,
        duration,
        prediction,
        start_at,
    } = plan;
    let Prepared { ep, mut side, .. } = prep;
    // Punching starts after the relay path's handshake: the exporter is known.
    let Some(exporter) = ctx.exporter_now() else {
        return;
    };
    // Only the two peers know the exporter: the probes' tag keeps strangers'
    // datagrams from steering connection attempts.
    let key = ProbeKey::new(&exporter);
    let probe = key.probe(attempt);
    // The schedule is the sans-IO `Punch`; this loop only sends, receives
    // and runs the connections it asks for.
    let base = Instant::now();
    let at = |t: Instant| {
        let us = t.saturating_duration_since(base).as_micros();
        proto::Instant::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    };
    let to_tokio = |t: proto::Instant| base + Duration::from_micros(t.as_micros());
    let start = at(start_at.unwrap_or(base));
    let mut p = Punch::new(ctx.role, at(base), peers, start, duration, prediction > 0);
    let connect_from = to_tokio(p.start_at());
    let mut guesses = Vec::new();
    let (hit_tx, mut hits) = mpsc::channel::<(tokio::net::UdpSocket, SocketAddr)>(4);
    if prediction > 0 {
        if let Some(r) = reflexive.first() {
            guesses = guess_ports(r.ip(), prediction);
            spray(
                prediction,
                *r,
                probe,
                key.clone(),
                attempt,
                hit_tx,
                duration + connect_from.saturating_duration_since(Instant::now()),
            );
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let now = at(Instant::now());
        p.handle_timeout(now);
        while let Some(a) = p.poll_action() {
            match a {
                PunchAction::Probe(t) => {
                    let _ = ep.send_raw(t, &probe).await;
                }
                PunchAction::ProbeGuesses => {
                    for g in &guesses {
                        let _ = ep.send_raw(*g, &probe).await;
                    }
                }
                PunchAction::Connect(to) => {
                    let (ep, ctx) = (ep.clone(), ctx.clone());
                    tasks.spawn(async move {
                        match tokio::time::timeout(ctx.connect_timeout, ep.connect(to)).await {
                            Ok(Ok(s)) => {
                                let w = s.close_waiter();
                                ctx.prove_io(s, to, Path::DirectUdp, Some(w)).await
                            }
                            Ok(Err(e)) => tracing::debug!(%to, "direct udp: connect: {e}"),
                            Err(_) => tracing::debug!(%to, "direct udp: connect timed out"),
                        }
                    });
                }
            }
        }
        if p.is_over(now) {
            break;
        }
        let wake = p.poll_timeout().map_or(connect_from, to_tokio);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            got = side.recv() => {
                let Some((from, d)) = got else { break };
                if key.verify(&d, attempt) {
                    p.handle_probe(at(Instant::now()), from);
                }
            }
            acc = ep.accept(), if !connects(ctx.role) && tasks.len() < MAX_CONNECTS => {
                if let Ok(s) = acc {
                    let ctx = ctx.clone();
                    let from = s.peer_addr().unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
                    let w = s.close_waiter();
                    tasks.spawn(async move {
                        // Nothing is proven over UDP before the window ends.
                        tokio::time::sleep_until(connect_from).await;
                        ctx.prove_io(s, from, Path::DirectUdp, Some(w)).await
                    });
                }
            }
            Some((sock, from)) = hits.recv() => {
                // A spray socket got through: it becomes an XTCP endpoint of
                // its own; the guest connects from it, the host accepts on it.
                if tasks.len() < MAX_CONNECTS {
                    if let Ok(std_sock) = sock.into_std() {
                        if let Ok(ep2) = XtcpEndpoint::from_std(std_sock, endpoint_options(ctx.role)) {
                            tasks.spawn(use_spray_socket(ep2, ctx.clone(), from, connect_from));
                        }
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Connections still proving finish (bounded by the handshake timeout).
    while tasks.join_next().await.is_some() {}
}

/// `n` distinct random ports on `ip` (1024–65535, where Linux's random
/// source-port allocation draws from).
fn guess_ports(ip: IpAddr, n: usize) -> Vec<SocketAddr> {
    let rng = ring::rand::SystemRandom::new();
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    // Bounded: at most 4n draws.
    for _ in 0..n.saturating_mul(4) {
        if out.len() >= n {
            break;
        }
        let mut b = [0u8; 2];
        if ring::rand::SecureRandom::fill(&rng, &mut b).is_err() {
            break;
        }
        let port = 1024 + u16::from_be_bytes(b) % (65535 - 1024 + 1);
        if seen.insert(port) {
            out.push(SocketAddr::new(ip, port));
        }
    }
    out
}

/// Open `n` sockets, each probing `target` (the peer's reflexive address)
/// every [`PROBE_SLOW`] during [`GUESS_PHASE`]: behind an endpoint-dependent
/// NAT each gets its own external port, which the peer's guesses may hit.
/// The first sockets that receive a valid probe are handed over on `hits`
/// (with the probe's source); the rest close when the attempt ends.
fn spray(
    n: usize,
    target: SocketAddr,
    probe: [u8; PROBE_LEN],
    key: ProbeKey,
    attempt: u32,
    hits: mpsc::Sender<(tokio::net::UdpSocket, SocketAddr)>,
    duration: Duration,
) {
    let end = Instant::now() + duration;
    for _ in 0..n {
        let Ok(std_sock) = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
            return; // out of descriptors: spray what we have
        };
        if std_sock.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(sock) = tokio::net::UdpSocket::from_std(std_sock) else {
            return;
        };
        let (key, hits) = (key.clone(), hits.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let mut next = start;
            let mut buf = [0u8; PROBE_LEN + 1];
            loop {
                let now = Instant::now();
                if now >= end || hits.is_closed() {
                    return;
                }
                if now >= next && now.duration_since(start) < GUESS_PHASE {
                    let _ = sock.send_to(&probe, target).await;
                    next = now + PROBE_SLOW;
                } else if now >= next {
                    next = end;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next.min(end)) => {}
                    r = sock.recv_from(&mut buf) => {
                        if let Ok((len, from)) = r {
                            if key.verify(buf.get(..len).unwrap_or(&[]), attempt) {
                                let _ = sock.send_to(&probe, from).await;
                                let _ = hits.send((sock, from)).await;
                                return;
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Carry on an XTCP path over a spray socket that got through: the guest
/// connects to the address the probe came from, the host accepts one
/// connection; the proven one is offered to the driver (neither before
/// `connect_from`).
async fn use_spray_socket(
    ep: XtcpEndpoint,
    ctx: DirectCtx,
    from: SocketAddr,
    connect_from: Instant,
) {
    let stream = if connects(ctx.role) {
        tokio::time::sleep_until(connect_from).await;
        tokio::time::timeout(ctx.connect_timeout, ep.connect(from))
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        let s = tokio::time::timeout(ctx.connect_timeout, ep.accept())
            .await
            .ok()
            .and_then(Result::ok);
        tokio::time::sleep_until(connect_from).await;
        s
    };
    match stream {
        Some(s) => {
            let remote = s.peer_addr().unwrap_or(from);
            let w = s.close_waiter();
            ctx.prove_io(s, remote, Path::DirectUdp, Some(w)).await
        }
        None => tracing::debug!(%from, "direct udp: predicted port: no connection"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's UDP endpoint during an attempt (it accepts, §4.3.2): a
    /// stranger who knows its address (everything the relay and the network
    /// see) but not the code connects XTCP and fails the end-to-end proof, as
    /// does the right code with another session's binding; nothing is offered
    /// to the driver. The rightful guest gets through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forged_xtcp_attempts_on_the_host_endpoint_are_rejected() {
        use crate::direct::forged::ctx;
        use crate::secret::SessionSecret;
        let s = SessionSecret::generate().unwrap();
        let code = s.code();
        let exporter = [5u8; 32];
        let (host, mut found) = ctx(SessionSecret::parse(&code).unwrap(), Role::Host, exporter);
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let prep = prepare(Role::Host, lo, None).await.unwrap();
        let target = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), prep.ep.local_addr().port());
        let plan = PunchPlan {
            attempt: 0,
            peers: Vec::new(),
            reflexive: Vec::new(),
            duration: Duration::from_secs(20),
            prediction: 0,
            start_at: None,
        };
        let attempt = tokio::spawn(punch(prep, host, plan));
        // A guest-side dial with `secret` and `binding`; Ok when it proved.
        let dial = |secret: SessionSecret, exporter: [u8; 32]| async move {
            let (guest, mut gfound) = ctx(secret, Role::Guest, exporter);
            let ep = XtcpEndpoint::bind(
                "127.0.0.1:0".parse().unwrap(),
                endpoint_options(Role::Guest),
            )
            .unwrap();
            let s = ep.connect(target).await.unwrap();
            guest.prove_io(s, target, Path::DirectUdp, None).await;
            gfound.try_recv().is_ok()
        };
        assert!(
            !dial(SessionSecret::generate().unwrap(), exporter).await,
            "stranger"
        );
        assert!(
            !dial(SessionSecret::parse(&code).unwrap(), [6u8; 32]).await,
            "another session's binding"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(300), found.recv())
                .await
                .is_err(),
            "the host offered no forged path"
        );
        assert!(
            dial(SessionSecret::parse(&code).unwrap(), exporter).await,
            "rightful guest"
        );
        let got = tokio::time::timeout(Duration::from_secs(5), found.recv()).await;
        assert!(
            matches!(got, Ok(Some(ref c)) if c.kind == Path::DirectUdp),
            "the host offers the rightful path"
        );
        attempt.abort();
    }
}
