//! Lossless bulk transfer through two XTCP state machines in memory: no I/O,
//! no simulator, just `poll_transmit` → `handle_datagram` both ways. The figure
//! is payload bytes per second of one core (the loop is single-threaded).
//!
//! `cargo bench --bench bulk`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use xtcp::proto::xtcp::conn::{Config, ConnectionParams};
use xtcp::proto::{Connection, Instant, SeqNumber, State};

const TOTAL: usize = 64 << 20;

fn params(remote: SocketAddr, iss: u32) -> ConnectionParams {
    ConnectionParams {
        conn_id: 42,
        iss: SeqNumber(iss),
        ts_offset: 7,
        local_port: 1,
        remote_port: 2,
        remote,
        path_secret: [7; 32],
    }
}

/// Move `total` bytes from a to b; returns bytes received.
pub fn transfer(total: usize) -> usize {
    let a_addr: SocketAddr = "192.0.2.1:1".parse().unwrap();
    let b_addr: SocketAddr = "192.0.2.2:2".parse().unwrap();
    let cfg = Arc::new(Config {
        // An in-memory "link" with no delay: pacing has nothing to pace.
        pacing: false,
        ..Config::default()
    });
    let mut now = Instant::ZERO;
    let mut a = Connection::connect(cfg.clone(), now, params(b_addr, 1));
    let mut b = Connection::listen(cfg, now, params(a_addr, 99));
    let chunk = vec![0x5au8; 256 << 10];
    let mut written = 0usize;
    let mut received = 0usize;
    let mut buf = vec![0u8; 2048];
    let mut rbuf = vec![0u8; 256 << 10];
    let mut idle = 0;
    while received < total && idle < 1000 {
        let mut progressed = false;
        while written < total {
            let n = (total - written).min(chunk.len());
            match a.write(&chunk[..n]) {
                Ok(k) => written += k,
                Err(_) => break,
            }
        }
        while let Some(t) = a.poll_transmit(now, &mut buf) {
            let _ = b.handle_datagram(now, a_addr, &buf[..t.size]);
            progressed = true;
        }
        while let Ok(n) = b.read(&mut rbuf) {
            if n == 0 {
                break;
            }
            received += n;
        }
        while let Some(t) = b.poll_transmit(now, &mut buf) {
            let _ = a.handle_datagram(now, b_addr, &buf[..t.size]);
            progressed = true;
        }
        now += Duration::from_micros(20);
        if let Some(t) = a.poll_timeout() {
            if t <= now {
                a.handle_timeout(now);
            }
        }
        if let Some(t) = b.poll_timeout() {
            if t <= now {
                b.handle_timeout(now);
            }
        }
        idle = if progressed { 0 } else { idle + 1 };
    }
    assert_eq!(a.state(), State::Established);
    received
}

fn bulk(c: &mut Criterion) {
    let mut g = c.benchmark_group("xtcp_in_memory");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(10);
    g.bench_function("bulk_64MiB", |bench| {
        bench.iter(|| {
            let n = transfer(TOTAL);
            assert_eq!(n, TOTAL);
        })
    });
    g.finish();
}

criterion_group!(benches, bulk);
criterion_main!(benches);
