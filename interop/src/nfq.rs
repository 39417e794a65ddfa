//! # NFQUEUE delayer: a fixed one-way delay without `tc netem`
//!
//! Kernels built without `sch_netem` (and without the nft `queue`
//! expression) can still delay packets through the xtables `NFQUEUE` target
//! (`iptables`, iptables-nft is fine): matching packets are parked in a
//! kernel queue, a userspace listener is told about each one over netlink
//! (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_QUEUE`) and gives a verdict.
//! [`Delayer`] is that listener: it asks for metadata only (no payload is
//! copied to userspace), holds every packet for a fixed delay and then
//! accepts it.
//!
//! ```text
//!  packet ─▶ iptables -t mangle <chain> <matches> -j NFQUEUE --queue-num Q
//!              │ kernel keeps the skb          ▲ NF_ACCEPT (batch: every id ≤ n)
//!              ▼ NFQNL_MSG_PACKET (id, hook)   │ once `delay` has passed
//!            Delayer thread: FIFO of (due time, id)
//! ```
//!
//! **Order.** Every packet gets the same delay, so due times are
//! non-decreasing in arrival order: the FIFO releases packets in the order the
//! kernel queued them, with one `NFQNL_MSG_VERDICT_BATCH` (accept every id up
//! to the newest due one). Nothing is reordered.
//!
//! **Memory.** The kernel queue is capped at [`DelayConfig::limit`] packets
//! (`NFQA_CFG_QUEUE_MAXLEN`); the kernel holds the packets, userspace only
//! `(Instant, u32)` per packet, and never more than the limit. Beyond the
//! limit packets are **dropped** (the kernel's default; the fail-open flag is
//! not set), like a router's full buffer: accepting them at once instead would
//! let them overtake the held packets (reordering) and skip the delay, which
//! would silently falsify what a test measures. The kernel counts those
//! drops ([`Delayer::kernel_drops`]); the delayer's own guard against
//! holding more than the limit (never expected to fire) counts in
//! [`Delayer::stats`].
//!
//! **Failure is loud.** The rules have no `--queue-bypass`: if the delayer
//! stops (error, or a bug), queued packets are dropped rather than let
//! through undelayed, and [`Delayer::check`] says why.
//!
//! **Stop.** On drop the delayer first releases everything it holds and
//! accepts new packets at once (order kept), then removes its rules, then
//! stops its thread and joins it. Packets still held at that moment leave
//! early (up to `delay` early), never out of order.
//!
//! **Timing.** The thread sleeps in `ppoll(2)` (an hrtimer) until the next
//! packet is due: measured RTTs are `2 × delay` + ≈ 0.3 ms in the lab.
//!
//! **Speed.** One netlink message per packet and a verdict batch per wake-up:
//! enough for handshakes and a few MiB (2 MiB of TCP at 40 ms RTT in
//! ≈ 0.35 s, as fast as slow start allows), not for multi-Gbit/s benchmarks.
//!
//! **Where to tap.** `PREROUTING`: a packet held in `OUTPUT` still belongs to
//! its socket and TCP Small Queues throttles the sender (see [`Tap`]).

use crate::Netns;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// Netlink / nfnetlink_queue constants (linux/netlink.h,
// linux/netfilter/nfnetlink.h, linux/netfilter/nfnetlink_queue.h).
const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;
const NFQNL_COPY_META: u8 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// The longest the thread sleeps before looking at its stop flag.
const POLL: Duration = Duration::from_millis(20);

/// What a [`Delayer`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayConfig {
    /// How long every packet is held.
    pub delay: Duration,
    /// The NFQUEUE number (per network namespace; one listener per queue).
    pub queue: u16,
    /// At most this many packets are held; more are dropped (see the module doc).
    pub limit: u32,
}

