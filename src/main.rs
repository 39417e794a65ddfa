//! The `xtcp` command-line tool: `code`, `host`, `join`, `send`, `receive`,
//! `listen`, `connect`, `demo`.

mod cli;
mod demo;
#[cfg(feature = "sim")]
mod simdemo;

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;
use xtcp::relay::{RelayClientConfig, RelayTrust};

#[derive(Parser, Debug)]
#[command(
    name = "xtcp",
    version,
    about = "Secure peer-to-peer byte streams through a blind relay"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print a fresh session code (128 bits from the OS CSPRNG).
    Code,
    /// Create a session on a relay, print its ticket (and code), wait for the
    /// guest, then copy stdin to the peer and the peer to stdout.
    Host {
        #[command(flatten)]
        relay: RelayArgs,
        /// Show bytes and rate on stderr.
        #[arg(long)]
        progress: bool,
    },
    /// Join a session by its ticket or code, then copy stdin to the peer and
    /// the peer to stdout.
    Join {
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        relay: RelayArgs,
        /// Show bytes and rate on stderr.
        #[arg(long)]
        progress: bool,
    },
    /// Send one file: host a session, print the ticket for `xtcp receive`.
    Send {
        /// The file to send.
        path: std::path::PathBuf,
        #[command(flatten)]
        relay: RelayArgs,
    },
    /// Receive one file by its ticket (or code), verified by SHA-256; an
    /// interrupted transfer resumes when both commands run again.
    Receive {
        #[command(flatten)]
        secret: SecretArgs,
        /// Directory to write the file into.
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        /// Accept the offered file without asking.
        #[arg(long, short)]
        yes: bool,
        /// Overwrite an existing file of the same name.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        relay: RelayArgs,
    },
    /// Accept one XTCP connection on a UDP address, then copy stdin ⇄ stdout.
    Listen {
        /// UDP address to listen on (e.g. 0.0.0.0:7000 or [::]:7000).
        addr: std::net::SocketAddr,
        #[command(flatten)]
        direct: DirectArgs,
    },
    /// Connect over XTCP to a listening peer, then copy stdin ⇄ stdout.
    Connect {
        /// The listener's UDP address.
        addr: std::net::SocketAddr,
        #[command(flatten)]
        direct: DirectArgs,
    },
    /// The main job: an embedded relay, a host and a guest in this process
    /// (or, with --sim, an XTCP transfer through the network simulator).
    Demo(DemoArgs),
}

/// Where the ticket or code comes from (`cli::secrets`): safest first.
#[derive(Args, Debug)]
struct SecretArgs {
    /// The ticket or code the host printed; `-` reads it from the first line
    /// of standard input. Without it: --code-file, then XTCP_CODE. (An
    /// argument is visible to other local users in `ps`.)
    #[arg(value_name = "TICKET|CODE|-")]
    code: Option<String>,
    /// Read the ticket or code from this file (first line).
    #[arg(long, value_name = "PATH")]
    code_file: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
struct RelayArgs {
    /// Relay address host:port; repeat (or separate with commas) for a relay
    /// list (rendezvous hashing picks one per session). Needed to host, and
    /// to join by a bare code (a ticket names its relay and pin).
    #[arg(long = "relay", env = "XTCP_RELAY", value_delimiter = ',')]
    relays: Vec<String>,
    /// Operator token (to host); prefer XTCP_TOKEN or --token-file.
    #[arg(long, env = "XTCP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the operator token from this file (first line).
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    /// Trust the relay certificate with this SHA-256 fingerprint (64 hex
    /// digits, as `xtcp-relay --self-signed` prints it); repeat (or separate
    /// with commas) for a self-signed fleet: a relay passes if its
    /// certificate matches any of them.
    #[arg(
        long = "relay-fingerprint",
        value_name = "HEX",
        value_delimiter = ',',
        conflicts_with = "relay_ca"
    )]
    relay_fingerprints: Vec<String>,
    /// Trust relay certificates issued by the CA(s) in this PEM file.
    #[arg(long)]
    relay_ca: Option<std::path::PathBuf>,
    /// Seconds to reach a relay (TCP + TLS).
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Stay on the relay path (no direct connection attempts).
    #[arg(long, conflicts_with = "no_relay_fallback")]
    relay_only: bool,
    /// Once a direct path is up, close the relay connection (a dead direct
    /// path then ends the session instead of falling back).
    #[arg(long)]
    no_relay_fallback: bool,
    /// Seconds without hearing from the direct path before it counts as dead.
    #[arg(long, default_value_t = 5.0)]
    keepalive_timeout: f64,
    /// Seconds after losing the direct path before trying a new one.
    #[arg(long, default_value_t = 10.0)]
    direct_retry: f64,
    /// Seconds without a direct TCP path before UDP hole punching starts
    /// (0: race TCP and UDP from the start). Set on the host.
    #[arg(long, default_value_t = 10.0)]
    udp_after: f64,
    /// No direct TCP attempts (UDP hole punching only).
    #[arg(long, conflicts_with = "relay_only")]
    no_direct_tcp: bool,
    /// No direct UDP attempts (direct TCP only).
    #[arg(long, conflicts_with = "relay_only")]
    no_direct_udp: bool,
    /// Port prediction through endpoint-dependent ("symmetric") NATs: open
    /// this many extra UDP sockets and probe as many guessed ports (0: off).
    /// Costs N sockets and a few N small datagrams per UDP attempt.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=2048))]
    port_prediction: u16,
    /// Seconds to set a lost relay connection up again (same relay first,
    /// then the next of the list) before the session gives up; 0: a lost
    /// relay that carries the session ends it.
    #[arg(long, default_value_t = 60.0)]
    relay_resume: f64,
}

