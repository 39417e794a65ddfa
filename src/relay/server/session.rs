//! A session from its `CREATE` on: the host waits for its guest (TTL,
//! drain), both are sent `PAIRED` and their TLS sessions closed at a record
//! boundary, then the two TCP streams are forwarded blindly until either
//! side ends, the session idles out or the relay stops.

use super::audit::session_label;
use super::connection::Unauth;
use super::metrics::RefusalReason;
use super::udp::UdpGrants;
use super::{Finishing, Shared, ABORT, RUNNING};
use crate::relay::admission::{Kind, Share};
use crate::relay::ctl::{CtlChannel, CtlError};
use crate::relay::forward::{self, Activity, Counters, Mode, RateLimiter};
use crate::relay::token_quota::{TokenKind, TokenUnit};
use proto::relay::wire::{ErrorCode, Frame, UdpGrant};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A host waiting for its guest: where a JOIN hands the guest over.
pub(super) struct Waiting {
    pub(super) tx: oneshot::Sender<Guest>,
}

/// A guest whose JOIN found its session, handed to the host's task.
pub(super) struct Guest {
    pub(super) ctl: CtlChannel,
    pub(super) addr: SocketAddr,
    /// The guest source's unit of its paired share.
    pub(super) share: Share,
    /// When its JOIN arrived (the pairing latency starts there).
    pub(super) joined: Instant,
}

/// A host whose CREATE was admitted: register the session and tell the
/// host; the wait for its guest goes on in a task of its own.
pub(super) async fn host(
    mut ctl: CtlChannel,
    peer: SocketAddr,
    rid: [u8; 16],
    shared: &Arc<Shared>,
    unauth: Unauth,
    share: (Share, TokenUnit),
) {
    let label = session_label(&rid);
    let (tx, rx) = oneshot::channel();
    if let Err((f, reason)) = register(shared, rid, tx) {
        shared.metrics.refuse(reason);
        Box::pin(ctl.fail(&f)).await;
        return;
    }
    drop(unauth);
    //= spec/relay.md#RL-WAIT-MEM-1
    //# Once `CREATED` is sent, a waiting host MUST NOT hold its TLS library's
    //# buffers
    let ctl = match Box::pin(created(&mut ctl, shared, &label, peer)).await {
        Ok(()) => ctl.compact().ok(),
        Err(_) => None,
    };
    // The accepting task ends here with everything the handshake needed; the
    // waiting task holds only what the wait and the pairing need.
    let waiter = Waiter {
        label,
        peer,
        rid,
        rx,
        share,
    };
    super::spawn_until_abort(shared, hosted(ctl, waiter, shared.clone()));
}

/// What a waiting host's task holds besides its channel.
struct Waiter {
    label: String,
    peer: SocketAddr,
    rid: [u8; 16],
    rx: oneshot::Receiver<Guest>,
    /// The host source's unit of its waiting share, and its token's.
    share: (Share, TokenUnit),
}

/// Wait for the guest (`None`: the host is already gone), pair both, then
/// forward in a task of its own.
async fn hosted(ctl: Option<CtlChannel>, w: Waiter, shared: Arc<Shared>) {
    let Waiter {
        label,
        peer,
        rid,
        rx,
        share,
    } = w;
    let outcome = match &ctl {
        Some(ctl) => wait_for_guest(ctl, rx, &shared).await,
        None => Err(WaitEnd::HostGone),
    };
    let token = share.1.key();
    let finishing = stop_waiting(&shared, &rid, share);
    let (ctl, guest) = match (ctl, outcome) {
        (Some(ctl), Ok(g)) => (ctl, g),
        (ctl, outcome) => {
            let reason = outcome.err().unwrap_or(WaitEnd::HostGone);
            return Box::pin(close_unpaired(ctl, &shared, &label, peer, reason)).await;
        }
    };
    let Guest {
        ctl: guest,
        addr: guest_addr,
        share: guest_share,
        joined,
    } = guest;
    shared.audit(
        "session_joined",
        Some(&label),
        Some(guest_addr),
        serde_json::json!({}),
    );
    // Pair: PAIRED to both, then end both TLS sessions at a record boundary.
    // The UDP tokens live exactly as long as `grants` (dropped when pairing
    // fails below, or when the forwarding task ends however it ends).
    //= spec/relay.md#RL-GRANT-1
    //# A relay that runs the service MUST send a grant to both clients, unless its
    //# token table is full
    let (grants, [host_udp, guest_udp]) = match shared.grant() {
        Some((g, [h, u])) => (Some(g), [Some(h), Some(u)]),
        None => (None, [None, None]),
    };
    let pairing = Box::pin(pair((ctl, peer, host_udp), (guest, guest_addr, guest_udp)));
    //= spec/relay.md#RL-PAIR-1
    //# All of this MUST complete within `handshake_timeout_secs`
    let Ok(Ok((a, b, paired_at))) =
        tokio::time::timeout(shared.limits.handshake_timeout, pairing).await
    else {
        shared.audit(
            "session_closed",
            Some(&label),
            Some(peer),
            serde_json::json!({"reason": "pairing failed", "paired": false}),
        );
        return;
    };
    let m = &shared.metrics;
    m.pairing_seconds
        .observe(paired_at.saturating_duration_since(joined).as_secs_f64());
    m.sessions_paired.inc();
    m.active.inc();
    shared.audit(
        "session_paired",
        Some(&label),
        None,
        serde_json::json!({"host": peer.to_string(), "guest": guest_addr.to_string()}),
    );
    // Forward in a task of its own: the pairing state above (TLS, frames) is
    // freed now, so an idle paired session costs only this small future and
    // its two sockets.
    drop(finishing);
    // The host's source holds one paired unit too (may exceed its share by
    // the pairings in progress, like `max_sessions`).
    let host_share = shared.shares.take(shared.source(peer.ip()), Kind::Paired);
    let host_token = shared.token_quotas.take(token, TokenKind::Paired);
    let shares = (host_share, guest_share, host_token);
    tokio::spawn(run_session(shared.clone(), label, (a, b), grants, shares));
}

