//! A self-signed relay fleet and certificate changes, through the binaries
//! (loopback only): two `xtcp-relay --self-signed` processes trusted by two
//! pins, sessions on each (by code and by ticket), the mismatch error; and a
//! relay whose certificate files are replaced under SIGHUP
//! (`spec/relay.md` §5.1, §9.5, §10; `spec/session.md` §5).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use xtcp::relay::client::{create_session, join_session};
use xtcp::relay::{RelayClientConfig, RelayError, RelayTrust};

const XTCP: &str = env!("CARGO_BIN_EXE_xtcp");
const RELAY: &str = env!("CARGO_BIN_EXE_xtcp-relay");

mod common_cli;
use common_cli::{new_token, stderr_lines, until, wait_line, TempDir as Dir};

/// A relay process; its stderr goes to a file.
struct RelayProc {
    child: Child,
    addr: String,
    /// The SHA-256 it printed (self-signed) or the test computed (cert files), hex.
    fp: String,
    stderr: PathBuf,
    audit: PathBuf,
    dir: Dir,
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RelayProc {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    /// Bounded wait until stderr holds `needle` after byte `from`.
    fn wait_stderr(&self, needle: &str, from: usize) {
        until(&format!("{needle:?} on the relay's stderr"), || {
            self.stderr()
                .get(from..)
                .is_some_and(|s| s.contains(needle))
        });
    }
    /// The audit records of `event` for the session labelled `label`.
    fn audit_has(&self, event: &str, label: &str) -> bool {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["event"] == event && v["session"] == label)
    }
}

/// `xtcp-relay --config relay.toml` with `toml` (listen, UDP service and
/// audit log added; `{dir}` stands for the relay's own directory), stderr to
/// a file; waits for its address (and, for a self-signed relay, its
/// fingerprint).
fn start_relay(tag: &str, toml: &str) -> RelayProc {
    let dir = Dir::new(tag);
    let cfg = dir.0.join("relay.toml");
    let audit = dir.0.join("audit.log");
    let toml = toml.replace("{dir}", &dir.0.display().to_string());
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nudp_listen = \"127.0.0.1:0\"\naudit_log = \"{}\"\n{toml}\n",
            audit.display()
        ),
    )
    .unwrap();
    let stderr = dir.0.join("stderr");
    let child = Command::new(RELAY)
        .arg("--config")
        .arg(&cfg)
        .env("XTCP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut p = RelayProc {
        child,
        addr: String::new(),
        fp: String::new(),
        stderr,
        audit,
        dir,
    };
    let self_signed = toml.contains("self_signed = true");
    until("the relay's start lines", || {
        let s = p.stderr();
        s.contains("xtcp-relay listening on ") && (!self_signed || s.contains("fingerprint: "))
            || s.contains("xtcp-relay: ")
    });
    for l in BufReader::new(std::fs::File::open(&p.stderr).unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(a) = l.strip_prefix("xtcp-relay listening on ") {
            p.addr = a.trim().to_string();
        }
        if let Some(h) = l.strip_prefix("self-signed certificate sha256 fingerprint: ") {
            p.fp = h.trim().to_string();
        }
    }
    assert!(!p.addr.is_empty(), "relay started: {}", p.stderr());
    p
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[i % 4] ^ seed)
        .collect()
}

/// The relay's audit label of a ticket's session (`spec/relay.md` §9.3).
fn audit_label(ticket: &xtcp::ticket::Ticket) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"xtcp relay audit label");
    ctx.update(&ticket.secret.rendezvous_id());
    xtcp::tls::hex(&ctx.finish().as_ref()[..8])
}

/// How the guest of one session joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guest {
    /// The bare code, the relay list and both pins.
    Code,
    /// The ticket alone: no relay, no pin.
    Ticket,
    /// The bare code and the list, but only the other relay's pin: refused.
    WrongPin,
}

