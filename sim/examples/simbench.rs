//! Throughput of the simulator itself: events and simulated bytes per
//! second of wall time. `cargo run --release -p xtcp-sim --example simbench`
//!
//! A paced sender (1200-byte datagrams every 100 µs, 96 Mbit/s) towards a
//! receiver that acknowledges each with 64 bytes, over 100 Mbit/s links with
//! 10 ms delay, 1 ms jitter, 1% loss and a 64 KiB queue.

use proto::Instant;
use std::net::SocketAddr;
use std::time::Duration;
use xtcp_sim::{LinkConfig, LossModel, Node, Sim};

struct Pacer {
    peer: SocketAddr,
    next: Instant,
    end: Instant,
    acks: u64,
    pending_acks: u64,
    acker: bool,
}

impl Node for Pacer {
    fn handle_datagram(&mut self, _now: Instant, _f: SocketAddr, _t: SocketAddr, _d: &[u8]) {
        if self.acker {
            self.pending_acks += 1;
        } else {
            self.acks += 1;
        }
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        if self.pending_acks > 0 {
            self.pending_acks -= 1;
            buf[..64].fill(7);
            return Some((self.peer, 64));
        }
        if !self.acker && now >= self.next && now < self.end {
            self.next = now + Duration::from_micros(100);
            buf[..1200].fill(9);
            return Some((self.peer, 1200));
        }
        None
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        (!self.acker && self.next < self.end).then_some(self.next)
    }
}

fn main() {
    let secs = 60;
    let (a, b): (SocketAddr, SocketAddr) =
        ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
    let end = Instant::from_millis(secs * 1000);
    let mut sim = Sim::new(1);
    let ia = sim.add_node(
        a,
        Pacer {
            peer: b,
            next: Instant::ZERO,
            end,
            acks: 0,
            pending_acks: 0,
            acker: false,
        },
    );
    let ib = sim.add_node(
        b,
        Pacer {
            peer: a,
            next: Instant::ZERO,
            end,
            acks: 0,
            pending_acks: 0,
            acker: true,
        },
    );
    sim.set_links(
        ia,
        ib,
        LinkConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(1),
            bandwidth_bps: 100_000_000,
            queue_bytes: Some(64 * 1024),
            loss: LossModel::Bernoulli(0.01),
            ..LinkConfig::default()
        },
    );
    let t0 = std::time::Instant::now();
    let out = sim.run_until(end + Duration::from_secs(1), |_| false);
    let wall = t0.elapsed().as_secs_f64();
    let ev = sim.events_processed();
    let t = sim.totals();
    println!("{out:?}");
    println!(
        "{secs} s simulated in {wall:.3} s wall: {ev} events ({:.2} M events/s), {} datagrams delivered, {:.1} MiB moved ({:.0} MiB/s)",
        ev as f64 / wall / 1e6,
        t.delivered,
        t.bytes_delivered as f64 / (1 << 20) as f64,
        t.bytes_delivered as f64 / (1 << 20) as f64 / wall,
    );
    println!("acks received: {}", sim.node(ia).acks);
}
