//! Tickets: one string that carries everything a guest needs to join a
//! session: the session secret, the relay(s) and how to trust them
//! (`spec/session.md` §5).
//!
//! ```text
//!   ticket  = "xtcp" base32(payload)           lowercase RFC 4648 alphabet, no padding
//!   payload = version (1) ‖ S (16) ‖ n (1) ‖ n × relay ‖ check (4)
//!   relay   = flags (1) ‖ len (1) ‖ name (len bytes, "host:port") ‖ [pin (32) if flags & 1]
//!   check   = SHA-256(version ‖ … ‖ last relay)[..4]
//! ```
//!
//! A pin is the SHA-256 of the relay's certificate (what `xtcp-relay
//! --self-signed` prints); a relay without a pin is trusted by the guest's own
//! configuration (system roots or `--relay-ca`). A session code never starts
//! with `x` (its first symbol is below 8), so a string starting with `xtcp` is
//! a ticket and anything else is tried as a code.

use crate::secret::SessionSecret;
use std::fmt;

/// The prefix every ticket starts with.
pub const PREFIX: &str = "xtcp";
/// The only payload version this build writes and reads.
pub const VERSION: u8 = 1;
/// At most this many relays in one ticket.
pub const MAX_RELAYS: usize = 8;
/// A relay name is at most this many bytes (`host:port`).
pub const MAX_NAME: usize = 255;
/// The longest payload: version, secret, count, eight full relays, check.
const MAX_PAYLOAD: usize = 1 + 16 + 1 + MAX_RELAYS * (2 + MAX_NAME + 32) + 4;
/// The longest ticket text (prefix and base32 of the longest payload).
pub const MAX_LEN: usize = PREFIX.len() + (MAX_PAYLOAD * 8).div_ceil(5);
const CHECK_LEN: usize = 4;
const FLAG_PINNED: u8 = 1;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// One relay in a ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketRelay {
    /// `host:port`.
    pub addr: String,
    /// The SHA-256 of the relay's certificate, if the guest should pin it.
    pub pin: Option<[u8; 32]>,
}

/// A decoded ticket.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The session secret (the code's content).
    pub secret: SessionSecret,
    /// The relays to join on, in order (at least one).
    pub relays: Vec<TicketRelay>,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is redacted by SessionSecret's own Debug.
        f.debug_struct("Ticket")
            .field("secret", &self.secret)
            .field("relays", &self.relays)
            .finish()
    }
}

/// Why a ticket was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TicketError {
    /// It does not start with `xtcp`.
    Prefix,
    /// Longer than [`MAX_LEN`] characters.
    TooLong(usize),
    /// A character outside the lowercase base32 alphabet, at this position.
    Symbol(char, usize),
    /// The base32 text has an impossible length or non-zero trailing bits.
    Encoding,
    /// The payload ends early: the ticket was cut short.
    Truncated,
    /// The check bytes do not match: the ticket was altered or mangled.
    Checksum,
    /// A version this build does not know.
    Version(u8),
    /// No relay, or more than [`MAX_RELAYS`].
    RelayCount(usize),
    /// A relay name that is empty or not printable ASCII, or unknown flag bits.
    Relay,
    /// Bytes after the last field.
    Trailing,
}

impl fmt::Display for TicketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TicketError::Prefix => write!(f, "a ticket starts with {PREFIX:?}"),
            TicketError::TooLong(n) => write!(f, "too long ({n} characters, at most {MAX_LEN})"),
            TicketError::Symbol(c, i) => write!(f, "invalid character {c:?} at position {i}"),
            TicketError::Encoding => {
                f.write_str("malformed or cut short (copy the whole ticket)")
            }
            TicketError::Truncated => f.write_str("cut short (copy the whole ticket)"),
            TicketError::Checksum => f.write_str("check bytes do not match (mistyped or cut?)"),
            TicketError::Version(v) => write!(
                f,
                "version {v} is not supported by this xtcp (it reads version {VERSION}; upgrade xtcp)"
            ),
            TicketError::RelayCount(n) => {
                write!(f, "{n} relays (a ticket holds 1 to {MAX_RELAYS})")
            }
            TicketError::Relay => f.write_str("invalid relay entry"),
            TicketError::Trailing => f.write_str("unexpected bytes after the last field"),
        }
    }
}

impl std::error::Error for TicketError {}

