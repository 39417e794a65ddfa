//! Join a session with its code (first argument, or `XTCP_CODE`): send a
//! greeting, print what the host sends, close.
//!
//! Against a local relay and `cargo run --example host` (see there):
//!
//! ```sh
//! cargo run --release --bin xtcp-relay -- --self-signed --allow-anonymous-hosts --listen 127.0.0.1:4433
//! XTCP_RELAY=127.0.0.1:4433 XTCP_RELAY_FINGERPRINT=<hex> cargo run --release --example host
//! XTCP_RELAY=127.0.0.1:4433 XTCP_RELAY_FINGERPRINT=<hex> cargo run --release --example join -- <code>
//! ```

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The relay from `XTCP_RELAY` (default 127.0.0.1:4433), pinned by
/// `XTCP_RELAY_FINGERPRINT` (else the system's roots).
fn options() -> Result<xtcp::Options, xtcp::Error> {
    let env = |k| std::env::var(k).ok();
    let mut b =
        xtcp::Options::builder().relay(env("XTCP_RELAY").unwrap_or("127.0.0.1:4433".into()));
    if let Some(fp) = env("XTCP_RELAY_FINGERPRINT") {
        b = b.pin(fp);
    }
    b.build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let code = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("XTCP_CODE").ok())
        .ok_or("usage: join <code> (or XTCP_CODE=<code>)")?;
    let mut session = xtcp::join(&code, &options()?).await?;
    println!("joined, path: {}", session.path());

    session.write_all(b"hello from the guest\n").await?;
    session.shutdown().await?;
    let mut got = Vec::new();
    session.read_to_end(&mut got).await?;
    print!("host says: {}", String::from_utf8_lossy(&got));

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
