//! The session frames' codec (`spec/direct.md` §2): [`Frame`], [`encode`],
//! [`Frame::parse`] and the incremental [`FrameDecoder`].
//!
//! ```text
//!  0        1        2        3
//! +--------+--------+--------+---- ... ----+
//! |  type  |  length (u16 BE) |    body     |   length ≤ MAX_BODY
//! +--------+--------+--------+---- ... ----+
//! ```
//!
//! Type bytes come from [`crate::codec::registry::session`]; every body field
//! is read through [`crate::codec::Reader`] and written through
//! [`crate::codec::Writer`], so no parser indexes a slice.

use crate::codec::registry::session as t;
use crate::codec::{
    socket_addr_len, split_frame, CodecError, Reader, SplitError, Writer, FRAME_HEADER_LEN,
};
use core::fmt;
use core::net::SocketAddr;

/// Length of the frame header (type + length).
pub const HEADER_LEN: usize = FRAME_HEADER_LEN;
/// Largest payload of one `DATA` frame.
pub const MAX_DATA: usize = 16384;
/// Largest frame body a sender may emit and a receiver accepts.
pub const MAX_BODY: usize = MAX_DATA + 16;
/// Largest number of candidates in one `CANDIDATES` frame.
pub const MAX_CANDIDATES: usize = 32;
/// Largest reason text in a `CLOSE` frame, in bytes.
pub const MAX_CLOSE_REASON: usize = 200;

/// What kind of address a candidate is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CandidateKind {
    /// An address of one of the peer's own interfaces.
    Host = 1,
    /// The peer's public TCP address as the relay observed it.
    ServerReflexiveTcp = 2,
    /// The peer's public UDP address as the relay's UDP service observed it.
    ServerReflexiveUdp = 3,
}

/// Transport protocol of a candidate (IANA protocol numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Transport {
    /// TCP (6).
    Tcp = 6,
    /// UDP (17).
    Udp = 17,
}

impl Transport {
    /// Decode an IANA protocol number; others are [`FrameError::BadTransport`].
    fn from_u8(p: u8) -> Result<Transport, FrameError> {
        match p {
            6 => Ok(Transport::Tcp),
            17 => Ok(Transport::Udp),
            p => Err(FrameError::BadTransport(p)),
        }
    }
}

/// One candidate address for a direct path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Where the address comes from.
    pub kind: CandidateKind,
    /// Transport to use with it.
    pub transport: Transport,
    /// Address and port.
    pub addr: SocketAddr,
}

/// A candidate on the wire:
///
/// ```text
/// +--------+-----------+--------+-------- ... --------+----------------+
/// |  kind  | transport | family |  address (4 or 16)  | port (u16 BE)  |
/// +--------+-----------+--------+-------- ... --------+----------------+
/// ```
///
/// (family, address and port are the shared [`crate::codec`] address encoding).
impl Candidate {
    fn wire_len(&self) -> usize {
        2 + socket_addr_len(&self.addr)
    }

    /// Read one candidate; `bad` is the frame's `BadLength`. The three
    /// leading bytes must all be present before any of them is judged.
    fn read(r: &mut Reader<'_>, bad: FrameError) -> Result<Candidate, FrameError> {
        let [kind, transport, family] = r.array().map_err(|_| bad)?;
        let kind = match kind {
            1 => CandidateKind::Host,
            2 => CandidateKind::ServerReflexiveTcp,
            3 => CandidateKind::ServerReflexiveUdp,
            k => return Err(FrameError::BadCandidateKind(k)),
        };
        let transport = Transport::from_u8(transport)?;
        let addr = r.ip_port(family).map_err(|e| body_error(e, bad))?;
        Ok(Candidate {
            kind,
            transport,
            addr,
        })
    }

    fn write(&self, w: &mut impl Writer) {
        w.put_u8(self.kind as u8);
        w.put_u8(self.transport as u8);
        w.put_socket_addr(self.addr);
    }
}

