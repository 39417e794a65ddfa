//! One million distinct failing sources against the relay's admission state
//! (spec/relay.md §9.2): the per-JOIN work a failing guess costs once its TLS
//! is done — guess-table admit, waiting-table lookup (a miss), failure count,
//! refusal aggregation — timed per JOIN, with the table's memory measured.
//!
//! ```sh
//! cargo bench --bench admission                      # 1,000,000 sources, capacity 2^18
//! cargo bench --bench admission -- --capacity 1048576 --sources 1000000
//! ```
//!
//! Sources are distinct IPv6 /64s (the worst case: each is a new key), from
//! 4 threads at once, so the shard locks are contended as under a real flood.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xtcp::relay::admission::{GuessRules, GuessTable, SourceKey, Verdict};
use xtcp::relay::refusals::{Refusal, Refusals};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn arg(name: &str, default: usize) -> usize {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let sources = arg("--sources", 1_000_000);
    let capacity = arg("--capacity", 1 << 18);
    let threads = 4;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    // Latency histograms, 100 ns buckets up to 10 ms, allocated before the baseline.
    const BUCKETS: usize = 100_000;
    let mut hists: Vec<Vec<u32>> = (0..threads).map(|_| vec![1u32; BUCKETS]).collect();
    for h in &mut hists {
        h.iter_mut().for_each(|b| *b = 0);
    }
    let base = rss_kib();
    let rules = GuessRules {
        threshold: 5,
        window: Duration::from_secs(300),
        interval: Duration::from_secs(1),
        queue: 4,
        capacity,
    };
    let table = GuessTable::new(rules, tokio::time::Instant::now());
    let refusals = Arc::new(Refusals::new(16_384));
    // A waiting table of 10,000 sessions for the lookups to miss in.
    let waiting: Arc<Mutex<HashMap<[u8; 16], ()>>> = Arc::new(Mutex::new(
        (0..10_000u32)
            .map(|i| {
                let mut k = [0xEEu8; 16];
                k[..4].copy_from_slice(&i.to_be_bytes());
                (k, ())
            })
            .collect(),
    ));
    let t0 = Instant::now();
    let per = sources / threads;
    let handles: Vec<_> = hists
        .into_iter()
        .enumerate()
        .map(|(t, mut hist)| {
            let (table, refusals, waiting) = (table.clone(), refusals.clone(), waiting.clone());
            std::thread::spawn(move || {
                for i in 0..per {
                    let n = (t * per + i) as u128;
                    let ip = Ipv6Addr::from((0x2001_0db8u128 << 96) | (n << 64) | 1);
                    let key = SourceKey::new(IpAddr::V6(ip), 32, 64);
                    let mut rid = [0u8; 16];
                    rid[..16].copy_from_slice(&(n ^ 0x5555).to_be_bytes());
                    let s = Instant::now();
                    let now = tokio::time::Instant::now();
                    let ticket = match table.admit(key, now) {
                        Verdict::Go(t) | Verdict::Wait(_, t) => Some(t),
                        Verdict::Refuse(_) => None,
                    };
                    let hit = waiting.lock().unwrap().remove(&rid).is_some();
                    if !hit {
                        table.fail(key, now);
                        refusals.record(key, Refusal::UnknownSession);
                    }
                    drop(ticket);
                    let b = (s.elapsed().as_nanos() / 100) as usize;
                    hist[b.min(BUCKETS - 1)] += 1;
                }
                hist
            })
        })
        .collect();
    let mut hist = vec![0u64; BUCKETS];
    for h in handles {
        for (a, b) in hist.iter_mut().zip(h.join().unwrap()) {
            *a += u64::from(b);
        }
    }
    let wall = t0.elapsed();
    let rss = rss_kib();
    let total: u64 = hist.iter().sum();
    let q = |p: f64| {
        let want = (total as f64 * p).ceil() as u64;
        let mut acc = 0;
        for (i, n) in hist.iter().enumerate() {
            acc += n;
            if acc >= want {
                return Duration::from_nanos((i as u64 + 1) * 100);
            }
        }
        Duration::from_millis(10)
    };
    println!(
        "{total} distinct failing sources (IPv6 /64s), {threads} threads, table capacity {capacity}:"
    );
    println!(
        "  per JOIN (admit + lookup + fail + aggregate): p50 <{:?}  p99 <{:?}  p99.9 <{:?}  max <{:?} (10 ms = overflow bucket)",
        q(0.5),
        q(0.99),
        q(0.999),
        q(1.0)
    );
    println!(
        "  {:.0} JOINs/s handled (table work only, no TLS); tracked sources {} (capacity {capacity}), evicted {}",
        total as f64 / wall.as_secs_f64(),
        table.len(),
        table.evicted()
    );
    println!(
        "  RSS growth {} KiB = {:.0} bytes per tracked source (nominal {} B/entry + map)",
        rss.saturating_sub(base),
        rss.saturating_sub(base) as f64 * 1024.0 / table.len().max(1) as f64,
        GuessTable::BYTES_PER_ENTRY
    );
    assert!(q(0.99) < Duration::from_millis(1), "p99 below 1 ms");
    assert!(table.len() <= capacity + 16, "bounded");
}
