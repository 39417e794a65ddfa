//! The endpoint's shared state (the sans-IO endpoint, the wakers of its
//! streams, the socket) and the driver task that moves its datagrams and
//! fires its timers.

use super::socket::{Rx, Tx, TX_DATAGRAMS};
use super::SIDE_CHANNEL;
use proto::xtcp::endpoint::{ConnectionHandle, Endpoint};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// Longest side-channel datagram passed on (they are all small).
const SIDE_CHANNEL_MAX: usize = 256;

#[derive(Default)]
pub(super) struct Wakers {
    pub(super) read: Option<Waker>,
    pub(super) write: Option<Waker>,
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

pub(super) struct Inner {
    pub(super) ep: Endpoint,
    pub(super) epoch: std::time::Instant,
    pub(super) wakers: HashMap<ConnectionHandle, Wakers>,
    /// Streams dropped by the application whose connections still close.
    pub(super) dropped: std::collections::HashSet<ConnectionHandle>,
    pub(super) accept: Option<Waker>,
    pub(super) closed: bool,
    /// Where non-XTCP datagrams (first byte in [`SIDE_CHANNEL`]) go, if anywhere.
    pub(super) side: Option<tokio::sync::mpsc::Sender<(SocketAddr, Vec<u8>)>>,
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
    pub(super) fn input(&mut self, now: proto::Instant, from: SocketAddr, d: &[u8]) {
        if self.side_channel(from, d) {
            return;
        }
        let h = self.ep.handle_datagram(now, from, d).ok().flatten();
        self.touch(h);
    }

    pub(super) fn now(&self) -> proto::Instant {
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

pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    pub(super) notify: Notify,
    /// Bumped each time the driver has sent everything the connections had.
    pub(super) flushed: tokio::sync::watch::Sender<u64>,
    pub(super) socket: UdpSocket,
    /// Batched I/O on `socket`: GSO/GRO and `recvmmsg` where the kernel has
    /// them, one datagram per call where it does not (quinn-udp).
    pub(super) udp: quinn_udp::UdpSocketState,
    pub(super) local: SocketAddr,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) async fn flush(&self) {
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

pub(super) async fn drive(weak: std::sync::Weak<Shared>) {
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
