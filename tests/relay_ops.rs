//! The `xtcp-relay` binary as an operator runs it (spec/relay.md §9.3):
//! the audit log is created 0600 and reopened on SIGHUP; a flood of failing
//! JOINs from one source grows audit log + stderr by a bounded amount; no
//! ANSI colour codes reach a non-terminal stderr; `--check-config` names an
//! out-of-range key.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xtcp::relay::client::join_session;
use xtcp::relay::{RelayClientConfig, RelayError, RelayTrust};

const RELAY: &str = env!("CARGO_BIN_EXE_xtcp-relay");

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "xtcp-relay-ops-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Proc {
    child: Child,
    addr: String,
    fp: [u8; 32],
    stderr: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the binary with `extra` TOML; its stderr goes to a file (not a terminal).
fn start(dir: &Path, extra: &str) -> Proc {
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nself_signed = true\nudp_listen = \"off\"\naudit_log = \"{}\"\n{extra}\n",
            dir.join("audit.log").display()
        ),
    )
    .unwrap();
    let stderr = dir.join("stderr");
    let child = Command::new(RELAY)
        .arg("--config")
        .arg(&cfg)
        .env("XTCP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    // Bounded wait for the start lines.
    let t = Instant::now();
    let (mut addr, mut fp) = (None, None);
    while (addr.is_none() || fp.is_none()) && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
        let f = std::fs::File::open(&stderr).unwrap();
        for l in BufReader::new(f).lines().map_while(Result::ok) {
            if let Some(a) = l.strip_prefix("xtcp-relay listening on ") {
                addr = Some(a.trim().to_string());
            }
            if let Some(h) = l.strip_prefix("self-signed certificate sha256 fingerprint: ") {
                let b = xtcp::tls::unhex(h.trim()).unwrap();
                fp = Some(<[u8; 32]>::try_from(b).unwrap());
            }
        }
    }
    Proc {
        child,
        addr: addr.expect("relay started"),
        fp: fp.expect("fingerprint printed"),
        stderr,
    }
}

fn guest(p: &Proc) -> RelayClientConfig {
    RelayClientConfig {
        relays: vec![p.addr.clone()],
        trust: RelayTrust::pinned(p.fp),
        token: None,
        connect_timeout: Duration::from_secs(5),
    }
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Bounded wait until `f` holds.
fn until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn audit_log_is_private_and_reopened_on_sighup() {
    let dir = Dir::new("hup");
    // The second failure is aggregated: a short interval writes its count.
    let p = start(&dir.0, "log_interval_secs = 0.3");
    let log = dir.0.join("audit.log");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "audit log mode {mode:o}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fail = || {
        let r = rt.block_on(join_session(&guest(&p), [1; 16]));
        assert!(matches!(r, Err(RelayError::UnknownSession)), "{r:?}");
    };
    fail();
    until("the first event", || size(&log) > 0);
    // Rotate: move the file away, SIGHUP, and the next event lands in a new file.
    let rotated = dir.0.join("audit.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    until("the reopened file", || log.exists());
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fail();
    until("an event in the new file", || size(&log) > 0);
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&log).unwrap();
    assert_eq!(old.lines().count(), 1, "{old}");
    assert!(
        new.contains("\"event\":\"join_failed\"") || new.contains("\"event\":\"refusals\""),
        "{new}"
    );
    // stderr is a file here: no colour codes.
    let err = std::fs::read(&p.stderr).unwrap();
    assert!(!err.contains(&0x1b), "ANSI escape in stderr");
}

