//! `xtcp-lab readme`: the README's results block, made from the results
//! folder's JSON (never typed by hand).
//!
//! The block sits between [`BEGIN`] and [`END`]; everything else in the
//! README is left as it is. Without the markers the block goes before
//! `## Working on it` (or at the end). `goodput_vs_loss.svg` is copied to
//! `docs/img/` next to the README, which the block shows as an image. The
//! output depends only on the results folder, so running it twice gives the
//! same README.

use super::table::read;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::Path;

pub const BEGIN: &str = "<!-- results:begin -->";
pub const END: &str = "<!-- results:end -->";
/// Where the goodput figure is copied, relative to the README.
pub const IMAGE: &str = "docs/img/goodput_vs_loss.svg";

type Obj = Map<String, Value>;

fn f(r: &Obj, k: &str) -> Option<f64> {
    r.get(k).and_then(Value::as_f64)
}

fn s(r: &Obj, k: &str) -> String {
    match r.get(k) {
        Some(Value::String(x)) => x.replace('|', "\\|"),
        Some(Value::Null) | None => "-".into(),
        Some(v) => v.to_string(),
    }
}

/// A number with `d` decimals, `-` when absent.
fn n(r: &Obj, k: &str, d: usize) -> String {
    f(r, k).map_or("-".into(), |x| format!("{x:.d$}"))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    (!v.is_empty()).then(|| super::median(&mut v))
}

/// The goodput table: per loss level, the median of each case.
fn loss_section(out: &mut String, rows: &[Obj]) {
    let mut levels: Vec<f64> = rows.iter().filter_map(|r| f(r, "loss_pct")).collect();
    levels.sort_by(f64::total_cmp);
    levels.dedup();
    let pick = |case: &str, l: f64, k: &str| {
        median(
            rows.iter()
                .filter(|r| s(r, "case") == case && f(r, "loss_pct") == Some(l))
                .filter(|r| r.get("verified") == Some(&Value::Bool(true)))
                .filter_map(|r| f(r, k))
                .collect(),
        )
    };
    let runs = rows
        .iter()
        .filter_map(|r| r.get("run").and_then(Value::as_u64))
        .max()
        .map_or(0, |m| m + 1);
    let mib = rows
        .iter()
        .filter_map(|r| r.get("bytes").and_then(Value::as_u64))
        .max()
        .unwrap_or(0)
        >> 20;
    let pinned = rows
        .iter()
        .any(|r| r.get("pinned") == Some(&Value::Bool(true)));
    let placed = if pinned {
        "sender on core 0, receiver on core 1"
    } else {
        "threads placed by the scheduler"
    };
    let _ = writeln!(
        out,
        "Goodput against random loss (`loss`: veth between two namespaces, nftables drops at the receiver; {mib} MiB per run, median of {runs}, {placed}; every run byte-exact):\n"
    );
    out.push_str("| loss | XTCP (`xtcp --no-tls`, CUBIC) Mbit/s | kernel TCP CUBIC Mbit/s | XTCP / TCP | measured drop (XTCP / TCP) |\n|---:|---:|---:|---:|---:|\n");
    let num = |v: Option<f64>, d: usize| v.map_or("-".into(), |x| format!("{x:.d$}"));
    for l in levels {
        let (x, t) = (
            pick("xtcp", l, "goodput_mbit"),
            pick("tcp-cubic", l, "goodput_mbit"),
        );
        let ratio = x.zip(t).map(|(x, t)| x / t);
        let _ = writeln!(
            out,
            "| {l} % | {} | {} | {} | {} / {} % |",
            num(x, 0),
            num(t, 0),
            num(ratio, 2),
            num(pick("xtcp", l, "measured_drop_pct"), 2),
            num(pick("tcp-cubic", l, "measured_drop_pct"), 2),
        );
    }
    let _ = writeln!(
        out,
        "\n![Goodput vs loss: XTCP and kernel TCP CUBIC]({IMAGE})\n"
    );
}

fn matrix_section(out: &mut String, rows: &[Obj]) {
    out.push_str("NAT matrix (`matrix`: `xtcp host` / `xtcp join` through the NAT lab, UDP window 1 s):\n\n| A | B | path | time to direct (ms) | bytes verified |\n|---|---|---|---:|---|\n");
    for r in rows {
        let b = s(r, "site_b")
            + if r.get("port_prediction") == Some(&Value::Bool(true)) {
                " +port prediction"
            } else {
                ""
            };
        let _ = writeln!(
            out,
            "| {} | {b} | {} | {} | {} |",
            s(r, "site_a"),
            s(r, "path"),
            n(r, "time_to_direct_ms", 1),
            s(r, "verified")
        );
    }
    out.push('\n');
}

