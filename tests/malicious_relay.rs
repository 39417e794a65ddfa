//! A relay that attacks the peers it pairs. Every case must end in a clean
//! failure at both peers within a bounded time, with zero application bytes
//! accepted (DESIGN.md "Security properties"; spec/session.md §4).

mod common;

use common::*;
use proto::relay::wire::{Frame, VERSION};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use xtcp::relay::ctl::CtlChannel;

/// Bound for every peer operation in this file.
const BOUND: Duration = Duration::from_secs(15);

/// Accepts CREATE/JOIN like a relay, pairs by rendezvous id and hands each
/// pair of raw streams (host, guest) to the test, which then misbehaves.
async fn evil_relay() -> (
    SocketAddr,
    [u8; 32],
    mpsc::UnboundedReceiver<(TcpStream, TcpStream)>,
) {
    let (tls, fp) = tls_for_relay();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let hosts: Arc<Mutex<HashMap<[u8; 16], CtlChannel>>> = Arc::default();
    // Signals each host registration (a JOIN may overtake the insertion that
    // follows the host's CREATED).
    let arrived = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = l.accept().await else {
                return;
            };
            let (tls, hosts, tx) = (tls.clone(), hosts.clone(), tx.clone());
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let mut ctl = CtlChannel::new(tcp, rustls::ServerConnection::new(tls).unwrap());
                ctl.handshake().await.unwrap();
                let b = ctl.recv().await.unwrap();
                match Frame::parse(&b).unwrap().0 {
                    Frame::Create { rendezvous_id, .. } => {
                        ctl.send(&Frame::Created { ttl_secs: 60 }).await.unwrap();
                        hosts.lock().unwrap().insert(rendezvous_id, ctl);
                        arrived.notify_waiters();
                    }
                    Frame::Join {
                        rendezvous_id,
                        version,
                    } => {
                        assert_eq!(version, VERSION);
                        let wait_host = async {
                            loop {
                                let n = arrived.notified();
                                tokio::pin!(n);
                                n.as_mut().enable();
                                if let Some(h) = hosts.lock().unwrap().remove(&rendezvous_id) {
                                    return h;
                                }
                                n.await;
                            }
                        };
                        let mut host = tokio::time::timeout(Duration::from_secs(10), wait_host)
                            .await
                            .expect("host registered");
                        host.send(&Frame::Paired {
                            observed: peer,
                            udp: None,
                        })
                        .await
                        .unwrap();
                        ctl.send(&Frame::Paired {
                            observed: peer,
                            udp: None,
                        })
                        .await
                        .unwrap();
                        let (h, g) = tokio::try_join!(host.finish(), ctl.finish()).unwrap();
                        let _ = tx.send((h, g));
                    }
                    f => panic!("unexpected {f:?}"),
                }
            });
        }
    });
    (addr, fp, rx)
}

/// The attacks end the relay path; whether the session then sets up a new
/// one is `spec/direct.md` §4.8's business, tested where it says so: here
/// a lost relay path ends the session (`relay_resume` zero).
fn opts(addr: SocketAddr, fp: [u8; 32], token: Option<&str>) -> xtcp::Options {
    let mut o = client(&[(addr, fp)], token);
    o.e2e.handshake_timeout = Duration::from_secs(2);
    o.direct.relay_resume = Duration::ZERO;
    o
}

/// Run host and guest against the evil relay; `attack` gets the paired streams.
/// Returns both peers' results (Ok = a session was established).
async fn run_attack<F, Fut>(
    attack: F,
) -> (
    Result<xtcp::Session, xtcp::Error>,
    Result<xtcp::Session, xtcp::Error>,
)
where
    F: FnOnce(TcpStream, TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    run_attack_with(attack, Duration::ZERO).await
}

