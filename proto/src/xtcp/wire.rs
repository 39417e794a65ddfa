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
//!
//! The layout (spec/xtcp.md §2):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Version = 1  |  XTCP Flags   |       Reserved (zero)         |  0
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  Connection ID (64 bits)                      |  4
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Source Port          |       Destination Port        | 12
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Sequence Number                        | 16
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Acknowledgment Number                      | 20
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Data |       |C|E|U|A|P|R|S|F|                               |
//! | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             | 24
//! |       |       |R|E|G|K|H|T|N|N|                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Checksum            |   Urgent Pointer (unused)     | 28
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               Options (0..40 bytes, padded to 4)              | 32
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                            Payload                            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Bytes 12.. are the TCP header of RFC 9293 §3.1 unchanged; the XTCP header
//! takes the place of the IP pseudo-header in the checksum.

use crate::xtcp::seq::SeqNumber;
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
    /// FIN, 0x01: no more data from the sender (RFC 9293 §3.1).
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// SYN, 0x02: synchronize sequence numbers (RFC 9293 §3.1).
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// RST, 0x04: reset the connection (RFC 9293 §3.1).
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// PSH, 0x08: push function (RFC 9293 §3.1).
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// ACK, 0x10: the acknowledgment number is significant (RFC 9293 §3.1).
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// URG, 0x20: urgent pointer significant (RFC 9293 §3.1); never sent by XTCP (spec/xtcp.md §10).
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// ECE, 0x40: ECN-Echo (RFC 3168 §6.1); carried, not negotiated by XTCP.
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// CWR, 0x80: Congestion Window Reduced (RFC 3168 §6.1); carried, not negotiated by XTCP.
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// No control bits set.
    pub const fn empty() -> Self {
        TcpFlags(0)
    }
    /// True if every bit of `other` is set in `self`.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// The bits of `self` and `other` together (also `|`).
    pub const fn union(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }
    /// SYN is set.
    pub fn syn(self) -> bool {
        self.contains(Self::SYN)
    }
    /// ACK is set.
    pub fn ack(self) -> bool {
        self.contains(Self::ACK)
    }
    /// FIN is set.
    pub fn fin(self) -> bool {
        self.contains(Self::FIN)
    }
    /// RST is set.
    pub fn rst(self) -> bool {
        self.contains(Self::RST)
    }
    /// PSH is set.
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
    /// Left edge: first sequence number of the block (RFC 2018 §3).
    pub left: SeqNumber,
    /// Right edge: sequence number just after the block's last byte (RFC 2018 §3).
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
    /// Number of valid entries in `sack` (0..=[`MAX_SACK_BLOCKS`]).
    pub sack_len: u8,
    /// Timestamps (kind 8, RFC 7323 §3): (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
    /// Path validation (kind 253, RFC 6994 experimental with an XTCP ExID;
    /// spec/xtcp.md §2.3, §8.1): a PATH_CHALLENGE or PATH_RESPONSE token.
    pub path: Option<PathOption>,
}

/// The XTCP path validation option (spec/xtcp.md §2.3, §8.1): an 8-byte
/// token sent to a new peer address ([`PathOption::Challenge`]) and echoed
/// back ([`PathOption::Response`]), after RFC 9000 §8.2's PATH_CHALLENGE /
/// PATH_RESPONSE.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PathOption {
    /// `fd 0c 58 43 <token:8>`: echo this token.
    Challenge(u64),
    /// `fd 0c 58 52 <token:8>`: the echo of a challenge's token.
    Response(u64),
}

impl PathOption {
    /// The token carried.
    pub fn token(self) -> u64 {
        match self {
            PathOption::Challenge(t) | PathOption::Response(t) => t,
        }
    }
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
    /// TCP source port (RFC 9293 §3.1); carried for the TUN bridge and captures, XTCP routes by `conn_id`.
    pub src_port: u16,
    /// TCP destination port (RFC 9293 §3.1); carried like `src_port`.
    pub dst_port: u16,
    /// Sequence number of the segment's first octet: the first payload byte, or the SYN (RFC 9293 §3.1, §3.4).
    pub seq: SeqNumber,
    /// Acknowledgment number: next sequence number expected; meaningful when ACK is set (RFC 9293 §3.1).
    pub ack: SeqNumber,
    /// TCP control bits (RFC 9293 §3.1).
    pub flags: TcpFlags,
    /// The raw (unscaled) 16-bit window field.
    pub window: u16,
    /// The TCP options carried.
    pub options: TcpOptions,
    /// Segment data after the headers (may be empty).
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

/// Maximum length of the TCP option area (RFC 9293 §3.1: data offset ≤ 15 words).
pub const MAX_OPTIONS_LEN: usize = TCP_MAX_HEADER_LEN - TCP_HEADER_LEN;

/// Length of the fixed part of a datagram: XTCP header + TCP header without options.
pub const FIXED_HEADER_LEN: usize = XTCP_HEADER_LEN + TCP_HEADER_LEN;

/// TCP option kinds XTCP knows (IANA "TCP Option Kind Numbers").
pub mod option_kind {
    /// End of option list (RFC 9293 §3.2). No length byte.
    pub const EOL: u8 = 0;
    /// No-operation (RFC 9293 §3.2). No length byte.
    pub const NOP: u8 = 1;
    /// Maximum segment size, length 4 (RFC 9293 §3.2, §3.7.1).
    pub const MSS: u8 = 2;
    /// Window scale, length 3 (RFC 7323 §2.2).
    pub const WINDOW_SCALE: u8 = 3;
    /// SACK permitted, length 2 (RFC 2018 §2).
    pub const SACK_PERMITTED: u8 = 4;
    /// SACK, length 2 + 8n (RFC 2018 §3).
    pub const SACK: u8 = 5;
    /// Timestamps, length 10 (RFC 7323 §3.2).
    pub const TIMESTAMPS: u8 = 8;
    /// Experimental option with a 16-bit ExID (RFC 6994 §3). XTCP's path
    /// validation uses it with the ExIDs below, length 12 (spec/xtcp.md §2.3).
    pub const EXPERIMENTAL: u8 = 253;
    /// ExID of PATH_CHALLENGE ("XC").
    pub const EXID_PATH_CHALLENGE: u16 = 0x5843;
    /// ExID of PATH_RESPONSE ("XR").
    pub const EXID_PATH_RESPONSE: u16 = 0x5852;
    /// Length of a path validation option: kind, length, ExID, 8-byte token.
    pub const PATH_LEN: u8 = 12;
}

/// Byte ranges of the fixed fields, as offsets from the start of the
/// datagram (smoltcp style). Every range lies inside [`FIXED_HEADER_LEN`].
mod field {
    pub type Field = core::ops::Range<usize>;

    // XTCP header.
    pub const VERSION: usize = 0;
    pub const XFLAGS: usize = 1;
    pub const XRESERVED: Field = 2..4;
    pub const CONN_ID: Field = 4..12;