/// Enter the session in the waiting table, unless its id is taken or the
/// table is full (the refusal to send, and why).
fn register(
    shared: &Shared,
    rid: [u8; 16],
    tx: oneshot::Sender<Guest>,
) -> Result<(), (Frame<'static>, RefusalReason)> {
    let mut w = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
    if w.contains_key(&rid) {
        let f = Frame::error(ErrorCode::SessionExists, 0, "session already registered");
        Err((f, RefusalReason::SessionExists))
    } else if w.len() >= shared.cfg.max_waiting {
        let f = Frame::error(ErrorCode::OverCapacity, 0, "too many waiting sessions");
        Err((f, RefusalReason::OverCapacity))
    } else {
        w.insert(rid, Waiting { tx });
        Ok(())
    }
}

/// Count and log the new waiting session and tell the host: `CREATED` with
/// the TTL.
async fn created(
    ctl: &mut CtlChannel,
    shared: &Shared,
    label: &str,
    peer: SocketAddr,
) -> Result<(), CtlError> {
    shared.metrics.waiting.inc();
    shared.metrics.sessions_created.inc();
    shared.audit(
        "session_created",
        Some(label),
        Some(peer),
        serde_json::json!({}),
    );
    let ttl = shared.limits.waiting_ttl;
    ctl.send(&Frame::Created {
        ttl_secs: ttl.as_secs().min(u64::from(u32::MAX)) as u32,
    })
    .await
}

/// Wait for the guest, until the TTL, the host's leaving or a drain.
async fn wait_for_guest(
    ctl: &CtlChannel,
    rx: oneshot::Receiver<Guest>,
    shared: &Shared,
) -> Result<Guest, WaitEnd> {
    let mut phase = shared.phase.subscribe();
    tokio::select! {
        r = rx => r.map_err(|_| WaitEnd::HostGone),
        _ = tokio::time::sleep(shared.limits.waiting_ttl) => Err(WaitEnd::Expired),
        _ = ctl.peer_activity() => Err(WaitEnd::HostGone),
        _ = phase.wait_for(|p| *p != RUNNING) => Err(WaitEnd::ShuttingDown),
    }
}

/// Take the session out of the waiting table and its counts, however the
/// wait ended; it is finishing until paired or told why not.
fn stop_waiting(
    shared: &Arc<Shared>,
    rid: &[u8; 16],
    waiting_share: (Share, TokenUnit),
) -> Finishing {
    shared
        .waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(rid);
    // Counted as finishing before it stops counting as waiting, so a drain
    // that waits for both never misses a host still being told.
    let finishing = Finishing::new(shared);
    shared.metrics.waiting.dec();
    drop(waiting_share);
    finishing
}

