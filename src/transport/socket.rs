//! Batched datagram I/O of the driver (quinn-udp): the send side groups
//! datagrams into GSO batches, the receive side reads `recvmmsg` slots and
//! splits GRO super-datagrams; and the socket's path MTU discovery setting.

use super::driver::Shared;
use proto::xtcp::endpoint::Endpoint;
use std::io;
use std::net::SocketAddr;

/// Path MTU discovery as the kernel does it by default for UDP sockets.
///
/// quinn-udp switches it to `IP_PMTUDISC_PROBE` (DF set, ICMP "fragmentation
/// needed" ignored) because QUIC finds the path MTU itself. XTCP does not: it
/// sends 1472-byte datagrams and relies on the kernel, which after such an
/// ICMP message fragments them locally (`IP_PMTUDISC_WANT`, ip(7)). Without
/// that, a path with a smaller MTU (PPPoE, a VPN) would drop every full-sized
/// datagram for good. A GSO send larger than a lowered path MTU fails with
/// `EINVAL`, on which quinn-udp stops using GSO for the socket.
#[cfg(target_os = "linux")]
pub(super) mod pmtu {
    use nix::libc;
    use nix::{setsockopt_impl, sockopt_impl};

    sockopt_impl!(
        IpMtuDiscover,
        SetOnly,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::c_int
    );
    sockopt_impl!(
        Ipv6MtuDiscover,
        SetOnly,
        libc::IPPROTO_IPV6,
        libc::IPV6_MTU_DISCOVER,
        libc::c_int
    );

