//! The `xtcp` / `xtcp-relay` programs in a [`Lab`]'s namespaces: processes
//! killed on drop, their stderr line by line with arrival times, and one
//! host/join cell run end to end (relay in `inet`, `xtcp host` at site A,
//! `xtcp join` at site B, payloads verified both ways).
//!
//! The NAT tests of the `xtcp` crate (`tests/nat_matrix.rs`,
//! `tests/nat_rtt.rs`) and `xtcp-lab run --set matrix,rtt` both run cells
//! through here; [`Bins`] says where the two programs are.

use crate::nat::{Lab, NatKind, Site, SiteConfig, RELAY};
use crate::Netns;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where the `xtcp` and `xtcp-relay` programs are.
#[derive(Clone, Debug)]
pub struct Bins {
    pub xtcp: String,
    pub relay: String,
}

pub const RELAY_PORT: u16 = 4433;
pub const HOST_BYTES: usize = 4 << 20;
pub const GUEST_BYTES: usize = 1 << 20;
/// How long stdin stays open (after the payload) waiting for a direct path.
pub const DIRECT_GRACE: Duration = Duration::from_secs(3);
/// Bound on one cell's session (both peers exit within it, or are killed).
pub const SESSION_BOUND: Duration = Duration::from_secs(30);
/// Bound on waiting for a single expected stderr line.
pub const LINE_BOUND: Duration = Duration::from_secs(20);

/// A child process, killed and reaped on drop (early return, panic).
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    /// Start `program args` inside `ns`, all three standard streams piped.
    pub fn spawn(ns: &Netns, what: &str, program: &str, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), program])
            .args(args)
            // Plain text if XTCP_LOG asks the peers for their traces.
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Proc {
            child,
            what: what.to_string(),
        }
    }

    /// Wait for the exit until `deadline`; kill it then (None: killed).
    pub fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    eprintln!("{}: still running at the deadline, killed", self.what);
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return None;
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a stderr reader collected: every line with its arrival time, and
/// whether the stream ended.
#[derive(Default)]
struct Seen {
    lines: Vec<(Instant, String)>,
    ended: bool,
}

/// A child's stderr, line by line with the time each line arrived.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Seen>, Condvar)>);

