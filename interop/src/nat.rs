//! # NAT lab: real Linux NATs (nftables + conntrack) in network namespaces
//!
//! **Why not `patchbay`.** `patchbay` 0.7 (n0-computer, MIT/Apache) is a
//! namespace lab for exactly this job: routers, devices, nftables NAT presets
//! (EIM/EDM mapping, EIF/ADF/APDF filtering), tc link conditions. It does not
//! fit here: it is async (tokio + rtnetlink) with ~20 direct dependencies
//! (hickory-proto, chrono, tracing-subscriber, nix 0.31 next to our 0.30, …),
//! it is young and pre-1.0, it refuses to run as plain root unless told
//! `allow_real_root()` (it wants a user namespace), and it imposes its own
//! topology and address plan. Our needs are ~one file on top of `xtcp-lab`, so
//! this module builds the lab itself from `ip`, `nft` and `conntrack`.
//!
//! ## Topology (all addresses in 198.18.0.0/15)
//!
//! ```text
//!  peer_a 198.19.1.2 ─eth0──lan─ nat_a ─wan 198.18.10.2 ── to_a 198.18.10.1 ┐
//!         (gw 198.19.1.1)                                                    inet  lo: 198.18.0.1 (relay)
//!  peer_b 198.19.2.2 ─eth0──lan─ nat_b ─wan 198.18.20.2 ── to_b 198.18.20.1 ┘        198.18.0.2 (relay 2)
//! ```
//!
//! `inet` is the internet router; the relay addresses are `/32` aliases on
//! its loopback, so a relay (or the [`UdpEcho`] STUN-like server) simply runs
//! in `inet`. Every link is a veth with MTU 1500; `inet` and both routers have
//! `ip_forward=1`. Only for a [`NatKind::None`] site does `inet` get a route to
//! the site's LAN (the peer's address is then public).
//!
//! ## What each [`NatKind`] is in nftables (table `ip xnat` in the router)
//!
//! Common to every NAT kind: `postrouting` `oifname "wan" masquerade`
//! (Linux keeps the source port when it is free, which makes the mapping
//! endpoint-independent in practice); `forward`: `iifname "wan" oifname "lan"
//! ct state established,related accept`, then `… drop`; `input`: `iifname
//! "wan" ct state new drop` (unsolicited packets to the WAN address vanish
//! before conntrack confirms them, so they cannot steal a port from a later
//! outbound mapping).
//!
//! - `None`: no table rules but the firewall flags; the router only routes.
//! - `FullCone` (EIM + endpoint-independent filtering): `prerouting`
//!   `iifname "wan" ip daddr WAN meta l4proto { tcp, udp } dnat to PEER`
//!   (port kept: a 1:1 port NAT, so any host reaches any port the peer uses)
//!   and `forward` `ct status dnat accept`.
//! - `AddressRestricted` (EIM + address-dependent filtering): as `FullCone`,
//!   but the DNAT rule also requires `ip saddr @contacted`, a dynamic set
//!   (timeout 300 s) filled by `forward` `iifname "lan" oifname "wan"
//!   update @contacted { ip daddr }`.
//! - `PortRestricted` (EIM + address-and-port-dependent filtering): plain
//!   masquerade; inbound only as conntrack replies.
//! - `Symmetric` (endpoint-dependent mapping): `masquerade fully-random`, so
//!   every new 5-tuple gets a random external port; inbound only as replies.
//!
//! Firewall flags, in `forward` before everything else: `block_udp` is
//! `meta l4proto udp drop` (both directions); `block_inbound_tcp` is
//! `iifname "wan" tcp flags & (syn | ack) == syn drop`: every inbound SYN,
//! DNATed or not, and also the SYN of a TCP simultaneous open (conntrack
//! files it as a reply to the peer's own SYN, so a `ct state new` rule would
//! let it through). The SYN-ACKs answering the peer's own connects pass.
//!
//! [`Lab::cut`] adds table `ip xcut` in the site's router whose `forward`
//! chain drops everything from/to the other site's WAN /24 and LAN /24 (the
//! relay's 198.18.0.0/24 is untouched); [`Lab::restore`] deletes it.
//!
//! [`Lab::delay`] lengthens every round trip across `inet` (peer ↔ peer and
//! peer ↔ relay alike) by twice a one-way delay, with NFQUEUE delayers
//! ([`crate::nfq`]) on `inet`'s `PREROUTING`; this kernel has no netem.
//!
//! [`Lab::rebind`] changes the site's external ports mid-session: it reads the
//! router's conntrack table (`conntrack -L`), gives every peer port seen there a
//! new external port in 10000–29999 (never the current one, distinct from each
//! other), installs `snat to WAN:NEW` rules for those peer ports (chain
//! `rb_post`, jumped to before masquerade) plus, for `FullCone` /
//! `AddressRestricted`, `dnat to PEER:OLD` for inbound to the new port and
//! `accept` (= no DNAT, so dropped at `input`) for inbound to the old one
//! (chain `rb_pre`), and then flushes conntrack (`conntrack -F`). The new
//! mapping is still endpoint-independent. For `Symmetric` it only flushes
//! conntrack (the next packets get fresh random ports). `None` has no mapping:
//! error. A plain flush alone would not do: masquerade would pick the same,
//! still free, port again.

