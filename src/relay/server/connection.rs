//! One connection from accept to its request: the per-source and global
//! unauthenticated limits, the first byte, the TLS handshake and first frame
//! within their deadlines, the guess slot of a source that failed too often,
//! then the `CREATE` (token, shares) or `JOIN` (lookup, hand-over) path.

use super::metrics::RefusalReason;
use super::session::{host, Guest};
use super::{Shared, ABORT, RUNNING};
use crate::relay::admission::{Kind, Share, SourceKey, Verdict};
use crate::relay::ctl::{CtlChannel, CtlError};
use crate::relay::refusals::Refusal;
use crate::relay::token_quota::{TokenKey, TokenKind};
use proto::relay::wire::{ErrorCode, Frame, VERSION};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Accept connections: close those over their source's or the global
/// unauthenticated limit, and serve each other one in a task of its own.
pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.metrics.connections.inc();
        //= spec/relay.md#96-admission-per-source
        //# A connection over its source's unauthenticated share is closed at
        //# accept, before TLS
        let Some(share) = shared
            .shares
            .try_take(shared.source(peer.ip()), Kind::Unauthenticated)
        else {
            shared.metrics.refuse(RefusalReason::SourceShare);
            shared.refusal(peer, Refusal::SourceShare, serde_json::json!({}));
            drop(tcp);
            continue;
        };
        let Ok(permit) = shared.unauth.clone().try_acquire_owned() else {
            shared.metrics.refuse(RefusalReason::UnauthenticatedLimit);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut phase = shared.phase.subscribe();
            tokio::select! {
                _ = handle(tcp, peer, &shared, (permit, share)) => {}
                _ = phase.wait_for(|p| *p == ABORT) => {}
            }
        });
    }
}

/// What a connection's first frame asks for.
enum Request {
    /// Register a waiting session; its operator token's key, if it is good.
    Create([u8; 16], Option<TokenKey>),
    /// Join the waiting session with this `rendezvous_id`.
    Join([u8; 16]),
}

/// What an unauthenticated connection holds: its global slot and its
/// source's unit of `max_unauthenticated_per_source`.
pub(super) type Unauth = (tokio::sync::OwnedSemaphorePermit, Share);

/// How a step refuses a connection: answer with this frame and close, or
/// (`None`) close silently.
type Refuse = Option<Frame<'static>>;

/// Serve one accepted connection up to its session (or its refusal).
async fn handle(tcp: TcpStream, peer: SocketAddr, shared: &Arc<Shared>, unauth: Unauth) {
    let accepted = Instant::now();
    let key = shared.source(peer.ip());
    if !first_byte(&tcp, shared).await {
        return;
    }
    let tls = shared.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Ok(conn) = rustls::ServerConnection::new(tls) else {
        return;
    };
    let mut ctl = CtlChannel::new(tcp, conn);
    // Boxed, like every step but the wait: a task is as large as its
    // largest state, and a waiting host should not pay for the handshake.
    let first = Box::pin(first_frame(&mut ctl, shared, accepted)).await;
    let arrived = Instant::now();
    if first.is_ok() {
        let m = &shared.metrics;
        m.handshake_seconds
            .observe((arrived - accepted).as_secs_f64());
    }
    let req = match first.and_then(|bytes| request(shared, &bytes)) {
        Ok(req) => req,
        Err(refuse) => return Box::pin(close(ctl, shared, refuse)).await,
    };
    if draining(shared) {
        return Box::pin(close(ctl, shared, Some(shutting_down()))).await;
    }
    // Guessing is slowed per source: joins and token-less or wrong-token
    // creates. A host with a valid operator token is never slowed.
    let _ticket = if matches!(req, Request::Create(_, Some(_))) {
        None
    } else {
        match shared.guesses.admit(key, Instant::now()) {
            Verdict::Go(t) => Some(t),
            // The ticket is held while the refusal is sent.
            Verdict::Wait(at, t) => match tarpit(&ctl, shared, at).await {
                Ok(()) => Some(t),
                Err(None) => return,
                Err(refuse) => return Box::pin(close(ctl, shared, refuse)).await,
            },
            Verdict::Refuse(retry) => {
                return Box::pin(ctl.fail(&locked_out(shared, peer, retry))).await
            }
        }
    };
    match req {
        Request::Create(_, None) => Box::pin(ctl.fail(&unauthorized(shared, peer, key))).await,
        Request::Create(rid, Some(token)) => {
            create(ctl, (peer, key), rid, shared, unauth, token).await
        }
        Request::Join(rid) => Box::pin(join(ctl, (peer, arrived), rid, shared, unauth, key)).await,
    }
}

