//! Helpers shared by the CLI tests (`cli`, `cli_transfer`): a child's stderr
//! line by line, and a bounded wait for a line.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::Child;
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
