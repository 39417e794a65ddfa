//! Replays the committed fuzz seed corpora (`fuzz/corpus/<target>/`) through
//! the same oracles the cargo-fuzz targets call, so `cargo test` catches a
//! regression on any input the fuzzer has ever been seeded with.
//!
//! Adding a target is one line: `replay!(name, xtcp_proto::fuzzing::name);`.

use std::path::Path;

/// Run `oracle` on every file in `fuzz/corpus/<target>/`.
fn replay(target: &str, oracle: fn(&[u8])) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    xtcp_proto::fuzzing::replay(&corpus, target, oracle);
}

macro_rules! replay {
    ($target:ident, $oracle:path) => {
        #[test]
        fn $target() {
            replay(stringify!($target), $oracle);
        }
    };
}

replay!(segment_codec, xtcp_proto::fuzzing::segment_codec);
replay!(connection, xtcp_proto::fuzzing::connection);
replay!(relay_frame, xtcp_proto::fuzzing::relay_frame);
replay!(session_frames, xtcp_proto::fuzzing::session_frames);
replay!(udp_service, xtcp_proto::fuzzing::udp_service);
replay!(punch_probe, xtcp_proto::fuzzing::punch_probe);
