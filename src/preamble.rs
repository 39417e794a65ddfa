//! The preamble (`spec/session.md` §3.4): the first bytes each peer sends on
//! the relay pipe, before its end-to-end TLS, carry its direct TCP
//! candidates sealed with a key only holders of the session code can derive.
//!
//! ```text
//!   PAIRED ─► host:  preamble(host)  ‖ TLS server flight …
//!   PAIRED ─► guest: preamble(guest) ‖ ClientHello …
//!   preamble = len16 ‖ nonce(12) ‖ ChaCha20-Poly1305(key(role), nonce,
//!                                     aad = "xtcp preamble v1" ‖ role,
//!                                     CANDIDATES frame)
//!   key(role) = HKDF-SHA256(salt "xtcp session v1", secret,
//!                           info "xtcp preamble key v1" ‖ role)
//! ```
//!
//! Both are sent the moment the relay pairs the peers, so each side holds
//! the other's candidates one relay trip after pairing and dials them while
//! the relay path's handshake is still running: the direct path is usually
//! ready when that handshake ends (`spec/direct.md` §4.2). The relay sees
//! only ciphertext; it cannot read the addresses (the auth key is never
//! sent) nor forge, reflect (the role is in the key and the AAD) or alter
//! them (the peer's open fails, and the session with it).

use crate::e2e::Role;
use crate::secret::SessionSecret;
use proto::session::{encode, Candidate, Frame};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// Most bytes after the length field (a full CANDIDATES frame of 32 IPv6
/// candidates is under 700).
pub const MAX_BODY: usize = 2048;
const AAD_CONTEXT: &[u8] = b"xtcp preamble v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why a preamble was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreambleError {
    /// The length field exceeds [`MAX_BODY`], or is too short for a nonce
    /// and a tag.
    BadLength(usize),
    /// The seal did not open: not sealed by the peer of this session (the
    /// relay altered, forged or reflected it).
    Unauthentic,
    /// The plaintext is not one valid CANDIDATES frame.
    BadFrame(String),
    /// The stream ended or failed before the preamble was complete.
    Closed,
    /// The local CSPRNG failed, or this side's candidates do not encode.
    Local(String),
}

impl fmt::Display for PreambleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreambleError::BadLength(n) => write!(f, "preamble length {n} out of range"),
            PreambleError::Unauthentic => f.write_str("preamble failed authentication"),
            PreambleError::BadFrame(e) => write!(f, "preamble content: {e}"),
            PreambleError::Closed => f.write_str("stream ended inside the preamble"),
            PreambleError::Local(e) => write!(f, "preamble: {e}"),
        }
    }
}

impl std::error::Error for PreambleError {}

fn key(secret: &SessionSecret, role: Role) -> Result<LessSafeKey, PreambleError> {
    let k = secret.preamble_key(role.byte());
    UnboundKey::new(&aead::CHACHA20_POLY1305, &k)
        .map(LessSafeKey::new)
        .map_err(|_| PreambleError::Local("key".into()))
}

fn aad(role: Role) -> Vec<u8> {
    let mut a = AAD_CONTEXT.to_vec();
    a.push(role.byte());
    a
}

/// Seal `candidates` as `role`'s preamble, with a fresh random nonce.
pub fn seal(
    secret: &SessionSecret,
    role: Role,
    candidates: &[Candidate],
) -> Result<Vec<u8>, PreambleError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| PreambleError::Local("CSPRNG failure".into()))?;
    seal_with_nonce(secret, role, candidates, nonce)
}

