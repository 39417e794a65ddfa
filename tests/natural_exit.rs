//! The newcomer's program (issue 13): each side writes, shuts down, reads to
//! the end and returns from `main`, with no `control()`, no sleeps. Each side
//! runs on its own runtime, dropped as soon as its program returns, as a
//! process exit drops everything in it. The peer must never see an error, on
//! every path.
//!
//! `XTCP_NATURAL_RUNS` sets the runs per path (default 100).

mod common;

use common::{start_relay, Gen, TestRelay, TOKEN};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xtcp::Path;
use xtcp::{DirectOptions, PathPolicy};
use xtcp_lab::{require_root, veth, Netns};

fn runs() -> usize {
    std::env::var("XTCP_NATURAL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Gen::new(seed).fill(&mut v);
    v
}

/// The program: wait for `want` (so the ending happens on that path), then
/// write, shut down, read to the end; return what was read.
async fn program(s: xtcp::Session, want: Option<Path>, mine: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut s = s;
    if let Some(want) = want {
        reach(&s, want).await?;
    }
    s.write_all(&mine)
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(got)
}

async fn reach(s: &xtcp::Session, want: Path) -> Result<(), String> {
    let mut ev = s.path_events();
    let reached = tokio::time::timeout(Duration::from_secs(15), async {
        while *ev.borrow_and_update() != want {
            if ev.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    if reached != Ok(true) {
        return Err(format!("never reached {want}: on {}", s.path()));
    }
    Ok(())
}

/// A child process runs one side (this test binary, re-run with
/// `XTCP_NATURAL_ROLE` set, the `natural_child` test): it prints the code
/// (host), runs the program, prints the SHA-256 of what it read and exits
/// at once, like a `main` that returns.
fn child_main() {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let role = env("XTCP_NATURAL_ROLE");
    let relay: std::net::SocketAddr = env("XTCP_NATURAL_RELAY").parse().expect("relay addr");
    let fp: [u8; 32] = xtcp::tls::unhex(&env("XTCP_NATURAL_FP"))
        .and_then(|v| v.try_into().ok())
        .expect("fingerprint");
    let kind = match env("XTCP_NATURAL_KIND").as_str() {
        "relay" => Some(Path::Relay),
        "direct-tcp" => Some(Path::DirectTcp),
        "direct-udp" => Some(Path::DirectUdp),
        _ => None,
    };
    let seed: u64 = env("XTCP_NATURAL_SEED").parse().expect("seed");
    let len: usize = env("XTCP_NATURAL_LEN").parse().expect("len");
    let mut o = common::client(&[(relay, fp)], (role == "host").then_some(TOKEN));
    o.direct = direct_options(kind);
    common::init_log();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(async move {
        let s = if role == "host" {
            let h = xtcp::host(&o).await.map_err(|e| format!("host: {e}"))?;
            // On a line of its own (the test harness's line has no newline yet).
            println!("\nCODE {}", h.code());
            use std::io::Write;
            let _ = std::io::stdout().flush();
            h.accept().await.map_err(|e| format!("accept: {e}"))?
        } else {
            let code = env("XTCP_NATURAL_CODE");
            xtcp::join(&code, &o)
                .await
                .map_err(|e| format!("join: {e}"))?
        };
        program(s, kind, data(seed, len)).await
    });
    match r {
        Ok(got) => {
            let h = ring::digest::digest(&ring::digest::SHA256, &got);
            println!("\nGOT {} {}", got.len(), hex(h.as_ref()));
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn natural_child() {
    if std::env::var_os("XTCP_NATURAL_ROLE").is_some() {
        child_main();
    }
}

fn direct_options(kind: Option<Path>) -> DirectOptions {
    match kind {
        None => DirectOptions::default(),
        Some(k) => DirectOptions {
            policy: if k == Path::Relay {
                PathPolicy::RelayOnly
            } else {
                PathPolicy::default()
            },
            tcp: k == Path::DirectTcp,
            udp: k == Path::DirectUdp,
            udp_after: Duration::ZERO,
            ..Default::default()
        },
    }
}

/// A running side: its process and the files its output goes to.
struct Side {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

/// Where the sides run: this network namespace, or each in its own.
#[derive(Clone, Copy)]
struct Net<'a> {
    host: Option<&'a Netns>,
    guest: Option<&'a Netns>,
    /// Distinguishes the output files of tests running at once.
    tag: &'a str,
}

const HERE: Net<'static> = Net {
    host: None,
    guest: None,
    tag: "lo",
};

#[allow(clippy::too_many_arguments)]
fn spawn(
    net: Net<'_>,
    role: &str,
    relay: &TestRelay,
    kind: &str,
    seed: u64,
    len: usize,
    code: &str,
) -> Side {
    let dir = std::env::temp_dir();
    // Unique per test (they run in parallel in this process) and run.
    let tag = format!(
        "xtcp-natural-{}-{}-{kind}-{role}-{seed}",
        std::process::id(),
        net.tag
    );
    let (out, err) = (
        dir.join(format!("{tag}.out")),
        dir.join(format!("{tag}.err")),
    );
    let file = |p: &std::path::Path| std::fs::File::create(p).expect("output file");
    let exe = std::env::current_exe().expect("test binary");
    let ns = if role == "host" { net.host } else { net.guest };
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.name()]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let child = cmd
        .args([
            "--exact",
            "natural_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("XTCP_NATURAL_ROLE", role)
        .env("XTCP_NATURAL_RELAY", relay.addr.to_string())
        .env("XTCP_NATURAL_FP", hex(&relay.fingerprint))
        .env("XTCP_NATURAL_KIND", kind)
        .env("XTCP_NATURAL_SEED", seed.to_string())
        .env("XTCP_NATURAL_LEN", len.to_string())
        .env("XTCP_NATURAL_CODE", code)
        .stdin(Stdio::null())
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .expect("spawn a side");
    Side { child, out, err }
}

impl Side {
    /// The first stdout line with `prefix`, once printed (bounded wait).
    fn line(&mut self, prefix: &str, within: Duration) -> Option<String> {
        let t = Instant::now();
        while t.elapsed() < within {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            if let Some(l) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
                return Some(l.trim().to_string());
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                let text = std::fs::read_to_string(&self.out).unwrap_or_default();
                return text
                    .lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .map(|l| l.trim().to_string());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    /// Wait (bounded: killed after `within`) and return `(len, sha256)` of
    /// what it read, or its error.
    fn outcome(mut self, within: Duration) -> Result<(usize, String), String> {
        let t = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if t.elapsed() < within => std::thread::sleep(Duration::from_millis(2)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!("still running after {within:?}: killed"));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
        if !status.success() {
            let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(format!("{status} ({last})"));
        }
        out.lines()
            .find_map(|l| l.strip_prefix("GOT "))
            .and_then(|l| {
                let (n, h) = l.split_once(' ')?;
                Some((n.parse().ok()?, h.to_string()))
            })
            .ok_or_else(|| format!("no result in {out:?}"))
    }
}

/// `kind`: the path the ending happens on (`None`: the default options, no
/// waiting: the ending races the move to a direct path).
fn natural(kind: Option<Path>) {
    let relay_rt = tokio::runtime::Runtime::new().expect("runtime");
    let relay = relay_rt.block_on(start_relay(common::relay_config()));
    natural_with(kind, HERE, &relay);
    relay_rt.block_on(relay.relay.shutdown());
}

fn natural_with(kind: Option<Path>, net: Net<'_>, relay: &TestRelay) {
    let name = kind.map_or("default".to_string(), |k| k.to_string());
    let n = runs();
    let t = Instant::now();
    let mut failures = Vec::new();
    let bound = Duration::from_secs(60);
    for i in 0..n {
        // From a few bytes to a few MiB: some endings race the direct path.
        let len = [100, 64 * 1024, 1 << 20, 4 << 20][i % 4] + i * 997;
        let (hs, gs) = (2 * i as u64 + 1, 2 * i as u64 + 2);
        let mut host = spawn(net, "host", relay, &name, hs, len, "");
        let Some(code) = host.line("CODE ", Duration::from_secs(20)) else {
            let h = host.outcome(Duration::ZERO);
            failures.push(format!("run {i}: host printed no code: {h:?}"));
            continue;
        };
        let guest = spawn(net, "guest", relay, &name, gs, len / 2, &code);
        let g = guest.outcome(bound);
        let h = host.outcome(bound);
        let want_h = (len / 2, sha(&data(gs, len / 2)));
        let want_g = (len, sha(&data(hs, len)));
        match (h, g) {
            (Ok(hr), Ok(gr)) if hr == want_h && gr == want_g => {}
            (h, g) => failures.push(format!("run {i} ({len} B): host {h:?} / guest {g:?}")),
        }
    }
    eprintln!(
        "{name} ({}): {n} natural programs (separate processes) in {:.1} s, {} failed",
        net.tag,
        t.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "{name}: {failures:#?}");
}

fn sha(b: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

#[test]
fn natural_program_never_fails_its_peer_on_the_relay() {
    natural(Some(Path::Relay));
}

#[test]
fn natural_program_never_fails_its_peer_on_direct_tcp() {
    natural(Some(Path::DirectTcp));
}

#[test]
fn natural_program_never_fails_its_peer_on_direct_udp() {
    natural(Some(Path::DirectUdp));
}

#[test]
fn natural_program_never_fails_its_peer_with_default_options() {
    natural(None);
}

/// The same over a veth pair between two namespaces with 2 % random loss
/// each way (nftables; the relay's TCP suffers it too), ending on direct
/// UDP: a side that received everything and whose data was all
/// acknowledged reports no error. Needs root (CI runs as root).
#[test]
fn natural_program_never_fails_its_peer_on_direct_udp_with_two_percent_loss() {
    require_root();
    let a = Netns::new("na").expect("netns");
    let b = Netns::new("nb").expect("netns");
    veth(
        &a,
        "eth0",
        "198.18.4.1/24",
        &b,
        "eth0",
        "198.18.4.2/24",
        1500,
    )
    .expect("veth");
    a.random_drop("eth0", 2).expect("loss");
    b.random_drop("eth0", 2).expect("loss");
    let relay_rt = tokio::runtime::Runtime::new().expect("runtime");
    // The relay's sockets are opened inside the host's namespace.
    let relay = a
        .run_in(|| {
            relay_rt.block_on(start_relay(xtcp::relay::server::RelayConfig {
                listen: "198.18.4.1:0".parse().expect("addr"),
                udp_listen: Some("198.18.4.1:0".parse().expect("addr")),
                ..common::relay_config()
            }))
        })
        .expect("relay in the namespace");
    let net = Net {
        host: Some(&a),
        guest: Some(&b),
        tag: "loss2",
    };
    natural_with(Some(Path::DirectUdp), net, &relay);
    relay_rt.block_on(relay.relay.shutdown());
}
