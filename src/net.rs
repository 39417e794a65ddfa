//! XTCP on a real UDP socket: a tokio driver for the sans-IO [`proto::Endpoint`].
//!
//! ```text
//!   XtcpStream (AsyncRead/AsyncWrite) ─┐  lock, call proto, wake driver
//!   XtcpListener::accept ──────────────┤
//!                                      ▼
//!   driver task ── recvmmsg/GRO ─► Endpoint::handle_datagram ─► wake streams
//!               ── timer ────────► Endpoint::handle_timeout
//!               ── poll_transmit ─► GSO batches ─► sendmsg
//! ```
//!
//! One driver task per endpoint (in the style of quinn's `EndpointDriver`);
//! every connection of the endpoint shares its socket. Backpressure is end to
//! end: `poll_write` waits while the connection's send buffer is full, and the
//! receive window closes while the application does not read.
//!
//! Datagram I/O is batched with quinn-udp (the socket layer quinn runs on, kept
//! by its maintainers; the only unsafe code it takes here is nix's setsockopt
//! for `IP_MTU_DISCOVER`): on Linux, consecutive same-size datagrams to one
//! destination leave in one `sendmsg` with `UDP_SEGMENT` (GSO), and reads take
//! up to `RX_SLOTS` (8) datagrams per `recvmmsg`, each slot possibly a GRO
//! super-datagram that is split at its stride. Where the
//! kernel lacks them quinn-udp falls back to one datagram per call (and turns
//! GSO off by itself after the first `EIO`/`EINVAL`).
//!
//! Each turn of the driver reads first (the socket's queue is where a burst of
//! many connections overflows), then fires due timers, then sends at most
//! `TX_DATAGRAMS` datagrams (the ACKs for what it read among them) before
//! reading again. The driver before this one
//! sent everything it had before reading again, one datagram per syscall: in
//! the 10,000-connection test its socket's receive queue overflowed about 1.3
//! million times per run (`RcvbufErrors` in `/proc/net/snmp`), often enough
//! that ~1 % of the connects lost all seven SYNs or SYN-ACKs.

use proto::xtcp::conn::{Config, ConnectionError, ReadError, State, WriteError};
use proto::xtcp::endpoint::{ConnectionHandle, Endpoint, EndpointConfig};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// First bytes of datagrams that share an XTCP socket without being XTCP
/// (byte 0 of XTCP is its version, 1): the relay's UDP address service and
/// the peers' punch probes (`spec/direct.md` §4.3). Registered, with every
/// other first byte, in `proto::codec::registry`.
pub const SIDE_CHANNEL: std::ops::RangeInclusive<u8> =
    proto::codec::registry::datagram::SIDE_CHANNEL;
/// Longest side-channel datagram passed on (they are all small).
const SIDE_CHANNEL_MAX: usize = 256;
/// Side-channel datagrams queued at most before new ones are dropped.
const SIDE_CHANNEL_QUEUE: usize = 64;

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
mod pmtu {
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

    pub(super) fn restore_default(sock: &std::net::UdpSocket) {
        // Best effort, like the buffer sizes: an error leaves quinn-udp's setting.
        let _ = nix::sys::socket::setsockopt(sock, IpMtuDiscover, &libc::IP_PMTUDISC_WANT);
        if sock.local_addr().is_ok_and(|a| a.is_ipv6()) {
            let _ = nix::sys::socket::setsockopt(sock, Ipv6MtuDiscover, &libc::IPV6_PMTUDISC_WANT);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod pmtu {
    pub(super) fn restore_default(_sock: &std::net::UdpSocket) {}
}

/// Typed errors of XTCP streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XtcpError {
    /// The peer reset the connection.
    Reset,
    /// The peer refused the connection (RST to our SYN).
    Refused,
    /// User timeout, SYN retries or keepalive exhausted.
    TimedOut,
    /// This side aborted.
    Aborted,
    /// The endpoint's driver stopped.
    EndpointClosed,
}

impl fmt::Display for XtcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XtcpError::Reset => "connection reset by peer",
            XtcpError::Refused => "connection refused",
            XtcpError::TimedOut => "connection timed out",
            XtcpError::Aborted => "connection aborted",
            XtcpError::EndpointClosed => "endpoint closed",
        })
    }
}

