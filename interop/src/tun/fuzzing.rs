//! Fuzz oracle for the TUN bridge's translation (`spec/xtcp.md` §11): the
//! `tun_translate` target in `fuzz/` is one line calling [`tun_translate`],
//! and `interop/tests/fuzz_corpus.rs` replays its committed corpus.

use super::translate::{parse_ipv4_tcp, parse_xtcp, tcp_to_ipv4, tcp_to_xtcp, IPV4_HEADER_LEN};
use super::{BridgeConfig, State, ACK, SYN};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// The TCP header with the checksum (bytes 16–17) zeroed, and optionally the
/// ports (bytes 0–3): the bytes §11 says pass unchanged.
fn carried(tcp: &[u8], ports: bool) -> Vec<u8> {
    let mut t = tcp.to_vec();
    t[16..18].fill(0);
    if ports {
        t[0..4].fill(0);
    }
    t
}

/// TUN translation oracle. The whole input is tried as an XTCP datagram, as
/// an IPv4 packet and as a bare TCP segment; none may panic. Where a
/// translation succeeds, the round trip holds (§11):
///
/// * XTCP → IPv4 → XTCP: the IPv4 packet parses (both checksums right),
///   carries the 4-tuple it was given (ports rewritten), and every other
///   TCP byte unchanged; translated back under the same id it is the
///   original datagram but for the ports, the checksum and the XTCP flags
///   (zero towards XTCP).
/// * IPv4 → XTCP → IPv4: the datagram parses (§2.6 checks 1–7) with the id
///   given and the TCP segment unchanged but for the checksum; back to IPv4
///   with the packet's own 4-tuple it is the same segment, addresses and
///   ports included.
///
/// Then, if byte 0 is odd, the input drives the bridge's flow table
/// ([`drive_bridge`]).
pub fn tun_translate(data: &[u8]) {
    // Every translation adds at most 20 bytes to what it was given.
    let mut a = vec![0u8; data.len() + 64];
    let mut b = vec![0u8; data.len() + 64];
    let virt = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7);
    let kernel = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5000);
    if let Ok((id, tcp)) = parse_xtcp(data) {
        let n = tcp_to_ipv4(tcp, virt, kernel, &mut a);
        if tcp.len() + IPV4_HEADER_LEN > usize::from(u16::MAX) {
            assert!(n.is_err(), "an IPv4 packet over 65535 bytes");
        } else {
            // ok: the oracle asserts this property; a failure is the finding.
            let n = n.expect("a valid XTCP segment translates to IPv4");
            let p = parse_ipv4_tcp(&a[..n]).expect("the translated packet parses");
            assert_eq!((p.src_sock(), p.dst_sock()), (virt, kernel), "4-tuple");
            assert_eq!(
                carried(p.tcp, true),
                carried(tcp, true),
                "TCP bytes changed"
            );
            let m = tcp_to_xtcp(p.tcp, id, &mut b).expect("and back to XTCP");
            let (id2, tcp2) = parse_xtcp(&b[..m]).expect("the datagram parses");
            assert_eq!(id2, id, "connection id");
            assert_eq!(carried(tcp2, true), carried(tcp, true), "TCP bytes changed");
            assert_eq!(b[1], 0, "XTCP flags towards XTCP");
        }
    }
    if let Ok(p) = parse_ipv4_tcp(data) {
        let id = 0x0123_4567_89ab_cdef;
        // ok: the oracle asserts this property; a failure is the finding.
        let m = tcp_to_xtcp(p.tcp, id, &mut a).expect("a valid IPv4/TCP packet translates");
        let (id2, tcp) = parse_xtcp(&a[..m]).expect("the datagram parses");
        assert_eq!(id2, id, "connection id");
        assert_eq!(
            carried(tcp, false),
            carried(p.tcp, false),
            "TCP bytes changed"
        );
        let n = tcp_to_ipv4(tcp, p.src_sock(), p.dst_sock(), &mut b).expect("and back");
        let q = parse_ipv4_tcp(&b[..n]).expect("the packet parses");
        assert_eq!((q.src, q.dst), (p.src, p.dst), "addresses");
        assert_eq!(
            carried(q.tcp, false),
            carried(p.tcp, false),
            "TCP bytes changed"
        );
    }
    // A bare segment: whatever translates parses on the other side.
    if let Ok(m) = tcp_to_xtcp(data, 9, &mut a) {
        assert!(
            parse_xtcp(&a[..m]).is_ok(),
            "tcp_to_xtcp wrote a bad datagram"
        );
    }
    if let Ok(n) = tcp_to_ipv4(data, virt, kernel, &mut a) {
        assert!(
            parse_ipv4_tcp(&a[..n]).is_ok(),
            "tcp_to_ipv4 wrote a bad packet"
        );
    }
    if data.first().is_some_and(|b| b & 1 == 1) {
        drive_bridge(&data[1..]);
    }
}

