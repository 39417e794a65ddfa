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

/// Clock granularity G (RFC 6298 §2): the timestamp clock ticks in 1 ms.
const GRANULARITY_US: u64 = 1_000;

/// RFC 6298 estimator. Karn's rule (§3) is the caller's: it must not pass
/// samples from retransmitted segments unless they come from timestamps.
///
/// Arithmetic is in whole microseconds (u64), which keeps α = 1/8 and
/// β = 1/4 exact as shifts and cannot overflow for any `Duration` a peer can
/// cause (samples are clamped to one hour).
#[derive(Clone, Debug)]
pub struct RttEstimator {
    initial_rto: u64,
    min_rto: u64,
    max_rto: u64,
    srtt: Option<u64>,
    rttvar: u64,
    latest: Option<u64>,
    min_rtt: Option<u64>,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RttEstimator {
    /// An estimator with no samples yet: the RTO is `initial_rto` (RFC 6298 §2.1), always clamped to [`min_rto`, `max_rto`].
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        let min_rto = us(min_rto);
        let max_rto = us(max_rto).max(min_rto);
        RttEstimator {
            initial_rto: us(initial_rto),
            min_rto,
            max_rto,
            srtt: None,
            rttvar: 0,
            latest: None,
            min_rtt: None,
        }
    }

    /// Feed one RTT measurement R.
    pub fn on_sample(&mut self, rtt: Duration) {
        let r = us(rtt).min(3_600_000_000);
        self.latest = Some(r);
        self.min_rtt = Some(self.min_rtt.map_or(r, |m| m.min(r)));
        match self.srtt {
            None => {
                // RFC 6298 §2.2: SRTT <- R, RTTVAR <- R/2.
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                // RFC 6298 §2.3: RTTVAR <- (1 - beta) * RTTVAR + beta * |SRTT - R'|,
                // then SRTT <- (1 - alpha) * SRTT + alpha * R' (RTTVAR first, with the old SRTT).
                let dev = srtt.abs_diff(r);
                self.rttvar = self.rttvar - self.rttvar / 4 + dev / 4;
                self.srtt = Some(srtt - srtt / 8 + r / 8);
            }
        }
    }

    /// RTO = SRTT + max(G, K*RTTVAR) (RFC 6298 §2.3), or the initial RTO
    /// before any sample (§2.1); clamped to [min_rto, max_rto] (§2.4, §2.5).
    pub fn rto(&self) -> Duration {
        let raw = match self.srtt {
            None => self.initial_rto,
            Some(srtt) => srtt.saturating_add(GRANULARITY_US.max(self.rttvar.saturating_mul(4))),
        };
        Duration::from_micros(raw.clamp(self.min_rto, self.max_rto))
    }

    /// Smoothed RTT, SRTT (RFC 6298 §2); `None` before the first sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt.map(Duration::from_micros)
    }
    /// RTT variation, RTTVAR (RFC 6298 §2); zero before the first sample.
    pub fn rttvar(&self) -> Duration {
        Duration::from_micros(self.rttvar)
    }
    /// The most recent RTT sample; `None` before the first.
    pub fn latest(&self) -> Option<Duration> {
        self.latest.map(Duration::from_micros)
    }
    /// Minimum RTT over all samples; `None` before the first.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.map(Duration::from_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est() -> RttEstimator {
        RttEstimator::new(
            Duration::from_secs(1),
            Duration::from_millis(50),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn initial_rto_before_samples() {
        // RFC 6298 §2.1.
        assert_eq!(est().rto(), Duration::from_secs(1));
        assert_eq!(est().srtt(), None);
    }

    #[test]
    fn first_sample() {
        // §2.2: SRTT = 100, RTTVAR = 50, RTO = 100 + 4*50 = 300 ms.
        let mut e = est();
        e.on_sample(Duration::from_millis(100));
        assert_eq!(e.srtt(), Some(Duration::from_millis(100)));
        assert_eq!(e.rttvar(), Duration::from_millis(50));
        assert_eq!(e.rto(), Duration::from_millis(300));
    }

    #[test]
    fn later_samples() {
        // §2.3: after 100 then 200 ms: RTTVAR = 3/4*50 + 1/4*100 = 62.5,
        // SRTT = 7/8*100 + 1/8*200 = 112.5, RTO = 112.5 + 250 = 362.5 ms.
        let mut e = est();
        e.on_sample(Duration::from_millis(100));
        e.on_sample(Duration::from_millis(200));
        assert_eq!(e.rttvar(), Duration::from_micros(62_500));
        assert_eq!(e.srtt(), Some(Duration::from_micros(112_500)));
        assert_eq!(e.rto(), Duration::from_micros(362_500));
        assert_eq!(e.min_rtt(), Some(Duration::from_millis(100)));
        assert_eq!(e.latest(), Some(Duration::from_millis(200)));
    }

    #[test]
    fn clamped_to_min_and_max_and_granularity() {
        let mut e = est();
        for _ in 0..50 {
            e.on_sample(Duration::from_micros(100));
        }
        assert_eq!(e.rto(), Duration::from_millis(50)); // §2.4 floor
        let mut e = est();
        e.on_sample(Duration::from_secs(100));
        assert_eq!(e.rto(), Duration::from_secs(60)); // §2.5 ceiling
                                                      // G: with RTTVAR ~ 0 the RTO is SRTT + 1 ms.
        let mut e = RttEstimator::new(
            Duration::from_secs(1),
            Duration::ZERO,
            Duration::from_secs(60),
        );
        for _ in 0..200 {
            e.on_sample(Duration::from_millis(10));
        }
        assert_eq!(e.rto(), Duration::from_millis(11));
    }

    #[test]
    fn absurd_samples_do_not_overflow() {
        let mut e = est();
        e.on_sample(Duration::MAX);
        e.on_sample(Duration::ZERO);
        assert!(e.rto() <= Duration::from_secs(60));
    }
}
