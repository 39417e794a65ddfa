//! The session layer (`spec/direct.md`): one application byte stream carried
//! over a succession of paths, with lossless handover between them.
//!
//! A *path* is a reliable, in-order byte stream already protected by the peers'
//! end-to-end TLS (the relay path, a direct TCP connection, an XTCP connection).
//! The session layer frames the application's stream onto the active path:
//!
//! ```text
//!  0        1        2        3
//! +--------+--------+--------+---- ... ----+
//! |  type  |  length (u16 BE) |    body     |   length ≤ MAX_BODY
//! +--------+--------+--------+---- ... ----+
//! ```
//!
//! Every application byte has a 64-bit stream offset. The sender keeps every
//! byte the peer has not acknowledged in a bounded replay buffer; on a new path
//! each side first sends `RESUME(received)` and the other resends from there.
//! Each path is reliable and in order, and the first `DATA` on a new path starts
//! at or below what the receiver already holds, so a handover never leaves a
//! gap; duplicates (the old path still delivering what the new one resends) are
//! trimmed by offset.
//!
//! Three parts:
//! * the codec (`frame.rs`): [`Frame`], [`encode`], [`Frame::parse`] and the
//!   incremental [`FrameDecoder`] (bounded: at most one maximum-size frame
//!   buffered);
//! * the punch probe's codec ([`probe`], `spec/direct.md` §4.3);
//! * the state machine: [`SessionState`] (sans-IO: no clock, no socket; the
//!   driver calls [`SessionState::force_ack`] from its own timer).
//!
//! Parsing is total: any byte string yields frames or a typed [`FrameError`];
//! any frame sequence yields events or a typed [`SessionError`]. Nothing here
//! panics on peer input.

mod frame;
pub mod probe;

pub use frame::{
    encode, Candidate, CandidateKind, EncodeError, Frame, FrameDecoder, FrameError, Transport,
    HEADER_LEN, MAX_BODY, MAX_CANDIDATES, MAX_CLOSE_REASON, MAX_DATA,
};

use core::fmt;
use std::collections::VecDeque;

/// Default replay buffer capacity (4 MiB).
pub const DEFAULT_REPLAY_CAPACITY: usize = 4 << 20;
/// Largest number of paths a [`SessionState`] tracks at once.
pub const MAX_PATHS: usize = 8;
/// The `path_id` of the guest's early `RESUME` on a direct connection: "the
/// id the host gives this connection" (`spec/direct.md` §4.6). Never a real
/// path id.
pub const PROVISIONAL_PATH: u32 = u32::MAX;

pub mod paths;
pub mod punch;
pub mod slots;

pub use paths::{
    Action, Path, PathConfig, PathHandle, PathManager, PathPolicy, PeerFault, Role, SessionFailure,
    Status, UdpAttempt, READ_AHEAD, READ_PAUSE, RELAY_BACKOFF_FIRST, RELAY_BACKOFF_MAX,
    RELAY_RESUME,
};

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

/// Session parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Replay buffer capacity in bytes (≥ 1): the most application bytes written
    /// but not yet acknowledged by the peer. Default [`DEFAULT_REPLAY_CAPACITY`].
    pub replay_capacity: usize,
    /// Send an `ACK` once this many new bytes arrived since the last one (≥ 1).
    /// Default: a quarter of the replay capacity (peers are assumed to use the
    /// same capacity; with a smaller peer capacity the driver's idle timer,
    /// [`SessionState::force_ack`], keeps the peer moving).
    pub ack_every: u64,
}

impl SessionConfig {
    /// A configuration with this replay capacity and `ack_every` = capacity / 4.
    pub fn with_capacity(replay_capacity: usize) -> Self {
        let replay_capacity = replay_capacity.max(1);
        SessionConfig {
            replay_capacity,
            ack_every: (replay_capacity as u64 / 4).max(1),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_REPLAY_CAPACITY)
    }
}

