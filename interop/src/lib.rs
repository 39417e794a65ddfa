//! # xtcp-lab — network namespaces for real-network tests
//!
//! Tests that must cross a real kernel network path (veth with MTU 1500,
//! netem delay, nftables loss, NAT) build it here from iproute2 and nftables.
//! Every namespace, link and rule is created by the test itself, named with a
//! per-process prefix, uses only 198.18.0.0/15 addresses, and is removed on
//! drop. Nothing touches the host's own namespace except creating and deleting
//! the namespaces.
//!
//! [`nfq`] delays packets through an NFQUEUE (iptables) where the kernel has
//! no `tc netem`; [`nat::Lab::delay`] uses it.
//!
//! With `XTCP_LAB_PCAP=<dir>` ([`PCAP_VAR`]) a [`nat::Lab`] records each
//! peer's `eth0` to a pcap file there ([`Netns::capture`]), for Wireshark
//! with `interop/wireshark/xtcp.lua`.
//!
//! [`peers`] runs the `xtcp` and `xtcp-relay` programs in a [`nat::Lab`]
//! (one host/join cell end to end), [`pair`] is the veth pair with random
//! loss of the transport bench, and [`results`] is the `xtcp-lab` program:
//! named scenario sets → a results folder (JSON/CSV rows, SVG figures, pcap
//! captures) → the README's results block.
//!
//! Root is required. [`require_root`] fails loudly (never skips) so that CI,
//! which runs as root, cannot silently pass without running these tests.

use std::io;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub mod nat;
pub mod nfq;
pub mod pair;
pub mod peers;
pub mod results;
pub mod tun;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics with a clear message unless running as root with `ip` and `nft` available.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "network-namespace tests need root (CI runs them as root); run as root or skip this test binary explicitly"
    );
    for tool in ["ip", "nft", "tc"] {
        assert!(
            tool_runs(tool),
            "`{tool}` is missing: apt-get install -y iproute2 nftables"
        );
    }
}

/// Like [`require_root`] for tests that need only namespaces (`ip`), not
/// `nft` or `tc` (the TUN bridge tests): panics unless root with `ip`.
pub fn require_netns() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "network-namespace tests need root (CI runs them as root)"
    );
    assert!(
        tool_runs("ip"),
        "`ip` is missing: apt-get install -y iproute2"
    );
}

/// Whether `tool -V` runs and succeeds.
pub(crate) fn tool_runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// Run a command in the host namespace (for `ip link add … netns …`).
pub fn host(args: &[&str]) -> io::Result<Output> {
    let (prog, rest) = args
        .split_first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    run(Command::new(prog).args(rest))
}

/// A network namespace, deleted (with everything in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create `xl<pid>-<n>-<label>`; loopback is brought up.
    pub fn new(label: &str) -> io::Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("xl{}-{}-{}", std::process::id(), n, label);
        host(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run a command inside the namespace and wait for it; error if it fails.
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Start a program inside the namespace.
    pub fn spawn(&self, program: &str, args: &[&str]) -> io::Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }

    /// Run `f` on a fresh thread entered into this namespace (`setns(2)` on
    /// `/var/run/netns/<name>`) and return its result. Sockets opened inside
    /// `f` stay in this namespace after the thread ends, so they can be used
    /// from any thread afterwards. A panic in `f` is propagated.
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> io::Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path)?;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: plain syscall on a valid fd; it only changes this
                // (fresh, scoped) thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            });
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Drop `pct` % of packets arriving on `dev` at random (nftables `numgen random`).
    pub fn random_drop(&self, dev: &str, pct: u32) -> io::Result<()> {
        self.exec(&["nft", "add", "table", "inet", "xlab"])?;
        self.exec(&[
            "nft",
            "add",
            "chain",
            "inet",
            "xlab",
            "input",
            "{ type filter hook prerouting priority -300; }",
        ])?;
        let thr = (pct * 10).to_string();
        self.exec(&[
            "nft", "add", "rule", "inet", "xlab", "input", "iifname", dev, "numgen", "random",
            "mod", "1000", "<", &thr, "drop",
        ])?;
        Ok(())
    }

    /// Add netem delay (and optional rate) on `dev`'s egress.
    pub fn netem(&self, dev: &str, delay_ms: u32, rate_mbit: Option<u32>) -> io::Result<()> {
        let delay = format!("{delay_ms}ms");
        let mut args = vec![
            "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", &delay,
        ];
        let rate;
        if let Some(r) = rate_mbit {
            rate = format!("{r}mbit");
            args.extend(["rate", &rate]);
        }
        self.exec(&args)?;
        Ok(())
    }
}

