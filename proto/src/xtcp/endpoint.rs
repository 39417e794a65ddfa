//! The XTCP endpoint: one UDP socket's worth of connections.
//!
//! It routes datagrams to connections by their 64-bit connection id (not by
//! address, so a connection survives a NAT rebinding), accepts new connections
//! when listening, answers strays with RST, and resists SYN floods: half-open
//! state is bounded, and past that bound SYN-ACKs carry a SYN cookie
//! (RFC 4987 §3.6) so no state is kept until the handshake completes.
//!
//! Like [`Connection`], it is sans-IO: the caller passes datagrams and time in
//! and drains `poll_transmit` / `poll_timeout`. Randomness comes from the
//! 32-byte secret the caller supplies (from its CSPRNG); connection ids, ISNs
//! (RFC 6528) and cookies are keyed PRF outputs of it.

use crate::time::Instant;
use crate::xtcp::conn::{Config, Connection, ConnectionParams, Event, State, Transmit};
use crate::xtcp::seq::SeqNumber;
use crate::xtcp::wire::{SegmentRepr, TcpFlags, TcpOptions, WireError, XtcpFlags};
use ring::hmac;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

/// Index of a connection inside its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub usize);

/// Endpoint configuration.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Configuration given to every connection.
    pub conn: Arc<Config>,
    /// Accept incoming connections.
    pub listen: bool,
    /// Local port written into segments (informational; XTCP routes by connection id).
    pub local_port: u16,
    /// Half-open (SYN-RECEIVED) connections kept with state; beyond this, SYN cookies.
    pub max_half_open: usize,
    /// Most connections at once (new SYNs beyond it are answered with RST).
    pub max_connections: usize,
    /// Accepted connections waiting for `accept` at most.
    pub accept_backlog: usize,
    /// Always answer SYNs with cookies (for tests; normally only under pressure).
    pub always_cookie: bool,
    /// Datagrams `poll_transmit` takes from one connection in a row before
    /// the next ready connection's turn (at least 1). Runs of one
    /// connection's datagrams go to one destination, so a runtime can send
    /// them as one UDP GSO batch; the turns keep connections fair.
    pub tx_burst: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            conn: Arc::new(Config::default()),
            listen: false,
            local_port: 0,
            max_half_open: 1024,
            max_connections: 65_536,
            accept_backlog: 1024,
            always_cookie: false,
            tx_burst: 16,
        }
    }
}

/// Options recovered from a SYN cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieOptions {
    /// MSS the peer's SYN announced, rounded down to one of 8 encodable values (RFC 4987 §3.6).
    pub mss: u16,
    /// The peer's window scale shift (RFC 7323 §2), kept in our TSval's low bits; `None` if not offered or no timestamps.
    pub wscale: Option<u8>,
    /// The peer offered SACK (RFC 2018 §2), kept in our TSval; `false` without timestamps.
    pub sack: bool,
}

/// MSS values a cookie can encode in 3 bits (RFC 4987 §3.6).
const COOKIE_MSS: [u16; 8] = [536, 1200, 1220, 1360, 1400, 1420, 1428, 1440];
/// Stateless replies queued at most (RSTs, cookie SYN-ACKs); beyond, dropped.
const MAX_STATELESS: usize = 4096;
/// Cookie time slot length in seconds (RFC 4987 §3.6: a slowly incrementing counter).
const COOKIE_SLOT_SECS: u64 = 64;

/// Endpoint counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams handed to [`Endpoint::handle_datagram`].
    pub datagrams_in: u64,
    /// Datagrams that failed to parse (a [`WireError`]) and were dropped.
    pub malformed: u64,
    /// Datagrams for no live connection (unknown or CLOSED connection id).
    pub unknown_conn: u64,
    /// Stateless RSTs queued for segments no connection accepts (RFC 9293 §3.10.7.1).
    pub resets_sent: u64,
    /// SYN-ACKs sent with a SYN cookie instead of half-open state (RFC 4987 §3.6).
    pub cookies_sent: u64,
    /// ACKs that carried a valid cookie and created a connection.
    pub cookies_accepted: u64,
    /// ACKs for no connection whose cookie was stale or forged (dropped, not reset).
    pub cookies_rejected: u64,
    /// Connections queued for [`Endpoint::accept`].
    pub accepted: u64,
    /// SYNs refused or dropped because `max_connections` or `accept_backlog` was reached.
    pub refused_full: u64,
}

