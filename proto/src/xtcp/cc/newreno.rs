//! NewReno congestion control (RFC 5681; loss recovery per RFC 6582 lives in
//! the connection). Windows are in bytes.

use super::{initial_window, MAX_WINDOW};
use crate::time::Instant;
use crate::xtcp::rtt::RttEstimator;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct NewReno {
    mss: u64,
    cwnd: u64,
    ssthresh: u64,
    /// Bytes acknowledged in congestion avoidance since the last increase (RFC 3465 §2.1).
    ca_acked: u64,
}

impl NewReno {
    /// A controller for segments of `mss` bytes, starting in slow start at the initial window (RFC 6928 §2) with ssthresh = ∞.
    pub fn new(mss: usize, _now: Instant) -> Self {
        let mss = (mss as u64).max(1);
        NewReno {
            mss,
            cwnd: initial_window(mss as usize),
            ssthresh: u64::MAX,
            ca_acked: 0,
        }
    }
}

/// RFC 5681 §3.1 eq. 4: ssthresh = max(FlightSize / 2, 2 * SMSS).
pub(super) fn half_flight(flight: u64, mss: u64) -> u64 {
    (flight / 2).max(2 * mss)
}

impl super::CongestionController for NewReno {
    fn window(&self) -> u64 {
        self.cwnd
    }
    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }
    fn on_ack(&mut self, _now: Instant, bytes_acked: u64, _rtt: &RttEstimator, app_limited: bool) {
        if app_limited {
            // RFC 7661 §4.1: do not grow a window the sender is not using.
            return;
        }
        if self.cwnd < self.ssthresh {
            // RFC 5681 §3.1 slow start with appropriate byte counting, L = 2 SMSS
            // (RFC 3465 §2.2), so delayed ACKs do not halve the growth rate.
            self.cwnd += bytes_acked.min(2 * self.mss);
        } else {
            // RFC 5681 §3.1 eq. 3 via byte counting (RFC 3465 §2.1): one SMSS per cwnd acknowledged.
            self.ca_acked += bytes_acked;
            if self.ca_acked >= self.cwnd {
                self.ca_acked -= self.cwnd;
                self.cwnd += self.mss;
            }
        }
        self.cwnd = self.cwnd.min(MAX_WINDOW);
    }
    fn on_congestion_event(&mut self, _now: Instant, flight_size: u64) {
        // RFC 5681 §3.2 step 2; RFC 6582 §3.2 step 2 (no window inflation here).
        self.ssthresh = half_flight(flight_size, self.mss);
        self.cwnd = self.ssthresh;
        self.ca_acked = 0;
    }
    fn on_recovery_exit(&mut self, _now: Instant) {
        // RFC 6582 §3.2 step 3: cwnd = min(ssthresh, FlightSize + SMSS) or ssthresh; we hold ssthresh.
        self.cwnd = self.cwnd.max(self.ssthresh.min(MAX_WINDOW)).max(self.mss);
    }
    fn on_retransmission_timeout(&mut self, _now: Instant, flight_size: u64) {
        // RFC 5681 §3.1 eq. 4 and LW = 1 SMSS.
        self.ssthresh = half_flight(flight_size, self.mss);
        self.cwnd = self.mss;
        self.ca_acked = 0;
    }
    fn on_idle_restart(&mut self, _now: Instant) {
        // RFC 5681 §4.1: RW = min(IW, cwnd).
        self.cwnd = self.cwnd.min(initial_window(self.mss as usize));
    }
    fn name(&self) -> &'static str {
        "newreno"
    }
}

#[cfg(test)]
mod tests {
    use super::super::CongestionController;
    use super::*;
    use core::time::Duration;

    const MSS: u64 = 1000;

    fn rtt() -> RttEstimator {
        RttEstimator::new(
            Duration::from_secs(1),
            Duration::from_millis(50),
            Duration::from_secs(60),
        )
    }

    /// One RTT: a window's worth of ACKs, one per two segments.
    fn one_rtt(c: &mut NewReno) {
        let w = c.window();
        let mut acked = 0;
        while acked < w {
            c.on_ack(Instant::ZERO, 2 * MSS, &rtt(), false);
            acked += 2 * MSS;
        }
    }

    #[test]
    fn slow_start_doubles_per_rtt() {
        let mut c = NewReno::new(MSS as usize, Instant::ZERO);
        assert_eq!(c.window(), 10 * MSS);
        for _ in 0..4 {
            let w = c.window();
            one_rtt(&mut c);
            assert_eq!(c.window(), 2 * w);
        }
    }

    #[test]
    fn avoidance_adds_one_mss_per_rtt_and_loss_halves() {
        let mut c = NewReno::new(MSS as usize, Instant::ZERO);
        c.on_congestion_event(Instant::ZERO, 40 * MSS);
        assert_eq!((c.window(), c.ssthresh()), (20 * MSS, 20 * MSS));
        for i in 1..=5 {
            one_rtt(&mut c);
            assert_eq!(c.window(), (20 + i) * MSS);
        }
        c.on_retransmission_timeout(Instant::ZERO, 30 * MSS);
        assert_eq!((c.window(), c.ssthresh()), (MSS, 15 * MSS));
        c.on_congestion_event(Instant::ZERO, MSS);
        assert_eq!(c.ssthresh(), 2 * MSS);
    }

    #[test]
    fn app_limited_and_idle() {
        let mut c = NewReno::new(MSS as usize, Instant::ZERO);
        c.on_ack(Instant::ZERO, 5 * MSS, &rtt(), true);
        assert_eq!(c.window(), 10 * MSS);
        one_rtt(&mut c);
        one_rtt(&mut c);
        c.on_idle_restart(Instant::ZERO);
        assert_eq!(c.window(), 10 * MSS);
    }
}
