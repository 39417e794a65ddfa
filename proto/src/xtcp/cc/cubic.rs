//! CUBIC congestion control (RFC 9438), the default.
//!
//! Windows are kept in bytes at the API and in segments (f64) inside the cubic
//! function, as the RFC writes it.

use super::newreno::half_flight;
use super::{initial_window, MAX_WINDOW};
use crate::time::Instant;
use crate::xtcp::rtt::RttEstimator;
use core::time::Duration;

/// C (RFC 9438 §5.1).
pub const C: f64 = 0.4;
/// β_cubic (RFC 9438 §4.6).
pub const BETA: f64 = 0.7;
/// α_cubic = 3(1 − β)/(1 + β) (RFC 9438 §4.3).
pub const ALPHA: f64 = 3.0 * (1.0 - BETA) / (1.0 + BETA);
/// RTT assumed before the first sample.
const DEFAULT_RTT: Duration = Duration::from_millis(100);

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Cubic {
    mss: u64,
    cwnd: u64,
    ssthresh: u64,
    /// W_max in segments (RFC 9438 §4.2).
    w_max: f64,
    /// K in seconds.
    k: f64,
    /// Start of the current congestion-avoidance epoch.
    epoch: Option<Instant>,
    /// Reno-friendly estimate W_est in segments (§4.3).
    w_est: f64,
    /// Fractional cwnd growth carried between ACKs (bytes).
    carry: f64,
}

impl Cubic {
    /// A controller for segments of `mss` bytes, starting in slow start at the initial window (RFC 6928 §2) with ssthresh = ∞.
    pub fn new(mss: usize, _now: Instant) -> Self {
        let mss = (mss as u64).max(1);
        Cubic {
            mss,
            cwnd: initial_window(mss as usize),
            ssthresh: u64::MAX,
            w_max: 0.0,
            k: 0.0,
            epoch: None,
            w_est: 0.0,
            carry: 0.0,
        }
    }

    fn segs(&self) -> f64 {
        self.cwnd as f64 / self.mss as f64
    }

    /// W_cubic(t) = C(t − K)³ + W_max (RFC 9438 §4.2), in segments.
    pub fn w_cubic(&self, t: f64) -> f64 {
        C * (t - self.k).powi(3) + self.w_max
    }

    /// K = cbrt(W_max(1 − β)/C) after a reduction, i.e. cbrt((W_max − cwnd_epoch)/C) (§4.2).
    pub fn k(&self) -> f64 {
        self.k
    }
    /// W_max, the window before the last reduction, in segments (RFC 9438 §4.2); 0 before the first loss.
    pub fn w_max(&self) -> f64 {
        self.w_max
    }

    fn start_epoch(&mut self, now: Instant) {
        let cw = self.segs();
        self.epoch = Some(now);
        self.k = if self.w_max > cw {
            ((self.w_max - cw) / C).cbrt()
        } else {
            // Beyond the old W_max (or no loss yet): the curve starts at its plateau.
            self.w_max = cw;
            0.0
        };
        self.w_est = cw;
    }

    /// Congestion avoidance for `acked` bytes at `now` with smoothed RTT `rtt`.
    pub fn avoid(&mut self, now: Instant, acked: u64, rtt: Duration) {
        if self.epoch.is_none() {
            self.start_epoch(now);
        }
        let epoch = self.epoch.unwrap_or(now);
        let t = (now - epoch).as_secs_f64();
        let rtt = rtt.as_secs_f64().max(1e-6);
        let cw = self.segs();
        let acked_segs = acked as f64 / self.mss as f64;
        // §4.3 Reno-friendly estimate; α becomes 1 once W_est passes W_max.
        let alpha = if self.w_est >= self.w_max { 1.0 } else { ALPHA };
        self.w_est += alpha * acked_segs / cw.max(1.0);
        let target = self.w_cubic(t + rtt).clamp(cw, 1.5 * cw);
        let new = if self.w_cubic(t) < self.w_est {
            // §4.3: the Reno-friendly region.
            self.w_est.max(cw)
        } else {
            // §4.4 concave / §4.5 convex: cwnd += (target − cwnd)/cwnd per acked segment.
            cw + (target - cw) / cw.max(1.0) * acked_segs
        };
        let grow = (new - cw) * self.mss as f64 + self.carry;
        if grow.is_finite() && grow > 0.0 {
            let whole = grow.floor();
            self.carry = grow - whole;
            self.cwnd = (self.cwnd + whole as u64).min(MAX_WINDOW);
        }
    }

    fn reduce(&mut self, _now: Instant) {
        let cw = self.segs();
        // §4.7 fast convergence.
        self.w_max = if cw < self.w_max {
            cw * (1.0 + BETA) / 2.0
        } else {
            cw
        };
        self.epoch = None;
        self.carry = 0.0;
    }
}