/// See the module documentation.
pub struct Endpoint {
    cfg: EndpointConfig,
    key: hmac::Key,
    counter: u64,
    slots: Vec<Option<Connection>>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
    accept_queue: VecDeque<ConnectionHandle>,
    /// Per slot: accepted but not yet established (joins the queue on `Connected`).
    pending: Vec<bool>,
    /// Number of `true` entries in `pending` (half-open connections with state).
    half_open: usize,
    /// Per slot: in `accept_queue` (so `reap` never scans the queue).
    queued: Vec<bool>,
    /// When the last SYN cookie went out: while cookies may be in flight, an
    /// ACK that fails the cookie check is dropped, not reset (its connection's
    /// first segment may have been lost, and a retransmission will pass).
    last_cookie: Option<Instant>,
    /// Slots whose connection may have drained (checked by `reap`).
    maybe_dead: Vec<usize>,
    stateless: VecDeque<(SocketAddr, Vec<u8>)>,
    stats: EndpointStats,
    /// Connections that may have a datagram to send (round robin, in turns
    /// of up to `tx_burst` datagrams: the front one is in its turn).
    ready: VecDeque<usize>,
    /// Datagrams the front of `ready` has sent in its current turn.
    turn_sent: usize,
    in_ready: Vec<bool>,
    /// Timer heap with lazy invalidation: an entry counts only while it equals
    /// `timer_at[idx]`, the connection's current `poll_timeout`.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    timer_at: Vec<Option<Instant>>,
    /// Connections handed out by `connection_mut` since the last endpoint call:
    /// their timers and sends are re-examined before the next one.
    dirty: Vec<usize>,
    /// Connections that got input since `take_touched` (for the runtime's wake-ups).
    touched: Vec<usize>,
    in_touched: Vec<bool>,
}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("connections", &self.by_id.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A new endpoint; `secret` must come from a CSPRNG.
    pub fn new(cfg: EndpointConfig, secret: [u8; 32]) -> Self {
        Endpoint {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            cfg,
            counter: 0,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            accept_queue: VecDeque::new(),
            pending: Vec::new(),
            half_open: 0,
            queued: Vec::new(),
            last_cookie: None,
            maybe_dead: Vec::new(),
            stateless: VecDeque::new(),
            stats: EndpointStats::default(),
            ready: VecDeque::new(),
            turn_sent: 0,
            in_ready: Vec::new(),
            timers: BinaryHeap::new(),
            timer_at: Vec::new(),
            dirty: Vec::new(),
            touched: Vec::new(),
            in_touched: Vec::new(),
        }
    }

    /// The configuration this endpoint was created with.
    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }
    /// A copy of the endpoint counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }
    /// Live connections (any state but drained CLOSED).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
    /// True if no connection is live.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
    /// Handshake-incomplete connections held with state.
    pub fn half_open(&self) -> usize {
        self.half_open
    }

    fn set_pending(&mut self, idx: usize, on: bool) {
        if let Some(p) = self.pending.get_mut(idx) {
            if *p != on {
                *p = on;
                if on {
                    self.half_open += 1;
                } else {
                    self.half_open -= 1;
                }
            }
        }
    }

    fn prf(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for p in parts {
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn prf_u64(&self, parts: &[&[u8]]) -> u64 {
        let b = self.prf(parts);
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    fn addr_bytes(a: &SocketAddr) -> [u8; 18] {
        let mut out = [0u8; 18];
        match a {
            SocketAddr::V4(v4) => out[..4].copy_from_slice(&v4.ip().octets()),
            SocketAddr::V6(v6) => out[..16].copy_from_slice(&v6.ip().octets()),
        }
        out[16..].copy_from_slice(&a.port().to_be_bytes());
        out
    }

    /// RFC 6528 §3: ISN = M + F(connection identity, secret), M a 4 µs clock.
    fn isn(&self, now: Instant, remote: &SocketAddr, conn_id: u64) -> SeqNumber {
        let f = self.prf_u64(&[b"isn", &Self::addr_bytes(remote), &conn_id.to_be_bytes()]);
        SeqNumber(((now.as_micros() / 4) as u32).wrapping_add(f as u32))
    }

    fn ts_offset(&self, remote: &SocketAddr, conn_id: u64) -> u32 {
        // RFC 7323 §5.4: a per-connection random timestamp offset.
        self.prf_u64(&[b"ts", &Self::addr_bytes(remote), &conn_id.to_be_bytes()]) as u32
    }

    /// The key of a connection's path challenge tokens (spec/xtcp.md §8.2):
    /// a PRF of the endpoint secret, so unpredictable to anyone without it,
    /// and distinct per connection (the ISS carries the clock).
    fn path_secret(&self, remote: &SocketAddr, conn_id: u64, iss: SeqNumber) -> [u8; 32] {
        self.prf(&[
            b"path",
            &Self::addr_bytes(remote),
            &conn_id.to_be_bytes(),
            &iss.0.to_be_bytes(),
        ])
    }

    fn insert(&mut self, conn: Connection) -> usize {
        let id = conn.conn_id();
        let idx = match self.free.pop() {
            Some(i) => {
                if let Some(slot) = self.slots.get_mut(i) {
                    *slot = Some(conn);
                }
                i
            }
            None => {
                self.slots.push(Some(conn));
                self.in_ready.push(false);
                self.timer_at.push(None);
                self.in_touched.push(false);
                self.pending.push(false);
                self.queued.push(false);
                self.slots.len() - 1
            }
        };
        if let Some(t) = self.timer_at.get_mut(idx) {
            *t = None;
        }
        self.touch(idx);
        self.by_id.insert(id, idx);
        idx
    }

    /// Open a connection to `remote` (active open). Its SYN goes out at the next `poll_transmit`.
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> ConnectionHandle {
        let conn_id = loop {
            self.counter += 1;
            let id = self.prf_u64(&[b"cid", &self.counter.to_be_bytes()]);
            if id != 0 && !self.by_id.contains_key(&id) {
                break id;
            }
        };
        let iss = self.isn(now, &remote, conn_id);
        let params = ConnectionParams {
            conn_id,
            iss,
            ts_offset: self.ts_offset(&remote, conn_id),
            local_port: self.cfg.local_port,
            remote_port: remote.port(),
            remote,
            path_secret: self.path_secret(&remote, conn_id, iss),
        };
        let conn = Connection::connect(self.cfg.conn.clone(), now, params);
        ConnectionHandle(self.insert(conn))
    }

    /// The connection behind `h`, or `None` once it was removed.
    pub fn connection(&self, h: ConnectionHandle) -> Option<&Connection> {
        self.slots.get(h.0).and_then(|s| s.as_ref())
    }

    /// Mutable access (API calls). The connection is re-examined for sends
    /// and timers at the next endpoint call.
    pub fn connection_mut(&mut self, h: ConnectionHandle) -> Option<&mut Connection> {
        if matches!(self.slots.get(h.0), Some(Some(_))) {
            self.dirty.push(h.0);
        }
        self.slots.get_mut(h.0).and_then(|s| s.as_mut())
    }

    /// Mark a connection as possibly having something to send, refresh its
    /// timer entry and record it as touched. O(log n).
    fn touch(&mut self, idx: usize) {
        let Some(Some(conn)) = self.slots.get(idx) else {
            return;
        };
        let t = conn.poll_timeout();
        if let Some(flag) = self.in_ready.get_mut(idx) {
            if !*flag {
                *flag = true;
                self.ready.push_back(idx);
            }
        }
        if let Some(at) = self.timer_at.get_mut(idx) {
            if *at != t {
                *at = t;
                if let Some(t) = t {
                    self.timers.push(Reverse((t, idx)));
                }
            }
        }
        self.mark_touched(idx);
    }

    fn push_maybe_dead(&mut self, idx: usize) {
        self.maybe_dead.push(idx);
        if self.maybe_dead.len() > 2 * self.slots.len() + 16 {
            // Runtimes that remove connections themselves never call `reap`:
            // keep the list bounded by the number of slots.
            self.maybe_dead.sort_unstable();
            self.maybe_dead.dedup();
        }
    }

    fn mark_touched(&mut self, idx: usize) {
        if let Some(flag) = self.in_touched.get_mut(idx) {
            if !*flag {
                *flag = true;
                self.touched.push(idx);
            }
        }
    }

    fn settle_dirty(&mut self) {
        while let Some(idx) = self.dirty.pop() {
            self.touch(idx);
        }
    }

    /// Connections that received input or API calls since the last call
    /// (so a runtime polls events and wakes tasks only for those).
    pub fn take_touched(&mut self) -> Vec<ConnectionHandle> {
        self.settle_dirty();
        let v: Vec<ConnectionHandle> = self.touched.drain(..).map(ConnectionHandle).collect();
        for h in &v {
            if let Some(f) = self.in_touched.get_mut(h.0) {
                *f = false;
            }
        }
        v
    }

    /// Handles of all live connections.
    pub fn handles(&self) -> impl Iterator<Item = ConnectionHandle> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| ConnectionHandle(i))
    }

    /// The next established incoming connection.
    pub fn accept(&mut self) -> Option<ConnectionHandle> {
        let h = self.accept_queue.pop_front()?;
        if let Some(q) = self.queued.get_mut(h.0) {
            *q = false;
        }
        Some(h)
    }

    /// Process one datagram. Returns the connection it was routed to, if any.
    /// Malformed datagrams are counted and dropped (returned as the error).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<Option<ConnectionHandle>, WireError> {
        self.stats.datagrams_in += 1;
        let seg = match SegmentRepr::parse(datagram) {
            Ok(s) => s,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e);
            }
        };
        if let Some(&idx) = self.by_id.get(&seg.conn_id) {
            if self.answered_by_cookie(now, idx, from, &seg) {
                // The peer completed the handshake on a cookie SYN-ACK sent
                // before this half-open state existed (its SYN was
                // retransmitted while the cookie was in flight): the cookie's
                // ISN wins, the half-open state goes.
                self.remove(ConnectionHandle(idx));
                self.stats.unknown_conn += 1;
                return Ok(self.handle_unknown(now, from, &seg));
            }
            if let Some(Some(conn)) = self.slots.get_mut(idx) {
                // A CLOSED connection not yet reaped answers like an unknown one.
                if conn.state() != State::Closed {
                    conn.handle_segment(now, from, &seg);
                    self.after_conn_input(idx);
                    return Ok(Some(ConnectionHandle(idx)));
                }
            }
            if !seg.flags.syn() || seg.flags.ack() {
                self.send_reset(from, &seg);
                return Ok(None);
            }
        }
        self.stats.unknown_conn += 1;
        Ok(self.handle_unknown(now, from, &seg))
    }

    /// Whether `seg`, routed to half-open connection `idx`, is an ACK of a
    /// SYN cookie instead (only while cookies may be in flight).
    fn answered_by_cookie(
        &self,
        now: Instant,
        idx: usize,
        from: SocketAddr,
        seg: &SegmentRepr<'_>,
    ) -> bool {
        let recent = self
            .last_cookie
            .is_some_and(|t| now.saturating_duration_since(t).as_secs() < 2 * COOKIE_SLOT_SECS);
        recent
            && self.pending.get(idx).copied().unwrap_or(false)
            && seg.flags.ack()
            && !seg.flags.syn()
            && !seg.flags.rst()
            && matches!(self.slots.get(idx), Some(Some(c)) if c.state() == State::SynReceived)
            && self.check_cookie(now, from, seg).is_some()
    }

    fn after_conn_input(&mut self, idx: usize) {
        self.touch(idx);
        let st = self
            .slots
            .get(idx)
            .and_then(|s| s.as_ref())
            .map(|c| (c.state(), c.is_drained()));
        if matches!(st, Some((_, true))) {
            self.push_maybe_dead(idx);
        }
        // Move newly established incoming connections to the accept queue (O(1)).
        if self.pending.get(idx).copied().unwrap_or(false) {
            match st {
                Some((State::SynReceived, _)) | Some((State::Listen, _)) => {}
                Some((State::Closed, _)) | None => {
                    // Never handed to the application: forget it at once.
                    self.set_pending(idx, false);
                    if let Some(slot) = self.slots.get_mut(idx) {
                        if let Some(c) = slot.take() {
                            self.by_id.remove(&c.conn_id());
                            self.forget(idx);
                            self.free.push(idx);
                        }
                    }
                }
                Some(_) => {
                    self.set_pending(idx, false);
                    self.push_accept(idx);
                }
            }
        }
    }

    /// A slot was emptied: its queue entries become stale (skipped lazily).
    fn forget(&mut self, idx: usize) {
        if let Some(at) = self.timer_at.get_mut(idx) {
            *at = None;
        }
        if let Some(f) = self.in_ready.get_mut(idx) {
            *f = false;
        }
        // A stale index left in `ready` is skipped (or finds a new connection
        // with nothing to send): no O(n) removal here.
    }

    fn push_accept(&mut self, idx: usize) {
        self.stats.accepted += 1;
        if let Some(q) = self.queued.get_mut(idx) {
            *q = true;
        }
        self.accept_queue.push_back(ConnectionHandle(idx));
    }

    fn handle_unknown(
        &mut self,
        now: Instant,
        from: SocketAddr,
        seg: &SegmentRepr<'_>,
    ) -> Option<ConnectionHandle> {
        let f = seg.flags;
        if f.rst() {
            return None; // RFC 9293 §3.10.7.1: never answer a RST.
        }
        if f.syn() && !f.ack() {
            if !self.cfg.listen {
                self.send_reset(from, seg);
                return None;
            }
            if self.by_id.len() >= self.cfg.max_connections {
                self.stats.refused_full += 1;
                self.send_reset(from, seg);
                return None;
            }
            if self.accept_queue.len() >= self.cfg.accept_backlog {
                // A full accept queue is transient: drop the SYN so the peer
                // retransmits it later (as Linux does), rather than refuse.
                self.stats.refused_full += 1;
                return None;
            }
            if self.cfg.always_cookie || self.half_open >= self.cfg.max_half_open {
                self.last_cookie = Some(now);
                self.send_cookie_synack(now, from, seg);
                return None;
            }
            let params = self.params_for(now, from, seg);
            let mut conn = Connection::listen(self.cfg.conn.clone(), now, params);
            conn.handle_segment(now, from, seg);
            let idx = self.insert(conn);
            self.set_pending(idx, true);
            return Some(ConnectionHandle(idx));
        }
        if f.ack() && !f.syn() && self.cfg.listen {
            if let Some(opts) = self.check_cookie(now, from, seg) {
                self.stats.cookies_accepted += 1;
                let mut params = self.params_for(now, from, seg);
                params.iss = seg.ack + u32::MAX; // ISS = SEG.ACK - 1
                let conn = Connection::from_cookie(self.cfg.conn.clone(), now, params, seg, opts);
                let established = conn.state().is_synchronized();
                let idx = self.insert(conn);
                if established {
                    self.push_accept(idx);
                }
                return Some(ConnectionHandle(idx));
            }
            self.stats.cookies_rejected += 1;
            // Cookies may be in flight (sent within their lifetime): this ACK
            // may belong to a connection whose first ACK was lost, so a reset
            // would kill it; drop it and let the peer retransmit the segment
            // the cookie can be checked against (Linux does the same while a
            // listener's SYN queue recently overflowed).
            let recent = self
                .last_cookie
                .is_some_and(|t| now.saturating_duration_since(t).as_secs() < 2 * COOKIE_SLOT_SECS);
            if recent {
                return None;
            }
        }
        self.send_reset(from, seg);
        None
    }

    fn params_for(
        &self,
        now: Instant,
        from: SocketAddr,
        seg: &SegmentRepr<'_>,
    ) -> ConnectionParams {
        let iss = self.isn(now, &from, seg.conn_id);
        ConnectionParams {
            conn_id: seg.conn_id,
            iss,
            ts_offset: self.ts_offset(&from, seg.conn_id),
            local_port: seg.dst_port,
            remote_port: seg.src_port,
            remote: from,
            path_secret: self.path_secret(&from, seg.conn_id, iss),
        }
    }

    fn queue_stateless(&mut self, to: SocketAddr, repr: &SegmentRepr<'_>) {
        if self.stateless.len() >= MAX_STATELESS {
            return;
        }
        let mut buf = vec![0u8; repr.buffer_len()];
        if let Ok(n) = repr.emit(&mut buf) {
            buf.truncate(n);
            self.stateless.push_back((to, buf));
        }
    }

    fn send_reset(&mut self, to: SocketAddr, seg: &SegmentRepr<'_>) {
        if seg.flags.rst() {
            return;
        }
        // RFC 9293 §3.10.7.1.
        let (seq, ack, flags) = if seg.flags.ack() {
            (seg.ack, SeqNumber(0), TcpFlags::RST)
        } else {
            (
                SeqNumber(0),
                seg.seq + seg.segment_len(),
                TcpFlags::RST | TcpFlags::ACK,
            )
        };
        let repr = SegmentRepr {
            xflags: XtcpFlags(0),
            conn_id: seg.conn_id,
            src_port: seg.dst_port,
            dst_port: seg.src_port,
            seq,
            ack,
            flags,
            window: 0,
            options: TcpOptions::default(),
            payload: &[],
        };
        self.stats.resets_sent += 1;
        self.queue_stateless(to, &repr);
    }

    fn cookie_mac(
        &self,
        slot: u32,
        from: &SocketAddr,
        seg_conn: u64,
        peer_isn: SeqNumber,
        mss_idx: u32,
    ) -> u32 {
        let b = self.prf(&[
            b"cookie",
            &slot.to_be_bytes(),
            &Self::addr_bytes(from),
            &seg_conn.to_be_bytes(),
            &peer_isn.0.to_be_bytes(),
            &mss_idx.to_be_bytes(),
        ]);
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    fn cookie_slot(now: Instant) -> u32 {
        (now.as_micros() / 1_000_000 / COOKIE_SLOT_SECS) as u32
    }

    /// RFC 4987 §3.6: ISN = 5-bit time slot | 3-bit MSS index | 24-bit MAC. When
    /// the client uses timestamps, window scale and SACK-permitted ride in the low
    /// 6 bits of our TSval (as Linux does), and come back in its TSecr.
    fn send_cookie_synack(&mut self, now: Instant, from: SocketAddr, seg: &SegmentRepr<'_>) {
        let peer_mss = seg.options.mss.unwrap_or(536);
        let mss_idx = COOKIE_MSS.iter().rposition(|&m| m <= peer_mss).unwrap_or(0) as u32;
        let slot = Self::cookie_slot(now);
        let mac = self.cookie_mac(slot & 0x1f, &from, seg.conn_id, seg.seq, mss_idx);
        let isn = SeqNumber(((slot & 0x1f) << 27) | (mss_idx << 24) | mac);
        let cfg = &self.cfg.conn;
        let mut o = TcpOptions {
            mss: Some(cfg.announced_mss()),
            ..TcpOptions::default()
        };
        if let (Some((tsval, _)), true) = (seg.options.timestamps, cfg.timestamps) {
            let ws_bits = match (seg.options.window_scale, cfg.window_scaling) {
                (Some(s), true) => u32::from(s.min(14)),
                _ => 15,
            };
            let sack_bit = u32::from(seg.options.sack_permitted && cfg.sack);
            let off = self.ts_offset(&from, seg.conn_id);
            let ts = ((now.as_micros() / 1000) as u32).wrapping_add(off);
            let mut enc = (ts & !0x3f) | 0x20 | (sack_bit << 4) | ws_bits;
            // Never ahead of the clock: the peer keeps this TSval as
            // TS.Recent, and a later, smaller TSval of the connection would
            // fail its PAWS check (RFC 7323 §5.3). Linux steps back one
            // 64-tick period the same way (`cookie_init_timestamp`).
            if (enc.wrapping_sub(ts) as i32) > 0 {
                enc = enc.wrapping_sub(64);
            }
            o.timestamps = Some((enc, tsval));
            if ws_bits != 15 {
                o.window_scale = Some(wscale_for(cfg));
            }
            o.sack_permitted = sack_bit == 1;
        }
        let repr = SegmentRepr {
            xflags: XtcpFlags(0),
            conn_id: seg.conn_id,
            src_port: seg.dst_port,
            dst_port: seg.src_port,
            seq: isn,
            ack: seg.seq + 1u32,
            flags: TcpFlags::SYN | TcpFlags::ACK,
            window: cfg.recv_buffer.min(0xffff) as u16,
            options: o,
            payload: &[],
        };
        self.stats.cookies_sent += 1;
        self.queue_stateless(from, &repr);
    }

    fn check_cookie(
        &self,
        now: Instant,
        from: SocketAddr,
        seg: &SegmentRepr<'_>,
    ) -> Option<CookieOptions> {
        let isn = seg.ack.0.wrapping_sub(1);
        let slot = isn >> 27;
        let mss_idx = (isn >> 24) & 0x7;
        let cur = Self::cookie_slot(now);
        // Accept the current and the previous slot (a cookie lives 64-128 s).
        let fresh = slot == cur & 0x1f || slot == cur.wrapping_sub(1) & 0x1f;
        if !fresh {
            return None;
        }
        let peer_isn = seg.seq + u32::MAX; // SEG.SEQ - 1
        let mac = self.cookie_mac(slot, &from, seg.conn_id, peer_isn, mss_idx);
        if mac != isn & 0x00ff_ffff {
            return None;
        }
        let mss = *COOKIE_MSS.get(mss_idx as usize)?;
        let (wscale, sack) = match seg.options.timestamps {
            Some((_, tsecr)) if tsecr & 0x20 != 0 => {
                let ws = (tsecr & 0xf) as u8;
                (if ws == 15 { None } else { Some(ws) }, tsecr & 0x10 != 0)
            }
            _ => (None, false),
        };
        Some(CookieOptions { mss, wscale, sack })
    }

    /// Next datagram to send: stateless replies first, then the connections
    /// that may have something, in turns of up to `tx_burst` datagrams each
    /// (only those: O(1) per datagram).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.settle_dirty();
        if let Some((to, bytes)) = self.stateless.pop_front() {
            let n = bytes.len().min(buf.len());
            buf.get_mut(..n)?.copy_from_slice(bytes.get(..n)?);
            return Some(Transmit {
                destination: to,
                size: n,
            });
        }
        while let Some(idx) = self.ready.pop_front() {
            let t = match self.slots.get_mut(idx) {
                Some(Some(conn)) => conn.poll_transmit(now, buf),
                _ => None,
            };
            match t {
                Some(t) => {
                    // Still ready: it keeps the front until its turn is
                    // over, then goes to the back of the queue.
                    self.turn_sent += 1;
                    if self.turn_sent < self.cfg.tx_burst {
                        self.ready.push_front(idx);
                    } else {
                        self.turn_sent = 0;
                        self.ready.push_back(idx);
                    }
                    self.refresh_timer(idx);
                    return Some(t);
                }
                None => {
                    self.turn_sent = 0;
                    if let Some(f) = self.in_ready.get_mut(idx) {
                        *f = false;
                    }
                    self.refresh_timer(idx);
                    // Drained by its last send (a final RST or ACK): the
                    // runtime hears of it through `take_touched`.
                    if matches!(self.slots.get(idx), Some(Some(c)) if c.is_drained()) {
                        self.mark_touched(idx);
                        self.push_maybe_dead(idx);
                    }
                }
            }
        }
        None
    }

    fn refresh_timer(&mut self, idx: usize) {
        let t = match self.slots.get(idx) {
            Some(Some(c)) => c.poll_timeout(),
            _ => None,
        };
        if let Some(at) = self.timer_at.get_mut(idx) {
            if *at != t {
                *at = t;
                if let Some(t) = t {
                    self.timers.push(Reverse((t, idx)));
                }
            }
        }
    }

    /// Earliest timer of any connection (amortised O(log n)).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.settle_dirty();
        while let Some(&Reverse((t, idx))) = self.timers.peek() {
            let live = matches!(self.slots.get(idx), Some(Some(_)));
            if live && self.timer_at.get(idx).copied().flatten() == Some(t) {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    /// Fire due timers (only the connections whose timer is due).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.settle_dirty();
        while let Some(&Reverse((t, idx))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let live = matches!(self.slots.get(idx), Some(Some(_)));
            if !live || self.timer_at.get(idx).copied().flatten() != Some(t) {
                continue;
            }
            if let Some(at) = self.timer_at.get_mut(idx) {
                *at = None;
            }
            if let Some(Some(c)) = self.slots.get_mut(idx) {
                c.handle_timeout(now);
            }
            self.after_conn_input(idx);
        }
    }

    /// Drain one connection's events.
    pub fn poll_event(&mut self, h: ConnectionHandle) -> Option<Event> {
        self.connection_mut(h)?.poll_event()
    }

    /// Forget drained CLOSED connections whose events were all read. Their
    /// handles become invalid (and may be reused).
    /// Only connections that drained since the last call are examined.
    pub fn reap(&mut self) {
        let mut candidates = std::mem::take(&mut self.maybe_dead);
        candidates.sort_unstable();
        candidates.dedup();
        for i in candidates {
            let queued = self.queued.get(i).copied().unwrap_or(false);
            let (dead, drained) = match self.slots.get(i) {
                Some(Some(c)) => (c.is_drained() && !c.has_events() && !queued, c.is_drained()),
                _ => (false, false),
            };
            if dead {
                self.remove(ConnectionHandle(i));
            } else if drained {
                // Events not read yet, or not accepted yet: look again later.
                self.maybe_dead.push(i);
            }
        }
    }

    /// Remove a connection now (the application is done with it).
    pub fn remove(&mut self, h: ConnectionHandle) -> Option<Connection> {
        let c = self.slots.get_mut(h.0)?.take()?;
        if self.by_id.get(&c.conn_id()) == Some(&h.0) {
            self.by_id.remove(&c.conn_id());
        }
        self.set_pending(h.0, false);
        if let Some(q) = self.queued.get_mut(h.0) {
            if *q {
                *q = false;
                self.accept_queue.retain(|&a| a != h);
            }
        }
        self.forget(h.0);
        self.free.push(h.0);
        Some(c)
    }
}

