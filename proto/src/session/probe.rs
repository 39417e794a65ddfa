//! The punch probe (`spec/direct.md` §4.3.2): the datagram both peers send
//! from their UDP sockets to each other's candidates during a hole-punching
//! attempt, so that each NAT opens a mapping and a filter entry towards the
//! other. The runtime (`direct_udp`) sends and receives them; this module
//! encodes, parses and authenticates them, and derives their nonces.
//!
//! ```text
//!  0      1                5      6                14               22                  54
//! +------+----------------+------+----------------+----------------+-------------------+
//! | 0xA2 | attempt (u32)  | role | nonce (u64)    | echo (u64)     | tag (32)          |
//! +------+----------------+------+----------------+----------------+-------------------+
//!   K   = HMAC-SHA256(E_relay, "xtcp punch key v2")
//!   tag = HMAC-SHA256(K, "xtcp punch v2" ‖ attempt ‖ role ‖ nonce ‖ echo)
//! ```
//!
//! `E_relay` is the relay path's TLS exporter: only the two peers can
//! compute a tag. `role` is the sender's (a probe reflected back at its
//! sender is refused); `nonce` is the sender's, chosen per destination
//! address ([`NonceKey`]); `echo` is the nonce of the last probe the sender
//! received from that destination (0: none yet). A peer-reflexive address
//! is believed only once a probe from it echoes the nonce sent to it
//! (`crate::session::punch`), so a captured probe replayed from other
//! sources cannot make a peer probe them. The first byte is registered in
//! [`crate::codec::registry::datagram`]; it is never an XTCP version byte.

use super::paths::Role;
use crate::codec::registry::datagram;
use crate::codec::{CodecError, Reader, SliceWriter, Writer};
use core::fmt;
use core::net::{IpAddr, SocketAddr};

/// First byte of a punch probe.
pub const PROBE: u8 = datagram::PUNCH_PROBE;
/// Length of the tag (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// Probe length: type, attempt (u32), role, nonce (u64), echo (u64), tag.
pub const PROBE_LEN: usize = 1 + 4 + 1 + 8 + 8 + TAG_LEN;
/// The bytes the tag covers after [`CONTEXT`]: attempt to echo.
const SIGNED_LEN: usize = 4 + 1 + 8 + 8;
/// What the tag authenticates, before the probe's fields.
const CONTEXT: &[u8; 13] = b"xtcp punch v2";
/// The label of the probe key derived from the relay path's exporter.
const KEY_LABEL: &[u8; 17] = b"xtcp punch key v2";
/// The label of a sender's nonce derivation.
const NONCE_LABEL: &[u8; 16] = b"xtcp punch nonce";

/// A parsed (not yet authenticated) probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The attempt it belongs to (`PUNCH` frame's `attempt`).
    pub attempt: u32,
    /// The sender's role.
    pub role: Role,
    /// The sender's nonce for the address it sent this probe to.
    pub nonce: u64,
    /// The nonce of the last probe the sender received from the address it
    /// sent this probe to (0: none).
    pub echo: u64,
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
    /// The role byte is neither 1 (host) nor 2 (guest) (the byte is attached).
    BadRole(u8),
    /// Longer than [`PROBE_LEN`].
    BadLength,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Truncated => f.write_str("probe truncated"),
            ProbeError::BadType(t) => write!(f, "unexpected datagram type {t:#04x}"),
            ProbeError::BadRole(r) => write!(f, "bad probe role {r:#04x}"),
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

/// The signed fields in wire order: attempt, role, nonce, echo.
fn signed(attempt: u32, role: Role, nonce: u64, echo: u64) -> [u8; SIGNED_LEN] {
    let mut m = [0u8; SIGNED_LEN];
    let mut w = SliceWriter::new(&mut m);
    w.put_u32(attempt);
    w.put_u8(role.byte());
    w.put_u64(nonce);
    w.put_u64(echo);
    debug_assert_eq!(w.finish(), Ok(SIGNED_LEN));
    m
}

/// Encode a probe: `0xA2 ‖ attempt ‖ role ‖ nonce ‖ echo ‖ tag`.
pub fn encode_probe(p: &Probe) -> [u8; PROBE_LEN] {
    let mut d = [0u8; PROBE_LEN];
    let mut w = SliceWriter::new(&mut d);
    w.put_u8(PROBE);
    w.put_slice(&signed(p.attempt, p.role, p.nonce, p.echo));
    w.put_slice(&p.tag);
    debug_assert_eq!(w.finish(), Ok(PROBE_LEN));
    d
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
    let role = match r.u8()? {
        1 => Role::Host,
        2 => Role::Guest,
        other => return Err(ProbeError::BadRole(other)),
    };
    let nonce = r.u64()?;
    let echo = r.u64()?;
    let tag = r.array()?;
    r.expect_empty()?;
    Ok(Probe {
        attempt,
        role,
        nonce,
        echo,
        tag,
    })
}

