//! Wireshark reads what xtcp sends: simulated captures decoded by `tshark`
//! with `interop/wireshark/xtcp.lua`, checked field by field against what
//! the simulator saw leave each node.
//!
//! Needs `tshark` (Debian: `apt-get install tshark`). Without it the tests
//! print a skip notice and pass, except under `CI` (set by `.ci/run`), where
//! they fail.

mod common;

use common::{payload, sim_config, App};
use proto::relay::udp_service;
use proto::session::probe::ProbeKey;
use proto::session::Role;
use proto::xtcp::wire::{PathOption, SegmentRepr, TcpFlags, TcpOptions};
use proto::{Instant, SeqNumber};
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xtcp_sim::{LinkConfig, LossModel, Node, RecordKind, Sim};

const LUA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../interop/wireshark/xtcp.lua");

/// Whether `tshark` runs. Absent: a loud notice and `false`, or a panic under `CI`.
fn have_tshark(test: &str) -> bool {
    let ok = Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: tshark is not installed, and CI is set (apt-get install tshark)"
        );
        // Straight to stderr: the test harness captures `eprintln!`.
        let _ = writeln!(
            std::io::stderr(),
            "\n{bar}\n* SKIPPED {test}: tshark not found (apt-get install tshark)\n{bar}\n",
            bar = "*".repeat(72)
        );
    }
    ok
}

