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
//! probe carries the sender's role, its nonce for the destination, the echo
//! of the last nonce received from there, and a tag only the two peers can
//! compute (keyed with the relay path's exporter,
//! `proto::session::probe`). A probe with a good tag from an address not
//! among the candidates gets one challenge; the address becomes a
//! peer-reflexive target (the peer's NAT chose another port for us, as a
//! symmetric NAT does) only when a probe from it echoes our nonce for it
//! (`proto::session::punch`). The guest (the TLS client) opens XTCP to every
//! target it received a probe from (the path is then open both ways) once
//! the agreed time has come; the host accepts, at most
//! [`XTCP_SLOTS_PER_SOURCE`] connections from one source at once. Each XTCP
//! connection runs the same e2e TLS and tag as direct TCP
//! (`DirectCtx::prove_io`), so the first proven connection wins.
//!
//! Everything is bounded: probes per address and in total, challenges,
//! peer-reflexive addresses, connection attempts, accept slots, and the
//! attempt's duration.

use crate::direct::{self, DirectCtx};
use crate::e2e::Role;
use crate::transport::{EndpointOptions, XtcpEndpoint, XtcpStream};
use proto::session::probe::{NonceKey, Probe, ProbeKey};
use proto::session::punch::{Punch, PunchAction, GUESS_PHASE, MAX_CONNECTS, PROBE_SLOW};
use proto::session::slots::{AcceptSlots, Slot, XTCP_SLOTS_PER_SOURCE};
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

/// Everything a probe of this attempt needs: the session's probe key, this
/// side's nonces, the attempt and the roles (`spec/direct.md` §4.3.2).
#[derive(Clone)]
struct Prober {
    key: ProbeKey,
    nonces: NonceKey,
    attempt: u32,
    role: Role,
}

impl Prober {
    /// `None` when the system's random source fails (no attempt then).
    fn new(exporter: &[u8; 32], attempt: u32, role: Role) -> Option<Prober> {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).ok()?;
        Some(Prober {
            key: ProbeKey::new(exporter),
            nonces: NonceKey::new(&secret),
            attempt,
            role,
        })
    }

    /// This side's probe to `to`, echoing `echo`.
    fn probe(&self, to: SocketAddr, echo: u64) -> [u8; PROBE_LEN] {
        let nonce = self.nonces.nonce(to);
        self.key.probe(self.attempt, self.role, nonce, echo)
    }

    /// `d` if it is a valid probe of this attempt from the peer (never one
    /// of this side's own, reflected).
    fn verify(&self, d: &[u8]) -> Option<Probe> {
        self.key.verify(d, self.attempt, self.role.peer())
    }
}

/// A running attempt's I/O: the endpoint, the connections under way and
/// the accept slots they hold (`spec/direct.md` §4.3.2).
struct Attempt {
    ep: XtcpEndpoint,
    ctx: DirectCtx,
    prober: Prober,
    guesses: Vec<SocketAddr>,
    connect_from: Instant,
    tasks: tokio::task::JoinSet<Option<Slot>>,
    slots: AcceptSlots,
}

impl Attempt {
    async fn act(&mut self, a: PunchAction) {
        match a {
            PunchAction::Probe { to, nonce, echo } => {
                let p = &self.prober;
                let d = p.key.probe(p.attempt, p.role, nonce, echo);
                let _ = self.ep.send_raw(to, &d).await;
            }
            PunchAction::ProbeGuesses => {
                for g in &self.guesses {
                    let _ = self.ep.send_raw(*g, &self.prober.probe(*g, 0)).await;
                }
            }
            PunchAction::Connect(to) => {
                let (ep, ctx) = (self.ep.clone(), self.ctx.clone());
                self.tasks.spawn(async move {
                    match tokio::time::timeout(ctx.connect_timeout, ep.connect(to)).await {
                        Ok(Ok(s)) => {
                            let w = s.close_waiter();
                            ctx.prove_io(s, to, Path::DirectUdp, Some(w)).await
                        }
                        Ok(Err(e)) => tracing::debug!(%to, "direct udp: connect: {e}"),
                        Err(_) => tracing::debug!(%to, "direct udp: connect timed out"),
                    }
                    None
                });
            }
        }
    }

    /// Host: an XTCP connection was accepted. It proves itself (from the
    /// agreed start on) in a slot, or is closed at once when its source
    /// holds its share already.
    fn accepted(&mut self, s: XtcpStream) {
        let Some(from) = s.peer_addr() else { return };
        //= spec/direct.md#DI-SLOT-1
        //# MUST NOT let one source hold more than its share
        let slot = match self.slots.take(from.ip()) {
            Ok(slot) => slot,
            Err(e) => {
                tracing::debug!(%from, "direct udp: accept refused: {e}");
                s.abort();
                return;
            }
        };
        let ctx = self.ctx.clone();
        let w = s.close_waiter();
        let connect_from = self.connect_from;
        self.tasks.spawn(async move {
            // Nothing is proven over UDP before the window ends.
            tokio::time::sleep_until(connect_from).await;
            ctx.prove_io(s, from, Path::DirectUdp, Some(w)).await;
            Some(slot)
        });
    }

