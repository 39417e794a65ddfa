//! Helpers shared by the source-tree tests (`layout`, `module_cycles`).

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
pub fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}
