//! Link model: configuration, per-link state and statistics.

use crate::rng::Rng;
use core::time::Duration;
use proto::Instant;
use std::collections::VecDeque;

/// How a link loses packets (after the blackout and MTU checks).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LossModel {
    /// No random loss.
    #[default]
    None,
    /// Each packet is lost independently with probability `p`.
    Bernoulli(f64),
    /// The Gilbert–Elliott two-state Markov chain, stepped once per packet:
    /// first the state moves (good→bad with `p_good_to_bad`, bad→good with
    /// `p_bad_to_good`), then the packet is lost with the new state's loss
    /// probability. The chain starts in the good state. With
    /// `loss_in_good = 0, loss_in_bad = 1`, loss bursts have a geometric
    /// length with mean `1 / p_bad_to_good`, and the long-run loss rate is
    /// `p_good_to_bad / (p_good_to_bad + p_bad_to_good)`.
    GilbertElliott {
        /// Probability of moving from good to bad, per packet.
        p_good_to_bad: f64,
        /// Probability of moving from bad to good, per packet.
        p_bad_to_good: f64,
        /// Loss probability while good.
        loss_in_good: f64,
        /// Loss probability while bad.
        loss_in_bad: f64,
    },
}

/// One direction of a link between two nodes. The default is a perfect
/// link: no delay, infinite bandwidth, no loss, no limit.
///
/// See the crate documentation for the order in which the impairments apply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay, added after serialization.
    pub delay: Duration,
    /// Extra delay, uniform in `[0, jitter]` (whole microseconds) per packet.
    /// Jitter alone never reorders: a packet's arrival is clamped to be no
    /// earlier than the previous packet's on the same link.
    pub jitter: Duration,
    /// Transmitter rate in bits per second; 0 means infinite (no
    /// serialization time, no queue). A packet of `len` bytes occupies the
    /// transmitter for `len * 8 / bandwidth_bps` seconds, first in first out.
    pub bandwidth_bps: u64,
    /// Drop-tail limit on the bytes waiting for the transmitter (not
    /// counting the packet being serialized). `None` = unlimited. Only
    /// meaningful with a finite `bandwidth_bps`.
    pub queue_bytes: Option<usize>,
    /// Random loss.
    pub loss: LossModel,
    /// `Some((p, extra))`: with probability `p` a packet is held back an
    /// extra `extra`, so packets sent after it may overtake it.
    pub reorder: Option<(f64, Duration)>,
    /// Probability that a packet is delivered twice (the copy 1 µs later).
    pub duplicate: f64,
    /// Probability, per delivered copy, that one uniformly chosen bit of the
    /// payload is flipped.
    pub corrupt: f64,
    /// Datagrams longer than this (payload bytes) are dropped.
    pub mtu: Option<usize>,
    /// Packets entering the link at a time `t` with `start <= t < end` are
    /// dropped. Any order; overlaps are fine.
    pub blackouts: Vec<(Instant, Instant)>,
}

impl LinkConfig {
    /// The perfect link (same as `Default`).
    pub fn perfect() -> LinkConfig {
        LinkConfig::default()
    }

    /// A link with only a fixed one-way delay.
    pub fn with_delay(delay: Duration) -> LinkConfig {
        LinkConfig {
            delay,
            ..LinkConfig::default()
        }
    }

    /// Blackout windows for a link that is up for `up`, then down for
    /// `down`, repeatedly, starting (up) at `start`, until `horizon`.
    /// "5 s on / 2 s off": `periodic_blackouts(Instant::ZERO, 5 s, 2 s, end)`
    /// gives `[5 s, 7 s), [12 s, 14 s), …` (the last window is cut at `horizon`).
    pub fn periodic_blackouts(
        start: Instant,
        up: Duration,
        down: Duration,
        horizon: Instant,
    ) -> Vec<(Instant, Instant)> {
        let mut v = Vec::new();
        if down.is_zero() {
            return v;
        }
        let mut t = start;
        loop {
            let b = t + up;
            if b >= horizon {
                break;
            }
            let e = (b + down).min(horizon);
            v.push((b, e));
            if e <= t {
                break; // saturated at the end of time
            }
            t = e;
        }
        v
    }
}

