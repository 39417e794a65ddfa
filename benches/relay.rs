//! Relay benchmarks, side by side in one run (loopback):
//!
//! 1. forwarding goodput and relay CPU-seconds per GiB, 1 and 100 parallel
//!    sessions, for the relay with splice(2), the relay with user-space copies,
//!    and a plain tokio `copy_bidirectional` TCP proxy. Each forwarder runs
//!    on its own single-threaded runtime on its own OS thread, whose CPU time
//!    (CLOCK_THREAD_CPUTIME_ID) is the "relay CPU"; the load generator runs on
//!    another thread.
//! 2. sessions paired per second (TLS to the relay, CREATE, JOIN, PAIRED).
//! 3. relay memory per idle paired session at 9,500 sessions (two sockets per
//!    session on each side; 10,000 needs more than a 20,000-descriptor hard
//!    limit allows): the
//!    `xtcp-relay` binary in its own process, RSS before and after.
//!
//! `cargo bench --bench relay` (`-- --quick` for smaller transfers)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use xtcp::relay::client::{create_session, join_session};
use xtcp::relay::server::{self, Relay, RelayConfig};
use xtcp::relay::{RelayClientConfig, RelayTrust};

const TOKEN: &str = "bench-token";

/// A forwarder on its own thread; `cpu()` asks that thread for its CPU time.
struct Forwarder {
    addr: SocketAddr,
    fingerprint: Option<[u8; 32]>,
    cpu_tx: mpsc::UnboundedSender<oneshot::Sender<Duration>>,
}

impl Forwarder {
    async fn cpu(&self) -> Duration {
        let (tx, rx) = oneshot::channel();
        let _ = self.cpu_tx.send(tx);
        rx.await.unwrap_or_default()
    }
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

fn spawn_forwarder(kind: &'static str) -> Forwarder {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (cpu_tx, mut cpu_rx) = mpsc::unbounded_channel::<oneshot::Sender<Duration>>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tokio::spawn(async move {
                while let Some(tx) = cpu_rx.recv().await {
                    let _ = tx.send(thread_cpu());
                }
            });
            match kind {
                "proxy" => {
                    // The sink side: the proxy forwards each client to the sink's listener.
                    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    let addr = l.local_addr().unwrap();
                    ready_tx.send((addr, None)).unwrap();
                    loop {
                        let (mut c, _) = l.accept().await.unwrap();
                        tokio::spawn(async move {
                            // First 8 bytes: the port of the upstream to connect to.
                            let mut port = [0u8; 2];
                            if c.read_exact(&mut port).await.is_err() {
                                return;
                            }
                            let Ok(mut up) =
                                TcpStream::connect(("127.0.0.1", u16::from_be_bytes(port))).await
                            else {
                                return;
                            };
                            let _ = c.set_nodelay(true);
                            let _ = up.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                        });
                    }
                }
                _ => {
                    let ck = xtcp::tls::self_signed(&["localhost"]).unwrap();
                    let mut fp = [0u8; 32];
                    fp.copy_from_slice(
                        ring::digest::digest(&ring::digest::SHA256, ck.chain[0].as_ref()).as_ref(),
                    );
                    let cfg = RelayConfig {
                        listen: "127.0.0.1:0".parse().unwrap(),
                        token_hashes: vec![server::token_hash(TOKEN)],
                        splice: kind == "relay-splice",
                        max_unauthenticated: 100_000,
                        // Every client is 127.0.0.1: one source.
                        max_unauthenticated_per_source: 100_000,
                        max_waiting_per_source: 100_000,
                        max_sessions_per_source: 100_000,
                        udp_listen: Some("127.0.0.1:0".parse().unwrap()),
                        ..RelayConfig::default()
                    };
                    let relay =
                        Relay::start(cfg, server::server_tls(ck.chain, ck.key).unwrap(), None)
                            .await
                            .unwrap();
                    ready_tx.send((relay.local_addr(), Some(fp))).unwrap();
                    std::future::pending::<()>().await;
                }
            }
        });
    });
    let (addr, fingerprint) = ready_rx.recv().unwrap();
    Forwarder {
        addr,
        fingerprint,
        cpu_tx,
    }
}

