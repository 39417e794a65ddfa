//! `xtcp-lab`: run named scenario sets and write a results folder; make the
//! README's results block from it. See `xtcp_lab::results` for what each set
//! runs and writes.
//!
//! ```sh
//! cargo build --release --bins          # xtcp, xtcp-relay and xtcp-lab in target/release
//! sudo target/release/xtcp-lab run --set matrix,rtt,loss,interop,cwnd --out results/ [--seed N] [--quick]
//! target/release/xtcp-lab readme --results results/ --readme README.md
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use xtcp_lab::results::{self, RunOpts, SETS};

const USAGE: &str = "usage:
  xtcp-lab run --set SET[,SET…] --out DIR [--seed N] [--quick] [--pin] [--xtcp PATH] [--relay-bin PATH]
  xtcp-lab readme --results DIR --readme README.md

sets: matrix, rtt, loss, interop, cwnd (or all)
  --quick        small sizes and fewer cells (a few minutes in all); default: full (≤ 15 min on 2 cores)
  --pin          loss: sender on core 0, receiver on core 1 (default: the scheduler's choice)
  --xtcp PATH    the xtcp program (else $XTCP_BIN, else next to xtcp-lab)
  --relay-bin P  the xtcp-relay program (else $XTCP_RELAY_BIN, else next to xtcp-lab)
Needs root for every set but cwnd (network namespaces, nftables, iptables for rtt).";

fn parse_run(args: &[String]) -> Result<RunOpts, String> {
    let mut o = RunOpts {
        sets: Vec::new(),
        out: PathBuf::from("results"),
        seed: 1,
        quick: false,
        xtcp: None,
        relay: None,
        pin: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--set" => {
                for s in val()?.split(',').filter(|s| !s.is_empty()) {
                    if s == "all" {
                        o.sets.extend(SETS.iter().map(|s| s.to_string()));
                    } else {
                        o.sets.push(s.to_owned());
                    }
                }
            }
            "--out" => o.out = PathBuf::from(val()?),
            "--seed" => {
                let v = val()?;
                o.seed = v
                    .parse()
                    .map_err(|_| format!("--seed {v:?}: not a number"))?;
            }
            "--quick" => o.quick = true,
            "--pin" => o.pin = true,
            "--xtcp" => o.xtcp = Some(PathBuf::from(val()?)),
            "--relay-bin" => o.relay = Some(PathBuf::from(val()?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.sets.is_empty() {
        return Err("--set is required".into());
    }
    Ok(o)
}

fn parse_readme(args: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let (mut results, mut readme) = (PathBuf::from("results"), PathBuf::from("README.md"));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--results" => results = PathBuf::from(v),
            "--readme" => readme = PathBuf::from(v),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((results, readme))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("run") => parse_run(&args[1..]).and_then(|o| {
            let files = results::run(&o);
            // List what was written, failed sets or not.
            let mut listed = Vec::new();
            collect(&o.out, &mut listed);
            listed.sort();
            println!("results in {}:", o.out.display());
            for (p, len) in listed {
                println!("  {:>10}  {}", len, p.display());
            }
            files.map(|_| ())
        }),
        Some("readme") => parse_readme(&args[1..])
            .and_then(|(r, m)| results::readme(&r, &m))
            .map(|b| println!("{b}")),
        _ => Err(USAGE.into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtcp-lab: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every file under `dir` with its size.
fn collect(dir: &std::path::Path, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.metadata() {
            Ok(m) if m.is_dir() => collect(&p, out),
            Ok(m) => out.push((p, m.len())),
            Err(_) => {}
        }
    }
}
