//! `xtcp demo`: an embedded relay on loopback, a host and a guest in one
//! process; both directions at once, verified with SHA-256, and what the
//! relay saw (its byte counts, nothing else).

use std::fmt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xtcp::relay::{server, Relay, RelayClientConfig, RelayConfig, RelayTrust};
use xtcp::{e2e::E2eOptions, Options};

/// A demo failure.
#[derive(Debug)]
pub struct DemoError(String);

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DemoError {}

fn err(e: impl fmt::Display) -> DemoError {
    DemoError(e.to_string())
}

/// Deterministic pseudo-random payload (xorshift), different per seed.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn sha256(b: &[u8]) -> String {
    xtcp::tls::hex(&ring::digest::digest(&ring::digest::SHA256, b).as_ref()[..8])
}

/// Send `data` and read everything the peer sends, at once; returns what was read.
pub async fn exchange<S>(s: S, data: &[u8]) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(s);
    let send = async {
        for chunk in data.chunks(64 * 1024) {
            wr.write_all(chunk).await?;
        }
        wr.shutdown().await
    };
    let recv = async {
        let mut got = Vec::with_capacity(data.len());
        rd.read_to_end(&mut got).await?;
        Ok(got)
    };
    let ((), got) = tokio::try_join!(send, recv)?;
    Ok(got)
}

/// The direct paths of the demo: `udp`, XTCP over UDP hole punching (direct
/// TCP off, no UDP window) instead of TCP.
fn direct_options(udp: bool) -> xtcp::DirectOptions {
    if udp {
        xtcp::DirectOptions {
            tcp: false,
            udp_after: Duration::ZERO,
            ..Default::default()
        }
    } else {
        xtcp::DirectOptions::default()
    }
}

/// Start the embedded relay on loopback (self-signed TLS, one token) and
/// the client settings that trust it by fingerprint.
async fn start_relay() -> Result<(Relay, RelayClientConfig), DemoError> {
    let cert = xtcp::tls::self_signed(&["localhost"]).map_err(err)?;
    let fp = xtcp::tls::fingerprint(&cert.chain[0]);
    let token = "demo-token";
    let cfg = RelayConfig {
        listen: "127.0.0.1:0".parse().map_err(err)?,
        token_hashes: vec![server::token_hash(token)],
        udp_listen: Some("127.0.0.1:0".parse().map_err(err)?),
        ..RelayConfig::default()
    };
    let relay = Relay::start(
        cfg,
        server::server_tls(cert.chain, cert.key).map_err(err)?,
        None,
    )
    .await
    .map_err(err)?;
    let addr = relay.local_addr();
    println!(
        "relay    listening on {addr} (TLS 1.3, self-signed, sha256 {}…)",
        &fp[..16]
    );
    let mut fpb = [0u8; 32];
    fpb.copy_from_slice(&xtcp::tls::unhex(&fp).ok_or_else(|| err("fingerprint"))?);
    let relay_cfg = RelayClientConfig {
        relays: vec![addr.to_string()],
        trust: RelayTrust::pinned(fpb),
        token: Some(token.into()),
        connect_timeout: Duration::from_secs(10),
    };
    Ok((relay, relay_cfg))
}

/// Path changes, each with its time after the pairing.
type PathLog = std::sync::Arc<std::sync::Mutex<Vec<(Duration, xtcp::Path)>>>;

/// Record the session's path changes as they happen, timed from `t_paired`.
fn spawn_path_log(
    mut ev: tokio::sync::watch::Receiver<xtcp::Path>,
    t_paired: Instant,
) -> (tokio::task::JoinHandle<()>, PathLog) {
    let log = PathLog::default();
    let path_log = {
        let log = log.clone();
        tokio::spawn(async move {
            // Bounded: a session changes path a handful of times.
            for _ in 0..64 {
                if ev.changed().await.is_err() {
                    break;
                }
                let p = *ev.borrow_and_update();
                if let Ok(mut l) = log.lock() {
                    l.push((t_paired.elapsed(), p));
                }
            }
        })
    };
    (path_log, log)
}

