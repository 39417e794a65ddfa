//! # A TUN bridge between XTCP and the Linux kernel's TCP
//!
//! `spec/xtcp.md` §11. The bridge lets an unmodified kernel TCP socket be the
//! peer of an `XtcpEndpoint`:
//!
//! ```text
//!  namespace K
//!  +------------------------------------------------------------------+
//!  | kernel TCP socket 198.18.0.1 ─┐                                  |
//!  |                               │ route 198.18.0.2/32 dev xt0      |
//!  |                          TUN xt0 ── fd ── Bridge ── UDP 127.0.0.1:B |
//!  |                                             │  (threads)    │      |
//!  |                                      XtcpEndpoint 127.0.0.1:E ◄┘    |
//!  +------------------------------------------------------------------+
//! ```
//!
//! Kernel → XTCP: an IPv4/TCP packet read from the TUN loses its IP header,
//! gains the XTCP header with the connection id of its 4-tuple (a new one on
//! the kernel's SYN) and the §2.5 checksum, and goes to the XTCP endpoint.
//! XTCP → kernel: the datagram's XTCP header is checked and stripped, the
//! ports are set to the connection's kernel-side 4-tuple (learned from the
//! XTCP side's SYN, which goes to the kernel listener `kernel_listen`), and it
//! is written to the TUN in an IPv4 header with a pseudo-header checksum.
//!
//! On the way it checks what each side sends against what the other
//! advertised (MSS, window), counts how much each ACK newly covers, records
//! the SYN options, and can drop segments at random (seeded) in either
//! direction. [`Bridge::report`] returns all of it.

#[doc(hidden)]
pub mod fuzzing;
pub mod translate;

use crate::Netns;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use translate::{parse_ipv4_tcp, parse_xtcp, tcp_to_ipv4, tcp_to_xtcp, TranslateError};

/// Bridge settings.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// TUN device name (inside the namespace).
    pub dev: String,
    /// The kernel side's address on the TUN.
    pub kernel_addr: Ipv4Addr,
    /// The address that stands for the XTCP side (routed into the TUN).
    pub virt_addr: Ipv4Addr,
    /// Where datagrams of kernel-initiated connections go (the XtcpEndpoint).
    pub xtcp: SocketAddr,
    /// The kernel listener XTCP-initiated connections are bridged to (its port).
    pub kernel_listen_port: u16,
    /// Drop probability (0..1) for kernel → XTCP segments (SYNs are never dropped).
    pub loss_to_xtcp: f64,
    /// Drop probability for XTCP → kernel segments (SYNs are never dropped).
    pub loss_to_kernel: f64,
    /// Seed of the drop decisions.
    pub seed: u64,
    /// TUN MTU.
    pub mtu: u32,
}

impl BridgeConfig {
    pub fn new(xtcp: SocketAddr) -> BridgeConfig {
        BridgeConfig {
            dev: "xt0".into(),
            kernel_addr: Ipv4Addr::new(198, 18, 0, 1),
            virt_addr: Ipv4Addr::new(198, 18, 0, 2),
            xtcp,
            kernel_listen_port: 5000,
            loss_to_xtcp: 0.0,
            loss_to_kernel: 0.0,
            seed: 1,
            mtu: 1500,
        }
    }
}

/// Direction of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Sent by the kernel, towards XTCP.
    KernelToXtcp = 0,
    /// Sent by XTCP, towards the kernel.
    XtcpToKernel = 1,
}

/// What one side's SYN (or SYN-ACK) carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynInfo {
    pub seen: bool,
    pub ack: bool,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: bool,
    /// ECE / CWR bits on the SYN (RFC 3168 ECN setup).
    pub ece: bool,
    pub cwr: bool,
    /// A TCP Fast Open option (kind 34) was present.
    pub tfo_option: bool,
    /// Payload bytes on the SYN.
    pub data_len: usize,
}