/// The bridge's flow table and monitor fed a sequence of segments from both
/// sides, built from the input so that most pass the checksums: each step is
/// a direction, flags, a small id or port choice, sequence and ack offsets,
/// a window, options and a payload length. Whatever the bridge forwards is
/// well formed, goes towards XTCP under an id it handed out or learned, and
/// towards the kernel with the kernel-side 4-tuple of that id's flow (§11
/// "Ports"); the tables stay consistent and bounded.
fn drive_bridge(mut d: &[u8]) {
    let mut next = |n: usize| -> Option<Vec<u8>> {
        let (a, b) = d.split_at_checked(n)?;
        d = b;
        Some(a.to_vec())
    };
    let mut cfg = BridgeConfig::new(SocketAddr::from(([127, 0, 0, 1], 9)));
    cfg.loss_to_xtcp = 0.1;
    cfg.loss_to_kernel = 0.1;
    let mut s = State::new(cfg.clone(), 1);
    let mut ids: Vec<u64> = vec![1, 2];
    let mut out = vec![0u8; 4096];
    let mut pkt = vec![0u8; 4096];
    while let Some(h) = next(10) {
        let (op, flags, pick) = (h[0], h[1], usize::from(h[2]));
        let seq = u32::from_be_bytes([h[3], h[4], 0, 0]).wrapping_add(u32::from(h[5]));
        let ack = u32::from_be_bytes([h[6], h[7], 0, 0]);
        let window = u16::from_be_bytes([h[8], h[9]]);
        let optlen = usize::from(op >> 4 & 3) * 4;
        let Some(opts) = next(optlen) else { break };
        let payload = usize::from(op >> 6) * 300;
        let mut tcp = vec![0u8; 20];
        // Few ports, the listener's among them, so tuples collide and recur.
        const PORTS: [u16; 4] = [5000, 5001, 6000, 6001];
        let ports = [PORTS[pick % 4], PORTS[pick / 4 % 4]];
        tcp[0..2].copy_from_slice(&ports[0].to_be_bytes());
        tcp[2..4].copy_from_slice(&ports[1].to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&ack.to_be_bytes());
        tcp[12] = (((20 + optlen) / 4) << 4) as u8;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&window.to_be_bytes());
        tcp.extend_from_slice(&opts);
        tcp.resize(tcp.len() + payload, 0xab);
        if op & 1 == 0 {
            // From the kernel, on one of a few 4-tuples.
            let k = SocketAddrV4::new(cfg.kernel_addr, ports[0]);
            let v = SocketAddrV4::new(cfg.virt_addr, ports[1]);
            let Ok(n) = tcp_to_ipv4(&tcp, k, v, &mut pkt) else {
                continue;
            };
            if op & 2 != 0 {
                pkt[n / 2] ^= h[5] | 1; // corrupt one byte: must be refused
            }
            if let Some((m, to)) = s.on_kernel_packet(&pkt[..n], &mut out) {
                let (id, seg) = parse_xtcp(&out[..m]).expect("forwarded datagram parses");
                let fi = *s.by_id.get(&id).expect("an id the bridge knows");
                assert_eq!(to, s.flows[fi].xtcp, "sent where the flow's XTCP side is");
                assert_eq!(
                    (s.flows[fi].kernel, s.flows[fi].virt),
                    (k, v),
                    "id of another flow"
                );
                assert_eq!(
                    carried(seg, false),
                    carried(&tcp, false),
                    "TCP bytes changed"
                );
                ids.push(id);
            }
        } else {
            // From XTCP, under an id seen before or a new one.
            let id = ids
                .get(pick % (ids.len() + 1))
                .copied()
                .unwrap_or(u64::from(h[3]));
            let Ok(n) = tcp_to_xtcp(&tcp, id, &mut pkt) else {
                continue;
            };
            if op & 2 != 0 {
                pkt[n / 2] ^= h[5] | 1;
            }
            let from = SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(op >> 6)));
            if let Some(m) = s.on_xtcp_datagram(&pkt[..n], from, &mut out) {
                let p = parse_ipv4_tcp(&out[..m]).expect("forwarded packet parses");
                let fi = *s.by_id.get(&id).expect("an id the bridge knows");
                let f = &s.flows[fi];
                assert_eq!((p.src_sock(), p.dst_sock()), (f.virt, f.kernel), "4-tuple");
                assert_eq!(
                    f.xtcp, from,
                    "replies go where the flow was last heard from"
                );
                assert_eq!(
                    carried(p.tcp, true),
                    carried(&tcp, true),
                    "TCP bytes changed"
                );
                if flags & (SYN | ACK) == SYN {
                    ids.push(id);
                }
            }
        }
        assert!(s.flows.len() <= super::MAX_FLOWS, "flow table unbounded");
        for (&id, &fi) in &s.by_id {
            assert_eq!(s.flows.get(fi).map(|f| f.id), Some(id), "by_id stale");
        }
        for (&(k, v), &fi) in &s.by_tuple {
            let f = s.flows.get(fi).expect("by_tuple index in range");
            assert_eq!((f.kernel, f.virt), (k, v), "by_tuple stale");
        }
    }
}