    // TCP header (RFC 9293 §3.1), shifted by the 12-byte XTCP header.
    pub const SRC_PORT: Field = 12..14;
    pub const DST_PORT: Field = 14..16;
    pub const SEQ_NUM: Field = 16..20;
    pub const ACK_NUM: Field = 20..24;
    /// Data offset (high nibble) and 4 reserved bits (low nibble).
    pub const DATA_OFF: usize = 24;
    pub const FLAGS: usize = 25;
    pub const WINDOW: Field = 26..28;
    pub const CHECKSUM: Field = 28..30;
    pub const URGENT: Field = 30..32;
    pub const OPTIONS: usize = 32;
}

// Compile-time proof that the field table and the constants agree.
const _: () = assert!(field::OPTIONS == FIXED_HEADER_LEN);
const _: () = assert!(field::CONN_ID.end == XTCP_HEADER_LEN);

/// Read a big-endian integer of `N` bytes at `at`. Returns zeros if the range
/// is out of bounds, so it cannot panic; callers only pass ranges that
/// [`Segment::new_checked`] has proved in bounds.
#[inline(always)]
fn read_be<const N: usize>(data: &[u8], at: field::Field) -> [u8; N] {
    data.get(at)
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .unwrap_or([0; N])
}

#[inline(always)]
fn read_byte(data: &[u8], at: usize) -> u8 {
    data.get(at).copied().unwrap_or(0)
}

/// Write `bytes` at `at` if the range is in bounds and of the same length
/// (it always is for the fixed fields of a buffer of [`FIXED_HEADER_LEN`]).
#[inline(always)]
fn write_at(data: &mut [u8], at: field::Field, bytes: &[u8]) {
    if let Some(dst) = data.get_mut(at) {
        if dst.len() == bytes.len() {
            dst.copy_from_slice(bytes);
        }
    }
}

// ---------------------------------------------------------------------------
// Internet checksum (RFC 1071)
// ---------------------------------------------------------------------------

/// Bytes summed per block before the accumulator is folded. Each 4-byte word
/// adds less than 2^32, so a block adds less than 2^50 and the u64 cannot
/// overflow; the length is a multiple of 4 so every block but the last keeps
/// the 16-bit word alignment of the whole buffer.
const CHECKSUM_BLOCK: usize = 1 << 20;

/// Fold a wide one's complement accumulator to 16 bits. Since
/// 2^16 ≡ 1 (mod 2^16 − 1), adding the high part to the low part keeps the
/// one's complement sum (RFC 1071 §2(C), "deferred carries").
#[inline]
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // `sum <= 0xffff` here, so the conversion is lossless.
    u16::try_from(sum).unwrap_or(0xffff)
}

/// Sum `block` as little-endian 32-bit words (zero-padded on the right) into
/// a u64. See [`ones_complement_sum`] for why little-endian.
#[inline]
fn sum_block(block: &[u8]) -> u64 {
    let mut words = block.chunks_exact(4);
    // Plain `sum` of independent lanes: LLVM vectorises this loop.
    let body: u64 = (&mut words)
        .map(|w| u64::from(u32::from_le_bytes(<[u8; 4]>::try_from(w).unwrap_or([0; 4]))))
        .sum();
    // RFC 1071 §4.1: an odd trailing byte is padded with a zero byte; a
    // trailing 2- or 3-byte remainder is padded the same way to a 32-bit word.
    let mut tail = [0u8; 4];
    for (t, b) in tail.iter_mut().zip(words.remainder()) {
        *t = *b;
    }
    body + u64::from(u32::from_le_bytes(tail))
}

/// The folded 16-bit one's complement sum of `data` taken as big-endian 16-bit
/// words, an odd final byte padded with a zero byte (RFC 1071 §1, §4.1).
///
/// It sums 32-bit words into a 64-bit accumulator and folds once at the end,
/// which is equivalent to the 16-bit sum because 2^16 ≡ 1 (mod 2^16 − 1). The
/// words are read little-endian, which on common hosts is a plain load that
/// LLVM vectorises (about 1.6× faster than reading them big-endian), and the
/// folded result is byte-swapped: the one's complement sum of byte-swapped
/// words is the byte-swapped sum (RFC 1071 §2(B), byte order independence).
/// The result is the same on every host; `checksum_matches_reference` checks
/// it against the 16-bit big-endian reference.
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    for block in data.chunks(CHECKSUM_BLOCK) {
        // Keep `acc` below 2^33 before adding a block sum below 2^50.
        acc = (acc & 0xffff_ffff) + (acc >> 32) + sum_block(block);
    }
    fold(acc).swap_bytes()
}

/// The RFC 1071 Internet checksum of `data`: the one's complement of
/// [`ones_complement_sum`]. For XTCP, `data` is the whole datagram with the
/// checksum field zeroed (spec/xtcp.md §2.5).
pub fn internet_checksum(data: &[u8]) -> u16 {
    !ones_complement_sum(data)
}

// ---------------------------------------------------------------------------
// Zero-copy view
// ---------------------------------------------------------------------------

/// A read-only view of an XTCP datagram whose lengths have been checked.
///
/// [`Segment::new_checked`] is the only constructor. It proves once that the
/// buffer holds the version byte 1, the 32 fixed header bytes and the whole
/// TCP header the data offset claims, so every accessor below reads in-bounds
/// ranges. The accessors are written with `get` regardless, so even a buffer
/// whose `AsRef` impl changes its answer between calls cannot make them panic.
///
/// The view does not verify the checksum, the reserved bytes or the options:
/// [`SegmentRepr::parse`] does, in the order given in spec/xtcp.md §2.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Segment<T> {
    /// Wrap `buffer` after checking, in this order:
    /// empty → [`WireError::Truncated`]; version byte ≠ [`XTCP_VERSION`] →
    /// [`WireError::BadVersion`]; shorter than 32 bytes →
    /// [`WireError::Truncated`]; data offset < 5 or TCP header longer than
    /// the datagram → [`WireError::BadDataOffset`].
    pub fn new_checked(buffer: T) -> Result<Segment<T>, WireError> {
        let data = buffer.as_ref();
        //= spec/xtcp.md#parse-errors
        //# | 2 | byte 0 is not 1 | `BadVersion(byte 0)` |
        match data.first() {
            None => return Err(WireError::Truncated),
            Some(&v) if v != XTCP_VERSION => return Err(WireError::BadVersion(v)),
            Some(_) => {}
        }
        if data.len() < FIXED_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let seg = Segment { buffer };
        // RFC 9293 §3.1: the data offset counts 32-bit words; a TCP header is
        // at least 5 words.
        let tcp_len = seg.tcp_header_len();
        if tcp_len < TCP_HEADER_LEN || XTCP_HEADER_LEN + tcp_len > seg.buffer.as_ref().len() {
            return Err(WireError::BadDataOffset);
        }
        Ok(seg)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn data(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// XTCP version byte (always [`XTCP_VERSION`] for a checked view).
    pub fn version(&self) -> u8 {
        read_byte(self.data(), field::VERSION)
    }

    /// XTCP flags byte.
    pub fn xflags(&self) -> XtcpFlags {
        XtcpFlags(read_byte(self.data(), field::XFLAGS))
    }

    /// XTCP reserved bytes 2..4 (must be zero).
    pub fn xtcp_reserved(&self) -> u16 {
        u16::from_be_bytes(read_be(self.data(), field::XRESERVED))
    }

    /// Connection id.
    pub fn conn_id(&self) -> u64 {
        u64::from_be_bytes(read_be(self.data(), field::CONN_ID))
    }

    /// TCP source port (bytes 12..14).
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes(read_be(self.data(), field::SRC_PORT))
    }

    /// TCP destination port (bytes 14..16).
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes(read_be(self.data(), field::DST_PORT))
    }

    /// Sequence number (bytes 16..20, RFC 9293 §3.1).
    pub fn seq_number(&self) -> SeqNumber {
        SeqNumber(u32::from_be_bytes(read_be(self.data(), field::SEQ_NUM)))
    }

    /// Acknowledgment number (bytes 20..24, RFC 9293 §3.1).
    pub fn ack_number(&self) -> SeqNumber {
        SeqNumber(u32::from_be_bytes(read_be(self.data(), field::ACK_NUM)))
    }

    /// TCP header length in bytes: data offset × 4 (20..=60 for a checked view).
    pub fn tcp_header_len(&self) -> usize {
        usize::from(read_byte(self.data(), field::DATA_OFF) >> 4) * 4
    }

    /// Length of XTCP header + TCP header with options.
    pub fn header_len(&self) -> usize {
        XTCP_HEADER_LEN + self.tcp_header_len()
    }

    /// The 4 reserved bits after the data offset (ignored on receipt, RFC 9293 §3.1).
    pub fn tcp_reserved(&self) -> u8 {
        read_byte(self.data(), field::DATA_OFF) & 0x0f
    }

    /// TCP control bits (byte 25, RFC 9293 §3.1).
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(read_byte(self.data(), field::FLAGS))
    }

    /// The raw (unscaled) window field.
    pub fn window_len(&self) -> u16 {
        u16::from_be_bytes(read_be(self.data(), field::WINDOW))
    }

    /// The checksum field as received (bytes 28..30, spec/xtcp.md §2.5).
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes(read_be(self.data(), field::CHECKSUM))
    }

    /// The urgent pointer field (unused by XTCP: emitted 0, ignored).
    pub fn urgent_at(&self) -> u16 {
        u16::from_be_bytes(read_be(self.data(), field::URGENT))
    }

    /// The raw option bytes (`tcp_header_len() - 20` bytes, padding included).
    pub fn options(&self) -> &[u8] {
        self.data()
            .get(field::OPTIONS..self.header_len())
            .unwrap_or(&[])
    }

    /// The bytes after the TCP header.
    pub fn payload(&self) -> &[u8] {
        self.data().get(self.header_len()..).unwrap_or(&[])
    }

    /// Whether the checksum over the whole datagram is valid: the one's
    /// complement sum of all 16-bit words, checksum included, is 0xffff
    /// (RFC 1071 §1, "to check a checksum").
    pub fn verify_checksum(&self) -> bool {
        ones_complement_sum(self.data()) == 0xffff
    }
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

