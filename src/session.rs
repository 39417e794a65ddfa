//! The session driver (`spec/direct.md`): one application byte stream over a
//! succession of paths, the relay path first, a direct TCP path as soon as
//! one is proven, and back to the relay when the direct path dies, without
//! losing, duplicating or reordering a byte.
//!
//! ```text
//!  application ⇄ SessionStream ⇄ Shared{SessionState, rx} ⇄ driver task
//!                                                   ├─ path slot: relay  (reader task, writer task)
//!                                                   └─ path slot: direct (reader task, writer task)
//! ```
//!
//! The sans-IO [`proto::session::SessionState`] holds the replay buffer and
//! offsets; this module owns sockets, time and the path life cycle:
//!
//! * path ids: relay epochs are even (0, 2, 4 …), direct paths odd, chosen by
//!   the host (`2n + 1` for attempt `n`); both sides compute the next relay
//!   epoch the same way, so a fallback started by both at once agrees;
//! * the first round of direct TCP attempts starts at pairing, before this
//!   driver (`crate::early`); it takes that round's listener and dialling over;
//! * a new direct connection is offered by [`crate::direct`] after its e2e
//!   handshake, in which the guest already sent its early `RESUME`; the host
//!   picks the first, sends `RESUME` on it and switches on the guest's early
//!   one; the guest follows the host's `RESUME`; the loser connections are
//!   dropped;
//! * liveness: a path that carried nothing for `keepalive_timeout` (keepalives
//!   every `keepalive_interval` on idle paths keep live ones talking) is dead;
//!   if it was the direct path, both sides reopen the relay stream with the
//!   next even id and the replay buffer resends from the peer's `RESUME`.

use crate::api::Path;
use crate::direct::{self, DirectConn, DirectCtx, DirectListener, PathIo};
use crate::direct_udp::{self, Prepared, RelayUdp};
use crate::e2e::Role;
use crate::early::Early;
use crate::net::CloseWaiter;
use crate::preamble::PreambleError;
use proto::session::{
    encode, Candidate, CandidateKind, Frame, FrameDecoder, Received, SessionConfig, SessionError,
    SessionState, Transport, MAX_DATA, PROVISIONAL_PATH,
};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// Which paths a session may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PathPolicy {
    /// Relay first, direct when possible, back to the relay when it dies.
    #[default]
    Auto,
    /// Never leave the relay.
    RelayOnly,
    /// Move to a direct path when possible and close the relay; a dead
    /// direct path then ends the session.
    NoRelayFallback,
}

/// Tunables of the direct path and the session layer.
#[derive(Clone, Debug)]
pub struct DirectOptions {
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
        }
    }
}

/// Bytes handed to the application's reads at most, buffered (beyond it the
/// driver stops reading the paths: backpressure to the peer).
const RX_CAP: usize = 1 << 20;
/// Frames coalesced into one write of a path at most.
const OUT_BATCH: usize = 64 * 1024;
/// One frame's payload: a frame plus its header fits one 16 KiB TLS record.
const FRAME_DATA: usize = 16 * 1024 - 16;
/// Chunks queued from a path's reader to the driver.
const READ_QUEUE: usize = 8;
/// Writes queued to a path's writer.
const WRITE_QUEUE: usize = 4;
/// How long a dropped session keeps going to deliver what was written.
const LINGER: Duration = Duration::from_secs(30);

struct Shared {
    st: SessionState,
    rx: VecDeque<u8>,
    rx_eof: bool,
    error: Option<(io::ErrorKind, String)>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    app_gone: bool,
    /// The peer sent CLOSE(0): it had everything, including our FIN.
    peer_closed: bool,
    /// `st.received()` published to direct attempts (the guest's early RESUME).
    received_pub: Arc<AtomicU64>,
}

impl Shared {
    fn fail(&mut self, kind: io::ErrorKind, msg: String) {
        if self.error.is_none() {
            self.error = Some((kind, msg));
        }
        self.wake();
    }
    fn wake(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

struct Link {
    shared: Mutex<Shared>,
    notify: Notify,
    path: watch::Sender<Path>,
    /// Test hook: close the direct path's socket abruptly.
    sever: std::sync::atomic::AtomicBool,
    /// The driver ended and flushed its last frames.
    finished: watch::Sender<bool>,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The application's end of a session: one byte stream, whatever the path.
pub struct SessionStream {
    link: Arc<Link>,
    path: watch::Receiver<Path>,
}

impl std::fmt::Debug for SessionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStream")
            .field("path", &*self.path.borrow())
            .finish_non_exhaustive()
    }
}

impl SessionStream {
    /// The path the session's bytes take now.
    pub fn path(&self) -> Path {
        *self.path.borrow()
    }
    /// Path changes as they happen (`changed().await`, then `borrow()`).
    pub fn path_events(&self) -> watch::Receiver<Path> {
        self.path.clone()
    }
    /// A handle that watches and steers the session from elsewhere.
    pub fn control(&self) -> SessionControl {
        SessionControl {
            link: self.link.clone(),
            path: self.path.clone(),
        }
    }
}

/// Watches a session's path from another task (see [`SessionStream::control`]).
#[derive(Clone)]
pub struct SessionControl {
    link: Arc<Link>,
    path: watch::Receiver<Path>,
}

impl SessionControl {
    /// Resolves when the session is over and its last frames were handed to
    /// the network (wait for it before exiting the process, or the peer may
    /// miss the final acknowledgement).
    pub async fn finished(&self) {
        let mut rx = self.link.finished.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
    /// The path the session's bytes take now.
    pub fn path(&self) -> Path {
        *self.path.borrow()
    }
    /// Close the direct path's socket at once, as a network failure would
    /// (for tests of the fallback to the relay).
    #[doc(hidden)]
    pub fn sever_direct_path(&self) {
        self.link
            .sever
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.link.notify.notify_one();
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        let mut g = self.link.lock();
        g.app_gone = true;
        g.st.finish();
        drop(g);
        self.link.notify.notify_one();
    }
}

impl AsyncRead for SessionStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut g = self.link.lock();
        if !g.rx.is_empty() {
            let (a, b) = g.rx.as_slices();
            let n = a.len().min(buf.remaining());
            buf.put_slice(&a[..n]);
            let m = b.len().min(buf.remaining());
            buf.put_slice(&b[..m]);
            let was_full = g.rx.len() >= RX_CAP;
            g.rx.drain(..n + m);
            drop(g);
            if was_full {
                self.link.notify.notify_one();
            }
            return Poll::Ready(Ok(()));
        }
        if g.rx_eof {
            return Poll::Ready(Ok(()));
        }
        if let Some((kind, msg)) = &g.error {
            return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
        }
        g.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for SessionStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut g = self.link.lock();
        if let Some((kind, msg)) = &g.error {
            return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
        }
        match g.st.write(buf) {
            Ok(0) if !buf.is_empty() => {
                g.write_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Ok(n) => {
                drop(g);
                self.link.notify.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(_) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            ))),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    /// Half-close: the peer reads end of stream after every byte written.
    /// Completes once the peer acknowledged all of it (like a lingering close).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.link.lock();
        g.st.finish();
        // A peer that closed the session with CLOSE(0) had received our FIN.
        if g.st.fin_acked() || g.peer_closed {
            return Poll::Ready(Ok(()));
        }
        if let Some((kind, msg)) = &g.error {
            return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
        }
        g.write_waker = Some(cx.waker().clone());
        drop(g);
        self.link.notify.notify_one();
        Poll::Pending
    }
}

