//! The session secret, its printable code, and the keys derived from it
//! (`spec/session.md` §2).
//!
//! ```text
//!   S (128 bits, OS CSPRNG)
//!   PRK           = HKDF-Extract(salt = "xtcp session v1", S)           RFC 5869 §2.2
//!   rendezvous_id = HKDF-Expand(PRK, "xtcp rendezvous id", 16)          → the relay sees this
//!   auth_key      = HKDF-Expand(PRK, "xtcp auth key", 32)               → never leaves the peers
//! ```
//!
//! The code a person copies is S in Crockford base32 (26 symbols, the first
//! one < 8 since 26 × 5 = 130 bits) followed by two check symbols, in groups of
//! four: `7f3k-q9x2-…`. The check symbols catch a mistyped code locally, so a
//! typo neither reaches the relay nor counts toward the lockout.

use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

/// Crockford's base32 alphabet (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const DATA_SYMBOLS: usize = 26;
const CHECK_SYMBOLS: usize = 2;
const SALT: &[u8] = b"xtcp session v1";
const INFO_RENDEZVOUS: &[u8] = b"xtcp rendezvous id";
const INFO_AUTH: &[u8] = b"xtcp auth key";
const INFO_CHECK: &[u8] = b"xtcp code check";
const INFO_PREAMBLE: &[u8] = b"xtcp preamble key v1";

/// Why a code was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeError {
    /// Not 28 symbols after removing separators.
    Length(usize),
    /// A character outside Crockford's base32.
    Symbol(char),
    /// The first symbol encodes bits above 128.
    Range,
    /// The check symbols do not match: most likely a typo.
    Checksum,
}

impl fmt::Display for CodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeError::Length(n) => write!(
                f,
                "expected {} symbols, got {n}",
                DATA_SYMBOLS + CHECK_SYMBOLS
            ),
            CodeError::Symbol(c) => write!(f, "invalid character {c:?}"),
            CodeError::Range => f.write_str("first symbol out of range"),
            CodeError::Checksum => f.write_str("check symbols do not match (typo?)"),
        }
    }
}

impl std::error::Error for CodeError {}

/// The CSPRNG failed (the OS refused to give randomness).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RngError;

impl fmt::Display for RngError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the operating system's random number generator failed")
    }
}

impl std::error::Error for RngError {}

/// The 128-bit session secret ("session GUID").
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSecret([u8; 16]);

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(<redacted>)")
    }
}

impl Drop for SessionSecret {
    fn drop(&mut self) {
        // Best effort: overwrite before the memory is freed.
        self.0 = [0; 16];
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl SessionSecret {
    /// A fresh secret from the OS CSPRNG.
    pub fn generate() -> Result<SessionSecret, RngError> {
        let mut s = [0u8; 16];
        SystemRandom::new().fill(&mut s).map_err(|_| RngError)?;
        Ok(SessionSecret(s))
    }

    /// A secret from raw bytes (tests, and codes carried by other means).
    pub fn from_bytes(bytes: [u8; 16]) -> SessionSecret {
        SessionSecret(bytes)
    }

    fn expand<const N: usize>(&self, info: &[u8]) -> [u8; N] {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(&self.0);
        let mut out = [0u8; N];
        let info = [info];
        // N ≤ 255 × 32, so expand and fill cannot fail.
        if let Ok(okm) = prk.expand(&info, Len(N)) {
            let _ = okm.fill(&mut out);
        }
        out
    }

    /// The one-way id the relay indexes sessions by.
    pub fn rendezvous_id(&self) -> [u8; 16] {
        self.expand(INFO_RENDEZVOUS)
    }

    /// The key the peers prove knowledge of the secret with. Never sent anywhere.
    pub fn auth_key(&self) -> [u8; 32] {
        self.expand(INFO_AUTH)
    }

    /// The key `role` seals its preamble with (`crate::preamble`): the role
    /// byte follows the info label. Never sent anywhere.
    pub(crate) fn preamble_key(&self, role: u8) -> [u8; 32] {
        let mut info = INFO_PREAMBLE.to_vec();
        info.push(role);
        self.expand(&info)
    }

    fn check(&self) -> u16 {
        let c: [u8; 2] = self.expand(INFO_CHECK);
        u16::from_be_bytes(c) >> 6 // 10 bits
    }

    /// The printable code: 28 Crockford base32 symbols in groups of four.
    pub fn code(&self) -> String {
        let v = u128::from_be_bytes(self.0);
        let mut syms = Vec::with_capacity(DATA_SYMBOLS + CHECK_SYMBOLS);
        for i in (0..DATA_SYMBOLS).rev() {
            syms.push(ALPHABET[((v >> (5 * i)) & 31) as usize]);
        }
        let c = self.check();
        syms.push(ALPHABET[usize::from(c >> 5)]);
        syms.push(ALPHABET[usize::from(c & 31)]);
        let mut out = String::with_capacity(35);
        for (i, s) in syms.iter().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push('-');
            }
            out.push(char::from(*s));
        }
        out
    }