/// [`seal`] with a given nonce (test vectors; never reuse one).
pub fn seal_with_nonce(
    secret: &SessionSecret,
    role: Role,
    candidates: &[Candidate],
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, PreambleError> {
    let mut body = Vec::new();
    encode(&Frame::Candidates(candidates.to_vec()), &mut body)
        .map_err(|e| PreambleError::Local(e.to_string()))?;
    seal_plaintext(secret, role, body, nonce)
}

/// Seal any `body` as `role`'s preamble: [`seal_with_nonce`] without the
/// encoding, so the fuzz oracle (`crate::fuzzing::preamble`) can reach
/// [`open`]'s frame check with plaintexts that are not CANDIDATES frames.
pub(crate) fn seal_plaintext(
    secret: &SessionSecret,
    role: Role,
    mut body: Vec<u8>,
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, PreambleError> {
    key(secret, role)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(role)),
            &mut body,
        )
        .map_err(|_| PreambleError::Local("seal".into()))?;
    let len = NONCE_LEN + body.len();
    //= spec/session.md#SE-PRE-1
    if len > MAX_BODY {
        return Err(PreambleError::BadLength(len));
    }
    let mut out = Vec::with_capacity(2 + len);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Open a preamble `body` (the bytes after the length field) sealed by
/// `sender`.
pub fn open(
    secret: &SessionSecret,
    sender: Role,
    body: &[u8],
) -> Result<Vec<Candidate>, PreambleError> {
    //= spec/session.md#SE-PRE-1
    if body.len() < NONCE_LEN + TAG_LEN || body.len() > MAX_BODY {
        return Err(PreambleError::BadLength(body.len()));
    }
    let (n, ct) = body.split_at(NONCE_LEN);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(n);
    let mut buf = ct.to_vec();
    let plain = key(secret, sender)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(sender)),
            &mut buf,
        )
        .map_err(|_| PreambleError::Unauthentic)?;
    match Frame::parse(plain) {
        Ok((Frame::Candidates(c), used)) if used == plain.len() => Ok(c),
        Ok(_) => Err(PreambleError::BadFrame(
            "not exactly one CANDIDATES frame".into(),
        )),
        Err(e) => Err(PreambleError::BadFrame(e.to_string())),
    }
}

/// What the reader hands over: the peer's preamble body, or why it failed.
pub type PeerPreamble = Result<Vec<u8>, PreambleError>;

/// Reads the peer's preamble off the front of a stream, hands its body over
/// once complete, then passes every later byte through untouched (to the
/// e2e TLS above it). Writes pass through. Reads never take a byte beyond
/// the preamble before it is complete, and never buffer more than
/// [`MAX_BODY`] + 2 bytes.
pub struct PreambleReader<S> {
    inner: S,
    /// Bytes of the preamble so far and where to deliver it (None: done).
    pending: Option<(Vec<u8>, oneshot::Sender<PeerPreamble>)>,
}

