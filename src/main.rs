//! The `xtcp` command-line tool: `code`, `host`, `join`, `demo`.

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
    /// Create a session on a relay, print its code, wait for the guest, then
    /// copy stdin to the peer and the peer to stdout.
    Host {
        #[command(flatten)]
        relay: RelayArgs,
    },
    /// Join a session by its code, then copy stdin to the peer and the peer to stdout.
    Join {
        /// The session code the host printed.
        code: String,
        #[command(flatten)]
        relay: RelayArgs,
    },
    /// The main job: an embedded relay, a host and a guest in this process
    /// (or, with --sim, an XTCP transfer through the network simulator).
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
struct RelayArgs {
    /// Relay address host:port; repeat for a relay list (rendezvous hashing picks one).
    #[arg(
        long = "relay",
        required = true,
        env = "XTCP_RELAY",
        value_delimiter = ','
    )]
    relays: Vec<String>,
    /// Operator token (host only).
    #[arg(long, env = "XTCP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust exactly the relay certificate with this SHA-256 fingerprint (hex).
    #[arg(long, conflicts_with = "relay_ca")]
    relay_fingerprint: Option<String>,
    /// Trust relay certificates issued by the CA(s) in this PEM file.
    #[arg(long)]
    relay_ca: Option<std::path::PathBuf>,
    /// Seconds to reach a relay (TCP + TLS).
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
}

fn relay_config(a: &RelayArgs) -> Result<RelayClientConfig, String> {
    let trust = if let Some(fp) = &a.relay_fingerprint {
        let b = xtcp::tls::unhex(fp)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or("--relay-fingerprint must be 64 hex digits (SHA-256)")?;
        RelayTrust::Fingerprint(b)
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
        token: a.token.clone(),
        connect_timeout: Duration::try_from_secs_f64(a.connect_timeout)
            .map_err(|_| "--connect-timeout: invalid")?,
    })
}

/// Copy stdin → session and session → stdout at once; stdin EOF half-closes.
/// Returns when the peer's stream ended and our side was flushed and closed.
async fn pipe_stdio(session: xtcp::Session) -> std::io::Result<()> {
    use tokio::io::{AsyncWriteExt, BufWriter};
    let (mut rd, mut wr) = tokio::io::split(session);
    let up = async {
        let mut stdin = tokio::io::stdin();
        tokio::io::copy(&mut stdin, &mut wr).await?;
        wr.shutdown().await
    };
    let down = async {
        let mut stdout = BufWriter::new(tokio::io::stdout());
        tokio::io::copy(&mut rd, &mut stdout).await?;
        stdout.flush().await
    };
    tokio::try_join!(up, down).map(|_| ())
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Code => {
            let s = xtcp::secret::SessionSecret::generate().map_err(|e| e.to_string())?;
            println!("{}", s.code());
            Ok(())
        }
        Cmd::Host { relay } => {
            let opts = xtcp::Options {
                relay: relay_config(&relay)?,
                e2e: Default::default(),
            };
            let host = xtcp::host(&opts).await.map_err(|e| e.to_string())?;
            eprintln!("code: {}", host.code());
            let session = host.accept().await.map_err(|e| e.to_string())?;
            eprintln!("path: {}", session.path());
            pipe_stdio(session)
                .await
                .map_err(|e| format!("connection: {e}"))
        }
        Cmd::Join { code, relay } => {
            let opts = xtcp::Options {
                relay: relay_config(&relay)?,
                e2e: Default::default(),
            };
            let session = xtcp::join(&code, &opts).await.map_err(|e| e.to_string())?;
            eprintln!("path: {}", session.path());
            pipe_stdio(session)
                .await
                .map_err(|e| format!("connection: {e}"))
        }
        Cmd::Demo(d) => {
            if d.sim {
                xtcp::simdemo::run(
                    d.mib.unwrap_or(8),
                    d.loss / 100.0,
                    d.rtt_ms,
                    d.mbit.max(1),
                    d.seed,
                )
                .map_err(|e| e.to_string())
            } else {
                xtcp::demo::run(d.mib.unwrap_or(16))
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtcp: {e}");
            ExitCode::FAILURE
        }
    }
}