impl TcpOptions {
    /// Parse an option area (RFC 9293 §3.1 "Options", §3.2).
    ///
    /// EOL ends the list (what follows is padding and is ignored); NOP is
    /// skipped; every other kind has a length byte counting kind and length.
    /// A length below 2, an option running past the area, or a known kind
    /// with a length other than its own is [`WireError::BadOption`]. Unknown
    /// kinds are skipped by their length. When a kind appears twice the last
    /// one wins.
    pub fn parse(mut area: &[u8]) -> Result<TcpOptions, WireError> {
        use option_kind::*;
        let mut opts = TcpOptions::default();
        loop {
            match area {
                // RFC 9293 §3.2: End of Option List; the rest is padding.
                //= spec/xtcp.md#XT-OPT-2
                //# a receiver MUST NOT reject a datagram because they are not
                [] | [EOL, ..] => return Ok(opts),
                // RFC 9293 §3.2: No-Operation, a single byte.
                [NOP, rest @ ..] => area = rest,
                // A kind other than EOL/NOP without room for its length byte.
                //= spec/xtcp.md#XT-OPT-3
                //# if it is the last byte of the area (no length byte) ... MUST be rejected
                [_] => return Err(WireError::BadOption),
                [kind, len, ..] => {
                    let kind = *kind;
                    let len = usize::from(*len);
                    //= spec/xtcp.md#XT-OPT-3
                    //# its length is below 2, or the option runs past the end of the
                    //# TCP header, the datagram MUST be rejected with `BadOption`.
                    if len < 2 {
                        return Err(WireError::BadOption);
                    }
                    let (opt, rest) = area.split_at_checked(len).ok_or(WireError::BadOption)?;
                    area = rest;
                    opts.parse_one(kind, opt)?;
                }
            }
        }
    }

