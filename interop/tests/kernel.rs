//! XTCP against the Linux kernel's TCP through the TUN bridge
//! (`xtcp_lab::tun`, spec/xtcp.md §11). Each test builds its own namespace
//! holding the kernel socket, the TUN device, the bridge's UDP socket and the
//! `XtcpEndpoint` (all on addresses inside it), so tests run in parallel.
//!
//! Every test also asserts, after its transfer, that no segment exceeded the
//! receiver's MSS or window (checked in the bridge) and that the kernel's
//! error counters (PAWS rejects, challenge ACKs, checksum errors, skipped
//! ACKs) stayed at zero.
//!
//! Run: `cargo test --release -p xtcp-lab --test kernel -- --nocapture` (root).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use xtcp::net::{EndpointOptions, XtcpEndpoint};
use xtcp_lab::tun::{Bridge, BridgeConfig, Report};
use xtcp_lab::{payload, require_netns, sha256_hex, Netns};

const KERNEL_PORT: u16 = 5000;
const MIB: usize = 1 << 20;

/// One namespace with a kernel side, the bridge and an XTCP endpoint.
struct Lab {
    bridge: Bridge,
    ep: XtcpEndpoint,
    // Dropped last: the namespace outlives the sockets and the bridge.
    ns: Netns,
}

struct LabOpts {
    sysctls: Vec<&'static str>,
    xtcp: EndpointOptions,
    loss: f64,
    seed: u64,
}

impl Default for LabOpts {
    fn default() -> Self {
        LabOpts {
            sysctls: Vec::new(),
            xtcp: EndpointOptions {
                listen: true,
                ..EndpointOptions::default()
            },
            loss: 0.0,
            seed: 1,
        }
    }
}