/// Counters for the segments one side sent (one [`Dir`]).
#[derive(Clone, Debug, Default)]
pub struct DirStats {
    pub segments: u64,
    pub forwarded: u64,
    pub dropped_loss: u64,
    pub payload_bytes: u64,
    pub max_payload: usize,
    /// Segments with payload + option bytes above the MSS the receiver announced.
    pub mss_violations: u64,
    /// Segments ending beyond the right edge of the receiver's window
    /// (a one-byte zero-window probe excepted).
    pub window_violations: u64,
    /// ACKs that advanced the acknowledged sequence number.
    pub acks_advancing: u64,
    /// … of which covered more than two of the other side's full-sized segments.
    pub acks_over_two_segments: u64,
    /// Segments (data or FIN) that end at or below the highest sequence
    /// number this side had sent: retransmissions, zero-window probes
    /// repeated, and loss probes.
    pub retransmits: u64,
    /// … of which the receiver had already acknowledged (cumulatively, in an
    /// ACK the bridge delivered before): the sender had the ACK in its
    /// socket and retransmitted anyway.
    pub retransmits_already_acked: u64,
    /// Bytes newly acknowledged by the advancing ACKs, in total.
    pub acked_bytes: u64,
    /// Segments advertising a zero window.
    pub zero_windows: u64,
    /// The window last advertised (scaled), on a forwarded segment.
    pub last_window: Option<u64>,
    pub syn: SynInfo,
    pub rsts: u64,
    pub fins: u64,
    pub malformed: u64,
    pub unknown_conn: u64,
    /// First few violations, for messages.
    pub notes: Vec<String>,
}

impl DirStats {
    /// Share of advancing ACKs covering more than two full-sized segments.
    pub fn stretch_ack_share(&self) -> f64 {
        if self.acks_advancing == 0 {
            0.0
        } else {
            self.acks_over_two_segments as f64 / self.acks_advancing as f64
        }
    }
}

/// A snapshot of the bridge's counters.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Indexed by `Dir as usize`.
    pub dir: [DirStats; 2],
    pub connections: u64,
    pub not_ipv4_tcp: u64,
}

impl Report {
    pub fn kernel(&self) -> &DirStats {
        &self.dir[Dir::KernelToXtcp as usize]
    }
    pub fn xtcp(&self) -> &DirStats {
        &self.dir[Dir::XtcpToKernel as usize]
    }
}

/// Per-connection monitor state for one sender.
#[derive(Clone, Copy, Debug, Default)]
struct Side {
    syn: SynInfo,
    /// Highest ACK this side sent (forwarded).
    highest_ack: Option<u32>,
    /// Right edge of the window this side advertised (forwarded, max).
    right_edge: Option<u32>,
    max_payload: usize,
    isn: Option<u32>,
    /// Highest sequence number sent + 1 (data and FIN).
    snd_max: Option<u32>,
}

#[derive(Clone, Debug)]
struct Flow {
    id: u64,
    kernel: SocketAddrV4,
    virt: SocketAddrV4,
    xtcp: SocketAddr,
    side: [Side; 2],
}

impl Flow {
    fn wscale(&self, d: usize) -> u8 {
        // RFC 7323 §2.2: only if both SYNs carried it.
        match (self.side[0].syn.wscale, self.side[1].syn.wscale) {
            (Some(_), Some(_)) => self.side[d].syn.wscale.unwrap_or(0).min(14),
            _ => 0,
        }
    }
}

const MAX_FLOWS: usize = 4096;

struct State {
    cfg: BridgeConfig,
    flows: Vec<Flow>,
    by_id: HashMap<u64, usize>,
    by_tuple: HashMap<(SocketAddrV4, SocketAddrV4), usize>,
    report: Report,
    rng: u64,
    id_rng: u64,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// A TCP segment's fields the monitor needs (the header was validated).
struct Tcp<'a> {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    opts: &'a [u8],
    payload: usize,
}

fn tcp_fields(t: &[u8]) -> Tcp<'_> {
    let doff = usize::from(t[12] >> 4) * 4;
    Tcp {
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        flags: t[13],
        window: u16::from_be_bytes([t[14], t[15]]),
        opts: &t[20..doff],
        payload: t.len() - doff,
    }
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

/// Walk an option area leniently (the monitor must never reject).
fn syn_info(t: &Tcp<'_>) -> SynInfo {
    let mut s = SynInfo {
        seen: true,
        ack: t.flags & ACK != 0,
        ece: t.flags & ECE != 0,
        cwr: t.flags & CWR != 0,
        data_len: t.payload,
        ..SynInfo::default()
    };
    let mut o = t.opts;
    while let Some(&kind) = o.first() {
        match kind {
            0 => break,
            1 => o = &o[1..],
            _ => {
                let len = usize::from(*o.get(1).unwrap_or(&0));
                if len < 2 || len > o.len() {
                    break;
                }
                match (kind, len) {
                    (2, 4) => s.mss = Some(u16::from_be_bytes([o[2], o[3]])),
                    (3, 3) => s.wscale = Some(o[2]),
                    (4, 2) => s.sack_permitted = true,
                    (8, 10) => s.timestamps = true,
                    (34, _) => s.tfo_option = true,
                    _ => {}
                }
                o = &o[len..];
            }
        }
    }
    s
}

