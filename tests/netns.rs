//! XTCP between two network namespaces over a veth pair (MTU 1500) with 5 %
//! random loss each way (nftables), through the `xtcp` binary. Needs root
//! (CI runs as root; elsewhere it fails loudly rather than skipping).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xtcp_lab::{payload, require_root, sha256_hex, veth, Netns};

const XTCP: &str = env!("CARGO_BIN_EXE_xtcp");

#[test]
fn sixty_four_mib_across_namespaces_with_five_percent_loss_each_way() {
    require_root();
    let a = Netns::new("xa").unwrap();
    let b = Netns::new("xb").unwrap();
    veth(
        &a,
        "eth0",
        "198.18.2.1/24",
        &b,
        "eth0",
        "198.18.2.2/24",
        1500,
    )
    .unwrap();
    a.random_drop("eth0", 5).unwrap();
    b.random_drop("eth0", 5).unwrap();
    let len = 64 << 20;
    let dir = std::env::temp_dir().join(format!("xtcp-netns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (fa, fb) = (dir.join("a"), dir.join("b"));
    std::fs::write(&fa, payload(1, len)).unwrap();
    std::fs::write(&fb, payload(2, len / 4)).unwrap();
    let t = Instant::now();
    let listener = Command::new("ip")
        .args([
            "netns",
            "exec",
            a.name(),
            XTCP,
            "listen",
            "198.18.2.1:7000",
            "--no-tls",
        ])
        .stdin(std::fs::File::open(&fa).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let dialer = Command::new("ip")
        .args([
            "netns",
            "exec",
            b.name(),
            XTCP,
            "connect",
            "198.18.2.1:7000",
            "--no-tls",
        ])
        .stdin(std::fs::File::open(&fb).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both outputs are drained at once (a full stdout pipe would stall the
    // listener's reads and, through flow control, the whole transfer).
    let l = std::thread::spawn(move || listener.wait_with_output().unwrap());
    let d = dialer.wait_with_output().unwrap();
    let l = l.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        d.status.success(),
        "dialer: {}",
        String::from_utf8_lossy(&d.stderr)
    );
    assert!(
        l.status.success(),
        "listener: {}",
        String::from_utf8_lossy(&l.stderr)
    );
    assert_eq!(d.stdout.len(), len);
    assert_eq!(
        sha256_hex(&d.stdout),
        sha256_hex(&payload(1, len)),
        "listener→dialer byte-exact"
    );
    assert_eq!(
        sha256_hex(&l.stdout),
        sha256_hex(&payload(2, len / 4)),
        "dialer→listener byte-exact"
    );
    eprintln!(
        "64 MiB + 16 MiB across namespaces, 5 % loss each way: {secs:.1} s, {:.1} Mbit/s one way",
        len as f64 * 8.0 / secs / 1e6
    );
}
