//! One UDP hole-punching attempt's schedule (`spec/direct.md` §4.3.2),
//! sans-IO: which addresses to probe when, with which nonce and echo, which
//! peer-reflexive addresses to believe, and when the guest connects. The
//! runtime sends the probes, receives them (checking their tags and roles,
//! [`super::probe::ProbeKey::verify`]), and runs the XTCP connections.
//!
//! ```text
//!   a probe with a good tag arrived ──► handle_probe(now, from, nonce, echo)
//!   timer fired ──────────────────────► handle_timeout(now)
//!   what to do ◄─────────────────────── poll_action(): Probe{to, nonce, echo} | ProbeGuesses | Connect(addr)
//!   when to call again ◄────────────── poll_timeout()
//! ```
//!
//! A probe from an address that is not a target proves nothing by itself:
//! it may be a captured probe replayed from a spoofed source. Such an
//! address gets a *challenge* (one probe carrying this side's nonce for it,
//! at most [`MAX_CHALLENGES`] per address, [`PROBE_SLOW`] apart, at most
//! [`MAX_CHALLENGED`] addresses per attempt) and joins the targets only
//! when a probe from it echoes that nonce: whoever sends from it receives
//! there. Replays thus cost at most one datagram each, and a bounded number
//! in all.

use super::paths::Role;
use super::probe::NonceKey;
use crate::time::Instant;
use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

/// Probes go out this often during the first second after the start, then
/// every [`PROBE_SLOW`]: fast enough that a NAT opens within a few RTTs,
/// slow enough to cost nothing.
pub const PROBE_FAST: Duration = Duration::from_millis(20);
/// The slow probe interval (also the least spacing of two challenges to
/// one address).
pub const PROBE_SLOW: Duration = Duration::from_millis(250);
/// How long after the start probes go out fast.
pub const FAST_PHASE: Duration = Duration::from_secs(1);
/// How long guessed ports are probed (rounds every [`PROBE_SLOW`]).
pub const GUESS_PHASE: Duration = Duration::from_secs(2);
/// Addresses probed at most (candidates plus peer-reflexive ones).
pub const MAX_TARGETS: usize = 24;
/// Connections the guest opens (the host accepts) at most in one attempt.
pub const MAX_CONNECTS: usize = 8;
/// Challenges sent to one address that is not a target, at most.
pub const MAX_CHALLENGES: u8 = 3;
/// Addresses challenged at most in one attempt (first come; later ones get
/// nothing).
pub const MAX_CHALLENGED: usize = 64;

/// What the runtime must do for the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchAction {
    /// Send a probe with this nonce and echo to this address.
    Probe {
        /// Where.
        to: SocketAddr,
        /// This side's nonce for `to` ([`Punch::nonce`]).
        nonce: u64,
        /// The nonce of the last probe received from `to` (0: none).
        echo: u64,
    },
    /// Send a probe to every guessed port (port prediction, §4.3.4), each
    /// with its own nonce ([`Punch::nonce`]) and echo 0.
    ProbeGuesses,
    /// Guest: open an XTCP connection to this address (a probe came from it).
    Connect(SocketAddr),
}

/// An address probed every round, and what to echo to it.
#[derive(Clone, Copy, Debug)]
struct Target {
    addr: SocketAddr,
    echo: u64,
}

/// An address that sent a valid probe without being a target.
#[derive(Clone, Copy, Debug)]
struct Challenge {
    addr: SocketAddr,
    sent: u8,
    last: Instant,
}

/// One attempt's schedule; see the module docs.
#[derive(Debug)]
pub struct Punch {
    role: Role,
    nonces: NonceKey,
    targets: Vec<Target>,
    challenged: Vec<Challenge>,
    connected: Vec<SocketAddr>,
    pending: Vec<SocketAddr>,
    begun: Instant,
    start_at: Instant,
    end: Instant,
    next_probe: Instant,
    next_guess: Instant,
    guesses: bool,
    actions: VecDeque<PunchAction>,
}

