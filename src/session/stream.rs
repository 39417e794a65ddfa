//! The application's end of a session: [`SessionStream`] (one byte stream,
//! whatever the path) and [`SessionControl`] (watch it from elsewhere).

use super::{Link, Path};
use proto::session::Status;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// The application's end of a session: one byte stream, whatever the path.
///
/// Errors are `io::Error`s whose inner error is a
/// [`SessionFailure`](proto::session::SessionFailure) (`downcast_ref`).
pub struct SessionStream {
    pub(super) link: Arc<Link>,
    pub(super) path: watch::Receiver<Path>,
}

impl std::fmt::Debug for SessionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStream")
            .field("path", &*self.path.borrow())
            .finish_non_exhaustive()
    }
}

impl SessionStream {
    /// The path the session's bytes take now.
    pub fn path(&self) -> Path {
        *self.path.borrow()
    }
    /// Path changes as they happen (`changed().await`, then `borrow()`).
    pub fn path_events(&self) -> watch::Receiver<Path> {
        self.path.clone()
    }
    /// The peer's address on the current path if it is direct, and for
    /// direct UDP (XTCP) that path's smoothed RTT.
    pub fn direct_peer(&self) -> Option<(SocketAddr, Option<Duration>)> {
        // The published path, as `path()` reports it (the manager's own
        // moves first, before the driver publishes it): `peer_addr` is
        // `None` whenever `path()` says relay.
        let cur = *self.path.borrow();
        let g = self.link.lock();
        if cur == Path::Relay {
            return None;
        }
        // The newest path of the current kind.
        let (_, (_, addr, probe)) = g
            .direct
            .iter()
            .filter(|(_, (kind, _, _))| *kind == cur)
            .max_by_key(|(h, _)| h.index())?;
        let rtt = probe.as_ref().and_then(|p| p.sample()).map(|s| s.srtt);
        Some((*addr, rtt.filter(|d| !d.is_zero())))
    }
    /// Application bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.link.lock().m.written()
    }
    /// Application bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.link.lock().bytes_read
    }
    /// A handle that watches and steers the session from elsewhere.
    pub fn control(&self) -> SessionControl {
        SessionControl {
            link: self.link.clone(),
            path: self.path.clone(),
        }
    }
}

/// Watches a session from another task: its path, and when it is finished
/// (see [`Session::control`](crate::Session::control)).
#[derive(Clone)]
pub struct SessionControl {
    link: Arc<Link>,
    path: watch::Receiver<Path>,
}

impl std::fmt::Debug for SessionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionControl")
            .field("path", &*self.path.borrow())
            .finish_non_exhaustive()
    }
}

impl SessionControl {
    /// Resolves when the session is over and its last frames were handed to
    /// the network (wait for it before exiting the process, or the peer may
    /// miss the final acknowledgement).
    pub async fn finished(&self) {
        let mut rx = self.link.finished.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
    /// The path the session's bytes take now.
    pub fn path(&self) -> Path {
        *self.path.borrow()
    }
    /// Close the direct path's socket at once, as a network failure would
    /// (for tests of the fallback to the relay).
    #[doc(hidden)]
    pub fn sever_direct_path(&self) {
        self.link
            .sever
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.link.notify.notify_one();
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        let mut g = self.link.lock();
        let now = g.clock.now();
        g.m.close(now);
        drop(g);
        self.link.notify.notify_one();
    }
}

/// The session's error as an `io::Error` (kind for the old string-based
/// callers, the typed failure inside).
fn failure(s: &Status) -> Option<io::Error> {
    use proto::session::SessionFailure as F;
    let Status::Failed(f) = s else { return None };
    let kind = match f {
        F::PeerClosed { .. } => io::ErrorKind::ConnectionAborted,
        F::PeerMisbehaved(_) => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::ConnectionReset,
    };
    Some(io::Error::new(kind, f.clone()))
}

impl AsyncRead for SessionStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut g = self.link.lock();
        if g.m.readable() > 0 {
            let st = g.m.state();
            let limited = st.received() > st.ack_limit();
            let ahead = g.m.reading_ahead();
            let n = g.m.read(buf.initialize_unfilled());
            buf.advance(n);
            g.bytes_read += n as u64;
            let resumed = ahead && !g.m.reading_ahead();
            drop(g);
            if limited || resumed {
                // The read opened the window (the driver sends the ACK), or
                // the driver may read its paths again.
                self.link.notify.notify_one();
            }
            return Poll::Ready(Ok(()));
        }
        if g.m.read_eof() {
            // This side finished too: the session is over once our `FIN` is
            // acknowledged. End of stream waits until its last frames (the
            // ACK of the peer's FIN, CLOSE) left, so that a program that
            // returns from `main` right after it never fails its peer.
            if g.m.state().finishing() && !g.flushed && failure(g.m.status()).is_none() {
                g.read_waker = Some(cx.waker().clone());
                drop(g);
                self.link.notify.notify_one();
                return Poll::Pending;
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = failure(g.m.status()) {
            return Poll::Ready(Err(e));
        }
        g.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for SessionStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut g = self.link.lock();
        if let Some(e) = failure(g.m.status()) {
            return Poll::Ready(Err(e));
        }
        match g.m.write(buf) {
            Ok(0) if !buf.is_empty() => {
                g.write_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Ok(n) => {
                drop(g);
                self.link.notify.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(_) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            ))),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    /// Half-close: the peer reads end of stream after every byte written.
    /// Completes once the peer acknowledged all of it (like a lingering
    /// close), and, when the peer's stream had ended too, once the session's
    /// last frames left this process.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.link.lock();
        g.m.finish();
        // With the peer's stream over too, the session ends here: wait until
        // its last frames left (see `poll_read`).
        if g.m.finish_acked() && (g.flushed || !g.m.state().peer_finished()) {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = failure(g.m.status()) {
            return Poll::Ready(Err(e));
        }
        g.write_waker = Some(cx.waker().clone());
        drop(g);
        self.link.notify.notify_one();
        Poll::Pending
    }
}
