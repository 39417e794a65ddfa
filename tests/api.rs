//! The application's API: the builder, the session's accessors and
//! `Session::close` (loopback, direct TCP allowed).

mod common;

use common::{relay_config, start_relay, TOKEN};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xtcp::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accessors_and_close() {
    let relay = start_relay(relay_config()).await;
    let hex: String = relay
        .fingerprint
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let opts = |token: bool| {
        let b = xtcp::Options::builder()
            .relay(relay.addr.to_string())
            .pin(hex.as_str());
        if token { b.token(TOKEN) } else { b }
            .build()
            .expect("options")
    };
    let waiting = xtcp::host(&opts(true)).await.expect("host");
    let code = waiting.code();
    let guest_opts = opts(false);
    let (h, g) = tokio::join!(waiting.accept(), xtcp::join(&code, &guest_opts));
    let (mut h, mut g) = (h.expect("accept"), g.expect("join"));
    // On the relay path there is no peer address. The direct path may take
    // over at any moment, so only a reading taken between two relay
    // readings counts.
    let (before, addr, after) = (h.path(), h.peer_addr(), h.path());
    if before == Path::Relay && after == Path::Relay {
        assert_eq!(addr, None);
    }
    // Wait for the direct path (loopback always has one).
    let mut ev = g.path_events();
    tokio::time::timeout(
        Duration::from_secs(10),
        ev.wait_for(|p| *p == Path::DirectTcp),
    )
    .await
    .expect("direct in time")
    .expect("path events");
    let peer = g.peer_addr().expect("peer address on the direct path");
    assert!(peer.ip().is_loopback(), "{peer}");
    assert!(
        g.rtt().is_some(),
        "the guest measured the relay's round trip"
    );

    let data = vec![7u8; 100_000];
    let host = async {
        h.write_all(&data).await?;
        let mut got = Vec::new();
        h.read_to_end(&mut got).await?;
        assert_eq!(got.len(), 5);
        assert_eq!((h.bytes_sent(), h.bytes_received()), (100_000, 5));
        h.close().await
    };
    let guest = async {
        let mut buf = vec![0u8; 100_000];
        g.read_exact(&mut buf).await?;
        g.write_all(b"thank").await?;
        assert_eq!((g.bytes_sent(), g.bytes_received()), (5, 100_000));
        g.close().await
    };
    let (a, b) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(host, guest) })
        .await
        .expect("close in time");
    a.expect("host close");
    b.expect("guest close");
}
