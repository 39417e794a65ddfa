//! The event loop.

use crate::link::{DropCause, Fate, Link, LinkConfig, LinkStats};
use crate::pcap::{CapturePoint, Pcap};
use crate::rng::{splitmix64, Rng};
use crate::{AnyNode, Node};
use core::cmp::Ordering;
use core::time::Duration;
use proto::Instant;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

/// Size of the buffer handed to [`Node::poll_transmit`]: the largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_535;

/// Default for [`Sim::set_stall_limit`].
pub const DEFAULT_STALL_LIMIT: u64 = 10_000_000;

/// A node's handle in one simulation (its index, in order of `add_node`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(usize);

impl NodeId {
    /// The index: 0 for the first node added, 1 for the next, …
    pub fn index(self) -> usize {
        self.0
    }
}

/// Why [`Sim::run_until`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The predicate held.
    Done,
    /// The next event lies after the deadline; the clock was moved to it.
    Deadline,
    /// No event remains: nothing will ever happen again.
    Idle,
    /// More than the stall limit of events ran without the clock advancing
    /// (a node that re-arms a timer in the past forever, or two nodes
    /// ping-ponging over zero-delay links).
    Stalled,
}

/// What [`Sim::run_until`] returns: why it stopped, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Why it stopped.
    pub stop: Stop,
    /// The virtual time when it stopped.
    pub at: Instant,
}

impl Outcome {
    /// The predicate held.
    pub fn is_done(&self) -> bool {
        self.stop == Stop::Done
    }
}

/// What happened to a datagram, as reported to an observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A node emitted it (before any impairment).
    Sent,
    /// It reached the receiving node (this copy; after corruption).
    Delivered,
    /// It was dropped.
    Dropped(DropCause),
}

/// One datagram event, as reported to an observer ([`Sim::set_observer`]).
#[derive(Debug)]
pub struct Record<'a> {
    /// Virtual time of the event.
    pub at: Instant,
    /// What happened.
    pub kind: RecordKind,
    /// The sending node.
    pub from: NodeId,
    /// The receiving node, if the destination was routable.
    pub to: Option<NodeId>,
    /// Source address (the sender's address when it sent).
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// The payload (as sent, or as delivered).
    pub data: &'a [u8],
}

type Observer = Box<dyn FnMut(&Record<'_>) + Send>;

struct Packet {
    from: usize,
    to: usize,
    src: SocketAddr,
    dst: SocketAddr,
    data: Vec<u8>,
}

enum Ev {
    Deliver(Packet),
    Timer { node: usize, gen: u64 },
    Poll { node: usize },
    Rebind { node: usize, addr: SocketAddr },
}

struct Entry {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest event,
    /// and among simultaneous events the one scheduled first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Slot<N> {
    node: N,
    addr: SocketAddr,
    /// The armed timer, as last returned by `poll_timeout`.
    timer: Option<u64>,
    /// Incremented on every re-arm; a timer event fires only if it matches.
    timer_gen: u64,
    /// Datagrams sent to an address no node had.
    unroutable: u64,
}

/// The simulator: nodes, directional links between them, a virtual clock and
/// one queue of events. See the crate documentation for the model.
///
/// All nodes have the type `N`. For different kinds of node in one
/// simulation, use an enum, or `Box<dyn AnyNode>` and [`Sim::node_as`].
pub struct Sim<N> {
    seed: u64,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Entry>,
    nodes: Vec<Slot<N>>,
    /// `links[from][to]`.
    links: Vec<Vec<Link>>,
    routes: HashMap<SocketAddr, usize>,
    pool: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    rng: Rng,
    events: u64,
    same_instant: u64,
    stall_limit: u64,
    observer: Option<Observer>,
    capture: Option<Pcap>,
}

impl<N> fmt::Debug for Sim<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("now", &Instant::from_micros(self.now))
            .field("nodes", &self.nodes.len())
            .field("pending_events", &self.queue.len())
            .field("events", &self.events)
            .finish()
    }
}