/// `tshark -T fields` over `pcap` with the dissector loaded: one row per
/// frame, one column per field, several occurrences joined with `,`.
fn tshark_fields(pcap: &Path, fields: &[&str], prefs: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-n")
        .arg("-r")
        .arg(pcap)
        .args(["-X", &format!("lua_script:{LUA}")])
        .args(["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]);
    for p in prefs {
        cmd.args(["-o", p]);
    }
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tshark failed ({}):\n{stderr}",
        out.status
    );
    // A script that fails to load is only a warning to tshark.
    assert!(!stderr.contains("Lua: Error"), "xtcp.lua: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

fn temp_pcap(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtcp-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// One segment as the simulator saw it leave a node, in tshark's spelling.
#[derive(Debug, PartialEq, Eq)]
struct Seg {
    conn_id: String,
    seq: String,
    ack: String,
    flags: String,
    sack_le: String,
    sack_re: String,
}

impl Seg {
    fn from_repr(s: &SegmentRepr<'_>) -> Seg {
        let edges = |f: fn(&proto::xtcp::wire::SackBlock) -> u32| {
            s.options
                .sack_blocks()
                .iter()
                .map(|b| f(b).to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        Seg {
            conn_id: format!("{:#018x}", s.conn_id),
            seq: s.seq.0.to_string(),
            ack: s.ack.0.to_string(),
            flags: format!("{:#06x}", s.flags.0),
            sack_le: edges(|b| b.left.0),
            sack_re: edges(|b| b.right.0),
        }
    }
}

/// A transfer in both directions over lossy links, captured as sent: tshark
/// decodes every datagram as XTCP, in the same order, with the sequence and
/// acknowledgment numbers, flags and SACK blocks the simulator logged; all
/// are one TCP stream, and its analysis finds the retransmissions.
#[test]
fn tshark_decodes_every_segment_as_the_simulator_sent_it() {
    if !have_tshark("tshark_decodes_every_segment_as_the_simulator_sent_it") {
        return;
    }
    let a_addr: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let b_addr: SocketAddr = "198.18.0.2:443".parse().unwrap();
    let mut sim: Sim<App> = Sim::new(7);
    let a = sim.add_node(
        a_addr,
        App::new(sim_config(), true, b_addr, payload(1, 300_000), 1),
    );
    let b = sim.add_node(
        b_addr,
        App::new(sim_config(), false, a_addr, payload(2, 60_000), 2),
    );
    sim.set_links(
        a,
        b,
        LinkConfig {
            delay: Duration::from_millis(10),
            bandwidth_bps: 20_000_000,
            loss: LossModel::Bernoulli(0.04),
            ..LinkConfig::default()
        },
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    sim.set_observer(move |r| {
        if r.kind == RecordKind::Sent {
            let s = SegmentRepr::parse(r.data).expect("every datagram is an XTCP segment");
            l2.lock().unwrap().push(Seg::from_repr(&s));
        }
    });
    let pcap = temp_pcap("transfer.pcap");
    sim.capture_to(&pcap).unwrap();
    let out = sim.run_until(Instant::from_millis(120_000), |s| {
        s.node(a).finished() && s.node(b).finished()
    });
    assert!(out.is_done(), "transfer did not finish: {out:?}");
    sim.finish_capture().unwrap();
    sim.clear_observer();
    let log = std::mem::take(&mut *log.lock().unwrap());
    let lost = sim.stats(a, b).dropped_loss + sim.stats(b, a).dropped_loss;
    assert!(lost > 0, "the links lost nothing");
    let with_sack = log.iter().filter(|s| !s.sack_le.is_empty()).count();
    let multi_sack = log.iter().filter(|s| s.sack_le.contains(',')).count();
    assert!(with_sack > 0, "no segment carried SACK blocks");

    let rows = tshark_fields(
        &pcap,
        &[
            "xtcp.conn_id",
            "tcp.seq_raw",
            "tcp.ack_raw",
            "tcp.flags",
            "tcp.options.sack_le",
            "tcp.options.sack_re",
            "xtcp.checksum.status",
            "tcp.stream",
            "tcp.analysis.retransmission",
            "tcp.analysis.fast_retransmission",
        ],
        &["tcp.relative_sequence_numbers:FALSE"],
    );
    eprintln!(
        "{} segments ({} with SACK blocks, {} with several), {lost} lost; tshark decoded {} frames",
        log.len(),
        with_sack,
        multi_sack,
        rows.len()
    );
    assert_eq!(rows.len(), log.len(), "frame count");
    let mut retransmissions = 0;
    for (i, (row, want)) in rows.iter().zip(&log).enumerate() {
        let got = Seg {
            conn_id: row[0].clone(),
            seq: row[1].clone(),
            ack: row[2].clone(),
            flags: row[3].clone(),
            sack_le: row[4].clone(),
            sack_re: row[5].clone(),
        };
        assert_eq!(&got, want, "frame {}", i + 1);
        assert_eq!(row[6], "1", "frame {}: XTCP checksum status", i + 1);
        assert_eq!(row[7], "0", "frame {}: one TCP stream", i + 1);
        if !row[8].is_empty() || !row[9].is_empty() {
            retransmissions += 1;
        }
    }
    let resent = sim.node(a).stats.map_or(0, |s| s.bytes_retransmitted)
        + sim.node(b).stats.map_or(0, |s| s.bytes_retransmitted);
    assert!(resent > 0, "nothing was retransmitted");
    assert!(
        retransmissions > 0,
        "tshark's TCP analysis marked no retransmission ({resent} bytes were resent)"
    );
    let _ = std::fs::remove_file(&pcap);
}

/// A node that sends a fixed list of datagrams at time zero.
struct Script(VecDeque<(SocketAddr, Vec<u8>)>);

impl Node for Script {
    fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: SocketAddr, _: &[u8]) {}
    fn handle_timeout(&mut self, _: Instant) {}
    fn poll_transmit(&mut self, _: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let (to, d) = self.0.pop_front()?;
        buf[..d.len()].copy_from_slice(&d);
        Some((to, d.len()))
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
}

/// A segment of connection 0x0123456789abcdef from port 40000 to 443.
fn segment(seq: u32, path: Option<PathOption>, payload: &[u8]) -> Vec<u8> {
    let seg = SegmentRepr {
        xflags: Default::default(),
        conn_id: 0x0123_4567_89ab_cdef,
        src_port: 40000,
        dst_port: 443,
        seq: SeqNumber(seq),
        ack: SeqNumber(2000),
        flags: TcpFlags::ACK,
        window: 512,
        options: TcpOptions {
            timestamps: Some((5, 6)),
            path,
            ..TcpOptions::default()
        },
        payload,
    };
    let mut b = vec![0; seg.buffer_len()];
    let n = seg.emit(&mut b).unwrap();
    b.truncate(n);
    b
}

/// The address service's request and responses, a punch probe, XTCP path
/// validation and a GSO super-datagram, built with the proto codecs: each is
/// recognised by the heuristic and decoded field by field; look-alikes (a request one byte
/// short, an XTCP segment with a broken checksum) are left alone, and the
/// port preference decodes them anyway.
#[test]
fn tshark_decodes_address_service_and_punch_probes() {
    if !have_tshark("tshark_decodes_address_service_and_punch_probes") {
        return;
    }
    let peer: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let other: SocketAddr = "198.18.0.3:41000".parse().unwrap();
    let relay: SocketAddr = "198.18.0.9:15000".parse().unwrap();
    let token: [u8; 16] = core::array::from_fn(|i| (i as u8) * 0x11);
    let request = udp_service::encode_request(&token, 0x0102_0304_0506_0708);
    let (r4, n4) =
        udp_service::encode_response(0x0102_0304_0506_0708, "198.18.0.7:40000".parse().unwrap());
    let (r6, n6) = udp_service::encode_response(1, "[2001:db8::1]:443".parse().unwrap());
    let probe = ProbeKey::new(&[0x11; 32]).probe(1, Role::Host, 0x1112_1314_1516_1718, 7);
    // Pure ACKs carrying path validation (spec/xtcp.md §8.2).
    let challenge = segment(
        1000,
        Some(PathOption::Challenge(0x1122_3344_5566_7788)),
        &[],
    );
    let response = segment(1000, Some(PathOption::Response(0x1122_3344_5566_7788)), &[]);
    // What a capture on a host using UDP GSO (or GRO) shows: three
    // segments, cut at a stride of 32 + 12 + 101 bytes, in one datagram.
    let gso = [
        segment(5000, None, &[7; 101]),
        segment(5101, None, &[8; 101]),
        segment(5202, None, &[9; 40]),
    ]
    .concat();
    let mut broken = challenge.clone();
    broken[20] ^= 1;
    let sends = vec![
        (relay, request.to_vec()),
        (relay, r4[..n4].to_vec()),
        (relay, r6[..n6].to_vec()),
        (other, probe.to_vec()),
        (other, challenge),
        (other, response),
        (other, gso),
        (relay, request[..47].to_vec()),
        (other, broken),
    ];
    let n = sends.len();
    let mut sim: Sim<Script> = Sim::new(1);
    sim.add_node(peer, Script(sends.into()));
    sim.add_node(relay, Script(VecDeque::new()));
    sim.add_node(other, Script(VecDeque::new()));
    let pcap = temp_pcap("side.pcap");
    sim.capture_to(&pcap).unwrap();
    sim.run_until(Instant::from_millis(1000), |_| false);
    sim.finish_capture().unwrap();

    let fields = [
        "_ws.col.Protocol",
        "xtcp_relay_udp.type",
        "xtcp_relay_udp.token",
        "xtcp_relay_udp.nonce",
        "xtcp_relay_udp.family",
        "xtcp_relay_udp.addr",
        "xtcp_relay_udp.addr6",
        "xtcp_relay_udp.port",
        "xtcp_probe.attempt",
        "xtcp_probe.role",
        "xtcp_probe.nonce",
        "xtcp_probe.echo",
        "xtcp_probe.tag",
        "xtcp.conn_id",
        "xtcp.path",
        "xtcp.path.token",
        "tcp.ack_raw",
        "tcp.seq_raw",
        "tcp.len",
        "xtcp.checksum.status",
        "xtcp.gso.segments",
        "xtcp.gso.stride",
    ];
    let rows = tshark_fields(&pcap, &fields, &[]);
    assert_eq!(rows.len(), n);
    let col = |row: &[String], f: &str| row[fields.iter().position(|x| *x == f).unwrap()].clone();
    let check = |i: usize, want: &[(&str, &str)]| {
        for (f, v) in want {
            assert_eq!(col(&rows[i], f), *v, "frame {}: {f}", i + 1);
        }
    };
    let nonce = "0x0102030405060708";
    check(
        0,
        &[
            ("_ws.col.Protocol", "XTCP-RELAY-UDP"),
            ("xtcp_relay_udp.type", "0xa0"),
            ("xtcp_relay_udp.token", "00112233445566778899aabbccddeeff"),
            ("xtcp_relay_udp.nonce", nonce),
        ],
    );
    check(
        1,
        &[
            ("xtcp_relay_udp.type", "0xa1"),
            ("xtcp_relay_udp.nonce", nonce),
            ("xtcp_relay_udp.family", "4"),
            ("xtcp_relay_udp.addr", "198.18.0.7"),
            ("xtcp_relay_udp.port", "40000"),
        ],
    );
    check(
        2,
        &[
            ("xtcp_relay_udp.nonce", "0x0000000000000001"),
            ("xtcp_relay_udp.family", "6"),
            ("xtcp_relay_udp.addr6", "2001:db8::1"),
            ("xtcp_relay_udp.port", "443"),
        ],
    );
    let tag: String = probe[22..].iter().map(|b| format!("{b:02x}")).collect();
    check(
        3,
        &[
            ("_ws.col.Protocol", "XTCP-PROBE"),
            ("xtcp_probe.attempt", "1"),
            ("xtcp_probe.role", "1"),
            ("xtcp_probe.nonce", "0x1112131415161718"),
            ("xtcp_probe.echo", "0x0000000000000007"),
            ("xtcp_probe.tag", &tag),
        ],
    );
    for (i, exid) in [(4, "0x5843"), (5, "0x5852")] {
        check(
            i,
            &[
                ("_ws.col.Protocol", "XTCP"),
                ("xtcp.conn_id", "0x0123456789abcdef"),
                ("xtcp.path", exid),
                ("xtcp.path.token", "0x1122334455667788"),
                ("tcp.ack_raw", "2000"),
            ],
        );
    }
    check(
        6,
        &[
            ("xtcp.gso.segments", "3"),
            ("xtcp.gso.stride", "145"),
            ("tcp.seq_raw", "5000,5101,5202"),
            ("tcp.len", "101,101,40"),
            ("xtcp.checksum.status", "1,1,1"),
        ],
    );
    // Look-alikes: not for the heuristic.
    check(
        7,
        &[("_ws.col.Protocol", "UDP"), ("xtcp_relay_udp.type", "")],
    );
    check(8, &[("_ws.col.Protocol", "UDP"), ("xtcp.conn_id", "")]);

    // By port, the same datagrams are decoded, and flagged.
    let rows = tshark_fields(
        &pcap,
        &[
            "xtcp_relay_udp.type",
            "xtcp.conn_id",
            "xtcp.checksum.status",
        ],
        &["xtcp.udp_ports:15000,41000"],
    );
    assert_eq!(rows[7], ["0xa0", "", ""]);
    assert_eq!(rows[8], ["", "0x0123456789abcdef", "0"]);
    let _ = std::fs::remove_file(&pcap);
}