fn rtt_section(out: &mut String, rows: &[Obj]) {
    out.push_str("Pairing → direct with 20 ms one way through the lab's internet (`rtt`):\n\n| cell | UDP window (s) | path | to direct (ms) | RTT (ms) | RTTs beyond the window |\n|---|---:|---|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            s(r, "scenario"),
            s(r, "udp_after_s"),
            s(r, "path"),
            n(r, "time_to_direct_ms", 1),
            n(r, "rtt_ms", 1),
            n(r, "rtts_beyond_window", 1)
        );
    }
    out.push('\n');
}

fn cwnd_section(out: &mut String, rows: &[Obj]) {
    out.push_str("Simulated transfers (`cwnd`; the cwnd trace is `cwnd.svg` / `cwnd_trace.csv` in the results folder):\n\n| scenario | algorithm | MiB | loss % | goodput Mbit/s | max cwnd (B) | recoveries |\n|---|---|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let mib = r.get("bytes").and_then(Value::as_u64).unwrap_or(0) as f64 / f64::from(1 << 20);
        let _ = writeln!(
            out,
            "| {} | {} | {mib} | {} | {} | {} | {} |",
            s(r, "scenario"),
            s(r, "algorithm"),
            s(r, "loss_pct"),
            n(r, "goodput_mbit", 1),
            s(r, "max_cwnd_bytes"),
            s(r, "recovery_episodes")
        );
    }
    out.push('\n');
}

fn interop_section(out: &mut String, rows: &[Obj]) {
    out.push_str("Kernel TCP against the `xtcp` program through the TUN bridge (`interop`), both directions at once:\n\n| case | MiB each way | verified | seconds | MSS / window violations | retransmits kernel / XTCP |\n|---|---:|---|---:|---:|---:|\n");
    for r in rows {
        let mib = r.get("bytes_each_way").and_then(Value::as_u64).unwrap_or(0) >> 20;
        let _ = writeln!(
            out,
            "| {} | {mib} | {} | {} | {} / {} | {} / {} |",
            s(r, "scenario"),
            s(r, "verified"),
            n(r, "seconds", 2),
            s(r, "mss_violations"),
            s(r, "window_violations"),
            s(r, "kernel_retransmits"),
            s(r, "xtcp_retransmits")
        );
    }
    out.push('\n');
}

/// The block (markers included) for the results in `dir`.
pub fn block(dir: &Path) -> Result<String, String> {
    let mut out = format!("{BEGIN}\n<!-- generated by `xtcp-lab readme` from the results folder's JSON files; edit the generator (interop/src/results/readme.rs), not this block -->\n");
    let mut any = false;
    let mut meta_line = None;
    type Section = fn(&mut String, &[Obj]);
    let sections: [(&str, Section); 5] = [
        ("loss", loss_section),
        ("matrix", matrix_section),
        ("rtt", rtt_section),
        ("cwnd", cwnd_section),
        ("interop", interop_section),
    ];
    let mut body = String::new();
    for (set, section) in sections {
        if !dir.join(format!("{set}.json")).exists() {
            continue;
        }
        let (meta, rows) = read(dir, set)?;
        if meta_line.is_none() {
            let m = |k: &str| {
                meta.get(k).map_or("?".into(), |v| {
                    v.as_str().map_or(v.to_string(), str::to_owned)
                })
            };
            meta_line = Some(format!(
                "Generated from `xtcp-lab run` in **{} mode** on {} (kernel {}, commit `{}`, {}, seed {}, {} cores, load average {} at the start).",
                m("mode"),
                m("date_utc"),
                m("kernel"),
                m("git_commit").chars().take(12).collect::<String>(),
                m("xtcp_version"),
                m("seed"),
                m("cores"),
                m("loadavg_start"),
            ));
        }
        section(&mut body, &rows);
        any = true;
    }
    if !any {
        return Err(format!("{}: no <set>.json files", dir.display()));
    }
    let _ = writeln!(out, "{}\n", meta_line.unwrap_or_default());
    out += &body;
    out += END;
    Ok(out)
}

/// Regenerate the block in `readme` from `results` (and copy the goodput
/// figure next to it); returns the block.
pub fn readme(results: &Path, readme: &Path) -> Result<String, String> {
    let block = block(results)?;
    let svg = results.join("goodput_vs_loss.svg");
    if svg.exists() {
        let dest = readme.parent().unwrap_or(Path::new(".")).join(IMAGE);
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::copy(&svg, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    let text = std::fs::read_to_string(readme).map_err(|e| format!("{}: {e}", readme.display()))?;
    let new = match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &text[..a], &text[b + END.len()..]),
        (None, None) => match text.find("\n## Working on it") {
            Some(i) => format!("{}\n{block}\n{}", &text[..i], &text[i..]),
            None => format!("{}\n{block}\n", text.trim_end()),
        },
        _ => return Err(format!("{}: unbalanced results markers", readme.display())),
    };
    if new != text {
        std::fs::write(readme, new).map_err(|e| format!("{}: {e}", readme.display()))?;
    }
    Ok(block)
}