/// One session frame. Payloads borrow from the buffer they were parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Application bytes starting at stream offset `offset` (1..=16384 bytes).
    Data {
        /// Stream offset of the first payload byte.
        offset: u64,
        /// The bytes.
        payload: &'a [u8],
    },
    /// The sender holds every byte below `received` and never needs it again.
    Ack {
        /// Cumulative offset (the FIN counts as one position, see `spec/direct.md` §3.1).
        received: u64,
    },
    /// First frame on every path, each way: "I hold everything below `received`".
    Resume {
        /// The path this frame opens (must match the path it arrives on).
        path_id: u32,
        /// Cumulative offset, as in `Ack`.
        received: u64,
    },
    /// The sender's stream ends at `offset` (half-close).
    Fin {
        /// Final stream length.
        offset: u64,
    },
    /// Candidate addresses for direct paths (at most [`MAX_CANDIDATES`]).
    Candidates(Vec<Candidate>),
    /// Start a simultaneous open / hole punch `delay_ms` after receipt.
    Punch {
        /// Attempt number, echoed so both sides talk about the same attempt.
        attempt: u32,
        /// Delay after receipt, in milliseconds.
        delay_ms: u32,
        /// Which direct transport this attempt punches: TCP (simultaneous
        /// open) or UDP (XTCP hole punching).
        transport: Transport,
    },
    /// The sender sends data on `path_id` from now on; it is the last frame the
    /// sender sends on the path it arrives on.
    PathSwitch {
        /// The new path.
        path_id: u32,
    },
    /// Liveness probe; the peer answers with `KeepaliveAck` carrying the same nonce.
    Keepalive {
        /// Opaque value.
        nonce: u64,
    },
    /// Answer to `Keepalive`.
    KeepaliveAck {
        /// The probe's nonce.
        nonce: u64,
    },
    /// The session ends (abortively if `code` ≠ 0).
    Close {
        /// Application or protocol code.
        code: u16,
        /// Human-readable reason, at most [`MAX_CLOSE_REASON`] bytes.
        reason: &'a str,
    },
}

