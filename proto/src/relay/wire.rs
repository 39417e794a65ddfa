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
//! Parsing is total: any byte string yields a frame or a typed [`FrameError`],
//! with one bounds check per field and no allocation beyond the body's size
//! (itself bounded by [`MAX_BODY`]).

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The only protocol version this implementation speaks.
pub const VERSION: u8 = 1;
/// ALPN protocol id of the client↔relay TLS channel.
pub const ALPN: &[u8] = b"xtcp-relay/1";
/// Length of the frame header (type + length).
pub const HEADER_LEN: usize = 3;
/// Largest frame body a sender may emit and a receiver accepts.
pub const MAX_BODY: usize = 512;
/// Largest operator token carried in `CREATE`.
pub const MAX_TOKEN: usize = 128;
/// Largest reason text carried in `ERROR`.
pub const MAX_REASON: usize = 256;
/// Length of a rendezvous id.
pub const RENDEZVOUS_ID_LEN: usize = 16;

const T_CREATE: u8 = 0x01;
const T_JOIN: u8 = 0x02;
const T_CREATED: u8 = 0x81;
const T_PAIRED: u8 = 0x82;
const T_ERROR: u8 = 0xE0;

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

/// Emitting failed: the buffer is too small or a field exceeds its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmitError;

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("frame does not fit (buffer too small or field over its limit)")
    }
}

impl std::error::Error for EmitError {}

fn id(b: &[u8]) -> Result<[u8; RENDEZVOUS_ID_LEN], FrameError> {
    b.try_into().map_err(|_| FrameError::BadLength)
}