impl Punch {
    /// An attempt begun at `now` that probes `peers`, connects (guest) or
    /// proves what it accepted (host) no earlier than `start_at`, and ends
    /// `duration` after it; `guesses`: port prediction's guessed ports
    /// are probed too. `nonces`: this side's nonces for the attempt (from
    /// 32 random bytes).
    pub fn new(
        role: Role,
        now: Instant,
        mut peers: Vec<SocketAddr>,
        start_at: Instant,
        duration: Duration,
        guesses: bool,
        nonces: NonceKey,
    ) -> Punch {
        peers.dedup();
        peers.truncate(MAX_TARGETS);
        let start = start_at.max(now);
        Punch {
            role,
            nonces,
            targets: peers
                .into_iter()
                .map(|addr| Target { addr, echo: 0 })
                .collect(),
            challenged: Vec::new(),
            connected: Vec::new(),
            pending: Vec::new(),
            begun: now,
            start_at: start,
            end: start + duration,
            next_probe: now,
            next_guess: now,
            guesses,
            actions: VecDeque::new(),
        }
    }

    /// The agreed start: the guest connects no earlier, the host proves
    /// no accepted connection earlier (§4.3.2).
    pub fn start_at(&self) -> Instant {
        self.start_at
    }

    /// The attempt is over.
    pub fn is_over(&self, now: Instant) -> bool {
        now >= self.end
    }

    /// The addresses probed now.
    pub fn targets(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.targets.iter().map(|t| t.addr)
    }

    /// This side's nonce for probes to `to`.
    pub fn nonce(&self, to: SocketAddr) -> u64 {
        self.nonces.nonce(to)
    }

    fn probe_to(&self, t: Target) -> PunchAction {
        PunchAction::Probe {
            to: t.addr,
            nonce: self.nonces.nonce(t.addr),
            echo: t.echo,
        }
    }

    /// A probe whose tag and role checked out arrived from `from`, carrying
    /// the peer's `nonce` and `echo`.
    pub fn handle_probe(&mut self, now: Instant, from: SocketAddr, nonce: u64, echo: u64) {
        if self.is_over(now) {
            return;
        }
        if let Some(t) = self.targets.iter_mut().find(|t| t.addr == from) {
            t.echo = nonce;
        } else if echo != 0 && echo == self.nonces.nonce(from) {
            // It echoes the nonce we sent to `from` (a challenge, or a
            // guessed port's probe): the peer receives there.
            //= spec/direct.md#DI-PUNCH-1
            //# it MUST join the targets (at most 24) and be probed at once
            if self.targets.len() >= MAX_TARGETS {
                return;
            }
            let t = Target {
                addr: from,
                echo: nonce,
            };
            self.targets.push(t);
            self.challenged.retain(|c| c.addr != from);
            self.actions.push_back(self.probe_to(t));
        } else {
            self.challenge(now, from, nonce);
            return;
        }
        //= spec/direct.md#DI-PUNCH-2
        //# The guest MUST NOT connect before the agreed time
        if self.role == Role::Guest
            && self.connected.len() < MAX_CONNECTS
            && !self.connected.contains(&from)
        {
            self.connected.push(from);
            if now >= self.start_at {
                self.actions.push_back(PunchAction::Connect(from));
            } else {
                self.pending.push(from);
            }
        }
    }

    /// A valid probe from `from`, not a target, that echoes nothing we sent
    /// there: at most one challenge in answer, bounded per address and in
    /// all.
    fn challenge(&mut self, now: Instant, from: SocketAddr, nonce: u64) {
        let i = match self.challenged.iter().position(|c| c.addr == from) {
            Some(i) => i,
            //= spec/direct.md#DI-PUNCH-3
            //# MUST NOT probe it more than 3 times
            None if self.challenged.len() < MAX_CHALLENGED => {
                self.challenged.push(Challenge {
                    addr: from,
                    sent: 0,
                    last: now,
                });
                self.challenged.len() - 1
            }
            None => return,
        };
        let Some(c) = self.challenged.get_mut(i) else {
            return;
        };
        //= spec/direct.md#DI-PUNCH-3
        //# at most one probe per probe received from it, 250 ms apart
        if c.sent >= MAX_CHALLENGES || (c.sent > 0 && now < c.last + PROBE_SLOW) {
            return;
        }
        c.sent += 1;
        c.last = now;
        self.actions.push_back(PunchAction::Probe {
            to: from,
            nonce: self.nonces.nonce(from),
            echo: nonce,
        });
    }

