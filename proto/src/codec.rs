//! One reader and one writer for every variable-length wire format: the
//! relay's control frames and UDP address service ([`crate::relay`]), the
//! session frames and the punch probe ([`crate::session`]), and the one
//! address encoding they share. [`registry`] lists every first byte each
//! channel carries. (XTCP segments are a fixed-layout typed view of their
//! own, [`crate::xtcp::wire`].)
//!
//! A format's parser walks a [`Reader`] field by field; every read checks its
//! bounds and returns [`CodecError::Truncated`] instead of panicking, and
//! [`Reader::expect_empty`] refuses trailing bytes. Each format maps a
//! [`CodecError`] to its own error type (whose variants its users match on).
//! Encoders write through a [`Writer`]: a `Vec<u8>`, or a [`SliceWriter`] over
//! a caller's fixed buffer.
//!
//! ```
//! use xtcp_proto::codec::{CodecError, Reader, Writer};
//! let mut out = Vec::new();
//! out.put_u8(7);
//! out.put_u32(0x0102_0304);
//! out.put_socket_addr("198.18.0.7:40000".parse().unwrap());
//! let mut r = Reader::new(&out);
//! assert_eq!(r.u8(), Ok(7));
//! assert_eq!(r.u32(), Ok(0x0102_0304));
//! assert_eq!(r.socket_addr(), Ok("198.18.0.7:40000".parse().unwrap()));
//! assert_eq!(r.expect_empty(), Ok(()));
//! assert_eq!(r.u8(), Err(CodecError::Truncated { needed: 1 }));
//! ```

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub mod registry;

/// Address family byte of an IPv4 address.
pub const FAMILY_V4: u8 = 4;
/// Address family byte of an IPv6 address.
pub const FAMILY_V6: u8 = 6;

/// Bytes [`Writer::put_socket_addr`] writes for `addr`: family, address, port.
///
/// ```text
/// +--------+-------- ... --------+----------------+
/// | family |  address (4 or 16)  | port (u16 BE)  |   family 4 = IPv4, 6 = IPv6
/// +--------+-------- ... --------+----------------+
/// ```
pub const fn socket_addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

/// Why a [`Reader`] could not read what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The input ended early; `needed` more bytes were required.
    Truncated {
        /// Bytes missing.
        needed: usize,
    },
    /// Bytes are left after the last field.
    Trailing {
        /// Bytes left over.
        extra: usize,
    },
    /// An address family byte other than [`FAMILY_V4`] or [`FAMILY_V6`].
    BadFamily(u8),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Truncated { needed } => write!(f, "truncated ({needed} bytes missing)"),
            CodecError::Trailing { extra } => write!(f, "{extra} trailing bytes"),
            CodecError::BadFamily(x) => write!(f, "unknown address family {x}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// A cursor over untrusted bytes. Every read either returns the field and
/// advances, or returns a [`CodecError`] and leaves the cursor where it was.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or(CodecError::Truncated {
            needed: n.saturating_sub(self.buf.len()),
        })?;
        self.buf = tail;
        Ok(head)
    }

    /// The next `N` bytes, copied into an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Every byte left (possibly none).
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        self.array::<1>().map(|[b]| b)
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, CodecError> {
        self.array().map(u16::from_be_bytes)
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        self.array().map(u32::from_be_bytes)
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        self.array().map(u64::from_be_bytes)
    }

    /// `Ok` when every byte has been read, else [`CodecError::Trailing`].
    pub fn expect_empty(&self) -> Result<(), CodecError> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(CodecError::Trailing { extra }),
        }
    }

    /// An address as [`Writer::put_socket_addr`] writes it (family, address,
    /// port; see [`socket_addr_len`]).
    pub fn socket_addr(&mut self) -> Result<SocketAddr, CodecError> {
        let mut r = self.clone();
        let family = r.u8()?;
        let addr = r.ip_port(family)?;
        *self = r;
        Ok(addr)
    }

    /// The address and port that follow a family byte the caller has
    /// already read (formats that check other fields between the two).
    /// A family other than 4 or 6 is [`CodecError::BadFamily`], before any
    /// length check.
    pub fn ip_port(&mut self, family: u8) -> Result<SocketAddr, CodecError> {
        let mut r = self.clone();
        let ip = match family {
            FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
            FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
            x => return Err(CodecError::BadFamily(x)),
        };
        let port = r.u16()?;
        *self = r;
        Ok(SocketAddr::new(ip, port))
    }
}