/// A protocol violation by the peer, or a misuse by the driver. Fatal for the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// A frame arrived on (or names) a path that is not open.
    UnknownPath(u32),
    /// [`SessionState::open_path`] with an id already open.
    DuplicatePath(u32),
    /// [`SessionState::open_path`] with [`MAX_PATHS`] paths open.
    TooManyPaths,
    /// [`SessionState::open_path`] with [`PROVISIONAL_PATH`].
    ReservedPath,
    /// [`SessionState::open_path_at`] with an offset beyond what was received.
    ResumeAhead {
        /// The offset given.
        received: u64,
        /// What this side has received.
        have: u64,
    },
    /// The first frame on a path was not `RESUME`.
    NoResume {
        /// The path.
        path: u32,
    },
    /// A second `RESUME` on the same path.
    DuplicateResume {
        /// The path.
        path: u32,
    },
    /// `RESUME` naming another path than the one it arrived on.
    ResumePathMismatch {
        /// The path it arrived on.
        path: u32,
        /// The path id it carries.
        claimed: u32,
    },
    /// `RESUME` claims bytes that were never sent.
    ResumeOutOfRange {
        /// The claimed offset.
        received: u64,
        /// Highest offset ever sent (FIN counted as one).
        sent: u64,
    },
    /// `ACK` for bytes that were never sent.
    AckBeyondSent {
        /// The claimed offset.
        received: u64,
        /// Highest offset ever sent (FIN counted as one).
        sent: u64,
    },
    /// `ACK` below an earlier `ACK` or `RESUME` on the same path.
    AckBackwards {
        /// The path.
        path: u32,
        /// The offset in this frame.
        received: u64,
        /// The earlier one.
        previous: u64,
    },
    /// `DATA` or `FIN` beyond the next byte expected: bytes are missing.
    Gap {
        /// Next in-order offset.
        expected: u64,
        /// The frame's offset.
        offset: u64,
    },
    /// `DATA` or `FIN` on a path starting before the end of that path's previous
    /// `DATA`, or (first `DATA`) before the `RESUME` this side sent on it.
    PathOutOfOrder {
        /// The path.
        path: u32,
        /// Lowest acceptable offset on the path.
        expected: u64,
        /// The frame's offset.
        offset: u64,
    },
    /// `DATA` ending beyond the peer's `FIN`, or past 2^64.
    DataBeyondFin {
        /// The `FIN` offset (`u64::MAX` when the end overflowed).
        fin: u64,
        /// Where the data ends.
        end: u64,
    },
    /// A `FIN` at another offset than an earlier one.
    FinMismatch {
        /// The earlier offset.
        fin: u64,
        /// This one.
        offset: u64,
    },
    /// A `FIN` below bytes already received.
    FinBelowData {
        /// The `FIN` offset.
        offset: u64,
        /// Bytes already received.
        expected: u64,
    },
    /// A frame on a path after the peer's `PATH_SWITCH` on it, or `PATH_SWITCH` to itself.
    AfterSwitch {
        /// The path.
        path: u32,
    },
    /// [`SessionState::write`] after [`SessionState::finish`].
    WriteAfterFinish,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session protocol error: {self:?}")
    }
}

impl std::error::Error for SessionError {}

