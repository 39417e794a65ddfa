//! CUBIC (RFC 9438). CONTRACT: `Cubic::new(mss, now)`, implements
//! [`super::CongestionController`].
use crate::rtt::RttEstimator;
use crate::time::Instant;

#[derive(Debug)]
pub struct Cubic {
    _todo: (),
}

impl Cubic {
    pub fn new(_mss: usize, _now: Instant) -> Self {
        todo!("cc helper")
    }
}

impl super::CongestionController for Cubic {
    fn window(&self) -> u64 {
        todo!()
    }
    fn ssthresh(&self) -> u64 {
        todo!()
    }
    fn on_ack(&mut self, _now: Instant, _bytes_acked: u64, _rtt: &RttEstimator, _app_limited: bool) {
        todo!()
    }
    fn on_congestion_event(&mut self, _now: Instant, _flight_size: u64) {
        todo!()
    }
    fn on_recovery_exit(&mut self, _now: Instant) {
        todo!()
    }
    fn on_retransmission_timeout(&mut self, _now: Instant, _flight_size: u64) {
        todo!()
    }
    fn on_idle_restart(&mut self, _now: Instant) {
        todo!()
    }
    fn name(&self) -> &'static str {
        "cubic"
    }
}