fn wscale_for(cfg: &Config) -> u8 {
    let mut shift = 0u8;
    while shift < 14 && (cfg.recv_buffer >> shift) > 0xffff {
        shift += 1;
    }
    shift
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn endpoint(listen: bool, tx_burst: usize, key: u8) -> Endpoint {
        Endpoint::new(
            EndpointConfig {
                listen,
                tx_burst,
                ..EndpointConfig::default()
            },
            [key; 32],
        )
    }

    /// Fire due timers, then deliver everything the endpoints send until
    /// they fall silent (no loss, no delay).
    fn pump(now: Instant, a: &mut Endpoint, bs: &mut [(SocketAddr, Endpoint)], a_addr: SocketAddr) {
        let mut buf = [0u8; 2048];
        a.handle_timeout(now);
        for (_, b) in bs.iter_mut() {
            b.handle_timeout(now);
        }
        for _ in 0..50 {
            let mut quiet = true;
            while let Some(t) = a.poll_transmit(now, &mut buf) {
                quiet = false;
                if let Some((_, b)) = bs.iter_mut().find(|(at, _)| *at == t.destination) {
                    let _ = b.handle_datagram(now, a_addr, &buf[..t.size]);
                }
            }
            for (at, b) in bs.iter_mut() {
                while let Some(t) = b.poll_transmit(now, &mut buf) {
                    quiet = false;
                    let _ = a.handle_datagram(now, *at, &buf[..t.size]);
                }
            }
            if quiet {
                return;
            }
        }
    }

    /// Destinations of the datagrams `a` sends after both of its connections
    /// were given 64 KiB, as runs: (destination, datagrams in a row).
    fn runs_after_writes(tx_burst: usize) -> Vec<(SocketAddr, usize)> {
        let now = Instant::from_micros(1_000);
        let a_addr = addr(1);
        let mut a = endpoint(false, tx_burst, 1);
        let mut bs = vec![
            (addr(2), endpoint(true, 16, 2)),
            (addr(3), endpoint(true, 16, 3)),
        ];
        let h1 = a.connect(now, addr(2));
        let h2 = a.connect(now, addr(3));
        pump(now, &mut a, &mut bs, a_addr);
        for h in [h1, h2] {
            let c = a.connection_mut(h).expect("connection");
            assert!(c.state().is_synchronized(), "{:?}", c.state());
            assert_eq!(c.write(&[7u8; 64 << 10]), Ok(64 << 10));
        }
        let mut buf = [0u8; 2048];
        let mut runs: Vec<(SocketAddr, usize)> = Vec::new();
        while let Some(t) = a.poll_transmit(now, &mut buf) {
            match runs.last_mut() {
                Some((d, n)) if *d == t.destination => *n += 1,
                _ => runs.push((t.destination, 1)),
            }
        }
        runs
    }

    #[test]
    fn unsent_full_segment_means_waiting_for_the_windows() {
        let now = Instant::from_micros(1_000);
        let mut a = endpoint(false, 16, 1);
        let mut bs = vec![(addr(2), endpoint(true, 16, 2))];
        let h = a.connect(now, addr(2));
        pump(now, &mut a, &mut bs, addr(1));
        let c = a.connection_mut(h).expect("connection");
        assert!(!c.has_unsent_full_segment());
        // Less than a segment: Nagle may hold it, so a write still matters.
        assert_eq!(c.write(&[1u8; 100]), Ok(100));
        assert!(!c.has_unsent_full_segment());
        assert_eq!(c.write(&[1u8; 32 << 10]), Ok(32 << 10));
        assert!(c.has_unsent_full_segment());
        // The initial window goes; the rest waits for ACKs.
        let mut buf = [0u8; 2048];
        let mut sent = 0;
        while let Some(t) = a.poll_transmit(now, &mut buf) {
            sent += 1;
            let _ = bs[0].1.handle_datagram(now, addr(1), &buf[..t.size]);
        }
        assert_eq!(sent, 10);
        assert!(a
            .connection(h)
            .expect("connection")
            .has_unsent_full_segment());
        // Everything acknowledged and sent: nothing waits any more.
        for i in 0..200u64 {
            pump(
                Instant::from_micros(2_000 + i * 1_000),
                &mut a,
                &mut bs,
                addr(1),
            );
        }
        let c = a.connection(h).expect("connection");
        assert_eq!(c.unacked(), 0);
        assert!(!c.has_unsent_full_segment());
    }

    #[test]
    fn ready_connections_take_turns_of_tx_burst_datagrams() {
        // Both connections may send their initial window (RFC 6928: 10
        // segments of 1448 bytes) at once.
        let turns = runs_after_writes(4);
        let lens: Vec<usize> = turns.iter().map(|r| r.1).collect();
        assert_eq!(lens, [4, 4, 4, 4, 2, 2], "{turns:?}");
        for w in turns.windows(2) {
            assert_ne!(w[0].0, w[1].0, "turns alternate: {turns:?}");
        }
        // With turns longer than the window, each connection's datagrams
        // leave in one run (one GSO batch for the runtime).
        let lens: Vec<usize> = runs_after_writes(16).iter().map(|r| r.1).collect();
        assert_eq!(lens, [10, 10]);
        // Turns of one datagram are plain round robin.
        let turns = runs_after_writes(1);
        assert_eq!(turns.len(), 20);
        assert!(turns.iter().all(|r| r.1 == 1));
    }
}
