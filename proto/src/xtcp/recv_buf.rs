//! The receive buffer: in-order bytes waiting for the application, plus
//! out-of-order ranges waiting for the hole before them to fill, and the SACK
//! blocks that describe those ranges (RFC 2018 §4).
//!
//! Positions are 64-bit *stream offsets* (0 = first byte after the SYN); the
//! connection maps sequence numbers to offsets.
//!
//! CONTRACT (used by the connection; keep stable):
//! - `RecvBuffer::new(capacity)`: at most `capacity` bytes are held (in-order
//!   unread + out-of-order). Memory grows with what is held, not with capacity
//!   (an idle connection must stay small).
//! - `insert(offset, data) -> Inserted`: stores the part of `data` that lies in
//!   `[contiguous_end(), read_offset() + capacity)`; duplicates are ignored;
//!   returns how far `contiguous_end()` advanced and whether anything new
//!   arrived out of order. Bounded number of out-of-order ranges
//!   (`MAX_RANGES`); a segment that would need more is dropped (returns
//!   `accepted: false`).
//! - `contiguous_end()`: offset of the first missing byte (i.e. RCV.NXT).
//! - `read_offset()`: offset of the next byte the application will read.
//! - `window()`: `read_offset() + capacity - contiguous_end()` (free space to
//!   advertise, RFC 9293 §3.8.6.2).
//! - `readable()`: in-order bytes available to read.
//! - `read(&mut [u8]) -> usize`, `chunk() -> &[u8]` + `consume(n)` for
//!   zero-copy reads.
//! - `sack_blocks(out: &mut [(u64,u64)]) -> usize`: the out-of-order ranges as
//!   SACK blocks, first the block containing the most recently received
//!   segment, then the others by recency of their last update (RFC 2018 §4).

use std::collections::VecDeque;

/// Most out-of-order ranges held at once.
pub const MAX_RANGES: usize = 32;
/// Allocation kept once the in-order part has been read empty.
const IDLE_KEEP: usize = 16 * 1024;

/// What an [`RecvBuffer::insert`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Inserted {
    /// Bytes by which `contiguous_end()` advanced.
    pub advanced: usize,
    /// Some byte of the segment was new and stored out of order.
    pub out_of_order: bool,
    /// Some byte was new (false for a pure duplicate or a dropped segment).
    pub new_data: bool,
    /// False if the segment was dropped for lack of range slots.
    pub accepted: bool,
}

#[derive(Debug, Clone)]
struct Range {
    start: u64,
    data: Vec<u8>,
    /// Recency of the last insert touching this range (RFC 2018 §4 ordering).
    stamp: u64,
}

impl Range {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct RecvBuffer {
    capacity: usize,
    read_off: u64,
    inorder: VecDeque<u8>,
    /// Sorted, disjoint, non-adjacent ranges above `contiguous_end()`.
    ooo: Vec<Range>,
    ooo_bytes: usize,
    clock: u64,
}

impl RecvBuffer {
    /// An empty buffer that holds at most `capacity` bytes (in order plus out of order), starting at offset 0.
    pub fn new(capacity: usize) -> Self {
        RecvBuffer {
            capacity,
            read_off: 0,
            inorder: VecDeque::new(),
            ooo: Vec::new(),
            ooo_bytes: 0,
            clock: 0,
        }
    }
    /// Most bytes held at once (unread in order plus out of order); the receive window's size.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Bytes held (in order and out of order).
    pub fn held(&self) -> usize {
        self.inorder.len() + self.ooo_bytes
    }
    /// Heap bytes currently allocated (for memory tests).
    pub fn heap_bytes(&self) -> usize {
        self.inorder.capacity() + self.ooo.iter().map(|r| r.data.capacity()).sum::<usize>()
    }