    /// Decode one option whose length byte has been checked to equal `opt.len()`.
    fn parse_one(&mut self, kind: u8, opt: &[u8]) -> Result<(), WireError> {
        use option_kind::*;
        match (kind, opt) {
            // RFC 9293 §3.2: MSS, length 4.
            (MSS, &[_, _, a, b]) => self.mss = Some(u16::from_be_bytes([a, b])),
            // RFC 7323 §2.2: window scale, length 3. Values above 14 are
            // passed through; the state machine clamps them (RFC 7323 §2.3).
            (WINDOW_SCALE, &[_, _, shift]) => self.window_scale = Some(shift),
            // RFC 2018 §2: SACK-permitted, length 2.
            (SACK_PERMITTED, &[_, _]) => self.sack_permitted = true,
            // RFC 7323 §3.2: timestamps, length 10.
            (TIMESTAMPS, &[_, _, a, b, c, d, e, f, g, h]) => {
                self.timestamps = Some((
                    u32::from_be_bytes([a, b, c, d]),
                    u32::from_be_bytes([e, f, g, h]),
                ));
            }
            // RFC 2018 §3: SACK, length 2 + 8n. n ≤ 4 always holds inside a
            // 40-byte option area; check it anyway rather than trust that.
            (SACK, [_, _, blocks @ ..])
                if !blocks.is_empty()
                    && blocks.chunks_exact(8).remainder().is_empty()
                    && blocks.len() <= 8 * MAX_SACK_BLOCKS =>
            {
                self.sack = [SackBlock::default(); MAX_SACK_BLOCKS];
                let mut n = 0u8;
                for (slot, b) in self.sack.iter_mut().zip(blocks.chunks_exact(8)) {
                    let b = <[u8; 8]>::try_from(b).unwrap_or([0; 8]);
                    *slot = SackBlock {
                        left: SeqNumber(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                        right: SeqNumber(u32::from_be_bytes([b[4], b[5], b[6], b[7]])),
                    };
                    n += 1;
                }
                self.sack_len = n;
            }
            //= spec/xtcp.md#options
            //# Kind 253 with ExID 0x5843 or 0x5852 is XTCP's path validation
            //# option and MUST have length 12.
            (EXPERIMENTAL, [_, _, x0, x1, rest @ ..])
                if matches!(
                    u16::from_be_bytes([*x0, *x1]),
                    EXID_PATH_CHALLENGE | EXID_PATH_RESPONSE
                ) =>
            {
                // `rest` is 8 bytes exactly when the length is 12.
                let token = <[u8; 8]>::try_from(rest).map_err(|_| WireError::BadOption)?;
                let token = u64::from_be_bytes(token);
                self.path = Some(if u16::from_be_bytes([*x0, *x1]) == EXID_PATH_CHALLENGE {
                    PathOption::Challenge(token)
                } else {
                    PathOption::Response(token)
                });
            }
            // A known kind with the wrong length.
            //= spec/xtcp.md#XT-OPT-4
            //# A **known kind** (2, 3, 4, 5, 8) whose length is not the one in the table MUST be
            //# rejected with `BadOption`.
            (MSS | WINDOW_SCALE | SACK_PERMITTED | TIMESTAMPS | SACK, _) => {
                return Err(WireError::BadOption)
            }
            //= spec/xtcp.md#XT-OPT-5
            //# An **unknown kind** MUST be skipped by its length byte and otherwise ignored
            _ => {}
        }
        Ok(())
    }

    /// How many SACK blocks [`TcpOptions::emit`] writes: all valid blocks if
    /// they fit in the 40-byte option area after the other options, else as
    /// many as fit (3 with timestamps, 4 without, fewer on a SYN).
    pub fn sack_blocks_emitted(&self) -> usize {
        let want = self.sack_blocks().len();
        if want == 0 {
            return 0;
        }
        let room = MAX_OPTIONS_LEN.saturating_sub(self.fixed_options_len() + 4);
        (room / 8).min(want)
    }

    /// Bytes of every option except SACK, as emitted.
    fn fixed_options_len(&self) -> usize {
        use option_kind::PATH_LEN;
        let mut len = 0;
        if self.mss.is_some() {
            len += 4; // 02 04 mss
        }
        if self.timestamps.is_some() {
            len += 12; // (04 02 | 01 01) 08 0a TSval TSecr
        } else if self.sack_permitted {
            len += 4; // 01 01 04 02
        }
        if self.window_scale.is_some() {
            len += 4; // 01 03 03 shift
        }
        if self.path.is_some() {
            len += usize::from(PATH_LEN); // fd 0c ExID token
        }
        len
    }

    /// Length of the option area as emitted, padding included (a multiple of 4, ≤ 40).
    pub fn buffer_len(&self) -> usize {
        let n = self.sack_blocks_emitted();
        let sack = if n == 0 { 0 } else { 4 + 8 * n }; // 01 01 05 len blocks
        (self.fixed_options_len() + sack + 3) & !3
    }

    /// Write the option area into `buf` (exactly [`TcpOptions::buffer_len`]
    /// bytes), in Linux's order and layout (spec/xtcp.md §2.4).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        use option_kind::*;
        let len = self.buffer_len();
        let out = buf.get_mut(..len).ok_or(WireError::BufferTooSmall)?;
        let mut w = Writer { buf: out, pos: 0 };
        if let Some(mss) = self.mss {
            let [a, b] = mss.to_be_bytes();
            w.put(&[MSS, 4, a, b])?;
        }
        if let Some((tsval, tsecr)) = self.timestamps {
            // Linux puts SACK-permitted in the place of the two NOPs that
            // align the timestamps.
            if self.sack_permitted {
                w.put(&[SACK_PERMITTED, 2, TIMESTAMPS, 10])?;
            } else {
                w.put(&[NOP, NOP, TIMESTAMPS, 10])?;
            }
            w.put(&tsval.to_be_bytes())?;
            w.put(&tsecr.to_be_bytes())?;
        } else if self.sack_permitted {
            w.put(&[NOP, NOP, SACK_PERMITTED, 2])?;
        }
        if let Some(shift) = self.window_scale {
            w.put(&[NOP, WINDOW_SCALE, 3, shift])?;
        }
        if let Some(p) = self.path {
            let exid = match p {
                PathOption::Challenge(_) => EXID_PATH_CHALLENGE,
                PathOption::Response(_) => EXID_PATH_RESPONSE,
            };
            let [x0, x1] = exid.to_be_bytes();
            w.put(&[EXPERIMENTAL, PATH_LEN, x0, x1])?;
            w.put(&p.token().to_be_bytes())?;
        }
        let n = self.sack_blocks_emitted();
        if n > 0 {
            // n ≤ 4, so the length 2 + 8n ≤ 34 fits in a byte.
            let opt_len = u8::try_from(2 + 8 * n).map_err(|_| WireError::BadOption)?;
            w.put(&[NOP, NOP, SACK, opt_len])?;
            for block in self.sack_blocks().iter().take(n) {
                w.put(&block.left.0.to_be_bytes())?;
                w.put(&block.right.0.to_be_bytes())?;
            }
        }
        // RFC 9293 §3.1: pad the option area to a 32-bit boundary with zeros
        // (an EOL followed by zero padding).
        while w.pos < len {
            //= spec/xtcp.md#XT-OPT-1
            //# they SHOULD be zero
            w.put(&[EOL])?;
        }
        Ok(len)
    }
}

/// A cursor that writes into a slice without panicking.
struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let end = self.pos + bytes.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(WireError::BufferTooSmall)?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// SegmentRepr
// ---------------------------------------------------------------------------

impl<'a> SegmentRepr<'a> {
    /// Parse and validate one datagram.
    ///
    /// Checks, in this order (spec/xtcp.md §2.6): the lengths and version
    /// ([`Segment::new_checked`]), the checksum ([`WireError::BadChecksum`]),
    /// the XTCP reserved bytes ([`WireError::Reserved`]), the options
    /// ([`WireError::BadOption`]). The TCP reserved bits, the urgent pointer
    /// and the XTCP flags are accepted whatever they hold.
    pub fn parse(datagram: &'a [u8]) -> Result<SegmentRepr<'a>, WireError> {
        let seg = Segment::new_checked(datagram)?;
        //= spec/xtcp.md#XT-CSUM-1
        //# Otherwise it MUST drop the datagram (`BadChecksum`).
        if !seg.verify_checksum() {
            return Err(WireError::BadChecksum);
        }
        //= spec/xtcp.md#xtcp-header
        //# | 2–3 | Reserved | MUST be zero | non-zero: drop, `Reserved` |
        if seg.xtcp_reserved() != 0 {
            return Err(WireError::Reserved);
        }
        let options = TcpOptions::parse(seg.options())?;
        // `new_checked` proved header_len() <= datagram.len(); borrow the
        // payload from `datagram` itself so it lives for 'a.
        let payload = datagram.get(seg.header_len()..).unwrap_or(&[]);
        Ok(SegmentRepr {
            xflags: seg.xflags(),
            conn_id: seg.conn_id(),
            src_port: seg.src_port(),
            dst_port: seg.dst_port(),
            seq: seg.seq_number(),
            ack: seg.ack_number(),
            flags: seg.flags(),
            window: seg.window_len(),
            options,
            payload,
        })
    }

    /// Exact encoded length of this segment (headers, options with padding, payload).
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Length of the headers (XTCP + TCP with options) only.
    pub fn header_len(&self) -> usize {
        FIXED_HEADER_LEN + self.options.buffer_len()
    }

    /// Encode into `buf`, computing the checksum; returns the bytes written.
    ///
    /// Writes exactly [`SegmentRepr::buffer_len`] bytes. The XTCP flags are
    /// written as given (senders use 0 today); the XTCP reserved bytes, the
    /// TCP reserved bits and the urgent pointer are written as zero. SACK
    /// blocks that do not fit in the option area are dropped (see
    /// [`TcpOptions::sack_blocks_emitted`]), so `parse(emit(x))` returns
    /// [`SegmentRepr::canonical`]`(x)`.
    //= spec/xtcp.md#XT-VEC-1
    //# Without it, emitting the decoded fields MUST reproduce `hex` exactly.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let header_len = self.header_len();
        let total = header_len + self.payload.len();
        let out = buf.get_mut(..total).ok_or(WireError::BufferTooSmall)?;
        let (fixed, rest) = out
            .split_first_chunk_mut::<FIXED_HEADER_LEN>()
            .ok_or(WireError::BufferTooSmall)?;
        let (opts, payload) = rest
            .split_at_mut_checked(header_len - FIXED_HEADER_LEN)
            .ok_or(WireError::BufferTooSmall)?;

        // Fixed header, built in place. The checksum field stays zero until the end.
        //= spec/xtcp.md#XT-HDR-2
        //# | 2–3 | Reserved | MUST be zero |
        *fixed = [0; FIXED_HEADER_LEN];
        //= spec/xtcp.md#XT-HDR-1
        //# | 0 | Version | MUST be 1 |
        write_at(fixed, field::VERSION..field::VERSION + 1, &[XTCP_VERSION]);
        write_at(fixed, field::XFLAGS..field::XFLAGS + 1, &[self.xflags.0]);
        write_at(fixed, field::CONN_ID, &self.conn_id.to_be_bytes());
        write_at(fixed, field::SRC_PORT, &self.src_port.to_be_bytes());
        write_at(fixed, field::DST_PORT, &self.dst_port.to_be_bytes());
        write_at(fixed, field::SEQ_NUM, &self.seq.0.to_be_bytes());
        write_at(fixed, field::ACK_NUM, &self.ack.0.to_be_bytes());
        // RFC 9293 §3.1: data offset in 32-bit words, reserved bits zero.
        // header_len - 12 ≤ 60, so the word count fits in the high nibble.
        let words = u8::try_from((header_len - XTCP_HEADER_LEN) / 4).unwrap_or(0);
        write_at(fixed, field::DATA_OFF..field::DATA_OFF + 1, &[words << 4]);
        write_at(fixed, field::FLAGS..field::FLAGS + 1, &[self.flags.0]);
        write_at(fixed, field::WINDOW, &self.window.to_be_bytes());

        self.options.emit(opts)?;
        if payload.len() != self.payload.len() {
            // Unreachable: `out` was cut to exactly header_len + payload length.
            return Err(WireError::BufferTooSmall);
        }
        payload.copy_from_slice(self.payload);

        //= spec/xtcp.md#checksum
        //# The checksum is the RFC 1071 Internet checksum of the whole
        //# datagram with the checksum field taken as zero.
        let checksum = internet_checksum(out);
        write_at(out, field::CHECKSUM, &checksum.to_be_bytes());
        Ok(total)
    }

