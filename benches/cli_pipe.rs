//! How fast the `xtcp` command line moves a file through stdin/stdout, next to
//! the library itself and to `socat`, over one veth between two namespaces.
//!
//! ```text
//!   namespace A (sender, core 0) ── veth, MTU 1500, defaults ── namespace B (receiver, core 1)
//!   198.18.6.1/24                                                198.18.6.2/24
//!   xtcp connect <file          (file)                            xtcp listen >file
//!   cat file | xtcp connect     (pipe)                            xtcp listen | sink
//! ```
//!
//! Cases (each with TLS and without):
//! - `cli`: `xtcp connect` → `xtcp listen` (`--code` or `--no-tls`), stdin from
//!   the payload file (or `cat FILE |`), stdout to a file (or a pipe to a sink
//!   that reads 256 KiB at a time);
//! - `lib`: an in-process `XtcpEndpoint` pair (what `benches/transport.rs` runs),
//!   64 KiB writes from memory, reads into memory, on a multi-threaded tokio
//!   runtime (`mt rt`, as the `xtcp` binary's) and on a current-thread one
//!   (`ct rt`, as `benches/transport.rs`'s);
//! - `socat`: `socat -u -b 262144` over kernel TCP, plain and OpenSSL TLS 1.3
//!   (a self-signed certificate made with `openssl req -x509`, `verify=0`).
//!
//! Each figure is the receiver's goodput from its first byte to its last:
//! for a file, the parent polls the output's size every millisecond; for a
//! pipe and the library, the receiving process times itself. The CPU column
//! is both ends' CPU time (sender, receiver and `cat` / the sink, from
//! `getrusage(RUSAGE_CHILDREN)`) per GiB. Every transfer is checked
//! byte-exact (SHA-256). Rounds alternate the cases and binaries so
//! that a busy machine slows all of them alike; the table gives the median.
//!
//! ```sh
//! cargo bench --bench cli_pipe                              # 3 rounds, 256 MiB
//! cargo bench --bench cli_pipe -- --xtcp old=/tmp/xtcp-old --xtcp new=target/release/xtcp
//! cargo bench --bench cli_pipe -- --case cli-tls --mode pipe --rounds 5 --mib 64
//! ```
//! Needs root, `ip`, `taskset`, `socat` and `openssl` (the socat rows are
//! skipped with a note when either is missing).

use std::io::{Read, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use xtcp_lab::{payload, sha256_hex, veth, Netns};

const SEED: u64 = 0x636c_6970;
const A_CIDR: &str = "198.18.6.1/24";
const B_CIDR: &str = "198.18.6.2/24";
const B_IP: &str = "198.18.6.2";
const SENDER_CORE: u32 = 0;
const RECEIVER_CORE: u32 = 1;
/// Library case: default application write and read size (as `benches/transport.rs`).
const LIB_KIB: usize = 64;
/// Sink read size.
const SINK_CHUNK: usize = 256 << 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Cli,
    Lib,
    Socat,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    File,
    Pipe,
}

