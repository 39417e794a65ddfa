//! Set `cwnd`: XTCP's congestion window over time in the deterministic
//! simulator (the node of `sim/tests/xtcp.rs`' cwnd traces), CUBIC and
//! NewReno over the same drop-tail bottleneck; and a short lossy transfer
//! captured to `pcap/sim_xtcp.pcap`.

use super::plot::{self, Axes, Series};
use super::{Row, RunOpts, SetOutput, Table};
use proto::xtcp::cc::Algorithm;
use proto::xtcp::conn::Config;
use proto::Instant;
use sim::bulk::{payload, sha256, sim_config, App};
use sim::{LinkConfig, LossModel, Sim};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The bottleneck: 20 Mbit/s, 20 ms one way (RTT 40 ms), a 60 kB drop-tail queue.
const MBIT: u64 = 20;
const ONE_WAY_MS: u64 = 20;
const QUEUE: usize = 60_000;
/// Simulated-time bound of one run.
const SIM_BOUND: Duration = Duration::from_secs(600);

fn addrs() -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::from(([198, 18, 0, 1], 40000)),
        SocketAddr::from(([198, 18, 0, 2], 40443)),
    )
}

/// What one simulated transfer gave.
struct Run {
    trace: Vec<(Instant, u64, u64, bool)>,
    secs: f64,
    verified: bool,
    recoveries: u64,
    retransmitted: u64,
}

fn config(alg: Algorithm) -> Config {
    Config {
        congestion: Arc::new(alg),
        ..sim_config()
    }
}

