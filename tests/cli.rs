//! The `xtcp` and `xtcp-relay` binaries, driven as a person would (loopback only).

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const XTCP: &str = env!("CARGO_BIN_EXE_xtcp");
const RELAY: &str = env!("CARGO_BIN_EXE_xtcp-relay");

mod common_cli;
use common_cli::{stderr_lines, wait_line};

struct RelayProc {
    child: Child,
    addr: String,
    fingerprint: String,
    token: String,
    _dir: TempDir,
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "xtcp-cli-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn new_token() -> (String, String) {
    let out = Command::new(RELAY).arg("token").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_string();
    let line = text
        .lines()
        .find_map(|l| {
            l.split_once("add to the relay config:")
                .map(|x| x.1.trim().to_string())
        })
        .unwrap();
    (token, line)
}

/// `xtcp-relay --config cfg args…`, its stderr lines on a channel.
fn spawn_relay(cfg: &std::path::Path, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(RELAY)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    (child, rx)
}

fn start_relay(extra_toml: &str) -> RelayProc {
    let dir = TempDir::new("relay");
    let (token, line) = new_token();
    let cfg = dir.0.join("relay.toml");
    std::fs::write(
        &cfg,
        // An ephemeral UDP address service port: parallel relays never collide on 15000.
        format!(
            "listen = \"127.0.0.1:0\"\nself_signed = true\nudp_listen = \"127.0.0.1:0\"\n{line}\n{extra_toml}\n"
        ),
    )
    .unwrap();
    let (child, rx) = spawn_relay(&cfg, &[]);
    let mut seen = Vec::new();
    let fingerprint = wait_line(&rx, "fingerprint: ", &mut seen);
    let addr = wait_line(&rx, "listening on ", &mut seen);
    // Keep draining stderr so the relay never blocks on a full pipe.
    std::thread::spawn(move || for _ in rx {});
    RelayProc {
        child,
        addr,
        fingerprint,
        token,
        _dir: dir,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[i % 4] ^ seed)
        .collect()
}

