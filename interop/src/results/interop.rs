//! Set `interop`: an unmodified kernel TCP socket against the `xtcp`
//! program (`listen` / `connect --no-tls`) through the TUN bridge
//! ([`crate::tun::Bridge`], `spec/xtcp.md` §11; the in-process version is
//! `interop/tests/kernel.rs`). Both directions at once, opened by either
//! side, without and with seeded random loss in the bridge; each row has the
//! bytes verified both ways and what the bridge checked (MSS and window
//! respected, retransmissions, the SYN options each side sent).

use super::loss::{receive, spawn_in, udp_bound, Kill};
use super::{check_deadline, Row, RunOpts, SetOutput, Table};
use crate::tun::{Bridge, BridgeConfig, Report};
use crate::Netns;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KERNEL_PORT: u16 = 5000;
const XTCP_PORT: u16 = 7300;
/// Bound on one case, setup included.
const CASE_BOUND: Duration = Duration::from_secs(120);

/// Which side opens the connection.
#[derive(Clone, Copy, Debug)]
enum Opener {
    Kernel,
    Xtcp,
}

/// The kernel's listener for XTCP-opened cases (before XTCP sends its SYN).
fn kernel_listener(ns: &Netns) -> Result<TcpListener, String> {
    let l = ns
        .run_in(|| TcpListener::bind(("198.18.0.1", KERNEL_PORT)))
        .and_then(|r| r)
        .map_err(|e| format!("kernel listen: {e}"))?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(l)
}

/// The kernel's socket: accepted from the XTCP side on `listener`, or
/// connected to it.
fn kernel_socket(
    ns: &Netns,
    listener: Option<TcpListener>,
    deadline: Instant,
) -> Result<TcpStream, String> {
    let Some(l) = listener else {
        let to = SocketAddr::from(([198, 18, 0, 2], 6000));
        return ns
            .run_in(move || TcpStream::connect_timeout(&to, Duration::from_secs(20)))
            .and_then(|r| r)
            .map_err(|e| format!("kernel connect: {e}"));
    };
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                check_deadline(deadline, "kernel accept")?;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("kernel accept: {e}")),
        }
    }
}

