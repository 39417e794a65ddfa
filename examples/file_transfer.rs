//! Send a file over a session, with a progress line (bytes, rate).
//!
//! ```sh
//! cargo run --release --bin xtcp-relay -- --self-signed --allow-anonymous-hosts --listen 127.0.0.1:4433
//! export XTCP_RELAY=127.0.0.1:4433 XTCP_RELAY_FINGERPRINT=<hex>
//! cargo run --release --example file_transfer -- send FILE          # prints code: <code>
//! cargo run --release --example file_transfer -- receive <code> OUT
//! ```
//!
//! The sender hosts the session; the receiver joins it and writes what
//! arrives to `OUT`; both show bytes, rate and the path taken.

use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Copy `from` to `to`, printing `\r<bytes> (<rate>) via <path>` about
/// four times a second and a last line at the end.
async fn copy_with_progress<R, W>(
    mut from: R,
    mut to: W,
    session: &xtcp::SessionControl,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let start = Instant::now();
    let mut last = start;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let line = |total: u64| {
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        let rate = total as f64 * 8.0 / secs / 1e6;
        eprint!(
            "\r{total} bytes, {rate:.1} Mbit/s, via {}   ",
            session.path()
        );
    };
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
        if last.elapsed() >= Duration::from_millis(250) {
            last = Instant::now();
            line(total);
        }
    }
    to.flush().await?;
    line(total);
    eprintln!();
    Ok(total)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["send", file] => {
            let f = tokio::fs::File::open(file).await?;
            let waiting = xtcp::host(&options()?).await?;
            println!("code: {}", waiting.code());
            let mut session = waiting.accept().await?;
            let control = session.control();
            copy_with_progress(f, &mut session, &control).await?;
            // Returns once the receiver has every byte.
            session.close().await?;
        }
        ["receive", code, out] => {
            let mut f = tokio::fs::File::create(out).await?;
            let mut session = xtcp::join(code, &options()?).await?;
            let control = session.control();
            copy_with_progress(&mut session, &mut f, &control).await?;
            f.sync_all().await?;
            session.close().await?;
        }
        _ => return Err("usage: file_transfer send FILE | file_transfer receive CODE OUT".into()),
    }
    Ok(())
}