impl std::error::Error for XtcpError {}

impl From<ConnectionError> for XtcpError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Reset => XtcpError::Reset,
            ConnectionError::Refused => XtcpError::Refused,
            ConnectionError::TimedOut => XtcpError::TimedOut,
            ConnectionError::Aborted => XtcpError::Aborted,
            _ => XtcpError::Reset,
        }
    }
}

impl From<XtcpError> for io::Error {
    fn from(e: XtcpError) -> io::Error {
        let kind = match e {
            XtcpError::Reset => io::ErrorKind::ConnectionReset,
            XtcpError::Refused => io::ErrorKind::ConnectionRefused,
            XtcpError::TimedOut => io::ErrorKind::TimedOut,
            XtcpError::Aborted => io::ErrorKind::ConnectionAborted,
            XtcpError::EndpointClosed => io::ErrorKind::NotConnected,
        };
        io::Error::new(kind, e)
    }
}

#[derive(Default)]
struct Wakers {
    read: Option<Waker>,
    write: Option<Waker>,
}

impl Wakers {
    fn wake_all(&mut self) {
        if let Some(w) = self.read.take() {
            w.wake();
        }
        if let Some(w) = self.write.take() {
            w.wake();
        }
    }
}

struct Inner {
    ep: Endpoint,
    epoch: std::time::Instant,
    wakers: HashMap<ConnectionHandle, Wakers>,
    /// Streams dropped by the application whose connections still close.
    dropped: std::collections::HashSet<ConnectionHandle>,
    accept: Option<Waker>,
    closed: bool,
    /// Where non-XTCP datagrams (first byte in [`SIDE_CHANNEL`]) go, if anywhere.
    side: Option<tokio::sync::mpsc::Sender<(SocketAddr, Vec<u8>)>>,
}

impl Inner {
    /// Hand `d` to the side channel when it is one of its datagrams (and the
    /// channel has room: a flood is dropped, never queued without bound).
    /// Returns whether the datagram was a side-channel one.
    fn side_channel(&mut self, from: SocketAddr, d: &[u8]) -> bool {
        //= spec/relay.md#RL-UDP-4
        //# | `0xA3..=0xAF` | unassigned; a receiver MUST drop them |
        if !d.first().is_some_and(|b| SIDE_CHANNEL.contains(b)) {
            return false;
        }
        if let Some(tx) = &self.side {
            if d.len() <= SIDE_CHANNEL_MAX {
                let _ = tx.try_send((from, d.to_vec()));
            }
        }
        true
    }

    /// Feed one received datagram (a GRO segment included) to the side
    /// channel or the XTCP endpoint.
    fn input(&mut self, now: proto::Instant, from: SocketAddr, d: &[u8]) {
        if self.side_channel(from, d) {
            return;
        }
        let h = self.ep.handle_datagram(now, from, d).ok().flatten();
        self.touch(h);
    }

