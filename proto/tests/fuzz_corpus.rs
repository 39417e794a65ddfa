//! Replays the committed fuzz seed corpora (`fuzz/corpus/<target>/`) through
//! the same oracles the cargo-fuzz targets call, so `cargo test` catches a
//! regression on any input the fuzzer has ever been seeded with.
//!
//! Adding a target is one line: `replay!(name, xtcp_proto::fuzzing::name);`.

use std::path::PathBuf;

/// Run `oracle` on every file in `fuzz/corpus/<target>/`; the corpus must not be empty.
fn replay(target: &str, oracle: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "empty corpus {}", dir.display());
    for path in &entries {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // A panic names the input, so it can be re-run with `cargo fuzz run <target> <file>`.
        let result = std::panic::catch_unwind(|| oracle(&data));
        assert!(
            result.is_ok(),
            "{target}: oracle failed on {}",
            path.display()
        );
    }
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