impl State {
    fn new(cfg: BridgeConfig, id_seed: u64) -> State {
        State {
            rng: cfg.seed,
            cfg,
            flows: Vec::new(),
            by_id: HashMap::new(),
            by_tuple: HashMap::new(),
            report: Report::default(),
            id_rng: id_seed,
        }
    }

    fn new_id(&mut self) -> u64 {
        loop {
            let id = splitmix(&mut self.id_rng);
            if !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    fn insert(&mut self, f: Flow) -> usize {
        if self.flows.len() >= MAX_FLOWS {
            // Bounded: forget everything (tests use far fewer).
            self.flows.clear();
            self.by_id.clear();
            self.by_tuple.clear();
        }
        let i = self.flows.len();
        if let Some(&old) = self.by_tuple.get(&(f.kernel, f.virt)) {
            let old_id = self.flows[old].id;
            self.by_id.remove(&old_id);
        }
        self.by_id.insert(f.id, i);
        self.by_tuple.insert((f.kernel, f.virt), i);
        self.flows.push(f);
        self.report.connections += 1;
        i
    }

    fn lose(&mut self, d: Dir, flags: u8) -> bool {
        let p = match d {
            Dir::KernelToXtcp => self.cfg.loss_to_xtcp,
            Dir::XtcpToKernel => self.cfg.loss_to_kernel,
        };
        if p <= 0.0 || flags & SYN != 0 {
            return false;
        }
        let r = splitmix(&mut self.rng) >> 11;
        (r as f64 / (1u64 << 53) as f64) < p
    }

    /// Check and account a segment sent in direction `d` on flow `fi`;
    /// returns whether to forward it.
    fn monitor(&mut self, fi: usize, d: Dir, tcp: &[u8]) -> bool {
        let t = tcp_fields(tcp);
        let (me, peer) = (d as usize, 1 - d as usize);
        let st = &mut self.report.dir[me];
        st.segments += 1;
        st.payload_bytes += t.payload as u64;
        st.max_payload = st.max_payload.max(t.payload);
        if t.flags & RST != 0 {
            st.rsts += 1;
        }
        if t.flags & FIN != 0 {
            st.fins += 1;
        }
        let flow = &mut self.flows[fi];
        let seg_end = t
            .seq
            .wrapping_add(t.payload as u32)
            .wrapping_add(u32::from(t.flags & (FIN | SYN) != 0));
        if t.flags & SYN == 0 && (t.payload > 0 || t.flags & FIN != 0) {
            match flow.side[me].snd_max {
                Some(m) if !seq_gt(seg_end, m) => {
                    st.retransmits += 1;
                    if flow.side[peer]
                        .highest_ack
                        .is_some_and(|a| !seq_gt(seg_end, a))
                    {
                        st.retransmits_already_acked += 1;
                    }
                    if st.notes.len() < 8 {
                        st.notes.push(format!(
                            "retransmission: seq {} len {} flags {:#04x}",
                            t.seq, t.payload, t.flags
                        ));
                    }
                }
                _ => flow.side[me].snd_max = Some(seg_end),
            }
        }
        if t.flags & SYN != 0 {
            let info = syn_info(&t);
            flow.side[me].syn = info;
            flow.side[me].isn = Some(t.seq);
            flow.side[me].snd_max = Some(seg_end);
            st.syn = info;
        } else if t.payload > 0 {
            flow.side[me].max_payload = flow.side[me].max_payload.max(t.payload);
            // MSS: payload plus option bytes within what the receiver announced
            // (RFC 9293 §3.7.1: Eff.snd.MSS = SendMSS + 20 − TCP header size).
            let mss = usize::from(flow.side[peer].syn.mss.unwrap_or(536));
            if t.payload + t.opts.len() > mss {
                st.mss_violations += 1;
                if st.notes.len() < 8 {
                    st.notes.push(format!(
                        "seq {} payload {} + options {} > mss {mss}",
                        t.seq,
                        t.payload,
                        t.opts.len()
                    ));
                }
            }
            if let Some(edge) = flow.side[peer].right_edge {
                let end = t.seq.wrapping_add(t.payload as u32);
                let over = end.wrapping_sub(edge) as i32;
                if over > 0 && !(t.payload == 1 && over == 1) {
                    st.window_violations += 1;
                    if st.notes.len() < 8 {
                        st.notes.push(format!(
                            "seq {} len {} ends {over} bytes beyond the window edge {edge}",
                            t.seq, t.payload
                        ));
                    }
                }
            }
        }
        let drop = {
            let flags = t.flags;
            self.lose(d, flags)
        };
        let st = &mut self.report.dir[me];
        let flow = &mut self.flows[fi];
        if drop {
            st.dropped_loss += 1;
            return false;
        }
        st.forwarded += 1;
        if t.flags & ACK != 0 && t.flags & RST == 0 {
            let full = flow.side[peer].max_payload.max(1) as u32;
            match flow.side[me].highest_ack {
                Some(h) if seq_gt(t.ack, h) => {
                    st.acks_advancing += 1;
                    st.acked_bytes += u64::from(t.ack.wrapping_sub(h));
                    if t.ack.wrapping_sub(h) > 2 * full && flow.side[peer].max_payload > 0 {
                        st.acks_over_two_segments += 1;
                    }
                    flow.side[me].highest_ack = Some(t.ack);
                }
                Some(_) => {}
                None => flow.side[me].highest_ack = Some(t.ack),
            }
            // The window this side offers (never scaled on a SYN, RFC 7323 §2.2).
            let shift = if t.flags & SYN != 0 {
                0
            } else {
                flow.wscale(me)
            };
            let win = u64::from(t.window) << shift;
            st.last_window = Some(win);
            if win == 0 {
                st.zero_windows += 1;
            }
            let edge = t.ack.wrapping_add(win as u32);
            flow.side[me].right_edge = Some(match flow.side[me].right_edge {
                Some(e) if seq_gt(e, edge) => e,
                _ => edge,
            });
        }
        true
    }

    /// Kernel → XTCP: the datagram to send and where.
    fn on_kernel_packet(&mut self, pkt: &[u8], out: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let p = match parse_ipv4_tcp(pkt) {
            Ok(p) => p,
            Err(TranslateError::NotIpv4 | TranslateError::NotTcp) => {
                self.report.not_ipv4_tcp += 1;
                return None;
            }
            Err(_) => {
                self.report.dir[0].malformed += 1;
                return None;
            }
        };
        let (kernel, virt) = (p.src_sock(), p.dst_sock());
        let flags = p.tcp[13];
        let syn_only = flags & (SYN | ACK) == SYN;
        let seq = u32::from_be_bytes([p.tcp[4], p.tcp[5], p.tcp[6], p.tcp[7]]);
        let fi = match self.by_tuple.get(&(kernel, virt)).copied() {
            // A SYN with a new ISN on a known 4-tuple: a new incarnation.
            Some(i) if syn_only && self.flows[i].side[0].isn.is_some_and(|s| s != seq) => None,
            Some(i) => Some(i),
            None => None,
        };
        let fi = match fi {
            Some(i) => i,
            None if syn_only => {
                let id = self.new_id();
                let xtcp = self.cfg.xtcp;
                self.insert(Flow {
                    id,
                    kernel,
                    virt,
                    xtcp,
                    side: Default::default(),
                })
            }
            None => {
                self.report.dir[0].unknown_conn += 1;
                return None;
            }
        };
        if !self.monitor(fi, Dir::KernelToXtcp, p.tcp) {
            return None;
        }
        let f = &self.flows[fi];
        let n = tcp_to_xtcp(p.tcp, f.id, out).ok()?;
        Some((n, f.xtcp))
    }

    /// XTCP → kernel: the IPv4 packet to write.
    fn on_xtcp_datagram(&mut self, d: &[u8], from: SocketAddr, out: &mut [u8]) -> Option<usize> {
        let (id, tcp) = match parse_xtcp(d) {
            Ok(x) => x,
            Err(_) => {
                self.report.dir[1].malformed += 1;
                return None;
            }
        };
        let flags = tcp[13];
        let fi = match self.by_id.get(&id).copied() {
            Some(i) => i,
            None if flags & (SYN | ACK) == SYN => {
                let virt =
                    SocketAddrV4::new(self.cfg.virt_addr, u16::from_be_bytes([tcp[0], tcp[1]]));
                let kernel = SocketAddrV4::new(self.cfg.kernel_addr, self.cfg.kernel_listen_port);
                self.insert(Flow {
                    id,
                    kernel,
                    virt,
                    xtcp: from,
                    side: Default::default(),
                })
            }
            None => {
                self.report.dir[1].unknown_conn += 1;
                return None;
            }
        };
        self.flows[fi].xtcp = from;
        if !self.monitor(fi, Dir::XtcpToKernel, tcp) {
            return None;
        }
        let f = &self.flows[fi];
        tcp_to_ipv4(tcp, f.virt, f.kernel, out).ok()
    }
}

/// A running bridge (two threads); stopped and joined on drop.
pub struct Bridge {
    udp_addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("udp_addr", &self.udp_addr)
            .finish_non_exhaustive()
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Open `/dev/net/tun` and create TUN device `name` in the calling thread's
/// network namespace.
fn open_tun(name: &str) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.len() >= 16 {
        return Err(io::Error::other("tun name too long"));
    }
    // SAFETY: open(2) with a NUL-terminated path; the fd is owned below.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq (40 bytes), which
    // `IfReq` is laid out as.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// SO_RCVBUFFORCE / SO_SNDBUFFORCE (root: beyond `net.core.rmem_max`);
/// failures leave the defaults.
fn force_buffers(s: &UdpSocket, bytes: libc::c_int) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt(2) with a pointer to an int and its size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// Wait up to `ms` for `fd` to be readable.
fn poll_in(fd: &OwnedFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    rc > 0 && p.revents & libc::POLLIN != 0
}

impl Bridge {
    /// Create the TUN device in `ns`, address it (`kernel_addr` peer
    /// `virt_addr`), bind the bridge's UDP socket on 127.0.0.1 in `ns`, and
    /// start the two forwarding threads.
    pub fn start(ns: &Netns, cfg: BridgeConfig) -> io::Result<Bridge> {
        let dev = cfg.dev.clone();
        let (tun, udp) = ns.run_in(|| -> io::Result<(OwnedFd, UdpSocket)> {
            let tun = open_tun(&dev)?;
            let udp = UdpSocket::bind("127.0.0.1:0")?;
            Ok((tun, udp))
        })??;
        let mtu = cfg.mtu.to_string();
        let (k, v) = (cfg.kernel_addr.to_string(), cfg.virt_addr.to_string());
        ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec(&["ip", "link", "set", &dev, "mtu", &mtu])?;
        // The TUN's queue towards the bridge: with the default 500 a burst
        // the kernel sends while the bridge thread waits for a core is
        // dropped (tx_dropped), and the loss is the bridge's, not the path's.
        ns.exec(&["ip", "link", "set", &dev, "txqueuelen", "20000"])?;
        ns.exec(&["ip", "addr", "add", &k, "peer", &v, "dev", &dev])?;
        ns.exec(&["ip", "link", "set", &dev, "up"])?;
        // The bridge must not be where segments are lost: a burst from the
        // endpoint (a GSO batch, a window's worth) has to fit in its socket.
        force_buffers(&udp, 16 << 20);
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let udp_addr = udp.local_addr()?;
        let mut id_rng = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id_rng)
            .map_err(|_| io::Error::other("no randomness"))?;
        let state = Arc::new(Mutex::new(State::new(cfg, u64::from_ne_bytes(id_rng))));
        let stop = Arc::new(AtomicBool::new(false));
        let tun = Arc::new(tun);
        let udp = Arc::new(udp);
        let mut threads = Vec::new();
        {
            let (tun, udp, state, stop) = (tun.clone(), udp.clone(), state.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut out = vec![0u8; 65536 + 12];
                while !stop.load(Ordering::Relaxed) {
                    if !poll_in(&tun, 50) {
                        continue;
                    }
                    loop {
                        // SAFETY: read(2) into a buffer we own, of its length.
                        let n = unsafe {
                            libc::read(tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                        };
                        if n <= 0 {
                            break;
                        }
                        let pkt = &buf[..n as usize];
                        let to = state
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .on_kernel_packet(pkt, &mut out);
                        if let Some((len, addr)) = to {
                            let _ = udp.send_to(&out[..len], addr);
                        }
                    }
                }
            }));
        }
        {
            let (tun, udp, state, stop) = (tun, udp, state.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut out = vec![0u8; 65536 + 20];
                while !stop.load(Ordering::Relaxed) {
                    let (n, from) = match udp.recv_from(&mut buf) {
                        Ok(x) => x,
                        Err(_) => continue,
                    };
                    let w = state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .on_xtcp_datagram(&buf[..n], from, &mut out);
                    if let Some(len) = w {
                        // The TUN queue may be momentarily full: wait for it
                        // a little rather than drop (loss is the RNG's job).
                        for _ in 0..100 {
                            // SAFETY: write(2) from a buffer we own.
                            let rc =
                                unsafe { libc::write(tun.as_raw_fd(), out.as_ptr().cast(), len) };
                            if rc >= 0
                                || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
                            {
                                break;
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                }
            }));
        }
        Ok(Bridge {
            udp_addr,
            state,
            stop,
            threads,
        })
    }

    /// The bridge's UDP address: XTCP connects here to reach the kernel listener.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// The counters so far.
    pub fn report(&self) -> Report {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report
            .clone()
    }

    /// Change the drop probabilities (e.g. after the handshake).
    pub fn set_loss(&self, to_xtcp: f64, to_kernel: f64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.cfg.loss_to_xtcp = to_xtcp;
        s.cfg.loss_to_kernel = to_kernel;
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "198.18.0.1:40000";
    const V: &str = "198.18.0.2:6000";

    /// A TCP segment: header (+ options) and `len` payload bytes.
    fn tcp(seq: u32, ack: u32, flags: u8, win: u16, opts: &[u8], len: usize) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&1u16.to_be_bytes());
        t[2..4].copy_from_slice(&2u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = (((20 + opts.len()) / 4) << 4) as u8;
        t[13] = flags;
        t[14..16].copy_from_slice(&win.to_be_bytes());
        t.extend_from_slice(opts);
        t.resize(t.len() + len, 0xab);
        t
    }

    fn state(loss: f64) -> State {
        let mut cfg = BridgeConfig::new("127.0.0.1:9".parse().unwrap());
        cfg.loss_to_xtcp = loss;
        cfg.loss_to_kernel = loss;
        State::new(cfg, 42)
    }

    /// Kernel → XTCP: the IPv4 packet the kernel would write; returns the
    /// datagram sent, if any.
    fn from_k(s: &mut State, t: &[u8]) -> Option<Vec<u8>> {
        let mut ip = [0u8; 2048];
        let n = tcp_to_ipv4(t, K.parse().unwrap(), V.parse().unwrap(), &mut ip).unwrap();
        let mut out = [0u8; 2048];
        s.on_kernel_packet(&ip[..n], &mut out)
            .map(|(m, _)| out[..m].to_vec())
    }

    /// XTCP → kernel under `id`; returns the IPv4 packet written, if any.
    fn from_x(s: &mut State, id: u64, t: &[u8]) -> Option<Vec<u8>> {
        let mut d = [0u8; 2048];
        let n = tcp_to_xtcp(t, id, &mut d).unwrap();
        let mut out = [0u8; 2048];
        s.on_xtcp_datagram(&d[..n], "127.0.0.1:7".parse().unwrap(), &mut out)
            .map(|m| out[..m].to_vec())
    }

    const SYN_OPTS_MSS_1000: [u8; 4] = [2, 4, 0x03, 0xe8];

    /// Kernel SYN, XTCP SYN-ACK announcing MSS 1000 and window 4000 (no
    /// scaling: the kernel's SYN offers none); returns the connection id.
    fn handshake(s: &mut State) -> u64 {
        let d = from_k(s, &tcp(100, 0, SYN, 65535, &[2, 4, 0x05, 0xb4], 0)).unwrap();
        let (id, _) = parse_xtcp(&d).unwrap();
        let ip = from_x(
            s,
            id,
            &tcp(5000, 101, SYN | ACK, 4000, &SYN_OPTS_MSS_1000, 0),
        )
        .unwrap();
        let p = parse_ipv4_tcp(&ip).unwrap();
        assert_eq!(
            (p.src_sock(), p.dst_sock()),
            (V.parse().unwrap(), K.parse().unwrap())
        );
        from_k(s, &tcp(101, 5001, ACK, 65535, &[], 0)).unwrap();
        id
    }

    #[test]
    fn kernel_syn_creates_a_connection_and_strays_are_counted() {
        let mut s = state(0.0);
        assert!(from_k(&mut s, &tcp(1, 1, ACK, 100, &[], 0)).is_none());
        assert!(from_x(&mut s, 77, &tcp(1, 1, ACK, 100, &[], 0)).is_none());
        let id = handshake(&mut s);
        assert_eq!(s.report.connections, 1);
        assert_eq!(s.report.kernel().unknown_conn, 1);
        assert_eq!(s.report.xtcp().unknown_conn, 1);
        assert_eq!(s.report.xtcp().syn.mss, Some(1000));
        assert!(from_x(&mut s, id, &tcp(5001, 101, ACK, 4000, &[], 0)).is_some());
    }

    #[test]
    fn mss_and_window_violations_are_caught() {
        let mut s = state(0.0);
        handshake(&mut s);
        // 1000 bytes: exactly the MSS; 1001: one too many.
        from_k(&mut s, &tcp(101, 5001, ACK, 65535, &[], 1000)).unwrap();
        assert_eq!(s.report.kernel().mss_violations, 0);
        from_k(&mut s, &tcp(1101, 5001, ACK, 65535, &[], 1001)).unwrap();
        assert_eq!(s.report.kernel().mss_violations, 1);
        // Options count against the MSS (RFC 9293 §3.7.1).
        from_k(&mut s, &tcp(2102, 5001, ACK, 65535, &[1, 1, 1, 1], 1000)).unwrap();
        assert_eq!(s.report.kernel().mss_violations, 2);
        // Window: XTCP offered 4000 from 101 (edge 4101). 3102..4101 fits.
        assert_eq!(s.report.kernel().window_violations, 0);
        from_k(&mut s, &tcp(3102, 5001, ACK, 65535, &[], 999)).unwrap();
        assert_eq!(s.report.kernel().window_violations, 0);
        // A one-byte zero-window probe is allowed; more is not.
        from_k(&mut s, &tcp(4101, 5001, ACK, 65535, &[], 1)).unwrap();
        assert_eq!(s.report.kernel().window_violations, 0);
        from_k(&mut s, &tcp(4101, 5001, ACK, 65535, &[], 2)).unwrap();
        assert_eq!(s.report.kernel().window_violations, 1);
        assert_eq!(s.report.kernel().retransmits, 0, "each one reached further");
        from_k(&mut s, &tcp(101, 5001, ACK, 65535, &[], 1000)).unwrap();
        assert_eq!(s.report.kernel().retransmits, 1, "101 again");
    }

    #[test]
    fn ack_coverage_counts_stretch_acks() {
        let mut s = state(0.0);
        let id = handshake(&mut s);
        for i in 0..4u32 {
            from_k(&mut s, &tcp(101 + i * 1000, 5001, ACK, 65535, &[], 1000)).unwrap();
        }
        // Two segments, then two: neither covers more than two.
        from_x(&mut s, id, &tcp(5001, 2101, ACK, 4000, &[], 0)).unwrap();
        from_x(&mut s, id, &tcp(5001, 4101, ACK, 8000, &[], 0)).unwrap();
        assert_eq!(s.report.xtcp().acks_over_two_segments, 0);
        for i in 4..7u32 {
            from_k(&mut s, &tcp(101 + i * 1000, 5001, ACK, 65535, &[], 1000)).unwrap();
        }
        // Three at once: a stretch ACK.
        from_x(&mut s, id, &tcp(5001, 7101, ACK, 8000, &[], 0)).unwrap();
        let x = s.report.xtcp();
        assert_eq!((x.acks_over_two_segments, x.acks_advancing), (1, 3));
        assert!((x.stretch_ack_share() - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn seeded_loss_is_reproducible_and_spares_syns() {
        let run = || {
            let mut s = state(0.3);
            handshake(&mut s);
            (0..200u32)
                .map(|i| from_k(&mut s, &tcp(101 + i, 5001, ACK, 65535, &[], 0)).is_some())
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b, "same seed, same drops");
        let lost = a.iter().filter(|x| !**x).count();
        assert!((30..90).contains(&lost), "{lost} of 200 at 30 %");
    }
}