use crate::nfq::{DelayConfig, DelayStats, Delayer, Tap};
use crate::{veth, Netns};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{
    Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, ToSocketAddrs, UdpSocket,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The relay's address, on `inet`'s loopback.
pub const RELAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// A second relay-side address, on `inet`'s loopback.
pub const RELAY2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Where [`Lab::echo`] listens: `198.18.0.1:3478` …
pub const ECHO1: SocketAddrV4 = SocketAddrV4::new(RELAY, 3478);
/// … and `198.18.0.2:3479` (different address and port).
pub const ECHO2: SocketAddrV4 = SocketAddrV4::new(RELAY2, 3479);

/// One of the two sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    A,
    B,
}

impl Site {
    pub fn other(self) -> Site {
        match self {
            Site::A => Site::B,
            Site::B => Site::A,
        }
    }

    fn idx(self) -> usize {
        match self {
            Site::A => 0,
            Site::B => 1,
        }
    }

    fn n(self) -> u8 {
        self.idx() as u8 + 1
    }

    /// The router's WAN address: 198.18.10.2 (A) / 198.18.20.2 (B).
    pub fn wan_addr(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 10 * self.n(), 2)
    }

    /// `inet`'s address on the site's WAN link: 198.18.10.1 / 198.18.20.1.
    pub fn wan_gateway(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 10 * self.n(), 1)
    }

    /// The router's LAN address: 198.19.1.1 / 198.19.2.1.
    pub fn lan_gateway(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.n(), 1)
    }

    /// The peer's LAN address: 198.19.1.2 / 198.19.2.2.
    pub fn peer_addr(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.n(), 2)
    }

    fn wan_prefix(self) -> String {
        format!("198.18.{}.0/24", 10 * self.n())
    }

    fn lan_prefix(self) -> String {
        format!("198.19.{}.0/24", self.n())
    }
}

/// NAT behaviour of a site's router (RFC 3489 names; see the module doc for
/// the nftables rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// No NAT: the peer's LAN address is routable from `inet`.
    #[default]
    None,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Endpoint-dependent mapping (random port per destination).
    Symmetric,
}

impl NatKind {
    pub const ALL: [NatKind; 5] = [
        NatKind::None,
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ];

    /// Endpoint-independent mapping (every kind but `Symmetric`).
    pub fn is_eim(self) -> bool {
        self != NatKind::Symmetric
    }
}

/// A site: its NAT plus optional firewall rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiteConfig {
    pub nat: NatKind,
    /// Drop every inbound TCP connection attempt forwarded to the peer (a
    /// SYN without ACK from the WAN), simultaneous opens included: only
    /// connections the peer opens towards a listener get through.
    pub block_inbound_tcp: bool,
    /// Drop all UDP forwarded through the router, both directions.
    pub block_udp: bool,
}

