//! The XTCP connection: an RFC 9293 TCP state machine carried in datagrams.
//!
//! # The sans-IO boundary
//!
//! A [`Connection`] never touches a socket or a clock. The caller feeds it:
//! - [`Connection::handle_segment`] / [`Connection::handle_datagram`] for every
//!   datagram that arrives for it (the [`crate::xtcp::endpoint::Endpoint`] routes them),
//! - [`Connection::handle_timeout`] whenever [`Connection::poll_timeout`]'s
//!   instant is reached (an early or repeated call is harmless),
//!
//! and drains, after each input and each application call:
//! - [`Connection::poll_transmit`] until it returns `None` (datagrams to send,
//!   written into the caller's buffer of at least `max_datagram_size` bytes),
//! - [`Connection::poll_timeout`] (the next instant to call `handle_timeout`),
//! - [`Connection::poll_event`] (state changes for the application).
//!
//! Every time-dependent call takes `now`. The application side is
//! [`Connection::write`], [`Connection::read`], [`Connection::shutdown`]
//! (half-close: sends FIN after queued data) and [`Connection::abort`] (RST).
//!
//! Sequence space: data byte `k` of the stream has sequence number
//! `ISS + 1 + k`; the FIN occupies the number after the last data byte.
//! Internally positions are 64-bit offsets in that space ("send offsets" from
//! ISS+1, "receive offsets" from IRS+1), so wrap-around is handled once, at the
//! boundary where segments come in and go out.

use crate::time::Instant;
use crate::xtcp::cc::{CongestionController, Pacer, SharedFactory};
use crate::xtcp::recv_buf::RecvBuffer;
use crate::xtcp::rtt::RttEstimator;
use crate::xtcp::send_buf::SendBuffer;
use crate::xtcp::seq::SeqNumber;
use crate::xtcp::wire::{
    PathOption, SackBlock, SegmentRepr, TcpFlags, TcpOptions, WireError, XtcpFlags,
    MAX_SACK_BLOCKS, TCP_HEADER_LEN, XTCP_HEADER_LEN,
};
use core::fmt;
use core::time::Duration;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest window scale shift (RFC 7323 §2.3).
const MAX_WSCALE: u8 = 14;
/// DupThresh (RFC 6675 §2, RFC 5681 §3.2).
const DUP_THRESH: u64 = 3;
/// Bytes of the timestamps option as emitted (NOP NOP TS).
const TS_OPTION_LEN: usize = 12;
/// Path validation attempts (challenge timer periods) per candidate address
/// (spec/xtcp.md §8.4).
const MAX_PATH_CHALLENGES: usize = 3;
/// Anti-amplification factor towards an unvalidated address (spec/xtcp.md
/// §8.5, after RFC 9000 §8.1).
const AMPLIFICATION_FACTOR: u64 = 3;

/// Keepalive parameters (RFC 1122 §4.2.3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe (RFC 1122: no less than two hours by default; the application chooses).
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is declared dead.
    pub probes: u32,
}

/// Per-connection configuration. Shared by all connections of an endpoint.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest datagram (XTCP header + TCP header + options + payload) this side sends or accepts.
    /// 1472 = a 1500-byte IPv4 MTU minus IP and UDP headers.
    pub max_datagram_size: usize,
    /// Send buffer limit, bytes (written, not yet acknowledged).
    pub send_buffer: usize,
    /// Receive buffer limit, bytes; bounds the advertised window.
    pub recv_buffer: usize,
    /// RTO before the first RTT sample (RFC 6298 §2.1: 1 s).
    pub initial_rto: Duration,
    /// RTO floor. See spec/xtcp.md §4 for why the default is 50 ms rather than RFC 6298's 1 s or Linux's 200 ms.
    pub min_rto: Duration,
    /// RTO ceiling (RFC 6298 §2.5: at least 60 s).
    pub max_rto: Duration,
    /// Abort when sent data stays unacknowledged this long (RFC 9293 §3.10.8, RFC 5482).
    pub user_timeout: Duration,
    /// Maximum segment lifetime; TIME-WAIT lasts 2×MSL (RFC 9293 §3.4.2).
    pub msl: Duration,
    /// Keepalive probes, off by default (RFC 1122 §4.2.3.6).
    pub keepalive: Option<Keepalive>,
    /// Nagle's algorithm (RFC 896, RFC 9293 §3.7.4).
    pub nagle: bool,
    /// Delayed ACK timeout (RFC 1122 §4.2.3.2: < 0.5 s), `None` = ACK every segment.
    pub delayed_ack: Option<Duration>,
    /// Offer and use SACK (RFC 2018).
    pub sack: bool,
    /// Offer and use timestamps (RFC 7323 §3).
    pub timestamps: bool,
    /// Offer and use window scaling (RFC 7323 §2).
    pub window_scaling: bool,
    /// Congestion controller factory (CUBIC by default).
    pub congestion: SharedFactory,
    /// Pace transmissions over the RTT.
    pub pacing: bool,
    /// SYN / SYN-ACK retransmissions before giving up.
    pub syn_retries: u32,
    /// Challenge ACKs per second at most (RFC 5961 §7).
    pub challenge_ack_limit: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_datagram_size: 1472,
            send_buffer: 4 << 20,
            recv_buffer: 4 << 20,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_secs(60),
            user_timeout: Duration::from_secs(60),
            msl: Duration::from_secs(30),
            keepalive: None,
            nagle: true,
            delayed_ack: Some(Duration::from_millis(25)),
            sack: true,
            timestamps: true,
            window_scaling: true,
            congestion: Arc::new(crate::xtcp::cc::Algorithm::Cubic),
            pacing: true,
            syn_retries: 6,
            challenge_ack_limit: 100,
        }
    }
}

impl Config {
    /// The MSS this side announces: the datagram size minus XTCP and TCP headers (RFC 9293 §3.7.1).
    pub fn announced_mss(&self) -> u16 {
        let mss = self
            .max_datagram_size
            .saturating_sub(XTCP_HEADER_LEN + TCP_HEADER_LEN);
        mss.clamp(64, usize::from(u16::MAX)) as u16
    }

    fn wscale_for_buffer(&self) -> u8 {
        // RFC 7323 §2.3: the smallest shift that lets the 16-bit field cover the buffer.
        let mut shift = 0u8;
        while shift < MAX_WSCALE && (self.recv_buffer >> shift) > 0xffff {
            shift += 1;
        }
        shift
    }
}

/// RFC 9293 §3.3.2 connection states. `Display` prints the RFC's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// CLOSED: no connection state at all (RFC 9293 §3.3.2).
    Closed,
    /// LISTEN: waiting for a SYN (RFC 9293 §3.3.2).
    Listen,
    /// SYN-SENT: our SYN sent, waiting for the peer's (RFC 9293 §3.3.2).
    SynSent,
    /// SYN-RECEIVED: SYN received and SYN-ACK sent, waiting for its ACK (RFC 9293 §3.3.2).
    SynReceived,
    /// ESTABLISHED: the handshake is complete, data flows both ways (RFC 9293 §3.3.2).
    Established,
    /// FIN-WAIT-1: we sent FIN, it is not yet acknowledged (RFC 9293 §3.3.2).
    FinWait1,
    /// FIN-WAIT-2: our FIN is acknowledged, waiting for the peer's FIN (RFC 9293 §3.3.2).
    FinWait2,
    /// CLOSE-WAIT: the peer's FIN received, waiting for the local close (RFC 9293 §3.3.2).
    CloseWait,
    /// CLOSING: both sides sent FIN at once, waiting for the ACK of ours (RFC 9293 §3.3.2).
    Closing,
    /// LAST-ACK: the peer closed first and we sent FIN, waiting for its ACK (RFC 9293 §3.3.2).
    LastAck,
    /// TIME-WAIT: both FINs acknowledged, waiting 2 MSL for stray segments (RFC 9293 §3.3.2).
    TimeWait,
}

impl State {
    /// Synchronized states (RFC 9293 §3.5: after the handshake).
    pub fn is_synchronized(self) -> bool {
        !matches!(
            self,
            State::Closed | State::Listen | State::SynSent | State::SynReceived
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Closed => "CLOSED",
            State::Listen => "LISTEN",
            State::SynSent => "SYN-SENT",
            State::SynReceived => "SYN-RECEIVED",
            State::Established => "ESTABLISHED",
            State::FinWait1 => "FIN-WAIT-1",
            State::FinWait2 => "FIN-WAIT-2",
            State::CloseWait => "CLOSE-WAIT",
            State::Closing => "CLOSING",
            State::LastAck => "LAST-ACK",
            State::TimeWait => "TIME-WAIT",
        })
    }
}

/// Why a connection ended abnormally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer sent RST in a synchronized state.
    Reset,
    /// The peer answered our SYN with RST.
    Refused,
    /// User timeout, SYN retries or keepalive exhausted.
    TimedOut,
    /// This side called [`Connection::abort`].
    Aborted,
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectionError::Reset => "reset by peer",
            ConnectionError::Refused => "connection refused",
            ConnectionError::TimedOut => "timed out",
            ConnectionError::Aborted => "aborted",
        })
    }
}

impl std::error::Error for ConnectionError {}

/// Application-visible happenings, drained with [`Connection::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Connected,
    /// In-order data became readable.
    Readable,
    /// Send buffer space became available.
    Writable,
    /// The peer's FIN was received in order: `read` returns 0 once drained.
    PeerFinished,
    /// The peer's address changed (NAT rebinding): the new address answered
    /// a path challenge (spec/xtcp.md §8.1) and the connection now sends there.
    AddressChanged(SocketAddr),
    /// The connection is closed (`None`: orderly close).
    Closed(Option<ConnectionError>),
}

/// Why `read` returned no data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Nothing to read yet.
    Blocked,
    /// The connection failed.
    Failed(ConnectionError),
    /// Not connected (closed before establishment).
    NotConnected,
}

/// Why `write` accepted nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// Send buffer full.
    Blocked,
    /// `shutdown` was called: no more data may be written (RFC 9293 §3.10.2 "connection closing").
    Closed,
    /// The connection failed.
    Failed(ConnectionError),
}

/// A datagram produced by [`Connection::poll_transmit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Peer address to send the datagram to.
    pub destination: SocketAddr,
    /// Length in bytes of the datagram written at the start of the caller's buffer.
    pub size: usize,
}

/// Counters and gauges for tests, traces and `--progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Datagrams sent (data, control and pure ACK segments, retransmissions included).
    pub segments_sent: u64,
    /// Segments received for this connection (those with another connection id are not counted).
    pub segments_received: u64,
    /// New payload bytes sent (first transmissions only).
    pub bytes_sent: u64,
    /// Payload bytes retransmitted.
    pub bytes_retransmitted: u64,
    /// Payload bytes delivered in order to the receive buffer.
    pub bytes_received: u64,
    /// Fast retransmits (RFC 5681 §3.2), one per loss-recovery episode.
    pub fast_retransmits: u64,
    /// Retransmission timeouts that fired (RFC 6298 §5).
    pub rto_events: u64,
    /// RTOs found spurious by their timestamps (RFC 3522).
    pub spurious_rtos: u64,
    /// Loss-recovery episodes entered (RFC 6582 / RFC 6675).
    pub recovery_episodes: u64,
    /// Congestion window, bytes (sampled when [`Connection::stats`] is called).
    pub cwnd: u64,
    /// Slow-start threshold, bytes (`u64::MAX` before the first loss; sampled like `cwnd`).
    pub ssthresh: u64,
    /// Smoothed RTT (RFC 6298 §2); `None` before the first sample.
    pub srtt: Option<Duration>,
    /// Current retransmission timeout before backoff (RFC 6298 §2).
    pub rto: Duration,
    /// Challenge ACKs sent (RFC 5961 §3-§5, rate-limited per §7).
    pub challenge_acks: u64,
    /// Segments dropped: wrong connection id, PAWS (RFC 7323 §5), not acceptable
    /// (RFC 9293 §3.10.7.4), or no out-of-order slot in the receive buffer.
    pub dropped_segments: u64,
    /// Path challenges sent to candidate peer addresses (spec/xtcp.md §8).
    pub path_challenges: u64,
    /// Candidate addresses validated (the connection moved there).
    pub path_validated: u64,
    /// Candidate addresses dropped (timed out or the old address was still in use).
    pub path_abandoned: u64,
}

/// Timer kinds; one deadline each (quinn's `TimerTable`, smoltcp's `PollAt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    Rto = 0,
    DelayedAck = 1,
    Persist = 2,
    Keepalive = 3,
    TimeWait = 4,
    Pacing = 5,
    Rack = 6,
    Tlp = 7,
    PathValidation = 8,
}
const TIMER_COUNT: usize = 9;
const ALL_TIMERS: [Timer; TIMER_COUNT] = [
    Timer::Rto,
    Timer::DelayedAck,
    Timer::Persist,
    Timer::Keepalive,
    Timer::TimeWait,
    Timer::Pacing,
    Timer::Rack,
    Timer::Tlp,
    Timer::PathValidation,
];

#[derive(Clone, Copy, Debug, Default)]
struct Timers([Option<Instant>; TIMER_COUNT]);

impl Timers {
    fn set(&mut self, t: Timer, at: Instant) {
        self.0[t as usize] = Some(at);
    }
    fn stop(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }
    fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }
    fn is_set(&self, t: Timer) -> bool {
        self.0[t as usize].is_some()
    }
    fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
    fn stop_all(&mut self) {
        self.0 = [None; TIMER_COUNT];
    }
}

/// One transmitted segment awaiting acknowledgement (the retransmission queue
/// and the RFC 6675 scoreboard in one record).
#[derive(Clone, Copy, Debug)]
struct SentSeg {
    /// Send offsets `[start, end)`; a FIN counts one at `end - 1`.
    start: u64,
    end: u64,
    /// Last (re)transmission time, for RACK (RFC 8985 §6.1).
    sent_at: Instant,
    /// Transmissions so far (Karn's rule: RTT samples only when 1).
    xmits: u16,
    sacked: bool,
    /// Marked lost and not yet retransmitted.
    lost: bool,
    /// Sent while the sender was application-limited (RFC 7661).
    app_limited: bool,
}

