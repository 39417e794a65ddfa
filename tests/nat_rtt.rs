//! Time from pairing to the direct path, in round trips, with a real delay:
//! `xtcp host` / `xtcp join` in the NAT lab with every round trip across
//! `inet` lengthened by 40 ms ([`Lab::delay`] with 20 ms one way, NFQUEUE
//! delayers: this kernel has no netem), so that peer ↔ peer and peer ↔ relay
//! round trips are both ≈ 40 ms. The RTT of each cell is measured in the
//! same lab with the delay on, by the UDP echo on the relay's address (the
//! least of 7 round trips: the path's own RTT, without scheduling noise),
//! not assumed.
//!
//! For each cell the time from the host's `path: relay` line to its
//! `path: direct-*` line is printed on stderr in ms and in RTTs
//! (`cargo test --release --test nat_rtt -- --nocapture`; with `XTCP_LOG`
//! set, e.g. `XTCP_LOG=xtcp=debug`, both peers' stderr too). Asserted: every
//! byte verified both ways, both exit codes 0, the expected direct path, no
//! packet dropped by the delay queues, and the acceptance figures:
//! ≤ 3 RTTs to direct TCP ([`TCP_MAX_RTTS`]), ≤ 3 RTTs beyond the default
//! UDP window ([`UDP_WINDOW_MAX_RTTS`]); the `--udp-after 0` cells get a
//! generous bound ([`UDP_MAX_RTTS`]). The exact multiples are printed.
//!
//! Cells: `None` × `None`, `FullCone` × `FullCone`, `PortRestricted` ×
//! `PortRestricted` (default options: direct TCP), and `PortRestricted
//! +block_inbound_tcp` on both sides with `--udp-after 0` (direct UDP), the
//! latter twice: with [`BYTES`] like the others, and with 1 KiB each so that
//! no data waits ahead of the control frames on the relay; and the same
//! sites with the default UDP window (10 s), whose figure is given as RTTs
//! beyond the window (the issue asks for "≤ 10 s + 3 RTT").
//!
//! Needs root (fails loudly without it), iproute2, nftables and iptables
//! (the NFQUEUE target).

mod common_lab;

use common_lab::*;
use std::time::{Duration, Instant};
use xtcp_lab::nat::{Lab, NatKind, SiteConfig};

/// One-way delay through `inet`.
const ONE_WAY: Duration = Duration::from_millis(20);
/// Small payloads: the delayer runs in userspace, one packet at a time.
const BYTES: (usize, usize) = (1 << 20, 256 << 10);
/// The bounds on relay → direct, in measured RTTs: generous, to catch a
/// gross regression (a 1 s RTO is 25 RTTs here) without flaking; today's
/// figures are printed by the test, not asserted.
///
/// TCP cells: the issue's acceptance figure, "≤ 3 RTT from pairing to
/// direct TCP", asserted (observed 0.5 RTT: the preambles start the direct
/// attempts during the relay path's handshake and the guest's early RESUME
/// saves the last round trip; 4.7–6.2 before both).
const TCP_MAX_RTTS: f64 = 3.0;
/// UDP cells with `--udp-after 0` (not an acceptance figure): observed
/// ≈ 7.6 RTTs with no data queued on the relay, ≈ 11.5 with [`BYTES`] (the
/// UDP `CANDIDATES` and `PUNCH` frames wait behind the payload in the relay
/// stream). A bound that catches a gross regression.
const UDP_MAX_RTTS: f64 = 25.0;
/// The UDP cell with the default window: the "≤ 10 s + 3 RTT",
/// asserted beyond the window (observed 2.5 RTTs: the guest connects at the
/// agreed time and sends its ClientHello behind its handshake; 4.1 before;
/// 2.6 with the early RESUME masked in the tag's flight, DI-EARLY-3).
const UDP_WINDOW_MAX_RTTS: f64 = 3.0;
/// Tiny payloads, so that the relay carries no data ahead of the control
/// frames.
const TINY: (usize, usize) = (1024, 1024);

/// The least of 7 UDP round trips from site A's peer to the echo on the
/// relay's address (the same delay as peer ↔ peer, see [`Lab::delay`]).
fn echo_rtt(lab: &Lab) -> Duration {
    xtcp_lab::peers::echo_rtt(lab).expect("echo round trips")
}

struct Cell<'a> {
    a: SiteConfig,
    b: SiteConfig,
    plan: &'a HostPlan<'a>,
    /// Host's and guest's payload.
    bytes: (usize, usize),
    expect: &'static str,
    /// Bound on (relay → direct − `window`) in RTTs.
    max_rtts: f64,
    /// The UDP window the host waits out first (`--udp-after`).
    window: Duration,
}

/// Relay → direct minus the cell's UDP window, in ms (never below 0).
fn beyond_window_ms(r: &CellResult, cell: &Cell<'_>) -> Option<f64> {
    r.to_direct_ms
        .map(|ms| (ms as f64 - cell.window.as_secs_f64() * 1e3).max(0.0))
}

struct Row<'a> {
    r: CellResult,
    rtt: Duration,
    cell: Cell<'a>,
    kernel_drops: (u64, u64),
}