enum ReadEvent {
    Data(Vec<u8>),
    End(Option<io::Error>),
}

struct Slot {
    kind: Path,
    /// Session path id of incoming frames (None: a direct connection whose
    /// host `RESUME` has not arrived yet).
    in_id: Option<u32>,
    /// Session path id this side sends with on this stream.
    out_id: Option<u32>,
    decoder: FrameDecoder,
    tx: mpsc::Sender<Vec<u8>>,
    out: Vec<u8>,
    last_recv: Instant,
    last_sent: Instant,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
    /// Let the writer finish its queue when the slot goes.
    graceful: bool,
    /// For a direct UDP path: waits until XTCP delivered everything.
    xtcp: Option<CloseWaiter>,
    /// Guest: the early RESUME it sent on this direct connection.
    early_resume: Option<u64>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.reader.abort();
        if !self.graceful {
            self.writer.abort();
        }
        // Graceful: the writer drains its queue, then shuts the stream down
        // (its sender is dropped with the slot).
    }
}

/// Everything the driver needs to start.
pub(crate) struct Start {
    pub relay: Box<dyn PathIo>,
    pub role: Role,
    /// Direct attempts begun at pairing.
    pub early: Early,
    /// Guest: the relay path's round trip as its handshake measured it.
    pub relay_rtt: Option<Duration>,
    pub observed: SocketAddr,
    /// The relay's UDP address service, when it offers one.
    pub relay_udp: Option<RelayUdp>,
    pub opts: DirectOptions,
}

/// Start the driver over an authenticated relay path and return the stream.
/// Fails when the peer's preamble did not open.
pub(crate) async fn start(mut s: Start) -> Result<SessionStream, PreambleError> {
    let peer_candidates = s.early.ready().await?;
    let early = s.early.into_parts();
    let cfg = SessionConfig::with_capacity(s.opts.replay_capacity.max(FRAME_DATA));
    let (path_tx, path_rx) = watch::channel(Path::Relay);
    let link = Arc::new(Link {
        shared: Mutex::new(Shared {
            st: SessionState::new(cfg),
            rx: VecDeque::new(),
            rx_eof: false,
            error: None,
            read_waker: None,
            write_waker: None,
            app_gone: false,
            peer_closed: false,
            received_pub: early.ctx.received.clone(),
        }),
        notify: Notify::new(),
        path: path_tx,
        sever: std::sync::atomic::AtomicBool::new(false),
        finished: watch::channel(false).0,
    });
    let (events_tx, events_rx) = mpsc::channel(READ_QUEUE * 2);
    let (udp_tx, udp_rx) = mpsc::channel(2);
    let found_rx = early.found;
    let driver = Driver {
        link: link.clone(),
        role: s.role,
        opts: s.opts.clone(),
        slots: HashMap::new(),
        next_slot: 0,
        events_tx,
        ctx: early.ctx,
        _exporter: early.exporter,
        observed: s.observed,
        listener: early.listener,
        peer_candidates,
        relay_epoch: 0,
        // Attempt 0 was dialled at pairing, on the preambles' candidates.
        attempt: 1,
        direct_id: None,
        direct_seq: 0,
        retry_at: None,
        dialing: early.dialing,
        finished_at: None,
        closing: false,
        draining: Vec::new(),
        relay_udp: s.relay_udp,
        udp: UdpState::Idle,
        udp_round: 0,
        udp_tx,
        udp_punch_pending: None,
        relay_one_way: s
            .relay_rtt
            .map_or(Duration::ZERO, |r| (r / 2).min(MAX_ONE_WAY)),
        guest_dialed: Some(0),
        round_start: None,
    };
    tokio::spawn(driver.run(s.relay, events_rx, found_rx, udp_rx));
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

/// Where this side's UDP attempt of the current round stands.
enum UdpState {
    Idle,
    Preparing,
    Ready(Prepared),
    Punching(tokio::task::JoinHandle<()>),
}

/// The UDP service is asked for the public address this long before the
/// punch, so both sides' candidates are there when the window ends.
const UDP_PREPARE_LEAD: Duration = Duration::from_secs(2);
/// Bound on the guest's estimate of the relay's one-way delay.
const MAX_ONE_WAY: Duration = Duration::from_secs(2);

struct Driver {
    link: Arc<Link>,
    role: Role,
    opts: DirectOptions,
    slots: HashMap<u64, Slot>,
    next_slot: u64,
    events_tx: mpsc::Sender<(u64, ReadEvent)>,
    ctx: DirectCtx,
    /// Keeps the relay exporter published to direct attempts.
    _exporter: watch::Sender<Option<[u8; 32]>>,
    observed: SocketAddr,
    listener: Option<DirectListener>,
    peer_candidates: Vec<Candidate>,
    /// Current relay path id (even).
    relay_epoch: u32,
    /// Direct attempts so far (the host numbers them).
    attempt: u32,
    /// Session path id of the direct path in use, if any.
    direct_id: Option<u32>,
    /// Direct paths the host opened so far.
    direct_seq: u32,
    retry_at: Option<Instant>,
    dialing: Option<tokio::task::JoinHandle<()>>,
    finished_at: Option<Instant>,
    /// The peer sent CLOSE: its paths going away is no failure.
    closing: bool,
    /// Writers of closed paths with their last bytes, flushed before the end.
    draining: Vec<Draining>,
    relay_udp: Option<RelayUdp>,
    udp: UdpState,
    /// Rounds of direct attempts so far: a preparation from an older round
    /// is dropped.
    udp_round: u32,
    udp_tx: mpsc::Sender<UdpReady>,
    /// Guest: the TCP attempt it dialled last (the first one without PUNCH).
    guest_dialed: Option<u32>,
    /// Guest: a UDP PUNCH (attempt, agreed start) waiting for this side's
    /// endpoint.
    udp_punch_pending: Option<(u32, Instant)>,
    /// Guest: how long the host's frames take to arrive (half the relay
    /// path's round trip): the agreed UDP start is the PUNCH's arrival plus
    /// its delay minus this.
    relay_one_way: Duration,
    /// When the current round of direct attempts began (the UDP window
    /// counts from here).
    round_start: Option<Instant>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(d) = self.dialing.take() {
            d.abort();
        }
        if let UdpState::Punching(h) = &self.udp {
            h.abort();
        }
    }
}

