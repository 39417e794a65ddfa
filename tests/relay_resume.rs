//! Relay-only sessions that outlive their relay (issue 17 item 1,
//! `spec/direct.md` §4.8), through the binaries, on loopback: `xtcp host`
//! and `xtcp join --relay-only` move 256 MiB each way through an
//! `xtcp-relay` that is killed with SIGKILL at about a third of the
//! transfer. Either it comes back 2 s later on the same address (same
//! self-signed key, kept in its `state_dir`), or, with a two-relay list,
//! it never does and the session moves to the other relay. Both sides
//! must exit 0 with the other's bytes exact, report the stall, and flow
//! again within 2 s + the backoff in force (1 s) of the relay being back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

mod common_cli;
use common_cli::{new_token, until, TempDir};

const XTCP: &str = env!("CARGO_BIN_EXE_xtcp");
const RELAY: &str = env!("CARGO_BIN_EXE_xtcp-relay");

/// Bytes each way.
const LEN: u64 = 256 << 20;
/// The relay is down this long before it restarts.
const DOWN: Duration = Duration::from_secs(2);
/// Relay back (or first relay dead) to bytes flowing again, at most:
/// 2 s + the longest backoff (`RELAY_BACKOFF_MAX`, 1 s).
const BACK_WITHIN: Duration = Duration::from_secs(3);

/// An `xtcp-relay` process on a fixed address with its own state
/// directory (so a restart keeps its self-signed key and pin).
struct RelayProc {
    child: Option<Child>,
    addr: String,
    fp: String,
    cfg: PathBuf,
    stderr: PathBuf,
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl RelayProc {
    fn new(dir: &Path, name: &str, token_line: &str) -> RelayProc {
        // A free port, then the relay on it (and on it again after a restart).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let own = dir.join(name);
        std::fs::create_dir_all(&own).unwrap();
        let cfg = own.join("relay.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{port}\"\nudp_listen = \"127.0.0.1:0\"\nself_signed = true\nstate_dir = \"{}\"\n{token_line}\n",
                own.join("state").display()
            ),
        )
        .unwrap();
        let mut p = RelayProc {
            child: None,
            addr: format!("127.0.0.1:{port}"),
            fp: String::new(),
            cfg,
            stderr: own.join("stderr"),
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.stderr);
        let child = Command::new(RELAY)
            .arg("--config")
            .arg(&self.cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.stderr).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let stderr = self.stderr.clone();
        let text = move || std::fs::read_to_string(&stderr).unwrap_or_default();
        until("the relay's start lines", || {
            let s = text();
            s.contains("listening on ") && s.contains("fingerprint: ") || s.contains("xtcp-relay: ")
        });
        let s = text();
        let fp = s
            .lines()
            .find_map(|l| {
                l.split_once("fingerprint: ")
                    .map(|x| x.1.trim().to_string())
            })
            .unwrap_or_else(|| panic!("relay did not start: {s}"));
        assert!(
            s.contains(&format!("listening on {}", self.addr)),
            "relay on {}: {s}",
            self.addr
        );
        // A restart presents the same key (the pin holds).
        assert!(
            self.fp.is_empty() || self.fp == fp,
            "restarted relay changed its key"
        );
        self.fp = fp;
    }

