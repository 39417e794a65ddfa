//! The punch probe (`spec/direct.md` §4.3): the datagram both peers send
//! from their UDP sockets to each other's candidates during a hole-punching
//! attempt, so that each NAT opens a mapping and a filter entry towards the
//! other. The runtime (`direct_udp`) sends and receives them; this module
//! encodes, parses and authenticates them.
//!
//! ```text
//!  0      1                5                                      37
//! +------+----------------+--------------------------------------+
//! | 0xA2 | attempt (u32)  | tag = HMAC-SHA256(E_relay,           |
//! |      |                |   "xtcp punch v1" ‖ attempt) (32)    |
//! +------+----------------+--------------------------------------+
//! ```
//!
//! `E_relay` is the relay path's TLS exporter: only the two peers can
//! compute a tag, so a stranger's datagram cannot steer connection attempts
//! (the path itself is still proven by TLS and the session tag). The first
//! byte is registered in [`crate::codec::registry::datagram`]; it is never an
//! XTCP version byte.

use crate::codec::registry::datagram;
use crate::codec::{CodecError, Reader, SliceWriter, Writer};
use core::fmt;

/// First byte of a punch probe.
pub const PROBE: u8 = datagram::PUNCH_PROBE;
/// Length of the tag (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// Probe length: type, attempt (u32), tag.
pub const PROBE_LEN: usize = 1 + 4 + TAG_LEN;
/// What the tag authenticates, before the attempt number.
const CONTEXT: &[u8; 13] = b"xtcp punch v1";

/// A parsed (not yet authenticated) probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The attempt it belongs to (`PUNCH` frame's `attempt`).
    pub attempt: u32,
    /// The claimed tag; check it with [`ProbeKey::verify`].
    pub tag: [u8; TAG_LEN],
}

/// Why a datagram is not a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProbeError {
    /// Shorter than [`PROBE_LEN`].
    Truncated,
    /// The first byte is not [`PROBE`] (the byte is attached).
    BadType(u8),
    /// Longer than [`PROBE_LEN`].
    BadLength,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Truncated => f.write_str("probe truncated"),
            ProbeError::BadType(t) => write!(f, "unexpected datagram type {t:#04x}"),
            ProbeError::BadLength => f.write_str("probe too long"),
        }
    }
}

impl std::error::Error for ProbeError {}

impl From<CodecError> for ProbeError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Truncated { .. } => ProbeError::Truncated,
            _ => ProbeError::BadLength,
        }
    }
}

/// Encode a probe: `0xA2 ‖ attempt ‖ tag`.
pub fn encode_probe(attempt: u32, tag: &[u8; TAG_LEN]) -> [u8; PROBE_LEN] {
    let mut p = [0u8; PROBE_LEN];
    let mut w = SliceWriter::new(&mut p);
    w.put_u8(PROBE);
    w.put_u32(attempt);
    w.put_slice(tag);
    debug_assert_eq!(w.finish(), Ok(PROBE_LEN));
    p
}

/// Parse a probe datagram (the whole datagram, not a prefix). The tag is
/// not checked here.
pub fn parse_probe(d: &[u8]) -> Result<Probe, ProbeError> {
    let mut r = Reader::new(d);
    match r.u8()? {
        PROBE => {}
        other => return Err(ProbeError::BadType(other)),
    }
    let attempt = r.u32()?;
    let tag = r.array()?;
    r.expect_empty()?;
    Ok(Probe { attempt, tag })
}

/// The key of a session's probes: HMAC-SHA256 keyed with the relay path's
/// exporter. (No `Debug` of the key material: it is a session secret.)
#[derive(Clone)]
pub struct ProbeKey(ring::hmac::Key);

impl fmt::Debug for ProbeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProbeKey(..)")
    }
}

impl ProbeKey {
    /// The key for probes of the session whose relay path has this exporter.
    pub fn new(relay_exporter: &[u8; 32]) -> Self {
        ProbeKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            relay_exporter,
        ))
    }

    /// The tag of attempt `attempt`'s probes.
    pub fn tag(&self, attempt: u32) -> [u8; TAG_LEN] {
        let t = ring::hmac::sign(&self.0, &input(attempt));
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(t.as_ref());
        out
    }

    /// Attempt `attempt`'s probe, ready to send.
    pub fn probe(&self, attempt: u32) -> [u8; PROBE_LEN] {
        encode_probe(attempt, &self.tag(attempt))
    }

    /// Whether `d` is a valid probe of attempt `attempt`: right type, length
    /// and attempt number, and a tag checked in constant time.
    pub fn verify(&self, d: &[u8], attempt: u32) -> bool {
        parse_probe(d).is_ok_and(|p| {
            p.attempt == attempt && ring::hmac::verify(&self.0, &input(attempt), &p.tag).is_ok()
        })
    }
}

