//! Admission per source (`spec/relay.md` §9.6): what one source (an IPv4
//! address, an IPv6 /64; both prefix lengths configurable) may hold of the
//! relay's resources, and how fast it may guess.
//!
//! Two tables, both keyed by [`SourceKey`]:
//!
//! * [`SourceShares`] counts what a source holds *now* (unauthenticated
//!   connections, waiting sessions, paired connections). An entry exists only
//!   while its source holds something, so the table is bounded by the global
//!   limits. Every hold is an RAII [`Share`]; dropping it gives the unit back.
//! * [`GuessTable`] remembers failed guesses (a JOIN for no waiting session, a
//!   CREATE with a bad token). After `threshold` failures a source is
//!   *throttled*: its guesses are served one at a time, at most one per
//!   `interval`, each waiting for its slot (tarpit), with at most `queue`
//!   waiting; more are refused at once without a lookup. A JOIN is looked up
//!   only at its slot, and a lookup that finds the session pairs, so a
//!   neighbour with the right code behind a guessing address gets in at the
//!   next free slot instead of being locked out. The table has a fixed
//!   capacity: a hash map into a slab of nodes on an LRU list; every
//!   operation is O(1) and a full table evicts its least recently used entry.
//!
//! Both are sharded, each shard behind a `std::sync::Mutex` that is held for
//! O(1) work only, never across an `.await`. Time comes in as an argument
//! (`now`), so the rules are tested with any clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Shards per table (a power of two).
const SHARDS: usize = 16;

/// A source as admission sees it: the address masked to its configured
/// prefix. IPv4 (and IPv4-mapped IPv6, `::ffff:a.b.c.d`) keys live in
/// `::ffff:0:0/96`, so the two families never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey(u128);