impl From<NatKind> for SiteConfig {
    fn from(nat: NatKind) -> SiteConfig {
        SiteConfig {
            nat,
            ..SiteConfig::default()
        }
    }
}

#[derive(Default)]
struct Rebinds {
    generation: u32,
    /// (protocol, peer port) -> external port.
    map: BTreeMap<(&'static str, u16), u16>,
}

/// Two NATed sites and an internet router; all namespaces (and with them
/// every veth, address and rule) are deleted on drop.
pub struct Lab {
    /// Captures of [`crate::PCAP_VAR`]; first, so they stop before the
    /// namespaces go.
    captures: Vec<crate::Capture>,
    inet: Netns,
    routers: [Netns; 2],
    peers: [Netns; 2],
    cfg: [SiteConfig; 2],
    rebinds: [Mutex<Rebinds>; 2],
    /// Routers of the networks peers moved to ([`Lab::move_peer`]).
    moved: Mutex<Vec<Netns>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("inet", &self.inet.name())
            .field("a", &self.cfg[0])
            .field("b", &self.cfg[1])
            .finish()
    }
}

/// Apply an nftables script in `ns` (`nft -f` on a temporary file).
fn nft_apply(ns: &Netns, script: &str) -> io::Result<()> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("{}-{n}.nft", ns.name()));
    std::fs::write(&path, script)?;
    let r = ns.exec(&["nft", "-f", path.to_str().unwrap_or_default()]);
    let _ = std::fs::remove_file(&path);
    r.map(|_| ())
}

fn router_ruleset(site: Site, cfg: SiteConfig) -> String {
    router_rules(site.wan_addr(), site.peer_addr(), cfg)
}

/// The NAT router's ruleset for a WAN and a peer address (see the module doc).
fn router_rules(wan: Ipv4Addr, peer: Ipv4Addr, cfg: SiteConfig) -> String {
    let nat = cfg.nat;
    let mut s = String::from(
        "table ip xnat {\n  set contacted { type ipv4_addr; flags dynamic,timeout; timeout 300s; }\n  chain rb_pre { }\n  chain rb_post { }\n",
    );
    if nat != NatKind::None {
        s += "  chain pre { type nat hook prerouting priority dstnat; policy accept;\n    jump rb_pre\n";
        match nat {
            NatKind::FullCone => {
                s += &format!(
                    "    iifname \"wan\" ip daddr {wan} meta l4proto {{ tcp, udp }} dnat to {peer}\n"
                )
            }
            NatKind::AddressRestricted => {
                s += &format!(
                    "    iifname \"wan\" ip daddr {wan} ip saddr @contacted meta l4proto {{ tcp, udp }} dnat to {peer}\n"
                )
            }
            _ => {}
        }
        s += "  }\n  chain post { type nat hook postrouting priority srcnat; policy accept;\n    jump rb_post\n";
        s += if nat == NatKind::Symmetric {
            "    oifname \"wan\" masquerade fully-random\n  }\n"
        } else {
            "    oifname \"wan\" masquerade\n  }\n"
        };
    }
    s += "  chain filter_fwd { type filter hook forward priority filter; policy accept;\n";
    if nat == NatKind::AddressRestricted {
        s += "    iifname \"lan\" oifname \"wan\" update @contacted { ip daddr }\n";
    }
    if cfg.block_udp {
        s += "    meta l4proto udp drop\n";
    }
    if cfg.block_inbound_tcp {
        // Every SYN without ACK from outside, whatever conntrack thinks of
        // it: a simultaneous open's SYN matches the entry of our own SYN
        // (not `new`), and corporate firewalls drop it all the same.
        s += "    iifname \"wan\" tcp flags & (syn | ack) == syn drop\n";
    }
    if nat != NatKind::None {
        s += "    iifname \"wan\" oifname \"lan\" ct state established,related accept\n";
        if matches!(nat, NatKind::FullCone | NatKind::AddressRestricted) {
            s += "    iifname \"wan\" oifname \"lan\" ct status dnat accept\n";
        }
        s += "    iifname \"wan\" oifname \"lan\" drop\n";
    }
    s += "  }\n  chain filter_in { type filter hook input priority filter; policy accept;\n";
    if nat != NatKind::None {
        s += "    iifname \"wan\" ct state new drop\n";
    }
    s += "  }\n}\n";
    s
}