    /// SIGKILL: no SHUTTING_DOWN, no close_notify; the kernel ends its
    /// connections.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A deterministic pattern file of `LEN` bytes; returns its SHA-256.
fn pattern_file(path: &Path, seed: u8) -> [u8; 32] {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut block = vec![0u8; 1 << 20];
    for b in 0..(LEN >> 20) {
        for (i, x) in block.iter_mut().enumerate() {
            *x = (i as u32 ^ (b as u32).wrapping_mul(2_654_435_761)).to_le_bytes()[i % 4] ^ seed;
        }
        h.update(&block);
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

/// A peer process: stdout hashed and counted on a thread, stderr lines
/// with the time they arrived.
struct Peer {
    child: Child,
    got: Arc<AtomicU64>,
    out: std::thread::JoinHandle<[u8; 32]>,
    err: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

impl Peer {
    fn spawn(args: &[&str], stdin: &Path, token: Option<&str>) -> Peer {
        let mut cmd = Command::new(XTCP);
        cmd.args(args)
            .env_remove("XTCP_RELAY")
            .stdin(std::fs::File::open(stdin).unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            cmd.env("XTCP_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let got = Arc::new(AtomicU64::new(0));
        let mut stdout = child.stdout.take().unwrap();
        let g = got.clone();
        let out = std::thread::spawn(move || {
            let mut h = ring::digest::Context::new(&ring::digest::SHA256);
            let mut buf = vec![0u8; 256 << 10];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        h.update(&buf[..n]);
                        g.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            let mut d = [0u8; 32];
            d.copy_from_slice(h.finish().as_ref());
            d
        });
        let stderr = child.stderr.take().unwrap();
        let (tx, err) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        Peer {
            child,
            got,
            out,
            err,
            seen: Vec::new(),
        }
    }

    /// Bounded wait (20 s) for a stderr line containing `needle`.
    fn line(&mut self, needle: &str) -> (Instant, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok((t, l)) => {
                    self.seen.push((t, l.clone()));
                    if l.contains(needle) {
                        return (t, l);
                    }
                }
                Err(_) => panic!("no line containing {needle:?}; saw {:?}", self.lines()),
            }
        }
    }

    fn lines(&self) -> Vec<&str> {
        self.seen.iter().map(|(_, l)| l.as_str()).collect()
    }

    /// Wait (bounded, 120 s) for the exit; returns success and the output's digest.
    fn finish(mut self) -> (bool, [u8; 32], Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let ok = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let digest = self.out.join().unwrap();
        self.seen.extend(self.err.try_iter());
        let lines = self.seen.into_iter().map(|(_, l)| l).collect();
        (ok, digest, lines)
    }
}

/// Run one session through `relays` (relay 0 is the one the session
/// lands on when it is listed first), kill relay 0 at a third of the
/// transfer, restart it after [`DOWN`] if `restart`, and check the
/// outcome. Returns (relay back or dead → flowing again) for host and guest.
fn relay_dies_mid_transfer(tag: &str, two_relays: bool, restart: bool) -> [Duration; 2] {
    let dir = TempDir::new(tag);
    let (token, line) = new_token(RELAY);
    let mut r0 = RelayProc::new(&dir.0, "r0", &line);
    let r1 = two_relays.then(|| RelayProc::new(&dir.0, "r1", &line));
    let (fa, fb) = (dir.0.join("a"), dir.0.join("b"));
    let (ha, hb) = (pattern_file(&fa, 1), pattern_file(&fb, 2));
    let mut relay_args = ["--relay".to_string(), r0.addr.clone()];
    let mut pins = ["--relay-fingerprint".to_string(), r0.fp.clone()];
    if let Some(r1) = &r1 {
        relay_args[1] = format!("{},{}", r0.addr, r1.addr);
        pins[1] = format!("{},{}", r0.fp, r1.fp);
    }
    let common: Vec<&str> = relay_args
        .iter()
        .chain(pins.iter())
        .map(String::as_str)
        .chain(["--relay-only"])
        .collect();
    let mut host_args = vec!["host"];
    host_args.extend(&common);
    let mut host = Peer::spawn(&host_args, &fa, Some(&token));
    let (_, code_line) = host.line("code: ");
    let code = code_line.split("code: ").nth(1).unwrap().trim().to_string();
    let mut guest_args = vec!["join", code.as_str()];
    guest_args.extend(&common);
    let mut guest = Peer::spawn(&guest_args, &fb, None);
    host.line("path: relay");
    guest.line("path: relay");
    // With two relays the session lands on one of them by rendezvous
    // hashing: kill the one it is on.
    let on_r0 = r1.is_none() || relay_of(&host) == r0.addr;
    // A third of the transfer, by what the host received.
    let t0 = Instant::now();
    while host.got.load(Ordering::Relaxed) < LEN / 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "transfer stalled before a third: {:?}",
            host.lines()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut r1 = r1;
    let killed_at = Instant::now();
    if on_r0 {
        r0.kill();
    } else if let Some(r) = r1.as_mut() {
        r.kill();
    }
    let at_kill = (
        host.got.load(Ordering::Relaxed),
        guest.got.load(Ordering::Relaxed),
    );
    let back_at = if restart {
        std::thread::sleep(DOWN); // the scenario: the relay is down 2 s
        let b = Instant::now();
        if on_r0 {
            r0.start();
        } else if let Some(r) = r1.as_mut() {
            r.start();
        }
        b
    } else {
        killed_at
    };
    let mut back = [Duration::ZERO; 2];
    for (i, p) in [&mut host, &mut guest].into_iter().enumerate() {
        p.line("path: reconnecting");
        let (t, l) = p.line("after a stall of");
        assert!(l.starts_with("path: relay"), "{l}");
        back[i] = t.saturating_duration_since(back_at);
    }
    let (hok, hgot, hl) = host.finish();
    let (gok, ggot, gl) = guest.finish();
    assert!(hok, "host failed: {hl:?}");
    assert!(gok, "guest failed: {gl:?}");
    assert!(hgot == hb, "host received the guest's 256 MiB exactly");
    assert!(ggot == ha, "guest received the host's 256 MiB exactly");
    eprintln!(
        "{tag}: killed at host {} / guest {} MiB received; relay {} → flowing again: host {:.2} s, guest {:.2} s",
        at_kill.0 >> 20,
        at_kill.1 >> 20,
        if restart { "back" } else { "dead" },
        back[0].as_secs_f64(),
        back[1].as_secs_f64()
    );
    for (who, d) in [("host", back[0]), ("guest", back[1])] {
        assert!(
            d <= BACK_WITHIN,
            "{who}: {d:?} from the relay being back to data flowing"
        );
    }
    back
}

/// The relay a CLI peer reports (`relay: ADDR` on stderr), if it does.
fn relay_of(p: &Peer) -> String {
    p.seen
        .iter()
        .find_map(|(_, l)| l.strip_prefix("relay: ").map(|r| r.trim().to_string()))
        .unwrap_or_default()
}

//= spec/direct.md#DI-RELAY-1
//= spec/direct.md#DI-RELAY-3
#[test]
fn relay_only_session_survives_a_relay_sigkill_and_restart() {
    relay_dies_mid_transfer("restart", false, true);
}

#[test]
fn relay_only_session_moves_to_the_next_relay_when_the_first_stays_dead() {
    relay_dies_mid_transfer("failover", true, false);
}
