//! `xtcp send PATH` and `xtcp receive`: one file over one session, with the
//! receiver's consent, no silent overwrite, SHA-256 verified end to end, and
//! resume from a partial file (`NAME.xtcp-partial`) when a run broke off.
//! The framing is in [`super::wire`].

use super::progress::{Counters, Progress};
use super::stdio::{fill, End, ReadThread, WriteThread, BUF};
use super::wire::{self, Decline, Reply};
use ring::digest::{Context, SHA256};
use std::io::{BufRead, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The suffix of a file being received.
pub const PARTIAL: &str = ".xtcp-partial";

/// Test hook: the receiver stops (as if killed) after this many data bytes.
const STOP_AFTER_ENV: &str = "XTCP_TEST_RECEIVE_STOP_AFTER";

fn hex(d: &[u8]) -> String {
    xtcp::tls::hex(d)
}

/// SHA-256 of the first `n` bytes of `path`, as a context to continue.
fn hash_prefix(path: &Path, n: u64) -> std::io::Result<Context> {
    let mut ctx = Context::new(&SHA256);
    if n == 0 {
        return Ok(ctx);
    }
    let mut f = std::fs::File::open(path)?.take(n);
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        ctx.update(&buf[..k]);
        got += k as u64;
    }
    if got != n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "file shorter than expected",
        ));
    }
    Ok(ctx)
}

fn digest(ctx: Context) -> [u8; 32] {
    let mut h = [0u8; 32];
    h.copy_from_slice(ctx.finish().as_ref());
    h
}

/// Close our side, drain the peer's, and wait (bounded) until our last bytes
/// were acknowledged, so neither side fails the other by exiting.
async fn close(mut s: xtcp::Session) {
    let ctl = s.control();
    let _ = s.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), ctl.finished()).await;
}

fn lost(e: std::io::Error) -> String {
    format!("connection lost ({e}); run the same commands again to resume")
}

