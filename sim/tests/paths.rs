//! The session and path layer, whole, on the virtual clock: two
//! `PathManager`s (each with its `SessionState`) over simulated relay,
//! direct-TCP and direct-UDP links (reliable byte pipes with latency and
//! bandwidth that the scenario can stall, black-hole or reset), with an
//! application on each side writing a seeded stream and reading it back.
//!
//! Every scenario asserts: both streams byte-exact, both sides end cleanly,
//! no flap (a side leaves a working direct path only after the harness broke
//! it), and where it applies, time to direct in RTTs. A failure prints its
//! seed and the replay command (`XTCP_SIM_SEED=<seed> cargo test …`);
//! `XTCP_SIM_SEEDS=1000` runs the matrix with 1000 seeds per cell.

use proto::session::{
    encode, Action, Candidate, CandidateKind, Frame, Path, PathConfig, PathHandle, PathManager,
    PathPolicy, Role, Status, Transport, PROVISIONAL_PATH,
};
use proto::Instant;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use xtcp_sim::{check_seeds, seeds_from_env, Rng};

const H: usize = 0;
const G: usize = 1;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One simulated path between the two sides: a pair of pipes.
struct Pair {
    kind: Path,
    /// Each side's handle once it was told of the path.
    handle: [Option<PathHandle>; 2],
    one_way: Duration,
    /// Bytes per millisecond each way.
    rate: u64,
    busy_until: [Instant; 2],
    /// Bytes vanish (a black hole: no close, no error).
    cut: bool,
    /// Extra delay on everything sent now (a stalled relay).
    stall_until: Instant,
    closed: [bool; 2],
    /// Bytes that reached a side before it had the path proven (its
    /// socket holds them until its handshake finishes).
    pending: [Vec<Vec<u8>>; 2],
}

#[derive(Debug)]
enum Ev {
    /// Bytes arrive at `side` on pair `pair`.
    Bytes(usize, usize, Vec<u8>),
    /// `side` learns that pair `pair` ended.
    Closed(usize, usize),
    /// `side` has pair `pair` proven (`early`: the guest's early RESUME offset).
    Opened(usize, usize),
    /// `side`'s UDP endpoint for `round` is ready.
    Prepared(usize, u32),
    /// Scenario step `n` is due.
    Step(usize),
    /// `side`'s relay connection of `generation` on pair `pair` is
    /// re-paired and authenticated (§4.8).
    RelayOpened(usize, usize, u32),
    /// `side`'s relay connection attempt of `generation` failed.
    RelayFailed(usize, u32),
    /// `side`'s runtime saw its addresses change (§4.9).
    NetworkChanged(usize),
}

/// What the scenario allows and does.
#[derive(Clone, Debug)]
struct Scenario {
    name: &'static str,
    /// Direct TCP connects.
    tcp: bool,
    /// Direct UDP connects.
    udp: bool,
    relay_one_way: Duration,
    direct_one_way: Duration,
    /// Bytes each side writes.
    bytes: usize,
    udp_after: Duration,
    /// (time, what) the harness does.
    steps: Vec<(Duration, Step)>,
    /// Upper bound on time to the first direct path, in relay RTTs (after
    /// the UDP window when TCP is off).
    direct_within_rtts: Option<f64>,
    /// The run must end before this.
    deadline: Duration,
    policy: PathPolicy,
    /// The applications end their streams no earlier than this.
    finish_not_before: Duration,
    /// Each side moves onto a direct path at least this often.
    min_direct: usize,
    /// When attempt 0's connection is up (default: one relay trip, §4.2).
    first_direct_at: Option<Duration>,
    /// Extra time the guest's proof of attempt 0 takes (a slow handshake).
    guest_proof_delay: Duration,
    /// Each side's runtime left bytes in a socket at some point because the
    /// manager paused reading (§3.2's read-ahead pause was exercised).
    expect_held: bool,
    /// Longest a side may spend with no path (`Path::Reconnecting`) beyond
    /// the relay's own downtime (§4.8).
    max_stall: Duration,
    /// Each side reconnects its relay path at least this often.
    min_relay_reconnects: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    /// Black-hole the active direct path.
    CutDirect,
    /// Reset the active direct path (both sides see it end).
    ResetDirect,
    /// Let direct connections through again / not.
    AllowDirect(bool),
    /// Stall the relay for this long.
    StallRelay(Duration),
    /// A side's application stops reading (until `Read(side)`).
    StopReading(usize),
    /// A side's application reads again.
    Read(usize),
    /// A side's application reads at most this many bytes per millisecond
    /// (`None`: as fast as bytes come).
    ReadRate(usize, Option<u64>),
    /// The relay dies (both relay connections end, as after SIGKILL) and
    /// accepts nothing for this long; then it is back, empty.
    RestartRelay(Duration),
    /// The relay black-holes its connections (no close, no error) and
    /// accepts nothing for this long.
    BlackholeRelay(Duration),
    /// The guest's relay connection ends (it moved to another network):
    /// the relay forwards nothing more, and the host's leg of it stays
    /// open and silent.
    GuestRelayLegDies,
    /// The guest moves to another network: its runtime sees its address
    /// go and closes its relay and direct connections at once; the host
    /// hears nothing (its legs go silent).
    GuestMoves,
}

struct Side {
    m: PathManager,
    /// Bytes written so far, of `total`.
    written: usize,
    total: usize,
    finished: bool,
    got: Vec<u8>,
    eof: bool,
    reading: bool,
    path: Path,
    /// (time, path) changes.
    changes: Vec<(Instant, Path)>,
    /// Pending UDP attempt start.
    udp_start: Option<Instant>,
    /// Its direct TCP listener is open.
    listening: bool,
    /// How often it closed one.
    listener_stops: usize,
    prepared_round: Option<u32>,
    /// The pair of the direct path in use.
    direct_pair: Option<usize>,
    /// Bytes that arrived while the manager did not want to read their
    /// path (they wait in the socket, in order).
    /// `None`: the path's end, after its bytes.
    held: std::collections::VecDeque<(PathHandle, Option<Vec<u8>>)>,
    /// Most bytes ever held at once.
    held_max: usize,
    /// Bytes per millisecond the application reads at most, and since when
    /// its credit accrues.
    read_rate: Option<u64>,
    read_credit_at: Instant,
}

