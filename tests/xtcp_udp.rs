//! XTCP over real UDP sockets on loopback: byte-exact bulk both ways, TLS with
//! the session code on top, garbage resistance, a vanishing peer.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xtcp::transport::{EndpointOptions, XtcpEndpoint, XtcpError};

fn listener() -> XtcpEndpoint {
    XtcpEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        EndpointOptions {
            listen: true,
            ..EndpointOptions::default()
        },
    )
    .unwrap()
}

fn dialer() -> XtcpEndpoint {
    XtcpEndpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointOptions::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_both_ways_at_once_byte_exact() {
    let (l, d) = (listener(), dialer());
    let addr = l.local_addr();
    let (a, b) = tokio::join!(l.accept(), d.connect(addr));
    let (a, b) = (a.unwrap(), b.unwrap());
    const LEN: u64 = 1 << 30;
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(300), async {
        tokio::join!(exchange_hashed(a, LEN, 1), exchange_hashed(b, LEN, 2))
    })
    .await
    .expect("bounded");
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!((ra.2, rb.2), (LEN, LEN));
    assert_eq!(ra.1, rb.0, "dialer→listener byte-exact");
    assert_eq!(rb.1, ra.0, "listener→dialer byte-exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_session_code_over_xtcp_and_wrong_code_fails_both() {
    use xtcp::e2e::{handshake, E2eOptions, Role};
    let (l, d) = (listener(), dialer());
    let addr = l.local_addr();
    let code = xtcp::secret::SessionSecret::generate().unwrap();
    let o = E2eOptions::default();
    let (a, b) = tokio::join!(l.accept(), d.connect(addr));
    let (ha, hb) = tokio::join!(
        handshake(a.unwrap(), Role::Host, &code, &o),
        handshake(b.unwrap(), Role::Guest, &code, &o)
    );
    let (ha, hb) = (ha.unwrap(), hb.unwrap());
    let (x, y) = tokio::join!(
        exchange_hashed(ha, 4 << 20, 3),
        exchange_hashed(hb, 4 << 20, 4)
    );
    assert_eq!(x.unwrap().1, sha256_of_gen(4 << 20, 4));
    assert_eq!(y.unwrap().1, sha256_of_gen(4 << 20, 3));

    // A wrong code: both sides fail, nothing is delivered.
    let other = xtcp::secret::SessionSecret::generate().unwrap();
    let (a, b) = tokio::join!(l.accept(), d.connect(addr));
    let (ha, hb) = tokio::join!(
        handshake(a.unwrap(), Role::Host, &code, &o),
        handshake(b.unwrap(), Role::Guest, &other, &o)
    );
    assert!(
        matches!(ha, Err(xtcp::e2e::E2eError::PeerAuthFailed)),
        "{ha:?}"
    );
    assert!(hb.is_err());
}

/// A UDP forwarder between the two endpoints that can be cut.
async fn cuttable_path(to: SocketAddr, cut: Arc<AtomicBool>) -> SocketAddr {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(to).await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let (mut b1, mut b2) = (vec![0u8; 65536], vec![0u8; 65536]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut b1) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    if !cut.load(Ordering::Relaxed) { let _ = back.send(&b1[..n]).await; }
                }
                r = back.recv(&mut b2) => {
                    let Ok(n) = r else { return };
                    if let (Some(c), false) = (client, cut.load(Ordering::Relaxed)) { let _ = front.send_to(&b2[..n], c).await; }
                }
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanishing_peer_times_out_within_the_user_timeout() {
    let conn = proto::xtcp::conn::Config {
        user_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let l = XtcpEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        EndpointOptions {
            listen: true,
            conn: conn.clone(),
            ..EndpointOptions::default()
        },
    )
    .unwrap();
    let d = XtcpEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        EndpointOptions {
            conn,
            ..EndpointOptions::default()
        },
    )
    .unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let via = cuttable_path(l.local_addr(), cut.clone()).await;
    let (a, b) = tokio::join!(l.accept(), d.connect(via));
    let (_a, mut b) = (a.unwrap(), b.unwrap());
    b.write_all(&[1u8; 100_000]).await.unwrap();
    cut.store(true, Ordering::Relaxed);
    let t = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        let chunk = vec![2u8; 64 * 1024];
        loop {
            if let Err(e) = b.write_all(&chunk).await {
                return e;
            }
        }
    })
    .await
    .expect("the user timeout fires");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_change_nothing_for_live_connections() {
    let (l, d) = (listener(), dialer());
    let addr = l.local_addr();
    let (a, b) = tokio::join!(l.accept(), d.connect(addr));
    let (a, b) = (a.unwrap(), b.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let sprayer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut g = Gen::new(77);
            let mut buf = vec![0u8; 1500];
            let mut sent = 0u64;
            // Bounded: at most 200k datagrams.
            while !stop.load(Ordering::Relaxed) && sent < 200_000 {
                let len = (sent as usize * 7919) % 1400;
                g.fill(&mut buf[..len.max(1)]);
                if sent.is_multiple_of(3) && len >= 12 {
                    // A well-formed XTCP header with a random connection id.
                    buf[0] = 1;
                }
                let _ = s.send_to(&buf[..len], addr).await;
                sent += 1;
                if sent.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            sent
        })
    };
    const LEN: u64 = 16 << 20;
    let (ra, rb) = tokio::join!(exchange_hashed(a, LEN, 5), exchange_hashed(b, LEN, 6));
    stop.store(true, Ordering::Relaxed);
    let sent = sprayer.await.unwrap();
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.1, rb.0);
    assert_eq!(rb.1, ra.0);
    assert!(sent > 100);
    let st = l.stats();
    assert!(st.malformed + st.unknown_conn > 0, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_non_listening_endpoint_is_refused() {
    let closed = dialer(); // does not listen: answers SYN with RST
    let d = dialer();
    let r = tokio::time::timeout(Duration::from_secs(10), d.connect(closed.local_addr()))
        .await
        .expect("bounded");
    assert!(matches!(r, Err(XtcpError::Refused)), "{r:?}");
    // Reading from a half-closed stream: EOF after the peer's FIN, data intact.
    let (l, d) = (listener(), dialer());
    let (a, b) = tokio::join!(l.accept(), d.connect(l.local_addr()));
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    b.write_all(b"hello").await.unwrap();
    b.shutdown().await.unwrap();
    let mut got = Vec::new();
    a.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
    a.write_all(b"still open").await.unwrap();
    a.shutdown().await.unwrap();
    let mut back = Vec::new();
    b.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"still open");
}

