//! Fuzz oracles, one function per `fuzz/fuzz_targets/*.rs` target.
//!
//! Each target in `fuzz/` is one line calling a function here, so the same
//! oracle also runs in `cargo test` (`proto/tests/fuzz_corpus.rs` replays the
//! committed seed corpora through it). Not part of the stable API.

use crate::wire::SegmentRepr;

/// XTCP segment codec oracle.
///
/// Parsing arbitrary bytes must return, never panic. When it succeeds, the
/// repr must survive `emit` → `parse` unchanged (modulo SACK blocks that
/// `emit` drops for lack of option space, see [`SegmentRepr::canonical`]).
/// A panic here is a codec bug, which is exactly what the fuzzer looks for.
pub fn segment_codec(data: &[u8]) {
    let Ok(repr) = SegmentRepr::parse(data) else {
        return;
    };
    let len = repr.buffer_len();
    let mut buf = vec![0u8; len];
    let written = repr.emit(&mut buf);
    assert_eq!(written, Ok(len), "emit must write exactly buffer_len bytes");
    // Too small by one byte must be refused, not truncated.
    if let Some(short) = buf.get_mut(..len - 1) {
        assert!(
            repr.emit(short).is_err(),
            "emit into a short buffer must fail"
        );
    }
    let reparsed = SegmentRepr::parse(&buf);
    assert_eq!(
        reparsed,
        Ok(repr.canonical()),
        "parse(emit(parse(x))) != parse(x)"
    );
}