/// Counters for one direction of a link. `sent` counts every datagram the
/// sending node emitted towards this link; each ends in exactly one of
/// `delivered` or a `dropped_*` counter, except duplicates, which add to
/// `delivered` (and `duplicated`) on top.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams offered to the link.
    pub sent: u64,
    /// Payload bytes offered to the link.
    pub bytes_sent: u64,
    /// Datagrams handed to the receiving node (duplicates included).
    pub delivered: u64,
    /// Payload bytes handed to the receiving node.
    pub bytes_delivered: u64,
    /// Dropped by the loss model.
    pub dropped_loss: u64,
    /// Dropped because the transmitter queue was full (drop-tail).
    pub dropped_queue: u64,
    /// Dropped for exceeding the MTU.
    pub dropped_mtu: u64,
    /// Dropped during a blackout.
    pub dropped_blackout: u64,
    /// Dropped because no node had the destination address (at send time,
    /// or at arrival time after an address change).
    pub dropped_unroutable: u64,
    /// Extra copies created.
    pub duplicated: u64,
    /// Copies delivered with a flipped bit.
    pub corrupted: u64,
    /// Packets held back by the reorder impairment.
    pub reordered: u64,
}

impl LinkStats {
    /// All drops, any cause.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss
            + self.dropped_queue
            + self.dropped_mtu
            + self.dropped_blackout
            + self.dropped_unroutable
    }

    pub(crate) fn add(&mut self, o: &LinkStats) {
        self.sent += o.sent;
        self.bytes_sent += o.bytes_sent;
        self.delivered += o.delivered;
        self.bytes_delivered += o.bytes_delivered;
        self.dropped_loss += o.dropped_loss;
        self.dropped_queue += o.dropped_queue;
        self.dropped_mtu += o.dropped_mtu;
        self.dropped_blackout += o.dropped_blackout;
        self.dropped_unroutable += o.dropped_unroutable;
        self.duplicated += o.duplicated;
        self.corrupted += o.corrupted;
        self.reordered += o.reordered;
    }
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropCause {
    /// The link was in a blackout window.
    Blackout,
    /// Larger than the link MTU.
    Mtu,
    /// The loss model.
    Loss,
    /// The transmitter queue was full.
    Queue,
    /// No node had the destination address.
    Unroutable,
}

/// The fate of one datagram, decided when it enters the link.
pub(crate) enum Fate {
    Dropped(DropCause),
    /// Arrival time (µs) of the first copy, and of the duplicate, if any.
    Deliver {
        at: u64,
        dup_at: Option<u64>,
    },
}