/// 10,000 connections on one listening endpoint, all connecting at once, each
/// moving 64 KiB each way byte-exact (issue 3). The SYN burst overflows the
/// half-open table (1024), so most connections complete on SYN cookies.
/// Bounded at 300 s; takes ~6-16 s in release on two shared cores. It used
/// to fail (~1 % of connects timed out after seven SYNs) because the driver
/// sent everything it had before reading again and its socket's receive
/// queue overflowed; `src/transport/` now reads first, in `recvmmsg` batches.
/// `XTCP_TEST_CONNS=N` and `XTCP_TEST_HALF_OPEN=N` vary it; it prints both
/// endpoints' counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_on_one_endpoint_each_64_kib_byte_exact() {
    let l = XtcpEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        EndpointOptions {
            listen: true,
            accept_backlog: 16_384,
            max_half_open: std::env::var("XTCP_TEST_HALF_OPEN")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1024),
            socket_buffer: 16 << 20,
            ..EndpointOptions::default()
        },
    )
    .unwrap();
    let d = XtcpEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        EndpointOptions {
            socket_buffer: 16 << 20,
            ..EndpointOptions::default()
        },
    )
    .unwrap();
    let addr = l.local_addr();
    let n: u64 = std::env::var("XTCP_TEST_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    const LEN: u64 = 64 * 1024;
    // The listener echoes nothing: each side sends LEN and checks what it gets.
    let server = {
        let l = l.clone();
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                let s = l.accept().await.unwrap();
                set.spawn(async move {
                    let mut hdr = [0u8; 8];
                    let (mut r, mut w) = s.into_split();
                    r.read_exact(&mut hdr).await.unwrap();
                    let seed = u64::from_be_bytes(hdr);
                    // Reply with the stream for seed + 1, read the rest of seed's.
                    let send = async {
                        let mut g = Gen::new(seed + 1);
                        let mut buf = vec![0u8; LEN as usize];
                        g.fill(&mut buf);
                        w.write_all(&buf).await.unwrap();
                        w.shutdown().await.unwrap();
                    };
                    let recv = async {
                        let mut got = Vec::with_capacity(LEN as usize);
                        r.read_to_end(&mut got).await.unwrap();
                        got
                    };
                    let ((), got) = tokio::join!(send, recv);
                    let mut want = vec![0u8; LEN as usize];
                    Gen::new(seed).fill(&mut want);
                    got == want
                });
            }
            let mut ok = 0u64;
            while let Some(r) = set.join_next().await {
                ok += u64::from(r.unwrap());
            }
            ok
        })
    };
    let t = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let d = d.clone();
        set.spawn(async move {
            let seed = 2 * i + 1;
            let s = match d.connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("dialer {i}: connect: {e}");
                    return false;
                }
            };
            let (mut r, mut w) = s.into_split();
            let send = async {
                let mut buf = vec![0u8; LEN as usize];
                Gen::new(seed).fill(&mut buf);
                let _ = w.write_all(&seed.to_be_bytes()).await;
                let _ = w.write_all(&buf).await;
                let _ = w.shutdown().await;
            };
            let recv = async {
                let mut got = Vec::with_capacity(LEN as usize);
                if let Err(e) = r.read_to_end(&mut got).await {
                    eprintln!("dialer {i}: {e}");
                }
                got
            };
            let ((), got) = tokio::join!(send, recv);
            let mut want = vec![0u8; LEN as usize];
            Gen::new(seed + 1).fill(&mut want);
            got == want
        });
    }
    let mut ok = 0u64;
    let all = async {
        while let Some(r) = set.join_next().await {
            ok += u64::from(r.unwrap());
        }
        server.await.unwrap()
    };
    let server_ok = tokio::time::timeout(Duration::from_secs(300), all).await;
    eprintln!("listener: {:?}\ndialer: {:?}", l.stats(), d.stats());
    let server_ok = server_ok.expect("bounded");
    assert_eq!(ok, n, "every dialer side byte-exact");
    assert_eq!(server_ok, n, "every listener side byte-exact");
    eprintln!(
        "{n} connections × 64 KiB each way: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Drop is a graceful close even when the stream is the last handle of its
/// endpoint: the data still queued and the FIN are delivered (the endpoint's
/// driver outlives its handles while connections close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handles_still_delivers_the_data_and_the_fin() {
    let srv = listener();
    let to = srv.local_addr();
    let len = 4 << 20;
    let data = {
        let mut v = vec![0u8; len];
        Gen::new(31).fill(&mut v);
        v
    };
    let sent = data.clone();
    let client = tokio::spawn(async move {
        let ep = dialer();
        let mut s = ep.connect(to).await.expect("connect");
        s.write_all(&sent).await.expect("write");
        // Both handles go at once, with most of the data still queued.
        drop(s);
        drop(ep);
    });
    let mut s = tokio::time::timeout(Duration::from_secs(10), srv.accept())
        .await
        .expect("accept in time")
        .expect("accept");
    let mut got = Vec::with_capacity(len);
    let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await;
    client.await.expect("client task");
    assert!(r.is_ok(), "EOF arrives (the FIN was sent)");
    assert_eq!(got.len(), len, "every byte arrives");
    assert!(got == data, "byte-exact");
}