impl<S> PreambleReader<S> {
    /// Wraps `inner`; the peer's preamble body (or why it was bad) is sent on `deliver` once complete.
    pub fn new(inner: S, deliver: oneshot::Sender<PeerPreamble>) -> Self {
        PreambleReader {
            inner,
            pending: Some((Vec::new(), deliver)),
        }
    }
    fn fail(&mut self, e: PreambleError) -> io::Error {
        if let Some((_, tx)) = self.pending.take() {
            let _ = tx.send(Err(e.clone()));
        }
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PreambleReader<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while let Some((got, _)) = &mut this.pending {
            let want = if got.len() < 2 {
                2
            } else {
                let len = usize::from(u16::from_be_bytes([got[0], got[1]]));
                //= spec/session.md#SE-PRE-1
                //# `len` MUST be between 28 and 2048: a receiver reads the two length bytes, refuses
                //# any other length
                if !(NONCE_LEN + TAG_LEN..=MAX_BODY).contains(&len) {
                    return Poll::Ready(Err(this.fail(PreambleError::BadLength(len))));
                }
                2 + len
            };
            if got.len() == want && want > 2 {
                if let Some((mut got, tx)) = this.pending.take() {
                    got.drain(..2);
                    let _ = tx.send(Ok(got));
                }
                break;
            }
            // Exactly the missing bytes: nothing past the preamble is taken.
            let mut tmp = [0u8; MAX_BODY + 2];
            let need = want - got.len();
            let mut rb = ReadBuf::new(&mut tmp[..need]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    let _ = this.fail(PreambleError::Closed);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    let _ = this.fail(PreambleError::Closed);
                    return Poll::Ready(Ok(())); // end of stream, as it came
                }
                Poll::Ready(Ok(())) => got.extend_from_slice(rb.filled()),
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PreambleReader<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::session::{CandidateKind, Transport};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn cands() -> Vec<Candidate> {
        vec![
            Candidate {
                kind: CandidateKind::Host,
                transport: Transport::Tcp,
                addr: "198.18.3.4:40001".parse().unwrap(),
            },
            Candidate {
                kind: CandidateKind::ServerReflexiveTcp,
                transport: Transport::Tcp,
                addr: "[2001:db8::7]:40001".parse().unwrap(),
            },
        ]
    }

    #[test]
    fn sealed_by_one_role_opens_only_as_that_role_and_only_with_the_code() {
        let s = SessionSecret::from_bytes([9; 16]);
        let p = seal(&s, Role::Guest, &cands()).unwrap();
        assert_eq!(usize::from(u16::from_be_bytes([p[0], p[1]])), p.len() - 2);
        assert_eq!(open(&s, Role::Guest, &p[2..]).unwrap(), cands());
        // Reflected back at its sender, or opened with another code: refused.
        assert_eq!(
            open(&s, Role::Host, &p[2..]),
            Err(PreambleError::Unauthentic)
        );
        let other = SessionSecret::from_bytes([8; 16]);
        assert_eq!(
            open(&other, Role::Guest, &p[2..]),
            Err(PreambleError::Unauthentic)
        );
        // Every single bit flip is caught.
        for i in 2..p.len() {
            let mut q = p.clone();
            q[i] ^= 0x10;
            assert!(open(&s, Role::Guest, &q[2..]).is_err(), "flip at {i}");
        }
        // Truncated, or too long for the bound.
        assert!(matches!(
            open(&s, Role::Guest, &p[2..20]),
            Err(PreambleError::BadLength(_))
        ));
        assert!(matches!(
            open(&s, Role::Guest, &vec![0; MAX_BODY + 1]),
            Err(PreambleError::BadLength(_))
        ));
        // Two seals of the same candidates differ (fresh nonces).
        assert_ne!(p, seal(&s, Role::Guest, &cands()).unwrap());
        // An empty list (relay-only peers) round-trips.
        let e = seal(&s, Role::Host, &[]).unwrap();
        assert_eq!(open(&s, Role::Host, &e[2..]).unwrap(), vec![]);
    }

    /// `spec/session.md` §3.4 test vector.
    #[test]
    fn spec_vector() {
        let s = SessionSecret::from_bytes(*b"0123456789abcdef");
        let c = vec![Candidate {
            kind: CandidateKind::Host,
            transport: Transport::Tcp,
            addr: "192.0.2.1:5000".parse().unwrap(),
        }];
        let p = seal_with_nonce(&s, Role::Host, &c, [0; 12]).unwrap();
        let hex: String = p.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, SPEC_VECTOR);
        assert_eq!(
            hex,
            vector_in_spec(),
            "spec/session.md §3.4 and the code agree"
        );
        assert_eq!(open(&s, Role::Host, &p[2..]).unwrap(), c);
    }

    /// The preamble of the §3.4 test vector as the spec prints it (two lines).
    fn vector_in_spec() -> String {
        let spec = include_str!("../spec/session.md");
        let mut lines = spec
            .lines()
            .skip_while(|l| !l.starts_with("preamble = 0029"));
        let first = lines.next().unwrap_or_default();
        let second = lines.next().unwrap_or_default();
        format!(
            "{}{}",
            first.trim_start_matches("preamble = "),
            second.trim()
        )
        .replace(' ', "")
    }
    const SPEC_VECTOR: &str =
        "002900000000000000000000000049889ed259f0568e21a295ed5ca001289e563402b34717e15909989e12";

    #[tokio::test]
    async fn the_reader_hands_over_the_preamble_and_passes_the_rest_through_byte_by_byte() {
        let s = SessionSecret::from_bytes([3; 16]);
        let mut wire = seal(&s, Role::Host, &cands()).unwrap();
        wire.extend_from_slice(b"TLS bytes after it");
        let (mut a, b) = tokio::io::duplex(1);
        let (tx, rx) = oneshot::channel();
        let mut r = PreambleReader::new(b, tx);
        let w = tokio::spawn(async move {
            for byte in wire {
                a.write_all(&[byte]).await.unwrap();
            }
        });
        let mut rest = vec![0u8; 18];
        r.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"TLS bytes after it");
        let body = rx.await.unwrap().unwrap();
        assert_eq!(open(&s, Role::Host, &body).unwrap(), cands());
        w.await.unwrap();
    }