/// Count and close a refused connection: with its frame, or silently.
async fn close(ctl: CtlChannel, shared: &Shared, refuse: Refuse) {
    let reason = match &refuse {
        None => RefusalReason::HandshakeFailed,
        Some(Frame::Error { code, .. }) => match code {
            ErrorCode::Timeout => RefusalReason::HandshakeTimeout,
            ErrorCode::UnsupportedVersion => RefusalReason::UnsupportedVersion,
            ErrorCode::ShuttingDown => RefusalReason::ShuttingDown,
            _ => RefusalReason::Malformed,
        },
        Some(_) => RefusalReason::Malformed,
    };
    shared.metrics.refuse(reason);
    if let Some(f) = refuse {
        ctl.fail(&f).await;
    }
}

/// Whether the relay refuses new sessions (draining or stopping).
fn draining(shared: &Shared) -> bool {
    *shared.phase.borrow() != RUNNING
}

/// The answer to a request that arrives while the relay drains.
fn shutting_down() -> Frame<'static> {
    Frame::error(ErrorCode::ShuttingDown, 0, "relay shutting down")
}

/// Wait for the connection's first byte; `false`: close silently.
async fn first_byte(tcp: &TcpStream, shared: &Shared) -> bool {
    //= spec/relay.md#RL-TIME-2
    //# The first byte MUST arrive within `first_byte_timeout_secs` of the accept (or
    //# `handshake_timeout_secs` if shorter), else close silently.
    let mut one = [0u8; 1];
    let first_byte = shared
        .limits
        .first_byte_timeout
        .min(shared.limits.handshake_timeout);
    match tokio::time::timeout(first_byte, tcp.peek(&mut one)).await {
        Ok(Ok(n)) if n > 0 => true,
        Ok(_) => false,
        Err(_) => {
            shared.metrics.refuse(RefusalReason::FirstByteTimeout);
            false
        }
    }
}

/// The TLS handshake (ALPN `xtcp-relay/1`) and the first frame, both within
/// the handshake deadline counted from the accept.
async fn first_frame(
    ctl: &mut CtlChannel,
    shared: &Shared,
    accepted: Instant,
) -> Result<Vec<u8>, Refuse> {
    // Handshake timeout: from the accept to the first frame.
    //= spec/relay.md#RL-TIME-1
    //# TLS handshake and the first complete frame MUST arrive within
    //# `handshake_timeout_secs`
    let deadline = accepted
        .checked_add(shared.limits.handshake_timeout)
        .unwrap_or(accepted);
    let first = tokio::time::timeout_at(deadline, async {
        ctl.handshake().await?;
        ctl.recv().await
    })
    .await;
    match first {
        Ok(Ok(_)) if ctl.alpn() != Some(proto::relay::wire::ALPN) => Err(Some(Frame::error(
            ErrorCode::UnsupportedVersion,
            0,
            "ALPN xtcp-relay/1 required",
        ))),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(CtlError::Frame(_))) => Err(Some(Frame::error(
            ErrorCode::Malformed,
            0,
            "malformed frame",
        ))),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(Frame::error(
            ErrorCode::Timeout,
            0,
            "handshake timeout",
        ))),
    }
}