/// A → B `bytes` (B sends nothing) over `link` one way and a plain delay
/// back, with A's cwnd traced; `pcap` captures every datagram.
fn transfer(
    seed: u64,
    alg: Algorithm,
    link: LinkConfig,
    bytes: usize,
    pcap: Option<&std::path::Path>,
) -> Result<Run, String> {
    let (a_addr, b_addr) = addrs();
    let mut s: Sim<App> = Sim::new(seed);
    let data = payload(seed, bytes);
    let want = sha256(&data);
    let mut app = App::new(config(alg), true, b_addr, data, 1);
    app.trace = Some(Vec::new());
    let a = s.add_node(a_addr, app);
    let b = s.add_node(
        b_addr,
        App::new(config(alg), false, a_addr, payload(seed + 1, 0), 2),
    );
    let back = LinkConfig {
        loss: link.loss.clone(),
        ..LinkConfig::with_delay(link.delay)
    };
    s.set_link(a, b, link);
    s.set_link(b, a, back);
    if let Some(p) = pcap {
        s.capture_to(p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let out = s.run_until(Instant::ZERO + SIM_BOUND, |s| {
        s.node(a).finished() && s.node(b).finished()
    });
    s.finish_capture().map_err(|e| format!("pcap: {e}"))?;
    if !out.is_done() {
        return Err(format!("{alg:?}: transfer did not finish: {out:?}"));
    }
    let (na, nb) = (s.node(a), s.node(b));
    let (Some(t0), Some(t1)) = (na.connected_at, nb.eof_at) else {
        return Err(format!("{alg:?}: no connection or no end of stream"));
    };
    let st = na.stats.unwrap_or_default();
    let verified = nb.digest.as_deref() == Some(&want[..]);
    Ok(Run {
        trace: s.node_mut(a).trace.take().unwrap_or_default(),
        secs: (t1 - t0).as_secs_f64(),
        verified,
        recoveries: st.recovery_episodes,
        retransmitted: st.bytes_retransmitted,
    })
}

fn bottleneck() -> LinkConfig {
    LinkConfig {
        delay: Duration::from_millis(ONE_WAY_MS),
        bandwidth_bps: MBIT * 1_000_000,
        queue_bytes: Some(QUEUE),
        ..LinkConfig::default()
    }
}

fn row(name: &str, alg: Algorithm, bytes: usize, loss: f64, r: &Run) -> Row {
    Row::new(name)
        .set("algorithm", format!("{alg:?}"))
        .set("link_mbit", MBIT)
        .set("one_way_ms", ONE_WAY_MS)
        .set("queue_bytes", QUEUE as u64)
        .num("loss_pct", loss * 100.0, 2)
        .set("bytes", bytes as u64)
        .num("sim_seconds", r.secs, 3)
        .num("goodput_mbit", bytes as f64 * 8.0 / r.secs / 1e6, 2)
        .set(
            "max_cwnd_bytes",
            r.trace.iter().map(|s| s.1).max().unwrap_or(0),
        )
        .set("recovery_episodes", r.recoveries)
        .set("bytes_retransmitted", r.retransmitted)
        .set("trace_samples", r.trace.len() as u64)
        .set("verified", r.verified)
}

/// Run the set: two traced runs and the captured one.
pub fn run(opts: &RunOpts) -> Result<SetOutput, String> {
    let bytes = if opts.quick { 8 << 20 } else { 32 << 20 };
    let mut table = Table::new("cwnd");
    let mut series = Vec::new();
    let mut csv = String::from("algorithm,time_ms,cwnd_bytes,ssthresh_bytes,in_recovery\n");
    for (alg, color) in [
        (Algorithm::Cubic, plot::BLUE_),
        (Algorithm::NewReno, plot::ORANGE),
    ] {
        let r = transfer(opts.seed, alg, bottleneck(), bytes, None)?;
        if !r.verified {
            return Err(format!("{alg:?}: SHA-256 mismatch"));
        }
        for &(t, cwnd, ssthresh, rec) in &r.trace {
            let ss = if ssthresh > 1 << 40 {
                String::new()
            } else {
                ssthresh.to_string()
            };
            let _ = writeln!(
                csv,
                "{alg:?},{:.3},{cwnd},{ss},{}",
                t.as_micros() as f64 / 1e3,
                u8::from(rec)
            );
        }
        table.rows.push(row(
            &format!("cwnd-{}", format!("{alg:?}").to_lowercase()),
            alg,
            bytes,
            0.0,
            &r,
        ));
        series.push(Series {
            name: format!("XTCP {alg:?}"),
            points: plot::steps(
                &r.trace
                    .iter()
                    .map(|s| (s.0.as_micros() as f64 / 1e6, s.1 as f64 / 1e3))
                    .collect::<Vec<_>>(),
            ),
            color,
            dots: false,
        });
    }
    let trace_csv = opts.out.join("cwnd_trace.csv");
    std::fs::write(&trace_csv, csv).map_err(|e| format!("{}: {e}", trace_csv.display()))?;
    let svg = opts.out.join("cwnd.svg");
    let note = format!(
        "simulator, seed {}: {} MiB over {MBIT} Mbit/s, RTT {} ms, {QUEUE} B drop-tail queue",
        opts.seed,
        bytes >> 20,
        2 * ONE_WAY_MS
    );
    plot::lines(
        &svg,
        &Axes {
            title: "XTCP congestion window over time (simulated)",
            x: "time (s)",
            y: "cwnd (kB)",
            note: &note,
        },
        &series,
    )?;
    // A short lossy transfer, every datagram captured (Wireshark with
    // interop/wireshark/xtcp.lua).
    std::fs::create_dir_all(opts.pcap_dir()).map_err(|e| e.to_string())?;
    let pcap = opts.pcap_dir().join("sim_xtcp.pcap");
    let lossy = LinkConfig {
        loss: LossModel::Bernoulli(0.01),
        ..bottleneck()
    };
    let small = 512 << 10;
    let r = transfer(opts.seed, Algorithm::Cubic, lossy, small, Some(&pcap))?;
    table.rows.push(
        row("sim-pcap-1pct-loss", Algorithm::Cubic, small, 0.01, &r)
            .set("pcap", "pcap/sim_xtcp.pcap"),
    );
    Ok(SetOutput {
        table,
        files: vec![trace_csv, svg, pcap],
    })
}
