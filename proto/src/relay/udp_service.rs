//! The relay's UDP address service (`spec/relay.md` §12): a peer asks "which
//! address does my UDP socket have, seen from outside?" so that it can offer
//! that server-reflexive address as a hole-punching candidate (the job STUN,
//! RFC 8489, does for ICE; this is a much smaller, authenticated variant).
//!
//! ```text
//! request (exactly REQUEST_LEN = 48 bytes)
//!  0      1                      17                 25                       48
//! +------+----------------------+------------------+------- ... ----------+
//! | 0xA0 |      token (16)      |  nonce (u64 BE)  |  zero padding (23)   |
//! +------+----------------------+------------------+------- ... ----------+
//!
//! response (16 bytes for IPv4, 28 for IPv6: always shorter than the request)
//!  0      1                  9      10                       10+n       12+n
//! +------+------------------+------+--------------------------+----------+
//! | 0xA1 |  nonce (u64 BE)  | fam  | address (n = 4 or 16)    | port BE  |
//! +------+------------------+------+--------------------------+----------+
//! ```
//!
//! The token is the one the relay granted in `PAIRED` (`spec/relay.md`
//! §4.2.4), so the relay is not an open reflector; the padding makes every
//! request longer than any response, so the service cannot amplify a spoofed
//! source's traffic.
//!
//! # First-byte demultiplexing
//!
//! These datagrams may share a UDP socket with XTCP, whose byte 0 is its
//! version (1). The first-byte range `0xA0..=0xAF` is reserved for non-XTCP
//! datagrams sharing an XTCP socket: [`REQUEST`] (`0xA0`) and [`RESPONSE`]
//! (`0xA1`) here, `0xA2` for the peers' punch probe (specified in
//! `spec/direct.md`, not in this module), the rest unassigned.
//!
//! Parsing is total: every byte string yields a value or a typed
//! [`UdpServiceError`]; nothing allocates, nothing reads a clock.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// First byte of an address request (peer → relay).
pub const REQUEST: u8 = 0xA0;
/// First byte of an address response (relay → peer).
pub const RESPONSE: u8 = 0xA1;
/// Exact length of a request datagram, padding included.
pub const REQUEST_LEN: usize = 48;
/// Length of the token granted in `PAIRED`.
pub const TOKEN_LEN: usize = 16;
/// Longest response (IPv6): 1 + 8 + 1 + 16 + 2.
pub const MAX_RESPONSE_LEN: usize = 28;

/// Start of the padding in a request (type + token + nonce).
const PAD_START: usize = 1 + TOKEN_LEN + 8;
/// Fixed part of a response before the address (type + nonce + family).
const RESPONSE_HEAD: usize = 1 + 8 + 1;

/// A parsed address request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The token the relay granted in `PAIRED`.
    pub token: [u8; TOKEN_LEN],
    /// Chosen by the requester; echoed in the response.
    pub nonce: u64,
}

/// A parsed address response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The request's nonce.
    pub nonce: u64,
    /// The request's source address as the relay saw it.
    pub observed: SocketAddr,
}

/// Why a datagram is not a valid request or response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UdpServiceError {
    /// Shorter than its type requires.
    Truncated,
    /// The first byte is not the expected type (the byte is attached).
    BadType(u8),
    /// Longer than its type allows (a request is exactly [`REQUEST_LEN`]).
    BadLength,
    /// A request's padding holds a non-zero byte.
    BadPadding,
    /// A response's address family is neither 4 nor 6 (the byte is attached).
    BadFamily(u8),
}

impl fmt::Display for UdpServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdpServiceError::Truncated => f.write_str("datagram truncated"),
            UdpServiceError::BadType(t) => write!(f, "unexpected datagram type {t:#04x}"),
            UdpServiceError::BadLength => f.write_str("datagram longer than its type allows"),
            UdpServiceError::BadPadding => f.write_str("non-zero padding"),
            UdpServiceError::BadFamily(v) => write!(f, "unknown address family {v}"),
        }
    }
}

impl std::error::Error for UdpServiceError {}

/// Encode a request: `0xA0 ‖ token ‖ nonce ‖ zeros`, exactly [`REQUEST_LEN`] bytes.
pub fn encode_request(token: &[u8; TOKEN_LEN], nonce: u64) -> [u8; REQUEST_LEN] {
    let mut d = [0u8; REQUEST_LEN];
    d[0] = REQUEST;
    d[1..1 + TOKEN_LEN].copy_from_slice(token);
    d[1 + TOKEN_LEN..PAD_START].copy_from_slice(&nonce.to_be_bytes());
    d
}

