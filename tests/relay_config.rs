//! Configuration that cannot panic (spec/relay.md §8): any value of any key
//! either fails (parsing or validation) with a message that names the key,
//! or the relay starts, serves a pairing and failing joins, and stops,
//! without a panic anywhere (the panic hook counts panics in every task).

mod common;

use common::*;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use xtcp::relay::client::{create_session, join_session};
use xtcp::relay::server::{Relay, RelayConfig};
use xtcp::relay::{RelayClientConfig, RelayTrust};

static PANICS: AtomicUsize = AtomicUsize::new(0);
/// Cases that reached a running relay.
static RAN: AtomicUsize = AtomicUsize::new(0);

const KEYS: &[&str] = &[
    "waiting_ttl_secs",
    "idle_timeout_secs",
    "handshake_timeout_secs",
    "first_byte_timeout_secs",
    "lockout_secs",
    "guess_interval_secs",
    "drain_secs",
    "log_interval_secs",
    "max_sessions",
    "max_waiting",
    "max_unauthenticated",
    "max_unauthenticated_per_source",
    "max_waiting_per_source",
    "max_sessions_per_source",
    "max_waiting_per_token",
    "max_sessions_per_token",
    "guess_queue_per_source",
    "max_tracked_sources",
    "lockout_failures",
    "rate_limit_bytes_per_sec",
    "forward_buffer",
    "source_prefix_v4",
    "source_prefix_v6",
    "splice",
    "allow_anonymous_hosts",
];

