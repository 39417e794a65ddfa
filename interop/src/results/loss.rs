//! Set `loss`: goodput against random loss, XTCP (the `xtcp` program,
//! `listen`/`connect --no-tls`, CUBIC) and kernel TCP CUBIC, over the veth
//! lab of `benches/transport.rs` ([`crate::pair::Pair`]: nftables drops
//! packets at random as they arrive at the receiver, both directions' data
//! and ACKs alike only on that side).
//!
//! Goodput is measured at the receiver, from its first payload byte to the
//! end of the stream, and the bytes are checked (length and SHA-256). With
//! `--pin` the sender runs on core 0 and the receiver on core 1 (`taskset`,
//! or the threads' affinity for kernel TCP), as in the transport bench; by
//! default the scheduler places them: on a shared machine a pinned thread
//! waits for its busy core, and kernel TCP lost most (quick set, load
//! average 6: 246 against 1014 Mbit/s without loss, 176 against 242 at 1 %).

use super::plot::{self, Axes, Series};
use super::{median, Row, RunOpts, SetOutput, Table};
use crate::pair::Pair;
use ring::digest;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const A_CIDR: &str = "198.18.6.1/24";
const B_CIDR: &str = "198.18.6.2/24";
const B_IP: [u8; 4] = [198, 18, 6, 2];
const XTCP_PORT: u16 = 7200;
const TCP_PORT: u16 = 7201;
/// Loss levels in per mille: 0, 0.5, 1, 2 and 5 %.
pub const LEVELS: [u32; 5] = [0, 5, 10, 20, 50];
/// Bound on one transfer, setup included.
const RUN_BOUND: Duration = Duration::from_secs(120);

