//! # xtcp-sim — a deterministic network simulator
//!
//! Virtual clock, seeded RNG, impaired links; no threads, no wall clock.
//! Anything that speaks datagrams through the [`Node`] trait can be placed in
//! it: an XTCP `Endpoint` wrapped with some application logic, a scripted
//! peer, a relay model.
//!
//! CONTRACT (used by every later test; keep stable):
//! - [`Node`]: the sans-IO boundary a simulated host implements.
//! - `Sim::new(seed)`, `add_node(addr, node) -> NodeId`,
//!   `set_link(from, to, LinkConfig)` (directional; default = perfect link),
//!   `set_address(node, at, new_addr)` (address change of one side at a time),
//!   `run_until(deadline, |sim| done) -> Outcome`, `now()`, `node(id)`,
//!   `node_mut(id)`, per-link `stats()`.
//! - `check_seeds(name, seeds, |seed| -> Result<(), String>)` runs a scenario
//!   for each seed and on failure panics with the seed and the replay command
//!   (`XTCP_SIM_SEED=<seed> cargo test <name>`); the env var narrows a run to one seed.
//!
//! ## The model
//!
//! One priority queue holds every future event, ordered by (time, order of
//! scheduling): datagram arrivals, node timers, polls and address changes.
//! [`Sim::step`] pops the earliest, jumps the clock to it and runs it. After
//! a node handles a datagram or a timeout, the simulator drains its
//! [`Node::poll_transmit`] until `None`, sending each datagram at the current
//! time, then re-arms [`Node::poll_timeout`] (a timeout in the past fires at
//! the current time). Same seed and same nodes ⇒ the same sequence of
//! events, bit for bit.
//!
//! Nodes are addressed by [`SocketAddr`]. A datagram from node A to address
//! X goes to the node whose address is X *now*, over the link A → that node;
//! links are keyed by [`NodeId`] (not address) and are directional. A
//! datagram for an address no node has is dropped and counted
//! ([`Sim::unroutable`]).
//!
//! What happens to a datagram entering a link at time `t`, in order
//! ([`LinkConfig`] has the knobs; each stage that drops counts its cause in
//! [`LinkStats`]):
//!
//! ```text
//!  node A ─poll_transmit─► route by dst address ──(no node)──► dropped: unroutable
//!                               │ link A→B
//!   1. blackout   t in [start, end) of a window?            ──► dropped: blackout
//!   2. mtu        len > mtu?                                ──► dropped: mtu
//!   3. loss       Bernoulli / Gilbert–Elliott (per packet)  ──► dropped: loss
//!   4. queue      FIFO transmitter at bandwidth_bps; if it must wait and
//!                 waiting bytes + len > queue_bytes          ──► dropped: queue
//!                 departs when its last bit is serialized
//!   5. delay      + delay + uniform[0, jitter], clamped to ≥ the previous
//!                 packet's arrival (jitter never reorders)
//!   6. reorder    with p: + extra (later packets overtake it)
//!   7. duplicate  with p: a second copy arrives 1 µs later
//!   8. corrupt    per copy, with p: one random payload bit flipped
//!   9. delivery   at arrival, if B still has the destination address
//!                 (else dropped: unroutable) → B.handle_datagram
//! ```
//!
//! Serialization is exact: the transmitter keeps time in units of
//! 1/bandwidth µs, so 1000 bytes at 3 Mbit/s take 2666⅔ µs and three of them
//! take exactly 8000 µs; arrival times are rounded up to whole microseconds.
//! Every link draws from its own random stream, derived from the seed and
//! the (from, to) pair, and draws only for enabled impairments: adding loss
//! to one link leaves every other link's pattern unchanged.
//!
//! An address change ([`Sim::set_address`]) is an event too: from its time
//! the node sends from the new address, datagrams to the old one that
//! arrive later are dropped, and its links (keyed by node) keep their
//! configuration and state — a NAT rebinding.
//!
//! Not modelled: IP fragmentation (over-MTU datagrams are just dropped),
//! ICMP, shared bottlenecks between different pairs of nodes (each
//! directional link has its own transmitter), NAT behaviour itself (a later
//! lab can be written as a node).
//!
//! ## Example
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use proto::Instant;
//! use xtcp_sim::{LinkConfig, LossModel, Node, Sim, Stop};
//!
//! /// Sends `left` numbered datagrams to `peer`, one every 10 ms; counts what it receives.
//! struct Peer { peer: SocketAddr, left: u32, next: Instant, got: Vec<(Instant, u32)> }
//!
//! impl Node for Peer {
//!     fn handle_datagram(&mut self, now: Instant, _from: SocketAddr, _to: SocketAddr, d: &[u8]) {
//!         self.got.push((now, u32::from_be_bytes([d[0], d[1], d[2], d[3]])));
//!     }
//!     fn handle_timeout(&mut self, _now: Instant) {}
//!     fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
//!         if self.left == 0 || now < self.next { return None; }
//!         self.left -= 1;
//!         self.next = now + Duration::from_millis(10);
//!         buf[..4].copy_from_slice(&self.left.to_be_bytes());
//!         Some((self.peer, 100))
//!     }
//!     fn poll_timeout(&mut self) -> Option<Instant> {
//!         (self.left > 0).then_some(self.next)
//!     }
//! }
//!
//! let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
//! let b: SocketAddr = "10.0.0.2:2000".parse().unwrap();
//! let mut sim = Sim::new(42);
//! let ia = sim.add_node(a, Peer { peer: b, left: 100, next: Instant::ZERO, got: vec![] });
//! let ib = sim.add_node(b, Peer { peer: a, left: 0, next: Instant::ZERO, got: vec![] });
//! sim.set_link(ia, ib, LinkConfig {
//!     delay: Duration::from_millis(25),
//!     bandwidth_bps: 1_000_000,        // 100 bytes: 800 µs on the wire
//!     loss: LossModel::Bernoulli(0.1),
//!     ..LinkConfig::default()
//! });
//! let out = sim.run_until(Instant::from_millis(60_000), |s| s.node(ib).got.len() >= 80);
//! assert_eq!(out.stop, Stop::Done);
//! let first = sim.node(ib).got[0];
//! // Sent at a multiple of 10 ms, + 0.8 ms serialization + 25 ms delay.
//! assert_eq!(first.0.as_micros() % 10_000, 5_800);
//! assert_eq!(sim.stats(ia, ib).delivered, 80);
//!
//! // Run the rest: idle once A has sent all 100 and nothing is in flight.
//! let out = sim.run_until(Instant::from_millis(60_000), |_| false);
//! assert_eq!(out.stop, Stop::Idle);
//! let st = sim.stats(ia, ib);
//! assert_eq!(st.sent, 100);
//! assert_eq!(st.sent, st.delivered + st.dropped_loss);
//!
//! // The same seed replays exactly.
//! # let mut again = Sim::new(42);
//! # let ja = again.add_node(a, Peer { peer: b, left: 100, next: Instant::ZERO, got: vec![] });
//! # let jb = again.add_node(b, Peer { peer: a, left: 0, next: Instant::ZERO, got: vec![] });
//! # again.set_link(ja, jb, sim.link(ia, ib).clone());
//! # again.run_until(Instant::from_millis(60_000), |_| false);
//! # assert_eq!(again.node(jb).got, sim.node(ib).got);
//! ```
//!
//! ## Many seeds
//!
//! [`check_seeds`] runs a scenario per seed and reports the failing seed with
//! its replay command; [`seeds_from_env`] lets `XTCP_SIM_SEEDS=1000` widen a
//! run on demand. [`Sim::capture_to`] writes a pcap for Wireshark.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod bulk;
mod link;
mod pcap;
mod rng;
mod seeds;
mod sim;