fn direct_options(a: &RelayArgs) -> Result<xtcp::DirectOptions, String> {
    use xtcp::{DirectOptions, PathPolicy};
    if a.port_prediction > 0 {
        // One descriptor per prediction socket.
        xtcp::relay::server::raise_fd_limit();
    }
    let keepalive_timeout = std::time::Duration::try_from_secs_f64(a.keepalive_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or("--keepalive-timeout must be a positive number of seconds")?;
    Ok(DirectOptions {
        policy: if a.relay_only {
            PathPolicy::RelayOnly
        } else if a.no_relay_fallback {
            PathPolicy::NoRelayFallback
        } else {
            PathPolicy::Auto
        },
        keepalive_timeout,
        keepalive_interval: (keepalive_timeout / 5).max(std::time::Duration::from_millis(50)),
        retry_after: std::time::Duration::try_from_secs_f64(a.direct_retry)
            .map_err(|_| "--direct-retry must be a number of seconds")?,
        udp_after: std::time::Duration::try_from_secs_f64(a.udp_after)
            .map_err(|_| "--udp-after must be a number of seconds")?,
        tcp: !a.no_direct_tcp,
        udp: !a.no_direct_udp,
        port_prediction: usize::from(a.port_prediction),
        relay_resume: std::time::Duration::try_from_secs_f64(a.relay_resume)
            .map_err(|_| "--relay-resume must be a number of seconds")?,
        ..DirectOptions::default()
    })
}

/// Copy stdin/stdout over the session, then wait (bounded) until its last
/// frames left, so the peer gets our final acknowledgement before we exit.
async fn run_session(session: xtcp::Session, progress: bool) -> Result<(), String> {
    report_paths(&session);
    let ctl = session.control();
    let counters = cli::progress::Counters::default();
    let line = progress.then(|| cli::progress::Progress::start(counters.clone(), None, 0));
    let r = cli::stdio::pipe(session, &counters).await;
    if let Some(l) = line {
        l.finish();
    }
    r?;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), ctl.finished()).await;
    Ok(())
}

