//! Fuzz oracles for what lives in this crate rather than in `xtcp-proto`,
//! one function per `fuzz/fuzz_targets/*.rs` target, as in
//! `xtcp_proto::fuzzing`: each target is one line calling a function here,
//! and `tests/fuzz_corpus.rs` replays the committed corpora through the same
//! functions. Not part of the API.

use crate::e2e::Role;
use crate::preamble::{self, PreambleError, PreambleReader, MAX_BODY};
use crate::secret::SessionSecret;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

/// An in-memory stream that hands out `data` in chunks whose sizes cycle
/// through `cuts` (each + 1), and answers `Pending` before a chunk when
/// `stall` is set, as a socket would.
struct Chunked<'a> {
    data: &'a [u8],
    cuts: &'a [u8],
    next: usize,
    stall: bool,
    stalled: bool,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stall && !this.stalled && !this.data.is_empty() {
            this.stalled = true;
            return Poll::Pending; // the driver polls again: a spurious wake-up
        }
        this.stalled = false;
        let cut = match this.cuts.get(this.next % this.cuts.len().max(1)) {
            Some(&c) => usize::from(c) + 1,
            None => usize::MAX,
        };
        this.next += 1;
        let n = cut.min(this.data.len()).min(buf.remaining());
        let (now, later) = this.data.split_at(n);
        buf.put_slice(now);
        this.data = later;
        Poll::Ready(Ok(()))
    }
}

/// Session preamble oracle (`spec/session.md` §3.4, SE-PRE-1).
///
/// Byte 0 picks the mode: bit 0 the sender's role; bit 1 whether the rest is
/// a raw stream or a plaintext to seal first (so the oracle reaches
/// [`preamble::open`]'s frame check, which random ciphertext never passes);
/// bit 2 whether the stream stalls (`Pending`) before each chunk. Byte 1 is
/// the number of chunk sizes that follow; then the chunk sizes; then the
/// stream (or plaintext, then the bytes after the preamble).
///
/// The [`PreambleReader`] over that stream, read to its end, must deliver
/// exactly once: either the body its length field frames (28..=2048 bytes),
/// and then pass every later byte through unchanged, or a typed error, and
/// then pass nothing. A delivered body opens to candidates or a typed error;
/// candidates reseal (same nonce) to a preamble that opens to them again.
pub fn preamble(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((&ncuts, rest)) = rest.split_first() else {
        return;
    };
    let (cuts, rest) = rest.split_at(usize::from(ncuts % 16).min(rest.len()));
    let role = if mode & 1 == 0 {
        Role::Host
    } else {
        Role::Guest
    };
    let secret = SessionSecret::from_bytes(*b"0123456789abcdef");
    let nonce = [0x42; 12];
    let stream = if mode & 2 != 0 {
        // The plaintext runs to the first 0xff 0xff pair (or the end).
        let at = rest.windows(2).position(|w| w == [0xff, 0xff]);
        let (plain, after) = rest.split_at(at.unwrap_or(rest.len()));
        match preamble::seal_plaintext(&secret, role, plain.to_vec(), nonce) {
            Ok(mut sealed) => {
                sealed.extend_from_slice(after);
                sealed
            }
            Err(PreambleError::BadLength(_)) => return, // too long to seal
            Err(e) => panic!("sealing failed: {e}"),
        }
    } else {
        rest.to_vec()
    };
    let (tx, mut rx) = oneshot::channel();
    let src = Chunked {
        data: &stream,
        cuts,
        next: 0,
        stall: mode & 4 != 0,
        stalled: false,
    };
    let mut reader = PreambleReader::new(src, tx);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut failed = false;
    // Every Ready read consumes input or ends; a stall is followed by a read.
    for _ in 0..2 * stream.len() + 8 {
        let mut tmp = [0u8; 97];
        let mut rb = ReadBuf::new(&mut tmp);
        match Pin::new(&mut reader).poll_read(&mut cx, &mut rb) {
            Poll::Pending => continue,
            Poll::Ready(Err(_)) => {
                failed = true;
                break;
            }
            Poll::Ready(Ok(())) if rb.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
        }
    }
    // ok: the oracle asserts this property; a failure is the finding.
    let delivered = rx
        .try_recv()
        .expect("the reader delivers once the stream ends");
    let body = match delivered {
        Ok(body) => body,
        Err(_) => {
            assert!(
                out.is_empty(),
                "bytes passed through after a refused preamble"
            );
            return;
        }
    };
    assert!(!failed, "a read failed after the preamble was delivered");
    let len = usize::from(u16::from_be_bytes([stream[0], stream[1]]));
    assert!((28..=MAX_BODY).contains(&len), "delivered length {len}");
    assert_eq!(
        stream.get(2..2 + len),
        Some(&body[..]),
        "the body is not what the length frames"
    );
    assert_eq!(
        stream.get(2 + len..),
        Some(&out[..]),
        "the bytes after the preamble changed"
    );
    let Ok(cands) = preamble::open(&secret, role, &body) else {
        return;
    };
    let mut n = [0u8; 12];
    n.copy_from_slice(&body[..12]);
    // ok: the oracle asserts this property; a failure is the finding.
    let again = preamble::seal_with_nonce(&secret, role, &cands, n).expect("candidates reseal");
    assert_eq!(
        preamble::open(&secret, role, &again[2..]),
        Ok(cands),
        "open(seal(open(x))) != open(x)"
    );
}

/// Relay configuration oracle (`spec/relay.md` §8): any text either fails
/// to parse as TOML into a [`crate::relay::RelayConfig`], or parses and then
/// validates or fails validation with an error; never a panic. A config
/// that validates gives limits whose every duration can be added to the
/// clock (`Instant::now() + d`) without overflow, and validation agrees
/// with the limits it derives.
#[cfg(feature = "relay-server")]
pub fn relay_config(data: &[u8]) {
    use crate::relay::server::parse_udp_listen;
    use crate::relay::RelayConfig;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_udp_listen(text);
    let Ok(cfg) = toml::from_str::<RelayConfig>(text) else {
        return;
    };
    let durations = cfg.limit_durations();
    let valid = cfg.validate();
    if valid.is_ok() {
        assert!(durations.is_ok(), "validates but derives no limits");
    }
    let Ok(durations) = durations else {
        assert!(valid.is_err(), "no limits, yet validates");
        return;
    };
    let now = std::time::Instant::now();
    for (key, d) in durations {
        assert!(now.checked_add(d).is_some(), "{key}: now + {d:?} overflows");
        assert!(
            d.as_secs_f64() <= crate::relay::server::MAX_CONFIG_SECS,
            "{key}: {d:?} above the bound"
        );
    }
}
