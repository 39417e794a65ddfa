//! The direct TCP listener lives for one round of direct attempts
//! (`spec/direct.md` §4.1, DI-LISTEN-1): the path manager closes it
//! (`Action::StopListener`) once a direct path is chosen or the round's TCP
//! attempt is over, and a later round opens and closes its own.

use core::net::SocketAddr;
use core::time::Duration;
use xtcp_proto::session::{
    encode, Action, Candidate, CandidateKind, Frame, Path, PathConfig, PathManager, Role, Transport,
};
use xtcp_proto::Instant;

const ATTEMPT: Duration = Duration::from_secs(15);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal")
}

fn manager(role: Role) -> PathManager {
    let mut cfg = PathConfig::new(role, addr("198.18.0.1:1000"));
    cfg.tcp_attempt = ATTEMPT;
    // UDP apart: this is about the TCP listener.
    cfg.udp = false;
    let peer = vec![Candidate {
        kind: CandidateKind::Host,
        transport: Transport::Tcp,
        addr: addr("198.18.0.2:7000"),
    }];
    PathManager::new(cfg, Instant::ZERO, peer, Some((7000, false))).0
}

fn actions(m: &mut PathManager) -> Vec<Action> {
    core::iter::from_fn(|| m.poll_action()).collect()
}

fn stops(a: &[Action]) -> usize {
    a.iter().filter(|a| **a == Action::StopListener).count()
}

fn at(s: u64) -> Instant {
    ms(s * 1000)
}

fn ms(v: u64) -> Instant {
    Instant::from_micros(v * 1000)
}

/// Run the manager's timers from `from` to `to`; every action.
fn run(m: &mut PathManager, from: Instant, to: Instant) -> Vec<Action> {
    let mut all = actions(m);
    let mut t = from;
    while let Some(next) = m.poll_timeout() {
        if next > to {
            break;
        }
        t = next.max(t);
        m.handle_timeout(t);
        all.extend(actions(m));
    }
    m.handle_timeout(to);
    all.extend(actions(m));
    all
}

//= spec/direct.md#DI-LISTEN-1
#[test]
fn the_first_rounds_listener_closes_when_its_tcp_attempt_is_over() {
    for role in [Role::Host, Role::Guest] {
        let mut m = manager(role);
        let before = run(&mut m, Instant::ZERO, ms(14_999));
        assert_eq!(stops(&before), 0, "{role:?}: open during the attempt");
        let after = run(&mut m, ms(14_999), at(60));
        assert_eq!(stops(&after), 1, "{role:?}: closed once, at its end");
    }
}

//= spec/direct.md#DI-LISTEN-1
#[test]
fn choosing_a_direct_path_closes_the_listener_and_a_new_round_has_its_own() {
    // Host: the first proven direct connection wins, the listener closes.
    let mut h = manager(Role::Host);
    let _ = actions(&mut h);
    let d = h
        .handle_path_opened(at(1), Path::DirectTcp, None)
        .expect("wanted");
    assert_eq!(stops(&actions(&mut h)), 1, "host: closed on choosing");
    // Guest: the host's RESUME on a direct connection chooses it.
    let mut g = manager(Role::Guest);
    let _ = actions(&mut g);
    let gd = g
        .handle_path_opened(at(1), Path::DirectTcp, Some(0))
        .expect("wanted");
    let mut resume = Vec::new();
    encode(
        &Frame::Resume {
            path_id: 1,
            received: 0,
        },
        &mut resume,
    )
    .expect("encodes");
    g.handle_path_data(at(1), gd, &resume);
    assert_eq!(stops(&actions(&mut g)), 1, "guest: closed on choosing");

    // The host's direct path dies: fallback, a new listener for the next
    // round, open until the retry's TCP attempt is over.
    h.handle_path_closed(at(2), d);
    let a = actions(&mut h);
    assert!(a.contains(&Action::StartListener), "{a:?}");
    let cands = vec![Candidate {
        kind: CandidateKind::Host,
        transport: Transport::Tcp,
        addr: addr("198.18.0.1:7100"),
    }];
    h.handle_listener(at(2), Some((7100, false, cands)));
    // The retry is due 10 s after the fallback (at 12 s), its attempt lasts
    // 15 s.
    let retry = 12_000;
    let waiting = run(&mut h, at(2), ms(retry - 1));
    assert_eq!(
        stops(&waiting),
        0,
        "open while the round waits for its retry"
    );
    let attempt = run(&mut h, ms(retry - 1), ms(retry + 14_999));
    assert!(
        attempt.iter().any(|a| matches!(a, Action::DialTcp { .. })),
        "the retry dials: {attempt:?}"
    );
    assert_eq!(stops(&attempt), 0, "open during the retry's attempt");
    let over = run(&mut h, ms(retry + 14_999), at(120));
    assert_eq!(stops(&over), 1, "closed when the retry's attempt is over");
}