/// Print `path: …` on stderr each time the session changes path.
fn report_paths(session: &xtcp::Session) {
    let mut ev = session.path_events();
    // Every session starts on the relay (the direct path may already have
    // taken over by now: then its line follows at once).
    eprintln!("path: relay");
    let now = *ev.borrow_and_update();
    if now != xtcp::Path::Relay {
        eprintln!("path: {now}");
    }
    tokio::spawn(async move {
        // A stall (no path while the relay is set up again) is reported
        // with its length when the bytes flow again.
        let mut stalled: Option<std::time::Instant> = None;
        while ev.changed().await.is_ok() {
            let p = *ev.borrow_and_update();
            match (p, stalled) {
                (xtcp::Path::Reconnecting, None) => {
                    stalled = Some(std::time::Instant::now());
                    eprintln!("path: {p} (relay lost; setting it up again)");
                }
                (xtcp::Path::Reconnecting, Some(_)) => {}
                (p, Some(t)) => {
                    stalled = None;
                    eprintln!(
                        "path: {p} (after a stall of {:.1} s)",
                        t.elapsed().as_secs_f64()
                    );
                }
                (p, None) => eprintln!("path: {p}"),
            }
        }
    });
}

#[derive(Args, Debug)]
struct DirectArgs {
    /// The session code both sides share (authenticates the peer over TLS 1.3).
    #[arg(long, env = "XTCP_CODE", required_unless_present = "no_tls")]
    code: Option<String>,
    /// Raw XTCP without TLS (interop and benchmarks).
    #[arg(long)]
    no_tls: bool,
    /// Show bytes, rate and RTT on stderr.
    #[arg(long)]
    progress: bool,
    /// Seconds to wait for the handshake (connect) before giving up.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Run XTCP through the deterministic simulator instead of the relay demo.
    #[arg(long)]
    sim: bool,
    /// MiB moved in each direction.
    #[arg(long)]
    mib: Option<usize>,
    /// Take the direct UDP path (XTCP through hole punching, with the relay's
    /// UDP address service) instead of direct TCP.
    #[arg(long, conflicts_with = "sim")]
    udp: bool,
    /// (--sim) random loss in percent.
    #[arg(long, default_value_t = 1.0)]
    loss: f64,
    /// (--sim) round-trip time in ms.
    #[arg(long, default_value_t = 20)]
    rtt_ms: u64,
    /// (--sim) link rate in Mbit/s.
    #[arg(long, default_value_t = 100)]
    mbit: u64,
    /// (--sim) RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// (--sim) write every datagram of the simulated run to this pcap file
    /// (open it with `interop/wireshark/xtcp.lua`).
    #[arg(long, value_name = "FILE", requires = "sim")]
    pcap: Option<std::path::PathBuf>,
}

fn relay_config(a: &RelayArgs) -> Result<RelayClientConfig, String> {
    let trust = if !a.relay_fingerprints.is_empty() {
        let mut pins = Vec::with_capacity(a.relay_fingerprints.len());
        for fp in &a.relay_fingerprints {
            let b = xtcp::tls::unhex(fp.trim())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    format!("--relay-fingerprint {fp:?}: must be 64 hex digits (SHA-256)")
                })?;
            if !pins.contains(&b) {
                pins.push(b);
            }
        }
        RelayTrust::Fingerprints(pins)
    } else if let Some(path) = &a.relay_ca {
        use rustls::pki_types::pem::PemObject;
        let certs: Result<Vec<_>, _> = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--relay-ca {}: {e}", path.display()))?
            .collect();
        let certs = certs.map_err(|e| format!("--relay-ca {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--relay-ca {}: no certificate found",
                path.display()
            ));
        }
        RelayTrust::Ca(certs)
    } else {
        RelayTrust::SystemRoots
    };
    Ok(RelayClientConfig {
        relays: a.relays.clone(),
        trust,
        token: cli::secrets::token(a.token.as_deref(), a.token_file.as_deref())?,
        connect_timeout: Duration::try_from_secs_f64(a.connect_timeout)
            .map_err(|_| "--connect-timeout: invalid")?,
    })
}

