//! `xtcp-relay`: the rendezvous relay (`spec/relay.md`).
//!
//! Configuration comes from a TOML file (`--config`), then environment
//! variables, then flags (later wins). `--check-config` validates and exits.
//! SIGTERM drains and exits 0; SIGHUP reloads the certificate and tokens.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use xtcp::relay::audit_file::AuditFile;
use xtcp::relay::server::{self, AuditSink, Relay, RelayConfig};

#[derive(Parser, Debug)]
#[command(
    name = "xtcp-relay",
    version,
    about = "The xtcp rendezvous relay: pairs sessions, forwards bytes it cannot read"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// TOML configuration file.
    #[arg(long, short, env = "XTCP_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// TLS listen address (default 0.0.0.0:443).
    #[arg(long, env = "XTCP_RELAY_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain.
    #[arg(long, env = "XTCP_RELAY_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "XTCP_RELAY_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// Generate a self-signed certificate and print its SHA-256 fingerprint.
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    self_signed: bool,
    /// Directory for state kept across restarts (the self-signed key); created 0700.
    #[arg(long, env = "XTCP_RELAY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Let hosts create sessions without an operator token.
    #[arg(long)]
    allow_anonymous_hosts: bool,
    /// Audit log (JSON lines); "-" for standard output.
    #[arg(long, env = "XTCP_RELAY_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long, env = "XTCP_RELAY_METRICS")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// UDP address service address, or "off" (default 0.0.0.0:15000).
    #[arg(long, env = "XTCP_RELAY_UDP_LISTEN", value_name = "ADDR|off")]
    udp_listen: Option<String>,
    /// Validate the configuration (and certificate files) and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print a new operator token and the config line that admits it.
    Token,
}

fn load_config(cli: &Cli) -> Result<RelayConfig, String> {
    let mut cfg = match &cli.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            toml::from_str::<RelayConfig>(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => RelayConfig::default(),
    };
    if let Some(l) = cli.listen {
        cfg.listen = l;
    }
    if cli.cert.is_some() {
        cfg.cert = cli.cert.clone();
        cfg.key = cli.key.clone();
    }
    cfg.self_signed |= cli.self_signed;
    if cli.state_dir.is_some() {
        cfg.state_dir = cli.state_dir.clone();
    }
    cfg.allow_anonymous_hosts |= cli.allow_anonymous_hosts;
    if cli.audit_log.is_some() {
        cfg.audit_log = cli.audit_log.clone();
    }
    if cli.metrics_listen.is_some() {
        cfg.metrics_listen = cli.metrics_listen;
    }
    if let Some(u) = &cli.udp_listen {
        cfg.udp_listen = server::parse_udp_listen(u)?;
    }
    cfg.validate().map_err(|e| e.to_string())?;
    if !cfg.self_signed && (cfg.cert.is_none() || cfg.key.is_none()) {
        return Err("a certificate is required: --cert and --key, or --self-signed".into());
    }
    Ok(cfg)
}

/// Names in the self-signed certificate.
const SELF_SIGNED_NAMES: [&str; 2] = ["localhost", "xtcp-relay"];

/// The self-signed certificate and key kept in `dir` (created 0700): made
/// on the first start, read on every later one, so the fingerprint stays.
fn persisted_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    fn err(p: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
        move |e| format!("state_dir {}: {e}", p.display())
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err(dir))?;
    // An existing directory others can read is narrowed.
    let mode = std::fs::metadata(dir)
        .map_err(err(dir))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
            .map_err(err(dir))?;
    }
    let (cert, key) = (dir.join("self-signed.crt"), dir.join("self-signed.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let ck = rcgen::generate_simple_self_signed(SELF_SIGNED_NAMES.map(str::to_string).to_vec())
        .map_err(|e| format!("self-signed certificate: {e}"))?;
    // Written to temporary names, then renamed: a crash never leaves half a key.
    let write = |path: &Path, text: &str, mode: u32| -> Result<(), String> {
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err(&tmp))?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err(&tmp))?;
        f.sync_all().map_err(err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(err(path))
    };
    write(&key, &ck.signing_key.serialize_pem(), 0o600)?;
    write(&cert, &ck.cert.pem(), 0o644)?;
    Ok((cert, key))
}