/// What an incoming frame means for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received<'p> {
    /// Nothing to hand on (an `ACK`, a `RESUME`, an all-duplicate `DATA`).
    Nothing,
    /// New in-order application bytes (a suffix of the frame's payload): they
    /// count as received from now on; the driver must hand them to the application.
    Data(&'p [u8]),
    /// The peer's stream ended; every byte before it was delivered. Returned once.
    EndOfStream,
    /// The peer sent `PATH_SWITCH` on `from`: it sends nothing more there.
    PeerSwitched {
        /// The path the frame arrived on.
        from: u32,
        /// The path the peer uses now.
        to: u32,
    },
    /// A frame the session state does not interpret (`CANDIDATES`, `PUNCH`,
    /// `KEEPALIVE`, `KEEPALIVE_ACK`, `CLOSE`): the driver's business.
    Control(Frame<'p>),
}

#[derive(Clone, Debug)]
struct PathEntry {
    id: u32,
    /// `received` in the `RESUME` this side sent on the path.
    our_resume: u64,
    /// Peer's `RESUME` has arrived.
    peer_resumed: bool,
    /// Lowest offset the peer's next `DATA` on this path may start at: this
    /// side's `RESUME` offset, then the end of the previous `DATA`.
    recv_next: u64,
    /// Highest `RESUME`/`ACK` offset the peer sent on this path.
    last_ack: u64,
    /// The peer sent `PATH_SWITCH` on this path.
    peer_switched: bool,
    /// This side switched away (and queued or sent `PATH_SWITCH` here).
    we_switched: bool,
}

/// The session layer's state: replay buffer, offsets, path bookkeeping.
///
/// Offsets: the application's bytes are numbered from 0. The `FIN` takes one
/// position after the last byte (like TCP's, RFC 9293 §3.4), so `received =
/// final length + 1` acknowledges the end of stream.
///
/// Send side: `acked ≤ sent ≤ written`; the replay buffer holds
/// `[min(acked, written), written)`, never more than `replay_capacity` bytes.
/// Receive side: `expected` is the next in-order byte; new bytes are returned by
/// [`SessionState::handle_frame`] and never buffered here (backpressure: the
/// driver stops reading the path while the application does not consume).
#[derive(Debug)]
pub struct SessionState {
    config: SessionConfig,
    // send side
    replay: VecDeque<u8>,
    /// Stream offset of `replay[0]`.
    replay_base: u64,
    acked: u64,
    sent: u64,
    /// Highest offset ever sent on any path (FIN counted as one).
    max_sent: u64,
    written: u64,
    fin: Option<u64>,
    fin_sent: bool,
    // receive side
    expected: u64,
    peer_fin: Option<u64>,
    peer_fin_delivered: bool,
    last_ack_sent: u64,
    ack_forced: bool,
    /// Highest offset this side acknowledges (the receive window, §3.2).
    ack_limit: u64,
    // paths
    paths: Vec<PathEntry>,
    active: Option<u32>,
    /// `(old path, new path)`: a `PATH_SWITCH` to send on the old path.
    pending_switch: Option<(u32, u32)>,
}

impl SessionState {
    /// A new session; no path is open yet.
    pub fn new(config: SessionConfig) -> Self {
        let config = SessionConfig {
            replay_capacity: config.replay_capacity.max(1),
            ack_every: config.ack_every.max(1),
        };
        SessionState {
            config,
            replay: VecDeque::new(),
            replay_base: 0,
            acked: 0,
            sent: 0,
            max_sent: 0,
            written: 0,
            fin: None,
            fin_sent: false,
            expected: 0,
            peer_fin: None,
            peer_fin_delivered: false,
            last_ack_sent: 0,
            ack_forced: false,
            ack_limit: u64::MAX,
            paths: Vec::new(),
            active: None,
            pending_switch: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> SessionConfig {
        self.config
    }

    // ----- paths ---------------------------------------------------------

    /// A new path is established (its transport and e2e TLS are up). Returns the
    /// `RESUME` frame the driver MUST send first on it. Sending continues on the
    /// current path until the peer's `RESUME` arrives on this one.
    pub fn open_path(&mut self, path_id: u32) -> Result<Frame<'static>, SessionError> {
        let received = self.received();
        self.open_path_at(path_id, received)?;
        //= spec/direct.md#DI-RESUME-1
        //# `path_id` MUST be the id of the path it is sent on.
        Ok(Frame::Resume { path_id, received })
    }

    /// [`SessionState::open_path`] for a path whose `RESUME(received)` this
    /// side already sent before it knew the path's id (the guest's early
    /// `RESUME` on a direct connection, [`PROVISIONAL_PATH`]). `received`
    /// MUST be what that frame said (at most [`SessionState::received`]
    /// now); bytes the peer resends below what arrived since are trimmed.
    pub fn open_path_at(&mut self, path_id: u32, received: u64) -> Result<(), SessionError> {
        if received > self.received() {
            return Err(SessionError::ResumeAhead {
                received,
                have: self.received(),
            });
        }
        if path_id == PROVISIONAL_PATH {
            return Err(SessionError::ReservedPath);
        }
        if self.path(path_id).is_some() {
            return Err(SessionError::DuplicatePath(path_id));
        }
        if self.paths.len() >= MAX_PATHS {
            return Err(SessionError::TooManyPaths);
        }
        self.paths.push(PathEntry {
            id: path_id,
            our_resume: received,
            peer_resumed: false,
            recv_next: received,
            last_ack: 0,
            peer_switched: false,
            we_switched: false,
        });
        // The RESUME does not count as an ACK here: the new path may die before
        // the peer reads it, while the old path stays active.
        Ok(())
    }

    /// The path is gone (closed, failed or retired). Unacknowledged bytes stay
    /// in the replay buffer for the next path. Unknown ids are ignored.
    pub fn close_path(&mut self, path_id: u32) {
        self.paths.retain(|p| p.id != path_id);
        if self.active == Some(path_id) {
            self.active = None;
        }
        if matches!(self.pending_switch, Some((old, _)) if old == path_id) {
            self.pending_switch = None;
        }
    }

    /// The path this side sends on (None before the first peer `RESUME`, or
    /// after the active path closed until the next one resumes).
    pub fn active_path(&self) -> Option<u32> {
        self.active
    }

    /// Both sides have sent `PATH_SWITCH` on this path: nothing more travels on
    /// it in either direction once the pending frames are written, so the
    /// driver may close it.
    pub fn path_retired(&self, path_id: u32) -> bool {
        self.path(path_id)
            .is_some_and(|p| p.peer_switched && p.we_switched)
            && !matches!(self.pending_switch, Some((old, _)) if old == path_id)
    }

    /// Ids of the open paths.
    pub fn paths(&self) -> impl Iterator<Item = u32> + '_ {
        self.paths.iter().map(|p| p.id)
    }

    fn path(&self, id: u32) -> Option<&PathEntry> {
        self.paths.iter().find(|p| p.id == id)
    }

    fn path_mut(&mut self, id: u32) -> Result<&mut PathEntry, SessionError> {
        self.paths
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or(SessionError::UnknownPath(id))
    }

    // ----- send side -----------------------------------------------------

    /// Accept application bytes into the replay buffer, as many as fit; returns
    /// how many (0 when full: wait for the peer's `ACK`).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, SessionError> {
        if self.fin.is_some() {
            return Err(SessionError::WriteAfterFinish);
        }
        let n = data.len().min(self.free_space());
        self.replay.extend(data.iter().take(n));
        self.written += n as u64;
        Ok(n)
    }

    /// Free bytes in the replay buffer.
    pub fn free_space(&self) -> usize {
        self.config
            .replay_capacity
            .saturating_sub(self.replay.len())
    }

    /// Bytes held in the replay buffer (≤ `replay_capacity`).
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }

    /// [`SessionState::finish`] was called: no more application bytes.
    pub fn finishing(&self) -> bool {
        self.fin.is_some()
    }

    /// End the application's stream after the bytes written so far (idempotent).
    pub fn finish(&mut self) {
        if self.fin.is_none() {
            self.fin = Some(self.written);
        }
    }

    /// Offset of the next application byte to be written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Next offset to send on the active path.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The peer's cumulative acknowledgement (FIN counted as one).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The peer acknowledged this side's `FIN`: every byte was received.
    pub fn fin_acked(&self) -> bool {
        self.fin.is_some_and(|f| self.acked > f)
    }

    /// The next `DATA` for the active path: up to `max_len` (and
    /// [`MAX_DATA`]) bytes from `sent`. May be shorter than available when the
    /// replay buffer wraps; call again. Marks the bytes sent.
    pub fn poll_data(&mut self, max_len: usize) -> Option<(u64, &[u8])> {
        if !self.can_send() || self.sent >= self.written || max_len == 0 {
            return None;
        }
        let idx = usize::try_from(self.sent.checked_sub(self.replay_base)?).ok()?;
        let (a, b) = self.replay.as_slices();
        let s = match a.get(idx..) {
            Some(s) if !s.is_empty() => s,
            _ => b.get(idx.checked_sub(a.len())?..)?,
        };
        let n = s.len().min(max_len).min(MAX_DATA);
        let chunk = s.get(..n).filter(|c| !c.is_empty())?;
        let offset = self.sent;
        self.sent += n as u64;
        self.max_sent = self.max_sent.max(self.sent);
        Some((offset, chunk))
    }

    /// The `FIN` offset, once all data is sent and the `FIN` is due on the active
    /// path (again after a resume if it was not acknowledged). Marks it sent.
    pub fn poll_fin(&mut self) -> Option<u64> {
        let f = self.fin?;
        if self.fin_sent || !self.can_send() || self.sent < f || self.acked > f {
            return None;
        }
        self.fin_sent = true;
        self.max_sent = self.max_sent.max(f.saturating_add(1));
        Some(f)
    }

    fn can_send(&self) -> bool {
        self.active.is_some()
    }

    /// The next frame to send and the path to send it on: a pending
    /// `PATH_SWITCH` (on the old path), then `ACK`, `DATA` (≤ `max_data`
    /// payload bytes), `FIN`. None when there is nothing to send.
    pub fn poll_transmit(&mut self, max_data: usize) -> Option<(u32, Frame<'_>)> {
        if let Some((old, new)) = self.pending_switch.take() {
            return Some((old, Frame::PathSwitch { path_id: new }));
        }
        let path = self.active?;
        if let Some(received) = self.poll_ack() {
            return Some((path, Frame::Ack { received }));
        }
        if self.sent < self.written {
            return self
                .poll_data(max_data)
                .map(|(offset, payload)| (path, Frame::Data { offset, payload }));
        }
        self.poll_fin().map(|offset| (path, Frame::Fin { offset }))
    }

    fn apply_ack(&mut self, received: u64) {
        if received <= self.acked {
            return;
        }
        self.acked = received;
        let to = received.min(self.written);
        let free = usize::try_from(to.saturating_sub(self.replay_base)).unwrap_or(usize::MAX);
        self.replay.drain(..free.min(self.replay.len()));
        self.replay_base = to;
        self.sent = self.sent.max(to);
    }

    // ----- receive side --------------------------------------------------

    /// Next in-order application byte expected from the peer.
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// The cumulative offset this side acknowledges: `expected`, plus one once
    /// the peer's `FIN` was delivered.
    pub fn received(&self) -> u64 {
        self.expected
            .saturating_add(u64::from(self.peer_fin_delivered))
    }

    /// The peer's end of stream was delivered.
    pub fn peer_finished(&self) -> bool {
        self.peer_fin_delivered
    }

    /// Both directions are complete: this side's `FIN` is acknowledged and the
    /// peer's was delivered. The driver may close the session.
    pub fn is_complete(&self) -> bool {
        self.fin_acked() && self.peer_fin_delivered
    }

    /// Acknowledge no data beyond `limit` (the receive window's right edge,
    /// `spec/direct.md` §3.2): bytes beyond it were received but the
    /// application has not made room for them, so the peer's replay buffer
    /// keeps them. The end of stream is acknowledged with the last byte.
    /// Default: no limit.
    pub fn set_ack_limit(&mut self, limit: u64) {
        self.ack_limit = limit;
    }

    /// The limit set by [`SessionState::set_ack_limit`].
    pub fn ack_limit(&self) -> u64 {
        self.ack_limit
    }

    /// What an `ACK` may say now: `received`, or the window's edge.
    fn ackable(&self) -> u64 {
        if self.expected <= self.ack_limit {
            self.received()
        } else {
            self.ack_limit
        }
    }

    /// Ask for an `ACK` at the next [`SessionState::poll_ack`] if anything new
    /// arrived (the driver's idle timer, e.g. 100 ms).
    pub fn force_ack(&mut self) {
        self.ack_forced = true;
    }

    /// `Some(received)` when an `ACK` is due on the active path: `ack_every` new
    /// bytes since the last `ACK`, the peer's `FIN` delivered, or
    /// [`SessionState::force_ack`] called, and something new to acknowledge.
    pub fn poll_ack(&mut self) -> Option<u64> {
        self.active?;
        let r = self.ackable();
        let new = r.saturating_sub(self.last_ack_sent);
        if new == 0 {
            self.ack_forced = false;
            return None;
        }
        let fin_news = self.peer_fin_delivered && r == self.received() && r > self.last_ack_sent;
        if new >= self.config.ack_every || self.ack_forced || fin_news {
            self.ack_forced = false;
            self.last_ack_sent = r;
            return Some(r);
        }
        None
    }

    /// Process one frame that arrived on `path`.
    pub fn handle_frame<'p>(
        &mut self,
        path: u32,
        frame: Frame<'p>,
    ) -> Result<Received<'p>, SessionError> {
        let entry = self.path_mut(path)?;
        if entry.peer_switched {
            return Err(SessionError::AfterSwitch { path });
        }
        if !entry.peer_resumed {
            return match frame {
                Frame::Resume { path_id, received } => {
                    self.on_resume(path, path_id, received)?;
                    Ok(Received::Nothing)
                }
                //= spec/direct.md#DI-RECV-1
                //# The first frame on P MUST be `RESUME` with `path_id` = P (`NoResume`,
                //# `ResumePathMismatch`)
                _ => Err(SessionError::NoResume { path }),
            };
        }
        match frame {
            Frame::Resume { .. } => Err(SessionError::DuplicateResume { path }),
            Frame::Data { offset, payload } => self.on_data(path, offset, payload).map(|d| {
                if d.is_empty() {
                    Received::Nothing
                } else {
                    Received::Data(d)
                }
            }),
            Frame::Ack { received } => {
                self.on_ack(path, received)?;
                Ok(Received::Nothing)
            }
            Frame::Fin { offset } => self.on_fin(path, offset),
            Frame::PathSwitch { path_id } => {
                if path_id == path {
                    return Err(SessionError::AfterSwitch { path });
                }
                self.path_mut(path)?.peer_switched = true;
                Ok(Received::PeerSwitched {
                    from: path,
                    to: path_id,
                })
            }
            other => Ok(Received::Control(other)),
        }
    }

    /// The peer's `RESUME` on `path` (normally via [`SessionState::handle_frame`]).
    fn on_resume(&mut self, path: u32, claimed: u32, received: u64) -> Result<(), SessionError> {
        //= spec/direct.md#DI-RESUME-1
        if claimed != path {
            return Err(SessionError::ResumePathMismatch { path, claimed });
        }
        if received > self.max_sent {
            return Err(SessionError::ResumeOutOfRange {
                received,
                sent: self.max_sent,
            });
        }
        // Path ids grow with time (spec/direct.md §4.6): a RESUME for a path
        // older than the active one arrived late (the relay path's first
        // RESUME, say, overtaken by a faster direct path). The path is open
        // and its ACK counts, but it does not take the sending back.
        let takes_over = self.active.is_none_or(|a| path > a);
        let entry = self.path_mut(path)?;
        entry.peer_resumed = true;
        entry.last_ack = received;
        if !takes_over {
            self.apply_ack(received);
            return Ok(());
        }
        // ACKs sent on the old path may die with it; what the peer surely learns
        // is the RESUME this side sent on the new one. Acknowledge again from there.
        let our_resume = entry.our_resume;
        self.last_ack_sent = our_resume;
        // A RESUME below `acked` is stale (an ACK sent after it overtook it on the
        // old path); the bytes below `acked` are gone, and the peer has them.
        self.apply_ack(received);
        self.sent = self.acked.min(self.written);
        if self.fin.is_some_and(|f| self.acked <= f) {
            self.fin_sent = false;
        }
        if let Some(old) = self.active.filter(|&old| old != path) {
            if let Ok(p) = self.path_mut(old) {
                p.we_switched = true;
                self.pending_switch = Some((old, path));
            }
        }
        //= spec/direct.md#DI-SEND-1
        //# A side MUST NOT send `DATA`, `ACK` or `FIN` on a path before the peer's `RESUME`
        //# arrived on it; until then it keeps using the previous active path.
        self.active = Some(path);
        Ok(())
    }

    /// The peer's `ACK` on `path`.
    fn on_ack(&mut self, path: u32, received: u64) -> Result<(), SessionError> {
        let max_sent = self.max_sent;
        let entry = self.path_mut(path)?;
        if received < entry.last_ack {
            return Err(SessionError::AckBackwards {
                path,
                received,
                previous: entry.last_ack,
            });
        }
        if received > max_sent {
            return Err(SessionError::AckBeyondSent {
                received,
                sent: max_sent,
            });
        }
        entry.last_ack = received;
        self.apply_ack(received);
        Ok(())
    }

    /// The peer's `DATA` on `path`: returns the new in-order suffix of `payload`.
    fn on_data<'p>(
        &mut self,
        path: u32,
        offset: u64,
        payload: &'p [u8],
    ) -> Result<&'p [u8], SessionError> {
        let end = offset
            //= spec/direct.md#DI-DATA-1
            //# `offset + n` MUST NOT exceed 2^64 − 1.
            .checked_add(payload.len() as u64)
            .ok_or(SessionError::DataBeyondFin {
                fin: u64::MAX,
                end: u64::MAX,
            })?;
        if let Some(fin) = self.peer_fin.filter(|&f| end > f) {
            return Err(SessionError::DataBeyondFin { fin, end });
        }
        let expected = self.expected;
        let entry = self.path_mut(path)?;
        if offset < entry.recv_next {
            return Err(SessionError::PathOutOfOrder {
                path,
                expected: entry.recv_next,
                offset,
            });
        }
        if offset > expected {
            return Err(SessionError::Gap { expected, offset });
        }
        entry.recv_next = end;
        if end <= expected {
            return Ok(&[]);
        }
        let skip = usize::try_from(expected - offset).unwrap_or(usize::MAX);
        let fresh = payload.get(skip..).unwrap_or_default();
        self.expected = end;
        Ok(fresh)
    }

    /// The peer's `FIN` on `path`.
    fn on_fin(&mut self, path: u32, offset: u64) -> Result<Received<'static>, SessionError> {
        if let Some(fin) = self.peer_fin.filter(|&f| f != offset) {
            return Err(SessionError::FinMismatch { fin, offset });
        }
        let expected = self.expected;
        if offset > expected {
            return Err(SessionError::Gap { expected, offset });
        }
        if offset < expected {
            return Err(SessionError::FinBelowData { offset, expected });
        }
        let entry = self.path_mut(path)?;
        if offset < entry.recv_next {
            return Err(SessionError::PathOutOfOrder {
                path,
                expected: entry.recv_next,
                offset,
            });
        }
        self.peer_fin = Some(offset);
        if self.peer_fin_delivered {
            return Ok(Received::Nothing);
        }
        self.peer_fin_delivered = true;
        Ok(Received::EndOfStream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::registry::session::{ACK as T_ACK, FIN as T_FIN};

    fn enc(f: &Frame<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        encode(f, &mut v).unwrap();
        v
    }

    #[test]
    fn data_vector_and_roundtrip() {
        let f = Frame::Data {
            offset: 0x0102,
            payload: b"hi",
        };
        let b = enc(&f);
        assert_eq!(b, [1, 0, 10, 0, 0, 0, 0, 0, 0, 1, 2, b'h', b'i']);
        assert_eq!(Frame::parse(&b), Ok((f, 13)));
    }

    #[test]
    fn decoder_byte_by_byte() {
        let mut stream = enc(&Frame::Ack { received: 7 });
        stream.extend(enc(&Frame::Fin { offset: 9 }));
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &stream {
            let mut input: &[u8] = core::slice::from_ref(b);
            while let Some(f) = dec.decode(&mut input).unwrap() {
                got.push(f.clone().frame_type());
            }
        }
        assert_eq!(got, [T_ACK, T_FIN]);
        assert_eq!(dec.finish(), Ok(()));
    }
}
