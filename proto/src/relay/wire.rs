//! The relay control protocol's frames (`spec/relay.md` §4).
//!
//! A client and a relay exchange a few of these frames inside the client↔relay
//! TLS 1.3 channel (ALPN `xtcp-relay/1`) before the relay pairs two clients and
//! turns the TCP connection into a blind pipe. Every frame is
//!
//! ```text
//!  0        1        2        3
//! +--------+--------+--------+---- ... ----+
//! |  type  |  length (u16 BE) |    body     |   length ≤ MAX_BODY
//! +--------+--------+--------+---- ... ----+
//! ```
//!
//! Parsing is total: any byte string yields a frame or a typed [`FrameError`];
//! every field is read through [`crate::codec::Reader`] (no indexing), and
//! nothing allocates. Type bytes come from [`crate::codec::registry::relay`].

use crate::codec::registry::relay as t;
use crate::codec::{
    socket_addr_len, split_frame, CodecError, Reader, SliceWriter, SplitError, Writer,
    FRAME_HEADER_LEN,
};
use core::fmt;
use core::net::SocketAddr;

/// The only protocol version this implementation speaks.
pub const VERSION: u8 = 1;
/// ALPN protocol id of the client↔relay TLS channel.
pub const ALPN: &[u8] = b"xtcp-relay/1";
/// Length of the frame header (type + length).
pub const HEADER_LEN: usize = FRAME_HEADER_LEN;
/// Largest frame body a sender may emit and a receiver accepts.
pub const MAX_BODY: usize = 512;
/// Largest operator token carried in `CREATE`.
pub const MAX_TOKEN: usize = 128;
/// Largest reason text carried in `ERROR`.
pub const MAX_REASON: usize = 256;
/// Length of a rendezvous id.
pub const RENDEZVOUS_ID_LEN: usize = 16;

/// Length of the optional UDP grant at the end of a `PAIRED` body (port + token).
pub const UDP_GRANT_LEN: usize = 2 + 16;

/// The relay's grant for its UDP address service (`spec/relay.md` §4.2.4, §12),
/// carried at the end of `PAIRED`.
///
/// ```text
/// +-------------------+---------------------------------+
/// | udp port (u16 BE) |          token (16)             |
/// +-------------------+---------------------------------+
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpGrant {
    /// The UDP port of the address service, on the relay's IP address.
    pub port: u16,
    /// Authenticates this client's address requests while its session lives.
    pub token: [u8; 16],
}

/// Error codes carried by an `ERROR` frame (`spec/relay.md` §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The client's version is not spoken by this relay.
    UnsupportedVersion = 1,
    /// A frame could not be parsed or arrived out of order.
    Malformed = 2,
    /// `CREATE` without a valid operator token.
    Unauthorized = 3,
    /// `JOIN` for a rendezvous id with no waiting session (unknown, expired or already paired).
    UnknownSession = 4,
    /// The source address failed too many joins (or token checks); retry after the given seconds.
    LockedOut = 5,
    /// `CREATE` for a rendezvous id that already has a waiting session.
    SessionExists = 6,
    /// A limit (paired or waiting sessions) is reached. At the limit of unauthenticated
    /// connections the relay closes before TLS, without a frame.
    OverCapacity = 7,
    /// The waiting session's TTL expired before a guest joined.
    Expired = 8,
    /// The client did not complete the control exchange in time.
    Timeout = 9,
    /// The relay is shutting down and accepts no new sessions.
    ShuttingDown = 10,
    /// Any other code (kept for forward compatibility).
    Other = 0xFFFF,
}

impl ErrorCode {
    /// Decode a code; unknown values map to [`ErrorCode::Other`].
    pub fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::UnsupportedVersion,
            2 => ErrorCode::Malformed,
            3 => ErrorCode::Unauthorized,
            4 => ErrorCode::UnknownSession,
            5 => ErrorCode::LockedOut,
            6 => ErrorCode::SessionExists,
            7 => ErrorCode::OverCapacity,
            8 => ErrorCode::Expired,
            9 => ErrorCode::Timeout,
            10 => ErrorCode::ShuttingDown,
            //= spec/relay.md#RL-ERR-1
            //# A receiver MUST accept unknown values and treat them as a
            //# generic failure (`ErrorCode::Other`, which keeps the raw value).
            _ => ErrorCode::Other,
        }
    }

    /// A stable lower-case name (used in logs and metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Malformed => "malformed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::LockedOut => "locked_out",
            ErrorCode::SessionExists => "session_exists",
            ErrorCode::OverCapacity => "over_capacity",
            ErrorCode::Expired => "expired",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Other => "other",
        }
    }
}

