//! # Results a researcher can use: `xtcp-lab run` and `xtcp-lab readme`
//!
//! `xtcp-lab run --set matrix,rtt,loss,interop,cwnd --out results/` runs
//! named scenario sets through the same code the tests use and writes one
//! folder:
//!
//! ```text
//! results/
//!   meta.json                      versions, git commit, kernel, date (UTC), seed, mode, sets
//!   <set>.json, <set>.csv          one row per scenario: parameters, measured values, run metadata
//!   matrix_time_to_direct.svg      pairing → direct path per NAT cell      (set matrix)
//!   goodput_vs_loss.svg            XTCP vs kernel TCP CUBIC over loss      (set loss)
//!   cwnd.svg, cwnd_trace.csv       simulated cwnd over time, CUBIC/NewReno (set cwnd)
//!   pcap/                          sim_xtcp.pcap (cwnd), the lab captures of one matrix cell
//! ```
//!
//! | set | what runs | code path |
//! |---|---|---|
//! | `matrix` | `xtcp host` / `xtcp join` across every pair of NAT kinds, firewalls, port prediction | [`crate::peers::run_cell_in`] (as `tests/nat_matrix.rs`) |
//! | `rtt` | the same with 20 ms one way through `inet` (NFQUEUE delay): time to direct in RTTs | [`crate::nat::Lab::delay`] (as `tests/nat_rtt.rs`) |
//! | `loss` | 2 namespaces on a veth, nftables random loss: `xtcp listen/connect --no-tls` vs kernel TCP CUBIC | [`crate::pair::Pair`] (as `benches/transport.rs`) |
//! | `interop` | a kernel TCP socket against `xtcp listen`/`connect` through the TUN bridge | [`crate::tun::Bridge`] (as `interop/tests/kernel.rs`) |
//! | `cwnd` | XTCP bulk transfer in the simulator, cwnd traced | `xtcp_sim::bulk::App` (as `sim/tests/xtcp.rs`) |
//!
//! The sets that run the real programs need `xtcp` (and `xtcp-relay` for
//! `matrix`/`rtt`): `--xtcp PATH` / `--relay-bin PATH`, else `XTCP_BIN` /
//! `XTCP_RELAY_BIN`, else the file of that name next to the `xtcp-lab`
//! executable (so `cargo build --release --bins` then
//! `target/release/xtcp-lab run …` finds them).
//!
//! Every loop is bounded in count and time; every namespace is created
//! here (198.18.0.0/15 only) and removed on drop. Root is required for all
//! sets but `cwnd`.

mod cwnd;
mod interop;
mod loss;
mod matrix;
mod meta;
mod plot;
mod readme;
mod table;

pub use meta::Meta;
pub use readme::{readme, BEGIN, END};
pub use table::{Row, Table};

use std::path::{Path, PathBuf};
use std::time::Instant;

/// The scenario sets, in the order they run.
pub const SETS: [&str; 5] = ["cwnd", "loss", "matrix", "rtt", "interop"];

/// What `xtcp-lab run` was asked for.
#[derive(Clone, Debug)]
pub struct RunOpts {
    /// Sets to run (names from [`SETS`]).
    pub sets: Vec<String>,
    /// The results folder.
    pub out: PathBuf,
    /// Seed of every random choice made here (simulator, payloads).
    pub seed: u64,
    /// Small sizes and fewer cells: the whole run in a few minutes.
    pub quick: bool,
    /// The `xtcp` program (sets `loss`, `matrix`, `rtt`, `interop`).
    pub xtcp: Option<PathBuf>,
    /// The `xtcp-relay` program (sets `matrix`, `rtt`).
    pub relay: Option<PathBuf>,
    /// Set `loss`: sender on core 0, receiver on core 1 (else the
    /// scheduler's choice).
    pub pin: bool,
}

/// Where a program is: the flag, else the environment variable, else next
/// to the running executable (or one level up, from `target/*/deps`).
pub fn find_program(flag: Option<&Path>, var: &str, name: &str) -> Result<PathBuf, String> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let cand = d.join(name);
        if cand.is_file() {
            return Ok(cand);
        }
        dir = d.parent();
    }
    Err(format!(
        "`{name}` not found next to {}: build it (`cargo build --release --bin {name}`) or give its path (flag or {var})",
        exe.display()
    ))
}

impl RunOpts {
    fn xtcp(&self) -> Result<PathBuf, String> {
        find_program(self.xtcp.as_deref(), "XTCP_BIN", "xtcp")
    }

    fn relay(&self) -> Result<PathBuf, String> {
        find_program(self.relay.as_deref(), "XTCP_RELAY_BIN", "xtcp-relay")
    }

    /// The `pcap/` folder of the results.
    fn pcap_dir(&self) -> PathBuf {
        self.out.join("pcap")
    }
}

/// What one set produced: its table and the other files it wrote.
pub struct SetOutput {
    pub table: Table,
    pub files: Vec<PathBuf>,
}

/// Run the sets and write the results folder; returns every file written.
/// A set that fails is reported in `meta.json` (and the error returned at
/// the end) after the others ran.
pub fn run(opts: &RunOpts) -> Result<Vec<PathBuf>, String> {
    for s in &opts.sets {
        if !SETS.contains(&s.as_str()) {
            return Err(format!("unknown set {s:?}; known: {}", SETS.join(", ")));
        }
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let xtcp = opts.xtcp().ok();
    let meta = Meta::collect(opts, xtcp.as_deref());
    let mut files = Vec::new();
    let mut failed = Vec::new();
    let mut timings = Vec::new();
    for set in SETS.iter().filter(|s| opts.sets.iter().any(|x| x == *s)) {
        let t0 = Instant::now();
        eprintln!("xtcp-lab: set {set} …");
        let r = match *set {
            "cwnd" => cwnd::run(opts),
            "loss" => loss::run(opts),
            "matrix" => matrix::run_matrix(opts),
            "rtt" => matrix::run_rtt(opts),
            _ => interop::run(opts),
        };
        let secs = t0.elapsed().as_secs_f64();
        match r.and_then(|o| {
            let mut written = o.table.write(&opts.out, &meta)?;
            written.extend(o.files);
            Ok(written)
        }) {
            Ok(w) => {
                eprintln!("xtcp-lab: set {set} done in {secs:.1} s");
                files.extend(w);
            }
            Err(e) => {
                eprintln!("xtcp-lab: set {set} FAILED after {secs:.1} s: {e}");
                failed.push(format!("{set}: {e}"));
            }
        }
        timings.push((set.to_string(), secs));
    }
    files.push(meta.write(&opts.out, &timings, &failed)?);
    files.sort();
    files.dedup();
    if failed.is_empty() {
        Ok(files)
    } else {
        Err(failed.join("\n"))
    }
}

/// Checks an exit condition of a bounded wait: `Err` once `deadline` passed.
pub(crate) fn check_deadline(deadline: Instant, what: &str) -> Result<(), String> {
    if Instant::now() > deadline {
        Err(format!("{what}: deadline passed"))
    } else {
        Ok(())
    }
}

/// Median of `v` (sorted in place); NaN for an empty slice.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
