//! Packaging checks, run by `cargo test` (issue 13, items 4 and 5):
//!
//! - one true `rust-version`: every workspace member inherits the same one, and
//!   no package in the resolved graph (`Cargo.lock`) declares a higher one;
//! - the crates package: `cargo package --workspace` (path dependencies carry
//!   versions, licence files and readmes are in every package);
//! - the library builds alone: `cargo check --lib --no-default-features`, and its
//!   dependency tree has none of the binaries' or the relay server's crates.
//!
//! The nested cargo commands use their own target directories under `target/`
//! (the outer `cargo test` holds the lock on its own), and run `--offline` first:
//! after the build, everything they need is in the local registry cache.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(ROOT).args(args);
    c
}

fn run(args: &[&str]) -> Output {
    let out = cargo(args)
        .output()
        .unwrap_or_else(|e| panic!("cargo {args:?}: {e}"));
    eprintln!("cargo {}: {}", args.join(" "), out.status);
    out
}

/// `args` with `--offline` first, then with the network if that failed.
fn run_offline_first(args: &[&str]) -> Output {
    let mut offline = args.to_vec();
    offline.push("--offline");
    let out = run(&offline);
    if out.status.success() {
        return out;
    }
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    run(args)
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn target_dir(name: &str) -> PathBuf {
    Path::new(ROOT).join("target").join(name)
}

/// "1.88" or "1.85.0" as (1, 88, 0).
fn version(v: &str) -> (u64, u64, u64) {
    let mut it = v.split('.').map(|p| {
        p.parse::<u64>()
            .unwrap_or_else(|_| panic!("rust-version {v:?}"))
    });
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

fn host_triple() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().expect("rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV: no host line")
        .to_string()
}

fn metadata() -> serde_json::Value {
    let args = ["metadata", "--format-version", "1", "--all-features"];
    let mut out = run_offline_first(&args);
    if !out.status.success() {
        // No network and the other platforms' crates never downloaded: the
        // host's graph (what `cargo test` fetched) still has every crate built here.
        let host = host_triple();
        out = run(&[&args[..], &["--offline", "--filter-platform", &host]].concat());
    }
    assert_ok("cargo metadata", &out);
    serde_json::from_slice(&out.stdout).expect("cargo metadata: JSON")
}

fn s<'a>(v: &'a serde_json::Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(|x| x.as_str())
}

#[test]
fn one_rust_version_and_no_dependency_needs_a_newer_one() {
    let m = metadata();
    let packages = m["packages"].as_array().expect("packages");
    let by_id = |id: &str| {
        packages
            .iter()
            .find(|p| s(p, "id") == Some(id))
            .unwrap_or_else(|| panic!("package {id}"))
    };
    let members: Vec<&serde_json::Value> = m["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .map(|id| by_id(id.as_str().expect("member id")))
        .collect();
    assert!(members.len() >= 4, "workspace members: {}", members.len());

    let msrv = s(members[0], "rust_version").expect("the root crate declares rust-version");
    for p in &members {
        let name = s(p, "name").unwrap_or("?");
        assert_eq!(
            s(p, "rust_version"),
            Some(msrv),
            "{name}: rust-version must be the workspace's (rust-version.workspace = true)"
        );
        for k in ["edition", "license"] {
            assert_eq!(s(p, k), s(members[0], k), "{name}: {k} differs");
        }
        // Publishable members: every path dependency (not dev: cargo package
        // drops path-only dev-dependencies) carries a version.
        let publish = &p["publish"];
        if publish.as_array().is_some_and(|a| a.is_empty()) {
            continue;
        }
        for d in p["dependencies"].as_array().expect("dependencies") {
            if d.get("path").is_some() && s(d, "kind") != Some("dev") {
                assert_ne!(
                    s(d, "req"),
                    Some("*"),
                    "{name}: path dependency {} has no version",
                    s(d, "name").unwrap_or("?")
                );
            }
        }
    }

    let resolved = m["resolve"]["nodes"].as_array().expect("resolve.nodes");
    let mut too_new = Vec::new();
    let mut highest = ("", "0");
    for n in resolved {
        let p = by_id(s(n, "id").expect("node id"));
        if let Some(rv) = s(p, "rust_version") {
            if version(rv) > version(msrv) {
                too_new.push(format!(
                    "{} {}: {rv}",
                    s(p, "name").unwrap_or("?"),
                    s(p, "version").unwrap_or("?")
                ));
            }
            if version(rv) > version(highest.1) {
                highest = (s(p, "name").unwrap_or("?"), rv);
            }
        }
    }
    eprintln!(
        "rust-version {msrv}; {} resolved packages, highest declared: {} {}",
        resolved.len(),
        highest.0,
        highest.1
    );
    assert!(
        too_new.is_empty(),
        "dependencies need a newer Rust than rust-version = {msrv}: raise it or pin them:\n{}",
        too_new.join("\n")
    );
}

#[test]
fn every_crate_packages_with_its_licences() {
    let td = target_dir("package-check");
    let td = td.to_str().expect("utf-8 path");
    let out = run_offline_first(&[
        "package",
        "--workspace",
        "--no-verify",
        "--allow-dirty",
        "--target-dir",
        td,
    ]);
    assert_ok("cargo package --workspace", &out);
    for (name, dir) in [
        ("xtcp", "."),
        ("xtcp-proto", "proto"),
        ("xtcp-sim", "sim"),
        ("xtcp-lab", "interop"),
    ] {
        let out = run_offline_first(&["package", "--list", "--allow-dirty", "-p", name]);
        assert_ok("cargo package --list", &out);
        let files = String::from_utf8_lossy(&out.stdout);
        for f in ["LICENSE-MIT", "LICENSE-APACHE", "Cargo.toml"] {
            assert!(
                files.lines().any(|l| l == f),
                "{name}: {f} not in the package:\n{files}"
            );
            let a = std::fs::read(Path::new(ROOT).join(dir).join(f));
            let b = std::fs::read(Path::new(ROOT).join(f));
            if f != "Cargo.toml" {
                assert_eq!(a.ok(), b.ok(), "{dir}/{f} differs from the root's");
            }
        }
    }
}

#[test]
fn the_library_builds_alone() {
    let out = run_offline_first(&[
        "tree",
        "-e",
        "normal",
        "--no-default-features",
        "-p",
        "xtcp",
        "--prefix",
        "none",
    ]);
    assert_ok("cargo tree", &out);
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: std::collections::BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    eprintln!("library alone: {} crates", crates.len());
    for c in [
        "clap",
        "toml",
        "tracing-subscriber",
        "serde_json",
        "serde",
        "xtcp-sim",
    ] {
        assert!(
            !crates.contains(c),
            "{c} is in the library's tree without default features:\n{tree}"
        );
    }

    let td = target_dir("lib-only");
    let out = run_offline_first(&[
        "check",
        "--release",
        "--lib",
        "--no-default-features",
        "--target-dir",
        td.to_str().expect("utf-8 path"),
    ]);
    assert_ok("cargo check --lib --no-default-features", &out);
}