/// A two-relay self-signed fleet, two pins (issue 14 item 5): hosts given
/// the list and both pins land on either relay (rendezvous hashing, per
/// session); on each relay, a guest by code (list + pins) and a guest by
/// ticket alone move bytes exactly both ways, the relay's audit log shows
/// the pairing and the other relay's does not; a guest with only the other
/// relay's pin is refused with both fingerprints named.
#[test]
fn a_two_relay_self_signed_fleet_works_with_two_pins() {
    let (token, line) = new_token(RELAY);
    // Each relay its own config file and state_dir; the same token.
    let toml = format!("self_signed = true\nstate_dir = \"{{dir}}/state\"\n{line}");
    let relays = [start_relay("a", &toml), start_relay("b", &toml)];
    assert_ne!(relays[0].fp, relays[1].fp, "each relay has its own key");
    let data = Dir::new("data");
    let (a, b) = (pattern(1 << 20, 1), pattern(300_000, 2));
    let (fa, fb) = (data.0.join("a"), data.0.join("b"));
    std::fs::write(&fa, &a).unwrap();
    std::fs::write(&fb, &b).unwrap();
    let mut todo: Vec<(usize, Guest)> = (0..2)
        .flat_map(|r| [(r, Guest::Code), (r, Guest::Ticket), (r, Guest::WrongPin)])
        .collect();
    for _ in 0..48 {
        if todo.is_empty() {
            break;
        }
        let mut host = Command::new(XTCP)
            .args([
                "host",
                "--relay",
                &relays[0].addr,
                "--relay",
                &relays[1].addr,
            ])
            .args(["--relay-fingerprint", &relays[0].fp])
            .args(["--relay-fingerprint", &relays[1].fp])
            .env("XTCP_TOKEN", &token)
            .env_remove("XTCP_RELAY")
            .stdin(std::fs::File::open(&fa).unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let hrx = stderr_lines(&mut host);
        let mut hseen = Vec::new();
        let code = wait_line(&hrx, "code: ", &mut hseen);
        let ticket_text = wait_line(&hrx, "ticket: ", &mut hseen);
        let ticket = xtcp::ticket::Ticket::parse(&ticket_text).unwrap();
        // One entry: the relay the session lives on, pinned by the
        // certificate it presented (spec/session.md SE-TICKET-5).
        assert_eq!(ticket.relays.len(), 1);
        let r = relays
            .iter()
            .position(|p| p.addr == ticket.relays[0].addr)
            .expect("the ticket names a relay of the list");
        //= spec/session.md#SE-TICKET-5
        assert_eq!(
            ticket.relays[0].pin.map(|p| xtcp::tls::hex(&p)),
            Some(relays[r].fp.clone()),
            "the ticket pins the relay's own certificate"
        );
        let Some(i) = todo.iter().position(|(x, _)| *x == r) else {
            let _ = host.kill();
            let _ = host.wait();
            continue;
        };
        let (_, how) = todo.remove(i);
        eprintln!(
            "session {code}: relay {r} ({}), guest by {how:?}",
            relays[r].addr
        );
        let other = &relays[1 - r];
        let mut guest = Command::new(XTCP);
        guest.env_remove("XTCP_RELAY").env_remove("XTCP_CODE");
        match how {
            // The comma-separated forms of --relay and --relay-fingerprint.
            Guest::Code => guest.args([
                "join",
                &code,
                "--relay",
                &format!("{},{}", relays[0].addr, relays[1].addr),
                "--relay-fingerprint",
                &format!("{},{}", relays[0].fp, relays[1].fp),
            ]),
            Guest::Ticket => guest.args(["join", &ticket_text]),
            Guest::WrongPin => guest.args([
                "join",
                &code,
                "--relay",
                &relays[0].addr,
                "--relay",
                &relays[1].addr,
                "--relay-fingerprint",
                &other.fp,
            ]),
        };
        if how == Guest::WrongPin {
            let out = guest.stdin(Stdio::null()).output().unwrap();
            let _ = host.kill();
            let _ = host.wait();
            let err = String::from_utf8_lossy(&out.stderr);
            //= spec/relay.md#RL-TLS-6
            assert!(
                !out.status.success()
                    && err.trim().lines().count() == 1
                    && err.contains("relay certificate mismatch")
                    && err.contains(&format!("presented SHA-256 {}", relays[r].fp))
                    && err.contains(&format!("expected {}", other.fp)),
                "relay {r}: {err}"
            );
            assert!(out.stdout.is_empty(), "nothing on stdout");
            continue;
        }
        let mut guest = guest
            .stdin(std::fs::File::open(&fb).unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let grx = stderr_lines(&mut guest);
        let mut gseen = Vec::new();
        assert_eq!(wait_line(&grx, "path: ", &mut gseen), "relay");
        let h = std::thread::spawn(move || host.wait_with_output().unwrap());
        let gout = guest.wait_with_output().unwrap();
        let hout = h.join().unwrap();
        assert!(hout.status.success(), "host: {hseen:?}");
        assert!(gout.status.success(), "guest ({how:?}): {gseen:?}");
        assert!(hout.stdout == b, "host received the guest's bytes exactly");
        assert!(gout.stdout == a, "guest received the host's bytes exactly");
        // The pairing happened on relay r, not on the other one.
        let label = audit_label(&ticket);
        until("the pairing in relay r's audit log", || {
            relays[r].audit_has("session_paired", &label)
        });
        assert!(!other.audit_has("session_created", &label));
        assert!(!other.audit_has("session_paired", &label));
    }
    assert!(todo.is_empty(), "sessions never landed for {todo:?}");
    // Each relay kept its own key in its own state_dir.
    for p in &relays {
        assert!(p.dir.0.join("state").join("self-signed.key").exists());
    }
}

/// A certificate and key made by rcgen, PEM, and the certificate's SHA-256.
fn cert(name: &str) -> (String, String, [u8; 32]) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let mut fp = [0; 32];
    fp.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, ck.cert.der()).as_ref());
    (ck.cert.pem(), ck.signing_key.serialize_pem(), fp)
}

fn pinned(p: &RelayProc, pins: &[[u8; 32]]) -> RelayClientConfig {
    RelayClientConfig {
        relays: vec![p.addr.clone()],
        trust: RelayTrust::Fingerprints(pins.to_vec()),
        token: None,
        connect_timeout: Duration::from_secs(5),
    }
}