/// Parse a request datagram (the whole datagram, not a prefix).
pub fn parse_request(d: &[u8]) -> Result<Request, UdpServiceError> {
    let (&ty, _) = d.split_first().ok_or(UdpServiceError::Truncated)?;
    if ty != REQUEST {
        return Err(UdpServiceError::BadType(ty));
    }
    //= spec/relay.md#RL-UDP-2
    //# A request MUST be exactly 48 bytes; a shorter or longer datagram, or one with a
    //# non-zero padding byte, MUST be dropped.
    let d: &[u8; REQUEST_LEN] = match d.len() {
        n if n < REQUEST_LEN => return Err(UdpServiceError::Truncated),
        n if n > REQUEST_LEN => return Err(UdpServiceError::BadLength),
        _ => d.try_into().map_err(|_| UdpServiceError::BadLength)?,
    };
    if d[PAD_START..].iter().any(|&b| b != 0) {
        return Err(UdpServiceError::BadPadding);
    }
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&d[1..1 + TOKEN_LEN]);
    let mut nonce = [0u8; 8];
    nonce.copy_from_slice(&d[1 + TOKEN_LEN..PAD_START]);
    Ok(Request {
        token,
        nonce: u64::from_be_bytes(nonce),
    })
}

/// Encode a response into a fixed buffer; returns it and the number of bytes
/// used (16 for IPv4, 28 for IPv6).
pub fn encode_response(nonce: u64, observed: SocketAddr) -> ([u8; MAX_RESPONSE_LEN], usize) {
    let mut d = [0u8; MAX_RESPONSE_LEN];
    d[0] = RESPONSE;
    d[1..9].copy_from_slice(&nonce.to_be_bytes());
    let end = match observed.ip() {
        IpAddr::V4(ip) => {
            d[9] = 4;
            d[RESPONSE_HEAD..RESPONSE_HEAD + 4].copy_from_slice(&ip.octets());
            RESPONSE_HEAD + 4
        }
        IpAddr::V6(ip) => {
            d[9] = 6;
            d[RESPONSE_HEAD..RESPONSE_HEAD + 16].copy_from_slice(&ip.octets());
            RESPONSE_HEAD + 16
        }
    };
    d[end..end + 2].copy_from_slice(&observed.port().to_be_bytes());
    (d, end + 2)
}

