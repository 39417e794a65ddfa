//! Refusals aggregated per source and interval (`spec/relay.md` §9.3), so
//! that a flood of failing requests from one source cannot flood the logs.
//!
//! The first refusal of each kind from a source in an interval is logged in
//! full (as its own audit event); the rest are counted, and at the end of the
//! interval one `refusals` line per source gives the counts. A source that
//! keeps failing thus writes at most `kinds + 1` lines per interval. The
//! table holds at most `capacity` sources per interval; refusals from sources
//! beyond it are counted in one line for all of them (`"source": "*"`).
//!
//! Sharded like the admission tables: each lock is held for O(1) work; the
//! end of an interval swaps each shard's map out in O(1) and formats the
//! lines with no lock held.

use super::admission::SourceKey;
use std::collections::HashMap;
use std::sync::Mutex;

const SHARDS: usize = 16;

/// Kinds of refusal, in the order of their counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Connection closed at once: the source holds its unauthenticated share.
    SourceShare = 0,
    /// JOIN for no waiting session (`join_failed`).
    UnknownSession = 1,
    /// CREATE without a valid token (`create_refused`).
    Unauthorized = 2,
    /// Refused with LOCKED_OUT (`refused_locked_out`).
    LockedOut = 3,
    /// OVER_CAPACITY because the source holds its waiting or paired share.
    OverSourceShare = 4,
}

/// Number of [`Refusal`] kinds.
pub const KINDS: usize = 5;

impl Refusal {
    /// The audit event name of this kind.
    pub fn event(self) -> &'static str {
        match self {
            Refusal::SourceShare => "refused_source_share",
            Refusal::UnknownSession => "join_failed",
            Refusal::Unauthorized => "create_refused",
            Refusal::LockedOut => "refused_locked_out",
            Refusal::OverSourceShare => "refused_over_source_share",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    /// Kinds already logged in full this interval (bit per kind).
    logged: u8,
    /// Refusals not logged in full, per kind.
    suppressed: [u32; KINDS],
}

/// The aggregator.
#[derive(Debug)]
pub struct Refusals {
    shards: Vec<Mutex<HashMap<SourceKey, Counts>>>,
    per_shard: usize,
    overflow: Mutex<[u64; KINDS]>,
}

/// One aggregated line's content: the source (`None` = every source beyond
/// the table's capacity) and its suppressed counts per kind.
pub type Summary = (Option<SourceKey>, [u64; KINDS]);

impl Refusals {
    /// At most `capacity` sources tracked per interval.
    pub fn new(capacity: usize) -> Refusals {
        Refusals {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            overflow: Mutex::new([0; KINDS]),
        }
    }

    fn shard(&self, k: SourceKey) -> &Mutex<HashMap<SourceKey, Counts>> {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&k, &mut h);
        let i = std::hash::Hasher::finish(&h) as usize % SHARDS;
        &self.shards[i]
    }

    /// Record a refusal; true if it is to be logged in full.
    pub fn record(&self, k: SourceKey, kind: Refusal) -> bool {
        let bit = 1u8 << (kind as u8);
        let mut m = self.shard(k).lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(&k) && m.len() >= self.per_shard {
            drop(m);
            let mut o = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            o[kind as usize] = o[kind as usize].saturating_add(1);
            return false;
        }
        let c = m.entry(k).or_default();
        if c.logged & bit == 0 {
            c.logged |= bit;
            true
        } else {
            c.suppressed[kind as usize] = c.suppressed[kind as usize].saturating_add(1);
            false
        }
    }

    /// End the interval: the sources with suppressed refusals and their
    /// counts; the table starts empty again.
    pub fn take(&self) -> Vec<Summary> {
        let mut out = Vec::new();
        for s in &self.shards {
            let m = std::mem::take(&mut *s.lock().unwrap_or_else(|p| p.into_inner()));
            out.extend(
                m.into_iter()
                    .filter(|(_, c)| c.suppressed.iter().any(|&n| n > 0))
                    .map(|(k, c)| (Some(k), c.suppressed.map(u64::from))),
            );
        }
        let o = std::mem::take(&mut *self.overflow.lock().unwrap_or_else(|p| p.into_inner()));
        if o.iter().any(|&n| n > 0) {
            out.push((None, o));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SourceKey {
        SourceKey::new(s.parse().unwrap(), 32, 64)
    }

    #[test]
    fn first_of_each_kind_in_full_then_counted() {
        let r = Refusals::new(1024);
        let a = key("198.18.0.1");
        assert!(r.record(a, Refusal::UnknownSession));
        assert!(r.record(a, Refusal::LockedOut));
        for _ in 0..30_000 {
            assert!(!r.record(a, Refusal::LockedOut));
        }
        assert!(!r.record(a, Refusal::UnknownSession));
        assert!(r.record(key("198.18.0.2"), Refusal::UnknownSession));
        let s = r.take();
        assert_eq!(s, vec![(Some(a), [0, 1, 0, 30_000, 0])]);
        // A new interval logs the first again.
        assert!(r.record(a, Refusal::LockedOut));
        assert!(r.take().is_empty());
    }

    #[test]
    fn sources_beyond_capacity_share_one_line() {
        let r = Refusals::new(16);
        let mut full = 0;
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0xC612_0000 + i);
            full += usize::from(r.record(SourceKey::new(ip.into(), 32, 64), Refusal::LockedOut));
        }
        assert!(full <= 16, "{full}");
        let s = r.take();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, None);
        assert_eq!(s[0].1[3] as usize, 10_000 - full);
    }
}