struct Opts {
    bins: Vec<(String, String)>,
    cases: Vec<String>,
    modes: Vec<Mode>,
    rounds: usize,
    mib: usize,
    pin: bool,
    lib_kib: usize,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        bins: Vec::new(),
        cases: Vec::new(),
        modes: Vec::new(),
        rounds: 3,
        mib: 256,
        pin: true,
        lib_kib: LIB_KIB,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--xtcp" => {
                let v = val()?;
                let (l, p) = v.split_once('=').unwrap_or(("cli", &v));
                o.bins.push((l.to_owned(), p.to_owned()));
            }
            "--case" => o.cases.push(val()?),
            "--mode" => o.modes.push(match val()?.as_str() {
                "file" => Mode::File,
                "pipe" => Mode::Pipe,
                m => return Err(format!("--mode {m}: file or pipe")),
            }),
            "--rounds" => o.rounds = val()?.parse().map_err(|_| "--rounds: a number")?,
            "--mib" => o.mib = val()?.parse().map_err(|_| "--mib: a number")?,
            "--no-pin" => o.pin = false,
            "--lib-kib" => o.lib_kib = val()?.parse().map_err(|_| "--lib-kib: a number")?,
            "-h" | "--help" => {
                return Err("flags: --xtcp [LABEL=]PATH (repeatable), --case cli-tls|cli-raw|lib-tls|lib-raw|socat-tls|socat-tcp (repeatable), --mode file|pipe, --rounds N, --mib N, --no-pin, --lib-kib N (library write/read size, 64)".into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.bins.is_empty() {
        o.bins
            .push(("cli".into(), env!("CARGO_BIN_EXE_xtcp").into()));
    }
    if o.modes.is_empty() {
        o.modes = vec![Mode::File, Mode::Pipe];
    }
    Ok(o)
}

/// One measured configuration: what runs, with or without TLS, how stdio is wired.
#[derive(Clone)]
struct Job {
    kind: Kind,
    tls: bool,
    mode: Mode,
    /// The `xtcp` binary (cli) and its label.
    bin: Option<(String, String)>,
    /// Library: a multi-threaded runtime (as the binary's) instead of a
    /// current-thread one (as `benches/transport.rs`).
    multi: bool,
}

impl Job {
    fn case(&self) -> String {
        let t = match (self.kind, self.tls) {
            (Kind::Socat, false) => "tcp",
            (_, true) => "tls",
            (_, false) => "raw",
        };
        let k = match self.kind {
            Kind::Cli => "cli",
            Kind::Lib => "lib",
            Kind::Socat => "socat",
        };
        format!("{k}-{t}")
    }
    fn label(&self) -> String {
        let mode = match (self.kind, self.mode) {
            (Kind::Lib, _) if self.multi => "mem→mem, mt rt",
            (Kind::Lib, _) => "mem→mem, ct rt",
            (_, Mode::File) => "file→file",
            (_, Mode::Pipe) => "pipe→pipe",
        };
        match &self.bin {
            Some((l, _)) => format!("{} {mode} [{l}]", self.case()),
            None => format!("{} {mode}", self.case()),
        }
    }
}

struct Lab {
    a: Netns,
    b: Netns,
    dir: std::path::PathBuf,
    file: String,
    len: usize,
    sha: String,
    pin: bool,
    /// Library write/read size, KiB.
    lib_kib: usize,
    /// The session code both sides share (TLS cases).
    code: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new(len: usize, pin: bool, lib_kib: usize) -> Result<Lab, String> {
        let a = Netns::new("cA").map_err(|e| format!("netns: {e}"))?;
        let b = Netns::new("cB").map_err(|e| format!("netns: {e}"))?;
        veth(&a, "eth0", A_CIDR, &b, "eth0", B_CIDR, 1500).map_err(|e| format!("veth: {e}"))?;
        let dir = std::env::temp_dir().join(format!("xtcp-cli-pipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let data = payload(SEED, len);
        let sha = sha256_hex(&data);
        let file = dir.join("payload");
        std::fs::write(&file, &data).map_err(|e| format!("payload: {e}"))?;
        let file = file.to_str().ok_or("temp dir not UTF-8")?.to_owned();
        let code = xtcp::secret::SessionSecret::generate()
            .map_err(|e| format!("code: {e}"))?
            .code();
        Ok(Lab {
            code,
            a,
            b,
            dir,
            file,
            len,
            sha,
            pin,
            lib_kib,
        })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// `sh -c SCRIPT` in a namespace, pinned to `core` (with everything it starts).
    fn sh(&self, ns: &Netns, core: u32, script: &str) -> Result<Child, String> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns.name()]);
        if self.pin {
            c.args(["taskset", "-c", &core.to_string()]);
        }
        c.args(["sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {script}: {e}"))
    }

    /// Make the certificate socat's TLS listener presents.
    fn make_cert(&self) -> Result<(), String> {
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=bench.xtcp.invalid", "-keyout"])
            .args([self.path("key.pem"), "-out".into(), self.path("cert.pem")])
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl req: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }
}

/// Shell-quote a path (they are ours: no quote inside).
fn q(s: &str) -> String {
    format!("'{s}'")
}

/// The receiver's and the sender's shell commands for `job` (`out`: output file).
fn scripts(lab: &Lab, job: &Job, port: u16, out: &str) -> (String, String) {
    let me = std::env::current_exe().expect("current_exe");
    let sink = format!("{} --role sink --len {}", q(&me.to_string_lossy()), lab.len);
    let (rx_to, tx_from) = match job.mode {
        Mode::File => (format!(">{}", q(out)), format!("<{}", q(&lab.file))),
        Mode::Pipe => (format!("| {sink}"), String::new()),
    };
    let cat = match job.mode {
        Mode::File => String::new(),
        Mode::Pipe => format!("cat {} | ", q(&lab.file)),
    };
    match job.kind {
        Kind::Cli => {
            let bin = q(&job.bin.as_ref().expect("cli job has a binary").1);
            let sec = if job.tls {
                format!("--code {}", lab.code)
            } else {
                "--no-tls".into()
            };
            (
                format!("{bin} listen {B_IP}:{port} {sec} </dev/null {rx_to}"),
                format!("{cat}{bin} connect {B_IP}:{port} {sec} {tx_from} >/dev/null"),
            )
        }
        Kind::Socat => {
            let (l, c) = if job.tls {
                (
                    format!(
                        "OPENSSL-LISTEN:{port},reuseaddr,cert={},key={},verify=0",
                        lab.path("cert.pem"),
                        lab.path("key.pem")
                    ),
                    format!("OPENSSL:{B_IP}:{port},verify=0"),
                )
            } else {
                (
                    format!("TCP-LISTEN:{port},reuseaddr"),
                    format!("TCP:{B_IP}:{port}"),
                )
            };
            (
                format!("socat -u -b 262144 {l} STDOUT {rx_to}"),
                format!("{cat}socat -u -b 262144 STDIN {c} {tx_from}"),
            )
        }
        Kind::Lib => {
            let me = q(&me.to_string_lossy());
            let mut t = format!("--kib {}", lab.lib_kib);
            if job.tls {
                t.push_str(&format!(" --code {}", lab.code));
            }
            if job.multi {
                t.push_str(" --multi");
            }
            (
                format!("{me} --role lib-recv --len {} --port {port} {t}", lab.len),
                format!("{me} --role lib-send --len {} --port {port} {t}", lab.len),
            )
        }
    }
}

/// Wait for `c` to exit successfully before `deadline`; its stdout on success.
fn finish(c: &mut Child, what: &str, deadline: Instant) -> Result<String, String> {
    loop {
        match c.try_wait().map_err(|e| format!("{what}: wait: {e}"))? {
            Some(st) => {
                let mut out = String::new();
                let mut err = String::new();
                if let Some(mut o) = c.stdout.take() {
                    let _ = o.read_to_string(&mut out);
                }
                if let Some(mut e) = c.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                if !st.success() {
                    return Err(format!("{what}: {st}; stderr: {}", err.trim()));
                }
                return Ok(out);
            }
            None if Instant::now() > deadline => {
                let _ = c.kill();
                let _ = c.wait();
                return Err(format!("{what}: did not finish in time (killed)"));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Kill a child's whole pipeline on an error path: `ip netns exec` execs
/// `taskset`, which execs `sh`; the pipeline's processes are its children.
struct Guard(Vec<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = Command::new("pkill")
                    .args(["-KILL", "-P", &pid.to_string()])
                    .status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CPU seconds (user + system) of this process's waited-for descendants.
fn children_cpu() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    tv(u.user_time()) + tv(u.system_time())
}

/// One transfer: Gbit/s from the receiver's first to its last byte, and the
/// CPU seconds per GiB of both ends together (sender, receiver, `cat`, sink;
/// not the sink's checksum).
fn run_one(lab: &Lab, job: &Job, port: u16) -> Result<(f64, f64), String> {
    let cpu0 = children_cpu();
    let out = lab.path("out");
    let _ = std::fs::remove_file(&out);
    let (rx, tx) = scripts(lab, job, port, &out);
    let mut g = Guard(Vec::new());
    g.0.push(lab.sh(&lab.b, RECEIVER_CORE, &rx)?);
    // Let the receiver bind (the xtcp dialer retries; socat would not).
    std::thread::sleep(Duration::from_millis(300));
    g.0.push(lab.sh(&lab.a, SENDER_CORE, &tx)?);
    let deadline = Instant::now() + Duration::from_secs(120);
    let watched = (job.kind != Kind::Lib && job.mode == Mode::File).then(|| {
        let mut first = None;
        loop {
            let n = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            if n > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if n >= lab.len as u64 || Instant::now() > deadline {
                break first.map(|f| f.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let mut rxc = g.0.remove(0);
    let r = finish(&mut rxc, "receiver", deadline);
    let mut txc = g.0.remove(0);
    let s = finish(&mut txc, "sender", Instant::now() + Duration::from_secs(15));
    let (r, _) = (r?, s?);
    let cpu = children_cpu() - cpu0;
    let (secs, sha, hash_cpu) = match watched {
        Some(secs) => {
            let secs = secs.ok_or("no output")?;
            let data = std::fs::read(&out).map_err(|e| format!("read output: {e}"))?;
            (secs, sha256_hex(&data), 0.0)
        }
        None => {
            // `RESULT <secs> <bytes> <sha256>` from the sink or the library receiver.
            let l = r
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .ok_or(format!("receiver printed no RESULT: {r}"))?;
            let f: Vec<&str> = l.split_whitespace().collect();
            let secs: f64 = f.first().and_then(|s| s.parse().ok()).ok_or("bad RESULT")?;
            let sha = f.get(2).map(|s| s.to_string()).unwrap_or_default();
            let hash_cpu = f.get(3).and_then(|s| s.parse().ok()).unwrap_or(0.0);
            (secs, sha, hash_cpu)
        }
    };
    let _ = std::fs::remove_file(&out);
    if sha != lab.sha {
        return Err(format!("PAYLOAD MISMATCH: {} received {sha}", job.label()));
    }
    let gib = lab.len as f64 / f64::from(1u32 << 30);
    Ok((lab.len as f64 * 8.0 / secs / 1e9, (cpu - hash_cpu) / gib))
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn jobs(o: &Opts, socat: bool) -> Vec<Job> {
    let mut v = Vec::new();
    for &mode in &o.modes {
        for tls in [true, false] {
            for b in &o.bins {
                v.push(Job {
                    kind: Kind::Cli,
                    tls,
                    mode,
                    bin: Some(b.clone()),
                    multi: true,
                });
            }
            if socat {
                v.push(Job {
                    kind: Kind::Socat,
                    tls,
                    mode,
                    bin: None,
                    multi: true,
                });
            }
        }
    }
    for tls in [true, false] {
        for multi in [true, false] {
            v.push(Job {
                kind: Kind::Lib,
                tls,
                mode: Mode::File,
                bin: None,
                multi,
            });
        }
    }
    v.retain(|j| o.cases.is_empty() || o.cases.contains(&j.case()));
    v
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn parent(args: &[String]) -> ExitCode {
    let o = match parse_opts(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    xtcp_lab::require_netns();
    let lab = match Lab::new(o.mib << 20, o.pin, o.lib_kib) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    let socat = tool("socat") && lab.make_cert().is_ok();
    if !socat {
        println!("socat or openssl missing: no socat rows (apt-get install socat openssl)");
    }
    let jobs = jobs(&o, socat);
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); jobs.len()];
    let mut failures = Vec::new();
    let mut port = 7200u16;
    for round in 0..o.rounds {
        // Alternate the order as well, so no case always follows the same one.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..jobs.len()).collect()
        } else {
            (0..jobs.len()).rev().collect()
        };
        for i in order {
            port += 1;
            match run_one(&lab, &jobs[i], port) {
                Ok((g, c)) => {
                    eprintln!(
                        "round {round}: {:<32} {g:.2} Gbit/s, {c:.2} CPU s/GiB",
                        jobs[i].label()
                    );
                    results[i].push((g, c));
                }
                Err(e) => {
                    eprintln!("round {round}: {}: {e}", jobs[i].label());
                    failures.push(format!("{}: {e}", jobs[i].label()));
                }
            }
        }
    }
    println!(
        "\n{} MiB over a veth (MTU 1500), sender core {SENDER_CORE}, receiver core {RECEIVER_CORE}{}; library I/O in {} KiB; Gbit/s, receiver's first to last byte",
        o.mib,
        if o.pin { "" } else { " (not pinned)" },
        o.lib_kib,
    );
    println!(
        "{:<34} {:>7} {:>9}  runs (Gbit/s)",
        "case", "Gbit/s", "CPU s/GiB"
    );
    for (j, r) in jobs.iter().zip(&results) {
        let g: Vec<f64> = r.iter().map(|x| x.0).collect();
        let c: Vec<f64> = r.iter().map(|x| x.1).collect();
        let runs: Vec<String> = g.iter().map(|g| format!("{g:.2}")).collect();
        // The library children also make and hash the payload: no CPU figure.
        let cpu = match j.kind {
            Kind::Lib => "-".to_string(),
            _ => format!("{:.2}", median(&c)),
        };
        println!(
            "{:<34} {:>7.2} {cpu:>9}  {}",
            j.label(),
            median(&g),
            runs.join(" ")
        );
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("FAILURES:\n{}", failures.join("\n"));
        ExitCode::FAILURE
    }
}

// ───────────────────────────── children ─────────────────────────────

fn arg(args: &[String], k: &str) -> Option<String> {
    args.iter()
        .position(|a| a == k)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn self_cpu() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    tv(u.user_time()) + tv(u.system_time())
}

/// Read stdin to the end (256 KiB reads) into memory; time first to last byte.
fn sink(len: usize) -> Result<String, String> {
    let mut buf = vec![0xa5u8; len + SINK_CHUNK];
    let mut stdin = std::io::stdin().lock();
    let mut n = 0;
    let mut first = None;
    let mut last = Instant::now();
    loop {
        if n + SINK_CHUNK > buf.len() {
            buf.resize(n + SINK_CHUNK, 0);
        }
        let k = stdin
            .read(&mut buf[n..n + SINK_CHUNK])
            .map_err(|e| format!("sink: {e}"))?;
        if k == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        n += k;
        if n == len {
            last = Instant::now();
        }
    }
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    let cpu0 = self_cpu();
    let sha = sha256_hex(&buf[..n]);
    Ok(format!("RESULT {secs} {n} {sha} {}", self_cpu() - cpu0))
}

async fn lib(args: &[String], send: bool) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use xtcp::transport::{EndpointOptions, XtcpEndpoint};
    let len: usize = arg(args, "--len")
        .and_then(|v| v.parse().ok())
        .ok_or("--len")?;
    let port: u16 = arg(args, "--port")
        .and_then(|v| v.parse().ok())
        .ok_or("--port")?;
    let code = arg(args, "--code");
    let chunk = arg(args, "--kib")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(LIB_KIB)
        << 10;
    let addr = std::net::SocketAddr::from((B_IP.parse::<std::net::Ipv4Addr>().unwrap(), port));
    let bind = if send {
        "0.0.0.0:0".parse().unwrap()
    } else {
        addr
    };
    let e = |w: &'static str| move |e: std::io::Error| format!("{w}: {e}");
    let opts = EndpointOptions {
        listen: !send,
        ..EndpointOptions::default()
    };
    let ep = XtcpEndpoint::bind(bind, opts).map_err(e("bind"))?;
    let stream = if send {
        ep.connect(addr)
            .await
            .map_err(|x| format!("connect: {x}"))?
    } else {
        ep.accept().await.map_err(|x| format!("accept: {x}"))?
    };
    let waiter = stream.close_waiter();
    let mut s: Box<dyn Io> = if let Some(code) = code {
        let secret = xtcp::secret::SessionSecret::parse(&code).map_err(|x| x.to_string())?;
        let role = if send {
            xtcp::e2e::Role::Guest
        } else {
            xtcp::e2e::Role::Host
        };
        let opts = Default::default();
        let s = xtcp::e2e::handshake(stream, role, &secret, &opts).await;
        Box::new(s.map_err(|x| format!("handshake: {x}"))?)
    } else {
        Box::new(stream)
    };
    let mut report = String::new();
    if send {
        let data = payload(SEED, len);
        for c in data.chunks(chunk) {
            s.write_all(c).await.map_err(e("write"))?;
        }
        s.shutdown().await.map_err(e("shutdown"))?;
        let mut b = [0u8; 64];
        while s.read(&mut b).await.map_err(e("drain"))? > 0 {}
    } else {
        let mut buf = vec![0xa5u8; len + chunk];
        let (mut n, mut first) = (0, None);
        loop {
            let k = s.read(&mut buf[n..n + chunk]).await.map_err(e("read"))?;
            if k == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            n += k;
            if n == len {
                let secs = first.map_or(0.0, |f: Instant| f.elapsed().as_secs_f64());
                report = format!("RESULT {secs} {n} {}", sha256_hex(&buf[..n]));
            }
        }
        s.shutdown().await.map_err(e("shutdown"))?;
    }
    drop(s);
    waiter.wait().await.map_err(|x| format!("close: {x}"))?;
    ep.flush().await;
    tokio::time::sleep(waiter.linger()).await;
    Ok(report)
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The library children's runtime: current-thread (as `benches/transport.rs`)
/// or, with `--multi`, multi-threaded (as the `xtcp` binary).
fn runtime(multi: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}

fn child(args: &[String]) -> ExitCode {
    let role = arg(args, "--role").unwrap_or_default();
    let r = match role.as_str() {
        "sink" => arg(args, "--len")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| "--len".to_string())
            .and_then(sink),
        "lib-send" | "lib-recv" => runtime(args.iter().any(|a| a == "--multi"))
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(async {
                    let f = lib(args, role == "lib-send");
                    match tokio::time::timeout(Duration::from_secs(120), f).await {
                        Ok(r) => r,
                        Err(_) => Err("timed out".into()),
                    }
                })
            }),
        r => Err(format!("unknown role {r}")),
    };
    match r {
        Ok(line) => {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{role}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--role") {
        child(&args)
    } else {
        parent(&args)
    }
}
