//! The NAT lab proves its NATs behave as named: mapping (endpoint-independent
//! or not), filtering (full cone / address / port restricted / symmetric),
//! UDP hole punching between every pair of endpoint-independent NATs (and not
//! between two symmetric ones), the TCP/UDP firewall flags, `cut`/`restore`
//! and `rebind`. Needs root (fails loudly without it).

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use xtcp_lab::nat::{
    mapped_addr, tcp_connect, tcp_listen, udp_bind, Lab, NatKind, Site, SiteConfig, ECHO1, ECHO2,
    RELAY, RELAY2,
};
use xtcp_lab::require_root;

const WAIT: Duration = Duration::from_millis(300);

fn setup() {
    require_root();
    let ok = std::process::Command::new("conntrack")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "`conntrack` is missing: apt-get install -y conntrack");
}

fn e1() -> SocketAddr {
    ECHO1.into()
}

fn e2() -> SocketAddr {
    ECHO2.into()
}

/// Everything `sock` receives until a read times out (bounded), as (from, payload).
fn drain(sock: &UdpSocket, wait: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1500];
    let mut got = Vec::new();
    for _ in 0..64 {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => got.push((from, buf[..n].to_vec())),
            Err(_) => break,
        }
    }
    got
}

/// Both peers send to each other's `to` address for up to `rounds` rounds;
/// returns (a received from b, b received from a).
fn exchange(
    a: &UdpSocket,
    b: &UdpSocket,
    a_to: SocketAddr,
    b_to: SocketAddr,
    rounds: u32,
) -> (bool, bool) {
    let (mut a_got, mut b_got) = (false, false);
    for _ in 0..rounds {
        a.send_to(b"from-a", a_to).unwrap();
        b.send_to(b"from-b", b_to).unwrap();
        let w = Duration::from_millis(100);
        a_got |= drain(a, w).iter().any(|(_, p)| p == b"from-b");
        b_got |= drain(b, w).iter().any(|(_, p)| p == b"from-a");
        if a_got && b_got {
            break;
        }
    }
    (a_got, b_got)
}

/// Learn both mapped addresses from the echo server, then punch.
fn punch(lab: &Lab) -> (bool, bool) {
    let a = udp_bind(lab.peer(Site::A), "0.0.0.0:0").unwrap();
    let b = udp_bind(lab.peer(Site::B), "0.0.0.0:0").unwrap();
    let ma = mapped_addr(&a, e1(), 3, WAIT).unwrap();
    let mb = mapped_addr(&b, e1(), 3, WAIT).unwrap();
    exchange(&a, &b, mb, ma, 8)
}

#[test]
fn mapping_is_endpoint_independent_except_symmetric() {
    setup();
    for kind in NatKind::ALL {
        let lab = Lab::new(kind.into(), NatKind::None.into()).unwrap();
        let _echo = lab.echo().unwrap();
        let mut differs = false;
        for _ in 0..4 {
            let s = udp_bind(lab.peer(Site::A), "0.0.0.0:0").unwrap();
            let local = s.local_addr().unwrap().port();
            let m1 = mapped_addr(&s, e1(), 3, WAIT).unwrap();
            let m2 = mapped_addr(&s, e2(), 3, WAIT).unwrap();
            assert_eq!(m1.ip(), lab.public_addr(Site::A), "{kind:?}");
            assert_eq!(m2.ip(), lab.public_addr(Site::A), "{kind:?}");
            if kind.is_eim() {
                assert_eq!(m1, m2, "{kind:?} must map endpoint-independently");
                // Masquerade keeps the free source port (FullCone relies on it).
                assert_eq!(m1.port(), local, "{kind:?}");
            }
            differs |= m1.port() != m2.port();
        }
        if kind == NatKind::Symmetric {
            assert!(differs, "symmetric NAT gave one port to both servers");
        }
    }
}

