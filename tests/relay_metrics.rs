//! The relay's metrics endpoint (`spec/relay.md` §9.4), scraped over HTTP
//! from a relay started in this process (loopback only): the exposition, the
//! counters, gauges and histograms a pairing, a forward and a refusal move,
//! and the endpoint's bounds (connections, request size, time).

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xtcp::relay::client::{create_session, join_session, Paired};
use xtcp::relay::server::{
    Relay, RelayConfig, StartError, METRICS_MAX_CONNECTIONS, METRICS_MAX_REQUEST, METRICS_TIMEOUT,
};
use xtcp::relay::RelayError;

/// A relay with its metrics endpoint on an ephemeral loopback port.
async fn relay_with_metrics() -> (TestRelay, SocketAddr) {
    let cfg = RelayConfig {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..relay_config()
    };
    let relay = start_relay(cfg).await;
    let addr = relay.relay.metrics_local_addr().expect("metrics bound");
    (relay, addr)
}

/// Send `request` and read the whole answer (the relay closes after it).
async fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send request");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the answer ends")
        .expect("read answer");
    String::from_utf8(out).expect("utf-8 answer")
}

/// `GET /metrics`, whatever comes back (empty if the relay closed the
/// connection unanswered, or reset it).
async fn try_scrape(addr: SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return String::new();
    };
    if s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /metrics`: the body of a `200 OK`.
async fn scrape(addr: SocketAddr) -> String {
    let r = http(addr, b"GET /metrics HTTP/1.1\r\nhost: relay\r\n\r\n").await;
    let (head, body) = r.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF:\n{body}"
    );
    body.to_string()
}

/// The value of the sample `name` (with its labels, if any) in a scrape.
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name}:\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Create and join one session through the relay: both ends' raw streams.
async fn pair_raw(relay: &TestRelay) -> (Paired, Paired) {
    let peers = [(relay.addr, relay.fingerprint)];
    let rid = xtcp::secret::SessionSecret::generate()
        .unwrap()
        .rendezvous_id();
    let waiting = create_session(&client(&peers, Some(TOKEN)).relay, rid)
        .await
        .expect("create");
    let gopts = client(&peers, None);
    let (h, g) = tokio::join!(waiting.paired(), join_session(&gopts.relay, rid));
    (h.expect("host paired"), g.expect("guest paired"))
}

/// Build info, the OpenMetrics format, and only `GET /metrics` answered.
//= spec/relay.md#RL-MET-3
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_has_build_info_and_only_get_metrics_is_served() {
    let (_relay, addr) = relay_with_metrics().await;
    let text = scrape(addr).await;
    let info = format!(
        "xtcp_relay_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&text, &info), 1.0);
    // Every refusal reason is exported from the start, at zero.
    for reason in ["unknown_session", "unauthorized", "source_share"] {
        let s = format!("xtcp_relay_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&text, &s), 0.0, "{s}");
    }
    for other in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"POST /metrics HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
        b"GET /metrics/x HTTP/1.1\r\n\r\n",
    ] {
        let r = http(addr, other).await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert!(!r.contains("xtcp_relay_"), "no metrics in a 404: {r}");
    }
}

/// One pairing: the pairings counter, both histograms, the gauges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pairing_moves_the_counter_and_both_histograms() {
    let (relay, addr) = relay_with_metrics().await;
    let before = scrape(addr).await;
    assert_eq!(value(&before, "xtcp_relay_sessions_paired_total"), 0.0);
    assert_eq!(value(&before, "xtcp_relay_pairing_seconds_count"), 0.0);
    assert_eq!(value(&before, "xtcp_relay_handshake_seconds_count"), 0.0);
    let (_h, _g) = pair_raw(&relay).await;
    let text = scrape(addr).await;
    assert_eq!(value(&text, "xtcp_relay_sessions_paired_total"), 1.0);
    assert_eq!(value(&text, "xtcp_relay_sessions_created_total"), 1.0);
    assert_eq!(value(&text, "xtcp_relay_sessions_active"), 1.0);
    assert_eq!(value(&text, "xtcp_relay_sessions_waiting"), 0.0);
    assert_eq!(value(&text, "xtcp_relay_udp_grants_active"), 2.0);
    // Host and guest each completed a handshake and sent a first frame.
    assert_eq!(value(&text, "xtcp_relay_handshake_seconds_count"), 2.0);
    assert_eq!(value(&text, "xtcp_relay_pairing_seconds_count"), 1.0);
    let sum = value(&text, "xtcp_relay_pairing_seconds_sum");
    assert!(sum > 0.0 && sum < 10.0, "pairing took {sum} s");
    // Every observation is within the last (+Inf) bucket.
    assert_eq!(
        value(&text, "xtcp_relay_handshake_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    assert_eq!(value(&text, "xtcp_relay_connections_unauthenticated"), 0.0);
}

/// The byte counters grow while the session forwards, before it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_counter_grows_while_a_session_forwards() {
    let (relay, addr) = relay_with_metrics().await;
    let (h, g) = pair_raw(&relay).await;
    let (mut hs, mut gs) = (h.stream, g.stream);
    const STEP: usize = 4 << 20;
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    for _ in 0..3 {
        // Write one step host → guest and read it all at the guest: the
        // relay has forwarded it, and the session is still open.
        let write = async {
            for _ in 0..STEP / chunk.len() {
                hs.write_all(&chunk).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let read = async {
            let mut n = 0;
            while n < STEP {
                n += gs.read(&mut got).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let (w, r) = tokio::join!(write, read);
        w.expect("host writes");
        r.expect("guest reads");
        let text = scrape(addr).await;
        assert_eq!(
            value(&text, "xtcp_relay_sessions_active"),
            1.0,
            "still forwarding"
        );
        seen.push(value(&text, "xtcp_relay_bytes_host_to_guest_total"));
    }
    for (i, &b) in seen.iter().enumerate() {
        let want = ((i + 1) * STEP) as f64;
        assert!(b >= want, "after {want} bytes the counter says {b}");
    }
    assert!(seen[0] < seen[1] && seen[1] < seen[2], "{seen:?}");
}

/// A refusal increments its own `reason` label, and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_increments_its_reason_label() {
    let (relay, addr) = relay_with_metrics().await;
    let peers = [(relay.addr, relay.fingerprint)];
    let unknown = "xtcp_relay_refused_total{reason=\"unknown_session\"}";
    let unauthorized = "xtcp_relay_refused_total{reason=\"unauthorized\"}";
    let before = scrape(addr).await;
    assert_eq!(value(&before, unknown), 0.0);
    assert_eq!(value(&before, "xtcp_relay_guess_sources_tracked"), 0.0);
    let r = join_session(&client(&peers, None).relay, [7; 16]).await;
    assert!(matches!(r, Err(RelayError::UnknownSession)), "{r:?}");
    let text = scrape(addr).await;
    assert_eq!(value(&text, unknown), 1.0);
    assert_eq!(value(&text, unauthorized), 0.0);
    // The failed guess put its source in the guess table.
    assert_eq!(value(&text, "xtcp_relay_guess_sources_tracked"), 1.0);
    let r = create_session(&client(&peers, Some("wrong token")).relay, [8; 16]).await;
    assert!(matches!(r, Err(RelayError::Unauthorized)), "{r:?}");
    let text = scrape(addr).await;
    assert_eq!(value(&text, unauthorized), 1.0);
    assert_eq!(value(&text, unknown), 1.0);
}

/// A request over the size limit is answered 431 and closed; one that
/// never ends is closed at the time limit, unanswered.
//= spec/relay.md#RL-MET-2
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_requests_are_closed() {
    let (_relay, addr) = relay_with_metrics().await;
    // Headers that never end, longer than the limit.
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while big.len() <= METRICS_MAX_REQUEST {
        big.extend_from_slice(b"x-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The relay may close before reading everything: a write error is fine.
    let _ = s.write_all(&big).await;
    let mut out = Vec::new();
    let t = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
        .await
        .expect("closed at once, not at the time limit");
    assert!(t.elapsed() < Duration::from_secs(2));
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 431 "),
        "oversized request answered: {out}"
    );
    // A slow request: a request line, then nothing.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let r = tokio::time::timeout(METRICS_TIMEOUT * 2, s.read_to_end(&mut out))
        .await
        .expect("the relay closes a slow request");
    let took = t.elapsed();
    assert!(r.is_err() || out.is_empty(), "no answer: {out:?}");
    assert!(
        took >= METRICS_TIMEOUT - Duration::from_millis(500) && took < METRICS_TIMEOUT * 2,
        "closed after {took:?}"
    );
}

/// More idle connections than the limit: the excess is closed at accept, a
/// scrape beyond the limit too; once the idle ones time out, scraping works.
//= spec/relay.md#RL-MET-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_limit_are_closed_and_scraping_recovers() {
    let (_relay, addr) = relay_with_metrics().await;
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..METRICS_MAX_CONNECTIONS + 4 {
        idle.push(TcpStream::connect(addr).await.unwrap());
        // Accepted in order: the relay takes each before the next arrives.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Closed at once: after a moment, a read ends at once (EOF or reset)
    // instead of waiting. (Checked quickly: the held ones time out at
    // METRICS_TIMEOUT.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut closed = Vec::new();
    for s in &mut idle {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(10), s.read(&mut b)).await;
        closed.push(matches!(r, Ok(Ok(0)) | Ok(Err(_))));
    }
    assert!(started.elapsed() < METRICS_TIMEOUT / 2, "checked in time");
    let n_closed = closed.iter().filter(|&&c| c).count();
    assert_eq!(n_closed, 4, "closed at accept: {closed:?}");
    assert!(
        closed[METRICS_MAX_CONNECTIONS..].iter().all(|&c| c),
        "the last ones are the excess: {closed:?}"
    );
    // The limit holds for a scraper too while the idle ones hold it.
    let r = try_scrape(addr).await;
    assert!(r.is_empty(), "over the limit, closed unanswered: {r}");
    // The idle connections are closed at the time limit; then a scrape works.
    let deadline = started + METRICS_TIMEOUT + Duration::from_secs(3);
    let text = loop {
        let r = try_scrape(addr).await;
        if !r.is_empty() {
            break r;
        }
        assert!(Instant::now() < deadline, "scraping never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    for s in &mut idle[..METRICS_MAX_CONNECTIONS] {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "idle connection closed"
        );
    }
}

/// A metrics address that cannot be bound fails the start and leaves
/// nothing running: the control port is free again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_bind_failure_starts_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = free.local_addr().unwrap();
    drop(free);
    let cfg = RelayConfig {
        listen,
        metrics_listen: Some(taken.local_addr().unwrap()),
        ..relay_config()
    };
    let (tls, _) = tls_for_relay();
    match Relay::start(cfg.clone(), tls.clone(), None).await {
        Err(StartError::Bind { what, .. }) => assert!(what.starts_with("metrics_listen"), "{what}"),
        other => panic!("expected a bind error, got {other:?}"),
    }
    // Nothing holds the control port: a connection is refused, and a relay
    // can bind it again.
    assert!(TcpStream::connect(listen).await.is_err(), "nothing listens");
    let cfg = RelayConfig {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..cfg
    };
    let relay = Relay::start(cfg, tls, None).await.expect("restart");
    assert_eq!(relay.local_addr(), listen);
    relay.abort();
}
