//! Running a scenario over many seeds, and replaying one.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Environment variable naming the single seed to run (replay).
pub const SEED_VAR: &str = "XTCP_SIM_SEED";
/// Environment variable overriding how many seeds [`seeds_from_env`] yields.
pub const SEEDS_VAR: &str = "XTCP_SIM_SEEDS";

/// Seeds `0..n`, where `n` is `XTCP_SIM_SEEDS` if set to a number, else
/// `default_count`. Use it to run a matrix with a few seeds by default and
/// `XTCP_SIM_SEEDS=1000 cargo test …` on demand.
pub fn seeds_from_env(default_count: u64) -> std::ops::Range<u64> {
    let n = std::env::var(SEEDS_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(default_count);
    0..n
}

/// Runs `f(seed)` for each seed (or only for `XTCP_SIM_SEED`, if set), and
/// panics on the first failure — an `Err` or a panic inside `f` — with a
/// message naming `name`, the seed, the error and the replay command
/// `XTCP_SIM_SEED=<seed> cargo test <name>`.
///
/// Pass the test function's name as `name` so the replay command selects it.
///
/// # Panics
/// On the first failing seed, or if `XTCP_SIM_SEED` is set but not a `u64`.
pub fn check_seeds<I, F>(name: &str, seeds: I, f: F)
where
    I: IntoIterator<Item = u64>,
    F: Fn(u64) -> Result<(), String>,
{
    if let Ok(v) = std::env::var(SEED_VAR) {
        let seed = match v.trim().parse::<u64>() {
            Ok(s) => s,
            Err(_) => panic!("{name}: {SEED_VAR}={v:?} is not a u64 seed"),
        };
        run_one(name, seed, &f);
        return;
    }
    for seed in seeds {
        run_one(name, seed, &f);
    }
}

fn run_one<F: Fn(u64) -> Result<(), String>>(name: &str, seed: u64, f: &F) {
    let err = match catch_unwind(AssertUnwindSafe(|| f(seed))) {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(payload) => {
            let msg = if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else {
                "(non-string panic payload)".to_string()
            };
            format!("panicked: {msg}")
        }
    };
    panic!("{name}: seed {seed} failed: {err}\n  replay: {SEED_VAR}={seed} cargo test {name}");
}