fn load_tls(cfg: &RelayConfig) -> Result<(Arc<rustls::ServerConfig>, String), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let files = match (&cfg.cert, &cfg.key, &cfg.state_dir) {
        (Some(c), Some(k), _) if !cfg.self_signed => Some((c.clone(), k.clone())),
        (_, _, Some(dir)) if cfg.self_signed => Some(persisted_self_signed(dir)?),
        _ => None,
    };
    let (chain, key) = match &files {
        Some((c, k)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(c)
                .map_err(|e| format!("{}: {e}", c.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", c.display()))?;
            if chain.is_empty() {
                return Err(format!("{}: no certificate", c.display()));
            }
            let key =
                PrivateKeyDer::from_pem_file(k).map_err(|e| format!("{}: {e}", k.display()))?;
            (chain, key)
        }
        _ => {
            let ck = xtcp::tls::self_signed(&SELF_SIGNED_NAMES).map_err(|e| e.to_string())?;
            (ck.chain, ck.key)
        }
    };
    let fp = xtcp::tls::fingerprint(&chain[0]);
    let tls = server::server_tls(chain, key).map_err(|e| format!("certificate: {e}"))?;
    Ok((tls, fp))
}

/// The audit sink, and the file handle to reopen on SIGHUP (none for stdout).
fn audit_sink(path: &Option<PathBuf>) -> Result<(Option<AuditSink>, Option<AuditFile>), String> {
    Ok(match path {
        None => (None, None),
        Some(p) if p == Path::new("-") => (
            Some(Arc::new(Mutex::new(
                Box::new(std::io::stdout()) as Box<dyn std::io::Write + Send>
            ))),
            None,
        ),
        Some(p) => {
            let f = AuditFile::open(p).map_err(|e| format!("audit log {}: {e}", p.display()))?;
            (
                Some(Arc::new(Mutex::new(
                    Box::new(f.clone()) as Box<dyn std::io::Write + Send>
                ))),
                Some(f),
            )
        }
    })
}

async fn serve(cli: Cli, cfg: RelayConfig) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tls, fp) = load_tls(&cfg)?;
    if cfg.self_signed {
        eprintln!("self-signed certificate sha256 fingerprint: {fp}");
        eprintln!("clients: --relay-fingerprint {fp}");
    }
    if cfg.token_hashes.is_empty() && !cfg.allow_anonymous_hosts {
        eprintln!("warning: no operator token configured; session creation is refused (run `xtcp-relay token`, or --allow-anonymous-hosts)");
    }
    let (audit, audit_file) = audit_sink(&cfg.audit_log)?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let relay = Relay::start(cfg.clone(), tls, audit)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("xtcp-relay listening on {}", relay.local_addr());
    match relay.udp_local_addr() {
        Some(a) => eprintln!("UDP address service on {a}"),
        None => eprintln!("UDP address service off"),
    }
    tracing::info!(addr = %relay.local_addr(), udp = ?relay.udp_local_addr(), "listening");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // Log rotation: the audit log is reopened by its path.
                if let Some(f) = &audit_file {
                    match f.reopen() {
                        Ok(()) => tracing::info!("audit log reopened"),
                        Err(e) => tracing::warn!("audit log reopen: {e}"),
                    }
                }
                // Reload certificate and tokens; sessions are untouched.
                match load_config(&cli) {
                    Ok(new) => reload(&relay, &new),
                    Err(e) => tracing::warn!("reload: {e}; nothing changed"),
                }
            }
        }
    }
    eprintln!("draining (up to {} s)", cfg.drain_secs);
    relay.shutdown().await;
    // The last records (session_closed …) reach the file before the process exits.
    if let Some(f) = &audit_file {
        if let Err(e) = f.sync() {
            eprintln!("audit log: {e}");
        }
    }
    Ok(())
}

/// SIGHUP: apply the new tokens and (unless self-signed) the certificate
/// files to new connections; whatever fails to load keeps its old value.
fn reload(relay: &Relay, new: &RelayConfig) {
    match relay.reload_tokens(&new.token_hashes) {
        Ok(()) => eprintln!("reloaded tokens ({})", new.token_hashes.len()),
        Err(e) => tracing::warn!("reload tokens: {e}; keeping the old tokens"),
    }
    if new.self_signed {
        return;
    }
    //= spec/relay.md#RL-RELOAD-1
    //# MUST keep serving the certificate it had
    match load_tls(new) {
        Ok((tls, fp)) => {
            relay.reload_tls(tls);
            eprintln!("reloaded certificate, sha256 fingerprint: {fp}");
        }
        Err(e) => tracing::warn!("reload certificate: {e}; keeping the old certificate"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XTCP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never into a log file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(Cmd::Token) = cli.cmd {
        let mut b = [0u8; 24];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
            eprintln!("xtcp-relay: no randomness");
            return ExitCode::FAILURE;
        }
        let token = format!("xt_{}", xtcp::tls::hex(&b));
        println!("token: {token}");
        println!(
            "add to the relay config:  token_hashes = [\"{}\"]",
            server::token_hash(&token)
        );
        return ExitCode::SUCCESS;
    }
    let cfg = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xtcp-relay: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        return match load_tls(&cfg) {
            Ok(_) => {
                println!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xtcp-relay: {e}");
                ExitCode::from(2)
            }
        };
    }
    //= spec/relay.md#RL-OPS-1
    //# Operators SHOULD raise the file descriptor limit (the binary raises its soft
    //# `RLIMIT_NOFILE` to the hard limit)
    let fds = server::raise_fd_limit();
    // Each paired session holds two descriptors, each waiting host one.
    let need = cfg
        .max_sessions
        .saturating_mul(2)
        .saturating_add(cfg.max_waiting);
    eprintln!(
        "descriptor limit {fds} (soft raised to hard): room for about {} paired sessions",
        fds / 2
    );
    if (fds as usize) < need {
        eprintln!(
            "warning: max_sessions = {} and max_waiting = {} need up to {need} descriptors; raise the hard limit (systemd: LimitNOFILE=) or lower them",
            cfg.max_sessions, cfg.max_waiting
        );
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xtcp-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cli, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtcp-relay: {e}");
            ExitCode::FAILURE
        }
    }
}
