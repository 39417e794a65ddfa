//! Host a session: print its code, send a greeting, print what the guest
//! sends, close.
//!
//! Against a local relay (three terminals):
//!
//! ```sh
//! cargo run --release --bin xtcp-relay -- --self-signed --allow-anonymous-hosts --listen 127.0.0.1:4433
//! # it prints: clients: --relay-fingerprint <hex>
//! XTCP_RELAY=127.0.0.1:4433 XTCP_RELAY_FINGERPRINT=<hex> cargo run --release --example host
//! # it prints: code: <code>
//! XTCP_RELAY=127.0.0.1:4433 XTCP_RELAY_FINGERPRINT=<hex> cargo run --release --example join -- <code>
//! ```
//!
//! A relay that wants an operator token (`xtcp-relay token`): add
//! `XTCP_TOKEN=<token>` on the host's side.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The relay from `XTCP_RELAY` (default 127.0.0.1:4433), pinned by
/// `XTCP_RELAY_FINGERPRINT` (else the system's roots), `XTCP_TOKEN` if set.
fn options() -> Result<xtcp::Options, xtcp::Error> {
    let env = |k| std::env::var(k).ok();
    let mut b =
        xtcp::Options::builder().relay(env("XTCP_RELAY").unwrap_or("127.0.0.1:4433".into()));
    if let Some(fp) = env("XTCP_RELAY_FINGERPRINT") {
        b = b.pin(fp);
    }
    if let Some(token) = env("XTCP_TOKEN") {
        b = b.token(token);
    }
    b.build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let waiting = xtcp::host(&options()?).await?;
    println!("code: {}", waiting.code());
    let mut session = waiting.accept().await?;
    println!("guest joined, path: {}", session.path());

    session.write_all(b"hello from the host\n").await?;
    session.shutdown().await?; // the guest has every byte
    let mut got = Vec::new();
    session.read_to_end(&mut got).await?;
    print!("guest says: {}", String::from_utf8_lossy(&got));

    println!(
        "path {}, peer {:?}, rtt {:?}, {} bytes sent, {} received",
        session.path(),
        session.peer_addr(),
        session.rtt(),
        session.bytes_sent(),
        session.bytes_received()
    );
    session.close().await?;
    Ok(())
}