/// A link's configuration plus the state its impairments need.
#[derive(Debug)]
pub(crate) struct Link {
    pub cfg: LinkConfig,
    pub rng: Rng,
    pub stats: LinkStats,
    /// Gilbert–Elliott state.
    bad: bool,
    /// When the transmitter is free, in units of 1/bandwidth µs (so that
    /// serialization times never accumulate rounding error).
    tx_free: u128,
    /// Packets waiting for the transmitter: (start of serialization in the
    /// same units, length). FIFO, so start times are nondecreasing.
    waiting: VecDeque<(u128, usize)>,
    waiting_bytes: usize,
    /// Arrival time of the last in-order packet (µs): the FIFO clamp.
    last_arrival: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Link {
    pub fn new(seed: u64) -> Link {
        Link {
            cfg: LinkConfig::default(),
            rng: Rng::new(seed),
            stats: LinkStats::default(),
            bad: false,
            tx_free: 0,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            last_arrival: 0,
        }
    }

    /// Replaces the configuration, keeping the state (queue, clamp, chain).
    pub fn configure(&mut self, mut cfg: LinkConfig) {
        // Sort and merge blackout windows so the check is a binary search.
        cfg.blackouts.retain(|(s, e)| s < e);
        cfg.blackouts.sort();
        let mut merged: Vec<(Instant, Instant)> = Vec::with_capacity(cfg.blackouts.len());
        for (s, e) in cfg.blackouts.drain(..) {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        cfg.blackouts = merged;
        let (old, new) = (
            u128::from(self.cfg.bandwidth_bps),
            u128::from(cfg.bandwidth_bps),
        );
        if old != new {
            if old == 0 || new == 0 {
                self.tx_free = 0;
                self.waiting.clear();
                self.waiting_bytes = 0;
            } else {
                // Rescale to the new unit, rounding up to whole microseconds.
                self.tx_free = self.tx_free.div_ceil(old) * new;
                for w in self.waiting.iter_mut() {
                    w.0 = w.0.div_ceil(old) * new;
                }
            }
        }
        self.cfg = cfg;
    }

    fn in_blackout(&self, now: Instant) -> bool {
        let b = &self.cfg.blackouts;
        // First window whose end is after `now`; it holds `now` if it started.
        let i = b.partition_point(|&(_, e)| e <= now);
        b.get(i).is_some_and(|&(s, _)| s <= now)
    }

    fn lose(&mut self) -> bool {
        match self.cfg.loss {
            LossModel::None => false,
            LossModel::Bernoulli(p) => self.rng.chance(p),
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_in_good,
                loss_in_bad,
            } => {
                let flip = if self.bad {
                    p_bad_to_good
                } else {
                    p_good_to_bad
                };
                if self.rng.chance(flip) {
                    self.bad = !self.bad;
                }
                self.rng
                    .chance(if self.bad { loss_in_bad } else { loss_in_good })
            }
        }
    }

    /// Runs a datagram of `len` bytes entering the link at `now` through
    /// blackout → MTU → loss → queue/transmitter → delay + jitter → reorder
    /// → duplicate. (Corruption is applied per copy by the caller.)
    pub fn admit(&mut self, now: Instant, len: usize) -> Fate {
        if !self.cfg.blackouts.is_empty() && self.in_blackout(now) {
            return Fate::Dropped(DropCause::Blackout);
        }
        if self.cfg.mtu.is_some_and(|m| len > m) {
            return Fate::Dropped(DropCause::Mtu);
        }
        if self.lose() {
            return Fate::Dropped(DropCause::Loss);
        }
        let now_us = now.as_micros();
        let depart = if self.cfg.bandwidth_bps == 0 {
            now_us
        } else {
            let bw = u128::from(self.cfg.bandwidth_bps);
            let now_s = u128::from(now_us) * bw;
            while let Some(&(start, l)) = self.waiting.front() {
                if start > now_s {
                    break;
                }
                self.waiting.pop_front();
                self.waiting_bytes -= l;
            }
            let start = self.tx_free.max(now_s);
            if start > now_s {
                if self
                    .cfg
                    .queue_bytes
                    .is_some_and(|q| self.waiting_bytes + len > q)
                {
                    return Fate::Dropped(DropCause::Queue);
                }
                self.waiting.push_back((start, len));
                self.waiting_bytes += len;
            }
            // len bytes at bw bit/s take len*8*1e6 units of 1/bw µs.
            self.tx_free = start + (len as u128) * 8_000_000;
            u64::try_from(self.tx_free.div_ceil(bw)).unwrap_or(u64::MAX)
        };
        let mut at = depart.saturating_add(micros(self.cfg.delay));
        if !self.cfg.jitter.is_zero() {
            at = at.saturating_add(self.rng.up_to(micros(self.cfg.jitter)));
        }
        at = at.max(self.last_arrival);
        self.last_arrival = at;
        if let Some((p, extra)) = self.cfg.reorder {
            if self.rng.chance(p) {
                at = at.saturating_add(micros(extra));
                self.stats.reordered += 1;
            }
        }
        let dup_at = if self.rng.chance(self.cfg.duplicate) {
            self.stats.duplicated += 1;
            Some(at.saturating_add(1))
        } else {
            None
        };
        Fate::Deliver { at, dup_at }
    }

    /// Flips one random bit of `data` with the configured probability.
    pub fn maybe_corrupt(&mut self, data: &mut [u8]) {
        if !data.is_empty() && self.rng.chance(self.cfg.corrupt) {
            let bit = self.rng.below(data.len() as u64 * 8);
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.stats.corrupted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    #[test]
    fn periodic_blackouts_five_on_two_off() {
        let v = LinkConfig::periodic_blackouts(
            Instant::ZERO,
            Duration::from_secs(5),
            Duration::from_secs(2),
            t(20),
        );
        assert_eq!(v, vec![(t(5), t(7)), (t(12), t(14)), (t(19), t(20))]);
    }

    #[test]
    fn blackout_windows_merge_and_lookup() {
        let mut l = Link::new(1);
        l.configure(LinkConfig {
            blackouts: vec![(t(10), t(12)), (t(1), t(3)), (t(2), t(4)), (t(5), t(5))],
            ..LinkConfig::default()
        });
        assert_eq!(l.cfg.blackouts, vec![(t(1), t(4)), (t(10), t(12))]);
        for (s, expect) in [
            (0, false),
            (1, true),
            (3, true),
            (4, false),
            (9, false),
            (10, true),
            (12, false),
        ] {
            assert_eq!(l.in_blackout(t(s)), expect, "at {s}");
        }
    }
}