/// Datagrams whose first byte is in `SIDE_CHANNEL` reach the side channel,
/// never XTCP, through the driver's batched (recvmmsg/GRO) receive path, and
/// `send_raw` shares the socket with the driver's GSO sends; a connection on
/// the same sockets moves its bytes intact meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_channel_datagrams_bypass_xtcp_on_the_batched_paths() {
    let (l, d) = (listener(), dialer());
    let (mut side_l, mut side_d) = (l.side_channel(), d.side_channel());
    let (a, b) = tokio::join!(l.accept(), d.connect(l.local_addr()));
    let (a, b) = (a.unwrap(), b.unwrap());
    for i in 0..16u8 {
        d.send_raw(l.local_addr(), &[0xA0, i]).await.unwrap();
        l.send_raw(d.local_addr(), &[0xAF, i, i]).await.unwrap();
    }
    const LEN: u64 = 16 << 20;
    let bulk = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(exchange_hashed(a, LEN, 5), exchange_hashed(b, LEN, 6))
    });
    let (ra, rb) = bulk.await.expect("bounded");
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.1, rb.0, "dialer→listener byte-exact");
    assert_eq!(rb.1, ra.0, "listener→dialer byte-exact");
    for i in 0..16u8 {
        let wait = Duration::from_secs(5);
        let (from, got) = tokio::time::timeout(wait, side_l.recv())
            .await
            .expect("bounded")
            .expect("side channel open");
        assert_eq!((from, got), (d.local_addr(), vec![0xA0, i]));
        let (from, got) = tokio::time::timeout(wait, side_d.recv())
            .await
            .expect("bounded")
            .expect("side channel open");
        assert_eq!((from, got), (l.local_addr(), vec![0xAF, i, i]));
    }
    // None of them was taken for a (malformed) XTCP datagram.
    assert_eq!((l.stats().malformed, d.stats().malformed), (0, 0));
}
