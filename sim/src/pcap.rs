//! A minimal pcap writer: LINKTYPE_RAW, with IPv4/UDP (or IPv6/UDP) headers
//! synthesized around each datagram so Wireshark can dissect the payload.

use proto::Instant;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;

const LINKTYPE_RAW: u32 = 101;
const SNAPLEN: u32 = 65_535;

/// Where in a datagram's life it is written to the capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapturePoint {
    /// As the sending node emits it (before any impairment), at the send time:
    /// what `tcpdump` on the senders would show. Dropped datagrams appear.
    Send,
    /// As the receiving node gets it (after corruption, duplicates included),
    /// at the arrival time. Dropped datagrams do not appear.
    Deliver,
}

#[derive(Debug)]
pub(crate) struct Pcap {
    out: BufWriter<File>,
    pub point: CapturePoint,
    scratch: Vec<u8>,
    error: Option<io::Error>,
}

fn sum16(mut acc: u32, b: &[u8]) -> u32 {
    let mut it = b.chunks_exact(2);
    for c in &mut it {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = it.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

impl Pcap {
    pub fn create(path: &Path, point: CapturePoint) -> io::Result<Pcap> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&SNAPLEN.to_le_bytes())?;
        out.write_all(&LINKTYPE_RAW.to_le_bytes())?;
        Ok(Pcap {
            out,
            point,
            scratch: Vec::with_capacity(2048),
            error: None,
        })
    }

    /// Builds IP + UDP headers around `data` into the scratch buffer.
    fn build(&mut self, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        let p = &mut self.scratch;
        p.clear();
        let udp_len = 8 + data.len();
        let udp_len16 = u16::try_from(udp_len).unwrap_or(u16::MAX);
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = u16::try_from(20 + udp_len).unwrap_or(u16::MAX);
                let mut h = [0u8; 20];
                h[0] = 0x45;
                h[2..4].copy_from_slice(&total.to_be_bytes());
                h[6] = 0x40; // DF
                h[8] = 64; // TTL
                h[9] = 17; // UDP
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                let c = fold(sum16(0, &h));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                p.extend_from_slice(&h);
                p.extend_from_slice(&src.port().to_be_bytes());
                p.extend_from_slice(&dst.port().to_be_bytes());
                p.extend_from_slice(&udp_len16.to_be_bytes());
                p.extend_from_slice(&[0, 0]); // no checksum (allowed over IPv4)
            }
            (s, d) => {
                let (s, d) = (v6(s), v6(d));
                let mut h = [0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&udp_len16.to_be_bytes());
                h[6] = 17;
                h[7] = 64;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                let mut u = [0u8; 8];
                u[0..2].copy_from_slice(&src.port().to_be_bytes());
                u[2..4].copy_from_slice(&dst.port().to_be_bytes());
                u[4..6].copy_from_slice(&udp_len16.to_be_bytes());
                // Checksum is mandatory over IPv6: pseudo-header + UDP.
                let mut acc = sum16(0, &h[8..40]);
                acc += udp_len as u32 + 17;
                acc = sum16(acc, &u);
                acc = sum16(acc, data);
                let c = match fold(acc) {
                    0 => 0xffff,
                    c => c,
                };
                u[6..8].copy_from_slice(&c.to_be_bytes());
                p.extend_from_slice(&h);
                p.extend_from_slice(&u);
            }
        }
        p.extend_from_slice(data);
    }

    pub fn write(&mut self, at: Instant, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.build(src, dst, data);
        let us = at.as_micros();
        let orig = u32::try_from(self.scratch.len()).unwrap_or(u32::MAX);
        let incl = orig.min(SNAPLEN);
        let r = (|| {
            self.out
                .write_all(&((us / 1_000_000) as u32).to_le_bytes())?;
            self.out
                .write_all(&((us % 1_000_000) as u32).to_le_bytes())?;
            self.out.write_all(&incl.to_le_bytes())?;
            self.out.write_all(&orig.to_le_bytes())?;
            self.out.write_all(&self.scratch[..incl as usize])
        })();
        if let Err(e) = r {
            self.error = Some(e);
        }
    }

    pub fn finish(mut self) -> io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()
    }
}