fn sighup(p: &RelayProc) {
    let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

/// Certificate reload (`spec/relay.md` §9.5): a relay on `cert`/`key` files
/// serves cert 1; the files are replaced by cert 2 and SIGHUP sent: a client
/// pinned to cert 2 connects, one pinned to cert 1 is refused naming both
/// fingerprints, one pinned to both connects, and the session paired before
/// the reload still carries bytes both ways. A broken certificate file under
/// SIGHUP leaves cert 2 in service and logs a warning.
#[test]
fn sighup_reloads_the_certificate_files() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (pem1, key1, fp1) = cert("localhost");
    let (pem2, key2, fp2) = cert("localhost");
    let files = Dir::new("files");
    let (cert_path, key_path) = (files.0.join("relay.crt"), files.0.join("relay.key"));
    std::fs::write(&cert_path, &pem1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    let p = start_relay(
        "reload",
        &format!(
            "cert = \"{}\"\nkey = \"{}\"\nallow_anonymous_hosts = true",
            cert_path.display(),
            key_path.display()
        ),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rid = |b: u8| [b; 16];
    // A session paired on cert 1.
    let (mut h, mut g) = rt.block_on(async {
        let w = create_session(&pinned(&p, &[fp1]), rid(1))
            .await
            .expect("pinned to cert 1: create");
        assert_eq!(w.fingerprint(), Some(fp1));
        let guest = pinned(&p, &[fp1]);
        let (h, g) = tokio::join!(w.paired(), join_session(&guest, rid(1)));
        (
            h.expect("host paired").stream,
            g.expect("guest paired").stream,
        )
    });
    // Swap the files, SIGHUP, wait until the relay says it serves cert 2.
    std::fs::write(&cert_path, &pem2).unwrap();
    std::fs::write(&key_path, &key2).unwrap();
    let mark = p.stderr().len();
    sighup(&p);
    p.wait_stderr(
        &format!(
            "reloaded certificate, sha256 fingerprint: {}",
            xtcp::tls::hex(&fp2)
        ),
        mark,
    );
    let check = |accepted: &[[u8; 32]], refused: &[u8; 32], n: u8| {
        rt.block_on(async {
            for (i, pins) in [vec![*refused, accepted[0]], accepted.to_vec()]
                .into_iter()
                .enumerate()
            {
                let w = create_session(&pinned(&p, &pins), rid(n + i as u8))
                    .await
                    .unwrap_or_else(|e| panic!("pins {pins:?}: {e}"));
                assert_eq!(w.fingerprint(), Some(accepted[0]));
            }
            let e = create_session(&pinned(&p, &[*refused]), rid(n + 2))
                .await
                .expect_err("pinned to the other certificate");
            let RelayError::CertificateMismatch(msg) = &e else {
                panic!("{e:?}")
            };
            //= spec/relay.md#RL-TLS-6
            assert!(
                msg.contains(&format!(
                    "presented SHA-256 {}",
                    xtcp::tls::hex(&accepted[0])
                )) && msg.contains(&format!("expected {}", xtcp::tls::hex(refused))),
                "{msg}"
            );
        })
    };
    //= spec/relay.md#RL-TLS-5
    check(&[fp2], &fp1, 10);
    // The session paired before the reload is untouched.
    rt.block_on(async {
        h.write_all(b"after the reload").await.unwrap();
        let mut got = [0u8; 16];
        g.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after the reload");
        g.write_all(b"still paired").await.unwrap();
        let mut got = [0u8; 12];
        h.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still paired");
    });
    // A broken certificate file: the relay warns and keeps cert 2.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    let mark = p.stderr().len();
    sighup(&p);
    p.wait_stderr("keeping the old certificate", mark);
    let tail = p.stderr()[mark..].to_string();
    assert!(tail.contains("WARN"), "logged as a warning: {tail}");
    assert!(!tail.contains("reloaded certificate"), "{tail}");
    //= spec/relay.md#RL-RELOAD-1
    check(&[fp2], &fp1, 20);
    // A certificate that does not parse at all (no PEM block): the same.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    let mark = p.stderr().len();
    sighup(&p);
    p.wait_stderr("keeping the old certificate", mark);
    check(&[fp2], &fp1, 30);
    // Good files again: cert 1 is back.
    std::fs::write(&cert_path, &pem1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    let mark = p.stderr().len();
    sighup(&p);
    p.wait_stderr("reloaded certificate", mark);
    check(&[fp1], &fp2, 40);
}

/// A malformed pin among several is named, and nothing is dialled.
#[test]
fn a_malformed_pin_in_the_list_is_named() {
    let code = Command::new(XTCP).arg("code").output().unwrap().stdout;
    let code = String::from_utf8(code).unwrap();
    let out = Command::new(XTCP)
        .args(["join", code.trim(), "--relay", "127.0.0.1:9"])
        .args(["--relay-fingerprint", &format!("{},zz", "ab".repeat(32))])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.trim().lines().count() == 1
            && err.contains("--relay-fingerprint \"zz\": must be 64 hex digits")
            && !err.contains("bare code"),
        "{err}"
    );
}