    /// Stores the part of `data` (starting at stream offset `offset`) that lies in
    /// [`contiguous_end`](Self::contiguous_end)..[`read_offset`](Self::read_offset) + capacity;
    /// duplicates are ignored; dropped (`accepted: false`) if it would need more than [`MAX_RANGES`] out-of-order ranges.
    pub fn insert(&mut self, offset: u64, data: &[u8]) -> Inserted {
        let ce = self.contiguous_end();
        let limit = self.read_off + self.capacity as u64;
        let s = offset.max(ce);
        let e = (offset + data.len() as u64).min(limit);
        let mut res = Inserted {
            accepted: true,
            ..Inserted::default()
        };
        if s >= e {
            return res;
        }
        let piece = data
            .get((s - offset) as usize..(e - offset) as usize)
            .unwrap_or(&[]);
        if s == ce {
            // In order: append, then absorb out-of-order ranges the new data reaches.
            self.inorder.extend(piece);
            res.new_data = true;
            let mut end = e;
            while let Some(first) = self.ooo.first() {
                if first.start > end {
                    break;
                }
                let r = self.ooo.remove(0);
                self.ooo_bytes -= r.data.len();
                if r.end() > end {
                    let skip = (end - r.start) as usize;
                    self.inorder.extend(r.data.get(skip..).unwrap_or(&[]));
                    end = r.end();
                }
            }
            res.advanced = (end - ce) as usize;
            return res;
        }
        // Out of order: merge [s, e) with every range it overlaps or touches.
        let lo = self.ooo.partition_point(|r| r.end() < s);
        let hi = self.ooo.partition_point(|r| r.start <= e);
        if lo == hi && self.ooo.len() >= MAX_RANGES {
            return Inserted {
                accepted: false,
                ..Inserted::default()
            };
        }
        self.clock += 1;
        // The common case under loss: segments after a hole arrive in order
        // and extend the one range they touch at its end. Append in place
        // (amortised O(segment)) instead of rebuilding the range, which
        // would copy the whole range per segment (quadratic in the window).
        if hi == lo + 1 {
            if let Some(r) = self.ooo.get_mut(lo).filter(|r| r.start <= s) {
                let old_end = r.end();
                if e > old_end {
                    let add = piece.get((old_end - s) as usize..).unwrap_or(&[]);
                    r.data.extend_from_slice(add);
                    self.ooo_bytes += add.len();
                    res.new_data = true;
                    res.out_of_order = true;
                }
                r.stamp = self.clock;
                return res;
            }
        }
        let covered: u64 = self.ooo[lo..hi]
            .iter()
            .map(|r| r.end().min(e).saturating_sub(r.start.max(s)))
            .sum();
        if covered < e - s {
            res.new_data = true;
            res.out_of_order = true;
        }
        let start = self.ooo.get(lo).map_or(s, |r| r.start.min(s));
        let end = self
            .ooo
            .get(hi.wrapping_sub(1))
            .filter(|_| hi > lo)
            .map_or(e, |r| r.end().max(e));
        let mut merged = Vec::with_capacity((end - start) as usize);
        let mut pos = start;
        for r in self.ooo.drain(lo..hi) {
            if r.start > pos {
                // Gap before this range: fill it from the new segment.
                merged.extend_from_slice(
                    piece
                        .get((pos - s) as usize..(r.start - s) as usize)
                        .unwrap_or(&[]),
                );
            }
            // Keep the first copy of bytes already held.
            merged.extend_from_slice(&r.data);
            pos = r.end();
            self.ooo_bytes -= r.data.len();
        }
        if end > pos {
            merged.extend_from_slice(piece.get((pos - s) as usize..).unwrap_or(&[]));
        }
        self.ooo_bytes += merged.len();
        self.ooo.insert(
            lo,
            Range {
                start,
                data: merged,
                stamp: self.clock,
            },
        );
        res
    }

