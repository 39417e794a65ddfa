//! An XTCP application node: an `Endpoint` plus a bulk sender/receiver that
//! verifies every byte with SHA-256, and can trace its congestion window.
//!
//! The simulator's own tests drive it (`tests/xtcp.rs`), and so does
//! `xtcp-lab run --set cwnd` (the cwnd-over-time figure): one node, not two
//! copies of it.

use crate::Node;
use proto::xtcp::conn::Config;
use proto::{ConnectionHandle, Endpoint, EndpointConfig, Instant, State};
use ring::digest;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Deterministic payload: a cheap keyed stream (SplitMix64) so both sides can regenerate it.
pub fn payload(seed: u64, len: usize) -> Arc<Vec<u8>> {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        // SplitMix64.
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let b = z.to_le_bytes();
        let n = (len - v.len()).min(8);
        v.extend_from_slice(&b[..n]);
    }
    Arc::new(v)
}

/// SHA-256 of `b`.
pub fn sha256(b: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, b).as_ref().to_vec()
}

/// One side of a bulk transfer in both directions.
pub struct App {
    /// The XTCP endpoint.
    pub ep: Endpoint,
    /// The one connection, once connected or accepted.
    pub h: Option<ConnectionHandle>,
    /// Opens the connection (else accepts it).
    pub client: bool,
    /// The peer's address (the client connects to it).
    pub peer: SocketAddr,
    /// What this side sends.
    pub data: Arc<Vec<u8>>,
    /// Bytes of `data` written so far.
    pub written: usize,
    /// Whether this side has shut down its sending half.
    pub shut: bool,
    /// Bytes received so far.
    pub received: usize,
    hasher: Option<digest::Context>,
    /// SHA-256 of everything received, once the stream ended.
    pub digest: Option<Vec<u8>>,
    /// When the peer's stream ended (its FIN was read).
    pub eof_at: Option<Instant>,
    /// When the last byte was read.
    pub last_byte_at: Option<Instant>,
    /// When the connection was established.
    pub connected_at: Option<Instant>,
    /// Whether the client has connected.
    pub started: bool,
    /// Samples of (time, cwnd, ssthresh, in_recovery) when tracing.
    pub trace: Option<Vec<(Instant, u64, u64, bool)>>,
    /// Read at most this many bytes per wake-up (to model a slow reader); 0 = unlimited.
    pub read_limit: usize,
    /// The connection's state at the last wake-up.
    pub final_state: Option<State>,
    /// The connection's error, if it failed.
    pub error: Option<proto::ConnectionError>,
    /// The application does not read during this interval (a stalled reader).
    pub pause: Option<(Instant, Instant)>,
    /// Last time the application ran (a slow reader wakes itself 1 ms later).
    last_run: Instant,
    /// Timer resolution of the modelled event loop: a deadline is rounded up to
    /// the next multiple (tokio's timer wheel ticks in 1 ms). `None`: exact.
    pub timer_tick: Option<std::time::Duration>,
    /// The connection's counters as of the last wake-up.
    pub stats: Option<proto::xtcp::conn::Stats>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("client", &self.client)
            .field("peer", &self.peer)
            .field("written", &self.written)
            .field("received", &self.received)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl App {
    /// A client (connects to `peer`) or a server (accepts), sending `data`;
    /// `key` seeds the endpoint's secret.
    pub fn new(cfg: Config, client: bool, peer: SocketAddr, data: Arc<Vec<u8>>, key: u8) -> App {
        let ep = Endpoint::new(
            EndpointConfig {
                conn: Arc::new(cfg),
                listen: !client,
                local_port: if client { 40000 } else { 443 },
                ..EndpointConfig::default()
            },
            [key; 32],
        );
        App {
            ep,
            h: None,
            client,
            peer,
            data,
            written: 0,
            shut: false,
            received: 0,
            hasher: Some(digest::Context::new(&digest::SHA256)),
            digest: None,
            eof_at: None,
            last_byte_at: None,
            connected_at: None,
            started: false,
            trace: None,
            read_limit: 0,
            final_state: None,
            error: None,
            last_run: Instant::ZERO,
            pause: None,
            timer_tick: None,
            stats: None,
        }
    }

    /// The connection's state (the last one seen once it is gone).
    pub fn state(&self) -> Option<State> {
        self.h
            .and_then(|h| self.ep.connection(h))
            .map(|c| c.state())
            .or(self.final_state)
    }

    /// Done: all sent data acknowledged... i.e. our FIN was acked, peer's FIN read.
    pub fn finished(&self) -> bool {
        self.eof_at.is_some() && matches!(self.state(), Some(State::TimeWait) | Some(State::Closed))
    }

    fn pump(&mut self, now: Instant) {
        self.last_run = now;
        if self.client && !self.started {
            self.started = true;
            self.h = Some(self.ep.connect(now, self.peer));
        }
        if self.h.is_none() {
            self.h = self.ep.accept();
        }
        let Some(h) = self.h else { return };
        let Some(c) = self.ep.connection_mut(h) else {
            return;
        };
        while let Some(ev) = c.poll_event() {
            if let proto::Event::Connected = ev {
                self.connected_at.get_or_insert(now);
            }
        }
        if let Some(t) = self.trace.as_mut() {
            let s = c.stats();
            if t.last()
                .is_none_or(|l| l.1 != s.cwnd || l.3 != c.in_recovery())
            {
                t.push((now, s.cwnd, s.ssthresh, c.in_recovery()));
            }
        }
        while self.written < self.data.len() {
            match c.write(&self.data[self.written..]) {
                Ok(n) => self.written += n,
                Err(_) => break,
            }
        }
        if self.written == self.data.len() && !self.shut && c.state().is_synchronized() {
            self.shut = true;
            c.shutdown(now);
        }
        let paused = self.pause.is_some_and(|(a, b)| now >= a && now < b);
        let mut budget = if paused {
            0
        } else if self.read_limit == 0 {
            usize::MAX
        } else {
            self.read_limit
        };
        loop {
            let chunk = c.read_chunk();
            if chunk.is_empty() || budget == 0 {
                break;
            }
            let n = chunk.len().min(budget);
            if let Some(hs) = self.hasher.as_mut() {
                hs.update(&chunk[..n]);
            }
            self.received += n;
            budget -= n;
            self.last_byte_at = Some(now);
            c.consume(n);
        }
        if c.is_read_finished() && self.eof_at.is_none() {
            self.eof_at = Some(now);
            if let Some(hs) = self.hasher.take() {
                self.digest = Some(hs.finish().as_ref().to_vec());
            }
        }
        self.final_state = Some(c.state());
        self.stats = Some(c.stats());
        if c.error().is_some() {
            self.error = c.error();
        }
    }
}

impl Node for App {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _to: SocketAddr, data: &[u8]) {
        let _ = self.ep.handle_datagram(now, from, data);
        self.pump(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        self.pump(now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let t = self.ep.poll_transmit(now, buf)?;
        Some((t.destination, t.size))
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        if self.client && !self.started {
            return Some(Instant::ZERO);
        }
        let unread = self
            .h
            .and_then(|h| self.ep.connection(h))
            .is_some_and(|c| c.readable() > 0);
        let resume = self
            .pause
            .map(|(_, b)| b)
            .filter(|&b| b > self.last_run && unread);
        let wake = (self.read_limit > 0 && unread)
            .then(|| self.last_run + std::time::Duration::from_millis(1))
            .or(resume);
        let at = match (self.ep.poll_timeout(), wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (at, self.timer_tick) {
            (Some(t), Some(tick)) => {
                let tick = (tick.as_micros() as u64).max(1);
                Some(Instant::from_micros(t.as_micros().div_ceil(tick) * tick))
            }
            (at, _) => at,
        }
    }
}

/// A configuration for simulations: the defaults, with timeouts scaled for tests.
pub fn sim_config() -> Config {
    Config {
        msl: Duration::from_secs(1),
        ..Config::default()
    }
}
