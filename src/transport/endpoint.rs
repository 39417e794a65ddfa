//! [`XtcpEndpoint`]: a UDP socket carrying many XTCP connections (bind,
//! connect, accept, the side channel).

use super::driver::{drive, Inner, Shared, Wakers};
use super::socket::pmtu;
use super::stream::{StreamHandle, XtcpStream};
use super::XtcpError;
use proto::xtcp::conn::Config;
use proto::xtcp::endpoint::{Endpoint, EndpointConfig};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// Side-channel datagrams queued at most before new ones are dropped.
const SIDE_CHANNEL_QUEUE: usize = 64;

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
    /// [`SIDE_CHANNEL`](super::SIDE_CHANNEL)), e.g. answers of the relay's UDP address service
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
