//! The UDP address service (`spec/relay.md` §12): the tokens a paired
//! session is granted in its `PAIRED` frames, their per-token rate limit,
//! and the loop that answers "your public UDP address is …".

use super::Shared;
use proto::relay::udp_service;
use proto::relay::wire::UdpGrant;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Answers per token per [`UDP_RATE_WINDOW`] (`spec/relay.md` §12.4).
pub const UDP_ANSWERS_PER_WINDOW: u32 = 20;
/// The UDP address service's rate-limit window.
pub const UDP_RATE_WINDOW: Duration = Duration::from_secs(10);

/// A live UDP address service token: its rate-limit window
/// (`spec/relay.md` §12.4). Present in the table exactly while its session lives.
pub(super) struct UdpToken {
    window_start: Instant,
    answers: u32,
}

/// The two tokens of one paired session. Dropping it (however the session
/// ends, including its task being cancelled) removes them from the table.
pub(super) struct UdpGrants {
    shared: Arc<Shared>,
    tokens: [[u8; 16]; 2],
}

impl Drop for UdpGrants {
    fn drop(&mut self) {
        //= spec/relay.md#123-tokens-and-their-lifetime
        //# Then both of the session's tokens are removed.
        let mut t = self
            .shared
            .udp_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for tok in &self.tokens {
            t.remove(tok);
        }
        self.shared.metrics.udp_grants.set(gauge_value(t.len()));
    }
}

impl Shared {
    /// Draw and register the UDP address service tokens of a session being
    /// paired (host's, guest's). `None` (PAIRED without a grant) if the service
    /// is off, the table is full or the CSPRNG fails (`spec/relay.md` §12.3).
    pub(super) fn grant(self: &Arc<Self>) -> Option<(UdpGrants, [UdpGrant; 2])> {
        let port = self.udp_port?;
        let mut tokens = [[0u8; 16]; 2];
        for t in &mut tokens {
            ring::rand::SecureRandom::fill(&self.rng, t).ok()?;
        }
        if tokens[0] == tokens[1] {
            return None;
        }
        {
            let mut table = self.udp_tokens.lock().unwrap_or_else(|p| p.into_inner());
            //= spec/relay.md#123-tokens-and-their-lifetime
            //# The table holds at most 2 × `max_sessions` tokens.
            if table.len() + 2 > self.cfg.max_sessions.saturating_mul(2)
                || tokens.iter().any(|t| table.contains_key(t))
            {
                return None;
            }
            let now = Instant::now();
            for t in tokens {
                table.insert(
                    t,
                    UdpToken {
                        window_start: now,
                        answers: 0,
                    },
                );
            }
            self.metrics.udp_grants.set(gauge_value(table.len()));
        }
        Some((
            UdpGrants {
                shared: self.clone(),
                tokens,
            },
            tokens.map(|token| UdpGrant { port, token }),
        ))
    }

    /// Whether a request with this token may be answered now: the token is
    /// live and within its rate limit (`spec/relay.md` §12.4).
    fn udp_admit(&self, token: &[u8; 16]) -> Admit {
        let mut table = self.udp_tokens.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = table.get_mut(token) else {
            return Admit::Unknown;
        };
        let now = Instant::now();
        if now.duration_since(t.window_start) >= UDP_RATE_WINDOW {
            t.window_start = now;
            t.answers = 0;
        }
        //= spec/relay.md#124-processing-and-rate-limit
        //# at most 20 answers (`UDP_ANSWERS_PER_WINDOW`) per 10 s window
        if t.answers >= UDP_ANSWERS_PER_WINDOW {
            return Admit::RateLimited;
        }
        t.answers += 1;
        Admit::Answer
    }
}

/// A table size as a gauge value.
fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What the UDP address service does with a well-formed request.
enum Admit {
    Answer,
    Unknown,
    RateLimited,
}

/// The UDP address service (`spec/relay.md` §12): answer authenticated,
/// rate-limited requests with their source address; drop everything else
/// silently. Requests are handled one at a time, in arrival order.
pub(super) async fn udp_loop(sock: UdpSocket, shared: Arc<Shared>) {
    // One byte more than a request: recv truncates silently, so a longer
    // datagram must read as REQUEST_LEN + 1 bytes (refused), never as a
    // valid-looking 48.
    let mut buf = [0u8; udp_service::REQUEST_LEN + 1];
    let m = &shared.metrics;
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // E.g. an ICMP error reported on the socket: nothing to do
                // but go on (yield so a persistent error cannot starve others).
                tracing::debug!("udp address service: {e}");
                tokio::task::yield_now().await;
                continue;
            }
        };
        m.udp_requests.inc();
        let admit = match udp_service::parse_request(buf.get(..n).unwrap_or(&[])) {
            Ok(req) => match shared.udp_admit(&req.token) {
                Admit::Answer => Some(req.nonce),
                Admit::Unknown => None,
                Admit::RateLimited => {
                    m.udp_rate_limited.inc();
                    None
                }
            },
            //= spec/relay.md#RL-UDP-2
            //# a shorter or longer datagram, or one with a non-zero padding byte, MUST be dropped
            Err(_) => None,
        };
        let Some(nonce) = admit else {
            m.udp_dropped.inc();
            continue;
        };
        //= spec/relay.md#124-processing-and-rate-limit
        //# sends the response (§12.2) to the datagram's source address.
        let (resp, len) = udp_service::encode_response(nonce, from);
        match sock.send_to(resp.get(..len).unwrap_or(&[]), from).await {
            Ok(_) => m.udp_answers.inc(),
            Err(_) => m.udp_dropped.inc(),
        };
    }
}
