//! `xtcp-lab run` and `xtcp-lab readme` end to end: the `cwnd` and `loss`
//! sets in `--quick` mode write a results folder whose files exist, parse,
//! agree with each other and name their series; `readme` makes the README
//! block from it, the same block on a second run.
//!
//! Needs root (the `loss` set builds network namespaces; fails loudly
//! without it, like every lab test) and the `xtcp` program: `XTCP_BIN`, or
//! `xtcp` next to `xtcp-lab` in the target directory, built here with cargo
//! when missing (`cargo test -p xtcp-lab` builds only this crate's binaries).
//!
//! Run: `cargo test --release -p xtcp-lab --test results -- --nocapture`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const LAB: &str = env!("CARGO_BIN_EXE_xtcp-lab");
const SEED: &str = "7";

/// The `xtcp` program the `loss` set runs.
fn xtcp_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XTCP_BIN") {
        return PathBuf::from(p);
    }
    let dir = Path::new(LAB).parent().expect("target dir");
    let bin = dir.join("xtcp");
    if !bin.is_file() {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "-p", "xtcp", "--bin", "xtcp"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let st = cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(st.success(), "cargo build --bin xtcp failed");
    }
    assert!(bin.is_file(), "no xtcp program at {}", bin.display());
    bin
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// `<set>.json` and `<set>.csv` agree: the CSV header is the JSON's columns,
/// one CSV line per JSON row, every row has every column and the run's
/// metadata. Returns the rows.
fn check_set(out: &Path, set: &str) -> Vec<serde_json::Map<String, Value>> {
    let v = json(&out.join(format!("{set}.json")));
    assert_eq!(v["set"], set);
    let cols: Vec<String> = v["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c.as_str().expect("column name").to_owned())
        .collect();
    let rows: Vec<_> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r.as_object().expect("row object").clone())
        .collect();
    assert!(!rows.is_empty(), "{set}: no rows");
    for meta in [
        "xtcp_version",
        "git_commit",
        "kernel",
        "date_utc",
        "seed",
        "quick",
    ] {
        assert!(cols.iter().any(|c| c == meta), "{set}: no column {meta}");
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    for r in &rows {
        assert_eq!(
            r.len(),
            cols.len(),
            "{set}: a row without every column: {r:?}"
        );
        assert_eq!(r["set"], set);
        assert_eq!(r["quick"], true);
        assert_eq!(r["seed"].to_string(), SEED);
        assert_eq!(r["kernel"], kernel.trim());
        let date = r["date_utc"].as_str().expect("date");
        assert!(
            date.len() == 20 && date.ends_with('Z') && date.as_bytes()[10] == b'T',
            "{date}"
        );
        assert!(
            r["xtcp_version"]
                .as_str()
                .is_some_and(|s| s.starts_with("xtcp ")),
            "{:?}",
            r["xtcp_version"]
        );
    }
    let csv = std::fs::read_to_string(out.join(format!("{set}.csv"))).expect("csv");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(cols.join(",").as_str()),
        "{set}.csv header"
    );
    assert_eq!(
        lines.count(),
        rows.len(),
        "{set}.csv: one line per JSON row"
    );
    rows
}

/// The SVG parses as XML, is an `<svg>`, and its text names every series.
fn check_svg(path: &Path, names: &[&str]) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("{}: not well-formed XML: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    for name in names {
        assert!(
            texts.iter().any(|t| t.trim() == *name),
            "{}: no series {name:?} among {texts:?}",
            path.display()
        );
    }
}

