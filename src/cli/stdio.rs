//! Blocking file descriptors (stdin, stdout, the file of `send` / `receive`)
//! next to an async session, without a blocking-pool job per chunk.
//!
//! tokio's `Stdin` and `Stdout` run every read and every write as a job of
//! its own on the blocking pool (`spawn_blocking`), copy through an internal
//! buffer, and a write waits for the previous one to finish. Here each
//! descriptor gets one thread for the whole copy: plain blocking `read(2)` /
//! `write(2)` with [`BUF`]-sized buffers, handed to and from the async side
//! through a bounded channel (at most [`DEPTH`] buffers in flight each way;
//! used buffers go back for reuse). Blocking threads suit any descriptor
//! (file, pipe, terminal, socket) and, unlike `O_NONBLOCK` with `AsyncFd`,
//! leave the open file description, which other processes may share, as it is.
//!
//! ```text
//!  fd 0 ─read─▶ [xtcp-stdin]  ══ chunks ══▶ write_all ─▶ session ─▶ peer
//!  fd 1 ◀─write─ [xtcp-stdout] ◀══ chunks ══ read (+ what is ready) ◀─ session ◀─ peer
//! ```
//!
//! [`pipe`] keeps the half-close semantics of a socket pipe: stdin's EOF
//! shuts our sending side down; the peer's EOF ends the copy to stdout once
//! everything was written, and [`pipe`] returns when both happened.

use super::progress::Counters;
use std::future::Future;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Bytes per read and per write on the blocking side.
pub const BUF: usize = 256 * 1024;
/// The capacity asked for a pipe on stdin or stdout (Linux's default for an
/// unprivileged process's maximum, `/proc/sys/fs/pipe-max-size`).
const PIPE: i32 = 1 << 20;

/// Grow the pipe `fd` is (if it is one, smaller than [`PIPE`]) so that a
/// `cat FILE |` or `| consumer` on the same core switches to us once per
/// 1 MiB rather than once per 64 KiB. Only the capacity changes; a refusal
/// (the per-user pipe quota) leaves the pipe as it was.
fn grow_pipe<F: std::os::fd::AsFd>(fd: F) {
    use nix::fcntl::{fcntl, FcntlArg};
    if let Ok(n) = fcntl(&fd, FcntlArg::F_GETPIPE_SZ) {
        if n < PIPE {
            let _ = fcntl(&fd, FcntlArg::F_SETPIPE_SZ(PIPE));
        }
    }
}
/// Buffers in flight between a thread and the async side.
const DEPTH: usize = 4;

/// A buffer of which the first `len` bytes hold data.
pub struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

impl Chunk {
    /// The data.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A thread reading a blocking source into chunks until EOF or an error.
pub struct ReadThread {
    rx: mpsc::Receiver<io::Result<Chunk>>,
    spare: std::sync::mpsc::Sender<Vec<u8>>,
}

impl ReadThread {
    /// Start `name`, which opens its source with `open` (on the thread: a
    /// `StdinLock` is not `Send`) and reads at most `limit` bytes from it.
    pub fn spawn<R, F>(name: &str, limit: u64, open: F) -> io::Result<ReadThread>
    where
        R: Read,
        F: FnOnce() -> io::Result<R> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(DEPTH);
        let (spare, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut src = match open() {
                    Ok(s) => s.take(limit),
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                loop {
                    let mut buf = spare_rx.try_recv().unwrap_or_else(|_| vec![0; BUF]);
                    let r = loop {
                        match src.read(&mut buf) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            r => break r,
                        }
                    };
                    match r {
                        Ok(0) => return,
                        Ok(len) => {
                            if tx.blocking_send(Ok(Chunk { buf, len })).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e));
                            return;
                        }
                    }
                }
            })?;
        Ok(ReadThread { rx, spare })
    }

    /// The next chunk; `None` at the end of the source. Cancel safe (a
    /// chunk not returned stays queued).
    pub async fn next(&mut self) -> Option<io::Result<Chunk>> {
        self.rx.recv().await
    }

    /// Hand a chunk's buffer back for the next read.
    pub fn recycle(&self, c: Chunk) {
        let _ = self.spare.send(c.buf);
    }
}

/// A thread writing chunks to a blocking sink, in order.
pub struct WriteThread<W> {
    tx: Option<mpsc::Sender<Chunk>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    done: oneshot::Receiver<io::Result<W>>,
}