/// `listen` / `connect`: XTCP, then (unless --no-tls) e2e TLS authenticated by the code.
async fn direct(listen: bool, addr: std::net::SocketAddr, a: DirectArgs) -> Result<(), String> {
    use xtcp::transport::{EndpointOptions, XtcpEndpoint};
    let secret = match (&a.code, a.no_tls) {
        (_, true) => None,
        (Some(c), false) => Some(
            xtcp::secret::SessionSecret::parse(c)
                .map_err(|e| format!("invalid session code: {e}"))?,
        ),
        (None, false) => return Err("--code is required (or --no-tls)".into()),
    };
    let bind: std::net::SocketAddr = if listen {
        addr
    } else if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| "bind")?
    } else {
        "[::]:0".parse().map_err(|_| "bind")?
    };
    let ep = XtcpEndpoint::bind(
        bind,
        EndpointOptions {
            listen,
            ..EndpointOptions::default()
        },
    )
    .map_err(|e| format!("bind {bind}: {e}"))?;
    let timeout =
        Duration::try_from_secs_f64(a.connect_timeout).map_err(|_| "--connect-timeout: invalid")?;
    let stream = if listen {
        ep.accept().await.map_err(|e| format!("accept: {e}"))?
    } else {
        match tokio::time::timeout(timeout, ep.connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(xtcp::transport::XtcpError::TimedOut)) | Err(_) => {
                return Err(format!(
                    "peer unreachable: no answer from {addr} (connect timed out)"
                ))
            }
            Ok(Err(e)) => return Err(format!("connect {addr}: {e}")),
        }
    };
    let progress = a.progress.then(|| spawn_progress(&stream));
    let waiter = stream.close_waiter();
    let r = match secret {
        None => cli::stdio::pipe(stream, &Default::default()).await,
        Some(secret) => {
            let role = if listen {
                xtcp::e2e::Role::Host
            } else {
                xtcp::e2e::Role::Guest
            };
            match xtcp::e2e::handshake(stream, role, &secret, &Default::default()).await {
                Ok(s) => cli::stdio::pipe(s, &Default::default()).await,
                Err(e) => {
                    // The stream was dropped (FIN queued): send it before exiting
                    // so the peer fails at once instead of at its timeout.
                    ep.flush().await;
                    return Err(match e {
                        xtcp::e2e::E2eError::PeerAuthFailed => {
                            "peer authentication failed (wrong code?)".to_string()
                        }
                        e => e.to_string(),
                    });
                }
            }
        }
    };
    // Exit only once our data was acknowledged (bounded by the user timeout).
    let closed = match &r {
        Ok(()) => waiter.wait().await.map_err(|e| format!("connection: {e}")),
        Err(_) => Ok(()),
    };
    // Send the last ACK (of the peer's FIN) before the process goes.
    ep.flush().await;
    if closed.is_ok() {
        tokio::time::sleep(waiter.linger()).await;
    }
    if let Some(p) = progress {
        p.abort();
    }
    r.and(closed)
}

/// Progress on stderr once a second: bytes, rate, RTT, cwnd.
fn spawn_progress(s: &xtcp::transport::XtcpStream) -> tokio::task::JoinHandle<()> {
    let probe = s.probe();
    tokio::spawn(async move {
        let mut last = (0u64, 0u64);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(p) = probe.sample() else { return };
            eprintln!(
                "progress: sent {} B ({:.1} Mbit/s), received {} B ({:.1} Mbit/s), rtt {:.1} ms, cwnd {} B",
                p.bytes_sent,
                (p.bytes_sent - last.0) as f64 * 8.0 / 1e6,
                p.bytes_received,
                (p.bytes_received - last.1) as f64 * 8.0 / 1e6,
                p.srtt.as_secs_f64() * 1e3,
                p.cwnd,
            );
            last = (p.bytes_sent, p.bytes_received);
        }
    })
}

/// Options for `host` / `join`; `host` and a bare code need `--relay`.
fn options(relay: &RelayArgs, need_relay: bool) -> Result<xtcp::Options, String> {
    if need_relay && relay.relays.is_empty() {
        return Err("--relay HOST:PORT is required (or set XTCP_RELAY)".into());
    }
    Ok(xtcp::Options {
        relay: relay_config(relay)?,
        e2e: Default::default(),
        direct: direct_options(relay)?,
    })
}

