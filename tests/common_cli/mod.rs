//! Helpers shared by the tests that drive the binaries (`cli`,
//! `cli_transfer`, `fleet`, `relay_resume`): a child's stderr line by line,
//! bounded waits, a scratch directory, a fresh operator token.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Forward a child's stderr lines to a channel.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Wait (bounded, 20 s) for a line containing `prefix`; returns the rest of
/// it. Every line seen is kept in `seen`.
pub fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if let Some(i) = l.find(prefix) {
                    return l[i + prefix.len()..].trim().to_string();
                }
            }
            Err(_) => panic!("no line containing {prefix:?}; saw {seen:?}"),
        }
    }
}

/// A scratch directory under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "xtcp-test-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&p).expect("create the scratch directory");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bounded wait (20 s) until `f` holds.
pub fn until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `xtcp-relay token` (the binary at `relay`): the token and the config
/// line that admits it.
pub fn new_token(relay: &str) -> (String, String) {
    let out = Command::new(relay)
        .arg("token")
        .output()
        .expect("run xtcp-relay token");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("a token line")
        .to_string();
    let line = text
        .lines()
        .find_map(|l| l.split_once("add to the relay config:").map(|x| x.1.trim()))
        .expect("a config line")
        .to_string();
    (token, line)
}