struct World {
    now: Instant,
    rng: Rng,
    sc: Scenario,
    pairs: Vec<Pair>,
    sides: [Side; 2],
    events: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    direct_ok: bool,
    streams: [Vec<u8>; 2],
    log: Vec<String>,
    /// The relay accepts connections again from then on.
    relay_up_at: Instant,
    /// The relay was last down from .. to (for the stall bound).
    relay_downtime: Vec<(Instant, Instant)>,
    /// The host's registration waiting at the relay: its generation.
    host_waiting: Option<u32>,
}

fn stream(seed: u64, side: usize, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed.wrapping_mul(31).wrapping_add(side as u64 + 7));
    (0..len).map(|_| r.next_u64() as u8).collect()
}

fn cand(t: Transport, a: &str) -> Candidate {
    Candidate {
        kind: CandidateKind::Host,
        transport: t,
        addr: a.parse().expect("literal address"),
    }
}

impl World {
    fn new(seed: u64, sc: Scenario) -> World {
        let mut rng = Rng::new(seed);
        let observed: [SocketAddr; 2] = [
            "198.18.0.1:40000".parse().expect("addr"),
            "198.18.0.2:40000".parse().expect("addr"),
        ];
        let streams = [stream(seed, H, sc.bytes), stream(seed, G, sc.bytes)];
        let mk = |role: Role, obs: SocketAddr, peer: &str, jitter: u64| {
            let mut cfg = PathConfig::new(role, obs);
            cfg.policy = sc.policy;
            cfg.keepalive_interval = ms(200);
            cfg.keepalive_timeout = ms(1000);
            cfg.retry_after = ms(1000 + jitter);
            cfg.udp_after = sc.udp_after;
            cfg.replay_capacity = 256 * 1024;
            cfg.receive_window = 256 * 1024;
            cfg.relay_one_way = sc.relay_one_way;
            let (m, h) = PathManager::new(
                cfg,
                Instant::ZERO,
                vec![cand(Transport::Tcp, peer)],
                Some((7000, false)),
            );
            (m, h)
        };
        let j = rng.below(500);
        let (mh, hh) = mk(Role::Host, observed[0], "198.18.0.2:7000", j);
        let (mg, hg) = mk(Role::Guest, observed[1], "198.18.0.1:7000", j);
        let side = |m| Side {
            m,
            written: 0,
            total: sc.bytes,
            finished: false,
            got: Vec::new(),
            eof: false,
            reading: true,
            path: Path::Relay,
            changes: Vec::new(),
            udp_start: None,
            listening: true,
            listener_stops: 0,
            prepared_round: None,
            direct_pair: None,
            held: std::collections::VecDeque::new(),
            held_max: 0,
            read_rate: None,
            read_credit_at: Instant::ZERO,
        };
        let relay = Pair {
            kind: Path::Relay,
            handle: [Some(hh), Some(hg)],
            one_way: sc.relay_one_way,
            rate: 100_000,
            busy_until: [Instant::ZERO; 2],
            cut: false,
            stall_until: Instant::ZERO,
            closed: [false; 2],
            pending: [Vec::new(), Vec::new()],
        };
        let mut w = World {
            now: Instant::ZERO,
            rng,
            pairs: vec![relay],
            sides: [side(mh), side(mg)],
            events: BTreeMap::new(),
            seq: 0,
            direct_ok: true,
            streams,
            log: Vec::new(),
            relay_up_at: Instant::ZERO,
            relay_downtime: Vec::new(),
            host_waiting: None,
            sc: sc.clone(),
        };
        for (i, (t, _)) in sc.steps.iter().enumerate() {
            w.at(Instant::ZERO + *t, Ev::Step(i));
        }
        // Attempt 0: both dial one relay trip after pairing, on the
        // preambles' candidates (§4.2), before the managers exist.
        if sc.tcp && sc.policy != PathPolicy::RelayOnly {
            let at = sc.first_direct_at.unwrap_or(sc.relay_one_way);
            w.open_direct(Path::DirectTcp, Instant::ZERO + at);
        }
        w
    }

    fn at(&mut self, t: Instant, e: Ev) {
        self.seq += 1;
        self.events.insert((t, self.seq), e);
    }

    fn pair_of(&self, side: usize, h: PathHandle) -> Option<usize> {
        self.pairs.iter().position(|p| p.handle[side] == Some(h))
    }

    /// Send bytes from `side` on pair `p`.
    fn send(&mut self, side: usize, p: usize, bytes: Vec<u8>) {
        let now = self.now;
        let pair = &mut self.pairs[p];
        if pair.cut || pair.closed[side] {
            return;
        }
        let start = now.max(pair.busy_until[side]).max(pair.stall_until);
        let ser = Duration::from_micros(bytes.len() as u64 * 1000 / pair.rate.max(1));
        pair.busy_until[side] = start + ser;
        let arrive = start + ser + pair.one_way;
        self.at(arrive, Ev::Bytes(1 - side, p, bytes));
    }

    /// The runtime's part: carry out actions and move output.
    fn drive(&mut self, side: usize) -> Result<(), String> {
        loop {
            let mut progressed = false;
            // Held bytes, once the manager reads again.
            let now = self.now;
            let s = &mut self.sides[side];
            while let Some((h, _)) = s.held.front() {
                let h = *h;
                if !s.m.paths().any(|x| x == h) {
                    s.held.pop_front(); // the path is gone, and its bytes
                    continue;
                }
                let end = matches!(s.held.front(), Some((_, None)));
                if !end && !s.m.wants_read(h, now) {
                    break;
                }
                match s.held.pop_front() {
                    Some((h, Some(b))) => s.m.handle_path_data(now, h, &b),
                    Some((h, None)) => s.m.handle_path_closed(now, h),
                    None => {}
                }
                progressed = true;
            }
            while let Some(a) = self.sides[side].m.poll_action() {
                progressed = true;
                self.act(side, a)?;
            }
            let hs: Vec<PathHandle> = self.sides[side].m.pending_output().collect();
            for h in hs {
                if let Some(out) = self.sides[side].m.poll_transmit(h) {
                    progressed = true;
                    if let Some(p) = self.pair_of(side, h) {
                        self.send(side, p, out);
                    }
                }
            }
            // The application.
            let s = &mut self.sides[side];
            if s.written < s.total {
                let src = &self.streams[side];
                let chunk = 1 + self.rng.below(64 * 1024) as usize;
                let end = (s.written + chunk).min(s.total);
                if let Ok(n) = s.m.write(&src[s.written..end]) {
                    if n > 0 {
                        s.written += n;
                        progressed = true;
                    }
                }
            } else if !s.finished && self.now >= Instant::ZERO + self.sc.finish_not_before {
                s.m.finish();
                s.finished = true;
                progressed = true;
            }
            if s.reading {
                let mut want = 64 * 1024;
                if let Some(rate) = s.read_rate {
                    let ms = self
                        .now
                        .saturating_duration_since(s.read_credit_at)
                        .as_millis() as u64;
                    want = want.min(usize::try_from(rate * ms).unwrap_or(want));
                }
                let mut buf = vec![0u8; want];
                let n = s.m.read(&mut buf);
                if n > 0 {
                    s.read_credit_at = self.now;
                }
                if n > 0 {
                    s.got.extend_from_slice(&buf[..n]);
                    progressed = true;
                }
                if s.m.read_eof() && !s.eof && s.finished {
                    s.eof = true;
                    // The application is done: it closes the session.
                    let now = self.now;
                    s.m.close(now);
                    progressed = true;
                }
            }
            if progressed {
                let now = self.now;
                self.sides[side].m.handle_timeout(now);
            } else {
                return Ok(());
            }
        }
    }