impl SentSeg {
    fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// What the segments an ACK of new data removed from the retransmission
/// queue tell (RFC 6298 §3, RFC 8985 §6.2, RFC 7661).
#[derive(Clone, Copy, Debug)]
struct Delivered {
    /// The RTT of the last never-retransmitted, not SACKed one (Karn's rule).
    rtt_sample: Option<Duration>,
    /// Send time, end and transmissions of the most recently sent one not
    /// SACKed, for RACK.
    newest: Option<(Instant, u64, u16)>,
    /// Whether any was sent while the sender was application-limited.
    app_limited: bool,
}

/// RFC 6582 / RFC 6675 recovery episode.
#[derive(Clone, Copy, Debug)]
struct Recovery {
    /// "recover": the highest offset sent when the episode started.
    recover: u64,
    /// Proportional Rate Reduction (RFC 6937): bytes delivered to the peer
    /// and bytes we sent since the episode began, the flight at its start,
    /// and what PRR lets us send now (recomputed on every ACK).
    prr_delivered: u64,
    prr_out: u64,
    recover_fs: u64,
    prr_allow: u64,
}

/// The pending-ACK state (RFC 1122 §4.2.3.2, RFC 9293 §3.8.6.3).
#[derive(Clone, Debug, Default)]
struct AckState {
    /// In-order segments received since the last ACK (sent or queued in `points`).
    unacked_segments: u32,
    /// An ACK of the current state must go out at the next `poll_transmit`.
    now: bool,
    /// The every-second-segment rule made that ACK due (spec/xtcp.md §7):
    /// the TSval it echoes. If another segment arrives before it goes out,
    /// it becomes a point, and the ACK of the current state a new one.
    owed: Option<u32>,
    /// ACKs owed to segments of the current receive batch that later
    /// segments of the same batch overtook (spec/xtcp.md §7): each is sent,
    /// oldest first, as it would have been between those segments, before
    /// the ACK of the current state. At most [`MAX_ACK_POINTS`].
    points: VecDeque<AckPoint>,
}

/// An ACK as it was due after a segment of a receive batch: what it
/// acknowledges and the TSval it echoes (RFC 7323 §4.3).
#[derive(Clone, Copy, Debug)]
struct AckPoint {
    /// The receive offset it acknowledges (RCV.NXT then).
    off: u64,
    /// TS.Recent then: the TSval of the earliest segment it covers.
    tsecr: u32,
}

/// ACK points a connection queues at most (one receive batch of the
/// runtime holds 8 datagrams or GRO super-datagrams, up to 64 segments
/// each): beyond, the newest replaces the last, so that one ACK covers more.
const MAX_ACK_POINTS: usize = 256;
/// Capacity of the point queue kept once it drained (an idle connection
/// stays small; a busy one does not reallocate on every batch).
const ACK_POINTS_KEPT: usize = 16;

impl AckState {
    /// Everything received is acknowledged (an ACK of the current state went out).
    fn clear(&mut self) {
        self.unacked_segments = 0;
        self.now = false;
        self.owed = None;
        self.points.clear();
        if self.points.capacity() > ACK_POINTS_KEPT {
            self.points.shrink_to(ACK_POINTS_KEPT);
        }
    }
}

/// Options agreed in the handshake.
#[derive(Clone, Copy, Debug, Default)]
struct Negotiated {
    sack: bool,
    timestamps: bool,
    snd_wscale: u8,
    rcv_wscale: u8,
    /// Peer's MSS option (RFC 9293 §3.7.1; 536 when absent).
    peer_mss: u16,
}

/// What an SYN or SYN-ACK must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SynPending {
    None,
    Syn,
    SynAck,
}

/// A new peer address under validation (spec/xtcp.md §8.3): one at a time.
#[derive(Clone, Copy, Debug)]
struct PathCandidate {
    addr: SocketAddr,
    /// Bytes received from `addr` in segments that passed the checks, and
    /// bytes sent to it (spec/xtcp.md §8.5: sent ≤ 3 × received).
    received: u64,
    sent: u64,
    /// Challenge periods begun (the first at creation; at most
    /// `MAX_PATH_CHALLENGES`).
    attempts: usize,
    /// Tokens of the challenges sent; a response may echo any of them.
    tokens: [u64; MAX_PATH_CHALLENGES],
    sent_tokens: usize,
    /// A challenge is to be sent (when the amplification budget allows).
    challenge_due: bool,
    /// The newest TSval seen from `addr` (spec/xtcp.md §8.3: a newer segment
    /// from the old address cancels the candidate).
    newest_ts: Option<u32>,
}

impl PathCandidate {
    fn may_send(&self, len: usize) -> bool {
        // spec/xtcp.md §8.5: at most 3 × the bytes received from the address.
        self.sent + len as u64 <= AMPLIFICATION_FACTOR * self.received
    }
}

/// Parameters the endpoint chooses for a new connection (RFC 6528 ISN, the
/// connection id, the timestamp offset of RFC 7323 §5.4, the key of the
/// path challenge tokens of spec/xtcp.md §8.2).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionParams {
    /// Connection id carried in every datagram's XTCP header (spec/xtcp.md §2).
    pub conn_id: u64,
    /// Initial send sequence number, ISS (RFC 9293 §3.4.1, RFC 6528).
    pub iss: SeqNumber,
    /// Added to our millisecond clock to form TSval (RFC 7323 §5.4).
    pub ts_offset: u32,
    /// TCP source port written into our segments.
    pub local_port: u16,
    /// TCP destination port written into our segments.
    pub remote_port: u16,
    /// The peer's address at creation (it may move later, spec/xtcp.md §8).
    pub remote: SocketAddr,
    /// Key for the path challenge tokens (spec/xtcp.md §8.2); must be
    /// unpredictable (the endpoint derives it from its secret).
    pub path_secret: [u8; 32],
}

/// See the module documentation.
pub struct Connection {
    cfg: Arc<Config>,
    state: State,
    params: ConnectionParams,
    remote: SocketAddr,
    error: Option<ConnectionError>,
    opts: Negotiated,

    // ---- send side (RFC 9293 §3.3.1 send sequence variables, as offsets)
    iss: SeqNumber,
    snd_una: u64,
    snd_nxt: u64,
    /// Right edge of the peer's window (offset): SND.WL2-relative ACK + SND.WND.
    snd_wnd_edge: u64,
    snd_wnd: u64,
    max_snd_wnd: u64,
    snd_wl1: SeqNumber,
    snd_wl2: SeqNumber,
    send_buf: SendBuffer,
    /// Offset of our FIN once `shutdown` was called.
    fin_off: Option<u64>,
    syn_pending: SynPending,
    syn_sent_at: Option<Instant>,
    syn_xmits: u32,
    skip_syn_rtt: bool,
    rtx: VecDeque<SentSeg>,
    /// RFC 6675 §4 "pipe": bytes believed in flight.
    pipe: u64,
    sacked_bytes: u64,
    lost_bytes: u64,
    recovery: Option<Recovery>,
    /// After an RTO, NewReno must not re-enter recovery before this (RFC 6582 §3.2 step 1).
    recover_floor: u64,
    /// RFC 3522 RetransmitTS: our TSval when an RTO that found no known loss
    /// fired; the first ACK of new data echoing an older TSval shows the
    /// timeout was spurious.
    eifel_ts: Option<u32>,
    dupacks: u32,
    rtt: RttEstimator,
    rto_backoff: u32,
    /// When the oldest unacknowledged data was first sent without progress (user timeout).
    stall_since: Option<Instant>,
    cc: Box<dyn CongestionController>,
    pacer: Pacer,
    /// RACK state (RFC 8985 §6.2): send time and end of the most recently sent delivered segment.
    rack_xmit: Option<Instant>,
    rack_end: u64,
    rack_rtt: Option<Duration>,
    persist_backoff: u32,
    persist_probe_due: bool,
    /// A tail loss probe is due / has been sent in this flight (RFC 8985 §7).
    tlp_due: bool,
    /// A lost segment was retransmitted since the loss episode (recovery or
    /// RTO) began: later ones wait for cwnd (RFC 6675 §5 step 4.3, RFC 5681 §3.1).
    episode_rtx: bool,
    tlp_outstanding: bool,
    /// A one-byte window probe beyond the window is outstanding (not in `rtx`).
    probe_sent: Option<Instant>,
    keepalive_probes: u32,
    keepalive_due: bool,
    last_send: Instant,
    last_recv: Instant,

    // ---- receive side (RFC 9293 §3.3.1 receive sequence variables)
    irs: SeqNumber,
    recv_buf: RecvBuffer,
    /// Receive offset of the peer's FIN, once seen (possibly out of order).
    rcv_fin: Option<u64>,
    fin_received: bool,
    /// Right edge of the window we advertised (offset), never moved left (RFC 9293 §3.8.6.2.2... SHOULD NOT shrink).
    rcv_adv_edge: u64,
    ack: AckState,
    ts_recent: u32,
    ts_recent_at: Instant,
    last_ack_sent: SeqNumber,
    /// Most recent out-of-order arrival, for the first SACK block (RFC 2018 §4).
    pending_rst: Option<(SeqNumber, SeqNumber, bool)>,
    challenge_window: (Instant, u32),

    // ---- path validation (spec/xtcp.md §8)
    path: Option<PathCandidate>,
    /// A PATH_RESPONSE to send: (to, token).
    path_response: Option<(SocketAddr, u64)>,
    /// Challenges generated so far (input to the token PRF).
    path_counter: u64,
    /// An ACK went to the peer address while a candidate exists: a copy
    /// is due to the candidate (spec/xtcp.md §8.1, within §8.5's budget).
    ack_copy_due: bool,
    /// The ACK number of the last copy (a copy goes only when it changed).
    ack_copied: Option<SeqNumber>,

    timers: Timers,
    events: VecDeque<Event>,
    stats: Stats,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("state", &self.state)
            .field("conn_id", &format_args!("{:016x}", self.params.conn_id))
            .field("remote", &self.remote)
            .field("snd_una", &self.snd_una)
            .field("snd_nxt", &self.snd_nxt)
            .field("rcv_nxt", &self.rcv_nxt_off())
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn new(cfg: Arc<Config>, now: Instant, params: ConnectionParams, state: State) -> Self {
        let mss = usize::from(cfg.announced_mss());
        let cc = cfg.congestion.build(mss, now);
        Connection {
            rtt: RttEstimator::new(cfg.initial_rto, cfg.min_rto, cfg.max_rto),
            send_buf: SendBuffer::new(cfg.send_buffer),
            recv_buf: RecvBuffer::new(cfg.recv_buffer),
            pacer: Pacer::new(mss),
            cc,
            state,
            remote: params.remote,
            params,
            error: None,
            opts: Negotiated {
                peer_mss: 536,
                ..Negotiated::default()
            },
            iss: params.iss,
            snd_una: 0,
            snd_nxt: 0,
            snd_wnd_edge: 0,
            snd_wnd: 0,
            max_snd_wnd: 0,
            snd_wl1: SeqNumber(0),
            snd_wl2: SeqNumber(0),
            fin_off: None,
            syn_pending: SynPending::None,
            syn_sent_at: None,
            syn_xmits: 0,
            skip_syn_rtt: false,
            rtx: VecDeque::new(),
            pipe: 0,
            sacked_bytes: 0,
            lost_bytes: 0,
            recovery: None,
            recover_floor: 0,
            eifel_ts: None,
            dupacks: 0,
            rto_backoff: 0,
            stall_since: None,
            rack_xmit: None,
            rack_end: 0,
            rack_rtt: None,
            persist_backoff: 0,
            persist_probe_due: false,
            probe_sent: None,
            tlp_due: false,
            episode_rtx: false,
            tlp_outstanding: false,
            keepalive_probes: 0,
            keepalive_due: false,
            last_send: now,
            last_recv: now,
            irs: SeqNumber(0),
            rcv_fin: None,
            fin_received: false,
            rcv_adv_edge: 0,
            ack: AckState::default(),
            ts_recent: 0,
            ts_recent_at: now,
            last_ack_sent: SeqNumber(0),
            pending_rst: None,
            challenge_window: (now, 0),
            path: None,
            path_response: None,
            path_counter: 0,
            ack_copy_due: false,
            ack_copied: None,
            timers: Timers::default(),
            events: VecDeque::new(),
            stats: Stats::default(),
            cfg,
        }
    }

    /// Active open (RFC 9293 §3.10.1): the connection starts in SYN-SENT and its
    /// first `poll_transmit` is the SYN.
    pub fn connect(cfg: Arc<Config>, now: Instant, params: ConnectionParams) -> Self {
        let mut c = Connection::new(cfg, now, params, State::SynSent);
        c.syn_pending = SynPending::Syn;
        c
    }

    /// Passive open (RFC 9293 §3.10.1): a connection in LISTEN that will accept
    /// one SYN. (The [`crate::xtcp::endpoint::Endpoint`] creates these per incoming SYN.)
    pub fn listen(cfg: Arc<Config>, now: Instant, params: ConnectionParams) -> Self {
        Connection::new(cfg, now, params, State::Listen)
    }

    /// A connection established from a validated SYN cookie (RFC 4987 §3.6): the
    /// handshake's state was carried in the cookie, not kept here.
    pub(crate) fn from_cookie(
        cfg: Arc<Config>,
        now: Instant,
        params: ConnectionParams,
        ack_seg: &SegmentRepr<'_>,
        cookie: crate::xtcp::endpoint::CookieOptions,
    ) -> Self {
        let mut c = Connection::new(cfg, now, params, State::SynReceived);
        c.irs = ack_seg.seq + u32::MAX; // seq - 1
        c.opts.peer_mss = cookie.mss;
        c.opts.sack = cookie.sack && c.cfg.sack;
        if let (Some(wscale), true) = (cookie.wscale, c.cfg.window_scaling) {
            c.opts.snd_wscale = wscale.min(MAX_WSCALE);
            c.opts.rcv_wscale = c.cfg.wscale_for_buffer();
        }
        c.opts.timestamps = ack_seg.options.timestamps.is_some() && c.cfg.timestamps;
        if let Some((tsval, _)) = ack_seg.options.timestamps {
            c.ts_recent = tsval;
            c.ts_recent_at = now;
        }
        c.syn_xmits = 1;
        // The cookie's TSval had its low bits replaced: no handshake RTT sample.
        c.syn_sent_at = None;
        c.skip_syn_rtt = true;
        c.rcv_adv_edge = c.recv_buf.window() as u64;
        c.last_ack_sent = c.rcv_nxt_seq();
        c.handle_segment(now, params.remote, ack_seg);
        c
    }