impl<W: Write + Send + 'static> WriteThread<W> {
    /// Start `name`, writing to `sink`.
    pub fn spawn(name: &str, mut sink: W) -> io::Result<WriteThread<W>> {
        let (tx, mut rx) = mpsc::channel::<Chunk>(DEPTH);
        let (spare_tx, spare) = std::sync::mpsc::channel();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let r = (|| {
                    while let Some(c) = rx.blocking_recv() {
                        sink.write_all(c.bytes())?;
                        let _ = spare_tx.send(c.buf);
                    }
                    sink.flush()?;
                    Ok(sink)
                })();
                let _ = done_tx.send(r);
            })?;
        Ok(WriteThread {
            tx: Some(tx),
            spare,
            done,
        })
    }

    /// An empty buffer of [`BUF`] bytes to fill and [`WriteThread::send`].
    pub fn buffer(&self) -> Vec<u8> {
        self.spare.try_recv().unwrap_or_else(|_| vec![0; BUF])
    }

    /// Queue the first `len` bytes of `buf` (waits while [`DEPTH`] chunks are
    /// queued). Fails with the sink's error once a write failed. If the
    /// future is dropped before it completes, the chunk was not queued.
    pub async fn send(&mut self, buf: Vec<u8>, len: usize) -> io::Result<()> {
        let tx = self.tx.as_ref().ok_or(io::ErrorKind::BrokenPipe)?;
        if tx.send(Chunk { buf, len }).await.is_err() {
            // The thread stopped at a failed write: report that error.
            self.tx = None;
            return match (&mut self.done).await {
                Ok(Err(e)) => Err(e),
                _ => Err(io::ErrorKind::BrokenPipe.into()),
            };
        }
        Ok(())
    }

    /// Wait until everything queued was written and flushed; the sink back.
    /// (Dropping the future leaves the thread to finish on its own.)
    pub async fn finish(mut self) -> io::Result<W> {
        self.tx = None;
        match self.done.await {
            Ok(r) => r,
            // The error was already returned by `send`.
            Err(_) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
}

/// Standard output as a file of its own (a duplicate of fd 1), opened at the
/// first write: raw `write(2)`s, without std's line buffering.
#[derive(Default)]
pub struct Stdout(Option<std::fs::File>);

impl Write for Stdout {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let f = match &mut self.0 {
            Some(f) => f,
            None => {
                use std::os::fd::AsFd;
                // Whatever std's own buffer holds goes first.
                std::io::stdout().flush()?;
                let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
                grow_pipe(&fd);
                self.0.insert(std::fs::File::from(fd))
            }
        };
        f.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a read from the session that may take what is ready ended with.
pub enum End {
    /// The buffer is full or nothing more is ready.
    More,
    /// The peer's EOF.
    Eof,
    /// The session failed.
    Failed(io::Error),
}

/// Poll `f` once: its output if it is ready at once.
async fn ready_now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Wait for data, then take whatever else is ready, up to a full buffer (a
/// TLS session yields one record per read): fewer, larger writes. Cancel
/// safe: it waits only in its first read.
pub async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> (usize, End) {
    let mut n = match r.read(buf).await {
        Ok(0) => return (0, End::Eof),
        Ok(n) => n,
        Err(e) => return (0, End::Failed(e)),
    };
    while n < buf.len() {
        match ready_now(r.read(&mut buf[n..])).await {
            None => break,
            Some(Ok(0)) => return (n, End::Eof),
            Some(Ok(k)) => n += k,
            Some(Err(e)) => return (n, End::Failed(e)),
        }
    }
    (n, End::More)
}

/// Session → `out` until the peer's EOF; everything written and flushed.
/// `Err` says which side failed ("connection: …" or "stdout: …").
pub async fn copy_to<R, W>(r: &mut R, out: W, what: &str, counter: &AtomicU64) -> Result<W, String>
where
    R: AsyncRead + Unpin,
    W: Write + Send + 'static,
{
    let mut w = WriteThread::spawn(&format!("xtcp-{what}"), out)
        .map_err(|e| format!("{what}: cannot start a thread: {e}"))?;
    let failed = loop {
        let mut buf = w.buffer();
        let (n, end) = fill(r, &mut buf).await;
        if n > 0 {
            counter.fetch_add(n as u64, Ordering::Relaxed);
            if let Err(e) = w.send(buf, n).await {
                return Err(format!("{what}: {e}"));
            }
        }
        match end {
            End::More => {}
            End::Eof => break None,
            End::Failed(e) => break Some(e),
        }
    };
    // What arrived before a failure is written out all the same.
    let out = w.finish().await.map_err(|e| format!("{what}: {e}"))?;
    match failed {
        Some(e) => Err(format!("connection: {e}")),
        None => Ok(out),
    }
}

/// Stdin → `w` until stdin's EOF (not shut down).
async fn copy_stdin<W: AsyncWrite + Unpin>(w: &mut W, counter: &AtomicU64) -> Result<(), String> {
    let stdin = || {
        let s = std::io::stdin().lock();
        grow_pipe(&s);
        Ok(s)
    };
    let mut rd = ReadThread::spawn("xtcp-stdin", u64::MAX, stdin)
        .map_err(|e| format!("stdin: cannot start a thread: {e}"))?;
    while let Some(c) = rd.next().await {
        let c = c.map_err(|e| format!("stdin: {e}"))?;
        w.write_all(c.bytes())
            .await
            .map_err(|e| format!("connection: {e}"))?;
        counter.fetch_add(c.len as u64, Ordering::Relaxed);
        rd.recycle(c);
    }
    Ok(())
}

/// Copy stdin → session and session → stdout at once; stdin's EOF
/// half-closes. Returns when the peer's stream ended, stdout was written and
/// our side was shut down. The bytes moved are added to `c` (`--progress`).
/// `Err` is one line naming the side that failed.
pub async fn pipe<S>(session: S, c: &Counters) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut rd, mut wr) = tokio::io::split(session);
    let up = async {
        copy_stdin(&mut wr, &c.sent).await?;
        wr.shutdown().await.map_err(|e| format!("connection: {e}"))
    };
    let down = async {
        copy_to(&mut rd, Stdout::default(), "stdout", &c.received)
            .await
            .map(drop)
    };
    tokio::try_join!(up, down).map(drop)
}