    fn act(&mut self, side: usize, a: Action) -> Result<(), String> {
        match a {
            Action::PathChanged(p) => {
                let s = &mut self.sides[side];
                let was = s.path;
                s.path = p;
                s.changes.push((self.now, p));
                self.log
                    .push(format!("{} side {side}: {was} -> {p}", self.now));
                // No flap: leaving a direct path needs a cause (§4.7): the
                // harness broke the direct path this side was on.
                let caused = s.direct_pair.is_some_and(|d| self.pairs[d].cut);
                if p != Path::Relay && p != Path::Reconnecting && s.listening {
                    // DI-LISTEN-1: a chosen direct path closes the listener.
                    return Err(format!("side {side} is on {p} with its listener open"));
                }
                if p != Path::Relay && p != Path::Reconnecting {
                    s.direct_pair = self
                        .pairs
                        .iter()
                        .rposition(|x| x.kind == p && x.handle[side].is_some());
                }
                if was != Path::Relay && was != Path::Reconnecting && p == Path::Relay && !caused {
                    return Err(format!(
                        "flap: side {side} left {was} at {} with no cause",
                        self.now
                    ));
                }
            }
            Action::ClosePath {
                path,
                last,
                graceful,
            } => {
                if let Some(p) = self.pair_of(side, path) {
                    if graceful && !last.is_empty() {
                        self.send(side, p, last);
                    }
                    let pair = &mut self.pairs[p];
                    pair.closed[side] = true;
                    pair.handle[side] = None;
                    let arrive = self.now.max(pair.busy_until[side]) + pair.one_way;
                    if !pair.cut {
                        self.at(arrive, Ev::Closed(1 - side, p));
                    }
                }
            }
            Action::DialTcp { .. } => {
                if !self.sides[side].listening {
                    return Err(format!("side {side} dials with its listener closed"));
                }
                // Both sides dial; one connection per attempt succeeds (the
                // host's dial, say), proven after a round trip.
                if self.sc.tcp && self.direct_ok && side == H {
                    self.open_direct(Path::DirectTcp, self.now);
                }
            }
            Action::StopListener => {
                // DI-LISTEN-1: closed once a direct path is chosen or the
                // round's TCP attempt is over.
                self.sides[side].listening = false;
                self.sides[side].listener_stops += 1;
            }
            Action::StartListener => {
                self.sides[side].listening = true;
                let port = 7000 + self.rng.below(1000) as u16;
                let addr = if side == H {
                    "198.18.0.1"
                } else {
                    "198.18.0.2"
                };
                let now = self.now;
                self.sides[side].m.handle_listener(
                    now,
                    Some((
                        port,
                        false,
                        vec![cand(Transport::Tcp, &format!("{addr}:{port}"))],
                    )),
                );
            }
            Action::PrepareUdp { round } => {
                let t = self.now + ms(5 + self.rng.below(20));
                self.at(t, Ev::Prepared(side, round));
            }
            Action::StartUdp(a) => {
                self.sides[side].udp_start = Some(a.start_at);
                // The guest connects at the agreed start; proven a round trip later.
                if side == G && self.sc.udp && self.direct_ok {
                    let at = a.start_at.max(self.now);
                    self.open_direct(Path::DirectUdp, at);
                }
            }
            Action::StopUdp => {
                self.sides[side].udp_start = None;
            }
            Action::ConnectRelay { generation } => self.connect_relay(side, generation),
            Action::StopRelay => {
                if side == H {
                    self.host_waiting = None;
                }
            }
        }
        Ok(())
    }

    /// One relay connection attempt (§4.8): refused while the relay is
    /// down; the host's CREATE waits for the guest; the guest's JOIN pairs
    /// with a waiting host of the same generation, or is answered
    /// `UNKNOWN_SESSION` a relay round trip later.
    fn connect_relay(&mut self, side: usize, generation: u32) {
        let now = self.now;
        let one = self.sc.relay_one_way;
        if now < self.relay_up_at {
            self.at(now + ms(1), Ev::RelayFailed(side, generation));
            return;
        }
        if side == H {
            self.host_waiting = Some(generation);
            return;
        }
        if self.host_waiting != Some(generation) {
            self.at(now + one * 2, Ev::RelayFailed(G, generation));
            return;
        }
        self.host_waiting = None;
        self.pairs.push(Pair {
            kind: Path::Relay,
            handle: [None, None],
            one_way: one,
            rate: 100_000,
            busy_until: [Instant::ZERO; 2],
            cut: false,
            stall_until: Instant::ZERO,
            closed: [false; 2],
            pending: [Vec::new(), Vec::new()],
        });
        let p = self.pairs.len() - 1;
        // JOIN, PAIRED to both; then the e2e handshake: the host has the
        // guest's tag after ClientHello, flight, Finished + tag.
        self.at(now + one * 4, Ev::RelayOpened(G, p, generation));
        self.at(now + one * 5, Ev::RelayOpened(H, p, generation));
    }

    /// The live relay pair (the newest one).
    fn relay_pair(&self) -> Option<usize> {
        self.pairs
            .iter()
            .rposition(|p| p.kind == Path::Relay && !p.cut)
    }