/// The key of a session's probes, `K = HMAC-SHA256(E_relay, "xtcp punch
/// key v2")`. (No `Debug` of the key material: it is a session secret.)
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
        let k = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, relay_exporter),
            KEY_LABEL,
        );
        ProbeKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k.as_ref()))
    }

    fn sign(&self, attempt: u32, role: Role, nonce: u64, echo: u64) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(CONTEXT);
        ctx.update(&signed(attempt, role, nonce, echo));
        ctx.sign()
    }

    /// The tag of a probe with these fields.
    pub fn tag(&self, attempt: u32, role: Role, nonce: u64, echo: u64) -> [u8; TAG_LEN] {
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(self.sign(attempt, role, nonce, echo).as_ref());
        out
    }

    /// A probe of attempt `attempt` sent by `role`, ready to send.
    pub fn probe(&self, attempt: u32, role: Role, nonce: u64, echo: u64) -> [u8; PROBE_LEN] {
        encode_probe(&Probe {
            attempt,
            role,
            nonce,
            echo,
            tag: self.tag(attempt, role, nonce, echo),
        })
    }

    /// `d` if it is a valid probe of attempt `attempt` sent by `from` (the
    /// peer's role: a probe of this side's own role, reflected back, is
    /// refused): right type, length, role and attempt number, and a tag
    /// checked in constant time.
    pub fn verify(&self, d: &[u8], attempt: u32, from: Role) -> Option<Probe> {
        let p = parse_probe(d).ok()?;
        //= spec/direct.md#DI-PROBE-1
        //# A receiver MUST ignore a probe whose role is its own
        if p.attempt != attempt || p.role != from {
            return None;
        }
        let mut ctx = Vec::with_capacity(CONTEXT.len() + SIGNED_LEN);
        ctx.extend_from_slice(CONTEXT);
        ctx.extend_from_slice(&signed(p.attempt, p.role, p.nonce, p.echo));
        ring::hmac::verify(&self.0, &ctx, &p.tag).ok()?;
        Some(p)
    }
}

/// A sender's nonces for one attempt: `nonce(to)` = the first 8 bytes of
/// HMAC-SHA256(secret, "xtcp punch nonce" ‖ family ‖ address ‖ port), 0
/// replaced by 1, with `secret` 32 random bytes per attempt. Stateless, and
/// unpredictable to anyone who has not seen a probe sent to `to`.
#[derive(Clone)]
pub struct NonceKey(ring::hmac::Key);

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

