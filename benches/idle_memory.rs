//! Resident memory per idle XTCP connection, end-to-end TLS included (issue 3:
//! "idle connection ≤ 32 KiB resident, TLS state included, with 10,000
//! connections on one endpoint").
//!
//! ```text
//!   this process (client, one endpoint)  ── loopback ──  child process (server, one endpoint)
//!   N × connect + e2e TLS (Guest)                        N × accept + e2e TLS (Host)
//! ```
//!
//! Each side opens `WARM` connections first and reads its resident set size
//! (`VmRSS` of `/proc/self/status`): that baseline holds the runtime, the
//! endpoint's socket buffers and the allocator's warm-up. Then it opens the
//! other N − `WARM`, lets every connection go idle (handshakes done, tags
//! exchanged, delayed ACKs sent), and reads VmRSS again. The figure is
//! (after − baseline) / (N − `WARM`), for each side: the connection's proto
//! state, its stream handle and the rustls state of a `xtcp connect`/`listen
//! --code` stream (`xtcp::e2e::handshake` over an `XtcpStream`).
//!
//! ```sh
//! cargo bench --bench idle_memory                 # 10,000 connections, TLS
//! cargo bench --bench idle_memory -- --conns 2000 --no-tls
//! ```

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use xtcp::e2e::{handshake, E2eOptions, E2eStream, Role};
use xtcp::secret::SessionSecret;
use xtcp::transport::{EndpointOptions, XtcpEndpoint, XtcpStream};

/// Connections opened before the baseline is read.
const WARM: usize = 200;
/// Connects (handshakes) in flight at once on the client.
const IN_FLIGHT: usize = 256;
/// Time given to the last delayed ACKs before measuring.
const SETTLE: Duration = Duration::from_secs(1);
/// Bound on the whole run of one side.
const DEADLINE: Duration = Duration::from_secs(600);