    /// Offset of the first missing byte (RCV.NXT as an offset, RFC 9293 §3.3.1).
    pub fn contiguous_end(&self) -> u64 {
        self.read_off + self.inorder.len() as u64
    }
    /// Offset of the next byte the application will read.
    pub fn read_offset(&self) -> u64 {
        self.read_off
    }
    /// Free space to advertise, bytes: read offset + capacity − contiguous end (RFC 9293 §3.8.6.2).
    pub fn window(&self) -> usize {
        (self.read_off + self.capacity as u64).saturating_sub(self.contiguous_end()) as usize
    }
    /// In-order bytes available to the application.
    pub fn readable(&self) -> usize {
        self.inorder.len()
    }
    /// True if some out-of-order range is held (a hole is open).
    pub fn has_out_of_order(&self) -> bool {
        !self.ooo.is_empty()
    }
    /// Copies and consumes up to `out.len()` in-order bytes; returns the count.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let mut done = 0;
        while done < out.len() {
            let c = self.chunk();
            let n = c.len().min(out.len() - done);
            if n == 0 {
                break;
            }
            if let (Some(dst), Some(src)) = (out.get_mut(done..done + n), c.get(..n)) {
                dst.copy_from_slice(src);
            }
            self.consume(n);
            done += n;
        }
        done
    }
    /// The first contiguous run of in-order bytes (zero-copy read; follow with [`consume`](Self::consume));
    /// may be shorter than [`readable`](Self::readable) at the ring's wrap.
    pub fn chunk(&self) -> &[u8] {
        self.inorder.as_slices().0
    }
    /// Marks `n` in-order bytes as read (clamped to [`readable`](Self::readable)).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.inorder.len());
        self.inorder.drain(..n);
        self.read_off += n as u64;
        if self.inorder.is_empty() && self.inorder.capacity() > IDLE_KEEP {
            self.inorder = VecDeque::new();
        }
    }
    /// Writes the out-of-order ranges as `(start, end)` offset pairs into `out`, most recently updated first
    /// (RFC 2018 §4); returns how many were written.
    pub fn sack_blocks(&self, out: &mut [(u64, u64)]) -> usize {
        // RFC 2018 §4: the most recently updated range first, then by recency.
        let mut idx: Vec<usize> = (0..self.ooo.len()).collect();
        idx.sort_unstable_by(|&a, &b| self.ooo[b].stamp.cmp(&self.ooo[a].stamp));
        let mut n = 0;
        for (slot, i) in out.iter_mut().zip(idx) {
            let r = &self.ooo[i];
            *slot = (r.start, r.end());
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{quickcheck, TestResult};

    #[test]
    fn rfc2018_ordering() {
        let mut b = RecvBuffer::new(10_000);
        b.insert(1000, &[1; 500]);
        b.insert(3000, &[1; 500]);
        b.insert(2000, &[1; 500]);
        let mut out = [(0, 0); 4];
        assert_eq!(b.sack_blocks(&mut out), 3);
        assert_eq!(&out[..3], &[(2000, 2500), (3000, 3500), (1000, 1500)]);
        // Extending an older block makes it the first.
        b.insert(1500, &[1; 100]);
        assert_eq!(b.sack_blocks(&mut out), 3);
        assert_eq!(out[0], (1000, 1600));
    }

    #[test]
    fn range_limit_drops_the_33rd() {
        let mut b = RecvBuffer::new(1 << 20);
        for i in 0..MAX_RANGES as u64 {
            assert!(b.insert(100 + i * 10, &[0; 5]).accepted);
        }
        let r = b.insert(10_000, &[0; 5]);
        assert!(!r.accepted && !r.new_data);
        // One that merges is still fine.
        assert!(b.insert(105, &[0; 5]).accepted);
        // And filling the front collapses ranges.
        let r = b.insert(0, &[0; 100]);
        assert_eq!(r.advanced, 100 + 15);
    }

    #[test]
    fn window_and_capacity_trim() {
        let mut b = RecvBuffer::new(100);
        assert_eq!(b.window(), 100);
        let r = b.insert(0, &[7; 150]);
        assert_eq!(r.advanced, 100);
        assert_eq!(b.window(), 0);
        let mut out = [0u8; 30];
        assert_eq!(b.read(&mut out), 30);
        assert_eq!(b.window(), 30);
        assert_eq!(b.insert(100, &[1; 50]).advanced, 30);
        assert_eq!(b.held(), 100);
    }

    #[test]
    fn memory_released_when_read() {
        let mut b = RecvBuffer::new(1 << 20);
        b.insert(0, &vec![1; 1 << 20]);
        let mut out = vec![0u8; 1 << 20];
        assert_eq!(b.read(&mut out), 1 << 20);
        assert_eq!(b.heap_bytes(), 0);
    }

    quickcheck! {
        fn reassembles_any_delivery_order(len: u16, cuts: Vec<(u16, u16)>, cap: u16) -> TestResult {
            let len = usize::from(len % 3000);
            let cap = 1 + usize::from(cap % 2000);
            let stream: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut b = RecvBuffer::new(cap);
            let mut got: Vec<u8> = Vec::new();
            let mut latest: Option<(u64, u64)> = None;
            let mut segs: Vec<(usize, usize)> = cuts.iter().map(|(a, l)| {
                let a = usize::from(*a) % (len + 1);
                (a, (a + usize::from(*l) % 400).min(len))
            }).collect();
            // Then deliver everything in order so the stream must complete.
            let mut k = 0;
            while k < len { segs.push((k, (k + 300).min(len))); k += 300; }
            for (i, (a, e)) in segs.into_iter().enumerate() {
                let r = b.insert(a as u64, &stream[a..e]);
                if r.out_of_order { latest = Some((a as u64, e as u64)); }
                if b.held() > cap { return TestResult::error("over capacity"); }
                let mut blocks = [(0u64, 0u64); 4];
                let n = b.sack_blocks(&mut blocks);
                for (l, r) in &blocks[..n] {
                    if *l <= b.contiguous_end() || l >= r { return TestResult::error("bad block"); }
                }
                if r.out_of_order && n > 0 {
                    let (la, le) = latest.unwrap_or((0, 0));
                    let (l, r) = blocks[0];
                    // The first block contains (the stored part of) the latest out-of-order segment.
                    if !(l < le && la < r) {
                        return TestResult::error(format!("first block {:?} misses latest {:?}", (l, r), (la, le)));
                    }
                }
                if i % 3 == 0 {
                    let mut out = vec![0u8; 97];
                    let n = b.read(&mut out);
                    got.extend_from_slice(&out[..n]);
                }
            }
            let mut out = vec![0u8; 4096];
            for _ in 0..10_000 {
                // The in-order pass above may have stopped at capacity: feed the rest.
                let ce = b.contiguous_end() as usize;
                if ce < len { b.insert(ce as u64, &stream[ce..]); }
                let n = b.read(&mut out);
                got.extend_from_slice(&out[..n]);
                if n == 0 && b.contiguous_end() as usize >= len { break; }
            }
            TestResult::from_bool(got == stream)
        }
    }
}