pub use link::{DropCause, LinkConfig, LinkStats, LossModel};
pub use pcap::CapturePoint;
pub use rng::Rng;
pub use seeds::{check_seeds, seeds_from_env, SEEDS_VAR, SEED_VAR};
pub use sim::{NodeId, Outcome, Record, RecordKind, Sim, Stop, DEFAULT_STALL_LIMIT, MAX_DATAGRAM};

use proto::Instant;
use std::any::Any;
use std::net::SocketAddr;

/// A simulated host. After every delivery or timeout the simulator drains
/// `poll_transmit` until it returns `None`, then re-arms `poll_timeout`.
pub trait Node {
    /// A datagram arrived from `from`, addressed to `to` (this node's current address).
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]);
    /// The time returned by `poll_timeout` was reached (may be called early; must be idempotent).
    fn handle_timeout(&mut self, now: Instant);
    /// The next datagram to send: its destination and length written into `buf`.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)>;
    /// When `handle_timeout` should next be called.
    fn poll_timeout(&mut self) -> Option<Instant>;
}

impl<T: Node + ?Sized> Node for Box<T> {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        (**self).handle_datagram(now, from, to, data)
    }
    fn handle_timeout(&mut self, now: Instant) {
        (**self).handle_timeout(now)
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        (**self).poll_transmit(now, buf)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        (**self).poll_timeout()
    }
}

/// A [`Node`] that can be downcast: use `Sim<Box<dyn AnyNode>>` to mix kinds
/// of node in one simulation, and [`Sim::node_as`] to get one back.
pub trait AnyNode: Node + Any {
    /// `self` as [`Any`].
    fn as_any(&self) -> &dyn Any;
    /// `self` as mutable [`Any`].
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Node + Any> AnyNode for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
