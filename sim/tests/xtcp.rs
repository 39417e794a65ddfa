//! XTCP end to end in the simulator: property tests, the chaos matrix, the
//! Mathis-bound goodput check, congestion-window traces and NAT rebinding.
//!
//! Replay a failing seed with `XTCP_SIM_SEED=<seed> cargo test --release -p xtcp-sim --test xtcp <name>`;
//! run more seeds per cell with `XTCP_SIM_SEEDS=1000`.

mod common;

use common::{payload, sha256, sim_config, App};
use proto::xtcp::cc::Algorithm;
use proto::xtcp::conn::Config;
use proto::{Instant, State};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::net::SocketAddr;
use std::time::Duration;
use xtcp_sim::{
    check_seeds, seeds_from_env, LinkConfig, LossModel, NodeId, Record, RecordKind, Sim,
};

fn addr_a() -> SocketAddr {
    "198.18.0.1:40000".parse().unwrap()
}
fn addr_b() -> SocketAddr {
    "198.18.0.2:443".parse().unwrap()
}

struct Scenario {
    cfg: Config,
    ab: LinkConfig,
    ba: LinkConfig,
    a_bytes: usize,
    b_bytes: usize,
    deadline: Duration,
    rebind: Option<(Instant, SocketAddr)>,
}

#[derive(Debug)]
struct Report {
    /// Time from the first SYN to the last byte received by B.
    a_to_b_done: Option<Instant>,
    a_connected: Option<Instant>,
}

fn run(seed: u64, sc: &Scenario) -> Result<(Sim<App>, NodeId, NodeId, Report), String> {
    run_observed(seed, sc, None)
}

/// A datagram observer for [`run_observed`].
type Observer = Box<dyn FnMut(&Record<'_>) + Send>;

/// [`run`], with `observer` watching every datagram.
fn run_observed(
    seed: u64,
    sc: &Scenario,
    observer: Option<Observer>,
) -> Result<(Sim<App>, NodeId, NodeId, Report), String> {
    let mut sim: Sim<App> = Sim::new(seed);
    if let Some(f) = observer {
        sim.set_observer(f);
    }
    let da = payload(seed.wrapping_mul(2).wrapping_add(1), sc.a_bytes);
    let db = payload(seed.wrapping_mul(2).wrapping_add(2), sc.b_bytes);
    let a = sim.add_node(
        addr_a(),
        App::new(sc.cfg.clone(), true, addr_b(), da.clone(), 1),
    );
    let b = sim.add_node(
        addr_b(),
        App::new(sc.cfg.clone(), false, addr_a(), db.clone(), 2),
    );
    sim.set_link(a, b, sc.ab.clone());
    sim.set_link(b, a, sc.ba.clone());
    if let Some((at, new)) = sc.rebind {
        sim.set_address(a, at, new);
    }
    let out = sim.run_until(Instant::ZERO + sc.deadline, |s| {
        s.node(a).finished() && s.node(b).finished()
    });
    let (na, nb) = (sim.node(a), sim.node(b));
    let describe = || {
        format!(
            "stop={:?} at {:?}; A: state={:?} err={:?} sent={}/{} recv={}/{}; B: state={:?} err={:?} sent={}/{} recv={}/{}",
            out.stop,
            out.at,
            na.state(),
            na.error,
            na.written,
            da.len(),
            na.received,
            db.len(),
            nb.state(),
            nb.error,
            nb.written,
            db.len(),
            nb.received,
            da.len()
        )
    };
    if !out.is_done() {
        return Err(format!("did not finish: {}", describe()));
    }
    if nb.digest.as_deref() != Some(&sha256(&da)[..])
        || na.digest.as_deref() != Some(&sha256(&db)[..])
    {
        return Err(format!("SHA-256 mismatch: {}", describe()));
    }
    // RFC 9293 §3.6: after an orderly close each side is CLOSED or in TIME-WAIT, at least one of them TIME-WAIT.
    for (n, who) in [(na, "A"), (nb, "B")] {
        if n.error.is_some() || !matches!(n.state(), Some(State::TimeWait) | Some(State::Closed)) {
            return Err(format!("{who} ended badly: {}", describe()));
        }
    }
    // The active closer sits in TIME-WAIT for 2 MSL; only if the network lost
    // every ACK of the last FIN for that long may both have reached CLOSED.
    if na.state() != Some(State::TimeWait)
        && nb.state() != Some(State::TimeWait)
        && out.at < Instant::ZERO + sc.cfg.msl * 2
    {
        return Err(format!("nobody in TIME-WAIT: {}", describe()));
    }
    let report = Report {
        a_to_b_done: nb.eof_at,
        a_connected: na.connected_at,
    };
    Ok((sim, a, b, report))
}

fn lossy(p: f64, burst: bool) -> LossModel {
    if p <= 0.0 {
        LossModel::None
    } else if burst {
        // Gilbert-Elliott with mean burst length 3 and long-run loss rate p.
        let p_bg = 1.0 / 3.0;
        let p_gb = p * p_bg / (1.0 - p);
        LossModel::GilbertElliott {
            p_good_to_bad: p_gb,
            p_bad_to_good: p_bg,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        }
    } else {
        LossModel::Bernoulli(p)
    }
}

// ---------------------------------------------------------------------
// Property: arbitrary payloads both ways under arbitrary impairments.
// ---------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Impairments {
    seed: u64,
    a_bytes: usize,
    b_bytes: usize,
    loss_pct: u8,
    burst: bool,
    reorder_pct: u8,
    dup_pct: u8,
    one_way_ms: u16,
    blackout: Option<(u16, u16)>,
    nagle: bool,
    cc: bool,
}