/// What the receiver saw.
pub(super) struct Got {
    pub bytes: u64,
    pub sha256: String,
    pub secs: f64,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Read `r` to its end: bytes, SHA-256, seconds from the first byte to the
/// end. The bytes are only copied while the clock runs (as the transport
/// bench's receivers do) and hashed afterwards, so hashing takes no CPU from
/// the receive path.
pub(super) fn receive(mut r: impl Read) -> std::io::Result<Got> {
    let mut buf = vec![0u8; 16 << 20];
    let (mut n, mut first) = (0usize, None);
    loop {
        if n == buf.len() {
            buf.resize(2 * n, 0);
        }
        let k = r.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        n += k;
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(Got {
        bytes: n as u64,
        sha256: hex(digest::digest(&digest::SHA256, &buf[..n]).as_ref()),
        secs,
    })
}

/// Pin the calling thread to `core` (best effort).
pub(super) fn pin(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it;
    // sched_setaffinity(0, …) applies to the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Set and read back TCP_CONGESTION.
pub(super) fn set_cc(fd: &impl AsRawFd, cc: &str) -> Result<String, String> {
    let mut name = [0u8; 16];
    // SAFETY: setsockopt/getsockopt on a valid socket fd with buffers of the
    // lengths passed.
    unsafe {
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            cc.as_ptr().cast(),
            cc.len() as libc::socklen_t,
        ) != 0
        {
            return Err(format!(
                "TCP_CONGESTION {cc}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut len = name.len() as libc::socklen_t;
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_mut_ptr().cast(),
            &mut len,
        );
    }
    Ok(String::from_utf8_lossy(&name)
        .trim_end_matches('\0')
        .to_owned())
}

/// Kernel TCP CUBIC: a listener in `b`, a sender in `a`, both in this process.
fn kernel_tcp(pair: &Pair, data: &[u8], pinned: bool) -> Result<(Got, String), String> {
    let addr = SocketAddr::from((B_IP, TCP_PORT));
    let l = pair
        .b
        .run_in(move || TcpListener::bind(addr))
        .and_then(|r| r)
        .map_err(|e| format!("listen: {e}"))?;
    set_cc(&l, "cubic")?;
    let s = pair
        .a
        .run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .and_then(|r| r)
        .map_err(|e| format!("connect: {e}"))?;
    let cc = set_cc(&s, "cubic")?;
    let (conn, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    set_cc(&conn, "cubic")?;
    for sock in [&s, &conn] {
        sock.set_read_timeout(Some(RUN_BOUND))
            .map_err(|e| e.to_string())?;
        sock.set_write_timeout(Some(RUN_BOUND))
            .map_err(|e| e.to_string())?;
    }
    // Both ends on threads of their own (pinned), never this one: children
    // spawned later inherit this thread's affinity.
    std::thread::scope(|sc| {
        let recv = sc.spawn(move || {
            if pinned {
                pin(1);
            }
            receive(conn)
        });
        let send = sc.spawn(move || {
            if pinned {
                pin(0);
            }
            let mut s = s;
            s.write_all(data)
                .and_then(|()| s.shutdown(std::net::Shutdown::Write))
        });
        let got = recv.join().map_err(|_| "receiver panicked".to_string())?;
        let sent = send.join().map_err(|_| "sender panicked".to_string())?;
        sent.map_err(|e| format!("send: {e}"))?;
        got.map(|g| (g, cc)).map_err(|e| format!("receive: {e}"))
    })
}

/// A child killed and reaped on drop.
pub(super) struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a UDP socket is bound to `port` in `ns`.
pub(super) fn udp_bound(ns: &crate::Netns, port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ns.run_in(|| std::fs::read_to_string("/proc/thread-self/net/udp").unwrap_or_default())
        .is_ok_and(|t| t.lines().any(|l| l.contains(&needle)))
}

pub(super) fn spawn_in(
    ns: &crate::Netns,
    core: Option<usize>,
    prog: &Path,
    args: &[&str],
) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name()]);
    if let Some(core) = core {
        c.args(["taskset", "-c", &core.to_string()]);
    }
    c.arg(prog).args(args);
    c
}

/// XTCP: `xtcp listen --no-tls` in `b` (stdout read here), `xtcp connect
/// --no-tls` in `a` with the payload file as stdin.
fn xtcp_cli(pair: &Pair, xtcp: &Path, file: &Path, pinned: bool) -> Result<Got, String> {
    let listen = format!("0.0.0.0:{XTCP_PORT}");
    let mut rx = Kill(
        spawn_in(
            &pair.b,
            pinned.then_some(1),
            xtcp,
            &["listen", &listen, "--no-tls"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn xtcp listen: {e}"))?,
    );
    let t0 = Instant::now();
    while !udp_bound(&pair.b, XTCP_PORT) {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("xtcp listen did not bind in 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = rx.0.stdout.take().ok_or("no stdout")?;
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        // The reader belongs to the receiving side (core 1, with `xtcp listen`).
        if pinned {
            pin(1);
        }
        let _ = tx.send(receive(out));
    });
    let to = SocketAddr::from((B_IP, XTCP_PORT)).to_string();
    let stdin = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut txp = Kill(
        spawn_in(
            &pair.a,
            pinned.then_some(0),
            xtcp,
            &["connect", &to, "--no-tls"],
        )
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn xtcp connect: {e}"))?,
    );
    let got = done.recv_timeout(RUN_BOUND);
    let stderr = |k: &mut Kill| {
        let _ = k.0.kill();
        let mut s = String::new();
        if let Some(mut e) = k.0.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s.trim()
            .chars()
            .rev()
            .take(600)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
    };
    match got {
        Ok(Ok(g)) => Ok(g),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err(format!(
            "no end of stream in {RUN_BOUND:?}; connect: {}; listen: {}",
            stderr(&mut txp),
            stderr(&mut rx)
        )),
    }
}

/// One measured transfer.
struct Measured {
    got: Got,
    drop: Option<f64>,
    cc: String,
}

fn one(
    case: &str,
    per_mille: u32,
    data: &[u8],
    file: &Path,
    xtcp: &Path,
    pinned: bool,
) -> Result<Measured, String> {
    let pair = Pair::new(("lsA", "lsB"), A_CIDR, B_CIDR).map_err(|e| format!("lab: {e}"))?;
    if per_mille > 0 {
        pair.loss(per_mille).map_err(|e| format!("nft: {e}"))?;
    }
    let (got, cc) = if case == "xtcp" {
        (
            xtcp_cli(&pair, xtcp, file, pinned)?,
            "cubic (XTCP)".to_owned(),
        )
    } else {
        kernel_tcp(&pair, data, pinned)?
    };
    let drop = pair
        .loss_counters()
        .map(|(all, dropped)| dropped as f64 / all.max(1) as f64);
    Ok(Measured { got, drop, cc })
}

/// Run the set; the figure is `goodput_vs_loss.svg`.
pub fn run(opts: &RunOpts) -> Result<SetOutput, String> {
    crate::require_root();
    let xtcp = opts.xtcp()?;
    // Full: 64 MiB, median of 3 (kernel TCP at 5 % moved 223–418 Mbit/s on
    // an idle machine, ≈ 10 on a loaded one: 50 s per run).
    let (mib, reps) = if opts.quick { (16usize, 1u32) } else { (64, 3) };
    let len = mib << 20;
    let data = crate::payload(opts.seed, len);
    let want = crate::sha256_hex(&data);
    let dir = std::env::temp_dir().join(format!("xtcp-lab-loss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("payload");
    std::fs::write(&file, &data).map_err(|e| format!("{}: {e}", file.display()))?;
    let pinned = opts.pin && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    let mut table = Table::new("loss");
    let mut medians: Vec<(&str, Vec<(f64, f64)>)> = vec![("xtcp", vec![]), ("tcp-cubic", vec![])];
    for &pm in &LEVELS {
        for (case, pts) in medians.iter_mut() {
            let mut rates = Vec::new();
            for rep in 0..reps {
                eprintln!("  loss {} ‰ {case} run {rep} ({mib} MiB)", pm);
                let m = match one(case, pm, &data, &file, &xtcp, pinned) {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("    FAILED: {e}");
                        table.rows.push(
                            Row::new(format!("{case}-loss-{pm}permille-run{rep}"))
                                .set("case", *case)
                                .num("loss_pct", f64::from(pm) / 10.0, 1)
                                .set("run", rep)
                                .set("verified", false)
                                .set("error", e),
                        );
                        continue;
                    }
                };
                let ok = m.got.bytes == len as u64 && m.got.sha256 == want;
                let mbit = m.got.bytes as f64 * 8.0 / m.got.secs.max(1e-9) / 1e6;
                eprintln!("    {mbit:.0} Mbit/s, verified {ok}");
                if ok {
                    rates.push(mbit);
                }
                table.rows.push(
                    Row::new(format!("{case}-loss-{pm}permille-run{rep}"))
                        .set("case", *case)
                        .set("congestion_control", m.cc)
                        .num("loss_pct", f64::from(pm) / 10.0, 1)
                        .set("run", rep)
                        .set("pinned", pinned)
                        .set("bytes", m.got.bytes)
                        .num("seconds", m.got.secs, 4)
                        .num("goodput_mbit", mbit, 1)
                        .opt("measured_drop_pct", m.drop.map(|d| d * 100.0), 3)
                        .set("verified", ok),
                );
            }
            if !rates.is_empty() {
                pts.push((f64::from(pm) / 10.0, median(&mut rates)));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let svg = opts.out.join("goodput_vs_loss.svg");
    let note = format!(
        "veth between namespaces, nftables random loss at the receiver; {mib} MiB per run, median of {reps}; {}; {} mode",
        if pinned { "sender core 0, receiver core 1" } else { "threads placed by the scheduler" },
        if opts.quick { "quick" } else { "full" }
    );
    let [(_, x), (_, t)] = [medians[0].clone(), medians[1].clone()];
    plot::lines(
        &svg,
        &Axes {
            title: "Goodput vs random loss: XTCP vs kernel TCP CUBIC",
            x: "random loss (%)",
            y: "goodput (Mbit/s)",
            note: &note,
        },
        &[
            Series {
                name: "XTCP (xtcp --no-tls, CUBIC)".into(),
                points: x,
                color: plot::BLUE_,
                dots: true,
            },
            Series {
                name: "kernel TCP CUBIC".into(),
                points: t,
                color: plot::ORANGE,
                dots: true,
            },
        ],
    )?;
    Ok(SetOutput {
        table,
        files: vec![svg],
    })
}
