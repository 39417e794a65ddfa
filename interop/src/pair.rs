//! Two namespaces on one veth pair with random loss at the receiver: the
//! lab of `benches/transport.rs` and of `xtcp-lab run --set loss`.
//!
//! ```text
//!   namespace a (sender) ── veth, MTU 1500 ── namespace b (receiver)
//!   a_cidr  eth0 (gso_max_segs 1)             eth0 b_cidr
//!                                             nftables: counter; numgen random drop
//! ```
//!
//! The sender's veth segments in software (`gso_max_segs 1`) so that
//! nftables drops single packets, not GSO bursts.

use crate::{veth, Netns};
use std::io;

/// Two namespaces joined by a veth pair; both deleted on drop.
#[derive(Debug)]
pub struct Pair {
    /// The sender's side.
    pub a: Netns,
    /// The receiver's side (where [`Pair::loss`] drops).
    pub b: Netns,
}

impl Pair {
    /// Namespaces `…-<labels.0>` and `…-<labels.1>`, `eth0` in each with the
    /// given addresses (inside 198.18.0.0/15).
    pub fn new(labels: (&str, &str), a_cidr: &str, b_cidr: &str) -> io::Result<Pair> {
        let a = Netns::new(labels.0)?;
        let b = Netns::new(labels.1)?;
        veth(&a, "eth0", a_cidr, &b, "eth0", b_cidr, 1500)?;
        a.exec(&["ip", "link", "set", "dev", "eth0", "gso_max_segs", "1"])?;
        Ok(Pair { a, b })
    }

    /// Drop `per_mille` ‰ of the packets arriving at `b`, at random. A
    /// counter rule before the drop rule counts everything that arrives.
    pub fn loss(&self, per_mille: u32) -> io::Result<()> {
        let thr = per_mille.to_string();
        let ex = |args: &[&str]| self.b.exec(args).map(|_| ());
        ex(&["nft", "add", "table", "inet", "xbench"])?;
        ex(&[
            "nft",
            "add",
            "chain",
            "inet",
            "xbench",
            "pre",
            "{ type filter hook prerouting priority -300; }",
        ])?;
        ex(&[
            "nft", "add", "rule", "inet", "xbench", "pre", "iifname", "eth0", "counter",
        ])?;
        ex(&[
            "nft", "add", "rule", "inet", "xbench", "pre", "iifname", "eth0", "numgen", "random",
            "mod", "1000", "<", &thr, "counter", "drop",
        ])
    }

    /// (packets arriving, packets dropped) by the [`Pair::loss`] rules.
    pub fn loss_counters(&self) -> Option<(u64, u64)> {
        let out = self
            .b
            .exec(&["nft", "list", "chain", "inet", "xbench", "pre"])
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let counts: Vec<u64> = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.position(|x| x == "packets")?;
                w.next()?.parse().ok()
            })
            .collect();
        match counts.as_slice() {
            [all, dropped] => Some((*all, *dropped)),
            _ => None,
        }
    }
}