impl NonceKey {
    /// Nonces from `secret` (random, one per attempt).
    pub fn new(secret: &[u8; 32]) -> Self {
        NonceKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// This side's nonce for probes to `to` (never 0).
    pub fn nonce(&self, to: SocketAddr) -> u64 {
        let mut m = Vec::with_capacity(NONCE_LABEL.len() + 19);
        m.extend_from_slice(NONCE_LABEL);
        match to.ip() {
            IpAddr::V4(ip) => {
                m.push(4);
                m.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                m.push(6);
                m.extend_from_slice(&ip.octets());
            }
        }
        m.extend_from_slice(&to.port().to_be_bytes());
        let t = ring::hmac::sign(&self.0, &m);
        let mut n = [0u8; 8];
        n.copy_from_slice(t.as_ref().get(..8).unwrap_or(&[0; 8]));
        u64::from_be_bytes(n).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Role = Role::Guest;
    const H: Role = Role::Host;

    #[test]
    fn probe_round_trip_and_rejections() {
        let key = ProbeKey::new(&[9; 32]);
        let p = key.probe(3, G, 7, 0);
        assert_eq!(p.len(), PROBE_LEN);
        assert!(key.verify(&p, 3, G).is_some());
        assert_eq!(
            key.verify(&p, 3, G).map(|p| (p.nonce, p.echo)),
            Some((7, 0))
        );
        assert!(key.verify(&p, 4, G).is_none(), "another attempt");
        assert!(
            ProbeKey::new(&[8; 32]).verify(&p, 3, G).is_none(),
            "another session"
        );
        assert!(key.verify(&p[..PROBE_LEN - 1], 3, G).is_none(), "truncated");
        let mut long = [0u8; PROBE_LEN + 1];
        long[..PROBE_LEN].copy_from_slice(&p);
        assert!(key.verify(&long, 3, G).is_none(), "too long");
        let mut bad = p;
        bad[PROBE_LEN - 1] ^= 1;
        assert!(key.verify(&bad, 3, G).is_none(), "forged tag");
        // Every signed field is covered: attempt, role, nonce, echo.
        for i in 1..(1 + SIGNED_LEN) {
            let mut d = p;
            d[i] ^= if i == 5 { 3 } else { 1 };
            let attempt = u32::from_be_bytes([d[1], d[2], d[3], d[4]]);
            assert!(key.verify(&d, attempt, G).is_none(), "byte {i} flipped");
            assert!(key.verify(&d, attempt, H).is_none(), "byte {i} flipped");
        }
    }

    //= spec/direct.md#DI-PROBE-1
    #[test]
    fn a_probe_reflected_back_at_its_sender_is_refused() {
        let key = ProbeKey::new(&[9; 32]);
        let mine = key.probe(1, H, 5, 0);
        // The host receives its own probe back: it expects the guest's role.
        assert!(key.verify(&mine, 1, G).is_none());
        assert!(key.verify(&mine, 1, H).is_some());
        // Rewriting the role byte breaks the tag.
        let mut d = mine;
        d[5] = G.byte();
        assert!(key.verify(&d, 1, G).is_none());
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        let p = Probe {
            attempt: 7,
            role: G,
            nonce: 1,
            echo: 2,
            tag: [0xEE; TAG_LEN],
        };
        let d = encode_probe(&p);
        assert_eq!(parse_probe(&d), Ok(p));
        assert_eq!(parse_probe(&[]), Err(ProbeError::Truncated));
        assert_eq!(parse_probe(&d[..PROBE_LEN - 1]), Err(ProbeError::Truncated));
        assert_eq!(parse_probe(&[1; PROBE_LEN]), Err(ProbeError::BadType(1)));
        let mut r = d;
        r[5] = 3;
        assert_eq!(parse_probe(&r), Err(ProbeError::BadRole(3)));
        r[5] = 0;
        assert_eq!(parse_probe(&r), Err(ProbeError::BadRole(0)));
        let mut long = d.to_vec();
        long.push(0);
        assert_eq!(parse_probe(&long), Err(ProbeError::BadLength));
    }

    #[test]
    fn nonces_depend_on_the_destination_and_the_secret_and_are_never_zero() {
        let n = NonceKey::new(&[0x22; 32]);
        let a = SocketAddr::from(([198, 51, 100, 7], 51000));
        let b = SocketAddr::from(([198, 51, 100, 7], 51001));
        let v6 = SocketAddr::from((
            core::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            51000,
        ));
        assert_eq!(n.nonce(a), n.nonce(a));
        assert_ne!(n.nonce(a), n.nonce(b));
        assert_ne!(n.nonce(a), n.nonce(v6));
        assert_ne!(n.nonce(a), NonceKey::new(&[0x23; 32]).nonce(a));
        // Known answer, computed independently (Python's `hmac`).
        assert_eq!(n.nonce(a), 0x8460_fb6b_db51_93da);
    }

    /// Known answers: K = HMAC-SHA256(E_relay, "xtcp punch key v2"), tag =
    /// HMAC-SHA256(K, "xtcp punch v2" ‖ attempt ‖ role ‖ nonce ‖ echo),
    /// computed independently (Python's `hmac`); `spec/direct.md` §4.3.2
    /// prints the same bytes.
    #[test]
    fn vector() {
        let key = ProbeKey::new(&[0x11; 32]);
        let guest = key.probe(1, G, 0x0102_0304_0506_0708, 0);
        let host = key.probe(1, H, 0x1112_1314_1516_1718, 0x0102_0304_0506_0708);
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let lines = [
            hex(&guest[..22]),
            hex(&guest[22..]),
            hex(&host[..22]),
            hex(&host[22..]),
        ];
        assert_eq!(
            lines,
            [
                "a2 00 00 00 01 02 01 02 03 04 05 06 07 08 00 00 00 00 00 00 00 00",
                "6d 41 af 03 7d 1a cb bb 1d ac 9c 20 5d 13 35 58 15 aa 01 12 34 75 06 fe a3 78 0d bc 35 3d 3b d1",
                "a2 00 00 00 01 01 11 12 13 14 15 16 17 18 01 02 03 04 05 06 07 08",
                "2c f3 6e 35 30 e4 e9 8c 6a 3b 82 e9 82 58 67 12 9e ab d4 d8 13 00 a6 5d dd ad 85 c6 16 de 1e 8b",
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
        fn probe_round_trips(attempt: u32, host: bool, nonce: u64, echo: u64, tag: Vec<u8>) -> bool {
            let mut t = [0u8; TAG_LEN];
            for (d, s) in t.iter_mut().zip(tag) {
                *d = s;
            }
            let role = if host { H } else { G };
            let p = Probe { attempt, role, nonce, echo, tag: t };
            parse_probe(&encode_probe(&p)) == Ok(p)
        }

        fn signed_probes_verify(exporter: Vec<u8>, attempt: u32, nonce: u64, echo: u64) -> bool {
            let mut e = [0u8; 32];
            for (d, s) in e.iter_mut().zip(exporter) {
                *d = s;
            }
            let key = ProbeKey::new(&e);
            let p = key.probe(attempt, G, nonce, echo);
            key.verify(&p, attempt, G).is_some_and(|v| v.nonce == nonce && v.echo == echo)
                && key.verify(&p, attempt.wrapping_add(1), G).is_none()
                && key.verify(&p, attempt, H).is_none()
        }

        fn arbitrary_bytes_never_panic(d: Vec<u8>) -> bool {
            crate::fuzzing::punch_probe(&d);
            true
        }
    }
}