fn client_cfg(f: &Forwarder, token: Option<&str>) -> RelayClientConfig {
    RelayClientConfig {
        relays: vec![f.addr.to_string()],
        trust: RelayTrust::pinned(f.fingerprint.unwrap_or_default()),
        token: token.map(str::to_string),
        connect_timeout: Duration::from_secs(30),
    }
}

/// One forwarded connection pair (a → forwarder → b).
async fn connect_pair(f: &Forwarder) -> (TcpStream, TcpStream) {
    if f.fingerprint.is_some() {
        let s = xtcp::secret::SessionSecret::generate().unwrap();
        let rid = s.rendezvous_id();
        let waiting = create_session(&client_cfg(f, Some(TOKEN)), rid)
            .await
            .unwrap();
        let gcfg = client_cfg(f, None);
        let (h, g) = tokio::join!(waiting.paired(), join_session(&gcfg, rid));
        (h.unwrap().stream, g.unwrap().stream)
    } else {
        let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = sink.local_addr().unwrap().port();
        let mut a = TcpStream::connect(f.addr).await.unwrap();
        a.write_all(&port.to_be_bytes()).await.unwrap();
        let (b, _) = sink.accept().await.unwrap();
        (a, b)
    }
}

/// Push `bytes` from a to b; returns when b has read them all.
async fn push(mut a: TcpStream, mut b: TcpStream, bytes: u64) {
    let w = async move {
        let buf = vec![0x5au8; 256 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            a.write_all(&buf[..n]).await.unwrap();
            left -= n as u64;
        }
        a.shutdown().await.unwrap();
        a
    };
    let r = async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            let n = b.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        assert_eq!(got, bytes);
    };
    let _ = tokio::join!(w, r);
}

struct Row {
    name: String,
    gbit: f64,
    cpu_per_gib: f64,
}