/// One NAT mapping parsed from `conntrack -L`: (protocol, peer port, external port).
fn parse_conntrack(listing: &str, peer: Ipv4Addr, wan: Ipv4Addr) -> Vec<(&'static str, u16, u16)> {
    let (peer, wan) = (peer.to_string(), wan.to_string());
    let mut out = Vec::new();
    for line in listing.lines() {
        let proto = match line.split_whitespace().next() {
            Some("udp") => "udp",
            Some("tcp") => "tcp",
            _ => continue,
        };
        let kv: Vec<(&str, &str)> = line
            .split_whitespace()
            .filter_map(|t| t.split_once('='))
            .filter(|(k, _)| matches!(*k, "src" | "dst" | "sport" | "dport"))
            .collect();
        if kv.len() < 8 {
            continue;
        }
        let get = |i: usize| kv[i].1;
        let port = |i: usize| get(i).parse::<u16>().ok();
        // original: src dst sport dport; reply: src dst sport dport
        if get(0) == peer && get(5) == wan {
            if let (Some(p), Some(e)) = (port(2), port(7)) {
                out.push((proto, p, e));
            }
        } else if get(4) == peer && get(1) == wan {
            if let (Some(p), Some(e)) = (port(6), port(3)) {
                out.push((proto, p, e));
            }
        }
    }
    out
}