/// Join by a ticket or a bare code.
async fn join(code: &str, relay: &RelayArgs) -> Result<xtcp::Session, String> {
    let ticket = xtcp::ticket::is_ticket(code);
    // A typo is reported before anything else (a relay flag would not help).
    if ticket {
        xtcp::ticket::Ticket::parse(code).map_err(|e| format!("invalid ticket: {e}"))?;
    } else {
        xtcp::secret::SessionSecret::parse(code)
            .map_err(|e| format!("invalid session code: {e}"))?;
    }
    let opts = options(relay, !ticket).map_err(|e| {
        if !ticket && relay.relays.is_empty() {
            format!("{e}: a bare code needs the relay (a ticket carries it)")
        } else {
            e
        }
    })?;
    let r = if ticket {
        xtcp::join_ticket(code, &opts).await
    } else {
        xtcp::join(code, &opts).await
    };
    r.map_err(|e| explain(e, false))
}

/// One line that says what went wrong and what to do about it.
fn explain(e: xtcp::Error, hosting: bool) -> String {
    match e {
        xtcp::Error::RelayCertificateMismatch(_) => format!(
            "{e}: if the relay's operator confirms the presented fingerprint, add it with \
             --relay-fingerprint (or ask the host for a new ticket)"
        ),
        xtcp::Error::Unauthorized => {
            format!("{e}: pass the operator's token with XTCP_TOKEN, --token-file or --token")
        }
        xtcp::Error::LockedOut(_) if hosting => format!(
            "{e} (this address failed too often: a wrong token counts too; check XTCP_TOKEN / --token-file)"
        ),
        xtcp::Error::UnknownSession => format!(
            "{e}: check the ticket or code (the host must still be waiting; each is good for one guest)"
        ),
        e => e.to_string(),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Code => {
            let s = xtcp::secret::SessionSecret::generate().map_err(|e| e.to_string())?;
            println!("{}", s.code());
            Ok(())
        }
        Cmd::Host { relay, progress } => {
            let opts = options(&relay, true)?;
            let host = xtcp::host(&opts).await.map_err(|e| explain(e, true))?;
            let ticket = host.ticket();
            eprintln!("code: {}", host.code());
            eprintln!("relay: {}", host.relay());
            eprintln!("ticket: {ticket}");
            eprintln!("on the other machine run: xtcp join {ticket}");
            let session = host.accept().await.map_err(|e| explain(e, true))?;
            run_session(session, progress).await
        }
        Cmd::Join {
            secret,
            relay,
            progress,
        } => {
            let code = cli::secrets::code(secret.code.as_deref(), secret.code_file.as_deref())?;
            let session = join(&code, &relay).await?;
            run_session(session, progress).await
        }
        Cmd::Send { path, relay } => {
            let opts = options(&relay, true)?;
            cli::transfer::send(&opts, &path).await
        }
        Cmd::Receive {
            secret,
            dir,
            yes,
            force,
            relay,
        } => {
            let code = cli::secrets::code(secret.code.as_deref(), secret.code_file.as_deref())?;
            let session = join(&code, &relay).await?;
            let o = cli::transfer::ReceiveOpts { dir, yes, force };
            cli::transfer::receive(session, &o).await
        }
        Cmd::Listen { addr, direct: d } => direct(true, addr, d).await,
        Cmd::Connect { addr, direct: d } => direct(false, addr, d).await,
        Cmd::Demo(d) => {
            if d.sim {
                sim_demo(&d)
            } else {
                demo::run(d.mib.unwrap_or(16), d.udp)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

#[cfg(feature = "sim")]
fn sim_demo(d: &DemoArgs) -> Result<(), String> {
    simdemo::run(
        d.mib.unwrap_or(8),
        d.loss / 100.0,
        d.rtt_ms,
        d.mbit.max(1),
        d.seed,
        d.pcap.as_deref(),
    )
    .map_err(|e| e.to_string())
}

#[cfg(not(feature = "sim"))]
fn sim_demo(_: &DemoArgs) -> Result<(), String> {
    Err("demo --sim: this xtcp was built without the `sim` feature".into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("XTCP_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xtcp: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    // Do not wait for a blocking stdin read that may never return.
    rt.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtcp: {e}");
            ExitCode::FAILURE
        }
    }
}
