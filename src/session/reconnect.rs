//! Setting a lost relay path up again (`spec/direct.md` §4.8) and reading
//! this host's addresses (§4.9): the driver's I/O for both; the rules are
//! the path manager's.

use super::PathIo;
use crate::direct_udp::RelayUdp;
use crate::e2e::Role;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What setting up a lost relay path again needs (`spec/direct.md` §4.8).
#[derive(Clone)]
pub(crate) struct Reconnect {
    /// The relays, their trust and the host's operator token.
    pub relay_cfg: crate::relay::RelayClientConfig,
    /// The relay the session was paired on.
    pub relay: String,
    pub secret: Arc<crate::secret::SessionSecret>,
    /// Bound on each e2e handshake.
    pub handshake_timeout: Duration,
    /// The application's own binding bytes (`E2eOptions::binding`).
    pub binding: Vec<u8>,
}

/// A relay connection set up again: the authenticated stream, this side's
/// address and UDP grant as that relay saw it, and the relay's name.
pub(super) struct Reconnected {
    pub(super) io: Box<dyn PathIo>,
    pub(super) local: Option<SocketAddr>,
    pub(super) observed: SocketAddr,
    pub(super) udp: Option<RelayUdp>,
    pub(super) relay: String,
}

/// The tag binding of relay connection `generation` ≥ 1 (`spec/session.md`
/// §3.3): it names the generation and the first relay path's exporter, so
/// it proves this very session, and a path of one generation does not pass
/// for another.
fn resumed_binding(extra: &[u8], generation: u32, first_exporter: &[u8; 32]) -> Vec<u8> {
    let mut b = extra.to_vec();
    b.extend_from_slice(b"xtcp relay resume v1");
    b.extend_from_slice(&generation.to_be_bytes());
    b.extend_from_slice(first_exporter);
    b
}

/// One attempt at relay connection `generation`: re-pair under that
/// generation's rendezvous id (the host registers and waits, the guest
/// joins), then the e2e handshake bound to the session (§4.8).
pub(super) async fn reconnect_relay(
    rc: Reconnect,
    role: Role,
    generation: u32,
    first_exporter: [u8; 32],
) -> Result<Reconnected, String> {
    use crate::relay::client;
    let rid = rc.secret.rendezvous_id_for(generation);
    let order = client::resume_order(&rc.relay_cfg.relays, &rc.secret.rendezvous_id(), &rc.relay);
    let paired = match role {
        Role::Host => {
            client::create_session_in(&rc.relay_cfg, rid, order)
                .await
                .map_err(|e| e.to_string())?
                .paired()
                .await
        }
        Role::Guest => client::join_session_in(&rc.relay_cfg, rid, order).await,
    }
    .map_err(|e| e.to_string())?;
    let binding = resumed_binding(&rc.binding, generation, &first_exporter);
    let local = paired.stream.local_addr().ok();
    let udp = paired.udp.map(|u| RelayUdp {
        addr: u.addr,
        token: u.token,
    });
    let io = crate::e2e::handshake_bound(
        paired.stream,
        role,
        &rc.secret,
        rc.handshake_timeout,
        async { Some(binding) },
        |_| {},
        Vec::new,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(Reconnected {
        io: Box::new(io),
        local,
        observed: paired.observed,
        udp,
        relay: paired.relay,
    })
}

/// How often the driver reads this host's addresses (§4.9).
pub(super) const ADDRESS_POLL: Duration = Duration::from_millis(500);

/// This host's interface addresses (an empty set if they cannot be read:
/// then nothing ever looks changed).
pub(super) fn local_addrs() -> std::collections::BTreeSet<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Default::default();
    };
    addrs
        .filter_map(|ifa| {
            let a = ifa.address?;
            a.as_sockaddr_in()
                .map(|s| std::net::IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| std::net::IpAddr::V6(s.ip())))
        })
        .collect()
}