impl super::CongestionController for Cubic {
    fn window(&self) -> u64 {
        self.cwnd
    }
    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }
    fn on_ack(&mut self, now: Instant, bytes_acked: u64, rtt: &RttEstimator, app_limited: bool) {
        if app_limited {
            // RFC 9438 §5.8 / RFC 7661: no growth while application-limited.
            return;
        }
        if self.cwnd < self.ssthresh {
            // RFC 9438 §4.10 → RFC 5681 slow start (ABC, L = 2 SMSS, RFC 3465).
            self.cwnd = (self.cwnd + bytes_acked.min(2 * self.mss)).min(MAX_WINDOW);
            return;
        }
        self.avoid(now, bytes_acked, rtt.srtt().unwrap_or(DEFAULT_RTT));
    }
    fn on_congestion_event(&mut self, now: Instant, _flight_size: u64) {
        self.reduce(now);
        // §4.6: ssthresh = cwnd · β_cubic, cwnd = ssthresh (at least 2 SMSS).
        let s = ((self.cwnd as f64 * BETA) as u64).max(2 * self.mss);
        self.ssthresh = s;
        self.cwnd = s;
    }
    fn on_recovery_exit(&mut self, _now: Instant) {}
    fn on_retransmission_timeout(&mut self, now: Instant, flight_size: u64) {
        // §4.8: reduce as §4.6 for ssthresh, cwnd to 1 SMSS as RFC 5681.
        self.reduce(now);
        self.ssthresh = ((self.cwnd as f64 * BETA) as u64)
            .max(2 * self.mss)
            .min(half_flight(flight_size, self.mss).max((self.cwnd as f64 * BETA) as u64));
        self.cwnd = self.mss;
    }
    fn on_idle_restart(&mut self, _now: Instant) {
        self.cwnd = self.cwnd.min(initial_window(self.mss as usize));
        // The epoch restarts so idle time does not count as growth time (§5.8).
        self.epoch = None;
    }
    fn name(&self) -> &'static str {
        "cubic"
    }
}

#[cfg(test)]
mod tests {
    use super::super::CongestionController;
    use super::*;

    const MSS: u64 = 1000;

    /// Run CA for `rtts` round trips of `rtt`, one ACK per 2 segments; returns cwnd per RTT (segments).
    fn curve(c: &mut Cubic, start: Instant, rtt: Duration, rtts: usize) -> Vec<f64> {
        let mut out = Vec::new();
        let mut now = start;
        for _ in 0..rtts {
            let acks = (c.window() / (2 * MSS)).max(1);
            let step = rtt / acks as u32;
            for _ in 0..acks {
                c.avoid(now, 2 * MSS, rtt);
                now += step;
            }
            out.push(c.window() as f64 / MSS as f64);
        }
        out
    }

    #[test]
    fn decrease_is_beta_and_k_matches_formula() {
        let mut c = Cubic::new(MSS as usize, Instant::ZERO);
        c.cwnd = 100 * MSS;
        c.ssthresh = 50 * MSS;
        c.on_congestion_event(Instant::ZERO, 100 * MSS);
        assert_eq!(c.window(), 70 * MSS);
        assert_eq!(c.w_max(), 100.0);
        c.avoid(Instant::ZERO, MSS, Duration::from_millis(100));
        let k = (100.0 * (1.0 - BETA) / C).cbrt();
        assert!((c.k() - k).abs() < 1e-9, "K {} vs {k}", c.k());
    }

    #[test]
    fn concave_then_plateau_then_convex() {
        let mut c = Cubic::new(MSS as usize, Instant::ZERO);
        c.cwnd = 1000 * MSS;
        c.on_congestion_event(Instant::ZERO, 1000 * MSS);
        let rtt = Duration::from_millis(100);
        let w = curve(&mut c, Instant::ZERO, rtt, 120);
        let d: Vec<f64> = w.windows(2).map(|p| p[1] - p[0]).collect();
        let cross = w.iter().position(|&x| x >= 1000.0).expect("reaches W_max");
        // Concave: growth slows while approaching W_max.
        assert!(d[2] > d[cross - 3], "concave: {} vs {}", d[2], d[cross - 3]);
        // Convex: growth speeds up after W_max.
        assert!(
            d[d.len() - 1] > d[cross + 1],
            "convex: {} vs {}",
            d[d.len() - 1],
            d[cross + 1]
        );
        // The plateau is near K seconds.
        let k_rtts = c.k() / 0.1;
        assert!(
            ((cross as f64) - k_rtts).abs() < 0.25 * k_rtts + 3.0,
            "cross {cross} vs K {k_rtts}"
        );
    }

    #[test]
    fn fast_convergence_lowers_w_max() {
        let mut c = Cubic::new(MSS as usize, Instant::ZERO);
        c.cwnd = 100 * MSS;
        c.on_congestion_event(Instant::ZERO, 0);
        // A second loss before regaining W_max.
        c.on_congestion_event(Instant::ZERO, 0);
        assert!((c.w_max() - 70.0 * (1.0 + BETA) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn reno_friendly_region_for_small_windows() {
        // Short RTT, small window: CUBIC must be at least as fast as Reno's estimate.
        let mut c = Cubic::new(MSS as usize, Instant::ZERO);
        c.cwnd = 20 * MSS;
        c.on_congestion_event(Instant::ZERO, 0);
        let w = curve(&mut c, Instant::ZERO, Duration::from_millis(1), 20);
        // Reno-friendly growth: about α = 0.53 segment per RTT.
        let per_rtt = (w[19] - w[0]) / 19.0;
        assert!(per_rtt >= 0.4, "grows {per_rtt} per RTT");
    }

    #[test]
    fn timeout_and_idle() {
        let mut c = Cubic::new(MSS as usize, Instant::ZERO);
        c.cwnd = 40 * MSS;
        c.on_retransmission_timeout(Instant::ZERO, 40 * MSS);
        assert_eq!(c.window(), MSS);
        assert_eq!(c.ssthresh(), 28 * MSS);
        c.cwnd = 40 * MSS;
        c.on_idle_restart(Instant::ZERO);
        assert_eq!(c.window(), 10 * MSS);
    }
}
