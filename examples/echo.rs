//! An echo server session: host a session, print its code, send back
//! everything the guest sends until the guest's stream ends.
//!
//! Against a local relay, with `cargo run --example join` as the guest:
//!
//! ```sh
//! cargo run --release --bin xtcp-relay -- --self-signed --allow-anonymous-hosts --listen 127.0.0.1:4433
//! XTCP_RELAY=127.0.0.1:4433 XTCP_RELAY_FINGERPRINT=<hex> cargo run --release --example echo
//! XTCP_RELAY=127.0.0.1:4433 XTCP_RELAY_FINGERPRINT=<hex> cargo run --release --example join -- <code>
//! ```
//!
//! (`join` prints `host says: hello from the guest`.) Or with the CLI as the
//! guest: `xtcp join <code> --relay 127.0.0.1:4433 --relay-fingerprint <hex>`.

use tokio::io::AsyncWriteExt;

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
    let session = waiting.accept().await?;
    let control = session.control();

    // Echo until the guest's stream ends, then end ours.
    let (mut rd, mut wr) = tokio::io::split(session);
    let n = tokio::io::copy(&mut rd, &mut wr).await?;
    wr.shutdown().await?;
    println!("echoed {n} bytes via {}", control.path());

    // The halves own the session: drop them, then wait until its last
    // frames left (what `Session::close` does for a whole session).
    drop((rd, wr));
    control.finished().await;
    Ok(())
}
