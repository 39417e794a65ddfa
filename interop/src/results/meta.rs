//! Run metadata: what ran, where and when (`meta.json`, and on every row).

use super::RunOpts;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Versions, commit, kernel, date, seed, mode.
#[derive(Clone, Debug)]
pub struct Meta {
    /// `xtcp --version` of the program the sets ran, if found.
    pub xtcp_version: String,
    /// This crate's version.
    pub lab_version: String,
    /// `git rev-parse HEAD` of the current directory's repository, with
    /// `-dirty` when the work tree has changes; `unknown` outside one.
    pub git_commit: String,
    /// `uname -r`.
    pub kernel: String,
    /// When the run started, UTC, RFC 3339 to the second.
    pub date_utc: String,
    pub seed: u64,
    pub quick: bool,
    pub sets: Vec<String>,
    pub cores: usize,
    /// `--pin` (set `loss`).
    pub pin: bool,
    /// `/proc/loadavg`'s 1, 5 and 15 minute load at the start: the machine
    /// may be shared, and the figures move with it.
    pub loadavg: String,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl Meta {
    /// Gather the metadata of this run (`xtcp` is the program the sets use).
    pub fn collect(opts: &RunOpts, xtcp: Option<&Path>) -> Meta {
        let xtcp_version = xtcp
            .and_then(|p| output(Command::new(p).arg("--version")))
            .unwrap_or_else(|| "unknown (xtcp not found)".into());
        let git = output(Command::new("git").args(["rev-parse", "HEAD"]));
        let dirty =
            output(Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]))
                .is_some_and(|s| !s.is_empty());
        let git_commit = match git {
            Some(c) if dirty => format!("{c}-dirty"),
            Some(c) => c,
            None => "unknown".into(),
        };
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Meta {
            xtcp_version,
            lab_version: env!("CARGO_PKG_VERSION").into(),
            git_commit,
            kernel,
            date_utc: rfc3339(now),
            seed: opts.seed,
            quick: opts.quick,
            sets: opts.sets.clone(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin: opts.pin,
            loadavg: loadavg(),
        }
    }

    /// The columns every row carries.
    pub fn row_fields(&self) -> Vec<(String, Value)> {
        [
            ("xtcp_version", json!(self.xtcp_version)),
            ("git_commit", json!(self.git_commit)),
            ("kernel", json!(self.kernel)),
            ("date_utc", json!(self.date_utc)),
            ("seed", json!(self.seed)),
            ("quick", json!(self.quick)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "xtcp_version": self.xtcp_version,
            "xtcp_lab_version": self.lab_version,
            "git_commit": self.git_commit,
            "kernel": self.kernel,
            "date_utc": self.date_utc,
            "seed": self.seed,
            "quick": self.quick,
            "mode": if self.quick { "quick" } else { "full" },
            "sets": self.sets,
            "cores": self.cores,
            "pinned": self.pin,
            "loadavg_start": self.loadavg,
        })
    }

    /// Write `meta.json`: the metadata plus each set's seconds and failures.
    pub fn write(
        &self,
        dir: &Path,
        timings: &[(String, f64)],
        failed: &[String],
    ) -> Result<PathBuf, String> {
        let mut v = self.to_json();
        v["set_seconds"] = timings
            .iter()
            .map(|(s, t)| (s.clone(), json!((t * 10.0).round() / 10.0)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        v["failed"] = json!(failed);
        v["loadavg_end"] = json!(loadavg());
        let p = dir.join("meta.json");
        let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        std::fs::write(&p, text + "\n").map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_256_000 + 3_723), "2026-12-03T01:02:03Z");
    }
}