/// One control frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Host → relay: register a waiting session.
    Create {
        /// Protocol version the client speaks.
        version: u8,
        /// The session's one-way rendezvous id.
        rendezvous_id: [u8; RENDEZVOUS_ID_LEN],
        /// The operator token (may be empty on relays that allow anonymous hosts).
        token: &'a [u8],
    },
    /// Guest → relay: join the waiting session with this id.
    Join {
        /// Protocol version the client speaks.
        version: u8,
        /// The session's one-way rendezvous id.
        rendezvous_id: [u8; RENDEZVOUS_ID_LEN],
    },
    /// Relay → host: the session is registered and will wait `ttl_secs`.
    Created {
        /// Seconds the session waits for its guest.
        ttl_secs: u32,
    },
    /// Relay → both: paired; the control channel closes after this frame.
    Paired {
        /// The client's address as the relay observed it (its reflexive TCP address).
        observed: SocketAddr,
        /// The UDP address service grant; `None` from a relay without the service.
        udp: Option<UdpGrant>,
    },
    /// Relay → client: the request failed; the relay closes the connection.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// The raw code (equals `code as u16` unless `code` is `Other`).
        raw_code: u16,
        /// For `LockedOut`: seconds until the source may try again; else 0.
        retry_after_secs: u32,
        /// Human-readable detail (UTF-8, may be empty, never trusted for logic).
        reason: &'a [u8],
    },
}

/// Why a frame could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the header says; `needed` more are required.
    Incomplete {
        /// Bytes still missing.
        needed: usize,
    },
    /// The length field exceeds [`MAX_BODY`].
    TooLong,
    /// Unknown frame type.
    UnknownType(u8),
    /// The body's length does not fit its type.
    BadLength,
    /// A field holds a value its type forbids (e.g. address family).
    BadField,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Incomplete { needed } => {
                write!(f, "incomplete frame ({needed} bytes missing)")
            }
            FrameError::TooLong => write!(f, "frame longer than {MAX_BODY} bytes"),
            FrameError::UnknownType(t) => write!(f, "unknown frame type {t:#04x}"),
            FrameError::BadLength => f.write_str("frame body length does not fit its type"),
            FrameError::BadField => f.write_str("invalid field value"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Inside a frame's body: a field cut short or bytes left over are
/// [`FrameError::BadLength`], an unknown address family is
/// [`FrameError::BadField`].
impl From<CodecError> for FrameError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::BadFamily(_) => FrameError::BadField,
            _ => FrameError::BadLength,
        }
    }
}

/// Emitting failed: the buffer is too small or a field exceeds its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmitError;

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("frame does not fit (buffer too small or field over its limit)")
    }
}

impl std::error::Error for EmitError {}

impl<'a> Frame<'a> {
    /// Parse one frame from the front of `buf`; returns it and the bytes consumed.
    pub fn parse(buf: &'a [u8]) -> Result<(Frame<'a>, usize), FrameError> {
        //= spec/relay.md#RL-FRAME-1
        //# | `MAX_BODY` | 512 | largest body a sender MAY emit and a receiver MUST accept |
        //= spec/relay.md#RL-FRAME-2
        //# A receiver MUST reject a length above 512 as soon as it has read the
        //# header, without waiting for the body.
        let (ty, body, used) = split_frame(buf, MAX_BODY).map_err(|e| match e {
            SplitError::Incomplete { needed } => FrameError::Incomplete { needed },
            SplitError::TooLong { .. } => FrameError::TooLong,
        })?;
        Ok((Frame::parse_body(ty, body)?, used))
    }