impl Lines {
    pub fn follow(child: &mut Child) -> Lines {
        let lines = Lines::default();
        let err = child.stderr.take().expect("piped stderr");
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let (m, cv) = &*l.0;
                m.lock().unwrap().lines.push((Instant::now(), line));
                cv.notify_all();
            }
            let (m, cv) = &*l.0;
            m.lock().unwrap().ended = true;
            cv.notify_all();
        });
        lines
    }

    /// The first line (time, text) satisfying `f`, waiting until `deadline`.
    pub fn wait_for(
        &self,
        deadline: Instant,
        f: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        self.wait_for_after(None, deadline, f)
    }

    /// Like `wait_for`, among the lines that arrived at or after `after`.
    pub fn wait_for_after(
        &self,
        after: Option<Instant>,
        deadline: Instant,
        f: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(hit) = g
                .lines
                .iter()
                .find(|(t, l)| after.is_none_or(|a| *t >= a) && f(l))
            {
                return Some(hit.clone());
            }
            let now = Instant::now();
            if g.ended || now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    pub fn snapshot(&self) -> Vec<(Instant, String)> {
        self.0 .0.lock().unwrap().lines.clone()
    }

    /// Every `path: …` the process printed, in order, with its time.
    pub fn paths(&self) -> Vec<(Instant, String)> {
        self.snapshot()
            .into_iter()
            // "relay (after a stall of 0.4 s)": the path is the first word.
            .filter_map(|(t, l)| {
                l.strip_prefix("path: ")
                    .and_then(|p| p.split_whitespace().next())
                    .map(|p| (t, p.to_string()))
            })
            .collect()
    }

    /// All lines, each stamped with its time since `t0`.
    pub fn text(&self, t0: Instant) -> String {
        self.snapshot()
            .into_iter()
            .map(|(t, l)| {
                format!(
                    "[{:>6} ms] {l}",
                    t.saturating_duration_since(t0).as_millis()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Drain a child's stdout on a thread (no pipe stall); join for the bytes.
pub fn drain_stdout(child: &mut Child) -> std::thread::JoinHandle<Vec<u8>> {
    let mut out = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    })
}

/// Feed `data` to the child's stdin in chunks, then keep stdin open until
/// the child printed `path: direct-tcp` or [`DIRECT_GRACE`] passed since
/// its first `path:` line (or since the payload was written), then close it.
pub fn feed_stdin(
    child: &mut Child,
    data: Vec<u8>,
    lines: Lines,
    grace: Duration,
) -> std::thread::JoinHandle<()> {
    let mut stdin = child.stdin.take().expect("piped stdin");
    std::thread::spawn(move || {
        for chunk in data.chunks(64 * 1024) {
            if stdin.write_all(chunk).is_err() {
                return; // the child is gone; its exit status tells
            }
        }
        let _ = stdin.flush();
        let written = Instant::now();
        let start = lines
            .wait_for(written, |l| l.starts_with("path: "))
            .map_or(written, |(t, _)| t);
        lines.wait_for(start + grace, is_direct_line);
        drop(stdin);
    })
}

/// `path: direct-tcp` or `path: direct-udp`.
pub fn is_direct_line(l: &str) -> bool {
    matches!(l.trim(), "path: direct-tcp" | "path: direct-udp")
}

pub fn is_direct(p: &str) -> bool {
    p.starts_with("direct-")
}

/// A fresh operator token from `xtcp-relay token`: (token, config line).
pub fn new_token(bins: &Bins) -> (String, String) {
    let out = Command::new(&bins.relay).arg("token").output().unwrap();
    assert!(out.status.success(), "xtcp-relay token");
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("token line")
        .to_string();
    let line = text
        .lines()
        .find_map(|l| {
            l.split_once("add to the relay config:")
                .map(|x| x.1.trim().to_string())
        })
        .expect("config line");
    (token, line)
}

pub fn label(c: SiteConfig) -> String {
    let mut s = format!("{:?}", c.nat);
    if c.block_inbound_tcp {
        s += " +block_inbound_tcp";
    }
    if c.block_udp {
        s += " +block_udp";
    }
    s
}

pub struct CellResult {
    pub prediction: bool,
    pub a: SiteConfig,
    pub b: SiteConfig,
    pub host_paths: Vec<String>,
    pub guest_paths: Vec<String>,
    pub to_direct_ms: Option<u128>,
    /// The same, unrounded: from the host's `path: relay` line to its
    /// first `path: direct-…` line (as the lines arrived on its stderr).
    pub to_direct: Option<Duration>,
    pub verified: bool,
    pub host_exit: Option<i32>,
    pub guest_exit: Option<i32>,
    pub elapsed: Duration,
    pub host_stderr: String,
    pub guest_stderr: String,
}

impl CellResult {
    /// What every cell must satisfy: byte-exact both ways, both exits 0, no
    /// fall back once direct.
    pub fn basic_failures(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.verified {
            why.push("bytes differ".to_string());
        }
        if self.host_exit != Some(0) || self.guest_exit != Some(0) {
            why.push(format!(
                "exit codes {:?}/{:?}",
                self.host_exit, self.guest_exit
            ));
        }
        // Nothing cuts these paths: once direct, a side stays direct (a
        // late relay RESUME taking the sending back was such a flap).
        if self.reached_direct() && (!is_direct(self.host_last()) || !is_direct(self.guest_last()))
        {
            why.push(format!(
                "fell back without a cause: host {:?}, guest {:?}",
                self.host_paths, self.guest_paths
            ));
        }
        why
    }

    /// The failure report of cell `name` (with both peers' stderr), if `why`
    /// lists anything.
    pub fn failure(&self, name: &str, why: &[String]) -> Option<String> {
        (!why.is_empty()).then(|| {
            format!(
                "{name}: {}\n--- host stderr:\n{}\n--- guest stderr:\n{}",
                why.join("; "),
                self.host_stderr,
                self.guest_stderr
            )
        })
    }
    pub fn host_last(&self) -> &str {
        self.host_paths.last().map_or("-", String::as_str)
    }
    pub fn guest_last(&self) -> &str {
        self.guest_paths.last().map_or("-", String::as_str)
    }
    /// The first direct path both sides printed, if any.
    pub fn direct_kind(&self) -> Option<&str> {
        self.host_paths
            .iter()
            .find(|p| is_direct(p) && self.guest_paths.contains(p))
            .map(String::as_str)
    }
    pub fn reached_direct(&self) -> bool {
        self.direct_kind().is_some()
    }
    /// The direct path when both sides printed it at some point (noting a
    /// side whose last line went back to the relay), else the last paths.
    pub fn path_reached(&self) -> String {
        if let Some(kind) = self.direct_kind() {
            let mut s = kind.to_string();
            for (who, last) in [("host", self.host_last()), ("guest", self.guest_last())] {
                if last != kind {
                    s += &format!(" ({who} ended on {last})");
                }
            }
            s
        } else if self.host_last() == self.guest_last() {
            self.host_last().to_string()
        } else {
            format!("host {} / guest {}", self.host_last(), self.guest_last())
        }
    }
}

/// Start `xtcp-relay` (self-signed, the token's config line) on the lab's
/// relay address in `inet`; returns it, its address and its fingerprint.
pub fn start_lab_relay(
    bins: &Bins,
    lab: &Lab,
    dir: &std::path::Path,
    token_line: &str,
    t0: Instant,
) -> (Proc, String, String) {
    let cfg = dir.join("relay.toml");
    std::fs::write(&cfg, format!("{token_line}\n")).unwrap();
    let listen = format!("{RELAY}:{RELAY_PORT}");
    // The UDP address service at its default (0.0.0.0:15000), which the
    // relay narrows to its listening address: `inet` has an address per
    // link, and an answer from the one facing the peer would not match the
    // peer's NAT state.
    let mut relay = Proc::spawn(
        lab.inet(),
        "relay",
        &bins.relay,
        &[
            "--self-signed",
            "--listen",
            &listen,
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let relay_lines = Lines::follow(&mut relay.child);
    // Drained on a thread that ends with the process.
    drop(drain_stdout(&mut relay.child));
    let d = Instant::now() + LINE_BOUND;
    let fp = relay_lines
        .wait_for(d, |l| l.contains("fingerprint: "))
        .unwrap_or_else(|| panic!("relay printed no fingerprint: {}", relay_lines.text(t0)))
        .1;
    let fp = fp
        .rsplit("fingerprint: ")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    relay_lines
        .wait_for(d, |l| l.contains("listening on"))
        .unwrap_or_else(|| panic!("relay is not listening: {}", relay_lines.text(t0)));
    (relay, listen, fp)
}

/// How a cell runs the host: extra arguments, and how long stdin stays open
/// after the first `path:` line waiting for a direct path.
pub struct HostPlan<'a> {
    pub args: &'a [&'a str],
    pub grace: Duration,
}

/// One cell in a fresh lab with [`HOST_BYTES`] / [`GUEST_BYTES`]: see
/// [`run_cell_in`].
pub fn run_cell(
    bins: &Bins,
    a: SiteConfig,
    b: SiteConfig,
    token: &str,
    token_line: &str,
    n: u64,
    plan: &HostPlan<'_>,
) -> CellResult {
    let t0 = Instant::now();
    let lab = Lab::new(a, b).expect("lab");
    let r = run_cell_in(
        bins,
        &lab,
        token,
        token_line,
        n,
        plan,
        (HOST_BYTES, GUEST_BYTES),
        t0,
    );
    drop(lab);
    r
}

/// A relay in `lab`'s `inet`, `xtcp host` at site A and `xtcp join` at site
/// B, each sending its payload (`bytes`: host's, guest's; seeds from `n`)
/// with stdin held open as `plan` says; both peers are waited for (killed
/// after [`SESSION_BOUND`]). Line times in the stderr texts are since `t0`.
#[allow(clippy::too_many_arguments)]
pub fn run_cell_in(
    bins: &Bins,
    lab: &Lab,
    token: &str,
    token_line: &str,
    n: u64,
    plan: &HostPlan<'_>,
    bytes: (usize, usize),
    t0: Instant,
) -> CellResult {
    let (a, b) = (lab.config(Site::A), lab.config(Site::B));
    let dir = std::env::temp_dir().join(format!("xtcp-nat-matrix-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (relay, listen, fp) = start_lab_relay(bins, lab, &dir, token_line, t0);

    let pa = crate::payload(2 * n + 1, bytes.0);
    let pb = crate::payload(2 * n + 2, bytes.1);
    let relay_args = ["--relay", &listen, "--relay-fingerprint", &fp];
    let mut host_args = vec!["host"];
    host_args.extend(relay_args);
    host_args.extend(["--token", token]);
    host_args.extend(plan.args);
    let mut host = Proc::spawn(lab.peer(Site::A), "host", &bins.xtcp, &host_args);
    let host_lines = Lines::follow(&mut host.child);
    let host_out = drain_stdout(&mut host.child);
    let host_in = feed_stdin(&mut host.child, pa.clone(), host_lines.clone(), plan.grace);
    let code = host_lines
        .wait_for(Instant::now() + LINE_BOUND, |l| l.starts_with("code: "))
        .unwrap_or_else(|| panic!("host printed no code: {}", host_lines.text(t0)))
        .1["code: ".len()..]
        .trim()
        .to_string();
    let mut guest_args = vec!["join", &code];
    guest_args.extend(relay_args);
    guest_args.extend(plan.args);
    let mut guest = Proc::spawn(lab.peer(Site::B), "guest", &bins.xtcp, &guest_args);
    let guest_lines = Lines::follow(&mut guest.child);
    let guest_out = drain_stdout(&mut guest.child);
    let guest_in = feed_stdin(
        &mut guest.child,
        pb.clone(),
        guest_lines.clone(),
        plan.grace,
    );

    let deadline = Instant::now() + SESSION_BOUND;
    let host_status = host.wait_until(deadline);
    let guest_status = guest.wait_until(deadline);
    let elapsed = t0.elapsed();
    // The processes are gone: the pipes end, the threads return.
    let (got_a, got_b) = (host_out.join().unwrap(), guest_out.join().unwrap());
    let _ = (host_in.join(), guest_in.join());
    // Let the stderr readers take the last lines.
    host_lines.wait_for(Instant::now() + Duration::from_secs(2), |_| false);
    guest_lines.wait_for(Instant::now() + Duration::from_secs(2), |_| false);

    let verified = crate::sha256_hex(&got_a) == crate::sha256_hex(&pb)
        && crate::sha256_hex(&got_b) == crate::sha256_hex(&pa);
    let hp = host_lines.paths();
    let to_direct = hp.iter().find(|(_, p)| p == "relay").and_then(|(t0, _)| {
        hp.iter()
            .find(|(t, p)| is_direct(p) && t >= t0)
            .map(|(t, _)| *t - *t0)
    });
    let r = CellResult {
        prediction: false,
        a,
        b,
        host_paths: hp.into_iter().map(|x| x.1).collect(),
        guest_paths: guest_lines.paths().into_iter().map(|x| x.1).collect(),
        to_direct_ms: to_direct.map(|d| d.as_millis()),
        to_direct,
        verified,
        host_exit: host_status.and_then(|s| s.code()),
        guest_exit: guest_status.and_then(|s| s.code()),
        elapsed,
        host_stderr: host_lines.text(t0),
        guest_stderr: guest_lines.text(t0),
    };
    drop((guest, host, relay));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// A port-restricted site whose firewall drops every inbound TCP SYN: two of
/// them have no direct TCP path, only UDP.
pub const PR_NO_INBOUND_TCP: SiteConfig = SiteConfig {
    nat: NatKind::PortRestricted,
    block_inbound_tcp: true,
    block_udp: false,
};

/// Fail with every cell's report at once.
pub fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} cell(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The matrix's plan: the UDP window scaled down to 1 s.
pub const MATRIX_PLAN: HostPlan<'static> = HostPlan {
    args: &["--udp-after", "1"],
    grace: DIRECT_GRACE,
};

/// Port prediction budget of the cells that use it (`--port-prediction`):
/// 800 sockets on one side and 800 guessed ports on the other make a
/// collision among ~64,500 random ports all but certain (1 − e^(−800²/64,512)
/// > 0.99995).
pub const PREDICTION: &str = "800";

/// The NAT matrix's cells (`tests/nat_matrix.rs`, `xtcp-lab run --set
/// matrix`): site A, site B, whether both peers use port prediction.
pub fn matrix_cells() -> Vec<(SiteConfig, SiteConfig, bool)> {
    let mut v = Vec::new();
    for (i, &a) in NatKind::ALL.iter().enumerate() {
        for &b in &NatKind::ALL[i..] {
            v.push((a.into(), b.into(), false));
        }
    }
    let fw = |nat, block_inbound_tcp, block_udp| SiteConfig {
        nat,
        block_inbound_tcp,
        block_udp,
    };
    use NatKind::*;
    for (a, b) in [
        (fw(FullCone, true, false), FullCone.into()),
        (PortRestricted.into(), fw(PortRestricted, true, false)),
        (fw(None, false, true), PortRestricted.into()),
        (
            fw(PortRestricted, false, true),
            fw(PortRestricted, false, true),
        ),
        (
            fw(PortRestricted, true, false),
            fw(PortRestricted, true, false),
        ),
        (fw(None, true, false), fw(Symmetric, true, false)),
        (
            fw(FullCone, true, false),
            fw(AddressRestricted, true, false),
        ),
    ] {
        v.push((a, b, false));
    }
    // Port prediction through the one EIM pair that needs it, both ways round.
    v.push((PortRestricted.into(), Symmetric.into(), true));
    v.push((Symmetric.into(), PortRestricted.into(), true));
    v
}

/// "A x B", with the port prediction flag.
pub fn cell_name(a: SiteConfig, b: SiteConfig, prediction: bool) -> String {
    let mut s = format!("{} x {}", label(a), label(b));
    if prediction {
        s += " +port prediction";
    }
    s
}

/// The least of 7 UDP round trips from site A's peer to the lab's UDP echo
/// on the relay's address ([`Lab::echo`] must be running): the path's own
/// RTT, without scheduling noise. Each answer is waited for at most 2 s.
pub fn echo_rtt(lab: &Lab) -> std::io::Result<Duration> {
    let sock = crate::nat::udp_bind(lab.peer(Site::A), "0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let to = std::net::SocketAddr::from(crate::nat::ECHO1);
    let mut buf = [0u8; 512];
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        sock.send_to(b"map?", to)?;
        // Sequential probes, each answered before the next is sent; stray
        // datagrams are skipped (at most 16).
        let mut answered = false;
        for _ in 0..16 {
            let (_, from) = sock.recv_from(&mut buf)?;
            if from == to {
                answered = true;
                break;
            }
        }
        if !answered {
            return Err(std::io::Error::other("no echo answer among 16 datagrams"));
        }
        best = best.min(t.elapsed());
    }
    Ok(best)
}
