//! Pacing: spreads a window's worth of segments over the RTT instead of
//! sending them in a burst.
//!
//! CONTRACT (used by the connection; keep stable):
//! - `Pacer::new(mss)`.
//! - `delay(now, bytes, cwnd, srtt, slow_start) -> Option<Instant>`: `None` if
//!   a segment of `bytes` may leave now, else the earliest time it may.
//!   Rate = cwnd / srtt × (2.0 in slow start, 1.2 otherwise) (Linux's
//!   tcp_pacing_ss_ratio / ca_ratio); a burst allowance of a few segments;
//!   no pacing before the first RTT sample (srtt = None).
//! - `on_sent(now, bytes)`: account a transmitted segment.
use crate::time::Instant;
use core::time::Duration;

#[derive(Debug, Clone)]
pub struct Pacer {
    _todo: (),
}

impl Pacer {
    pub fn new(_mss: usize) -> Self {
        todo!("cc helper")
    }
    pub fn delay(&mut self, _now: Instant, _bytes: usize, _cwnd: u64, _srtt: Option<Duration>, _slow_start: bool) -> Option<Instant> {
        todo!()
    }
    pub fn on_sent(&mut self, _now: Instant, _bytes: usize) {
        todo!()
    }
}