    fn now(&self) -> proto::Instant {
        proto::Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    /// Wake whoever waits on connection `h` (an ACK may have freed send
    /// space or completed a close without raising an event).
    fn touch(&mut self, h: Option<ConnectionHandle>) {
        if let Some(w) = h.and_then(|h| self.wakers.get_mut(&h)) {
            w.wake_all();
        }
    }

    /// Drain the events of the connections that had input and wake whoever
    /// waits on them (O(touched), not O(connections)).
    fn dispatch(&mut self) {
        for h in self.ep.take_touched() {
            while self.ep.poll_event(h).is_some() {}
            // Input without an event (an ACK that completes a close, say) may
            // still matter to a waiter: wake on any input.
            if let Some(w) = self.wakers.get_mut(&h) {
                w.wake_all();
            }
            // A stream the application dropped goes once its connection is
            // drained (its last change touches it, so this sees it).
            if self.dropped.contains(&h) && self.ep.connection(h).is_none_or(|c| c.is_drained()) {
                self.dropped.remove(&h);
                self.wakers.remove(&h);
                self.ep.remove(h);
            }
        }
        if let Some(w) = self.accept.take() {
            w.wake();
        }
    }
}

struct Shared {
    inner: Mutex<Inner>,
    notify: Notify,
    /// Bumped each time the driver has sent everything the connections had.
    flushed: tokio::sync::watch::Sender<u64>,
    socket: UdpSocket,
    /// Batched I/O on `socket`: GSO/GRO and `recvmmsg` where the kernel has
    /// them, one datagram per call where it does not (quinn-udp).
    udp: quinn_udp::UdpSocketState,
    local: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn flush(&self) {
        let mut rx = self.flushed.subscribe();
        // Two full passes, each started by a wake-up after this call: the
        // first may have begun before it, the second cannot have.
        for _ in 0..2 {
            let g0 = *rx.borrow_and_update();
            self.notify.notify_one();
            let wait = rx.wait_for(|g| *g > g0);
            if tokio::time::timeout(std::time::Duration::from_secs(1), wait)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// A UDP socket carrying many XTCP connections.
#[derive(Clone)]
pub struct XtcpEndpoint {
    shared: Arc<Shared>,
}

impl fmt::Debug for XtcpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XtcpEndpoint")
            .field("local", &self.shared.local)
            .finish_non_exhaustive()
    }
}

/// Endpoint options.
#[derive(Clone, Debug)]
pub struct EndpointOptions {
    /// Connection settings (buffers, timeouts, congestion control …).
    pub conn: Config,
    /// Accept incoming connections.
    pub listen: bool,
    /// SO_SNDBUF / SO_RCVBUF requested for the UDP socket.
    pub socket_buffer: usize,
    /// Established connections waiting for `accept` at most (beyond: refused).
    pub accept_backlog: usize,
    /// Half-open connections kept with state; beyond, SYN cookies (RFC 4987).
    pub max_half_open: usize,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            conn: Config::default(),
            listen: false,
            socket_buffer: 4 << 20,
            accept_backlog: 1024,
            max_half_open: 1024,
        }
    }
}

impl Drop for XtcpEndpoint {
    fn drop(&mut self) {
        // Let the driver notice when the last handle goes.
        self.shared.notify.notify_one();
    }
}