impl Arbitrary for Impairments {
    fn arbitrary(g: &mut Gen) -> Self {
        let pick = |g: &mut Gen, n: u32| u32::arbitrary(g) % n;
        Impairments {
            seed: u64::arbitrary(g),
            a_bytes: pick(g, 200_000) as usize,
            b_bytes: pick(g, 200_000) as usize,
            loss_pct: pick(g, 31) as u8,
            burst: bool::arbitrary(g),
            reorder_pct: pick(g, 20) as u8,
            dup_pct: pick(g, 10) as u8,
            one_way_ms: 1 + pick(g, 200) as u16,
            blackout: if bool::arbitrary(g) {
                Some((pick(g, 5000) as u16, 1 + pick(g, 5000) as u16))
            } else {
                None
            },
            nagle: bool::arbitrary(g),
            cc: bool::arbitrary(g),
        }
    }
}

fn impaired_link(i: &Impairments) -> LinkConfig {
    let delay = Duration::from_millis(u64::from(i.one_way_ms));
    LinkConfig {
        delay,
        jitter: delay / 10,
        loss: lossy(f64::from(i.loss_pct) / 100.0, i.burst),
        reorder: (i.reorder_pct > 0).then(|| {
            (
                f64::from(i.reorder_pct) / 100.0,
                delay / 2 + Duration::from_millis(1),
            )
        }),
        duplicate: f64::from(i.dup_pct) / 100.0,
        blackouts: i
            .blackout
            .map(|(s, l)| {
                let s = Instant::from_millis(u64::from(s));
                vec![(s, s + Duration::from_millis(u64::from(l)))]
            })
            .unwrap_or_default(),
        ..LinkConfig::default()
    }
}

fn chaos_config() -> Config {
    Config {
        // 30 % bursty loss on both paths plus 2 s blackouts: a FIN and its ACK may
        // both need many tries, so allow 10 minutes and cap the backoff at 4 s.
        user_timeout: Duration::from_secs(600),
        max_rto: Duration::from_secs(4),
        syn_retries: 30,
        // Simulated time is free: a real 2×MSL TIME-WAIT keeps the active closer
        // answering retransmitted FINs however long the impairments delay them.
        msl: Duration::from_secs(30),
        ..sim_config()
    }
}