/// Print the path changes, the checksums of both directions and the rate;
/// returns whether each side got what the other sent.
fn report_transfer(log: &PathLog, mib: usize, dt: f64, sent: [&[u8]; 2], got: [&[u8]; 2]) -> bool {
    let [a, b] = sent;
    let [got_g, got_h] = got;
    let n = mib * 1024 * 1024;
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    let mut line = String::from("path     relay");
    for (at, p) in &log {
        line.push_str(&format!(
            " → {p} ({:.1} ms after pairing)",
            at.as_secs_f64() * 1e3
        ));
    }
    println!("{line}");
    let ok_hg = got_h == a;
    let ok_gh = got_g == b;
    println!(
        "host→guest {} MiB  sha256 {} {}   guest→host {} MiB  sha256 {} {}",
        mib,
        sha256(got_h),
        if ok_hg { "ok" } else { "MISMATCH" },
        mib,
        sha256(got_g),
        if ok_gh { "ok" } else { "MISMATCH" }
    );
    println!(
        "moved    {:.1} MiB in {:.3} s: {:.0} Mbit/s each way, {:.0} Mbit/s total",
        2.0 * n as f64 / 1048576.0,
        dt,
        n as f64 * 8.0 / dt / 1e6,
        2.0 * n as f64 * 8.0 / dt / 1e6
    );
    ok_hg && ok_gh
}

/// Print what the relay saw of the session (`n` payload bytes each way),
/// once it has recorded it.
async fn report_relay(relay: &Relay, n: usize) {
    // The relay counts bytes as they pass; wait for the session's end (bounded)
    // so that its last chunks are in.
    let m = relay.metrics();
    for _ in 0..200 {
        if m.active.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "relay saw: 1 session paired; {} B host→guest, {} B guest→host of TLS records it cannot decrypt (payload {} B each way; what it did not carry went direct)",
        m.bytes_host_to_guest.get(),
        m.bytes_guest_to_host.get(),
        n
    );
}

/// Run the demo with `mib` MiB each way; `udp`: the direct path is XTCP
/// over UDP hole punching (direct TCP off, no UDP window) instead of TCP.
pub async fn run(mib: usize, udp: bool) -> Result<(), DemoError> {
    let direct = direct_options(udp);
    let (relay, relay_cfg) = start_relay().await?;
    let opts = Options {
        relay: relay_cfg.clone(),
        e2e: E2eOptions::default(),
        direct: direct.clone(),
    };
    let t0 = Instant::now();
    let host = xtcp::host(&opts).await.map_err(err)?;
    let code = host.code();
    println!("host     created a session; code: {code}");
    let guest_opts = Options {
        relay: RelayClientConfig {
            token: None,
            ..relay_cfg
        },
        e2e: E2eOptions::default(),
        direct,
    };
    let (h, g) = tokio::try_join!(async { host.accept().await.map_err(err) }, async {
        xtcp::join(&code, &guest_opts).await.map_err(err)
    })?;
    let t_up = t0.elapsed();
    // Path changes as they happen, timed from the pairing.
    let t_paired = Instant::now();
    let (path_log, log) = spawn_path_log(h.path_events(), t_paired);
    println!(
        "session  up in {:.1} ms; path: {}; e2e {} (peer authenticated by the code)",
        t_up.as_secs_f64() * 1e3,
        h.path(),
        h.cipher_suite()
    );
    let n = mib * 1024 * 1024;
    let (a, b) = (payload(n, 1), payload(n, 2));
    let t1 = Instant::now();
    let (got_g, got_h) = tokio::try_join!(exchange(h, &a), exchange(g, &b)).map_err(err)?;
    let dt = t1.elapsed().as_secs_f64();
    path_log.abort();
    let ok = report_transfer(&log, mib, dt, [&a, &b], [&got_g, &got_h]);
    report_relay(&relay, n).await;
    relay.shutdown().await;
    if ok {
        Ok(())
    } else {
        Err(DemoError("data mismatch".into()))
    }
}