impl DelayConfig {
    /// `delay` on queue 0, at most 4096 packets held (≈ 50 Mbit/s of
    /// 1500-byte packets at 1 s delay; ≈ 2.4 Gbit/s at 20 ms).
    pub fn new(delay: Duration) -> DelayConfig {
        DelayConfig {
            delay,
            queue: 0,
            limit: 4096,
        }
    }
}

/// Where packets are sent to the queue: an iptables `mangle` chain and the
/// match placed before `-j NFQUEUE --queue-num Q`.
///
/// Prefer `PREROUTING` (packets arriving from a link). A packet held in
/// `OUTPUT` or `POSTROUTING` still belongs to its socket, and TCP Small
/// Queues then throttles a TCP sender to a few packets per delay (see
/// [`crate::nat::Lab::delay`]); the same goes for netem on a sender's own
/// egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tap {
    pub chain: String,
    pub matches: Vec<String>,
}

impl Tap {
    /// E.g. `Tap::new("PREROUTING", &["-i", "eth0"])`.
    pub fn new(chain: &str, matches: &[&str]) -> Tap {
        Tap {
            chain: chain.to_string(),
            matches: matches.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn args(&self, op: &str, queue: u16) -> Vec<String> {
        let mut v: Vec<String> = ["-w", "-t", "mangle", op, &self.chain]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(self.matches.iter().cloned());
        v.extend(["-j", "NFQUEUE", "--queue-num"].map(String::from));
        v.push(queue.to_string());
        v
    }
}

/// Counters of a [`Delayer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayStats {
    /// Packets held and then accepted.
    pub delayed: u64,
    /// Packets dropped by the delayer (over the limit).
    pub dropped: u64,
    /// Times the netlink socket overflowed (`ENOBUFS`); the kernel drops
    /// the packets it could not report.
    pub overflows: u64,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    passthrough: AtomicBool,
    delayed: AtomicU64,
    dropped: AtomicU64,
    overflows: AtomicU64,
    failure: Mutex<Option<String>>,
}

/// Holds every packet the taps send to its queue for a fixed delay, on its
/// own thread; see the module doc. Rules removed and thread joined on drop.
pub struct Delayer {
    ns_name: String,
    cfg: DelayConfig,
    taps: Vec<(Tap, bool)>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Delayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayer")
            .field("ns", &self.ns_name)
            .field("cfg", &self.cfg)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Errors unless `iptables` runs.
fn require_iptables() -> io::Result<()> {
    if crate::tool_runs("iptables") {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "`iptables` is missing (the NFQUEUE delayer needs its NFQUEUE target): apt-get install -y iptables",
        ))
    }
}

impl Delayer {
    /// Bind `cfg.queue` in `ns`, start the thread, then install `taps`
    /// (in order) so that no packet reaches an unbound queue.
    pub fn start(ns: &Netns, cfg: DelayConfig, taps: &[Tap]) -> io::Result<Delayer> {
        require_iptables()?;
        let mut sock = ns.run_in(NlQueue::open)??;
        sock.configure(cfg)?;
        let shared = Arc::new(Shared::default());
        let mut d = Delayer {
            ns_name: ns.name().to_string(),
            cfg,
            taps: taps.iter().map(|t| (t.clone(), false)).collect(),
            shared: shared.clone(),
            thread: None,
        };
        d.thread = Some(
            std::thread::Builder::new()
                .name("nfq-delay".into())
                .spawn(move || {
                    if let Err(e) = run(sock, cfg, &shared) {
                        *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(e.to_string());
                    }
                })?,
        );
        for i in 0..d.taps.len() {
            let args = d.taps[i].0.args("-A", cfg.queue);
            iptables(ns.name(), &args)?;
            d.taps[i].1 = true;
        }
        Ok(d)
    }

    pub fn config(&self) -> DelayConfig {
        self.cfg
    }

    pub fn stats(&self) -> DelayStats {
        let s = &self.shared;
        DelayStats {
            delayed: s.delayed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            overflows: s.overflows.load(Ordering::Relaxed),
        }
    }