impl Lab {
    /// Build the whole topology; see the module doc.
    pub fn new(a: SiteConfig, b: SiteConfig) -> io::Result<Lab> {
        let inet = Netns::new("inet")?;
        let routers = [Netns::new("nat_a")?, Netns::new("nat_b")?];
        let peers = [Netns::new("peer_a")?, Netns::new("peer_b")?];
        let mut lab = Lab {
            captures: Vec::new(),
            inet,
            routers,
            peers,
            cfg: [a, b],
            rebinds: Default::default(),
            moved: Mutex::new(Vec::new()),
        };
        let inet = &lab.inet;
        inet.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for ip in [RELAY, RELAY2] {
            inet.exec(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        }
        for site in [Site::A, Site::B] {
            let (r, p) = (lab.router(site), lab.peer(site));
            let inet_dev = match site {
                Site::A => "to_a",
                Site::B => "to_b",
            };
            veth(
                inet,
                inet_dev,
                &format!("{}/24", site.wan_gateway()),
                r,
                "wan",
                &format!("{}/24", site.wan_addr()),
                1500,
            )?;
            veth(
                r,
                "lan",
                &format!("{}/24", site.lan_gateway()),
                p,
                "eth0",
                &format!("{}/24", site.peer_addr()),
                1500,
            )?;
            r.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            r.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &site.wan_gateway().to_string(),
            ])?;
            p.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &site.lan_gateway().to_string(),
            ])?;
            if lab.config(site).nat == NatKind::None {
                inet.exec(&[
                    "ip",
                    "route",
                    "add",
                    &site.lan_prefix(),
                    "via",
                    &site.wan_addr().to_string(),
                ])?;
            }
            nft_apply(r, &router_ruleset(site, lab.config(site)))?;
        }
        if let Some(dir) = std::env::var_os(crate::PCAP_VAR) {
            lab.capture_peers(Path::new(&dir), None)?;
        }
        Ok(lab)
    }

    /// Record each peer namespace's `eth0` into `dir` until the lab is
    /// dropped ([`Netns::capture`]): `<stem>-peer_a.pcap` and
    /// `<stem>-peer_b.pcap`, or without a stem `<namespace>-eth0.pcap` (as
    /// [`crate::PCAP_VAR`] does). Returns the files.
    pub fn capture_peers(&mut self, dir: &Path, stem: Option<&str>) -> io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut files = Vec::new();
        for site in [Site::A, Site::B] {
            let ns = &self.peers[site.idx()];
            let file = match stem {
                Some(stem) => format!("{stem}-peer_{}.pcap", ["a", "b"][site.idx()]),
                None => format!("{}-eth0.pcap", ns.name()),
            };
            let cap = ns.capture("eth0", &dir.join(file))?;
            let path = cap.path().display().to_string();
            eprintln!("lab: capturing {} eth0 to {path}", ns.name());
            files.push(cap.path().to_owned());
            self.captures.push(cap);
        }
        Ok(files)
    }

    /// The internet router namespace (where the relay runs).
    pub fn inet(&self) -> &Netns {
        &self.inet
    }

    /// The site's NAT router namespace (`nat_a` / `nat_b`).
    pub fn router(&self, site: Site) -> &Netns {
        &self.routers[site.idx()]
    }

    /// The site's peer namespace (`peer_a` / `peer_b`).
    pub fn peer(&self, site: Site) -> &Netns {
        &self.peers[site.idx()]
    }

    pub fn config(&self, site: Site) -> SiteConfig {
        self.cfg[site.idx()]
    }

    /// The relay address, 198.18.0.1 (in `inet`).
    pub fn relay_addr(&self) -> Ipv4Addr {
        RELAY
    }

    /// The peer's LAN address (198.19.1.2 / 198.19.2.2).
    pub fn peer_addr(&self, site: Site) -> Ipv4Addr {
        site.peer_addr()
    }

    /// The address the site's peer appears as on the internet: the router's
    /// WAN address, or the peer's own address for [`NatKind::None`].
    pub fn public_addr(&self, site: Site) -> Ipv4Addr {
        match self.config(site).nat {
            NatKind::None => site.peer_addr(),
            _ => site.wan_addr(),
        }
    }

    /// Start a [`UdpEcho`] in `inet` on [`ECHO1`] and [`ECHO2`].
    pub fn echo(&self) -> io::Result<UdpEcho> {
        UdpEcho::start(&self.inet, &[ECHO1.into(), ECHO2.into()])
    }

    /// Delay the packets through `inet` so that every round trip across it
    /// takes `2 × one_way` more, until the guard is dropped. NFQUEUE
    /// [`Delayer`]s in `inet` (this kernel has no `tc netem`; needs
    /// `iptables`, see [`crate::nfq`]), both on iptables `mangle PREROUTING`:
    ///
    /// - queue 0, `one_way`: packets `inet` forwards (`-m addrtype !
    ///   --dst-type LOCAL`), i.e. peer ↔ peer, each direction once;
    /// - queue 1, `2 × one_way`: packets for `inet`'s own addresses from
    ///   outside (`! -i lo -m addrtype --dst-type LOCAL`): requests to the
    ///   relay, the [`UdpEcho`], the relay's UDP address service.
    ///
    /// Resulting round-trip times (plus the lab's own ≈ 0.1 ms and the
    /// delayer's wake-up latency, well under a millisecond):
    /// - peer ↔ peer: `one_way` each way, RTT = `2 × one_way`;
    /// - peer ↔ relay (or echo): `2 × one_way` to the relay, 0 back, RTT =
    ///   `2 × one_way` too; so peer → relay → other peer (a relayed byte)
    ///   takes `2 × one_way`, as across `inet` directly.
    /// - an ICMP error `inet` returns for a forwarded packet (no route):
    ///   `one_way` after the packet was sent.
    ///
    /// **Why not `OUTPUT` for the relay's answers** (symmetric one-way
    /// delays): a locally sent packet held in `OUTPUT` still belongs to its
    /// socket, and TCP Small Queues (`tcp_limit_output_bytes`, ≈ 1 ms of the
    /// pacing rate) then stops the sender after a few packets: the relay's
    /// TCP throughput collapsed to ≈ 270 KB/s (2 MiB in 7.7 s against 0.35 s
    /// forwarded; see the test in `interop/tests/nat.rs`). Packets arriving
    /// from a veth are orphaned, so holding them in `PREROUTING` costs the
    /// senders nothing. Netem on a sender's own egress has the same flaw.
    ///
    /// Traffic inside a site and loopback traffic inside `inet` are not
    /// delayed. The lab is IPv4 only: no `ip6tables` rules. Dropping the
    /// guard releases what is held, in order, and removes the rules.
    pub fn delay(&self, one_way: Duration) -> io::Result<DelayGuard> {
        let forward = Delayer::start(
            &self.inet,
            DelayConfig::new(one_way),
            &[Tap::new(
                "PREROUTING",
                &["-m", "addrtype", "!", "--dst-type", "LOCAL"],
            )],
        )?;
        let local = Delayer::start(
            &self.inet,
            DelayConfig {
                queue: 1,
                ..DelayConfig::new(2 * one_way)
            },
            &[Tap::new(
                "PREROUTING",
                &["!", "-i", "lo", "-m", "addrtype", "--dst-type", "LOCAL"],
            )],
        )?;
        Ok(DelayGuard { forward, local })
    }

    /// Drop all traffic between this site's peer and the other site (its WAN
    /// and LAN prefixes) at this site's router; the relay stays reachable.
    pub fn cut(&self, site: Site) -> io::Result<()> {
        let o = site.other();
        let set = format!("{{ {}, {} }}", o.wan_prefix(), o.lan_prefix());
        nft_apply(
            self.router(site),
            &format!(
                "table ip xcut {{}}\ndelete table ip xcut\ntable ip xcut {{\n  chain cut {{ type filter hook forward priority filter - 10; policy accept;\n    ip saddr {set} drop\n    ip daddr {set} drop\n  }}\n}}\n"
            ),
        )
    }

    /// Move the site's peer to another network behind a new NAT of kind
    /// `nat`: a new router (`nat_m`, WAN 198.18.30.2 for site A / .40.2 for
    /// B, LAN 198.19.3.0/24 / .4.0/24) is wired to `inet`, the peer gets an
    /// interface on its LAN (198.19.3.2 / 198.19.4.2, default route through
    /// it), and its old address is removed: every socket bound to it is
    /// dead, as after walking from one Wi-Fi to another. Returns the peer's
    /// new address.
    pub fn move_peer(&self, site: Site, nat: NatKind) -> io::Result<Ipv4Addr> {
        let n = 2 + site.n();
        let wan = Ipv4Addr::new(198, 18, 10 * n, 2);
        let wan_gw = Ipv4Addr::new(198, 18, 10 * n, 1);
        let lan_gw = Ipv4Addr::new(198, 19, n, 1);
        let addr = Ipv4Addr::new(198, 19, n, 2);
        let r = Netns::new("nat_m")?;
        let p = self.peer(site);
        veth(
            &self.inet,
            &format!("to_m{n}"),
            &format!("{wan_gw}/24"),
            &r,
            "wan",
            &format!("{wan}/24"),
            1500,
        )?;
        veth(
            &r,
            "lan",
            &format!("{lan_gw}/24"),
            p,
            "eth1",
            &format!("{addr}/24"),
            1500,
        )?;
        r.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        r.exec(&["ip", "route", "add", "default", "via", &wan_gw.to_string()])?;
        nft_apply(
            &r,
            &router_rules(
                wan,
                addr,
                SiteConfig {
                    nat,
                    ..SiteConfig::default()
                },
            ),
        )?;
        // The move: the old address goes, the default route follows the
        // new network.
        p.exec(&["ip", "addr", "flush", "dev", "eth0"])?;
        p.exec(&[
            "ip",
            "route",
            "replace",
            "default",
            "via",
            &lan_gw.to_string(),
        ])?;
        self.moved.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        Ok(addr)
    }

    /// Undo [`Lab::cut`] (no-op if not cut).
    pub fn restore(&self, site: Site) -> io::Result<()> {
        nft_apply(
            self.router(site),
            "table ip xcut {}\ndelete table ip xcut\n",
        )
    }

    /// Force the site's NAT to give the peer's current flows new external
    /// ports (see the module doc). Needs `conntrack` (conntrack-tools).
    pub fn rebind(&self, site: Site) -> io::Result<()> {
        let r = self.router(site);
        let nat = self.config(site).nat;
        let hint = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("{e} (rebind needs conntrack: apt-get install -y conntrack)"),
            )
        };
        match nat {
            NatKind::None => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a NatKind::None site has no NAT mapping to rebind",
                ))
            }
            NatKind::Symmetric => {}
            _ => {
                let out = r.exec(&["conntrack", "-L"]).map_err(hint)?;
                let listing = String::from_utf8_lossy(&out.stdout);
                let current = parse_conntrack(&listing, site.peer_addr(), site.wan_addr());
                let mut st = self.rebinds[site.idx()]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                st.generation += 1;
                let g = st.generation;
                let mut used: BTreeSet<u16> = current.iter().map(|c| c.2).collect();
                used.extend(st.map.values().copied());
                for (proto, p, e) in current {
                    let mut cand = 10_000 + ((u32::from(p) * 7 + g * 1009) % 20_000) as u16;
                    while used.contains(&cand) || cand == e {
                        cand = 10_000 + (cand - 10_000 + 1) % 20_000;
                    }
                    used.insert(cand);
                    st.map.insert((proto, p), cand);
                }
                let (wan, peer) = (site.wan_addr(), site.peer_addr());
                let mut s =
                    String::from("flush chain ip xnat rb_pre\nflush chain ip xnat rb_post\n");
                let gate = if nat == NatKind::AddressRestricted {
                    " ip saddr @contacted"
                } else {
                    ""
                };
                let inbound = matches!(nat, NatKind::FullCone | NatKind::AddressRestricted);
                for (&(proto, p), &e) in &st.map {
                    s += &format!(
                        "add rule ip xnat rb_post oifname \"wan\" ip saddr {peer} {proto} sport {p} snat to {wan}:{e}\n"
                    );
                    if inbound {
                        s += &format!(
                            "add rule ip xnat rb_pre iifname \"wan\" ip daddr {wan}{gate} {proto} dport {e} dnat to {peer}:{p}\n"
                        );
                    }
                }
                if inbound {
                    for &(proto, p) in st.map.keys() {
                        s += &format!(
                            "add rule ip xnat rb_pre iifname \"wan\" ip daddr {wan} {proto} dport {p} accept\n"
                        );
                    }
                }
                nft_apply(r, &s)?;
            }
        }
        r.exec(&["conntrack", "-F"]).map_err(hint)?;
        Ok(())
    }
}

