//! `xtcp send` / `xtcp receive`, tickets and secrets off the command line,
//! driven as a person would (loopback only, a real `xtcp-relay`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const XTCP: &str = env!("CARGO_BIN_EXE_xtcp");
const RELAY: &str = env!("CARGO_BIN_EXE_xtcp-relay");

mod common_cli;
use common_cli::{stderr_lines, wait_line};

/// The rest of a child's stderr, after it exits (bounded).
fn finish(mut child: Child, rx: mpsc::Receiver<String>, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after 30 s; saw {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The stderr pipe closes with the process.
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push(l);
    }
    status.success()
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "xtcp-transfer-{tag}-{}-{:?}",
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

fn start_relay() -> RelayProc {
    let dir = TempDir::new("relay");
    let out = Command::new(RELAY).arg("token").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_string();
    let line = text
        .lines()
        .find_map(|l| l.split_once("add to the relay config:").map(|x| x.1.trim()))
        .unwrap()
        .to_string();
    let cfg = dir.0.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nself_signed = true\nudp_listen = \"127.0.0.1:0\"\n{line}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(RELAY)
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let fingerprint = wait_line(&rx, "fingerprint: ", &mut seen);
    let addr = wait_line(&rx, "listening on ", &mut seen);
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

/// `xtcp send PATH` with the relay flags and the token in the environment;
/// returns the child, its stderr and the ticket it printed.
fn spawn_send(relay: &RelayProc, path: &Path) -> (Child, mpsc::Receiver<String>, String) {
    spawn_send_with(relay, path, &[])
}

/// [`spawn_send`] with extra arguments.
fn spawn_send_with(
    relay: &RelayProc,
    path: &Path,
    extra: &[&str],
) -> (Child, mpsc::Receiver<String>, String) {
    let mut c = Command::new(XTCP)
        .arg("send")
        .arg(path)
        .args([
            "--relay",
            &relay.addr,
            "--relay-fingerprint",
            &relay.fingerprint,
        ])
        .args(extra)
        .env("XTCP_TOKEN", &relay.token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut c);
    let mut seen = Vec::new();
    let ticket = wait_line(&rx, "ticket: ", &mut seen);
    let cmd = wait_line(&rx, "on the other machine run: ", &mut seen);
    assert_eq!(cmd, format!("xtcp receive {ticket}"));
    (c, rx, ticket)
}

/// `xtcp receive --yes --dir DIR` with the ticket on standard input.
fn receive(dir: &Path, ticket: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(XTCP)
        .args(["receive", "-", "--yes", "--dir"])
        .arg(dir)
        .args(extra)
        .envs(env.iter().copied())
        .env_remove("XTCP_RELAY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    writeln!(stdin, "{ticket}").unwrap();
    drop(stdin);
    c.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `this run moved N bytes (resumed at M)` from a report line.
fn moved(report: &str) -> (u64, u64) {
    let i = report.find("this run moved ").expect("report line");
    let rest = &report[i + "this run moved ".len()..];
    let n: u64 = rest.split(' ').next().unwrap().parse().unwrap();
    let j = rest.find("resumed at ").unwrap();
    let at: u64 = rest[j + "resumed at ".len()..]
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (n, at)
}

#[test]
fn send_and_receive_a_file_verified_and_never_overwrite_without_force() {
    let relay = start_relay();
    let dir = TempDir::new("send");
    let out = dir.0.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let data = pattern(5 << 20, 7);
    let src = dir.0.join("data.bin");
    std::fs::write(&src, &data).unwrap();

    let (s, srx, ticket) = spawn_send(&relay, &src);
    let r = receive(&out, &ticket, &[], &[]);
    let mut sseen = Vec::new();
    let sent_ok = finish(s, srx, &mut sseen);
    assert!(r.status.success(), "receiver: {}", text(&r));
    assert!(sent_ok, "sender: {sseen:?}");
    let got = std::fs::read(out.join("data.bin")).unwrap();
    assert!(got == data, "byte-exact");
    assert!(!out.join("data.bin.xtcp-partial").exists());
    let hash = xtcp::tls::hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
    assert!(
        text(&r).contains(&format!("SHA-256 {hash} verified")),
        "{}",
        text(&r)
    );
    assert!(
        sseen.iter().any(|l| l.contains("verified by the receiver")),
        "{sseen:?}"
    );
    assert_eq!(moved(&text(&r)), (5 << 20, 0));

    // Again: the file exists, so no --force, no overwrite; both sides say why.
    std::fs::write(out.join("data.bin"), b"keep me").unwrap();
    let (s, srx, ticket) = spawn_send(&relay, &src);
    let r = receive(&out, &ticket, &[], &[]);
    let mut sseen = Vec::new();
    assert!(!finish(s, srx, &mut sseen), "the sender fails: {sseen:?}");
    assert!(!r.status.success());
    let err = text(&r);
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("xtcp:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(sseen.iter().any(|l| l.contains("exists")), "{sseen:?}");
    assert_eq!(std::fs::read(out.join("data.bin")).unwrap(), b"keep me");

    // With --force it is replaced (the ticket as the argument this time).
    let (s, srx, ticket) = spawn_send(&relay, &src);
    let r = Command::new(XTCP)
        .args(["receive", &ticket, "--yes", "--force", "--dir"])
        .arg(&out)
        .env_remove("XTCP_RELAY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(finish(s, srx, &mut Vec::new()));
    assert!(r.status.success(), "{}", text(&r));
    assert!(std::fs::read(out.join("data.bin")).unwrap() == data);
}

#[test]
fn an_interrupted_transfer_resumes_and_moves_only_the_rest() {
    let relay = start_relay();
    let dir = TempDir::new("resume");
    let out = dir.0.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let size = 8 << 20;
    let cut = 3_000_000u64;
    let data = pattern(size, 9);
    let src = dir.0.join("big.bin");
    std::fs::write(&src, &data).unwrap();

    // First run: the receiver stops after `cut` bytes, as if killed. To
    // the sender that looks like a lost relay path (no CLOSE came): it
    // tries to set one up again for `--relay-resume` seconds, then fails.
    let (s, srx, ticket) = spawn_send_with(&relay, &src, &["--relay-resume", "2"]);
    let cut_s = cut.to_string();
    let r = receive(
        &out,
        &ticket,
        &[],
        &[("XTCP_TEST_RECEIVE_STOP_AFTER", &cut_s)],
    );
    let mut sseen = Vec::new();
    assert!(!finish(s, srx, &mut sseen), "the sender sees the break");
    assert!(!r.status.success());
    let partial = out.join("big.bin.xtcp-partial");
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), cut);
    assert!(!out.join("big.bin").exists());

    // Second run, same commands: only the rest moves.
    let (s, srx, ticket) = spawn_send(&relay, &src);
    let r = receive(&out, &ticket, &[], &[]);
    let mut sseen = Vec::new();
    assert!(finish(s, srx, &mut sseen), "sender: {sseen:?}");
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(moved(&text(&r)), (size as u64 - cut, cut));
    let report = sseen.iter().find(|l| l.contains("this run moved")).unwrap();
    assert_eq!(moved(report), (size as u64 - cut, cut));
    assert!(std::fs::read(out.join("big.bin")).unwrap() == data);
    assert!(!partial.exists());
}

/// `xtcp host` prints the command to run; `xtcp join -` takes the ticket
/// from standard input (not argv) and needs no relay flags.
#[test]
fn join_by_ticket_from_stdin_without_relay_flags() {
    let relay = start_relay();
    let mut host = Command::new(XTCP)
        .args([
            "host",
            "--relay",
            &relay.addr,
            "--relay-fingerprint",
            &relay.fingerprint,
        ])
        .env("XTCP_TOKEN", &relay.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hrx = stderr_lines(&mut host);
    let mut hseen = Vec::new();
    let ticket = wait_line(&hrx, "ticket: ", &mut hseen);
    let cmd = wait_line(&hrx, "on the other machine run: ", &mut hseen);
    assert_eq!(cmd, format!("xtcp join {ticket}"));
    let mut guest = Command::new(XTCP)
        .args(["join", "-", "--progress"])
        .env_remove("XTCP_RELAY")
        .env_remove("XTCP_CODE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let argv = std::fs::read(format!("/proc/{}/cmdline", guest.id())).unwrap();
    assert!(
        !String::from_utf8_lossy(&argv).contains(&ticket),
        "the ticket is not in argv"
    );
    let mut gin = guest.stdin.take().unwrap();
    // The first line is the ticket; the rest is data for the host.
    writeln!(gin, "{ticket}").unwrap();
    gin.write_all(b"hello host").unwrap();
    drop(gin);
    host.stdin
        .take()
        .unwrap()
        .write_all(b"hello guest")
        .unwrap();
    let h = std::thread::spawn(move || host.wait_with_output().unwrap());
    let g = guest.wait_with_output().unwrap();
    let h = h.join().unwrap();
    assert!(g.status.success(), "guest: {}", text(&g));
    assert!(h.status.success(), "host: {hseen:?}");
    assert_eq!(g.stdout, b"hello guest");
    assert_eq!(h.stdout, b"hello host");
    assert!(text(&g).contains("received 11 B"), "{}", text(&g));
}

/// The old forms keep working: a bare code with relay flags, from
/// `--code-file` and from `XTCP_CODE`; the token from `--token-file`.
#[test]
fn bare_code_from_a_file_or_the_environment_and_token_file() {
    let relay = start_relay();
    let dir = TempDir::new("code");
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, format!("{}\n", relay.token)).unwrap();
    for how in ["file", "env"] {
        let mut host = Command::new(XTCP)
            .args([
                "host",
                "--relay",
                &relay.addr,
                "--relay-fingerprint",
                &relay.fingerprint,
                "--token-file",
            ])
            .arg(&token_file)
            .env_remove("XTCP_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let hrx = stderr_lines(&mut host);
        let code = wait_line(&hrx, "code: ", &mut Vec::new());
        let mut cmd = Command::new(XTCP);
        cmd.args([
            "join",
            "--relay",
            &relay.addr,
            "--relay-fingerprint",
            &relay.fingerprint,
        ]);
        if how == "file" {
            let f = dir.0.join("code");
            std::fs::write(&f, &code).unwrap();
            cmd.arg("--code-file").arg(f).env_remove("XTCP_CODE");
        } else {
            cmd.env("XTCP_CODE", &code);
        }
        let mut guest = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        guest
            .stdin
            .take()
            .unwrap()
            .write_all(how.as_bytes())
            .unwrap();
        host.stdin.take().unwrap().write_all(b"ok").unwrap();
        let h = std::thread::spawn(move || host.wait_with_output().unwrap());
        let g = guest.wait_with_output().unwrap();
        let h = h.join().unwrap();
        assert!(g.status.success(), "{how}: {}", text(&g));
        assert_eq!(g.stdout, b"ok");
        assert_eq!(h.stdout, how.as_bytes());
    }
}