    /// A direct connection of `kind` whose transport is up at `t`: the
    /// guest proves it (and sends its early RESUME) one way later, the host
    /// a round trip later (it reads the guest's tag and early RESUME).
    fn open_direct(&mut self, kind: Path, t: Instant) {
        let one = self.sc.direct_one_way + ms(self.rng.below(3));
        self.pairs.push(Pair {
            kind,
            handle: [None, None],
            one_way: one,
            rate: 100_000,
            busy_until: [Instant::ZERO; 2],
            cut: false,
            stall_until: Instant::ZERO,
            closed: [false; 2],
            pending: [Vec::new(), Vec::new()],
        });
        let p = self.pairs.len() - 1;
        let slow = if p == 1 {
            self.sc.guest_proof_delay
        } else {
            Duration::ZERO
        };
        self.at(t + one * 2 + slow, Ev::Opened(G, p));
        self.at(t + one * 3, Ev::Opened(H, p));
    }

    fn step(&mut self, st: Step) {
        self.log.push(format!("{} step {st:?}", self.now));
        let direct = |w: &World| {
            w.pairs.iter().position(|p| {
                p.kind != Path::Relay && p.handle.iter().any(Option::is_some) && !p.cut
            })
        };
        match st {
            Step::CutDirect => {
                if let Some(p) = direct(self) {
                    self.pairs[p].cut = true;
                }
            }
            Step::ResetDirect => {
                if let Some(p) = direct(self) {
                    let one = self.pairs[p].one_way;
                    self.pairs[p].cut = true;
                    let now = self.now;
                    self.at(now + one, Ev::Closed(H, p));
                    self.at(now + one, Ev::Closed(G, p));
                }
            }
            Step::AllowDirect(b) => self.direct_ok = b,
            Step::StallRelay(d) => {
                if let Some(p) = self.relay_pair() {
                    self.pairs[p].stall_until = self.now + d;
                }
            }
            Step::GuestMoves => {
                let now = self.now;
                for p in 0..self.pairs.len() {
                    let pair = &mut self.pairs[p];
                    if pair.cut || pair.handle[G].is_none() {
                        continue;
                    }
                    pair.cut = true;
                    self.at(now, Ev::Closed(G, p));
                }
                self.at(now, Ev::NetworkChanged(G));
            }
            Step::GuestRelayLegDies => {
                if let Some(p) = self.relay_pair() {
                    self.pairs[p].cut = true;
                    let one = self.pairs[p].one_way;
                    let now = self.now;
                    self.at(now + one, Ev::Closed(G, p));
                }
            }
            Step::RestartRelay(d) | Step::BlackholeRelay(d) => {
                let now = self.now;
                for p in 0..self.pairs.len() {
                    if self.pairs[p].kind != Path::Relay || self.pairs[p].cut {
                        continue;
                    }
                    self.pairs[p].cut = true;
                    if matches!(st, Step::RestartRelay(_)) {
                        let one = self.pairs[p].one_way;
                        self.at(now + one, Ev::Closed(H, p));
                        self.at(now + one, Ev::Closed(G, p));
                    }
                }
                // A host waiting at the relay sees its connection end.
                if let Some(g) = self.host_waiting.take() {
                    if matches!(st, Step::RestartRelay(_)) {
                        self.at(now + self.sc.relay_one_way, Ev::RelayFailed(H, g));
                    }
                }
                self.relay_up_at = now + d;
                self.relay_downtime.push((now, now + d));
            }
            Step::StopReading(s) => self.sides[s].reading = false,
            Step::Read(s) => self.sides[s].reading = true,
            Step::ReadRate(s, r) => {
                self.sides[s].read_rate = r;
                self.sides[s].read_credit_at = self.now;
            }
        }
    }