/// Length of the header of [`split_frame`]'s framing.
pub const FRAME_HEADER_LEN: usize = 3;

/// Why [`split_frame`] found no whole frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SplitError {
    /// `needed` more bytes are required.
    Incomplete {
        /// Bytes missing.
        needed: usize,
    },
    /// The length field exceeds the format's largest body.
    TooLong {
        /// The announced body length.
        len: usize,
    },
}

/// Split one frame off the front of `buf` in the framing that relay control
/// frames and session frames share; returns its type, its body and the bytes
/// it takes. An oversize length is refused from the header alone.
///
/// ```text
///  0        1        2        3
/// +--------+--------+--------+---- ... ----+
/// |  type  |  length (u16 BE) |    body     |   length ≤ max_body
/// +--------+--------+--------+---- ... ----+
/// ```
pub fn split_frame(buf: &[u8], max_body: usize) -> Result<(u8, &[u8], usize), SplitError> {
    // `take` fails only by truncation.
    let incomplete = |e| match e {
        CodecError::Truncated { needed } => SplitError::Incomplete { needed },
        _ => SplitError::Incomplete { needed: 1 },
    };
    let mut r = Reader::new(buf);
    let [ty, len @ ..] = r.array::<FRAME_HEADER_LEN>().map_err(incomplete)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > max_body {
        return Err(SplitError::TooLong { len });
    }
    let body = r.take(len).map_err(incomplete)?;
    Ok((ty, body, FRAME_HEADER_LEN + len))
}

/// Where encoders write; the puts match [`Reader`]'s reads.
pub trait Writer {
    /// Append `b`.
    fn put_slice(&mut self, b: &[u8]);

    /// Append a byte.
    fn put_u8(&mut self, v: u8) {
        self.put_slice(&[v]);
    }

    /// Append a big-endian `u16`.
    fn put_u16(&mut self, v: u16) {
        self.put_slice(&v.to_be_bytes());
    }

    /// Append a big-endian `u32`.
    fn put_u32(&mut self, v: u32) {
        self.put_slice(&v.to_be_bytes());
    }

    /// Append a big-endian `u64`.
    fn put_u64(&mut self, v: u64) {
        self.put_slice(&v.to_be_bytes());
    }

    /// Append `addr` as family, address, port ([`socket_addr_len`] bytes).
    fn put_socket_addr(&mut self, addr: SocketAddr) {
        match addr.ip() {
            IpAddr::V4(ip) => {
                self.put_u8(FAMILY_V4);
                self.put_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.put_u8(FAMILY_V6);
                self.put_slice(&ip.octets());
            }
        }
        self.put_u16(addr.port());
    }
}

impl Writer for Vec<u8> {
    fn put_slice(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

/// A [`Writer`] over a caller's fixed buffer. Writing past its end writes
/// nothing more and makes [`SliceWriter::finish`] fail (never panics).
#[derive(Debug)]
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflow: usize,
}

impl<'a> SliceWriter<'a> {
    /// A writer at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter {
            buf,
            len: 0,
            overflow: 0,
        }
    }

    /// Bytes written, or [`CodecError::Truncated`] with the bytes that did
    /// not fit.
    pub fn finish(self) -> Result<usize, CodecError> {
        match self.overflow {
            0 => Ok(self.len),
            needed => Err(CodecError::Truncated { needed }),
        }
    }
}

