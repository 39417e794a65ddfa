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

use proto::Instant;
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