    /// The repr that `parse(emit(self))` returns: SACK blocks that do not fit
    /// in the option area (and any slot past `sack_len`) are cleared. For a
    /// repr whose SACK blocks all fit this is `self`.
    pub fn canonical(&self) -> SegmentRepr<'a> {
        let mut out = *self;
        let n = self.options.sack_blocks_emitted();
        let mut sack = [SackBlock::default(); MAX_SACK_BLOCKS];
        for (dst, src) in sack
            .iter_mut()
            .zip(self.options.sack_blocks().iter().take(n))
        {
            *dst = *src;
        }
        out.options.sack = sack;
        // n ≤ MAX_SACK_BLOCKS = 4.
        out.options.sack_len = u8::try_from(n).unwrap_or(0);
        out
    }

    /// Sequence space this segment occupies: payload length + SYN + FIN (RFC 9293 §3.4).
    pub fn segment_len(&self) -> usize {
        self.payload.len() + usize::from(self.flags.syn()) + usize::from(self.flags.fin())
    }
}

/// Read only the connection id of a datagram (for demultiplexing), checking
/// only the version and length. Does not verify the checksum.
///
/// Empty → [`WireError::Truncated`]; version byte ≠ [`XTCP_VERSION`] →
/// [`WireError::BadVersion`]; shorter than the 12-byte XTCP header →
/// [`WireError::Truncated`].
pub fn peek_conn_id(datagram: &[u8]) -> Result<u64, WireError> {
    match datagram.first() {
        None => return Err(WireError::Truncated),
        Some(&v) if v != XTCP_VERSION => return Err(WireError::BadVersion(v)),
        Some(_) => {}
    }
    let id = datagram.get(field::CONN_ID).ok_or(WireError::Truncated)?;
    let id = <[u8; 8]>::try_from(id).map_err(|_| WireError::Truncated)?;
    Ok(u64::from_be_bytes(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{quickcheck, Arbitrary, Gen, TestResult};

    const SPEC: &str = include_str!("../../../spec/xtcp.md");

    // -----------------------------------------------------------------------
    // Test vectors from spec/xtcp.md §9
    // -----------------------------------------------------------------------

    /// One ```vector block: key/value lines in order (keys may repeat).
    #[derive(Debug)]
    struct Vector {
        name: String,
        kv: Vec<(String, String)>,
    }

    impl Vector {
        fn get_or<'s>(&'s self, key: &str, default: &'s str) -> &'s str {
            self.kv
                .iter()
                .find(|(k, _)| k == key)
                .map_or(default, |(_, v)| v.as_str())
        }

        fn get(&self, key: &str) -> &str {
            self.kv
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("vector {}: no `{key}`", self.name))
        }

        /// Concatenation of every `key:` line, decoded as hex; None if absent.
        fn hex(&self, key: &str) -> Option<Vec<u8>> {
            let parts: Vec<&str> = self
                .kv
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect();
            if parts.is_empty() {
                return None;
            }
            Some(unhex(&parts.join(" ")))
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        if s.trim() == "none" {
            return Vec::new();
        }
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(
            digits.chunks_exact(2).remainder().is_empty(),
            "odd hex length in {s:?}"
        );
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn vectors() -> Vec<Vector> {
        let mut out = Vec::new();
        let mut cur: Option<Vec<(String, String)>> = None;
        for line in SPEC.lines() {
            let line = line.trim();
            match (&mut cur, line) {
                (None, "```vector") => cur = Some(Vec::new()),
                (Some(_), "```") => {
                    let kv = cur.take().unwrap();
                    let name = kv.iter().find(|(k, _)| k == "name").unwrap().1.clone();
                    out.push(Vector { name, kv });
                }
                (Some(kv), _) => {
                    let line = if line.starts_with("note:") {
                        line
                    } else {
                        line.split('#').next().unwrap().trim()
                    };
                    if line.is_empty() {
                        continue;
                    }
                    let (k, v) = line.split_once(':').expect("key: value");
                    kv.push((k.trim().to_string(), v.trim().to_string()));
                }
                (None, _) => {}
            }
        }
        assert!(cur.is_none(), "unterminated vector block");
        out
    }

    fn num(s: &str) -> u64 {
        match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).unwrap(),
            None => s.parse().unwrap(),
        }
    }

    fn opt_num(s: &str) -> Option<u64> {
        (s != "none").then(|| num(s))
    }

    fn flags(s: &str) -> TcpFlags {
        if s == "none" {
            return TcpFlags::empty();
        }
        s.split('|').fold(TcpFlags::empty(), |acc, name| {
            acc | match name {
                "FIN" => TcpFlags::FIN,
                "SYN" => TcpFlags::SYN,
                "RST" => TcpFlags::RST,
                "PSH" => TcpFlags::PSH,
                "ACK" => TcpFlags::ACK,
                "URG" => TcpFlags::URG,
                "ECE" => TcpFlags::ECE,
                "CWR" => TcpFlags::CWR,
                other => panic!("unknown flag {other}"),
            }
        })
    }

    /// The repr a vector's decoded fields describe.
    fn expected<'p>(v: &Vector, payload: &'p [u8]) -> SegmentRepr<'p> {
        let mut options = TcpOptions {
            mss: opt_num(v.get("mss")).map(|x| u16::try_from(x).unwrap()),
            window_scale: opt_num(v.get("wscale")).map(|x| u8::try_from(x).unwrap()),
            sack_permitted: match v.get("sackperm") {
                "yes" => true,
                "no" => false,
                other => panic!("sackperm: {other}"),
            },
            ..TcpOptions::default()
        };
        let ts = v.get("ts");
        if ts != "none" {
            let (a, b) = ts.split_once(' ').unwrap();
            options.timestamps = Some((num(a) as u32, num(b) as u32));
        }
        options.path = match v.get_or("path", "none").split_once(' ') {
            Some(("challenge", t)) => Some(PathOption::Challenge(num(t))),
            Some(("response", t)) => Some(PathOption::Response(num(t))),
            None => None,
            Some(other) => panic!("path: {other:?}"),
        };
        let sack = v.get("sack");
        if sack != "none" {
            for (i, pair) in sack.split_whitespace().enumerate() {
                let (l, r) = pair.split_once('-').unwrap();
                options.sack[i] = SackBlock {
                    left: SeqNumber(num(l) as u32),
                    right: SeqNumber(num(r) as u32),
                };
                options.sack_len = i as u8 + 1;
            }
        }
        SegmentRepr {
            xflags: XtcpFlags(num(v.get("xflags")) as u8),
            conn_id: num(v.get("conn_id")),
            src_port: num(v.get("src_port")) as u16,
            dst_port: num(v.get("dst_port")) as u16,
            seq: SeqNumber(num(v.get("seq")) as u32),
            ack: SeqNumber(num(v.get("ack")) as u32),
            flags: flags(v.get("flags")),
            window: num(v.get("window")) as u16,
            options,
            payload,
        }
    }

    fn expected_err(s: &str) -> WireError {
        match s {
            "Truncated" => WireError::Truncated,
            "BadDataOffset" => WireError::BadDataOffset,
            "BadOption" => WireError::BadOption,
            "BadChecksum" => WireError::BadChecksum,
            "Reserved" => WireError::Reserved,
            "BufferTooSmall" => WireError::BufferTooSmall,
            other => {
                let v = other
                    .strip_prefix("BadVersion(")
                    .and_then(|r| r.strip_suffix(')'))
                    .unwrap_or_else(|| panic!("unknown error {other}"));
                WireError::BadVersion(v.parse().unwrap())
            }
        }
    }

    //= spec/xtcp.md#XT-VEC-1
    //# Without it, emitting the decoded fields MUST reproduce `hex` exactly.
    //= spec/xtcp.md#XT-HDR-1
    //= spec/xtcp.md#XT-HDR-2
    #[test]
    fn spec_vectors() {
        let vs = vectors();
        assert!(vs.len() >= 20, "only {} vectors found in spec", vs.len());
        let mut names = std::collections::HashSet::new();
        for v in &vs {
            assert!(names.insert(v.name.clone()), "duplicate vector {}", v.name);
            let bytes = v.hex("hex").expect("hex");
            let got = SegmentRepr::parse(&bytes);
            match v.get("expect") {
                "ok" => {
                    let payload = unhex(v.get("payload_hex"));
                    let want = expected(v, &payload);
                    assert_eq!(got, Ok(want), "vector {}", v.name);
                    let reference = v.hex("emits").unwrap_or_else(|| bytes.clone());
                    assert_eq!(want.buffer_len(), reference.len(), "vector {}", v.name);
                    let mut buf = vec![0u8; want.buffer_len()];
                    assert_eq!(want.emit(&mut buf), Ok(reference.len()));
                    assert_eq!(hex(&buf), hex(&reference), "vector {} emit", v.name);
                    assert_eq!(peek_conn_id(&bytes), Ok(want.conn_id));
                }
                e => {
                    let e = e.strip_prefix("err ").expect("expect: ok | err X");
                    assert_eq!(got, Err(expected_err(e)), "vector {}", v.name);
                }
            }
        }
        // The brief's minimum set is present.
        for required in [
            "syn",
            "syn-ack",
            "ack-ts-sack3",
            "data",
            "fin-ack",
            "rst",
            "unknown-option",
            "err-truncated-tcp",
            "err-bad-version",
            "err-data-offset-small",
            "err-option-overrun",
            "err-bad-checksum",
            "err-reserved",
            "path-challenge",
            "path-response",
            "err-path-length",
        ] {
            assert!(names.contains(required), "missing vector {required}");
        }
    }

    fn vector_bytes(name: &str) -> Vec<u8> {
        vectors()
            .into_iter()
            .find(|v| v.name == name)
            .and_then(|v| v.hex("hex"))
            .unwrap()
    }

    #[test]
    fn segment_view_reads_syn_vector() {
        let bytes = vector_bytes("syn");
        let seg = Segment::new_checked(&bytes[..]).unwrap();
        assert_eq!(seg.version(), 1);
        assert_eq!(seg.xflags(), XtcpFlags(0));
        assert_eq!(seg.xtcp_reserved(), 0);
        assert_eq!(seg.conn_id(), 0x0123_4567_89ab_cdef);
        assert_eq!(seg.src_port(), 49152);
        assert_eq!(seg.dst_port(), 8080);
        assert_eq!(seg.seq_number(), SeqNumber(0x1234_5678));
        assert_eq!(seg.ack_number(), SeqNumber(0));
        assert_eq!(seg.tcp_header_len(), 40);
        assert_eq!(seg.header_len(), 52);
        assert_eq!(seg.tcp_reserved(), 0);
        assert_eq!(seg.flags(), TcpFlags::SYN);
        assert_eq!(seg.window_len(), 65535);
        assert_eq!(seg.checksum(), 0x60a4);
        assert_eq!(seg.urgent_at(), 0);
        assert_eq!(seg.options().len(), 20);
        assert!(seg.payload().is_empty());
        assert!(seg.verify_checksum());
        assert_eq!(seg.into_inner().len(), 52);
    }

    // -----------------------------------------------------------------------
    // Checksum
    // -----------------------------------------------------------------------

    /// RFC 1071 the slow, obvious way: 16-bit words, carry folded on every add.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in data.chunks(2) {
            let word = match *pair {
                [a, b] => u32::from(u16::from_be_bytes([a, b])),
                [a] => u32::from(a) << 8,
                _ => unreachable!(),
            };
            sum += word;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_complement_sum(&data), 0xddf2);
        assert_eq!(internet_checksum(&data), !0xddf2);
        assert_eq!(ones_complement_sum(&[]), 0);
        assert_eq!(ones_complement_sum(&[0xab]), 0xab00);
    }

    #[test]
    fn checksum_across_block_boundaries() {
        // Larger than CHECKSUM_BLOCK, odd length, all-ones (maximal carries).
        for len in [
            CHECKSUM_BLOCK - 1,
            CHECKSUM_BLOCK + 3,
            3 * CHECKSUM_BLOCK + 1,
        ] {
            let ones = vec![0xffu8; len];
            assert_eq!(
                ones_complement_sum(&ones),
                reference_sum(&ones),
                "len {len}"
            );
            let ramp: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            assert_eq!(
                ones_complement_sum(&ramp),
                reference_sum(&ramp),
                "len {len}"
            );
        }
    }

    quickcheck! {
        fn checksum_matches_reference(data: Vec<u8>, skip: u8) -> bool {
            // `skip` makes the slice start at every alignment.
            let data = data.get(usize::from(skip % 8)..).unwrap_or(&[]);
            ones_complement_sum(data) == reference_sum(data)
        }
    }

    // -----------------------------------------------------------------------
    // Round trip
    // -----------------------------------------------------------------------

    /// An owned, arbitrary segment (the repr borrows its payload).
    #[derive(Clone, Debug)]
    struct ArbSegment {
        xflags: u8,
        conn_id: u64,
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        mss: Option<u16>,
        window_scale: Option<u8>,
        sack_permitted: bool,
        timestamps: Option<(u32, u32)>,
        path: Option<(bool, u64)>,
        sack: [(u32, u32); MAX_SACK_BLOCKS],
        /// Up to 6 to exercise the clamp in `sack_blocks()`.
        sack_len: u8,
        payload: Vec<u8>,
    }

    impl Arbitrary for ArbSegment {
        fn arbitrary(g: &mut Gen) -> Self {
            let mut payload: Vec<u8> = Arbitrary::arbitrary(g);
            if bool::arbitrary(g) && bool::arbitrary(g) {
                // Sometimes a full-size segment.
                payload.resize(1400 + usize::from(u8::arbitrary(g)), 0x5a);
            }
            let sack_len = *g.choose(&[0u8, 0, 1, 2, 3, 4, 4, 5, 6]).unwrap();
            let mut sack = [(0, 0); MAX_SACK_BLOCKS];
            for b in sack.iter_mut().take(usize::from(sack_len)) {
                *b = Arbitrary::arbitrary(g);
            }
            ArbSegment {
                xflags: Arbitrary::arbitrary(g),
                conn_id: Arbitrary::arbitrary(g),
                src_port: Arbitrary::arbitrary(g),
                dst_port: Arbitrary::arbitrary(g),
                seq: Arbitrary::arbitrary(g),
                ack: Arbitrary::arbitrary(g),
                flags: Arbitrary::arbitrary(g),
                window: Arbitrary::arbitrary(g),
                mss: Arbitrary::arbitrary(g),
                window_scale: Arbitrary::arbitrary(g),
                sack_permitted: Arbitrary::arbitrary(g),
                timestamps: Arbitrary::arbitrary(g),
                path: Arbitrary::arbitrary(g),
                sack,
                sack_len,
                payload,
            }
        }
    }

    impl ArbSegment {
        fn repr(&self) -> SegmentRepr<'_> {
            let mut sack = [SackBlock::default(); MAX_SACK_BLOCKS];
            for (d, &(l, r)) in sack.iter_mut().zip(&self.sack) {
                *d = SackBlock {
                    left: SeqNumber(l),
                    right: SeqNumber(r),
                };
            }
            SegmentRepr {
                xflags: XtcpFlags(self.xflags),
                conn_id: self.conn_id,
                src_port: self.src_port,
                dst_port: self.dst_port,
                seq: SeqNumber(self.seq),
                ack: SeqNumber(self.ack),
                flags: TcpFlags(self.flags),
                window: self.window,
                options: TcpOptions {
                    mss: self.mss,
                    window_scale: self.window_scale,
                    sack_permitted: self.sack_permitted,
                    sack,
                    sack_len: self.sack_len,
                    timestamps: self.timestamps,
                    path: self.path.map(|(challenge, t)| {
                        if challenge {
                            PathOption::Challenge(t)
                        } else {
                            PathOption::Response(t)
                        }
                    }),
                },
                payload: &self.payload,
            }
        }

        fn encode(&self) -> Vec<u8> {
            let repr = self.repr();
            let mut buf = vec![0u8; repr.buffer_len()];
            assert_eq!(repr.emit(&mut buf), Ok(buf.len()));
            buf
        }
    }

    /// Recompute the checksum of a (possibly mutated) datagram in place, so
    /// that mutations reach the checks after the checksum.
    fn fix_checksum(d: &mut [u8]) {
        if d.len() >= FIXED_HEADER_LEN {
            d[field::CHECKSUM].fill(0);
            let c = internet_checksum(d);
            d[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        }
    }

    quickcheck! {
        fn roundtrip(seg: ArbSegment) -> bool {
            let repr = seg.repr();
            let buf = seg.encode();
            let header_len = repr.header_len();
            let parsed = SegmentRepr::parse(&buf);
            // Option area: a multiple of 4, at most 40 bytes.
            let opt_len = header_len - FIXED_HEADER_LEN;
            let fits = repr.options.sack_blocks().len() == repr.options.sack_blocks_emitted();
            parsed == Ok(repr.canonical())
                && opt_len & 3 == 0
                && opt_len <= MAX_OPTIONS_LEN
                && buf.len() == header_len + seg.payload.len()
                && Segment::new_checked(&buf[..]).map(|s| s.header_len()) == Ok(header_len)
                // When every SACK block fits, nothing is lost at all.
                && (!fits || repr.sack_len_is_exact() == (parsed == Ok(repr)))
        }

        fn emit_refuses_short_buffers(seg: ArbSegment) -> bool {
            let repr = seg.repr();
            let len = repr.buffer_len();
            // Every shorter length fails, and the exact length succeeds;
            // nothing is written past buffer_len().
            let mut buf = vec![0xaau8; len + 8];
            let short_ok = (0..len).step_by(7).chain([len - 1]).all(|n| {
                repr.emit(&mut buf[..n]) == Err(WireError::BufferTooSmall)
            });
            short_ok
                && repr.emit(&mut buf) == Ok(len)
                && buf[len..].iter().all(|&b| b == 0xaa)
        }

        fn parse_never_panics(data: Vec<u8>) -> bool {
            let _ = SegmentRepr::parse(&data);
            let _ = peek_conn_id(&data);
            crate::fuzzing::segment_codec(&data);
            // Also with a valid version byte and checksum, to get past both.
            let mut data = data;
            if let Some(v) = data.first_mut() {
                *v = XTCP_VERSION;
            }
            fix_checksum(&mut data);
            crate::fuzzing::segment_codec(&data);
            true
        }

        fn mutated_datagrams(seg: ArbSegment, flips: Vec<(u16, u8)>, fix: bool) -> bool {
            let mut d = seg.encode();
            for &(pos, bit) in &flips {
                let i = usize::from(pos) % d.len();
                d[i] ^= 1 << (bit % 8);
            }
            if fix {
                fix_checksum(&mut d);
            }
            // The oracle asserts that whatever parses round-trips.
            crate::fuzzing::segment_codec(&d);
            true
        }

        fn truncations(seg: ArbSegment) -> TestResult {
            let d = seg.encode();
            let header_len = seg.repr().header_len();
            for n in 0..d.len() {
                let r = SegmentRepr::parse(&d[..n]);
                // Cut inside the headers: never accepted.
                if n < header_len && r.is_ok() {
                    return TestResult::failed();
                }
                crate::fuzzing::segment_codec(&d[..n]);
            }
            TestResult::passed()
        }
    }

    impl SegmentRepr<'_> {
        /// Test helper: the SACK slots past `sack_len` are default and `sack_len`
        /// ≤ 4, i.e. the repr is already in the form parse produces.
        fn sack_len_is_exact(&self) -> bool {
            usize::from(self.options.sack_len) <= MAX_SACK_BLOCKS
                && self.options.sack[self.options.sack_blocks().len()..]
                    .iter()
                    .all(|b| *b == SackBlock::default())
        }
    }

    // -----------------------------------------------------------------------
    // Options and errors
    // -----------------------------------------------------------------------

    fn blocks(n: usize) -> TcpOptions {
        let mut o = TcpOptions::default();
        for i in 0..n {
            o.sack[i] = SackBlock {
                left: SeqNumber(i as u32 * 100),
                right: SeqNumber(i as u32 * 100 + 50),
            };
        }
        o.sack_len = n as u8;
        o
    }

    #[test]
    fn sack_blocks_that_fit() {
        // RFC 2018 §3: 4 blocks alone, 3 with timestamps.
        let o = blocks(4);
        assert_eq!(o.sack_blocks_emitted(), 4);
        assert_eq!(o.buffer_len(), 36);
        let o = TcpOptions {
            timestamps: Some((1, 2)),
            ..blocks(4)
        };
        assert_eq!(o.sack_blocks_emitted(), 3);
        assert_eq!(o.buffer_len(), 40);
        // Everything at once: 4 + 12 + 4 leaves room for 2.
        let o = TcpOptions {
            mss: Some(1),
            window_scale: Some(2),
            sack_permitted: true,
            timestamps: Some((1, 2)),
            ..blocks(4)
        };
        assert_eq!(o.sack_blocks_emitted(), 2);
        assert_eq!(o.buffer_len(), 40);
        // A sack_len above 4 is clamped by sack_blocks().
        let mut o = blocks(4);
        o.sack_len = 200;
        assert_eq!(o.sack_blocks_emitted(), 4);
        assert_eq!(TcpOptions::default().buffer_len(), 0);
    }

    #[test]
    fn dropped_sack_blocks_are_the_last_ones() {
        let payload = [];
        let repr = SegmentRepr {
            xflags: XtcpFlags(0),
            conn_id: 9,
            src_port: 1,
            dst_port: 2,
            seq: SeqNumber(3),
            ack: SeqNumber(4),
            flags: TcpFlags::ACK,
            window: 5,
            options: TcpOptions {
                timestamps: Some((7, 8)),
                ..blocks(4)
            },
            payload: &payload,
        };
        let mut buf = [0u8; 72];
        assert_eq!(repr.buffer_len(), 72);
        assert_eq!(repr.emit(&mut buf), Ok(72));
        let parsed = SegmentRepr::parse(&buf).unwrap();
        assert_eq!(
            parsed.options.sack_blocks(),
            &repr.options.sack_blocks()[..3]
        );
        assert_eq!(parsed, repr.canonical());
    }

    //= spec/xtcp.md#XT-OPT-2
    //= spec/xtcp.md#XT-OPT-3
    //= spec/xtcp.md#XT-OPT-4
    //= spec/xtcp.md#XT-OPT-5
    #[test]
    fn option_parsing_rules() {
        use WireError::BadOption;
        let p = TcpOptions::parse;
        assert_eq!(p(&[]), Ok(TcpOptions::default()));
        assert_eq!(p(&[1, 1, 1, 1]), Ok(TcpOptions::default()));
        // Anything after EOL is ignored, even a malformed option.
        assert_eq!(p(&[0, 2, 0, 0]), Ok(TcpOptions::default()));
        // Unknown kinds are skipped by length, even a length-2 one.
        assert_eq!(p(&[0xfd, 2, 0xfe, 3, 9]), Ok(TcpOptions::default()));
        assert_eq!(p(&[0xfd, 2, 0xfe]), Err(BadOption));
        assert_eq!(p(&[0xfd, 1, 0, 0]), Err(BadOption));
        assert_eq!(p(&[0xfd, 0, 0, 0]), Err(BadOption));
        assert_eq!(p(&[0xfd, 5, 0, 0]), Err(BadOption));
        // Known kinds with the wrong length.
        assert_eq!(p(&[2, 5, 0, 0, 0]), Err(BadOption));
        assert_eq!(p(&[3, 4, 0, 0]), Err(BadOption));
        assert_eq!(p(&[4, 3, 0]), Err(BadOption));
        assert_eq!(p(&[8, 9, 0, 0, 0, 0, 0, 0, 0]), Err(BadOption));
        assert_eq!(p(&[5, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Err(BadOption));
        assert_eq!(p(&[5, 2]), Err(BadOption));
        // The last occurrence wins.
        let o = p(&[2, 4, 0, 1, 2, 4, 0, 2]).unwrap();
        assert_eq!(o.mss, Some(2));
        let mut two = vec![5, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        two.extend_from_slice(&[5, 10, 0, 0, 0, 3, 0, 0, 0, 4]);
        let o = p(&two).unwrap();
        assert_eq!(o.sack_len, 1);
        assert_eq!(o.sack[0].left, SeqNumber(3));
        // Window scale is not clamped by the codec.
        assert_eq!(p(&[3, 3, 200]).unwrap().window_scale, Some(200));
        // Path validation (kind 253, ExID "XC" / "XR", length 12).
        let tok = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut c = vec![0xfd, 12, 0x58, 0x43];
        c.extend_from_slice(&tok);
        assert_eq!(
            p(&c).unwrap().path,
            Some(PathOption::Challenge(0x0102_0304_0506_0708))
        );
        c[3] = 0x52;
        assert_eq!(
            p(&c).unwrap().path,
            Some(PathOption::Response(0x0102_0304_0506_0708))
        );
        // Our ExIDs with another length are malformed ...
        assert_eq!(p(&[0xfd, 4, 0x58, 0x43]), Err(BadOption));
        assert_eq!(
            p(&[0xfd, 11, 0x58, 0x52, 0, 0, 0, 0, 0, 0, 0]),
            Err(BadOption)
        );
        // ... other ExIDs (or none) are unknown options, skipped.
        c[3] = 0x44;
        assert_eq!(p(&c), Ok(TcpOptions::default()));
        assert_eq!(p(&[0xfd, 3, 0x58]), Ok(TcpOptions::default()));
    }

    #[test]
    fn peek_conn_id_checks_version_and_length_only() {
        assert_eq!(peek_conn_id(&[]), Err(WireError::Truncated));
        assert_eq!(peek_conn_id(&[2; 20]), Err(WireError::BadVersion(2)));
        let mut d = [0u8; 12];
        d[0] = 1;
        d[4..].copy_from_slice(&42u64.to_be_bytes());
        assert_eq!(peek_conn_id(&d), Ok(42));
        assert_eq!(peek_conn_id(&d[..11]), Err(WireError::Truncated));
        // Reserved bytes and checksum are not its business.
        d[2] = 0xff;
        assert_eq!(peek_conn_id(&d), Ok(42));
    }

    //= spec/xtcp.md#XT-CSUM-1
    #[test]
    fn every_single_bit_flip_of_every_vector_is_rejected() {
        // The Internet checksum catches every single-bit error; a flip of the
        // version or length fields is caught earlier.
        for v in vectors() {
            if v.get("expect") != "ok" {
                continue;
            }
            let d = v.hex("hex").unwrap();
            for i in 0..d.len() * 8 {
                let mut m = d.clone();
                m[i / 8] ^= 1 << (i % 8);
                assert!(SegmentRepr::parse(&m).is_err(), "{} bit {i}", v.name);
            }
        }
    }

    #[test]
    fn error_display() {
        assert_eq!(WireError::BadVersion(7).to_string(), "bad xtcp version 7");
        assert_eq!(WireError::BadChecksum.to_string(), "bad checksum");
    }
}
