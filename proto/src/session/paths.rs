//! The path manager (`spec/direct.md` §4): which paths carry the session, and
//! when to open, switch, watch, abandon and retry them. Sans-IO, like
//! [`crate::xtcp::conn`]: no socket, no clock, no runtime.
//!
//! ```text
//!   runtime (xtcp, tokio)                      PathManager
//!   ─────────────────────                      ───────────
//!   bytes read from a path ─────────► handle_path_data(now, path, bytes)
//!   a path proven (TLS + tag) ──────► handle_path_opened(now, kind, early)
//!   a path's stream ended ──────────► handle_path_closed(now, path)
//!   listener up / UDP prepared ─────► handle_listener / handle_udp_prepared
//!   timer fired, app woke us ───────► handle_timeout(now)
//!   what to do ◄────────────────────── poll_action()
//!   bytes to write on a path ◄──────── poll_transmit(path)
//!   when to call again ◄────────────── poll_timeout()
//!   application read/write/finish ◄──► read / write / finish / close
//! ```
//!
//! Every `handle_*` call takes `now`; it may queue actions and output, which
//! the caller drains with [`PathManager::poll_action`] and
//! [`PathManager::poll_transmit`] before it waits again, until
//! [`PathManager::poll_timeout`]. `handle_timeout` is idempotent: an early
//! call is harmless.
//!
//! The manager owns the [`SessionState`] (replay buffer, offsets) and the
//! application's receive buffer with its window (§3.2): paths are read all
//! the time, so keepalives and control frames never wait behind
//! application data the receiver refuses; the receiver withholds its `ACK`
//! beyond the window instead, and the sender's replay buffer fills.

use super::{
    encode, Candidate, CandidateKind, Frame, FrameDecoder, FrameError, Received, SessionConfig,
    SessionError, SessionState, Transport, MAX_DATA, PROVISIONAL_PATH,
};
use crate::time::Instant;
use core::fmt;
use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

/// Which end of the session this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Created the session; numbers direct paths and attempts.
    Host,
    /// Joined with the code.
    Guest,
}

impl Role {
    /// The role byte bound into tags and keys (`spec/session.md`).
    pub fn byte(self) -> u8 {
        match self {
            Role::Host => 1,
            Role::Guest => 2,
        }
    }
    /// The other side.
    pub fn peer(self) -> Role {
        match self {
            Role::Host => Role::Guest,
            Role::Guest => Role::Host,
        }
    }
}

/// Which kind of path a session's bytes take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Path {
    /// Through the relay (blind TCP forwarding).
    Relay,
    /// A direct TCP connection between the peers.
    DirectTcp,
    /// A direct XTCP (UDP) connection between the peers.
    DirectUdp,
    /// None: the relay path died with no direct path left, and a new relay
    /// path is being set up (`spec/direct.md` §4.8). The application's bytes
    /// wait (a stall); none is lost.
    Reconnecting,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Relay => "relay",
            Path::DirectTcp => "direct-tcp",
            Path::DirectUdp => "direct-udp",
            Path::Reconnecting => "reconnecting",
        })
    }
}

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

/// The path manager's parameters.
#[derive(Clone, Debug)]
pub struct PathConfig {
    /// This side's role.
    pub role: Role,
    /// Which paths may be used.
    pub policy: PathPolicy,
    /// Try direct TCP.
    pub tcp: bool,
    /// Try direct UDP.
    pub udp: bool,
    /// Keepalive on the active direct path after this long without sending.
    pub keepalive_interval: Duration,
    /// The active direct path is dead after this long without receiving.
    pub keepalive_timeout: Duration,
    /// Keepalive on the relay path (and idle direct paths) after this long
    /// without sending; the relay path is dead after three of these silent.
    pub relay_keepalive_interval: Duration,
    /// A new direct attempt this long after a fallback.
    pub retry_after: Duration,
    /// UDP punching starts when no direct path exists this long after a
    /// round began (0 races TCP and UDP).
    pub udp_after: Duration,
    /// Bound on one UDP attempt after its start (connect + handshake).
    pub udp_attempt: Duration,
    /// Bound on one TCP attempt after its start (connect + handshake): the
    /// round's listener closes then (`spec/direct.md` §4.1).
    pub tcp_attempt: Duration,
    /// Port prediction budget (0: off), §4.3.4.
    pub port_prediction: usize,
    /// Guest: half the relay path's round trip as its handshake measured it.
    pub relay_one_way: Duration,
    /// Replay buffer capacity (§3.2).
    pub replay_capacity: usize,
    /// Receive window: unread bytes this side acknowledges at most (§3.2).
    pub receive_window: usize,
    /// How long a closed session keeps trying to deliver what was written.
    pub linger: Duration,
    /// This side's address as the relay observed it (candidate filtering).
    pub observed: SocketAddr,
    /// How long a lost relay path is re-established before the session
    /// gives up (§4.8); zero: never (a lost relay path that carried the
    /// session ends it).
    pub relay_resume: Duration,
}

impl PathConfig {
    /// Defaults for `role`, as `DirectOptions::default()` has them.
    pub fn new(role: Role, observed: SocketAddr) -> Self {
        PathConfig {
            role,
            policy: PathPolicy::Auto,
            tcp: true,
            udp: true,
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(5),
            relay_keepalive_interval: Duration::from_secs(15),
            retry_after: Duration::from_secs(10),
            udp_after: Duration::from_secs(10),
            udp_attempt: Duration::from_secs(15),
            tcp_attempt: Duration::from_secs(15),
            port_prediction: 0,
            relay_one_way: Duration::ZERO,
            replay_capacity: super::DEFAULT_REPLAY_CAPACITY,
            receive_window: super::DEFAULT_REPLAY_CAPACITY,
            linger: LINGER,
            observed,
            relay_resume: RELAY_RESUME,
        }
    }
}

/// A path's handle, chosen by the manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathHandle(u64);

impl PathHandle {
    /// The handle as a number (for logs).
    pub fn index(self) -> u64 {
        self.0
    }
}

/// One UDP attempt as the manager plans it (§4.3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpAttempt {
    /// The round whose prepared endpoint it uses.
    pub round: u32,
    /// Attempt number (probe tags bind it).
    pub attempt: u32,
    /// The peer's candidates to probe.
    pub peers: Vec<SocketAddr>,
    /// The peer's server-reflexive UDP addresses (port prediction's targets).
    pub reflexive: Vec<SocketAddr>,
    /// The agreed start: the guest connects no earlier, the host proves
    /// nothing it accepted earlier.
    pub start_at: Instant,
    /// How long the attempt lasts after its start.
    pub duration: Duration,
    /// Port prediction budget.
    pub prediction: usize,
}

/// What the runtime must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Dial these TCP addresses from the listening port (simultaneous open);
    /// replaces any dialling under way.
    DialTcp {
        /// Where to connect.
        peers: Vec<SocketAddr>,
    },
    /// Open a new direct TCP listener and report it with
    /// [`PathManager::handle_listener`].
    StartListener,
    /// Close the direct TCP listener's sockets (a direct path was chosen, or
    /// the round's TCP attempt is over): nothing more is accepted; the
    /// handshakes under way end within their bound.
    StopListener,
    /// Prepare a UDP endpoint for `round` and report it with
    /// [`PathManager::handle_udp_prepared`].
    PrepareUdp {
        /// The round.
        round: u32,
    },
    /// Run a UDP attempt with the endpoint prepared for its round.
    StartUdp(UdpAttempt),
    /// End the UDP attempt under way (and drop its endpoint).
    StopUdp,
    /// Close a path. `last` are its final bytes (with `graceful`: write
    /// them, then shut the stream down; without: drop everything at once).
    ClosePath {
        /// The path.
        path: PathHandle,
        /// Bytes to write before closing.
        last: Vec<u8>,
        /// Write `last` and pending output, then shut down.
        graceful: bool,
    },
    /// The session's bytes take this kind of path now.
    PathChanged(Path),
    /// Set up relay connection number `generation` (1, 2, …: re-pair on a
    /// relay under that generation's rendezvous id, run the e2e handshake
    /// bound to it) and report with [`PathManager::handle_relay_connected`]
    /// or [`PathManager::handle_relay_failed`] (§4.8). Replaces any attempt
    /// under way.
    ConnectRelay {
        /// The relay connection's generation.
        generation: u32,
    },
    /// Stop setting up a relay connection (one is up, the session ended, or
    /// it gave up).
    StopRelay,
}

/// A protocol violation by the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerFault {
    /// A frame did not parse.
    Frame(FrameError),
    /// The stream rules were broken.
    Stream(SessionError),
    /// A `RESUME` on the relay path with an odd or decreasing id (§4.7).
    BadRelayResume(u32),
    /// A `RESUME` on a direct path that the guest may not send, or twice (§4.6).
    UnexpectedDirectResume(u32),
}