#[test]
fn run_cwnd_and_loss_quick_then_readme_twice() {
    xtcp_lab::require_root();
    let xtcp = xtcp_bin();
    let tmp = std::env::temp_dir().join(format!("xtcp-lab-results-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = tmp.join("results");
    let t0 = std::time::Instant::now();
    let run = Command::new(LAB)
        .args([
            "run",
            "--set",
            "cwnd,loss",
            "--quick",
            "--seed",
            SEED,
            "--out",
        ])
        .arg(&out)
        .arg("--xtcp")
        .arg(&xtcp)
        .output()
        .expect("run xtcp-lab");
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!(
        "xtcp-lab run: {:.1} s\n{stdout}\n{}",
        t0.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "xtcp-lab run failed");

    let files = [
        "meta.json",
        "cwnd.json",
        "cwnd.csv",
        "cwnd.svg",
        "cwnd_trace.csv",
        "loss.json",
        "loss.csv",
        "goodput_vs_loss.svg",
        "pcap/sim_xtcp.pcap",
    ];
    for f in files {
        let p = out.join(f);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} missing or empty", p.display());
        assert!(stdout.contains(f), "run's file list lacks {f}");
    }
    let pcap = std::fs::read(out.join("pcap/sim_xtcp.pcap")).unwrap();
    assert_eq!(pcap[..4], 0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");

    let meta = json(&out.join("meta.json"));
    assert_eq!(meta["mode"], "quick");
    assert_eq!(meta["failed"], serde_json::json!([]));
    assert_eq!(meta["sets"], serde_json::json!(["cwnd", "loss"]));

    let cwnd = check_set(&out, "cwnd");
    assert!(cwnd.iter().all(|r| r["verified"] == true), "cwnd: {cwnd:?}");
    let loss = check_set(&out, "loss");
    for case in ["xtcp", "tcp-cubic"] {
        for pct in [0.0, 0.5, 1.0, 2.0, 5.0] {
            let hit = loss
                .iter()
                .find(|r| r["case"] == case && r["loss_pct"] == pct);
            let r = hit.unwrap_or_else(|| panic!("loss: no row {case} at {pct} %"));
            assert_eq!(r["verified"], true, "{r:?}");
            assert!(r["goodput_mbit"].as_f64().is_some_and(|g| g > 0.0), "{r:?}");
        }
    }
    let trace = std::fs::read_to_string(out.join("cwnd_trace.csv")).unwrap();
    assert!(trace.starts_with("algorithm,time_ms,cwnd_bytes,ssthresh_bytes,in_recovery\n"));
    for alg in ["Cubic,", "NewReno,"] {
        assert!(
            trace.lines().filter(|l| l.starts_with(alg)).count() > 10,
            "trace of {alg}"
        );
    }

    check_svg(
        &out.join("goodput_vs_loss.svg"),
        &["XTCP (xtcp --no-tls, CUBIC)", "kernel TCP CUBIC"],
    );
    check_svg(&out.join("cwnd.svg"), &["XTCP Cubic", "XTCP NewReno"]);

    // The README block: made, then made again from the same files.
    let readme = tmp.join("README.md");
    let before = "# project\n\n## Figures\n| a | b |\n|---|---|\n\n## Working on it\n- tips\n";
    std::fs::write(&readme, before).unwrap();
    let gen = || {
        let o = Command::new(LAB)
            .args(["readme", "--results"])
            .arg(&out)
            .arg("--readme")
            .arg(&readme)
            .output()
            .expect("run xtcp-lab readme");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(&readme).unwrap()
    };
    let first = gen();
    let second = gen();
    assert_eq!(first, second, "readme is not idempotent");
    let (b, e) = (xtcp_lab::results::BEGIN, xtcp_lab::results::END);
    assert_eq!(first.matches(b).count(), 1);
    assert_eq!(first.matches(e).count(), 1);
    let (head, rest) = first.split_once(b).unwrap();
    let (block, tail) = rest.split_once(e).unwrap();
    assert!(
        before.starts_with(head.trim_end()),
        "text before the block changed"
    );
    assert!(
        tail.contains("## Working on it\n- tips"),
        "text after the block lost"
    );
    assert!(block.contains("![Goodput vs loss"), "{block}");
    assert!(block.contains("(docs/img/goodput_vs_loss.svg)"), "{block}");
    assert!(block.contains("**quick mode**"), "{block}");
    assert!(block.contains("| 5 % |"), "{block}");
    let copied = std::fs::read(tmp.join("docs/img/goodput_vs_loss.svg")).expect("copied figure");
    assert_eq!(
        copied,
        std::fs::read(out.join("goodput_vs_loss.svg")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
