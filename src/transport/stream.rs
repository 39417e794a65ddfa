//! [`XtcpStream`]: one XTCP connection as a tokio byte stream, its owned
//! halves, and the handles that outlive it ([`CloseWaiter`], [`Probe`]).

use super::driver::Shared;
use super::XtcpError;
use proto::xtcp::conn::{ReadError, State, WriteError};
use proto::xtcp::endpoint::ConnectionHandle;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(super) struct StreamHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) h: ConnectionHandle,
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
    pub(super) handle: Arc<StreamHandle>,
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
    pub(super) fn poll_established(&self, cx: &mut Context<'_>) -> Poll<Result<(), XtcpError>> {
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
    /// A probe of the same connection that does not keep it alive.
    pub(crate) fn probe(&self) -> Probe {
        Probe {
            handle: Arc::downgrade(&self.handle),
        }
    }
    /// Wait until the connection is closed with all our data acknowledged.
    pub async fn wait(&self) -> Result<(), XtcpError> {
        wait_closed(&self.handle).await
    }

    /// Wait until the endpoint has sent what its connections queued (the
    /// last ACK, say) — [`XtcpEndpoint::flush`](super::XtcpEndpoint::flush) for this connection's endpoint.
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