/// A delay in `inet` ([`Lab::delay`]); lifted on drop.
#[derive(Debug)]
pub struct DelayGuard {
    forward: Delayer,
    local: Delayer,
}

impl DelayGuard {
    /// The delayers: forwarded packets (`one_way`), packets for `inet`
    /// itself (`2 × one_way`).
    pub fn delayers(&self) -> [&Delayer; 2] {
        [&self.forward, &self.local]
    }

    /// Both delayers' counters, added.
    pub fn stats(&self) -> DelayStats {
        let (f, l) = (self.forward.stats(), self.local.stats());
        DelayStats {
            delayed: f.delayed + l.delayed,
            dropped: f.dropped + l.dropped,
            overflows: f.overflows + l.overflows,
        }
    }

    /// `Err` if either delayer stopped.
    pub fn check(&self) -> io::Result<()> {
        self.forward.check().and(self.local.check())
    }

    /// Both queues' kernel drop counters, added (see
    /// [`Delayer::kernel_drops`]).
    pub fn kernel_drops(&self) -> io::Result<(u64, u64)> {
        let (f, l) = (self.forward.kernel_drops()?, self.local.kernel_drops()?);
        Ok((f.0 + l.0, f.1 + l.1))
    }
}

/// Bind a UDP socket inside `ns` (it stays there; use it from any thread).
pub fn udp_bind(ns: &Netns, addr: impl ToSocketAddrs + Send) -> io::Result<UdpSocket> {
    ns.run_in(move || UdpSocket::bind(addr))?
}

