//! Pluggable congestion control: NewReno (RFC 5681 + RFC 6582 recovery,
//! driven by the connection) and CUBIC (RFC 9438, the default), and a pacer.
//!
//! CONTRACT (used by the connection; keep stable). The connection owns loss
//! detection and recovery (fast retransmit, SACK/RFC 6675 pipe, RTO); the
//! controller only answers "how big is cwnd" and reacts to these events:
//! - `on_ack`: new data cumulatively acknowledged while *not* in recovery.
//! - `on_congestion_event`: loss detected by dup ACKs / SACK / RACK; called
//!   once per recovery episode, at its start (RFC 5681 §3.2 step 2, RFC 9438 §4.6).
//! - `on_recovery_exit`: recovery ended (everything outstanding at its start
//!   was acknowledged, RFC 6582 §3.2 step 3 / RFC 6675 §5).
//! - `on_retransmission_timeout`: RTO fired (RFC 5681 §3.1 eq. 4, cwnd = 1 SMSS).
//! - `on_idle_restart`: sending restarts after an idle period > RTO (RFC 5681 §4.1).

pub mod cubic;
pub mod newreno;
pub mod pacer;

use crate::time::Instant;
use crate::xtcp::rtt::RttEstimator;
use core::fmt;
use std::sync::Arc;

pub use cubic::Cubic;
pub use newreno::NewReno;
pub use pacer::Pacer;

/// Largest congestion window any controller reports (1 GiB): a sanity cap.
pub const MAX_WINDOW: u64 = 1 << 30;

/// Initial window in segments (RFC 6928 §2).
pub const INITIAL_WINDOW_SEGMENTS: u64 = 10;

/// Initial window in bytes for a given SMSS: min(10*MSS, max(2*MSS, 14600)) (RFC 6928 §2).
pub fn initial_window(mss: usize) -> u64 {
    let mss = mss as u64;
    (INITIAL_WINDOW_SEGMENTS * mss).min((2 * mss).max(14_600))
}

/// A congestion controller (one per connection).
pub trait CongestionController: fmt::Debug + Send {
    /// Congestion window, bytes.
    fn window(&self) -> u64;
    /// Slow-start threshold, bytes (`u64::MAX` before the first loss).
    fn ssthresh(&self) -> u64;
    /// True while cwnd < ssthresh.
    fn in_slow_start(&self) -> bool {
        self.window() < self.ssthresh()
    }
    /// `bytes_acked` new bytes were cumulatively acknowledged outside recovery.
    /// `app_limited`: the sender was not using the full window when those bytes
    /// were sent, so the window must not grow (RFC 7661 §4.1 / RFC 9438 §4.8).
    fn on_ack(&mut self, now: Instant, bytes_acked: u64, rtt: &RttEstimator, app_limited: bool);
    /// A loss was detected (not by RTO): multiplicative decrease, once per episode.
    fn on_congestion_event(&mut self, now: Instant, flight_size: u64);
    /// The recovery episode ended.
    fn on_recovery_exit(&mut self, now: Instant);
    /// The retransmission timer expired.
    fn on_retransmission_timeout(&mut self, now: Instant, flight_size: u64);
    /// Sending restarts after idle longer than one RTO: cwnd = min(cwnd, IW).
    fn on_idle_restart(&mut self, now: Instant);
    /// Short name for logs and traces ("newreno", "cubic").
    fn name(&self) -> &'static str;
}

/// Builds a controller for a new connection (the configuration holds one).
pub trait ControllerFactory: fmt::Debug + Send + Sync {
    /// A fresh controller for a connection whose SMSS is `mss` bytes.
    fn build(&self, mss: usize, now: Instant) -> Box<dyn CongestionController>;
}

/// The built-in algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// NewReno (RFC 5681, RFC 6582).
    NewReno,
    /// CUBIC (RFC 9438), the default.
    #[default]
    Cubic,
}

impl ControllerFactory for Algorithm {
    fn build(&self, mss: usize, now: Instant) -> Box<dyn CongestionController> {
        match self {
            Algorithm::NewReno => Box::new(NewReno::new(mss, now)),
            Algorithm::Cubic => Box::new(Cubic::new(mss, now)),
        }
    }
}

/// A shareable factory, as stored in the connection configuration.
pub type SharedFactory = Arc<dyn ControllerFactory>;