#[test]
fn filtering_matches_each_nat_kind() {
    setup();
    for kind in NatKind::ALL {
        let lab = Lab::new(kind.into(), NatKind::None.into()).unwrap();
        let _echo = lab.echo().unwrap();
        let s = udp_bind(lab.peer(Site::A), "0.0.0.0:0").unwrap();
        let mapped = mapped_addr(&s, e1(), 3, WAIT).unwrap();
        // Same IP as echo1, other port; and another IP.
        let same_ip = udp_bind(lab.inet(), (RELAY, 0)).unwrap();
        let other_ip = udp_bind(lab.inet(), (RELAY2, 0)).unwrap();
        for _ in 0..3 {
            same_ip.send_to(b"same-ip", mapped).unwrap();
            other_ip.send_to(b"other-ip", mapped).unwrap();
        }
        let got = drain(&s, WAIT);
        let from_same = got.iter().any(|(_, p)| p == b"same-ip");
        let from_other = got.iter().any(|(_, p)| p == b"other-ip");
        let want = match kind {
            NatKind::None | NatKind::FullCone => (true, true),
            NatKind::AddressRestricted => (true, false),
            NatKind::PortRestricted | NatKind::Symmetric => (false, false),
        };
        assert_eq!(
            (from_same, from_other),
            want,
            "{kind:?}: (same IP other port, other IP) delivered"
        );
        // The contacted endpoint itself always gets through.
        assert_eq!(mapped_addr(&s, e1(), 3, WAIT).unwrap(), mapped, "{kind:?}");
    }
}

#[test]
fn udp_hole_punch_between_every_endpoint_independent_pair() {
    setup();
    let eim: Vec<NatKind> = NatKind::ALL.into_iter().filter(|k| k.is_eim()).collect();
    let mut pairs = Vec::new();
    for (i, &a) in eim.iter().enumerate() {
        for &b in &eim[i..] {
            pairs.push((a, b));
        }
    }
    // Two at a time: setup is mostly waiting on `ip`/`nft`.
    for chunk in pairs.chunks(2) {
        std::thread::scope(|s| {
            for &(a, b) in chunk {
                s.spawn(move || {
                    let lab = Lab::new(a.into(), b.into()).unwrap();
                    let _echo = lab.echo().unwrap();
                    assert_eq!(punch(&lab), (true, true), "{a:?} x {b:?}");
                });
            }
        });
    }
}

#[test]
fn symmetric_pair_cannot_punch_but_symmetric_to_full_cone_can() {
    setup();
    let lab = Lab::new(NatKind::Symmetric.into(), NatKind::Symmetric.into()).unwrap();
    let _echo = lab.echo().unwrap();
    assert_eq!(punch(&lab), (false, false), "symmetric x symmetric");
    drop(_echo);
    drop(lab);
    // Symmetric x full cone: A's datagrams reach B's mapped address, but B's
    // datagrams to A's echo-observed address do not (that mapping was for the
    // echo server only); B answering the source it actually saw (the
    // peer-reflexive address) does get through.
    let lab = Lab::new(NatKind::Symmetric.into(), NatKind::FullCone.into()).unwrap();
    let _echo = lab.echo().unwrap();
    let a = udp_bind(lab.peer(Site::A), "0.0.0.0:0").unwrap();
    let b = udp_bind(lab.peer(Site::B), "0.0.0.0:0").unwrap();
    let ma = mapped_addr(&a, e1(), 3, WAIT).unwrap();
    let mb = mapped_addr(&b, e1(), 3, WAIT).unwrap();
    assert_eq!(exchange(&a, &b, mb, ma, 4), (false, true), "plain method");
    a.send_to(b"from-a", mb).unwrap();
    let seen = drain(&b, WAIT);
    let (prflx, _) = seen.iter().find(|(_, p)| p == b"from-a").unwrap();
    assert_eq!(prflx.ip(), ma.ip());
    assert_ne!(prflx.port(), ma.port(), "symmetric mapping per destination");
    b.send_to(b"from-b", *prflx).unwrap();
    assert!(drain(&a, WAIT).iter().any(|(_, p)| p == b"from-b"));
}

