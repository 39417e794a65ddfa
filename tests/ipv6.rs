//! IPv6 direct-path candidates: two namespaces joined by a veth with IPv4
//! (198.18.6.0/24) and IPv6 (2001:db8:6::/64, the documentation prefix);
//! the relay sits at A's IPv4 address. B's firewall lets IPv4 TCP through
//! only to and from the relay's port, so a direct TCP path between the peers
//! can only be an IPv6 one (`spec/direct.md` §4.1). Needs root.

mod common;

use common::*;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;
use xtcp::DirectOptions;
use xtcp::Path;
use xtcp_lab::{veth, Netns};

const RELAY_PORT: u16 = 4433;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn options(relay: SocketAddr, fp: [u8; 32], token: Option<&str>) -> xtcp::Options {
    let mut o = client(&[(relay, fp)], token);
    o.direct = DirectOptions {
        udp: false,
        ..DirectOptions::default()
    };
    o
}

/// Wait (bounded) until the session reports `want`.
async fn reaches(s: &xtcp::Session, want: Path) -> bool {
    let mut ev = s.path_events();
    tokio::time::timeout(Duration::from_secs(10), async {
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

#[test]
fn direct_tcp_over_ipv6_when_ipv4_tcp_between_the_peers_is_blocked() {
    xtcp_lab::require_root();
    let a = Netns::new("v6a").expect("netns");
    let b = Netns::new("v6b").expect("netns");
    veth(
        &a,
        "eth0",
        "198.18.6.1/24",
        &b,
        "eth0",
        "198.18.6.2/24",
        1500,
    )
    .expect("veth");
    for (ns, ip) in [(&a, "2001:db8:6::1/64"), (&b, "2001:db8:6::2/64")] {
        ns.exec(&["ip", "-6", "addr", "add", ip, "dev", "eth0", "nodad"])
            .expect("ipv6 address");
    }
    let port = RELAY_PORT.to_string();
    let rules = format!(
        "table ip v4block {{\n  chain in {{ type filter hook input priority 0; policy accept;\n    tcp sport != {port} drop\n  }}\n  chain out {{ type filter hook output priority 0; policy accept;\n    tcp dport != {port} drop\n  }}\n}}\n"
    );
    let path = std::env::temp_dir().join(format!("xtcp-v6block-{}.nft", std::process::id()));
    std::fs::write(&path, rules).expect("rules");
    b.exec(&["nft", "-f", path.to_str().unwrap_or_default()])
        .expect("nft");
    let _ = std::fs::remove_file(&path);

    // The block holds: an IPv4 TCP connect from B to a listener in A fails,
    // the IPv6 one succeeds.
    let l4 = a
        .run_in(|| std::net::TcpListener::bind("198.18.6.1:0"))
        .expect("setns")
        .expect("listen v4");
    let l6 = a
        .run_in(|| std::net::TcpListener::bind("[2001:db8:6::1]:0"))
        .expect("setns")
        .expect("listen v6");
    let (p4, p6) = (
        l4.local_addr().expect("addr"),
        l6.local_addr().expect("addr"),
    );
    let t = Duration::from_millis(500);
    let v4 = b
        .run_in(move || TcpStream::connect_timeout(&p4, t))
        .expect("setns");
    let v6 = b
        .run_in(move || TcpStream::connect_timeout(&p6, t))
        .expect("setns");
    assert!(v4.is_err(), "IPv4 TCP between the peers is blocked");
    assert!(v6.is_ok(), "IPv6 TCP between the peers works: {v6:?}");
    drop((l4, l6));

    let relay_addr: SocketAddr = format!("198.18.6.1:{RELAY_PORT}").parse().expect("addr");
    let len: u64 = 8 << 20;
    let (code_tx, code_rx) = mpsc::channel::<(String, [u8; 32])>();
    let host = std::thread::scope(|s| {
        let host = s.spawn(|| {
            a.run_in(|| {
                runtime().block_on(async {
                    let relay = start_relay(xtcp::relay::server::RelayConfig {
                        listen: relay_addr,
                        udp_listen: None,
                        ..relay_config()
                    })
                    .await;
                    let opts = options(relay.addr, relay.fingerprint, Some(TOKEN));
                    let host = xtcp::host(&opts).await.expect("host");
                    let _ = code_tx.send((host.code(), relay.fingerprint));
                    let session = host.accept().await.expect("accept");
                    let direct = reaches(&session, Path::DirectTcp).await;
                    let r = exchange_hashed(session, len, 61).await;
                    (direct, r)
                })
            })
        });
        let guest = s.spawn(move || {
            let (code, fp) = code_rx
                .recv_timeout(Duration::from_secs(20))
                .expect("host's code");
            b.run_in(move || {
                runtime().block_on(async move {
                    let session = xtcp::join(&code, &options(relay_addr, fp, None))
                        .await
                        .expect("join");
                    let direct = reaches(&session, Path::DirectTcp).await;
                    let r = exchange_hashed(session, len / 8, 62).await;
                    (direct, r)
                })
            })
        });
        (
            host.join().expect("host thread").expect("setns"),
            guest.join().expect("guest thread").expect("setns"),
        )
    });
    let ((hd, hr), (gd, gr)) = host;
    assert!(
        hd && gd,
        "both sides reach direct-tcp (host {hd}, guest {gd})"
    );
    let (sent_h, got_h, n_h) = hr.expect("host exchange");
    let (sent_g, got_g, n_g) = gr.expect("guest exchange");
    assert_eq!((n_g, got_g), (len, sent_h), "host→guest byte-exact");
    assert_eq!((n_h, got_h), (len / 8, sent_g), "guest→host byte-exact");
}
