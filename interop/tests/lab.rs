//! The lab itself: two namespaces on a veth pair with MTU 1500, a kernel TCP
//! exchange in both directions at once, then the same under 5 % nftables loss.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};
use xtcp_lab::{payload, require_root, sha256_hex, veth, Netns};

fn peer() -> &'static str {
    env!("CARGO_BIN_EXE_xtcp-lab-peer")
}

/// Run serve in `a`, connect from `b`; return (bytes a got, sha), (bytes b got, sha).
fn exchange(a: &Netns, b: &Netns, addr: &str, len: usize) -> ((usize, String), (usize, String)) {
    let mut server = a
        .spawn(peer(), &["serve", addr, &len.to_string(), "1"])
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("listening"), "{first}");
    let client = b
        .exec(&[peer(), "connect", addr, &len.to_string(), "2"])
        .unwrap();
    let parse = |s: &str| {
        let l = s
            .lines()
            .find(|l| l.starts_with("recv"))
            .unwrap_or_default()
            .to_owned();
        let mut it = l.split_whitespace().skip(1);
        (
            it.next().unwrap_or("0").parse().unwrap_or(0),
            it.next().unwrap_or("").to_owned(),
        )
    };
    let client_got = parse(&String::from_utf8_lossy(&client.stdout));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(server.wait().unwrap().success());
    (parse(&rest.join("\n")), client_got)
}

#[test]
fn veth_pair_kernel_tcp_both_ways_and_under_loss() {
    require_root();
    let a = Netns::new("a").unwrap();
    let b = Netns::new("b").unwrap();
    veth(
        &a,
        "eth0",
        "198.18.1.1/24",
        &b,
        "eth0",
        "198.18.1.2/24",
        1500,
    )
    .unwrap();
    let len = 8 << 20;
    let (want_a, want_b) = (sha256_hex(&payload(2, len)), sha256_hex(&payload(1, len)));
    let (ga, gb) = exchange(&a, &b, "198.18.1.1:5000", len);
    assert_eq!(ga, (len, want_a.clone()));
    assert_eq!(gb, (len, want_b.clone()));
    // 5 % random loss on a's ingress: still byte-exact (kernel TCP recovers).
    a.random_drop("eth0", 5).unwrap();
    let t = Instant::now();
    let (ga, gb) = exchange(&a, &b, "198.18.1.1:5001", 1 << 20);
    assert_eq!(ga.0, 1 << 20);
    assert_eq!(gb.0, 1 << 20);
    assert!(t.elapsed() < Duration::from_secs(120));
}