#[test]
fn host_and_join_copy_stdin_to_the_peer_both_ways() {
    let relay = start_relay("");
    let dir = TempDir::new("io");
    let (a, b) = (pattern(3 << 20, 1), pattern(2 << 20, 2));
    let (fa, fb) = (dir.0.join("a"), dir.0.join("b"));
    std::fs::write(&fa, &a).unwrap();
    std::fs::write(&fb, &b).unwrap();
    let mut host = Command::new(XTCP)
        .args([
            "host",
            "--relay",
            &relay.addr,
            "--relay-fingerprint",
            &relay.fingerprint,
            "--token",
            &relay.token,
        ])
        .stdin(std::fs::File::open(&fa).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hrx = stderr_lines(&mut host);
    let mut hseen = Vec::new();
    let code = wait_line(&hrx, "code: ", &mut hseen);
    let mut guest = Command::new(XTCP)
        .args([
            "join",
            &code,
            "--relay",
            &relay.addr,
            "--relay-fingerprint",
            &relay.fingerprint,
        ])
        .stdin(std::fs::File::open(&fb).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let grx = stderr_lines(&mut guest);
    let mut gseen = Vec::new();
    assert_eq!(wait_line(&grx, "path: ", &mut gseen), "relay");
    assert_eq!(wait_line(&hrx, "path: ", &mut hseen), "relay");
    // Both outputs drained at once: a peer exits only after the other
    // consumed (and acknowledged end to end) everything it sent.
    let h = std::thread::spawn(move || host.wait_with_output().unwrap());
    let gout = guest.wait_with_output().unwrap();
    let hout = h.join().unwrap();
    assert!(hout.status.success(), "host: {hseen:?}");
    assert!(gout.status.success(), "guest: {gseen:?}");
    assert!(hout.stdout == b, "host received the guest's stdin exactly");
    assert!(gout.stdout == a, "guest received the host's stdin exactly");
}

fn join_error(relay: &RelayProc, code: &str, fingerprint: &str) -> (bool, String, Vec<u8>) {
    let out = Command::new(XTCP)
        .args([
            "join",
            code,
            "--relay",
            &relay.addr,
            "--relay-fingerprint",
            fingerprint,
            "--connect-timeout",
            "3",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        out.stdout,
    )
}

#[test]
fn clear_one_line_errors_and_nonzero_exits() {
    let relay = start_relay("lockout_failures = 5");
    let good_fp = relay.fingerprint.clone();
    // Not a code at all.
    let (ok, err, out) = join_error(&relay, "not-a-code", &good_fp);
    assert!(
        !ok && err.contains("invalid session code")
            && err.trim().lines().count() == 1
            && out.is_empty(),
        "{err}"
    );
    // Wrong relay certificate.
    let code = String::from_utf8(Command::new(XTCP).arg("code").output().unwrap().stdout).unwrap();
    let code = code.trim();
    let (ok, err, _) = join_error(&relay, code, &"ab".repeat(32));
    assert!(
        !ok && err.contains("relay certificate mismatch") && err.trim().lines().count() == 1,
        "{err}"
    );
    // It names both fingerprints and the flag to use.
    assert!(
        err.contains(&format!("presented SHA-256 {good_fp}"))
            && err.contains(&format!("expected {}", "ab".repeat(32)))
            && err.contains("--relay-fingerprint"),
        "{err}"
    );
    // A host without the token (before the lockout, which also covers token guessing).
    let out = Command::new(XTCP)
        .args([
            "host",
            "--relay",
            &relay.addr,
            "--relay-fingerprint",
            &good_fp,
        ])
        .env_remove("XTCP_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("token") && !err.contains("locked"),
        "{err}"
    );
    assert!(err.contains("XTCP_TOKEN"), "says how to pass it: {err}");
    // Four unknown sessions (the failed token was the first failure), then
    // the source is slowed to one guess per second (spec/relay.md §9.2).
    for i in 0..4 {
        let (ok, err, out) = join_error(&relay, code, &good_fp);
        assert!(
            !ok && err.contains("unknown or expired session") && out.is_empty(),
            "attempt {i}: {err}"
        );
    }
    let t = std::time::Instant::now();
    let (ok, err, _) = join_error(&relay, code, &good_fp);
    assert!(
        !ok && err.contains("unknown or expired session") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(900),
        "the sixth guess waits for its slot: {:?}",
        t.elapsed()
    );
    // Unreachable relay.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let out = Command::new(XTCP)
        .args([
            "join",
            code,
            "--relay",
            &addr,
            "--relay-fingerprint",
            &good_fp,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("relay unreachable"),
        "{err}"
    );
}

#[test]
fn code_prints_a_parseable_fresh_code() {
    let a = Command::new(XTCP).arg("code").output().unwrap();
    let b = Command::new(XTCP).arg("code").output().unwrap();
    let (a, b) = (
        String::from_utf8(a.stdout).unwrap(),
        String::from_utf8(b.stdout).unwrap(),
    );
    assert_ne!(a, b);
    assert!(xtcp::secret::SessionSecret::parse(a.trim()).is_ok());
}

#[test]
fn relay_check_config_and_sigterm() {
    let dir = TempDir::new("cfg");
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:0\"\nself_signed = true\nlockout_failures = 0\n",
    )
    .unwrap();
    let out = Command::new(RELAY)
        .arg("--config")
        .arg(&bad)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lockout_failures"));
    let unknown = dir.0.join("unknown.toml");
    std::fs::write(
        &unknown,
        "listen = \"127.0.0.1:0\"\nself_signed = true\nno_such_key = 1\n",
    )
    .unwrap();
    let out = Command::new(RELAY)
        .arg("--config")
        .arg(&unknown)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let good = dir.0.join("good.toml");
    std::fs::write(&good, "listen = \"127.0.0.1:0\"\nself_signed = true\n").unwrap();
    let out = Command::new(RELAY)
        .arg("--config")
        .arg(&good)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No certificate at all: refused.
    let out = Command::new(RELAY)
        .args(["--listen", "127.0.0.1:0", "--check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // SIGTERM: drains and exits 0.
    let mut relay = start_relay("drain_secs = 1");
    let pid = nix::unistd::Pid::from_raw(relay.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = relay.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "relay did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}

//= spec/relay.md#RL-AUDIT-1
//= spec/relay.md#RL-TOK-1
#[test]
fn relay_audit_log_and_metrics_never_hold_secrets() {
    let dir = TempDir::new("audit");
    let log = dir.0.join("audit.jsonl");
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let relay = start_relay(&format!(
        "audit_log = \"{}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"",
        log.display()
    ));
    let mut host = Command::new(XTCP)
        .args([
            "host",
            "--relay",
            &relay.addr,
            "--relay-fingerprint",
            &relay.fingerprint,
            "--token",
            &relay.token,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hrx = stderr_lines(&mut host);
    let code = wait_line(&hrx, "code: ", &mut Vec::new());
    let mut guest = Command::new(XTCP)
        .args([
            "join",
            &code,
            "--relay",
            &relay.addr,
            "--relay-fingerprint",
            &relay.fingerprint,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    host.stdin
        .take()
        .unwrap()
        .write_all(b"hello guest")
        .unwrap();
    guest
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello host")
        .unwrap();
    let (h, g) = (
        host.wait_with_output().unwrap(),
        guest.wait_with_output().unwrap(),
    );
    assert_eq!(h.stdout, b"hello host");
    assert_eq!(g.stdout, b"hello guest");
    // The session-closed event is written when forwarding ends (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains("\"paired\":true") || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    for want in [
        "session_created",
        "session_joined",
        "session_paired",
        "session_closed",
    ] {
        assert!(names.contains(&want), "{want} missing in {names:?}");
    }
    // The paired session's record (the host's standby registration of the
    // next relay generation closes unpaired, spec/direct.md §4.8).
    let closed = events
        .iter()
        .find(|e| e["event"] == "session_closed" && e["paired"] == true)
        .unwrap();
    assert!(closed["bytes_host_to_guest"].as_u64().unwrap() > 11);
    assert!(closed["duration_secs"].as_f64().is_some());
    // Neither the code, the rendezvous id, nor the token appear.
    let rid = xtcp::tls::hex(
        &xtcp::secret::SessionSecret::parse(&code)
            .unwrap()
            .rendezvous_id(),
    );
    for secret in [code.as_str(), rid.as_str(), relay.token.as_str()] {
        assert!(!text.contains(secret), "audit log leaks {secret}");
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    std::io::Read::read_to_string(&mut s, &mut body).unwrap();
    assert!(
        body.contains("xtcp_relay_sessions_paired_total 1"),
        "{body}"
    );
}

/// `udp_listen` (spec/relay.md §8, §12): bad values are refused naming the key,
/// `"off"` and `--udp-listen off` turn the service off, and an address binds it.
#[test]
fn relay_udp_address_service_config() {
    let dir = TempDir::new("udp");
    let base = "listen = \"127.0.0.1:0\"\nself_signed = true\n";
    let check = |extra: &str| {
        let f = dir.0.join("check.toml");
        std::fs::write(&f, format!("{base}{extra}\n")).unwrap();
        let out = Command::new(RELAY)
            .arg("--config")
            .arg(&f)
            .arg("--check-config")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for bad in [
        "udp_listen = \"nonsense\"",
        "udp_listen = \"224.0.0.1:15000\"",
        "udp_listen = \"255.255.255.255:15000\"",
        "udp_listen = 15000",
    ] {
        let (ok, err) = check(bad);
        assert!(!ok && err.contains("udp_listen"), "{bad}: {err}");
    }
    for good in ["udp_listen = \"off\"", "udp_listen = \"[::1]:0\""] {
        let (ok, err) = check(good);
        assert!(ok, "{good}: {err}");
    }

    let run = |args: &[&str], extra: &str| {
        let f = dir.0.join(format!("run-{}.toml", args.len()));
        std::fs::write(&f, format!("{base}{extra}\n")).unwrap();
        let (mut child, rx) = spawn_relay(&f, args);
        let mut seen = Vec::new();
        let udp = wait_line(&rx, "UDP address service ", &mut seen);
        let _ = child.kill();
        let _ = child.wait();
        udp
    };
    // On an ephemeral port: the printed address is really bound (by the relay,
    // while it ran: binding it now succeeds again only after the kill above).
    let f = dir.0.join("bound.toml");
    std::fs::write(&f, format!("{base}udp_listen = \"127.0.0.1:0\"\n")).unwrap();
    let (mut child, rx) = spawn_relay(&f, &[]);
    let mut seen = Vec::new();
    let on = wait_line(&rx, "UDP address service on ", &mut seen);
    let addr: std::net::SocketAddr = on.parse().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{on}");
    let taken = std::net::UdpSocket::bind(addr);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        taken.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::AddrInUse),
        "the relay did not hold {addr}"
    );
    // Off in the file, and off by flag over an address in the file.
    assert_eq!(run(&[], "udp_listen = \"off\""), "off");
    assert_eq!(
        run(&["--udp-listen", "off"], "udp_listen = \"127.0.0.1:0\""),
        "off"
    );
}

#[test]
fn sighup_reloads_tokens_without_dropping_sessions() {
    let dir = TempDir::new("hup");
    let (old_token, old_line) = new_token();
    let (new_token_, new_line) = new_token();
    let cfg = dir.0.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nself_signed = true\nudp_listen = \"127.0.0.1:0\"\n{old_line}\n"
        ),
    )
    .unwrap();
    let (mut child, rx) = spawn_relay(&cfg, &[]);
    let mut seen = Vec::new();
    let fp = wait_line(&rx, "fingerprint: ", &mut seen);
    let addr = wait_line(&rx, "listening on ", &mut seen);
    // A session opened with the old token …
    let mut host = Command::new(XTCP)
        .args([
            "host",
            "--relay",
            &addr,
            "--relay-fingerprint",
            &fp,
            "--token",
            &old_token,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hrx = stderr_lines(&mut host);
    let code = wait_line(&hrx, "code: ", &mut Vec::new());
    let mut guest = Command::new(XTCP)
        .args(["join", &code, "--relay", &addr, "--relay-fingerprint", &fp])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let grx = stderr_lines(&mut guest);
    wait_line(&grx, "path: ", &mut Vec::new());
    // … then the operator swaps the token and sends SIGHUP.
    std::fs::write(
        &cfg,
        format!("listen = \"127.0.0.1:0\"\nself_signed = true\n{new_line}\n"),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_line(&rx, "reloaded", &mut seen);
    // The open session still works end to end.
    host.stdin.take().unwrap().write_all(b"still here").unwrap();
    guest.stdin.take().unwrap().write_all(b"me too").unwrap();
    let (h, g) = (
        host.wait_with_output().unwrap(),
        guest.wait_with_output().unwrap(),
    );
    assert_eq!(g.stdout, b"still here");
    assert_eq!(h.stdout, b"me too");
    // New sessions need the new token.
    let try_host = |token: &str| {
        let mut c = Command::new(XTCP)
            .args([
                "host",
                "--relay",
                &addr,
                "--relay-fingerprint",
                &fp,
                "--token",
                token,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let r = stderr_lines(&mut c);
        let first = r.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let _ = c.kill();
        let _ = c.wait();
        first
    };
    assert!(try_host(&old_token).contains("token"), "old token refused");
    assert!(
        try_host(&new_token_).starts_with("code: "),
        "new token accepted"
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn listen_connect(
    extra_l: &[&str],
    extra_c: &[&str],
    a: &[u8],
    b: &[u8],
) -> (std::process::Output, std::process::Output) {
    let dir = TempDir::new("xtcp-direct");
    let (fa, fb) = (dir.0.join("a"), dir.0.join("b"));
    std::fs::write(&fa, a).unwrap();
    std::fs::write(&fb, b).unwrap();
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let l = Command::new(XTCP)
        .args(["listen", &addr])
        .args(extra_l)
        .stdin(std::fs::File::open(&fa).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The listener binds at once; the dialer retries its SYN if it is early.
    let c = Command::new(XTCP)
        .args(["connect", &addr])
        .args(extra_c)
        .stdin(std::fs::File::open(&fb).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (l.wait_with_output().unwrap(), c.wait_with_output().unwrap())
}

#[test]
fn listen_and_connect_over_xtcp_with_and_without_tls() {
    let (a, b) = (pattern(2 << 20, 3), pattern(1 << 20, 4));
    let code = String::from_utf8(Command::new(XTCP).arg("code").output().unwrap().stdout).unwrap();
    let code = code.trim();
    let (l, c) = listen_connect(&["--code", code], &["--code", code], &a, &b);
    assert!(
        l.status.success() && c.status.success(),
        "{} | {}",
        String::from_utf8_lossy(&l.stderr),
        String::from_utf8_lossy(&c.stderr)
    );
    assert!(l.stdout == b && c.stdout == a, "TLS over XTCP byte-exact");
    let (l, c) = listen_connect(&["--no-tls"], &["--no-tls", "--progress"], &a, &b);
    assert!(l.status.success() && c.status.success());
    assert!(l.stdout == b && c.stdout == a, "raw XTCP byte-exact");
}

#[test]
fn listen_and_connect_fail_cleanly() {
    let code = |_: ()| {
        String::from_utf8(Command::new(XTCP).arg("code").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    let (c1, c2) = (code(()), code(()));
    let (l, c) = listen_connect(
        &["--code", &c1],
        &["--code", &c2],
        b"secret data",
        b"more secret data",
    );
    for (o, who) in [(&l, "listener"), (&c, "dialer")] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{who} must fail");
        assert!(
            o.stdout.is_empty(),
            "{who}: nothing from an unauthenticated peer reaches stdout"
        );
        assert!(
            err.contains("authentication failed") || err.contains("closed") || err.contains("TLS"),
            "{who}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{who}: {err}");
    }
    // Nobody listening: a clear unreachable error within the connect timeout.
    let t = Instant::now();
    let out = Command::new(XTCP)
        .args([
            "connect",
            &format!("127.0.0.1:{}", free_udp_port()),
            "--no-tls",
            "--connect-timeout",
            "2",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unreachable"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// Large streams both ways at once, byte-exact by SHA-256, through each kind
/// of descriptor `cli::stdio` meets: the listener's stdin is a pipe fed in
/// odd-sized writes and its stdout a file; the dialer's stdin is a file and
/// its stdout a pipe. Each side's stdin EOF half-closes while the other
/// direction is still running.
#[test]
fn listen_and_connect_move_large_streams_between_pipes_and_files() {
    use xtcp_lab::sha256_hex;
    let (a, b) = (pattern(40 << 20, 5), pattern(24 << 20, 6));
    let code = String::from_utf8(Command::new(XTCP).arg("code").output().unwrap().stdout).unwrap();
    for sec in [vec!["--code", code.trim()], vec!["--no-tls"]] {
        let dir = TempDir::new("xtcp-large");
        let (fb, l_out) = (dir.0.join("b"), dir.0.join("listener-out"));
        std::fs::write(&fb, &b).unwrap();
        let addr = format!("127.0.0.1:{}", free_udp_port());
        let mut l = Command::new(XTCP)
            .args(["listen", &addr])
            .args(&sec)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&l_out).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut l_in = l.stdin.take().unwrap();
        let feed = a.clone();
        let feeder = std::thread::spawn(move || {
            for c in feed.chunks(100_003) {
                l_in.write_all(c).unwrap();
            }
        });
        let c = Command::new(XTCP)
            .args(["connect", &addr])
            .args(&sec)
            .stdin(std::fs::File::open(&fb).unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
            .wait_with_output()
            .unwrap();
        feeder.join().unwrap();
        let l = l.wait_with_output().unwrap();
        assert!(
            l.status.success() && c.status.success(),
            "{sec:?}: {} | {}",
            String::from_utf8_lossy(&l.stderr),
            String::from_utf8_lossy(&c.stderr)
        );
        assert_eq!(
            sha256_hex(&c.stdout),
            sha256_hex(&a),
            "{sec:?}: listener stdin (pipe) → dialer stdout (pipe)"
        );
        let got = std::fs::read(&l_out).unwrap();
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&b),
            "{sec:?}: dialer stdin (file) → listener stdout (file)"
        );
    }
}

/// A reader that goes away: the writer fails at once with one line naming
/// stdout, not the connection.
#[test]
fn a_closed_stdout_is_a_one_line_stdout_error() {
    let dir = TempDir::new("xtcp-epipe");
    let fa = dir.0.join("a");
    std::fs::write(&fa, pattern(8 << 20, 7)).unwrap();
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let mut l = Command::new(XTCP)
        .args(["listen", &addr, "--no-tls"])
        .stdin(std::fs::File::open(&fa).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut c = Command::new(XTCP)
        .args(["connect", &addr, "--no-tls"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    std::io::Read::read_exact(&mut c.stdout.take().unwrap(), &mut first).unwrap();
    // The pipe's read end is closed here: the next write gets EPIPE.
    let t = Instant::now();
    let out = c.wait_with_output().unwrap();
    let _ = l.kill();
    let _ = l.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.starts_with("xtcp: stdout: "), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(t.elapsed() < Duration::from_secs(10));
}
