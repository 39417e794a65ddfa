//! The session driver (`spec/direct.md`): moves bytes and time between the
//! paths' sockets and the sans-IO [`PathManager`], which makes every
//! protocol decision (path ids, switching, liveness, fallback, retry, the UDP
//! window).
//!
//! ```text
//!  application ⇄ SessionStream ⇄ Shared{PathManager} ⇄ driver task
//!                                             ├─ path: relay  (reader task, writer task)
//!                                             └─ path: direct (reader task, writer task)
//! ```
//!
//! The driver loops "run the manager's actions → hand output to the writers
//! → wait for bytes, a proven connection, a prepared UDP endpoint, the
//! application or the manager's timeout", like quinn's `ConnectionDriver`.

mod reconnect;
mod stream;

pub(crate) use reconnect::Reconnect;
use reconnect::{local_addrs, reconnect_relay, Reconnected, ADDRESS_POLL};
pub use stream::SessionControl;
pub(crate) use stream::SessionStream;

use crate::direct::{self, DirectConn, DirectCtx, DirectListener, PathIo};
use crate::direct_udp::{self, Prepared, RelayUdp};
use crate::e2e::Role;
use crate::early::Early;
use crate::preamble::PreambleError;
use crate::transport::{CloseWaiter, Probe};
use proto::session::{Action, PathConfig, PathHandle, PathManager, Status, UdpAttempt};
pub use proto::session::{Path, PathPolicy};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

pub use crate::direct::DirectOptions;

/// Chunks queued from a path's reader to the driver.
const READ_QUEUE: usize = 8;
/// Writes queued to a path's writer.
const WRITE_QUEUE: usize = 4;

/// Maps the runtime's clock onto the manager's time.
#[derive(Clone, Copy)]
struct Clock {
    base: Instant,
}

impl Clock {
    fn now(&self) -> proto::Instant {
        self.at(Instant::now())
    }
    fn at(&self, t: Instant) -> proto::Instant {
        let us = t.saturating_duration_since(self.base).as_micros();
        proto::Instant::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }
    fn to_tokio(self, t: proto::Instant) -> Instant {
        self.base + Duration::from_micros(t.as_micros())
    }
}

struct Shared {
    m: PathManager,
    clock: Clock,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// The driver ended and handed its last frames to the network.
    flushed: bool,
    /// Direct paths (open, and the last one after the session ended): kind,
    /// the peer's address, and for XTCP a probe of the connection (its RTT),
    /// for the application's accessors.
    direct: HashMap<PathHandle, (Path, SocketAddr, Option<Probe>)>,
    /// Application bytes read.
    bytes_read: u64,
}

impl Shared {
    /// Wake the application where it can make progress (only there: a
    /// write blocked on a full replay buffer that is woken for nothing
    /// polls again and wakes the driver again, a spin).
    fn wake(&mut self) -> bool {
        let mut woke = false;
        let over = *self.m.status() != Status::Open;
        if over || self.m.readable() > 0 || self.m.read_eof() {
            if let Some(w) = self.read_waker.take() {
                w.wake();
                woke = true;
            }
        }
        let st = self.m.state();
        let writable = !st.finishing() && self.m.free_space() > 0;
        if over || writable || self.m.finish_acked() {
            if let Some(w) = self.write_waker.take() {
                w.wake();
                woke = true;
            }
        }
        woke
    }
}

