//! What a stranger who learns a peer's direct listening port can do (issue
//! 17, point 4; `spec/direct.md` §4.1, §4.2, §4.6, `spec/session.md` §3.2):
//! connect and play TLS server to the guest, and read its tag but no
//! readable `RESUME`; find the listener closed once a direct path is chosen
//! or the attempt is over; open many connections from one address and still not
//! keep the peers off their direct path. Loopback only; a stranger's own
//! address is 127.0.0.2. (Spoofed probe replays are counted in
//! `src/direct_udp.rs`'s tests and `proto/src/session/punch.rs`.)
//!
//! The tests find the listeners' ports the way a stranger would not need
//! to (it scans): the process's listening sockets in `/proc`. They run one
//! at a time so that the listeners that appear are the test's own.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use xtcp::{DirectOptions, Path};

/// One test at a time (the listener discovery below sees the whole process).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The TCP ports this process listens on, on all IPv4 addresses (the direct
/// listeners; the test relay listens on 127.0.0.1 only).
fn own_listening_ports() -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_str()?.to_string();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            let port = local.strip_prefix("00000000:")?;
            (*state == "0A" && inodes.contains(*inode))
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}

/// Listening ports that appear beyond `before` (bounded wait for `n`).
async fn new_listeners(before: &BTreeSet<u16>, n: usize) -> Vec<u16> {
    let t = Instant::now();
    loop {
        let new: Vec<u16> = own_listening_ports().difference(before).copied().collect();
        if new.len() >= n || t.elapsed() > Duration::from_secs(3) {
            return new;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn opts(relay: &TestRelay, token: Option<&str>, direct: DirectOptions) -> xtcp::Options {
    let mut o = client(&[(relay.addr, relay.fingerprint)], token);
    o.direct = direct;
    o
}

async fn pair(
    relay: &TestRelay,
    host: DirectOptions,
    guest: DirectOptions,
) -> (xtcp::Session, xtcp::Session, String) {
    init_log();
    let waiting = xtcp::host(&opts(relay, Some(TOKEN), host))
        .await
        .expect("host");
    let code = waiting.code();
    let g = opts(relay, None, guest);
    let (h, g) = tokio::join!(waiting.accept(), xtcp::join(&code, &g));
    (h.expect("host accept"), g.expect("guest join"), code)
}

/// Wait (bounded) until the session reports `want`.
async fn wait_path(s: &xtcp::Session, want: Path, within: Duration) -> bool {
    let mut ev = s.path_events();
    tokio::time::timeout(within, async {
        while *ev.borrow_and_update() != want {
            if ev.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false)
}

/// Whether connections to 127.0.0.1:`port` are refused within `within`
/// (polled: a listener closes when its task next runs).
async fn refused_within(port: u16, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    false
}

/// A TLS server that accepts anyone with any certificate, as a stranger
/// playing TLS server to the guest would (the guest checks no certificate:
/// trust comes from the tag).
fn stranger_tls_server() -> tokio_rustls::TlsAcceptor {
    let ck = xtcp::tls::self_signed(&["stranger.invalid"]).expect("certificate");
    let mut cfg = rustls::ServerConfig::builder_with_provider(xtcp::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(ck.chain, ck.key)
        .expect("certificate");
    cfg.alpn_protocols = vec![xtcp::e2e::ALPN.to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// The guest listens for direct TCP (the host does not: it neither listens
/// nor dials, so nothing else reaches the guest's listener). Once 64 KiB
/// crossed the relay, a stranger connects to the guest's listener twice,
/// plays TLS server with its own certificate and reads what the guest
/// sends: the 32-byte tag, bound to the stranger's own connection, and 15
/// bytes that are not the early `RESUME(0xFFFFFFFF, 65536)` and differ
/// between the two connections; only the session's mask, which needs the
/// code, turns them into it. Before this change the `RESUME` came in the
/// clear, telling how far the transfer had got, as often as the stranger
/// asked. After the stranger's bogus tag the guest closes. The listener
/// closes when the attempt is over (`connect_timeout + handshake_timeout`,
/// 3 s here).
//= spec/direct.md#DI-EARLY-3
//= spec/session.md#SE-TAG-2
//= spec/direct.md#DI-LISTEN-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_on_the_guests_listener_reads_a_tag_and_no_readable_resume() {
    let _one = ONE_AT_A_TIME.lock().await;
    let relay = start_relay(relay_config()).await;
    let host = DirectOptions {
        tcp: false,
        udp: false,
        ..Default::default()
    };
    let guest = DirectOptions {
        udp: false,
        connect_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let before = own_listening_ports();
    let (mut h, mut g, code) = pair(&relay, host, guest).await;
    let paired = Instant::now();
    let ports = new_listeners(&before, 1).await;
    assert_eq!(
        ports.len(),
        1,
        "the guest's listener, and no other: {ports:?}"
    );
    let port = ports[0];
    // The stream has moved when the stranger comes.
    let data = vec![7u8; 64 << 10];
    h.write_all(&data).await.expect("host writes");
    let mut got = vec![0u8; data.len()];
    g.read_exact(&mut got).await.expect("guest reads");
    assert_eq!(got, data);
    // RESUME(0xFFFFFFFF, 65536), as it would go in the clear.
    let mut plain = vec![0x03, 0x00, 0x0c, 0xff, 0xff, 0xff, 0xff];
    plain.extend_from_slice(&65536u64.to_be_bytes());

    let bound = Duration::from_secs(2);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("the guest's listener is open during the attempt");
        let mut tls = tokio::time::timeout(bound, stranger_tls_server().accept(tcp))
            .await
            .expect("the guest runs TLS with whoever answers")
            .expect("TLS with the stranger");
        let mut flight = [0u8; 32 + 15];
        tokio::time::timeout(bound, tls.read_exact(&mut flight))
            .await
            .expect("the guest's flight comes")
            .expect("tag and early RESUME");
        let early = flight[32..].to_vec();
        assert_ne!(early, plain, "the early RESUME in the clear");
        // The mask needs auth_key (the code) and this connection's E.
        let e = tls
            .get_ref()
            .1
            .export_keying_material([0u8; 32], b"EXPORTER-xtcp-e2e-auth", None)
            .expect("exporter");
        let auth_key = xtcp::secret::SessionSecret::parse(&code)
            .expect("code")
            .auth_key();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &auth_key);
        let mask = ring::hmac::sign(&key, &[&b"xtcp early resume v1"[..], &e].concat());
        let opened: Vec<u8> = early
            .iter()
            .zip(mask.as_ref())
            .map(|(a, m)| a ^ m)
            .collect();
        assert_eq!(opened, plain, "the session's mask opens it");
        seen.push(early);
        tls.write_all(&[0x5a; 32])
            .await
            .expect("the stranger's tag");
        tls.flush().await.expect("flush");
        let mut rest = Vec::new();
        let end = tokio::time::timeout(bound, tls.read_to_end(&mut rest)).await;
        assert!(end.is_ok(), "the guest closed after the bogus tag");
        assert!(rest.is_empty(), "{} bytes more: {rest:02x?}", rest.len());
    }
    assert_ne!(seen[0], seen[1], "same offset, other bytes: a fresh mask");
    // The session is unharmed, still on the relay.
    assert_eq!(g.path(), Path::Relay);
    h.write_all(b"still here").await.expect("host writes");
    let mut more = [0u8; 10];
    g.read_exact(&mut more).await.expect("guest reads");
    assert_eq!(&more, b"still here");
    // The attempt is over 3 s after the session began: the port refuses.
    let left = Duration::from_secs(6).saturating_sub(paired.elapsed());
    assert!(
        refused_within(port, left).await,
        "the guest's listener closed when its attempt was over"
    );
}

/// Once the peers are on a direct TCP path, neither listens any more: the
/// guest's listening port (the host's view of the direct path's far end:
/// the guest dials from it, or was dialled at it) and the host's refuse
/// connections. Before this change the guest's listener stayed open for the
/// whole session.
//= spec/direct.md#DI-LISTEN-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listeners_close_once_a_direct_path_is_chosen() {
    let _one = ONE_AT_A_TIME.lock().await;
    let relay = start_relay(relay_config()).await;
    let d = DirectOptions {
        udp: false,
        ..Default::default()
    };
    let (h, g, _) = pair(&relay, d.clone(), d).await;
    let within = Duration::from_secs(10);
    assert!(wait_path(&h, Path::DirectTcp, within).await, "host direct");
    assert!(wait_path(&g, Path::DirectTcp, within).await, "guest direct");
    let guest_port = h.peer_addr().expect("direct").port();
    let host_port = g.peer_addr().expect("direct").port();
    for (who, port) in [("guest", guest_port), ("host", host_port)] {
        assert!(
            refused_within(port, Duration::from_secs(2)).await,
            "the {who}'s listener on port {port} closed"
        );
    }
    // The direct path carries on.
    let (a, b) = tokio::join!(
        exchange_hashed(h, 1 << 20, 1),
        exchange_hashed(g, 1 << 20, 2)
    );
    let (a, b) = (a.expect("host"), b.expect("guest"));
    assert_eq!((b.1, b.2), (a.0, 1 << 20));
    assert_eq!((a.1, a.2), (b.0, 1 << 20));
}

/// A stranger at one address (127.0.0.2) who knows both listening ports of
/// a round opens 100 idle connections to each before the peers dial: it
/// holds 4 slots of each listener, and the peers still get their direct
/// path at once. Before this change its connections took all 64 slots of
/// each listener until their handshakes timed out (10 s), and the peers'
/// connections were dropped.
//= spec/direct.md#DI-SLOT-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stranger_address_cannot_keep_the_peers_off_the_direct_path() {
    let _one = ONE_AT_A_TIME.lock().await;
    let relay = start_relay(relay_config()).await;
    let retry = Duration::from_secs(3);
    let d = DirectOptions {
        udp: false,
        retry_after: retry,
        ..Default::default()
    };
    let (h, g, _) = pair(&relay, d.clone(), d).await;
    let within = Duration::from_secs(10);
    assert!(wait_path(&h, Path::DirectTcp, within).await, "host direct");
    assert!(wait_path(&g, Path::DirectTcp, within).await, "guest direct");
    // The next round's listeners: the direct path dies, both fall back and
    // open new ones; the host dials `retry` later.
    let before = own_listening_ports();
    h.control().sever_direct_path();
    let fell_back = Instant::now();
    assert!(wait_path(&h, Path::Relay, within).await, "host fell back");
    let ports = new_listeners(&before, 2).await;
    assert_eq!(ports.len(), 2, "both peers' new listeners: {ports:?}");
    let mut idle = Vec::new();
    for port in &ports {
        let to = SocketAddr::from(([127, 0, 0, 1], *port));
        for _ in 0..100 {
            let s = TcpSocket::new_v4().expect("socket");
            s.bind("127.0.0.2:0".parse().expect("literal"))
                .expect("bind");
            idle.push(s.connect(to).await.expect("connect"));
        }
    }
    let flooded = fell_back.elapsed();
    assert!(
        flooded < retry - Duration::from_millis(500),
        "the flood ({flooded:?}) came before the retry, or this test proves nothing"
    );
    // The retry dials at `retry`; the path is back at once, not after the
    // stranger's handshakes time out (10 s).
    let bound = retry + Duration::from_secs(3) - fell_back.elapsed().min(retry);
    assert!(
        wait_path(&h, Path::DirectTcp, bound).await,
        "host back on direct TCP despite the stranger"
    );
    assert!(
        wait_path(&g, Path::DirectTcp, Duration::from_secs(2)).await,
        "guest back on direct TCP"
    );
    drop(idle);
}
