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
//! Performance matters: this is on the bulk-transfer hot path (>1 GB/s).

/// See the module documentation.
#[derive(Debug)]
pub struct SendBuffer {
    _todo: (),
}

impl SendBuffer {
    pub fn new(_capacity: usize) -> Self {
        todo!("send buffer helper")
    }
    pub fn capacity(&self) -> usize {
        todo!()
    }
    pub fn write(&mut self, _data: &[u8]) -> usize {
        todo!()
    }
    pub fn free(&self) -> usize {
        todo!()
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn start(&self) -> u64 {
        todo!()
    }
    pub fn end(&self) -> u64 {
        todo!()
    }
    pub fn slice(&self, _offset: u64, _max_len: usize) -> &[u8] {
        todo!()
    }
    pub fn copy_out(&self, _offset: u64, _out: &mut [u8]) -> usize {
        todo!()
    }
    pub fn ack_to(&mut self, _offset: u64) {
        todo!()
    }
}