#[test]
fn prop_both_directions_byte_exact_under_impairments() {
    fn prop(i: Impairments) -> TestResult {
        let link = impaired_link(&i);
        let sc = Scenario {
            cfg: Config {
                nagle: i.nagle,
                congestion: std::sync::Arc::new(if i.cc {
                    Algorithm::Cubic
                } else {
                    Algorithm::NewReno
                }),
                ..chaos_config()
            },
            ab: link.clone(),
            ba: link,
            a_bytes: i.a_bytes,
            b_bytes: i.b_bytes,
            deadline: Duration::from_secs(3600),
            rebind: None,
        };
        match run(i.seed, &sc) {
            Ok(_) => TestResult::passed(),
            Err(e) => TestResult::error(format!("{i:?}: {e}")),
        }
    }
    let tests = std::env::var("XTCP_QC_TESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    QuickCheck::new()
        .tests(tests)
        .max_tests(tests * 2)
        .quickcheck(prop as fn(Impairments) -> TestResult);
}

// ---------------------------------------------------------------------
// Chaos matrix: loss {0,2,10,30}% in bursts, 2% corruption, 5% duplication,
// reordering, a 5 s-on / 2 s-off blackhole, RTT 15 ms and 750 ms.
// ---------------------------------------------------------------------

fn chaos_cell(name: &str, loss: f64, rtt_ms: u64, bytes: usize, default_seeds: u64) {
    check_seeds(name, seeds_from_env(default_seeds), |seed| {
        let one_way = Duration::from_micros(rtt_ms * 500);
        let horizon = Instant::from_millis(3_600_000);
        let link = LinkConfig {
            delay: one_way,
            jitter: one_way / 10,
            bandwidth_bps: 50_000_000,
            queue_bytes: Some(1 << 20),
            loss: lossy(loss, true),
            reorder: Some((0.05, one_way / 4 + Duration::from_millis(1))),
            duplicate: 0.05,
            corrupt: 0.02,
            mtu: Some(1500),
            blackouts: LinkConfig::periodic_blackouts(
                Instant::ZERO,
                Duration::from_secs(5),
                Duration::from_secs(2),
                horizon,
            ),
        };
        let sc = Scenario {
            cfg: chaos_config(),
            ab: link.clone(),
            ba: link,
            a_bytes: bytes,
            b_bytes: bytes,
            deadline: Duration::from_secs(3600),
            rebind: None,
        };
        run(seed, &sc).map(|_| ())
    });
}

#[test]
fn chaos_loss0_rtt15() {
    chaos_cell("chaos_loss0_rtt15", 0.0, 15, 1 << 20, 50);
}
#[test]
fn chaos_loss2_rtt15() {
    chaos_cell("chaos_loss2_rtt15", 0.02, 15, 512 << 10, 50);
}
#[test]
fn chaos_loss10_rtt15() {
    chaos_cell("chaos_loss10_rtt15", 0.10, 15, 256 << 10, 50);
}
#[test]
fn chaos_loss30_rtt15() {
    chaos_cell("chaos_loss30_rtt15", 0.30, 15, 64 << 10, 50);
}
#[test]
fn chaos_loss0_rtt750() {
    chaos_cell("chaos_loss0_rtt750", 0.0, 750, 1 << 20, 50);
}
#[test]
fn chaos_loss2_rtt750() {
    chaos_cell("chaos_loss2_rtt750", 0.02, 750, 256 << 10, 50);
}
#[test]
fn chaos_loss10_rtt750() {
    chaos_cell("chaos_loss10_rtt750", 0.10, 750, 128 << 10, 50);
}
#[test]
fn chaos_loss30_rtt750() {
    chaos_cell("chaos_loss30_rtt750", 0.30, 750, 64 << 10, 50);
}

// ---------------------------------------------------------------------
// Goodput against the Mathis bound: 64 MiB, 10 ms RTT, 100 Mbit/s, 1% loss.
// ---------------------------------------------------------------------

/// Mathis et al.: BW ≤ (MSS / RTT) · sqrt(3/2) / sqrt(p), bits per second.
fn mathis_bps(mss: f64, rtt: f64, p: f64) -> f64 {
    mss * 8.0 / rtt * (1.5f64).sqrt() / p.sqrt()
}

fn goodput_at_one_percent(alg: Algorithm) -> (f64, f64) {
    let total = 64 << 20;
    let link = LinkConfig {
        delay: Duration::from_millis(5),
        bandwidth_bps: 100_000_000,
        queue_bytes: Some(250_000),
        loss: LossModel::Bernoulli(0.01),
        ..LinkConfig::default()
    };
    let sc = Scenario {
        cfg: Config {
            congestion: std::sync::Arc::new(alg),
            ..sim_config()
        },
        ab: link.clone(),
        ba: LinkConfig {
            loss: LossModel::Bernoulli(0.01),
            delay: Duration::from_millis(5),
            ..LinkConfig::default()
        },
        a_bytes: total,
        b_bytes: 0,
        deadline: Duration::from_secs(600),
        rebind: None,
    };
    let (_, _, _, r) = run(1, &sc).unwrap_or_else(|e| panic!("transfer failed: {e}"));
    let secs = (r.a_to_b_done.unwrap() - r.a_connected.unwrap()).as_secs_f64();
    let goodput = total as f64 * 8.0 / secs;
    // Effective MSS: 1472-byte datagrams minus 12 (XTCP) + 20 (TCP) + 12 (timestamps).
    let bound = mathis_bps(1428.0, 0.010, 0.01);
    (goodput, bound)
}

#[test]
fn goodput_64mib_1pct_loss_vs_mathis_cubic() {
    let (g, b) = goodput_at_one_percent(Algorithm::Cubic);
    eprintln!(
        "CUBIC goodput {:.1} Mbit/s, Mathis bound {:.1} Mbit/s, ratio {:.2}",
        g / 1e6,
        b / 1e6,
        g / b
    );
    assert!(
        g >= 0.8 * b,
        "goodput {:.1} Mbit/s < 0.8 × Mathis {:.1}",
        g / 1e6,
        b / 1e6
    );
}

#[test]
fn goodput_64mib_1pct_loss_vs_mathis_newreno() {
    let (g, b) = goodput_at_one_percent(Algorithm::NewReno);
    eprintln!(
        "NewReno goodput {:.1} Mbit/s, Mathis bound {:.1} Mbit/s, ratio {:.2}",
        g / 1e6,
        b / 1e6,
        g / b
    );
    assert!(
        g >= 0.8 * b,
        "goodput {:.1} Mbit/s < 0.8 × Mathis {:.1}",
        g / 1e6,
        b / 1e6
    );
}

// ---------------------------------------------------------------------
// Congestion-window traces.
// ---------------------------------------------------------------------

type Trace = Vec<(Instant, u64, u64, bool)>;

fn traced_run(
    alg: Algorithm,
    bw: u64,
    one_way_ms: u64,
    queue: usize,
    bytes: usize,
    bump: Option<(Instant, u64)>,
) -> Trace {
    let mut sim: Sim<App> = Sim::new(7);
    let cfg = Config {
        congestion: std::sync::Arc::new(alg),
        ..sim_config()
    };
    let mut app = App::new(cfg.clone(), true, addr_b(), payload(3, bytes), 1);
    app.trace = Some(Vec::new());
    let a = sim.add_node(addr_a(), app);
    let b = sim.add_node(addr_b(), App::new(cfg, false, addr_a(), payload(4, 0), 2));
    let link = LinkConfig {
        delay: Duration::from_millis(one_way_ms),
        bandwidth_bps: bw,
        queue_bytes: Some(queue),
        ..LinkConfig::default()
    };
    sim.set_link(a, b, link.clone());
    sim.set_link(
        b,
        a,
        LinkConfig::with_delay(Duration::from_millis(one_way_ms)),
    );
    if let Some((at, bw2)) = bump {
        let out = sim.run_until(at, |_| false);
        assert!(!out.is_done());
        sim.set_link(
            a,
            b,
            LinkConfig {
                bandwidth_bps: bw2,
                ..link
            },
        );
    }
    let out = sim.run_until(Instant::from_millis(600_000), |s| {
        s.node(b).finished() && s.node(a).finished()
    });
    assert!(out.is_done(), "traced transfer did not finish: {out:?}");
    sim.node_mut(a).trace.take().unwrap()
}

/// cwnd at time t (the last sample at or before t).
fn cwnd_at(tr: &Trace, t: Instant) -> u64 {
    tr.iter()
        .take_while(|s| s.0 <= t)
        .last()
        .map(|s| s.1)
        .unwrap_or(0)
}

#[test]
fn cwnd_trace_newreno_slow_start_recovery_avoidance() {
    let rtt = Duration::from_millis(40);
    let tr = traced_run(Algorithm::NewReno, 20_000_000, 20, 60_000, 16 << 20, None);
    let first_rec = tr
        .iter()
        .position(|s| s.3)
        .expect("a recovery episode (drop-tail overflow)");
    let t_rec = tr[first_rec].0;
    let start = tr[0].0;
    // Slow start: cwnd grows by at least 1.4× per RTT while no loss happened (RFC 5681 §3.1).
    // The first RTT is the handshake, the second the first flight.
    let mut t = start + rtt * 2;
    let mut checked = 0;
    while t + rtt < t_rec && cwnd_at(&tr, t + rtt) < 150_000 {
        let (c0, c1) = (cwnd_at(&tr, t), cwnd_at(&tr, t + rtt));
        assert!(
            c1 as f64 >= 1.4 * c0 as f64,
            "slow start too slow at {t:?}: {c0} → {c1}"
        );
        assert!(
            c1 as f64 <= 2.1 * c0 as f64,
            "slow start faster than doubling at {t:?}: {c0} → {c1}"
        );
        checked += 1;
        t += rtt;
    }
    assert!(checked >= 3, "only {checked} slow-start RTTs observed");
    // Recovery: multiplicative decrease to about half (RFC 5681 §3.1 eq. 4 / §3.2).
    let before = tr[..first_rec].iter().map(|s| s.1).max().unwrap();
    let after = tr[first_rec].1;
    assert!(
        after as f64 <= 0.6 * before as f64 && after as f64 >= 0.25 * before as f64,
        "decrease {before} → {after}"
    );
    // Congestion avoidance: ~1 MSS per RTT after a recovery (RFC 5681 §3.1),
    // measured on the first loss-free stretch of at least 10 RTTs.
    let span = 8u32;
    let mut measured = false;
    for i in first_rec..tr.len() - 1 {
        if !tr[i].3 || tr[i + 1].3 {
            continue;
        }
        let t0 = tr[i + 1].0 + rtt;
        let next_rec = tr[i + 1..]
            .iter()
            .find(|s| s.3)
            .map(|s| s.0)
            .unwrap_or(tr.last().unwrap().0);
        if t0 + rtt * (span + 2) >= next_rec {
            continue;
        }
        let grow = cwnd_at(&tr, t0 + rtt * span) as f64 - cwnd_at(&tr, t0) as f64;
        let per_rtt = grow / f64::from(span) / 1428.0;
        assert!(
            (0.4..=1.6).contains(&per_rtt),
            "CA grows {per_rtt:.2} MSS per RTT"
        );
        measured = true;
        break;
    }
    assert!(
        measured,
        "no congestion-avoidance stretch of 10 RTTs to measure"
    );
}

#[test]
fn cwnd_trace_cubic_concave_then_convex() {
    // A loss at 20 Mbit/s sets W_max; then the bottleneck jumps to 200 Mbit/s so
    // the window can grow past W_max: concave below it, plateau, convex above (RFC 9438 §4.1-4.5).
    let tr = traced_run(
        Algorithm::Cubic,
        20_000_000,
        50,
        100_000,
        400 << 20,
        Some((Instant::from_millis(3_000), 200_000_000)),
    );
    // The loss episode whose epoch spans the bottleneck change: the last one
    // that begins before it (a slow-start overshoot may take two episodes
    // before the window fits the 20 Mbit/s path). W_max is the largest
    // window since the episode before it ended.
    let starts: Vec<usize> = (0..tr.len())
        .filter(|&i| tr[i].3 && (i == 0 || !tr[i - 1].3))
        .collect();
    let first_rec = *starts
        .iter()
        .rev()
        .find(|&&i| tr[i].0 < Instant::from_millis(3_000))
        .expect("a loss");
    let since = (0..first_rec).rev().find(|&i| tr[i].3).map_or(0, |i| i + 1);
    let w_seen = tr[since..first_rec].iter().map(|s| s.1).max().unwrap() as f64;
    let mut w_max = w_seen;
    // RFC 9438 §4.7 fast convergence: a loss below the previous W_max sets
    // W_max to cwnd × (1 + β) / 2, where the epoch's plateau then is.
    let before = tr[..since].iter().map(|s| s.1).max().unwrap_or(0) as f64;
    if w_max < before {
        w_max *= (1.0 + 0.7) / 2.0;
    }
    let after = tr[first_rec].1 as f64;
    assert!(
        (0.6..=0.8).contains(&(after / w_seen)),
        "β_cubic: {after} / {w_seen}"
    );
    let exit = tr[first_rec..]
        .iter()
        .position(|s| !s.3)
        .map(|i| i + first_rec)
        .unwrap();
    let epoch: Vec<_> = tr[exit..].iter().take_while(|s| !s.3).cloned().collect();
    let rtt = Duration::from_millis(100);
    let t0 = epoch[0].0;
    let end = epoch.last().unwrap().0;
    let mut samples = Vec::new();
    let mut t = t0;
    while t <= end {
        samples.push(cwnd_at(&tr, t) as f64);
        t += rtt;
    }
    let slope = |i: usize| samples[i + 1] - samples[i];
    let cross = samples
        .iter()
        .position(|&w| w >= w_max)
        .expect("window passes W_max");
    assert!(
        cross >= 3 && cross + 4 < samples.len(),
        "cross at {cross} of {}",
        samples.len()
    );
    let early = slope(0).max(slope(1));
    let near = (cross.saturating_sub(1)..=cross)
        .map(slope)
        .fold(f64::MAX, f64::min);
    let late = slope(samples.len() - 2).max(slope(samples.len() - 3));
    assert!(
        near < early,
        "not concave below W_max: early {early}, near {near}"
    );
    assert!(
        late > near,
        "not convex above W_max: near {near}, late {late}"
    );
}

// ---------------------------------------------------------------------
// NAT rebinding: the client's address changes mid-transfer.
// ---------------------------------------------------------------------

/// 10 ms, 20 Mbit/s both ways; the client (A) moves to 198.18.7.7:5555 at `at`.
fn rebinding(a_bytes: usize, b_bytes: usize, at: Instant, deadline: Duration) -> Scenario {
    let link = LinkConfig {
        delay: Duration::from_millis(10),
        bandwidth_bps: 20_000_000,
        queue_bytes: Some(200_000),
        ..LinkConfig::default()
    };
    Scenario {
        cfg: sim_config(),
        ab: link.clone(),
        ba: link,
        a_bytes,
        b_bytes,
        deadline,
        rebind: Some((at, "198.18.7.7:5555".parse().unwrap())),
    }
}

#[test]
fn survives_nat_rebinding_mid_transfer() {
    check_seeds("survives_nat_rebinding_mid_transfer", 0..5, |seed| {
        let sc = rebinding(
            4 << 20,
            4 << 20,
            Instant::from_millis(700),
            Duration::from_secs(120),
        );
        let (sim, _a, b, _) = run(seed, &sc)?;
        let nb = sim.node(b);
        let h = nb.h.ok_or("no connection")?;
        let remote = nb.ep.connection(h).map(|c| c.remote());
        if remote.is_some() && remote != Some("198.18.7.7:5555".parse().unwrap()) {
            return Err(format!("B still talks to {remote:?}"));
        }
        Ok(())
    });
}

/// What the rebinding cost, from the datagrams delivered (virtual time).
#[derive(Debug, Default)]
struct Handover {
    /// Longest gap between two data segments delivered A → B / B → A
    /// after the rebinding began.
    gap_ab: Duration,
    gap_ba: Duration,
    /// From the rebinding to the first data segment B sends to A's new address.
    to_new: Option<Duration>,
    /// Path segments (challenges, ACK copies) B sent to A's new address.
    to_candidate: usize,
    /// From the rebinding to B's first challenge, and to the arrival of A's response.
    challenge: Option<Duration>,
    response: Option<Duration>,
}

/// spec/xtcp.md §8.7: a NAT rebinding of the client mid-transfer (both
/// directions busy, 10 ms each way) costs a bounded stall, measured here in
/// virtual time and printed: the longest gap in data delivery in each
/// direction, and how long B keeps sending to A's old address (one RTT of
/// path validation on top of noticing the move).
#[test]
fn nat_rebinding_handover_stall() {
    use std::sync::{Arc, Mutex};
    let at = Instant::from_millis(700);
    let new: SocketAddr = "198.18.7.7:5555".parse().unwrap();
    let mut all = Vec::new();
    for seed in 0..5 {
        let sc = rebinding(2 << 20, 2 << 20, at, Duration::from_secs(60));
        let h = Arc::new(Mutex::new((
            Handover::default(),
            None::<Instant>,
            None::<Instant>,
        )));
        let h2 = h.clone();
        let obs: Observer = Box::new(move |r: &Record<'_>| {
            if r.at < at {
                return;
            }
            let Ok(seg) = proto::xtcp::wire::SegmentRepr::parse(r.data) else {
                return;
            };
            let mut g = h2.lock().unwrap();
            let (h, last_ab, last_ba) = &mut *g;
            let from_b = r.src == addr_b();
            if r.kind == RecordKind::Sent && from_b && r.dst == new && h.response.is_none() {
                h.to_candidate += 1;
                if seg.options.path.is_some() && h.challenge.is_none() {
                    h.challenge = Some(r.at - at);
                }
            }
            if r.kind == RecordKind::Delivered && !from_b && seg.options.path.is_some() {
                h.response = Some(r.at - at);
            }
            if r.kind == RecordKind::Sent
                && from_b
                && r.dst == new
                && !seg.payload.is_empty()
                && h.to_new.is_none()
            {
                h.to_new = Some(r.at - at);
            }
            if r.kind != RecordKind::Delivered || seg.payload.is_empty() {
                return;
            }
            let (last, gap) = if from_b {
                (last_ba, &mut h.gap_ba)
            } else {
                (last_ab, &mut h.gap_ab)
            };
            let prev = last.unwrap_or(at);
            *gap = (*gap).max(r.at - prev);
            *last = Some(r.at);
        });
        let (sim, _a, b, _) =
            run_observed(seed, &sc, Some(obs)).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let nb = sim.node(b);
        let st = nb.h.and_then(|h| nb.ep.connection(h)).map(|c| c.stats());
        let (h, _, _) = std::mem::take(&mut *h.lock().unwrap());
        eprintln!(
            "seed {seed}: stall A→B {:?}, B→A {:?}; after the rebinding B challenges at {:?}, has the response at {:?}, sends data to the new address at {:?}; {} segments to the candidate; B's RTOs {:?}",
            h.gap_ab, h.gap_ba, h.challenge, h.response, h.to_new, h.to_candidate, st.map(|s| s.rto_events)
        );
        all.push(h);
    }
    for (seed, h) in all.iter().enumerate() {
        let (Some(to_new), Some(challenge), Some(response)) = (h.to_new, h.challenge, h.response)
        else {
            panic!("seed {seed}: not validated: {h:?}");
        };
        // Loaded RTT ≈ 80 ms (10 ms each way plus the 200 kB queue A's data
        // fills): B sees A's new address after one queue, validates it in one
        // more round trip, and sends data there at once (a loss probe).
        assert!(
            response - challenge < Duration::from_millis(120),
            "seed {seed}: {h:?}"
        );
        assert!(
            to_new <= response + Duration::from_millis(5),
            "seed {seed}: {h:?}"
        );
        // Before path validation (immediate follow) the figures were
        // A→B 110 ms, B→A 222 ms (B waited for its RTO).
        assert!(h.gap_ab < Duration::from_millis(150), "seed {seed}: {h:?}");
        assert!(h.gap_ba < Duration::from_millis(222), "seed {seed}: {h:?}");
    }
}

