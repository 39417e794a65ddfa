//! The direct path on loopback: relay first, a proven direct TCP path, the
//! handover without loss, the fallback to the relay when the direct path
//! dies and the upgrade after it (`spec/direct.md`).

mod common;

use common::*;
use std::time::{Duration, Instant};
use xtcp::Path;
use xtcp::{DirectOptions, PathPolicy};

fn opts(relay: &TestRelay, token: Option<&str>, direct: DirectOptions) -> xtcp::Options {
    let mut o = client(&[(relay.addr, relay.fingerprint)], token);
    o.direct = direct;
    o
}

async fn pair(relay: &TestRelay, direct: DirectOptions) -> (xtcp::Session, xtcp::Session, Instant) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let host = xtcp::host(&opts(relay, Some(TOKEN), direct.clone()))
        .await
        .expect("host");
    let code = host.code();
    let g = opts(relay, None, direct);
    let (h, g) = tokio::join!(host.accept(), xtcp::join(&code, &g));
    (
        h.expect("host accept"),
        g.expect("guest join"),
        Instant::now(),
    )
}

/// Wait (bounded) until the session reports `want`.
async fn wait_path(s: &xtcp::Session, want: Path, within: Duration) -> Option<Duration> {
    let t = Instant::now();
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
    .ok()
    .filter(|ok| *ok)
    .map(|_| t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_on_relay_moves_to_direct_tcp_256_mib_byte_exact() {
    let relay = start_relay(relay_config()).await;
    let (h, g, paired) = pair(&relay, DirectOptions::default()).await;
    // Every session starts on the relay; on loopback the direct path is
    // proven about 1 ms after pairing, so it may already be in use here.
    let len: u64 = std::env::var("XTCP_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        << 20;
    let (hev, gev) = (h.path_events(), g.path_events());
    let (a, b) = tokio::join!(
        exchange_hashed(h, len, 11),
        exchange_hashed(g, len / 16, 12)
    );
    let (sent_h, got_h, n_h) = a.expect("host side");
    let (sent_g, got_g, n_g) = b.expect("guest side");
    assert_eq!((n_g, got_g), (len, sent_h), "host→guest byte-exact");
    assert_eq!((n_h, got_h), (len / 16, sent_g), "guest→host byte-exact");
    assert_eq!(sent_h, sha256_of_gen(len, 11));
    // Both ended on the direct path.
    assert_eq!(*hev.borrow(), Path::DirectTcp);
    assert_eq!(*gev.borrow(), Path::DirectTcp);
    let _ = paired;
    // The relay carried the start only: far less than everything. Its byte
    // counters grow per chunk; wait for the session's end (bounded) so that
    // every chunk is in.
    let m = relay.relay.metrics();
    for _ in 0..250 {
        if m.active.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relayed = m.bytes_host_to_guest.get();
    eprintln!("relay forwarded {relayed} of {len} bytes host→guest");
    assert!(relayed > 0, "the session began on the relay");
    assert!(
        relayed < len / 2,
        "relay forwarded {relayed} of {len} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_from_pairing_to_direct_tcp_on_loopback() {
    let relay = start_relay(relay_config()).await;
    let (h, g, paired) = pair(&relay, DirectOptions::default()).await;
    let (dh, dg) = tokio::join!(
        wait_path(&h, Path::DirectTcp, Duration::from_secs(10)),
        wait_path(&g, Path::DirectTcp, Duration::from_secs(10))
    );
    let (dh, dg) = (
        dh.expect("host reaches direct-tcp"),
        dg.expect("guest reaches direct-tcp"),
    );
    let since = paired.elapsed();
    eprintln!("pairing → direct-tcp: host {dh:?}, guest {dg:?} (≤ {since:?} since pairing)");
    // Loopback RTT is microseconds: a few handshakes' worth, far under a second.
    assert!(dh.max(dg) < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_never_leaves_the_relay() {
    let relay = start_relay(relay_config()).await;
    let d = DirectOptions {
        policy: PathPolicy::RelayOnly,
        ..Default::default()
    };
    let (h, g, _) = pair(&relay, d).await;
    let (hev, gev) = (h.path_events(), g.path_events());
    let len = 8 << 20;
    let (a, b) = tokio::join!(exchange_hashed(h, len, 1), exchange_hashed(g, len, 2));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((b.1, b.2), (a.0, len));
    assert_eq!((a.1, a.2), (b.0, len));
    assert_eq!(*hev.borrow(), Path::Relay);
    assert_eq!(*gev.borrow(), Path::Relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_path_dies_mid_transfer_back_to_relay_byte_exact_then_direct_again() {
    sever_twice(Path::DirectTcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_udp_path_dies_mid_transfer_back_to_relay_byte_exact_then_direct_again() {
    sever_twice(Path::DirectUdp).await;
}

/// 256 MiB host→guest and 64 MiB back while the direct path (`kind`) is
/// severed twice, each time once it is back: every byte once, in order; the
/// longest gap between two reads at the guest is reported.
async fn sever_twice(kind: Path) {
    init_log();
    let relay = start_relay(relay_config()).await;
    let d = DirectOptions {
        retry_after: Duration::from_millis(300),
        tcp: kind == Path::DirectTcp,
        udp: kind == Path::DirectUdp,
        udp_after: Duration::ZERO,
        ..Default::default()
    };
    let (h, g, _) = pair(&relay, d).await;
    assert!(wait_path(&h, kind, Duration::from_secs(10)).await.is_some());
    let ctl = h.control();
    let mut seen = h.path_events();
    let len: u64 = 256 << 20;
    // Sever the direct path twice during the transfer, each time once it is
    // back: direct → relay → direct → relay → direct.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let cutter = tokio::spawn(async move {
        let mut cuts = 0u32;
        let mut upgrades = 0u32;
        let mut last = kind;
        for _ in 0..2000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if done2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let p = ctl.path();
            if p == kind && last == Path::Relay {
                upgrades += 1;
            }
            last = p;
            if p == kind && cuts < 2 && (cuts == 0 || upgrades >= cuts) {
                ctl.sever_direct_path();
                cuts += 1;
                last = Path::Relay;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if cuts == 2 && upgrades >= 2 {
                break;
            }
        }
        (cuts, upgrades)
    });
    let watcher = tokio::spawn(async move {
        let mut v = Vec::new();
        while seen.changed().await.is_ok() && v.len() < 100 {
            v.push(*seen.borrow_and_update());
        }
        v
    });
    let t = Instant::now();
    let (a, b) = tokio::join!(
        exchange_hashed(h, len, 21),
        exchange_hashed_timed(g, len / 4, 22)
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    let (a, (b, stall)) = (a.expect("host side"), b.expect("guest side"));
    assert_eq!(
        (b.1, b.2),
        (a.0, len),
        "host→guest byte-exact across fallbacks"
    );
    assert_eq!(
        (a.1, a.2),
        (b.0, len / 4),
        "guest→host byte-exact across fallbacks"
    );
    eprintln!("{kind}: longest gap between two reads at the guest: {stall:?}");
    let (cuts, upgrades) = cutter.await.unwrap();
    let path_log = watcher.await.unwrap();
    eprintln!("{cuts} cuts, {upgrades} upgrades in {secs:.1} s; host path log {path_log:?}");
    assert!(cuts >= 1, "the direct path was cut during the transfer");
    assert!(
        path_log.contains(&Path::Relay),
        "fell back to the relay: {path_log:?}"
    );
    assert!(upgrades >= 1, "went direct again after the fallback");
}

/// Direct TCP disabled, UDP window 0: the session moves from the relay to a
/// direct XTCP (UDP) path found by hole punching with the relay's UDP address
/// service, and 64 MiB + 4 MiB cross it byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_only_moves_to_direct_udp_byte_exact() {
    let relay = start_relay(relay_config()).await;
    let direct = DirectOptions {
        tcp: false,
        udp_after: Duration::ZERO,
        ..DirectOptions::default()
    };
    let (h, g, _) = pair(&relay, direct).await;
    let (dh, dg) = tokio::join!(
        wait_path(&h, Path::DirectUdp, Duration::from_secs(10)),
        wait_path(&g, Path::DirectUdp, Duration::from_secs(10))
    );
    eprintln!("pairing → direct-udp: host {dh:?}, guest {dg:?}");
    assert!(dh.is_some() && dg.is_some(), "both sides reach direct-udp");
    let len: u64 = 64 << 20;
    let (hev, gev) = (h.path_events(), g.path_events());
    let (hc, gc) = (h.control(), g.control());
    let (a, b) = tokio::join!(
        exchange_hashed(h, len, 21),
        exchange_hashed(g, len / 16, 22)
    );
    // Both drivers finish (last ACK and CLOSE delivered over XTCP, both
    // XTCP connections closed) well before the 5 s bound on that wait.
    let t = Instant::now();
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(hc.finished(), gc.finished())
    })
    .await;
    eprintln!("sessions finished {:?} after the exchange", t.elapsed());
    assert!(done.is_ok(), "both sessions finish");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the end of a session over XTCP took {:?}",
        t.elapsed()
    );
    let (sent_h, got_h, n_h) = a.expect("host side");
    let (sent_g, got_g, n_g) = b.expect("guest side");
    assert_eq!((n_g, got_g), (len, sent_h), "host→guest byte-exact");
    assert_eq!((n_h, got_h), (len / 16, sent_g), "guest→host byte-exact");
    assert_eq!(*hev.borrow(), Path::DirectUdp);
    assert_eq!(*gev.borrow(), Path::DirectUdp);
}