impl SourceKey {
    /// Mask `ip` to `v4_prefix` (0..=32) or `v6_prefix` (0..=128) bits.
    pub fn new(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> SourceKey {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let p = u32::from(v4_prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
                SourceKey((0xffff_u128 << 32) | u128::from(bits & mask))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let p = u32::from(v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
                SourceKey(bits & mask)
            }
        }
    }

    /// The prefix as an address (for logs): `198.18.0.7` or `2001:db8::`.
    pub fn addr(self) -> IpAddr {
        let v6 = std::net::Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }

    fn shard(self) -> usize {
        // Keys are masked addresses, not secrets; the shard only spreads
        // lock contention. The per-shard maps use SipHash with a random key.
        let x = (self.0 ^ (self.0 >> 64)) as u64;
        (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ───────────────────────────── shares ─────────────────────────────

/// What a source may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A connection before its first frame (and while it waits for a guess slot).
    Unauthenticated = 0,
    /// A session waiting for its guest.
    Waiting = 1,
    /// One side (host or guest connection) of a paired session.
    Paired = 2,
}

/// Per-source counts of what is held now.
#[derive(Debug)]
pub struct SourceShares {
    shards: Vec<Mutex<HashMap<SourceKey, [u32; 3]>>>,
    limits: [u32; 3],
    /// Entries in all shards (sources holding anything), kept so that
    /// reading it takes no lock.
    sources: AtomicUsize,
}

/// One unit of a source's share; given back on drop.
#[derive(Debug)]
pub struct Share {
    table: Arc<SourceShares>,
    key: SourceKey,
    kind: Kind,
}

impl SourceShares {
    /// Limits per source for each [`Kind`] (index = kind).
    pub fn new(limits: [u32; 3]) -> Arc<SourceShares> {
        Arc::new(SourceShares {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            limits,
            sources: AtomicUsize::new(0),
        })
    }

    /// The counts of `key` in its (locked) shard `m`, created at zero.
    fn slot<'a>(
        &self,
        m: &'a mut HashMap<SourceKey, [u32; 3]>,
        key: SourceKey,
    ) -> &'a mut [u32; 3] {
        m.entry(key).or_insert_with(|| {
            self.sources.fetch_add(1, Ordering::Relaxed);
            [0; 3]
        })
    }

    /// Drop `key`'s entry from its (locked) shard `m` if it holds nothing.
    fn forget_if_empty(&self, m: &mut HashMap<SourceKey, [u32; 3]>, key: SourceKey) {
        if m.get(&key) == Some(&[0; 3]) {
            m.remove(&key);
            self.sources.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Take one unit of `kind` for `key`, or `None` if the source holds its share.
    pub fn try_take(self: &Arc<Self>, key: SourceKey, kind: Kind) -> Option<Share> {
        let mut m = lock(&self.shards[key.shard()]);
        let c = self.slot(&mut m, key);
        let k = kind as usize;
        if c[k] >= self.limits[k] {
            self.forget_if_empty(&mut m, key);
            return None;
        }
        c[k] += 1;
        Some(Share {
            table: self.clone(),
            key,
            kind,
        })
    }

    /// Take one unit of `kind` for `key` even beyond its limit (accounting
    /// for what was admitted earlier under another kind).
    pub fn take(self: &Arc<Self>, key: SourceKey, kind: Kind) -> Share {
        let mut m = lock(&self.shards[key.shard()]);
        let c = self.slot(&mut m, key);
        c[kind as usize] = c[kind as usize].saturating_add(1);
        Share {
            table: self.clone(),
            key,
            kind,
        }
    }

    /// What `key` holds now.
    pub fn held(&self, key: SourceKey) -> [u32; 3] {
        lock(&self.shards[key.shard()])
            .get(&key)
            .copied()
            .unwrap_or_default()
    }

    /// Sources holding anything now (no lock taken).
    pub fn sources(&self) -> usize {
        self.sources.load(Ordering::Relaxed)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut m = lock(&self.table.shards[self.key.shard()]);
        if let Some(c) = m.get_mut(&self.key) {
            let k = self.kind as usize;
            c[k] = c[k].saturating_sub(1);
            self.table.forget_if_empty(&mut m, self.key);
        }
    }
}

// ───────────────────────────── guesses ─────────────────────────────

/// Guessing rules (`spec/relay.md` §9.2).
#[derive(Clone, Copy, Debug)]
pub struct GuessRules {
    /// Failures within `window` after which the source is throttled.
    pub threshold: u32,
    /// The window failures count in; a throttled source stays throttled
    /// until this long after its last failure.
    pub window: Duration,
    /// While throttled: one guess per `interval`.
    pub interval: Duration,
    /// While throttled: guesses waiting for their slot, at most.
    pub queue: u32,
    /// Tracked sources at most (all shards together).
    pub capacity: usize,
}

/// What a guessing request may do now.
#[derive(Debug)]
pub enum Verdict {
    /// Look up now. Hold the ticket until the answer is decided.
    Go(Ticket),
    /// Throttled: wait until the instant (tarpit), then look up. Hold the
    /// ticket while waiting.
    Wait(Instant, Ticket),
    /// Throttled and the source's queue is full: refuse without a lookup;
    /// a place is free again after this long.
    Refuse(Duration),
}

/// A guess in progress (free lane or queued); released on drop.
#[derive(Debug)]
pub struct Ticket {
    table: Arc<GuessTable>,
    key: SourceKey,
    queued: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.queued {
            self.table.queued.fetch_sub(1, Ordering::Relaxed);
        }
        let mut s = lock(&self.table.shards[self.key.shard()]);
        if let Some(&i) = s.map.get(&self.key) {
            let e = &mut s.nodes[i as usize].e;
            if self.queued {
                e.queued = e.queued.saturating_sub(1);
            } else {
                e.inflight = e.inflight.saturating_sub(1);
            }
        }
    }
}

/// Milliseconds since the table's epoch (0 = never).
type Ms = u64;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    failures: u32,
    /// Free-lane guesses being looked up now.
    inflight: u16,
    /// Throttled guesses waiting for their slot.
    queued: u16,
    window_start: Ms,
    /// Throttled until (0: not throttled).
    until: Ms,
    /// The next free slot of a throttled source.
    next_slot: Ms,
}

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Node {
    key: SourceKey,
    prev: u32,
    next: u32,
    e: Entry,
}

/// One shard: hash map into a slab of nodes on a doubly linked LRU list
/// (head = most recently used). Never scanned.
#[derive(Debug)]
struct Shard {
    map: HashMap<SourceKey, u32>,
    nodes: Vec<Node>,
    head: u32,
    tail: u32,
    cap: usize,
}

impl Shard {
    fn unlink(&mut self, i: u32) {
        let (p, n) = {
            let node = &self.nodes[i as usize];
            (node.prev, node.next)
        };
        match p {
            NIL => self.head = n,
            p => self.nodes[p as usize].next = n,
        }
        match n {
            NIL => self.tail = p,
            n => self.nodes[n as usize].prev = p,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let node = &mut self.nodes[i as usize];
            node.prev = NIL;
            node.next = old;
        }
        if old != NIL {
            self.nodes[old as usize].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    /// The entry of `key`, created (evicting the least recently used one if
    /// the shard is full) and moved to the front. Returns (index, evicted?).
    fn touch(&mut self, key: SourceKey) -> (u32, bool) {
        if let Some(&i) = self.map.get(&key) {
            if self.head != i {
                self.unlink(i);
                self.push_front(i);
            }
            return (i, false);
        }
        if self.nodes.len() < self.cap {
            let i = self.nodes.len() as u32;
            self.nodes.push(Node {
                key,
                prev: NIL,
                next: NIL,
                e: Entry::default(),
            });
            self.map.insert(key, i);
            self.push_front(i);
            return (i, false);
        }
        // Full: reuse the least recently used node.
        let i = self.tail;
        self.unlink(i);
        let old = self.nodes[i as usize].key;
        self.map.remove(&old);
        let node = &mut self.nodes[i as usize];
        node.key = key;
        node.e = Entry::default();
        self.map.insert(key, i);
        self.push_front(i);
        (i, true)
    }
}

/// Failed guesses per source, fixed capacity, O(1) per operation.
#[derive(Debug)]
pub struct GuessTable {
    shards: Vec<Mutex<Shard>>,
    rules: GuessRules,
    epoch: Instant,
    evicted: AtomicU64,
    /// Entries in all shards (nodes are reused, never removed).
    tracked: AtomicUsize,
    /// Times a source became throttled.
    throttles: AtomicU64,
    /// Guesses waiting for their slot now (queued tickets alive).
    queued: AtomicU64,
}

fn ms(d: Duration) -> Ms {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl GuessTable {
    /// An empty table; `epoch` is any instant not after the first `now`.
    pub fn new(rules: GuessRules, epoch: Instant) -> Arc<GuessTable> {
        let per = rules.capacity.div_ceil(SHARDS).max(1);
        Arc::new(GuessTable {
            shards: (0..SHARDS)
                .map(|_| {
                    // Reserved up front: a growing map or slab would copy
                    // every entry under the lock (a latency spike); pages
                    // not yet used are not resident.
                    Mutex::new(Shard {
                        map: HashMap::with_capacity(per),
                        nodes: Vec::with_capacity(per),
                        head: NIL,
                        tail: NIL,
                        cap: per,
                    })
                })
                .collect(),
            rules,
            epoch,
            evicted: Default::default(),
            tracked: Default::default(),
            throttles: Default::default(),
            queued: Default::default(),
        })
    }

    /// The entry of `key` in its (locked) shard, created or moved to the
    /// front; counts a new entry or an eviction.
    fn entry(&self, s: &mut Shard, key: SourceKey) -> u32 {
        let before = s.nodes.len();
        let (i, evicted) = s.touch(key);
        if evicted {
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        if s.nodes.len() > before {
            self.tracked.fetch_add(1, Ordering::Relaxed);
        }
        i
    }

    fn at(&self, now: Instant) -> Ms {
        // 1 so that 0 can mean "never".
        ms(now.saturating_duration_since(self.epoch)).saturating_add(1)
    }

    fn instant(&self, t: Ms) -> Instant {
        // Beyond the clock's range: as far as it goes (never "now").
        let far = Duration::from_secs(100 * 365 * 86_400);
        let d = Duration::from_millis(t.saturating_sub(1));
        self.epoch
            .checked_add(d)
            .or_else(|| self.epoch.checked_add(far.min(d)))
            .or_else(|| self.epoch.checked_add(Duration::from_secs(86_400)))
            .unwrap_or(self.epoch)
    }

    /// Forget a throttle (and its window) that has run out.
    fn refresh(&self, e: &mut Entry, now: Ms) {
        let window = ms(self.rules.window);
        if e.until != 0 && now >= e.until {
            *e = Entry {
                inflight: e.inflight,
                queued: e.queued,
                ..Entry::default()
            };
        }
        if e.until == 0 && e.window_start != 0 && now.saturating_sub(e.window_start) >= window {
            e.failures = 0;
            e.window_start = 0;
        }
    }

    /// A guessing request from `key` arrives at `now`.
    pub fn admit(self: &Arc<Self>, key: SourceKey, now: Instant) -> Verdict {
        let t = self.at(now);
        let r = self.rules;
        let mut s = lock(&self.shards[key.shard()]);
        let i = self.entry(&mut s, key);
        let e = &mut s.nodes[i as usize].e;
        self.refresh(e, t);
        // The free lane: failures so far plus lookups in flight stay below
        // the threshold, so a burst of parallel guesses cannot overshoot it.
        if e.until == 0 && e.failures.saturating_add(u32::from(e.inflight)) < r.threshold {
            e.inflight = e.inflight.saturating_add(1);
            return Verdict::Go(Ticket {
                table: self.clone(),
                key,
                queued: false,
            });
        }
        //= spec/relay.md#92-guessing
        //# While throttled, a source's guesses are looked up one at a time, at
        //# most one per `guess_interval_secs` (1 s)
        let interval = ms(r.interval).max(1);
        if u32::from(e.queued) >= r.queue {
            let free_in = e
                .next_slot
                .saturating_sub(t)
                .saturating_sub(interval.saturating_mul(u64::from(r.queue).saturating_sub(1)));
            return Verdict::Refuse(Duration::from_millis(free_in.max(1000)));
        }
        if e.next_slot == 0 {
            e.next_slot = t.saturating_add(interval);
        }
        let slot = e.next_slot.max(t);
        e.next_slot = slot.saturating_add(interval);
        e.queued = e.queued.saturating_add(1);
        self.queued.fetch_add(1, Ordering::Relaxed);
        let at = self.instant(slot);
        Verdict::Wait(
            at,
            Ticket {
                table: self.clone(),
                key,
                queued: true,
            },
        )
    }

    /// Count a failed guess from `key` at `now`; true if the source is
    /// throttled now (this failure reached the threshold, or it already was).
    pub fn fail(&self, key: SourceKey, now: Instant) -> bool {
        let t = self.at(now);
        let r = self.rules;
        let mut s = lock(&self.shards[key.shard()]);
        let i = self.entry(&mut s, key);
        let e = &mut s.nodes[i as usize].e;
        self.refresh(e, t);
        if e.window_start == 0 {
            e.window_start = t;
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures >= r.threshold {
            if e.until == 0 {
                self.throttles.fetch_add(1, Ordering::Relaxed);
                // The next guess waits a full interval after this failure.
                e.next_slot = e.next_slot.max(t.saturating_add(ms(r.interval).max(1)));
            }
            e.until = t.saturating_add(ms(r.window));
            true
        } else {
            false
        }
    }

    /// `Some(remaining)` if `key` is throttled at `now`.
    pub fn throttled(&self, key: SourceKey, now: Instant) -> Option<Duration> {
        let t = self.at(now);
        let s = lock(&self.shards[key.shard()]);
        let &i = s.map.get(&key)?;
        let e = s.nodes[i as usize].e;
        (e.until > t).then(|| Duration::from_millis(e.until - t))
    }

    /// Tracked sources now (no lock taken).
    pub fn len(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries evicted to make room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Times a source became throttled so far.
    pub fn throttles(&self) -> u64 {
        self.throttles.load(Ordering::Relaxed)
    }

    /// Guesses of throttled sources waiting for their slot now.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Bytes per tracked source, as allocated at capacity (node plus map slot).
    pub const BYTES_PER_ENTRY: usize =
        std::mem::size_of::<Node>() + std::mem::size_of::<(SourceKey, u32)>() + 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SourceKey {
        SourceKey::new(s.parse().unwrap(), 32, 64)
    }

    fn rules() -> GuessRules {
        GuessRules {
            threshold: 5,
            window: Duration::from_secs(300),
            interval: Duration::from_secs(1),
            queue: 4,
            capacity: 1024,
        }
    }

    #[test]
    fn keys_mask_to_the_configured_prefix() {
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("198.18.0.1"), key("198.18.0.2"));
        assert_eq!(key("::ffff:198.18.0.1"), key("198.18.0.1"));
        let k24 = |s: &str| SourceKey::new(s.parse().unwrap(), 24, 48);
        assert_eq!(k24("198.18.0.1"), k24("198.18.0.200"));
        assert_eq!(k24("2001:db8:1:2::1"), k24("2001:db8:1:ffff::1"));
        assert_eq!(
            SourceKey::new("2001:db8::1".parse().unwrap(), 32, 128),
            SourceKey::new("2001:db8::1".parse().unwrap(), 32, 128)
        );
        assert_eq!(key("198.18.0.7").addr().to_string(), "198.18.0.7");
        assert_eq!(key("2001:db8::7").addr().to_string(), "2001:db8::");
        // Prefix 0 puts a whole family in one key; families never collide.
        let all = |s: &str| SourceKey::new(s.parse().unwrap(), 0, 0);
        assert_eq!(all("1.2.3.4"), all("5.6.7.8"));
        assert_ne!(all("1.2.3.4"), all("2001:db8::1"));
    }

    #[test]
    fn shares_are_per_source_and_given_back() {
        let s = SourceShares::new([2, 1, 1]);
        let a = key("198.18.0.1");
        let b = key("198.18.0.2");
        let x = s.try_take(a, Kind::Unauthenticated).unwrap();
        let _y = s.try_take(a, Kind::Unauthenticated).unwrap();
        assert!(s.try_take(a, Kind::Unauthenticated).is_none());
        assert!(s.try_take(b, Kind::Unauthenticated).is_some());
        let _w = s.try_take(a, Kind::Waiting).unwrap();
        assert!(s.try_take(a, Kind::Waiting).is_none());
        assert_eq!(s.held(a), [2, 1, 0]);
        assert_eq!(s.sources(), 1, "b gave its unit back at once");
        drop(x);
        assert!(s.try_take(a, Kind::Unauthenticated).is_some());
        drop(_y);
        drop(_w);
        assert_eq!(s.sources(), 0, "entries go when nothing is held");
    }

    /// The seed rule: five failures, then one guess per interval, queued.
    #[test]
    fn five_failures_then_one_guess_per_interval() {
        let t0 = Instant::now();
        let g = GuessTable::new(rules(), t0);
        let k = key("198.18.0.1");
        for n in 1..=5 {
            let Verdict::Go(t) = g.admit(k, t0) else {
                panic!("free guess {n}")
            };
            assert_eq!(g.fail(k, t0), n == 5);
            drop(t);
        }
        // Four queue, one second apart, the first a full interval after the 5th failure.
        let mut slots = Vec::new();
        let mut tickets = Vec::new();
        for _ in 0..4 {
            match g.admit(k, t0) {
                Verdict::Wait(at, t) => {
                    slots.push(at - t0);
                    tickets.push(t);
                }
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(
            slots,
            (1..=4).map(Duration::from_secs).collect::<Vec<_>>(),
            "serialised slots"
        );
        assert_eq!((g.len(), g.throttles(), g.queued()), (1, 1, 4));
        // A fifth waiting guess is refused without a lookup.
        assert!(matches!(g.admit(k, t0), Verdict::Refuse(d) if d >= Duration::from_secs(1)));
        drop(tickets);
        assert_eq!(g.queued(), 0);
        // The queue emptied: the next takes the next free slot.
        match g.admit(k, t0 + Duration::from_millis(500)) {
            Verdict::Wait(at, _) => assert_eq!(at - t0, Duration::from_secs(5)),
            v => panic!("{v:?}"),
        }
    }

    /// Parallel guesses cannot overshoot the threshold.
    #[test]
    fn a_burst_does_not_get_more_than_the_threshold_at_once() {
        let t0 = Instant::now();
        let g = GuessTable::new(rules(), t0);
        let k = key("198.18.0.1");
        let verdicts: Vec<_> = (0..10).map(|_| g.admit(k, t0)).collect();
        let go = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Go(_)))
            .count();
        let wait = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Wait(..)))
            .count();
        assert_eq!((go, wait), (5, 4));
    }

    /// A continuous guesser for 60 simulated seconds (each guess issued the
    /// moment the previous answer arrives, 8 in parallel): after the 5th
    /// failure at most one lookup per second.
    #[test]
    fn continuous_guesser_is_held_to_one_lookup_per_second() {
        let t0 = Instant::now();
        let g = GuessTable::new(rules(), t0);
        let k = key("2001:db8::1");
        let mut lookups: Vec<Duration> = Vec::new();
        // Each lane: next time it may send.
        let mut lanes = [Duration::ZERO; 8];
        let end = Duration::from_secs(60);
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100_000, "bounded");
            let (lane, &at) = lanes.iter().enumerate().min_by_key(|(_, t)| **t).unwrap();
            if at >= end {
                break;
            }
            match g.admit(k, t0 + at) {
                Verdict::Go(t) => {
                    g.fail(k, t0 + at);
                    lookups.push(at);
                    drop(t);
                    lanes[lane] = at + Duration::from_millis(1);
                }
                Verdict::Wait(slot, t) => {
                    let s = slot - t0;
                    g.fail(k, slot);
                    lookups.push(s);
                    drop(t);
                    lanes[lane] = s + Duration::from_millis(1);
                }
                Verdict::Refuse(_) => lanes[lane] = at + Duration::from_millis(10),
            }
        }
        lookups.sort();
        let fifth = lookups[4];
        let after = lookups.iter().filter(|&&t| t > fifth && t <= end).count();
        let secs = (end - fifth).as_secs_f64();
        assert!(
            after as f64 <= secs + 1.0,
            "{after} lookups in {secs} s after the 5th failure"
        );
        assert!(
            after as f64 >= secs - 5.0,
            "the guesser is slowed, not stopped"
        );
    }

    #[test]
    fn throttle_and_window_expire() {
        let t0 = Instant::now();
        let g = GuessTable::new(rules(), t0);
        let k = key("198.18.0.1");
        for _ in 0..4 {
            g.fail(k, t0);
        }
        // The window ran out: four old failures no longer count.
        let later = t0 + Duration::from_secs(301);
        assert!(!g.fail(k, later));
        for _ in 0..3 {
            g.fail(k, later);
        }
        assert!(g.fail(k, later));
        assert!(g.throttled(k, later).is_some());
        assert!(g.throttled(k, later + Duration::from_secs(301)).is_none());
        assert!(matches!(
            g.admit(k, later + Duration::from_secs(301)),
            Verdict::Go(_)
        ));
    }

    #[test]
    fn capacity_is_fixed_and_the_least_recent_is_evicted() {
        let t0 = Instant::now();
        let mut r = rules();
        r.capacity = 64;
        let g = GuessTable::new(r, t0);
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0xC612_0000 + i);
            g.fail(SourceKey::new(ip.into(), 32, 64), t0);
        }
        assert!(g.len() <= 64, "{}", g.len());
        assert!(g.evicted() >= 10_000 - 64);
        let held: usize = g.shards.iter().map(|s| lock(s).map.len()).sum();
        assert_eq!(g.len(), held, "the counter is the tables' size");
    }

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let t0 = Instant::now();
        let r = GuessRules {
            threshold: 1,
            window: Duration::MAX,
            interval: Duration::MAX,
            queue: u32::MAX,
            capacity: 1,
        };
        let g = GuessTable::new(r, t0);
        let k = key("198.18.0.1");
        assert!(g.fail(k, t0));
        assert!(matches!(g.admit(k, t0), Verdict::Wait(..)));
        assert!(g.throttled(k, t0).is_some());
    }
}