fn io_err(e: SessionError) -> (io::ErrorKind, String) {
    (io::ErrorKind::InvalidData, format!("session protocol: {e}"))
}

impl Driver {
    fn add_slot(&mut self, kind: Path, io: Box<dyn PathIo>) -> u64 {
        let key = self.next_slot;
        self.next_slot += 1;
        let (mut rd, mut wr) = tokio::io::split(io);
        let events = self.events_tx.clone();
        let reader = tokio::spawn(async move {
            loop {
                let mut buf = vec![0u8; 64 * 1024];
                match rd.read(&mut buf).await {
                    Ok(0) => {
                        let _ = events.send((key, ReadEvent::End(None))).await;
                        return;
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        if events.send((key, ReadEvent::Data(buf))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = events.send((key, ReadEvent::End(Some(e)))).await;
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
        let now = Instant::now();
        self.slots.insert(
            key,
            Slot {
                kind,
                in_id: None,
                out_id: None,
                decoder: FrameDecoder::new(),
                tx,
                out: Vec::new(),
                last_recv: now,
                last_sent: now,
                reader,
                writer,
                graceful: false,
                xtcp: None,
                early_resume: None,
            },
        );
        key
    }

    fn slot_for_out(&self, id: u32) -> Option<u64> {
        self.slots
            .iter()
            .find(|(_, s)| s.out_id == Some(id))
            .map(|(k, _)| *k)
    }

    fn relay_slot(&self) -> Option<u64> {
        self.slots
            .iter()
            .find(|(_, s)| s.kind == Path::Relay)
            .map(|(k, _)| *k)
    }

    fn queue(&mut self, key: u64, f: &Frame<'_>) {
        if let Some(s) = self.slots.get_mut(&key) {
            // Frames this side builds are valid by construction; an encode
            // error would be a bug, and the frame is then not sent.
            let _ = encode(f, &mut s.out);
        }
    }

    fn set_path(&self, p: Path) {
        self.link.path.send_if_modified(|cur| {
            let changed = *cur != p;
            *cur = p;
            changed
        });
    }

    async fn run(
        mut self,
        relay: Box<dyn PathIo>,
        events: mpsc::Receiver<(u64, ReadEvent)>,
        found: mpsc::Receiver<DirectConn>,
        udp: mpsc::Receiver<UdpReady>,
    ) {
        self.run_inner(relay, events, found, udp).await;
        if !self.slots.is_empty() {
            self.close_all(1, "session driver stopped");
        }
        // The last frames (final ACK, CLOSE) reach the peers before the
        // session reports itself finished (bounded).
        let draining = std::mem::take(&mut self.draining);
        let flush = async {
            for (tx, out, writer, xtcp) in draining {
                let _ = tx.send(out).await;
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
        self.link.finished.send_replace(true);
    }

    async fn run_inner(
        &mut self,
        relay: Box<dyn PathIo>,
        mut events: mpsc::Receiver<(u64, ReadEvent)>,
        mut found: mpsc::Receiver<DirectConn>,
        mut udp: mpsc::Receiver<UdpReady>,
    ) {
        let key = self.add_slot(Path::Relay, relay);
        let first = {
            let mut g = self.link.lock();
            g.st.open_path(0)
        };
        match first {
            Ok(f) => self.queue(key, &f),
            Err(e) => {
                let (k, m) = io_err(e);
                self.link.lock().fail(k, m);
                return;
            }
        }
        if let Some(s) = self.slots.get_mut(&key) {
            s.in_id = Some(0);
            s.out_id = Some(0);
        }
        if self.opts.policy != PathPolicy::RelayOnly {
            // The listener and the first TCP round came with `Early`.
            self.round_start = Some(Instant::now());
            self.udp_schedule();
        }
        let tick = (self.opts.keepalive_interval / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.pump() {
                return;
            }
            let rx_room = self.link.lock().rx.len() < RX_CAP;
            let blocked = self.blocked_writer();
            tokio::select! {
                ev = events.recv(), if rx_room => {
                    let Some((key, ev)) = ev else { return };
                    self.on_read(key, ev);
                    // Take what else is queued without waiting (one lock per batch).
                    while self.link.lock().rx.len() < RX_CAP {
                        match events.try_recv() {
                            Ok((key, ev)) => self.on_read(key, ev),
                            Err(_) => break,
                        }
                    }
                }
                Some(conn) = found.recv() => self.on_direct(conn),
                Some((round, prep)) = udp.recv() => self.on_udp_prepared(round, prep),
                _ = self.link.notify.notified() => {
                    if self.link.sever.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        if let Some(k) = self.direct_id.and_then(|id| self.slot_for_out(id)) {
                            self.drop_slot(k);
                            self.direct_lost();
                        }
                    }
                }
                permit = reserve(blocked) => {
                    if let Some((key, permit)) = permit {
                        if let Some(s) = self.slots.get_mut(&key) {
                            permit.send(std::mem::take(&mut s.out));
                            s.last_sent = Instant::now();
                        }
                    }
                }
                _ = ticker.tick() => self.on_tick(),
            }
        }
    }

    /// The slot whose pending output waits for room in its writer queue.
    fn blocked_writer(&self) -> Option<(u64, mpsc::Sender<Vec<u8>>)> {
        self.slots
            .iter()
            .find(|(_, s)| !s.out.is_empty() && s.tx.capacity() == 0)
            .map(|(k, s)| (*k, s.tx.clone()))
    }

    /// Move frames from the session state to the paths' writers. Returns true
    /// when the driver is done.
    fn pump(&mut self) -> bool {
        loop {
            let mut progressed = false;
            {
                let link = self.link.clone();
                let mut g = link.lock();
                if g.error.is_some() {
                    return true;
                }
                while let Some(active) = g.st.active_path() {
                    let Some(key) = self.slot_for_out(active) else {
                        break;
                    };
                    if self
                        .slots
                        .get(&key)
                        .is_some_and(|s| s.out.len() >= OUT_BATCH)
                    {
                        break;
                    }
                    let before_free = g.st.free_space();
                    let Some((pid, frame)) = g.st.poll_transmit(FRAME_DATA.min(MAX_DATA)) else {
                        break;
                    };
                    let target = self.slot_for_out(pid).unwrap_or(key);
                    if let Some(s) = self.slots.get_mut(&target) {
                        let _ = encode(&frame, &mut s.out);
                    }
                    drop(frame);
                    if g.st.free_space() > before_free {
                        if let Some(w) = g.write_waker.take() {
                            w.wake();
                        }
                    }
                    progressed = true;
                }
                if g.st.fin_acked() {
                    if let Some(w) = g.write_waker.take() {
                        w.wake();
                    }
                }
                if g.st.is_complete() || (g.peer_closed && g.st.peer_finished()) {
                    g.wake();
                    drop(g);
                    self.close_all(0, "done");
                    return true;
                }
                if g.app_gone && self.finished_at.is_some_and(|t| t.elapsed() > LINGER) {
                    drop(g);
                    self.close_all(1, "gave up waiting for the peer");
                    return true;
                }
                if self.slots.is_empty() {
                    // Every path is gone (the peer closed, or they failed):
                    // nobody may wait forever.
                    if !g.st.peer_finished() {
                        g.fail(io::ErrorKind::ConnectionReset, "all paths closed".into());
                    }
                    g.wake();
                    return true;
                }
                if g.app_gone && self.finished_at.is_none() {
                    self.finished_at = Some(Instant::now());
                }
            }
            // Hand full or pending buffers to the writers.
            for s in self.slots.values_mut() {
                if s.out.is_empty() {
                    continue;
                }
                if let Ok(p) = s.tx.try_reserve() {
                    p.send(std::mem::take(&mut s.out));
                    s.last_sent = Instant::now();
                    progressed = true;
                }
            }
            if !progressed {
                return false;
            }
        }
    }

    fn close_all(&mut self, code: u16, reason: &str) {
        let keys: Vec<u64> = self.slots.keys().copied().collect();
        for k in keys {
            self.queue(k, &Frame::Close { code, reason });
            if let Some(s) = self.slots.get_mut(&k) {
                // The writer finishes its queue, then this side's last ACK
                // and the CLOSE, then shuts the stream down (see `run`).
                s.graceful = true;
                let out = std::mem::take(&mut s.out);
                let writer = std::mem::replace(&mut s.writer, tokio::spawn(async {}));
                self.draining
                    .push((s.tx.clone(), out, writer, s.xtcp.take()));
            }
        }
        self.slots.clear();
    }

    fn on_read(&mut self, key: u64, ev: ReadEvent) {
        match ev {
            ReadEvent::End(e) => {
                if let Some(e) = e {
                    tracing::debug!("path closed: {e}");
                }
                self.path_lost(key);
            }
            ReadEvent::Data(buf) => {
                if let Some(s) = self.slots.get_mut(&key) {
                    s.last_recv = Instant::now();
                }
                if let Err((k, m)) = self.on_bytes(key, &buf) {
                    self.link.lock().fail(k, m);
                    //= spec/direct.md#DI-PARSE-2
                    //# and SHOULD send `CLOSE` on another path if one is left.
                    self.close_all(1, "protocol error");
                }
            }
        }
    }

    fn on_bytes(&mut self, key: u64, buf: &[u8]) -> Result<(), (io::ErrorKind, String)> {
        tracing::trace!(key, len = buf.len(), "path bytes");
        let link = self.link.clone();
        let mut input = buf;
        loop {
            let Some(slot) = self.slots.get_mut(&key) else {
                return Ok(());
            };
            let kind = slot.kind;
            let in_id = slot.in_id;
            let frame = match slot.decoder.decode(&mut input) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                //= spec/direct.md#DI-PARSE-1
                //# Every other error is fatal for the session: the receiver MUST stop using the path
                Err(e) => return Err((io::ErrorKind::InvalidData, format!("session frame: {e}"))),
            };
            if !matches!(frame, Frame::Data { .. } | Frame::Ack { .. }) {
                tracing::debug!(role = ?self.role, key, ?in_id, frame = ?frame, "frame in");
            }
            let handled = match frame {
                // The guest's early RESUME on a direct connection: for the id
                // this side gave it (§4.6).
                Frame::Resume {
                    path_id: PROVISIONAL_PATH,
                    received,
                } if self.role == Role::Host && kind != Path::Relay && in_id.is_some() => {
                    in_id.map(|path_id| Frame::Resume { path_id, received })
                }
                Frame::Resume { path_id, received } => {
                    if in_id != Some(path_id) {
                        self.on_peer_resume(key, kind, in_id, path_id)?;
                    }
                    Some(Frame::Resume { path_id, received })
                }
                Frame::Candidates(c) => {
                    self.on_candidates(c);
                    None
                }
                Frame::Punch {
                    attempt,
                    transport,
                    delay_ms,
                } => {
                    match transport {
                        Transport::Tcp => self.on_punch(attempt),
                        Transport::Udp => self.on_udp_punch(attempt, delay_ms),
                    }
                    None
                }
                Frame::Keepalive { nonce } => {
                    // Bounded: a peer that floods keepalives while not reading
                    // gets no more answers once the output backs up.
                    if self
                        .slots
                        .get(&key)
                        .is_some_and(|s| s.out.len() < 2 * OUT_BATCH)
                    {
                        //= spec/direct.md#DI-KA-1
                        //# A receiver of `KEEPALIVE` SHOULD answer on the same path with `KEEPALIVE_ACK` carrying
                        //# the same nonce.
                        self.queue(key, &Frame::KeepaliveAck { nonce });
                    }
                    None
                }
                Frame::KeepaliveAck { .. } => None,
                Frame::Close { code, reason } => {
                    self.closing = true;
                    let mut g = link.lock();
                    //= spec/direct.md#DI-CLOSE-1
                    //# A receiver MUST NOT base a decision on the reason.
                    if code == 0 {
                        g.peer_closed = true;
                        g.wake();
                    }
                    if code != 0 && !g.st.is_complete() {
                        g.fail(
                            io::ErrorKind::ConnectionAborted,
                            format!("peer closed the session: {reason}"),
                        );
                    }
                    None
                }
                other => {
                    // DATA, ACK, FIN, PATH_SWITCH: the session state's business.
                    //= spec/direct.md#DI-EARLY-1
                    //# any other frame closes that connection
                    let Some(id) = in_id else {
                        // Only RESUME is valid first on a direct connection.
                        drop(other);
                        self.drop_slot(key);
                        return Ok(());
                    };
                    let r = g_handle(&mut link.lock(), id, other);
                    Self::deliver(r)?;
                    None
                }
            };
            if let Some(f) = handled {
                let id = self.slots.get(&key).and_then(|s| s.in_id);
                if let Some(id) = id {
                    let r = g_handle(&mut link.lock(), id, f);
                    Self::deliver(r)?;
                }
            }
            self.after_frame();
        }
    }

    fn deliver(r: Result<(), SessionError>) -> Result<(), (io::ErrorKind, String)> {
        match r {
            Ok(()) => Ok(()),
            // Frames still arriving on a path this side already closed (an
            // old relay epoch, say): the replay from the next RESUME covers them.
            Err(SessionError::UnknownPath(_)) => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Path bookkeeping after the session state saw a frame.
    fn after_frame(&mut self) {
        let (active, retired): (Option<u32>, Vec<u32>) = {
            let g = self.link.lock();
            let retired = self
                .slots
                .values()
                .filter_map(|s| s.out_id)
                .filter(|id| g.st.path_retired(*id))
                .collect();
            (g.st.active_path(), retired)
        };
        if let Some(a) = active {
            let kind = self
                .slots
                .values()
                .find(|s| s.out_id == Some(a))
                .map(|s| s.kind);
            if let Some(k) = kind {
                self.set_path(k);
                if k != Path::Relay && self.opts.policy == PathPolicy::NoRelayFallback {
                    if let Some(r) = self.relay_slot() {
                        self.drop_slot(r);
                    }
                }
            }
        }
        // A retired direct path is closed; a retired relay path stays (idle
        // fallback), its session id is forgotten when the next epoch opens.
        for id in retired {
            if let Some(k) = self.slot_for_out(id) {
                if self.slots.get(&k).is_some_and(|s| s.kind != Path::Relay) {
                    self.link.lock().st.close_path(id);
                    self.drop_slot(k);
                }
            }
        }
    }

    fn drop_slot(&mut self, key: u64) {
        if let Some(s) = self.slots.remove(&key) {
            let mut g = self.link.lock();
            for id in [s.in_id, s.out_id].into_iter().flatten() {
                g.st.close_path(id);
            }
            if s.kind != Path::Relay && s.out_id.is_some() && s.out_id == self.direct_id {
                self.direct_id = None;
            }
        }
    }

    /// A RESUME with a session id this stream did not carry yet.
    fn on_peer_resume(
        &mut self,
        key: u64,
        kind: Path,
        in_id: Option<u32>,
        new_id: u32,
    ) -> Result<(), (io::ErrorKind, String)> {
        let link = self.link.clone();
        if kind == Path::Relay {
            // The peer fell back to the relay (new even epoch). Follow it: the
            // direct path is abandoned by the peer.
            if !new_id.is_multiple_of(2) || in_id.is_some_and(|old| new_id <= old) {
                return Err((
                    io::ErrorKind::InvalidData,
                    "relay RESUME with a bad path id".into(),
                ));
            }
            let out_id = self.slots.get(&key).and_then(|s| s.out_id);
            if out_id != Some(new_id) {
                self.fall_back_to_relay_with(new_id);
            }
            if let Some(s) = self.slots.get_mut(&key) {
                if let Some(old) = s.in_id.replace(new_id) {
                    if old != new_id {
                        link.lock().st.close_path(old);
                    }
                }
            }
            return Ok(());
        }
        // A direct path: only the host assigns its id (odd).
        //= spec/direct.md#DI-EARLY-1
        //# MUST be `RESUME` with an odd id
        if self.role == Role::Host || new_id.is_multiple_of(2) || in_id.is_some() {
            return Err((
                io::ErrorKind::InvalidData,
                "unexpected RESUME on a direct path".into(),
            ));
        }
        if self.direct_id.is_some() || new_id < self.relay_epoch {
            // Already on another direct path: this one lost. Or a stale one:
            // its proof reached this driver after a fallback to a newer relay
            // epoch, and the host has dropped it (path ids grow with time,
            // §4.6; opening it would end in a needless second fallback).
            self.drop_slot(key);
            return Ok(());
        }
        // Our early RESUME on this connection already told the host where
        // to resend from: open the path at that offset, send no second one.
        match self.slots.get(&key).and_then(|s| s.early_resume) {
            Some(r0) => link.lock().st.open_path_at(new_id, r0).map_err(io_err)?,
            None => {
                let resume = link.lock().st.open_path(new_id).map_err(io_err)?;
                self.queue(key, &resume);
            }
        }
        if let Some(s) = self.slots.get_mut(&key) {
            s.in_id = Some(new_id);
            s.out_id = Some(new_id);
        }
        self.direct_id = Some(new_id);
        self.udp_stop();
        // Other unresumed direct connections are losers.
        let losers: Vec<u64> = self
            .slots
            .iter()
            .filter(|(k, s)| **k != key && s.kind != Path::Relay && s.in_id.is_none())
            .map(|(k, _)| *k)
            .collect();
        for k in losers {
            self.drop_slot(k);
        }
        Ok(())
    }

    fn start_listener(&mut self) {
        if !self.opts.tcp {
            return;
        }
        match DirectListener::start(self.ctx.clone()) {
            Ok(l) => {
                let cands = direct::gather(l.port, self.observed, l.v6);
                self.listener = Some(l);
                if let Some(r) = self.relay_slot() {
                    self.queue(r, &Frame::Candidates(cands));
                }
            }
            Err(e) => tracing::debug!("direct tcp: no listener: {e}"),
        }
    }

    fn on_candidates(&mut self, c: Vec<Candidate>) {
        if self.opts.policy == PathPolicy::RelayOnly {
            return;
        }
        // A CANDIDATES frame replaces the candidates of the transports it
        // carries (TCP and UDP ones come in separate frames, §4.1).
        let has = |t: Transport| c.iter().any(|c| c.transport == t);
        let (tcp, udp) = (has(Transport::Tcp), has(Transport::Udp));
        self.peer_candidates
            .retain(|old| !c.iter().any(|n| n.transport == old.transport));
        self.peer_candidates.extend(c);
        // The first attempt starts at once; later ones (after a fallback) at
        // their scheduled time, with the freshest candidates. The guest dials
        // the first attempt on the host's candidates without waiting for
        // PUNCH: a relay round trip sooner, and its connect completing
        // first lets it (the TLS client) send ClientHello at once.
        if tcp && self.role == Role::Host && self.attempt == 0 {
            self.punch();
        }
        if tcp && self.role == Role::Guest && self.attempt == 0 && self.guest_dialed.is_none() {
            self.guest_dialed = Some(0);
            self.dial();
        }
        if udp {
            if self.role == Role::Guest {
                // The host prepared its UDP side: prepare ours and answer.
                self.udp_prepare();
            } else {
                self.udp_schedule();
            }
        }
    }

    /// Start preparing this side's UDP endpoint (once per round).
    fn udp_prepare(&mut self) {
        if !self.opts.udp
            || self.opts.policy == PathPolicy::RelayOnly
            || self.direct_id.is_some()
            || !matches!(self.udp, UdpState::Idle)
        {
            return;
        }
        self.udp = UdpState::Preparing;
        let (role, observed, svc) = (self.role, self.observed, self.relay_udp);
        let (round, tx) = (self.udp_round, self.udp_tx.clone());
        tokio::spawn(async move {
            let r = direct_udp::prepare(role, observed, svc).await;
            let _ = tx.send((round, r)).await;
        });
    }

    fn on_udp_prepared(&mut self, round: u32, prep: io::Result<Prepared>) {
        if round != self.udp_round || !matches!(self.udp, UdpState::Preparing) {
            return; // an older round's endpoint: dropped
        }
        match prep {
            Ok(p) => {
                tracing::debug!(candidates = ?p.candidates, "direct udp: prepared");
                if let Some(r) = self.relay_slot() {
                    self.queue(r, &Frame::Candidates(p.candidates.clone()));
                }
                self.udp = UdpState::Ready(p);
                self.udp_schedule();
            }
            Err(e) => {
                tracing::debug!("direct udp: no endpoint: {e}");
                self.udp = UdpState::Idle;
            }
        }
    }

    /// Host: prepare and punch UDP when the round's window has passed without
    /// a direct path. Guest: punch when the host's PUNCH is waiting.
    fn udp_schedule(&mut self) {
        if self.direct_id.is_some() || !self.opts.udp {
            return;
        }
        let now = Instant::now();
        if self.role == Role::Guest {
            if let Some((n, at)) = self.udp_punch_pending {
                if matches!(self.udp, UdpState::Ready(_)) {
                    self.udp_punch_pending = None;
                    self.udp_start(n, Some(at));
                }
            }
            return;
        }
        let Some(start) = self.round_start else {
            return;
        };
        let punch_at = start + self.opts.udp_after;
        let in_lead = now + UDP_PREPARE_LEAD >= punch_at;
        if in_lead {
            self.udp_prepare();
        }
        // As soon as both sides' UDP candidates are known (within the lead
        // before the window ends), the host announces the attempt with the
        // time left: the guest starts probing on receipt (opening its NAT
        // towards us), the host itself starts when the window ends, and
        // finds the guest's probes already waiting (§4.3.2).
        if in_lead && self.peer_has(Transport::Udp) && matches!(self.udp, UdpState::Ready(_)) {
            let delay = punch_at.saturating_duration_since(now);
            let n = self.send_punch(Transport::Udp, delay);
            self.udp_start(n, Some(punch_at));
        }
    }

    fn peer_has(&self, t: Transport) -> bool {
        self.peer_candidates.iter().any(|c| c.transport == t)
    }

    /// Host: number the next attempt and announce it on the relay path.
    fn send_punch(&mut self, transport: Transport, delay: Duration) -> u32 {
        let n = self.attempt;
        self.attempt += 1;
        if let Some(r) = self.relay_slot() {
            self.queue(
                r,
                &Frame::Punch {
                    attempt: n,
                    delay_ms: u32::try_from(delay.as_millis()).unwrap_or(u32::MAX),
                    transport,
                },
            );
        }
        n
    }

    /// Guest: the host punches UDP attempt `n`, its window ending `delay_ms`
    /// after it sent the frame: this side connects then (§4.3.2), i.e.
    /// `delay_ms` after receipt less the frame's trip through the relay.
    fn on_udp_punch(&mut self, n: u32, delay_ms: u32) {
        if self.role != Role::Guest || self.opts.policy == PathPolicy::RelayOnly {
            return;
        }
        self.attempt = n + 1;
        let delay = Duration::from_millis(u64::from(delay_ms));
        let at = Instant::now() + delay.saturating_sub(self.relay_one_way);
        self.udp_punch_pending = Some((n, at));
        self.udp_schedule();
    }

    /// Run UDP attempt `n` with the prepared endpoint.
    fn udp_start(&mut self, n: u32, start_at: Option<Instant>) {
        let UdpState::Ready(prep) = std::mem::replace(&mut self.udp, UdpState::Idle) else {
            return;
        };
        let peers = direct::dialable_for(Transport::Udp, &self.peer_candidates, self.observed);
        let reflexive = self
            .peer_candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::ServerReflexiveUdp && c.addr.is_ipv4())
            .map(|c| c.addr)
            .collect();
        let plan = direct_udp::PunchPlan {
            attempt: n,
            peers,
            reflexive,
            duration: self.opts.connect_timeout + self.opts.handshake_timeout,
            prediction: self.opts.port_prediction,
            start_at,
        };
        tracing::debug!(attempt = n, peers = ?plan.peers, ?start_at, "direct udp: punching");
        self.udp = UdpState::Punching(tokio::spawn(direct_udp::punch(
            prep,
            self.ctx.clone(),
            plan,
        )));
    }

    /// End this round's UDP attempt (a path was chosen, or the round ended).
    fn udp_stop(&mut self) {
        if let UdpState::Punching(h) = std::mem::replace(&mut self.udp, UdpState::Idle) {
            h.abort();
        }
        self.udp_punch_pending = None;
    }

    /// A new round of direct attempts starts at `at`: UDP from scratch.
    fn udp_new_round(&mut self, at: Instant) {
        self.udp_stop();
        self.udp_round += 1;
        self.peer_candidates
            .retain(|c| c.transport != Transport::Udp);
        self.round_start = Some(at);
    }

    /// Host: start attempt `n` (both sides dial each other's candidates from
    /// their listening port).
    fn punch(&mut self) {
        if self.direct_id.is_some() || self.listener.is_none() || !self.peer_has(Transport::Tcp) {
            return;
        }
        self.send_punch(Transport::Tcp, Duration::ZERO);
        self.dial();
    }

    fn on_punch(&mut self, n: u32) {
        if self.role == Role::Guest && self.opts.policy != PathPolicy::RelayOnly {
            self.attempt = n + 1;
            // The first attempt may be under way already (dialled on the
            // host's candidates): restarting it would cut its handshakes.
            if self.guest_dialed != Some(n) {
                self.guest_dialed = Some(n);
                self.dial();
            }
        }
    }

    fn dial(&mut self) {
        let Some(l) = &self.listener else { return };
        let peers = direct::dialable(&self.peer_candidates, self.observed, l.v6);
        if peers.is_empty() {
            return;
        }
        if let Some(d) = self.dialing.take() {
            d.abort();
        }
        self.dialing = Some(tokio::spawn(direct::dial_all(
            self.ctx.clone(),
            l.port,
            peers,
        )));
    }

    /// A proven direct connection arrived (from the listener or a dial).
    fn on_direct(&mut self, conn: DirectConn) {
        if self.opts.policy == PathPolicy::RelayOnly || self.direct_id.is_some() {
            return; // dropped: closes it
        }
        tracing::debug!(remote = %conn.remote, kind = %conn.kind, "direct path: proven");
        let key = self.add_slot(conn.kind, conn.io);
        if let Some(s) = self.slots.get_mut(&key) {
            s.xtcp = conn.xtcp;
            s.early_resume = conn.early_resume;
        }
        if self.role == Role::Guest {
            return; // waits for the host's RESUME on it
        }
        // Direct ids are odd and increase: 1, 3, 5 …, and exceed the relay
        // epoch in force, so that the new path takes the sending over
        // (path ids grow with time, §4.6).
        self.direct_seq = (self.direct_seq + 1).max(self.relay_epoch / 2 + 1);
        //= spec/direct.md#DI-EARLY-1
        //# waits for the host's first frame, which MUST be `RESUME` with an odd id
        let id = 2 * self.direct_seq - 1;
        let resume = self.link.lock().st.open_path(id);
        match resume {
            Ok(f) => {
                self.queue(key, &f);
                if let Some(s) = self.slots.get_mut(&key) {
                    s.in_id = Some(id);
                    s.out_id = Some(id);
                }
                self.direct_id = Some(id);
                self.udp_stop();
            }
            Err(_) => self.drop_slot(key),
        }
    }

    /// A path's stream ended or failed.
    fn path_lost(&mut self, key: u64) {
        let Some(kind) = self.slots.get(&key).map(|s| s.kind) else {
            return;
        };
        let was_direct = kind != Path::Relay
            && self.slots.get(&key).and_then(|s| s.out_id) == self.direct_id
            && self.direct_id.is_some();
        self.drop_slot(key);
        if kind == Path::Relay {
            let mut g = self.link.lock();
            let complete = g.st.is_complete() || self.closing;
            if self.direct_id.is_none() && !complete {
                g.fail(io::ErrorKind::ConnectionReset, "relay path lost".into());
            }
            return;
        }
        if was_direct {
            self.direct_lost();
        }
    }

    fn direct_lost(&mut self) {
        if let Some(id) = self.direct_id.take() {
            self.link.lock().st.close_path(id);
        }
        if self.closing {
            return; // the session is ending: nothing to fall back for
        }
        if self.opts.policy == PathPolicy::NoRelayFallback || self.relay_slot().is_none() {
            let mut g = self.link.lock();
            if !g.st.is_complete() {
                g.fail(io::ErrorKind::ConnectionReset, "direct path lost".into());
            }
            return;
        }
        let next = self.relay_epoch + 2;
        self.fall_back_to_relay_with(next);
    }

    /// Reopen the relay stream as session path `id` (both sides send RESUME).
    fn fall_back_to_relay_with(&mut self, id: u32) {
        // Drop every direct slot: the peer abandons them too.
        let directs: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.kind != Path::Relay)
            .map(|(k, _)| *k)
            .collect();
        for k in directs {
            self.drop_slot(k);
        }
        self.direct_id = None;
        let Some(r) = self.relay_slot() else { return };
        let resume = self.link.lock().st.open_path(id);
        if let Ok(f) = resume {
            self.queue(r, &f);
            if let Some(s) = self.slots.get_mut(&r) {
                s.out_id = Some(id);
            }
            self.relay_epoch = id;
            self.set_path(Path::Relay);
            let retry_at = Instant::now() + self.opts.retry_after;
            self.retry_at = Some(retry_at);
            self.udp_new_round(retry_at);
            // A new listening port (and candidates) for the next attempt: the
            // dead connection's 4-tuple may still be held by its socket (a
            // FIN that a cut path never delivers), which would make a new
            // connection between the same ports fail.
            if self.opts.policy != PathPolicy::RelayOnly {
                self.start_listener();
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        //= spec/direct.md#DI-ACK-1
        //# which it SHOULD do after about 100 ms without an `ACK` while new bytes arrived
        self.link.lock().st.force_ack();
        let mut dead = Vec::new();
        let mut relay_dead = Vec::new();
        let relay_interval = self.opts.relay_keepalive_interval;
        let keys: Vec<u64> = self.slots.keys().copied().collect();
        for k in keys {
            let Some(s) = self.slots.get(&k) else {
                continue;
            };
            let is_direct_active =
                s.kind != Path::Relay && s.out_id.is_some() && s.out_id == self.direct_id;
            let interval = if is_direct_active {
                self.opts.keepalive_interval
            } else {
                relay_interval
            };
            if is_direct_active && now.duration_since(s.last_recv) >= self.opts.keepalive_timeout {
                dead.push(k);
                continue;
            }
            if s.kind == Path::Relay && now.duration_since(s.last_recv) >= relay_interval * 3 {
                relay_dead.push(k);
                continue;
            }
            if s.out_id.is_some() && s.out.is_empty() && now.duration_since(s.last_sent) >= interval
            {
                self.queue(k, &Frame::Keepalive { nonce: 0 });
            }
        }
        for k in dead {
            tracing::debug!("direct path: keepalive timeout");
            self.drop_slot(k);
            self.direct_lost();
        }
        for k in relay_dead {
            // Silent for three keepalive intervals (the peer's keepalives and
            // answers never came): a black-holed relay connection. The
            // session fails if the relay was its path (`path_lost`).
            tracing::debug!("relay path: silent for {:?}", relay_interval * 3);
            self.path_lost(k);
        }
        if self.role == Role::Host && self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            self.punch();
        }
        if self.role == Role::Host {
            self.udp_schedule();
        }
    }
}

/// Feed one frame to the session state; new application bytes go to the
/// application's buffer, end of stream is flagged.
fn g_handle(g: &mut Shared, id: u32, f: Frame<'_>) -> Result<(), SessionError> {
    let free = g.st.free_space();
    let fin_acked = g.st.fin_acked();
    let r = g.st.handle_frame(id, f)?;
    // An ACK freed replay space or acknowledged our FIN: the writer may go on.
    if g.st.free_space() > free || g.st.fin_acked() != fin_acked {
        if let Some(w) = g.write_waker.take() {
            w.wake();
        }
    }
    if matches!(r, Received::Data(_) | Received::EndOfStream) {
        g.received_pub.store(g.st.received(), Ordering::Release);
    }
    match r {
        Received::Data(d) => {
            g.rx.extend(d);
            if let Some(w) = g.read_waker.take() {
                w.wake();
            }
        }
        Received::EndOfStream => {
            g.rx_eof = true;
            if let Some(w) = g.read_waker.take() {
                w.wake();
            }
        }
        _ => {}
    }
    Ok(())
}

async fn reserve(
    blocked: Option<(u64, mpsc::Sender<Vec<u8>>)>,
) -> Option<(u64, mpsc::OwnedPermit<Vec<u8>>)> {
    match blocked {
        Some((k, tx)) => tx.reserve_owned().await.ok().map(|p| (k, p)),
        None => std::future::pending().await,
    }
}
