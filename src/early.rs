//! Direct attempts begun at pairing (`spec/direct.md` §4.2): the preambles
//! (`crate::preamble`) carry each side's TCP candidates one relay trip after
//! the relay paired the peers, and both dial at once while the relay path's
//! e2e handshake still runs; the direct paths' tags wait for that
//! handshake's exporter. The session driver (`crate::session`) takes over
//! what was started here.

use crate::direct::DirectOptions;
use crate::direct::{self, DirectConn, DirectCtx, DirectListener, PathIo};
use crate::e2e::{Role, SessionTls};
use crate::preamble::{self, PreambleError, PreambleReader};
use crate::secret::SessionSecret;
use proto::session::Candidate;
use proto::session::PathPolicy;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

/// Direct TCP attempts begun at pairing (`spec/direct.md` §4.2): this side's
/// listener and candidates (sent in the preamble, `crate::preamble`), and
/// the peer's candidates, dialled the moment its preamble arrives, while
/// the relay path's e2e handshake still runs. Dropping it (the relay
/// path's handshake failed) stops all of it.
pub(crate) struct Early {
    ctx: DirectCtx,
    found: mpsc::Receiver<DirectConn>,
    exporter: watch::Sender<Option<[u8; 32]>>,
    listener: Option<DirectListener>,
    peer: tokio::sync::oneshot::Receiver<Result<Vec<Candidate>, PreambleError>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// This side's preamble as sent, and the peer's as received.
    own_preamble: Vec<u8>,
    peer_preamble: watch::Receiver<Option<Vec<u8>>>,
    role: Role,
}

impl Drop for Early {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Early {
    /// Start listening, send this side's preamble on `relay` (the pipe the
    /// relay just paired), and return the pipe wrapped so that the peer's
    /// preamble is taken off its front; the e2e handshake runs on that.
    pub(crate) async fn begin<S: PathIo>(
        mut relay: S,
        role: Role,
        secret: Arc<SessionSecret>,
        observed: SocketAddr,
        opts: &DirectOptions,
    ) -> io::Result<(Early, PreambleReader<S>)> {
        let (found_tx, found) = mpsc::channel(4);
        let (exporter, exporter_rx) = watch::channel(None);
        let ctx = DirectCtx {
            secret: secret.clone(),
            role,
            tls: SessionTls::new(role).map_err(io::Error::other)?,
            relay_exporter: exporter_rx,
            handshake_timeout: opts.handshake_timeout,
            connect_timeout: opts.connect_timeout,
            found: found_tx,
            received: Arc::new(AtomicU64::new(0)),
        };
        let direct_ok = opts.policy != PathPolicy::RelayOnly && opts.tcp;
        let listener = if direct_ok {
            DirectListener::start(ctx.clone())
                .map_err(|e| tracing::debug!("direct tcp: no listener: {e}"))
                .ok()
        } else {
            None
        };
        let own = listener
            .as_ref()
            .map(|l| direct::gather(l.port, observed, l.v6))
            .unwrap_or_default();
        let sealed = preamble::seal(&secret, role, &own).map_err(io::Error::other)?;
        relay.write_all(&sealed).await?;
        relay.flush().await?;
        let (pre_tx, pre_rx) = tokio::sync::oneshot::channel::<preamble::PeerPreamble>();
        let (peer_tx, peer) = tokio::sync::oneshot::channel();
        let dial_from = listener.as_ref().map(|l| (l.port, l.v6));
        let dial_ctx = ctx.clone();
        let (raw_tx, peer_preamble) = watch::channel(None);
        let task = tokio::spawn(async move {
            let got = match pre_rx.await {
                Ok(Ok(body)) => {
                    let c = preamble::open(&secret, role.peer(), &body);
                    raw_tx.send_replace(Some(body));
                    c
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(PreambleError::Closed),
            };
            let peers = match (&got, dial_from) {
                (Ok(c), Some((_, v6))) => direct::dialable(c, observed, v6),
                _ => Vec::new(),
            };
            let _ = peer_tx.send(got);
            // Attempt 0: both sides dial each other's candidates from their
            // listening port at the same moment (one relay trip after
            // pairing): simultaneous open where the NATs need it.
            if let (false, Some((port, _))) = (peers.is_empty(), dial_from) {
                direct::dial_all(dial_ctx, port, peers).await;
            }
        });
        let early = Early {
            ctx,
            found,
            exporter,
            listener,
            peer,
            task: Some(task),
            own_preamble: sealed,
            peer_preamble,
            role,
        };
        Ok((early, PreambleReader::new(relay, pre_tx)))
    }

    /// The relay path's tags bind both preambles (`spec/session.md` §3.4):
    /// `"xtcp preamble v1" ‖ SHA-256(host's preamble) ‖ SHA-256(guest's)`,
    /// each as sent on the wire without its length field, so that a relay
    /// that altered, dropped or swapped either fails both peers' checks.
    /// Ready once the peer's preamble arrived (it precedes its TLS bytes).
    pub(crate) fn relay_binding(&self) -> impl std::future::Future<Output = Option<Vec<u8>>> {
        let own = self.own_preamble.get(2..).unwrap_or_default().to_vec();
        let role = self.role;
        let mut peer = self.peer_preamble.clone();
        async move {
            let theirs = peer.wait_for(Option::is_some).await.ok()?.clone()?;
            let (h, g) = match role {
                Role::Host => (own, theirs),
                Role::Guest => (theirs, own),
            };
            let mut b = b"xtcp preamble v1".to_vec();
            for p in [h, g] {
                b.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &p).as_ref());
            }
            Some(b)
        }
    }

    /// The session's TLS configuration (the host's one certificate), for the
    /// relay path's handshake too.
    pub(crate) fn tls(&self) -> &SessionTls {
        &self.ctx.tls
    }

    /// Where the relay path's exporter is published to the direct attempts.
    pub(crate) fn exporter_publisher(&self) -> watch::Sender<Option<[u8; 32]>> {
        self.exporter.clone()
    }

    /// The relay path's handshake is done (its exporter was published the
    /// moment its TLS completed, `exporter_publisher`): the peer's
    /// candidates. Fails when the peer's preamble did not open (the relay
    /// tampered with it).
    pub(crate) async fn ready(&mut self) -> Result<Vec<Candidate>, PreambleError> {
        // The preamble precedes the TLS bytes the handshake already read:
        // its result is there, or nearly (a task switch away); bounded all
        // the same.
        match tokio::time::timeout(Duration::from_secs(5), &mut self.peer).await {
            Ok(Ok(r)) => r,
            _ => Err(PreambleError::Closed),
        }
    }

    /// Hand everything over to the driver (which then owns the first
    /// round's dialling task).
    pub(crate) fn into_parts(mut self) -> EarlyParts {
        EarlyParts {
            ctx: self.ctx.clone(),
            found: std::mem::replace(&mut self.found, mpsc::channel(1).1),
            exporter: std::mem::replace(&mut self.exporter, watch::channel(None).0),
            listener: self.listener.take(),
            dialing: self.task.take(),
        }
    }
}

/// What the session driver takes over from [`Early`].
pub(crate) struct EarlyParts {
    pub ctx: DirectCtx,
    pub found: mpsc::Receiver<DirectConn>,
    /// Keeps the relay exporter published to direct attempts.
    pub exporter: watch::Sender<Option<[u8; 32]>>,
    pub listener: Option<DirectListener>,
    /// The first round's dialling task.
    pub dialing: Option<tokio::task::JoinHandle<()>>,
}
