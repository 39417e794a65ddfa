//! Sets `matrix` and `rtt`: `xtcp host` / `xtcp join` across the NAT lab,
//! cell by cell, through [`crate::peers::run_cell_in`] (the runner of
//! `tests/nat_matrix.rs` and `tests/nat_rtt.rs`).
//!
//! `matrix`: every cell of [`crate::peers::matrix_cells`] (`--quick`: five
//! of them), the UDP window scaled to 1 s; the cell `FullCone x
//! PortRestricted` is captured (both peers' `eth0`) into `pcap/`.
//! `rtt`: 20 ms one way through `inet` (NFQUEUE delay, RTT ≈ 40 ms measured
//! by the lab's UDP echo); time to the direct path in round trips.

use super::plot::{self, Axes, Bar};
use super::{Row, RunOpts, SetOutput, Table};
use crate::nat::{Lab, NatKind, SiteConfig};
use crate::peers::{
    self, cell_name, label, matrix_cells, Bins, CellResult, HostPlan, MATRIX_PLAN, PREDICTION,
    PR_NO_INBOUND_TCP,
};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// The cell whose packets are captured.
const CAPTURED: &str = "FullCone x PortRestricted";
/// The `--quick` cells: TCP through no NAT and through two kinds of NAT,
/// UDP only (inbound TCP blocked), and the relay (symmetric both sides).
const QUICK_CELLS: [&str; 5] = [
    "None x None",
    "FullCone x PortRestricted",
    "PortRestricted x PortRestricted",
    "PortRestricted +block_inbound_tcp x PortRestricted +block_inbound_tcp",
    "Symmetric x Symmetric",
];
/// The CLI's default UDP window (`--udp-after`), `xtcp::DirectOptions`.
const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
const ONE_WAY: Duration = Duration::from_millis(20);

fn bins(opts: &RunOpts) -> Result<Bins, String> {
    let s = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    Ok(Bins {
        xtcp: s(opts.xtcp()?),
        relay: s(opts.relay()?),
    })
}

/// Run `f`, turning a panic (the cell runner asserts) into an error.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".into())
            .chars()
            .take(2000)
            .collect()
    })
}

fn cell_row(name: &str, r: &CellResult, bytes: (usize, usize)) -> Row {
    Row::new(name)
        .set("site_a", label(r.a))
        .set("site_b", label(r.b))
        .set("port_prediction", r.prediction)
        .set("host_bytes", bytes.0 as u64)
        .set("guest_bytes", bytes.1 as u64)
        .set("path", r.path_reached())
        .set("direct_kind", r.direct_kind().unwrap_or("relay"))
        .opt(
            "time_to_direct_ms",
            r.to_direct.map(|d| d.as_secs_f64() * 1e3),
            3,
        )
        .set("verified", r.verified)
        .set("host_exit", r.host_exit)
        .set("guest_exit", r.guest_exit)
        .set("failures", r.basic_failures().join("; "))
        .num("cell_seconds", r.elapsed.as_secs_f64(), 2)
}

fn bar_color(kind: &str) -> plot::RGBColor {
    match kind {
        "direct-tcp" => plot::BLUE_,
        "direct-udp" => plot::ORANGE,
        _ => plot::GREY,
    }
}

/// Run the set `matrix`; the figure is `matrix_time_to_direct.svg`.
pub fn run_matrix(opts: &RunOpts) -> Result<SetOutput, String> {
    crate::require_root();
    let bins = bins(opts)?;
    let (token, token_line) = guarded(|| peers::new_token(&bins))?;
    let bytes = if opts.quick {
        (1 << 20, 256 << 10)
    } else {
        (peers::HOST_BYTES, peers::GUEST_BYTES)
    };
    let mut table = Table::new("matrix");
    let mut bars = Vec::new();
    let mut files = Vec::new();
    for (n, (a, b, prediction)) in matrix_cells().into_iter().enumerate() {
        let name = cell_name(a, b, prediction);
        if opts.quick && !QUICK_CELLS.contains(&name.as_str()) {
            continue;
        }
        eprintln!("  cell {n}: {name}");
        let predicting = [MATRIX_PLAN.args, &["--port-prediction", PREDICTION]].concat();
        let plan = HostPlan {
            args: if prediction {
                &predicting
            } else {
                MATRIX_PLAN.args
            },
            grace: MATRIX_PLAN.grace,
        };
        let t0 = Instant::now();
        let r = guarded(|| -> Result<_, String> {
            let mut lab = Lab::new(a, b).map_err(|e| format!("lab: {e}"))?;
            if name == CAPTURED {
                let stem = format!("matrix-{}", name.replace(' ', "").to_lowercase());
                // Without tcpdump or dumpcap the cell still runs, uncaptured.
                match lab.capture_peers(&opts.pcap_dir(), Some(&stem)) {
                    Ok(f) => files.extend(f),
                    Err(e) => eprintln!("    no capture (install tcpdump or tshark): {e}"),
                }
            }
            let seed = opts.seed.wrapping_mul(1000) + n as u64;
            let mut r =
                peers::run_cell_in(&bins, &lab, &token, &token_line, seed, &plan, bytes, t0);
            r.prediction = prediction;
            Ok(r)
        })
        .and_then(|r| r);
        let row = match &r {
            Ok(r) => {
                eprintln!(
                    "    {} after {:?} ms, verified {}",
                    r.path_reached(),
                    r.to_direct_ms,
                    r.verified
                );
                let kind = r.direct_kind().unwrap_or("relay");
                bars.push(Bar {
                    label: name.clone(),
                    value: r.to_direct.map(|d| d.as_secs_f64() * 1e3),
                    note: match r.to_direct {
                        Some(d) => format!("{:.1} ms, {kind}", d.as_secs_f64() * 1e3),
                        None => r.path_reached(),
                    },
                    color: bar_color(kind),
                });
                cell_row(&name, r, bytes)
            }
            Err(e) => {
                eprintln!("    FAILED: {e}");
                Row::new(&name)
                    .set("verified", false)
                    .set("error", e.clone())
            }
        };
        table.rows.push(row.set("cell", n as u64));
    }
    let svg = opts.out.join("matrix_time_to_direct.svg");
    let note = format!(
        "xtcp host / join across the NAT lab (nftables + conntrack), UDP window 1 s, {} / {} bytes; {} mode",
        bytes.0,
        bytes.1,
        if opts.quick { "quick" } else { "full" }
    );
    plot::bars_log(
        &svg,
        &Axes {
            title: "Pairing → direct path, per NAT cell",
            x: "time to direct (ms, log scale)",
            y: "",
            note: &note,
        },
        &bars,
        &[
            ("direct-tcp", plot::BLUE_),
            ("direct-udp", plot::ORANGE),
            ("relay", plot::GREY),
        ],
    )?;
    files.push(svg);
    Ok(SetOutput { table, files })
}