/// Log a session that ended without a guest and tell the host why.
async fn close_unpaired(
    ctl: Option<CtlChannel>,
    shared: &Shared,
    label: &str,
    peer: SocketAddr,
    reason: WaitEnd,
) {
    shared.audit(
        "session_closed",
        Some(label),
        Some(peer),
        serde_json::json!({"reason": reason.as_str(), "paired": false}),
    );
    let frame = match reason {
        WaitEnd::Expired => {
            shared.metrics.expired.inc();
            Frame::error(ErrorCode::Expired, 0, "no guest joined before the TTL")
        }
        WaitEnd::ShuttingDown => Frame::error(ErrorCode::ShuttingDown, 0, "relay shutting down"),
        WaitEnd::HostGone => return,
    };
    if let Some(ctl) = ctl {
        ctl.fail(&frame).await;
    }
}

/// One side of a pairing: its control channel, the address it is told it
/// was seen from, and its UDP address service grant.
type Side = (CtlChannel, SocketAddr, Option<UdpGrant>);

/// `PAIRED` to the host, then to the guest, then `close_notify` both ways:
/// the raw TCP streams, each positioned right after its TLS session, and
/// when both `PAIRED` frames were sent.
async fn pair(host: Side, guest: Side) -> Result<(TcpStream, TcpStream, Instant), CtlError> {
    let (mut ctl, peer, host_udp) = host;
    let (mut guest, guest_addr, guest_udp) = guest;
    ctl.send(&Frame::Paired {
        observed: peer,
        udp: host_udp,
    })
    .await?;
    guest
        .send(&Frame::Paired {
            observed: guest_addr,
            udp: guest_udp,
        })
        .await?;
    let sent = Instant::now();
    let (a, b) = tokio::try_join!(ctl.finish(), guest.finish())?;
    Ok((a, b, sent))
}

/// The paired session's task: forward until it ends, then drop its grants,
/// log it, and count it out.
async fn run_session(
    shared: Arc<Shared>,
    label: String,
    (a, b): (TcpStream, TcpStream),
    grants: Option<UdpGrants>,
    _shares: (Share, Share, TokenUnit),
) {
    let started = Instant::now();
    let (h2g, g2h, reason) = forward_session(&a, &b, &shared).await;
    // Tokens go before `active` drops, so a caller that saw the session
    // end in the gauge also sees its tokens gone.
    drop(grants);
    shared.audit(
        "session_closed",
        Some(&label),
        None,
        serde_json::json!({
            "paired": true,
            "bytes_host_to_guest": h2g,
            "bytes_guest_to_host": g2h,
            "duration_secs": started.elapsed().as_secs_f64(),
            "reason": reason,
        }),
    );
    // Last: whoever sees the session gone in the gauge (a drain) also
    // finds its record written.
    shared.metrics.active.dec();
}

/// Forward both streams until either side ends, the session idles out or
/// the relay stops: the bytes each way and the reason.
async fn forward_session(
    a: &TcpStream,
    b: &TcpStream,
    shared: &Arc<Shared>,
) -> (u64, u64, &'static str) {
    let mode = if shared.cfg.splice {
        Mode::Splice
    } else {
        Mode::Copy
    };
    let buffer = shared.cfg.forward_buffer;
    // Each chunk is added to the relay's byte counters as it is forwarded,
    // so a long session shows in the metrics while it runs.
    let m = &shared.metrics;
    let ca = Counters::adding_to(m.bytes_host_to_guest.clone());
    let cb = Counters::adding_to(m.bytes_guest_to_host.clone());
    let activity = Activity::new();
    let limiter = shared.cfg.rate_limit_bytes_per_sec.map(RateLimiter::new);
    let h2g = forward::pump(a, b, mode, buffer, &ca, &activity, limiter.as_ref());
    let g2h = forward::pump(b, a, mode, buffer, &cb, &activity, limiter.as_ref());
    let idle = shared.limits.idle_timeout;
    let watchdog = async {
        loop {
            let left = idle.saturating_sub(activity.idle_for());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    };
    let mut phase = shared.phase.subscribe();
    let reason = tokio::select! {
        r = async { tokio::try_join!(h2g, g2h) } => if r.is_ok() { "completed" } else { "reset" },
        _ = watchdog => "idle timeout",
        _ = phase.wait_for(|p| *p == ABORT) => "relay stopped",
    };
    (ca.bytes(), cb.bytes(), reason)
}

/// Why a host stopped waiting for its guest (audit reason, and what the host is told).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WaitEnd {
    /// The host's connection ended or failed.
    HostGone,
    /// No guest joined before the TTL (spec/relay.md §9.3).
    Expired,
    /// The relay is draining (spec/relay.md §9.5).
    ShuttingDown,
}

impl WaitEnd {
    /// The audit log's `reason` value.
    fn as_str(self) -> &'static str {
        match self {
            WaitEnd::HostGone => "host gone",
            WaitEnd::Expired => "expired",
            WaitEnd::ShuttingDown => "shutting down",
        }
    }
}
