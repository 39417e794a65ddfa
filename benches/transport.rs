//! Transport comparison over a veth pair between two network namespaces:
//! XTCP (with and without the end-to-end TLS of `xtcp listen/connect --code`),
//! kernel TCP (plain and with rustls) and QUIC (quinn).
//!
//! ```text
//!   namespace A (sender, core 0) ── veth, MTU 1500 ── namespace B (receiver, core 1)
//!   198.18.5.1/24  eth0 (gso_max_segs 1)              eth0 198.18.5.2/24
//!                                                     nftables: numgen random drop (loss cases)
//! ```
//!
//! The bench re-executes itself in each namespace (`ip netns exec … taskset -c
//! CORE <exe> --role send|recv …`); each child prints one `RESULT {json}` line
//! with the bytes it moved, the seconds, its own CPU seconds (getrusage) and,
//! for the receiver, the SHA-256 of what it received, which the parent checks
//! against the payload.
//!
//! ```sh
//! cargo bench --bench transport -- --quick            # 64 MiB, loss cases 32 MiB
//! cargo bench --bench transport -- --case quinn --case xtcp-tls --no-loss
//! cargo bench --bench transport -- --ttfb             # time to first byte, RTT 20 ms
//! ```
//! Needs root, `ip`, `nft`, `tc` and `taskset`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use xtcp_lab::nfq::{DelayConfig, Delayer, Tap};
use xtcp_lab::{payload, require_root, sha256_hex, Netns};

/// Payload seed shared by the parent and the children.
const SEED: u64 = 0x7261_6e73;
/// Application write and read size.
const CHUNK: usize = 64 << 10;
const A_CIDR: &str = "198.18.5.1/24";
const B_CIDR: &str = "198.18.5.2/24";
const B_IP: &str = "198.18.5.2";
const PORT: u16 = 7100;
const SENDER_CORE: u32 = 0;
const RECEIVER_CORE: u32 = 1;
/// TLS server name (the certificates are self-signed and not checked).
const SERVER_NAME: &str = "bench.xtcp.invalid";
/// One-way delay per direction in `--ttfb` mode.
const TTFB_DELAY_MS: u32 = 10;
const TTFB_RUNS: usize = 5;

// ───────────────────────────── cases ─────────────────────────────

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Case {
    XtcpTls,
    XtcpRaw,
    TcpRustls,
    Tcp,
    TcpBbr,
    Quinn,
}

impl Case {
    const ALL: [Case; 6] = [
        Case::XtcpTls,
        Case::XtcpRaw,
        Case::TcpRustls,
        Case::Tcp,
        Case::TcpBbr,
        Case::Quinn,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::XtcpTls => "xtcp-tls",
            Case::XtcpRaw => "xtcp-raw",
            Case::TcpRustls => "tcp-rustls",
            Case::Tcp => "tcp",
            Case::TcpBbr => "tcp-bbr",
            Case::Quinn => "quinn",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Case::Tcp => "tcp (cubic)",
            Case::TcpRustls => "tcp-rustls (cubic)",
            c => c.name(),
        }
    }

    fn parse(s: &str) -> Option<Case> {
        match s {
            "tcp-cubic" => Some(Case::Tcp),
            "xtcp" => Some(Case::XtcpRaw),
            _ => Case::ALL.into_iter().find(|c| c.name() == s),
        }
    }

    /// Congestion control pinned on kernel TCP sockets.
    fn tcp_cc(self) -> &'static str {
        match self {
            Case::TcpBbr => "bbr",
            _ => "cubic",
        }
    }
}

// ───────────────────────────── parent ─────────────────────────────

