//! Replays the committed fuzz corpora of the oracles in this crate
//! (`src/fuzzing.rs`: `preamble`, `relay_config`) through them, as
//! `proto/tests/fuzz_corpus.rs` does for `xtcp-proto`'s.

use std::path::Path;

/// Run `oracle` on every file in `fuzz/corpus/<target>/`.
fn replay(target: &str, oracle: fn(&[u8])) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    proto::fuzzing::replay(&corpus, target, oracle);
}

macro_rules! replay {
    ($target:ident, $oracle:path) => {
        #[test]
        fn $target() {
            replay(stringify!($target), $oracle);
        }
    };
}

replay!(preamble, xtcp::fuzzing::preamble);
#[cfg(feature = "relay-server")]
replay!(relay_config, xtcp::fuzzing::relay_config);