/// Why bytes could not be parsed as a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// [`Frame::parse`] only: fewer bytes than the frame needs; `needed` more are required.
    Incomplete {
        /// Bytes still missing.
        needed: usize,
    },
    /// [`FrameDecoder::finish`]: the stream ended inside a frame.
    Truncated {
        /// Bytes of the unfinished frame that were received.
        buffered: usize,
    },
    /// The length field exceeds [`MAX_BODY`].
    TooLong {
        /// The announced body length.
        len: usize,
    },
    /// Unknown frame type.
    UnknownType(u8),
    /// The body's length does not fit its type (includes empty or oversize `DATA`).
    BadLength {
        /// The frame type.
        ty: u8,
        /// The body length.
        len: usize,
    },
    /// A `CANDIDATES` count above [`MAX_CANDIDATES`].
    TooManyCandidates(u8),
    /// A candidate kind other than 1, 2, 3.
    BadCandidateKind(u8),
    /// A candidate transport other than 6 (TCP) or 17 (UDP).
    BadTransport(u8),
    /// A candidate address family other than 4 or 6.
    BadFamily(u8),
    /// A `CLOSE` reason longer than [`MAX_CLOSE_REASON`].
    ReasonTooLong(u8),
    /// A `CLOSE` reason that is not UTF-8.
    ReasonNotUtf8,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Incomplete { needed } => {
                write!(f, "incomplete frame ({needed} bytes missing)")
            }
            FrameError::Truncated { buffered } => {
                write!(f, "stream ended inside a frame ({buffered} bytes buffered)")
            }
            FrameError::TooLong { len } => {
                write!(f, "frame body of {len} bytes exceeds {MAX_BODY}")
            }
            FrameError::UnknownType(t) => write!(f, "unknown session frame type {t:#04x}"),
            FrameError::BadLength { ty, len } => {
                write!(f, "body length {len} does not fit frame type {ty:#04x}")
            }
            FrameError::TooManyCandidates(n) => {
                write!(f, "{n} candidates (at most {MAX_CANDIDATES})")
            }
            FrameError::BadCandidateKind(k) => write!(f, "unknown candidate kind {k}"),
            FrameError::BadTransport(p) => write!(f, "unknown candidate transport {p}"),
            FrameError::BadFamily(x) => write!(f, "unknown address family {x}"),
            FrameError::ReasonTooLong(n) => {
                write!(f, "close reason of {n} bytes (at most {MAX_CLOSE_REASON})")
            }
            FrameError::ReasonNotUtf8 => f.write_str("close reason is not UTF-8"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A frame that may not be sent: a field exceeds its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// `DATA` with an empty payload.
    EmptyData,
    /// `DATA` payload above [`MAX_DATA`].
    DataTooLong(usize),
    /// More than [`MAX_CANDIDATES`] candidates.
    TooManyCandidates(usize),
    /// `CLOSE` reason above [`MAX_CLOSE_REASON`] bytes.
    ReasonTooLong(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::EmptyData => f.write_str("DATA frame without payload"),
            EncodeError::DataTooLong(n) => {
                write!(f, "DATA payload of {n} bytes exceeds {MAX_DATA}")
            }
            EncodeError::TooManyCandidates(n) => {
                write!(f, "{n} candidates exceed {MAX_CANDIDATES}")
            }
            EncodeError::ReasonTooLong(n) => {
                write!(f, "close reason of {n} bytes exceeds {MAX_CLOSE_REASON}")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// A body field's codec error: an unknown address family keeps its byte,
/// anything else (cut short, bytes left over) is the frame's `BadLength`.
fn body_error(e: CodecError, bad: FrameError) -> FrameError {
    match e {
        CodecError::BadFamily(x) => FrameError::BadFamily(x),
        _ => bad,
    }
}

impl<'a> Frame<'a> {
    /// The frame's type byte.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Data { .. } => t::DATA,
            Frame::Ack { .. } => t::ACK,
            Frame::Resume { .. } => t::RESUME,
            Frame::Fin { .. } => t::FIN,
            Frame::Candidates(_) => t::CANDIDATES,
            Frame::Punch { .. } => t::PUNCH,
            Frame::PathSwitch { .. } => t::PATH_SWITCH,
            Frame::Keepalive { .. } => t::KEEPALIVE,
            Frame::KeepaliveAck { .. } => t::KEEPALIVE_ACK,
            Frame::Close { .. } => t::CLOSE,
        }
    }

    /// Body length [`encode`] writes (without the 3-byte header).
    pub fn body_len(&self) -> usize {
        match self {
            Frame::Data { payload, .. } => 8 + payload.len(),
            Frame::Ack { .. } | Frame::Fin { .. } => 8,
            Frame::Keepalive { .. } | Frame::KeepaliveAck { .. } => 8,
            Frame::Resume { .. } => 12,
            Frame::Punch { .. } => 9,
            Frame::PathSwitch { .. } => 4,
            Frame::Candidates(c) => 1 + c.iter().map(Candidate::wire_len).sum::<usize>(),
            Frame::Close { reason, .. } => 3 + reason.len(),
        }
    }

    /// Parse one frame from the front of `buf`; returns it and the bytes consumed.
    ///
    /// An oversize length is refused from the header alone, before the body arrives.
    pub fn parse(buf: &'a [u8]) -> Result<(Frame<'a>, usize), FrameError> {
        //= spec/direct.md#DI-FRAME-1
        //# | `MAX_BODY` | 16400 | `MAX_DATA` + 16: largest body a sender MAY emit and a receiver MUST accept |
        //= spec/direct.md#DI-FRAME-2
        //# A receiver MUST reject a length above `MAX_BODY` as soon as it has read the header,
        //# without waiting for the body (`TooLong`).
        let (ty, body, used) = split_frame(buf, MAX_BODY).map_err(|e| match e {
            SplitError::Incomplete { needed } => FrameError::Incomplete { needed },
            SplitError::TooLong { len } => FrameError::TooLong { len },
        })?;
        Ok((Frame::parse_body(ty, body)?, used))
    }

    /// Parse a frame body of type `ty` (the body's length is the frame's length field).
    pub fn parse_body(ty: u8, body: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let bad = FrameError::BadLength {
            ty,
            len: body.len(),
        };
        let field = |e| body_error(e, bad);
        let mut r = Reader::new(body);
        let frame = match ty {
            t::DATA => {
                let offset = r.u64().map_err(field)?;
                let payload = r.rest();
                if payload.is_empty() || payload.len() > MAX_DATA {
                    return Err(bad);
                }
                Frame::Data { offset, payload }
            }
            t::ACK => Frame::Ack {
                received: r.u64().map_err(field)?,
            },
            t::RESUME => Frame::Resume {
                path_id: r.u32().map_err(field)?,
                received: r.u64().map_err(field)?,
            },
            t::FIN => Frame::Fin {
                offset: r.u64().map_err(field)?,
            },
            t::CANDIDATES => {
                let count = r.u8().map_err(field)?;
                if usize::from(count) > MAX_CANDIDATES {
                    return Err(FrameError::TooManyCandidates(count));
                }
                let mut cands = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    cands.push(Candidate::read(&mut r, bad)?);
                }
                Frame::Candidates(cands)
            }
            t::PUNCH => {
                let attempt = r.u32().map_err(field)?;
                let delay_ms = r.u32().map_err(field)?;
                let transport = r.u8().map_err(field)?;
                // The length is judged before the transport byte.
                r.expect_empty().map_err(field)?;
                Frame::Punch {
                    attempt,
                    delay_ms,
                    transport: Transport::from_u8(transport)?,
                }
            }
            t::PATH_SWITCH => Frame::PathSwitch {
                path_id: r.u32().map_err(field)?,
            },
            t::KEEPALIVE => Frame::Keepalive {
                nonce: r.u64().map_err(field)?,
            },
            t::KEEPALIVE_ACK => Frame::KeepaliveAck {
                nonce: r.u64().map_err(field)?,
            },
            t::CLOSE => {
                let code = r.u16().map_err(field)?;
                let n = r.u8().map_err(field)?;
                if usize::from(n) > MAX_CLOSE_REASON {
                    return Err(FrameError::ReasonTooLong(n));
                }
                let reason = r.take(usize::from(n)).map_err(field)?;
                // The length is judged before the text.
                r.expect_empty().map_err(field)?;
                let reason = core::str::from_utf8(reason).map_err(|_| FrameError::ReasonNotUtf8)?;
                Frame::Close { code, reason }
            }
            //= spec/direct.md#DI-FRAME-3
            //# An unknown type is an error (`UnknownType`); it MUST NOT be skipped.
            other => return Err(FrameError::UnknownType(other)),
        };
        //= spec/direct.md#DI-CAND-1
        //# The body MUST hold exactly `count` candidates (missing or trailing bytes: `BadLength`).
        r.expect_empty().map_err(field)?;
        Ok(frame)
    }
}