#[derive(Clone, Debug)]
struct Case(Vec<(&'static str, String)>);

fn value(g: &mut Gen) -> String {
    const INTS: &[i64] = &[
        -1,
        0,
        1,
        2,
        5,
        16,
        128,
        4095,
        4096,
        65_536,
        1 << 20,
        (1 << 20) + 1,
        1 << 24,
        (1 << 24) + 1,
        1 << 32,
        1 << 40,
        (1 << 40) + 1,
        i64::MAX,
    ];
    const FLOATS: &[&str] = &[
        "0.0",
        "-0.0",
        "1e-9",
        "0.001",
        "0.05",
        "0.5",
        "1.0",
        "300.0",
        "31536000.0",
        "31536000.5",
        "1e19",
        "1.8e19",
        "1e300",
        "nan",
        "inf",
        "-inf",
        "-1.0",
    ];
    match u8::arbitrary(g) % 6 {
        0 => g.choose(INTS).unwrap().to_string(),
        1 => g.choose(FLOATS).unwrap().to_string(),
        2 => i64::arbitrary(g).to_string(),
        3 => {
            let f = f64::arbitrary(g);
            if f.is_nan() {
                "nan".into()
            } else if f.is_infinite() {
                if f > 0.0 { "inf" } else { "-inf" }.into()
            } else {
                format!("{f:e}")
            }
        }
        4 => bool::arbitrary(g).to_string(),
        _ => format!("{:?}", g.choose(&["", "x", "10", "off"]).unwrap()),
    }
}

/// A value in range for `key` (most cases should reach the running relay).
fn plausible(g: &mut Gen, key: &str) -> String {
    let pick = |g: &mut Gen, v: &[&str]| g.choose(v).unwrap().to_string();
    if key.ends_with("_secs") {
        pick(g, &["0.05", "0.2", "1", "1.0", "300.0", "31536000.0"])
    } else if key.starts_with("source_prefix") {
        pick(g, &["0", "1", "24", "32"])
    } else if key == "forward_buffer" {
        pick(g, &["4096", "65536", "1048576"])
    } else if key == "splice" || key == "allow_anonymous_hosts" {
        pick(g, &["true", "false"])
    } else if key == "max_tracked_sources" {
        pick(g, &["16", "1024", "4194304"])
    } else if key == "max_unauthenticated" || key == "max_unauthenticated_per_source" {
        pick(g, &["1", "2", "1024", "1048576"])
    } else if key == "guess_queue_per_source" {
        pick(g, &["1", "4", "1024"])
    } else {
        pick(g, &["1", "2", "5", "1024", "16777216"])
    }
}

impl Arbitrary for Case {
    fn arbitrary(g: &mut Gen) -> Case {
        let n = 1 + usize::arbitrary(g) % 4;
        let mut keys: Vec<&'static str> = (0..n).map(|_| *g.choose(KEYS).unwrap()).collect();
        keys.sort();
        keys.dedup();
        Case(
            keys.into_iter()
                .map(|k| {
                    let v = if bool::arbitrary(g) || bool::arbitrary(g) {
                        plausible(g, k)
                    } else {
                        value(g)
                    };
                    (k, v)
                })
                .collect(),
        )
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Case>> {
        let v = self.0.clone();
        let n = if v.len() > 1 { v.len() } else { 0 };
        Box::new((0..n).map(move |i| {
            let mut w = v.clone();
            w.remove(i);
            Case(w)
        }))
    }
}

fn client_cfg(addr: std::net::SocketAddr, fp: [u8; 32], token: Option<&str>) -> RelayClientConfig {
    RelayClientConfig {
        relays: vec![addr.to_string()],
        trust: RelayTrust::pinned(fp),
        token: token.map(str::to_string),
        connect_timeout: Duration::from_secs(2),
    }
}

/// Start, pair once, fail a few joins, stop; every step bounded in time.
async fn exercise(cfg: RelayConfig) {
    let (tls, fp) = tls_for_relay();
    let relay = Relay::start(cfg, tls, None)
        .await
        .expect("a valid config starts");
    let addr = relay.local_addr();
    let step = Duration::from_secs(3);
    let rid = xtcp::secret::SessionSecret::generate()
        .unwrap()
        .rendezvous_id();
    if let Ok(Ok(w)) = tokio::time::timeout(
        step,
        create_session(&client_cfg(addr, fp, Some(TOKEN)), rid),
    )
    .await
    {
        let gc = client_cfg(addr, fp, None);
        let _ = tokio::time::timeout(step, async {
            tokio::join!(w.paired(), join_session(&gc, rid))
        })
        .await;
    }
    for _ in 0..3 {
        let _ =
            tokio::time::timeout(step, join_session(&client_cfg(addr, fp, None), [9; 16])).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), relay.shutdown()).await;
}

fn prop(case: Case) -> TestResult {
    let text: String = case.0.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let parsed = toml::from_str::<RelayConfig>(&text);
    let cfg = match parsed {
        Err(e) => {
            let msg = e.to_string();
            let named = case.0.iter().any(|(k, _)| msg.contains(k));
            return TestResult::from_bool(named);
        }
        Ok(c) => c,
    };
    let base = relay_config();
    let cfg = RelayConfig {
        listen: base.listen,
        token_hashes: base.token_hashes,
        udp_listen: base.udp_listen,
        ..cfg
    };
    if let Err(e) = cfg.validate() {
        let msg = e.to_string();
        let named = case.0.iter().any(|(k, _)| msg.contains(k));
        if !named {
            eprintln!("{text}→ {msg}");
        }
        return TestResult::from_bool(named);
    }
    let before = PANICS.load(Ordering::Relaxed);
    RAN.fetch_add(1, Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(exercise(cfg));
    rt.shutdown_timeout(Duration::from_secs(1));
    let ok = PANICS.load(Ordering::Relaxed) == before;
    if !ok {
        eprintln!("panicked with:\n{text}");
    }
    TestResult::from_bool(ok)
}

#[test]
fn any_value_of_any_key_fails_with_its_name_or_runs_without_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        default_hook(info);
    }));
    let tests = std::env::var("XTCP_QC_TESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    QuickCheck::new()
        .tests(tests)
        .max_tests(tests * 4)
        .quickcheck(prop as fn(Case) -> TestResult);
    assert_eq!(PANICS.load(Ordering::Relaxed), 0);
    let ran = RAN.load(Ordering::Relaxed);
    eprintln!("{ran} of {tests} cases ran a relay; the rest failed validation naming their key");
    assert!(ran * 5 >= tests as usize, "too few valid cases: {ran}");
}

/// The example, and the bounds at their edges.
#[test]
fn out_of_range_values_name_their_key() {
    for (text, key) in [
        ("lockout_secs = 1e19", "lockout_secs"),
        ("lockout_secs = 31536001", "lockout_secs"),
        ("waiting_ttl_secs = nan", "waiting_ttl_secs"),
        ("drain_secs = -1.0", "drain_secs"),
        ("handshake_timeout_secs = 0", "handshake_timeout_secs"),
        ("max_unauthenticated = 2000000", "max_unauthenticated"),
        ("max_sessions = 0", "max_sessions"),
        ("guess_queue_per_source = 5000", "guess_queue_per_source"),
        ("source_prefix_v6 = 129", "source_prefix_v6"),
        ("rate_limit_bytes_per_sec = 0", "rate_limit_bytes_per_sec"),
    ] {
        let e = toml::from_str::<RelayConfig>(text)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map_err(|e| e.to_string()))
            .expect_err(text);
        assert!(e.contains(key), "{text}: {e}");
    }
    for ok in [
        "lockout_secs = 31536000",
        "drain_secs = 0",
        "source_prefix_v4 = 0",
    ] {
        let c: RelayConfig = toml::from_str(ok).unwrap();
        assert!(c.validate().is_ok(), "{ok}");
    }
}