/// One `rtt` cell: sites, plan arguments, payloads, expected path, UDP window.
struct RttCell {
    a: SiteConfig,
    b: SiteConfig,
    args: &'static [&'static str],
    bytes: (usize, usize),
    expect: &'static str,
    window: Duration,
}

fn rtt_cells(quick: bool) -> Vec<RttCell> {
    let blocked = PR_NO_INBOUND_TCP;
    let big = (1 << 20, 256 << 10);
    let tiny = (1024, 1024);
    let tcp = |k: NatKind| RttCell {
        a: k.into(),
        b: k.into(),
        args: &[],
        bytes: big,
        expect: "direct-tcp",
        window: Duration::ZERO,
    };
    let udp = |args, bytes, window| RttCell {
        a: blocked,
        b: blocked,
        args,
        bytes,
        expect: "direct-udp",
        window,
    };
    if quick {
        return vec![
            tcp(NatKind::PortRestricted),
            udp(&["--udp-after", "0"], tiny, Duration::ZERO),
        ];
    }
    vec![
        tcp(NatKind::None),
        tcp(NatKind::FullCone),
        tcp(NatKind::PortRestricted),
        udp(&["--udp-after", "0"], big, Duration::ZERO),
        udp(&["--udp-after", "0"], tiny, Duration::ZERO),
        udp(&[], big, DEFAULT_WINDOW),
    ]
}

/// Run the set `rtt` (no figure: the rows are the figure).
pub fn run_rtt(opts: &RunOpts) -> Result<SetOutput, String> {
    crate::require_root();
    let bins = bins(opts)?;
    let (token, token_line) = guarded(|| peers::new_token(&bins))?;
    let mut table = Table::new("rtt");
    for (n, cell) in rtt_cells(opts.quick).into_iter().enumerate() {
        let name = format!("{} x {} ({} B)", label(cell.a), label(cell.b), cell.bytes.0);
        eprintln!("  rtt cell {n}: {name}");
        let plan = HostPlan {
            args: cell.args,
            grace: cell.window + Duration::from_secs(5),
        };
        let t0 = Instant::now();
        let r = guarded(|| -> Result<_, String> {
            let lab = Lab::new(cell.a, cell.b).map_err(|e| format!("lab: {e}"))?;
            let echo = lab.echo().map_err(|e| format!("echo: {e}"))?;
            let delay = lab.delay(ONE_WAY).map_err(|e| format!("delay: {e}"))?;
            let rtt = peers::echo_rtt(&lab).map_err(|e| format!("echo rtt: {e}"))?;
            drop(echo);
            let seed = opts.seed.wrapping_mul(1000) + 100 + n as u64;
            let r = peers::run_cell_in(
                &bins,
                &lab,
                &token,
                &token_line,
                seed,
                &plan,
                cell.bytes,
                t0,
            );
            delay.check().map_err(|e| format!("delayer: {e}"))?;
            let drops = delay.kernel_drops().unwrap_or((u64::MAX, u64::MAX));
            Ok((r, rtt, drops))
        })
        .and_then(|r| r);
        let row = match r {
            Ok((r, rtt, drops)) => {
                let rtt_ms = rtt.as_secs_f64() * 1e3;
                let beyond = r
                    .to_direct
                    .map(|d| (d.as_secs_f64() - cell.window.as_secs_f64()).max(0.0) * 1e3 / rtt_ms);
                eprintln!(
                    "    {} after {:?} ms, rtt {rtt_ms:.1} ms",
                    r.path_reached(),
                    r.to_direct_ms
                );
                cell_row(&name, &r, cell.bytes)
                    .set("expected", cell.expect)
                    .set("udp_after_s", cell.window.as_secs())
                    .num("one_way_ms", ONE_WAY.as_secs_f64() * 1e3, 0)
                    .num("rtt_ms", rtt_ms, 2)
                    .opt("rtts_beyond_window", beyond, 2)
                    .set("delay_queue_drops", drops.0.saturating_add(drops.1))
            }
            Err(e) => {
                eprintln!("    FAILED: {e}");
                Row::new(&name).set("verified", false).set("error", e)
            }
        };
        table.rows.push(row);
    }
    Ok(SetOutput {
        table,
        files: Vec::new(),
    })
}