    /// Parse a body of type `ty`: every byte must belong to a field.
    fn parse_body(ty: u8, body: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let mut r = Reader::new(body);
        let frame = match ty {
            t::CREATE => {
                let version = r.u8()?;
                let rendezvous_id = r.array()?;
                let token = r.rest();
                if token.len() > MAX_TOKEN {
                    return Err(FrameError::BadLength);
                }
                Frame::Create {
                    version,
                    rendezvous_id,
                    token,
                }
            }
            t::JOIN => Frame::Join {
                version: r.u8()?,
                rendezvous_id: r.array()?,
            },
            t::CREATED => Frame::Created { ttl_secs: r.u32()? },
            t::PAIRED => {
                // Address + port, then optionally the UDP grant: body lengths
                // 7 or 25 (IPv4), 19 or 37 (IPv6); anything else is BadLength.
                let observed = r.socket_addr()?;
                //= spec/relay.md#RL-GRANT-2
                //# A client MUST accept both forms
                let udp = if r.is_empty() {
                    None
                } else {
                    Some(UdpGrant {
                        port: r.u16()?,
                        token: r.array()?,
                    })
                };
                Frame::Paired { observed, udp }
            }
            t::ERROR => {
                let raw_code = r.u16()?;
                let retry_after_secs = r.u32()?;
                let reason = r.rest();
                if reason.len() > MAX_REASON {
                    return Err(FrameError::BadLength);
                }
                Frame::Error {
                    code: ErrorCode::from_u16(raw_code),
                    raw_code,
                    retry_after_secs,
                    reason,
                }
            }
            other => return Err(FrameError::UnknownType(other)),
        };
        r.expect_empty()?;
        Ok(frame)
    }

    /// The frame's type byte.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Create { .. } => t::CREATE,
            Frame::Join { .. } => t::JOIN,
            Frame::Created { .. } => t::CREATED,
            Frame::Paired { .. } => t::PAIRED,
            Frame::Error { .. } => t::ERROR,
        }
    }

    /// Bytes [`Frame::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Frame::Create { token, .. } => 1 + RENDEZVOUS_ID_LEN + token.len(),
                Frame::Join { .. } => 1 + RENDEZVOUS_ID_LEN,
                Frame::Created { .. } => 4,
                Frame::Paired { observed, udp } => {
                    socket_addr_len(observed) + if udp.is_some() { UDP_GRANT_LEN } else { 0 }
                }
                Frame::Error { reason, .. } => 6 + reason.len(),
            }
    }

    /// Write the frame to the front of `buf`; returns the bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        match self {
            //= spec/relay.md#RL-TOKEN-1
            //# A sender MUST NOT emit more than 128 bytes
            Frame::Create { token, .. } if token.len() > MAX_TOKEN => return Err(EmitError),
            Frame::Error { reason, .. } if reason.len() > MAX_REASON => return Err(EmitError),
            _ => {}
        }
        let total = self.buffer_len();
        let body_len = u16::try_from(total - HEADER_LEN).map_err(|_| EmitError)?;
        if usize::from(body_len) > MAX_BODY {
            return Err(EmitError);
        }
        let mut w = SliceWriter::new(buf.get_mut(..total).ok_or(EmitError)?);
        w.put_u8(self.frame_type());
        w.put_u16(body_len);
        match self {
            Frame::Create {
                version,
                rendezvous_id,
                token,
            } => {
                w.put_u8(*version);
                w.put_slice(rendezvous_id);
                w.put_slice(token);
            }
            Frame::Join {
                version,
                rendezvous_id,
            } => {
                w.put_u8(*version);
                w.put_slice(rendezvous_id);
            }
            Frame::Created { ttl_secs } => w.put_u32(*ttl_secs),
            Frame::Paired { observed, udp } => {
                w.put_socket_addr(*observed);
                if let Some(g) = udp {
                    w.put_u16(g.port);
                    w.put_slice(&g.token);
                }
            }
            Frame::Error {
                raw_code,
                retry_after_secs,
                reason,
                ..
            } => {
                w.put_u16(*raw_code);
                w.put_u32(*retry_after_secs);
                w.put_slice(reason);
            }
        }
        w.finish().map_err(|_| EmitError)
    }

    /// Convenience: emit into a new vector.
    pub fn to_vec(&self) -> Result<Vec<u8>, EmitError> {
        let mut v = vec![0u8; self.buffer_len()];
        self.emit(&mut v)?;
        Ok(v)
    }

    /// An `ERROR` frame with a code and reason (the reason is cut to [`MAX_REASON`]).
    pub fn error(code: ErrorCode, retry_after_secs: u32, reason: &'a str) -> Frame<'a> {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Frame::Error {
            code,
            raw_code: code as u16,
            retry_after_secs,
            reason: &reason.as_bytes()[..end],
        }
    }
}