    /// Any bytes, in any chunking: the reader either hands over exactly the
    /// preamble its length field frames and then passes every later byte
    /// through, or fails; it never panics, never takes a byte beyond the
    /// preamble, never buffers more than its bound.
    //= spec/session.md#SE-PRE-1
    #[test]
    fn any_input_in_any_chunking_is_framed_exactly_or_refused() {
        fn prop(mut input: Vec<u8>, cuts: Vec<u8>, valid: bool) -> bool {
            if valid {
                // Half the cases start with a well-framed preamble.
                let body_len = 28 + input.len() % 64;
                let mut framed = (body_len as u16).to_be_bytes().to_vec();
                framed.extend((0..body_len).map(|i| i as u8));
                framed.extend_from_slice(&input);
                input = framed;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (mut a, b) = tokio::io::duplex(4096);
                let (tx, rx) = oneshot::channel();
                let mut r = PreambleReader::new(b, tx);
                let feed = input.clone();
                let w = tokio::spawn(async move {
                    let mut rest = &feed[..];
                    let mut cuts = cuts.into_iter().cycle();
                    while !rest.is_empty() {
                        let n = (usize::from(cuts.next().unwrap_or(7)) + 1).min(rest.len());
                        if a.write_all(&rest[..n]).await.is_err() {
                            return;
                        }
                        rest = &rest[n..];
                    }
                });
                let mut out = Vec::new();
                let res = r.read_to_end(&mut out).await;
                let _ = w.await;
                let len = input
                    .len()
                    .checked_sub(2)
                    .map(|_| usize::from(u16::from_be_bytes([input[0], input[1]])));
                match (rx.await, len) {
                    (Ok(Ok(body)), Some(len)) => {
                        res.is_ok()
                            && (28..=MAX_BODY).contains(&len)
                            && body == input[2..2 + len]
                            && out == input[2 + len..]
                    }
                    (Ok(Err(_)), _) => out.is_empty(),
                    _ => false,
                }
            })
        }
        quickcheck::QuickCheck::new()
            .tests(300)
            .quickcheck(prop as fn(Vec<u8>, Vec<u8>, bool) -> bool);
    }

    //= spec/session.md#SE-PRE-1
    #[tokio::test]
    async fn a_bad_length_or_an_early_end_is_an_error_not_a_hang() {
        for wire in [
            vec![0xff, 0xff, 1, 2, 3],
            vec![0x00, 0x03, 1, 2, 3],
            vec![0x00, 0x40, 1],
        ] {
            let (mut a, b) = tokio::io::duplex(64);
            let (tx, rx) = oneshot::channel();
            let mut r = PreambleReader::new(b, tx);
            a.write_all(&wire).await.unwrap();
            drop(a);
            let mut buf = [0u8; 8];
            let n = r.read(&mut buf).await;
            assert!(matches!(n, Err(_) | Ok(0)), "{wire:?}: {n:?}");
            assert!(rx.await.unwrap().is_err(), "{wire:?}");
        }
    }
}
