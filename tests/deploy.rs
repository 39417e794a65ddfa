//! The deployment files (`deploy/`): the sample configuration passes
//! `--check-config`, and the systemd unit passes `systemd-analyze verify`
//! (skipped, loudly, where `systemd-analyze` is absent outside CI; `.ci/run`
//! installs it).

use std::process::Command;

const RELAY: &str = env!("CARGO_BIN_EXE_xtcp-relay");

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn sample_relay_toml_passes_check_config() {
    let out = Command::new(RELAY)
        .args(["--config"])
        .arg(root().join("deploy/relay.toml"))
        .arg("--check-config")
        .output()
        .expect("run xtcp-relay");
    assert!(
        out.status.success(),
        "deploy/relay.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_broken_sample_is_refused_with_the_key_named() {
    let text = std::fs::read_to_string(root().join("deploy/relay.toml")).expect("sample");
    let bad = text.replace("lockout_secs = 300.0", "lockout_secs = 1e19");
    assert_ne!(bad, text, "the sample sets lockout_secs");
    let dir = std::env::temp_dir().join(format!("xtcp-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("relay.toml");
    std::fs::write(&p, bad).expect("write");
    let out = Command::new(RELAY)
        .arg("--config")
        .arg(&p)
        .arg("--check-config")
        .output()
        .expect("run xtcp-relay");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lockout_secs"));
}

#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze missing in CI (.ci/run installs systemd)"
        );
        eprintln!("SKIPPED: systemd-analyze not installed");
        return;
    }
    // The unit names the installed binary; verify it against the built one.
    let unit = std::fs::read_to_string(root().join("deploy/xtcp-relay.service")).expect("unit");
    let unit = unit.replace("/usr/local/bin/xtcp-relay", RELAY);
    let dir = std::env::temp_dir().join(format!("xtcp-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("xtcp-relay.service");
    std::fs::write(&p, unit).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&p)
        .output()
        .expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(
        !err.contains("xtcp-relay.service:"),
        "warnings about the unit: {err}"
    );
}
