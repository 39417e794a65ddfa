//! Replays the committed `tun_translate` fuzz corpus through its oracle
//! (`src/tun/fuzzing.rs`), as `proto/tests/fuzz_corpus.rs` does for
//! `xtcp-proto`'s. Needs no root: the translation is pure.

use std::path::Path;

/// Run `oracle` on every file in `fuzz/corpus/<target>/`.
fn replay(target: &str, oracle: fn(&[u8])) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
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

replay!(tun_translate, xtcp_lab::tun::fuzzing::tun_translate);