/// Ties the test vectors here and in `udp_service` to `spec/relay.md`.
#[cfg(test)]
pub(crate) mod spec_vectors {
    /// Bytes as the spec prints them: lower-case hex pairs, space-separated.
    pub(crate) fn hex(b: &[u8]) -> String {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Assert that `line` is a line of spec/relay.md (surrounding blanks
    /// aside), in its test-vector section `section`.
    pub(crate) fn in_spec(section: &str, line: &str) {
        let spec = include_str!("../../../spec/relay.md");
        assert!(
            spec.lines().any(|l| l.trim() == line),
            "vector not in spec/relay.md {section}: {line}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::spec_vectors::hex;
    use super::*;

    fn in_spec(line: &str) {
        super::spec_vectors::in_spec("§4.3", line);
    }

    // Test vectors, also in spec/relay.md §4.3.
    //= spec/relay.md#RL-GRANT-2
    #[test]
    fn vectors() {
        let join = Frame::Join {
            version: 1,
            rendezvous_id: [0xAB; 16],
        };
        let bytes = join.to_vec().unwrap();
        assert_eq!(bytes[..4], [0x02, 0x00, 0x11, 0x01]);
        assert_eq!(bytes.len(), 20);
        assert_eq!(Frame::parse(&bytes).unwrap(), (join, 20));

        // A relay without the UDP address service: the original 7-byte body.
        let paired = Frame::Paired {
            observed: "198.18.0.7:40000".parse().unwrap(),
            udp: None,
        };
        let bytes = paired.to_vec().unwrap();
        assert_eq!(bytes, [0x82, 0x00, 0x07, 0x04, 198, 18, 0, 7, 0x9c, 0x40]);
        assert_eq!(Frame::parse(&bytes).unwrap(), (paired, 10));

        // With the grant (port 15000, token 00 11 … ff): 25-byte body.
        let token: [u8; 16] = core::array::from_fn(|i| (i as u8) * 0x11);
        let paired = Frame::Paired {
            observed: "198.18.0.7:40000".parse().unwrap(),
            udp: Some(UdpGrant { port: 15000, token }),
        };
        let bytes = paired.to_vec().unwrap();
        let mut want = vec![
            0x82, 0x00, 0x19, 0x04, 198, 18, 0, 7, 0x9c, 0x40, 0x3a, 0x98,
        ];
        want.extend_from_slice(&token);
        assert_eq!(bytes, want);
        assert_eq!(Frame::parse(&bytes).unwrap(), (paired, 28));
        in_spec(&hex(&bytes[..12]));
        in_spec(&hex(&bytes[12..]));

        // IPv6 with the grant: 37-byte body.
        let paired = Frame::Paired {
            observed: "[2001:db8::7]:40000".parse().unwrap(),
            udp: Some(UdpGrant { port: 15000, token }),
        };
        let bytes = paired.to_vec().unwrap();
        assert_eq!(bytes.len(), 3 + 37);
        assert_eq!(bytes[1..4], [0x00, 37, 6]);
        assert_eq!(Frame::parse(&bytes).unwrap(), (paired, 40));

        let err = Frame::error(ErrorCode::LockedOut, 300, "locked out");
        let bytes = err.to_vec().unwrap();
        assert_eq!(
            bytes[..9],
            [0xE0, 0x00, 0x10, 0x00, 0x05, 0x00, 0x00, 0x01, 0x2C]
        );
        assert_eq!(Frame::parse(&bytes).unwrap().0, err);
    }

    //= spec/relay.md#RL-FRAME-1
    //= spec/relay.md#RL-ERR-1
    #[test]
    fn max_body_and_unknown_error_codes_are_accepted() {
        // A 512-byte body is read (the receiver waits for it), not refused.
        assert_eq!(
            Frame::parse(&[t::ERROR, 0x02, 0x00]),
            Err(FrameError::Incomplete { needed: MAX_BODY })
        );
        // An unknown error code is a generic failure that keeps its raw value.
        let (f, used) = Frame::parse(&[0xE0, 0, 6, 0x12, 0x34, 0, 0, 0, 7]).unwrap();
        assert_eq!(used, 9);
        assert_eq!(
            f,
            Frame::Error {
                code: ErrorCode::Other,
                raw_code: 0x1234,
                retry_after_secs: 7,
                reason: b"",
            }
        );
    }

    //= spec/relay.md#RL-FRAME-2
    //= spec/relay.md#RL-TOKEN-1
    #[test]
    fn malformed_inputs_are_typed_errors() {
        assert_eq!(Frame::parse(&[]), Err(FrameError::Incomplete { needed: 3 }));
        assert_eq!(
            Frame::parse(&[2, 0]),
            Err(FrameError::Incomplete { needed: 1 })
        );
        assert_eq!(Frame::parse(&[2, 0x02, 0x01]), Err(FrameError::TooLong));
        assert_eq!(
            Frame::parse(&[0x55, 0, 0]),
            Err(FrameError::UnknownType(0x55))
        );
        assert_eq!(Frame::parse(&[2, 0, 1, 1]), Err(FrameError::BadLength));
        assert_eq!(
            Frame::parse(&[0x82, 0, 3, 5, 0, 0]),
            Err(FrameError::BadField)
        );
        // PAIRED: every body length but 7/25 (family 4) and 19/37 (family 6)
        // is BadLength, including a grant cut short or overlong.
        for family in [4u8, 6] {
            let ok: [usize; 2] = if family == 4 { [7, 25] } else { [19, 37] };
            for len in 0..=40usize {
                let mut f = vec![0x82, 0, len as u8];
                f.resize(3 + len, 0);
                if let Some(b) = f.get_mut(3) {
                    *b = family;
                }
                let r = Frame::parse(&f);
                if ok.contains(&len) {
                    assert!(r.is_ok(), "family {family} len {len}: {r:?}");
                } else {
                    assert_eq!(r, Err(FrameError::BadLength), "family {family} len {len}");
                }
            }
        }
        assert_eq!(
            Frame::parse(&[0x81, 0, 4, 0]),
            Err(FrameError::Incomplete { needed: 3 })
        );
        let long_token = [0u8; MAX_TOKEN + 1];
        let f = Frame::Create {
            version: 1,
            rendezvous_id: [0; 16],
            token: &long_token,
        };
        assert_eq!(f.to_vec(), Err(EmitError));
    }

    /// A frame of every type, built from quickcheck's values.
    fn frame_of<'a>(
        ty: u8,
        n: u32,
        id: u128,
        bytes: &'a [u8],
        observed: SocketAddr,
        grant: Option<(u16, u128)>,
    ) -> Frame<'a> {
        let cut = |max: usize| bytes.get(..bytes.len().min(max)).unwrap_or_default();
        match ty % 5 {
            0 => Frame::Create {
                version: n as u8,
                rendezvous_id: id.to_be_bytes(),
                token: cut(MAX_TOKEN),
            },
            1 => Frame::Join {
                version: n as u8,
                rendezvous_id: id.to_be_bytes(),
            },
            2 => Frame::Created { ttl_secs: n },
            3 => Frame::Paired {
                // The wire carries address and port only.
                observed: SocketAddr::new(observed.ip(), observed.port()),
                udp: grant.map(|(port, token)| UdpGrant {
                    port,
                    token: token.to_be_bytes(),
                }),
            },
            _ => Frame::Error {
                code: ErrorCode::from_u16(n as u16),
                raw_code: n as u16,
                retry_after_secs: n.rotate_left(7),
                reason: cut(MAX_REASON),
            },
        }
    }

    quickcheck::quickcheck! {
        /// emit → parse is the identity for every frame type.
        fn frames_round_trip(
            ty: u8,
            n: u32,
            id: u128,
            bytes: Vec<u8>,
            observed: SocketAddr,
            grant: Option<(u16, u128)>
        ) -> bool {
            let f = frame_of(ty, n, id, &bytes, observed, grant);
            match f.to_vec() {
                Ok(b) => b.len() == f.buffer_len() && Frame::parse(&b) == Ok((f, b.len())),
                Err(_) => false,
            }
        }

        /// Any bytes: a typed error or a frame that re-emits to exactly the
        /// bytes consumed (the fuzz oracle asserts it).
        fn arbitrary_bytes_never_panic(data: Vec<u8>) -> bool {
            crate::fuzzing::relay_frame(&data);
            true
        }

        /// Well-formed headers around arbitrary bodies reach every body
        /// parser; the oracle runs on each.
        fn arbitrary_bodies_never_panic(ty: u8, body: Vec<u8>) -> bool {
            let ty = [t::CREATE, t::JOIN, t::CREATED, t::PAIRED, t::ERROR][usize::from(ty % 5)];
            let mut d = vec![ty];
            d.extend_from_slice(&(body.len() as u16).to_be_bytes());
            d.extend_from_slice(&body);
            crate::fuzzing::relay_frame(&d);
            true
        }
    }
}