/// A TCP connect from `site`'s peer to the relay address succeeds; the
/// source address the relay saw.
fn outbound_tcp_source(lab: &Lab, site: Site) -> std::net::IpAddr {
    let srv = tcp_listen(lab.inet(), (RELAY, 0)).unwrap();
    tcp_connect(
        lab.peer(site),
        srv.local_addr().unwrap(),
        Duration::from_secs(2),
    )
    .unwrap();
    srv.accept().unwrap().1.ip()
}

#[test]
fn block_inbound_tcp_drops_inbound_connects_only() {
    setup();
    for block in [false, true] {
        let cfg = SiteConfig {
            nat: NatKind::FullCone,
            block_inbound_tcp: block,
            block_udp: false,
        };
        let lab = Lab::new(cfg, NatKind::None.into()).unwrap();
        let _echo = lab.echo().unwrap();
        let l = tcp_listen(lab.peer(Site::A), "0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // Full cone maps ports 1:1, so the listener is at WAN:port.
        let to = SocketAddr::from((Site::A.wan_addr(), port));
        let t = Instant::now();
        let r = tcp_connect(lab.inet(), to, Duration::from_millis(500));
        if block {
            assert!(r.is_err(), "inbound TCP got through block_inbound_tcp");
            assert!(
                t.elapsed() >= Duration::from_millis(400),
                "dropped, not refused"
            );
        } else {
            r.unwrap();
            l.accept().unwrap();
        }
        // Outbound TCP and UDP still work.
        assert_eq!(outbound_tcp_source(&lab, Site::A), Site::A.wan_addr());
        let s = udp_bind(lab.peer(Site::A), "0.0.0.0:0").unwrap();
        mapped_addr(&s, e1(), 3, WAIT).unwrap();
    }
}

#[test]
fn block_udp_drops_udp_but_not_tcp() {
    setup();
    let cfg = SiteConfig {
        nat: NatKind::PortRestricted,
        block_inbound_tcp: false,
        block_udp: true,
    };
    let lab = Lab::new(cfg, NatKind::PortRestricted.into()).unwrap();
    let _echo = lab.echo().unwrap();
    let s = udp_bind(lab.peer(Site::A), "0.0.0.0:0").unwrap();
    let e = mapped_addr(&s, e1(), 3, WAIT).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    outbound_tcp_source(&lab, Site::A);
    // The other site is unaffected.
    let sb = udp_bind(lab.peer(Site::B), "0.0.0.0:0").unwrap();
    mapped_addr(&sb, e1(), 3, WAIT).unwrap();
}

#[test]
fn cut_and_restore_between_peers_keep_the_relay() {
    setup();
    let lab = Lab::new(NatKind::FullCone.into(), NatKind::PortRestricted.into()).unwrap();
    let _echo = lab.echo().unwrap();
    let a = udp_bind(lab.peer(Site::A), "0.0.0.0:0").unwrap();
    let b = udp_bind(lab.peer(Site::B), "0.0.0.0:0").unwrap();
    let ma = mapped_addr(&a, e1(), 3, WAIT).unwrap();
    let mb = mapped_addr(&b, e1(), 3, WAIT).unwrap();
    assert_eq!(exchange(&a, &b, mb, ma, 8), (true, true), "before cut");
    for site in [Site::A, Site::B] {
        lab.cut(site).unwrap();
        assert_eq!(exchange(&a, &b, mb, ma, 3), (false, false), "cut {site:?}");
        // Both still reach the relay.
        assert_eq!(mapped_addr(&a, e1(), 3, WAIT).unwrap(), ma);
        assert_eq!(mapped_addr(&b, e1(), 3, WAIT).unwrap(), mb);
        lab.restore(site).unwrap();
        assert_eq!(
            exchange(&a, &b, mb, ma, 8),
            (true, true),
            "restored {site:?}"
        );
    }
    lab.restore(Site::A).unwrap(); // idempotent
}

#[test]
fn rebind_changes_the_external_port() {
    setup();
    for kind in [
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ] {
        let lab = Lab::new(kind.into(), NatKind::None.into()).unwrap();
        let _echo = lab.echo().unwrap();
        let s = udp_bind(lab.peer(Site::A), "0.0.0.0:0").unwrap();
        let mut seen = BTreeSet::new();
        let mut prev = mapped_addr(&s, e1(), 3, WAIT).unwrap();
        seen.insert(prev.port());
        for round in 0..2 {
            lab.rebind(Site::A).unwrap();
            let now = mapped_addr(&s, e1(), 3, WAIT).unwrap();
            assert_eq!(now.ip(), prev.ip(), "{kind:?}");
            assert!(
                seen.insert(now.port()),
                "{kind:?} rebind {round}: port {} reused ({seen:?})",
                now.port()
            );
            if kind.is_eim() {
                // Still endpoint-independent after the rebind.
                assert_eq!(mapped_addr(&s, e2(), 3, WAIT).unwrap(), now, "{kind:?}");
            }
            if kind == NatKind::FullCone {
                // Inbound follows the new mapping, the old one is gone.
                let probe = udp_bind(lab.inet(), (RELAY2, 0)).unwrap();
                probe.send_to(b"new", now).unwrap();
                probe.send_to(b"old", prev).unwrap();
                let got: Vec<Vec<u8>> = drain(&s, WAIT).into_iter().map(|g| g.1).collect();
                assert!(got.contains(&b"new".to_vec()), "{got:?}");
                assert!(!got.contains(&b"old".to_vec()), "{got:?}");
            }
            prev = now;
        }
    }
    let lab = Lab::new(NatKind::None.into(), NatKind::None.into()).unwrap();
    assert!(lab.rebind(Site::A).is_err());
}

/// `n` round trips from `sock` to `to`, one at a time: each sends an
/// 8-byte sequence number and waits (≤ 2 s) for an answer from `to`; an
/// answer that echoes a sequence number must echo the current one.
fn round_trips(sock: &UdpSocket, to: SocketAddr, n: u64) -> Vec<Duration> {
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1500];
    let mut out = Vec::new();
    for seq in 0..n {
        let t = Instant::now();
        sock.send_to(&seq.to_be_bytes(), to).unwrap();
        loop {
            let (len, from) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("no answer from {to} to probe {seq}: {e}"));
            if from != to {
                continue;
            }
            if len == 8 {
                assert_eq!(buf[..8], seq.to_be_bytes(), "stale answer from {to}");
            }
            out.push(t.elapsed());
            break;
        }
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `Lab::delay` delays what `inet` forwards and what it answers itself:
/// peer ↔ relay address (UDP echo) and peer ↔ peer RTTs are both
/// `2 × one_way` with the delay, and back to the lab's own once lifted.
#[test]
fn delay_in_inet_gives_two_one_ways_per_round_trip_to_relay_and_peer() {
    require_root();
    let lab = Lab::new(NatKind::None.into(), NatKind::None.into()).unwrap();
    let _echo = lab.echo().unwrap();
    let a = udp_bind(lab.peer(Site::A), "0.0.0.0:0").unwrap();
    // A plain echo on peer B, stopped by its read timeout once `stop` is set.
    let b = udp_bind(lab.peer(Site::B), "0.0.0.0:7100").unwrap();
    b.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let echo_b = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, from)) = b.recv_from(&mut buf) {
                    let _ = b.send_to(&buf[..n], from);
                }
            }
        })
    };
    let peer_b = SocketAddr::from((lab.peer_addr(Site::B), 7100));
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let min = |v: &[Duration]| v.iter().copied().min().unwrap();

    let before = (
        median(round_trips(&a, e1(), 5)),
        median(round_trips(&a, peer_b, 5)),
    );
    let one_way = Duration::from_millis(20);
    let guard = lab.delay(one_way).unwrap();
    let relay = round_trips(&a, e1(), 10);
    let peer = round_trips(&a, peer_b, 10);
    let stats = guard.stats();
    let kernel_drops = guard.kernel_drops().unwrap();
    guard.check().unwrap();
    drop(guard);
    let after = (round_trips(&a, e1(), 5), round_trips(&a, peer_b, 5));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echo_b.join().unwrap();

    eprintln!(
        "RTT median (ms): before relay {:.2} peer {:.2}; with {} ms one way: relay min {:.2} median {:.2}, peer min {:.2} median {:.2}; after: relay min {:.2}, peer min {:.2}; {stats:?}",
        ms(before.0),
        ms(before.1),
        one_way.as_millis(),
        ms(min(&relay)),
        ms(median(relay.clone())),
        ms(min(&peer)),
        ms(median(peer.clone())),
        ms(min(&after.0)),
        ms(min(&after.1)),
    );
    // Each probe and each answer is held at least `one_way`.
    let rtt = 2 * one_way;
    // Generous: a loaded CI machine may wake the delayer late.
    let slack = Duration::from_millis(60);
    for (what, v) in [("relay", &relay), ("peer", &peer)] {
        assert!(min(v) >= rtt, "{what}: {v:?} < {rtt:?}");
        assert!(median(v.clone()) < rtt + slack, "{what}: {v:?}");
    }
    // 10 probes to the echo (held on the way in only) and 10 to peer B
    // (held both ways).
    assert!(stats.delayed >= 30, "{stats:?}");
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert_eq!(kernel_drops, (0, 0));
    // Lifted: far below even one delay.
    assert!(
        min(&after.0) < one_way && min(&after.1) < one_way,
        "{after:?}"
    );
}