/// `xtcp send`: host a session, offer the file, send what the receiver lacks.
pub async fn send(opts: &xtcp::Options, path: &Path) -> Result<(), String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let size = meta.len();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| wire::valid_name(n))
        .ok_or_else(|| format!("{}: cannot send a file with this name", path.display()))?
        .to_string();
    let host = xtcp::host(opts)
        .await
        .map_err(|e| crate::explain(e, true))?;
    let ticket = host.ticket();
    eprintln!("ticket: {ticket}");
    eprintln!("on the other machine run: xtcp receive {ticket}");
    let mut s = host.accept().await.map_err(|e| crate::explain(e, true))?;
    crate::report_paths(&s);
    eprintln!(
        "connected; offering {name} ({})",
        super::progress::bytes(size)
    );
    wire::write_offer(&mut s, size, &name).await.map_err(lost)?;
    let (have, their) = match wire::read_reply(&mut s).await.map_err(lost)? {
        Reply::Decline(code) => return Err(Decline::text(code).to_string()),
        Reply::Accept { have, hash } => (have, hash),
    };
    // Resume only from a prefix that is really ours.
    let mut ctx = Context::new(&SHA256);
    let mut from = 0;
    if have > 0 && have <= size {
        let mine = tokio::task::block_in_place(|| hash_prefix(path, have))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if digest(mine.clone()) == their {
            ctx = mine;
            from = have;
        } else {
            eprintln!("the receiver's partial file differs from {name}: sending from the start");
        }
    }
    s.write_u64(from).await.map_err(lost)?;
    file.seek(std::io::SeekFrom::Start(from))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let counters = Counters::default();
    let progress = Progress::start(counters.clone(), Some(size), from);
    let t = Instant::now();
    let moved = send_body(file, &mut s, &mut ctx, &counters, size - from).await;
    progress.finish();
    let moved = moved?;
    let hash = digest(ctx);
    s.write_all(&hash).await.map_err(lost)?;
    s.flush().await.map_err(lost)?;
    let verdict = s.read_u8().await.map_err(lost)?;
    close(s).await;
    if verdict != 1 {
        return Err(format!(
            "the receiver's SHA-256 does not match ours ({}); it discarded the file: run again",
            hex(&hash)
        ));
    }
    eprintln!(
        "sent {name}: {size} bytes, SHA-256 {} verified by the receiver; this run moved {moved} bytes (resumed at {from}) in {:.2} s",
        hex(&hash),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `len` bytes of the file from its current position (read on a thread of
/// its own, [`super::stdio`]), hashed on the way.
async fn send_body(
    file: std::fs::File,
    s: &mut xtcp::Session,
    ctx: &mut Context,
    counters: &Counters,
    len: u64,
) -> Result<u64, String> {
    let mut rd = ReadThread::spawn("xtcp-file", len, move || Ok(file))
        .map_err(|e| format!("reading the file: {e}"))?;
    let mut done = 0u64;
    while let Some(c) = rd.next().await {
        let c = c.map_err(|e| format!("reading the file: {e}"))?;
        ctx.update(c.bytes());
        s.write_all(c.bytes()).await.map_err(lost)?;
        let n = c.bytes().len() as u64;
        done += n;
        counters
            .sent
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        rd.recycle(c);
    }
    if done < len {
        return Err("the file shrank while it was sent".into());
    }
    Ok(done)
}

/// What `xtcp receive` was told.
pub struct ReceiveOpts {
    /// The directory to write into.
    pub dir: PathBuf,
    /// Accept without asking.
    pub yes: bool,
    /// Overwrite an existing file.
    pub force: bool,
}

/// Ask on the terminal (`/dev/tty`, so a ticket piped to stdin still lets
/// a person answer); without one, only `--yes` accepts.
fn consent(name: &str, size: u64, yes: bool) -> Result<bool, String> {
    if yes {
        return Ok(true);
    }
    let what = format!("{name} ({})", super::progress::bytes(size));
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty");
    let Ok(mut tty) = tty else {
        return Err(format!(
            "the peer offers {what}: no terminal to ask on, pass --yes to accept"
        ));
    };
    let _ = write!(tty, "receive {what}? [y/N] ");
    let _ = tty.flush();
    let mut line = String::new();
    std::io::BufReader::new(tty)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

async fn decline(mut s: xtcp::Session, why: Decline, msg: String) -> Result<(), String> {
    let _ = wire::write_reply(&mut s, &Reply::Decline(why as u8)).await;
    close(s).await;
    Err(msg)
}

/// `xtcp receive`: join, check the offer, resume or start, verify, rename.
pub async fn receive(mut s: xtcp::Session, o: &ReceiveOpts) -> Result<(), String> {
    crate::report_paths(&s);
    let (size, name) = wire::read_offer(&mut s).await.map_err(lost)?;
    if !wire::valid_name(&name) {
        let msg = format!("refusing the offered file name {name:?}");
        return decline(s, Decline::BadName, msg).await;
    }
    let dest = o.dir.join(&name);
    let partial = o.dir.join(format!("{name}{PARTIAL}"));
    if dest.exists() && !o.force {
        let msg = format!(
            "{} exists: pass --force to overwrite it (or --dir to write elsewhere)",
            dest.display()
        );
        return decline(s, Decline::Exists, msg).await;
    }
    match consent(&name, size, o.yes) {
        Ok(true) => {}
        Ok(false) => return decline(s, Decline::Refused, "declined".into()).await,
        Err(msg) => return decline(s, Decline::Refused, msg).await,
    }
    let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    if have > size {
        have = 0;
    }
    let ctx = tokio::task::block_in_place(|| hash_prefix(&partial, have))
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    let hash = digest(ctx.clone());
    wire::write_reply(&mut s, &Reply::Accept { have, hash })
        .await
        .map_err(lost)?;
    let from = s.read_u64().await.map_err(lost)?;
    let mut ctx = match from {
        f if f == have => ctx,
        0 => Context::new(&SHA256),
        _ => return Err("the sender broke the protocol (bad start offset)".into()),
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&partial)
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    file.set_len(from)
        .and_then(|_| file.seek(std::io::SeekFrom::Start(from)).map(|_| ()))
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    if from > 0 {
        eprintln!("resuming {name} at byte {from}");
    }
    let counters = Counters::default();
    let progress = Progress::start(counters.clone(), Some(size), from);
    let t = Instant::now();
    let r = receive_body(&mut s, file, &mut ctx, &counters, size - from).await;
    progress.finish();
    let (moved, file) = r?;
    let theirs = wire::read_hash(&mut s).await.map_err(lost)?;
    let ours = digest(ctx);
    let ok = ours == theirs;
    if ok {
        file.sync_all()
            .and_then(|_| std::fs::rename(&partial, &dest))
            .map_err(|e| format!("{}: {e}", dest.display()))?;
    } else {
        let _ = std::fs::remove_file(&partial);
    }
    let _ = s.write_u8(u8::from(ok)).await;
    close(s).await;
    if !ok {
        return Err(format!(
            "SHA-256 mismatch: received {}, the sender's is {}; the partial file was removed, run again",
            hex(&ours),
            hex(&theirs)
        ));
    }
    eprintln!(
        "received {}: {size} bytes, SHA-256 {} verified; this run moved {moved} bytes (resumed at {from}) in {:.2} s",
        dest.display(),
        hex(&ours),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `len` bytes from the session into the partial file (written on a thread
/// of its own, [`super::stdio`]), hashed on the way; the file back, written.
async fn receive_body(
    s: &mut xtcp::Session,
    file: std::fs::File,
    ctx: &mut Context,
    counters: &Counters,
    len: u64,
) -> Result<(u64, std::fs::File), String> {
    let stop_after: Option<u64> = std::env::var(STOP_AFTER_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let failed = |e: std::io::Error| format!("writing the file: {e}");
    let mut w = WriteThread::spawn("xtcp-file", file).map_err(failed)?;
    let mut done = 0u64;
    while done < len {
        let mut want = BUF.min((len - done) as usize);
        if let Some(stop) = stop_after {
            if done >= stop {
                let _ = w.finish().await.map(|f| f.sync_all());
                eprintln!("test hook: stopping after {done} bytes");
                std::process::exit(3);
            }
            want = want.min((stop - done) as usize);
        }
        let mut buf = w.buffer();
        let (n, end) = fill(s, &mut buf[..want]).await;
        if n > 0 {
            ctx.update(&buf[..n]);
            w.send(buf, n).await.map_err(failed)?;
            done += n as u64;
            counters
                .received
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let gone = match end {
            End::More => continue,
            End::Eof => format!(
                "the sender went away after {done} of {len} bytes; the partial file is kept: run the same commands again to resume"
            ),
            End::Failed(e) => lost(e),
        };
        // Keep what arrived: a resumed run starts after it.
        let _ = w.finish().await;
        return Err(gone);
    }
    let file = w.finish().await.map_err(failed)?;
    Ok((done, file))
}
