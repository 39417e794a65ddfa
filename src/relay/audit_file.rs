//! The audit log file (`spec/relay.md` §9.3): created with mode 0600,
//! written by a thread of its own through a bounded queue, so a slow disk
//! never blocks a connection task (a full queue drops the line and counts
//! it), buffered and flushed whenever the queue runs empty, and reopened on
//! request (SIGHUP, for log rotation).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Lines queued for the writer thread at most.
const QUEUE: usize = 8192;

enum Msg {
    Line(Vec<u8>),
    Reopen(SyncSender<io::Result<()>>),
    Sync(SyncSender<io::Result<()>>),
}

/// A handle that queues audit lines for the file (`Write`: each `write` is
/// one line, as the relay writes each event with one call).
#[derive(Clone, Debug)]
pub struct AuditFile {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

/// Open `path` for appending, creating it with mode 0600; an existing file
/// readable by others is narrowed to 0600.
fn open(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        o.mode(0o600);
        let f = o.open(path)?;
        let mode = f.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            f.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
        }
        Ok(f)
    }
    #[cfg(not(unix))]
    o.open(path)
}

impl AuditFile {
    /// Open (or create) the file and start its writer thread.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<AuditFile> {
        let path = path.into();
        let file = open(&path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("xtcp-audit".into())
            .spawn(move || writer(path, file, rx))?;
        Ok(AuditFile {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Reopen the file by its path (after a rotation moved it away).
    pub fn reopen(&self) -> io::Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Reopen(tx))
            .map_err(|_| io::Error::other("audit writer stopped"))?;
        rx.recv()
            .map_err(|_| io::Error::other("audit writer stopped"))?
    }

    /// Wait until every line queued so far is written and flushed (at exit).
    pub fn sync(&self) -> io::Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Sync(tx))
            .map_err(|_| io::Error::other("audit writer stopped"))?;
        rx.recv()
            .map_err(|_| io::Error::other("audit writer stopped"))?
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Write for AuditFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tx.try_send(Msg::Line(buf.to_vec())) {
            Ok(()) => Ok(buf.len()),
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(buf.len())
            }
            Err(TrySendError::Disconnected(_)) => Err(io::Error::other("audit writer stopped")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // The writer flushes whenever its queue runs empty.
        Ok(())
    }
}

fn writer(path: PathBuf, file: File, rx: Receiver<Msg>) {
    let mut w = BufWriter::with_capacity(64 * 1024, file);
    let handle = |w: &mut BufWriter<File>, m: Msg| match m {
        Msg::Line(l) => {
            if let Err(e) = w.write_all(&l) {
                tracing::warn!("audit log {}: {e}", path.display());
            }
        }
        Msg::Reopen(reply) => {
            let _ = w.flush();
            let r = open(&path).map(|f| *w = BufWriter::with_capacity(64 * 1024, f));
            let _ = reply.send(r);
        }
        Msg::Sync(reply) => {
            let _ = reply.send(w.flush());
        }
    };
    while let Ok(m) = rx.recv() {
        handle(&mut w, m);
        while let Ok(m) = rx.try_recv() {
            handle(&mut w, m);
        }
        if let Err(e) = w.flush() {
            tracing::warn!("audit log {}: {e}", path.display());
        }
    }
    let _ = w.flush();
}
