//! `xtcp demo --sim`: an XTCP bulk transfer in both directions through the
//! deterministic simulator, with the figures a researcher wants to see.

use proto::xtcp::conn::{Config, Stats};
use proto::{ConnectionHandle, Endpoint, EndpointConfig, Instant, State};
use ring::digest;
use sim::{LinkConfig, LossModel, Node, Sim};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// One simulated host: an endpoint plus a sender of `to_send` bytes that
/// hashes everything it receives.
struct Host {
    ep: Endpoint,
    h: Option<ConnectionHandle>,
    peer: Option<SocketAddr>,
    to_send: Vec<u8>,
    written: usize,
    shut: bool,
    received: usize,
    hasher: Option<digest::Context>,
    digest: Option<Vec<u8>>,
    done_at: Option<Instant>,
}

impl Host {
    fn new(
        cfg: Config,
        local_port: u16,
        connect_to: Option<SocketAddr>,
        to_send: Vec<u8>,
        key: u8,
    ) -> Host {
        Host {
            ep: Endpoint::new(
                EndpointConfig {
                    conn: std::sync::Arc::new(cfg),
                    listen: connect_to.is_none(),
                    // The TCP header's ports match the UDP ones, as the runtime's do.
                    local_port,
                    ..EndpointConfig::default()
                },
                [key; 32],
            ),
            h: None,
            peer: connect_to,
            to_send,
            written: 0,
            shut: false,
            received: 0,
            hasher: Some(digest::Context::new(&digest::SHA256)),
            digest: None,
            done_at: None,
        }
    }

    fn pump(&mut self, now: Instant) {
        if let (None, Some(peer)) = (self.h, self.peer) {
            self.h = Some(self.ep.connect(now, peer));
        }
        if self.h.is_none() {
            self.h = self.ep.accept();
        }
        let Some(c) = self.h.and_then(|h| self.ep.connection_mut(h)) else {
            return;
        };
        while c.poll_event().is_some() {}
        while self.written < self.to_send.len() {
            match c.write(&self.to_send[self.written..]) {
                Ok(n) => self.written += n,
                Err(_) => break,
            }
        }
        if self.written == self.to_send.len() && !self.shut && c.state().is_synchronized() {
            self.shut = true;
            c.shutdown(now);
        }
        loop {
            let chunk = c.read_chunk();
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            if let Some(h) = self.hasher.as_mut() {
                h.update(chunk);
            }
            self.received += n;
            c.consume(n);
        }
        if c.is_read_finished() && self.done_at.is_none() {
            self.done_at = Some(now);
            self.digest = self.hasher.take().map(|h| h.finish().as_ref().to_vec());
        }
    }

    fn stats(&self) -> Option<(State, Stats)> {
        let c = self.ep.connection(self.h?)?;
        Some((c.state(), c.stats()))
    }
}

impl Node for Host {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _to: SocketAddr, data: &[u8]) {
        let _ = self.ep.handle_datagram(now, from, data);
        self.pump(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        self.pump(now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let t = self.ep.poll_transmit(now, buf)?;
        Some((t.destination, t.size))
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        if self.h.is_none() && self.peer.is_some() {
            return Some(Instant::ZERO);
        }
        self.ep.poll_timeout()
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Run the simulated demo; returns an error line on failure. With `pcap`,
/// every datagram is written there as sent (`Sim::capture_to`).
pub fn run(
    mib: usize,
    loss: f64,
    rtt_ms: u64,
    mbit: u64,
    seed: u64,
    pcap: Option<&Path>,
) -> Result<(), String> {
    let a_addr: SocketAddr = "198.18.0.1:40000".parse().map_err(|_| "address")?;
    // Not 443: the payload is not TLS, and Wireshark would guess TLS there.
    let b_addr: SocketAddr = "198.18.0.2:40443".parse().map_err(|_| "address")?;
    let bytes = mib << 20;
    let (da, db) = (data(bytes, 1), data(bytes, 2));
    let (ha, hb) = (
        digest::digest(&digest::SHA256, &da).as_ref().to_vec(),
        digest::digest(&digest::SHA256, &db).as_ref().to_vec(),
    );
    let cfg = Config {
        msl: Duration::from_secs(1),
        ..Config::default()
    };
    let mut s: Sim<Host> = Sim::new(seed);
    let a = s.add_node(
        a_addr,
        Host::new(cfg.clone(), a_addr.port(), Some(b_addr), da, 1),
    );
    let b = s.add_node(b_addr, Host::new(cfg, b_addr.port(), None, db, 2));
    if let Some(p) = pcap {
        s.capture_to(p)
            .map_err(|e| format!("--pcap {}: {e}", p.display()))?;
    }
    let link = LinkConfig {
        delay: Duration::from_micros(rtt_ms * 500),
        bandwidth_bps: mbit * 1_000_000,
        queue_bytes: Some(((mbit * 1_000_000 / 8) * rtt_ms / 1000).max(64_000) as usize),
        loss: if loss > 0.0 {
            LossModel::Bernoulli(loss)
        } else {
            LossModel::None
        },
        ..LinkConfig::default()
    };
    s.set_links(a, b, link);
    println!(
        "xtcp demo (simulated): {mib} MiB each way, RTT {rtt_ms} ms, {mbit} Mbit/s each way, {:.1}% random loss, seed {seed}",
        loss * 100.0
    );
    let out = s.run_until(Instant::from_millis(3_600_000), |s| {
        s.node(a).done_at.is_some() && s.node(b).done_at.is_some()
    });
    if let Some(p) = pcap {
        s.finish_capture()
            .map_err(|e| format!("--pcap {}: {e}", p.display()))?;
    }
    if !out.is_done() {
        return Err(format!("transfer did not finish: {:?}", out.stop));
    }
    println!("path: direct-udp (XTCP over the simulator; the relay demo arrives with the relay)");
    for (name, id, want) in [("A→B", b, &ha), ("B→A", a, &hb)] {
        let n = s.node(id);
        let ok = n.digest.as_ref() == Some(want);
        let secs = n.done_at.map(|t| t.as_micros() as f64 / 1e6).unwrap_or(0.0);
        println!(
            "  {name}: {} bytes in {secs:.2} s simulated = {:.1} Mbit/s, SHA-256 {}",
            n.received,
            n.received as f64 * 8.0 / secs.max(1e-9) / 1e6,
            if ok { "matches" } else { "MISMATCH" }
        );
        if !ok {
            return Err(format!("{name}: SHA-256 mismatch"));
        }
    }
    for (name, id) in [("A", a), ("B", b)] {
        if let Some((st, x)) = s.node(id).stats() {
            println!(
                "  {name}: state {st}, srtt {:?}, cwnd {} B, {} segments sent, {} bytes retransmitted, {} recovery episodes, {} RTOs",
                x.srtt.unwrap_or_default(),
                x.cwnd,
                x.segments_sent,
                x.bytes_retransmitted,
                x.recovery_episodes,
                x.rto_events
            );
        }
    }
    let t = s.totals();
    println!(
        "  link: {} datagrams offered, {} delivered, {} lost, {} dropped by the queue",
        t.sent, t.delivered, t.dropped_loss, t.dropped_queue
    );
    if let Some(p) = pcap {
        println!(
            "capture: {} (tshark -r {} -X lua_script:interop/wireshark/xtcp.lua)",
            p.display(),
            p.display()
        );
    }
    Ok(())
}