/// Environment variable: a directory. When it is set, [`nat::Lab::new`]
/// records each peer namespace's `eth0` to `<dir>/<namespace>-eth0.pcap`
/// ([`Netns::capture`]) for the lab's lifetime; open the files with
/// `interop/wireshark/xtcp.lua`.
pub const PCAP_VAR: &str = "XTCP_LAB_PCAP";

/// A packet capture running inside a namespace, stopped (SIGTERM, then
/// waited for) on drop.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    path: std::path::PathBuf,
}

impl Capture {
    /// Where the packets go.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // `ip netns exec` execs the capture tool, so this is its pid.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: a plain syscall on the pid of a child we spawned and
            // have not yet waited for (so the pid cannot have been reused).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

impl Netns {
    /// Capture every packet on `dev` into the pcap file `path` until the
    /// returned [`Capture`] is dropped: `tcpdump -U`, or `dumpcap -P` (which
    /// comes with tshark) where tcpdump is missing. Returns once the tool
    /// has created the file (it listens by then), at most after 3 s.
    pub fn capture(&self, dev: &str, path: &std::path::Path) -> io::Result<Capture> {
        let file = path
            .to_str()
            .ok_or_else(|| io::Error::other("capture path is not UTF-8"))?;
        let _ = std::fs::remove_file(path);
        let args: Vec<&str> = if tool_runs("tcpdump") {
            vec!["tcpdump", "-q", "-U", "-n", "-i", dev, "-w", file]
        } else {
            vec!["dumpcap", "-q", "-P", "-i", dev, "-w", file]
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let cap = Capture {
            child,
            path: path.to_owned(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while !path.exists() {
            if std::time::Instant::now() > deadline {
                return Err(io::Error::other(format!("{}: no capture started", args[0])));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(cap)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Connect two namespaces with a veth pair: `a_dev` in `a` with `a_cidr`,
/// `b_dev` in `b` with `b_cidr`, both with `mtu`, both up.
pub fn veth(
    a: &Netns,
    a_dev: &str,
    a_cidr: &str,
    b: &Netns,
    b_dev: &str,
    b_cidr: &str,
    mtu: u32,
) -> io::Result<()> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (ta, tb) = (
        format!("xv{}a{}", std::process::id() % 100_000, n),
        format!("xv{}b{}", std::process::id() % 100_000, n),
    );
    host(&[
        "ip", "link", "add", &ta, "type", "veth", "peer", "name", &tb,
    ])?;
    host(&["ip", "link", "set", &ta, "netns", a.name()])?;
    host(&["ip", "link", "set", &tb, "netns", b.name()])?;
    let mtu = mtu.to_string();
    for (ns, tmp, dev, cidr) in [(a, &ta, a_dev, a_cidr), (b, &tb, b_dev, b_cidr)] {
        ns.exec(&["ip", "link", "set", tmp, "name", dev])?;
        ns.exec(&["ip", "link", "set", dev, "mtu", &mtu])?;
        ns.exec(&["ip", "addr", "add", cidr, "dev", dev])?;
        ns.exec(&["ip", "link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Deterministic test payload and its SHA-256, shared by peers in different processes.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        v.extend_from_slice(&z.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}