impl Lab {
    fn new(label: &str, o: LabOpts) -> Lab {
        require_netns();
        let ns = Netns::new(label).expect("netns");
        for s in &o.sysctls {
            ns.exec(&["sysctl", "-q", "-w", s]).expect("sysctl");
        }
        let udp = ns
            .run_in(|| std::net::UdpSocket::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let ep = XtcpEndpoint::from_std(udp, o.xtcp).expect("endpoint");
        let mut cfg = BridgeConfig::new(ep.local_addr());
        cfg.kernel_listen_port = KERNEL_PORT;
        cfg.loss_to_kernel = o.loss;
        cfg.loss_to_xtcp = o.loss;
        cfg.seed = o.seed;
        let bridge = Bridge::start(&ns, cfg).expect("bridge");
        Lab { bridge, ep, ns }
    }

    /// A kernel socket in the namespace, with `rcvbuf`/`sndbuf` if given.
    fn kernel_socket(&self, bufs: Option<u32>) -> tokio::net::TcpSocket {
        self.ns
            .run_in(|| {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                if let Some(b) = bufs {
                    s.set_recv_buffer_size(b).unwrap();
                    s.set_send_buffer_size(b).unwrap();
                }
                s
            })
            .unwrap()
    }

    /// A kernel listener on 198.18.0.1:5000 with `backlog`.
    fn kernel_listener(&self, backlog: u32, bufs: Option<u32>) -> tokio::net::TcpListener {
        let s = self.kernel_socket(bufs);
        s.set_reuseaddr(true).unwrap();
        s.bind(format!("198.18.0.1:{KERNEL_PORT}").parse().unwrap())
            .unwrap();
        s.listen(backlog).unwrap()
    }

    /// Kernel connects to the XTCP side (198.18.0.2:port → the endpoint).
    async fn kernel_connect(&self, bufs: Option<u32>) -> tokio::net::TcpStream {
        let s = self.kernel_socket(bufs);
        s.connect("198.18.0.2:6000".parse().unwrap())
            .await
            .expect("kernel connect")
    }

    /// A connected (kernel, XTCP) pair, opened by `who`.
    async fn pair(
        &self,
        who: Opener,
        bufs: Option<u32>,
    ) -> (tokio::net::TcpStream, xtcp::net::XtcpStream) {
        match who {
            Opener::Kernel => {
                let (k, x) = tokio::join!(self.kernel_connect(bufs), self.ep.accept());
                (k, x.expect("xtcp accept"))
            }
            Opener::Xtcp => {
                let l = self.kernel_listener(16, bufs);
                let (k, x) = tokio::join!(l.accept(), self.ep.connect(self.bridge.udp_addr()));
                (k.expect("kernel accept").0, x.expect("xtcp connect"))
            }
        }
    }

    /// The kernel's SNMP and netstat counters in the namespace.
    fn nstat(&self) -> HashMap<String, u64> {
        self.ns
            .run_in(|| {
                let mut m = HashMap::new();
                for f in [
                    "/proc/thread-self/net/netstat",
                    "/proc/thread-self/net/snmp",
                ] {
                    let s = std::fs::read_to_string(f).unwrap_or_default();
                    let lines: Vec<&str> = s.lines().collect();
                    for pair in lines.chunks(2) {
                        let [h, v] = pair else { continue };
                        let (mut h, mut v) = (h.split_whitespace(), v.split_whitespace());
                        let prefix = h.next().unwrap_or("").trim_end_matches(':').to_owned();
                        v.next();
                        for (k, val) in h.zip(v) {
                            m.insert(format!("{prefix}:{k}"), val.parse().unwrap_or(0));
                        }
                    }
                }
                m
            })
            .unwrap()
    }

    /// The checks every test ends with: (h) no segment beyond MSS or window,
    /// nothing malformed; (i) kernel error counters zero.
    fn assert_clean(&self) -> Report {
        let r = self.bridge.report();
        for (name, d) in [("kernel", r.kernel()), ("xtcp", r.xtcp())] {
            assert_eq!(
                d.mss_violations, 0,
                "{name} exceeded the MSS: {:?}",
                d.notes
            );
            assert_eq!(
                d.window_violations, 0,
                "{name} exceeded the window: {:?}",
                d.notes
            );
            assert_eq!(d.malformed, 0, "{name} sent malformed segments");
        }
        let n = self.nstat();
        for k in [
            "TcpExt:PAWSActive",
            "TcpExt:PAWSEstab",
            "TcpExt:TCPChallengeACK",
            "TcpExt:TCPSYNChallenge",
            "TcpExt:TCPACKSkippedSynRecv",
            "TcpExt:TCPACKSkippedPAWS",
            "TcpExt:TCPACKSkippedSeq",
            "TcpExt:TCPACKSkippedFinWait2",
            "TcpExt:TCPACKSkippedTimeWait",
            "TcpExt:TCPACKSkippedChallenge",
            "Tcp:InCsumErrors",
            "Tcp:InErrs",
        ] {
            assert_eq!(n.get(k).copied(), Some(0), "kernel counter {k}");
        }
        r
    }
}

#[derive(Clone, Copy, Debug)]
enum Opener {
    Kernel,
    Xtcp,
}

/// Write `data` then half-close.
async fn send_all<W: AsyncWrite + Unpin>(mut w: W, data: &[u8]) {
    w.write_all(data).await.expect("write");
    w.shutdown().await.expect("shutdown");
}

/// Read to EOF; return (length, sha256).
async fn recv_all<R: AsyncRead + Unpin>(mut r: R) -> (usize, String) {
    let mut v = Vec::new();
    r.read_to_end(&mut v).await.expect("read");
    (v.len(), sha256_hex(&v))
}

fn want(seed: u64, len: usize) -> (usize, String) {
    (len, sha256_hex(&payload(seed, len)))
}

/// `k_len` bytes kernel → XTCP and `x_len` bytes XTCP → kernel at once,
/// both ends half-close after writing; byte-exact or panic, within `limit`.
async fn exchange(
    k: tokio::net::TcpStream,
    x: xtcp::net::XtcpStream,
    k_len: usize,
    x_len: usize,
    limit: Duration,
) -> Duration {
    let t = Instant::now();
    let (kd, xd) = (payload(1, k_len), payload(2, x_len));
    let (kr, kw) = k.into_split();
    let (xr, xw) = x.into_split();
    let all = async {
        tokio::join!(
            send_all(kw, &kd),
            send_all(xw, &xd),
            recv_all(kr),
            recv_all(xr)
        )
    };
    let (_, _, k_got, x_got) = tokio::time::timeout(limit, all)
        .await
        .expect("exchange timed out");
    assert_eq!(x_got, want(1, k_len), "kernel → xtcp bytes");
    assert_eq!(k_got, want(2, x_len), "xtcp → kernel bytes");
    t.elapsed()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// (a) handshake both ways, 10 MiB each way
// ---------------------------------------------------------------------------

fn bulk(who: Opener) {
    rt().block_on(async {
        let lab = Lab::new("bulk", LabOpts::default());
        let (k, x) = lab.pair(who, None).await;
        let took = exchange(k, x, 10 * MIB, 10 * MIB, Duration::from_secs(120)).await;
        let r = lab.assert_clean();
        eprintln!(
            "bulk {who:?}: 10 MiB each way in {took:.2?}; kernel SYN {:?}; xtcp SYN {:?}",
            r.kernel().syn,
            r.xtcp().syn
        );
    });
}

#[test]
fn a_kernel_connects_10mib_each_way() {
    bulk(Opener::Kernel);
}

#[test]
fn a_xtcp_connects_10mib_each_way() {
    bulk(Opener::Xtcp);
}
