//! Round-trip time estimation and the retransmission timeout (RFC 6298),
//! fed by RTT samples from timestamps (RFC 7323 §4) or timed segments.
//!
//! CONTRACT (used by the connection; keep stable):
//! - `RttEstimator::new(initial_rto, min_rto, max_rto)`
//! - `on_sample(rtt)`: RFC 6298 §2.2 (first sample) / §2.3 (later samples),
//!   alpha = 1/8, beta = 1/4, K = 4, clock granularity G = 1 ms.
//! - `rto()`: the un-backed-off RTO, clamped to [min_rto, max_rto] (§2.4, §2.5).
//!   Backoff (§5.5) is applied by the caller.
//! - `srtt()`, `rttvar()`, `latest()`, `min_rtt()` (minimum over all samples).

use core::time::Duration;

/// RFC 6298 estimator. Karn's rule (§3) is the caller's: it must not pass
/// samples from retransmitted segments unless they come from timestamps.
#[derive(Clone, Debug)]
pub struct RttEstimator {
    _todo: (),
}

impl RttEstimator {
    pub fn new(_initial_rto: Duration, _min_rto: Duration, _max_rto: Duration) -> Self {
        todo!("rtt helper")
    }
    pub fn on_sample(&mut self, _rtt: Duration) {
        todo!("rtt helper")
    }
    pub fn rto(&self) -> Duration {
        todo!("rtt helper")
    }
    pub fn srtt(&self) -> Option<Duration> {
        todo!("rtt helper")
    }
    pub fn rttvar(&self) -> Duration {
        todo!("rtt helper")
    }
    pub fn latest(&self) -> Option<Duration> {
        todo!("rtt helper")
    }
    pub fn min_rtt(&self) -> Option<Duration> {
        todo!("rtt helper")
    }
}