type Res<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// VmRSS of this process, KiB.
fn rss_kib() -> Res<u64> {
    let s = std::fs::read_to_string("/proc/self/status").map_err(err("/proc/self/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/self/status".into())
}

/// One idle connection as the application holds it.
enum Held {
    Raw(#[allow(dead_code)] XtcpStream),
    Tls(#[allow(dead_code)] Box<E2eStream<XtcpStream>>),
}

struct Opts {
    conns: usize,
    tls: bool,
}

fn parse(args: &[String]) -> Res<Opts> {
    let mut o = Opts {
        conns: 10_000,
        tls: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => {}
            "--conns" => {
                let v = it.next().ok_or("--conns needs a value")?;
                o.conns = v.parse().map_err(err("--conns"))?;
            }
            "--no-tls" => o.tls = false,
            "--role" | "--code" => {
                it.next();
            }
            "-h" | "--help" => return Err("flags: --conns N (default 10000), --no-tls".into()),
            x => return Err(format!("unknown flag {x}")),
        }
    }
    if o.conns <= WARM {
        return Err(format!("--conns must exceed {WARM}"));
    }
    Ok(o)
}

fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn endpoint_options(listen: bool) -> EndpointOptions {
    EndpointOptions {
        listen,
        accept_backlog: 16_384,
        ..EndpointOptions::default()
    }
}

fn runtime() -> Res<tokio::runtime::Runtime> {
    // One thread: no per-thread allocator arenas in the figures.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(err("runtime"))
}

// ───────────────────────────── server (child) ─────────────────────────────

async fn serve(o: &Opts, secret: &SessionSecret) -> Res<(u64, u64)> {
    let ep = XtcpEndpoint::bind(
        "127.0.0.1:0".parse().map_err(err("addr"))?,
        endpoint_options(true),
    )
    .map_err(err("bind"))?;
    println!("READY {}", ep.local_addr());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let accept = {
        let ep = ep.clone();
        let (tls, secret) = (o.tls, secret.clone());
        tokio::spawn(async move {
            loop {
                let Ok(s) = ep.accept().await else { return };
                let (tx, secret) = (tx.clone(), secret.clone());
                tokio::spawn(async move {
                    let held = if tls {
                        handshake(s, Role::Host, &secret, &E2eOptions::default())
                            .await
                            .map(|t| Held::Tls(Box::new(t)))
                            .map_err(|e| e.to_string())
                    } else {
                        Ok(Held::Raw(s))
                    };
                    let _ = tx.send(held);
                });
            }
        })
    };
    let mut held = Vec::with_capacity(o.conns);
    let mut base = 0;
    while held.len() < o.conns {
        let h = rx.recv().await.ok_or("accept loop ended")??;
        held.push(h);
        if held.len() == WARM {
            tokio::time::sleep(SETTLE).await;
            base = rss_kib()?;
        }
    }
    accept.abort();
    // The client says when it has measured its side: both idle at once.
    let line = tokio::task::spawn_blocking(|| {
        let mut l = String::new();
        std::io::stdin().read_line(&mut l).map(|_| l)
    });
    tokio::time::sleep(SETTLE).await;
    ep.flush().await;
    let after = rss_kib()?;
    let _ = line.await;
    drop(held);
    Ok((base, after))
}

fn server_main(args: &[String]) -> ExitCode {
    let run = || -> Res<(u64, u64)> {
        let o = parse(args)?;
        let secret =
            SessionSecret::parse(value(args, "--code").ok_or("--code")?).map_err(err("code"))?;
        runtime()?.block_on(async {
            tokio::time::timeout(DEADLINE, serve(&o, &secret))
                .await
                .map_err(|_| "server timed out".to_string())?
        })
    };
    match run() {
        Ok((base, after)) => {
            println!("RESULT {base} {after}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("server: {e}");
            ExitCode::FAILURE
        }
    }
}

// ───────────────────────────── client (parent) ─────────────────────────────

async fn open(
    ep: &XtcpEndpoint,
    addr: SocketAddr,
    tls: bool,
    secret: &SessionSecret,
    count: usize,
    held: &mut Vec<Held>,
) -> Res<()> {
    let mut set = tokio::task::JoinSet::new();
    let mut to_start = count.saturating_sub(held.len());
    loop {
        while to_start > 0 && set.len() < IN_FLIGHT {
            let (ep, secret) = (ep.clone(), secret.clone());
            set.spawn(async move {
                let s = ep.connect(addr).await.map_err(err("connect"))?;
                if tls {
                    let t = handshake(s, Role::Guest, &secret, &E2eOptions::default())
                        .await
                        .map_err(err("e2e handshake"))?;
                    Ok::<_, String>(Held::Tls(Box::new(t)))
                } else {
                    Ok(Held::Raw(s))
                }
            });
            to_start -= 1;
        }
        let Some(r) = set.join_next().await else {
            break;
        };
        held.push(r.map_err(err("connect task"))??);
    }
    Ok(())
}

async fn client(o: &Opts, addr: SocketAddr, secret: &SessionSecret) -> Res<(u64, u64, f64)> {
    let ep = XtcpEndpoint::bind(
        "127.0.0.1:0".parse().map_err(err("addr"))?,
        endpoint_options(false),
    )
    .map_err(err("bind"))?;
    let mut held = Vec::with_capacity(o.conns);
    open(&ep, addr, o.tls, secret, WARM, &mut held).await?;
    tokio::time::sleep(SETTLE).await;
    let base = rss_kib()?;
    let t0 = Instant::now();
    open(&ep, addr, o.tls, secret, o.conns, &mut held).await?;
    let secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    ep.flush().await;
    let after = rss_kib()?;
    if ep.connections() != o.conns {
        return Err(format!(
            "{} connections on the endpoint, want {}",
            ep.connections(),
            o.conns
        ));
    }
    Ok((base, after, secs))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if value(&args, "--role") == Some("server") {
        return server_main(&args);
    }
    match parent(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle_memory: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parent(args: &[String]) -> Res<()> {
    let o = parse(args)?;
    let secret = SessionSecret::generate().map_err(err("session code"))?;
    let exe = std::env::current_exe().map_err(err("current_exe"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["--role", "server", "--code", &secret.code(), "--conns"])
        .arg(o.conns.to_string());
    if !o.tls {
        cmd.arg("--no-tls");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(err("spawn server"))?;
    let out = child.stdout.take().ok_or("server stdout")?;
    let mut lines = BufReader::new(out).lines();
    let mut next = |want: &str| -> Res<String> {
        for l in lines.by_ref() {
            let l = l.map_err(err("server output"))?;
            if let Some(rest) = l.strip_prefix(want) {
                return Ok(rest.trim().to_string());
            }
        }
        Err(format!("server ended before {want}"))
    };
    let addr: SocketAddr = next("READY")?.parse().map_err(err("server address"))?;
    let r = runtime()?.block_on(async {
        tokio::time::timeout(DEADLINE, client(&o, addr, &secret))
            .await
            .map_err(|_| "client timed out".to_string())?
    });
    let (cbase, cafter, secs) = match r {
        Ok(v) => v,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    if let Some(stdin) = child.stdin.as_mut() {
        let _ = writeln!(stdin, "measured");
    }
    let res = next("RESULT")?;
    let _ = child.wait();
    let mut it = res.split_whitespace().map(|v| v.parse::<u64>());
    let (sbase, safter) = match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b),
        _ => return Err(format!("bad server result {res:?}")),
    };
    let n = (o.conns - WARM) as f64;
    let per = |base: u64, after: u64| after.saturating_sub(base) as f64 / n;
    println!(
        "{} idle {} connections on one endpoint each side ({} opened in {:.1} s after {WARM} warm-up ones)\n",
        o.conns,
        if o.tls { "XTCP + e2e TLS" } else { "raw XTCP" },
        o.conns - WARM,
        secs,
    );
    println!("| side | VmRSS baseline KiB | VmRSS after KiB | KiB per idle connection |");
    println!("|---|---:|---:|---:|");
    let (c, s) = if o.tls {
        (
            "client (connect, TLS client)",
            "server (listen, TLS server)",
        )
    } else {
        ("client (connect)", "server (listen)")
    };
    println!("| {c} | {cbase} | {cafter} | {:.1} |", per(cbase, cafter));
    println!("| {s} | {sbase} | {safter} | {:.1} |", per(sbase, safter));
    println!(
        "\nproto::conn::Connection is {} bytes inline.",
        std::mem::size_of::<proto::xtcp::conn::Connection>()
    );
    Ok(())
}