/// Seconds to move `len` bytes over TCP from a listener in `from` (bound to
/// `addr`) to a client in `to`, after the connection is up.
fn tcp_bulk_secs(
    from: &xtcp_lab::Netns,
    addr: SocketAddr,
    to: &xtcp_lab::Netns,
    len: usize,
) -> f64 {
    use std::io::{Read, Write};
    let l = tcp_listen(from, addr).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let buf = vec![7u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            s.write_all(&buf[..n]).unwrap();
            left -= n;
        }
    });
    let mut c = tcp_connect(to, addr, Duration::from_secs(5)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < len {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "early EOF at {got}");
        got += n;
    }
    server.join().unwrap();
    t.elapsed().as_secs_f64()
}

/// Bulk TCP from `inet` (the relay's place) is not throttled by the delay:
/// held in `OUTPUT`, the sender's packets would count against TCP Small
/// Queues and cut its throughput twentyfold (observed: 2 MiB in 7.7 s against
/// 0.35 s forwarded); `Lab::delay` holds them on arrival instead.
#[test]
fn delay_leaves_tcp_from_inet_as_fast_as_forwarded_tcp() {
    require_root();
    let lab = Lab::new(NatKind::None.into(), NatKind::None.into()).unwrap();
    let guard = lab.delay(Duration::from_millis(20)).unwrap();
    let len = 2 << 20;
    let local = tcp_bulk_secs(
        lab.inet(),
        SocketAddr::from((RELAY, 7200)),
        lab.peer(Site::A),
        len,
    );
    let fwd = tcp_bulk_secs(
        lab.peer(Site::B),
        SocketAddr::from((lab.peer_addr(Site::B), 7201)),
        lab.peer(Site::A),
        len,
    );
    guard.check().unwrap();
    eprintln!("2 MiB at 40 ms RTT: from inet {local:.2} s, forwarded {fwd:.2} s");
    // Generous: same path length, same RTT; the flaw made it 20×.
    assert!(
        local < 3.0 * fwd + 1.0,
        "from inet {local:.2} s, forwarded {fwd:.2} s"
    );
}