    /// The kernel's own drop counters of this queue, from
    /// `/proc/net/netfilter/nfnetlink_queue` in the namespace: packets
    /// dropped because the queue was full (`queue_dropped`: the limit), and
    /// because the notice did not fit the socket (`queue_user_dropped`).
    pub fn kernel_drops(&self) -> io::Result<(u64, u64)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "cat"])
            .arg("/proc/net/netfilter/nfnetlink_queue")
            .output()?;
        parse_queue_stats(&String::from_utf8_lossy(&out.stdout), self.cfg.queue).ok_or_else(|| {
            io::Error::other(format!("queue {} not in nfnetlink_queue", self.cfg.queue))
        })
    }

    /// `Err` if the thread stopped on an error (packets are then dropped).
    pub fn check(&self) -> io::Result<()> {
        let failure = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match failure {
            Some(e) => Err(io::Error::other(format!("nfqueue delayer stopped: {e}"))),
            None => Ok(()),
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        // Release what is held and let new packets through (in order), then
        // take the rules away, then stop.
        self.shared.passthrough.store(true, Ordering::SeqCst);
        for (tap, installed) in self.taps.iter().rev() {
            if *installed {
                let _ = iptables(&self.ns_name, &tap.args("-D", self.cfg.queue));
            }
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `(queue_dropped, queue_user_dropped)` of `queue` in a
/// `/proc/net/netfilter/nfnetlink_queue` listing (one line per queue:
/// number, portid, total, copy mode, copy range, queue_dropped,
/// user_dropped, id sequence, 1).
fn parse_queue_stats(listing: &str, queue: u16) -> Option<(u64, u64)> {
    listing.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first()?.parse::<u16>().ok()? != queue {
            return None;
        }
        Some((f.get(5)?.parse().ok()?, f.get(6)?.parse().ok()?))
    })
}

/// `ip netns exec NS iptables ARGS`, an error carrying its stderr.
fn iptables(ns: &str, args: &[String]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iptables"])
        .args(args)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The delayer's loop: receive packet notices, release due packets, until
/// stopped.
fn run(mut sock: NlQueue, cfg: DelayConfig, sh: &Shared) -> io::Result<()> {
    let limit = usize::try_from(cfg.limit).unwrap_or(usize::MAX);
    let mut held: VecDeque<(Instant, u32)> = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let stopping = sh.stop.load(Ordering::SeqCst);
        let pass = stopping || sh.passthrough.load(Ordering::SeqCst);
        // Release every due packet (all of them when passing through) with
        // one batch verdict for the newest: ids are in queue order.
        let now = Instant::now();
        let mut newest = None;
        while let Some(&(at, id)) = held.front() {
            if !pass && at > now {
                break;
            }
            held.pop_front();
            newest = Some(id);
            sh.delayed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(id) = newest {
            sock.verdict(NFQNL_MSG_VERDICT_BATCH, NF_ACCEPT, id)?;
        }
        if stopping {
            // Nothing held; anything queued meanwhile is accepted below on
            // the last short wait, or dropped by the kernel on close (the
            // rules are gone by now, so nothing new arrives).
            if sock.wait_readable(Duration::from_millis(1))? {
                match sock.recv(&mut buf) {
                    Ok(d) => {
                        let last = packet_ids(d).last();
                        if let Some(id) = last {
                            sock.verdict(NFQNL_MSG_VERDICT_BATCH, NF_ACCEPT, id)?;
                        }
                        continue;
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                    Err(e) => return Err(e),
                }
            }
            let _ = sock.unbind();
            return Ok(());
        }
        let wait = held
            .front()
            .map_or(POLL, |&(at, _)| at.saturating_duration_since(now).min(POLL));
        if !sock.wait_readable(wait)? {
            continue;
        }
        match sock.recv(&mut buf) {
            Ok(d) => {
                let at = Instant::now() + cfg.delay;
                let ids: Vec<u32> = packet_ids(d).collect();
                for id in ids {
                    if held.len() >= limit {
                        // Cannot happen while the kernel enforces the same
                        // limit; never grow beyond it regardless.
                        sh.dropped.fetch_add(1, Ordering::Relaxed);
                        sock.verdict(NFQNL_MSG_VERDICT, NF_DROP, id)?;
                    } else {
                        held.push_back((at, id));
                    }
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                sh.overflows.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// A `NETLINK_NETFILTER` socket bound to one NFQUEUE.
struct NlQueue {
    /// The socket as a `File`: `read`/`write` on a datagram socket are
    /// `recv`/`send` without flags, and honour `SO_RCVTIMEO`.
    file: File,
    queue: u16,
    seq: u32,
}

impl NlQueue {
    /// A netlink socket in the calling thread's network namespace.
    fn open() -> io::Result<NlQueue> {
        // SAFETY: socket(2) with constant arguments; no memory is passed.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2), is valid and owned by
        // nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = NlQueue {
            file: File::from(fd),
            queue: 0,
            seq: 0,
        };
        // Room for a few thousand metadata-only notices; the forcing variant
        // (root) ignores rmem_max, the plain one is the fallback.
        let size: libc::c_int = 4 << 20;
        if s.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
            .is_err()
        {
            let _ = s.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, size);
        }
        Ok(s)
    }

    fn setsockopt<T: Copy>(&self, level: i32, name: i32, value: T) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: `value` lives across the call and its exact size is passed;
        // the fd is valid while `self` is.
        let rc = unsafe {
            libc::setsockopt(
                self.file.as_raw_fd(),
                level,
                name,
                (&value as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn set_timeout(&self, d: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: d.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_usec: d.subsec_micros().into(),
        };
        self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv)
    }

    /// Wait up to `d` for a datagram; `ppoll(2)` because its timeout is an
    /// hrtimer: `SO_RCVTIMEO` counts in jiffies and would wake up to a few
    /// milliseconds late, which shows in every delayed packet.
    fn wait_readable(&self, d: Duration) -> io::Result<bool> {
        use std::os::fd::AsRawFd as _;
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: d.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_nsec: d.subsec_nanos().into(),
        };
        // SAFETY: one valid pollfd and a valid timespec, both alive across
        // the call; no signal mask.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        match rc {
            0 => Ok(false),
            n if n > 0 => Ok(true),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn recv<'b>(&mut self, buf: &'b mut [u8]) -> io::Result<&'b [u8]> {
        let n = self.file.read(buf)?;
        Ok(&buf[..n.min(buf.len())])
    }

    fn send(&mut self, kind: u16, flags: u16, attrs: &[(u16, &[u8])]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let m = message(kind, flags, self.seq, self.queue, attrs);
        let n = self.file.write(&m)?;
        if n != m.len() {
            return Err(io::Error::other("short netlink send"));
        }
        Ok(self.seq)
    }

    /// Send a config request and wait for its acknowledgement.
    fn config(&mut self, attr: (u16, &[u8])) -> io::Result<()> {
        let seq = self.send(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, &[attr])?;
        self.set_timeout(Duration::from_secs(2))?;
        let mut buf = vec![0u8; 8192];
        // Bounded: a handful of datagrams at most before the answer.
        for _ in 0..16 {
            let d = self.recv(&mut buf)?;
            for m in messages(d) {
                if m.kind == NLMSG_ERROR && m.seq == seq {
                    let code = m
                        .payload
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .map(i32::from_ne_bytes)
                        .ok_or_else(|| io::Error::other("truncated netlink ack"))?;
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(code.saturating_neg()))
                    };
                }
            }
        }
        Err(io::Error::other(
            "no netlink ack to an nfqueue config request",
        ))
    }

    /// Bind the queue, metadata-only copies, the length limit.
    fn configure(&mut self, cfg: DelayConfig) -> io::Result<()> {
        self.queue = cfg.queue;
        let ctx = |what: &'static str| {
            move |e: io::Error| {
                io::Error::new(
                    e.kind(),
                    format!("nfqueue {what} (queue {}): {e}", cfg.queue),
                )
            }
        };
        // nfqnl_msg_config_cmd: command, pad, pf (unused since Linux 3.8).
        let bind = [NFQNL_CFG_CMD_BIND, 0, 0, 0];
        self.config((NFQA_CFG_CMD, &bind)).map_err(ctx(
            "bind (is nfnetlink_queue available? is the queue taken?)",
        ))?;
        // nfqnl_msg_config_params: copy_range (BE u32), copy_mode (u8).
        let mut params = 0u32.to_be_bytes().to_vec();
        params.push(NFQNL_COPY_META);
        self.config((NFQA_CFG_PARAMS, &params))
            .map_err(ctx("copy mode"))?;
        self.config((NFQA_CFG_QUEUE_MAXLEN, &cfg.limit.to_be_bytes()))
            .map_err(ctx("queue limit"))?;
        Ok(())
    }

    fn unbind(&mut self) -> io::Result<()> {
        let unbind = [NFQNL_CFG_CMD_UNBIND, 0, 0, 0];
        self.send(NFQNL_MSG_CONFIG, NLM_F_REQUEST, &[(NFQA_CFG_CMD, &unbind)])
            .map(|_| ())
    }

    /// `verdict` for packet `id` (or, batched, for every id up to it).
    fn verdict(&mut self, kind: u16, verdict: u32, id: u32) -> io::Result<()> {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&verdict.to_be_bytes());
        v[4..].copy_from_slice(&id.to_be_bytes());
        self.send(kind, NLM_F_REQUEST, &[(NFQA_VERDICT_HDR, &v)])
            .map(|_| ())
    }
}

/// One nfnetlink_queue request: nlmsghdr, nfgenmsg (AF_UNSPEC, version 0,
/// the queue number big-endian), then the attributes, each padded to 4.
fn message(kind: u16, flags: u16, seq: u32, queue: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDRLEN];
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&queue.to_be_bytes());
    for (ty, data) in attrs {
        let len = 4 + data.len();
        m.extend_from_slice(&(len as u16).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(data);
        m.resize(m.len().next_multiple_of(4), 0);
    }
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        b.get(i..i.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(i..i.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// One netlink message of a datagram.
#[derive(Debug, PartialEq, Eq)]
struct NlMsg<'a> {
    kind: u16,
    seq: u32,
    /// After the 16-byte header.
    payload: &'a [u8],
}

/// The netlink messages of one datagram; stops at the first malformed one.
fn messages(d: &[u8]) -> impl Iterator<Item = NlMsg<'_>> {
    let mut i = 0usize;
    std::iter::from_fn(move || {
        let len = usize::try_from(u32_at(d, i)?).ok()?;
        let kind = u16_at(d, i + 4)?;
        let seq = u32_at(d, i + 8)?;
        let end = i.checked_add(len)?;
        if len < NLMSG_HDRLEN || end > d.len() {
            return None;
        }
        let payload = d.get(i + NLMSG_HDRLEN..end)?;
        i = i.checked_add(len.next_multiple_of(4))?;
        Some(NlMsg { kind, seq, payload })
    })
}

/// The packet ids of the `NFQNL_MSG_PACKET` messages of a datagram.
fn packet_ids(d: &[u8]) -> impl Iterator<Item = u32> + '_ {
    messages(d)
        .filter(|m| m.kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)
        .filter_map(|m| packet_id(m.payload))
}

