//! Accept slots per source (`spec/direct.md` §4.2, §4.3.2): how many
//! accepted direct connections may be proving themselves at once, in all and
//! from one source, so that one stranger's address cannot take every slot
//! and push the session back to the relay.
//!
//! A *source* is an IPv4 address (an IPv4-mapped IPv6 address counts as
//! its IPv4 address) or an IPv6 /64, the unit a single party usually holds
//! (`spec/relay.md` uses the same one for the relay's admission). The table
//! is sans-IO and holds at most `total` entries.
//!
//! ```text
//!   accepted from ip ──► take(ip) ──► Ok(slot) ─ prove ─► give_back(slot)
//!                                 └─► Err(Full | SourceShare): close at once
//! ```

use core::fmt;
use core::net::IpAddr;

/// Accepted TCP connections proving at once on one listener socket.
pub const LISTENER_SLOTS: usize = 64;
/// Of those, from one source.
pub const LISTENER_SLOTS_PER_SOURCE: usize = 4;
/// Accepted XTCP connections proving at once from one source in one UDP
/// attempt (of [`super::punch::MAX_CONNECTS`]).
pub const XTCP_SLOTS_PER_SOURCE: usize = 2;

/// A source as the slots count it: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(u128);

impl Source {
    /// The source `ip` belongs to.
    pub fn of(ip: IpAddr) -> Source {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            // IPv4 keys live in ::ffff:0:0/96, apart from every /64 key.
            IpAddr::V4(v4) => Source((0xffff_u128 << 32) | u128::from(u32::from(v4))),
            IpAddr::V6(v6) => Source(u128::from(v6) & !u128::from(u64::MAX)),
        }
    }
}

/// One slot, held while an accepted connection proves itself; hand it back
/// with [`AcceptSlots::give_back`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a slot is held until given back"]
pub struct Slot(Source);

/// Why a connection gets no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// Every slot is taken.
    Full,
    /// Its source holds its share already.
    SourceShare,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::Full => "every accept slot is taken",
            Refused::SourceShare => "the source holds its share of accept slots",
        })
    }
}

/// The slots of one listener (or one UDP attempt's endpoint).
#[derive(Debug)]
pub struct AcceptSlots {
    total: usize,
    per_source: usize,
    /// Sources holding slots, with how many (each entry holds at least one,
    /// so there are at most `total` entries).
    held: Vec<(Source, usize)>,
    used: usize,
}

impl AcceptSlots {
    /// `total` slots, at most `per_source` of them for one source.
    pub fn new(total: usize, per_source: usize) -> Self {
        AcceptSlots {
            total,
            per_source,
            held: Vec::new(),
            used: 0,
        }
    }

    /// Every slot is taken (stop accepting until one is given back).
    pub fn is_full(&self) -> bool {
        self.used >= self.total
    }

    /// Slots held now, in all.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Slots held now by `ip`'s source.
    pub fn held_by(&self, ip: IpAddr) -> usize {
        let s = Source::of(ip);
        self.held
            .iter()
            .find(|(k, _)| *k == s)
            .map_or(0, |(_, n)| *n)
    }

    /// A slot for a connection accepted from `ip`.
    pub fn take(&mut self, ip: IpAddr) -> Result<Slot, Refused> {
        if self.is_full() {
            return Err(Refused::Full);
        }
        let s = Source::of(ip);
        match self.held.iter_mut().find(|(k, _)| *k == s) {
            //= spec/direct.md#DI-SLOT-1
            //# MUST NOT let one source hold more than its share
            Some((_, n)) if *n >= self.per_source => return Err(Refused::SourceShare),
            Some((_, n)) => *n += 1,
            None => self.held.push((s, 1)),
        }
        self.used += 1;
        Ok(Slot(s))
    }

    /// The connection holding `slot` is done (proven, failed or timed out).
    pub fn give_back(&mut self, slot: Slot) {
        if let Some(i) = self.held.iter().position(|(k, _)| *k == slot.0) {
            if let Some((_, n)) = self.held.get_mut(i) {
                *n -= 1;
                if *n == 0 {
                    self.held.swap_remove(i);
                }
            }
            self.used = self.used.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal")
    }

    //= spec/direct.md#DI-SLOT-1
    #[test]
    fn one_source_gets_its_share_and_the_others_the_rest() {
        let mut t = AcceptSlots::new(8, 2);
        let a = [t.take(ip("198.18.0.1")), t.take(ip("198.18.0.1"))];
        assert!(a.iter().all(Result::is_ok));
        assert_eq!(t.take(ip("198.18.0.1")), Err(Refused::SourceShare));
        // An IPv4-mapped address is the same source.
        assert_eq!(t.take(ip("::ffff:198.18.0.1")), Err(Refused::SourceShare));
        assert!(t.take(ip("198.18.0.2")).is_ok());
        // One IPv6 /64 is one source; the next /64 is another.
        assert!(t.take(ip("2001:db8:0:1::1")).is_ok());
        assert!(t.take(ip("2001:db8:0:1:ffff::2")).is_ok());
        assert_eq!(t.take(ip("2001:db8:0:1::3")), Err(Refused::SourceShare));
        assert!(t.take(ip("2001:db8:0:2::1")).is_ok());
        assert_eq!(t.used(), 6);
        // Giving one back lets the source in again.
        let [first, _] = a;
        t.give_back(first.expect("taken"));
        assert_eq!(t.held_by(ip("198.18.0.1")), 1);
        assert!(t.take(ip("198.18.0.1")).is_ok());
    }

    #[test]
    fn the_total_is_bounded_and_given_back_slots_are_reused() {
        let mut t = AcceptSlots::new(3, 3);
        let s: Vec<Slot> = (1..=3u8)
            .filter_map(|i| t.take(IpAddr::from([198, 18, 0, i])).ok())
            .collect();
        assert_eq!(s.len(), 3);
        assert!(t.is_full());
        assert_eq!(t.take(ip("198.18.0.9")), Err(Refused::Full));
        for x in s {
            t.give_back(x);
        }
        assert_eq!((t.used(), t.held.len()), (0, 0));
        assert!(t.take(ip("198.18.0.9")).is_ok());
    }
}