/// Listen on TCP inside `ns`.
pub fn tcp_listen(ns: &Netns, addr: impl ToSocketAddrs + Send) -> io::Result<TcpListener> {
    ns.run_in(move || TcpListener::bind(addr))?
}

/// Connect over TCP from inside `ns`, giving up after `timeout`.
pub fn tcp_connect(ns: &Netns, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    ns.run_in(move || TcpStream::connect_timeout(&addr, timeout))?
}

/// Ask a [`UdpEcho`] server which address `sock` appears as: up to `tries`
/// requests, each waiting `wait` for the answer. Leaves `wait` as the
/// socket's read timeout.
pub fn mapped_addr(
    sock: &UdpSocket,
    server: SocketAddr,
    tries: u32,
    wait: Duration,
) -> io::Result<SocketAddr> {
    sock.set_read_timeout(Some(wait))?;
    let mut buf = [0u8; 512];
    for _ in 0..tries {
        sock.send_to(b"map?", server)?;
        // Skip stray datagrams from others; stop at the first timeout.
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == server {
                if let Some(a) = std::str::from_utf8(&buf[..n])
                    .ok()
                    .and_then(|s| s.strip_prefix("mapped "))
                    .and_then(|s| s.parse().ok())
                {
                    return Ok(a);
                }
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer from {server} after {tries} tries"),
    ))
}

