//! Packet translation between IPv4/TCP (what a TUN device carries) and XTCP
//! datagrams (`spec/xtcp.md` §2, §11). Pure functions: no I/O, no state; every
//! input either translates or returns a [`TranslateError`], none panics.
//!
//! ```text
//!  kernel side (TUN)                         XTCP side (UDP payload)
//! +-----------+---------------------+       +------------+---------------------+
//! | IPv4 hdr  | TCP hdr+opts | data | <---> | XTCP hdr   | TCP hdr+opts | data |
//! | 20..60 B  | checksum: pseudo-hdr|       | 12 B       | checksum: §2.5      |
//! +-----------+---------------------+       +------------+---------------------+
//! ```
//!
//! The TCP header, options and payload are carried unchanged except for the
//! checksum (recomputed for the other side's rule) and, towards the kernel,
//! the ports (the connection's kernel-side 4-tuple, §11).

use proto::xtcp::wire::{internet_checksum, ones_complement_sum, Segment, WireError};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// IPv4 header length without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// TCP header length without options.
pub const TCP_HEADER_LEN: usize = 20;
/// XTCP header length (§2.1).
pub const XTCP_HEADER_LEN: usize = 12;
const PROTO_TCP: u8 = 6;

/// Why a packet or datagram does not translate (it is dropped and counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TranslateError {
    /// Shorter than its headers say.
    Truncated,
    /// Not an IPv4 packet (e.g. IPv6 neighbour discovery on the TUN).
    NotIpv4,
    /// IPv4 header length or total length inconsistent.
    BadIpHeader,
    /// IPv4 header checksum wrong.
    BadIpChecksum,
    /// Not TCP.
    NotTcp,
    /// A fragment (the kernel sets DF on TCP; the bridge does not reassemble).
    Fragment,
    /// TCP data offset below 5 or past the end.
    BadDataOffset,
    /// TCP checksum (IPv4 pseudo-header) wrong.
    BadTcpChecksum,
    /// The XTCP datagram did not pass `Segment::new_checked` and the §2.5 checksum.
    Xtcp(WireError),
    /// Output buffer too small.
    BufferTooSmall,
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TranslateError::Truncated => f.write_str("truncated"),
            TranslateError::NotIpv4 => f.write_str("not ipv4"),
            TranslateError::BadIpHeader => f.write_str("bad ipv4 header"),
            TranslateError::BadIpChecksum => f.write_str("bad ipv4 header checksum"),
            TranslateError::NotTcp => f.write_str("not tcp"),
            TranslateError::Fragment => f.write_str("ipv4 fragment"),
            TranslateError::BadDataOffset => f.write_str("bad tcp data offset"),
            TranslateError::BadTcpChecksum => f.write_str("bad tcp checksum"),
            TranslateError::Xtcp(e) => write!(f, "xtcp: {e:?}"),
            TranslateError::BufferTooSmall => f.write_str("buffer too small"),
        }
    }
}

impl std::error::Error for TranslateError {}

/// A validated IPv4/TCP packet: addresses and the TCP segment (header,
/// options and payload, checksum verified).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Tcp<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tcp: &'a [u8],
}

impl Ipv4Tcp<'_> {
    /// Source address and port.
    pub fn src_sock(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.src, u16::from_be_bytes([self.tcp[0], self.tcp[1]]))
    }
    /// Destination address and port.
    pub fn dst_sock(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.dst, u16::from_be_bytes([self.tcp[2], self.tcp[3]]))
    }
}