#[test]
fn pairing_to_direct_path_in_round_trips_with_20ms_one_way() {
    xtcp_lab::require_root();
    let (token, token_line) = new_token();
    let blocked = PR_NO_INBOUND_TCP;
    let tcp = HostPlan {
        args: &[],
        grace: Duration::from_secs(5),
    };
    let udp = HostPlan {
        args: &["--udp-after", "0"],
        grace: Duration::from_secs(5),
    };
    // The issue's figure: "UDP direct path ≤ 10 s + 3 RTT with the default
    // window" (the CLI's `--udp-after` default is the library's).
    let window = xtcp::DirectOptions::default().udp_after;
    let udp_default = HostPlan {
        args: &[],
        grace: window + Duration::from_secs(5),
    };
    let pr = SiteConfig::from(NatKind::PortRestricted);
    let fc = SiteConfig::from(NatKind::FullCone);
    let none = SiteConfig::from(NatKind::None);
    let tcp_cell = |a, b| Cell {
        a,
        b,
        plan: &tcp,
        bytes: BYTES,
        expect: "direct-tcp",
        max_rtts: TCP_MAX_RTTS,
        window: Duration::ZERO,
    };
    let udp_cell = |plan, bytes, window: Duration| Cell {
        a: blocked,
        b: blocked,
        plan,
        bytes,
        expect: "direct-udp",
        max_rtts: if window.is_zero() {
            UDP_MAX_RTTS
        } else {
            UDP_WINDOW_MAX_RTTS
        },
        window,
    };
    let cells = [
        tcp_cell(none, none),
        tcp_cell(fc, fc),
        tcp_cell(pr, pr),
        udp_cell(&udp, BYTES, Duration::ZERO),
        udp_cell(&udp, TINY, Duration::ZERO),
        udp_cell(&udp_default, BYTES, window),
    ];
    let t_all = Instant::now();
    let mut rows = Vec::new();
    for (n, cell) in cells.into_iter().enumerate() {
        let (a, b) = (cell.a, cell.b);
        let t0 = Instant::now();
        let lab = Lab::new(a, b).expect("lab");
        let echo = lab.echo().expect("echo");
        let delay = lab.delay(ONE_WAY).expect("delay in inet");
        let rtt = echo_rtt(&lab);
        drop(echo);
        let r = run_cell_in(
            &lab,
            &token,
            &token_line,
            100 + n as u64,
            cell.plan,
            cell.bytes,
            t0,
        );
        delay.check().expect("the delayer ran throughout");
        let kernel_drops = delay.kernel_drops().expect("queue counters");
        eprintln!(
            "cell {} x {} ({} / {} bytes): paths {:?} / {:?}, relay → direct {:?} ms, rtt {:.1} ms, verified {}, {:?}, kernel drops {kernel_drops:?}, {:.1} s",
            label(a),
            label(b),
            cell.bytes.0,
            cell.bytes.1,
            r.host_paths,
            r.guest_paths,
            r.to_direct_ms,
            rtt.as_secs_f64() * 1e3,
            r.verified,
            delay.stats(),
            r.elapsed.as_secs_f64()
        );
        if std::env::var_os("XTCP_LOG").is_some() {
            eprintln!(
                "--- host stderr:\n{}\n--- guest stderr:\n{}",
                r.host_stderr, r.guest_stderr
            );
        }
        drop(delay);
        drop(lab);
        rows.push(Row {
            r,
            rtt,
            cell,
            kernel_drops,
        });
    }

    let mut table = String::from(
        "| A | B | bytes (host / guest) | UDP window (s) | path | relay → direct (ms) | RTT (ms, UDP echo) | RTTs beyond the window | bytes verified |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for Row { r, rtt, cell, .. } in &rows {
        let rtt_ms = rtt.as_secs_f64() * 1e3;
        table += &format!(
            "| {} | {} | {} / {} | {} | {} | {} | {:.1} | {} | {} |\n",
            label(r.a),
            label(r.b),
            cell.bytes.0,
            cell.bytes.1,
            if cell.expect == "direct-udp" {
                format!("{}", cell.window.as_secs_f64())
            } else {
                "-".into()
            },
            r.path_reached(),
            r.to_direct_ms.map_or("-".into(), |ms| ms.to_string()),
            rtt_ms,
            beyond_window_ms(r, cell).map_or("-".into(), |ms| format!("{:.1}", ms / rtt_ms)),
            r.verified
        );
    }
    eprintln!(
        "\none-way delay {} ms in inet\n{table}\n{} cells in {:.1} s",
        ONE_WAY.as_millis(),
        rows.len(),
        t_all.elapsed().as_secs_f64()
    );

    let mut failures = Vec::new();
    for Row {
        r,
        rtt,
        cell,
        kernel_drops,
    } in &rows
    {
        let expect = cell.expect;
        let mut why = r.basic_failures();
        if r.direct_kind() != Some(expect) {
            why.push(format!("expected {expect}, got {}", r.path_reached()));
        }
        // The delay makes the RTT at least 2 × one way; a smaller figure
        // means the delayer did not hold the packets.
        if *rtt < 2 * ONE_WAY {
            why.push(format!("echo RTT {rtt:?} below 2 × {ONE_WAY:?}"));
        }
        match beyond_window_ms(r, cell) {
            Some(ms) if ms / (rtt.as_secs_f64() * 1e3) < cell.max_rtts => {}
            _ => why.push(format!(
                "relay → direct {:?} ms, bound {:?} + {} RTT of {rtt:?}",
                r.to_direct_ms, cell.window, cell.max_rtts
            )),
        }
        // A full queue would add losses the figures do not account for.
        if *kernel_drops != (0, 0) {
            why.push(format!("the delay queue dropped packets: {kernel_drops:?}"));
        }
        failures.extend(r.failure(&format!("{} x {}", label(r.a), label(r.b)), &why));
    }
    assert_no_failures(&failures);
}