/// Append `frame`, header included, to `out`. Nothing is appended on error.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match frame {
        Frame::Data { payload: [], .. } => return Err(EncodeError::EmptyData),
        Frame::Data { payload, .. } if payload.len() > MAX_DATA => {
            return Err(EncodeError::DataTooLong(payload.len()))
        }
        Frame::Candidates(c) if c.len() > MAX_CANDIDATES => {
            return Err(EncodeError::TooManyCandidates(c.len()))
        }
        Frame::Close { reason, .. } if reason.len() > MAX_CLOSE_REASON => {
            return Err(EncodeError::ReasonTooLong(reason.len()))
        }
        _ => {}
    }
    let body_len = frame.body_len();
    // Bounded by the checks above: body_len ≤ MAX_BODY < 2^16.
    let len16 = u16::try_from(body_len).map_err(|_| EncodeError::DataTooLong(body_len))?;
    out.reserve(HEADER_LEN + body_len);
    out.put_u8(frame.frame_type());
    out.put_u16(len16);
    match frame {
        Frame::Data { offset, payload } => {
            out.put_u64(*offset);
            out.put_slice(payload);
        }
        Frame::Ack { received } => out.put_u64(*received),
        Frame::Resume { path_id, received } => {
            out.put_u32(*path_id);
            out.put_u64(*received);
        }
        Frame::Fin { offset } => out.put_u64(*offset),
        Frame::Candidates(cands) => {
            // ≤ MAX_CANDIDATES, checked above.
            out.put_u8(cands.len() as u8);
            for c in cands {
                c.write(out);
            }
        }
        Frame::Punch {
            attempt,
            delay_ms,
            transport,
        } => {
            out.put_u32(*attempt);
            out.put_u32(*delay_ms);
            out.put_u8(*transport as u8);
        }
        Frame::PathSwitch { path_id } => out.put_u32(*path_id),
        Frame::Keepalive { nonce } | Frame::KeepaliveAck { nonce } => out.put_u64(*nonce),
        Frame::Close { code, reason } => {
            out.put_u16(*code);
            // ≤ MAX_CLOSE_REASON, checked above.
            out.put_u8(reason.len() as u8);
            out.put_slice(reason.as_bytes());
        }
    }
    Ok(())
}