/// Whether `s` looks like a ticket rather than a bare code.
pub fn is_ticket(s: &str) -> bool {
    s.trim_start()
        .get(..PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.iter().all(|b| b.is_ascii_graphic())
}

fn check(body: &[u8]) -> [u8; CHECK_LEN] {
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    let mut c = [0; CHECK_LEN];
    c.copy_from_slice(&d.as_ref()[..CHECK_LEN]);
    c
}

impl Ticket {
    /// Encode. Fails only if the ticket breaks the bounds (no relay, too many,
    /// a name that is empty, too long or not printable ASCII).
    pub fn encode(&self) -> Result<String, TicketError> {
        if self.relays.is_empty() || self.relays.len() > MAX_RELAYS {
            return Err(TicketError::RelayCount(self.relays.len()));
        }
        let mut b = Vec::with_capacity(MAX_PAYLOAD);
        b.push(VERSION);
        b.extend_from_slice(&self.secret.to_bytes());
        b.push(self.relays.len() as u8);
        for r in &self.relays {
            if !valid_name(r.addr.as_bytes()) {
                return Err(TicketError::Relay);
            }
            b.push(if r.pin.is_some() { FLAG_PINNED } else { 0 });
            b.push(r.addr.len() as u8);
            b.extend_from_slice(r.addr.as_bytes());
            if let Some(pin) = &r.pin {
                b.extend_from_slice(pin);
            }
        }
        let c = check(&b);
        b.extend_from_slice(&c);
        let mut out = String::from(PREFIX);
        base32_encode(&b, &mut out);
        Ok(out)
    }

    /// Parse a ticket; surrounding whitespace is ignored. Never panics.
    pub fn parse(text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim();
        //= spec/session.md#SE-TICKET-1
        //# A reader MUST reject a ticket longer than `MAX_LEN`
        if text.len() > MAX_LEN {
            return Err(TicketError::TooLong(text.len()));
        }
        let body = text.strip_prefix(PREFIX).ok_or(TicketError::Prefix)?;
        let bytes = base32_decode(body, PREFIX.len())?;
        if bytes.len() < 1 + CHECK_LEN {
            return Err(TicketError::Truncated);
        }
        let (payload, c) = bytes.split_at(bytes.len() - CHECK_LEN);
        //= spec/session.md#SE-TICKET-2
        //# MUST reject it when the check bytes differ
        if check(payload) != c {
            return Err(TicketError::Checksum);
        }
        decode_payload(payload)
    }
}

/// The fields after a verified check.
fn decode_payload(p: &[u8]) -> Result<Ticket, TicketError> {
    let mut r = Reader(p);
    let version = r.take(1)?[0];
    //= spec/session.md#SE-TICKET-3
    //# MUST reject a version other than 1
    if version != VERSION {
        return Err(TicketError::Version(version));
    }
    let secret: [u8; 16] = r.take(16)?.try_into().map_err(|_| TicketError::Truncated)?;
    let n = usize::from(r.take(1)?[0]);
    //= spec/session.md#SE-TICKET-4
    //# MUST reject a ticket with no relay or more than 8
    if n == 0 || n > MAX_RELAYS {
        return Err(TicketError::RelayCount(n));
    }
    let mut relays = Vec::with_capacity(n);
    for _ in 0..n {
        let flags = r.take(1)?[0];
        if flags & !FLAG_PINNED != 0 {
            return Err(TicketError::Relay);
        }
        let len = usize::from(r.take(1)?[0]);
        let name = r.take(len)?;
        if !valid_name(name) {
            return Err(TicketError::Relay);
        }
        let pin = if flags & FLAG_PINNED != 0 {
            Some(r.take(32)?.try_into().map_err(|_| TicketError::Truncated)?)
        } else {
            None
        };
        relays.push(TicketRelay {
            addr: String::from_utf8_lossy(name).into_owned(),
            pin,
        });
    }
    if !r.0.is_empty() {
        return Err(TicketError::Trailing);
    }
    Ok(Ticket {
        secret: SessionSecret::from_bytes(secret),
        relays,
    })
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        if self.0.len() < n {
            return Err(TicketError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
}

fn base32_encode(data: &[u8], out: &mut String) {
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
}

/// Strict decoding: lowercase only, canonical length, zero trailing bits, so
/// that every text decodes from at most one byte string. `offset` is added to
/// reported positions.
fn base32_decode(text: &str, offset: usize) -> Result<Vec<u8>, TicketError> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for (i, c) in text.chars().enumerate() {
        let v = u8::try_from(c)
            .ok()
            .and_then(|b| ALPHABET.iter().position(|&a| a == b))
            .ok_or(TicketError::Symbol(c, offset + i))? as u32;
        acc = ((acc << 5) | v) & 0xfff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits: fewer than 5 and all zero, as the encoder writes them.
    if bits >= 5 || acc & ((1 << bits) - 1) != 0 {
        return Err(TicketError::Encoding);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Ticket {
        Ticket {
            secret: SessionSecret::from_bytes(std::array::from_fn(|i| i as u8 * 7)),
            relays: (0..n)
                .map(|i| TicketRelay {
                    addr: format!("relay{i}.example.net:4433"),
                    pin: (i % 2 == 0).then_some([i as u8; 32]),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip() {
        for n in 1..=MAX_RELAYS {
            let t = sample(n);
            let s = t.encode().unwrap();
            assert!(s.starts_with("xtcp") && is_ticket(&s));
            assert!(s.len() <= MAX_LEN);
            assert_eq!(Ticket::parse(&s).unwrap(), t);
            assert_eq!(Ticket::parse(&format!("  {s}\n")).unwrap(), t);
        }
        // The longest possible ticket still fits MAX_LEN.
        let long = Ticket {
            secret: SessionSecret::from_bytes([0xff; 16]),
            relays: vec![
                TicketRelay {
                    addr: "a".repeat(MAX_NAME),
                    pin: Some([1; 32])
                };
                MAX_RELAYS
            ],
        };
        let s = long.encode().unwrap();
        assert_eq!(s.len(), MAX_LEN);
        assert_eq!(Ticket::parse(&s).unwrap(), long);
        // A code is never taken for a ticket.
        let code = SessionSecret::from_bytes([0xff; 16]).code();
        assert!(!is_ticket(&code));
    }

    /// The test vector of spec/session.md §5, read from the spec: tickets
    /// written by earlier builds keep parsing to the same fields.
    #[test]
    fn ticket_matches_the_spec_vector() {
        let spec = include_str!("../spec/session.md");
        let text = spec
            .lines()
            .find_map(|l| l.trim().strip_prefix("ticket = "))
            .expect("ticket line in spec/session.md §5");
        let t = Ticket {
            secret: SessionSecret::from_bytes(std::array::from_fn(|i| i as u8)),
            relays: vec![
                TicketRelay {
                    addr: "relay-a.example:443".into(),
                    pin: Some([0x11; 32]),
                },
                TicketRelay {
                    addr: "relay-b.example:443".into(),
                    pin: None,
                },
            ],
        };
        assert_eq!(t.encode().unwrap(), text);
        assert_eq!(Ticket::parse(text).unwrap(), t);
    }

    //= spec/session.md#SE-TICKET-2
    #[test]
    fn every_single_character_corruption_is_detected() {
        let s = sample(2).encode().unwrap();
        let bytes = s.as_bytes();
        for i in 0..bytes.len() {
            for &c in ALPHABET.iter().chain(b"xX0189-_ ") {
                if c == bytes[i] {
                    continue;
                }
                let mut m = bytes.to_vec();
                m[i] = c;
                let m = String::from_utf8(m).unwrap();
                if m.trim() == s {
                    continue; // whitespace at an end is trimmed, not a change
                }
                assert!(Ticket::parse(&m).is_err(), "position {i}: {m}");
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        let s = sample(3).encode().unwrap();
        for n in 0..s.len() {
            assert!(Ticket::parse(&s[..n]).is_err(), "cut at {n}");
        }
        assert_eq!(Ticket::parse("xtcp"), Err(TicketError::Truncated));
        assert_eq!(Ticket::parse("xtc"), Err(TicketError::Prefix));
    }

    //= spec/session.md#SE-TICKET-3
    #[test]
    fn unknown_version_is_rejected_clearly() {
        let mut b = vec![2u8];
        b.extend_from_slice(&[0; 16]);
        b.push(0);
        let c = check(&b);
        b.extend_from_slice(&c);
        let mut s = String::from(PREFIX);
        base32_encode(&b, &mut s);
        let e = Ticket::parse(&s).unwrap_err();
        assert_eq!(e, TicketError::Version(2));
        assert!(e.to_string().contains("upgrade"), "{e}");
    }

    //= spec/session.md#SE-TICKET-1
    //= spec/session.md#SE-TICKET-4
    #[test]
    fn bounds() {
        assert_eq!(
            sample(MAX_RELAYS + 1).encode(),
            Err(TicketError::RelayCount(MAX_RELAYS + 1))
        );
        assert_eq!(sample(0).encode(), Err(TicketError::RelayCount(0)));
        let mut t = sample(1);
        t.relays[0].addr = "a b:1".into();
        assert_eq!(t.encode(), Err(TicketError::Relay));
        t.relays[0].addr = "a".repeat(MAX_NAME + 1);
        assert_eq!(t.encode(), Err(TicketError::Relay));
        let long = format!("xtcp{}", "a".repeat(MAX_LEN));
        assert!(matches!(Ticket::parse(&long), Err(TicketError::TooLong(_))));
        // A payload claiming 9 relays, with a valid check.
        let mut b = vec![VERSION];
        b.extend_from_slice(&[0; 16]);
        b.push(9);
        let c = check(&b);
        b.extend_from_slice(&c);
        let mut s = String::from(PREFIX);
        base32_encode(&b, &mut s);
        assert_eq!(Ticket::parse(&s), Err(TicketError::RelayCount(9)));
    }

    #[test]
    fn parse_never_panics() {
        fn prop(s: String) -> bool {
            let _ = Ticket::parse(&s);
            let _ = Ticket::parse(&format!("xtcp{s}"));
            true
        }
        quickcheck::QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(String) -> bool);
        // Random base32 bodies reach the payload decoder.
        fn prop_bytes(b: Vec<u8>) -> bool {
            let mut s = String::from(PREFIX);
            base32_encode(&b, &mut s);
            let _ = Ticket::parse(&s);
            let mut p = b.clone();
            let c = check(&p);
            p.extend_from_slice(&c);
            let mut s = String::from(PREFIX);
            base32_encode(&p, &mut s);
            let _ = Ticket::parse(&s);
            true
        }
        quickcheck::QuickCheck::new()
            .tests(2000)
            .quickcheck(prop_bytes as fn(Vec<u8>) -> bool);
    }
}