    /// Timers: probe rounds and the agreed start. Idempotent.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_over(now) {
            return;
        }
        if now >= self.start_at {
            for from in self.pending.drain(..) {
                self.actions.push_back(PunchAction::Connect(from));
            }
        }
        if now >= self.next_probe {
            for t in &self.targets {
                self.actions.push_back(self.probe_to(*t));
            }
            // Guessed ports: a few rounds early in the attempt, while the
            // peer's spray sockets' mappings are fresh.
            if self.guesses
                && now.saturating_duration_since(self.begun) < GUESS_PHASE
                && now >= self.next_guess
            {
                self.actions.push_back(PunchAction::ProbeGuesses);
                self.next_guess = now + PROBE_SLOW;
            }
            let fast_until = self.start_at + FAST_PHASE;
            let step = if now < fast_until {
                PROBE_FAST
            } else {
                PROBE_SLOW
            };
            self.next_probe = now + step;
        }
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<PunchAction> {
        self.actions.pop_front()
    }

    /// When [`Punch::handle_timeout`] is due (at the latest, the end).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_probe.min(self.end);
        if !self.pending.is_empty() {
            t = t.min(self.start_at);
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("literal")
    }

    fn drain(p: &mut Punch) -> Vec<PunchAction> {
        core::iter::from_fn(|| p.poll_action()).collect()
    }

    fn nonces() -> NonceKey {
        NonceKey::new(&[0x22; 32])
    }

    fn probes_to(acts: &[PunchAction], to: SocketAddr) -> usize {
        acts.iter()
            .filter(|x| matches!(x, PunchAction::Probe { to: t, .. } if *t == to))
            .count()
    }

    /// Run the attempt's timers to its end; every action.
    fn run_out(p: &mut Punch, from: Instant) -> Vec<PunchAction> {
        let mut t = from;
        let mut all = drain(p);
        while let Some(next) = p.poll_timeout() {
            assert!(next >= t, "time moves forward");
            t = next;
            p.handle_timeout(t);
            all.extend(drain(p));
            if p.is_over(t) {
                break;
            }
        }
        all
    }

    //= spec/direct.md#DI-PUNCH-2
    //= spec/direct.md#DI-PUNCH-1
    #[test]
    fn guest_connects_at_the_agreed_start_to_peers_whose_probes_arrived() {
        let t0 = Instant::ZERO;
        let start = t0 + Duration::from_millis(500);
        let cand = a("198.18.0.1:9");
        let refl = a("198.18.0.1:4444");
        let mut p = Punch::new(
            Role::Guest,
            t0,
            vec![cand],
            start,
            Duration::from_secs(5),
            false,
            nonces(),
        );
        p.handle_timeout(t0);
        let n_cand = p.nonce(cand);
        assert_eq!(
            drain(&mut p),
            vec![PunchAction::Probe {
                to: cand,
                nonce: n_cand,
                echo: 0
            }]
        );
        // A probe from a peer-reflexive address: one challenge, carrying our
        // nonce for it and echoing its nonce; not yet a target.
        p.handle_probe(t0 + Duration::from_millis(10), refl, 77, 0);
        let n_refl = p.nonce(refl);
        assert_eq!(
            drain(&mut p),
            vec![PunchAction::Probe {
                to: refl,
                nonce: n_refl,
                echo: 77
            }]
        );
        assert!(!p.targets().any(|t| t == refl));
        // Its answer echoes our nonce: it joins the targets, is probed at
        // once (echoing its latest nonce), and connected to at the start.
        p.handle_probe(t0 + Duration::from_millis(30), refl, 78, n_refl);
        assert_eq!(
            drain(&mut p),
            vec![PunchAction::Probe {
                to: refl,
                nonce: n_refl,
                echo: 78
            }]
        );
        assert!(p.targets().any(|t| t == refl));
        assert_eq!(p.poll_timeout(), Some(t0 + PROBE_FAST));
        p.handle_timeout(start);
        let acts = drain(&mut p);
        assert!(acts.contains(&PunchAction::Connect(refl)));
        // The candidate echoes what it last received (nothing yet).
        assert!(acts.contains(&PunchAction::Probe {
            to: cand,
            nonce: n_cand,
            echo: 0
        }));
        // No second connection to the same address.
        p.handle_probe(start, refl, 79, 0);
        assert!(!drain(&mut p).contains(&PunchAction::Connect(refl)));
    }

    //= spec/direct.md#DI-PUNCH-3
    #[test]
    fn replays_from_spoofed_sources_cost_one_datagram_each_and_are_bounded() {
        let t0 = Instant::ZERO;
        let peer = a("198.18.0.1:9");
        let mut p = Punch::new(
            Role::Guest,
            t0,
            vec![peer],
            t0,
            Duration::from_secs(15),
            false,
            nonces(),
        );
        // A captured probe of the peer (nonce 5, echoing our nonce for the
        // peer's real address) replayed from 100 other sources, 10 times each
        // within 250 ms, then again at 1 s, 2 s, … 14 s.
        let captured_echo = p.nonce(peer);
        let spoofed: Vec<SocketAddr> = (0..100u16)
            .map(|i| SocketAddr::from(([198, 18, 1, (i % 200) as u8], 2000 + i)))
            .collect();
        let mut acts = Vec::new();
        for s in 0..15u64 {
            let now = t0 + Duration::from_secs(s);
            p.handle_timeout(now);
            for _ in 0..10 {
                for x in &spoofed {
                    p.handle_probe(now, *x, 5, captured_echo);
                }
            }
            acts.extend(drain(&mut p));
        }
        acts.extend(run_out(&mut p, t0 + Duration::from_secs(14)));
        let to_spoofed: usize = spoofed.iter().map(|x| probes_to(&acts, *x)).sum();
        assert!(
            spoofed
                .iter()
                .all(|x| probes_to(&acts, *x) <= usize::from(MAX_CHALLENGES)),
            "at most {MAX_CHALLENGES} probes per spoofed source"
        );
        assert!(
            to_spoofed <= MAX_CHALLENGED * usize::from(MAX_CHALLENGES),
            "{to_spoofed} probes to spoofed sources"
        );
        // The first burst (1,000 replays within 250 ms) cost one probe per
        // source for the first 64 sources, nothing for the others.
        assert_eq!(
            spoofed.iter().filter(|x| probes_to(&acts, **x) > 0).count(),
            MAX_CHALLENGED
        );
        assert!(!acts.iter().any(|x| matches!(x, PunchAction::Connect(_))));
        assert_eq!(p.targets().collect::<Vec<_>>(), vec![peer]);
        // Without the echo rule each would have been probed every 20 ms,
        // then every 250 ms: about 100 probes each.
    }

    #[test]
    fn a_guessed_ports_answer_is_believed_at_once() {
        let t0 = Instant::ZERO;
        let mut p = Punch::new(
            Role::Guest,
            t0,
            Vec::new(),
            t0,
            Duration::from_secs(5),
            true,
            nonces(),
        );
        let hit = a("198.18.0.7:40123");
        // The spray socket at `hit` received our guess (nonce(hit)) and
        // answered echoing it.
        p.handle_probe(t0, hit, 9, p.nonce(hit));
        let acts = drain(&mut p);
        assert!(acts.contains(&PunchAction::Connect(hit)));
        assert_eq!(probes_to(&acts, hit), 1);
        // A wrong echo is a challenge, not a target.
        let other = a("198.18.0.7:40124");
        p.handle_probe(t0, other, 9, p.nonce(hit));
        let acts = drain(&mut p);
        assert!(!acts.contains(&PunchAction::Connect(other)));
        assert!(!p.targets().any(|t| t == other));
    }

    #[test]
    fn host_never_connects_and_everything_is_bounded() {
        let t0 = Instant::ZERO;
        let mut p = Punch::new(
            Role::Host,
            t0,
            Vec::new(),
            t0,
            Duration::from_secs(1),
            true,
            nonces(),
        );
        for i in 0..100u16 {
            let from = SocketAddr::from(([198, 18, 0, 1], 1000 + i));
            let n = p.nonce(from);
            p.handle_probe(t0, from, 1, n);
        }
        let acts = drain(&mut p);
        assert_eq!(
            acts.len(),
            MAX_TARGETS,
            "peer-reflexive targets are bounded"
        );
        assert!(acts.iter().all(|a| matches!(a, PunchAction::Probe { .. })));
        // Probing rounds: fast, then slow; over after the duration.
        let mut t = t0;
        let mut rounds = 0;
        while let Some(next) = p.poll_timeout() {
            assert!(next >= t, "time moves forward");
            t = next;
            p.handle_timeout(t);
            if drain(&mut p)
                .iter()
                .any(|a| matches!(a, PunchAction::Probe { .. }))
            {
                rounds += 1;
            }
            if p.is_over(t) || rounds > 1000 {
                break;
            }
        }
        assert!(
            rounds <= 1 + 1000 / 20,
            "about one round per 20 ms: {rounds}"
        );
        assert!(p.is_over(t0 + Duration::from_secs(1)));
    }
}