impl fmt::Display for PeerFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerFault::Frame(e) => write!(f, "session frame: {e}"),
            PeerFault::Stream(e) => write!(f, "session protocol: {e}"),
            PeerFault::BadRelayResume(id) => write!(f, "relay RESUME with a bad path id {id}"),
            PeerFault::UnexpectedDirectResume(id) => {
                write!(f, "unexpected RESUME {id} on a direct path")
            }
        }
    }
}

/// Why a session ended without completing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionFailure {
    /// The peer closed the session with a non-zero code.
    PeerClosed {
        /// The `CLOSE` code.
        code: u16,
        /// The `CLOSE` reason, as sent (at most 200 bytes).
        reason: String,
    },
    /// The peer broke the protocol.
    PeerMisbehaved(PeerFault),
    /// The relay path carried the session and died.
    RelayLost,
    /// The direct path carried the session, died, and there is no relay to
    /// fall back to.
    DirectLost,
    /// Every path is gone before the peer's end of stream.
    AllPathsLost,
    /// The relay path carried the session and died, and no relay path
    /// could be set up again within this long (§4.8).
    RelayNotRestored(Duration),
}

impl fmt::Display for SessionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionFailure::PeerClosed { reason, .. } => {
                write!(f, "peer closed the session: {reason}")
            }
            SessionFailure::PeerMisbehaved(e) => e.fmt(f),
            SessionFailure::RelayLost => f.write_str("relay path lost"),
            SessionFailure::DirectLost => f.write_str("direct path lost"),
            SessionFailure::AllPathsLost => f.write_str("all paths closed"),
            SessionFailure::RelayNotRestored(d) => write!(
                f,
                "relay path lost and not re-established within {} s",
                d.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for SessionFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionFailure::PeerMisbehaved(PeerFault::Frame(e)) => Some(e),
            SessionFailure::PeerMisbehaved(PeerFault::Stream(e)) => Some(e),
            _ => None,
        }
    }
}

/// Where the session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Running.
    Open,
    /// Both directions complete, or closed by the application after
    /// delivering everything (or after giving up, §3.6): nothing more to do
    /// once the last actions ran.
    Done,
    /// Ended with an error.
    Failed(SessionFailure),
}

/// Frames coalesced into one write of a path at most.
pub const OUT_BATCH: usize = 64 * 1024;
/// One `DATA` frame's payload: a frame plus its header fits one 16 KiB TLS record.
pub const FRAME_DATA: usize = 16 * 1024 - 16;
/// How long a closed session keeps going to deliver what was written.
pub const LINGER: Duration = Duration::from_secs(30);
/// The UDP service is asked this long before the punch, so both sides'
/// candidates are there when the window ends (§4.3.1).
pub const UDP_PREPARE_LEAD: Duration = Duration::from_secs(2);
/// Bound on the guest's estimate of the relay's one-way delay (§4.3.2).
pub const MAX_ONE_WAY: Duration = Duration::from_secs(2);
/// Unread bytes beyond the window the manager buffers at most before it
/// stops reading a path (a peer whose replay buffer exceeds this ignores
/// the window, §3.2): the last line of memory defence.
pub const RX_SLACK: usize = 16 << 20;
/// Unread bytes (or the receive window, if smaller) above which a receiver
/// whose application is reading pauses
/// reading its paths (§3.2): the transport's own backpressure then paces
/// the sender, and the reading application gets the CPU (a driver that read
/// on to the window's edge starved it, and the gaps between its reads grew).
pub const READ_AHEAD: usize = 256 << 10;
/// How long an application may leave [`READ_AHEAD`] bytes unread before the
/// receiver reads its paths again regardless (§3.2, DI-WIN-2): control
/// frames wait at most this long behind data the application does not take.
pub const READ_PAUSE: Duration = Duration::from_millis(50);
/// Most candidates this side dials per transport.
pub const MAX_DIAL: usize = 32;
/// How long a lost relay path is re-established by default (§4.8).
pub const RELAY_RESUME: Duration = Duration::from_secs(60);
/// The first wait between two relay connection attempts (§4.8).
pub const RELAY_BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between two relay connection attempts (§4.8).
pub const RELAY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A relay connection lost while a direct path carried the session starts
/// the next direct round this soon after the relay path is back (§4.8).
pub const RECONNECT_ROUND_DELAY: Duration = Duration::from_secs(1);
/// How long the direct path has to answer after the guest re-paired on
/// the host's standby registration (§4.8).
pub const SUSPECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after the relay path is up the host registers its standby (§4.8).
pub const STANDBY_DELAY: Duration = Duration::from_secs(2);
/// The longest wait between two standby registrations (§4.8).
pub const STANDBY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The host's registration of the next relay generation (§4.8).
#[derive(Clone, Copy, Debug)]
struct Standby {
    generation: u32,
    /// When the next registration starts (None: one is under way).
    next_try: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
    /// When the registration under way started.
    started: Instant,
}

/// The relay connection being set up again (§4.8).
#[derive(Clone, Copy, Debug)]
struct RelayDown {
    /// When the relay path was lost.
    since: Instant,
    /// When the next attempt starts (None: one is under way).
    next_try: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
}

struct Slot {
    kind: Path,
    /// Session path id of incoming frames (None: a direct connection whose
    /// host `RESUME` has not arrived yet).
    in_id: Option<u32>,
    /// Session path id this side sends with on this stream.
    out_id: Option<u32>,
    decoder: FrameDecoder,
    out: Vec<u8>,
    last_recv: Instant,
    last_sent: Instant,
    /// Guest: the early RESUME it sent on this direct connection.
    early_resume: Option<u64>,
}

/// Where this side's UDP attempt of the current round stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Udp {
    Idle,
    Preparing,
    Ready,
    Punching,
}

/// A control frame, owned (the decoder's buffer is borrowed otherwise).
enum Control {
    Resume(u32, u64),
    Candidates(Vec<Candidate>),
    Punch(u32, Transport, u32),
    Keepalive(u64),
    Close(u16, String),
    Nothing,
}

/// The session's path manager and stream state; see the module docs.
pub struct PathManager {
    cfg: PathConfig,
    st: SessionState,
    slots: BTreeMap<PathHandle, Slot>,
    next_handle: u64,
    actions: VecDeque<Action>,
    status: Status,
    // application side
    rx: VecDeque<u8>,
    rx_eof: bool,
    consumed: u64,
    app_closed: bool,
    closed_at: Option<Instant>,
    /// The peer sent CLOSE(0): it had everything, including our FIN.
    peer_closed: bool,
    /// The peer sent CLOSE: its paths going away is no failure.
    closing: bool,
    // paths
    current: Path,
    peer_candidates: Vec<Candidate>,
    listener: Option<(u16, bool)>,
    /// When the listener closes (its round's TCP attempt ends); `None`:
    /// waiting for the round's attempt to start.
    listener_until: Option<Instant>,
    /// Current relay path id (even).
    relay_epoch: u32,
    /// Direct attempts so far (the host numbers them).
    attempt: u32,
    /// Session path id of the direct path in use.
    direct_id: Option<u32>,
    /// Direct paths the host opened so far.
    direct_seq: u32,
    retry_at: Option<Instant>,
    round_start: Option<Instant>,
    udp: Udp,
    udp_round: u32,
    /// Guest: the TCP attempt it dialled last.
    guest_dialed: Option<u32>,
    /// Guest: a UDP PUNCH (attempt, agreed start) waiting for its endpoint.
    udp_punch_pending: Option<(u32, Instant)>,
    /// Since when [`READ_AHEAD`] bytes wait for the application (the
    /// read-ahead pause, §3.2); cleared when it reads them below that.
    ahead_since: Option<Instant>,
    ack_at: Option<Instant>,
    /// Relay connections set up so far after the first (§4.8).
    relay_gen: u32,
    /// The relay path is lost and being set up again.
    relay_down: Option<RelayDown>,
    /// Host: the next generation's registration (§4.8).
    standby: Option<Standby>,
    /// The guest re-paired on the standby while a direct path carries the
    /// session (it likely moved): the direct path must be heard from by
    /// then, and its loss starts the next round soon (§4.8).
    direct_suspect: Option<Instant>,
    /// Since when the relay connection carries the session after a
    /// fallback, not yet heard from (DI-LIVE-4).
    relay_probation: Option<Instant>,
    now: Instant,
}