/// [`run_attack`] with `relay_resume` set: the relay attacks the first
/// pairing only and forwards every later one (the sessions' relay paths set
/// up again) honestly.
async fn run_attack_with<F, Fut>(
    attack: F,
    relay_resume: Duration,
) -> (
    Result<xtcp::Session, xtcp::Error>,
    Result<xtcp::Session, xtcp::Error>,
)
where
    F: FnOnce(TcpStream, TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (addr, fp, mut rx) = evil_relay().await;
    let with = |token| {
        let mut o = opts(addr, fp, token);
        o.direct.relay_resume = relay_resume;
        o
    };
    let host = xtcp::host(&with(Some(TOKEN))).await.unwrap();
    let code = host.code();
    // Detached: it ends when its connections do (or with the test's runtime).
    tokio::spawn(async move {
        if let Some((h, g)) = rx.recv().await {
            tokio::spawn(attack(h, g));
        }
        while let Some((h, g)) = rx.recv().await {
            tokio::spawn(forward_tampered(h, g, None, None));
        }
    });
    let gopts = with(None);
    let (h, g) = tokio::time::timeout(BOUND, async {
        tokio::join!(host.accept(), xtcp::join(&code, &gopts))
    })
    .await
    .expect("both peers finish within the bound");
    (h, g)
}

fn assert_both_failed(
    r: (
        Result<xtcp::Session, xtcp::Error>,
        Result<xtcp::Session, xtcp::Error>,
    ),
    case: &str,
) {
    match r {
        (Err(h), Err(g)) => {
            // Each error is a single clear line.
            assert!(!h.to_string().contains('\n') && !g.to_string().contains('\n'));
        }
        (h, g) => panic!(
            "{case}: expected both peers to fail, got host {:?} guest {:?}",
            h.map(|_| ()),
            g.map(|_| ())
        ),
    }
}

/// A byte-level tamper on one direction at an offset.
#[derive(Clone, Copy, Debug)]
enum Tamper {
    Flip,
    Drop(usize),
    Dup(usize),
    Reorder(usize),
    Inject,
    Truncate,
}

/// Forward `src` → `dst`, applying `t` once at byte offset `at`.
async fn tamper_pump(
    mut src: impl AsyncRead + Unpin,
    mut dst: impl AsyncWrite + Unpin,
    t: Option<(Tamper, usize)>,
) -> bool {
    let mut off = 0usize;
    let mut held: Vec<u8> = Vec::new();
    let mut done = t.is_none();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = buf[..n].to_vec();
        if let (false, Some((kind, at))) = (done, t) {
            if off + chunk.len() > at {
                let i = at - off;
                match kind {
                    Tamper::Flip => {
                        chunk[i] ^= 0x01;
                        done = true;
                    }
                    Tamper::Drop(k) => {
                        let end = (i + k).min(chunk.len());
                        chunk.drain(i..end);
                        done = true;
                    }
                    Tamper::Dup(k) => {
                        let end = (i + k).min(chunk.len());
                        let copy = chunk[i..end].to_vec();
                        chunk.splice(end..end, copy);
                        done = true;
                    }
                    Tamper::Reorder(k) => {
                        // Swap [i, i+k) with the k bytes that follow (within this chunk).
                        if i + 2 * k <= chunk.len() {
                            let a = chunk[i..i + k].to_vec();
                            let b = chunk[i + k..i + 2 * k].to_vec();
                            chunk[i..i + k].copy_from_slice(&b);
                            chunk[i + k..i + 2 * k].copy_from_slice(&a);
                        } else {
                            held = chunk.split_off(i);
                        }
                        done = true;
                    }
                    Tamper::Inject => {
                        chunk.splice(
                            i..i,
                            b"\x17\x03\x03\x00\x20injected-by-an-evil-relay-xxxxxxx"
                                .iter()
                                .copied(),
                        );
                        done = true;
                    }
                    Tamper::Truncate => {
                        chunk.truncate(i);
                        let _ = dst.write_all(&chunk).await;
                        let _ = dst.shutdown().await;
                        return true;
                    }
                }
            }
        }
        off += n;
        if dst.write_all(&chunk).await.is_err() {
            break;
        }
        if !held.is_empty() {
            // Reorder across reads: the held bytes go after the next chunk.
            let h = std::mem::take(&mut held);
            let n = src.read(&mut buf).await.unwrap_or_default();
            off += n;
            let _ = dst.write_all(&buf[..n]).await;
            let _ = dst.write_all(&h).await;
        }
    }
    let _ = dst.shutdown().await;
    done && t.is_some()
}

