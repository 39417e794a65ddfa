//! One UDP hole-punching attempt's schedule (`spec/direct.md` §4.3.2),
//! sans-IO: which addresses to probe when, which peer-reflexive addresses
//! to add, and when the guest connects. The runtime sends the probes,
//! receives them (checking their tags), and runs the XTCP connections.
//!
//! ```text
//!   a probe with a good tag arrived ──► handle_probe(now, from)
//!   timer fired ──────────────────────► handle_timeout(now)
//!   what to do ◄─────────────────────── poll_action(): Probe(addr) | ProbeGuesses | Connect(addr)
//!   when to call again ◄────────────── poll_timeout()
//! ```

use super::paths::Role;
use crate::time::Instant;
use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

/// Probes go out this often during the first second after the start, then
/// every [`PROBE_SLOW`]: fast enough that a NAT opens within a few RTTs,
/// slow enough to cost nothing.
pub const PROBE_FAST: Duration = Duration::from_millis(20);
/// The slow probe interval.
pub const PROBE_SLOW: Duration = Duration::from_millis(250);
/// How long after the start probes go out fast.
pub const FAST_PHASE: Duration = Duration::from_secs(1);
/// How long guessed ports are probed (rounds every [`PROBE_SLOW`]).
pub const GUESS_PHASE: Duration = Duration::from_secs(2);
/// Addresses probed at most (candidates plus peer-reflexive ones).
pub const MAX_TARGETS: usize = 24;
/// Connections the guest opens (the host accepts) at most in one attempt.
pub const MAX_CONNECTS: usize = 8;

/// What the runtime must do for the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchAction {
    /// Send a probe to this address.
    Probe(SocketAddr),
    /// Send a probe to every guessed port (port prediction, §4.3.4).
    ProbeGuesses,
    /// Guest: open an XTCP connection to this address (a probe came from it).
    Connect(SocketAddr),
}

/// One attempt's schedule; see the module docs.
#[derive(Debug)]
pub struct Punch {
    role: Role,
    targets: Vec<SocketAddr>,
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
    /// are probed too.
    pub fn new(
        role: Role,
        now: Instant,
        mut peers: Vec<SocketAddr>,
        start_at: Instant,
        duration: Duration,
        guesses: bool,
    ) -> Punch {
        peers.truncate(MAX_TARGETS);
        let start = start_at.max(now);
        Punch {
            role,
            targets: peers,
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
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// A probe whose tag checked out arrived from `from`.
    pub fn handle_probe(&mut self, now: Instant, from: SocketAddr) {
        if self.is_over(now) {
            return;
        }
        //= spec/direct.md#DI-PUNCH-1
        //# it MUST join the targets (at most 24) and be probed at once
        if !self.targets.contains(&from) && self.targets.len() < MAX_TARGETS {
            self.targets.push(from);
            self.actions.push_back(PunchAction::Probe(from));
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
                self.actions.push_back(PunchAction::Probe(*t));
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

    //= spec/direct.md#DI-PUNCH-2
    #[test]
    fn guest_connects_at_the_agreed_start_to_peers_whose_probes_arrived() {
        let t0 = Instant::ZERO;
        let start = t0 + Duration::from_millis(500);
        let mut p = Punch::new(
            Role::Guest,
            t0,
            vec![a("198.18.0.1:9")],
            start,
            Duration::from_secs(5),
            false,
        );
        p.handle_timeout(t0);
        assert_eq!(drain(&mut p), vec![PunchAction::Probe(a("198.18.0.1:9"))]);
        // A probe from a peer-reflexive address: probed back at once, and
        // connected to only at the start.
        p.handle_probe(t0 + Duration::from_millis(10), a("198.18.0.1:4444"));
        assert_eq!(
            drain(&mut p),
            vec![PunchAction::Probe(a("198.18.0.1:4444"))]
        );
        assert_eq!(p.poll_timeout(), Some(t0 + PROBE_FAST));
        p.handle_timeout(start);
        let acts = drain(&mut p);
        assert!(acts.contains(&PunchAction::Connect(a("198.18.0.1:4444"))));
        // No second connection to the same address.
        p.handle_probe(start, a("198.18.0.1:4444"));
        assert!(!drain(&mut p).contains(&PunchAction::Connect(a("198.18.0.1:4444"))));
    }

    #[test]
    fn host_never_connects_and_everything_is_bounded() {
        let t0 = Instant::ZERO;
        let mut p = Punch::new(Role::Host, t0, Vec::new(), t0, Duration::from_secs(1), true);
        for i in 0..100u16 {
            p.handle_probe(t0, SocketAddr::from(([198, 18, 0, 1], 1000 + i)));
        }
        let acts = drain(&mut p);
        assert_eq!(
            acts.len(),
            MAX_TARGETS,
            "peer-reflexive targets are bounded"
        );
        assert!(acts.iter().all(|a| matches!(a, PunchAction::Probe(_))));
        // Probing rounds: fast, then slow; over after the duration.
        let mut t = t0;
        let mut rounds = 0;
        while let Some(next) = p.poll_timeout() {
            assert!(next >= t, "time moves forward");
            t = next;
            p.handle_timeout(t);
            if drain(&mut p)
                .iter()
                .any(|a| matches!(a, PunchAction::Probe(_)))
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