/// One case: returns (kernel → xtcp ok, xtcp → kernel ok, seconds, report).
fn case(
    xtcp: &Path,
    who: Opener,
    loss: f64,
    seed: u64,
    len: usize,
    file: &Path,
) -> Result<(bool, bool, f64, Report), String> {
    let deadline = Instant::now() + CASE_BOUND;
    let ns = Netns::new("iop").map_err(|e| format!("netns: {e}"))?;
    let xtcp_addr = SocketAddr::from(([127, 0, 0, 1], XTCP_PORT));
    let mut cfg = BridgeConfig::new(xtcp_addr);
    cfg.kernel_listen_port = KERNEL_PORT;
    cfg.loss_to_kernel = loss;
    cfg.loss_to_xtcp = loss;
    cfg.seed = seed;
    let bridge = Bridge::start(&ns, cfg).map_err(|e| format!("bridge: {e}"))?;
    let stdin = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let (listen, to) = (xtcp_addr.to_string(), bridge.udp_addr().to_string());
    let args: Vec<&str> = match who {
        Opener::Kernel => vec!["listen", &listen, "--no-tls"],
        Opener::Xtcp => vec!["connect", &to, "--no-tls"],
    };
    let listener = match who {
        Opener::Xtcp => Some(kernel_listener(&ns)?),
        Opener::Kernel => None,
    };
    let t0 = Instant::now();
    let mut x = Kill(
        spawn_in(&ns, None, xtcp, &args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn xtcp: {e}"))?,
    );
    if matches!(who, Opener::Kernel) {
        while !udp_bound(&ns, XTCP_PORT) {
            check_deadline(t0 + Duration::from_secs(10), "xtcp listen bind")?;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let out = x.0.stdout.take().ok_or("no stdout")?;
    let (tx, xtcp_got) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(receive(out));
    });
    let k = kernel_socket(&ns, listener, deadline)?;
    k.set_read_timeout(Some(CASE_BOUND))
        .map_err(|e| e.to_string())?;
    k.set_write_timeout(Some(CASE_BOUND))
        .map_err(|e| e.to_string())?;
    let data = crate::payload(seed, len);
    let want = crate::sha256_hex(&data);
    let mut kw = k.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || {
        kw.write_all(&data)
            .and_then(|()| kw.shutdown(Shutdown::Write))
    });
    let k_got = receive(k).map_err(|e| format!("kernel read: {e}"))?;
    writer
        .join()
        .map_err(|_| "kernel writer panicked".to_string())?
        .map_err(|e| format!("kernel write: {e}"))?;
    let left = deadline.saturating_duration_since(Instant::now());
    let x_got = xtcp_got
        .recv_timeout(left)
        .map_err(|_| "xtcp: no end of stream in time".to_string())?
        .map_err(|e| format!("xtcp read: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    let report = bridge.report();
    drop(x);
    drop(bridge);
    let ok = |g: &super::loss::Got| g.bytes == len as u64 && g.sha256 == want;
    Ok((ok(&x_got), ok(&k_got), secs, report))
}

fn syn(r: &crate::tun::DirStats) -> String {
    let s = &r.syn;
    format!(
        "mss {} wscale {} sack {} ts {}",
        s.mss.map_or("-".into(), |m| m.to_string()),
        s.wscale.map_or("-".into(), |m| m.to_string()),
        s.sack_permitted,
        s.timestamps
    )
}

/// Run the set (no figure).
pub fn run(opts: &RunOpts) -> Result<SetOutput, String> {
    crate::require_netns();
    let xtcp = opts.xtcp()?;
    let len = if opts.quick { 2 << 20 } else { 10 << 20 };
    let dir = std::env::temp_dir().join(format!("xtcp-lab-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("payload");
    // Both directions carry the same payload (the XTCP side's from the file).
    std::fs::write(&file, crate::payload(opts.seed, len)).map_err(|e| e.to_string())?;
    let mut table = Table::new("interop");
    for (who, loss) in [
        (Opener::Kernel, 0.0),
        (Opener::Xtcp, 0.0),
        (Opener::Kernel, 0.02),
        (Opener::Xtcp, 0.02),
    ] {
        let name = format!(
            "{}-opened-loss-{}pct",
            format!("{who:?}").to_lowercase(),
            loss * 100.0
        );
        eprintln!("  {name}");
        let row = Row::new(&name)
            .set("opener", format!("{who:?}").to_lowercase())
            .num("bridge_loss_pct", loss * 100.0, 1)
            .set("bytes_each_way", len as u64);
        let row = match case(&xtcp, who, loss, opts.seed, len, &file) {
            Ok((k2x, x2k, secs, r)) => {
                let (k, x) = (r.kernel(), r.xtcp());
                row.set("kernel_to_xtcp_verified", k2x)
                    .set("xtcp_to_kernel_verified", x2k)
                    .set("verified", k2x && x2k)
                    .num("seconds", secs, 3)
                    .set("mss_violations", k.mss_violations + x.mss_violations)
                    .set(
                        "window_violations",
                        k.window_violations + x.window_violations,
                    )
                    .set("malformed", k.malformed + x.malformed)
                    .set("kernel_retransmits", k.retransmits)
                    .set("xtcp_retransmits", x.retransmits)
                    .set("dropped_kernel_to_xtcp", k.dropped_loss)
                    .set("dropped_xtcp_to_kernel", x.dropped_loss)
                    .set("kernel_syn", syn(k))
                    .set("xtcp_syn", syn(x))
            }
            Err(e) => {
                eprintln!("    FAILED: {e}");
                row.set("verified", false).set("error", e)
            }
        };
        table.rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(SetOutput {
        table,
        files: Vec::new(),
    })
}