/// STUN-like UDP echo: answers every datagram with `mapped IP:PORT`, the
/// source address it saw. Stopped and joined on drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
}

impl UdpEcho {
    /// Serve on each of `addrs` inside `ns`.
    pub fn start(ns: &Netns, addrs: &[SocketAddr]) -> io::Result<UdpEcho> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut echo = UdpEcho {
            stop: stop.clone(),
            threads: Vec::new(),
            addrs: Vec::new(),
        };
        for &addr in addrs {
            let sock = udp_bind(ns, addr)?;
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            echo.addrs.push(sock.local_addr()?);
            let stop = stop.clone();
            echo.threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(format!("mapped {from}").as_bytes(), from);
                    }
                }
            }));
        }
        Ok(echo)
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

impl Drop for UdpEcho {
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

    #[test]
    fn conntrack_listing_parses_outbound_and_dnat_entries() {
        let l = "udp      17 29 src=198.19.1.2 dst=198.18.0.1 sport=40000 dport=3478 src=198.18.0.1 dst=198.18.10.2 sport=3478 dport=40001 mark=0 use=1\n\
                 tcp      6 117 SYN_SENT src=198.18.0.2 dst=198.18.10.2 sport=5555 dport=12000 [UNREPLIED] src=198.19.1.2 dst=198.18.0.2 sport=41000 dport=5555 mark=0 use=1\n\
                 icmp     1 29 src=198.19.1.2 dst=198.18.0.1 type=8 code=0 id=1 src=198.18.0.1 dst=198.18.10.2 type=0 code=0 id=1 mark=0 use=1\n";
        let got = parse_conntrack(l, Site::A.peer_addr(), Site::A.wan_addr());
        assert_eq!(got, vec![("udp", 40000, 40001), ("tcp", 41000, 12000)]);
    }

    #[test]
    fn rulesets_name_the_right_statements() {
        let fc = router_ruleset(Site::A, NatKind::FullCone.into());
        assert!(fc.contains("dnat to 198.19.1.2\n"), "{fc}");
        let ar = router_ruleset(Site::B, NatKind::AddressRestricted.into());
        assert!(ar.contains("ip saddr @contacted") && ar.contains("update @contacted"));
        let sy = router_ruleset(Site::A, NatKind::Symmetric.into());
        assert!(sy.contains("masquerade fully-random") && !sy.contains("dnat"));
        let none = router_ruleset(
            Site::A,
            SiteConfig {
                nat: NatKind::None,
                block_inbound_tcp: true,
                block_udp: true,
            },
        );
        assert!(!none.contains("masquerade") && none.contains("meta l4proto udp drop"));
        assert!(
            none.contains("tcp flags & (syn | ack) == syn drop"),
            "{none}"
        );
    }
}