impl<'a> Frame<'a> {
    /// Parse one frame from the front of `buf`; returns it and the bytes consumed.
    pub fn parse(buf: &'a [u8]) -> Result<(Frame<'a>, usize), FrameError> {
        let Some((&ty, rest)) = buf.split_first() else {
            return Err(FrameError::Incomplete { needed: HEADER_LEN });
        };
        let Some(len_bytes) = rest.get(..2) else {
            return Err(FrameError::Incomplete {
                needed: HEADER_LEN - buf.len(),
            });
        };
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        //= spec/relay.md#RL-FRAME-1
        //# | `MAX_BODY` | 512 | largest body a sender MAY emit and a receiver MUST accept |
        //= spec/relay.md#RL-FRAME-2
        //# A receiver MUST reject a length above 512 as soon as it has read the
        //# header, without waiting for the body.
        if len > MAX_BODY {
            return Err(FrameError::TooLong);
        }
        let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Err(FrameError::Incomplete {
                needed: HEADER_LEN + len - buf.len(),
            });
        };
        let frame = match ty {
            T_CREATE => {
                if body.len() < 1 + RENDEZVOUS_ID_LEN
                    || body.len() > 1 + RENDEZVOUS_ID_LEN + MAX_TOKEN
                {
                    return Err(FrameError::BadLength);
                }
                Frame::Create {
                    version: body[0],
                    rendezvous_id: id(&body[1..1 + RENDEZVOUS_ID_LEN])?,
                    token: &body[1 + RENDEZVOUS_ID_LEN..],
                }
            }
            T_JOIN => {
                if body.len() != 1 + RENDEZVOUS_ID_LEN {
                    return Err(FrameError::BadLength);
                }
                Frame::Join {
                    version: body[0],
                    rendezvous_id: id(&body[1..])?,
                }
            }
            T_CREATED => {
                let b: [u8; 4] = body.try_into().map_err(|_| FrameError::BadLength)?;
                Frame::Created {
                    ttl_secs: u32::from_be_bytes(b),
                }
            }
            T_PAIRED => {
                let (&family, rest) = body.split_first().ok_or(FrameError::BadLength)?;
                // Address + port, then optionally the UDP grant: body lengths
                // 7 or 25 (IPv4), 19 or 37 (IPv6); anything else is BadLength.
                let ip_len = match family {
                    4 => 4,
                    6 => 16,
                    _ => return Err(FrameError::BadField),
                };
                //= spec/relay.md#RL-GRANT-2
                //# A client MUST accept both forms
                let (addr, grant) = match rest.len().checked_sub(ip_len + 2) {
                    Some(0) => (rest, None),
                    Some(UDP_GRANT_LEN) => {
                        let (addr, grant) = rest.split_at(ip_len + 2);
                        (addr, Some(grant))
                    }
                    _ => return Err(FrameError::BadLength),
                };
                let port = u16::from_be_bytes([addr[ip_len], addr[ip_len + 1]]);
                let ip = if family == 4 {
                    let ip: [u8; 4] = addr[..4].try_into().map_err(|_| FrameError::BadLength)?;
                    IpAddr::V4(Ipv4Addr::from(ip))
                } else {
                    let ip: [u8; 16] = addr[..16].try_into().map_err(|_| FrameError::BadLength)?;
                    IpAddr::V6(Ipv6Addr::from(ip))
                };
                let udp = match grant {
                    None => None,
                    Some(g) => Some(UdpGrant {
                        port: u16::from_be_bytes([g[0], g[1]]),
                        token: g[2..].try_into().map_err(|_| FrameError::BadLength)?,
                    }),
                };
                Frame::Paired {
                    observed: SocketAddr::new(ip, port),
                    udp,
                }
            }
            T_ERROR => {
                if body.len() < 6 || body.len() > 6 + MAX_REASON {
                    return Err(FrameError::BadLength);
                }
                let raw_code = u16::from_be_bytes([body[0], body[1]]);
                Frame::Error {
                    code: ErrorCode::from_u16(raw_code),
                    raw_code,
                    retry_after_secs: u32::from_be_bytes([body[2], body[3], body[4], body[5]]),
                    reason: &body[6..],
                }
            }
            other => return Err(FrameError::UnknownType(other)),
        };
        Ok((frame, HEADER_LEN + len))
    }

    /// Bytes [`Frame::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Frame::Create { token, .. } => 1 + RENDEZVOUS_ID_LEN + token.len(),
                Frame::Join { .. } => 1 + RENDEZVOUS_ID_LEN,
                Frame::Created { .. } => 4,
                Frame::Paired { observed, udp } => {
                    let addr = match observed {
                        SocketAddr::V4(_) => 1 + 6,
                        SocketAddr::V6(_) => 1 + 18,
                    };
                    addr + if udp.is_some() { UDP_GRANT_LEN } else { 0 }
                }
                Frame::Error { reason, .. } => 6 + reason.len(),
            }
    }

    /// Write the frame to the front of `buf`; returns the bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        let total = self.buffer_len();
        let out = buf.get_mut(..total).ok_or(EmitError)?;
        let body_len = total - HEADER_LEN;
        if body_len > MAX_BODY {
            return Err(EmitError);
        }
        let (hdr, body) = out.split_at_mut(HEADER_LEN);
        hdr[1..3].copy_from_slice(&(body_len as u16).to_be_bytes());
        hdr[0] = match self {
            Frame::Create {
                version,
                rendezvous_id,
                token,
            } => {
                //= spec/relay.md#RL-TOKEN-1
                //# A sender MUST NOT emit more than 128 bytes
                if token.len() > MAX_TOKEN {
                    return Err(EmitError);
                }
                body[0] = *version;
                body[1..1 + RENDEZVOUS_ID_LEN].copy_from_slice(rendezvous_id);
                body[1 + RENDEZVOUS_ID_LEN..].copy_from_slice(token);
                T_CREATE
            }
            Frame::Join {
                version,
                rendezvous_id,
            } => {
                body[0] = *version;
                body[1..].copy_from_slice(rendezvous_id);
                T_JOIN
            }
            Frame::Created { ttl_secs } => {
                body.copy_from_slice(&ttl_secs.to_be_bytes());
                T_CREATED
            }
            Frame::Paired { observed, udp } => {
                let end = match observed {
                    SocketAddr::V4(a) => {
                        body[0] = 4;
                        body[1..5].copy_from_slice(&a.ip().octets());
                        body[5..7].copy_from_slice(&a.port().to_be_bytes());
                        7
                    }
                    SocketAddr::V6(a) => {
                        body[0] = 6;
                        body[1..17].copy_from_slice(&a.ip().octets());
                        body[17..19].copy_from_slice(&a.port().to_be_bytes());
                        19
                    }
                };
                if let Some(g) = udp {
                    body[end..end + 2].copy_from_slice(&g.port.to_be_bytes());
                    body[end + 2..end + UDP_GRANT_LEN].copy_from_slice(&g.token);
                }
                T_PAIRED
            }
            Frame::Error {
                raw_code,
                retry_after_secs,
                reason,
                ..
            } => {
                if reason.len() > MAX_REASON {
                    return Err(EmitError);
                }
                body[0..2].copy_from_slice(&raw_code.to_be_bytes());
                body[2..6].copy_from_slice(&retry_after_secs.to_be_bytes());
                body[6..].copy_from_slice(reason);
                T_ERROR
            }
        };
        Ok(total)
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
            Frame::parse(&[T_ERROR, 0x02, 0x00]),
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
}
