//! XTCP wire codec: the XTCP header followed by an RFC 9293 TCP header with
//! options and the payload, all inside one UDP datagram.
//!
//! CONTRACT (the state machine codes against these types; keep them stable):
//! - [`SegmentRepr::parse`] validates once and returns a typed view borrowing
//!   the payload; every malformed input is a [`WireError`], never a panic.
//! - [`SegmentRepr::buffer_len`] is the exact encoded length;
//!   [`SegmentRepr::emit`] writes into the caller's buffer and returns the
//!   length written, or [`WireError::BufferTooSmall`].
//! - The checksum field covers the whole datagram (see spec/xtcp.md); a bad
//!   checksum is [`WireError::BadChecksum`].

use crate::seq::SeqNumber;
use core::fmt;

/// Version carried in the first byte of every XTCP datagram.
pub const XTCP_VERSION: u8 = 1;
/// Length of the XTCP header that precedes the TCP header.
pub const XTCP_HEADER_LEN: usize = 12;
/// Minimum TCP header length (RFC 9293 §3.1).
pub const TCP_HEADER_LEN: usize = 20;
/// Maximum TCP header length (data offset 15 × 4).
pub const TCP_MAX_HEADER_LEN: usize = 60;
/// At most this many SACK blocks are carried (RFC 2018 §3: 4 without timestamps, 3 with).
pub const MAX_SACK_BLOCKS: usize = 4;

/// TCP control bits (RFC 9293 §3.1, RFC 3168 for ECE/CWR).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);
    pub const ECE: TcpFlags = TcpFlags(0x40);
    pub const CWR: TcpFlags = TcpFlags(0x80);

    pub const fn empty() -> Self {
        TcpFlags(0)
    }
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }
    pub fn syn(self) -> bool {
        self.contains(Self::SYN)
    }
    pub fn ack(self) -> bool {
        self.contains(Self::ACK)
    }
    pub fn fin(self) -> bool {
        self.contains(Self::FIN)
    }
    pub fn rst(self) -> bool {
        self.contains(Self::RST)
    }
    pub fn psh(self) -> bool {
        self.contains(Self::PSH)
    }
}

impl core::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        self.union(rhs)
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(TcpFlags, &str); 8] = [
            (TcpFlags::SYN, "S"),
            (TcpFlags::FIN, "F"),
            (TcpFlags::RST, "R"),
            (TcpFlags::PSH, "P"),
            (TcpFlags::ACK, "."),
            (TcpFlags::URG, "U"),
            (TcpFlags::ECE, "E"),
            (TcpFlags::CWR, "W"),
        ];
        let mut any = false;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                f.write_str(name)?;
                any = true;
            }
        }
        if !any {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// One SACK block: the sequence range `[left, right)` (RFC 2018 §3).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SackBlock {
    pub left: SeqNumber,
    pub right: SeqNumber,
}

/// The TCP options XTCP understands. Unknown options are skipped on parse
/// (by their length byte) and never emitted.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TcpOptions {
    /// Maximum segment size (kind 2, RFC 9293 §3.7.1). SYN only.
    pub mss: Option<u16>,
    /// Window scale shift (kind 3, RFC 7323 §2). SYN only. Parsed values above 14 are clamped to 14 by the state machine, not the codec.
    pub window_scale: Option<u8>,
    /// SACK permitted (kind 4, RFC 2018 §2). SYN only.
    pub sack_permitted: bool,
    /// SACK blocks (kind 5, RFC 2018 §3); the first `sack_len` entries are valid.
    pub sack: [SackBlock; MAX_SACK_BLOCKS],
    pub sack_len: u8,
    /// Timestamps (kind 8, RFC 7323 §3): (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
}

impl TcpOptions {
    /// The valid SACK blocks.
    pub fn sack_blocks(&self) -> &[SackBlock] {
        let n = usize::from(self.sack_len).min(MAX_SACK_BLOCKS);
        &self.sack[..n]
    }
}

/// The XTCP header's flag bits (first byte after the version).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct XtcpFlags(pub u8);

/// A parsed (or to-be-emitted) XTCP datagram.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SegmentRepr<'a> {
    /// XTCP header flags (reserved; 0 today).
    pub xflags: XtcpFlags,
    /// 64-bit connection id, chosen by the connecting side.
    pub conn_id: u64,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: SeqNumber,
    pub ack: SeqNumber,
    pub flags: TcpFlags,
    /// The raw (unscaled) 16-bit window field.
    pub window: u16,
    pub options: TcpOptions,
    pub payload: &'a [u8],
}

/// Why a datagram could not be parsed or emitted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than the headers it claims.
    Truncated,
    /// Version byte is not [`XTCP_VERSION`].
    BadVersion(u8),
    /// TCP data offset below 5 or beyond the datagram.
    BadDataOffset,
    /// An option's length byte is invalid or runs past the header.
    BadOption,
    /// The checksum does not match.
    BadChecksum,
    /// Reserved bits set where the spec requires zero.
    Reserved,
    /// The output buffer is too small for [`SegmentRepr::buffer_len`].
    BufferTooSmall,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("truncated datagram"),
            WireError::BadVersion(v) => write!(f, "bad xtcp version {v}"),
            WireError::BadDataOffset => f.write_str("bad tcp data offset"),
            WireError::BadOption => f.write_str("malformed tcp option"),
            WireError::BadChecksum => f.write_str("bad checksum"),
            WireError::Reserved => f.write_str("reserved bits set"),
            WireError::BufferTooSmall => f.write_str("buffer too small"),
        }
    }
}

impl std::error::Error for WireError {}

impl<'a> SegmentRepr<'a> {
    /// Parse and validate one datagram.
    pub fn parse(_datagram: &'a [u8]) -> Result<SegmentRepr<'a>, WireError> {
        todo!("wire codec helper")
    }

    /// Exact encoded length of this segment (headers, options with padding, payload).
    pub fn buffer_len(&self) -> usize {
        todo!("wire codec helper")
    }

    /// Length of the headers (XTCP + TCP with options) only.
    pub fn header_len(&self) -> usize {
        todo!("wire codec helper")
    }

    /// Encode into `buf`, computing the checksum; returns the bytes written.
    pub fn emit(&self, _buf: &mut [u8]) -> Result<usize, WireError> {
        todo!("wire codec helper")
    }

    /// Sequence space this segment occupies: payload length + SYN + FIN (RFC 9293 §3.4).
    pub fn segment_len(&self) -> usize {
        self.payload.len() + usize::from(self.flags.syn()) + usize::from(self.flags.fin())
    }
}

/// Read only the connection id of a datagram (for demultiplexing), checking
/// only the version and length. Does not verify the checksum.
pub fn peek_conn_id(_datagram: &[u8]) -> Result<u64, WireError> {
    todo!("wire codec helper")
}
