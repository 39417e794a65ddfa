//! Both applications write before they read (issue 13; a request/response
//! protocol with large bodies does this): with 4 MiB each way both complete
//! (kernel TCP on loopback does); with 64 MiB the session stays up, blocked
//! and without error, then completes once one side starts reading, on every
//! path. Keepalive timers are short here (a relay path is dead after 1.5 s
//! of silence) so that the blocked phase outlasts them many times in a few
//! seconds; `XTCP_BLOCK_SECS` sets the blocked phase (default 8 s) and
//! `XTCP_DEFAULT_TIMERS=1` keeps the default timers (the figure:
//! `XTCP_DEFAULT_TIMERS=1 XTCP_BLOCK_SECS=300`).

mod common;

use common::{start_relay, Gen, TestRelay, TOKEN};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xtcp::Path;
use xtcp::{DirectOptions, PathPolicy};

fn block_secs() -> u64 {
    std::env::var("XTCP_BLOCK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

fn direct(kind: Path) -> DirectOptions {
    let short = std::env::var_os("XTCP_DEFAULT_TIMERS").is_none();
    let d = DirectOptions::default();
    DirectOptions {
        policy: if kind == Path::Relay {
            PathPolicy::RelayOnly
        } else {
            PathPolicy::Auto
        },
        tcp: kind == Path::DirectTcp,
        udp: kind == Path::DirectUdp,
        udp_after: Duration::ZERO,
        keepalive_interval: if short {
            Duration::from_millis(200)
        } else {
            d.keepalive_interval
        },
        keepalive_timeout: if short {
            Duration::from_secs(1)
        } else {
            d.keepalive_timeout
        },
        relay_keepalive_interval: if short {
            Duration::from_millis(500)
        } else {
            d.relay_keepalive_interval
        },
        ..d
    }
}

async fn pair(relay: &TestRelay, kind: Path) -> (xtcp::Session, xtcp::Session) {
    let mut ho = common::client(&[(relay.addr, relay.fingerprint)], Some(TOKEN));
    ho.direct = direct(kind);
    let mut go = common::client(&[(relay.addr, relay.fingerprint)], None);
    go.direct = direct(kind);
    let host = xtcp::host(&ho).await.expect("host");
    let code = host.code();
    let (h, g) = tokio::join!(host.accept(), xtcp::join(&code, &go));
    let (h, g) = (h.expect("accept"), g.expect("join"));
    for s in [&h, &g] {
        let mut ev = s.path_events();
        let ok = tokio::time::timeout(Duration::from_secs(15), ev.wait_for(|p| *p == kind)).await;
        assert!(
            matches!(ok, Ok(Ok(_))),
            "never reached {kind}: {}",
            s.path()
        );
    }
    (h, g)
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Gen::new(seed).fill(&mut v);
    v
}

/// Each side: write everything, shut down, read to the end.
async fn write_then_read(mut s: xtcp::Session, mine: Vec<u8>) -> std::io::Result<Vec<u8>> {
    s.write_all(&mine).await?;
    s.shutdown().await?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).await?;
    Ok(got)
}

async fn fits(kind: Path) {
    let relay = start_relay(common::relay_config()).await;
    let (h, g) = pair(&relay, kind).await;
    let (a, b) = (data(1, 4 << 20), data(2, 4 << 20));
    let run = async { tokio::join!(write_then_read(h, a.clone()), write_then_read(g, b.clone())) };
    let (hr, gr) = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("4 MiB each way before reading completes");
    assert!(hr.expect("host") == b, "host got the guest's bytes");
    assert!(gr.expect("guest") == a, "guest got the host's bytes");
}

async fn blocked_then_reads(kind: Path) {
    let relay = start_relay(common::relay_config()).await;
    let (h, g) = pair(&relay, kind).await;
    let (a, b) = (data(3, 64 << 20), data(4, 64 << 20));
    let block = Duration::from_secs(block_secs());
    let t = Instant::now();
    let host = {
        let a = a.clone();
        tokio::spawn(async move {
            let r = write_then_read(h, a).await;
            (r, t.elapsed())
        })
    };
    // The guest writes at once, but reads only after `block`.
    let (mut gr, mut gw) = tokio::io::split(g);
    let writer = {
        let b = b.clone();
        tokio::spawn(async move {
            gw.write_all(&b).await?;
            gw.shutdown().await?;
            Ok::<_, std::io::Error>(t.elapsed())
        })
    };
    let reader = tokio::spawn(async move {
        tokio::time::sleep(block).await;
        let mut got = Vec::new();
        gr.read_to_end(&mut got).await.map(|_| got)
    });
    let (h, w, r) = tokio::time::timeout(block + Duration::from_secs(120), async {
        tokio::join!(host, writer, reader)
    })
    .await
    .expect("completes once the guest reads");
    let (hr, host_done) = h.expect("host task");
    let got_at_host = hr.expect("host: no error while blocked");
    let guest_write_done = w
        .expect("writer task")
        .expect("guest: no error while blocked");
    let got_at_guest = r.expect("reader task").expect("guest read");
    eprintln!(
        "{kind}: blocked {block:?}, host done at {host_done:?}, guest's writes done at {guest_write_done:?}"
    );
    assert!(
        guest_write_done >= block && host_done >= block,
        "both were blocked until the guest read"
    );
    assert!(got_at_host == b, "host got the guest's 64 MiB");
    assert!(got_at_guest == a, "guest got the host's 64 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_each_way_before_reading_completes_on_the_relay() {
    fits(Path::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_each_way_before_reading_completes_on_direct_tcp() {
    fits(Path::DirectTcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_each_way_before_reading_completes_on_direct_udp() {
    fits(Path::DirectUdp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_stays_up_blocked_then_completes_on_the_relay() {
    blocked_then_reads(Path::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_stays_up_blocked_then_completes_on_direct_tcp() {
    blocked_then_reads(Path::DirectTcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_stays_up_blocked_then_completes_on_direct_udp() {
    blocked_then_reads(Path::DirectUdp).await;
}
