//! TCP sequence numbers: 32-bit values compared modulo 2^32 (RFC 9293 §3.4).

use core::cmp::Ordering;
use core::fmt;
use core::ops::{Add, Sub};

/// A TCP sequence number. Comparisons follow RFC 9293 §3.4: `a < b` iff
/// `(b - a) mod 2^32` is in `1..2^31`. This is not a total order over all of
/// `u32`, so the type implements `PartialOrd` only.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// Signed distance `self - other`, meaningful when the two are within 2^31.
    pub fn diff(self, other: SeqNumber) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// The later of two sequence numbers.
    pub fn max(self, other: SeqNumber) -> SeqNumber {
        if self.diff(other) >= 0 {
            self
        } else {
            other
        }
    }

    /// The earlier of two sequence numbers.
    pub fn min(self, other: SeqNumber) -> SeqNumber {
        if self.diff(other) <= 0 {
            self
        } else {
            other
        }
    }

    /// `lo <= self < hi` in sequence space (RFC 9293 §3.4 window test).
    pub fn in_window(self, lo: SeqNumber, hi: SeqNumber) -> bool {
        self.diff(lo) >= 0 && hi.diff(self) > 0
    }
}

impl Add<usize> for SeqNumber {
    type Output = SeqNumber;
    fn add(self, rhs: usize) -> SeqNumber {
        // Truncation is the point: sequence space is modulo 2^32.
        SeqNumber(self.0.wrapping_add(rhs as u32))
    }
}

impl Add<u32> for SeqNumber {
    type Output = SeqNumber;
    fn add(self, rhs: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(rhs))
    }
}

impl Sub<SeqNumber> for SeqNumber {
    type Output = i32;
    fn sub(self, rhs: SeqNumber) -> i32 {
        self.diff(rhs)
    }
}

impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &SeqNumber) -> Option<Ordering> {
        Some(self.diff(*other).cmp(&0))
    }
}

impl fmt::Debug for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    #[test]
    fn wraps() {
        let a = SeqNumber(u32::MAX - 1);
        let b = a + 4usize;
        assert_eq!(b, SeqNumber(2));
        assert!(a < b);
        assert!(b > a);
        assert_eq!(b - a, 4);
        assert!(SeqNumber(u32::MAX).in_window(a, b));
        assert!(!b.in_window(a, b));
    }

    quickcheck! {
        fn add_then_sub_is_identity(a: u32, n: u32) -> bool {
            let n = n & 0x7fff_ffff;
            let s = SeqNumber(a);
            (s + n) - s == n as i32 && (n == 0 || s < s + n)
        }
    }
}