#[test]
fn peer_vanishing_times_out_within_user_timeout() {
    let mut sim: Sim<App> = Sim::new(3);
    let cfg = Config {
        user_timeout: Duration::from_secs(10),
        ..sim_config()
    };
    let a = sim.add_node(
        addr_a(),
        App::new(cfg.clone(), true, addr_b(), payload(1, 8 << 20), 1),
    );
    let b = sim.add_node(addr_b(), App::new(cfg, false, addr_a(), payload(2, 0), 2));
    let cut = Instant::from_millis(500);
    let dead = LinkConfig {
        delay: Duration::from_millis(10),
        bandwidth_bps: 10_000_000,
        blackouts: vec![(cut, Instant::from_millis(10_000_000))],
        ..LinkConfig::default()
    };
    sim.set_link(a, b, dead.clone());
    sim.set_link(b, a, dead);
    let out = sim.run_until(Instant::from_millis(60_000), |s| s.node(a).error.is_some());
    let na = sim.node(a);
    let c = na.h.and_then(|h| na.ep.connection(h));
    assert!(
        out.is_done(),
        "no error after the peer vanished: {out:?} {c:?} timeout={:?} stats={:?} written={}",
        c.map(|c| c.poll_timeout()),
        c.map(|c| c.stats()),
        na.written
    );
    assert_eq!(sim.node(a).error, Some(proto::ConnectionError::TimedOut));
    let took = out.at - cut;
    assert!(
        took <= Duration::from_secs(10) + Duration::from_secs(11),
        "timed out after {took:?}"
    );
    assert!(
        took >= Duration::from_secs(9),
        "timed out too early: {took:?}"
    );
}