/// The id in the `NFQA_PACKET_HDR` attribute (nfqnl_msg_packet_hdr:
/// packet_id BE u32, hw_protocol, hook) of a packet message's payload.
fn packet_id(p: &[u8]) -> Option<u32> {
    let mut i = NFGENMSG_LEN;
    while let (Some(len), Some(ty)) = (u16_at(p, i), u16_at(p, i + 2)) {
        let len = usize::from(len);
        if len < 4 || i.checked_add(len)? > p.len() {
            return None;
        }
        // The top two bits are NLA_F_NESTED / NLA_F_NET_BYTEORDER.
        if ty & 0x3fff == NFQA_PACKET_HDR {
            let v = p.get(i + 4..i + len)?.get(..4)?;
            return Some(u32::from_be_bytes(v.try_into().ok()?));
        }
        i = i.checked_add(len.next_multiple_of(4))?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel-style packet notice with `id`, then an unrelated attribute.
    fn notice(id: u32, seq: u32) -> Vec<u8> {
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&0x0800u16.to_be_bytes());
        hdr.push(0); // hook
        message(
            NFQNL_MSG_PACKET,
            0,
            seq,
            0,
            &[(NFQA_PACKET_HDR, &hdr), (10, &[1, 2, 3, 4, 5])],
        )
    }

    #[test]
    fn packet_ids_are_read_from_every_message_of_a_datagram() {
        let mut d = notice(7, 1);
        d.extend(notice(8, 2));
        assert_eq!(packet_ids(&d).collect::<Vec<_>>(), vec![7, 8]);
    }

    #[test]
    fn malformed_input_never_panics_and_yields_nothing_wrong() {
        let good = notice(0x0102_0304, 1);
        // Every truncation, and every single-byte corruption of the lengths.
        for n in 0..good.len() {
            let ids: Vec<u32> = packet_ids(&good[..n]).collect();
            assert!(ids.is_empty(), "truncated at {n}: {ids:?}");
        }
        for pos in [0, 1, 2, 3, 20, 21, 28, 29] {
            for v in [0u8, 1, 3, 4, 0x7f, 0xff] {
                let mut d = good.clone();
                d[pos] = v;
                let _ = packet_ids(&d).count();
                let _ = messages(&d).count();
            }
        }
        // A zero-length attribute would loop forever if accepted.
        let mut zero = message(NFQNL_MSG_PACKET, 0, 1, 0, &[(9, &[])]);
        zero[NLMSG_HDRLEN + 4] = 0;
        assert_eq!(packet_ids(&zero).count(), 0);
        assert_eq!(messages(&[]).count(), 0);
    }

    #[test]
    fn requests_are_padded_and_carry_their_length() {
        let m = message(NFQNL_MSG_CONFIG, NLM_F_REQUEST, 9, 3, &[(1, &[1, 0, 0])]);
        assert_eq!(m.len(), 16 + 4 + 8);
        assert_eq!(u32_at(&m, 0), Some(28));
        assert_eq!(u16_at(&m, 4), Some((3 << 8) | 2));
        assert_eq!(&m[18..20], &3u16.to_be_bytes());
        let parsed: Vec<_> = messages(&m).collect();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].seq, 9);
    }

    #[test]
    fn queue_stats_are_read_for_the_right_queue_only() {
        let l = "    0  12345     3 1 65531     7     2      900  1\n    1  777     0 1 0     0     0      5  1\n";
        assert_eq!(parse_queue_stats(l, 0), Some((7, 2)));
        assert_eq!(parse_queue_stats(l, 1), Some((0, 0)));
        assert_eq!(parse_queue_stats(l, 2), None);
        assert_eq!(parse_queue_stats("garbage\n0 1\n", 0), None);
    }

    #[test]
    fn taps_build_add_and_delete_commands() {
        let t = Tap::new("PREROUTING", &["!", "-i", "lo"]);
        assert_eq!(
            t.args("-A", 5).join(" "),
            "-w -t mangle -A PREROUTING ! -i lo -j NFQUEUE --queue-num 5"
        );
        assert!(t.args("-D", 5).join(" ").contains("-D PREROUTING"));
    }
}
