//! Blind forwarding between two paired TCP connections (`spec/relay.md` §7).
//!
//! Two modes, both with at most one bounded buffer per direction and half-close
//! propagation (EOF on one side becomes a FIN on the other, RFC 9293 §3.6):
//!
//! * **splice** (Linux): socket → pipe → socket with splice(2), so payload
//!   never enters user space; the pipe (its size is the per-direction bound)
//!   comes from a process-wide pool while data flows and goes back empty, so
//!   an idle session holds no pipe and no descriptor beyond its two sockets.
//! * **copy**: a user-space buffer of `buffer` bytes, allocated while data
//!   flows and released as soon as the source has nothing more to read, so an
//!   idle paired session holds no buffer at all.

use prometheus_client::metrics::counter::Counter;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How bytes are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// splice(2) through a pipe of at most `buffer` bytes (Linux).
    Splice,
    /// read/write through a user-space buffer of `buffer` bytes.
    Copy,
}

/// A token bucket shared by both directions of one session.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    state: std::sync::Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `rate` bytes per second, with a burst of one second's worth.
    pub fn new(rate: u64) -> RateLimiter {
        RateLimiter {
            rate: rate.max(1),
            state: std::sync::Mutex::new((rate as f64, Instant::now())),
        }
    }

    /// Account for `n` bytes; sleeps while the bucket is in debt.
    pub async fn consume(&self, n: usize) {
        let wait = {
            let mut g = match self.state.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let now = Instant::now();
            let (ref mut tokens, ref mut last) = *g;
            *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate as f64)
                .min(self.rate as f64);
            *last = now;
            *tokens -= n as f64;
            if *tokens < 0.0 {
                Duration::from_secs_f64(-*tokens / self.rate as f64)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Per-direction accounting shared with the session.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes moved in this direction by this session.
    bytes: AtomicU64,
    /// The relay's counter for this direction, added to per chunk.
    total: Counter,
}

impl Counters {
    /// Counts of one direction that also add every chunk to `total`.
    pub fn adding_to(total: Counter) -> Counters {
        Counters {
            bytes: AtomicU64::new(0),
            total,
        }
    }

    /// Bytes moved in this direction by this session so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Shared "last activity" clock of a session, in ms since `epoch`.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Starts now.
    pub fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    /// Time since the last byte moved in either direction.
    pub fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Account for `n` bytes moved: counters, activity clock, rate limit.
async fn moved(n: usize, counters: &Counters, activity: &Activity, limiter: Option<&RateLimiter>) {
    counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
    counters.total.inc_by(n as u64);
    activity.touch();
    if let Some(l) = limiter {
        l.consume(n).await;
    }
}

/// Move bytes from `src` to `dst` until `src` reaches EOF, then half-close
/// `dst`. Returns the bytes moved.
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    mode: Mode,
    buffer: usize,
    counters: &Counters,
    activity: &Activity,
    limiter: Option<&RateLimiter>,
) -> io::Result<u64> {
    let buffer = buffer.clamp(4096, 1 << 20);
    let moved = match mode {
        Mode::Splice => pump_splice(src, dst, buffer, counters, activity, limiter).await?,
        Mode::Copy => pump_copy(src, dst, buffer, counters, activity, limiter).await?,
    };
    // RFC 9293 §3.6: the half-close travels on; the other direction continues.
    let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
    Ok(moved)
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn pump_copy(
    src: &TcpStream,
    dst: &TcpStream,
    buffer: usize,
    counters: &Counters,
    activity: &Activity,
    limiter: Option<&RateLimiter>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        src.readable().await?;
        // Allocated only while the source has data; freed when it runs dry.
        let mut buf = vec![0u8; buffer];
        loop {
            match src.try_read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    //= spec/relay.md#RL-FWD-1
                    //# It MUST NOT interpret the peers' TLS records.
                    write_all(dst, &buf[..n]).await?;
                    total += n as u64;
                    moved(n, counters, activity, limiter).await;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Pipes shared by all sessions of the process: a direction takes one while
/// its source has data and gives it back empty, so an idle session holds no
/// pipe (and no file descriptors beyond its two sockets).
#[cfg(target_os = "linux")]
mod pipes {
    use std::os::fd::OwnedFd;
    use std::sync::Mutex;

    /// Pipes kept for reuse at most (the rest are closed).
    const KEEP: usize = 256;
    static POOL: Mutex<Vec<(OwnedFd, OwnedFd)>> = Mutex::new(Vec::new());

    pub fn take(size: usize) -> std::io::Result<(OwnedFd, OwnedFd)> {
        if let Some(p) = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(p);
        }
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // The pipe is the per-direction buffer; its size is the bound.
        let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(size as i32));
        Ok((r, w))
    }

    /// Return an empty pipe.
    pub fn put(p: (OwnedFd, OwnedFd)) {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < KEEP {
            pool.push(p);
        }
    }
}

#[cfg(target_os = "linux")]
async fn pump_splice(
    src: &TcpStream,
    dst: &TcpStream,
    buffer: usize,
    counters: &Counters,
    activity: &Activity,
    limiter: Option<&RateLimiter>,
) -> io::Result<u64> {
    use nix::fcntl::{splice, SpliceFFlags};
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        src.readable().await?;
        // Readiness can be stale: only take a pipe once a byte (or EOF) is there.
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match src.try_io(Interest::READABLE, || {
            socket2::SockRef::from(src).peek(&mut probe)
        }) {
            Ok(0) => return Ok(total),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        let (r, w) = pipes::take(buffer)?;
        loop {
            let n = match src.try_io(Interest::READABLE, || {
                //= spec/relay.md#RL-FWD-1
                //# It MUST NOT interpret the peers' TLS records.
                splice(src, None, &w, None, buffer, flags).map_err(io::Error::from)
            }) {
                Ok(0) => {
                    pipes::put((r, w));
                    return Ok(total);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The pipe may hold bytes: close it rather than reuse it.
                Err(e) => return Err(e),
            };
            let mut left = n;
            while left > 0 {
                dst.writable().await?;
                match dst.try_io(Interest::WRITABLE, || {
                    splice(&r, None, dst, None, left, flags).map_err(io::Error::from)
                }) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            total += n as u64;
            moved(n, counters, activity, limiter).await;
        }
        // Drained: the pipe is empty, give it back.
        pipes::put((r, w));
    }
}

#[cfg(not(target_os = "linux"))]
async fn pump_splice(
    src: &TcpStream,
    dst: &TcpStream,
    buffer: usize,
    counters: &Counters,
    activity: &Activity,
    limiter: Option<&RateLimiter>,
) -> io::Result<u64> {
    pump_copy(src, dst, buffer, counters, activity, limiter).await
}
