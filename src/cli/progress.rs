//! A progress line on stderr: bytes, rate and, when the size is known, the
//! share done and the time left. On a terminal one line is redrawn (`\r`)
//! four times a second; otherwise a line is printed every 5 s (logs, pipes).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Byte counters a copy loop adds to and the progress task reads.
#[derive(Clone, Default)]
pub struct Counters {
    /// Bytes sent to the peer.
    pub sent: Arc<AtomicU64>,
    /// Bytes received from the peer.
    pub received: Arc<AtomicU64>,
}

/// A running progress line; [`Progress::finish`] prints the last state.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    line: Arc<Line>,
}

struct Line {
    counters: Counters,
    /// The bytes expected in the counted direction (`send` / `receive`).
    total: Option<u64>,
    /// Bytes already done before this run (a resumed transfer).
    base: u64,
    started: Instant,
    tty: bool,
}

/// `512 B`, `3.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn duration(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// `sent 12.0 MiB, received 3.0 MiB, 95.1 MiB/s` or, with a total,
/// `received 12.0 MiB / 64.0 MiB (18 %), 95.1 MiB/s, 0:00:01 left`.
pub fn render(sent: u64, received: u64, total: Option<u64>, base: u64, secs: f64) -> String {
    let rate = (sent + received) as f64 / secs.max(1e-3);
    match total {
        Some(t) => {
            let (verb, moved) = if sent > 0 {
                ("sent", sent)
            } else {
                ("received", received)
            };
            let done = base + moved;
            let pct = done.saturating_mul(100).checked_div(t).unwrap_or(100);
            let left = t.saturating_sub(done);
            let eta = if left == 0 {
                "none".into()
            } else if rate > 0.0 {
                duration(left as f64 / rate)
            } else {
                "?".into()
            };
            format!(
                "{verb} {} / {} ({pct} %), {}/s, {eta} left",
                bytes(done),
                bytes(t),
                bytes(rate as u64)
            )
        }
        None => format!(
            "sent {}, received {}, {}/s",
            bytes(sent),
            bytes(received),
            bytes(rate as u64)
        ),
    }
}

impl Line {
    fn text(&self) -> String {
        render(
            self.counters.sent.load(Ordering::Relaxed),
            self.counters.received.load(Ordering::Relaxed),
            self.total,
            self.base,
            self.started.elapsed().as_secs_f64(),
        )
    }
    fn print(&self, last: bool) {
        let mut e = std::io::stderr().lock();
        let _ = if self.tty {
            // Clear to the end of the line: the new text may be shorter.
            write!(e, "\r{}\x1b[K{}", self.text(), if last { "\n" } else { "" })
        } else {
            writeln!(e, "progress: {}", self.text())
        };
        let _ = e.flush();
    }
}

impl Progress {
    /// Start printing for `counters` (`total`: the size of a one-way transfer
    /// of which `base` bytes were done by an earlier run).
    pub fn start(counters: Counters, total: Option<u64>, base: u64) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let line = Arc::new(Line {
            counters,
            total,
            base,
            started: Instant::now(),
            tty,
        });
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        let l = line.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                l.print(false);
            }
        });
        Progress { task, line }
    }

    /// Stop and print the final figures once.
    pub fn finish(self) {
        self.task.abort();
        self.line.print(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(
            render(3 << 20, 1024, None, 0, 1.0),
            "sent 3.0 MiB, received 1.0 KiB, 3.0 MiB/s"
        );
        assert_eq!(
            render(0, 16 << 20, Some(64 << 20), 16 << 20, 2.0),
            "received 32.0 MiB / 64.0 MiB (50 %), 8.0 MiB/s, 0:04 left"
        );
        assert_eq!(duration(3725.0), "1:02:05");
        assert_eq!(bytes(512), "512 B");
    }
}