/// The request in a first frame: a `CREATE` (its token checked) or a `JOIN`
/// of this relay's version.
fn request(shared: &Shared, bytes: &[u8]) -> Result<Request, Refuse> {
    match Frame::parse(bytes) {
        Ok((Frame::Create { version, .. } | Frame::Join { version, .. }, _))
            //= spec/relay.md#RL-VER-1
            //# A relay that receives another version MUST answer
            //# `ERROR UNSUPPORTED_VERSION` (§6) and close
            if version != VERSION =>
        {
            Err(Some(Frame::error(
                ErrorCode::UnsupportedVersion,
                0,
                "this relay speaks version 1",
            )))
        }
        Ok((
            Frame::Create {
                rendezvous_id,
                token,
                ..
            },
            _,
        )) => {
            Ok(Request::Create(rendezvous_id, token_key(shared, token)))
        }
        Ok((Frame::Join { rendezvous_id, .. }, _)) => Ok(Request::Join(rendezvous_id)),
        _ => Err(Some(Frame::error(
            ErrorCode::Malformed,
            0,
            "expected CREATE or JOIN",
        ))),
    }
}

/// A throttled guess waits for its source's slot. `Err`: the client gave up
/// (close silently) or the relay began to drain meanwhile.
async fn tarpit(ctl: &CtlChannel, shared: &Shared, at: Instant) -> Result<(), Refuse> {
    //= spec/relay.md#92-guessing
    //# the connection waits for it (tarpit; the client sees a slow
    //# answer), and only then is the JOIN looked up
    shared.metrics.tarpitted.inc();
    tokio::select! {
        _ = tokio::time::sleep_until(at) => {}
        // The client gave up: its slot stays spent.
        _ = ctl.peer_activity() => return Err(None),
    }
    if draining(shared) {
        return Err(Some(shutting_down()));
    }
    Ok(())
}

/// Count and log a guess refused because its source's queue is full; the
/// answer tells when to retry.
fn locked_out(shared: &Shared, peer: SocketAddr, retry: Duration) -> Frame<'static> {
    shared.metrics.refuse(RefusalReason::LockedOut);
    shared.refusal(peer, Refusal::LockedOut, serde_json::json!({}));
    let secs = u32::try_from(retry.as_secs().saturating_add(1)).unwrap_or(u32::MAX);
    Frame::error(
        ErrorCode::LockedOut,
        secs,
        "too many failed attempts; retry later",
    )
}

/// Count, log and answer a CREATE without a good operator token: a failed
/// guess of its source.
fn unauthorized(shared: &Shared, peer: SocketAddr, key: SourceKey) -> Frame<'static> {
    shared.metrics.refuse(RefusalReason::Unauthorized);
    let locked = shared.guesses.fail(key, Instant::now());
    shared.refusal(
        peer,
        Refusal::Unauthorized,
        serde_json::json!({"reason": "unauthorized", "locked_out": locked}),
    );
    Frame::error(
        ErrorCode::Unauthorized,
        0,
        "operator token missing or wrong",
    )
}

/// Count, log and answer a request over its source's waiting or paired share.
fn over_source_share(shared: &Shared, peer: SocketAddr) -> Frame<'static> {
    shared.metrics.refuse(RefusalReason::SourceShare);
    shared.refusal(peer, Refusal::OverSourceShare, serde_json::json!({}));
    Frame::error(
        ErrorCode::OverCapacity,
        0,
        "too many sessions from this address",
    )
}

/// An authorized CREATE: within its source's shares, the host waits for its
/// guest.
async fn create(
    ctl: CtlChannel,
    (peer, key): (SocketAddr, SourceKey),
    rid: [u8; 16],
    shared: &Arc<Shared>,
    unauth: Unauth,
    token: TokenKey,
) {
    //= spec/relay.md#96-admission-per-source
    //# A CREATE or JOIN over the waiting or paired share is answered
    //# `OVER_CAPACITY`.
    let waiting = shared.shares.try_take(key, Kind::Waiting);
    let paired = shared.shares.held(key)[Kind::Paired as usize];
    let Some(share) = waiting.filter(|_| (paired as usize) < shared.cfg.max_sessions_per_source)
    else {
        return Box::pin(ctl.fail(&over_source_share(shared, peer))).await;
    };
    //= spec/relay.md#RL-TOK-3
    //# A CREATE whose token's hosts hold `max_waiting_per_token` waiting sessions, or
    //# `max_sessions_per_token` paired ones, MUST be answered `OVER_CAPACITY`
    let quotas = &shared.token_quotas;
    let waiting = quotas.try_take(token, TokenKind::Waiting);
    let paired = quotas.held(token)[TokenKind::Paired as usize];
    let Some(unit) = waiting.filter(|_| (paired as usize) < shared.cfg.max_sessions_per_token)
    else {
        return Box::pin(ctl.fail(&over_token_quota(shared, peer))).await;
    };
    host(ctl, peer, rid, shared, unauth, (share, unit)).await
}