/// Parse a response datagram (the whole datagram, not a prefix).
pub fn parse_response(d: &[u8]) -> Result<Response, UdpServiceError> {
    let (&ty, _) = d.split_first().ok_or(UdpServiceError::Truncated)?;
    if ty != RESPONSE {
        return Err(UdpServiceError::BadType(ty));
    }
    let head = d.get(..RESPONSE_HEAD).ok_or(UdpServiceError::Truncated)?;
    let mut nonce = [0u8; 8];
    nonce.copy_from_slice(&head[1..9]);
    let family = head[9];
    let addr_len = match family {
        4 => 4,
        6 => 16,
        other => return Err(UdpServiceError::BadFamily(other)),
    };
    let want = RESPONSE_HEAD + addr_len + 2;
    if d.len() < want {
        return Err(UdpServiceError::Truncated);
    }
    if d.len() > want {
        return Err(UdpServiceError::BadLength);
    }
    let addr = &d[RESPONSE_HEAD..RESPONSE_HEAD + addr_len];
    let ip = if family == 4 {
        let v4: [u8; 4] = addr.try_into().map_err(|_| UdpServiceError::Truncated)?;
        IpAddr::V4(Ipv4Addr::from(v4))
    } else {
        let v6: [u8; 16] = addr.try_into().map_err(|_| UdpServiceError::Truncated)?;
        IpAddr::V6(Ipv6Addr::from(v6))
    };
    let port = u16::from_be_bytes([d[want - 2], d[want - 1]]);
    Ok(Response {
        nonce: u64::from_be_bytes(nonce),
        observed: SocketAddr::new(ip, port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::wire::spec_vectors::hex;

    /// The spec carries the same vectors (`spec/relay.md` §12.6); each hex
    /// line below must appear there verbatim.
    fn in_spec(line: &str) {
        crate::relay::wire::spec_vectors::in_spec("§12.6", line);
    }

    const TOKEN: [u8; 16] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];

    #[test]
    fn vectors() {
        let req = encode_request(&TOKEN, 0x0102_0304_0506_0708);
        let req_hex = hex(&req);
        assert_eq!(
            req_hex,
            "a0 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff 01 02 03 04 05 06 07 08 \
             00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
        );
        // The spec prints it in two lines: header fields, then the padding.
        in_spec(&hex(&req[..25]));
        in_spec(&hex(&req[25..]));
        assert_eq!(
            parse_request(&req),
            Ok(Request {
                token: TOKEN,
                nonce: 0x0102_0304_0506_0708
            })
        );

        let (b, n) = encode_response(0x0102_0304_0506_0708, "198.18.0.7:40000".parse().unwrap());
        assert_eq!(n, 16);
        assert_eq!(
            hex(&b[..n]),
            "a1 01 02 03 04 05 06 07 08 04 c6 12 00 07 9c 40"
        );
        in_spec(&hex(&b[..n]));
        assert_eq!(
            parse_response(&b[..n]),
            Ok(Response {
                nonce: 0x0102_0304_0506_0708,
                observed: "198.18.0.7:40000".parse().unwrap()
            })
        );

        let (b, n) = encode_response(1, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(n, 28);
        assert_eq!(
            hex(&b[..n]),
            "a1 00 00 00 00 00 00 00 01 06 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 01 bb"
        );
        in_spec(&hex(&b[..n]));
    }

    //= spec/relay.md#RL-UDP-2
    #[test]
    fn malformed_inputs_are_typed_errors() {
        let good = encode_request(&TOKEN, 7);
        assert_eq!(parse_request(&[]), Err(UdpServiceError::Truncated));
        assert_eq!(parse_request(&[0xA0]), Err(UdpServiceError::Truncated));
        assert_eq!(
            parse_request(&good[..REQUEST_LEN - 1]),
            Err(UdpServiceError::Truncated)
        );
        let mut long = [0u8; REQUEST_LEN + 1];
        long[..REQUEST_LEN].copy_from_slice(&good);
        assert_eq!(parse_request(&long), Err(UdpServiceError::BadLength));
        for i in PAD_START..REQUEST_LEN {
            let mut p = good;
            p[i] = 1;
            assert_eq!(parse_request(&p), Err(UdpServiceError::BadPadding), "{i}");
        }
        // XTCP (version 1) and the other reserved types are not requests.
        let mut x = good;
        x[0] = 1;
        assert_eq!(parse_request(&x), Err(UdpServiceError::BadType(1)));
        x[0] = RESPONSE;
        assert_eq!(parse_request(&x), Err(UdpServiceError::BadType(RESPONSE)));

        assert_eq!(parse_response(&[]), Err(UdpServiceError::Truncated));
        assert_eq!(
            parse_response(&good),
            Err(UdpServiceError::BadType(REQUEST))
        );
        let (r, n) = encode_response(9, "10.0.0.1:5".parse().unwrap());
        assert_eq!(parse_response(&r[..9]), Err(UdpServiceError::Truncated));
        assert_eq!(parse_response(&r[..n - 1]), Err(UdpServiceError::Truncated));
        assert_eq!(parse_response(&r[..n + 1]), Err(UdpServiceError::BadLength));
        let mut f = r;
        f[9] = 5;
        assert_eq!(parse_response(&f[..n]), Err(UdpServiceError::BadFamily(5)));
        let (r6, n6) = encode_response(9, "[::1]:5".parse().unwrap());
        assert_eq!(
            parse_response(&r6[..n6 - 1]),
            Err(UdpServiceError::Truncated)
        );
        // A v4 body labelled v6 is too short, a v6 body labelled v4 too long.
        let mut f = r;
        f[9] = 6;
        assert_eq!(parse_response(&f[..n]), Err(UdpServiceError::Truncated));
        let mut f = r6;
        f[9] = 4;
        assert_eq!(parse_response(&f[..n6]), Err(UdpServiceError::BadLength));
    }

    quickcheck::quickcheck! {
        fn request_round_trips(token: u128, nonce: u64) -> bool {
            let token = token.to_be_bytes();
            let d = encode_request(&token, nonce);
            parse_request(&d) == Ok(Request { token, nonce })
                && parse_response(&d).is_err()
        }

        fn response_round_trips_and_never_amplifies(nonce: u64, observed: SocketAddr) -> bool {
            let (b, n) = encode_response(nonce, observed);
            n < REQUEST_LEN
                && parse_response(&b[..n]) == Ok(Response { nonce, observed })
                && parse_request(&b[..n]).is_err()
        }

        fn arbitrary_bytes_never_panic(d: Vec<u8>) -> bool {
            crate::fuzzing::udp_service(&d);
            true
        }
    }
}