/// Incremental frame decoder for one path's byte stream.
///
/// Feed it whatever the path delivers, split at any byte:
///
/// ```
/// # use xtcp_proto::session::{FrameDecoder, Frame};
/// let mut dec = FrameDecoder::new();
/// let mut input: &[u8] = &[0x02, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0];
/// assert_eq!(dec.decode(&mut input), Ok(None)); // all 10 bytes taken, frame incomplete
/// let mut input: &[u8] = &[42, 0x08];
/// assert_eq!(dec.decode(&mut input), Ok(Some(Frame::Ack { received: 42 })));
/// assert_eq!(input, &[0x08]); // the rest stays with the caller
/// ```
///
/// It copies at most one frame (≤ [`HEADER_LEN`] + [`MAX_BODY`] bytes) into its
/// own buffer and never reads past that frame's end, so its memory is bounded
/// whatever the input. After an error the path must be dropped; every later call
/// returns the same error.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// The previous call returned the frame in `buf`; clear it on the next call.
    yielded: bool,
    error: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take bytes from the front of `input` until one frame is complete, and
    /// return it; `Ok(None)` when `input` ran out first (all of it was taken).
    /// Call again with the remaining `input` until it returns `Ok(None)`.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame<'_>>, FrameError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.yielded {
            self.buf.clear();
            self.yielded = false;
        }
        if self.buf.len() < HEADER_LEN {
            self.take(input, HEADER_LEN - self.buf.len());
            if self.buf.len() < HEADER_LEN {
                return Ok(None);
            }
        }
        let (ty, len) = match self.buf.as_slice() {
            [ty, hi, lo, ..] => (*ty, usize::from(u16::from_be_bytes([*hi, *lo]))),
            _ => return Ok(None),
        };
        //= spec/direct.md#DI-FRAME-1
        //= spec/direct.md#DI-FRAME-2
        if len > MAX_BODY {
            self.error = Some(FrameError::TooLong { len });
            return Err(FrameError::TooLong { len });
        }
        let total = HEADER_LEN + len;
        self.take(input, total - self.buf.len());
        if self.buf.len() < total {
            return Ok(None);
        }
        self.yielded = true;
        let body = self.buf.get(HEADER_LEN..total).unwrap_or_default();
        match Frame::parse_body(ty, body) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                self.error = Some(e);
                Err(e)
            }
        }
    }

    fn take(&mut self, input: &mut &[u8], want: usize) {
        let n = want.min(input.len());
        let (head, tail) = input.split_at(n);
        self.buf.extend_from_slice(head);
        *input = tail;
    }

    /// Bytes of an unfinished frame held (0 at a frame boundary).
    pub fn buffered(&self) -> usize {
        if self.yielded {
            0
        } else {
            self.buf.len()
        }
    }

    /// The path's stream ended: `Ok` at a frame boundary, else `Truncated`.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::IpAddr;

    /// A frame of every type, built from quickcheck's values.
    fn frame_of<'a>(
        ty: u8,
        n: u64,
        payload: &'a [u8],
        reason: &'a str,
        cands: &[(u8, bool, IpAddr, u16)],
    ) -> Frame<'a> {
        let payload = payload.get(..payload.len().min(MAX_DATA)).unwrap_or(&[]);
        match ty % 10 {
            0 if !payload.is_empty() => Frame::Data { offset: n, payload },
            0 | 1 => Frame::Ack { received: n },
            2 => Frame::Resume {
                path_id: (n >> 32) as u32,
                received: n,
            },
            3 => Frame::Fin { offset: n },
            4 => Frame::Candidates(
                cands
                    .iter()
                    .take(MAX_CANDIDATES)
                    .map(|&(k, tcp, ip, port)| Candidate {
                        kind: [
                            CandidateKind::Host,
                            CandidateKind::ServerReflexiveTcp,
                            CandidateKind::ServerReflexiveUdp,
                        ][usize::from(k % 3)],
                        transport: if tcp { Transport::Tcp } else { Transport::Udp },
                        addr: SocketAddr::new(ip, port),
                    })
                    .collect(),
            ),
            5 => Frame::Punch {
                attempt: n as u32,
                delay_ms: (n >> 32) as u32,
                transport: if n & 1 == 0 {
                    Transport::Tcp
                } else {
                    Transport::Udp
                },
            },
            6 => Frame::PathSwitch { path_id: n as u32 },
            7 => Frame::Keepalive { nonce: n },
            8 => Frame::KeepaliveAck { nonce: n },
            _ => {
                let mut end = reason.len().min(MAX_CLOSE_REASON);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                Frame::Close {
                    code: n as u16,
                    reason: reason.get(..end).unwrap_or_default(),
                }
            }
        }
    }

    quickcheck::quickcheck! {
        /// encode → parse is the identity, for every frame type, and the
        /// decoder fed byte by byte agrees.
        fn frames_round_trip(
            ty: u8,
            n: u64,
            payload: Vec<u8>,
            reason: String,
            cands: Vec<(u8, bool, IpAddr, u16)>
        ) -> bool {
            let f = frame_of(ty, n, &payload, &reason, &cands);
            let mut b = Vec::new();
            if encode(&f, &mut b).is_err() {
                return false;
            }
            let mut dec = FrameDecoder::new();
            let mut last = None;
            for byte in &b {
                let mut input: &[u8] = core::slice::from_ref(byte);
                if let Ok(Some(g)) = dec.decode(&mut input) {
                    last = Some(g == f);
                }
            }
            b.len() == HEADER_LEN + f.body_len()
                && Frame::parse(&b) == Ok((f.clone(), b.len()))
                && last == Some(true)
                && dec.finish().is_ok()
        }

        /// Any bytes: parse errors or yields a frame that re-encodes to
        /// exactly the bytes it consumed (the codec is canonical).
        fn parse_is_canonical(data: Vec<u8>) -> bool {
            match Frame::parse(&data) {
                Err(_) => true,
                Ok((f, used)) => {
                    let mut b = Vec::new();
                    encode(&f, &mut b).is_ok() && data.get(..used) == Some(&b[..])
                }
            }
        }

        /// Bodies of a registered type, arbitrary contents: same property,
        /// reached far more often than with a random type byte.
        fn bodies_are_canonical(ty: u8, body: Vec<u8>) -> bool {
            let ty = ty % 12;
            match Frame::parse_body(ty, &body) {
                Err(_) => true,
                Ok(f) => {
                    let mut b = Vec::new();
                    encode(&f, &mut b).is_ok()
                        && b.get(HEADER_LEN..) == Some(&body[..])
                        && b.first() == Some(&ty)
                }
            }
        }
    }
}