#[test]
fn slow_reader_zero_windows_byte_exact() {
    // A receiver with a 16 KiB buffer that stops reading for 2 s: the sender meets
    // a zero window, probes it (RFC 9293 §3.8.6.1) and must deliver every byte.
    check_seeds("slow_reader_zero_windows_byte_exact", 0..10, |seed| {
        let mut sim: Sim<App> = Sim::new(seed);
        let cfg = Config {
            recv_buffer: 16 << 10,
            ..chaos_config()
        };
        let data = payload(seed, 512 << 10);
        let a = sim.add_node(
            addr_a(),
            App::new(cfg.clone(), true, addr_b(), data.clone(), 1),
        );
        let mut rx = App::new(cfg, false, addr_a(), payload(0, 0), 2);
        rx.pause = Some((Instant::from_millis(100), Instant::from_millis(2100)));
        let b = sim.add_node(addr_b(), rx);
        let link = LinkConfig {
            delay: Duration::from_millis(5),
            loss: lossy(0.02, false),
            ..LinkConfig::default()
        };
        sim.set_links(a, b, link);
        let zero = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let z = zero.clone();
        let b_addr = addr_b();
        sim.set_observer(move |r| {
            if r.src == b_addr && matches!(r.kind, xtcp_sim::RecordKind::Sent) {
                if let Ok(s) = proto::xtcp::wire::SegmentRepr::parse(r.data) {
                    if s.window == 0 {
                        z.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        });
        let out = sim.run_until(Instant::from_millis(3_600_000), |s| {
            s.node(b).eof_at.is_some()
        });
        if zero.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return Err("the receiver never advertised a zero window".into());
        }
        let nb = sim.node(b);
        if !out.is_done() || nb.digest.as_deref() != Some(&sha256(&data)[..]) {
            return Err(format!(
                "{out:?} received {} of {}",
                nb.received,
                data.len()
            ));
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------
// Goodput on a short path with random loss, driven by a 1 ms timer (as
// the tokio runtime is): the veth bench's regime, RTT ≈ 0.1 ms.
// ---------------------------------------------------------------------

/// 16 MiB A → B over a 1 Gbit/s link with 50 µs each way and Bernoulli loss
/// `p` on the data direction, both event loops waking on a 1 ms timer tick.
/// Returns (goodput bit/s, sender stats).
fn low_rtt_lossy(p: f64, seed: u64) -> (f64, proto::xtcp::conn::Stats) {
    let total = 16 << 20;
    let sc = Scenario {
        cfg: sim_config(),
        ab: LinkConfig {
            delay: Duration::from_micros(50),
            bandwidth_bps: 1_000_000_000,
            queue_bytes: Some(256 << 10),
            loss: LossModel::Bernoulli(p),
            ..LinkConfig::default()
        },
        ba: LinkConfig::with_delay(Duration::from_micros(50)),
        a_bytes: total,
        b_bytes: 0,
        deadline: Duration::from_secs(120),
        rebind: None,
    };
    let mut sim: Sim<App> = Sim::new(seed);
    let da = payload(seed, total);
    let mut app_a = App::new(sc.cfg.clone(), true, addr_b(), da.clone(), 1);
    let mut app_b = App::new(sc.cfg.clone(), false, addr_a(), payload(0, 0), 2);
    app_a.timer_tick = Some(Duration::from_millis(1));
    app_b.timer_tick = Some(Duration::from_millis(1));
    let a = sim.add_node(addr_a(), app_a);
    let b = sim.add_node(addr_b(), app_b);
    sim.set_link(a, b, sc.ab.clone());
    sim.set_link(b, a, sc.ba.clone());
    let out = sim.run_until(Instant::ZERO + sc.deadline, |s| s.node(b).eof_at.is_some());
    assert!(out.is_done(), "loss {p}: transfer did not finish");
    let (na, nb) = (sim.node(a), sim.node(b));
    assert_eq!(
        nb.digest.as_deref(),
        Some(&sha256(&da)[..]),
        "loss {p}: bytes differ"
    );
    let secs = (nb.eof_at.unwrap() - na.connected_at.unwrap()).as_secs_f64();
    (total as f64 * 8.0 / secs, na.stats.unwrap())
}

#[test]
fn low_rtt_goodput_with_loss_does_not_collapse() {
    // Mathis bound at RTT 0.1 ms: 1 % → 1.4 Gbit/s, 5 % → 0.62 Gbit/s, so the
    // 1 Gbit/s link bounds the 1 % case. The failure modes this pins: a
    // recovery whose last transmissions are all lost waiting for the 50 ms RTO
    // (≈ 500 RTTs here) instead of a loss probe — at 5 % loss that happened
    // once or twice per seed (6 RTOs over these seeds) and cost ~15 % of
    // the goodput — and pacing capped by the timer tick (pinned exactly by
    // `cc::pacer::tests::coarse_timer_keeps_the_formula_rate`).
    for (p, min_mbit, max_rtos) in [(0.01, 600.0, 1), (0.05, 250.0, 2)] {
        let mut rtos = 0;
        for seed in 1..=5 {
            let (g, st) = low_rtt_lossy(p, seed);
            eprintln!(
                "loss {:.0} % seed {seed}: {:.0} Mbit/s; fast retransmits {}, RTOs {}, retransmitted {} KiB, srtt {:?}",
                p * 100.0,
                g / 1e6,
                st.fast_retransmits,
                st.rto_events,
                st.bytes_retransmitted >> 10,
                st.srtt
            );
            assert!(
                g / 1e6 >= min_mbit,
                "loss {p} seed {seed}: {:.0} Mbit/s < {min_mbit}",
                g / 1e6
            );
            rtos += st.rto_events;
        }
        assert!(rtos <= max_rtos, "loss {p}: {rtos} RTOs over 5 seeds");
    }
}

/// The rebinding hits a one-way transfer that fits the initial window:
/// everything the client had in flight reaches the server, whose ACKs go to the old address and are lost,
/// so the client only retransmits data the server already has ("not
/// acceptable" segments). The server must follow the new address on those
/// too, or the connection stalls until the user timeout.
#[test]
fn survives_nat_rebinding_when_only_retransmissions_follow() {
    check_seeds(
        "survives_nat_rebinding_when_only_retransmissions_follow",
        0..5,
        |seed| {
            // After the client sent all 8 KiB (≈ 20 ms), before the ACKs
            // come back (≈ 40 ms).
            let sc = rebinding(
                8 << 10,
                0,
                Instant::from_millis(25),
                Duration::from_secs(30),
            );
            run(seed, &sc)?;
            Ok(())
        },
    );
}