/// What the tag authenticates: `"xtcp punch v1" ‖ attempt`.
fn input(attempt: u32) -> [u8; CONTEXT.len() + 4] {
    let mut m = [0u8; CONTEXT.len() + 4];
    let mut w = SliceWriter::new(&mut m);
    w.put_slice(CONTEXT);
    w.put_u32(attempt);
    debug_assert_eq!(w.finish(), Ok(CONTEXT.len() + 4));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_round_trip_and_rejections() {
        let key = ProbeKey::new(&[9; 32]);
        let p = key.probe(3);
        assert_eq!(p.len(), PROBE_LEN);
        assert!(key.verify(&p, 3));
        assert!(!key.verify(&p, 4), "another attempt");
        assert!(!ProbeKey::new(&[8; 32]).verify(&p, 3), "another session");
        assert!(!key.verify(&p[..PROBE_LEN - 1], 3), "truncated");
        let mut long = [0u8; PROBE_LEN + 1];
        long[..PROBE_LEN].copy_from_slice(&p);
        assert!(!key.verify(&long, 3), "too long");
        let mut bad = p;
        bad[PROBE_LEN - 1] ^= 1;
        assert!(!key.verify(&bad, 3), "forged tag");
        let mut other = encode_probe(4, &key.tag(3));
        assert!(!key.verify(&other, 4), "attempt 3's tag under attempt 4");
        other[1..5].copy_from_slice(&3u32.to_be_bytes());
        assert!(key.verify(&other, 3));
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        let p = encode_probe(7, &[0xEE; TAG_LEN]);
        assert_eq!(
            parse_probe(&p),
            Ok(Probe {
                attempt: 7,
                tag: [0xEE; TAG_LEN]
            })
        );
        assert_eq!(parse_probe(&[]), Err(ProbeError::Truncated));
        assert_eq!(parse_probe(&p[..PROBE_LEN - 1]), Err(ProbeError::Truncated));
        assert_eq!(parse_probe(&[1; PROBE_LEN]), Err(ProbeError::BadType(1)));
        let mut long = p.to_vec();
        long.push(0);
        assert_eq!(parse_probe(&long), Err(ProbeError::BadLength));
    }

    /// A known answer: the tag is HMAC-SHA256(exporter, "xtcp punch v1" ‖
    /// attempt), computed independently (Python's `hmac`); `spec/direct.md`
    /// §4.3.2 prints the same bytes.
    #[test]
    fn vector() {
        let p = ProbeKey::new(&[0x11; 32]).probe(1);
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let lines = [hex(&p[..21]), hex(&p[21..])];
        assert_eq!(
            lines,
            [
                "a2 00 00 00 01 d7 98 de cf 13 a3 32 fd 5b a4 f1 cc 80 81 9c 17",
                "43 e6 aa a1 05 ed e4 41 84 71 1c 4a 3b fd 56 51",
            ]
        );
        let spec = include_str!("../../../spec/direct.md");
        for l in &lines {
            assert!(
                spec.lines().any(|s| s.trim() == l),
                "vector not in spec/direct.md: {l}"
            );
        }
    }

    quickcheck::quickcheck! {
        fn probe_round_trips(attempt: u32, tag: Vec<u8>) -> bool {
            let mut t = [0u8; TAG_LEN];
            for (d, s) in t.iter_mut().zip(tag) {
                *d = s;
            }
            let p = encode_probe(attempt, &t);
            parse_probe(&p) == Ok(Probe { attempt, tag: t })
        }

        fn signed_probes_verify(exporter: Vec<u8>, attempt: u32) -> bool {
            let mut e = [0u8; 32];
            for (d, s) in e.iter_mut().zip(exporter) {
                *d = s;
            }
            let key = ProbeKey::new(&e);
            key.verify(&key.probe(attempt), attempt)
                && !key.verify(&key.probe(attempt), attempt.wrapping_add(1))
        }

        fn arbitrary_bytes_never_panic(d: Vec<u8>) -> bool {
            crate::fuzzing::punch_probe(&d);
            true
        }
    }
}