    // ------------------------------------------------------------------
    // Accessors
    // ------------------------------------------------------------------

    /// Current RFC 9293 §3.3.2 state.
    pub fn state(&self) -> State {
        self.state
    }
    /// Connection id (spec/xtcp.md §2).
    pub fn conn_id(&self) -> u64 {
        self.params.conn_id
    }
    /// The peer's current address (changes when a path is validated, spec/xtcp.md §8).
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
    /// Why the connection failed, if it did.
    pub fn error(&self) -> Option<ConnectionError> {
        self.error
    }
    /// True once the state is CLOSED (a final RST may still be queued; see [`is_drained`](Self::is_drained)).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }
    /// The connection may be forgotten: CLOSED with nothing left to send.
    pub fn is_drained(&self) -> bool {
        self.state == State::Closed && self.pending_rst.is_none()
    }
    /// Congestion window, bytes.
    pub fn congestion_window(&self) -> u64 {
        self.cc.window()
    }
    /// True during loss recovery (RFC 6582 §3.2 / RFC 6675 §5).
    pub fn in_recovery(&self) -> bool {
        self.recovery.is_some()
    }
    /// Bytes believed in flight, RFC 6675 §4 "pipe".
    pub fn bytes_in_flight(&self) -> u64 {
        self.pipe
    }
    /// Bytes written by the application and not yet acknowledged by the peer.
    pub fn unacked(&self) -> usize {
        self.send_buf.len()
    }
    /// Bytes the application may still write.
    pub fn send_space(&self) -> usize {
        if self.fin_off.is_some() {
            0
        } else {
            self.send_buf.free()
        }
    }
    /// Whether a full segment of written data is still unsent. Then the
    /// connection waits for its windows or its pacer, not for the
    /// application (a full segment is never held back by Nagle or SWS
    /// avoidance), so another `write` cannot make it send sooner: only an
    /// ACK or a timer can, and both reach the endpoint anyway. A runtime may
    /// skip waking its driver after such a write.
    pub fn has_unsent_full_segment(&self) -> bool {
        self.send_buf.end().saturating_sub(self.snd_nxt) >= self.mss() as u64
    }
    /// In-order bytes ready for `read`.
    pub fn readable(&self) -> usize {
        self.recv_buf.readable()
    }
    /// The peer's FIN was received and every byte before it read.
    pub fn is_read_finished(&self) -> bool {
        self.fin_received && self.recv_buf.readable() == 0
    }
    /// A snapshot of the counters, with the current cwnd, ssthresh, SRTT and RTO.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.cwnd = self.cc.window();
        s.ssthresh = self.cc.ssthresh();
        s.srtt = self.rtt.srtt();
        s.rto = self.rtt.rto();
        s
    }
    /// The RTT estimator (RFC 6298).
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }
    /// The configuration this connection was created with.
    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    fn mss(&self) -> usize {
        // RFC 9293 §3.7.1: effective send MSS = min(peer MSS, our MTU-derived MSS) minus options.
        let base = usize::from(self.opts.peer_mss.min(self.cfg.announced_mss()));
        let opt = if self.opts.timestamps {
            TS_OPTION_LEN
        } else {
            0
        };
        base.saturating_sub(opt).max(32)
    }

    fn snd_seq(&self, off: u64) -> SeqNumber {
        self.iss + 1u32 + (off as u32)
    }

    fn rcv_nxt_off(&self) -> u64 {
        self.recv_buf.contiguous_end() + u64::from(self.fin_received)
    }

    fn rcv_nxt_seq(&self) -> SeqNumber {
        self.irs + 1u32 + (self.rcv_nxt_off() as u32)
    }

    fn rcv_wnd(&self) -> u64 {
        // RFC 9293 §3.8.6.2.2 (receiver SWS avoidance): move the right edge only
        // by at least min(buffer/2, MSS), so no small window is ever offered;
        // and never move it left.
        let potential = self.recv_buf.read_offset() + self.recv_buf.capacity() as u64;
        let step = (self.recv_buf.capacity() as u64 / 2)
            .min(self.mss() as u64)
            .max(1);
        let edge = if potential >= self.rcv_adv_edge + step {
            potential
        } else {
            self.rcv_adv_edge
        };
        edge.saturating_sub(self.recv_buf.contiguous_end())
    }

    /// RFC 7323 §4.2: an RTT sample from the echoed timestamp (1 ms resolution).
    fn ts_rtt_sample(&self, now: Instant, seg: &SegmentRepr<'_>) -> Option<Duration> {
        if !self.opts.timestamps {
            return None;
        }
        let (_, tsecr) = seg.options.timestamps?;
        if tsecr == 0 {
            return None;
        }
        let ms = self.ts_now(now).wrapping_sub(tsecr);
        (ms < 60_000).then(|| Duration::from_millis(u64::from(ms)))
    }

    fn ts_now(&self, now: Instant) -> u32 {
        // RFC 7323 §5.4: a 1 ms clock with a random per-connection offset.
        ((now.as_micros() / 1000) as u32).wrapping_add(self.params.ts_offset)
    }

    // ------------------------------------------------------------------
    // Application interface
    // ------------------------------------------------------------------

    /// Queue bytes for sending. Valid in SYN-SENT, SYN-RECEIVED, ESTABLISHED and
    /// CLOSE-WAIT (RFC 9293 §3.10.2); returns how many bytes were taken.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        if let Some(e) = self.error {
            return Err(WriteError::Failed(e));
        }
        if self.fin_off.is_some() || matches!(self.state, State::Closed | State::Listen) {
            return Err(WriteError::Closed);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let n = self.send_buf.write(data);
        if n == 0 {
            return Err(WriteError::Blocked);
        }
        Ok(n)
    }

    /// Read in-order bytes. `Ok(0)` means the peer finished (FIN) and all data was read.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, ReadError> {
        let n = self.recv_buf.read(out);
        if n > 0 {
            self.after_read();
            return Ok(n);
        }
        if self.fin_received {
            return Ok(0);
        }
        if let Some(e) = self.error {
            return Err(ReadError::Failed(e));
        }
        match self.state {
            State::Closed | State::Listen => Err(ReadError::NotConnected),
            // RFC 9293 §3.10.3: no more data can arrive in these states once FIN is in.
            _ if out.is_empty() => Ok(0),
            _ => Err(ReadError::Blocked),
        }
    }

    /// Zero-copy read: a contiguous run of readable bytes (empty if none).
    pub fn read_chunk(&self) -> &[u8] {
        self.recv_buf.chunk()
    }

    /// Consume `n` bytes returned by [`Connection::read_chunk`].
    pub fn consume(&mut self, n: usize) {
        self.recv_buf.consume(n);
        self.after_read();
    }

    fn after_read(&mut self) {
        // RFC 9293 §3.8.6.2.2 (receiver SWS avoidance): announce the reopened
        // window only once it grew by min(buffer/2, MSS); always when it was
        // below one MSS (the peer may be waiting on a persist timer).
        let after = (self.recv_buf.read_offset() + self.recv_buf.capacity() as u64)
            .saturating_sub(self.recv_buf.contiguous_end());
        let adv = self
            .rcv_adv_edge
            .saturating_sub(self.recv_buf.contiguous_end());
        let threshold = (self.recv_buf.capacity() as u64 / 2).min(self.mss() as u64);
        if self.state.is_synchronized()
            && !self.fin_received
            && after >= adv + threshold.max(1)
            && (adv < self.mss() as u64 || after - adv >= 2 * self.mss() as u64)
        {
            self.ack.now = true;
        }
    }

    /// Half-close (RFC 9293 §3.10.4 CLOSE): FIN goes out after queued data;
    /// reading remains possible until the peer's FIN.
    pub fn shutdown(&mut self, now: Instant) {
        match self.state {
            State::Listen | State::SynSent => {
                // RFC 9293 §3.10.4: delete the TCB.
                self.close(now, None);
            }
            State::SynReceived | State::Established => {
                self.fin_off.get_or_insert(self.send_buf.end());
                // RFC 9293 §3.10.4: "enter FIN-WAIT-1" (SYN-RECEIVED: after data is sent; we queue).
                if self.state == State::Established {
                    self.state = State::FinWait1;
                }
            }
            State::CloseWait => {
                self.fin_off.get_or_insert(self.send_buf.end());
                self.state = State::LastAck;
            }
            _ => {}
        }
    }

    /// Abort (RFC 9293 §3.10.5 ABORT): send RST if synchronized, close at once.
    pub fn abort(&mut self, now: Instant) {
        if matches!(self.state, State::Closed | State::Listen) {
            self.close(now, Some(ConnectionError::Aborted));
            return;
        }
        if self.state != State::SynSent && self.state != State::TimeWait {
            let seq = self.snd_seq(self.snd_nxt);
            self.pending_rst = Some((seq, self.rcv_nxt_seq(), true));
        }
        self.close(now, Some(ConnectionError::Aborted));
    }

    fn close(&mut self, _now: Instant, error: Option<ConnectionError>) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        if self.error.is_none() {
            self.error = error;
        }
        self.timers.stop_all();
        self.events.push_back(Event::Closed(error));
    }

    /// Events are waiting in the queue.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    // ------------------------------------------------------------------
    // Input: datagrams
    // ------------------------------------------------------------------

    /// Parse and process one datagram addressed to this connection.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), WireError> {
        let seg = SegmentRepr::parse(datagram)?;
        self.handle_segment(now, from, &seg);
        Ok(())
    }

    /// Process one parsed segment (RFC 9293 §3.10.7 SEGMENT ARRIVES).
    pub fn handle_segment(&mut self, now: Instant, from: SocketAddr, seg: &SegmentRepr<'_>) {
        if seg.conn_id != self.params.conn_id {
            self.stats.dropped_segments += 1;
            return;
        }
        self.stats.segments_received += 1;
        match self.state {
            State::Closed => {}
            State::Listen => self.on_segment_listen(now, from, seg),
            State::SynSent => self.on_segment_syn_sent(now, seg),
            _ => self.on_segment_synchronized(now, from, seg),
        }
    }

    fn reset_reply(&mut self, seg: &SegmentRepr<'_>) {
        // RFC 9293 §3.10.7.1: if the segment has ACK, RST seq = SEG.ACK; else
        // RST/ACK with seq 0 and ack = SEG.SEQ + SEG.LEN.
        if seg.flags.rst() {
            return;
        }
        if seg.flags.ack() {
            self.pending_rst = Some((seg.ack, SeqNumber(0), false));
        } else {
            self.pending_rst = Some((SeqNumber(0), seg.seq + seg.segment_len(), true));
        }
    }

    fn parse_syn_options(&mut self, seg: &SegmentRepr<'_>) {
        let o = &seg.options;
        // RFC 9293 §3.7.1: absent MSS option means 536.
        self.opts.peer_mss = o.mss.unwrap_or(536).max(64);
        // RFC 7323 §2.2: window scaling only if both SYNs carry the option.
        match (o.window_scale, self.cfg.window_scaling) {
            (Some(s), true) => {
                // RFC 7323 §2.3: shifts above 14 are treated as 14.
                self.opts.snd_wscale = s.min(MAX_WSCALE);
                self.opts.rcv_wscale = self.cfg.wscale_for_buffer();
            }
            _ => {
                self.opts.snd_wscale = 0;
                self.opts.rcv_wscale = 0;
            }
        }
        self.opts.sack = o.sack_permitted && self.cfg.sack;
        self.opts.timestamps = o.timestamps.is_some() && self.cfg.timestamps;
        if let (Some((tsval, _)), true) = (o.timestamps, self.opts.timestamps) {
            self.ts_recent = tsval;
        }
    }

    fn on_segment_listen(&mut self, now: Instant, from: SocketAddr, seg: &SegmentRepr<'_>) {
        // RFC 9293 §3.10.7.2.
        if seg.flags.rst() {
            return;
        }
        if seg.flags.ack() {
            self.reset_reply(seg);
            return;
        }
        if !seg.flags.syn() {
            return;
        }
        self.remote = from;
        self.irs = seg.seq;
        self.parse_syn_options(seg);
        self.ts_recent_at = now;
        self.rcv_adv_edge = self.recv_buf.window() as u64;
        self.snd_wnd = u64::from(seg.window); // RFC 7323 §2.2: the SYN's window is never scaled.
        self.snd_wnd_edge = self.snd_wnd;
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = seg.seq;
        self.state = State::SynReceived;
        self.syn_pending = SynPending::SynAck;
        // Data on a SYN is not accepted (no TFO); the peer retransmits it.
    }

    fn on_segment_syn_sent(&mut self, now: Instant, seg: &SegmentRepr<'_>) {
        // RFC 9293 §3.10.7.3.
        let iss1 = self.iss + 1u32;
        if seg.flags.ack() && seg.ack != iss1 {
            // First check: unacceptable ACK.
            if !seg.flags.rst() {
                self.reset_reply(seg);
            }
            return;
        }
        if seg.flags.rst() {
            if seg.flags.ack() {
                self.close(now, Some(ConnectionError::Refused));
            }
            return;
        }
        if !seg.flags.syn() {
            return;
        }
        self.irs = seg.seq;
        self.parse_syn_options(seg);
        self.ts_recent_at = now;
        self.rcv_adv_edge = self.recv_buf.window() as u64;
        self.snd_wnd = u64::from(seg.window);
        self.snd_wl1 = seg.seq;
        self.snd_wl2 = seg.ack;
        if seg.flags.ack() {
            // Our SYN is acknowledged: ESTABLISHED.
            self.syn_acked(now, seg);
            self.snd_wnd_edge = self.snd_wnd;
            self.max_snd_wnd = self.snd_wnd;
            self.state = State::Established;
            self.events.push_back(Event::Connected);
            self.ack.now = true;
            if self.fin_off.is_some() {
                self.state = State::FinWait1;
            }
            self.arm_keepalive(now);
        } else {
            // Simultaneous open (RFC 9293 §3.5, Figure 8): SYN-RECEIVED, send SYN-ACK.
            self.state = State::SynReceived;
            self.syn_pending = SynPending::SynAck;
            self.timers.stop(Timer::Rto);
        }
    }

    /// RTT sample from the handshake and end of SYN retransmission.
    fn syn_acked(&mut self, now: Instant, seg: &SegmentRepr<'_>) {
        self.syn_pending = SynPending::None;
        if self.skip_syn_rtt {
        } else if let (Some(at), 1) = (self.syn_sent_at, self.syn_xmits) {
            // Karn (RFC 6298 §3): only if the SYN was sent once. The send time is
            // exact; the 1 ms timestamp clock would read 0 on a sub-ms path.
            self.rtt.on_sample(now - at);
        } else if let Some(r) = self.ts_rtt_sample(now, seg) {
            // A retransmitted SYN: the echoed timestamp says which copy (RFC 7323 §4.2).
            self.rtt.on_sample(r);
        }
        self.timers.stop(Timer::Rto);
        self.rto_backoff = 0;
        self.last_recv = now;
        self.arm_keepalive(now);
    }

    fn challenge_ack(&mut self, now: Instant) {
        // RFC 5961 §7: rate-limit challenge ACKs.
        let (start, _) = self.challenge_window;
        if now - start >= Duration::from_secs(1) {
            self.challenge_window = (now, 0);
        }
        if self.challenge_window.1 < self.cfg.challenge_ack_limit {
            self.challenge_window.1 += 1;
            self.stats.challenge_acks += 1;
            self.ack.now = true;
        }
    }

    /// Segment arrives in a synchronized state (or SYN-RECEIVED): the checks of
    /// RFC 9293 §3.10.7.4 in its order, each a step below.
    fn on_segment_synchronized(&mut self, now: Instant, from: SocketAddr, seg: &SegmentRepr<'_>) {
        let rcv_nxt = self.rcv_nxt_seq();
        let rcv_nxt_off = self.rcv_nxt_off();
        let rcv_wnd = self.rcv_wnd();
        let seg_len = seg.segment_len();

        // A retransmitted SYN in SYN-RECEIVED: our SYN-ACK was lost.
        if self.state == State::SynReceived && seg.flags.syn() && !seg.flags.ack() {
            if seg.seq == self.irs {
                self.syn_pending = SynPending::SynAck;
            }
            return;
        }

        if self.paws_rejects(now, seg) {
            return;
        }

        // RFC 9293 §3.10.7.4 first check: segment acceptability.
        if !Self::seq_acceptable(seg, seg_len, rcv_nxt, rcv_wnd) {
            self.on_unacceptable_segment(now, from, seg, seg_len);
            return;
        }

        // Second check: RST (RFC 5961 §3.2).
        if seg.flags.rst() {
            self.check_rst(now, seg, rcv_nxt);
            return;
        }

        // Fourth check: SYN in a synchronized state → challenge ACK (RFC 5961 §4.2).
        if seg.flags.syn() {
            self.challenge_ack(now);
            return;
        }

        // Fifth check: ACK bit off → drop (RFC 9293 §3.10.7.4).
        if !seg.flags.ack() {
            return;
        }

        self.on_segment_accepted(now, from, seg, seg_len);

        if self.state == State::SynReceived && !self.syn_received_ack(now, seg) {
            return;
        }

        if !self.process_ack(now, seg) {
            return;
        }

        self.segment_text(now, seg, rcv_nxt, rcv_nxt_off);
    }

    /// RFC 7323 §5.3 PAWS (before the first check): whether the segment is
    /// dropped for an old timestamp (and ACKed).
    fn paws_rejects(&mut self, now: Instant, seg: &SegmentRepr<'_>) -> bool {
        // RFC 7323 §5.3 PAWS: R1) drop a segment whose TSval is older than TS.Recent,
        // unless TS.Recent is over 24 days old (R2 of §5.5).
        if self.opts.timestamps && !seg.flags.rst() {
            if let Some((tsval, _)) = seg.options.timestamps {
                let stale = now - self.ts_recent_at > Duration::from_secs(24 * 86_400);
                if (tsval.wrapping_sub(self.ts_recent) as i32) < 0 && !stale {
                    self.stats.dropped_segments += 1;
                    self.ack.now = true;
                    return true;
                }
            }
        }
        false
    }

    /// RFC 9293 §3.10.7.4 first check: is the segment acceptable, i.e. does it
    /// start or end within the receive window (the four cases of its table)?
    fn seq_acceptable(
        seg: &SegmentRepr<'_>,
        seg_len: usize,
        rcv_nxt: SeqNumber,
        rcv_wnd: u64,
    ) -> bool {
        let wnd = rcv_wnd.min(u64::from(u32::MAX >> 1)) as u32;
        match (seg_len, wnd) {
            (0, 0) => seg.seq == rcv_nxt,
            (0, _) => seg.seq.in_window(rcv_nxt, rcv_nxt + wnd),
            (_, 0) => false,
            (len, _) => {
                let last = seg.seq + (len as u32).wrapping_sub(1);
                seg.seq.in_window(rcv_nxt, rcv_nxt + wnd) || last.in_window(rcv_nxt, rcv_nxt + wnd)
            }
        }
    }

    /// RFC 9293 §3.10.7.4 first check, a segment that is not acceptable: ACK
    /// it (unless RST) and drop it, but still use its ACK field.
    fn on_unacceptable_segment(
        &mut self,
        now: Instant,
        from: SocketAddr,
        seg: &SegmentRepr<'_>,
        seg_len: usize,
    ) {
        // A zero-window probe / keepalive (seq = RCV.NXT-1 or data beyond a zero
        // window) is "not acceptable" but must still be ACKed and its ACK field used.
        if seg.flags.rst() {
            return;
        }
        if self.state == State::TimeWait && seg.flags.fin() {
            // RFC 9293 §3.10.7.4: a retransmitted FIN restarts the 2 MSL timeout.
            self.timers.set(Timer::TimeWait, now + self.cfg.msl * 2);
        }
        // A retransmission from a peer whose NAT mapping changed while
        // all its new data was already here (and our ACKs to the old
        // address were lost) is "not acceptable" forever: take its
        // address as a candidate too, or the connection would never
        // learn where the peer went. Plausible means: it carries the
        // connection id and an ACK in the RFC 5961 §5.2 acceptable range.
        // spec/xtcp.md §8.3: only after PAWS and these checks.
        if seg.flags.ack() && self.ack_plausible(seg) {
            self.on_peer_segment(now, from, seg);
        }
        self.ack.now = true;
        self.stats.dropped_segments += 1;
        // Still process a valid ACK field (RFC 9293 §3.8.6.1 zero-window
        // probes must not stop the window from reopening on our side).
        if seg.flags.ack() && self.state != State::SynReceived && seg_len > 0 {
            self.process_ack(now, seg);
        }
    }

    /// RFC 9293 §3.10.7.4 second check, an acceptable segment with RST: reset
    /// only on an exact RCV.NXT match, else a challenge ACK (RFC 5961 §3.2).
    fn check_rst(&mut self, now: Instant, seg: &SegmentRepr<'_>, rcv_nxt: SeqNumber) {
        if seg.seq == rcv_nxt {
            let err = if self.state == State::SynReceived && self.syn_pending != SynPending::Syn {
                ConnectionError::Refused
            } else {
                ConnectionError::Reset
            };
            match self.state {
                // RFC 1337 §3 (TIME-WAIT assassination): ignore RST in TIME-WAIT.
                State::TimeWait => {}
                // RFC 9293 §3.10.7.4: in CLOSING and LAST-ACK simply close.
                State::Closing | State::LastAck => self.close(now, None),
                _ => self.close(now, Some(err)),
            }
        } else {
            self.challenge_ack(now);
        }
    }

    /// A segment with ACK that passed the first, second and fourth checks:
    /// its address and path option, liveness, and TS.Recent.
    fn on_segment_accepted(
        &mut self,
        now: Instant,
        from: SocketAddr,
        seg: &SegmentRepr<'_>,
        seg_len: usize,
    ) {
        // The segment passed PAWS, the window and the RST/SYN checks; with
        // an ACK in the RFC 5961 §5.2 range (checked again, with its
        // consequences, below) its address and path option count
        // (spec/xtcp.md §8.3). A new address becomes a candidate, not the
        // remote, until it answers a challenge.
        if self.ack_plausible(seg) {
            self.on_peer_segment(now, from, seg);
        }
        self.last_recv = now;
        self.keepalive_probes = 0;
        self.arm_keepalive(now);

        // RFC 7323 §4.3: update TS.Recent if SEG.SEQ <= Last.ACK.sent < SEG.SEQ + SEG.LEN (+1 for FIN/empty).
        if let (true, Some((tsval, _))) = (self.opts.timestamps, seg.options.timestamps) {
            let end = seg.seq + (seg_len as u32).max(1);
            if self.last_ack_sent.diff(seg.seq) >= 0
                && end.diff(self.last_ack_sent) > 0
                && (tsval.wrapping_sub(self.ts_recent) as i32) >= 0
            {
                self.ts_recent = tsval;
                self.ts_recent_at = now;
            }
        }
    }

    /// RFC 9293 §3.10.7.4 fifth check in SYN-RECEIVED: an ACK of our SYN
    /// establishes the connection, any other is answered with RST. Returns
    /// false if the segment must be dropped.
    fn syn_received_ack(&mut self, now: Instant, seg: &SegmentRepr<'_>) -> bool {
        // RFC 9293 §3.10.7.4 fifth check, SYN-RECEIVED.
        if seg.ack != self.iss + 1u32 {
            self.reset_reply(seg);
            return false;
        }
        self.syn_acked(now, seg);
        self.state = State::Established;
        self.snd_wnd = u64::from(seg.window) << self.opts.snd_wscale;
        self.snd_wnd_edge = self.snd_wnd;
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = seg.seq;
        self.snd_wl2 = seg.ack;
        self.events.push_back(Event::Connected);
        if self.fin_off.is_some() {
            self.state = State::FinWait1;
        }
        self.arm_keepalive(now);
        true
    }

    /// RFC 9293 §3.10.7.4 seventh check (segment text) and eighth (FIN), with
    /// RCV.NXT as it was when the segment arrived.
    fn segment_text(
        &mut self,
        now: Instant,
        seg: &SegmentRepr<'_>,
        rcv_nxt: SeqNumber,
        rcv_nxt_off: u64,
    ) {
        // Seventh check: segment text (RFC 9293 §3.10.7.4).
        match self.state {
            State::Established | State::FinWait1 | State::FinWait2 => {
                if !seg.payload.is_empty() || seg.flags.fin() {
                    self.settle_owed_ack();
                }
                if !seg.payload.is_empty() {
                    self.receive_data(now, seg);
                }
                if seg.flags.fin() {
                    let off = rcv_nxt_off as i64
                        + i64::from(seg.seq.diff(rcv_nxt))
                        + seg.payload.len() as i64;
                    if off >= 0 && self.rcv_fin.is_none() {
                        self.rcv_fin = Some(off as u64);
                    }
                    self.ack.now = true;
                }
                self.check_fin(now);
            }
            _ => {
                // CLOSE-WAIT, CLOSING, LAST-ACK, TIME-WAIT: the FIN was already
                // received; ignore text. A retransmitted FIN is ACKed, and
                // TIME-WAIT restarts its 2 MSL timeout (RFC 9293 §3.10.7.4 eighth check).
                if seg.flags.fin() {
                    self.ack.now = true;
                    if self.state == State::TimeWait {
                        self.timers.set(Timer::TimeWait, now + self.cfg.msl * 2);
                    }
                }
            }
        }
    }

    /// A segment from `from` passed the checks of spec/xtcp.md §3 (PAWS,
    /// window or RFC 5961 ACK plausibility): process its address and path
    /// option (spec/xtcp.md §8.3).
    fn on_peer_segment(&mut self, now: Instant, from: SocketAddr, seg: &SegmentRepr<'_>) {
        let tsval = match (self.opts.timestamps, seg.options.timestamps) {
            (true, Some((v, _))) => Some(v),
            _ => None,
        };
        let len = seg.buffer_len() as u64;
        if from == self.remote {
            //= spec/xtcp.md#XT-PV-5
            // spec/xtcp.md §8.3: a segment from the current address newer
            // than every segment from the candidate means the peer is still
            // there (the candidate was a copy, a forgery or a stale route):
            // drop the candidate.
            if let Some(c) = self.path {
                let newer = match (tsval, c.newest_ts) {
                    (Some(v), Some(n)) => (v.wrapping_sub(n) as i32) > 0,
                    _ => true,
                };
                if newer {
                    self.abandon_path();
                }
            }
        } else {
            match &mut self.path {
                Some(c) if c.addr == from => {
                    //= spec/xtcp.md#XT-PV-10
                    // spec/xtcp.md §8.5: what the address sent is its budget.
                    c.received += len;
                    if let Some(v) = tsval {
                        if c.newest_ts.is_none_or(|n| (v.wrapping_sub(n) as i32) > 0) {
                            c.newest_ts = Some(v);
                        }
                    }
                }
                //= spec/xtcp.md#XT-PV-6
                // spec/xtcp.md §8.3: one candidate at a time; another new
                // address waits until this one is validated or dropped.
                Some(_) => return,
                None => {
                    //= spec/xtcp.md#XT-PV-1
                    // spec/xtcp.md §8.1, §8.3: a new address becomes a
                    // candidate; the peer address does not change yet.
                    self.path = Some(PathCandidate {
                        addr: from,
                        received: len,
                        sent: 0,
                        attempts: 1,
                        tokens: [0; MAX_PATH_CHALLENGES],
                        sent_tokens: 0,
                        challenge_due: true,
                        newest_ts: tsval,
                    });
                    self.timers.set(Timer::PathValidation, now + self.rtt.rto());
                }
            }
        }
        match seg.options.path {
            //= spec/xtcp.md#XT-PV-11
            // spec/xtcp.md §8.6: echo a challenge to the address it came from
            // (the current address, or the candidate within its budget).
            Some(PathOption::Challenge(token)) => self.path_response = Some((from, token)),
            Some(PathOption::Response(token)) => {
                //= spec/xtcp.md#XT-PV-7
                //= spec/xtcp.md#XT-PV-8
                // spec/xtcp.md §8.4: validated when the candidate itself echoes
                // a token that was sent to it.
                let valid = self.path.is_some_and(|c| {
                    c.addr == from && c.tokens.iter().take(c.sent_tokens).any(|&t| t == token)
                });
                if valid {
                    self.path = None;
                    self.timers.stop(Timer::PathValidation);
                    self.stats.path_validated += 1;
                    self.remote = from;
                    self.events.push_back(Event::AddressChanged(from));
                    // Tell the peer at once where we are listening (and what we have).
                    self.ack.now = true;
                    self.ack_copy_due = false;
                    // spec/xtcp.md §8.4: what went to the old address while
                    // the candidate was checked is likely lost. A loss probe
                    // to the new address at once (RFC 8985 §7.3) gets the SACK
                    // from which RACK finds it, instead of waiting for the
                    // PTO or the RTO.
                    if self.opts.sack && self.snd_nxt > self.snd_una && !self.tlp_outstanding {
                        self.tlp_due = true;
                        self.tlp_outstanding = true;
                    }
                }
            }
            None => {}
        }
    }

    /// Drop the candidate address (spec/xtcp.md §8.4).
    fn abandon_path(&mut self) {
        if self.path.take().is_some() {
            self.stats.path_abandoned += 1;
        }
        self.ack_copy_due = false;
        self.timers.stop(Timer::PathValidation);
        if self.path_response.is_some_and(|(to, _)| to != self.remote) {
            self.path_response = None;
        }
    }

    /// The challenge timer fired (spec/xtcp.md §8.4): challenge again, or,
    /// after `MAX_PATH_CHALLENGES` periods, give up on the candidate.
    fn on_path_timer(&mut self, now: Instant) {
        let rto = self.rtt.rto();
        match &mut self.path {
            Some(c) if c.attempts < MAX_PATH_CHALLENGES => {
                c.attempts += 1;
                c.challenge_due = true;
                self.timers.set(Timer::PathValidation, now + rto);
            }
            //= spec/xtcp.md#XT-PV-9
            Some(_) => self.abandon_path(),
            None => {}
        }
    }

    /// The next path challenge token: 64 bits of HMAC-SHA256 under the
    /// connection's path secret (spec/xtcp.md §8.2).
    fn next_path_token(&mut self) -> u64 {
        //= spec/xtcp.md#XT-PV-3
        //= spec/xtcp.md#XT-PV-4
        // spec/xtcp.md §8.2: unpredictable, and fresh for every challenge.
        self.path_counter += 1;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.params.path_secret);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(b"xtcp path challenge");
        ctx.update(&self.params.conn_id.to_be_bytes());
        ctx.update(&self.path_counter.to_be_bytes());
        let tag = ctx.sign();
        let mut b = [0u8; 8];
        for (d, s) in b.iter_mut().zip(tag.as_ref()) {
            *d = *s;
        }
        u64::from_be_bytes(b)
    }

    /// SEG.ACK within `[SND.UNA − MAX.SND.WND, SND.NXT]` (RFC 5961 §5.2).
    fn ack_plausible(&self, seg: &SegmentRepr<'_>) -> bool {
        let d = seg.ack.diff(self.snd_seq(self.snd_una));
        // +1: a window probe's byte may be acknowledged (RFC 9293 §3.8.6.1).
        let outstanding = self.snd_nxt - self.snd_una + 1;
        if d >= 0 {
            d as u64 <= outstanding
        } else {
            (-(d as i64)) as u64 <= self.max_snd_wnd.max(1)
        }
    }

    /// ACK processing (RFC 9293 §3.10.7.4 fifth check, RFC 5961 §5.2, RFC 6675).
    /// Returns false if the segment must be dropped.
    fn process_ack(&mut self, now: Instant, seg: &SegmentRepr<'_>) -> bool {
        let una_seq = self.snd_seq(self.snd_una);
        let d = seg.ack.diff(una_seq);
        let mut outstanding = self.snd_nxt - self.snd_una;
        if let Some(at) = self.probe_sent {
            if d > 0 && d as u64 == outstanding + 1 && self.send_buf.end() > self.snd_nxt {
                // The peer accepted our window probe's byte (RFC 9293 §3.8.6.1): it
                // becomes an ordinary transmitted segment, acknowledged below.
                self.probe_sent = None;
                self.rtx.push_back(SentSeg {
                    start: self.snd_nxt,
                    end: self.snd_nxt + 1,
                    sent_at: at,
                    xmits: 2,
                    sacked: false,
                    lost: false,
                    app_limited: true,
                });
                self.snd_nxt += 1;
                self.pipe += 1;
                outstanding += 1;
            }
        }
        if d > 0 && d as u64 > outstanding {
            // Acks something not yet sent: send an ACK, drop (RFC 9293 §3.10.7.4).
            self.ack.now = true;
            return false;
        }
        if d < 0 && (-(d as i64)) as u64 > self.max_snd_wnd.max(1) {
            // RFC 5961 §5.2: too old to be acceptable: challenge ACK, drop.
            self.challenge_ack(now);
            return false;
        }

        let window = u64::from(seg.window) << self.opts.snd_wscale;
        let (una0, sacked0) = (self.snd_una, self.sacked_bytes);
        let mut sacked_new = false;
        if self.opts.sack && !seg.options.sack_blocks().is_empty() {
            sacked_new = self.process_sack(now, seg.options.sack_blocks());
        }

        if d > 0 {
            self.ack_new_data(now, seg, d as u64);
        } else if d == 0
            && seg.payload.is_empty()
            && !seg.flags.fin()
            // Path challenges and responses (spec/xtcp.md §8) are not
            // duplicate ACKs: they say nothing about loss.
            && seg.options.path.is_none()
            && self.snd_nxt > self.snd_una
            && window == self.snd_wnd
        {
            // RFC 5681 §2: a duplicate ACK.
            self.dupacks += 1;
            if !self.opts.sack
                && self.dupacks == DUP_THRESH as u32
                && self.recovery.is_none()
                && self.snd_una >= self.recover_floor
            {
                // RFC 6582 §3.2 step 2: fast retransmit, enter recovery.
                self.mark_lost_front();
                self.enter_recovery(now);
            }
        }

        // RFC 9293 §3.10.7.4: update the send window if the segment is newer.
        let wl1_newer = seg.seq.diff(self.snd_wl1) > 0;
        let same_wl1 = seg.seq == self.snd_wl1 && seg.ack.diff(self.snd_wl2) >= 0;
        if d >= 0 && (wl1_newer || same_wl1) {
            let ack_off = self.snd_una;
            self.snd_wnd = window;
            self.snd_wnd_edge = ack_off + window;
            self.max_snd_wnd = self.max_snd_wnd.max(window);
            self.snd_wl1 = seg.seq;
            self.snd_wl2 = seg.ack;
            if window > 0 {
                self.timers.stop(Timer::Persist);
                self.persist_backoff = 0;
            }
        }

        if self.opts.sack && (sacked_new || self.sacked_bytes > 0) {
            self.detect_losses(now);
        }
        // RFC 6937 §3: DeliveredData = change in SND.UNA + change in SACKed bytes.
        let delivered = (self.snd_una - una0 + self.sacked_bytes).saturating_sub(sacked0);
        self.prr_on_ack(delivered);
        if sacked_new && d <= 0 {
            // New SACK information answers an outstanding probe and restarts the
            // PTO, as an ACK of new data does (RFC 8985 §7.2; RFC 9002 §6.2.1:
            // the PTO restarts whenever an acknowledgement newly acknowledges data).
            self.tlp_outstanding = false;
            self.arm_tlp(now);
        }
        true
    }

    /// An ACK of new data (RFC 9293 §3.10.7.4 fifth check, SND.UNA < SEG.ACK
    /// =< SND.NXT), in steps: the Eifel undo of a spurious timeout, trimming
    /// the retransmission queue (and the RACK update), the RTT sample, the new
    /// SND.UNA, congestion control or recovery, the retransmission timer, and
    /// whether our FIN is now acknowledged.
    fn ack_new_data(&mut self, now: Instant, seg: &SegmentRepr<'_>, acked: u64) {
        self.undo_spurious_rto(seg);
        let new_una = self.snd_una + acked;
        let delivered = self.trim_rtx_queue(now, new_una);
        if let Some((t, end, xmits)) = delivered.newest {
            self.rack_update(now, t, end, xmits);
        }
        self.take_rtt_sample(now, seg, delivered.rtt_sample);
        self.advance_snd_una(now, new_una);
        self.on_new_ack_cc(now, acked, delivered.app_limited);
        self.restart_rto_timer(now);
        self.check_fin_acked(now);
    }

    /// RFC 3522 §3.2 (Eifel detection) for the first ACK of new data after a
    /// retransmission timeout.
    fn undo_spurious_rto(&mut self, seg: &SegmentRepr<'_>) {
        //= spec/xtcp.md#retransmission-and-rtt
        //# The first ACK of new data after such a timeout that echoes an older
        //# TSval proves the originals arrived (RFC 3522 §3.2): what the timeout
        //# marked lost and was not yet resent is in flight again.
        if let (Some(rts), Some((_, tsecr))) = (self.eifel_ts.take(), seg.options.timestamps) {
            if (tsecr.wrapping_sub(rts) as i32) < 0 {
                for s in self.rtx.iter_mut() {
                    if s.lost {
                        s.lost = false;
                        self.lost_bytes = self.lost_bytes.saturating_sub(s.len());
                        self.pipe += s.len();
                    }
                }
                self.stats.spurious_rtos += 1;
            }
        }
    }

    /// Remove what `new_una` acknowledges from the retransmission queue (and
    /// from the RFC 6675 scoreboard counts), trimming a partly acknowledged
    /// front segment; returns what the removed segments tell.
    fn trim_rtx_queue(&mut self, now: Instant, new_una: u64) -> Delivered {
        let mut delivered = Delivered {
            rtt_sample: None,
            newest: None,
            app_limited: false,
        };
        while let Some(front) = self.rtx.front_mut() {
            if front.end <= new_una {
                let s = *front;
                self.rtx.pop_front();
                self.forget_segment(&s);
                if !s.sacked {
                    if delivered.newest.is_none_or(|(t, _, _)| s.sent_at >= t) {
                        delivered.newest = Some((s.sent_at, s.end, s.xmits));
                    }
                    if s.xmits == 1 {
                        // Karn's rule (RFC 6298 §3): time only never-retransmitted segments.
                        delivered.rtt_sample = Some(now - s.sent_at);
                    }
                }
                delivered.app_limited |= s.app_limited;
            } else if front.start < new_una {
                // A peer acknowledging part of a segment: trim it.
                let cut = new_una - front.start;
                let counted = !front.sacked && !front.lost;
                front.start = new_una;
                if counted {
                    self.pipe = self.pipe.saturating_sub(cut);
                } else if front.lost {
                    self.lost_bytes = self.lost_bytes.saturating_sub(cut);
                } else {
                    self.sacked_bytes = self.sacked_bytes.saturating_sub(cut);
                }
                break;
            } else {
                break;
            }
        }
        delivered
    }

    /// Feed the RTT estimator (RFC 6298 §2) with the sample of an ACK of new
    /// data: `rtt_sample` from the queue, else the echoed timestamp.
    fn take_rtt_sample(
        &mut self,
        now: Instant,
        seg: &SegmentRepr<'_>,
        mut rtt_sample: Option<Duration>,
    ) {
        // RFC 6298 §3 (Karn): the exact send time of a never-retransmitted segment
        // gives the sample. Only when the ACK covers retransmitted data alone does
        // the echoed timestamp stand in (RFC 7323 §4.2, as Linux's
        // tcp_clean_rtx_queue falls back to tcp_rtt_tsopt_us): the timestamp clock
        // ticks in 1 ms, so on a path whose RTT is below one tick its samples
        // are 0 or 1 ms of quantisation noise and are not used.
        if rtt_sample.is_none()
            && self
                .rtt
                .min_rtt()
                .is_none_or(|m| m >= Duration::from_millis(1))
        {
            rtt_sample = self.ts_rtt_sample(now, seg);
        }
        if let Some(r) = rtt_sample {
            self.rtt.on_sample(r);
        }
    }

    /// SND.UNA ← SEG.ACK (RFC 9293 §3.10.7.4 fifth check): free the send
    /// buffer, reset the duplicate ACK count and the backoff.
    fn advance_snd_una(&mut self, now: Instant, new_una: u64) {
        let data_end = self.send_buf.end();
        self.send_buf.ack_to(new_una.min(data_end));
        self.snd_una = new_una;
        self.dupacks = 0;
        self.rto_backoff = 0;
        self.stall_since = if self.snd_nxt > self.snd_una {
            Some(now)
        } else {
            None
        };
        if self.send_buf.free() > 0 && self.fin_off.is_none() {
            self.events.push_back(Event::Writable);
        }
    }

    /// Congestion control on an ACK of new data: end or continue loss
    /// recovery (RFC 6582, RFC 6675), or grow the window (RFC 5681).
    fn on_new_ack_cc(&mut self, now: Instant, acked: u64, app_limited: bool) {
        match self.recovery {
            Some(r) if self.snd_una >= r.recover => {
                // RFC 6582 §3.2 step 3 / RFC 6675 §5: full acknowledgement ends recovery.
                self.recovery = None;
                self.cc.on_recovery_exit(now);
            }
            Some(_) => {
                // RFC 6582 §3.2 step 4: a partial ACK; without SACK the next
                // unacknowledged segment is presumed lost.
                if !self.opts.sack {
                    self.mark_lost_front();
                }
            }
            None => {
                self.cc.on_ack(now, acked, &self.rtt, app_limited);
            }
        }
    }

    /// The retransmission timer after an ACK of new data (RFC 6298 §5.2/5.3),
    /// and the loss probe's.
    fn restart_rto_timer(&mut self, now: Instant) {
        // RFC 6298 §5.2/5.3: restart the timer, or stop it if nothing is outstanding.
        self.tlp_outstanding = false;
        if self.snd_nxt > self.snd_una {
            self.timers.set(Timer::Rto, now + self.rto_interval());
            self.arm_tlp(now);
        } else {
            self.timers.stop(Timer::Rto);
            self.timers.stop(Timer::Rack);
            self.timers.stop(Timer::Tlp);
        }
    }

    /// Our FIN acknowledged? (RFC 9293 §3.10.7.4 fifth check in FIN-WAIT-1,
    /// CLOSING and LAST-ACK.)
    fn check_fin_acked(&mut self, now: Instant) {
        // Our FIN acknowledged?
        if let Some(fin) = self.fin_off {
            if self.snd_una > fin {
                match self.state {
                    State::FinWait1 => self.state = State::FinWait2,
                    State::Closing => self.enter_time_wait(now),
                    State::LastAck => self.close(now, None),
                    _ => {}
                }
            }
        }
    }

    fn forget_segment(&mut self, s: &SentSeg) {
        if s.sacked {
            self.sacked_bytes = self.sacked_bytes.saturating_sub(s.len());
        } else if s.lost {
            self.lost_bytes = self.lost_bytes.saturating_sub(s.len());
        } else {
            self.pipe = self.pipe.saturating_sub(s.len());
        }
    }

    fn rack_update(&mut self, now: Instant, sent_at: Instant, end: u64, xmits: u16) {
        // RFC 8985 §6.2 step 2: ignore a retransmitted segment whose delivery
        // could be the original (RTT below min_rtt).
        let rtt = now - sent_at;
        if xmits > 1 {
            if let Some(min) = self.rtt.min_rtt() {
                if rtt < min {
                    return;
                }
            }
        }
        if self
            .rack_xmit
            .is_none_or(|t| sent_at > t || (sent_at == t && end > self.rack_end))
        {
            self.rack_xmit = Some(sent_at);
            self.rack_end = end;
            self.rack_rtt = Some(rtt);
        }
    }

    /// Mark SACKed segments (RFC 2018 §3, RFC 6675 §4 "Update()").
    fn process_sack(&mut self, now: Instant, blocks: &[SackBlock]) -> bool {
        let una_seq = self.snd_seq(self.snd_una);
        let mut any = false;
        let mut newest: Option<(Instant, u64, u16)> = None;
        for b in blocks {
            let l = b.left.diff(una_seq);
            let r = b.right.diff(una_seq);
            // Ignore D-SACKs and blocks outside [SND.UNA, SND.NXT] (RFC 2883, RFC 6675 §5).
            if l < 0 || r <= l || r as u64 > self.snd_nxt - self.snd_una {
                continue;
            }
            let (lo, hi) = (self.snd_una + l as u64, self.snd_una + r as u64);
            let first = self.rtx.partition_point(|s| s.end <= lo);
            for i in first..self.rtx.len() {
                let Some(s) = self.rtx.get(i).copied() else {
                    break;
                };
                if s.start >= hi {
                    break;
                }
                if s.sacked || s.start < lo || s.end > hi {
                    continue;
                }
                if s.lost {
                    self.lost_bytes = self.lost_bytes.saturating_sub(s.len());
                } else {
                    self.pipe = self.pipe.saturating_sub(s.len());
                }
                self.sacked_bytes += s.len();
                if let Some(seg) = self.rtx.get_mut(i) {
                    seg.sacked = true;
                    seg.lost = false;
                }
                any = true;
                if newest.is_none_or(|(t, _, _)| s.sent_at >= t) {
                    newest = Some((s.sent_at, s.end, s.xmits));
                }
            }
        }
        if let Some((t, end, x)) = newest {
            self.rack_update(now, t, end, x);
        }
        any
    }

    /// Loss detection with SACK: RFC 6675 §4 IsLost (DupThresh segments SACKed
    /// above) and RACK (RFC 8985 §6.2: sent before a delivered segment, longer
    /// ago than RACK.rtt + reordering window).
    fn detect_losses(&mut self, now: Instant) {
        let mss = self.mss() as u64;
        let reo_wnd = match (self.rtt.min_rtt(), self.rack_rtt) {
            // RFC 8985 §6.2 step 4: min_RTT/4, bounded by SRTT.
            (Some(min), _) => (min / 4).min(self.rtt.srtt().unwrap_or(min)),
            _ => Duration::ZERO,
        };
        let rack = match (self.rack_xmit, self.rack_rtt) {
            (Some(x), Some(r)) => Some((x, r + reo_wnd)),
            _ => None,
        };
        let mut sacked_above = self.sacked_bytes;
        let mut newly_lost = 0u64;
        let mut rack_wait: Option<Instant> = None;
        for s in self.rtx.iter_mut() {
            if sacked_above == 0 && rack.is_none() {
                break;
            }
            if s.sacked {
                sacked_above = sacked_above.saturating_sub(s.len());
                continue;
            }
            if s.lost {
                continue;
            }
            // RFC 6675 §4 IsLost applies once per episode: a segment already
            // retransmitted is judged lost again only by time (RACK).
            let by_count = s.xmits == 1 && sacked_above >= DUP_THRESH * mss;
            let mut by_time = false;
            if let Some((xmit, thresh)) = rack {
                if s.sent_at < xmit || (s.sent_at == xmit && s.end < self.rack_end) {
                    let deadline = s.sent_at + thresh;
                    if now >= deadline {
                        by_time = true;
                    } else {
                        rack_wait = Some(rack_wait.map_or(deadline, |w| w.min(deadline)));
                    }
                } else if sacked_above == 0 {
                    break;
                }
            }
            if by_count || by_time {
                s.lost = true;
                self.pipe = self.pipe.saturating_sub(s.len());
                self.lost_bytes += s.len();
                newly_lost += 1;
            }
        }
        match rack_wait {
            // RFC 8985 §6.2 step 5: arm the reordering timer for the earliest candidate.
            Some(at) => self.timers.set(Timer::Rack, at),
            None => self.timers.stop(Timer::Rack),
        }
        if newly_lost > 0 && self.recovery.is_none() {
            self.enter_recovery(now);
        }
    }

    /// Proportional Rate Reduction on an ACK during recovery (RFC 6937 §3):
    /// while more than ssthresh is in flight, send in proportion to what was
    /// delivered; below it, grow back towards ssthresh no faster than slow
    /// start (PRR-SSRB). Without it a burst loss (a slow-start overshoot)
    /// left `pipe` above cwnd and stalled recovery until a timeout.
    fn prr_on_ack(&mut self, delivered: u64) {
        let mss = self.mss() as u64;
        let ssthresh = self.cc.ssthresh();
        let pipe = self.pipe;
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        //= spec/xtcp.md#XT-PRR-1
        //# During recovery the sender MUST limit what it sends by Proportional
        //# Rate Reduction (RFC 6937 §3)
        r.prr_delivered += delivered;
        let sndcnt = if pipe > ssthresh {
            // ceil(prr_delivered * ssthresh / RecoverFS) - prr_out
            let num = u128::from(r.prr_delivered) * u128::from(ssthresh);
            let quota = num.div_ceil(u128::from(r.recover_fs));
            u64::try_from(quota)
                .unwrap_or(u64::MAX)
                .saturating_sub(r.prr_out)
        } else {
            let limit = r.prr_delivered.saturating_sub(r.prr_out).max(delivered) + mss;
            (ssthresh - pipe).min(limit)
        };
        r.prr_allow = sndcnt;
    }

    /// Count a transmission against PRR's allowance (RFC 6937 `prr_out`).
    fn prr_on_send(&mut self, len: u64) {
        if let Some(r) = self.recovery.as_mut() {
            r.prr_out += len;
            r.prr_allow = r.prr_allow.saturating_sub(len);
        }
    }

    /// Whether congestion control lets `len` more bytes go: PRR's allowance
    /// during recovery, else cwnd over pipe.
    fn cwnd_room(&self) -> u64 {
        match &self.recovery {
            Some(r) => r.prr_allow,
            None => self.cc.window().saturating_sub(self.pipe),
        }
    }

    fn mark_lost_front(&mut self) {
        if let Some(s) = self.rtx.iter_mut().find(|s| !s.sacked) {
            if !s.lost {
                s.lost = true;
                self.pipe = self.pipe.saturating_sub(s.len());
                self.lost_bytes += s.len();
            }
        }
    }

    fn enter_recovery(&mut self, now: Instant) {
        // RFC 6675 §5 step 4 / RFC 6582 §3.2 step 2: one multiplicative decrease per episode.
        let flight = self.snd_nxt - self.snd_una;
        self.cc.on_congestion_event(now, flight);
        self.recovery = Some(Recovery {
            recover: self.snd_nxt,
            prr_delivered: 0,
            prr_out: 0,
            recover_fs: flight.max(1),
            prr_allow: 0,
        });
        self.episode_rtx = false;
        self.stats.recovery_episodes += 1;
        self.stats.fast_retransmits += 1;
    }

    fn receive_data(&mut self, now: Instant, seg: &SegmentRepr<'_>) {
        let rcv_nxt = self.rcv_nxt_seq();
        let mut off = self.rcv_nxt_off() as i64 + i64::from(seg.seq.diff(rcv_nxt));
        let mut data = seg.payload;
        if off < 0 {
            let skip = usize::try_from(-off).unwrap_or(usize::MAX).min(data.len());
            data = data.get(skip..).unwrap_or(&[]);
            off = 0;
        }
        let res = self.recv_buf.insert(off as u64, data);
        if !res.accepted {
            self.stats.dropped_segments += 1;
        }
        self.stats.bytes_received += res.advanced as u64;
        if res.advanced > 0 {
            self.events.push_back(Event::Readable);
        }
        // Advance the advertised edge bookkeeping: data consumed window space.
        // RFC 5681 §4.2: ACK at once for out-of-order data and for data that fills a hole.
        if res.out_of_order
            || !res.new_data
            || self.recv_buf.has_out_of_order()
            || (res.advanced > 0
                && off as u64 + (data.len() as u64) < self.recv_buf.contiguous_end())
        {
            self.ack.now = true;
        } else if res.advanced > 0 {
            self.ack.unacked_segments += 1;
            // Without a delayed-ACK timer every segment is acknowledged.
            let every = if self.cfg.delayed_ack.is_some() { 2 } else { 1 };
            //= spec/xtcp.md#XT-ACK-1
            //# A receiver MUST acknowledge at least every second in-order data segment,
            //# full-sized or not, also when several arrive in one receive batch
            if self.ack.unacked_segments >= every {
                self.owe_ack();
            } else if let Some(d) = self.cfg.delayed_ack {
                if !self.ack.now && !self.timers.is_set(Timer::DelayedAck) {
                    self.timers.set(Timer::DelayedAck, now + d);
                }
            }
        }
    }

    /// An ACK of everything received so far (this segment included, its FIN
    /// too) is due (RFC 1122 §4.2.3.2, RFC 5681 §4.2, RFC 9293 §3.8.6.3). It
    /// goes out at the next `poll_transmit`, unless another segment comes
    /// first (the rest of a receive batch): then [`Self::settle_owed_ack`]
    /// queues it as it stood, so later segments do not merge into it.
    fn owe_ack(&mut self) {
        self.ack.owed = Some(self.ts_recent);
        self.ack.unacked_segments = 0;
        self.ack.now = true;
        // RFC 7323 §4.3: this ACK counts as sent, so the next segment's
        // TSval becomes TS.Recent, the one the next ACK echoes (the earliest
        // segment it covers).
        self.last_ack_sent = self.rcv_nxt_seq();
    }

    /// A segment with data or FIN arrived while an ACK owed by the
    /// every-second-segment rule has not gone out: queue that ACK as a point
    /// (RCV.NXT before this segment), to be sent before the ACK of the state
    /// after it (spec/xtcp.md §7).
    fn settle_owed_ack(&mut self) {
        let Some(tsecr) = self.ack.owed.take() else {
            return;
        };
        let p = AckPoint {
            off: self.rcv_nxt_off(),
            tsecr,
        };
        if self.ack.points.len() < MAX_ACK_POINTS {
            self.ack.points.push_back(p);
        } else if let Some(last) = self.ack.points.back_mut() {
            *last = p;
        }
    }

    fn check_fin(&mut self, now: Instant) {
        let Some(fin) = self.rcv_fin else { return };
        if self.fin_received || self.recv_buf.contiguous_end() != fin {
            return;
        }
        // RFC 9293 §3.10.7.4 eighth check: FIN processed in order.
        self.fin_received = true;
        self.ack.now = true;
        self.events.push_back(Event::PeerFinished);
        match self.state {
            State::SynReceived | State::Established => self.state = State::CloseWait,
            State::FinWait1 => {
                if self.fin_off.is_some_and(|f| self.snd_una > f) {
                    self.enter_time_wait(now);
                } else {
                    self.state = State::Closing;
                }
            }
            State::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
    }

    fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        let keep = [Timer::TimeWait];
        for t in ALL_TIMERS {
            if !keep.contains(&t) {
                self.timers.stop(t);
            }
        }
        // RFC 9293 §3.10.7.4: TIME-WAIT lasts 2 MSL.
        self.timers.set(Timer::TimeWait, now + self.cfg.msl * 2);
    }

    // ------------------------------------------------------------------
    // Input: time
    // ------------------------------------------------------------------

    fn rto_interval(&self) -> Duration {
        // RFC 6298 §5.5: back off by doubling, bounded by max_rto.
        let base = self.rtt.rto();
        let mult = 1u32 << self.rto_backoff.min(16);
        (base * mult).min(self.cfg.max_rto)
    }

    /// Process expired timers. Idempotent: timers not yet due are untouched.
    pub fn handle_timeout(&mut self, now: Instant) {
        for t in ALL_TIMERS {
            match self.timers.get(t) {
                Some(at) if at <= now => {
                    self.timers.stop(t);
                    self.on_timer(now, t);
                }
                _ => {}
            }
        }
    }

    fn on_timer(&mut self, now: Instant, t: Timer) {
        match t {
            Timer::Rto => self.on_rto(now),
            Timer::DelayedAck => self.ack.now = true,
            Timer::Persist => {
                // RFC 9293 §3.8.6.1: send a window probe; back off like the RTO.
                self.persist_probe_due = true;
                self.persist_backoff = (self.persist_backoff + 1).min(16);
            }
            Timer::Keepalive => self.on_keepalive(now),
            Timer::TimeWait => self.close(now, None),
            Timer::Pacing => {}
            Timer::Rack => {
                if self.opts.sack {
                    self.detect_losses(now);
                }
            }
            Timer::PathValidation => self.on_path_timer(now),
            Timer::Tlp => {
                // RFC 8985 §7.3: the probe timeout fired with the tail unacknowledged
                // (also in recovery: see `arm_tlp`).
                if self.snd_nxt > self.snd_una && !self.tlp_outstanding {
                    self.tlp_due = true;
                    self.tlp_outstanding = true;
                }
            }
        }
    }

    /// RFC 8985 §7.2: arm the probe timeout (PTO) for the tail of the flight.
    ///
    /// Deviation (spec/xtcp.md §5): the PTO also runs during recovery, as
    /// QUIC's does (RFC 9002 §6.2). RFC 8985 leaves a recovery whose last
    /// transmissions are all lost to the RTO, because RACK needs a later
    /// delivery to see them; with a small cwnd (high loss) that is a few
    /// segments, and each such RTO idles the link for `min_rto`, hundreds of
    /// RTTs on a short path. A probe elicits the SACK RACK needs instead.
    fn arm_tlp(&mut self, now: Instant) {
        let Some(srtt) = self.rtt.srtt() else { return };
        if !self.opts.sack
            || self.tlp_outstanding
            || self.snd_nxt <= self.snd_una
            || !self.state.is_synchronized()
        {
            self.timers.stop(Timer::Tlp);
            return;
        }
        let mut pto = srtt * 2;
        // One segment in flight: allow for the peer's delayed ACK (WCDelAckT =
        // 200 ms) — unless the peer holds out-of-order data (we have SACKed
        // bytes), when it ACKs every segment at once (RFC 5681 §4.2).
        if self.pipe <= self.mss() as u64 && self.sacked_bytes == 0 {
            pto = pto.max(srtt * 3 / 2 + Duration::from_millis(200));
        }
        let at = now + pto;
        match self.timers.get(Timer::Rto) {
            Some(rto) if rto <= at => self.timers.stop(Timer::Tlp),
            _ => self.timers.set(Timer::Tlp, at),
        }
    }

    fn on_rto(&mut self, now: Instant) {
        match self.state {
            State::SynSent | State::SynReceived => {
                if self.syn_xmits > self.cfg.syn_retries
                    || self
                        .syn_sent_at
                        .is_some_and(|_| now - self.last_recv >= self.cfg.user_timeout)
                {
                    self.close(now, Some(ConnectionError::TimedOut));
                    return;
                }
                self.rto_backoff += 1;
                self.syn_pending = if self.state == State::SynSent {
                    SynPending::Syn
                } else {
                    SynPending::SynAck
                };
            }
            State::Closed | State::Listen | State::TimeWait => {}
            _ => {
                if self.snd_nxt <= self.snd_una {
                    return;
                }
                // RFC 9293 §3.10.8 / RFC 5482: user timeout.
                if self
                    .stall_since
                    .is_some_and(|s| now - s >= self.cfg.user_timeout)
                {
                    let seq = self.snd_seq(self.snd_nxt);
                    self.pending_rst = Some((seq, self.rcv_nxt_seq(), true));
                    self.close(now, Some(ConnectionError::TimedOut));
                    return;
                }
                self.stats.rto_events += 1;
                // RFC 6298 §5.4-5.6 and RFC 6675 §5.1: everything outstanding and
                // not SACKed is presumed lost; cwnd to one segment; back off.
                let flight = self.snd_nxt - self.snd_una;
                self.cc.on_retransmission_timeout(now, flight);
                //= spec/xtcp.md#retransmission-and-rtt
                //# A timeout that found no known loss records the TSval of its
                //# retransmission (RFC 3522 §3.2, RetransmitTS).
                if self.opts.timestamps
                    && self.eifel_ts.is_none()
                    && self.lost_bytes == 0
                    && self.recovery.is_none()
                {
                    self.eifel_ts = Some(self.ts_now(now));
                }
                for s in self.rtx.iter_mut() {
                    if !s.sacked && !s.lost {
                        s.lost = true;
                        self.pipe = self.pipe.saturating_sub(s.len());
                        self.lost_bytes += s.len();
                    }
                }
                self.recovery = None;
                self.episode_rtx = false;
                // RFC 6582 §3.2 step 1 / §4: no fast retransmit for the data sent before the timeout.
                self.recover_floor = self.snd_nxt;
                self.dupacks = 0;
                self.rto_backoff = (self.rto_backoff + 1).min(16);
                self.rack_xmit = None;
                self.rack_rtt = None;
                self.timers.set(Timer::Rto, now + self.rto_interval());
            }
        }
    }

    fn arm_keepalive(&mut self, now: Instant) {
        if let Some(k) = self.cfg.keepalive {
            if self.state.is_synchronized() && self.state != State::TimeWait {
                let at = if self.keepalive_probes == 0 {
                    now + k.idle
                } else {
                    now + k.interval
                };
                self.timers.set(Timer::Keepalive, at);
            }
        }
    }

    fn on_keepalive(&mut self, now: Instant) {
        let Some(k) = self.cfg.keepalive else { return };
        if !self.state.is_synchronized() || self.state == State::TimeWait {
            return;
        }
        // RFC 1122 §4.2.3.6: after `probes` unanswered probes the connection is dead.
        if self.keepalive_probes >= k.probes {
            self.close(now, Some(ConnectionError::TimedOut));
            return;
        }
        self.keepalive_probes += 1;
        self.keepalive_due = true;
        self.timers.set(Timer::Keepalive, now + k.interval);
    }

    // ------------------------------------------------------------------
    // Output
    // ------------------------------------------------------------------

    fn base_options(&self, now: Instant) -> TcpOptions {
        let mut o = TcpOptions::default();
        if self.opts.timestamps {
            o.timestamps = Some((self.ts_now(now), self.ts_recent));
        }
        o
    }

    fn ack_fields(&mut self, now: Instant) -> (SeqNumber, u16, TcpOptions) {
        let ack = self.rcv_nxt_seq();
        let wnd = self.rcv_wnd();
        let field = (wnd >> self.opts.rcv_wscale).min(0xffff) as u16;
        let edge = self.recv_buf.contiguous_end() + (u64::from(field) << self.opts.rcv_wscale);
        self.rcv_adv_edge = self.rcv_adv_edge.max(edge);
        let mut o = self.base_options(now);
        if self.opts.sack && self.recv_buf.has_out_of_order() {
            let mut blocks = [(0u64, 0u64); MAX_SACK_BLOCKS];
            let max = if self.opts.timestamps {
                3
            } else {
                MAX_SACK_BLOCKS
            };
            let n = self.recv_buf.sack_blocks(&mut blocks[..max]);
            let base = self.irs + 1u32;
            for (i, (l, r)) in blocks.iter().take(n).enumerate() {
                if let Some(slot) = o.sack.get_mut(i) {
                    *slot = SackBlock {
                        left: base + (*l as u32),
                        right: base + (*r as u32),
                    };
                }
            }
            o.sack_len = n as u8;
        }
        self.last_ack_sent = ack;
        (ack, field, o)
    }

    fn repr<'a>(
        &self,
        seq: SeqNumber,
        ack: SeqNumber,
        flags: TcpFlags,
        window: u16,
        options: TcpOptions,
        payload: &'a [u8],
    ) -> SegmentRepr<'a> {
        SegmentRepr {
            xflags: XtcpFlags(0),
            conn_id: self.params.conn_id,
            src_port: self.params.local_port,
            dst_port: self.params.remote_port,
            seq,
            ack,
            flags,
            window,
            options,
            payload,
        }
    }

    fn emit(&mut self, now: Instant, repr: &SegmentRepr<'_>, buf: &mut [u8]) -> Option<Transmit> {
        let size = repr.emit(buf).ok()?;
        self.stats.segments_sent += 1;
        self.last_send = now;
        if repr.flags.ack() {
            self.ack.clear();
            self.timers.stop(Timer::DelayedAck);
            self.ack_copy_due = self.path.is_some();
        }
        Some(Transmit {
            destination: self.remote,
            size,
        })
    }

    /// The next datagram to send, written into `buf` (at least
    /// `max_datagram_size` bytes). Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((seq, ack, with_ack)) = self.pending_rst.take() {
            let flags = if with_ack {
                TcpFlags::RST | TcpFlags::ACK
            } else {
                TcpFlags::RST
            };
            let repr = self.repr(seq, ack, flags, 0, TcpOptions::default(), &[]);
            return self.emit(now, &repr, buf);
        }
        match self.state {
            State::Closed | State::Listen => return None,
            State::SynSent | State::SynReceived => return self.transmit_syn(now, buf),
            _ => {}
        }
        if let Some(t) = self.transmit_path(now, buf) {
            return Some(t);
        }
        // Data segments carry the queued ACK points first (oldest first);
        // those left go as pure ACKs.
        if let Some(t) = self.transmit_data(now, buf) {
            return Some(t);
        }
        if let Some(t) = self.transmit_ack_point(now, buf) {
            return Some(t);
        }
        if self.keepalive_due {
            // RFC 1122 §4.2.3.6: a probe with SEG.SEQ = SND.NXT - 1 and no data.
            self.keepalive_due = false;
            let (ack, wnd, opts) = self.ack_fields(now);
            let seq = self.snd_seq(self.snd_nxt) + u32::MAX;
            let repr = self.repr(seq, ack, TcpFlags::ACK, wnd, opts, &[]);
            return self.emit(now, &repr, buf);
        }
        if self.ack.now {
            let (ack, wnd, opts) = self.ack_fields(now);
            let seq = self.snd_seq(self.snd_nxt);
            let repr = self.repr(seq, ack, TcpFlags::ACK, wnd, opts, &[]);
            return self.emit(now, &repr, buf);
        }
        None
    }

    /// The oldest queued ACK point still behind RCV.NXT (spec/xtcp.md §7),
    /// taken off the queue. A point at RCV.NXT is left to the ACK of the
    /// current state, which is due as well (`now`).
    fn next_ack_point(&mut self) -> Option<AckPoint> {
        let rcv_nxt = self.rcv_nxt_off();
        while let Some(p) = self.ack.points.pop_front() {
            if p.off < rcv_nxt {
                return Some(p);
            }
        }
        None
    }

    /// The ACK fields of point `p`: what it acknowledges, the TSval it was
    /// due to echo, no SACK blocks (none were due then: a point is only
    /// owed while nothing is held out of order), and the window that keeps
    /// the right edge where the ACK of the current state puts it.
    fn ack_point_fields(&mut self, now: Instant, p: AckPoint) -> (SeqNumber, u16, TcpOptions) {
        let ack = self.irs + 1u32 + (p.off as u32);
        let right = self.recv_buf.contiguous_end() + self.rcv_wnd();
        let field = (right.saturating_sub(p.off) >> self.opts.rcv_wscale).min(0xffff) as u16;
        self.rcv_adv_edge = self
            .rcv_adv_edge
            .max(p.off + (u64::from(field) << self.opts.rcv_wscale));
        let mut o = self.base_options(now);
        if let Some((tsval, _)) = o.timestamps {
            o.timestamps = Some((tsval, p.tsecr));
        }
        (ack, field, o)
    }

    /// The ACK fields a data segment carries: the oldest queued ACK point's
    /// (so that data going out does not merge the ACKs a receive batch owes),
    /// else the current state's.
    fn data_ack_fields(&mut self, now: Instant) -> (SeqNumber, u16, TcpOptions) {
        match self.next_ack_point() {
            Some(p) => self.ack_point_fields(now, p),
            None => self.ack_fields(now),
        }
    }

    /// The oldest queued ACK point no data segment carried, as a pure ACK
    /// (spec/xtcp.md §7). It leaves the ACK of the current state due.
    fn transmit_ack_point(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let p = self.next_ack_point()?;
        let (ack, wnd, o) = self.ack_point_fields(now, p);
        let seq = self.snd_seq(self.snd_nxt);
        let repr = self.repr(seq, ack, TcpFlags::ACK, wnd, o, &[]);
        let size = repr.emit(buf).ok()?;
        self.stats.segments_sent += 1;
        self.last_send = now;
        Some(Transmit {
            destination: self.remote,
            size,
        })
    }

    /// A PATH_RESPONSE, a PATH_CHALLENGE, or a copy of the last ACK for the
    /// candidate (spec/xtcp.md §8.1, §8.4, §8.6): pure ACKs, the first two
    /// carrying the path option, to the address concerned.
    fn transmit_path(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((to, token)) = self.path_response.take() {
            if let Some(t) = self.emit_path(now, to, Some(PathOption::Response(token)), buf) {
                return Some(t);
            }
        }
        let c = self.path?;
        if !c.may_send(self.min_path_segment_len()) {
            // spec/xtcp.md §8.5: wait for more bytes from the candidate (or
            // for the challenge timer to give up on it).
            return None;
        }
        if !c.challenge_due || c.sent_tokens >= MAX_PATH_CHALLENGES {
            let fresh = self.ack_copied != Some(self.rcv_nxt_seq())
                || (self.opts.sack && self.recv_buf.has_out_of_order());
            if !self.ack_copy_due || !fresh {
                return None;
            }
            self.ack_copied = Some(self.rcv_nxt_seq());
            // spec/xtcp.md §8.1: the peer may already be at the candidate
            // address only; a copy of our ACK (no data) keeps its data
            // flowing while the challenge is under way.
            self.ack_copy_due = false;
            return self.emit_path(now, c.addr, None, buf);
        }
        let token = self.next_path_token();
        let t = self.emit_path(now, c.addr, Some(PathOption::Challenge(token)), buf)?;
        if let Some(c) = self.path.as_mut() {
            if let Some(slot) = c.tokens.get_mut(c.sent_tokens) {
                *slot = token;
                c.sent_tokens += 1;
            }
            c.challenge_due = false;
        }
        self.stats.path_challenges += 1;
        Some(t)
    }

    /// The smallest path segment: headers, timestamps if in use, the path option.
    fn min_path_segment_len(&self) -> usize {
        let ts = if self.opts.timestamps {
            TS_OPTION_LEN
        } else {
            0
        };
        XTCP_HEADER_LEN + TCP_HEADER_LEN + ts + 12
    }

    /// Emit a pure ACK with path option `opt` to `to`: the current address,
    /// or the candidate within its amplification budget (spec/xtcp.md §8.5),
    /// dropping SACK blocks if that makes it fit.
    fn emit_path(
        &mut self,
        now: Instant,
        to: SocketAddr,
        opt: Option<PathOption>,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        let candidate = if to == self.remote {
            None
        } else {
            //= spec/xtcp.md#XT-PV-2
            // spec/xtcp.md §8.1, §8.5: nothing goes to an address that is
            // neither the current one nor the candidate.
            let c = self.path.filter(|c| c.addr == to)?;
            if !c.may_send(self.min_path_segment_len()) {
                return None;
            }
            Some(c)
        };
        let (ack, wnd, mut opts) = self.ack_fields(now);
        opts.path = opt;
        let seq = self.snd_seq(self.snd_nxt);
        let mut repr = self.repr(seq, ack, TcpFlags::ACK, wnd, opts, &[]);
        if let Some(c) = candidate {
            if !c.may_send(repr.buffer_len()) {
                repr.options.sack_len = 0;
            }
            //= spec/xtcp.md#XT-PV-10
            // spec/xtcp.md §8.5: at most 3 × the bytes received from it.
            if !c.may_send(repr.buffer_len()) {
                return None;
            }
        }
        let size = repr.emit(buf).ok()?;
        self.stats.segments_sent += 1;
        self.last_send = now;
        match self.path.as_mut() {
            Some(c) if candidate.is_some() => c.sent += size as u64,
            _ => {
                // An ACK to the current address like any other.
                self.ack.clear();
                self.timers.stop(Timer::DelayedAck);
            }
        }
        Some(Transmit {
            destination: to,
            size,
        })
    }

    fn transmit_syn(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.syn_pending == SynPending::None {
            return None;
        }
        let synack = self.syn_pending == SynPending::SynAck;
        self.syn_pending = SynPending::None;
        let mut o = TcpOptions {
            mss: Some(self.cfg.announced_mss()),
            ..TcpOptions::default()
        };
        // RFC 7323 §2.2 / RFC 2018 §2: offer options on SYN; on SYN-ACK only if the peer offered.
        let offer_ws = self.cfg.window_scaling
            && (!synack || self.opts.snd_wscale > 0 || self.opts.rcv_wscale > 0);
        if offer_ws {
            o.window_scale = Some(self.cfg.wscale_for_buffer());
        }
        o.sack_permitted = self.cfg.sack && (!synack || self.opts.sack);
        if self.cfg.timestamps && (!synack || self.opts.timestamps) {
            o.timestamps = Some((self.ts_now(now), if synack { self.ts_recent } else { 0 }));
        }
        // RFC 7323 §2.2: the window field of a SYN is never scaled.
        let wnd = self.recv_buf.window().min(0xffff) as u16;
        let (flags, ack) = if synack {
            (TcpFlags::SYN | TcpFlags::ACK, self.irs + 1u32)
        } else {
            (TcpFlags::SYN, SeqNumber(0))
        };
        if synack {
            self.rcv_adv_edge = self.rcv_adv_edge.max(u64::from(wnd));
            self.last_ack_sent = ack;
        }
        self.syn_xmits += 1;
        self.syn_sent_at = Some(now);
        let repr = self.repr(self.iss, ack, flags, wnd, o, &[]);
        // RFC 6298 §5.1: the SYN is timed by the retransmission timer.
        self.timers.set(Timer::Rto, now + self.rto_interval());
        self.emit(now, &repr, buf)
    }

    /// Retransmissions, new data, FIN and window probes (one segment).
    fn transmit_data(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let mss = self.mss();
        let cwnd = self.cc.window();
        // 1. Retransmit a lost segment (RFC 6675 §5 NextSeg rule 1; the first
        //    retransmission of an episode is sent regardless of cwnd, §5 step 4.3).
        if self.lost_bytes > 0 {
            let first_rtx = self.pipe == 0 || !self.episode_rtx;
            // A due loss probe (RFC 8985 §7.3; sent whatever cwnd says) is best
            // spent on a segment already known to be lost.
            let room = match &self.recovery {
                Some(r) => r.prr_allow > 0,
                None => self.pipe + mss as u64 <= cwnd,
            };
            if room || first_rtx || self.tlp_due {
                if let Some(idx) = self.rtx.iter().position(|s| s.lost) {
                    self.tlp_due = false;
                    return self.retransmit(now, idx, buf);
                }
            }
        }
        // 1b. A tail loss probe (RFC 8985 §7.3): one segment of new data if the
        //     peer's window allows, else the last segment again; cwnd does not apply.
        if self.tlp_due {
            self.tlp_due = false;
            let room = self.snd_wnd_edge.saturating_sub(self.snd_nxt);
            let avail = self.send_buf.end().saturating_sub(self.snd_nxt);
            if avail > 0 && room > 0 {
                let len = avail.min(room).min(mss as u64) as usize;
                return self.send_new(now, len, buf);
            }
            if let Some(idx) = self.rtx.iter().rposition(|s| !s.sacked && !s.lost) {
                return self.resend(now, idx, false, buf);
            }
        }
        // 2. New data within the congestion and send windows, subject to Nagle
        //    and sender SWS avoidance (RFC 9293 §3.8.6.2.1), then FIN.
        let data_end = self.send_buf.end();
        let avail = data_end.saturating_sub(self.snd_nxt);
        let fin_unsent = self.fin_off.is_some_and(|f| self.snd_nxt <= f);
        let wnd_room = self.snd_wnd_edge.saturating_sub(self.snd_nxt);
        let cwnd_room = self.cwnd_room();
        let room = wnd_room.min(cwnd_room);
        if avail > 0 || fin_unsent {
            let len = avail.min(room).min(mss as u64) as usize;
            let in_flight = self.snd_nxt > self.snd_una;
            let all_queued_fits = avail as usize == len;
            let full = len == mss;
            let nagle_ok = !self.cfg.nagle || !in_flight || fin_unsent;
            let sws_ok = full
                || (all_queued_fits && nagle_ok)
                || (self.max_snd_wnd > 0 && len as u64 >= self.max_snd_wnd / 2 && nagle_ok);
            let fin_only = avail == 0 && fin_unsent;
            if (len > 0 && sws_ok)
                || (fin_only && (room > 0 || wnd_room == 0 && cwnd_room > 0 && !in_flight))
            {
                if self.cfg.pacing {
                    let bytes = len.max(1);
                    if let Some(at) =
                        self.pacer
                            .delay(now, bytes, cwnd, self.rtt.srtt(), self.cc.in_slow_start())
                    {
                        self.timers.set(Timer::Pacing, at);
                        return None;
                    }
                }
                return self.send_new(now, len, buf);
            }
            // 3. Data waiting, nothing in flight, and the window too small to send
            //    (zero, or below what SWS avoidance wants): the persist timer. When
            //    it fires, a zero window gets a one-byte probe (RFC 9293 §3.8.6.1)
            //    and a small window gets what fits (the SWS override timeout of
            //    §3.8.6.2.1). Without it a lost window update would stall us forever.
            if !in_flight {
                if self.persist_probe_due {
                    self.persist_probe_due = false;
                    let r = if wnd_room == 0 {
                        self.send_probe(now, buf)
                    } else if len > 0 || fin_only {
                        self.send_new(now, len, buf)
                    } else {
                        None
                    };
                    self.arm_persist(now);
                    return r;
                }
                if !self.timers.is_set(Timer::Persist) {
                    self.arm_persist(now);
                }
            }
        }
        None
    }

    fn arm_persist(&mut self, now: Instant) {
        let base = self.rtt.rto();
        let iv = (base * (1u32 << self.persist_backoff.min(16))).min(self.cfg.max_rto);
        self.timers.set(Timer::Persist, now + iv);
    }

    /// A zero-window probe: one byte beyond the window (RFC 9293 §3.8.6.1).
    fn send_probe(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (ack, wnd, opts) = self.ack_fields(now);
        let seq = self.snd_seq(self.snd_nxt);
        let byte = self.send_buf.slice(self.snd_nxt, 1);
        let mut one = [0u8; 1];
        let payload: &[u8] = match byte.first() {
            Some(b) => {
                one[0] = *b;
                &one
            }
            None => &[],
        };
        if !payload.is_empty() {
            self.probe_sent = Some(now);
        }
        let repr = self.repr(seq, ack, TcpFlags::ACK, wnd, opts, payload);
        self.emit(now, &repr, buf)
    }

    fn send_new(&mut self, now: Instant, len: usize, buf: &mut [u8]) -> Option<Transmit> {
        let start = self.snd_nxt;
        self.probe_sent = None;
        let payload_len = self.fill_payload_len(start, len);
        let data_end = self.send_buf.end();
        let fin = self
            .fin_off
            .is_some_and(|f| start + payload_len as u64 == f && f == data_end);
        let (ack, wnd, opts) = self.data_ack_fields(now);
        let mut flags = TcpFlags::ACK;
        if fin {
            flags = flags | TcpFlags::FIN;
        }
        if payload_len > 0 && start + payload_len as u64 == data_end {
            flags = flags | TcpFlags::PSH;
        }
        let seq = self.snd_seq(start);
        let t = self.emit_with_payload(now, seq, ack, flags, wnd, opts, start, payload_len, buf)?;
        let end = start + payload_len as u64 + u64::from(fin);
        let app_limited = self.snd_wnd_edge.saturating_sub(end) > 0
            && self.send_buf.end() <= end
            && self.pipe + (end - start) < self.cc.window();
        if self.snd_nxt == self.snd_una {
            if self.stall_since.is_none() {
                self.stall_since = Some(now);
            }
            // RFC 5681 §4.1 / RFC 7661: restart after idle.
            if now - self.last_send_data_or(now) > self.rtt.rto() {
                self.cc.on_idle_restart(now);
            }
        }
        self.rtx.push_back(SentSeg {
            start,
            end,
            sent_at: now,
            xmits: 1,
            sacked: false,
            lost: false,
            app_limited,
        });
        self.pipe += end - start;
        self.prr_on_send(end - start);
        self.snd_nxt = end;
        self.stats.bytes_sent += payload_len as u64;
        if self.cfg.pacing {
            self.pacer.on_sent(now, t.size);
        }
        // RFC 6298 §5.1: start the timer if it is not running.
        if !self.timers.is_set(Timer::Rto) {
            self.timers.set(Timer::Rto, now + self.rto_interval());
        }
        self.arm_tlp(now);
        Some(t)
    }

    fn last_send_data_or(&self, now: Instant) -> Instant {
        // The idle test uses the last transmission of any kind (a conservative choice).
        if self.stats.segments_sent == 0 {
            now
        } else {
            self.last_send
        }
    }

    fn fill_payload_len(&self, start: u64, len: usize) -> usize {
        let end = self.send_buf.end();
        (end.saturating_sub(start) as usize).min(len)
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_with_payload(
        &mut self,
        now: Instant,
        seq: SeqNumber,
        ack: SeqNumber,
        flags: TcpFlags,
        wnd: u16,
        opts: TcpOptions,
        start: u64,
        len: usize,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        let mut opts = opts;
        if self.repr(seq, ack, flags, wnd, opts, &[]).header_len() + len
            > self.cfg.max_datagram_size
        {
            // The MSS leaves room for timestamps only: SACK blocks that would push
            // the datagram past max_datagram_size are left to the next pure ACK.
            opts.sack_len = 0;
        }
        let chunk = self.send_buf.slice(start, len);
        if chunk.len() == len {
            // Fast path: the bytes are contiguous in the send buffer.
            let repr = self.repr(seq, ack, flags, wnd, opts, chunk);
            let size = repr.emit(buf).ok()?;
            return self.after_emit(now, flags, ack, size);
        }
        let mut tmp = vec![0u8; len];
        let n = self.send_buf.copy_out(start, &mut tmp);
        tmp.truncate(n);
        let repr = self.repr(seq, ack, flags, wnd, opts, &tmp);
        let size = repr.emit(buf).ok()?;
        self.after_emit(now, flags, ack, size)
    }

    fn after_emit(
        &mut self,
        now: Instant,
        flags: TcpFlags,
        ack: SeqNumber,
        size: usize,
    ) -> Option<Transmit> {
        self.stats.segments_sent += 1;
        self.last_send = now;
        // An ACK of the current state; one of a queued point leaves it due.
        if flags.ack() && ack == self.rcv_nxt_seq() {
            self.ack.clear();
            self.timers.stop(Timer::DelayedAck);
            self.ack_copy_due = self.path.is_some();
        }
        Some(Transmit {
            destination: self.remote,
            size,
        })
    }

    fn retransmit(&mut self, now: Instant, idx: usize, buf: &mut [u8]) -> Option<Transmit> {
        self.resend(now, idx, true, buf)
    }

    /// Send segment `idx` of the retransmission queue again; `was_lost`: it
    /// was marked lost (so it re-enters `pipe`), else it is a TLP copy.
    fn resend(
        &mut self,
        now: Instant,
        idx: usize,
        was_lost: bool,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        let s = *self.rtx.get(idx)?;
        let data_end = self.send_buf.end();
        let payload_end = s.end.min(data_end);
        let payload_len = payload_end.saturating_sub(s.start) as usize;
        let fin = self.fin_off.is_some_and(|f| s.end == f + 1);
        let (ack, wnd, opts) = self.data_ack_fields(now);
        let mut flags = TcpFlags::ACK;
        if fin {
            flags = flags | TcpFlags::FIN;
        }
        let seq = self.snd_seq(s.start);
        let t =
            self.emit_with_payload(now, seq, ack, flags, wnd, opts, s.start, payload_len, buf)?;
        if let Some(seg) = self.rtx.get_mut(idx) {
            seg.lost = false;
            seg.xmits = seg.xmits.saturating_add(1);
            seg.sent_at = now;
        }
        if was_lost {
            self.lost_bytes = self.lost_bytes.saturating_sub(s.len());
            self.pipe += s.len();
            self.episode_rtx = true;
            self.prr_on_send(s.len());
        }
        self.stats.bytes_retransmitted += payload_len as u64;
        // A lost front segment sent again gets a full RTO to be answered in
        // (as Linux does): otherwise a timer started long before, at the last
        // cumulative ACK, could fire right after a RACK-driven retransmission.
        if !self.timers.is_set(Timer::Rto) || (was_lost && idx == 0) {
            self.timers.set(Timer::Rto, now + self.rto_interval());
        }
        if was_lost {
            // RFC 9002 §6.2.1: the PTO runs from the latest transmission.
            self.arm_tlp(now);
        }
        Some(t)
    }
}