impl fmt::Debug for PathManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathManager")
            .field("role", &self.cfg.role)
            .field("current", &self.current)
            .field("status", &self.status)
            .field("relay_epoch", &self.relay_epoch)
            .field("direct_id", &self.direct_id)
            .field("paths", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl PathManager {
    /// A session whose relay path (already authenticated) is open at `now`,
    /// with the peer's candidates from its preamble and this side's TCP
    /// listener from pairing (`spec/direct.md` §4.2), if any. Returns the
    /// manager and the relay path's handle.
    pub fn new(
        cfg: PathConfig,
        now: Instant,
        peer_candidates: Vec<Candidate>,
        listener: Option<(u16, bool)>,
    ) -> (PathManager, PathHandle) {
        let scfg = SessionConfig::with_capacity(cfg.replay_capacity.max(FRAME_DATA));
        let mut m = PathManager {
            st: SessionState::new(scfg),
            slots: BTreeMap::new(),
            next_handle: 0,
            actions: VecDeque::new(),
            status: Status::Open,
            rx: VecDeque::new(),
            rx_eof: false,
            consumed: 0,
            app_closed: false,
            closed_at: None,
            peer_closed: false,
            closing: false,
            current: Path::Relay,
            peer_candidates,
            listener_until: listener.map(|_| now + cfg.tcp_attempt),
            listener,
            relay_epoch: 0,
            // Attempt 0 was dialled at pairing, on the preambles' candidates.
            attempt: 1,
            direct_id: None,
            direct_seq: 0,
            retry_at: None,
            round_start: None,
            udp: Udp::Idle,
            udp_round: 0,
            guest_dialed: Some(0),
            udp_punch_pending: None,
            ack_at: None,
            ahead_since: None,
            relay_gen: 0,
            relay_down: None,
            standby: None,
            direct_suspect: None,
            relay_probation: None,
            now,
            cfg,
        };
        let h = m.add_slot(Path::Relay, now, None);
        //= spec/direct.md#DI-ID-1
        //# the relay path's epochs use even ids (0 first …)
        match m.st.open_path(0) {
            Ok(f) => {
                m.queue(h, &f);
                if let Some(s) = m.slots.get_mut(&h) {
                    s.in_id = Some(0);
                    s.out_id = Some(0);
                }
            }
            Err(e) => m.fail(SessionFailure::PeerMisbehaved(PeerFault::Stream(e))),
        }
        m.update_ack_limit();
        if m.cfg.policy != PathPolicy::RelayOnly {
            // The listener and the first TCP round came with the preambles.
            m.round_start = Some(now);
            m.udp_schedule(now);
        }
        m.fill(now);
        (m, h)
    }

    // ----- application ---------------------------------------------------

    /// Take application bytes into the replay buffer; returns how many (0:
    /// full, wait). Fails after [`PathManager::finish`].
    pub fn write(&mut self, data: &[u8]) -> Result<usize, SessionError> {
        self.st.write(data)
    }

    /// Copy received bytes out; returns how many (0: nothing buffered, see
    /// [`PathManager::read_eof`]). Reading opens the receive window.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let (a, b) = self.rx.as_slices();
        let n = a.len().min(buf.len());
        buf[..n].copy_from_slice(&a[..n]);
        let m = b.len().min(buf.len() - n);
        buf[n..n + m].copy_from_slice(&b[..m]);
        self.rx.drain(..n + m);
        self.consumed += (n + m) as u64;
        if self.rx.len() < self.read_ahead() {
            self.ahead_since = None;
        }
        if n + m > 0 {
            let limited = self.st.received() > self.ack_limit_before();
            self.update_ack_limit();
            if limited {
                // A window update: the peer's replay buffer waits on it.
                self.st.force_ack();
            }
        }
        n + m
    }

    /// Bytes buffered for the application.
    pub fn readable(&self) -> usize {
        self.rx.len()
    }

    /// Every byte was read and the peer's stream ended.
    pub fn read_eof(&self) -> bool {
        self.rx.is_empty() && self.rx_eof
    }

    /// End this side's stream after the bytes written (idempotent).
    pub fn finish(&mut self) {
        self.st.finish();
    }

    /// The peer has every byte written, including the end of stream (its
    /// `ACK` covered our `FIN`, or it closed the session after receiving it).
    pub fn finish_acked(&self) -> bool {
        self.st.fin_acked() || self.peer_closed
    }

    /// The application is gone: finish, deliver what was written (for at
    /// most [`PathConfig::linger`]), then close.
    pub fn close(&mut self, now: Instant) {
        self.st.finish();
        self.app_closed = true;
        if self.closed_at.is_none() {
            self.closed_at = Some(now);
        }
        self.fill(now);
    }

    /// Free space in the replay buffer.
    pub fn free_space(&self) -> usize {
        self.st.free_space()
    }

    /// Where the session stands.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The path the session's bytes take now.
    pub fn current_path(&self) -> Path {
        self.current
    }

    /// What this side has received (the guest's early `RESUME` carries it).
    pub fn received(&self) -> u64 {
        self.st.received()
    }

    /// Application bytes written so far.
    pub fn written(&self) -> u64 {
        self.st.written()
    }

    /// Application bytes the peer acknowledged.
    pub fn acked(&self) -> u64 {
        self.st.acked()
    }

    /// The session state (offsets, replay buffer).
    pub fn state(&self) -> &SessionState {
        &self.st
    }

    /// The path of `h`, if open.
    pub fn path_kind(&self, h: PathHandle) -> Option<Path> {
        self.slots.get(&h).map(|s| s.kind)
    }

    /// Handles of the open paths.
    pub fn paths(&self) -> impl Iterator<Item = PathHandle> + '_ {
        self.slots.keys().copied()
    }

    /// Whether `h` should be read now: unless the application left more
    /// than the window plus [`RX_SLACK`] unread (a peer ignoring the window,
    /// §3.2), or the read-ahead pause holds: [`READ_AHEAD`] bytes wait for
    /// the application, since less than [`READ_PAUSE`].
    pub fn wants_read(&self, h: PathHandle, now: Instant) -> bool {
        if !self.slots.contains_key(&h)
            || self.rx.len() >= self.cfg.receive_window.saturating_add(RX_SLACK)
        {
            return false;
        }
        //= spec/direct.md#DI-WIN-2
        //# a receiver MUST keep reading its paths while its application does not read
        //= spec/direct.md#DI-WIN-3
        //# MUST read them again once its application
        //# has read them below `READ_AHEAD` or `READ_PAUSE` (50 ms) has passed
        self.ahead_since.is_none_or(|t| now >= t + READ_PAUSE)
    }

    /// [`READ_AHEAD`] bytes wait for the application: the runtime may be
    /// pausing its reads, and should re-check [`PathManager::wants_read`]
    /// once a read ends this.
    pub fn reading_ahead(&self) -> bool {
        self.ahead_since.is_some()
    }

    /// The read-ahead threshold: [`READ_AHEAD`], or the window if smaller.
    fn read_ahead(&self) -> usize {
        READ_AHEAD.min(self.cfg.receive_window.max(1))
    }

    // ----- events from the runtime ---------------------------------------

    /// A direct connection was proven (e2e TLS and tag). Returns its handle,
    /// or `None` when it is not wanted (the runtime closes it).
    pub fn handle_path_opened(
        &mut self,
        now: Instant,
        kind: Path,
        early_resume: Option<u64>,
    ) -> Option<PathHandle> {
        self.now = now;
        //= spec/direct.md#DI-ONE-1
        //# Any later authenticated connection is closed while a direct path is in use.
        if self.cfg.policy == PathPolicy::RelayOnly
            || self.direct_id.is_some()
            || kind == Path::Relay
            || self.status != Status::Open
        {
            return None;
        }
        let h = self.add_slot(kind, now, early_resume);
        if self.cfg.role == Role::Guest {
            // It waits for the host's RESUME on it (§4.6).
            return Some(h);
        }
        //= spec/direct.md#DI-ID-2
        //# direct paths use odd ids chosen by the host (1, 3, 5, …), each above
        //# the relay epoch in force
        self.direct_seq = (self.direct_seq + 1).max(self.relay_epoch / 2 + 1);
        let id = 2 * self.direct_seq - 1;
        match self.st.open_path(id) {
            Ok(f) => {
                self.queue(h, &f);
                if let Some(s) = self.slots.get_mut(&h) {
                    s.in_id = Some(id);
                    s.out_id = Some(id);
                }
                self.direct_id = Some(id);
                self.udp_stop();
                self.stop_listener();
            }
            Err(_) => {
                self.drop_slot(h);
                return None;
            }
        }
        self.fill(now);
        Some(h)
    }

    /// Bytes read from path `h`.
    pub fn handle_path_data(&mut self, now: Instant, h: PathHandle, bytes: &[u8]) {
        self.now = now;
        if let Some(s) = self.slots.get_mut(&h) {
            s.last_recv = now;
        }
        if let Err(fault) = self.on_bytes(now, h, bytes) {
            //= spec/direct.md#DI-PARSE-1
            //# the receiver MUST stop using the path
            self.fail(SessionFailure::PeerMisbehaved(fault));
            //= spec/direct.md#DI-PARSE-2
            //# SHOULD send `CLOSE` on another path if one is left.
            self.close_all(1, "protocol error");
        }
        //= spec/direct.md#DI-WIN-3
        //# a receiver MAY pause reading its paths
        if self.ahead_since.is_none() && self.rx.len() >= self.read_ahead() {
            self.ahead_since = Some(now);
        }
        self.fill(now);
    }

    /// Path `h`'s stream ended or failed.
    pub fn handle_path_closed(&mut self, now: Instant, h: PathHandle) {
        self.now = now;
        self.path_lost(h);
        self.fill(now);
    }

    /// A direct TCP listener is up (after [`Action::StartListener`]) with
    /// these candidates of this side, or could not be opened (`None`).
    pub fn handle_listener(&mut self, now: Instant, l: Option<(u16, bool, Vec<Candidate>)>) {
        self.now = now;
        if let Some((port, v6, cands)) = l {
            self.listener = Some((port, v6));
            self.listener_until = None;
            if let Some(r) = self.relay_slot() {
                self.queue(r, &Frame::Candidates(cands));
            }
        }
        self.fill(now);
    }

    /// This side's UDP endpoint for `round` is ready with these candidates
    /// (or could not be prepared).
    pub fn handle_udp_prepared(&mut self, now: Instant, round: u32, r: Option<Vec<Candidate>>) {
        self.now = now;
        if round != self.udp_round || self.udp != Udp::Preparing {
            return; // an older round's endpoint: dropped
        }
        match r {
            Some(c) => {
                if let Some(rs) = self.relay_slot() {
                    self.queue(rs, &Frame::Candidates(c));
                }
                self.udp = Udp::Ready;
                self.udp_schedule(now);
            }
            None => self.udp = Udp::Idle,
        }
        self.fill(now);
    }

    /// The direct path failed in a way the runtime saw first (a test's
    /// severed socket): as if its stream ended.
    pub fn handle_direct_severed(&mut self, now: Instant) {
        if let Some(h) = self.direct_id.and_then(|id| self.slot_for_out(id)) {
            self.handle_path_closed(now, h);
        }
    }

    /// Relay connection `generation` (asked for with
    /// [`Action::ConnectRelay`]) is up: re-paired and authenticated (§4.8).
    /// `observed` is this side's address as that relay saw it. Returns the
    /// new relay path's handle, or `None` when it is not wanted (another
    /// generation, the session is over; the runtime closes it).
    pub fn handle_relay_connected(
        &mut self,
        now: Instant,
        generation: u32,
        observed: SocketAddr,
    ) -> Option<PathHandle> {
        self.now = now;
        if self.status != Status::Open {
            return None;
        }
        let lost = self.relay_down.is_some() && generation == self.relay_gen;
        let standby =
            self.relay_down.is_none() && self.standby.is_some_and(|s| s.generation == generation);
        if !lost && !standby {
            return None;
        }
        if standby {
            //= spec/direct.md#DI-RELAY-5
            //# a guest that pairs with it has lost its relay connection: the host MUST
            //# take the new connection as the relay path and close the old one
            self.standby = None;
            if let Some(old) = self.relay_slot() {
                self.drop_slot(old);
            }
            self.relay_gen = generation;
        }
        self.relay_down = None;
        self.cfg.observed = observed;
        let h = self.add_slot(Path::Relay, now, None);
        //= spec/direct.md#DI-RELAY-3
        //# The host MUST open the new relay path with the next even id above every
        //# path id it used so far, unless a direct path carries the session
        if standby && self.direct_id.is_some() {
            //= spec/direct.md#DI-RELAY-6
            //# the host MUST hear from the direct path within `SUSPECT_TIMEOUT`
            //# of the guest's re-pairing or treat it as dead
            if let Some(d) = self.direct_id.and_then(|id| self.slot_for_out(id)) {
                self.queue(d, &Frame::Keepalive { nonce: 0 });
            }
            self.direct_suspect = Some(now);
        }
        if self.cfg.role == Role::Host && self.direct_id.is_none() {
            let id = (self.relay_epoch + 2).max(2 * self.direct_seq);
            // A lost relay connection often means a changed network: the
            // next direct round starts soon, on the fresh candidates.
            let retry = self.cfg.retry_after.min(RECONNECT_ROUND_DELAY);
            self.fall_back_to_relay_in(now, id, retry);
        }
        // The guest follows the host's RESUME (DI-FALL-2); with a direct
        // path in use the new connection is the idle fallback.
        self.fill(now);
        Some(h)
    }

    /// Relay connection `generation` could not be set up: the next attempt
    /// follows after a backoff (§4.8).
    pub fn handle_relay_failed(&mut self, now: Instant, generation: u32) {
        self.now = now;
        if let Some(s) = self.standby.as_mut().filter(|s| s.generation == generation) {
            if s.next_try.is_none() {
                // A registration that waited long (the relay's waiting TTL)
                // is simply renewed; quick failures back off.
                if now.saturating_duration_since(s.started) >= STANDBY_BACKOFF_MAX {
                    s.backoff = RELAY_BACKOFF_MAX;
                }
                s.next_try = Some(now + s.backoff);
                s.backoff = (s.backoff * 2).min(STANDBY_BACKOFF_MAX);
            }
        }
        if generation == self.relay_gen {
            if let Some(d) = self.relay_down.as_mut() {
                if d.next_try.is_none() {
                    //= spec/direct.md#DI-RELAY-2
                    //# MUST wait 200 ms before the second attempt, then twice as long
                    //# after each failure, at most 1 s
                    d.next_try = Some(now + d.backoff);
                    d.backoff = (d.backoff * 2).min(RELAY_BACKOFF_MAX);
                }
            }
        }
        self.fill(now);
    }

    /// This host's addresses changed (an interface came or went, §4.9); the
    /// runtime already closed the paths bound to an address that went away.
    /// Without a direct path, fresh candidates go out and the host starts
    /// the next direct round soon.
    pub fn handle_network_changed(&mut self, now: Instant) {
        self.now = now;
        if self.status != Status::Open
            || self.closing
            || self.cfg.policy == PathPolicy::RelayOnly
            || self.direct_id.is_some()
        {
            return;
        }
        //= spec/direct.md#DI-NET-1
        //# a peer whose addresses changed while no direct path carries the session
        //# SHOULD open a new listener and send fresh candidates at once
        if self.cfg.tcp {
            self.actions.push_back(Action::StartListener);
        }
        if self.cfg.role == Role::Host {
            let soon = now + self.cfg.retry_after.min(RECONNECT_ROUND_DELAY);
            if self.retry_at.is_none_or(|t| t > soon) {
                self.retry_at = Some(soon);
                self.udp_new_round(soon);
            }
        }
        self.fill(now);
    }

    /// Whether a relay path is being set up again (§4.8).
    pub fn relay_reconnecting(&self) -> bool {
        self.relay_down.is_some()
    }

    /// Relay connections set up after the first so far (§4.8).
    pub fn relay_generation(&self) -> u32 {
        self.relay_gen
    }

    /// Start the next relay connection attempt when due, or give up; the
    /// host's standby registration (§4.8).
    fn relay_tick(&mut self, now: Instant) {
        let Some(d) = self.relay_down else {
            self.standby_tick(now);
            return;
        };
        //= spec/direct.md#DI-RELAY-4
        //# gives up `relay_resume` (default 60 s) after the loss
        if now >= d.since + self.cfg.relay_resume {
            self.relay_down = None;
            self.actions.push_back(Action::StopRelay);
            if self.direct_id.is_none() {
                self.fail(SessionFailure::RelayNotRestored(self.cfg.relay_resume));
            }
            return;
        }
        if d.next_try.is_some_and(|t| now >= t) {
            self.relay_down = Some(RelayDown {
                next_try: None,
                ..d
            });
            self.actions.push_back(Action::ConnectRelay {
                generation: self.relay_gen,
            });
        }
    }

    /// Host: keep a registration of the next relay generation waiting at
    /// the relay while the relay path is up, so a guest that loses its relay
    /// connection pairs again at once (§4.8).
    fn standby_tick(&mut self, now: Instant) {
        let wanted = self.cfg.role == Role::Host
            && !self.cfg.relay_resume.is_zero()
            && !self.closing
            && !self.st.is_complete()
            && self.relay_slot().is_some();
        if !wanted {
            if self.standby.take().is_some() {
                self.actions.push_back(Action::StopRelay);
            }
            return;
        }
        let generation = self.relay_gen + 1;
        // Not at once: a burst of new sessions does not double the relay's
        // handshakes, and a session of a few seconds never registers one.
        let s = self.standby.get_or_insert(Standby {
            generation,
            next_try: Some(now + STANDBY_DELAY),
            backoff: RELAY_BACKOFF_MAX,
            started: now,
        });
        if s.next_try.is_some_and(|t| now >= t) {
            s.next_try = None;
            s.started = now;
            self.actions.push_back(Action::ConnectRelay { generation });
        }
    }

    /// Timers: keepalives, liveness, retry, the UDP schedule, the ACK timer,
    /// the linger bound. Idempotent.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.status != Status::Open {
            return;
        }
        if self.ack_at.is_some_and(|t| now >= t) {
            //= spec/direct.md#DI-ACK-1
            //# the driver asks (`force_ack`) after about 100 ms without an `ACK`
            self.st.force_ack();
            self.ack_at = None;
        }
        let mut dead = Vec::new();
        let mut relay_dead = Vec::new();
        let relay_interval = self.cfg.relay_keepalive_interval;
        let keys: Vec<PathHandle> = self.slots.keys().copied().collect();
        for k in keys {
            let Some(s) = self.slots.get(&k) else {
                continue;
            };
            let is_direct_active = self.is_direct_active(s);
            let relay_carrying = self.is_relay_carrying(s);
            let interval = if is_direct_active {
                self.cfg.keepalive_interval
            } else {
                relay_interval
            };
            //= spec/direct.md#DI-LIVE-2
            //# A direct path that received nothing for `keepalive_timeout` … is dead
            if is_direct_active
                && now.saturating_duration_since(s.last_recv) >= self.cfg.keepalive_timeout
            {
                dead.push(k);
                continue;
            }
            if let Some(t) = self.direct_suspect.filter(|_| is_direct_active) {
                if s.last_recv > t {
                    self.direct_suspect = None; // it answered
                } else if now >= t + self.suspect_timeout() {
                    dead.push(k);
                    continue;
                }
            }
            //= spec/direct.md#DI-LIVE-4
            //# the relay connection that carries the session after a fallback MUST be
            //# heard from within `keepalive_timeout`
            if let Some(t) = self.relay_probation.filter(|_| relay_carrying) {
                if s.last_recv > t {
                    self.relay_probation = None; // the peer is there
                } else if now >= t + self.cfg.keepalive_timeout {
                    self.relay_probation = None;
                    relay_dead.push(k);
                    continue;
                }
            }
            //= spec/direct.md#DI-LIVE-3
            //# A relay connection that received nothing for three such intervals is dead
            if s.kind == Path::Relay
                && now.saturating_duration_since(s.last_recv) >= relay_interval * 3
            {
                relay_dead.push(k);
                continue;
            }
            //= spec/direct.md#DI-LIVE-1
            //# a peer sends `KEEPALIVE` whenever it sent nothing for `keepalive_interval`
            // A relay connection set up again while a direct path carries
            // the session has no session id yet: it is kept alive too.
            if (s.out_id.is_some() || s.kind == Path::Relay)
                && s.out.is_empty()
                && now.saturating_duration_since(s.last_sent) >= interval
            {
                self.queue(k, &Frame::Keepalive { nonce: 0 });
                if let Some(s) = self.slots.get_mut(&k) {
                    // The keepalive counts as sent once queued: the
                    // runtime writes it at once (no second one per tick).
                    s.last_sent = now;
                }
            }
        }
        for k in dead {
            self.drop_slot(k);
            self.direct_lost(now);
        }
        if self.direct_id.is_none() {
            self.direct_suspect = None;
        }
        for k in relay_dead {
            self.path_lost(k);
        }
        if self.cfg.role == Role::Host && self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            self.punch();
        }
        if self.listener_until.is_some_and(|t| now >= t) {
            self.stop_listener();
        }
        if self.cfg.role == Role::Host {
            self.udp_schedule(now);
        }
        self.fill(now);
    }

    /// When [`PathManager::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.status != Status::Open {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(a) = self.ack_at {
            at(a);
        }
        for s in self.slots.values() {
            let active = self.is_direct_active(s);
            if let Some(t) = self.relay_probation.filter(|_| self.is_relay_carrying(s)) {
                at(t + self.cfg.keepalive_timeout);
            }
            let interval = if active {
                self.cfg.keepalive_interval
            } else {
                self.cfg.relay_keepalive_interval
            };
            if active {
                at(s.last_recv + self.cfg.keepalive_timeout);
            }
            if let Some(t) = self.direct_suspect.filter(|_| self.is_direct_active(s)) {
                at(t + self.suspect_timeout());
            }
            if s.kind == Path::Relay {
                at(s.last_recv + self.cfg.relay_keepalive_interval * 3);
            }
            // With output waiting, the writer is busy: its progress re-arms this.
            if (s.out_id.is_some() || s.kind == Path::Relay) && s.out.is_empty() {
                at(s.last_sent + interval);
            }
        }
        if let Some(d) = self.relay_down {
            at(d.since + self.cfg.relay_resume);
            if let Some(t) = d.next_try {
                at(t);
            }
        }
        if let Some(t) = self.standby.and_then(|s| s.next_try) {
            at(t);
        }
        if self.cfg.role == Role::Host {
            if let Some(r) = self.retry_at {
                at(r);
            }
            // The UDP lead: once in it, events (prepared, candidates) drive it.
            if let Some(p) = self.udp_punch_time() {
                let lead = p.saturating_sub_duration(UDP_PREPARE_LEAD);
                if self.cfg.udp && self.direct_id.is_none() && lead > self.now {
                    at(lead);
                }
            }
        }
        if let Some(c) = self.closed_at {
            at(c + self.cfg.linger);
        }
        if let Some(l) = self.listener_until {
            at(l);
        }
        if let Some(end) = self.ahead_since.map(|t| t + READ_PAUSE) {
            if end > self.now {
                at(end);
            }
        }
        t
    }

    /// The next thing for the runtime to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Bytes to write on path `h` (all of its pending output).
    pub fn poll_transmit(&mut self, h: PathHandle) -> Option<Vec<u8>> {
        let s = self.slots.get_mut(&h)?;
        if s.out.is_empty() {
            return None;
        }
        s.last_sent = self.now;
        let out = core::mem::take(&mut s.out);
        // Room for more frames of the stream now.
        let now = self.now;
        self.fill(now);
        Some(out)
    }

    /// Paths with output waiting.
    pub fn pending_output(&self) -> impl Iterator<Item = PathHandle> + '_ {
        self.slots
            .iter()
            .filter(|(_, s)| !s.out.is_empty())
            .map(|(h, _)| *h)
    }

    // ----- internals -----------------------------------------------------

    fn is_direct_active(&self, s: &Slot) -> bool {
        s.kind != Path::Relay && s.out_id.is_some() && s.out_id == self.direct_id
    }

    /// How long a suspect direct path has to answer (§4.8).
    fn suspect_timeout(&self) -> Duration {
        SUSPECT_TIMEOUT.min(self.cfg.keepalive_timeout)
    }

    /// The relay connection carries the session (no direct path) and can
    /// be set up again if it dies (§4.8).
    fn is_relay_carrying(&self, s: &Slot) -> bool {
        s.kind == Path::Relay
            && s.out_id.is_some()
            && self.direct_id.is_none()
            && !self.cfg.relay_resume.is_zero()
    }

    fn add_slot(&mut self, kind: Path, now: Instant, early_resume: Option<u64>) -> PathHandle {
        let h = PathHandle(self.next_handle);
        self.next_handle += 1;
        self.slots.insert(
            h,
            Slot {
                kind,
                in_id: None,
                out_id: None,
                decoder: FrameDecoder::new(),
                out: Vec::new(),
                last_recv: now,
                last_sent: now,
                early_resume,
            },
        );
        h
    }

    fn slot_for_out(&self, id: u32) -> Option<PathHandle> {
        self.slots
            .iter()
            .find(|(_, s)| s.out_id == Some(id))
            .map(|(k, _)| *k)
    }

    fn relay_slot(&self) -> Option<PathHandle> {
        self.slots
            .iter()
            .find(|(_, s)| s.kind == Path::Relay)
            .map(|(k, _)| *k)
    }

    fn queue(&mut self, h: PathHandle, f: &Frame<'_>) {
        if let Some(s) = self.slots.get_mut(&h) {
            // Frames this side builds are valid by construction; an encode
            // error would be a bug, and the frame is then not sent.
            let _ = encode(f, &mut s.out);
        }
    }

    fn set_path(&mut self, p: Path) {
        if self.current != p {
            self.current = p;
            self.actions.push_back(Action::PathChanged(p));
        }
    }

    fn fail(&mut self, f: SessionFailure) {
        if self.status == Status::Open {
            self.status = Status::Failed(f);
        }
    }

    /// How long new bytes wait for a forced `ACK` (§3.3): a quarter of the
    /// keepalive interval, 10–250 ms.
    fn ack_delay(&self) -> Duration {
        (self.cfg.keepalive_interval / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250))
    }

    /// The ACK limit before the last read (for the window-update check).
    fn ack_limit_before(&self) -> u64 {
        self.st.ack_limit()
    }

    //= spec/direct.md#DI-WIN-1
    //# the receiver acknowledges at most `window` bytes beyond what the
    //# application consumed
    fn update_ack_limit(&mut self) {
        let limit = self
            .consumed
            .saturating_add(self.cfg.receive_window.max(1) as u64);
        self.st.set_ack_limit(limit);
    }

    /// Move frames from the session state to the active path's output, then
    /// check whether the session is over. The runtime's `pump`.
    fn fill(&mut self, now: Instant) {
        if self.status == Status::Open {
            self.relay_tick(now);
        }
        if let Status::Failed(_) = self.status {
            // The last frames: this side's CLOSE on every path left.
            if !self.slots.is_empty() {
                self.close_all(1, "session driver stopped");
            }
            return;
        }
        if self.status != Status::Open {
            return;
        }
        while let Some(active) = self.st.active_path() {
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
            let Some((pid, frame)) = self.st.poll_transmit(FRAME_DATA.min(MAX_DATA)) else {
                break;
            };
            let target = self
                .slots
                .iter()
                .find(|(_, s)| s.out_id == Some(pid))
                .map(|(k, _)| *k)
                .unwrap_or(key);
            if let Some(s) = self.slots.get_mut(&target) {
                let _ = encode(&frame, &mut s.out);
            }
        }
        // spec/direct.md §3.6:
        // both directions complete: the session is closed with `CLOSE(0)`
        if self.st.is_complete() || (self.peer_closed && self.st.peer_finished()) {
            self.close_all(0, "done");
            self.status = Status::Done;
            return;
        }
        if self.app_closed && self.closed_at.is_some_and(|t| now >= t + self.cfg.linger) {
            self.close_all(1, "gave up waiting for the peer");
            self.status = Status::Done;
            return;
        }
        if self.slots.is_empty() && self.relay_down.is_none() {
            // Every path is gone (the peer closed, or they failed): nobody
            // may wait forever.
            if self.st.peer_finished() {
                self.status = Status::Done;
            } else {
                self.fail(SessionFailure::AllPathsLost);
            }
        }
    }

    /// Close every path with `CLOSE(code, reason)` behind its pending output.
    fn close_all(&mut self, code: u16, reason: &str) {
        let keys: Vec<PathHandle> = self.slots.keys().copied().collect();
        for k in keys {
            self.queue(k, &Frame::Close { code, reason });
            if let Some(s) = self.slots.remove(&k) {
                self.actions.push_back(Action::ClosePath {
                    path: k,
                    last: s.out,
                    graceful: true,
                });
            }
        }
        for id in self.st.paths().collect::<Vec<_>>() {
            self.st.close_path(id);
        }
    }

    fn drop_slot(&mut self, h: PathHandle) {
        if let Some(s) = self.slots.remove(&h) {
            for id in [s.in_id, s.out_id].into_iter().flatten() {
                self.st.close_path(id);
            }
            if s.kind != Path::Relay && s.out_id.is_some() && s.out_id == self.direct_id {
                self.direct_id = None;
            }
            self.actions.push_back(Action::ClosePath {
                path: h,
                last: Vec::new(),
                graceful: false,
            });
        }
    }

    fn on_bytes(&mut self, now: Instant, h: PathHandle, buf: &[u8]) -> Result<(), PeerFault> {
        let ack_delay = self.ack_delay();
        let mut input = buf;
        loop {
            let Some(slot) = self.slots.get_mut(&h) else {
                return Ok(());
            };
            let kind = slot.kind;
            let in_id = slot.in_id;
            let frame = match slot.decoder.decode(&mut input) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(PeerFault::Frame(e)),
            };
            let control = match frame {
                Frame::Resume { path_id, received } => Control::Resume(path_id, received),
                Frame::Candidates(c) => Control::Candidates(c),
                Frame::Punch {
                    attempt,
                    transport,
                    delay_ms,
                } => Control::Punch(attempt, transport, delay_ms),
                Frame::Keepalive { nonce } => Control::Keepalive(nonce),
                Frame::KeepaliveAck { .. } => Control::Nothing,
                Frame::Close { code, reason } => Control::Close(code, reason.to_owned()),
                other => {
                    // DATA, ACK, FIN, PATH_SWITCH: the session state's business.
                    let Some(id) = in_id else {
                        //= spec/direct.md#DI-EARLY-1
                        //# its first frame … MUST be `RESUME` with an odd id; any other
                        //# frame closes that connection
                        drop(other);
                        self.drop_slot(h);
                        return Ok(());
                    };
                    let r = self.st.handle_frame(id, other);
                    Self::deliver(
                        r,
                        &mut self.rx,
                        &mut self.rx_eof,
                        &mut self.ack_at,
                        now + ack_delay,
                    )?;
                    self.after_frame();
                    continue;
                }
            };
            if kind != Path::Relay && in_id.is_none() && !matches!(control, Control::Resume(..)) {
                //= spec/direct.md#DI-EARLY-1
                //# any other frame closes that connection
                self.drop_slot(h);
                return Ok(());
            }
            self.on_control(now, h, kind, in_id, control)?;
            self.after_frame();
        }
    }

    /// A control frame (or `RESUME`) that arrived on path `h`.
    fn on_control(
        &mut self,
        now: Instant,
        h: PathHandle,
        kind: Path,
        in_id: Option<u32>,
        control: Control,
    ) -> Result<(), PeerFault> {
        match control {
            //= spec/direct.md#DI-EARLY-2
            //# The guest's early `RESUME` is the first frame the host reads on the
            //# connection it chose; it is taken as `RESUME(id, received)`
            Control::Resume(PROVISIONAL_PATH, received)
                if self.cfg.role == Role::Host && kind != Path::Relay && in_id.is_some() =>
            {
                if let Some(id) = in_id {
                    self.resume(id, id, received)?;
                }
            }
            Control::Resume(path_id, received) => {
                if in_id != Some(path_id) {
                    self.on_peer_resume(now, h, kind, in_id, path_id)?;
                }
                if let Some(id) = self.slots.get(&h).and_then(|s| s.in_id) {
                    self.resume(id, path_id, received)?;
                }
            }
            Control::Candidates(c) => self.on_candidates(now, c),
            Control::Punch(attempt, Transport::Tcp, _) => self.on_punch(attempt),
            Control::Punch(attempt, Transport::Udp, delay) => {
                self.on_udp_punch(now, attempt, delay)
            }
            //= spec/direct.md#DI-KA-1
            //# A receiver of `KEEPALIVE` SHOULD answer on the same path with `KEEPALIVE_ACK`
            Control::Keepalive(nonce) => {
                // Bounded: a peer that floods keepalives while not
                // reading gets no more answers once the output backs up.
                if self
                    .slots
                    .get(&h)
                    .is_some_and(|s| s.out.len() < 2 * OUT_BATCH)
                {
                    self.queue(h, &Frame::KeepaliveAck { nonce });
                }
            }
            Control::Close(code, reason) => {
                //= spec/direct.md#DI-CLOSE-2
                //# A `CLOSE(0)` from the peer marks the end of the session: its paths
                //# closing afterwards are not failures
                self.closing = true;
                //= spec/direct.md#DI-CLOSE-1
                //# A receiver MUST NOT base a decision on the reason.
                if code == 0 {
                    self.peer_closed = true;
                } else if !self.st.is_complete() {
                    self.fail(SessionFailure::PeerClosed { code, reason });
                }
            }
            Control::Nothing => {}
        }
        Ok(())
    }

    /// Feed a `RESUME(path_id, received)` that arrived for session path `id`.
    fn resume(&mut self, id: u32, path_id: u32, received: u64) -> Result<(), PeerFault> {
        match self
            .st
            .handle_frame(id, Frame::Resume { path_id, received })
        {
            Ok(_) | Err(SessionError::UnknownPath(_)) => Ok(()),
            Err(e) => Err(PeerFault::Stream(e)),
        }
    }

    /// Hand what a frame produced to the application's buffer.
    fn deliver(
        r: Result<Received<'_>, SessionError>,
        rx: &mut VecDeque<u8>,
        rx_eof: &mut bool,
        ack_at: &mut Option<Instant>,
        ack_due: Instant,
    ) -> Result<(), PeerFault> {
        match r {
            Ok(Received::Data(d)) => {
                rx.extend(d);
                if ack_at.is_none() {
                    *ack_at = Some(ack_due);
                }
                Ok(())
            }
            Ok(Received::EndOfStream) => {
                *rx_eof = true;
                Ok(())
            }
            Ok(_) => Ok(()),
            //= spec/direct.md#DI-STALE-1
            //# Frames that still arrive for a path id this side has closed are ignored
            Err(SessionError::UnknownPath(_)) => Ok(()),
            Err(e) => Err(PeerFault::Stream(e)),
        }
    }

    /// Path bookkeeping after the session state saw a frame.
    fn after_frame(&mut self) {
        let retired: Vec<u32> = self
            .slots
            .values()
            .filter_map(|s| s.out_id)
            .filter(|id| self.st.path_retired(*id))
            .collect();
        if let Some(a) = self.st.active_path() {
            let kind = self
                .slots
                .values()
                .find(|s| s.out_id == Some(a))
                .map(|s| s.kind);
            if let Some(k) = kind {
                self.set_path(k);
                //= spec/direct.md#DI-POLICY-1
                //# with `NoRelayFallback` the relay connection is closed once the
                //# direct path carries the session
                if k != Path::Relay && self.cfg.policy == PathPolicy::NoRelayFallback {
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
                    self.st.close_path(id);
                    self.drop_slot(k);
                }
            }
        }
    }

    /// A RESUME with a session id this stream did not carry yet.
    fn on_peer_resume(
        &mut self,
        now: Instant,
        h: PathHandle,
        kind: Path,
        in_id: Option<u32>,
        new_id: u32,
    ) -> Result<(), PeerFault> {
        if kind == Path::Relay {
            //= spec/direct.md#DI-FALL-2
            //# a peer that receives a `RESUME` with a new even id on the relay
            //# connection follows
            if !new_id.is_multiple_of(2) || in_id.is_some_and(|old| new_id <= old) {
                return Err(PeerFault::BadRelayResume(new_id));
            }
            let out_id = self.slots.get(&h).and_then(|s| s.out_id);
            if out_id != Some(new_id) {
                self.fall_back_to_relay_with(now, new_id);
            }
            if let Some(s) = self.slots.get_mut(&h) {
                if let Some(old) = s.in_id.replace(new_id) {
                    if old != new_id {
                        self.st.close_path(old);
                    }
                }
            }
            return Ok(());
        }
        // A direct path: only the host assigns its id (odd).
        if self.cfg.role == Role::Host || new_id.is_multiple_of(2) || in_id.is_some() {
            return Err(PeerFault::UnexpectedDirectResume(new_id));
        }
        //= spec/direct.md#DI-ID-3
        //# a guest drops a direct connection whose host `RESUME` names an id below
        //# its relay epoch
        if self.direct_id.is_some() || new_id < self.relay_epoch {
            self.drop_slot(h);
            return Ok(());
        }
        // Our early RESUME on this connection already told the host where
        // to resend from: open the path at that offset, send no second one.
        match self.slots.get(&h).and_then(|s| s.early_resume) {
            Some(r0) => self
                .st
                .open_path_at(new_id, r0)
                .map_err(PeerFault::Stream)?,
            None => {
                let resume = self.st.open_path(new_id).map_err(PeerFault::Stream)?;
                self.queue(h, &resume);
            }
        }
        if let Some(s) = self.slots.get_mut(&h) {
            s.in_id = Some(new_id);
            s.out_id = Some(new_id);
        }
        self.direct_id = Some(new_id);
        self.udp_stop();
        self.stop_listener();
        //= spec/direct.md#DI-ONE-2
        //# and closes its other not-yet-resumed direct connections
        let losers: Vec<PathHandle> = self
            .slots
            .iter()
            .filter(|(k, s)| **k != h && s.kind != Path::Relay && s.in_id.is_none())
            .map(|(k, _)| *k)
            .collect();
        for k in losers {
            self.drop_slot(k);
        }
        Ok(())
    }

    fn on_candidates(&mut self, now: Instant, c: Vec<Candidate>) {
        if self.cfg.policy == PathPolicy::RelayOnly {
            return;
        }
        // spec/direct.md §4.1:
        // A CANDIDATES frame replaces the candidates of the transports it carries
        let has = |t: Transport| c.iter().any(|c| c.transport == t);
        let (tcp, udp) = (has(Transport::Tcp), has(Transport::Udp));
        self.peer_candidates
            .retain(|old| !c.iter().any(|n| n.transport == old.transport));
        self.peer_candidates.extend(c);
        if tcp && self.cfg.role == Role::Host && self.attempt == 0 {
            self.punch();
        }
        if tcp && self.cfg.role == Role::Guest && self.attempt == 0 && self.guest_dialed.is_none() {
            self.guest_dialed = Some(0);
            self.dial();
        }
        if udp {
            if self.cfg.role == Role::Guest {
                // The host prepared its UDP side: prepare ours and answer.
                self.udp_prepare();
            } else {
                self.udp_schedule(now);
            }
        }
    }

    /// Start preparing this side's UDP endpoint (once per round).
    fn udp_prepare(&mut self) {
        if !self.cfg.udp
            || self.cfg.policy == PathPolicy::RelayOnly
            || self.direct_id.is_some()
            || self.udp != Udp::Idle
        {
            return;
        }
        self.udp = Udp::Preparing;
        self.actions.push_back(Action::PrepareUdp {
            round: self.udp_round,
        });
    }

    fn udp_punch_time(&self) -> Option<Instant> {
        self.round_start.map(|s| s + self.cfg.udp_after)
    }

    /// Host: prepare and punch UDP when the round's window has passed without
    /// a direct path. Guest: punch when the host's PUNCH is waiting.
    fn udp_schedule(&mut self, now: Instant) {
        if self.direct_id.is_some() || !self.cfg.udp {
            return;
        }
        if self.cfg.role == Role::Guest {
            if let Some((n, at)) = self.udp_punch_pending {
                if self.udp == Udp::Ready {
                    self.udp_punch_pending = None;
                    self.udp_start(n, at);
                }
            }
            return;
        }
        let Some(punch_at) = self.udp_punch_time() else {
            return;
        };
        // spec/direct.md §4.3.1:
        // the host prepares its UDP side `UDP_PREPARE_LEAD` before the window ends
        let in_lead = now + UDP_PREPARE_LEAD >= punch_at;
        if in_lead {
            self.udp_prepare();
        }
        // spec/direct.md §4.3.2:
        // the host announces the attempt with the time left: the guest starts
        // probing on receipt, the host itself starts when the window ends
        if in_lead && self.peer_has(Transport::Udp) && self.udp == Udp::Ready {
            let delay = punch_at.saturating_duration_since(now);
            let n = self.send_punch(Transport::Udp, delay);
            self.udp_start(n, punch_at);
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
    /// after it sent the frame.
    fn on_udp_punch(&mut self, now: Instant, n: u32, delay_ms: u32) {
        if self.cfg.role != Role::Guest || self.cfg.policy == PathPolicy::RelayOnly {
            return;
        }
        self.attempt = n + 1;
        // spec/direct.md §4.3.2:
        // The guest's start = PUNCH receipt + delay − half the relay RTT
        let delay = Duration::from_millis(u64::from(delay_ms));
        let one_way = self.cfg.relay_one_way.min(MAX_ONE_WAY);
        let at = now + delay.saturating_sub(one_way);
        self.udp_punch_pending = Some((n, at));
        if self.listener_until.is_none() {
            // A round without a TCP PUNCH so far: its listener lives as
            // long as its UDP attempt at most (a TCP PUNCH extends it).
            self.listener_deadline(at + self.cfg.udp_attempt);
        }
        self.udp_schedule(now);
    }

    /// Run UDP attempt `n` with the prepared endpoint.
    fn udp_start(&mut self, n: u32, start_at: Instant) {
        if self.udp != Udp::Ready {
            return;
        }
        self.udp = Udp::Punching;
        let peers = dialable_for(Transport::Udp, &self.peer_candidates, self.cfg.observed);
        let reflexive = self
            .peer_candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::ServerReflexiveUdp && c.addr.is_ipv4())
            .map(|c| c.addr)
            .collect();
        self.actions.push_back(Action::StartUdp(UdpAttempt {
            round: self.udp_round,
            attempt: n,
            peers,
            reflexive,
            start_at,
            duration: self.cfg.udp_attempt,
            prediction: self.cfg.port_prediction,
        }));
    }

    /// End this round's UDP attempt (a path was chosen, or the round ended).
    fn udp_stop(&mut self) {
        if matches!(self.udp, Udp::Punching | Udp::Ready | Udp::Preparing) {
            self.actions.push_back(Action::StopUdp);
        }
        self.udp = Udp::Idle;
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

    /// Host: start a TCP attempt (both sides dial each other's candidates
    /// from their listening port, §4.2).
    fn punch(&mut self) {
        if self.direct_id.is_some() || self.listener.is_none() || !self.peer_has(Transport::Tcp) {
            // No TCP attempt this round: its listener waits for nothing.
            self.stop_listener();
            return;
        }
        self.send_punch(Transport::Tcp, Duration::ZERO);
        self.dial();
        self.listener_deadline(self.now + self.cfg.tcp_attempt);
    }

    /// The round's listener lives until `t` at least.
    fn listener_deadline(&mut self, t: Instant) {
        if self.listener.is_some() {
            self.listener_until = Some(self.listener_until.map_or(t, |u| u.max(t)));
        }
    }

    /// Close the round's listener (a direct path was chosen, or its TCP
    /// attempt is over): strangers who learnt its port find it closed, and
    /// a new round opens a new one (§4.7 step 4).
    fn stop_listener(&mut self) {
        self.listener_until = None;
        //= spec/direct.md#DI-LISTEN-1
        //# MUST close it once a direct path is chosen or the round's TCP attempt is over
        if self.listener.take().is_some() {
            self.actions.push_back(Action::StopListener);
        }
    }

    fn on_punch(&mut self, n: u32) {
        if self.cfg.role == Role::Guest && self.cfg.policy != PathPolicy::RelayOnly {
            self.attempt = n + 1;
            // The first attempt may be under way already (dialled on the
            // host's candidates): restarting it would cut its handshakes.
            if self.guest_dialed != Some(n) {
                self.guest_dialed = Some(n);
                self.dial();
                self.listener_deadline(self.now + self.cfg.tcp_attempt);
            }
        }
    }

    fn dial(&mut self) {
        let Some((_, v6)) = self.listener else {
            return;
        };
        let peers = dialable(&self.peer_candidates, self.cfg.observed, v6);
        if peers.is_empty() {
            return;
        }
        self.actions.push_back(Action::DialTcp { peers });
    }

    /// A path's stream ended or failed.
    fn path_lost(&mut self, h: PathHandle) {
        let Some(kind) = self.slots.get(&h).map(|s| s.kind) else {
            return;
        };
        let was_direct = kind != Path::Relay
            && self.direct_id.is_some()
            && self.slots.get(&h).and_then(|s| s.out_id) == self.direct_id;
        self.drop_slot(h);
        if kind == Path::Relay {
            let complete = self.st.is_complete() || self.closing;
            if complete || self.relay_slot().is_some() {
                return;
            }
            if self.cfg.relay_resume.is_zero() {
                if self.direct_id.is_none() {
                    self.fail(SessionFailure::RelayLost);
                }
                return;
            }
            //= spec/direct.md#DI-RELAY-1
            //# a peer whose relay connection ends or falls silent (§4.7) while the
            //# session is not complete MUST set up a new one
            self.relay_gen += 1;
            // A standby registration under way is this generation's: it is
            // the attempt (the guest, losing its leg too, joins it); if the
            // relay itself died it fails, and the backoff goes on from there.
            let in_flight = self
                .standby
                .take()
                .is_some_and(|s| s.generation == self.relay_gen && s.next_try.is_none());
            self.relay_down = Some(RelayDown {
                since: self.now,
                next_try: (!in_flight).then_some(self.now),
                backoff: RELAY_BACKOFF_FIRST,
            });
            if self.direct_id.is_none() {
                self.set_path(Path::Reconnecting);
            }
            return;
        }
        if was_direct {
            let now = self.now;
            self.direct_lost(now);
        }
    }

    fn direct_lost(&mut self, now: Instant) {
        if let Some(id) = self.direct_id.take() {
            self.st.close_path(id);
        }
        if self.closing {
            return; // the session is ending: nothing to fall back for
        }
        if self.relay_down.is_some() {
            // The relay path being set up again carries the session once
            // it is up (§4.8): the bytes wait for it.
            self.set_path(Path::Reconnecting);
            return;
        }
        if self.cfg.policy == PathPolicy::NoRelayFallback || self.relay_slot().is_none() {
            if !self.st.is_complete() {
                self.fail(SessionFailure::DirectLost);
            }
            return;
        }
        //= spec/direct.md#DI-FALL-1
        //# reopens the relay stream as the next even id `r + 2`
        let next = self.relay_epoch + 2;
        // The other peer may have moved (its relay leg gone with it): the
        // relay must answer soon (DI-LIVE-4).
        self.relay_probation = Some(now);
        if self.direct_suspect.take().is_some() {
            // The guest moved: its fresh candidates are on the way.
            let retry = self.cfg.retry_after.min(RECONNECT_ROUND_DELAY);
            self.fall_back_to_relay_in(now, next, retry);
        } else {
            self.fall_back_to_relay_with(now, next);
        }
    }

    /// Reopen the relay stream as session path `id` (both sides send RESUME).
    fn fall_back_to_relay_with(&mut self, now: Instant, id: u32) {
        let retry = self.cfg.retry_after;
        self.fall_back_to_relay_in(now, id, retry);
    }

    /// [`Self::fall_back_to_relay_with`], the next direct round `retry` later.
    fn fall_back_to_relay_in(&mut self, now: Instant, id: u32, retry: Duration) {
        // Drop every direct slot: the peer abandons them too.
        let directs: Vec<PathHandle> = self
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
        if let Ok(f) = self.st.open_path(id) {
            self.queue(r, &f);
            if let Some(s) = self.slots.get_mut(&r) {
                s.out_id = Some(id);
                // Watched as the carrying path from now on (DI-LIVE-4): an
                // idle fallback heard from up to 3 keepalive intervals ago
                // gets the full timeout to answer.
                s.last_recv = s.last_recv.max(now);
            }
            self.relay_epoch = id;
            self.set_path(Path::Relay);
            //= spec/direct.md#DI-FALL-4
            //# the host starts a new direct attempt `retry_after` later
            let retry_at = now + retry;
            self.retry_at = Some(retry_at);
            self.udp_new_round(retry_at);
            //= spec/direct.md#DI-FALL-3
            //# both sides open a new listening port and send fresh `CANDIDATES`
            if self.cfg.policy != PathPolicy::RelayOnly && self.cfg.tcp {
                self.actions.push_back(Action::StartListener);
            }
        }
    }
}

trait SubDuration {
    fn saturating_sub_duration(self, d: Duration) -> Instant;
}

impl SubDuration for Instant {
    fn saturating_sub_duration(self, d: Duration) -> Instant {
        Instant::from_micros(
            self.as_micros()
                .saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

/// The peer's TCP candidates worth dialling (IPv4; loopback only when the
/// relay saw this side on loopback; IPv6 global ones when this side listens
/// on IPv6), §4.1.
pub fn dialable(peer: &[Candidate], observed: SocketAddr, v6: bool) -> Vec<SocketAddr> {
    let mut v = dialable_for(Transport::Tcp, peer, observed);
    if v6 && !observed.ip().is_loopback() {
        let six = peer
            .iter()
            .filter(|c| c.transport == Transport::Tcp && c.addr.is_ipv6() && c.addr.port() != 0)
            .filter(|c| match c.addr.ip() {
                IpAddr::V6(ip) => !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80,
                IpAddr::V4(_) => false,
            })
            .map(|c| c.addr);
        for a in six {
            if !v.contains(&a) && v.len() < MAX_DIAL {
                v.push(a);
            }
        }
    }
    v
}

/// [`dialable`] for either transport (IPv4 only).
pub fn dialable_for(
    transport: Transport,
    peer: &[Candidate],
    observed: SocketAddr,
) -> Vec<SocketAddr> {
    let loopback_ok = observed.ip().is_loopback();
    let mut v: Vec<SocketAddr> = peer
        .iter()
        .filter(|c| c.transport == transport && c.addr.is_ipv4() && c.addr.port() != 0)
        .filter(|c| loopback_ok || !c.addr.ip().is_loopback())
        .map(|c| c.addr)
        .collect();
    v.dedup();
    v.truncate(MAX_DIAL);
    v
}
