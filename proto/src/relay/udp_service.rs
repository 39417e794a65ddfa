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
//! The first bytes are registered in [`crate::codec::registry::datagram`].
//!
//! Parsing is total: every byte string yields a value or a typed
//! [`UdpServiceError`] (fields read through [`crate::codec::Reader`]);
//! nothing allocates, nothing reads a clock.

use crate::codec::registry::datagram;
use crate::codec::{CodecError, Reader, SliceWriter, Writer};
use core::fmt;
use core::net::SocketAddr;

/// First byte of an address request (peer → relay).
pub const REQUEST: u8 = datagram::UDP_SERVICE_REQUEST;
/// First byte of an address response (relay → peer).
pub const RESPONSE: u8 = datagram::UDP_SERVICE_RESPONSE;
/// Exact length of a request datagram, padding included.
pub const REQUEST_LEN: usize = 48;
/// Length of the token granted in `PAIRED`.
pub const TOKEN_LEN: usize = 16;
/// Longest response (IPv6): 1 + 8 + 1 + 16 + 2.
pub const MAX_RESPONSE_LEN: usize = 28;

/// Start of the padding in a request (type + token + nonce).
const PAD_START: usize = 1 + TOKEN_LEN + 8;

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

/// A field cut short is [`UdpServiceError::Truncated`], bytes left over
/// [`UdpServiceError::BadLength`].
impl From<CodecError> for UdpServiceError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Truncated { .. } => UdpServiceError::Truncated,
            CodecError::BadFamily(x) => UdpServiceError::BadFamily(x),
            _ => UdpServiceError::BadLength,
        }
    }
}

/// Read the type byte; anything but `want` is [`UdpServiceError::BadType`].
fn expect_type(r: &mut Reader<'_>, want: u8) -> Result<(), UdpServiceError> {
    match r.u8()? {
        ty if ty == want => Ok(()),
        ty => Err(UdpServiceError::BadType(ty)),
    }
}

/// Encode a request: `0xA0 ‖ token ‖ nonce ‖ zeros`, exactly [`REQUEST_LEN`] bytes.
pub fn encode_request(token: &[u8; TOKEN_LEN], nonce: u64) -> [u8; REQUEST_LEN] {
    let mut d = [0u8; REQUEST_LEN];
    let mut w = SliceWriter::new(&mut d);
    w.put_u8(REQUEST);
    w.put_slice(token);
    w.put_u64(nonce);
    // The rest is the zero padding; the layout fits REQUEST_LEN by construction.
    debug_assert_eq!(w.finish(), Ok(PAD_START));
    d
}

/// Parse a request datagram (the whole datagram, not a prefix).
pub fn parse_request(d: &[u8]) -> Result<Request, UdpServiceError> {
    let mut r = Reader::new(d);
    expect_type(&mut r, REQUEST)?;
    //= spec/relay.md#RL-UDP-2
    //# A request MUST be exactly 48 bytes; a shorter or longer datagram, or one with a
    //# non-zero padding byte, MUST be dropped.
    match d.len() {
        n if n < REQUEST_LEN => return Err(UdpServiceError::Truncated),
        n if n > REQUEST_LEN => return Err(UdpServiceError::BadLength),
        _ => {}
    }
    let token = r.array()?;
    let nonce = r.u64()?;
    if r.rest().iter().any(|&b| b != 0) {
        return Err(UdpServiceError::BadPadding);
    }
    Ok(Request { token, nonce })
}

/// Encode a response into a fixed buffer; returns it and the number of bytes
/// used (16 for IPv4, 28 for IPv6).
pub fn encode_response(nonce: u64, observed: SocketAddr) -> ([u8; MAX_RESPONSE_LEN], usize) {
    let mut d = [0u8; MAX_RESPONSE_LEN];
    let mut w = SliceWriter::new(&mut d);
    w.put_u8(RESPONSE);
    w.put_u64(nonce);
    w.put_socket_addr(observed);
    // At most MAX_RESPONSE_LEN by construction (an IPv6 address fills it).
    let n = w.finish().unwrap_or(MAX_RESPONSE_LEN);
    (d, n)
}

/// Parse a response datagram (the whole datagram, not a prefix).
pub fn parse_response(d: &[u8]) -> Result<Response, UdpServiceError> {
    let mut r = Reader::new(d);
    expect_type(&mut r, RESPONSE)?;
    let nonce = r.u64()?;
    let observed = r.socket_addr()?;
    r.expect_empty()?;
    Ok(Response { nonce, observed })
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