struct Link {
    shared: Mutex<Shared>,
    notify: Notify,
    path: watch::Sender<Path>,
    /// Test hook: close the direct path's socket abruptly.
    sever: AtomicBool,
    /// The driver ended and flushed its last frames.
    finished: watch::Sender<bool>,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum ReadEvent {
    Data(Vec<u8>),
    End(Option<io::Error>),
}

/// One path's I/O: its reader and writer tasks.
struct PathTasks {
    tx: mpsc::Sender<Vec<u8>>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
    /// For a direct UDP path: waits until XTCP delivered everything.
    xtcp: Option<CloseWaiter>,
    /// Output the writer queue had no room for yet.
    out: Vec<u8>,
    /// The local address of a TCP path (it dies with the address).
    local: Option<std::net::IpAddr>,
}

impl Drop for PathTasks {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// Everything the driver needs to start.
pub(crate) struct Start {
    pub relay: Box<dyn PathIo>,
    /// The relay connection's local address.
    pub relay_local: Option<SocketAddr>,
    pub role: Role,
    /// Direct attempts begun at pairing.
    pub early: Early,
    /// Guest: the relay path's round trip as its handshake measured it.
    pub relay_rtt: Option<Duration>,
    pub observed: SocketAddr,
    /// The relay's UDP address service, when it offers one.
    pub relay_udp: Option<RelayUdp>,
    pub opts: DirectOptions,
    /// How to set the relay path up again when it is lost (None: a lost
    /// relay path ends the session).
    pub reconnect: Option<Reconnect>,
}

fn path_config(s: &Start) -> PathConfig {
    let o = &s.opts;
    PathConfig {
        policy: o.policy,
        tcp: o.tcp,
        udp: o.udp,
        keepalive_interval: o.keepalive_interval,
        keepalive_timeout: o.keepalive_timeout,
        relay_keepalive_interval: o.relay_keepalive_interval,
        retry_after: o.retry_after,
        udp_after: o.udp_after,
        udp_attempt: o.connect_timeout + o.handshake_timeout,
        tcp_attempt: o.connect_timeout + o.handshake_timeout,
        port_prediction: o.port_prediction,
        relay_one_way: s.relay_rtt.map_or(Duration::ZERO, |r| r / 2),
        replay_capacity: o.replay_capacity,
        relay_resume: if s.reconnect.is_some() {
            o.relay_resume
        } else {
            Duration::ZERO
        },
        receive_window: o
            .replay_capacity
            .max(proto::session::DEFAULT_REPLAY_CAPACITY),
        ..PathConfig::new(s.role, s.observed)
    }
}

/// Start the driver over an authenticated relay path and return the stream.
/// Fails when the peer's preamble did not open.
pub(crate) async fn start(mut s: Start) -> Result<SessionStream, PreambleError> {
    let peer_candidates = s.early.ready().await?;
    let cfg = path_config(&s);
    let early = s.early.into_parts();
    let clock = Clock {
        base: Instant::now(),
    };
    let listener_info = early.listener.as_ref().map(|l| (l.port, l.v6));
    let (m, relay_h) = PathManager::new(cfg, clock.now(), peer_candidates, listener_info);
    let (path_tx, path_rx) = watch::channel(Path::Relay);
    let link = Arc::new(Link {
        shared: Mutex::new(Shared {
            m,
            clock,
            read_waker: None,
            write_waker: None,
            flushed: false,
            direct: HashMap::new(),
            bytes_read: 0,
        }),
        notify: Notify::new(),
        path: path_tx,
        sever: AtomicBool::new(false),
        finished: watch::channel(false).0,
    });
    let (events_tx, events_rx) = mpsc::channel(READ_QUEUE * 2);
    let (udp_tx, udp_rx) = mpsc::channel(2);
    let (relay_tx, relay_rx) = mpsc::channel(2);
    let mut driver = Driver {
        link: link.clone(),
        clock,
        observed: s.observed,
        paths: HashMap::new(),
        events_tx,
        received_pub: early.ctx.received.clone(),
        ctx: early.ctx,
        exporter: early.exporter,
        listener: early.listener,
        dialing: early.dialing,
        relay_udp: s.relay_udp,
        reconnect: s.reconnect,
        relay_tx,
        relay_attempt: None,
        udp_tx,
        prepared: None,
        punching: None,
        draining: Vec::new(),
        woke_app: false,
    };
    driver.add_io(relay_h, s.relay, None, s.relay_local);
    tokio::spawn(driver.run(events_rx, early.found, udp_rx, relay_rx));
    Ok(SessionStream {
        link,
        path: path_rx,
    })
}

/// A closed path's writer queue, its last bytes, the writer task, and for an
/// XTCP path the wait until the peer acknowledged everything.
type Draining = (
    mpsc::Sender<Vec<u8>>,
    Vec<u8>,
    tokio::task::JoinHandle<()>,
    Option<CloseWaiter>,
);

/// A UDP endpoint prepared for round `u32` (or why it could not be).
type UdpReady = (u32, io::Result<Prepared>);

/// Relay connection `u32` set up again (or why not).
type RelayReady = (u32, Result<Reconnected, String>);

struct Driver {
    link: Arc<Link>,
    clock: Clock,
    observed: SocketAddr,
    paths: HashMap<PathHandle, PathTasks>,
    events_tx: mpsc::Sender<(PathHandle, ReadEvent)>,
    /// `received` published to direct attempts (the guest's early RESUME).
    received_pub: Arc<AtomicU64>,
    ctx: DirectCtx,
    /// Keeps the relay exporter published to direct attempts.
    exporter: watch::Sender<Option<[u8; 32]>>,
    listener: Option<DirectListener>,
    dialing: Option<tokio::task::JoinHandle<()>>,
    relay_udp: Option<RelayUdp>,
    reconnect: Option<Reconnect>,
    relay_tx: mpsc::Sender<RelayReady>,
    /// The relay connection attempt under way.
    relay_attempt: Option<tokio::task::JoinHandle<()>>,
    udp_tx: mpsc::Sender<UdpReady>,
    prepared: Option<(u32, Prepared)>,
    punching: Option<tokio::task::JoinHandle<()>>,
    /// Writers of closed paths with their last bytes, flushed before the end.
    draining: Vec<Draining>,
    /// `apply` woke the application.
    woke_app: bool,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(d) = self.dialing.take() {
            d.abort();
        }
        if let Some(h) = self.punching.take() {
            h.abort();
        }
        if let Some(h) = self.relay_attempt.take() {
            h.abort();
        }
    }
}

impl Driver {
    fn add_io(
        &mut self,
        h: PathHandle,
        io: Box<dyn PathIo>,
        xtcp: Option<CloseWaiter>,
        local: Option<SocketAddr>,
    ) {
        let (mut rd, mut wr) = tokio::io::split(io);
        let events = self.events_tx.clone();
        let reader = tokio::spawn(async move {
            loop {
                let mut buf = vec![0u8; 64 * 1024];
                match rd.read(&mut buf).await {
                    Ok(0) => {
                        let _ = events.send((h, ReadEvent::End(None))).await;
                        return;
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        if events.send((h, ReadEvent::Data(buf))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = events.send((h, ReadEvent::End(Some(e)))).await;
                        return;
                    }
                }
            }
        });
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    return;
                }
                if rx.is_empty() && wr.flush().await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown().await;
        });
        self.paths.insert(
            h,
            PathTasks {
                tx,
                reader,
                writer,
                xtcp,
                out: Vec::new(),
                local: local.map(|a| a.ip()).filter(|ip| !ip.is_unspecified()),
            },
        );
    }

    /// Relay connection `generation` came up (or failed): hand it to the
    /// manager (§4.8).
    fn relay_ready(&mut self, generation: u32, r: Result<Reconnected, String>) {
        let link = self.link.clone();
        let mut g = link.lock();
        let now = g.clock.now();
        self.relay_attempt = None;
        match r {
            Ok(c) => {
                if let Some(h) = g.m.handle_relay_connected(now, generation, c.observed) {
                    tracing::info!(generation, relay = %c.relay, "relay path set up again");
                    self.observed = c.observed;
                    self.relay_udp = c.udp;
                    if let Some(rc) = self.reconnect.as_mut() {
                        rc.relay = c.relay;
                    }
                    drop(g);
                    self.add_io(h, c.io, None, c.local);
                }
            }
            Err(e) => {
                tracing::debug!(generation, "relay connection failed: {e}");
                g.m.handle_relay_failed(now, generation);
            }
        }
    }

    /// This host's addresses changed (`spec/direct.md` §4.9): paths bound
    /// to an address that went away are dead now, not after their timeout.
    fn network_changed(&mut self, addrs: &std::collections::BTreeSet<std::net::IpAddr>) {
        let gone: Vec<PathHandle> = self
            .paths
            .iter()
            .filter(|(_, p)| p.local.is_some_and(|ip| !addrs.contains(&ip)))
            .map(|(h, _)| *h)
            .collect();
        let link = self.link.clone();
        let mut g = link.lock();
        let now = g.clock.now();
        for h in gone {
            tracing::info!(path = h.index(), "local address gone: path closed");
            g.m.handle_path_closed(now, h);
        }
        g.m.handle_network_changed(now);
    }

    async fn run(
        mut self,
        events: mpsc::Receiver<(PathHandle, ReadEvent)>,
        found: mpsc::Receiver<DirectConn>,
        udp: mpsc::Receiver<UdpReady>,
        relay: mpsc::Receiver<RelayReady>,
    ) {
        self.run_inner(events, found, udp, relay).await;
        if let Some(h) = self.relay_attempt.take() {
            h.abort();
        }
        // Whatever the manager did not close (the driver's own end).
        for (_, p) in self.paths.drain() {
            let mut p = p;
            let out = std::mem::take(&mut p.out);
            let writer = std::mem::replace(&mut p.writer, tokio::spawn(async {}));
            self.draining
                .push((p.tx.clone(), out, writer, p.xtcp.take()));
        }
        // The last frames (final ACK, CLOSE) reach the peers before the
        // session reports itself finished (bounded).
        let draining = std::mem::take(&mut self.draining);
        let flush = async {
            for (tx, out, writer, xtcp) in draining {
                if !out.is_empty() {
                    let _ = tx.send(out).await;
                }
                drop(tx);
                let _ = writer.await;
                // An XTCP path lives in this process: its last frames are
                // delivered only while the endpoint runs (the kernel does
                // that for TCP), so wait for the peer's acknowledgement.
                if let Some(w) = xtcp {
                    let _ = w.wait().await;
                    // Our last ACK leaves before the process may exit.
                    w.flush().await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
        {
            let mut g = self.link.lock();
            g.flushed = true;
            for w in [g.read_waker.take(), g.write_waker.take()]
                .into_iter()
                .flatten()
            {
                w.wake();
            }
        }
        self.link.finished.send_replace(true);
    }

    /// Carry out what the manager asked for, hand its output to the writers
    /// and wake the application. Returns false once the session is over.
    fn apply(&mut self) -> bool {
        let link = self.link.clone();
        let mut g = link.lock();
        while let Some(a) = g.m.poll_action() {
            self.act(&mut g, a);
        }
        let pending: Vec<PathHandle> = g.m.pending_output().collect();
        for h in pending {
            let Some(p) = self.paths.get_mut(&h) else {
                continue;
            };
            // As much as the writer queue takes: handing output over lets the
            // manager frame more of the stream at once.
            while p.out.is_empty() {
                match p.tx.try_reserve() {
                    Ok(permit) => match g.m.poll_transmit(h) {
                        Some(out) => permit.send(out),
                        None => break,
                    },
                    Err(mpsc::error::TrySendError::Full(())) => {
                        // Waits for room in the writer queue (`reserve`).
                        if let Some(out) = g.m.poll_transmit(h) {
                            p.out = out;
                        }
                        break;
                    }
                    // The writer failed: its reader reports the path's end.
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        let _ = g.m.poll_transmit(h);
                        break;
                    }
                }
            }
        }
        self.received_pub.store(g.m.received(), Ordering::Release);
        self.woke_app = g.wake();
        *g.m.status() == Status::Open
    }

    fn act(&mut self, g: &mut Shared, a: Action) {
        match a {
            Action::PathChanged(p) => {
                self.link.path.send_if_modified(|cur| {
                    let changed = *cur != p;
                    *cur = p;
                    changed
                });
            }
            Action::ClosePath {
                path,
                last,
                graceful,
            } => {
                let Some(mut p) = self.paths.remove(&path) else {
                    return;
                };
                if graceful {
                    // The writer finishes its queue, then the last frames,
                    // then shuts the stream down (see `run`).
                    let mut out = std::mem::take(&mut p.out);
                    out.extend_from_slice(&last);
                    let writer = std::mem::replace(&mut p.writer, tokio::spawn(async {}));
                    self.draining
                        .push((p.tx.clone(), out, writer, p.xtcp.take()));
                }
            }
            Action::DialTcp { peers } => {
                let Some(l) = &self.listener else { return };
                if let Some(d) = self.dialing.take() {
                    d.abort();
                }
                self.dialing = Some(tokio::spawn(direct::dial_all(
                    self.ctx.clone(),
                    l.port,
                    peers,
                )));
            }
            Action::StartListener => {
                // A new listening port (and candidates) for the next
                // attempt: the dead connection's 4-tuple may still be held
                // by its socket (§4.7 step 4).
                let now = g.clock.now();
                match DirectListener::start(self.ctx.clone()) {
                    Ok(l) => {
                        let cands = direct::gather(l.port, self.observed, l.v6);
                        let info = (l.port, l.v6, cands);
                        self.listener = Some(l);
                        g.m.handle_listener(now, Some(info));
                    }
                    Err(e) => {
                        tracing::debug!("direct tcp: no listener: {e}");
                        g.m.handle_listener(now, None);
                    }
                }
            }
            Action::StopListener => {
                // No more connections (§4.1); handshakes under way end
                // within their bound.
                if let Some(l) = &self.listener {
                    l.stop();
                }
            }
            Action::PrepareUdp { round } => {
                let (role, observed, svc) = (self.ctx.role, self.observed, self.relay_udp);
                let tx = self.udp_tx.clone();
                tokio::spawn(async move {
                    let r = direct_udp::prepare(role, observed, svc).await;
                    let _ = tx.send((round, r)).await;
                });
            }
            Action::StartUdp(a) => self.start_udp(a),
            Action::ConnectRelay { generation } => {
                if let Some(h) = self.relay_attempt.take() {
                    h.abort();
                }
                let first = *self.exporter.borrow();
                let (Some(rc), Some(first)) = (self.reconnect.clone(), first) else {
                    let now = g.clock.now();
                    g.m.handle_relay_failed(now, generation);
                    return;
                };
                tracing::debug!(generation, relay = %rc.relay, "relay connection: setting up");
                let (role, tx) = (self.ctx.role, self.relay_tx.clone());
                self.relay_attempt = Some(tokio::spawn(async move {
                    let r = reconnect_relay(rc, role, generation, first).await;
                    let _ = tx.send((generation, r)).await;
                }));
            }
            Action::StopRelay => {
                if let Some(h) = self.relay_attempt.take() {
                    h.abort();
                }
            }
            Action::StopUdp => {
                if let Some(h) = self.punching.take() {
                    h.abort();
                }
                self.prepared = None;
            }
        }
    }

    fn start_udp(&mut self, a: UdpAttempt) {
        let Some((round, prep)) = self.prepared.take() else {
            return;
        };
        if round != a.round {
            return;
        }
        let plan = direct_udp::PunchPlan {
            attempt: a.attempt,
            peers: a.peers,
            reflexive: a.reflexive,
            duration: a.duration,
            prediction: a.prediction,
            start_at: Some(self.clock.to_tokio(a.start_at)),
        };
        tracing::debug!(attempt = a.attempt, peers = ?plan.peers, "direct udp: punching");
        if let Some(h) = self.punching.take() {
            h.abort();
        }
        self.punching = Some(tokio::spawn(direct_udp::punch(
            prep,
            self.ctx.clone(),
            plan,
        )));
    }

    /// The path whose pending output waits for room in its writer queue.
    fn blocked_writer(&self) -> Option<(PathHandle, mpsc::Sender<Vec<u8>>)> {
        self.paths
            .iter()
            .find(|(_, p)| !p.out.is_empty() && !p.tx.is_closed())
            .map(|(k, p)| (*k, p.tx.clone()))
    }

    async fn run_inner(
        &mut self,
        mut events: mpsc::Receiver<(PathHandle, ReadEvent)>,
        mut found: mpsc::Receiver<DirectConn>,
        mut udp: mpsc::Receiver<UdpReady>,
        mut relay: mpsc::Receiver<RelayReady>,
    ) {
        // Local addresses, polled (netlink would wake us sooner; 500 ms is
        // well inside the keepalive timeout it competes with).
        let mut addrs = local_addrs();
        let mut watch = tokio::time::interval(ADDRESS_POLL);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !self.apply() {
                return;
            }
            if std::mem::take(&mut self.woke_app) {
                // The application runs before the driver takes more input.
                tokio::task::yield_now().await;
            }
            let (deadline, rx_room) = {
                let g = self.link.lock();
                let now = g.clock.now();
                let room = g.m.paths().next().is_none_or(|h| g.m.wants_read(h, now));
                (g.m.poll_timeout().map(|t| self.clock.to_tokio(t)), room)
            };
            let blocked = self.blocked_writer();
            tokio::select! {
                ev = events.recv(), if rx_room => {
                    let Some((h, ev)) = ev else { return };
                    let link = self.link.clone();
                    let mut g = link.lock();
                    let now = g.clock.now();
                    on_read(&mut g, now, h, ev);
                    // Take what else is queued without waiting (one lock per batch).
                    for _ in 0..READ_QUEUE * 2 {
                        match events.try_recv() {
                            Ok((h, ev)) => on_read(&mut g, now, h, ev),
                            Err(_) => break,
                        }
                    }
                }
                Some(conn) = found.recv() => {
                    let link = self.link.clone();
                    let mut g = link.lock();
                    let now = g.clock.now();
                    tracing::debug!(remote = %conn.remote, kind = %conn.kind, "direct path: proven");
                    if let Some(h) = g.m.handle_path_opened(now, conn.kind, conn.early_resume) {
                        let probe = conn.xtcp.as_ref().map(CloseWaiter::probe);
                        let sh = &mut *g;
                        sh.direct.retain(|h, _| sh.m.path_kind(*h).is_some());
                        sh.direct.insert(h, (conn.kind, conn.remote, probe));
                        drop(g);
                        self.add_io(h, conn.io, conn.xtcp, conn.local);
                    }
                }
                Some((round, prep)) = udp.recv() => {
                    let link = self.link.clone();
                    let mut g = link.lock();
                    let now = g.clock.now();
                    match prep {
                        Ok(p) => {
                            tracing::debug!(candidates = ?p.candidates, "direct udp: prepared");
                            let c = p.candidates.clone();
                            self.prepared = Some((round, p));
                            g.m.handle_udp_prepared(now, round, Some(c));
                        }
                        Err(e) => {
                            tracing::debug!("direct udp: no endpoint: {e}");
                            g.m.handle_udp_prepared(now, round, None);
                        }
                    }
                }
                Some((generation, r)) = relay.recv() => self.relay_ready(generation, r),
                _ = self.link.notify.notified() => {
                    let mut g = self.link.lock();
                    let now = g.clock.now();
                    if self.link.sever.swap(false, Ordering::SeqCst) {
                        g.m.handle_direct_severed(now);
                    }
                    g.m.handle_timeout(now);
                }
                (h, permit) = reserve(blocked) => {
                    if let Some(p) = self.paths.get_mut(&h) {
                        let out = std::mem::take(&mut p.out);
                        // A closed writer: the bytes are lost with the path.
                        if let Some(permit) = permit {
                            permit.send(out);
                        }
                    }
                }
                _ = watch.tick() => {
                    let now_addrs = local_addrs();
                    if now_addrs != addrs {
                        tracing::info!(?now_addrs, "local addresses changed");
                        addrs = now_addrs;
                        self.network_changed(&addrs);
                    }
                }
                _ = sleep_until(deadline) => {
                    let mut g = self.link.lock();
                    let now = g.clock.now();
                    g.m.handle_timeout(now);
                }
            }
        }
    }
}

fn on_read(g: &mut Shared, now: proto::Instant, h: PathHandle, ev: ReadEvent) {
    match ev {
        ReadEvent::End(e) => {
            if let Some(e) = e {
                tracing::debug!("path closed: {e}");
            }
            g.m.handle_path_closed(now, h);
        }
        ReadEvent::Data(buf) => g.m.handle_path_data(now, h, &buf),
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn reserve(
    blocked: Option<(PathHandle, mpsc::Sender<Vec<u8>>)>,
) -> (PathHandle, Option<mpsc::OwnedPermit<Vec<u8>>>) {
    match blocked {
        Some((k, tx)) => (k, tx.reserve_owned().await.ok()),
        None => std::future::pending().await,
    }
}
