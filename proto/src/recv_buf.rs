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

/// Most out-of-order ranges held at once.
pub const MAX_RANGES: usize = 32;

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

/// See the module documentation.
#[derive(Debug)]
pub struct RecvBuffer {
    _todo: (),
}

impl RecvBuffer {
    pub fn new(_capacity: usize) -> Self {
        todo!("recv buffer helper")
    }
    pub fn capacity(&self) -> usize {
        todo!()
    }
    pub fn insert(&mut self, _offset: u64, _data: &[u8]) -> Inserted {
        todo!()
    }
    pub fn contiguous_end(&self) -> u64 {
        todo!()
    }
    pub fn read_offset(&self) -> u64 {
        todo!()
    }
    pub fn window(&self) -> usize {
        todo!()
    }
    pub fn readable(&self) -> usize {
        todo!()
    }
    pub fn has_out_of_order(&self) -> bool {
        todo!()
    }
    pub fn read(&mut self, _out: &mut [u8]) -> usize {
        todo!()
    }
    pub fn chunk(&self) -> &[u8] {
        todo!()
    }
    pub fn consume(&mut self, _n: usize) {
        todo!()
    }
    pub fn sack_blocks(&self, _out: &mut [(u64, u64)]) -> usize {
        todo!()
    }
}