    /// Parse a code: case-insensitive, separators (`-`, space) ignored,
    /// Crockford's aliases accepted (`i`/`l` → 1, `o` → 0).
    pub fn parse(code: &str) -> Result<SessionSecret, CodeError> {
        let mut vals = Vec::with_capacity(DATA_SYMBOLS + CHECK_SYMBOLS);
        for c in code.chars() {
            if c == '-' || c == ' ' {
                continue;
            }
            if vals.len() == DATA_SYMBOLS + CHECK_SYMBOLS {
                return Err(CodeError::Length(vals.len() + 1));
            }
            let c = match c.to_ascii_lowercase() {
                'i' | 'l' => '1',
                'o' => '0',
                c => c,
            };
            let v = ALPHABET
                .iter()
                .position(|&a| char::from(a) == c)
                .ok_or(CodeError::Symbol(c))?;
            vals.push(v as u128);
        }
        if vals.len() != DATA_SYMBOLS + CHECK_SYMBOLS {
            return Err(CodeError::Length(vals.len()));
        }
        if vals[0] >= 8 {
            return Err(CodeError::Range);
        }
        let v = vals[..DATA_SYMBOLS]
            .iter()
            .fold(0u128, |acc, &s| (acc << 5) | s);
        let secret = SessionSecret(v.to_be_bytes());
        let check = ((vals[DATA_SYMBOLS] << 5) | vals[DATA_SYMBOLS + 1]) as u16;
        if check != secret.check() {
            return Err(CodeError::Checksum);
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_roundtrip_and_typos() {
        for _ in 0..200 {
            let s = SessionSecret::generate().unwrap();
            let code = s.code();
            assert_eq!(code.len(), 28 + 6);
            assert_eq!(SessionSecret::parse(&code).unwrap(), s);
            assert_eq!(
                SessionSecret::parse(&code.to_uppercase().replace('-', " ")).unwrap(),
                s
            );
        }
        let s = SessionSecret::from_bytes([7; 16]);
        let code = s.code();
        let mut caught = 0;
        for pos in [0usize, 5, 10, 20, 33] {
            let mut b = code.clone().into_bytes();
            b[pos] = if b[pos] == b'2' { b'3' } else { b'2' };
            let typo = String::from_utf8(b).unwrap();
            if SessionSecret::parse(&typo).is_err() {
                caught += 1;
            }
        }
        assert_eq!(caught, 5);
        assert_eq!(SessionSecret::parse("abc"), Err(CodeError::Length(3)));
        assert!(matches!(
            SessionSecret::parse(&"u".repeat(28)),
            Err(CodeError::Symbol('u'))
        ));
        assert_eq!(SessionSecret::parse(&"z".repeat(28)), Err(CodeError::Range));
    }

    #[test]
    fn derivations_are_distinct_and_stable() {
        let s = SessionSecret::from_bytes([0; 16]);
        let rid = s.rendezvous_id();
        let key = s.auth_key();
        assert_ne!(&rid[..], &key[..16]);
        assert_eq!(rid, SessionSecret::from_bytes([0; 16]).rendezvous_id());
        assert_ne!(rid, SessionSecret::from_bytes([1; 16]).rendezvous_id());
        // Vector in spec/session.md §2.3 (HKDF-SHA256, RFC 5869).
        let expected = vector_rid();
        assert_eq!(hex(&rid), expected);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn vector_rid() -> String {
        // Read from the spec so spec and code cannot drift apart.
        let spec = include_str!("../spec/session.md");
        spec.lines()
            .find_map(|l| l.strip_prefix("    rendezvous_id(S=00…00) = "))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }
}