    pub(in crate::transport) fn restore_default(sock: &std::net::UdpSocket) {
        // Best effort, like the buffer sizes: an error leaves quinn-udp's setting.
        let _ = nix::sys::socket::setsockopt(sock, IpMtuDiscover, &libc::IP_PMTUDISC_WANT);
        if sock.local_addr().is_ok_and(|a| a.is_ipv6()) {
            let _ = nix::sys::socket::setsockopt(sock, Ipv6MtuDiscover, &libc::IPV6_PMTUDISC_WANT);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) mod pmtu {
    pub(in crate::transport) fn restore_default(_sock: &std::net::UdpSocket) {}
}

/// Datagrams gathered per send pass (then sent in GSO batches). Kept within
/// a few read batches (`RX_SLOTS`) so that a driver with much to send still
/// reads often: in the 10,000-connection test, 128 took 18-32 s per run
/// (median 22 s, 10-23 k `RcvbufErrors`), 32 took 14-38 s (median 15 s,
/// median 5.6 k); bulk goodput on the veth bench did not drop.
pub(super) const TX_DATAGRAMS: usize = 32;
/// Largest UDP payload one GSO send may carry (IPv4: 65535 − IP and UDP headers).
const MAX_GSO_BYTES: usize = 65_507;
/// Receive buffer per `recvmmsg` slot: one GRO super-datagram at most.
const RX_SLOT: usize = 65_536;
/// Slots per `recvmmsg`, i.e. datagrams (or GRO super-datagrams) handled
/// before the driver sends again. Small on purpose: what it sends then
/// includes the ACK for what it just read, and a receiver that read 32
/// before acknowledging held back the sender's window. On the veth bench
/// (256 MiB) 8 instead of 32 gave 1.4× the goodput at 1 % loss and 1.15×
/// without loss, at less sender CPU per byte; 4 starved the receiver
/// (3.5× its CPU per byte without loss).
const RX_SLOTS: usize = if quinn_udp::BATCH_SIZE < 8 {
    quinn_udp::BATCH_SIZE
} else {
    8
};

/// One GSO send: datagrams to one destination, laid end to end in
/// [`Tx::buf`], all `seg` bytes long but the last, which may be shorter
/// (the rule of Linux's `UDP_SEGMENT`).
struct TxBatch {
    to: SocketAddr,
    start: usize,
    len: usize,
    seg: usize,
}

/// The send side of the driver: datagrams polled from the endpoint, grouped
/// into GSO batches, and the buffer they are written into (allocated once).
pub(super) struct Tx {
    buf: Vec<u8>,
    slot: usize,
    batches: Vec<TxBatch>,
}

impl Tx {
    pub(super) fn new() -> Tx {
        Tx {
            buf: Vec::new(),
            slot: 0,
            batches: Vec::with_capacity(TX_DATAGRAMS),
        }
    }

    /// Poll up to [`TX_DATAGRAMS`] datagrams; returns how many. Consecutive
    /// datagrams of equal size to one destination join one batch of at most
    /// `max_segs` segments.
    pub(super) fn fill(
        &mut self,
        ep: &mut Endpoint,
        now: proto::Instant,
        max_segs: usize,
    ) -> usize {
        self.batches.clear();
        let slot = ep.config().conn.max_datagram_size.max(1500);
        if self.slot != slot {
            self.slot = slot;
            self.buf = vec![0u8; slot * TX_DATAGRAMS];
        }
        let mut used = 0;
        let mut n = 0;
        while n < TX_DATAGRAMS {
            let Some(dst) = self.buf.get_mut(used..used + slot) else {
                break;
            };
            let Some(t) = ep.poll_transmit(now, dst) else {
                break;
            };
            n += 1;
            let size = t.size.min(slot);
            if size == 0 {
                continue;
            }
            match self.batches.last_mut() {
                Some(b)
                    if b.to == t.destination
                        && b.len % b.seg == 0
                        && size <= b.seg
                        && b.len / b.seg < max_segs
                        && b.len + size <= MAX_GSO_BYTES =>
                {
                    b.len += size;
                }
                _ => self.batches.push(TxBatch {
                    to: t.destination,
                    start: used,
                    len: size,
                    seg: size,
                }),
            }
            used += size;
        }
        n
    }

    /// Send the batches. A send error other than "would block" (e.g.
    /// unreachable) loses the datagrams: XTCP retransmits.
    pub(super) async fn send(&self, shared: &Shared) {
        for b in &self.batches {
            let Some(contents) = self.buf.get(b.start..b.start + b.len) else {
                continue;
            };
            let t = quinn_udp::Transmit {
                destination: b.to,
                ecn: None,
                contents,
                segment_size: (b.len > b.seg).then_some(b.seg),
                src_ip: None,
            };
            loop {
                let r = shared.socket.try_io(tokio::io::Interest::WRITABLE, || {
                    shared.udp.send((&shared.socket).into(), &t)
                });
                match r {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if shared.socket.writable().await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
    }
}

/// The receive side of the driver: `recvmmsg` slots (each may hold a GRO
/// super-datagram) and their metadata, allocated once.
pub(super) struct Rx {
    buf: Vec<u8>,
    meta: Vec<quinn_udp::RecvMeta>,
}

impl Rx {
    pub(super) fn new() -> Rx {
        Rx {
            // Pages are touched only as datagrams fill them.
            buf: vec![0u8; RX_SLOT * RX_SLOTS],
            meta: vec![quinn_udp::RecvMeta::default(); RX_SLOTS],
        }
    }

    /// Read up to [`RX_SLOTS`] datagrams (one `recvmmsg`, without waiting)
    /// and feed every one to the endpoint, splitting GRO super-datagrams at
    /// their stride. Returns whether the socket may hold more.
    pub(super) fn pass(&mut self, shared: &Shared) -> bool {
        let n = {
            let mut chunks = self.buf.chunks_mut(RX_SLOT).map(io::IoSliceMut::new);
            let mut iovs: [io::IoSliceMut<'_>; RX_SLOTS] =
                std::array::from_fn(|_| chunks.next().unwrap_or(io::IoSliceMut::new(&mut [])));
            let r = shared.socket.try_io(tokio::io::Interest::READABLE, || {
                shared
                    .udp
                    .recv((&shared.socket).into(), &mut iovs, &mut self.meta)
            });
            match r {
                Ok(n) => n,
                // WouldBlock, or an error (e.g. ICMP unreachable reported
                // on the socket): nothing more to read now.
                Err(_) => return false,
            }
        };
        let mut g = shared.lock();
        let now = g.now();
        for (meta, slot) in self.meta.iter().zip(self.buf.chunks(RX_SLOT)).take(n) {
            let Some(data) = slot.get(..meta.len) else {
                continue;
            };
            let stride = if meta.stride == 0 {
                data.len().max(1)
            } else {
                meta.stride
            };
            for d in data.chunks(stride) {
                g.input(now, meta.addr, d);
            }
        }
        true
    }
}