impl XtcpEndpoint {
    /// Bind a UDP socket (IPv4 or IPv6) and start the driver task.
    pub fn bind(addr: SocketAddr, opts: EndpointOptions) -> io::Result<XtcpEndpoint> {
        let domain = if addr.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let sock =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            let _ = sock.set_only_v6(false);
        }
        sock.bind(&addr.into())?;
        Self::from_std(sock.into(), opts)
    }

    /// Run an endpoint on a UDP socket bound already (e.g. the one of many
    /// punching sockets that got through a NAT, `spec/direct.md` §4.3).
    pub fn from_std(sock: std::net::UdpSocket, opts: EndpointOptions) -> io::Result<XtcpEndpoint> {
        let s2 = socket2::SockRef::from(&sock);
        let _ = s2.set_recv_buffer_size(opts.socket_buffer);
        let _ = s2.set_send_buffer_size(opts.socket_buffer);
        sock.set_nonblocking(true)?;
        // Also sets the options batched I/O needs (UDP_GRO, IP_PKTINFO …).
        let udp = quinn_udp::UdpSocketState::new((&sock).into())?;
        pmtu::restore_default(&sock);
        let socket = UdpSocket::from_std(sock)?;
        let local = socket.local_addr()?;
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| io::Error::other("no randomness"))?;
        let cfg = EndpointConfig {
            conn: Arc::new(opts.conn),
            listen: opts.listen,
            local_port: local.port(),
            accept_backlog: opts.accept_backlog,
            max_half_open: opts.max_half_open,
            ..EndpointConfig::default()
        };
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                ep: Endpoint::new(cfg, secret),
                epoch: std::time::Instant::now(),
                wakers: HashMap::new(),
                dropped: Default::default(),
                accept: None,
                closed: false,
                side: None,
            }),
            notify: Notify::new(),
            flushed: tokio::sync::watch::channel(0).0,
            socket,
            udp,
            local,
        });
        tokio::spawn(drive(Arc::downgrade(&shared)));
        Ok(XtcpEndpoint { shared })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Wait until the driver has sent every datagram the connections have
    /// queued now (e.g. the last ACK before the process exits).
    pub async fn flush(&self) {
        self.shared.flush().await
    }

    /// Connections on this endpoint.
    pub fn connections(&self) -> usize {
        self.shared.lock().ep.len()
    }

    /// Endpoint counters (malformed datagrams, unknown connection ids …).
    pub fn stats(&self) -> proto::xtcp::endpoint::EndpointStats {
        self.shared.lock().ep.stats()
    }

    /// Receive the datagrams on this socket that are not XTCP (first byte in
    /// [`SIDE_CHANNEL`]), e.g. answers of the relay's UDP address service
    /// and punch probes. Bounded: when the receiver falls behind, new ones
    /// are dropped. A second call replaces the first receiver.
    pub fn side_channel(&self) -> tokio::sync::mpsc::Receiver<(SocketAddr, Vec<u8>)> {
        let (tx, rx) = tokio::sync::mpsc::channel(SIDE_CHANNEL_QUEUE);
        self.shared.lock().side = Some(tx);
        rx
    }

    /// Send one datagram that is not XTCP on this endpoint's socket (same
    /// source address and port as its connections: what a NAT maps). A
    /// plain `sendto` beside the driver's batched sends: a datagram is never
    /// cut or joined, whatever GSO does to XTCP's.
    pub async fn send_raw(&self, to: SocketAddr, d: &[u8]) -> io::Result<()> {
        self.shared.socket.send_to(d, to).await.map(|_| ())
    }

    /// Open a connection and wait for the handshake.
    pub async fn connect(&self, remote: SocketAddr) -> Result<XtcpStream, XtcpError> {
        let h = {
            let mut g = self.shared.lock();
            let now = g.now();
            let h = g.ep.connect(now, remote);
            g.wakers.insert(h, Wakers::default());
            h
        };
        self.shared.notify.notify_one();
        let stream = XtcpStream {
            handle: Arc::new(StreamHandle {
                shared: self.shared.clone(),
                h,
            }),
        };
        std::future::poll_fn(|cx| stream.poll_established(cx)).await?;
        Ok(stream)
    }

    /// The next incoming connection (the endpoint must listen).
    pub async fn accept(&self) -> Result<XtcpStream, XtcpError> {
        std::future::poll_fn(|cx| {
            let mut g = self.shared.lock();
            if g.closed {
                return Poll::Ready(Err(XtcpError::EndpointClosed));
            }
            match g.ep.accept() {
                Some(h) => {
                    g.wakers.insert(h, Wakers::default());
                    Poll::Ready(Ok(XtcpStream {
                        handle: Arc::new(StreamHandle {
                            shared: self.shared.clone(),
                            h,
                        }),
                    }))
                }
                None => {
                    g.accept = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// Datagrams gathered per send pass (then sent in GSO batches). Kept within
/// a few read batches (`RX_SLOTS`) so that a driver with much to send still
/// reads often: in the 10,000-connection test, 128 took 18-32 s per run
/// (median 22 s, 10-23 k `RcvbufErrors`), 32 took 14-38 s (median 15 s,
/// median 5.6 k); bulk goodput on the veth bench did not drop.
const TX_DATAGRAMS: usize = 32;
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
struct Tx {
    buf: Vec<u8>,
    slot: usize,
    batches: Vec<TxBatch>,
}

impl Tx {
    fn new() -> Tx {
        Tx {
            buf: Vec::new(),
            slot: 0,
            batches: Vec::with_capacity(TX_DATAGRAMS),
        }
    }

    /// Poll up to [`TX_DATAGRAMS`] datagrams; returns how many. Consecutive
    /// datagrams of equal size to one destination join one batch of at most
    /// `max_segs` segments.
    fn fill(&mut self, ep: &mut Endpoint, now: proto::Instant, max_segs: usize) -> usize {
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
    async fn send(&self, shared: &Shared) {
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
struct Rx {
    buf: Vec<u8>,
    meta: Vec<quinn_udp::RecvMeta>,
}

impl Rx {
    fn new() -> Rx {
        Rx {
            // Pages are touched only as datagrams fill them.
            buf: vec![0u8; RX_SLOT * RX_SLOTS],
            meta: vec![quinn_udp::RecvMeta::default(); RX_SLOTS],
        }
    }

    /// Read up to [`RX_SLOTS`] datagrams (one `recvmmsg`, without waiting)
    /// and feed every one to the endpoint, splitting GRO super-datagrams at
    /// their stride. Returns whether the socket may hold more.
    fn pass(&mut self, shared: &Shared) -> bool {
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

async fn drive(weak: std::sync::Weak<Shared>) {
    let mut tx = Tx::new();
    let mut rx = Rx::new();
    // While the endpoint has connections the driver holds a strong reference
    // of its own, so that connections whose handles are all gone still
    // finish closing (their FIN, retransmissions, TIME-WAIT): a stream
    // dropped last must not take its FIN down with the endpoint.
    let mut keep: Option<Arc<Shared>> = None;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        // Input first: what the socket holds, then the timers that are due.
        let more_to_recv = rx.pass(&shared);
        let max_segs = shared.udp.max_gso_segments().max(1);
        let (sent, deadline) = {
            let mut g = shared.lock();
            let now = g.now();
            if g.ep.poll_timeout().is_some_and(|t| t <= now) {
                g.ep.handle_timeout(now);
            }
            g.dispatch();
            let sent = tx.fill(&mut g.ep, now, max_segs);
            let deadline = g.ep.poll_timeout().map(|t| {
                let at = g.epoch + std::time::Duration::from_micros(t.as_micros());
                tokio::time::Instant::from_std(at)
            });
            (sent, deadline)
        };
        tx.send(&shared).await;
        let more_to_send = sent >= TX_DATAGRAMS;
        if !more_to_send {
            shared.flushed.send_modify(|g| *g += 1);
        }
        if more_to_send || more_to_recv {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        // Once the wait is over: an endpoint whose handles are all gone and
        // that has nothing closing any more ends the driver (checked after
        // the wait, not on the busy path above).
        let notified = shared.notify.notified();
        tokio::select! {
            _ = shared.socket.readable() => {}
            _ = sleep => {}
            _ = notified => {}
        }
        let empty = shared.lock().ep.is_empty();
        let owners = Arc::strong_count(&shared) - 1 - usize::from(keep.is_some());
        if empty {
            keep = None;
            if owners == 0 {
                // Nobody holds the endpoint or a stream, nothing is closing.
                shared.lock().closed = true;
                return;
            }
        } else if keep.is_none() {
            keep = Some(shared.clone());
        }
    }
}

struct StreamHandle {
    shared: Arc<Shared>,
    h: ConnectionHandle,
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        // Drop is a graceful close (FIN after the queued data), not an abort.
        let mut g = self.shared.lock();
        let now = g.now();
        if let Some(c) = g.ep.connection_mut(self.h) {
            tracing::trace!(state = ?c.state(), "stream dropped: graceful close");
            c.shutdown(now);
        }
        g.dropped.insert(self.h);
        drop(g);
        self.shared.notify.notify_one();
    }
}

/// One XTCP connection as a tokio byte stream.
pub struct XtcpStream {
    handle: Arc<StreamHandle>,
}

impl fmt::Debug for XtcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XtcpStream")
            .field("handle", &self.handle.h)
            .finish_non_exhaustive()
    }
}

fn poll_read_h(
    h: &StreamHandle,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let mut g = h.shared.lock();
    if g.closed {
        return Poll::Ready(Err(XtcpError::EndpointClosed.into()));
    }
    let Some(c) = g.ep.connection_mut(h.h) else {
        return Poll::Ready(Err(XtcpError::EndpointClosed.into()));
    };
    let dst = buf.initialize_unfilled();
    match c.read(dst) {
        Ok(n) => {
            buf.advance(n);
            drop(g);
            // A read may open the window: let the driver send the update.
            h.shared.notify.notify_one();
            Poll::Ready(Ok(()))
        }
        Err(ReadError::Blocked) => {
            if let Some(w) = g.wakers.get_mut(&h.h) {
                w.read = Some(cx.waker().clone());
            }
            Poll::Pending
        }
        Err(ReadError::Failed(e)) => Poll::Ready(Err(XtcpError::from(e).into())),
        Err(ReadError::NotConnected) => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
    }
}

fn poll_write_h(h: &StreamHandle, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
    let mut g = h.shared.lock();
    if g.closed {
        return Poll::Ready(Err(XtcpError::EndpointClosed.into()));
    }
    let Some(c) = g.ep.connection_mut(h.h) else {
        return Poll::Ready(Err(XtcpError::EndpointClosed.into()));
    };
    // Data already waiting for the windows: the ACK or timer that lets it go
    // wakes the driver anyway, so this write need not (in a bulk transfer
    // these wake-ups were over half of the sending driver's turns).
    let waiting = c.has_unsent_full_segment();
    match c.write(data) {
        Ok(n) => {
            drop(g);
            if !waiting {
                h.shared.notify.notify_one();
            }
            Poll::Ready(Ok(n))
        }
        Err(WriteError::Blocked) => {
            if let Some(w) = g.wakers.get_mut(&h.h) {
                w.write = Some(cx.waker().clone());
            }
            Poll::Pending
        }
        Err(WriteError::Closed) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        Err(WriteError::Failed(e)) => Poll::Ready(Err(XtcpError::from(e).into())),
    }
}

fn shutdown_h(h: &StreamHandle) {
    let mut g = h.shared.lock();
    let now = g.now();
    if let Some(c) = g.ep.connection_mut(h.h) {
        c.shutdown(now);
    }
    drop(g);
    h.shared.notify.notify_one();
}

impl XtcpStream {
    fn poll_established(&self, cx: &mut Context<'_>) -> Poll<Result<(), XtcpError>> {
        let mut g = self.handle.shared.lock();
        let Some(c) = g.ep.connection(self.handle.h) else {
            return Poll::Ready(Err(XtcpError::EndpointClosed));
        };
        if let Some(e) = c.error() {
            return Poll::Ready(Err(e.into()));
        }
        match c.state() {
            State::SynSent | State::SynReceived | State::Listen => {
                if let Some(w) = g.wakers.get_mut(&self.handle.h) {
                    w.write = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            State::Closed => Poll::Ready(Err(XtcpError::Refused)),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// The peer's address (follows NAT rebinding).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.handle
            .shared
            .lock()
            .ep
            .connection(self.handle.h)
            .map(|c| c.remote())
    }

    /// Smoothed RTT and congestion window, for `--progress`.
    pub fn rtt_and_cwnd(&self) -> Option<(std::time::Duration, u64)> {
        let g = self.handle.shared.lock();
        let c = g.ep.connection(self.handle.h)?;
        Some((c.rtt().srtt().unwrap_or_default(), c.congestion_window()))
    }

    /// Reset the connection (RST) instead of closing it gracefully.
    pub fn abort(&self) {
        let mut g = self.handle.shared.lock();
        let now = g.now();
        if let Some(c) = g.ep.connection_mut(self.handle.h) {
            c.abort(now);
        }
        drop(g);
        self.handle.shared.notify.notify_one();
    }

    /// Wait until everything written was acknowledged and the connection is
    /// closed in both directions (or failed).
    pub async fn closed(&self) -> Result<(), XtcpError> {
        wait_closed(&self.handle).await
    }

    /// A handle that can wait for [`XtcpStream::closed`] after the stream
    /// itself moved elsewhere (e.g. under TLS). It keeps the connection's
    /// state alive, so drop it when done.
    pub fn close_waiter(&self) -> CloseWaiter {
        CloseWaiter {
            handle: self.handle.clone(),
        }
    }

    /// A weak handle for progress reports (it does not keep the connection).
    pub fn probe(&self) -> Probe {
        Probe {
            handle: Arc::downgrade(&self.handle),
        }
    }

    /// Split into owned halves (the connection closes when both are dropped).
    pub fn into_split(self) -> (XtcpReadHalf, XtcpWriteHalf) {
        (
            XtcpReadHalf {
                handle: self.handle.clone(),
            },
            XtcpWriteHalf {
                handle: self.handle,
            },
        )
    }
}

async fn wait_closed(h: &StreamHandle) -> Result<(), XtcpError> {
    std::future::poll_fn(|cx| {
        let mut g = h.shared.lock();
        let Some(c) = g.ep.connection(h.h) else {
            return Poll::Ready(Ok(()));
        };
        if let Some(e) = c.error() {
            return Poll::Ready(Err(e.into()));
        }
        tracing::trace!(state = ?c.state(), unacked = c.unacked(), timeout = ?c.poll_timeout(), "wait_closed");
        // Our FIN acknowledged and the peer's received: nothing of ours is in flight.
        if matches!(c.state(), State::Closed | State::TimeWait | State::LastAck) && c.unacked() == 0
        {
            return Poll::Ready(Ok(()));
        }
        if let Some(w) = g.wakers.get_mut(&h.h) {
            w.write = Some(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}

/// See [`XtcpStream::close_waiter`].
pub struct CloseWaiter {
    handle: Arc<StreamHandle>,
}

impl fmt::Debug for CloseWaiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CloseWaiter")
    }
}

impl CloseWaiter {
    /// Wait until the connection is closed with all our data acknowledged.
    pub async fn wait(&self) -> Result<(), XtcpError> {
        wait_closed(&self.handle).await
    }

    /// Wait until the endpoint has sent what its connections queued (the
    /// last ACK, say) — [`XtcpEndpoint::flush`] for this connection's endpoint.
    pub async fn flush(&self) {
        self.handle.shared.flush().await
    }

    /// How long a process that is about to exit should keep the endpoint
    /// running after [`CloseWaiter::wait`]: our last ACK may be lost, and the
    /// peer then retransmits its FIN, which only a live endpoint can answer
    /// (a user-space stand-in for the kernel keeping TIME-WAIT, RFC 9293
    /// §3.6.1). Three smoothed RTTs, at least 300 ms, at most 3 s.
    pub fn linger(&self) -> std::time::Duration {
        let g = self.handle.shared.lock();
        let srtt =
            g.ep.connection(self.handle.h)
                .and_then(|c| c.rtt().srtt())
                .unwrap_or_default();
        (srtt * 3).clamp(
            std::time::Duration::from_millis(300),
            std::time::Duration::from_secs(3),
        )
    }
}

/// See [`XtcpStream::probe`].
#[derive(Clone)]
pub struct Probe {
    handle: std::sync::Weak<StreamHandle>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Probe")
    }
}

/// One progress sample.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSample {
    /// Payload bytes sent (first transmissions).
    pub bytes_sent: u64,
    /// Payload bytes received in order.
    pub bytes_received: u64,
    /// Smoothed RTT.
    pub srtt: std::time::Duration,
    /// Congestion window, bytes.
    pub cwnd: u64,
}

impl Probe {
    /// A sample, or `None` once the stream is gone.
    pub fn sample(&self) -> Option<ProbeSample> {
        let h = self.handle.upgrade()?;
        let g = h.shared.lock();
        let c = g.ep.connection(h.h)?;
        let st = c.stats();
        Some(ProbeSample {
            bytes_sent: st.bytes_sent,
            bytes_received: st.bytes_received,
            srtt: c.rtt().srtt().unwrap_or_default(),
            cwnd: c.congestion_window(),
        })
    }
}

/// AsyncRead / AsyncWrite for the stream and its halves: all go through the
/// same shared handle functions.
macro_rules! impl_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                poll_read_h(&self.handle, cx, buf)
            }
        }
    };
}

macro_rules! impl_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                data: &[u8],
            ) -> Poll<io::Result<usize>> {
                poll_write_h(&self.handle, cx, data)
            }
            fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                // Half-close: FIN after the queued data; reading continues.
                shutdown_h(&self.handle);
                Poll::Ready(Ok(()))
            }
        }
    };
}

impl_read!(XtcpStream);
impl_write!(XtcpStream);
impl_read!(XtcpReadHalf);
impl_write!(XtcpWriteHalf);

/// The reading half of an [`XtcpStream`].
pub struct XtcpReadHalf {
    handle: Arc<StreamHandle>,
}

/// The writing half of an [`XtcpStream`].
pub struct XtcpWriteHalf {
    handle: Arc<StreamHandle>,
}

impl fmt::Debug for XtcpReadHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XtcpReadHalf")
    }
}

impl fmt::Debug for XtcpWriteHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XtcpWriteHalf")
    }
}