    /// A spray socket got through: it becomes an XTCP endpoint of its own;
    /// the guest connects from it, the host accepts on it.
    fn spray_hit(&mut self, sock: tokio::net::UdpSocket, from: SocketAddr) {
        if self.tasks.len() >= MAX_CONNECTS {
            return;
        }
        let Ok(std_sock) = sock.into_std() else {
            return;
        };
        if let Ok(ep2) = XtcpEndpoint::from_std(std_sock, endpoint_options(self.ctx.role)) {
            let (ctx, at) = (self.ctx.clone(), self.connect_from);
            self.tasks.spawn(async move {
                use_spray_socket(ep2, ctx, from, at).await;
                None
            });
        }
    }

    fn done(&mut self, r: Result<Option<Slot>, tokio::task::JoinError>) {
        if let Ok(Some(slot)) = r {
            self.slots.give_back(slot);
        }
    }
}

/// Run a UDP attempt: probe the peer's candidates, follow peer-reflexive
/// addresses once they echo, connect (guest) or accept (host), and offer
/// every proven connection to the driver. Ends after `duration`, or earlier
/// when the driver aborts it (a path was chosen).
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
    // Only the two peers know it: the probes' tag keeps strangers'
    // datagrams from steering connection attempts.
    let Some(prober) = ctx
        .exporter_now()
        .and_then(|e| Prober::new(&e, attempt, ctx.role))
    else {
        return;
    };
    // The schedule is the sans-IO `Punch`; this loop only sends, receives
    // and runs the connections it asks for.
    let base = Instant::now();
    let at = |t: Instant| {
        let us = t.saturating_duration_since(base).as_micros();
        proto::Instant::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    };
    let to_tokio = |t: proto::Instant| base + Duration::from_micros(t.as_micros());
    let start = at(start_at.unwrap_or(base));
    let nonces = prober.nonces.clone();
    let mut p = Punch::new(
        ctx.role,
        at(base),
        peers,
        start,
        duration,
        prediction > 0,
        nonces,
    );
    let connect_from = to_tokio(p.start_at());
    let mut guesses = Vec::new();
    let (hit_tx, mut hits) = mpsc::channel::<(tokio::net::UdpSocket, SocketAddr)>(4);
    if let (true, Some(r)) = (prediction > 0, reflexive.first()) {
        guesses = guess_ports(r.ip(), prediction);
        let lasts = duration + connect_from.saturating_duration_since(Instant::now());
        spray(prediction, *r, prober.clone(), hit_tx, lasts);
    }
    let mut run = Attempt {
        ep,
        slots: AcceptSlots::new(MAX_CONNECTS, XTCP_SLOTS_PER_SOURCE),
        ctx,
        prober,
        guesses,
        connect_from,
        tasks: tokio::task::JoinSet::new(),
    };
    loop {
        let now = at(Instant::now());
        p.handle_timeout(now);
        while let Some(a) = p.poll_action() {
            run.act(a).await;
        }
        if p.is_over(now) {
            break;
        }
        let wake = p.poll_timeout().map_or(connect_from, to_tokio);
        let accepting = !connects(run.ctx.role) && !run.slots.is_full();
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            got = side.recv() => {
                let Some((from, d)) = got else { break };
                if let Some(v) = run.prober.verify(&d) {
                    p.handle_probe(at(Instant::now()), from, v.nonce, v.echo);
                }
            }
            acc = run.ep.accept(), if accepting => {
                if let Ok(s) = acc {
                    run.accepted(s);
                }
            }
            Some((sock, from)) = hits.recv() => run.spray_hit(sock, from),
            Some(r) = run.tasks.join_next(), if !run.tasks.is_empty() => run.done(r),
        }
    }
    // Connections still proving finish (bounded by the handshake timeout).
    while run.tasks.join_next().await.is_some() {}
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
/// The first sockets that receive a valid probe (a guess) answer it, echoing
/// its nonce, so that the peer believes the address at once (§4.3.4), and
/// are handed over on `hits` (with the probe's source); the rest close when
/// the attempt ends.
fn spray(
    n: usize,
    target: SocketAddr,
    prober: Prober,
    hits: mpsc::Sender<(tokio::net::UdpSocket, SocketAddr)>,
    duration: Duration,
) {
    let end = Instant::now() + duration;
    let probe = prober.probe(target, 0);
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
        let (prober, hits) = (prober.clone(), hits.clone());
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
                        let Ok((len, from)) = r else { continue };
                        if let Some(v) = prober.verify(buf.get(..len).unwrap_or(&[])) {
                            let _ = sock.send_to(&prober.probe(from, v.nonce), from).await;
                            let _ = hits.send((sock, from)).await;
                            return;
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

    /// A probe of the guest, captured on the way, replayed by a stranger 10
    /// times from each of 20 other source addresses (127.0.0.2–21): the host
    /// sends each source at most one challenge per 250 ms, at most 3 in all,
    /// never a stream of probes (before the echo rule, each source became a
    /// target probed every 20 ms). The real guest's address is probed
    /// all along, so the attempt did run.
    //= spec/direct.md#DI-PUNCH-3
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replayed_probes_from_other_sources_do_not_multiply_traffic() {
        use crate::direct::forged::ctx;
        use crate::secret::SessionSecret;
        use proto::session::punch::MAX_CHALLENGES;
        let exporter = [5u8; 32];
        let (host, _found) = ctx(SessionSecret::generate().unwrap(), Role::Host, exporter);
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let prep = prepare(Role::Host, lo, None).await.unwrap();
        let target = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), prep.ep.local_addr().port());
        let guest = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let plan = PunchPlan {
            attempt: 1,
            peers: vec![guest.local_addr().unwrap()],
            reflexive: Vec::new(),
            duration: Duration::from_millis(1500),
            prediction: 0,
            start_at: None,
        };
        let attempt = tokio::spawn(punch(prep, host, plan));
        let key = ProbeKey::new(&exporter);
        let captured = key.probe(1, Role::Guest, 0x55, 0);
        let mut spoofed = Vec::new();
        for i in 2..22u8 {
            let a = SocketAddr::from(([127, 0, 0, i], 0));
            spoofed.push(tokio::net::UdpSocket::bind(a).await.unwrap());
        }
        let t = Instant::now();
        for _ in 0..10 {
            for s in &spoofed {
                s.send_to(&captured, target).await.unwrap();
            }
        }
        let burst = t.elapsed();
        // The attempt ends after its duration; nothing is sent after it.
        attempt.await.unwrap();
        let count = |s: &tokio::net::UdpSocket, echo: u64| {
            let mut buf = [0u8; 1500];
            let mut n = 0;
            while let Ok((len, from)) = s.try_recv_from(&mut buf) {
                assert_eq!(from, target);
                let v = key
                    .verify(&buf[..len], 1, Role::Host)
                    .expect("a host probe");
                assert_eq!(v.echo, echo, "what the probe echoes");
                n += 1;
            }
            n
        };
        // A challenge echoes the replayed probe's nonce.
        let per_source: Vec<usize> = spoofed.iter().map(|s| count(s, 0x55)).collect();
        eprintln!("replays sent in {burst:?}; datagrams per spoofed source: {per_source:?}");
        let cap = if burst < PROBE_SLOW {
            1
        } else {
            usize::from(MAX_CHALLENGES)
        };
        assert!(
            per_source.iter().all(|n| (1..=cap).contains(n)),
            "{per_source:?}"
        );
        assert!(
            count(&guest, 0) >= 10,
            "the guest's address is probed all along"
        );
    }

    /// One stranger address (127.0.0.2) opens many XTCP connections to the
    /// host's endpoint and leaves them idle: it holds at most its share of
    /// the attempt's accept slots, and the rightful guest is proven at once,
    /// not after the stranger's handshakes time out (5 s here).
    //= spec/direct.md#DI-SLOT-1
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_stranger_address_cannot_take_every_xtcp_accept_slot() {
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
        let mut idle = Vec::new();
        for _ in 0..2 * MAX_CONNECTS {
            let ep = XtcpEndpoint::bind(
                "127.0.0.2:0".parse().unwrap(),
                endpoint_options(Role::Guest),
            )
            .unwrap();
            // Refused ones are reset by the host at once: fine.
            if let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_secs(2), ep.connect(target)).await
            {
                idle.push((ep, c));
            }
        }
        assert!(!idle.is_empty(), "the stranger got connections");
        let (guest, mut gfound) = ctx(SessionSecret::parse(&code).unwrap(), Role::Guest, exporter);
        let ep = XtcpEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            endpoint_options(Role::Guest),
        )
        .unwrap();
        let t = Instant::now();
        let c = tokio::time::timeout(Duration::from_secs(2), ep.connect(target))
            .await
            .expect("the guest's connection is accepted at once")
            .unwrap();
        guest.prove_io(c, target, Path::DirectUdp, None).await;
        assert!(gfound.try_recv().is_ok(), "the guest proved the path");
        let got = tokio::time::timeout(Duration::from_secs(2), found.recv()).await;
        assert!(
            matches!(got, Ok(Some(ref c)) if c.kind == Path::DirectUdp),
            "the host offers the guest's path at once"
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        attempt.abort();
        drop(idle);
    }
}