/// Forward both ways with the tampers; true if a requested tamper was applied.
async fn forward_tampered(
    h: TcpStream,
    g: TcpStream,
    h2g: Option<(Tamper, usize)>,
    g2h: Option<(Tamper, usize)>,
) -> bool {
    let (hr, hw) = h.into_split();
    let (gr, gw) = g.into_split();
    let (a, b) = tokio::join!(tamper_pump(hr, gw, h2g), tamper_pump(gr, hw, g2h));
    a || b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_evil_relay_baseline_works() {
    // The harness itself is sound: with no tamper the session comes up.
    let (h, g) = run_attack(|h, g| async move {
        assert!(!forward_tampered(h, g, None, None).await);
    })
    .await;
    let (h, g) = (h.expect("host"), g.expect("guest"));
    let (a, b) = tokio::join!(
        exchange_hashed(h, 1 << 20, 1),
        exchange_hashed(g, 1 << 20, 2)
    );
    assert_eq!(a.unwrap().1, sha256_of_gen(1 << 20, 2));
    assert_eq!(b.unwrap().1, sha256_of_gen(1 << 20, 1));
}

//= spec/session.md#SE-TAG-3
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_byte_tampering_during_the_handshake_fails_closed() {
    // Offsets inside the preamble (sealed candidates, ≈ 43 bytes with the
    // one loopback candidate: 5, 40), inside the ClientHello (guest→host) and
    // inside the server's encrypted flight (host→guest).
    let cases = [
        (Tamper::Flip, 40usize),
        (Tamper::Flip, 150),
        (Tamper::Drop(7), 100),
        (Tamper::Dup(9), 100),
        (Tamper::Reorder(16), 60),
        (Tamper::Inject, 5),
        (Tamper::Truncate, 120),
    ];
    for (kind, at) in cases {
        for dir in 0..2 {
            let (h2g, g2h) = if dir == 0 {
                (Some((kind, at)), None)
            } else {
                (None, Some((kind, at)))
            };
            let applied = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = applied.clone();
            let r = run_attack(move |h, g| async move {
                if forward_tampered(h, g, h2g, g2h).await {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            })
            .await;
            assert_both_failed(r, &format!("{kind:?} at {at} dir {dir}"));
            // The pump ends once both peers closed: wait for it (bounded).
            for _ in 0..200 {
                if applied.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                applied.load(std::sync::atomic::Ordering::SeqCst),
                "{kind:?} at {at} dir {dir}: tamper point reached"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_tampering_mid_stream_never_delivers_a_corrupted_byte() {
    for kind in [
        Tamper::Flip,
        Tamper::Drop(100),
        Tamper::Dup(100),
        Tamper::Inject,
        Tamper::Truncate,
    ] {
        let at = 300_000usize;
        let (h, g) = run_attack(move |h, g| async move {
            forward_tampered(h, g, Some((kind, at)), None).await;
        })
        .await;
        let (h, mut g) = (h.expect("host up"), g.expect("guest up"));
        let writer = tokio::spawn(async move {
            let mut h = h;
            let mut gen = Gen::new(9);
            let mut buf = vec![0u8; 16 * 1024];
            for _ in 0..64 {
                gen.fill(&mut buf);
                if h.write_all(&buf).await.is_err() {
                    return;
                }
            }
            let _ = h.shutdown().await;
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let err = tokio::time::timeout(BOUND, async {
            loop {
                match g.read(&mut buf).await {
                    Ok(0) => return None,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => return Some(e),
                }
            }
        })
        .await
        .expect("bounded");
        assert!(
            err.is_some(),
            "{kind:?}: tampering must surface as an error"
        );
        assert!(
            got.len() < at,
            "{kind:?}: nothing after the tamper point is accepted"
        );
        let mut expect = vec![0u8; got.len()];
        Gen::new(9).fill(&mut expect);
        assert!(
            got == expect,
            "{kind:?}: accepted bytes are exactly a prefix of what was sent"
        );
        writer.abort();
    }
}

/// (b) with resumption (the default): the tampered relay connection ends,
/// a new relay path is set up (the same relay, forwarding honestly this
/// time) and the session completes byte-exact: tampering costs a stall,
/// never a corrupted, lost or duplicated byte (`spec/direct.md` §4.8).
//= spec/direct.md#DI-RELAY-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_tampering_mid_stream_is_healed_by_a_new_relay_path_byte_exact() {
    for kind in [Tamper::Flip, Tamper::Truncate] {
        let at = 300_000usize;
        let (h, g) = run_attack_with(
            move |h, g| async move {
                forward_tampered(h, g, Some((kind, at)), None).await;
            },
            Duration::from_secs(10),
        )
        .await;
        let (h, mut g) = (h.expect("host up"), g.expect("guest up"));
        let len = 64 * 16 * 1024;
        let writer = tokio::spawn(async move {
            let mut h = h;
            let mut gen = Gen::new(9);
            let mut buf = vec![0u8; 16 * 1024];
            for _ in 0..64 {
                gen.fill(&mut buf);
                h.write_all(&buf).await?;
            }
            h.shutdown().await?;
            std::io::Result::Ok(h)
        });
        let mut got = Vec::new();
        tokio::time::timeout(BOUND, g.read_to_end(&mut got))
            .await
            .expect("bounded")
            .unwrap_or_else(|e| panic!("{kind:?}: the session survives: {e}"));
        let mut expect = vec![0u8; len];
        Gen::new(9).fill(&mut expect);
        assert!(got == expect, "{kind:?}: every byte exactly once");
        let h = writer.await.unwrap().expect("host wrote everything");
        drop(h);
        drop(g);
    }
}

/// (a) The relay terminates TLS toward each peer with its own keys.
//= spec/session.md#SE-TAG-2
//= spec/session.md#SE-TAG-3
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mitm_with_its_own_keys_fails_closed() {
    let r = run_attack(|mut h, mut g| async move {
        // The preambles (sealed candidates, `spec/session.md` §3.4) go
        // through unchanged: the MITM cannot open them, only pass them on.
        async fn preamble(s: &mut TcpStream) -> Vec<u8> {
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.unwrap();
            let mut p = vec![0u8; 2 + usize::from(u16::from_be_bytes(len))];
            p[..2].copy_from_slice(&len);
            s.read_exact(&mut p[2..]).await.unwrap();
            p
        }
        let (hp, gp) = tokio::join!(preamble(&mut h), preamble(&mut g));
        h.write_all(&gp).await.unwrap();
        g.write_all(&hp).await.unwrap();
        // TLS server toward the guest (which is a TLS client) …
        let ck = xtcp::tls::self_signed(&["peer.xtcp.invalid"]).unwrap();
        let mut scfg = rustls::ServerConfig::builder_with_provider(xtcp::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(ck.chain, ck.key)
            .unwrap();
        scfg.alpn_protocols = vec![xtcp::e2e::ALPN.to_vec()];
        // … and TLS client toward the host.
        let mut ccfg = rustls::ClientConfig::builder_with_provider(xtcp::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(xtcp::tls::SignatureOnlyVerifier::new(
                |_| Ok(()),
            )))
            .with_no_client_auth();
        ccfg.alpn_protocols = vec![xtcp::e2e::ALPN.to_vec()];
        let to_guest = tokio_rustls::TlsAcceptor::from(Arc::new(scfg)).accept(g);
        let name = rustls::pki_types::ServerName::try_from("peer.xtcp.invalid").unwrap();
        let to_host = tokio_rustls::TlsConnector::from(Arc::new(ccfg)).connect(name, h);
        let (Ok(g), Ok(h)) = tokio::join!(to_guest, to_host) else {
            panic!("the MITM's own handshakes succeed: only the tag can stop it")
        };
        // Relay plaintext both ways (the peers' tags included).
        let (mut gr, mut gw) = tokio::io::split(g);
        let (mut hr, mut hw) = tokio::io::split(h);
        let _ = tokio::join!(
            tokio::io::copy(&mut gr, &mut hw),
            tokio::io::copy(&mut hr, &mut gw)
        );
    })
    .await;
    assert!(
        matches!(r.0, Err(xtcp::Error::PeerAuthFailed)),
        "host: {:?}",
        r.0.as_ref().err()
    );
    assert!(
        matches!(r.1, Err(xtcp::Error::PeerAuthFailed)),
        "guest: {:?}",
        r.1.as_ref().err()
    );
}

/// (c) Two concurrent sessions spliced crosswise.
//= spec/session.md#SE-TAG-3
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_crosswise_splice_of_two_sessions_fails_closed() {
    let (addr, fp, mut rx) = evil_relay().await;
    let h1 = xtcp::host(&opts(addr, fp, Some(TOKEN))).await.unwrap();
    let h2 = xtcp::host(&opts(addr, fp, Some(TOKEN))).await.unwrap();
    let (c1, c2) = (h1.code(), h2.code());
    let splicer = tokio::spawn(async move {
        let (ha, ga) = rx.recv().await.unwrap();
        let (hb, gb) = rx.recv().await.unwrap();
        // host A ↔ guest B, host B ↔ guest A.
        let _ = tokio::join!(
            forward_tampered(ha, gb, None, None),
            forward_tampered(hb, ga, None, None)
        );
    });
    let go = opts(addr, fp, None);
    let r = tokio::time::timeout(BOUND, async {
        tokio::join!(h1.accept(), h2.accept(), xtcp::join(&c1, &go), async {
            // Join the second after the first is paired so the splicer sees them in order.
            tokio::time::sleep(Duration::from_millis(200)).await;
            xtcp::join(&c2, &go).await
        })
    })
    .await
    .expect("bounded");
    splicer.abort();
    for (i, res) in [
        r.0.map(|_| ()),
        r.1.map(|_| ()),
        r.2.map(|_| ()),
        r.3.map(|_| ()),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(
            matches!(res, Err(xtcp::Error::PeerAuthFailed)),
            "peer {i}: {res:?}"
        );
    }
}

/// (d) A recorded session replayed to a peer (same code, so only TLS freshness stops it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_replayed_session_fails_closed() {
    use xtcp::e2e::{handshake, E2eOptions, Role};
    let secret = xtcp::secret::SessionSecret::generate().unwrap();
    let o = E2eOptions {
        handshake_timeout: Duration::from_secs(2),
        ..E2eOptions::default()
    };
    // Record a genuine session, both directions, with data.
    let (h_io, h_tap) = tokio::io::duplex(1 << 20);
    let (g_io, g_tap) = tokio::io::duplex(1 << 20);
    let rec_g2h = Arc::new(Mutex::new(Vec::new()));
    let rec_h2g = Arc::new(Mutex::new(Vec::new()));
    let tap = {
        let (a, b) = (rec_g2h.clone(), rec_h2g.clone());
        tokio::spawn(async move {
            let (hr, hw) = tokio::io::split(h_tap);
            let (gr, gw) = tokio::io::split(g_tap);
            let rec = |mut r: tokio::io::ReadHalf<tokio::io::DuplexStream>,
                       mut w: tokio::io::WriteHalf<tokio::io::DuplexStream>,
                       log: Arc<Mutex<Vec<u8>>>| async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 || w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = w.shutdown().await;
            };
            let _ = tokio::join!(rec(gr, hw, a), rec(hr, gw, b));
        })
    };
    let (h, g) = tokio::join!(
        handshake(h_io, Role::Host, &secret, &o),
        handshake(g_io, Role::Guest, &secret, &o)
    );
    let (h, g) = (h.unwrap(), g.unwrap());
    let (a, b) = tokio::join!(
        exchange_hashed(h, 100_000, 1),
        exchange_hashed(g, 100_000, 2)
    );
    a.unwrap();
    b.unwrap();
    let _ = tap.await;
    let g2h = rec_g2h.lock().unwrap().clone();
    let h2g = rec_h2g.lock().unwrap().clone();
    assert!(g2h.len() > 100_000 && h2g.len() > 100_000);

    // Replay the guest's recording to a fresh host, and the host's to a fresh guest.
    for (role, recording) in [(Role::Host, g2h), (Role::Guest, h2g)] {
        let (mine, mut theirs) = tokio::io::duplex(1 << 20);
        let replayer = tokio::spawn(async move {
            let _ = theirs.write_all(&recording).await;
            let mut sink = vec![0u8; 8192];
            while let Ok(n) = theirs.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        let r = tokio::time::timeout(BOUND, handshake(mine, role, &secret, &o))
            .await
            .expect("bounded");
        assert!(r.is_err(), "{role:?} accepted a replayed session");
        replayer.abort();
    }
}

/// (e) close_notify or garbage during the handshake.
//= spec/session.md#SE-TAG-3
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_close_notify_or_garbage_during_handshake_fails_closed() {
    // An unencrypted close_notify alert record (RFC 8446 §6.1), then garbage.
    const CLOSE_NOTIFY: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00];
    for variant in 0..3 {
        let r = run_attack(move |mut h, mut g| async move {
            let payload: Vec<u8> = match variant {
                0 => CLOSE_NOTIFY.to_vec(),
                1 => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
                _ => (0..4096u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
                    .collect(),
            };
            let _ = tokio::join!(h.write_all(&payload), g.write_all(&payload));
            // Keep the connections open: the peers must not wait forever.
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        assert_both_failed(r, &format!("variant {variant}"));
    }
}

/// (f) The relay pairs, then stalls forever (slow loris): the timeouts fire.
//= spec/session.md#SE-TAG-5
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_stalling_relay_hits_the_handshake_timeout() {
    let t = std::time::Instant::now();
    let r = run_attack(|mut h, mut g| async move {
        let (mut s1, mut s2) = (vec![0u8; 4096], vec![0u8; 4096]);
        // Read and discard, never forward, never close.
        loop {
            tokio::select! {
                r = h.read(&mut s1) => if matches!(r, Ok(0) | Err(_)) { break },
                r = g.read(&mut s2) => if matches!(r, Ok(0) | Err(_)) { break },
            }
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    assert!(
        matches!(r.0, Err(xtcp::Error::TimedOut)),
        "host: {:?}",
        r.0.as_ref().err()
    );
    assert!(
        matches!(r.1, Err(xtcp::Error::TimedOut)),
        "guest: {:?}",
        r.1.as_ref().err()
    );
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// The bytes on the relay's sockets never contain what the peers send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sockets_never_carry_the_plaintext() {
    let relay = start_relay(relay_config()).await;
    // A transparent tap in front of the relay records every byte both ways.
    let tap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tap_addr = tap.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let relay_addr = relay.addr;
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((c, _)) = tap.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let r = TcpStream::connect(relay_addr).await.unwrap();
                    let (cr, cw) = c.into_split();
                    let (rr, rw) = r.into_split();
                    let copy = |mut from: tokio::net::tcp::OwnedReadHalf,
                                mut to: tokio::net::tcp::OwnedWriteHalf,
                                seen: Arc<Mutex<Vec<u8>>>| async move {
                        let mut buf = vec![0u8; 16384];
                        while let Ok(n) = from.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            seen.lock().unwrap().extend_from_slice(&buf[..n]);
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown().await;
                    };
                    tokio::join!(copy(cr, rw, seen.clone()), copy(rr, cw, seen));
                });
            }
        });
    }
    let peers = [(tap_addr, relay.fingerprint)];
    let host = xtcp::host(&client(&peers, Some(TOKEN))).await.unwrap();
    let code = host.code();
    let gopts = client(&peers, None);
    let (h, g) = tokio::join!(host.accept(), xtcp::join(&code, &gopts));
    let (mut h, mut g) = (h.unwrap(), g.unwrap());
    const MARKER: &[u8] = b"XTCP-MARKER-7f3a9c-the-relay-must-never-see-this";
    let msg: Vec<u8> = MARKER.repeat(2000);
    let (w, r) = tokio::join!(
        async {
            h.write_all(&msg).await?;
            h.shutdown().await
        },
        async {
            let mut got = Vec::new();
            g.read_to_end(&mut got).await.map(|_| got)
        }
    );
    w.unwrap();
    assert_eq!(r.unwrap(), msg);
    let seen = seen.lock().unwrap();
    assert!(seen.len() > msg.len(), "the data went through the tap");
    assert!(
        !seen.windows(MARKER.len()).any(|w| w == MARKER),
        "plaintext marker seen on the relay's sockets"
    );
    // Nor does the session code, or the secret-derived auth key.
    let secret = xtcp::secret::SessionSecret::parse(&code).unwrap();
    let key = secret.auth_key();
    assert!(!seen.windows(16).any(|w| w == &key[..16]));
    assert!(!seen.windows(code.len()).any(|w| w == code.as_bytes()));
}

/// g) A relay that forwards honestly until the peers' session is up, then
/// black-holes both directions while keeping the connections open. The
/// peers' relay keepalives go unanswered; after three keepalive intervals
/// each session fails with an error instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_relay_that_goes_silent_ends_the_session_instead_of_hanging() {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (addr, fp, mut rx) = evil_relay().await;
    let interval = Duration::from_millis(100);
    let opts_with = |token| {
        let mut o = opts(addr, fp, token);
        o.direct.relay_keepalive_interval = interval;
        o
    };
    let host = xtcp::host(&opts_with(Some(TOKEN))).await.unwrap();
    let code = host.code();
    tokio::spawn(async move {
        let Some((h, g)) = rx.recv().await else {
            return;
        };
        let (hr, hw) = h.into_split();
        let (gr, gw) = g.into_split();
        let pump = |mut stop: tokio::sync::watch::Receiver<bool>,
                    mut r: tokio::net::tcp::OwnedReadHalf,
                    mut w: tokio::net::tcp::OwnedWriteHalf| async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    n = r.read(&mut buf) => match n {
                        Ok(0) | Err(_) => return (r, w),
                        Ok(n) => if w.write_all(&buf[..n]).await.is_err() { return (r, w) },
                    },
                    _ = stop.changed() => return (r, w),
                }
            }
        };
        let (a, b) = tokio::join!(pump(stop_rx.clone(), hr, gw), pump(stop_rx, gr, hw));
        // Black hole: hold both connections open, forward nothing.
        let _keep = (a, b);
        std::future::pending::<()>().await;
    });
    let gopts = opts_with(None);
    let (h, g) = tokio::time::timeout(BOUND, async {
        tokio::join!(host.accept(), xtcp::join(&code, &gopts))
    })
    .await
    .expect("paired within the bound");
    let (mut h, mut g) = (h.expect("host session"), g.expect("guest session"));
    stop_tx.send_replace(true);
    let t = std::time::Instant::now();
    let mut b1 = [0u8; 16];
    let mut b2 = [0u8; 16];
    let (rh, rg) = tokio::time::timeout(BOUND, async {
        tokio::join!(h.read(&mut b1), g.read(&mut b2))
    })
    .await
    .expect("both sessions end within the bound");
    let took = t.elapsed();
    assert!(rh.is_err() && rg.is_err(), "both reads fail: {rh:?} {rg:?}");
    assert!(
        took >= interval * 3,
        "not before three keepalive intervals: {took:?}"
    );
}