struct Opts {
    cases: Vec<Case>,
    loss_only: bool,
    no_loss: bool,
    mib: usize,
    loss_mib: usize,
    ttfb: bool,
    timeout: Duration,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        cases: Vec::new(),
        loss_only: false,
        no_loss: false,
        mib: 256,
        loss_mib: 256,
        ttfb: false,
        timeout: Duration::from_secs(120),
    };
    let mut mib: Option<usize> = None;
    let mut quick = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            // `cargo bench` passes --bench to harness = false binaries.
            "--bench" => {}
            "--case" => {
                let v = val("--case")?;
                let c = Case::parse(&v).ok_or_else(|| {
                    format!(
                        "unknown case {v:?}; known: {}",
                        Case::ALL.map(Case::name).join(", ")
                    )
                })?;
                o.cases.push(c);
            }
            "--loss-only" => o.loss_only = true,
            "--no-loss" => o.no_loss = true,
            "--quick" => quick = true,
            "--ttfb" => o.ttfb = true,
            "--mib" => {
                let v = val("--mib")?;
                mib = Some(v.parse().map_err(|_| format!("--mib {v:?}: not a number"))?);
            }
            "--timeout" => {
                let v = val("--timeout")?;
                let s: u64 = v
                    .parse()
                    .map_err(|_| format!("--timeout {v:?}: not a number"))?;
                o.timeout = Duration::from_secs(s);
            }
            "-h" | "--help" => {
                return Err("flags: --case NAME (repeatable), --loss-only, --no-loss, --mib N, --quick, --ttfb, --timeout SECS".into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if quick {
        o.mib = 64;
        o.loss_mib = 32;
    }
    if let Some(m) = mib {
        o.mib = m;
        o.loss_mib = m;
    }
    if o.loss_only && o.no_loss {
        return Err("--loss-only and --no-loss exclude each other".into());
    }
    Ok(o)
}

/// A child process (the bench itself in a namespace), killed on drop.
struct Proc {
    what: String,
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Proc {
    fn spawn(ns: &Netns, core: u32, what: &str, args: &[String]) -> Result<Proc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let exe = exe.to_str().ok_or("non-UTF-8 executable path")?.to_owned();
        let core = core.to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "taskset", "-c", &core, &exe])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {what}: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut err = child.stderr.take().ok_or("no stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(Proc {
            what: what.to_owned(),
            child,
            lines,
            stderr: Some(stderr),
        })
    }

    /// The first stdout line starting with `prefix` (rest of the line), before `deadline`.
    fn line(&mut self, prefix: &str, deadline: Instant) -> Result<String, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let stderr = self.stderr_text();
                    return Err(format!(
                        "{}: timed out waiting for {prefix:?} (killed); stderr: {stderr}",
                        self.what
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().ok();
                    let stderr = self.stderr_text();
                    return Err(format!(
                        "{}: exited ({st:?}) without {prefix:?}; stderr: {stderr}",
                        self.what
                    ));
                }
            }
        }
    }

    /// Wait for exit with success before `deadline` (killed otherwise).
    fn finish(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => {
                    let stderr = self.stderr_text();
                    return Err(format!("{}: exit {st}; stderr: {stderr}", self.what));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let stderr = self.stderr_text();
                    return Err(format!(
                        "{}: did not exit in time (killed); stderr: {stderr}",
                        self.what
                    ));
                }
                Err(e) => return Err(format!("{}: wait: {e}", self.what)),
            }
        }
    }

    fn stderr_text(&mut self) -> String {
        // Only once the process is gone does the pipe close.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let s = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let s = s.trim();
        if s.len() > 2000 {
            format!("…{}", &s[s.len() - 2000..])
        } else {
            s.to_owned()
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A no-op for a child already reaped (std does not signal it again).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lab: `xtcp_lab::pair::Pair` (two namespaces on a veth, the sender's
/// segmenting in software, nftables loss with counters at the receiver).
struct Lab(xtcp_lab::pair::Pair);

impl std::ops::Deref for Lab {
    type Target = xtcp_lab::pair::Pair;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Lab {
    fn new() -> Result<Lab, String> {
        xtcp_lab::pair::Pair::new(("tA", "tB"), A_CIDR, B_CIDR)
            .map(Lab)
            .map_err(|e| format!("lab: {e}"))
    }

    /// Drop `per_mille` ‰ of the packets arriving at the receiver, at random.
    fn loss(&self, per_mille: u32) -> Result<(), String> {
        self.0.loss(per_mille).map_err(|e| format!("nft: {e}"))
    }
}

#[derive(Clone, Debug)]
struct Row {
    case: Case,
    per_mille: u32,
    bytes: u64,
    secs: f64,
    send_cpu: f64,
    recv_cpu: f64,
    measured_loss: Option<f64>,
    notes: String,
}

impl Row {
    fn mbit(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1e6
    }
    fn gib(&self) -> f64 {
        self.bytes as f64 / f64::from(1u32 << 30)
    }
    fn send_cpu_gib(&self) -> f64 {
        self.send_cpu / self.gib()
    }
    fn recv_cpu_gib(&self) -> f64 {
        self.recv_cpu / self.gib()
    }
}

fn field_f64(v: &serde_json::Value, k: &str) -> Result<f64, String> {
    v.get(k)
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| format!("result without {k}: {v}"))
}

fn field_str(v: &serde_json::Value, k: &str) -> String {
    v.get(k)
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn child_args(role: &str, case: Case, len: usize, port: u16, code: &str) -> Vec<String> {
    [
        "--role",
        role,
        "--case",
        case.name(),
        "--len",
        &len.to_string(),
        "--port",
        &port.to_string(),
        "--code",
        code,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn run_case(
    case: Case,
    per_mille: u32,
    len: usize,
    expected: &str,
    code: &str,
    timeout: Duration,
) -> Result<Row, String> {
    let lab = Lab::new()?;
    if per_mille > 0 {
        lab.loss(per_mille)?;
    }
    let deadline = Instant::now() + timeout;
    let mut recv = Proc::spawn(
        &lab.b,
        RECEIVER_CORE,
        "receiver",
        &child_args("recv", case, len, PORT, code),
    )?;
    recv.line("READY", Instant::now() + Duration::from_secs(20))?;
    let mut send = Proc::spawn(
        &lab.a,
        SENDER_CORE,
        "sender",
        &child_args("send", case, len, PORT, code),
    )?;
    let r = recv.line("RESULT", deadline)?;
    let s = send.line("RESULT", deadline)?;
    let grace = Instant::now() + Duration::from_secs(10);
    recv.finish(deadline.max(grace))?;
    send.finish(deadline.max(grace))?;
    let r: serde_json::Value =
        serde_json::from_str(&r).map_err(|e| format!("receiver result {r:?}: {e}"))?;
    let s: serde_json::Value =
        serde_json::from_str(&s).map_err(|e| format!("sender result {s:?}: {e}"))?;
    let bytes = field_f64(&r, "bytes")? as u64;
    let hash = field_str(&r, "sha256");
    if bytes != len as u64 || hash != expected {
        return Err(format!(
            "PAYLOAD MISMATCH: receiver got {bytes} B with SHA-256 {hash}, expected {len} B with {expected}"
        ));
    }
    let measured_loss = lab
        .loss_counters()
        .map(|(all, dropped)| dropped as f64 / all.max(1) as f64);
    let mut notes = field_str(&s, "info");
    let rn = field_str(&r, "info");
    if !rn.is_empty() && rn != notes {
        notes = format!("{notes}; recv: {rn}");
    }
    Ok(Row {
        case,
        per_mille,
        bytes,
        secs: field_f64(&r, "secs")?,
        send_cpu: field_f64(&s, "cpu")?,
        recv_cpu: field_f64(&r, "cpu")?,
        measured_loss,
        notes,
    })
}

fn loss_label(per_mille: u32) -> String {
    if per_mille == 0 {
        "0".into()
    } else if per_mille.is_multiple_of(10) {
        format!("{} %", per_mille / 10)
    } else {
        format!("{} %", f64::from(per_mille) / 10.0)
    }
}

fn bbr_available() -> bool {
    let has = || {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
            .map(|s| s.split_whitespace().any(|c| c == "bbr"))
            .unwrap_or(false)
    };
    if has() {
        return true;
    }
    let _ = Command::new("modprobe")
        .arg("tcp_bbr")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    has()
}

fn print_table(rows: &[Row]) {
    println!("| case | loss | MiB | seconds | goodput Mbit/s | sender CPU s/GiB | receiver CPU s/GiB | measured drop | notes |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {} | {} |",
            r.case.label(),
            loss_label(r.per_mille),
            r.bytes >> 20,
            r.secs,
            r.mbit(),
            r.send_cpu_gib(),
            r.recv_cpu_gib(),
            r.measured_loss
                .map(|l| format!("{:.2} %", l * 100.0))
                .unwrap_or_else(|| "-".into()),
            r.notes
        );
    }
}

fn print_ratios(rows: &[Row]) {
    let find = |c: Case, pm: u32| rows.iter().find(|r| r.case == c && r.per_mille == pm);
    let mut levels: Vec<u32> = rows.iter().map(|r| r.per_mille).collect();
    levels.sort_unstable();
    levels.dedup();
    let mut pairs: Vec<(Case, Case, u32)> = Vec::new();
    for &pm in &levels {
        pairs.push((Case::XtcpTls, Case::Quinn, pm));
    }
    pairs.push((Case::XtcpTls, Case::TcpRustls, 0));
    for &pm in &levels {
        pairs.push((Case::XtcpRaw, Case::Tcp, pm));
    }
    let mut printed = false;
    for (x, y, pm) in pairs {
        let (Some(a), Some(b)) = (find(x, pm), find(y, pm)) else {
            continue;
        };
        if !printed {
            println!();
            println!("| ratio | loss | goodput × | sender CPU/GiB × | receiver CPU/GiB × |");
            println!("|---|---|---:|---:|---:|");
            printed = true;
        }
        println!(
            "| {} / {} | {} | {:.2} | {:.2} | {:.2} |",
            x.name(),
            y.label(),
            loss_label(pm),
            a.mbit() / b.mbit(),
            a.send_cpu_gib() / b.send_cpu_gib(),
            a.recv_cpu_gib() / b.recv_cpu_gib(),
        );
    }
}

fn run_ttfb(opts: &Opts, code: &str) -> Result<(), String> {
    let cases: Vec<Case> = [Case::XtcpTls, Case::TcpRustls, Case::Quinn]
        .into_iter()
        .filter(|c| opts.cases.is_empty() || opts.cases.contains(c))
        .collect();
    let configured_rtt = f64::from(2 * TTFB_DELAY_MS);
    println!(
        "time to first byte: NFQUEUE delay {TTFB_DELAY_MS} ms each way (RTT {configured_rtt} ms), median of {TTFB_RUNS} runs"
    );
    println!();
    println!("| case | TTFB ms (median) | RTTs (÷ 20 ms) | RTTs (÷ measured TCP-handshake RTT) | all runs ms |");
    println!("|---|---:|---:|---:|---|");
    let mut failed = Vec::new();
    for case in cases {
        let mut lab = None;
        let mut ttfbs = Vec::new();
        let mut rtts = Vec::new();
        for run in 0..TTFB_RUNS {
            let r = (|| -> Result<(f64, Option<f64>), String> {
                if lab.is_none() {
                    let l = Lab::new()?;
                    let d = delay_path(&l)?;
                    lab = Some((l, d));
                }
                let (l, _delayer) = lab.as_ref().ok_or("no lab")?;
                let port = PORT + run as u16;
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut srv = Proc::spawn(
                    &l.b,
                    RECEIVER_CORE,
                    "ttfb server",
                    &child_args("ttfb-server", case, 1, port, code),
                )?;
                srv.line("READY", deadline)?;
                let mut cli = Proc::spawn(
                    &l.a,
                    SENDER_CORE,
                    "ttfb client",
                    &child_args("ttfb-client", case, 1, port, code),
                )?;
                let c = cli.line("RESULT", deadline)?;
                cli.finish(deadline)?;
                srv.finish(deadline)?;
                let v: serde_json::Value =
                    serde_json::from_str(&c).map_err(|e| format!("client result {c:?}: {e}"))?;
                Ok((
                    field_f64(&v, "ttfb_ms")?,
                    v.get("rtt_ms").and_then(serde_json::Value::as_f64),
                ))
            })();
            match r {
                Ok((t, rtt)) => {
                    ttfbs.push(t);
                    rtts.extend(rtt);
                }
                Err(e) => {
                    eprintln!("ttfb {} run {run}: FAILED: {e}", case.name());
                    failed.push(format!("ttfb {}: {e}", case.name()));
                }
            }
        }
        if ttfbs.is_empty() {
            println!("| {} | FAILED | | | |", case.name());
            continue;
        }
        let med = median(&mut ttfbs.clone());
        // The TCP handshake of tcp-rustls gives a measured RTT; others use 20 ms.
        let measured = if rtts.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2}", med / median(&mut rtts))
        };
        println!(
            "| {} | {:.1} | {:.2} | {} | {} |",
            case.name(),
            med,
            med / configured_rtt,
            measured,
            ttfbs
                .iter()
                .map(|t| format!("{t:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}

/// Delay every packet on A's veth by [`TTFB_DELAY_MS`] in each direction.
///
/// `tc netem` is the usual tool, but this kernel has no `sch_netem` (and no
/// `fq` for EDT delays), so packets go to an NFQUEUE (iptables `NFQUEUE`
/// target on egress and ingress of A's eth0) and `xtcp_lab::nfq::Delayer`
/// releases each one after the delay (no queue bypass: if the delayer dies,
/// packets are dropped, so a broken delay cannot go unnoticed).
fn delay_path(l: &Lab) -> Result<Delayer, String> {
    Delayer::start(
        &l.a,
        DelayConfig::new(Duration::from_millis(TTFB_DELAY_MS.into())),
        &[
            Tap::new("OUTPUT", &["-o", "eth0"]),
            Tap::new("PREROUTING", &["-i", "eth0"]),
        ],
    )
    .map_err(|e| format!("delayer: {e}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn parent(args: &[String]) -> ExitCode {
    let opts = match parse_opts(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("transport bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    require_root();
    let ok = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "`taskset` is missing: apt-get install -y util-linux");
    let code = xtcp::secret::SessionSecret::generate()
        .expect("session secret")
        .code();
    if opts.ttfb {
        return match run_ttfb(&opts, &code) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("transport bench: FAILED:\n{e}");
                ExitCode::FAILURE
            }
        };
    }
    let wanted = |c: Case| opts.cases.is_empty() || opts.cases.contains(&c);
    let mut jobs: Vec<(Case, u32, usize)> = Vec::new();
    if !opts.loss_only {
        for c in [
            Case::XtcpTls,
            Case::XtcpRaw,
            Case::TcpRustls,
            Case::Tcp,
            Case::Quinn,
        ] {
            if wanted(c) {
                jobs.push((c, 0, opts.mib << 20));
            }
        }
        // BBR has no row of its own without loss unless asked for.
        if opts.cases.contains(&Case::TcpBbr) {
            jobs.push((Case::TcpBbr, 0, opts.mib << 20));
        }
    }
    if !opts.no_loss {
        for pm in [1, 10, 50] {
            for c in [
                Case::XtcpRaw,
                Case::XtcpTls,
                Case::Tcp,
                Case::TcpBbr,
                Case::Quinn,
            ] {
                if wanted(c) {
                    jobs.push((c, pm, opts.loss_mib << 20));
                }
            }
        }
    }
    if jobs.iter().any(|j| j.0 == Case::TcpBbr) && !bbr_available() {
        let msg = "BBR is not available (not in tcp_available_congestion_control, modprobe tcp_bbr failed): skipping the tcp-bbr rows";
        eprintln!("{msg}");
        println!("{msg}");
        jobs.retain(|j| j.0 != Case::TcpBbr);
    }
    let mut hashes: HashMap<usize, String> = HashMap::new();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (case, pm, len) in jobs {
        let expected = hashes
            .entry(len)
            .or_insert_with(|| sha256_hex(&payload(SEED, len)))
            .clone();
        eprintln!(
            "running {} loss {} ({} MiB)…",
            case.name(),
            loss_label(pm),
            len >> 20
        );
        match run_case(case, pm, len, &expected, &code, opts.timeout) {
            Ok(r) => {
                eprintln!(
                    "  {:.2} s, {:.0} Mbit/s, CPU s/GiB sender {:.2} receiver {:.2}",
                    r.secs,
                    r.mbit(),
                    r.send_cpu_gib(),
                    r.recv_cpu_gib()
                );
                rows.push(r);
            }
            Err(e) => {
                eprintln!("  FAILED: {e}");
                failures.push(format!("{} loss {}: {e}", case.name(), loss_label(pm)));
            }
        }
    }
    println!();
    print_table(&rows);
    print_ratios(&rows);
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!();
        println!("FAILED cases:");
        for f in &failures {
            println!("- {f}");
        }
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--role") {
        child::main(&args)
    } else {
        parent(&args)
    }
}

// ───────────────────────────── children ─────────────────────────────

mod child {
    use super::*;
    use tokio::net::{TcpListener, TcpSocket, TcpStream};
    use xtcp::transport::{EndpointOptions, XtcpEndpoint};

    pub struct ChildOpts {
        role: String,
        case: Case,
        len: usize,
        port: u16,
        code: String,
    }

    /// What a child reports.
    #[derive(Default)]
    struct Report {
        bytes: u64,
        secs: f64,
        cpu: f64,
        sha256: Option<String>,
        info: String,
        ttfb_ms: Option<f64>,
        rtt_ms: Option<f64>,
    }

    type Res<T> = Result<T, String>;

    fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
        move |e| format!("{what}: {e}")
    }

    fn parse(args: &[String]) -> Res<ChildOpts> {
        let get = |k: &str| {
            args.iter()
                .position(|a| a == k)
                .and_then(|i| args.get(i + 1))
                .cloned()
                .ok_or_else(|| format!("child: missing {k}"))
        };
        Ok(ChildOpts {
            role: get("--role")?,
            case: Case::parse(&get("--case")?).ok_or("child: bad --case")?,
            len: get("--len")?.parse().map_err(err("--len"))?,
            port: get("--port")?.parse().map_err(err("--port"))?,
            code: get("--code")?,
        })
    }

    pub fn main(args: &[String]) -> ExitCode {
        let o = match parse(args) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let r = rt.block_on(async {
            match tokio::time::timeout(Duration::from_secs(600), run(&o)).await {
                Ok(r) => r,
                Err(_) => Err("child timed out".into()),
            }
        });
        match r {
            Ok(rep) => {
                let v = serde_json::json!({
                    "role": o.role,
                    "case": o.case.name(),
                    "bytes": rep.bytes,
                    "secs": rep.secs,
                    "cpu": rep.cpu,
                    "sha256": rep.sha256,
                    "info": rep.info,
                    "ttfb_ms": rep.ttfb_ms,
                    "rtt_ms": rep.rtt_ms,
                });
                println!("RESULT {v}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{} {}: {e}", o.role, o.case.name());
                ExitCode::FAILURE
            }
        }
    }

    /// This process's CPU time (user + system), seconds.
    fn cpu_secs() -> f64 {
        use nix::sys::resource::{getrusage, UsageWho};
        let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
        let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        tv(u.user_time()) + tv(u.system_time())
    }

    fn ready() {
        println!("READY");
    }

    fn server_addr(o: &ChildOpts) -> SocketAddr {
        SocketAddr::from((B_IP.parse::<std::net::Ipv4Addr>().expect("B_IP"), o.port))
    }

    async fn run(o: &ChildOpts) -> Res<Report> {
        match o.role.as_str() {
            "send" => {
                let data = payload(SEED, o.len);
                let cpu0 = cpu_secs();
                let t0 = Instant::now();
                let info = send(o, &data).await?;
                Ok(Report {
                    bytes: data.len() as u64,
                    secs: t0.elapsed().as_secs_f64(),
                    cpu: cpu_secs() - cpu0,
                    info,
                    ..Report::default()
                })
            }
            "recv" => {
                // Filled (so touched) before measuring: no page faults in the figures.
                let mut buf = vec![0xa5u8; o.len + CHUNK];
                let cpu0 = cpu_secs();
                let (n, secs, info) = recv(o, &mut buf).await?;
                let cpu = cpu_secs() - cpu0;
                Ok(Report {
                    bytes: n as u64,
                    secs,
                    cpu,
                    sha256: Some(sha256_hex(&buf[..n])),
                    info,
                    ..Report::default()
                })
            }
            "ttfb-client" => ttfb_client(o).await,
            "ttfb-server" => ttfb_server(o).await,
            r => Err(format!("unknown role {r}")),
        }
    }

    /// Write everything in CHUNK writes, then half-close.
    async fn send_all<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> Res<()> {
        for c in data.chunks(CHUNK) {
            w.write_all(c).await.map_err(err("write"))?;
        }
        w.flush().await.map_err(err("flush"))?;
        w.shutdown().await.map_err(err("shutdown"))
    }

    /// Read until EOF into `buf` (CHUNK reads); returns the byte count.
    async fn recv_all<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Res<usize> {
        let mut n = 0;
        loop {
            if n == buf.len() {
                buf.resize(n + CHUNK, 0);
            }
            let end = (n + CHUNK).min(buf.len());
            let k = r.read(&mut buf[n..end]).await.map_err(err("read"))?;
            if k == 0 {
                return Ok(n);
            }
            n += k;
        }
    }

    /// Wait for the peer's EOF (it closes once it has everything).
    async fn drain<R: AsyncRead + Unpin>(r: &mut R) -> Res<()> {
        let mut b = [0u8; 64];
        loop {
            if r.read(&mut b).await.map_err(err("read (drain)"))? == 0 {
                return Ok(());
            }
        }
    }

    async fn bounded<F: std::future::Future>(what: &'static str, f: F) -> Res<F::Output> {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .map_err(|_| format!("{what}: timed out"))
    }

    fn secret(o: &ChildOpts) -> Res<xtcp::secret::SessionSecret> {
        xtcp::secret::SessionSecret::parse(&o.code).map_err(err("session code"))
    }

    fn suite_name(s: Option<rustls::CipherSuite>) -> String {
        s.map(|s| format!("{s:?}")).unwrap_or_else(|| "?".into())
    }

    // ── senders (clients) ──

    async fn send(o: &ChildOpts, data: &[u8]) -> Res<String> {
        let addr = server_addr(o);
        match o.case {
            Case::XtcpRaw | Case::XtcpTls => {
                let ep = XtcpEndpoint::bind(
                    "0.0.0.0:0".parse().expect("addr"),
                    EndpointOptions::default(),
                )
                .map_err(err("bind"))?;
                let stream = bounded("xtcp connect", ep.connect(addr))
                    .await?
                    .map_err(err("xtcp connect"))?;
                let waiter = stream.close_waiter();
                let info = if o.case == Case::XtcpTls {
                    let secret = secret(o)?;
                    let mut s = xtcp::e2e::handshake(
                        stream,
                        xtcp::e2e::Role::Guest,
                        &secret,
                        &Default::default(),
                    )
                    .await
                    .map_err(err("e2e handshake"))?;
                    send_all(&mut s, data).await?;
                    drain(&mut s).await?;
                    suite_name(s.cipher_suite())
                } else {
                    let mut s = stream;
                    send_all(&mut s, data).await?;
                    drain(&mut s).await?;
                    "no TLS".into()
                };
                bounded("xtcp close", waiter.wait())
                    .await?
                    .map_err(err("xtcp close"))?;
                ep.flush().await;
                // Stay to answer the receiver's retransmissions if our last
                // ACK (of its close_notify and FIN) is lost, as `xtcp
                // connect` does: without it the receiver's close timed out
                // in about 1 of 4 xtcp-tls runs at 5 % loss.
                tokio::time::sleep(waiter.linger()).await;
                Ok(info)
            }
            Case::Tcp | Case::TcpBbr | Case::TcpRustls => {
                let (mut s, cc) = tcp_connect(addr, o.case.tcp_cc()).await?;
                if o.case == Case::TcpRustls {
                    let cfg = rustls_client_config()?;
                    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
                        .map_err(err("server name"))?;
                    let mut t = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                        .connect(name, s)
                        .await
                        .map_err(err("TLS connect"))?;
                    let suite =
                        suite_name(t.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()));
                    send_all(&mut t, data).await?;
                    drain(&mut t).await?;
                    Ok(format!("{suite}, {cc}"))
                } else {
                    send_all(&mut s, data).await?;
                    drain(&mut s).await?;
                    Ok(cc)
                }
            }
            Case::Quinn => {
                let ep = quinn_client()?;
                let conn = bounded(
                    "quic connect",
                    ep.connect(addr, SERVER_NAME).map_err(err("quic connect"))?,
                )
                .await?
                .map_err(err("quic handshake"))?;
                let mut s = conn.open_uni().await.map_err(err("open_uni"))?;
                send_all(&mut s, data).await?;
                // The receiver closes the connection once it has read everything.
                let why = bounded("quic close", conn.closed()).await?;
                if !matches!(why, quinn::ConnectionError::ApplicationClosed(_)) {
                    return Err(format!("quic: connection ended with {why}"));
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
                Ok("AES_256_GCM only (Initial AES-128-GCM per RFC 9001), CUBIC".into())
            }
        }
    }

    // ── receivers (servers) ──

    async fn recv(o: &ChildOpts, buf: &mut Vec<u8>) -> Res<(usize, f64, String)> {
        let addr = server_addr(o);
        match o.case {
            Case::XtcpRaw | Case::XtcpTls => {
                let ep = XtcpEndpoint::bind(
                    addr,
                    EndpointOptions {
                        listen: true,
                        ..EndpointOptions::default()
                    },
                )
                .map_err(err("bind"))?;
                ready();
                let stream = bounded("xtcp accept", ep.accept())
                    .await?
                    .map_err(err("xtcp accept"))?;
                let waiter = stream.close_waiter();
                let r = if o.case == Case::XtcpTls {
                    let secret = secret(o)?;
                    let mut s = xtcp::e2e::handshake(
                        stream,
                        xtcp::e2e::Role::Host,
                        &secret,
                        &Default::default(),
                    )
                    .await
                    .map_err(err("e2e handshake"))?;
                    let t0 = Instant::now();
                    let n = recv_all(&mut s, buf).await?;
                    let secs = t0.elapsed().as_secs_f64();
                    s.shutdown().await.map_err(err("shutdown"))?;
                    (n, secs, suite_name(s.cipher_suite()))
                } else {
                    let mut s = stream;
                    let t0 = Instant::now();
                    let n = recv_all(&mut s, buf).await?;
                    let secs = t0.elapsed().as_secs_f64();
                    s.shutdown().await.map_err(err("shutdown"))?;
                    (n, secs, "no TLS".into())
                };
                bounded("xtcp close", waiter.wait())
                    .await?
                    .map_err(err("xtcp close"))?;
                ep.flush().await;
                // Answer a retransmitted FIN if our last ACK is lost.
                tokio::time::sleep(waiter.linger()).await;
                Ok(r)
            }
            Case::Tcp | Case::TcpBbr | Case::TcpRustls => {
                let l = tcp_listen(addr, o.case.tcp_cc())?;
                ready();
                let (s, _) = bounded("tcp accept", l.accept())
                    .await?
                    .map_err(err("accept"))?;
                socket2::SockRef::from(&s)
                    .set_tcp_congestion(o.case.tcp_cc().as_bytes())
                    .map_err(err("TCP_CONGESTION"))?;
                if o.case == Case::TcpRustls {
                    let cfg = rustls_server_config()?;
                    let mut t = tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
                        .accept(s)
                        .await
                        .map_err(err("TLS accept"))?;
                    let t0 = Instant::now();
                    let n = recv_all(&mut t, buf).await?;
                    let secs = t0.elapsed().as_secs_f64();
                    t.shutdown().await.map_err(err("shutdown"))?;
                    Ok((n, secs, String::new()))
                } else {
                    let mut s = s;
                    let t0 = Instant::now();
                    let n = recv_all(&mut s, buf).await?;
                    let secs = t0.elapsed().as_secs_f64();
                    s.shutdown().await.map_err(err("shutdown"))?;
                    Ok((n, secs, String::new()))
                }
            }
            Case::Quinn => {
                let ep = quinn_server(addr)?;
                ready();
                let inc = bounded("quic accept", ep.accept())
                    .await?
                    .ok_or("quic endpoint closed")?;
                let conn = bounded("quic handshake", inc.accept().map_err(err("quic accept"))?)
                    .await?
                    .map_err(err("quic handshake"))?;
                let mut r = conn.accept_uni().await.map_err(err("accept_uni"))?;
                let t0 = Instant::now();
                let n = recv_all(&mut r, buf).await?;
                let secs = t0.elapsed().as_secs_f64();
                conn.close(0u32.into(), b"done");
                let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
                Ok((n, secs, String::new()))
            }
        }
    }

    // ── time to first byte ──

    async fn ttfb_client(o: &ChildOpts) -> Res<Report> {
        let addr = server_addr(o);
        let mut one = [0u8; 1];
        let mut rep = Report::default();
        match o.case {
            Case::XtcpTls => {
                let secret = secret(o)?;
                let ep = XtcpEndpoint::bind(
                    "0.0.0.0:0".parse().expect("addr"),
                    EndpointOptions::default(),
                )
                .map_err(err("bind"))?;
                let t0 = Instant::now();
                let stream = bounded("xtcp connect", ep.connect(addr))
                    .await?
                    .map_err(err("xtcp connect"))?;
                let connected = t0.elapsed();
                let waiter = stream.close_waiter();
                let mut s = xtcp::e2e::handshake(
                    stream,
                    xtcp::e2e::Role::Guest,
                    &secret,
                    &Default::default(),
                )
                .await
                .map_err(err("e2e handshake"))?;
                bounded("read", s.read_exact(&mut one))
                    .await?
                    .map_err(err("read"))?;
                rep.ttfb_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                rep.info = format!("xtcp connect {:.1} ms", connected.as_secs_f64() * 1e3);
                s.shutdown().await.map_err(err("shutdown"))?;
                drain(&mut s).await?;
                drop(s);
                let _ = bounded("xtcp close", waiter.wait()).await;
                ep.flush().await;
            }
            Case::TcpRustls => {
                let t0 = Instant::now();
                let (s, _) = tcp_connect(addr, "cubic").await?;
                rep.rtt_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                let cfg = rustls_client_config()?;
                let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
                    .map_err(err("server name"))?;
                let mut t = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect(name, s)
                    .await
                    .map_err(err("TLS connect"))?;
                bounded("read", t.read_exact(&mut one))
                    .await?
                    .map_err(err("read"))?;
                rep.ttfb_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                t.shutdown().await.map_err(err("shutdown"))?;
            }
            Case::Quinn => {
                let ep = quinn_client()?;
                let t0 = Instant::now();
                let conn = bounded(
                    "quic connect",
                    ep.connect(addr, SERVER_NAME).map_err(err("quic connect"))?,
                )
                .await?
                .map_err(err("quic handshake"))?;
                let mut r = bounded("accept_uni", conn.accept_uni())
                    .await?
                    .map_err(err("accept_uni"))?;
                bounded("read", r.read_exact(&mut one))
                    .await?
                    .map_err(err("read"))?;
                rep.ttfb_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                conn.close(0u32.into(), b"done");
                let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
            }
            c => return Err(format!("no ttfb for {}", c.name())),
        }
        Ok(rep)
    }

    async fn ttfb_server(o: &ChildOpts) -> Res<Report> {
        let addr = server_addr(o);
        match o.case {
            Case::XtcpTls => {
                let secret = secret(o)?;
                let ep = XtcpEndpoint::bind(
                    addr,
                    EndpointOptions {
                        listen: true,
                        ..EndpointOptions::default()
                    },
                )
                .map_err(err("bind"))?;
                ready();
                let stream = bounded("xtcp accept", ep.accept())
                    .await?
                    .map_err(err("xtcp accept"))?;
                let waiter = stream.close_waiter();
                let mut s = xtcp::e2e::handshake(
                    stream,
                    xtcp::e2e::Role::Host,
                    &secret,
                    &Default::default(),
                )
                .await
                .map_err(err("e2e handshake"))?;
                s.write_all(b"x").await.map_err(err("write"))?;
                s.flush().await.map_err(err("flush"))?;
                bounded("drain", drain(&mut s)).await??;
                s.shutdown().await.map_err(err("shutdown"))?;
                drop(s);
                let _ = bounded("xtcp close", waiter.wait()).await;
                ep.flush().await;
                tokio::time::sleep(waiter.linger()).await;
            }
            Case::TcpRustls => {
                let l = tcp_listen(addr, "cubic")?;
                ready();
                let (s, _) = bounded("tcp accept", l.accept())
                    .await?
                    .map_err(err("accept"))?;
                let mut t = tokio_rustls::TlsAcceptor::from(Arc::new(rustls_server_config()?))
                    .accept(s)
                    .await
                    .map_err(err("TLS accept"))?;
                t.write_all(b"x").await.map_err(err("write"))?;
                t.flush().await.map_err(err("flush"))?;
                bounded("drain", drain(&mut t)).await??;
            }
            Case::Quinn => {
                let ep = quinn_server(addr)?;
                ready();
                let inc = bounded("quic accept", ep.accept())
                    .await?
                    .ok_or("quic endpoint closed")?;
                let conn = bounded("quic handshake", inc.accept().map_err(err("quic accept"))?)
                    .await?
                    .map_err(err("quic handshake"))?;
                let mut w = conn.open_uni().await.map_err(err("open_uni"))?;
                w.write_all(b"x").await.map_err(err("write"))?;
                w.finish().map_err(err("finish"))?;
                let _ = bounded("quic close", conn.closed()).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
            }
            c => return Err(format!("no ttfb for {}", c.name())),
        }
        Ok(Report::default())
    }

    // ── kernel TCP with a pinned congestion control ──

    async fn tcp_connect(addr: SocketAddr, cc: &str) -> Res<(TcpStream, String)> {
        let sock = TcpSocket::new_v4().map_err(err("socket"))?;
        socket2::SockRef::from(&sock)
            .set_tcp_congestion(cc.as_bytes())
            .map_err(err("TCP_CONGESTION"))?;
        let s = bounded("tcp connect", sock.connect(addr))
            .await?
            .map_err(err("tcp connect"))?;
        let got = socket2::SockRef::from(&s)
            .tcp_congestion()
            .map_err(err("TCP_CONGESTION"))?;
        let got = String::from_utf8_lossy(&got)
            .trim_end_matches('\0')
            .to_owned();
        if got != cc {
            return Err(format!("congestion control is {got:?}, wanted {cc:?}"));
        }
        Ok((s, got))
    }

    fn tcp_listen(addr: SocketAddr, cc: &str) -> Res<TcpListener> {
        let sock = TcpSocket::new_v4().map_err(err("socket"))?;
        sock.set_reuseaddr(true).map_err(err("SO_REUSEADDR"))?;
        socket2::SockRef::from(&sock)
            .set_tcp_congestion(cc.as_bytes())
            .map_err(err("TCP_CONGESTION"))?;
        sock.bind(addr).map_err(err("bind"))?;
        sock.listen(128).map_err(err("listen"))
    }

    // ── TLS configurations: TLS 1.3, TLS13_AES_256_GCM_SHA384 only, ring ──

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        let mut p = (*xtcp::tls::crypto_provider()).clone();
        p.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384];
        Arc::new(p)
    }

    fn rustls_client_config() -> Res<rustls::ClientConfig> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(err("TLS config"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(xtcp::tls::SignatureOnlyVerifier::new(
                |_| Ok(()),
            )))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"bench".to_vec()];
        Ok(cfg)
    }

    fn rustls_server_config() -> Res<rustls::ServerConfig> {
        let ck = xtcp::tls::self_signed(&[SERVER_NAME]).map_err(err("certificate"))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(err("TLS config"))?
            .with_no_client_auth()
            .with_single_cert(ck.chain, ck.key)
            .map_err(err("TLS config"))?;
        cfg.alpn_protocols = vec![b"bench".to_vec()];
        Ok(cfg)
    }

    /// QUIC Initial packets always use AES-128-GCM (RFC 9001 §5.2); 1-RTT keys
    /// come from the only suite offered, AES-256-GCM.
    fn quic_initial() -> Res<rustls::quic::Suite> {
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()
            .and_then(|s| s.quic_suite())
            .ok_or_else(|| "no QUIC initial suite".to_owned())
    }

    fn quinn_client() -> Res<quinn::Endpoint> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::with_initial(
            Arc::new(rustls_client_config()?),
            quic_initial()?,
        )
        .map_err(err("QUIC client config"))?;
        let mut ep = quinn::Endpoint::client("0.0.0.0:0".parse().expect("addr"))
            .map_err(err("quic bind"))?;
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        Ok(ep)
    }

    fn quinn_server(addr: SocketAddr) -> Res<quinn::Endpoint> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::with_initial(
            Arc::new(rustls_server_config()?),
            quic_initial()?,
        )
        .map_err(err("QUIC server config"))?;
        let cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        quinn::Endpoint::server(cfg, addr).map_err(err("quic bind"))
    }
}