async fn forward_bench(kind: &'static str, sessions: usize, per_session: u64) -> Row {
    let f = spawn_forwarder(kind);
    let mut pairs = Vec::new();
    for _ in 0..sessions {
        pairs.push(connect_pair(&f).await);
    }
    let cpu0 = f.cpu().await;
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (a, b) in pairs {
        set.spawn(push(a, b, per_session));
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let dt = t0.elapsed().as_secs_f64();
    let cpu = (f.cpu().await - cpu0).as_secs_f64();
    let total = per_session * sessions as u64;
    Row {
        name: format!("{kind} ×{sessions}"),
        gbit: total as f64 * 8.0 / dt / 1e9,
        cpu_per_gib: cpu / (total as f64 / (1u64 << 30) as f64),
    }
}

async fn pairing_rate(n: usize, par: usize) -> f64 {
    let f = Arc::new(spawn_forwarder("relay-splice"));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..par {
        let f = f.clone();
        set.spawn(async move {
            for _ in (w..n).step_by(par) {
                let (a, b) = connect_pair(&f).await;
                drop((a, b));
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Spawn the relay binary; returns (child, addr, fingerprint).
fn relay_process(dir: &std::path::Path) -> (std::process::Child, String, [u8; 32]) {
    use std::io::BufRead;
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nself_signed = true\ntoken_hashes = [\"{}\"]\nmax_unauthenticated = 100000\nmax_unauthenticated_per_source = 100000\nmax_waiting_per_source = 100000\nmax_sessions_per_source = 100000\nudp_listen = \"127.0.0.1:0\"\n",
            server::token_hash(TOKEN)
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xtcp-relay"))
        .arg("--config")
        .arg(&cfg)
        .env("XTCP_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut fp = [0u8; 32];
    let addr = loop {
        let l = lines.next().unwrap().unwrap();
        if let Some(h) = l.strip_prefix("self-signed certificate sha256 fingerprint: ") {
            fp.copy_from_slice(&xtcp::tls::unhex(h).unwrap());
        }
        if let Some(a) = l.strip_prefix("xtcp-relay listening on ") {
            break a.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr, fp)
}

/// Relay RSS per idle paired session: `n` pairs, each forwarded and idle.
async fn idle_memory(n: usize) -> (f64, u64) {
    relay_memory(n, |f| async move { connect_pair(&f).await }).await
}

/// Relay RSS per waiting session: `n` hosts CREATE and wait, no guest ever
/// joins.
async fn waiting_memory(n: usize) -> (f64, u64) {
    relay_memory(n, |f| async move {
        let rid = xtcp::secret::SessionSecret::generate()
            .unwrap()
            .rendezvous_id();
        create_session(&client_cfg(&f, Some(TOKEN)), rid)
            .await
            .unwrap()
    })
    .await
}

/// The `xtcp-relay` binary's RSS growth per item that `make` opens against
/// it, `n` of them held at once (64 opened in parallel), read after 16
/// warm-up items (allocator arenas, TLS config) and a settling pause.
async fn relay_memory<T, F, Fut>(n: usize, make: F) -> (f64, u64)
where
    T: Send + 'static,
    F: Fn(Arc<Forwarder>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let dir = std::env::temp_dir().join(format!("xtcp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, addr, fp) = relay_process(&dir);
    let f = Arc::new(Forwarder {
        addr: addr.parse().unwrap(),
        fingerprint: Some(fp),
        cpu_tx: mpsc::unbounded_channel().0,
    });
    let mut keep = Vec::with_capacity(n + 16);
    for _ in 0..16 {
        keep.push(make(f.clone()).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_of(child.id());
    let par = 64;
    let mut set = tokio::task::JoinSet::new();
    for w in 0..par {
        let (f, make) = (f.clone(), make.clone());
        set.spawn(async move {
            let mut v = Vec::new();
            for _ in (w..n).step_by(par) {
                v.push(make(f.clone()).await);
            }
            v
        });
    }
    while let Some(r) = set.join_next().await {
        keep.extend(r.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_of(child.id());
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    let _ = child.kill();
    let _ = child.wait();
    drop(keep);
    let _ = std::fs::remove_dir_all(&dir);
    (per, after)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--idle N`: only the idle-memory measurement, with N sessions.
    let idle_only: Option<usize> = args
        .iter()
        .position(|a| a == "--idle")
        .and_then(|i| args.get(i + 1)?.parse().ok());
    // `--waiting N`: only the waiting-session memory, with N hosts.
    let waiting_only: Option<usize> = args
        .iter()
        .position(|a| a == "--waiting")
        .and_then(|i| args.get(i + 1)?.parse().ok());
    server::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if let Some(n) = waiting_only {
            let (per, total) = waiting_memory(n).await;
            println!("relay memory per waiting session at {n} sessions: {:.2} KiB (relay RSS {:.1} MiB)", per / 1024.0, total as f64 / 1048576.0);
            return;
        }
        if let Some(n) = idle_only {
            let (per, total) = idle_memory(n).await;
            println!("relay memory per idle paired session at {n} sessions: {:.1} KiB (relay RSS {:.1} MiB)", per / 1024.0, total as f64 / 1048576.0);
            return;
        }
        let (one, hundred) = if quick { (256u64 << 20, 4u64 << 20) } else { (2u64 << 30, 20u64 << 20) };
        println!("forwarding on loopback, one forwarder thread, one load thread");
        println!("{:<22} {:>10} {:>16}", "forwarder", "Gbit/s", "CPU-s per GiB");
        let mut rows = Vec::new();
        for (sessions, per) in [(1usize, one), (100, hundred)] {
            for kind in ["proxy", "relay-splice", "relay-copy"] {
                let r = forward_bench(kind, sessions, per).await;
                println!("{:<22} {:>10.2} {:>16.3}", r.name, r.gbit, r.cpu_per_gib);
                rows.push(r);
            }
        }
        for chunk in rows.chunks(3) {
            let p = &chunk[0];
            for r in &chunk[1..] {
                println!(
                    "ratio {:<16} goodput {:.2}× proxy, CPU/byte {:.2}× proxy",
                    r.name,
                    r.gbit / p.gbit,
                    r.cpu_per_gib / p.cpu_per_gib
                );
            }
        }
        let n = if quick { 200 } else { 2000 };
        println!("sessions paired per second ({n} sessions, 32 at a time): {:.0}", pairing_rate(n, 32).await);
        // 9,500, not 10,000: each session is two sockets on each side, and
        // the hard RLIMIT_NOFILE here is 20,000 without CAP_SYS_RESOURCE.
        let idle = if quick { 1000 } else { 9_500 };
        let (per, total) = idle_memory(idle).await;
        println!(
            "relay memory per idle paired session at {idle} sessions: {:.1} KiB (relay RSS {:.1} MiB)",
            per / 1024.0,
            total as f64 / 1048576.0
        );
    });
}