/// Failing JOINs from one address as fast as 24 parallel clients can go for
/// 10 s (the flood: 3,000/s for 10 s; the rate reached here is
/// printed), with `log_interval_secs = 1` (10 intervals, where the default
/// 60 s gives at most 2): audit log + stderr grow by ≤ 20 KB in total. The
/// growth does not depend on the rate (see spec §9.3).
#[test]
fn a_flood_of_failing_joins_grows_the_logs_by_a_bounded_amount() {
    let dir = Dir::new("flood");
    let p = start(&dir.0, "log_interval_secs = 1.0");
    let log = dir.0.join("audit.log");
    let (a0, e0) = (size(&log), size(&p.stderr));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let mut lanes = tokio::task::JoinSet::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        for lane in 0..24u8 {
            let cfg = guest(&p);
            let sent = sent.clone();
            lanes.spawn(async move {
                let mut i = 0u64;
                while tokio::time::Instant::now() < end {
                    let mut rid = [lane; 16];
                    rid[..8].copy_from_slice(&i.to_be_bytes());
                    i += 1;
                    let _ = tokio::time::timeout_at(end, join_session(&cfg, rid)).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while lanes.join_next().await.is_some() {}
    });
    // Let the last interval's summary be written (bounded).
    std::thread::sleep(Duration::from_millis(1500));
    let grown = (size(&log) - a0) + (size(&p.stderr) - e0);
    let n = sent.load(Ordering::Relaxed);
    let audit = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "{n} failing JOINs in 10 s ({}/s): audit + stderr grew {grown} bytes ({} audit lines)",
        n / 10,
        audit.lines().count()
    );
    // Without aggregation each refusal is an audit line (~90 bytes) plus a
    // stderr line (~200 bytes): the flood must be big enough to show it.
    assert!(n >= 300, "only {n} JOINs sent");
    assert!(grown <= 20_000, "{grown} bytes for {n} refusals");
    assert!(
        audit.contains("\"event\":\"refusals\""),
        "the counts are logged: {audit}"
    );
    let counted: u64 = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "refusals")
        .map(|v| {
            ["join_failed", "refused_locked_out", "refused_source_share"]
                .iter()
                .map(|k| v[*k].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum();
    assert!(counted > 0, "suppressed refusals are counted");
}

#[test]
fn check_config_names_an_out_of_range_key() {
    let dir = Dir::new("check");
    let cfg = dir.0.join("relay.toml");
    std::fs::write(&cfg, "self_signed = true\nlockout_secs = 1e19\n").unwrap();
    let out = Command::new(RELAY)
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("lockout_secs"), "{err}");
}

/// SIGTERM with one waiting and one paired session (spec/relay.md §9.5): the
/// waiting host gets SHUTTING_DOWN, the paired session is cut after
/// `drain_secs`, both get their `session_closed` record, and the process
/// exits 0.
#[test]
fn sigterm_tells_the_waiting_host_and_logs_both_sessions() {
    use xtcp::relay::client::create_session;
    let dir = Dir::new("term");
    let mut p = start(&dir.0, "allow_anonymous_hosts = true\ndrain_secs = 0.5");
    let log = dir.0.join("audit.log");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let host_cfg = guest(&p);
    let (waiting, paired) = rt.block_on(async {
        let rid = xtcp::secret::SessionSecret::generate()
            .unwrap()
            .rendezvous_id();
        let w = create_session(&host_cfg, rid).await.expect("create");
        let rid2 = xtcp::secret::SessionSecret::generate()
            .unwrap()
            .rendezvous_id();
        let w2 = create_session(&host_cfg, rid2).await.expect("create");
        let gc = guest(&p);
        let (h, g) = tokio::join!(w2.paired(), join_session(&gc, rid2));
        (w, (h.expect("host paired"), g.expect("guest paired")))
    });
    let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let r =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), waiting.paired()).await });
    assert!(
        matches!(r, Ok(Err(RelayError::ShuttingDown))),
        "{:?}",
        r.map(|x| x.map(|_| ()))
    );
    let t = Instant::now();
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "relay did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    drop(paired);
    let audit = std::fs::read_to_string(&log).unwrap();
    let closed: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "session_closed")
        .collect();
    assert!(
        closed
            .iter()
            .any(|v| v["reason"] == "shutting down" && v["paired"] == false),
        "{audit}"
    );
    assert!(
        closed
            .iter()
            .any(|v| v["reason"] == "relay stopped" && v["paired"] == true),
        "{audit}"
    );
}

/// Bind errors name the socket and the key or flag that set it.
#[test]
fn bind_errors_name_the_socket_and_its_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(RELAY)
        .args(["--self-signed", "--udp-listen", "off", "--listen"])
        .arg(addr.to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&addr.to_string()) && err.contains("--listen") && err.contains("in use"),
        "{err}"
    );
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let uaddr = udp.local_addr().unwrap();
    let out = Command::new(RELAY)
        .args(["--self-signed", "--listen", "127.0.0.1:0", "--udp-listen"])
        .arg(uaddr.to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&uaddr.to_string()) && err.contains("udp_listen"),
        "{err}"
    );
}

/// The fingerprint a `--self-signed` relay prints, from one start.
fn self_signed_fingerprint(extra: &[&str]) -> String {
    let mut child = Command::new(RELAY)
        .args([
            "--self-signed",
            "--listen",
            "127.0.0.1:0",
            "--udp-listen",
            "off",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut fp = None;
    // Bounded: the relay prints its fingerprint, then its address, at start.
    for l in BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .take(20)
    {
        if let Some(h) = l.strip_prefix("self-signed certificate sha256 fingerprint: ") {
            fp = Some(h.trim().to_string());
        }
        if l.starts_with("xtcp-relay listening on ") || l.starts_with("xtcp-relay: ") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    fp.expect("fingerprint printed")
}

/// `--self-signed` with a `state_dir` keeps its key across restarts, in a
/// 0700 directory with a 0600 key; without one, each start makes a new key.
#[test]
fn self_signed_key_survives_a_restart_in_its_state_dir() {
    let dir = Dir::new("state");
    let state = dir.0.join("state");
    let s = state.to_str().unwrap();
    let first = self_signed_fingerprint(&["--state-dir", s]);
    let second = self_signed_fingerprint(&["--state-dir", s]);
    assert_eq!(first, second, "restart kept the fingerprint");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("self-signed.key")), 0o600);
    assert_ne!(
        self_signed_fingerprint(&[]),
        first,
        "without a state_dir every start has a new key"
    );
}

/// The relay raises its soft descriptor limit to the hard one and says so,
/// with a warning when the configured session limits need more.
#[test]
fn the_descriptor_limit_is_raised_and_reported() {
    let dir = Dir::new("fds");
    let p = start(&dir.0, "max_sessions = 100000\nmax_waiting = 100000");
    let err = std::fs::read_to_string(&p.stderr).unwrap();
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let line = err
        .lines()
        .find(|l| l.contains("descriptor limit"))
        .unwrap_or_else(|| panic!("no descriptor line in {err}"));
    let n: u64 = line
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    // Root may raise the hard limit too; nobody gets less than the hard one.
    assert!(n >= hard, "{line} (hard limit {hard})");
    let from_proc = std::fs::read_to_string(format!("/proc/{}/limits", p.child.id())).unwrap();
    let soft = from_proc
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .unwrap();
    assert_eq!(soft, n, "the running relay's soft limit");
    assert_eq!(
        err.contains("need up to 300000 descriptors"),
        n < 300_000,
        "{err}"
    );
}