    fn handle(&mut self, e: Ev) -> Result<(), String> {
        let now = self.now;
        match e {
            Ev::Bytes(side, p, b) => {
                if self.pairs[p].handle[side].is_none() && !self.pairs[p].closed[side] {
                    self.pairs[p].pending[side].push(b);
                } else if let Some(h) = self.pairs[p].handle[side] {
                    let s = &mut self.sides[side];
                    if !s.held.is_empty() || !s.m.wants_read(h, now) {
                        // §3.2: the runtime leaves them in the socket.
                        s.held.push_back((h, Some(b)));
                        let n: usize = s.held.iter().flat_map(|(_, b)| b).map(Vec::len).sum();
                        s.held_max = s.held_max.max(n);
                    } else {
                        s.m.handle_path_data(now, h, &b);
                    }
                }
                self.drive(side)?;
            }
            Ev::Closed(side, p) => {
                if let Some(h) = self.pairs[p].handle[side].take() {
                    self.pairs[p].closed[side] = true;
                    let s = &mut self.sides[side];
                    if s.held.iter().any(|(x, _)| *x == h) {
                        s.held.push_back((h, None)); // after its bytes
                    } else {
                        s.m.handle_path_closed(now, h);
                    }
                }
                self.drive(side)?;
            }
            Ev::Opened(side, p) => {
                if self.pairs[p].cut {
                    return Ok(());
                }
                let early = (side == G).then(|| self.sides[G].m.received());
                let kind = self.pairs[p].kind;
                match self.sides[side].m.handle_path_opened(now, kind, early) {
                    Some(h) => {
                        self.pairs[p].handle[side] = Some(h);
                        for b in std::mem::take(&mut self.pairs[p].pending[side]) {
                            self.sides[side].m.handle_path_data(now, h, &b);
                        }
                        // The peer closed it meanwhile: this side reads its end now.
                        if self.pairs[p].closed[1 - side] {
                            self.at(now, Ev::Closed(side, p));
                        }
                        if let Some(r) = early {
                            // The early RESUME, right behind the guest's tag
                            // (masked on the wire; the host's runtime unmasks it).
                            let mut b = Vec::new();
                            let f = Frame::Resume {
                                path_id: PROVISIONAL_PATH,
                                received: r,
                            };
                            encode(&f, &mut b).map_err(|e| format!("{e:?}"))?;
                            self.send(G, p, b);
                        }
                    }
                    None => {
                        // Refused: the peer sees it close.
                        self.pairs[p].closed[side] = true;
                        let one = self.pairs[p].one_way;
                        self.at(now + one, Ev::Closed(1 - side, p));
                    }
                }
                self.drive(side)?;
            }
            Ev::Prepared(side, round) => {
                self.sides[side].prepared_round = Some(round);
                let addr = if side == H {
                    "198.18.0.1:9000"
                } else {
                    "198.18.0.2:9000"
                };
                self.sides[side].m.handle_udp_prepared(
                    now,
                    round,
                    Some(vec![cand(Transport::Udp, addr)]),
                );
                self.drive(side)?;
            }
            Ev::RelayOpened(side, p, generation) => {
                let observed: SocketAddr = if side == H {
                    "198.18.0.1:40001".parse().expect("addr")
                } else {
                    "198.18.0.2:40001".parse().expect("addr")
                };
                let cut = self.pairs[p].cut;
                match self.sides[side]
                    .m
                    .handle_relay_connected(now, generation, observed)
                {
                    Some(h) if !cut => {
                        self.pairs[p].handle[side] = Some(h);
                        for b in std::mem::take(&mut self.pairs[p].pending[side]) {
                            self.sides[side].m.handle_path_data(now, h, &b);
                        }
                        if self.pairs[p].closed[1 - side] {
                            self.at(now, Ev::Closed(side, p));
                        }
                    }
                    Some(h) => {
                        // The relay died again during the handshake.
                        self.pairs[p].handle[side] = Some(h);
                        self.at(now, Ev::Closed(side, p));
                    }
                    None => {
                        self.pairs[p].closed[side] = true;
                        let one = self.pairs[p].one_way;
                        self.at(now + one, Ev::Closed(1 - side, p));
                    }
                }
                self.drive(side)?;
            }
            Ev::NetworkChanged(side) => {
                self.sides[side].m.handle_network_changed(now);
                self.drive(side)?;
            }
            Ev::RelayFailed(side, generation) => {
                self.sides[side].m.handle_relay_failed(now, generation);
                self.drive(side)?;
            }
            Ev::Step(i) => {
                let st = self.sc.steps[i].1;
                self.step(st);
                self.drive(H)?;
                self.drive(G)?;
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), String> {
        self.drive(H)?;
        self.drive(G)?;
        let deadline = Instant::ZERO + self.sc.deadline;
        for _ in 0..50_000_000u64 {
            // Over once both sessions ended and each application read what
            // its session delivered.
            let done = self
                .sides
                .iter()
                .all(|s| *s.m.status() != Status::Open && s.m.readable() == 0);
            if done {
                break;
            }
            let next_ev = self.events.keys().next().map(|k| k.0);
            // A rate-limited application reads again a millisecond later.
            let app = self
                .sides
                .iter()
                .filter(|s| s.reading && s.read_rate.is_some() && s.m.readable() > 0)
                .map(|s| s.read_credit_at.max(self.now) + ms(1));
            let next_t = self
                .sides
                .iter()
                .filter_map(|s| s.m.poll_timeout())
                .chain(app)
                .min();
            let next = match (next_ev, next_t) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return Err(format!("stuck at {}: nothing to do", self.now)),
            };
            if next > deadline {
                return Err(format!(
                    "not done by {:?}: {:?} / {:?}",
                    self.sc.deadline, self.sides[H].m, self.sides[G].m
                ));
            }
            self.now = self.now.max(next);
            if let Some(k) = self
                .events
                .keys()
                .next()
                .copied()
                .filter(|k| k.0 <= self.now)
            {
                if let Some(e) = self.events.remove(&k) {
                    self.handle(e)?;
                }
                continue;
            }
            for s in [H, G] {
                let now = self.now;
                self.sides[s].m.handle_timeout(now);
                self.drive(s)?;
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        for s in [H, G] {
            let side = &self.sides[s];
            if self.sc.expect_held && side.held_max == 0 {
                return Err(format!("side {s} never paused reading its paths"));
            }
            if *side.m.status() == Status::Open {
                return Err(format!("side {s} still open at {}: {:?}", self.now, side.m));
            }
        }
        for s in [H, G] {
            let side = &self.sides[s];
            if let Status::Failed(f) = side.m.status() {
                return Err(format!("side {s} failed at {}: {f}", self.now));
            }
            let want = &self.streams[1 - s];
            if side.got.len() != want.len() || side.got != *want {
                let first = side
                    .got
                    .iter()
                    .zip(want.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(side.got.len().min(want.len()));
                return Err(format!(
                    "side {s} stream differs at {}: got {} bytes, want {}, first difference at {first}; {:?} / {:?}",
                    self.now,
                    side.got.len(),
                    want.len(),
                    self.sides[H].m,
                    self.sides[G].m
                ));
            }
            if !side.eof {
                return Err(format!("side {s} saw no end of stream"));
            }
        }
        for s in [H, G] {
            let n = self.sides[s]
                .changes
                .iter()
                .filter(|(_, p)| *p != Path::Relay && *p != Path::Reconnecting)
                .count();
            if n < self.sc.min_direct {
                return Err(format!(
                    "side {s} went direct {n} times, expected at least {}",
                    self.sc.min_direct
                ));
            }
            if self.sides[s].listener_stops < n {
                return Err(format!(
                    "side {s} went direct {n} times but closed its listener {} times",
                    self.sides[s].listener_stops
                ));
            }
        }
        for s in [H, G] {
            let m = &self.sides[s].m;
            if m.relay_generation() < self.sc.min_relay_reconnects {
                return Err(format!(
                    "side {s} set up {} relay connections again, expected at least {}",
                    m.relay_generation(),
                    self.sc.min_relay_reconnects
                ));
            }
            // Each stall (no path) is bounded by the relay's downtime
            // within it plus `max_stall`.
            let ch = &self.sides[s].changes;
            for (i, (t0, p)) in ch.iter().enumerate() {
                if *p != Path::Reconnecting {
                    continue;
                }
                let t1 = ch.get(i + 1).map_or(self.now, |c| c.0);
                let down: Duration = self
                    .relay_downtime
                    .iter()
                    .map(|(a, b)| {
                        let (a, b) = ((*a).max(*t0), (*b).min(t1));
                        b.saturating_duration_since(a)
                    })
                    .sum();
                let stall = t1.saturating_duration_since(*t0);
                if stall > down + self.sc.max_stall {
                    return Err(format!(
                        "side {s} had no path for {stall:?} from {t0}, the relay was down {down:?} of it (bound + {:?})",
                        self.sc.max_stall
                    ));
                }
            }
        }
        if let Some(bound) = self.sc.direct_within_rtts {
            let rtt = self.sc.relay_one_way.as_secs_f64() * 2.0;
            let base = if self.sc.tcp {
                0.0
            } else {
                self.sc.udp_after.as_secs_f64()
            };
            for s in [H, G] {
                let Some((t, _)) = self.sides[s]
                    .changes
                    .iter()
                    .find(|(_, p)| *p != Path::Relay && *p != Path::Reconnecting)
                else {
                    return Err(format!("side {s} never went direct"));
                };
                let secs = t.as_micros() as f64 / 1e6 - base;
                if secs > bound * rtt {
                    return Err(format!(
                        "side {s} direct after {:.1} RTT beyond the window (bound {bound})",
                        secs / rtt
                    ));
                }
            }
        }
        Ok(())
    }
}

fn run(name: &str, sc: Scenario, seeds: u64) {
    check_seeds(name, seeds_from_env(seeds), |seed| {
        let mut w = World::new(seed, sc.clone());
        let r = w.run();
        if r.is_err() {
            eprintln!("scenario {}: last events", w.sc.name);
            for l in w.log.iter().rev().take(20).rev() {
                eprintln!("{l}");
            }
        }
        r
    });
}

fn base(name: &'static str) -> Scenario {
    Scenario {
        name,
        tcp: true,
        udp: true,
        relay_one_way: ms(20),
        direct_one_way: ms(5),
        bytes: 2 << 20,
        udp_after: Duration::from_secs(10),
        steps: Vec::new(),
        direct_within_rtts: None,
        deadline: Duration::from_secs(600),
        policy: PathPolicy::Auto,
        finish_not_before: Duration::ZERO,
        min_direct: 0,
        first_direct_at: None,
        guest_proof_delay: Duration::ZERO,
        expect_held: false,
        max_stall: Duration::ZERO,
        min_relay_reconnects: 0,
    }
}

const SEEDS: u64 = 20;

//= spec/direct.md#DI-ID-2
//= spec/direct.md#DI-EARLY-2
//= spec/direct.md#DI-ONE-1
#[test]
fn relay_to_direct_takeover_data_both_ways() {
    let mut sc = base("takeover");
    sc.min_direct = 1;
    sc.direct_within_rtts = Some(3.0);
    sc.finish_not_before = Duration::from_secs(1);
    run("relay_to_direct_takeover_data_both_ways", sc, SEEDS);
}

//= spec/direct.md#DI-LIVE-1
//= spec/direct.md#DI-LIVE-2
//= spec/direct.md#DI-FALL-1
//= spec/direct.md#DI-FALL-2
//= spec/direct.md#DI-FALL-4
#[test]
fn direct_black_holed_falls_back_then_retries_and_takes_over_again() {
    let mut sc = base("cut");
    sc.finish_not_before = Duration::from_secs(5);
    sc.min_direct = 2;
    sc.bytes = 8 << 20;
    sc.steps = vec![(ms(300), Step::CutDirect)];
    run(
        "direct_black_holed_falls_back_then_retries_and_takes_over_again",
        sc,
        SEEDS,
    );
}

//= spec/direct.md#DI-FALL-1
//= spec/direct.md#DI-STALE-1
//= spec/direct.md#DI-ID-3
#[test]
fn direct_reset_twice_falls_back_each_time_byte_exact() {
    let mut sc = base("reset twice");
    sc.finish_not_before = Duration::from_secs(6);
    sc.min_direct = 3;
    sc.bytes = 8 << 20;
    sc.steps = vec![(ms(200), Step::ResetDirect), (ms(2200), Step::ResetDirect)];
    run(
        "direct_reset_twice_falls_back_each_time_byte_exact",
        sc,
        SEEDS,
    );
}

#[test]
fn direct_refused_after_fallback_stays_on_relay_byte_exact() {
    let mut sc = base("refused");
    sc.finish_not_before = Duration::from_secs(9);
    sc.min_direct = 1;
    sc.bytes = 8 << 20;
    sc.steps = vec![
        (ms(150), Step::AllowDirect(false)),
        (ms(200), Step::CutDirect),
        (ms(5000), Step::AllowDirect(true)),
    ];
    run(
        "direct_refused_after_fallback_stays_on_relay_byte_exact",
        sc,
        SEEDS,
    );
}

#[test]
fn udp_window_at_10_s_when_tcp_never_connects() {
    let mut sc = base("udp window");
    sc.min_direct = 1;
    sc.tcp = false;
    sc.direct_within_rtts = Some(3.0);
    sc.bytes = 256 << 10;
    sc.finish_not_before = Duration::from_secs(12);
    run("udp_window_at_10_s_when_tcp_never_connects", sc, SEEDS);
}

//= spec/direct.md#DI-ID-1
#[test]
fn slow_relay_late_resume_does_not_take_the_sending_back() {
    // The relay's RESUME arrives long after the direct path took over.
    // Attempt 0 was dialled at pairing; the relay path's handshake (and
    // with it the managers and their relay RESUMEs) completes later, so the
    // direct path is proven before the relay RESUMEs arrive.
    let mut sc = base("late resume");
    sc.first_direct_at = Some(Duration::ZERO);
    sc.finish_not_before = Duration::from_secs(2);
    sc.min_direct = 1;
    sc.relay_one_way = ms(400);
    sc.direct_one_way = ms(2);
    run(
        "slow_relay_late_resume_does_not_take_the_sending_back",
        sc,
        SEEDS,
    );
}

/// A relay that stalls (accepts bytes, forwards them 20 s late) while it
/// carries the session is not a failure: shorter than three keepalive
/// intervals, it is waited for (a loaded relay is not torn down, §4.7).
//= spec/direct.md#DI-LIVE-3
#[test]
fn relay_stall_while_relayed_is_not_a_failure() {
    let mut sc = base("relay stall");
    sc.tcp = false;
    sc.udp = false;
    sc.bytes = 1 << 20;
    sc.steps = vec![(ms(100), Step::StallRelay(Duration::from_secs(20)))];
    run("relay_stall_while_relayed_is_not_a_failure", sc, SEEDS);
}

fn not_reading(name: &'static str, tcp: bool, udp: bool) -> Scenario {
    let mut sc = base(name);
    sc.tcp = tcp;
    sc.udp = udp;
    sc.bytes = 4 << 20;
    sc.steps = vec![
        (ms(50), Step::StopReading(G)),
        (ms(60), Step::StopReading(H)),
        (Duration::from_secs(300), Step::Read(G)),
        (Duration::from_secs(301), Step::Read(H)),
    ];
    sc.deadline = Duration::from_secs(900);
    sc
}

//= spec/direct.md#DI-WIN-1
//= spec/direct.md#DI-WIN-2
#[test]
fn both_apps_stop_reading_for_minutes_on_the_relay() {
    let sc = not_reading("not reading, relay", false, false);
    run("both_apps_stop_reading_for_minutes_on_the_relay", sc, 5);
}

/// Applications that read, but slower than the paths deliver: the
/// read-ahead pause engages (§3.2), and is bounded: an application that
/// trickles (100 bytes every few hundred ms) for a minute does not hold its
/// paths' keepalives behind the data it leaves in the sockets.
fn slow_reading(name: &'static str, tcp: bool, udp: bool) -> Scenario {
    let mut sc = base(name);
    sc.tcp = tcp;
    sc.udp = udp;
    sc.bytes = 4 << 20;
    sc.steps = vec![
        (ms(0), Step::ReadRate(G, Some(2_000))),
        (ms(0), Step::ReadRate(H, Some(2_000))),
        (ms(300), Step::ReadRate(G, Some(1))),
        (ms(310), Step::ReadRate(H, Some(1))),
        (Duration::from_secs(60), Step::ReadRate(G, None)),
        (Duration::from_secs(61), Step::ReadRate(H, None)),
    ];
    sc.deadline = Duration::from_secs(300);
    sc.expect_held = true;
    sc
}

//= spec/direct.md#DI-WIN-3
#[test]
fn slow_readers_pause_reading_briefly_on_each_path() {
    run(
        "slow readers, relay",
        slow_reading("slow readers, relay", false, false),
        5,
    );
    let mut sc = slow_reading("slow readers, tcp", true, false);
    sc.min_direct = 1;
    run("slow readers, tcp", sc, 5);
    let mut sc = slow_reading("slow readers, udp", false, true);
    sc.min_direct = 1;
    sc.udp_after = ms(100);
    run("slow readers, udp", sc, 5);
}

#[test]
fn both_apps_stop_reading_for_minutes_on_direct_tcp() {
    let mut sc = not_reading("not reading, tcp", true, false);
    sc.min_direct = 1;
    run("both_apps_stop_reading_for_minutes_on_direct_tcp", sc, 5);
}

#[test]
fn both_apps_stop_reading_for_minutes_on_direct_udp() {
    let mut sc = not_reading("not reading, udp", false, true);
    sc.min_direct = 1;
    sc.udp_after = ms(500);
    run("both_apps_stop_reading_for_minutes_on_direct_udp", sc, 5);
}

#[test]
fn chaos_matrix_random_cuts_resets_and_stalls() {
    // Direct paths cut and reset, the relay stalled, restarted and
    // black-holed.
    // Each seed draws its own schedule of breaks.
    check_seeds(
        "chaos_matrix_random_cuts_resets_and_stalls",
        seeds_from_env(SEEDS),
        |seed| {
            let mut r = Rng::new(seed ^ 0x5eed);
            let mut sc = base("chaos");
            sc.bytes = 4 << 20;
            sc.tcp = r.chance(0.8);
            sc.udp_after = ms(200 + r.below(2000));
            sc.relay_one_way = ms(5 + r.below(100));
            sc.direct_one_way = ms(1 + r.below(20));
            let mut t = 0;
            for _ in 0..r.below(5) {
                t += 100 + r.below(3000);
                let st = match r.below(5) {
                    0 => Step::CutDirect,
                    1 => Step::ResetDirect,
                    2 => Step::RestartRelay(ms(r.below(3000))),
                    3 if r.chance(0.3) => Step::BlackholeRelay(ms(r.below(1000))),
                    _ => Step::StallRelay(ms(r.below(3000))),
                };
                sc.steps.push((ms(t), st));
            }
            // A relay found dead by silence (3 × 15 s), then the backoff
            // and the new handshake; a stall on top delays the handshake.
            sc.max_stall = Duration::from_secs(49) + sc.relay_one_way * 8;
            let mut w = World::new(seed, sc);
            let res = w.run();
            if res.is_err() {
                for l in w.log.iter().rev().take(20).rev() {
                    eprintln!("{l}");
                }
            }
            res
        },
    );
}

//= spec/direct.md#DI-ID-2
//= spec/direct.md#DI-ID-3
#[test]
fn direct_proven_by_the_guest_after_a_fallback_is_dropped_and_the_retry_goes_direct() {
    // The guest's proof of attempt 0 completes after the host gave that
    // connection up (keepalive timeout) and fell back: the host's RESUME on
    // it names an id below the guest's relay epoch now (the sever-twice race
    // of the NAT lab, made deterministic).
    let mut sc = base("stale direct");
    sc.guest_proof_delay = ms(1500);
    sc.finish_not_before = Duration::from_secs(8);
    sc.min_direct = 1;
    sc.bytes = 4 << 20;
    run(
        "direct_proven_by_the_guest_after_a_fallback_is_dropped_and_the_retry_goes_direct",
        sc,
        SEEDS,
    );
}

/// A relay-only session moving 24 MiB each way (the relay scenarios).
fn relay_only(name: &'static str) -> Scenario {
    let mut sc = base(name);
    sc.policy = PathPolicy::RelayOnly;
    sc.tcp = false;
    sc.udp = false;
    sc.bytes = 24 << 20;
    sc
}

/// A relay-only session whose relay dies (SIGKILL) at about a third of the
/// transfer and comes back empty 2 s later: both sides set up a new relay
/// path under the next generation's rendezvous id, resume from the peer's
/// `received`, and finish byte-exact; the stall is the relay's downtime
/// plus at most the backoff in force (1 s) and the new handshake.
//= spec/direct.md#DI-RELAY-1
//= spec/direct.md#DI-RELAY-2
//= spec/direct.md#DI-RELAY-3
#[test]
fn relay_only_session_survives_a_relay_restart_byte_exact() {
    let mut sc = relay_only("relay restart");
    sc.steps = vec![(ms(80), Step::RestartRelay(Duration::from_secs(2)))];
    sc.min_relay_reconnects = 1;
    sc.max_stall = Duration::from_secs(1) + ms(20) * 7;
    run(
        "relay_only_session_survives_a_relay_restart_byte_exact",
        sc,
        SEEDS,
    );
}

/// The relay restarts twice, the second time while the first new relay
/// path is still being set up, and black-holes once (found dead after
/// three silent keepalive intervals).
#[test]
fn relay_restarts_and_black_holes_repeatedly_byte_exact() {
    let mut sc = relay_only("relay chaos");
    sc.steps = vec![
        (ms(60), Step::RestartRelay(ms(500))),
        (ms(750), Step::RestartRelay(ms(300))),
        (Duration::from_secs(3), Step::BlackholeRelay(ms(200))),
    ];
    sc.finish_not_before = Duration::from_secs(4);
    sc.min_relay_reconnects = 3;
    // The black hole is found after 3 × 15 s of silence.
    sc.max_stall = Duration::from_secs(46);
    run(
        "relay_restarts_and_black_holes_repeatedly_byte_exact",
        sc,
        SEEDS,
    );
}

/// With a direct path carrying the session the relay's death is no stall:
/// the new relay connection becomes the idle fallback, and when the direct
/// path dies later the session falls back onto it.
//= spec/direct.md#DI-RELAY-3
#[test]
fn relay_restart_under_a_direct_path_then_direct_dies_falls_back_to_the_new_relay() {
    let mut sc = base("relay restart under direct");
    sc.udp = false;
    sc.bytes = 8 << 20;
    sc.finish_not_before = Duration::from_secs(6);
    sc.steps = vec![
        (ms(150), Step::RestartRelay(ms(700))),
        (ms(2500), Step::AllowDirect(false)),
        (ms(2600), Step::ResetDirect),
        (ms(5000), Step::AllowDirect(true)),
    ];
    sc.min_direct = 1;
    sc.min_relay_reconnects = 1;
    run(
        "relay_restart_under_a_direct_path_then_direct_dies_falls_back_to_the_new_relay",
        sc,
        SEEDS,
    );
}

/// A relay that never comes back: after `relay_resume` (60 s) both sides
/// give up with a clear error, not a hang.
//= spec/direct.md#DI-RELAY-4
#[test]
fn relay_that_never_comes_back_fails_the_session_after_60_s() {
    check_seeds(
        "relay_that_never_comes_back_fails_the_session_after_60_s",
        seeds_from_env(SEEDS),
        |seed| {
            let mut sc = relay_only("relay gone");
            sc.steps = vec![(ms(80), Step::RestartRelay(Duration::from_secs(100_000)))];
            let mut w = World::new(seed, sc);
            let r = w.run();
            let Err(e) = r else {
                return Err("a session without any path completed".into());
            };
            for s in [H, G] {
                let m = &w.sides[s].m;
                let want =
                    proto::session::SessionFailure::RelayNotRestored(Duration::from_secs(60));
                if *m.status() != Status::Failed(want.clone()) {
                    return Err(format!("side {s}: {:?} ({e})", m.status()));
                }
            }
            // Given up 60 s after the loss (one relay trip after the kill).
            let t = w.now.as_micros() as f64 / 1e6;
            if !(60.0..60.5).contains(&t) {
                return Err(format!("gave up at {t} s"));
            }
            Ok(())
        },
    );
}

/// The guest loses its relay connection (it moved) while the relay carries
/// the session; the host's leg stays open and silent. The guest's first
/// `JOIN` pairs with the host's standby registration of the next
/// generation, so both are back on a relay path within the handshake, far
/// sooner than the host's liveness timeout would notice (§4.8).
//= spec/direct.md#DI-RELAY-5
#[test]
fn guest_losing_its_relay_leg_pairs_with_the_host_standby_at_once() {
    let mut sc = relay_only("guest relay leg");
    // After the host registered its standby (STANDBY_DELAY, 2 s).
    sc.finish_not_before = Duration::from_secs(4);
    sc.steps = vec![(ms(2500), Step::GuestRelayLegDies)];
    sc.min_relay_reconnects = 1;
    // JOIN, PAIRED, the e2e handshake, the host's RESUME: 7 one-way trips
    // (the host's liveness timeout here is 1 s).
    sc.max_stall = ms(20) * 8;
    run(
        "guest_losing_its_relay_leg_pairs_with_the_host_standby_at_once",
        sc,
        SEEDS,
    );
}

/// The guest moves to another network while a direct path carries the
/// session: its runtime closes its relay and direct connections at once,
/// its first `JOIN` pairs with the host's standby registration, the host
/// gives its (silent) direct path `SUSPECT_TIMEOUT` to answer, falls back
/// onto the new relay path and starts the next round 1 s later: direct
/// again on both sides within 3 s of the move, byte-exact (§4.8, §4.9).
//= spec/direct.md#DI-RELAY-6
//= spec/direct.md#DI-NET-1
#[test]
fn guest_moving_to_another_network_is_direct_again_within_3_s() {
    check_seeds(
        "guest_moving_to_another_network_is_direct_again_within_3_s",
        seeds_from_env(SEEDS),
        |seed| {
            let mut sc = base("guest moves");
            sc.udp = false;
            sc.bytes = 8 << 20;
            sc.finish_not_before = Duration::from_secs(8);
            // After the host registered its standby (STANDBY_DELAY, 2 s).
            let moved = ms(2500);
            sc.steps = vec![(moved, Step::GuestMoves)];
            sc.min_direct = 2;
            sc.min_relay_reconnects = 1;
            // The guest waits for the host's RESUME: the host gives its
            // direct path SUSPECT_TIMEOUT (1 s) to answer first.
            sc.max_stall = Duration::from_secs(1) + ms(20) * 8;
            let mut w = World::new(seed, sc);
            w.run()?;
            let at = Instant::ZERO + moved;
            for s in [H, G] {
                let back = w.sides[s]
                    .changes
                    .iter()
                    .find(|(t, p)| *t > at && matches!(p, Path::DirectTcp | Path::DirectUdp))
                    .map(|(t, _)| t.saturating_duration_since(at))
                    .ok_or(format!("side {s} never direct again after the move"))?;
                if back > Duration::from_secs(3) {
                    return Err(format!("side {s} direct again {back:?} after the move"));
                }
            }
            Ok(())
        },
    );
}
