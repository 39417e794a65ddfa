//! Pacing: spreads a window's worth of segments over the RTT instead of
//! sending them in a burst.
//!
//! CONTRACT (used by the connection; keep stable):
//! - `Pacer::new(mss)`.
//! - `delay(now, bytes, cwnd, srtt, slow_start) -> Option<Instant>`: `None` if
//!   a segment of `bytes` may leave now, else the earliest time it may.
//!   Rate = cwnd / srtt × (2.0 in slow start, 1.2 otherwise) (Linux's
//!   tcp_pacing_ss_ratio / ca_ratio); a burst allowance of
//!   max(10 segments, rate × 2 ms); no pacing before the first RTT sample
//!   (srtt = None).
//! - `on_sent(now, bytes)`: account a transmitted segment.
//!
//! A token bucket: tokens (bytes) refill at the pacing rate up to the burst
//! allowance and are spent by each transmission.
use crate::time::Instant;
use core::time::Duration;

/// Segments that may always leave back to back.
const BURST_SEGMENTS: f64 = 10.0;

/// The burst allowance also covers this much time at the pacing rate.
///
/// A pacer is only as fine as the timer that wakes the sender: tokio's timer
/// (and most event loops') ticks in whole milliseconds, so a pacing delay of a
/// few microseconds becomes a sleep of one to two milliseconds. With a
/// fixed 10-segment bucket that sleep caps the rate at 10 segments per tick
/// (≈ 115 Mbit/s at 1 ms, whatever cwnd/SRTT says). Letting the bucket hold
/// two ticks' worth of the rate keeps the long-run rate at the formula while
/// bursts stay bounded by time, as Linux does by sizing TSO bursts to ~1 ms of
/// the pacing rate (`tcp_tso_autosize`, `sk_pacing_shift`) and quinn by its
/// 2 ms `BURST_INTERVAL`.
const BURST_INTERVAL_SECS: f64 = 0.002;

/// Token-bucket pacer (see the module documentation); tokens are bytes.
#[derive(Debug, Clone)]
pub struct Pacer {
    mss: f64,
    tokens: f64,
    last: Instant,
    rate: f64,
}

impl Pacer {
    /// A pacer for segments of `mss` bytes, starting with a full 10-segment burst allowance.
    pub fn new(mss: usize) -> Self {
        let mss = mss.max(1) as f64;
        Pacer {
            mss,
            tokens: BURST_SEGMENTS * mss,
            last: Instant::ZERO,
            rate: 0.0,
        }
    }

    fn burst(&self) -> f64 {
        (BURST_SEGMENTS * self.mss).max(self.rate * BURST_INTERVAL_SECS)
    }

    fn refill(&mut self, now: Instant) {
        let dt = (now - self.last).as_secs_f64();
        self.last = self.last.max(now);
        if self.rate > 0.0 {
            self.tokens = (self.tokens + dt * self.rate).min(self.burst());
        } else {
            self.tokens = self.burst();
        }
    }

    /// `None` if a segment of `bytes` may leave at `now`, else the earliest instant it may;
    /// no pacing while `srtt` is `None` (rate = `cwnd`/`srtt` × 2.0 in slow start, × 1.2 otherwise).
    pub fn delay(
        &mut self,
        now: Instant,
        bytes: usize,
        cwnd: u64,
        srtt: Option<Duration>,
        slow_start: bool,
    ) -> Option<Instant> {
        let srtt = srtt?.as_secs_f64();
        if srtt <= 0.0 {
            self.rate = 0.0;
            return None;
        }
        let ratio = if slow_start { 2.0 } else { 1.2 };
        let rate = cwnd as f64 / srtt * ratio;
        if !rate.is_finite() || rate <= 0.0 {
            self.rate = 0.0;
            return None;
        }
        self.refill(now);
        self.rate = rate;
        self.tokens = self.tokens.min(self.burst());
        let need = bytes as f64 - self.tokens;
        if need <= 0.0 {
            return None;
        }
        let wait_us = (need / rate * 1e6).ceil().clamp(1.0, 1e9) as u64;
        Some(now + Duration::from_micros(wait_us))
    }

    /// Spends `bytes` tokens for a segment transmitted at `now`.
    pub fn on_sent(&mut self, now: Instant, bytes: usize) {
        self.refill(now);
        self.tokens = (self.tokens - bytes as f64).max(-self.burst());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_rate_matches_formula() {
        let mut p = Pacer::new(1000);
        let srtt = Some(Duration::from_millis(100));
        let cwnd = 100_000u64; // 1 MB/s, ×1.2 in CA = 1.2 MB/s
        let mut now = Instant::ZERO;
        let mut sent = 0usize;
        for _ in 0..10_000 {
            match p.delay(now, 1000, cwnd, srtt, false) {
                None => {
                    p.on_sent(now, 1000);
                    sent += 1000;
                }
                Some(t) => {
                    assert!(t > now, "a time in the past");
                    now = t;
                }
            }
        }
        let rate = sent as f64 / now.as_micros() as f64 * 1e6;
        assert!((rate / 1.2e6 - 1.0).abs() < 0.03, "rate {rate}");
    }

    #[test]
    fn coarse_timer_keeps_the_formula_rate() {
        // The caller can only wake on a 1 ms tick (tokio's timer): a delay of
        // a few µs becomes a sleep to the next tick. The bucket must hold a
        // tick's worth of the rate or the rate caps at 10 segments per tick.
        let mut p = Pacer::new(1448);
        let srtt = Some(Duration::from_millis(2));
        let cwnd = 200 * 1448u64; // 145 MB/s ×1.2 in CA ≈ 174 MB/s (≈ 120 segments/ms)
        let mut now = Instant::ZERO;
        let mut sent = 0usize;
        while now < Instant::from_millis(100) {
            match p.delay(now, 1448, cwnd, srtt, false) {
                None => {
                    p.on_sent(now, 1448);
                    sent += 1448;
                }
                Some(t) => now = Instant::from_micros(t.as_micros().div_ceil(1000) * 1000),
            }
        }
        let rate = sent as f64 / now.as_micros() as f64 * 1e6;
        let want = cwnd as f64 / 0.002 * 1.2;
        assert!(
            (rate / want - 1.0).abs() < 0.05,
            "rate {rate}, formula {want}"
        );
    }

    #[test]
    fn burst_then_spacing_and_no_pacing_without_rtt() {
        let mut p = Pacer::new(1000);
        assert_eq!(p.delay(Instant::ZERO, 1000, 10_000, None, true), None);
        let srtt = Some(Duration::from_millis(10));
        let mut n = 0;
        while p.delay(Instant::ZERO, 1000, 10_000, srtt, true).is_none() {
            p.on_sent(Instant::ZERO, 1000);
            n += 1;
            assert!(n < 100);
        }
        assert_eq!(n, 10);
        // 2 MB/s in slow start: the next segment 0.5 ms later.
        let t = p.delay(Instant::ZERO, 1000, 10_000, srtt, true).unwrap();
        assert_eq!(t, Instant::from_micros(500));
    }
}