impl Writer for SliceWriter<'_> {
    fn put_slice(&mut self, b: &[u8]) {
        let end = self.len.checked_add(b.len());
        match end.and_then(|end| self.buf.get_mut(self.len..end)) {
            Some(dst) if self.overflow == 0 => {
                dst.copy_from_slice(b);
                self.len += b.len();
            }
            _ => self.overflow = self.overflow.saturating_add(b.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_refuses_trailing_bytes() {
        let b = [1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 9, 9];
        let mut r = Reader::new(&b);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(2));
        assert_eq!(r.u32(), Ok(3));
        assert_eq!(r.u64(), Ok(4));
        assert_eq!(r.remaining(), 2);
        assert_eq!(r.expect_empty(), Err(CodecError::Trailing { extra: 2 }));
        assert_eq!(r.u64(), Err(CodecError::Truncated { needed: 6 }));
        assert_eq!(r.remaining(), 2, "a failed read consumes nothing");
        assert_eq!(r.rest(), &[9, 9]);
        assert_eq!(r.expect_empty(), Ok(()));
        assert_eq!(r.take(0), Ok(&[][..]));
    }

    #[test]
    fn addresses() {
        let mut v = Vec::new();
        v.put_socket_addr("198.18.0.7:40000".parse().unwrap());
        assert_eq!(v, [4, 198, 18, 0, 7, 0x9c, 0x40]);
        let mut v = Vec::new();
        let a6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        v.put_socket_addr(a6);
        assert_eq!(v.len(), socket_addr_len(&a6));
        assert_eq!(Reader::new(&v).socket_addr(), Ok(a6));
        // The family is judged before the length.
        assert_eq!(
            Reader::new(&[5]).socket_addr(),
            Err(CodecError::BadFamily(5))
        );
        let mut r = Reader::new(&v[..v.len() - 1]);
        assert_eq!(r.socket_addr(), Err(CodecError::Truncated { needed: 1 }));
        assert_eq!(r.remaining(), v.len() - 1, "a failed read consumes nothing");
    }

    #[test]
    fn frames_split_at_their_length() {
        let f = [7, 0, 2, 0xAA, 0xBB, 0xCC];
        assert_eq!(split_frame(&f, 2), Ok((7, &f[3..5], 5)));
        for n in 0..3 {
            assert_eq!(
                split_frame(&f[..n], 2),
                Err(SplitError::Incomplete { needed: 3 - n })
            );
        }
        assert_eq!(
            split_frame(&f[..4], 2),
            Err(SplitError::Incomplete { needed: 1 })
        );
        // An oversize length is refused before its body arrives.
        assert_eq!(split_frame(&f[..3], 1), Err(SplitError::TooLong { len: 2 }));
    }

    #[test]
    fn slice_writer_refuses_overflow() {
        let mut buf = [0u8; 5];
        let mut w = SliceWriter::new(&mut buf);
        w.put_u32(0x0102_0304);
        w.put_u16(0x0506);
        w.put_u8(7);
        assert_eq!(w.finish(), Err(CodecError::Truncated { needed: 3 }));
        assert_eq!(buf, [1, 2, 3, 4, 0]);
        let mut w = SliceWriter::new(&mut buf);
        w.put_u32(9);
        w.put_u8(1);
        assert_eq!(w.finish(), Ok(5));
    }

    /// One field of a generated layout.
    #[derive(Clone, Debug, PartialEq)]
    enum Field {
        U8(u8),
        U16(u16),
        U32(u32),
        U64(u64),
        Bytes(Vec<u8>),
        Addr(SocketAddr),
    }

    use quickcheck::Arbitrary;

    impl Arbitrary for Field {
        fn arbitrary(g: &mut quickcheck::Gen) -> Self {
            match u8::arbitrary(g) % 6 {
                0 => Field::U8(u8::arbitrary(g)),
                1 => Field::U16(u16::arbitrary(g)),
                2 => Field::U32(u32::arbitrary(g)),
                3 => Field::U64(u64::arbitrary(g)),
                4 => Field::Bytes(Vec::arbitrary(g)),
                // The wire carries address and port only (no flow info, no scope).
                _ => Field::Addr(SocketAddr::new(IpAddr::arbitrary(g), u16::arbitrary(g))),
            }
        }
    }

    fn put(w: &mut impl Writer, f: &Field) {
        match f {
            Field::U8(v) => w.put_u8(*v),
            Field::U16(v) => w.put_u16(*v),
            Field::U32(v) => w.put_u32(*v),
            Field::U64(v) => w.put_u64(*v),
            Field::Bytes(b) => w.put_slice(b),
            Field::Addr(a) => w.put_socket_addr(*a),
        }
    }

    fn get(r: &mut Reader<'_>, like: &Field) -> Result<Field, CodecError> {
        Ok(match like {
            Field::U8(_) => Field::U8(r.u8()?),
            Field::U16(_) => Field::U16(r.u16()?),
            Field::U32(_) => Field::U32(r.u32()?),
            Field::U64(_) => Field::U64(r.u64()?),
            Field::Bytes(b) => Field::Bytes(r.take(b.len())?.to_vec()),
            Field::Addr(_) => Field::Addr(r.socket_addr()?),
        })
    }

    fn encoded(fields: &[Field]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in fields {
            put(&mut v, f);
        }
        v
    }

    quickcheck::quickcheck! {
        /// Whatever is put reads back, and then the reader is empty.
        fn fields_round_trip(fields: Vec<Field>) -> bool {
            let v = encoded(&fields);
            let mut r = Reader::new(&v);
            fields.iter().all(|f| get(&mut r, f).as_ref() == Ok(f)) && r.expect_empty().is_ok()
        }

        /// A `SliceWriter` writes the same bytes as a `Vec`, or fails when
        /// its buffer is short; it never writes beyond the buffer.
        fn slice_writer_matches_vec(fields: Vec<Field>, cut: usize) -> bool {
            let want = encoded(&fields);
            let size = if want.is_empty() { 0 } else { cut % (want.len() + 1) };
            let mut buf = vec![0u8; size];
            let mut w = SliceWriter::new(&mut buf);
            for f in &fields {
                put(&mut w, f);
            }
            match w.finish() {
                Ok(n) => n == want.len() && buf == want,
                Err(CodecError::Truncated { needed }) => {
                    size < want.len() && needed >= want.len() - size
                }
                Err(_) => false,
            }
        }

        /// Cut short anywhere, the same reads end in `Truncated` (never a
        /// panic, never a wrong value), and the fields before the cut read back.
        fn truncation_is_an_error(fields: Vec<Field>, cut: usize) -> bool {
            let v = encoded(&fields);
            if v.is_empty() {
                return true;
            }
            let cut = cut % v.len();
            let mut r = Reader::new(&v[..cut]);
            for f in &fields {
                match get(&mut r, f) {
                    Ok(got) if &got == f => continue,
                    Ok(_) => return false,
                    Err(CodecError::Truncated { needed }) => return needed > 0,
                    Err(_) => return false,
                }
            }
            // Unreachable: the cut input is shorter than the fields' encoding.
            false
        }

        /// Reading arbitrary bytes as arbitrary fields never panics, and
        /// whatever reads re-encodes to exactly the bytes consumed.
        fn arbitrary_input_never_panics(data: Vec<u8>, layout: Vec<Field>) -> bool {
            let mut r = Reader::new(&data);
            let mut got = Vec::new();
            for f in &layout {
                match get(&mut r, f) {
                    Ok(v) => got.push(v),
                    Err(_) => break,
                }
            }
            let used = data.len() - r.remaining();
            encoded(&got) == data[..used]
        }
    }
}
