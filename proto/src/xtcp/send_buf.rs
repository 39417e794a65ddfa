//! The send buffer: bytes the application wrote that are not yet
//! acknowledged, addressed by 64-bit stream offsets (0 = first byte after SYN).
//!
//! CONTRACT (used by the connection; keep stable):
//! - `SendBuffer::new(capacity)`; memory grows with what is held.
//! - `write(&[u8]) -> usize`: appends up to `free()` bytes.
//! - `free()`, `len()` (unacked + unsent bytes held), `start()` (offset of the
//!   first held byte = SND.UNA as an offset), `end()` (offset after the last
//!   written byte).
//! - `slice(offset, max_len) -> &[u8]`: a contiguous run of held bytes starting
//!   at `offset` (may be shorter than `max_len` at an internal chunk boundary;
//!   callers loop). Empty if `offset` is outside `[start(), end())`.
//! - `copy_out(offset, &mut [u8]) -> usize`: copies up to `out.len()` bytes
//!   from `offset` across chunk boundaries.
//! - `ack_to(offset)`: drops bytes before `offset` (no-op if already dropped,
//!   clamped to `end()`).
//!
//! Design: one `VecDeque<u8>` ring. Writes are a memcpy, `slice` is O(1) via
//! `as_slices` (a run is cut only where the ring wraps), `ack_to` is O(1)
//! amortised. The deque grows with what is held; when it drains to empty its
//! allocation is released if it is large, so an idle connection holds
//! (almost) no heap while a busy one keeps its ring between bursts.

use std::collections::VecDeque;

/// Keep at most this much allocation once the buffer has drained.
const IDLE_KEEP: usize = 16 * 1024;

/// See the module documentation.
#[derive(Debug)]
pub struct SendBuffer {
    capacity: usize,
    start: u64,
    data: VecDeque<u8>,
}

impl SendBuffer {
    /// An empty buffer that holds at most `capacity` bytes, starting at offset 0.
    pub fn new(capacity: usize) -> Self {
        SendBuffer {
            capacity,
            start: 0,
            data: VecDeque::new(),
        }
    }
    /// Most bytes the buffer holds (unacknowledged plus unsent).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Appends up to [`free`](Self::free) bytes of `data`; returns how many were taken.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        self.data.extend(data.get(..n).unwrap_or(&[]));
        n
    }
    /// Bytes that can still be written: capacity minus bytes held.
    pub fn free(&self) -> usize {
        self.capacity.saturating_sub(self.data.len())
    }
    /// Bytes held: sent-but-unacknowledged plus not-yet-sent.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// True if no bytes are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Stream offset of the first held byte (SND.UNA as an offset, RFC 9293 §3.3.1).
    pub fn start(&self) -> u64 {
        self.start
    }
    /// Stream offset just after the last written byte.
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
    /// Heap bytes currently allocated (for memory tests).
    pub fn heap_bytes(&self) -> usize {
        self.data.capacity()
    }
    /// A contiguous run of at most `max_len` held bytes from `offset`; may stop short at the ring's wrap
    /// (callers loop), empty if `offset` is outside [`start`](Self::start)..[`end`](Self::end).
    pub fn slice(&self, offset: u64, max_len: usize) -> &[u8] {
        if offset < self.start || offset >= self.end() {
            return &[];
        }
        let rel = (offset - self.start) as usize;
        let (a, b) = self.data.as_slices();
        let run = if rel < a.len() {
            a.get(rel..).unwrap_or(&[])
        } else {
            b.get(rel - a.len()..).unwrap_or(&[])
        };
        run.get(..max_len.min(run.len())).unwrap_or(&[])
    }
    /// Copies held bytes from `offset` into `out` across the ring's wrap; returns the count copied.
    pub fn copy_out(&self, offset: u64, out: &mut [u8]) -> usize {
        let mut done = 0;
        while done < out.len() {
            let run = self.slice(offset + done as u64, out.len() - done);
            if run.is_empty() {
                break;
            }
            if let Some(dst) = out.get_mut(done..done + run.len()) {
                dst.copy_from_slice(run);
            }
            done += run.len();
        }
        done
    }
    /// Drops bytes before stream offset `offset` (clamped to [`end`](Self::end); no-op if already dropped).
    pub fn ack_to(&mut self, offset: u64) {
        if offset <= self.start {
            return;
        }
        let n = ((offset - self.start) as usize).min(self.data.len());
        self.data.drain(..n);
        self.start += n as u64;
        if self.data.is_empty() && self.data.capacity() > IDLE_KEEP {
            self.data = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{quickcheck, Arbitrary, Gen};

    #[derive(Clone, Debug)]
    enum Op {
        Write(Vec<u8>),
        Ack(u16),
        Slice(u16, u16),
        Copy(u16, u16),
    }

    impl Arbitrary for Op {
        fn arbitrary(g: &mut Gen) -> Op {
            match u8::arbitrary(g) % 4 {
                0 => Op::Write(Vec::arbitrary(g)),
                1 => Op::Ack(u16::arbitrary(g) % 512),
                2 => Op::Slice(u16::arbitrary(g) % 512, u16::arbitrary(g) % 300),
                _ => Op::Copy(u16::arbitrary(g) % 512, u16::arbitrary(g) % 300),
            }
        }
    }

    quickcheck! {
        fn matches_vec_model(cap: u16, ops: Vec<Op>) -> bool {
            let cap = usize::from(cap % 400);
            let mut b = SendBuffer::new(cap);
            let mut model: Vec<u8> = Vec::new();
            let mut start = 0u64;
            for op in ops {
                match op {
                    Op::Write(d) => {
                        let n = b.write(&d);
                        let expect = d.len().min(cap - model.len());
                        if n != expect { return false; }
                        model.extend_from_slice(&d[..n]);
                    }
                    Op::Ack(k) => {
                        let off = start.saturating_sub(50) + u64::from(k);
                        b.ack_to(off);
                        if off > start {
                            let n = ((off - start) as usize).min(model.len());
                            model.drain(..n);
                            start += n as u64;
                        }
                    }
                    Op::Slice(k, m) => {
                        let off = start.saturating_sub(50) + u64::from(k);
                        let s = b.slice(off, usize::from(m));
                        if off < start || off >= start + model.len() as u64 {
                            if !s.is_empty() { return false; }
                        } else {
                            let rel = (off - start) as usize;
                            if s.len() > usize::from(m) || (m > 0 && s.is_empty()) { return false; }
                            if s != &model[rel..rel + s.len()] { return false; }
                        }
                    }
                    Op::Copy(k, m) => {
                        let off = start + u64::from(k);
                        let mut out = vec![0u8; usize::from(m)];
                        let n = b.copy_out(off, &mut out);
                        let rel = (off - start) as usize;
                        let expect = model.len().saturating_sub(rel).min(out.len());
                        if n != expect || out[..n] != model[rel.min(model.len())..rel.min(model.len()) + n] { return false; }
                    }
                }
                if b.start() != start || b.len() != model.len() || b.free() != cap - model.len() { return false; }
            }
            true
        }
    }

    #[test]
    fn memory_released_after_draining() {
        let mut b = SendBuffer::new(1 << 20);
        assert_eq!(b.heap_bytes(), 0);
        assert_eq!(b.write(&vec![1u8; 1 << 20]), 1 << 20);
        assert!(b.heap_bytes() >= 1 << 20);
        b.ack_to(1 << 20);
        assert_eq!(b.heap_bytes(), 0);
        assert_eq!(b.start(), 1 << 20);
        assert_eq!(b.end(), 1 << 20);
    }
}