fn link_seed(seed: u64, from: usize, to: usize) -> u64 {
    let mut s = seed ^ 0x6c69_6e6b_0000_0000 ^ ((from as u64) << 32) ^ to as u64;
    splitmix64(&mut s) ^ splitmix64(&mut s)
}

impl<N: Node> Sim<N> {
    /// An empty simulation at time zero whose every random choice derives
    /// from `seed`. Each link draws from its own stream (derived from the
    /// seed and the pair of nodes), so configuring one link never changes
    /// what happens on another.
    pub fn new(seed: u64) -> Sim<N> {
        let mut s = seed;
        Sim {
            seed,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            links: Vec::new(),
            routes: HashMap::new(),
            pool: Vec::new(),
            scratch: vec![0; MAX_DATAGRAM],
            rng: Rng::new(splitmix64(&mut s)),
            events: 0,
            same_instant: 0,
            stall_limit: DEFAULT_STALL_LIMIT,
            observer: None,
            capture: None,
        }
    }

    /// The seed this simulation was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A generator for the test's own random choices, derived from the seed
    /// (independent of the links' streams).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.now)
    }

    /// Events processed so far (deliveries, timer firings, polls, rebinds).
    pub fn events_processed(&self) -> u64 {
        self.events
    }

    /// How many events may run at one instant before `run_until` gives up
    /// with [`Stop::Stalled`] (default [`DEFAULT_STALL_LIMIT`]).
    pub fn set_stall_limit(&mut self, limit: u64) {
        self.stall_limit = limit;
    }

    /// Adds a node reachable at `addr`. Links to and from it start perfect.
    /// At the current time the node is polled (transmits drained, timer armed).
    ///
    /// # Panics
    /// If another node currently has `addr`.
    pub fn add_node(&mut self, addr: SocketAddr, node: N) -> NodeId {
        assert!(
            !self.routes.contains_key(&addr),
            "xtcp-sim: address {addr} is already in use"
        );
        let id = self.nodes.len();
        self.nodes.push(Slot {
            node,
            addr,
            timer: None,
            timer_gen: 0,
            unroutable: 0,
        });
        self.routes.insert(addr, id);
        for (from, row) in self.links.iter_mut().enumerate() {
            row.push(Link::new(link_seed(self.seed, from, id)));
        }
        let row = (0..=id)
            .map(|to| Link::new(link_seed(self.seed, id, to)))
            .collect();
        self.links.push(row);
        self.schedule(self.now, Ev::Poll { node: id });
        NodeId(id)
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// All node ids, in order of addition.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len()).map(NodeId)
    }

    /// The node.
    pub fn node(&self, id: NodeId) -> &N {
        &self.nodes[id.0].node
    }

    /// The node, mutably. Because the caller may give it something to send
    /// or change its timer, the node is polled again at the current time
    /// (as with [`Sim::wake`]).
    pub fn node_mut(&mut self, id: NodeId) -> &mut N {
        self.wake(id);
        &mut self.nodes[id.0].node
    }

    /// Schedules a poll of the node at the current time: its pending
    /// transmits are drained and its timer re-armed.
    pub fn wake(&mut self, id: NodeId) {
        self.schedule(self.now, Ev::Poll { node: id.0 });
    }

    /// The node's current address.
    pub fn address(&self, id: NodeId) -> SocketAddr {
        self.nodes[id.0].addr
    }

    /// The node currently at `addr`.
    pub fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.routes.get(&addr).copied().map(NodeId)
    }

    /// Configures the link `from → to` (one direction). Keeps the link's
    /// state: packets in flight, the transmitter queue, the loss chain.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, cfg: LinkConfig) {
        self.links[from.0][to.0].configure(cfg);
    }

    /// Configures both directions between `a` and `b` alike.
    pub fn set_links(&mut self, a: NodeId, b: NodeId, cfg: LinkConfig) {
        self.set_link(b, a, cfg.clone());
        self.set_link(a, b, cfg);
    }

    /// The configuration of `from → to` (blackouts sorted and merged).
    pub fn link(&self, from: NodeId, to: NodeId) -> &LinkConfig {
        &self.links[from.0][to.0].cfg
    }

    /// At time `at` (or now, if `at` is past), node `id`'s address becomes
    /// `addr` — a NAT rebinding. From then on its datagrams carry the new
    /// source; datagrams to the old address that arrive after it are dropped
    /// (unroutable). Links are keyed by node, so their configuration and
    /// state carry over. If another node holds `addr` at that time, datagrams
    /// to `addr` go to `id` from then on (the other node keeps sending from it).
    pub fn set_address(&mut self, id: NodeId, at: Instant, addr: SocketAddr) {
        let at = at.as_micros().max(self.now);
        self.schedule(at, Ev::Rebind { node: id.0, addr });
    }

    /// Counters of the link `from → to`.
    pub fn stats(&self, from: NodeId, to: NodeId) -> LinkStats {
        self.links[from.0][to.0].stats
    }

    /// Datagrams node `from` sent to addresses no node had at the time.
    pub fn unroutable(&self, from: NodeId) -> u64 {
        self.nodes[from.0].unroutable
    }

    /// The sum of all links' counters, plus datagrams sent to no node
    /// (in `sent` and `dropped_unroutable`).
    pub fn totals(&self) -> LinkStats {
        let mut t = LinkStats::default();
        for l in self.links.iter().flatten() {
            t.add(&l.stats);
        }
        for n in &self.nodes {
            t.sent += n.unroutable;
            t.dropped_unroutable += n.unroutable;
        }
        t
    }

    /// Calls `f` for every datagram sent, delivered or dropped.
    pub fn set_observer(&mut self, f: impl FnMut(&Record<'_>) + Send + 'static) {
        self.observer = Some(Box::new(f));
    }

    /// Removes the observer.
    pub fn clear_observer(&mut self) {
        self.observer = None;
    }

    /// Writes every datagram, as sent by the nodes, to a pcap file at `path`
    /// (LINKTYPE_RAW, synthesized IPv4/UDP or IPv6/UDP headers, virtual
    /// timestamps). Replaces an earlier capture (finishing it).
    pub fn capture_to(&mut self, path: impl AsRef<Path>) -> io::Result<()> {
        self.capture_at(path, CapturePoint::Send)
    }

    /// Like [`Sim::capture_to`], choosing where datagrams are captured.
    pub fn capture_at(&mut self, path: impl AsRef<Path>, point: CapturePoint) -> io::Result<()> {
        self.finish_capture()?;
        self.capture = Some(Pcap::create(path.as_ref(), point)?);
        Ok(())
    }

    /// Flushes and closes the capture, reporting any write error.
    pub fn finish_capture(&mut self) -> io::Result<()> {
        match self.capture.take() {
            Some(p) => p.finish(),
            None => Ok(()),
        }
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        let seq = self.seq;
        self.seq += 1;
        self.queue.push(Entry { at, seq, ev });
    }

    /// Discards stale timer events at the head of the queue, so the head
    /// (if any) is an event that will do something.
    fn prune(&mut self) {
        while let Some(e) = self.queue.peek() {
            match e.ev {
                Ev::Timer { node, gen } if self.nodes[node].timer_gen != gen => {
                    self.queue.pop();
                }
                _ => return,
            }
        }
    }

    /// Events waiting in the queue (including timers that will be skipped
    /// because they were re-armed).
    pub fn pending_events(&self) -> usize {
        self.queue.len()
    }

    /// When the next event happens, if any.
    pub fn next_event_time(&mut self) -> Option<Instant> {
        self.prune();
        self.queue.peek().map(|e| Instant::from_micros(e.at))
    }

    /// Processes the next event. Returns false (and does nothing) if none
    /// remains.
    pub fn step(&mut self) -> bool {
        self.prune();
        let Some(Entry { at, ev, .. }) = self.queue.pop() else {
            return false;
        };
        if at > self.now {
            self.now = at;
            self.same_instant = 0;
        }
        self.same_instant += 1;
        self.events += 1;
        match ev {
            Ev::Deliver(p) => self.deliver(p),
            Ev::Timer { node, .. } => {
                self.nodes[node].timer = None;
                self.nodes[node]
                    .node
                    .handle_timeout(Instant::from_micros(self.now));
                self.service(node);
            }
            Ev::Poll { node } => self.service(node),
            Ev::Rebind { node, addr } => {
                let old = self.nodes[node].addr;
                if self.routes.get(&old) == Some(&node) {
                    self.routes.remove(&old);
                }
                self.routes.insert(addr, node);
                self.nodes[node].addr = addr;
            }
        }
        true
    }

    /// Runs events until `done(self)` holds (checked before the first event
    /// and after each), the next event lies after `deadline` (the clock is
    /// then set to `deadline`), no event remains, or the stall limit is hit.
    pub fn run_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&Sim<N>) -> bool,
    ) -> Outcome {
        let dl = deadline.as_micros();
        let stop = loop {
            if done(self) {
                break Stop::Done;
            }
            self.prune();
            match self.queue.peek() {
                None => break Stop::Idle,
                Some(e) if e.at > dl => {
                    self.now = self.now.max(dl);
                    break Stop::Deadline;
                }
                Some(_) => {}
            }
            if self.same_instant >= self.stall_limit {
                break Stop::Stalled;
            }
            self.step();
        };
        Outcome {
            stop,
            at: self.now(),
        }
    }

    /// [`Sim::run_until`] with a deadline `d` from now.
    pub fn run_for(&mut self, d: Duration, done: impl FnMut(&Sim<N>) -> bool) -> Outcome {
        let deadline = self.now() + d;
        self.run_until(deadline, done)
    }

    fn record(
        &mut self,
        kind: RecordKind,
        from: usize,
        to: Option<usize>,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) {
        let at = Instant::from_micros(self.now);
        if let Some(cap) = self.capture.as_mut() {
            let point = match kind {
                RecordKind::Sent => Some(CapturePoint::Send),
                RecordKind::Delivered => Some(CapturePoint::Deliver),
                RecordKind::Dropped(_) => None,
            };
            if point == Some(cap.point) {
                cap.write(at, src, dst, data);
            }
        }
        if let Some(obs) = self.observer.as_mut() {
            obs(&Record {
                at,
                kind,
                from: NodeId(from),
                to: to.map(NodeId),
                src,
                dst,
                data,
            });
        }
    }

    fn deliver(&mut self, p: Packet) {
        let to = p.to;
        let len = p.data.len() as u64;
        if self.nodes[to].addr != p.dst {
            self.links[p.from][to].stats.dropped_unroutable += 1;
            self.record(
                RecordKind::Dropped(DropCause::Unroutable),
                p.from,
                Some(to),
                p.src,
                p.dst,
                &p.data,
            );
        } else {
            let st = &mut self.links[p.from][to].stats;
            st.delivered += 1;
            st.bytes_delivered += len;
            self.record(
                RecordKind::Delivered,
                p.from,
                Some(to),
                p.src,
                p.dst,
                &p.data,
            );
            let now = Instant::from_micros(self.now);
            self.nodes[to]
                .node
                .handle_datagram(now, p.src, p.dst, &p.data);
            self.service(to);
        }
        self.recycle(p.data);
    }

    fn recycle(&mut self, mut v: Vec<u8>) {
        if self.pool.len() < 4096 {
            v.clear();
            self.pool.push(v);
        }
    }

    fn buffer(&mut self, data: &[u8]) -> Vec<u8> {
        let mut v = self.pool.pop().unwrap_or_default();
        v.extend_from_slice(data);
        v
    }

    /// Drains the node's transmits, then re-arms its timer.
    fn service(&mut self, id: usize) {
        let now = Instant::from_micros(self.now);
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some((dst, len)) = self.nodes[id].node.poll_transmit(now, &mut scratch) {
            let len = len.min(scratch.len());
            self.send(id, dst, &scratch[..len]);
        }
        self.scratch = scratch;
        let t = self.nodes[id].node.poll_timeout().map(|t| t.as_micros());
        let slot = &mut self.nodes[id];
        if t != slot.timer {
            slot.timer = t;
            slot.timer_gen += 1;
            let gen = slot.timer_gen;
            if let Some(t) = t {
                self.schedule(t.max(self.now), Ev::Timer { node: id, gen });
            }
        }
    }

    /// A datagram enters the network.
    fn send(&mut self, from: usize, dst: SocketAddr, data: &[u8]) {
        let src = self.nodes[from].addr;
        let Some(&to) = self.routes.get(&dst) else {
            self.nodes[from].unroutable += 1;
            self.record(RecordKind::Sent, from, None, src, dst, data);
            self.record(
                RecordKind::Dropped(DropCause::Unroutable),
                from,
                None,
                src,
                dst,
                data,
            );
            return;
        };
        self.record(RecordKind::Sent, from, Some(to), src, dst, data);
        let now = Instant::from_micros(self.now);
        let link = &mut self.links[from][to];
        link.stats.sent += 1;
        link.stats.bytes_sent += data.len() as u64;
        match link.admit(now, data.len()) {
            Fate::Dropped(cause) => {
                let st = &mut link.stats;
                match cause {
                    DropCause::Blackout => st.dropped_blackout += 1,
                    DropCause::Mtu => st.dropped_mtu += 1,
                    DropCause::Loss => st.dropped_loss += 1,
                    DropCause::Queue => st.dropped_queue += 1,
                    DropCause::Unroutable => st.dropped_unroutable += 1,
                }
                self.record(RecordKind::Dropped(cause), from, Some(to), src, dst, data);
            }
            Fate::Deliver { at, dup_at } => {
                if let Some(dup_at) = dup_at {
                    // The original is scheduled first; at equal times it wins.
                    let mut orig = self.buffer(data);
                    self.links[from][to].maybe_corrupt(&mut orig);
                    let mut copy = self.buffer(data);
                    self.links[from][to].maybe_corrupt(&mut copy);
                    self.schedule(
                        at,
                        Ev::Deliver(Packet {
                            from,
                            to,
                            src,
                            dst,
                            data: orig,
                        }),
                    );
                    self.schedule(
                        dup_at,
                        Ev::Deliver(Packet {
                            from,
                            to,
                            src,
                            dst,
                            data: copy,
                        }),
                    );
                } else {
                    let mut orig = self.buffer(data);
                    self.links[from][to].maybe_corrupt(&mut orig);
                    self.schedule(
                        at,
                        Ev::Deliver(Packet {
                            from,
                            to,
                            src,
                            dst,
                            data: orig,
                        }),
                    );
                }
            }
        }
    }
}

impl Sim<Box<dyn AnyNode>> {
    /// The node as its concrete type, if it is a `T`.
    pub fn node_as<T: AnyNode>(&self, id: NodeId) -> Option<&T> {
        (**self.node(id)).as_any().downcast_ref::<T>()
    }

    /// The node as its concrete type, mutably (polled again, as with
    /// [`Sim::node_mut`]).
    pub fn node_as_mut<T: AnyNode>(&mut self, id: NodeId) -> Option<&mut T> {
        (**self.node_mut(id)).as_any_mut().downcast_mut::<T>()
    }
}
