//! The relay journey on loopback: host → relay → guest, byte-exact, at scale,
//! across a fleet, through restarts, and against brute force.

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xtcp::relay::server::{self, RefusalReason, Relay};

async fn pair(relay: &TestRelay) -> (xtcp::Session, xtcp::Session) {
    pair_with(relay, xtcp::DirectOptions::default().relay_resume).await
}

/// [`pair`] with `relay_resume` (zero: a lost relay path ends the session,
/// `spec/direct.md` §4.8).
async fn pair_with(relay: &TestRelay, relay_resume: Duration) -> (xtcp::Session, xtcp::Session) {
    let peers = [(relay.addr, relay.fingerprint)];
    let mut host_opts = client(&peers, Some(TOKEN));
    host_opts.direct.relay_resume = relay_resume;
    let host = xtcp::host(&host_opts).await.expect("host");
    let code = host.code();
    let mut guest_opts = client(&peers, None);
    guest_opts.direct.relay_resume = relay_resume;
    let (h, g) = tokio::join!(host.accept(), xtcp::join(&code, &guest_opts));
    (h.expect("host accept"), g.expect("guest join"))
}

//= spec/relay.md#RL-FWD-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_256_mib_each_way_byte_exact() {
    let relay = start_relay(relay_config()).await;
    let (h, g) = pair(&relay).await;
    assert_eq!(h.path(), xtcp::Path::Relay);
    const LEN: u64 = 256 << 20;
    let (hr, gr) = tokio::join!(exchange_hashed(h, LEN, 11), exchange_hashed(g, LEN, 22));
    let (h_sent, h_got, h_n) = hr.expect("host side");
    let (g_sent, g_got, g_n) = gr.expect("guest side");
    assert_eq!((h_n, g_n), (LEN, LEN));
    assert_eq!(h_got, g_sent, "guest→host corrupted");
    assert_eq!(g_got, h_sent, "host→guest corrupted");
    assert_eq!(h_sent, sha256_of_gen(LEN, 11));
    let m = relay.relay.metrics();
    for _ in 0..500 {
        if m.active.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The relay moved the TLS records: payload plus a small overhead, no more.
    let h2g = m.bytes_host_to_guest.get();
    assert!(h2g > LEN && h2g < LEN + LEN / 50, "relay bytes {h2g}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_sessions_byte_exact() {
    server::raise_fd_limit();
    let mut cfg = relay_config();
    // All 2,000 clients come from 127.0.0.1, and so do the hosts' standby
    // registrations of sessions that last over 2 s (spec/direct.md §4.8).
    cfg.max_unauthenticated_per_source = 4096;
    cfg.max_waiting_per_source = 4096;
    let relay = start_relay(cfg).await;
    let peers = [(relay.addr, relay.fingerprint)];
    const N: usize = 1000;
    const LEN: u64 = 64 * 1024;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N as u64 {
        let host_opts = client(&peers, Some(TOKEN));
        let guest_opts = client(&peers, None);
        tasks.spawn(async move {
            let host = xtcp::host(&host_opts).await.map_err(|e| e.to_string())?;
            let code = host.code();
            let (h, g) = tokio::join!(host.accept(), xtcp::join(&code, &guest_opts));
            let (h, g) = (h.map_err(|e| e.to_string())?, g.map_err(|e| e.to_string())?);
            let (a, b) = tokio::join!(
                exchange_hashed(h, LEN, 2 * i + 1),
                exchange_hashed(g, LEN, 2 * i + 2)
            );
            let (a, b) = (a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?);
            Ok::<bool, String>(a.1 == b.0 && b.1 == a.0 && a.2 == LEN && b.2 == LEN)
        });
    }
    let mut ok = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        match r {
            Ok(Ok(true)) => ok += 1,
            Ok(Ok(false)) => panic!("a session was not byte-exact"),
            Ok(Err(e)) => panic!("session failed: {e}"),
            Err(e) => panic!("task: {e}"),
        }
    }
    assert_eq!(ok, N);
    assert_eq!(relay.relay.metrics().sessions_paired.get(), N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_same_relay_from_different_orders_and_failover() {
    let (tls, fp) = tls_for_relay();
    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(
            Relay::start(relay_config(), tls.clone(), None)
                .await
                .unwrap(),
        );
    }
    let addrs: Vec<_> = relays.iter().map(|r| r.local_addr()).collect();
    let list = |order: [usize; 3]| order.iter().map(|&i| (addrs[i], fp)).collect::<Vec<_>>();

    // Both orders name the same relay first for a given rendezvous id.
    let host = xtcp::host(&client(&list([0, 1, 2]), Some(TOKEN)))
        .await
        .unwrap();
    let code = host.code();
    let chosen = host.relay().to_string();
    let gopts = client(&list([2, 0, 1]), None);
    let (h, g) = tokio::join!(host.accept(), xtcp::join(&code, &gopts));
    let (h, g) = (h.unwrap(), g.unwrap());
    assert_eq!(h.relay(), g.relay());
    assert_eq!(h.relay(), chosen);
    let (a, b) = tokio::join!(
        exchange_hashed(h, 1 << 20, 1),
        exchange_hashed(g, 1 << 20, 2)
    );
    assert_eq!(a.unwrap().1, sha256_of_gen(1 << 20, 2));
    assert_eq!(b.unwrap().1, sha256_of_gen(1 << 20, 1));

    // Kill the relay a new session would use, before pairing: both meet on the next.
    let secret = loop {
        // Pick a secret whose first relay we then kill.
        let s = xtcp::secret::SessionSecret::generate().unwrap();
        let order = xtcp::relay::client::rendezvous_order(
            &addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            &s.rendezvous_id(),
        );
        if order[0] == addrs[0].to_string() {
            break s;
        }
    };
    let first = relays.remove(0);
    first.abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let order = xtcp::relay::client::rendezvous_order(
        &addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        &secret.rendezvous_id(),
    );
    let opts = client(&list([1, 0, 2]), Some(TOKEN));
    let waiting = xtcp::relay::client::create_session(&opts.relay, secret.rendezvous_id())
        .await
        .unwrap();
    assert_eq!(
        waiting.relay(),
        order[1],
        "host moved to the next relay in rendezvous order"
    );
    let gopts = client(&list([2, 1, 0]), None);
    let (hp, gp) = tokio::join!(
        waiting.paired(),
        xtcp::relay::client::join_session(&gopts.relay, secret.rendezvous_id())
    );
    let (hp, gp) = (hp.unwrap(), gp.unwrap());
    assert_eq!(gp.relay, order[1]);
    assert_eq!(hp.relay, order[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_waiting_follows_to_next_relay_when_its_relay_dies() {
    let (tls, fp) = tls_for_relay();
    let mut relays = Vec::new();
    for _ in 0..2 {
        relays.push(
            Relay::start(relay_config(), tls.clone(), None)
                .await
                .unwrap(),
        );
    }
    let addrs: Vec<String> = relays.iter().map(|r| r.local_addr().to_string()).collect();
    let peers: Vec<_> = relays.iter().map(|r| (r.local_addr(), fp)).collect();
    let host = xtcp::host(&client(&peers, Some(TOKEN))).await.unwrap();
    let first = host.relay().to_string();
    let idx = addrs.iter().position(|a| *a == first).unwrap();
    let code = host.code();
    let accept = tokio::spawn(host.accept());
    tokio::time::sleep(Duration::from_millis(50)).await;
    relays.remove(idx).abort();
    // Give the host time to notice and re-register (bounded wait on the metric).
    let survivor = relays[0].metrics();
    for _ in 0..1000 {
        if survivor.sessions_created.get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(survivor.sessions_created.get(), 1);
    let g = xtcp::join(&code, &client(&peers, None)).await.unwrap();
    let h = accept.await.unwrap().unwrap();
    assert_eq!(g.relay(), h.relay());
    assert_ne!(g.relay(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_mid_session_gives_clean_errors_and_a_clean_prefix() {
    // Without resumption (`tests/relay_resume.rs` has the default).
    let relay = start_relay(relay_config()).await;
    let (h, g) = pair_with(&relay, Duration::ZERO).await;
    let (mut hr, mut hw) = tokio::io::split(h);
    let (mut gr, _gw) = tokio::io::split(g);
    // The host streams generated bytes; the guest reads. Kill the relay mid-way.
    let writer = tokio::spawn(async move {
        let mut gen = Gen::new(5);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            gen.fill(&mut buf);
            if let Err(e) = hw.write_all(&buf).await {
                return e;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < 4 << 20 {
        let n = gr.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    relay.relay.abort();
    let guest_err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match gr.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .expect("guest noticed within 10 s");
    // No close_notify came from the host, so EOF must be an error, not a clean end.
    assert!(
        guest_err.is_some(),
        "a cut relay must not look like a clean close"
    );
    let werr = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("host noticed")
        .unwrap();
    assert!(
        matches!(
            werr.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
        ),
        "{werr:?}"
    );
    let mut expect = vec![0u8; got.len()];
    Gen::new(5).fill(&mut expect);
    assert!(
        got == expect,
        "the bytes received are exactly a prefix of the bytes sent"
    );
    let mut probe = [0u8; 1];
    assert!(
        hr.read(&mut probe).await.is_err(),
        "the host's read side fails too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_expired_codes_count_toward_lockout() {
    let mut cfg = relay_config();
    cfg.waiting_ttl_secs = 0.3;
    // Shorter than the TTL, so the session below outlives the guest's wait.
    cfg.guess_interval_secs = 0.15;
    let relay = start_relay(cfg).await;
    let peers = [(relay.addr, relay.fingerprint)];
    // An expired session: the host is told, and its code no longer joins.
    let host = xtcp::host(&client(&peers, Some(TOKEN))).await.unwrap();
    let code = host.code();
    let e = host.accept().await.unwrap_err();
    assert!(matches!(e, xtcp::Error::Expired), "{e}");
    let e = xtcp::join(&code, &client(&peers, None)).await.unwrap_err();
    assert!(matches!(e, xtcp::Error::UnknownSession), "{e}");
    // Four more wrong codes: five failures in all.
    for _ in 0..4 {
        let wrong = xtcp::secret::SessionSecret::generate().unwrap().code();
        let e = xtcp::join(&wrong, &client(&peers, None)).await.unwrap_err();
        assert!(matches!(e, xtcp::Error::UnknownSession), "{e}");
    }
    // The sixth attempt from this source, with a valid code, is not locked
    // out: it waits for the source's next guess slot and pairs.
    let host = xtcp::host(&client(&peers, Some(TOKEN))).await.unwrap();
    let code = host.code();
    let gopts = client(&peers, None);
    let t = std::time::Instant::now();
    let (h, g) = tokio::join!(host.accept(), xtcp::join(&code, &gopts));
    let waited = t.elapsed();
    let (h, g) = (
        h.expect("host"),
        g.expect("the neighbour with the right code pairs"),
    );
    drop((h, g));
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // A wrong code is still answered UNKNOWN_SESSION (at its slot).
    let wrong = xtcp::secret::SessionSecret::generate().unwrap().code();
    let e = xtcp::join(&wrong, &client(&peers, None)).await.unwrap_err();
    assert!(matches!(e, xtcp::Error::UnknownSession), "{e}");
    assert!(relay.relay.metrics().tarpitted.get() >= 1);
    assert_eq!(
        relay.relay.metrics().refused(RefusalReason::UnknownSession),
        6
    );
    assert!(e_line(&xtcp::Error::LockedOut(Duration::from_secs(300))).contains("locked out"));
}

fn e_line(e: &xtcp::Error) -> String {
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_expires_after_its_window() {
    let mut cfg = relay_config();
    cfg.lockout_failures = 2;
    cfg.lockout_secs = 0.5;
    cfg.guess_interval_secs = 0.4;
    let relay = start_relay(cfg).await;
    let peers = [(relay.addr, relay.fingerprint)];
    let guess = || async {
        let wrong = xtcp::secret::SessionSecret::generate().unwrap().code();
        let t = std::time::Instant::now();
        let r = xtcp::join(&wrong, &client(&peers, None)).await;
        assert!(matches!(r, Err(xtcp::Error::UnknownSession)), "{r:?}");
        t.elapsed()
    };
    for _ in 0..2 {
        assert!(guess().await < Duration::from_millis(350));
    }
    // Throttled: the third waits for its slot.
    assert!(guess().await >= Duration::from_millis(350));
    // After the window (no failure for 0.5 s) the source is fresh again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(guess().await < Duration::from_millis(350));
    let (h, g) = pair(&relay).await;
    drop((h, g));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_random_joins_pair_nothing_and_state_stays_bounded() {
    server::raise_fd_limit();
    let mut cfg = relay_config();
    // 64 parallel guessers from one address: let them all connect.
    cfg.max_unauthenticated_per_source = 1024;
    let relay = start_relay(cfg).await;
    let peers = [(relay.addr, relay.fingerprint)];
    let started = std::time::Instant::now();
    // A real waiting session the attacker tries to hit.
    let host = xtcp::host(&client(&peers, Some(TOKEN))).await.unwrap();
    let accept = tokio::spawn(host.accept());
    const N: u64 = 100_000;
    const PAR: u64 = 64;
    let mut set = tokio::task::JoinSet::new();
    // The lanes draw attempts from one pool: a lane waiting for a guess slot
    // (one per second, spec/relay.md §9.2) must not be left with a quota
    // of its own to serve at that rate once the others are done.
    let pool = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(N));
    for _ in 0..PAR {
        let cfg = client(&peers, None).relay;
        let pool = pool.clone();
        set.spawn(async move {
            let mut counts = [0u64; 3]; // unknown, locked out, other
            while pool
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let s = xtcp::secret::SessionSecret::generate().unwrap();
                match xtcp::relay::client::join_session(&cfg, s.rendezvous_id()).await {
                    Err(xtcp::relay::RelayError::UnknownSession) => counts[0] += 1,
                    Err(xtcp::relay::RelayError::LockedOut { .. }) => counts[1] += 1,
                    _ => counts[2] += 1,
                }
            }
            counts
        });
    }
    let mut total = [0u64; 3];
    while let Some(r) = set.join_next().await {
        let c = r.unwrap();
        for i in 0..3 {
            total[i] += c[i];
        }
    }
    assert_eq!(total.iter().sum::<u64>(), N);
    assert_eq!(total[2], 0, "every attempt was refused with a typed error");
    // Five free guesses, then one per second (spec/relay.md §9.2).
    let secs = started.elapsed().as_secs();
    assert!(
        total[0] <= 5 + secs + 1,
        "only the first failures and one per second reach the session table: {total:?} in {secs} s"
    );
    let m = relay.relay.metrics();
    assert_eq!(m.sessions_paired.get(), 0);
    assert_eq!(m.waiting.get(), 1);
    assert!(!accept.is_finished());
    // Nothing accumulates per attempt: one waiting session, one tracked
    // source, no connection left half-open.
    let mut sizes = relay.relay.table_sizes();
    for _ in 0..200 {
        if sizes.2 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        sizes = relay.relay.table_sizes();
    }
    assert_eq!(sizes, (1, 1, 0));
    accept.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_gate_session_creation() {
    let relay = start_relay(relay_config()).await;
    let peers = [(relay.addr, relay.fingerprint)];
    assert!(matches!(
        xtcp::host(&client(&peers, None)).await,
        Err(xtcp::Error::Unauthorized)
    ));
    assert!(matches!(
        xtcp::host(&client(&peers, Some("wrong"))).await,
        Err(xtcp::Error::Unauthorized)
    ));
    // No token configured: refused unless anonymous hosts are allowed explicitly.
    let mut cfg = relay_config();
    cfg.token_hashes.clear();
    let closed = start_relay(cfg.clone()).await;
    let p2 = [(closed.addr, closed.fingerprint)];
    assert!(matches!(
        xtcp::host(&client(&p2, None)).await,
        Err(xtcp::Error::Unauthorized)
    ));
    cfg.allow_anonymous_hosts = true;
    let open = start_relay(cfg).await;
    let p3 = [(open.addr, open.fingerprint)];
    assert!(xtcp::host(&client(&p3, None)).await.is_ok());
    // Reloading tokens takes effect for new sessions.
    relay
        .relay
        .reload_tokens(&[server::token_hash("fresh")])
        .unwrap();
    assert!(matches!(
        xtcp::host(&client(&peers, Some(TOKEN))).await,
        Err(xtcp::Error::Unauthorized)
    ));
    assert!(xtcp::host(&client(&peers, Some("fresh"))).await.is_ok());
}

//= spec/relay.md#RL-TLS-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_relay_certificate_is_a_clear_error() {
    let relay = start_relay(relay_config()).await;
    let peers = [(relay.addr, [0x55u8; 32])];
    let e = xtcp::host(&client(&peers, Some(TOKEN))).await.unwrap_err();
    assert!(matches!(e, xtcp::Error::RelayCertificateMismatch(_)), "{e}");
    // A closed port: unreachable.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let e = xtcp::host(&client(&[(addr, relay.fingerprint)], Some(TOKEN)))
        .await
        .unwrap_err();
    assert!(matches!(e, xtcp::Error::RelayUnreachable(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_paired_sessions() {
    let mut cfg = relay_config();
    cfg.drain_secs = 10.0;
    let relay = start_relay(cfg).await;
    let peers = [(relay.addr, relay.fingerprint)];
    let (h, g) = pair(&relay).await;
    let addr = relay.addr;
    let shutdown = tokio::spawn(relay.relay.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // New sessions are refused while draining …
    assert!(xtcp::host(&client(&[(addr, peers[0].1)], Some(TOKEN)))
        .await
        .is_err());
    // … while the paired one completes byte-exact.
    let (a, b) = tokio::join!(
        exchange_hashed(h, 8 << 20, 1),
        exchange_hashed(g, 8 << 20, 2)
    );
    assert_eq!(a.unwrap().1, sha256_of_gen(8 << 20, 2));
    assert_eq!(b.unwrap().1, sha256_of_gen(8 << 20, 1));
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_mode_and_rate_limit() {
    let mut cfg = relay_config();
    cfg.splice = false;
    cfg.forward_buffer = 16 * 1024;
    cfg.rate_limit_bytes_per_sec = Some(4 << 20);
    let relay = start_relay(cfg).await;
    let (h, g) = pair(&relay).await;
    let t = std::time::Instant::now();
    let (a, b) = tokio::join!(
        exchange_hashed(h, 6 << 20, 3),
        exchange_hashed(g, 2 << 20, 4)
    );
    let elapsed = t.elapsed();
    assert_eq!(a.unwrap().1, sha256_of_gen(2 << 20, 4));
    assert_eq!(b.unwrap().1, sha256_of_gen(6 << 20, 3));
    // 8 MiB at 4 MiB/s with a 4 MiB burst: at least ~1 s.
    assert!(
        elapsed >= Duration::from_millis(900),
        "rate limit not applied: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_paired_sessions_are_closed() {
    let mut cfg = relay_config();
    cfg.idle_timeout_secs = 0.3;
    let relay = start_relay(cfg).await;
    // Without resumption: the relay's cut ends the session.
    let (mut h, _g) = pair_with(&relay, Duration::ZERO).await;
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), h.read(&mut b))
        .await
        .expect("closed by the relay");
    assert!(r.is_err(), "an idle cut is not a clean TLS close");
}

//= spec/relay.md#RL-TLS-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_trusted_through_a_ca_file() {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let tls = server::server_tls(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let relay = Relay::start(relay_config(), tls, None).await.unwrap();
    let mut opts = client(&[(relay.local_addr(), [0; 32])], Some(TOKEN));
    opts.relay.trust = xtcp::relay::RelayTrust::Ca(vec![ca_cert.der().clone()]);
    assert!(
        xtcp::host(&opts).await.is_ok(),
        "the CA-issued relay certificate is trusted"
    );
    let other = xtcp::tls::self_signed(&["127.0.0.1"]).unwrap();
    opts.relay.trust = xtcp::relay::RelayTrust::Ca(other.chain);
    let e = xtcp::host(&opts).await.unwrap_err();
    assert!(matches!(e, xtcp::Error::RelayCertificateMismatch(_)), "{e}");
}

//= spec/relay.md#RL-TIME-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_bounded_and_timed_out() {
    let mut cfg = relay_config();
    cfg.max_unauthenticated = 2;
    cfg.handshake_timeout_secs = 0.5;
    let relay = start_relay(cfg).await;
    // Two silent connections take both slots (slow loris) …
    let mut a = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let m = relay.relay.metrics();
    for _ in 0..100 {
        if m.connections.get() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // … so a third is closed at once, without a byte.
    let mut c = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert_eq!(m.refused(RefusalReason::UnauthenticatedLimit), 1);
    // The silent ones are cut by the handshake timeout, freeing the slots.
    // (At most a TLS alert arrives before the close.)
    for s in [&mut a, &mut b] {
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "closed by the relay's handshake timeout");
        assert!(rest.len() <= 64);
    }
    let (h, g) = pair(&relay).await;
    drop((h, g));
}

// ───────────── UDP address service (spec/relay.md §4.2.4, §12) ─────────────

use proto::relay::udp_service::{encode_request, parse_response, Response, REQUEST_LEN};
use tokio::net::UdpSocket;
use xtcp::relay::client::Paired;

/// Pair a host and a guest at the relay level (no e2e session on top).
async fn pair_raw(relay: &TestRelay) -> (Paired, Paired) {
    let peers = [(relay.addr, relay.fingerprint)];
    let rid = xtcp::secret::SessionSecret::generate()
        .unwrap()
        .rendezvous_id();
    let hopts = client(&peers, Some(TOKEN));
    let waiting = xtcp::relay::client::create_session(&hopts.relay, rid)
        .await
        .expect("create");
    let gopts = client(&peers, None);
    let (h, g) = tokio::join!(
        waiting.paired(),
        xtcp::relay::client::join_session(&gopts.relay, rid)
    );
    (h.expect("host paired"), g.expect("guest paired"))
}

/// This peer's grant (the test relay always has the service on).
fn grant(p: &Paired) -> xtcp::relay::UdpService {
    p.udp.expect("PAIRED carried a UDP grant")
}

/// The next datagram on `sock`, as a response. The bound is for a broken
/// relay; a working one answers on loopback in microseconds.
async fn answer(sock: &UdpSocket) -> Response {
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .expect("an answer within 10 s")
        .expect("recv");
    parse_response(&buf[..n]).expect("a well-formed response")
}

async fn udp_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("bind")
}

//= spec/relay.md#RL-GRANT-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_service_answers_each_granted_peer_with_its_own_address() {
    let relay = start_relay(relay_config()).await;
    let service = relay.relay.udp_local_addr().expect("service on");
    assert!(service.ip().is_loopback() && service.port() != 0);
    let (h, g) = pair_raw(&relay).await;
    let (hg, gg) = (grant(&h), grant(&g));
    // The relay's IP as each client reached it over TCP, with the bound port.
    let want = std::net::SocketAddr::new(relay.addr.ip(), service.port());
    assert_eq!((hg.addr, gg.addr), (want, want));
    assert_ne!(hg.token, gg.token, "host and guest share a token");
    assert_eq!(relay.relay.udp_grants(), 2);
    for (i, svc) in [hg, gg].iter().enumerate() {
        let sock = udp_socket().await;
        let nonce = 0xdead_beef_0000_0000 | i as u64;
        sock.send_to(&encode_request(&svc.token, nonce), svc.addr)
            .await
            .unwrap();
        let r = answer(&sock).await;
        assert_eq!(r.nonce, nonce);
        assert_eq!(
            r.observed,
            sock.local_addr().unwrap(),
            "not our own address"
        );
    }
    let m = relay.relay.metrics();
    assert_eq!(m.udp_answers.get(), 2);
    assert_eq!(m.udp_dropped.get(), 0);
    let text = m.render();
    assert!(text.contains("xtcp_relay_udp_answers_total 2"), "{text}");
    assert!(text.contains("xtcp_relay_udp_grants_active 2"), "{text}");
}

/// Every bad request is dropped silently. Absence is shown without waiting:
/// the bad datagram goes first, a good one with another nonce second, on the
/// same socket; the relay handles them in order, so had it answered the bad
/// one, that answer would arrive first.
//= spec/relay.md#RL-UDP-2
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_service_drops_bad_requests_silently() {
    let relay = start_relay(relay_config()).await;
    let (h, _g) = pair_raw(&relay).await;
    let svc = grant(&h);
    let sock = udp_socket().await;
    let mut wrong = svc.token;
    wrong[0] ^= 1;
    let good = encode_request(&svc.token, 1);
    let mut long = good.to_vec();
    long.push(0);
    let mut padded = good;
    padded[REQUEST_LEN - 1] = 1;
    let mut as_response = good;
    as_response[0] = proto::relay::udp_service::RESPONSE;
    let bad: [(&str, Vec<u8>); 7] = [
        ("wrong token", encode_request(&wrong, 1).to_vec()),
        ("short", good[..REQUEST_LEN - 1].to_vec()),
        ("long", long),
        ("non-zero padding", padded.to_vec()),
        ("response type", as_response.to_vec()),
        ("punch probe type", {
            let mut p = good;
            p[0] = 0xA2;
            p.to_vec()
        }),
        ("empty", Vec::new()),
    ];
    for (i, (what, d)) in bad.iter().enumerate() {
        let good_nonce = 1000 + i as u64;
        sock.send_to(d, svc.addr).await.unwrap();
        sock.send_to(&encode_request(&svc.token, good_nonce), svc.addr)
            .await
            .unwrap();
        let r = answer(&sock).await;
        assert_eq!(r.nonce, good_nonce, "the relay answered a {what} request");
    }
    let m = relay.relay.metrics();
    assert_eq!(m.udp_dropped.get(), bad.len() as u64);
    assert_eq!(m.udp_answers.get(), bad.len() as u64);
    assert_eq!(m.udp_requests.get(), 2 * bad.len() as u64);
}

/// A session's two tokens die with it; another session's live on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_tokens_die_with_their_session() {
    let relay = start_relay(relay_config()).await;
    let (ah, ag) = pair_raw(&relay).await;
    let (bh, _bg) = pair_raw(&relay).await;
    let (a_host, a_guest, b_host) = (grant(&ah), grant(&ag), grant(&bh));
    let sock = udp_socket().await;
    sock.send_to(&encode_request(&a_host.token, 1), a_host.addr)
        .await
        .unwrap();
    assert_eq!(
        answer(&sock).await.nonce,
        1,
        "A's token works while A lives"
    );
    assert_eq!(relay.relay.udp_grants(), 4);

    // Both peers of A leave: the relay sees EOF both ways and ends A.
    drop((ah, ag));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while relay.relay.udp_grants() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A's tokens still live: {}",
            relay.relay.udp_grants()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sock.send_to(&encode_request(&a_host.token, 2), a_host.addr)
        .await
        .unwrap();
    sock.send_to(&encode_request(&a_guest.token, 3), a_guest.addr)
        .await
        .unwrap();
    sock.send_to(&encode_request(&b_host.token, 4), b_host.addr)
        .await
        .unwrap();
    let r = answer(&sock).await;
    assert_eq!(r.nonce, 4, "a token of an ended session was answered");
    assert_eq!(relay.relay.metrics().udp_dropped.get(), 2);
}

/// At most UDP_ANSWERS_PER_WINDOW answers per token per window. The marker
/// (the same session's other token, which has its own budget) is sent last on
/// the same socket, so every answer the relay gave before it has arrived
/// when the marker's answer does. (Flake-free: the 10 s window cannot end
/// between 26 loopback datagrams handled in order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_service_rate_limits_each_token() {
    let relay = start_relay(relay_config()).await;
    let (h, g) = pair_raw(&relay).await;
    let (limited, marker) = (grant(&h), grant(&g));
    let sock = udp_socket().await;
    for nonce in 1..=25u64 {
        sock.send_to(&encode_request(&limited.token, nonce), limited.addr)
            .await
            .unwrap();
    }
    sock.send_to(&encode_request(&marker.token, 999), marker.addr)
        .await
        .unwrap();
    let mut answered = Vec::new();
    loop {
        let r = answer(&sock).await;
        if r.nonce == 999 {
            break;
        }
        answered.push(r.nonce);
    }
    let want: Vec<u64> = (1..=u64::from(server::UDP_ANSWERS_PER_WINDOW)).collect();
    assert_eq!(answered, want);
    let m = relay.relay.metrics();
    assert_eq!(m.udp_rate_limited.get(), 5);
    assert_eq!(m.udp_dropped.get(), 5);
}

//= spec/relay.md#RL-GRANT-2
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_without_udp_service_pairs_without_a_grant() {
    let relay = start_relay(server::RelayConfig {
        udp_listen: None,
        ..relay_config()
    })
    .await;
    assert_eq!(relay.relay.udp_local_addr(), None);
    let (h, g) = pair_raw(&relay).await;
    assert_eq!((h.udp, g.udp), (None, None));
    assert_eq!(relay.relay.udp_grants(), 0);
}

/// A raw control channel to `relay` offering the ALPN ids `alpn` (none if
/// empty), its TLS handshake done.
async fn raw_ctl(relay: &TestRelay, alpn: &[&[u8]]) -> xtcp::relay::ctl::CtlChannel {
    let mut cfg = rustls::ClientConfig::builder_with_provider(xtcp::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(
            xtcp::tls::SignatureOnlyVerifier::new(|_| Ok(())),
        ))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(cfg), "localhost".try_into().unwrap())
            .unwrap();
    let mut ctl = xtcp::relay::ctl::CtlChannel::new(tcp, conn);
    ctl.handshake().await.unwrap();
    ctl
}

/// The relay's answer to `frame` on `ctl`: the error code and reason.
async fn first_answer(
    mut ctl: xtcp::relay::ctl::CtlChannel,
    frame: proto::relay::wire::Frame<'_>,
) -> (proto::relay::wire::ErrorCode, String) {
    ctl.send(&frame).await.unwrap();
    let bytes = ctl.recv().await.unwrap();
    match proto::relay::wire::Frame::parse(&bytes).unwrap().0 {
        proto::relay::wire::Frame::Error { code, reason, .. } => {
            (code, String::from_utf8_lossy(reason).into_owned())
        }
        f => panic!("expected ERROR, got {f:?}"),
    }
}

//= spec/relay.md#RL-VER-1
//= spec/relay.md#RL-ALPN-3
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_versions_and_a_missing_alpn_get_unsupported_version() {
    use proto::relay::wire::{ErrorCode, Frame, ALPN};
    let relay = start_relay(relay_config()).await;
    // ALPN offered: the relay selects it; a version-2 JOIN is refused.
    let ctl = raw_ctl(&relay, &[ALPN]).await;
    assert_eq!(ctl.alpn(), Some(ALPN));
    let join2 = Frame::Join {
        version: 2,
        rendezvous_id: [7; 16],
    };
    assert_eq!(
        first_answer(ctl, join2).await,
        (
            ErrorCode::UnsupportedVersion,
            "this relay speaks version 1".to_string()
        )
    );
    // No ALPN offered: the handshake completes, the first frame is refused.
    let ctl = raw_ctl(&relay, &[]).await;
    assert_eq!(ctl.alpn(), None);
    let join1 = Frame::Join {
        version: 1,
        rendezvous_id: [7; 16],
    };
    assert_eq!(
        first_answer(ctl, join1).await.0,
        ErrorCode::UnsupportedVersion
    );
}