/// Count, log and answer a CREATE over its operator token's quota.
fn over_token_quota(shared: &Shared, peer: SocketAddr) -> Frame<'static> {
    shared.metrics.refuse(RefusalReason::TokenQuota);
    shared.refusal(
        peer,
        Refusal::OverSourceShare,
        serde_json::json!({"quota": "token"}),
    );
    Frame::error(
        ErrorCode::OverCapacity,
        0,
        "too many sessions for this operator token",
    )
}

/// A JOIN (from `peer`, arrived at `joined`): within the session limit and
/// its source's paired share, hand the guest to its waiting host; an
/// unknown session is a failed guess.
async fn join(
    ctl: CtlChannel,
    (peer, joined): (SocketAddr, Instant),
    rid: [u8; 16],
    shared: &Shared,
    unauth: Unauth,
    key: SourceKey,
) {
    let active = usize::try_from(shared.metrics.active.get()).unwrap_or(0);
    if active >= shared.cfg.max_sessions {
        // Checked before the lookup so a full relay never disturbs the
        // waiting table.
        shared.metrics.refuse(RefusalReason::OverCapacity);
        ctl.fail(&Frame::error(
            ErrorCode::OverCapacity,
            0,
            "too many sessions",
        ))
        .await;
        return;
    }
    let Some(share) = shared.shares.try_take(key, Kind::Paired) else {
        return ctl.fail(&over_source_share(shared, peer)).await;
    };
    let waiting = shared
        .waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&rid);
    match waiting {
        Some(w) => {
            drop(unauth);
            let guest = Guest {
                ctl,
                addr: peer,
                share,
                joined,
            };
            if let Err(g) = w.tx.send(guest) {
                // The host left between lookup and hand-over.
                shared.metrics.refuse(RefusalReason::UnknownSession);
                let f = Frame::error(ErrorCode::UnknownSession, 0, "unknown or expired session");
                g.ctl.fail(&f).await;
            }
        }
        None => {
            drop(share);
            shared.metrics.refuse(RefusalReason::UnknownSession);
            let locked = shared.guesses.fail(key, Instant::now());
            shared.refusal(
                peer,
                Refusal::UnknownSession,
                serde_json::json!({"reason": "unknown_session", "locked_out": locked}),
            );
            ctl.fail(&Frame::error(
                ErrorCode::UnknownSession,
                0,
                "unknown or expired session",
            ))
            .await;
        }
    }
}

/// The key of a CREATE's token if it is one of the operator tokens (its
/// hash; compared in constant time over all stored hashes, without holding
/// the table's lock), or [`ANONYMOUS`] if it is missing and anonymous hosts
/// are allowed.
fn token_key(shared: &Shared, token: &[u8]) -> Option<TokenKey> {
    let tokens = shared
        .tokens
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let anonymous = (shared.cfg.allow_anonymous_hosts && token.is_empty()).then_some(ANONYMOUS);
    if tokens.is_empty() {
        return anonymous;
    }
    //= spec/relay.md#RL-TOK-1
    //# It MUST NOT store or log tokens.
    let h = ring::digest::digest(&ring::digest::SHA256, token);
    let mut found = None;
    for t in tokens.iter() {
        // Compare every stored hash in full (no early exit).
        let diff = t
            .iter()
            .zip(h.as_ref())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(*t);
        }
    }
    found.or(anonymous)
}

/// The quota key shared by hosts without a token (`allow_anonymous_hosts`).
const ANONYMOUS: TokenKey = [0; 32];