/// Checks that `tcp` holds a whole TCP header (data offset 5..=15, within `tcp`).
fn check_tcp(tcp: &[u8]) -> Result<(), TranslateError> {
    if tcp.len() < TCP_HEADER_LEN {
        return Err(TranslateError::Truncated);
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < TCP_HEADER_LEN || doff > tcp.len() {
        return Err(TranslateError::BadDataOffset);
    }
    Ok(())
}

/// The TCP checksum of `tcp` over the IPv4 pseudo-header (RFC 9293 §3.1),
/// with bytes 16–17 of `tcp` taken as they are (zero them to compute, leave
/// them to verify: a correct segment then yields 0).
pub fn tcp_checksum_v4(src: Ipv4Addr, dst: Ipv4Addr, tcp: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = PROTO_TCP;
    // A segment longer than 65535 bytes cannot come from an IPv4 packet.
    pseudo[10..12].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
    let a = u32::from(ones_complement_sum(&pseudo));
    let b = u32::from(ones_complement_sum(tcp));
    let mut s = a + b;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Validates an IPv4 packet read from the TUN device and returns its TCP
/// segment. Checks: version 4, header length, total length (trailing bytes
/// beyond it are ignored, as IP does), header checksum, protocol TCP, not a
/// fragment, TCP data offset, TCP checksum.
pub fn parse_ipv4_tcp(pkt: &[u8]) -> Result<Ipv4Tcp<'_>, TranslateError> {
    let first = *pkt.first().ok_or(TranslateError::Truncated)?;
    if first >> 4 != 4 {
        return Err(TranslateError::NotIpv4);
    }
    if pkt.len() < IPV4_HEADER_LEN {
        return Err(TranslateError::Truncated);
    }
    let ihl = usize::from(first & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < IPV4_HEADER_LEN || total < ihl {
        return Err(TranslateError::BadIpHeader);
    }
    if total > pkt.len() {
        return Err(TranslateError::Truncated);
    }
    if internet_checksum(&pkt[..ihl]) != 0 {
        return Err(TranslateError::BadIpChecksum);
    }
    if pkt[9] != PROTO_TCP {
        return Err(TranslateError::NotTcp);
    }
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    if frag & 0x3fff != 0 {
        return Err(TranslateError::Fragment);
    }
    let tcp = &pkt[ihl..total];
    check_tcp(tcp)?;
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    if tcp_checksum_v4(src, dst, tcp) != 0 {
        return Err(TranslateError::BadTcpChecksum);
    }
    Ok(Ipv4Tcp { src, dst, tcp })
}

/// Writes the XTCP datagram for TCP segment `tcp` under connection id
/// `conn_id` into `out` and returns its length: XTCP header (version 1, flags
/// and reserved zero), the segment unchanged, checksum per §2.5.
pub fn tcp_to_xtcp(tcp: &[u8], conn_id: u64, out: &mut [u8]) -> Result<usize, TranslateError> {
    check_tcp(tcp)?;
    let len = XTCP_HEADER_LEN + tcp.len();
    let out = out.get_mut(..len).ok_or(TranslateError::BufferTooSmall)?;
    out[0] = proto::xtcp::wire::XTCP_VERSION;
    out[1..4].fill(0);
    out[4..12].copy_from_slice(&conn_id.to_be_bytes());
    out[12..].copy_from_slice(tcp);
    out[28..30].fill(0);
    let c = internet_checksum(out);
    out[28..30].copy_from_slice(&c.to_be_bytes());
    Ok(len)
}

/// Validates an XTCP datagram (§2.6 checks 1–7: version, lengths, checksum,
/// reserved) and returns its connection id and TCP segment. Options are not
/// parsed: the kernel judges them itself.
pub fn parse_xtcp(d: &[u8]) -> Result<(u64, &[u8]), TranslateError> {
    let seg = Segment::new_checked(d).map_err(TranslateError::Xtcp)?;
    if !seg.verify_checksum() {
        return Err(TranslateError::Xtcp(WireError::BadChecksum));
    }
    if seg.xtcp_reserved() != 0 {
        return Err(TranslateError::Xtcp(WireError::Reserved));
    }
    Ok((seg.conn_id(), &d[XTCP_HEADER_LEN..]))
}

/// Writes the IPv4 packet carrying TCP segment `tcp` from `src` to `dst`
/// into `out` and returns its length. The ports are set from `src` and `dst`
/// (the connection's kernel-side 4-tuple); the TCP checksum is recomputed
/// over the IPv4 pseudo-header. IPv4: no options, DSCP/ECN 0, ID 0, DF, TTL 64.
pub fn tcp_to_ipv4(
    tcp: &[u8],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    out: &mut [u8],
) -> Result<usize, TranslateError> {
    check_tcp(tcp)?;
    let len = IPV4_HEADER_LEN + tcp.len();
    let total = u16::try_from(len).map_err(|_| TranslateError::BufferTooSmall)?;
    let out = out.get_mut(..len).ok_or(TranslateError::BufferTooSmall)?;
    let (ip, seg) = out.split_at_mut(IPV4_HEADER_LEN);
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = internet_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    seg.copy_from_slice(tcp);
    seg[0..2].copy_from_slice(&src.port().to_be_bytes());
    seg[2..4].copy_from_slice(&dst.port().to_be_bytes());
    seg[16..18].fill(0);
    let c = tcp_checksum_v4(*src.ip(), *dst.ip(), seg);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN sent by Linux through a TUN device (read from the TUN fd): 198.18.0.1:41234 → 198.18.0.2:5000, MSS 1460, SACK-permitted,
    /// timestamps, window scale 10. Both checksums were computed by the kernel.
    const KERNEL_SYN: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x70, 0x59, 0x40, 0x00, 0x40, 0x06, 0x3e, 0x3b, 0xc6, 0x12, 0x00,
        0x01, 0xc6, 0x12, 0x00, 0x02, 0xa1, 0x12, 0x13, 0x88, 0xbe, 0x84, 0xdd, 0x08, 0x00, 0x00,
        0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x2d, 0x2e, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04,
        0x02, 0x08, 0x0a, 0xe5, 0xf4, 0x5d, 0x99, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
    ];

    fn kernel_syn() -> Vec<u8> {
        KERNEL_SYN.to_vec()
    }

    #[test]
    fn known_vector_verifies_and_recomputes() {
        let p = kernel_syn();
        let t = parse_ipv4_tcp(&p).expect("kernel SYN parses");
        assert_eq!(t.src_sock(), "198.18.0.1:41234".parse().unwrap());
        assert_eq!(t.dst_sock(), "198.18.0.2:5000".parse().unwrap());
        // Recompute from scratch: same bytes as the kernel's.
        let mut out = [0u8; 128];
        let n = tcp_to_ipv4(t.tcp, t.src_sock(), t.dst_sock(), &mut out).unwrap();
        assert_eq!(&out[36..38], &p[36..38], "tcp checksum as the kernel's");
        assert_eq!(n, p.len());
    }

    #[test]
    fn round_trip_both_ways() {
        let p = kernel_syn();
        let t = parse_ipv4_tcp(&p).unwrap();
        let mut x = [0u8; 128];
        let n = tcp_to_xtcp(t.tcp, 0x0123_4567_89ab_cdef, &mut x).unwrap();
        assert_eq!(n, 12 + t.tcp.len());
        // The XTCP codec accepts it, options included.
        let repr = proto::xtcp::wire::SegmentRepr::parse(&x[..n]).unwrap();
        assert_eq!(repr.conn_id, 0x0123_4567_89ab_cdef);
        assert_eq!(repr.options.mss, Some(1460));
        let (id, tcp) = parse_xtcp(&x[..n]).unwrap();
        assert_eq!(id, 0x0123_4567_89ab_cdef);
        let mut back = [0u8; 128];
        let m = tcp_to_ipv4(tcp, t.src_sock(), t.dst_sock(), &mut back).unwrap();
        // Identical TCP segment (ID, TTL and DF may differ in the IP header).
        assert_eq!(&back[20..m], &p[20..]);
        assert!(parse_ipv4_tcp(&back[..m]).is_ok());
    }

    #[test]
    fn ports_rewritten_towards_kernel() {
        let p = kernel_syn();
        let t = parse_ipv4_tcp(&p).unwrap();
        let (s, d) = (
            "198.18.0.2:7".parse().unwrap(),
            "198.18.0.1:9".parse().unwrap(),
        );
        let mut out = [0u8; 128];
        let n = tcp_to_ipv4(t.tcp, s, d, &mut out).unwrap();
        let t2 = parse_ipv4_tcp(&out[..n]).unwrap();
        assert_eq!((t2.src_sock(), t2.dst_sock()), (s, d));
    }

    #[test]
    fn corruption_detected() {
        let p = kernel_syn();
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] ^= 0x10;
            // Every single-bit flip fails somewhere (no panic) or, for a few
            // IP header fields, leaves a packet whose checksum still fails.
            assert!(parse_ipv4_tcp(&q).is_err(), "flip at {i} accepted");
        }
        let t = parse_ipv4_tcp(&p).unwrap();
        let mut x = [0u8; 128];
        let n = tcp_to_xtcp(t.tcp, 7, &mut x).unwrap();
        for i in 0..n {
            let mut q = x[..n].to_vec();
            q[i] ^= 0x01;
            assert!(parse_xtcp(&q).is_err(), "xtcp flip at {i} accepted");
        }
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let p = kernel_syn();
        assert_eq!(parse_ipv4_tcp(&[]), Err(TranslateError::Truncated));
        assert_eq!(parse_ipv4_tcp(&[0x60; 40]), Err(TranslateError::NotIpv4));
        assert_eq!(parse_ipv4_tcp(&p[..19]), Err(TranslateError::Truncated));
        assert_eq!(parse_ipv4_tcp(&p[..50]), Err(TranslateError::Truncated));
        let mut q = p.clone();
        q[0] = 0x44;
        assert_eq!(parse_ipv4_tcp(&q), Err(TranslateError::BadIpHeader));
        let mut buf = [0u8; 8];
        assert_eq!(
            tcp_to_xtcp(&p[20..], 1, &mut buf),
            Err(TranslateError::BufferTooSmall)
        );
        assert_eq!(
            tcp_to_ipv4(
                &p[20..30],
                "1.1.1.1:1".parse().unwrap(),
                "1.1.1.1:1".parse().unwrap(),
                &mut [0u8; 128]
            ),
            Err(TranslateError::Truncated)
        );
        assert!(matches!(parse_xtcp(&[1; 31]), Err(TranslateError::Xtcp(_))));
        assert!(matches!(parse_xtcp(&[2; 40]), Err(TranslateError::Xtcp(_))));
    }

    /// No input panics: every prefix and a sweep of pseudo-random buffers.
    #[test]
    fn never_panics() {
        let p = kernel_syn();
        let mut out = [0u8; 256];
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..=p.len() {
            let _ = parse_ipv4_tcp(&p[..len]);
            let _ = parse_xtcp(&p[..len]);
            let _ = tcp_to_xtcp(&p[..len], 1, &mut out);
        }
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 120) as usize;
            let mut b: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            if let Some(f) = b.first_mut() {
                *f = if x & 1 == 0 { 0x45 } else { 1 };
            }
            let _ = parse_ipv4_tcp(&b);
            let _ = parse_xtcp(&b);
            let _ = tcp_to_xtcp(&b, x, &mut out);
            let _ = tcp_to_ipv4(
                &b,
                "1.2.3.4:5".parse().unwrap(),
                "5.6.7.8:9".parse().unwrap(),
                &mut out,
            );
        }
    }
}
