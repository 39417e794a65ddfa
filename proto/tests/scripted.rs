//! Segment-level scripted tests (packetdrill style): inject this segment at t,
//! expect that segment at t′. One section per behaviour, citing the RFC.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use xtcp_proto::xtcp::conn::{Config, ConnectionParams, Event, ReadError};
use xtcp_proto::xtcp::wire::{PathOption, SackBlock, SegmentRepr, TcpFlags, TcpOptions, XtcpFlags};
use xtcp_proto::{
    Connection, ConnectionError, Endpoint, EndpointConfig, Instant, SeqNumber, State,
};

const CID: u64 = 0x1122_3344_5566_7788;
const ISS: u32 = 1000;
const IRS: u32 = 5000;

fn remote() -> SocketAddr {
    "192.0.2.2:4000".parse().unwrap()
}

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

/// A segment as the tests write and read it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seg {
    seq: u32,
    ack: u32,
    flags: TcpFlags,
    window: u16,
    opts: TcpOptions,
    payload: Vec<u8>,
}

const A: TcpFlags = TcpFlags::ACK;
const S: TcpFlags = TcpFlags::SYN;
const F: TcpFlags = TcpFlags::FIN;
const R: TcpFlags = TcpFlags::RST;

fn seg(seq: u32, ack: u32, flags: TcpFlags) -> Seg {
    Seg {
        seq,
        ack,
        flags,
        window: 65535,
        opts: TcpOptions::default(),
        payload: Vec::new(),
    }
}

impl Seg {
    fn data(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }
    fn win(mut self, w: u16) -> Self {
        self.window = w;
        self
    }
    fn mss(mut self, m: u16) -> Self {
        self.opts.mss = Some(m);
        self
    }
    fn ts(mut self, val: u32, ecr: u32) -> Self {
        self.opts.timestamps = Some((val, ecr));
        self
    }
    fn path(mut self, p: PathOption) -> Self {
        self.opts.path = Some(p);
        self
    }
    fn sack(mut self, blocks: &[(u32, u32)]) -> Self {
        for (i, (l, r)) in blocks.iter().enumerate() {
            self.opts.sack[i] = SackBlock {
                left: SeqNumber(*l),
                right: SeqNumber(*r),
            };
        }
        self.opts.sack_len = blocks.len() as u8;
        self.opts.sack_permitted = false;
        self
    }
}

fn plain_config() -> Config {
    Config {
        timestamps: false,
        sack: false,
        window_scaling: false,
        pacing: false,
        nagle: false,
        delayed_ack: None,
        recv_buffer: 65535,
        send_buffer: 1 << 20,
        initial_rto: Duration::from_secs(1),
        min_rto: Duration::from_millis(200),
        ..Config::default()
    }
}

fn params() -> ConnectionParams {
    ConnectionParams {
        conn_id: CID,
        iss: SeqNumber(ISS),
        ts_offset: 0,
        local_port: 1,
        remote_port: 2,
        remote: remote(),
        path_secret: [0x42; 32],
    }
}

struct T {
    c: Connection,
}

impl T {
    fn client(cfg: Config) -> T {
        T {
            c: Connection::connect(Arc::new(cfg), ms(0), params()),
        }
    }
    fn server(cfg: Config) -> T {
        T {
            c: Connection::listen(Arc::new(cfg), ms(0), params()),
        }
    }
    /// Inject a segment at `t` (after firing due timers).
    fn send(&mut self, t: u64, s: Seg) {
        self.send_from(t, remote(), s);
    }
    /// Inject a segment from `from` at `t`; returns the datagram's size.
    fn send_from(&mut self, t: u64, from: SocketAddr, s: Seg) -> usize {
        self.c.handle_timeout(ms(t));
        let repr = SegmentRepr {
            xflags: XtcpFlags(0),
            conn_id: CID,
            src_port: 2,
            dst_port: 1,
            seq: SeqNumber(s.seq),
            ack: SeqNumber(s.ack),
            flags: s.flags,
            window: s.window,
            options: s.opts,
            payload: &s.payload,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        let n = repr.emit(&mut buf).unwrap();
        self.c.handle_datagram(ms(t), from, &buf[..n]).unwrap();
        n
    }
    /// The next segment the connection emits at `t` (timers due by then fired first).
    fn recv(&mut self, t: u64) -> Option<Seg> {
        let (to, _, s) = self.recv_any(t)?;
        assert_eq!(to, remote());
        Some(s)
    }
    /// The next segment emitted at `t`, its destination and datagram size.
    fn recv_any(&mut self, t: u64) -> Option<(SocketAddr, usize, Seg)> {
        self.c.handle_timeout(ms(t));
        let mut buf = [0u8; 2048];
        let tx = self.c.poll_transmit(ms(t), &mut buf)?;
        let r = SegmentRepr::parse(&buf[..tx.size]).unwrap();
        assert_eq!(r.conn_id, CID);
        Some((
            tx.destination,
            tx.size,
            Seg {
                seq: r.seq.0,
                ack: r.ack.0,
                flags: r.flags,
                window: r.window,
                opts: r.options,
                payload: r.payload.to_vec(),
            },
        ))
    }
    fn expect(&mut self, t: u64, seq: u32, ack: u32, flags: TcpFlags) -> Seg {
        let s = self.recv(t).unwrap_or_else(|| {
            panic!("expected {flags:?} seq={seq} ack={ack} at {t} ms, got nothing")
        });
        assert_eq!(
            (s.seq, s.ack, s.flags),
            (seq, ack, flags),
            "segment at {t} ms: {s:?}"
        );
        s
    }
    fn expect_none(&mut self, t: u64) {
        if let Some(s) = self.recv(t) {
            panic!("expected silence at {t} ms, got {s:?}");
        }
    }
    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.c.poll_event()).collect()
    }
    /// Client connected: SYN out, SYN-ACK in, ACK out.
    fn established_client(cfg: Config) -> T {
        let mut t = T::client(cfg);
        t.expect(0, ISS, 0, S);
        t.send(10, seg(IRS, ISS + 1, S | A).mss(1000));
        t.expect(10, ISS + 1, IRS + 1, A);
        assert_eq!(t.c.state(), State::Established);
        t
    }
    fn established_server(cfg: Config) -> T {
        let mut t = T::server(cfg);
        t.send(0, seg(IRS, 0, S).mss(1000));
        t.expect(0, ISS, IRS + 1, S | A);
        t.send(10, seg(IRS + 1, ISS + 1, A));
        assert_eq!(t.c.state(), State::Established);
        t
    }
}

// ===================================================================
// Handshake (RFC 9293 §3.5)
// ===================================================================

#[test]
fn three_way_handshake_client() {
    let mut t = T::client(plain_config());
    assert_eq!(t.c.state(), State::SynSent);
    let syn = t.expect(0, ISS, 0, S);
    assert!(syn.opts.mss.is_some());
    t.expect_none(0);
    t.send(10, seg(IRS, ISS + 1, S | A).mss(1000));
    assert_eq!(t.c.state(), State::Established);
    t.expect(10, ISS + 1, IRS + 1, A);
    assert_eq!(t.events(), vec![Event::Connected]);
}

#[test]
fn three_way_handshake_server() {
    let mut t = T::server(plain_config());
    assert_eq!(t.c.state(), State::Listen);
    t.send(0, seg(IRS, 0, S).mss(1000));
    assert_eq!(t.c.state(), State::SynReceived);
    t.expect(0, ISS, IRS + 1, S | A);
    t.send(10, seg(IRS + 1, ISS + 1, A));
    assert_eq!(t.c.state(), State::Established);
    assert_eq!(t.events(), vec![Event::Connected]);
}

#[test]
fn handshake_negotiates_options_only_when_both_offer() {
    let cfg = Config {
        timestamps: true,
        sack: true,
        window_scaling: true,
        recv_buffer: 1 << 20,
        ..plain_config()
    };
    let mut t = T::client(cfg);
    let syn = t.expect(0, ISS, 0, S);
    assert!(syn.opts.sack_permitted);
    assert!(syn.opts.timestamps.is_some());
    assert_eq!(syn.opts.window_scale, Some(5)); // 1 MiB >> 5 fits 16 bits
                                                // The peer offers nothing: no option may be used afterwards (RFC 7323 §2.2, RFC 2018 §2).
    t.send(10, seg(IRS, ISS + 1, S | A).mss(1000));
    let ack = t.expect(10, ISS + 1, IRS + 1, A);
    assert_eq!(ack.opts.timestamps, None);
    // Unscaled window, capped at 65535.
    assert_eq!(ack.window, 65535);
}

#[test]
fn simultaneous_open() {
    // RFC 9293 §3.5 Figure 8.
    let mut t = T::client(plain_config());
    t.expect(0, ISS, 0, S);
    t.send(5, seg(IRS, 0, S).mss(1000));
    assert_eq!(t.c.state(), State::SynReceived);
    t.expect(5, ISS, IRS + 1, S | A);
    t.send(10, seg(IRS, ISS + 1, S | A).mss(1000));
    // The peer's SYN-ACK repeats its SYN: we are synchronised by its ACK.
    t.send(11, seg(IRS + 1, ISS + 1, A));
    assert_eq!(t.c.state(), State::Established);
}

#[test]
fn syn_retransmitted_with_backoff_then_times_out() {
    let cfg = Config {
        syn_retries: 2,
        ..plain_config()
    };
    let mut t = T::client(cfg);
    t.expect(0, ISS, 0, S);
    t.expect_none(999);
    t.expect(1000, ISS, 0, S); // RFC 6298 §2.1: initial RTO 1 s
    t.expect_none(2999);
    t.expect(3000, ISS, 0, S); // §5.5 backoff: 2 s
    t.expect_none(6999);
    assert!(t.recv(7000).is_none());
    assert_eq!(t.c.state(), State::Closed);
    assert_eq!(t.c.error(), Some(ConnectionError::TimedOut));
}

#[test]
fn bad_ack_in_syn_sent_gets_reset() {
    // RFC 9293 §3.10.7.3: an unacceptable ACK in SYN-SENT → RST seq=SEG.ACK.
    let mut t = T::client(plain_config());
    t.expect(0, ISS, 0, S);
    t.send(5, seg(IRS, 777, S | A));
    t.expect(5, 777, 0, R);
    assert_eq!(t.c.state(), State::SynSent);
}

// ===================================================================
// RST in each state (RFC 9293 §3.10.7, RFC 5961 §3)
// ===================================================================

#[test]
fn rst_in_syn_sent_refuses() {
    let mut t = T::client(plain_config());
    t.expect(0, ISS, 0, S);
    // Without an acceptable ACK the RST is ignored.
    t.send(5, seg(0, 0, R));
    assert_eq!(t.c.state(), State::SynSent);
    t.send(6, seg(0, ISS + 1, R | A));
    assert_eq!(t.c.state(), State::Closed);
    assert_eq!(t.c.error(), Some(ConnectionError::Refused));
}

#[test]
fn rst_in_syn_received() {
    let mut t = T::server(plain_config());
    t.send(0, seg(IRS, 0, S));
    t.expect(0, ISS, IRS + 1, S | A);
    t.send(5, seg(IRS + 1, 0, R));
    assert_eq!(t.c.state(), State::Closed);
}

#[test]
fn rst_in_listen_is_ignored_and_ack_gets_reset() {
    let mut t = T::server(plain_config());
    t.send(0, seg(IRS, 0, R));
    assert_eq!(t.c.state(), State::Listen);
    t.expect_none(0);
    t.send(1, seg(IRS, 4242, A));
    t.expect(1, 4242, 0, R);
    assert_eq!(t.c.state(), State::Listen);
}

#[test]
fn rst_exact_sequence_resets_established() {
    let mut t = T::established_client(plain_config());
    t.send(20, seg(IRS + 1, 0, R));
    assert_eq!(t.c.state(), State::Closed);
    assert_eq!(t.c.error(), Some(ConnectionError::Reset));
    let mut b = [0u8; 4];
    assert_eq!(
        t.c.read(&mut b),
        Err(ReadError::Failed(ConnectionError::Reset))
    );
}

#[test]
fn rst_in_window_but_not_exact_gets_challenge_ack() {
    // RFC 5961 §3.2.
    let mut t = T::established_client(plain_config());
    t.send(20, seg(IRS + 100, 0, R));
    assert_eq!(t.c.state(), State::Established);
    t.expect(20, ISS + 1, IRS + 1, A);
    // Outside the window: silently dropped.
    t.send(21, seg(IRS + 1_000_000, 0, R));
    t.expect_none(21);
    assert_eq!(t.c.state(), State::Established);
}

#[test]
fn syn_in_established_gets_challenge_ack() {
    // RFC 5961 §4.2.
    let mut t = T::established_client(plain_config());
    t.send(20, seg(IRS + 1, 0, S));
    t.expect(20, ISS + 1, IRS + 1, A);
    assert_eq!(t.c.state(), State::Established);
}

#[test]
fn rst_in_fin_wait_states_and_close_wait() {
    for setup in 0..3 {
        let mut t = T::established_client(plain_config());
        match setup {
            0 => {
                t.c.shutdown(ms(20));
                t.expect(20, ISS + 1, IRS + 1, F | A);
                assert_eq!(t.c.state(), State::FinWait1);
            }
            1 => {
                t.c.shutdown(ms(20));
                t.expect(20, ISS + 1, IRS + 1, F | A);
                t.send(30, seg(IRS + 1, ISS + 2, A));
                assert_eq!(t.c.state(), State::FinWait2);
            }
            _ => {
                t.send(30, seg(IRS + 1, ISS + 1, F | A));
                assert_eq!(t.c.state(), State::CloseWait);
            }
        }
        let rcv_nxt = if setup == 2 { IRS + 2 } else { IRS + 1 };
        t.send(40, seg(rcv_nxt, 0, R));
        assert_eq!(t.c.state(), State::Closed, "setup {setup}");
        assert_eq!(t.c.error(), Some(ConnectionError::Reset));
    }
}

#[test]
fn rst_in_last_ack_and_time_wait_closes_quietly() {
    let mut t = T::established_client(plain_config());
    t.send(20, seg(IRS + 1, ISS + 1, F | A));
    t.expect(20, ISS + 1, IRS + 2, A);
    t.c.shutdown(ms(25));
    assert_eq!(t.c.state(), State::LastAck);
    t.expect(25, ISS + 1, IRS + 2, F | A);
    t.send(30, seg(IRS + 2, 0, R));
    assert_eq!(t.c.state(), State::Closed);
    assert_eq!(t.c.error(), None);
}

#[test]
fn rst_in_closing_closes_and_in_time_wait_is_ignored() {
    // CLOSING: RFC 9293 §3.10.7.4 — close without error.
    let mut t = T::established_client(plain_config());
    t.c.shutdown(ms(20));
    t.expect(20, ISS + 1, IRS + 1, F | A);
    t.send(21, seg(IRS + 1, ISS + 1, F | A));
    assert_eq!(t.c.state(), State::Closing);
    t.send(22, seg(IRS + 2, 0, R));
    assert_eq!(t.c.state(), State::Closed);
    assert_eq!(t.c.error(), None);
    // TIME-WAIT: RFC 1337 §3 — an RST must not cut TIME-WAIT short.
    let mut t = T::established_client(plain_config());
    t.c.shutdown(ms(20));
    t.expect(20, ISS + 1, IRS + 1, F | A);
    t.send(30, seg(IRS + 1, ISS + 2, F | A));
    assert_eq!(t.c.state(), State::TimeWait);
    t.send(31, seg(IRS + 2, 0, R));
    assert_eq!(t.c.state(), State::TimeWait);
}

#[test]
fn abort_sends_rst() {
    let mut t = T::established_client(plain_config());
    t.c.write(b"abc").unwrap();
    t.c.abort(ms(20));
    t.expect(20, ISS + 1, IRS + 1, R | A);
    t.expect_none(20);
    assert_eq!(t.c.state(), State::Closed);
    assert_eq!(t.c.error(), Some(ConnectionError::Aborted));
}

// ===================================================================
// FIN in each state (RFC 9293 §3.6, §3.10.7.4 eighth check)
// ===================================================================

#[test]
fn active_close_fin_wait_1_2_time_wait() {
    let cfg = Config {
        msl: Duration::from_secs(1),
        ..plain_config()
    };
    let mut t = T::established_client(cfg);
    t.c.shutdown(ms(20));
    assert_eq!(t.c.state(), State::FinWait1);
    t.expect(20, ISS + 1, IRS + 1, F | A);
    t.send(30, seg(IRS + 1, ISS + 2, A));
    assert_eq!(t.c.state(), State::FinWait2);
    // Half-close: data still flows toward us.
    t.send(40, seg(IRS + 1, ISS + 2, A).data(b"late"));
    // No delayed ACK in `plain_config`: every segment is ACKed (spec/xtcp.md §7).
    t.expect(40, ISS + 2, IRS + 5, A);
    let mut b = [0u8; 8];
    assert_eq!(t.c.read(&mut b), Ok(4));
    t.send(50, seg(IRS + 5, ISS + 2, F | A));
    assert_eq!(t.c.state(), State::TimeWait);
    t.expect(50, ISS + 2, IRS + 6, A);
    assert_eq!(t.c.read(&mut b), Ok(0));
    // A retransmitted FIN in TIME-WAIT is ACKed and restarts 2 MSL.
    t.send(1000, seg(IRS + 5, ISS + 2, F | A));
    t.expect(1000, ISS + 2, IRS + 6, A);
    t.expect_none(2999);
    assert_eq!(t.c.state(), State::TimeWait);
    t.expect_none(3000);
    assert_eq!(t.c.state(), State::Closed);
    assert_eq!(t.c.error(), None);
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let mut t = T::established_client(plain_config());
    t.c.shutdown(ms(20));
    t.expect(20, ISS + 1, IRS + 1, F | A);
    t.send(21, seg(IRS + 1, ISS + 1, F | A)); // peer's FIN crosses ours
    assert_eq!(t.c.state(), State::Closing);
    t.expect(21, ISS + 2, IRS + 2, A);
    t.send(30, seg(IRS + 2, ISS + 2, A));
    assert_eq!(t.c.state(), State::TimeWait);
}

#[test]
fn fin_with_ack_of_our_fin_goes_straight_to_time_wait() {
    let mut t = T::established_client(plain_config());
    t.c.shutdown(ms(20));
    t.expect(20, ISS + 1, IRS + 1, F | A);
    t.send(30, seg(IRS + 1, ISS + 2, F | A));
    assert_eq!(t.c.state(), State::TimeWait);
}

#[test]
fn passive_close_close_wait_last_ack() {
    let mut t = T::established_server(plain_config());
    t.send(20, seg(IRS + 1, ISS + 1, A).data(b"hello"));
    // No delayed ACK in `plain_config`: every segment is ACKed (spec/xtcp.md §7).
    t.expect(20, ISS + 1, IRS + 6, A);
    t.send(21, seg(IRS + 6, ISS + 1, F | A));
    assert_eq!(t.c.state(), State::CloseWait);
    t.expect(21, ISS + 1, IRS + 7, A);
    let mut b = [0u8; 16];
    assert_eq!(t.c.read(&mut b), Ok(5));
    assert_eq!(t.c.read(&mut b), Ok(0));
    // We may still send in CLOSE-WAIT (half-close).
    assert_eq!(t.c.write(b"bye"), Ok(3));
    t.c.shutdown(ms(30));
    assert_eq!(t.c.state(), State::LastAck);
    let s = t.expect(30, ISS + 1, IRS + 7, F | A | TcpFlags::PSH);
    assert_eq!(s.payload, b"bye");
    t.send(40, seg(IRS + 7, ISS + 5, A));
    assert_eq!(t.c.state(), State::Closed);
    assert_eq!(t.c.error(), None);
}

#[test]
fn out_of_order_fin_waits_for_the_hole() {
    let mut t = T::established_server(plain_config());
    t.send(20, seg(IRS + 4, ISS + 1, F | A).data(b"def"));
    assert_eq!(t.c.state(), State::Established);
    t.send(21, seg(IRS + 1, ISS + 1, A).data(b"abc"));
    assert_eq!(t.c.state(), State::CloseWait);
    let mut b = [0u8; 16];
    assert_eq!(t.c.read(&mut b), Ok(6));
    assert_eq!(&b[..6], b"abcdef");
}

// ===================================================================
// Retransmission timeout (RFC 6298), Karn's rule
// ===================================================================

#[test]
fn rto_timing_and_exponential_backoff() {
    let mut t = T::established_client(plain_config());
    // Handshake RTT sample: 10 ms → RTO = max(min_rto 200 ms, 10 + 4*5) = 200 ms.
    t.c.write(b"x").unwrap();
    t.expect(100, ISS + 1, IRS + 1, A | TcpFlags::PSH);
    t.expect_none(299);
    t.expect(300, ISS + 1, IRS + 1, A);
    t.expect_none(699);
    t.expect(700, ISS + 1, IRS + 1, A); // doubled: 400 ms
    t.expect_none(1499);
    t.expect(1500, ISS + 1, IRS + 1, A); // 800 ms
    assert_eq!(t.c.stats().rto_events, 3);
    // An ACK resets the backoff (RFC 6298 §5.7 does not apply: not a SYN).
    t.send(1510, seg(IRS + 1, ISS + 2, A));
    assert_eq!(t.c.unacked(), 0);
}

#[test]
fn karn_no_rtt_sample_from_retransmitted_segment() {
    let mut t = T::established_client(plain_config());
    let srtt0 = t.c.rtt().srtt().unwrap();
    t.c.write(b"x").unwrap();
    t.expect(100, ISS + 1, IRS + 1, A | TcpFlags::PSH);
    t.expect(300, ISS + 1, IRS + 1, A); // retransmission
                                        // An ACK 2 s later must not produce a 2 s sample (ambiguous, RFC 6298 §3).
    t.send(2300, seg(IRS + 1, ISS + 2, A));
    assert_eq!(t.c.rtt().srtt().unwrap(), srtt0);
    // A fresh segment acked after 50 ms yields a sample.
    t.c.write(b"y").unwrap();
    t.expect(2400, ISS + 2, IRS + 1, A | TcpFlags::PSH);
    t.send(2450, seg(IRS + 1, ISS + 3, A));
    assert_ne!(t.c.rtt().srtt().unwrap(), srtt0);
}

#[test]
fn user_timeout_aborts_with_timed_out() {
    let cfg = Config {
        user_timeout: Duration::from_secs(3),
        ..plain_config()
    };
    let mut t = T::established_client(cfg);
    t.c.write(b"x").unwrap();
    t.expect(100, ISS + 1, IRS + 1, A | TcpFlags::PSH);
    let mut last = 100;
    let mut closed_at = None;
    for step in (101..10_000).step_by(1) {
        while let Some(s) = t.recv(step) {
            if s.flags.rst() {
                closed_at = Some(step);
            }
            last = step;
        }
        if t.c.state() == State::Closed {
            break;
        }
    }
    assert_eq!(t.c.error(), Some(ConnectionError::TimedOut));
    let at = closed_at.expect("an RST when giving up");
    assert!(
        (3100..=100 + 3000 + 1600).contains(&at),
        "closed at {at} (last {last})"
    );
}

/// After an RTO cwnd is one segment (RFC 5681 §3.1): one retransmission,
/// then the rest as ACKs open the window, not the whole flight at once.
/// Found with the kernel bridge: the "first retransmission of the episode
/// ignores cwnd" test was true again for every later lost segment (an empty
/// `take_while` is `all`-true once the front segment was resent), so an RTO
/// burst the entire flight — up to 2,600 segments in well under 1 ms.
#[test]

fn rto_retransmits_one_segment_then_waits_for_acks() {
    let mut t = T::established_client(plain_config());
    let segs = send_n_segments(&mut t, 4, 100);
    assert_eq!(segs.len(), 4);
    t.expect_none(299);
    t.expect(300, ISS + 1, IRS + 1, A);
    t.expect_none(300);
    // The ACK of it: cwnd 2 segments, the next two go.
    t.send(310, seg(IRS + 1, ISS + 1001, A));
    t.expect(310, ISS + 1001, IRS + 1, A);
    t.expect(310, ISS + 2001, IRS + 1, A);
    t.expect_none(310);
}

/// A client with timestamps (no SACK, so no loss probe), 4 segments sent at
/// 100 ms (TSval 100), the RTO at 300 ms retransmitting the first (TSval 300).
fn spurious_rto_setup() -> T {
    let cfg = Config {
        timestamps: true,
        ..plain_config()
    };
    let mut t = T::client(cfg);
    let syn = t.expect(0, ISS, 0, S);
    let (syn_ts, _) = syn.opts.timestamps.unwrap();
    t.send(10, seg(IRS, ISS + 1, S | A).mss(1012).ts(500, syn_ts));
    t.expect(10, ISS + 1, IRS + 1, A);
    let segs = send_n_segments(&mut t, 4, 100);
    assert_eq!(segs.len(), 4);
    assert_eq!(segs[0].opts.timestamps.unwrap().0, 100);
    t.expect_none(299);
    let r = t.expect(300, ISS + 1, IRS + 1, A);
    assert_eq!(r.opts.timestamps.unwrap().0, 300);
    assert_eq!(t.c.stats().rto_events, 1);
    t
}

/// Found by the kernel bridge: on a loaded machine xtcp's 50 ms RTO fired
/// while the peer's ACKs sat in its socket, and it resent up to 2,600
/// segments the kernel already had (all D-SACKed). RFC 3522 (Eifel
/// detection): the first ACK after the timeout echoes a TSval older than the
/// retransmission's, so the originals arrived; the rest is not resent.
#[test]
fn spurious_rto_detected_by_timestamps_stops_go_back_n() {
    let mut t = spurious_rto_setup();
    // The ACK for the originals (TSecr 100 < 300): spurious timeout.
    t.send(305, seg(IRS + 1, ISS + 2001, A).ts(600, 100));
    t.expect_none(305);
    t.send(306, seg(IRS + 1, ISS + 4001, A).ts(601, 100));
    assert_eq!(t.c.unacked(), 0);
    assert_eq!(
        t.c.stats().bytes_retransmitted,
        1000,
        "only the RTO's segment"
    );
}

/// The control: the ACK echoes the retransmission (TSecr 300), so the
/// originals were lost and the remaining segments are resent as before.
#[test]
fn genuine_rto_still_resends_the_rest() {
    let mut t = spurious_rto_setup();
    t.send(305, seg(IRS + 1, ISS + 1001, A).ts(600, 300));
    t.expect(305, ISS + 1001, IRS + 1, A);
    t.expect(305, ISS + 2001, IRS + 1, A);
}

// ===================================================================
// Fast retransmit / NewReno (RFC 5681 §3.2, RFC 6582)
// ===================================================================

fn send_n_segments(t: &mut T, n: usize, at: u64) -> Vec<Seg> {
    let data = vec![7u8; 1000 * n];
    assert_eq!(t.c.write(&data).unwrap(), data.len());
    let mut out = Vec::new();
    while let Some(s) = t.recv(at) {
        out.push(s);
    }
    out
}

#[test]
fn fast_retransmit_on_three_duplicate_acks() {
    let mut t = T::established_client(plain_config());
    let segs = send_n_segments(&mut t, 6, 100);
    assert_eq!(segs.len(), 6);
    assert!(segs.iter().all(|s| s.payload.len() == 1000));
    // Segment 1 lost; 2, 3, 4 arrive → three duplicate ACKs.
    t.send(110, seg(IRS + 1, ISS + 1, A));
    t.expect_none(110);
    t.send(111, seg(IRS + 1, ISS + 1, A));
    t.expect_none(111);
    t.send(112, seg(IRS + 1, ISS + 1, A));
    let rtx = t.expect(112, ISS + 1, IRS + 1, A);
    assert_eq!(rtx.payload.len(), 1000);
    assert!(t.c.in_recovery());
    assert_eq!(t.c.stats().fast_retransmits, 1);
    // Partial ACK (RFC 6582 §3.2 step 4): retransmit the next hole at once.
    t.send(120, seg(IRS + 1, ISS + 2001, A));
    t.expect(120, ISS + 2001, IRS + 1, A);
    // Full ACK ends recovery.
    t.send(130, seg(IRS + 1, ISS + 6001, A));
    assert!(!t.c.in_recovery());
}

// ===================================================================
// SACK-based recovery (RFC 2018, RFC 6675)
// ===================================================================

fn sack_config() -> Config {
    Config {
        sack: true,
        ..plain_config()
    }
}

fn established_sack_client() -> T {
    let mut t = T::client(sack_config());
    let syn = t.expect(0, ISS, 0, S);
    assert!(syn.opts.sack_permitted);
    let mut sa = seg(IRS, ISS + 1, S | A).mss(1000);
    sa.opts.sack_permitted = true;
    t.send(10, sa);
    t.expect(10, ISS + 1, IRS + 1, A);
    t
}

#[test]
fn sack_recovery_retransmits_only_the_holes() {
    let mut t = established_sack_client();
    let segs = send_n_segments(&mut t, 8, 100);
    assert_eq!(segs.len(), 8);
    // Segments 1 and 4 lost. SACKs for 2-3, then 2-3 & 5-8.
    let b = ISS + 1;
    t.send(110, seg(IRS + 1, b, A).sack(&[(b + 1000, b + 3000)]));
    t.expect_none(110);
    t.send(
        111,
        seg(IRS + 1, b, A).sack(&[(b + 4000, b + 6000), (b + 1000, b + 3000)]),
    );
    // Four segments SACKed above segment 1 → lost by DupThresh (RFC 6675 §4 IsLost).
    let r1 = t.expect(111, b, IRS + 1, A);
    assert_eq!(r1.payload.len(), 1000);
    t.send(
        112,
        seg(IRS + 1, b, A).sack(&[(b + 4000, b + 8000), (b + 1000, b + 3000)]),
    );
    // Now segment 4 (at +3000) also has ≥ 3 segments SACKed above it.
    let r2 = t.expect(112, b + 3000, IRS + 1, A);
    assert_eq!(r2.payload.len(), 1000);
    t.expect_none(112);
    assert_eq!(t.c.stats().bytes_retransmitted, 2000);
    t.send(130, seg(IRS + 1, b + 8000, A));
    assert!(!t.c.in_recovery());
    assert_eq!(t.c.unacked(), 0);
}

#[test]
fn tail_loss_probe_resends_the_last_segment_at_two_srtt() {
    // RFC 8985 §7: SRTT = 10 ms from the handshake, so PTO = 20 ms, well before the 200 ms RTO.
    let mut t = established_sack_client();
    let segs = send_n_segments(&mut t, 3, 100);
    assert_eq!(segs.len(), 3);
    t.expect_none(119);
    let p = t.expect(120, ISS + 1 + 2000, IRS + 1, A);
    assert_eq!(p.payload.len(), 1000);
    // One probe per flight: nothing more until the RTO.
    t.expect_none(299);
    t.expect(300, ISS + 1, IRS + 1, A);
}

#[test]
fn receiver_generates_sack_blocks_most_recent_first() {
    // RFC 2018 §4.
    let mut t = T::client(sack_config());
    t.expect(0, ISS, 0, S);
    let mut sa = seg(IRS, ISS + 1, S | A).mss(1000);
    sa.opts.sack_permitted = true;
    t.send(10, sa);
    t.expect(10, ISS + 1, IRS + 1, A);
    let r = IRS + 1;
    t.send(20, seg(r + 100, ISS + 1, A).data(&[1; 100]));
    let a1 = t.expect(20, ISS + 1, r, A);
    assert_eq!(
        a1.opts.sack_blocks(),
        &[SackBlock {
            left: SeqNumber(r + 100),
            right: SeqNumber(r + 200)
        }]
    );
    t.send(21, seg(r + 300, ISS + 1, A).data(&[1; 100]));
    let a2 = t.expect(21, ISS + 1, r, A);
    assert_eq!(
        a2.opts.sack_blocks(),
        &[
            SackBlock {
                left: SeqNumber(r + 300),
                right: SeqNumber(r + 400)
            },
            SackBlock {
                left: SeqNumber(r + 100),
                right: SeqNumber(r + 200)
            },
        ]
    );
    // Filling the first hole: cumulative ACK moves, one block remains.
    t.send(22, seg(r, ISS + 1, A).data(&[1; 100]));
    let a3 = t.expect(22, ISS + 1, r + 200, A);
    assert_eq!(
        a3.opts.sack_blocks(),
        &[SackBlock {
            left: SeqNumber(r + 300),
            right: SeqNumber(r + 400)
        }]
    );
}

// ===================================================================
// Zero window and persist probes (RFC 9293 §3.8.6.1)
// ===================================================================

#[test]
fn zero_window_persist_probes_back_off_and_window_reopens() {
    let mut t = T::established_client(plain_config());
    // Peer closes its window.
    t.send(20, seg(IRS + 1, ISS + 1, A).win(0));
    t.c.write(b"hello").unwrap();
    t.expect_none(20);
    // Persist timer at RTO (200 ms), then backed off.
    t.expect_none(219);
    let p1 = t.expect(220, ISS + 1, IRS + 1, A);
    assert_eq!(p1.payload, b"h");
    t.send(225, seg(IRS + 1, ISS + 1, A).win(0));
    t.expect_none(619);
    let p2 = t.expect(620, ISS + 1, IRS + 1, A);
    assert_eq!(p2.payload, b"h");
    // Window opens: all data goes.
    t.send(630, seg(IRS + 1, ISS + 1, A).win(1000));
    let d = t.expect(630, ISS + 1, IRS + 1, A | TcpFlags::PSH);
    assert_eq!(d.payload, b"hello");
}

#[test]
fn window_probe_byte_accepted_by_the_peer() {
    let mut t = T::established_client(plain_config());
    t.send(20, seg(IRS + 1, ISS + 1, A).win(0));
    t.c.write(b"hello").unwrap();
    t.expect_none(20);
    let p = t.expect(220, ISS + 1, IRS + 1, A);
    assert_eq!(p.payload, b"h");
    // The window had just opened: the peer keeps the byte and acknowledges it.
    t.send(225, seg(IRS + 1, ISS + 2, A).win(1000));
    let d = t.expect(225, ISS + 2, IRS + 1, A | TcpFlags::PSH);
    assert_eq!(d.payload, b"ello");
    t.send(230, seg(IRS + 1, ISS + 6, A).win(1000));
    assert_eq!(t.c.unacked(), 0);
}

#[test]
fn receiver_advertises_zero_window_and_reopens_on_read() {
    let cfg = Config {
        recv_buffer: 4000,
        ..plain_config()
    };
    let mut t = T::established_server(cfg);
    for i in 0..4u32 {
        t.send(
            20 + u64::from(i),
            seg(IRS + 1 + i * 1000, ISS + 1, A).data(&[9; 1000]),
        );
    }
    let mut last = None;
    while let Some(s) = t.recv(30) {
        last = Some(s);
    }
    let last = last.expect("acks");
    assert_eq!((last.ack, last.window), (IRS + 4001, 0));
    // A probe beyond the zero window is not accepted but is ACKed.
    t.send(40, seg(IRS + 4001, ISS + 1, A).data(b"z"));
    let a = t.expect(40, ISS + 1, IRS + 4001, A);
    assert_eq!(a.window, 0);
    // The application reads: a window update goes out.
    let mut b = vec![0u8; 4000];
    assert_eq!(t.c.read(&mut b), Ok(4000));
    let upd = t.expect(50, ISS + 1, IRS + 4001, A);
    assert_eq!(upd.window, 4000);
}

// ===================================================================
// PAWS (RFC 7323 §5)
// ===================================================================

#[test]
fn paws_drops_old_timestamps() {
    let cfg = Config {
        timestamps: true,
        ..plain_config()
    };
    let mut t = T::server(cfg);
    t.send(0, seg(IRS, 0, S).ts(100, 0));
    let sa = t.expect(0, ISS, IRS + 1, S | A);
    let (my_ts, echo) = sa.opts.timestamps.unwrap();
    assert_eq!(echo, 100);
    t.send(10, seg(IRS + 1, ISS + 1, A).ts(110, my_ts));
    assert_eq!(t.c.state(), State::Established);
    t.send(20, seg(IRS + 1, ISS + 1, A).ts(120, my_ts).data(b"new"));
    // A segment with an older TSval is dropped but ACKed (RFC 7323 §5.3 R1).
    t.send(30, seg(IRS + 4, ISS + 1, A).ts(50, my_ts).data(b"old"));
    let a = t.expect(30, ISS + 1, IRS + 4, A);
    assert_eq!(a.opts.timestamps.unwrap().1, 120);
    let mut b = [0u8; 8];
    assert_eq!(t.c.read(&mut b), Ok(3));
    assert_eq!(&b[..3], b"new");
    assert!(t.c.stats().dropped_segments >= 1);
}

// ===================================================================
// Address changes: path validation (spec/xtcp.md §8.1–§8.7)
// ===================================================================

/// An on-path observer's own address.
fn observer() -> SocketAddr {
    "198.51.100.66:6666".parse().unwrap()
}

/// The peer's address after its NAT rebound it.
fn rebound() -> SocketAddr {
    "192.0.2.2:4777".parse().unwrap()
}

/// A client with timestamps, established; returns it and the TSval of its SYN.
fn established_ts_client() -> (T, u32) {
    let cfg = Config {
        timestamps: true,
        ..plain_config()
    };
    let mut t = T::client(cfg);
    let syn = t.expect(0, ISS, 0, S);
    let my_ts = syn.opts.timestamps.unwrap().0;
    t.send(10, seg(IRS, ISS + 1, S | A).mss(1000).ts(100, my_ts));
    t.expect(10, ISS + 1, IRS + 1, A);
    (t, my_ts)
}

fn address_events(t: &mut T) -> Vec<SocketAddr> {
    t.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::AddressChanged(a) => Some(a),
            _ => None,
        })
        .collect()
}

/// Issue 16: an on-path observer copies the header of one of the receiver's
/// pure ACKs into a 44-byte datagram sent from its own address. The sender
/// must not move there (spec/xtcp.md §8.1): its data keeps going to the
/// receiver, which keeps ACKing, and the observer gets at most 3 × the 44
/// bytes it sent (§8.5) — a challenge, not the data.
//= spec/xtcp.md#XT-PV-1
//= spec/xtcp.md#XT-PV-2
#[test]
fn forged_ack_from_a_third_address_does_not_move_the_sender() {
    let (mut t, _) = established_ts_client();
    let total = 60_000u32;
    assert_eq!(t.c.write(&vec![7u8; total as usize]), Ok(total as usize));
    let (mut to_observer, mut from_observer, mut data_to_observer) = (0usize, 0usize, 0usize);
    let (mut acked, mut peer_ts, mut last_tsval) = (ISS + 1, 100u32, 0u32);
    let mut forged = false;
    for now in (20..3000).step_by(10) {
        let mut highest = acked;
        while let Some((to, size, s)) = t.recv_any(now) {
            if to == observer() {
                to_observer += size;
                data_to_observer += s.payload.len();
                continue;
            }
            assert_eq!(to, remote(), "a segment to a stranger at {now} ms: {s:?}");
            last_tsval = s.opts.timestamps.map_or(last_tsval, |(v, _)| v);
            highest = highest.max(s.seq + s.payload.len() as u32);
        }
        if highest == acked {
            continue;
        }
        // The receiver got everything (no loss) and ACKs it.
        peer_ts += 10;
        let ack = seg(IRS + 1, highest, A).ts(peer_ts, last_tsval);
        t.send(now, ack.clone());
        acked = highest;
        if !forged {
            // The observer copies that ACK and sends it from its own address.
            forged = true;
            from_observer += t.send_from(now, observer(), ack);
        }
    }
    eprintln!(
        "observer got {to_observer} bytes ({data_to_observer} of data) for its \
         {from_observer}; the receiver ACKed {} of {total}",
        acked - (ISS + 1)
    );
    assert_eq!(from_observer, 44, "the forged ACK of issue 16 is 44 bytes");
    assert_eq!(t.c.remote(), remote());
    assert_eq!(address_events(&mut t), Vec::<SocketAddr>::new());
    assert_eq!(acked, ISS + 1 + total, "the receiver got every byte");
    assert_eq!(data_to_observer, 0);
    assert!(
        to_observer <= 3 * from_observer,
        "{to_observer} bytes to the observer for its {from_observer}"
    );
}

/// spec/xtcp.md §8.5: a spoofed address that never answers receives at most
/// 3 × what came from it; the challenge is retried on the RTO and the
/// candidate dropped after 3 periods (§8.4); one candidate at a time (§8.3).
//= spec/xtcp.md#XT-PV-6
//= spec/xtcp.md#XT-PV-9
//= spec/xtcp.md#XT-PV-10
#[test]
fn unvalidated_address_gets_at_most_three_times_what_it_sent() {
    let (mut t, my_ts) = established_ts_client();
    let victim: SocketAddr = "203.0.113.9:53".parse().unwrap();
    let other: SocketAddr = "203.0.113.10:53".parse().unwrap();
    let forged = seg(IRS + 1, ISS + 1, A).ts(100, my_ts);
    let got = t.send_from(20, victim, forged.clone());
    assert_eq!(got, 44);
    // The challenge: a pure ACK with the path option, to the victim only.
    let (to, size, c1) = t.recv_any(20).expect("a challenge");
    assert_eq!(
        (to, c1.flags, c1.seq, c1.ack),
        (victim, A, ISS + 1, IRS + 1)
    );
    assert!(matches!(c1.opts.path, Some(PathOption::Challenge(_))));
    assert_eq!(size, 56);
    assert!(t.recv_any(20).is_none());
    // A second stranger is ignored while the first is a candidate.
    t.send_from(30, other, forged.clone());
    assert!(t.recv_any(30).is_none());
    // RTO = 200 ms (min_rto): the second challenge, with a fresh token.
    assert!(t.recv_any(219).is_none());
    let (to, size2, c2) = t.recv_any(220).expect("a second challenge");
    assert_eq!(to, victim);
    assert_ne!(c1.opts.path, c2.opts.path);
    // The third would pass 3 × 44 = 132 bytes: it is not sent.
    assert!(size + size2 + 56 > 3 * got);
    let mut sent = size + size2;
    for now in (221..2000).step_by(7) {
        if let Some((to, size, s)) = t.recv_any(now) {
            panic!("{size} more bytes to {to} at {now} ms: {s:?}");
        }
    }
    assert!(sent <= 3 * got);
    // The candidate was dropped after 3 RTOs: the other stranger may now be challenged.
    t.send_from(2000, other, forged);
    let (to, size, c3) = t.recv_any(2000).expect("a challenge to the next candidate");
    sent += size;
    assert_eq!(to, other);
    assert!(matches!(c3.opts.path, Some(PathOption::Challenge(_))));
    assert_eq!(t.c.remote(), remote());
    assert_eq!(address_events(&mut t), Vec::<SocketAddr>::new());
    assert!(sent > 0);
}

/// A real NAT rebinding (spec/xtcp.md §8.4): the peer's segments come only
/// from its new address. Data keeps going to the old address until the new
/// one echoes the challenge; a wrong token or an echo from elsewhere does not
/// count; then everything goes to the new address. Later the peer moves back
/// (the old address is validated again, §8.4 last rule).
#[test]
fn nat_rebinding_is_followed_once_the_challenge_is_answered() {
    let (mut t, _) = established_ts_client();
    assert_eq!(t.c.write(&[1u8; 3000]), Ok(3000));
    let d1 = t.expect(20, ISS + 1, IRS + 1, A);
    assert_eq!(d1.payload.len(), 988); // MSS 1000 − 12 bytes of timestamps
    while t.recv(20).is_some() {}
    // The peer's ACK now comes from its new mapping.
    let my_ts = d1.opts.timestamps.unwrap().0;
    t.send_from(30, rebound(), seg(IRS + 1, ISS + 1 + 988, A).ts(130, my_ts));
    let (to, _, ch) = t.recv_any(30).expect("a challenge");
    assert_eq!(to, rebound());
    let Some(PathOption::Challenge(token)) = ch.opts.path else {
        panic!("not a challenge: {ch:?}")
    };
    // Still unvalidated: new data goes to the old address.
    assert_eq!(t.c.write(&[2u8; 500]), Ok(500));
    let (to, _, d) = t.recv_any(31).expect("data");
    assert_eq!(to, remote());
    assert!(!d.payload.is_empty());
    // The candidate gets a copy of the ACK (no data, spec/xtcp.md §8.1), once.
    let (to, _, copy) = t.recv_any(31).expect("an ACK copy");
    assert_eq!((to, copy.flags, copy.ack), (rebound(), A, IRS + 1));
    assert!(copy.payload.is_empty() && copy.opts.path.is_none());
    assert!(t.recv_any(31).is_none());
    // Echoes that do not count: a wrong token, the right one from elsewhere.
    let echo = |tok| {
        seg(IRS + 1, ISS + 1 + 988, A)
            .ts(131, my_ts)
            .path(PathOption::Response(tok))
    };
    t.send_from(40, rebound(), echo(token ^ 1));
    t.send_from(40, observer(), echo(token));
    assert_eq!(t.c.remote(), remote());
    assert_eq!(address_events(&mut t), Vec::<SocketAddr>::new());
    // The answer from the new address: moved, and an ACK goes there at once.
    t.send_from(41, rebound(), echo(token));
    assert_eq!(t.c.remote(), rebound());
    assert_eq!(address_events(&mut t), vec![rebound()]);
    let (to, _, a) = t.recv_any(41).expect("an ACK to the new address");
    assert_eq!((to, a.opts.path), (rebound(), None));
    // A retransmission goes to the new address too.
    let (to, _, r) = t.recv_any(300).expect("the RTO retransmission");
    assert_eq!((to, r.seq), (rebound(), ISS + 1 + 988));
    // The peer moves back: the old address must answer a challenge again.
    t.send_from(
        310,
        remote(),
        seg(IRS + 1, ISS + 1 + 3500, A).ts(400, my_ts),
    );
    let (to, _, ch) = t.recv_any(310).expect("a challenge to the old address");
    assert_eq!(to, remote());
    let Some(PathOption::Challenge(back)) = ch.opts.path else {
        panic!("not a challenge: {ch:?}")
    };
    assert_ne!(back, token);
    assert_eq!(t.c.remote(), rebound());
    t.send_from(320, remote(), echo(back).ts(401, my_ts));
    assert_eq!(t.c.remote(), remote());
    assert_eq!(address_events(&mut t), vec![remote()]);
}

/// spec/xtcp.md §8.3 rule 1: a segment from the current address newer than
/// the candidate's drops the candidate, so an observer that does answer its
/// challenge, once the real peer has spoken again, moves nothing; a
/// reordered older segment from the old address does not drop a real one.
#[test]
fn newer_segment_from_the_old_address_drops_the_candidate() {
    let (mut t, my_ts) = established_ts_client();
    let ack = |ts: u32| seg(IRS + 1, ISS + 1, A).ts(ts, my_ts);
    t.send_from(20, observer(), ack(200));
    let (to, _, ch) = t.recv_any(20).expect("a challenge");
    assert_eq!(to, observer());
    let Some(PathOption::Challenge(token)) = ch.opts.path else {
        panic!("not a challenge: {ch:?}")
    };
    // An older (reordered) segment from the peer's address changes nothing …
    t.send(25, ack(150));
    // … a newer one drops the candidate: the observer's echo is ignored.
    t.send(30, ack(210));
    t.send_from(31, observer(), ack(200).path(PathOption::Response(token)));
    assert_eq!(t.c.remote(), remote());
    assert_eq!(address_events(&mut t), Vec::<SocketAddr>::new());
    // Same order without the newer segment: the echo validates.
    let (mut t, my_ts) = established_ts_client();
    let ack = |ts: u32| seg(IRS + 1, ISS + 1, A).ts(ts, my_ts);
    t.send_from(20, rebound(), ack(200));
    let (_, _, ch) = t.recv_any(20).expect("a challenge");
    let Some(PathOption::Challenge(token)) = ch.opts.path else {
        panic!("not a challenge: {ch:?}")
    };
    t.send(25, ack(150));
    t.send_from(31, rebound(), ack(201).path(PathOption::Response(token)));
    assert_eq!(t.c.remote(), rebound());
}

/// spec/xtcp.md §8.3: a segment's address counts only after PAWS and the
/// RFC 5961 checks: a stale TSval, an ACK of unsent data or one too old, a
/// RST or a SYN from a new address makes no candidate (nothing goes there).
#[test]
fn paws_and_rfc5961_checks_come_before_the_address() {
    let (mut t, my_ts) = established_ts_client();
    t.send(20, seg(IRS + 1, ISS + 1, A).ts(200, my_ts));
    let x = observer();
    for s in [
        seg(IRS + 1, ISS + 1, A).ts(150, my_ts), // PAWS: older than TS.Recent
        seg(IRS + 1, ISS + 5000, A).ts(300, my_ts), // ACK of unsent data
        seg(IRS + 1, ISS.wrapping_sub(70_000), A).ts(300, my_ts), // ACK too old (RFC 5961 §5.2)
        seg(IRS + 11, ISS + 1, R).ts(300, my_ts), // RST in window, not exact
        seg(IRS + 1, ISS + 1, S).ts(300, my_ts), // SYN
        seg(IRS + 1, ISS + 1, TcpFlags::empty()).ts(300, my_ts), // no ACK bit
    ] {
        t.send_from(30, x, s.clone());
        while let Some((to, _, out)) = t.recv_any(30) {
            assert_eq!(to, remote(), "{out:?} to {to} after {s:?}");
        }
    }
    assert_eq!(t.c.remote(), remote());
    // The same ACK with a fresh TSval passes, and draws a challenge.
    t.send_from(40, x, seg(IRS + 1, ISS + 1, A).ts(300, my_ts));
    let (to, _, ch) = t.recv_any(40).expect("a challenge");
    assert_eq!(to, x);
    assert!(matches!(ch.opts.path, Some(PathOption::Challenge(_))));
}

/// spec/xtcp.md §8.6: a challenge is answered with its token, to the address
/// it came from: the current one, or a new one (within its budget, with our
/// own challenge to it). A challenge is not a duplicate ACK (§8.2).
#[test]
fn challenges_are_answered_to_where_they_came_from() {
    let mut t = T::established_client(plain_config());
    assert_eq!(t.c.write(&[3u8; 100]), Ok(100));
    t.expect(20, ISS + 1, IRS + 1, A | TcpFlags::PSH);
    let ch = |tok| seg(IRS + 1, ISS + 1, A).path(PathOption::Challenge(tok));
    // Three identical pure ACKs that are challenges: no fast retransmit.
    for tok in [1, 2, 0x0123_4567_89ab_cdef] {
        t.send(30, ch(tok));
        let (to, size, r) = t.recv_any(30).expect("a response");
        assert_eq!(
            (to, r.seq, r.ack, r.flags),
            (remote(), ISS + 101, IRS + 1, A)
        );
        assert_eq!(r.opts.path, Some(PathOption::Response(tok)));
        assert!(r.payload.is_empty());
        assert_eq!(size, 44);
        assert!(
            t.recv_any(30).is_none(),
            "no retransmission for a challenge"
        );
    }
    // From a new address: the response goes there, then our own challenge.
    let got = t.send_from(40, rebound(), ch(77));
    let (to, s1, r) = t.recv_any(40).expect("a response");
    assert_eq!(
        (to, r.opts.path),
        (rebound(), Some(PathOption::Response(77)))
    );
    let (to, s2, c) = t.recv_any(40).expect("a challenge");
    assert_eq!(to, rebound());
    assert!(matches!(c.opts.path, Some(PathOption::Challenge(_))));
    assert!(s1 + s2 <= 3 * got);
    assert!(t.recv_any(40).is_none());
    assert_eq!(t.c.remote(), remote());
}

// ===================================================================
// Delayed ACK (RFC 1122 §4.2.3.2, RFC 5681 §4.2)
// ===================================================================

#[test]
fn delayed_ack_every_second_segment_or_timer() {
    let cfg = Config {
        delayed_ack: Some(Duration::from_millis(40)),
        ..plain_config()
    };
    let mut t = T::established_server(cfg);
    let mss = 1000; // peer MSS 1000, no timestamps
    t.send(20, seg(IRS + 1, ISS + 1, A).data(&vec![1; mss]));
    t.expect_none(20);
    // Second full-sized segment → ACK at once.
    t.send(21, seg(IRS + 1 + 1000, ISS + 1, A).data(&vec![1; mss]));
    t.expect(21, ISS + 1, IRS + 2001, A);
    // A lone segment waits for the timer.
    t.send(30, seg(IRS + 2001, ISS + 1, A).data(&[1; 10]));
    t.expect_none(69);
    t.expect(70, ISS + 1, IRS + 2011, A);
    // Out-of-order data is ACKed immediately (RFC 5681 §4.2).
    t.send(80, seg(IRS + 3000, ISS + 1, A).data(&[1; 10]));
    t.expect(80, ISS + 1, IRS + 2011, A);
}

/// Everything the connection sends at `t`.
fn drain(t: &mut T, at: u64) -> Vec<Seg> {
    std::iter::from_fn(|| t.recv(at)).collect()
}

/// `n` in-order 1000-byte segments from the peer, all at `at` with no
/// `poll_transmit` in between: one receive batch (a `recvmmsg`, a GRO
/// super-datagram), the first starting at receive offset `from`.
fn batch(t: &mut T, at: u64, from: u32, n: u32) {
    for i in 0..n {
        t.send(
            at,
            seg(IRS + 1 + from + 1000 * i, ISS + 1, A).data(&[1; 1000]),
        );
    }
}

/// Issue 16: ten full-sized segments in one batch draw five ACKs, one for
/// every second segment, in order, not one ACK for all ten; every ACK
/// advertises the same right edge (RFC 9293 §3.8.6.2.2: it never moves left).
//= spec/xtcp.md#XT-ACK-1
#[test]
fn batch_of_ten_full_sized_segments_is_acked_every_second_one() {
    let cfg = Config {
        delayed_ack: Some(Duration::from_millis(25)),
        ..plain_config()
    };
    let mut t = T::established_server(cfg);
    batch(&mut t, 20, 0, 10);
    let acks = drain(&mut t, 20);
    let got: Vec<u32> = acks.iter().map(|s| s.ack).collect();
    let want: Vec<u32> = (1..=5).map(|k| IRS + 1 + 2000 * k).collect();
    assert_eq!(got, want, "{acks:?}");
    assert!(acks.iter().all(|s| s.flags == A && s.seq == ISS + 1));
    assert!(acks.iter().all(|s| s.payload.is_empty()));
    let edges: Vec<u32> = acks
        .iter()
        .map(|s| s.ack.wrapping_add(u32::from(s.window)))
        .collect();
    assert!(edges.windows(2).all(|w| w[0] == w[1]), "{edges:?}");
    // Nothing left unacknowledged: no delayed ACK follows.
    t.expect_none(100);
}

/// An odd batch: the last segment is acknowledged with the rest at once
/// (the ACK of the batch's end), never left to the delayed-ACK timer.
//= spec/xtcp.md#XT-ACK-1
#[test]
fn odd_batch_ends_with_an_ack_of_its_last_segment() {
    let cfg = Config {
        delayed_ack: Some(Duration::from_millis(25)),
        ..plain_config()
    };
    let mut t = T::established_server(cfg);
    batch(&mut t, 20, 0, 5);
    let got: Vec<u32> = drain(&mut t, 20).iter().map(|s| s.ack).collect();
    let want: Vec<u32> = [2000, 4000, 5000].iter().map(|k| IRS + 1 + k).collect();
    assert_eq!(got, want);
    // A lone segment after it waits for the timer, as before.
    batch(&mut t, 30, 5000, 1);
    t.expect_none(54);
    t.expect(55, ISS + 1, IRS + 1 + 6000, A);
}

/// Without a delayed-ACK timer every segment of a batch is acknowledged.
#[test]
fn batch_without_delayed_ack_is_acked_segment_by_segment() {
    let mut t = T::established_server(plain_config());
    batch(&mut t, 20, 0, 4);
    let got: Vec<u32> = drain(&mut t, 20).iter().map(|s| s.ack).collect();
    let want: Vec<u32> = (1..=4).map(|k| IRS + 1 + 1000 * k).collect();
    assert_eq!(got, want);
}

/// With timestamps each ACK of a batch echoes the TSval of the earliest
/// segment it covers (RFC 7323 §4.3), not the first segment of the batch.
//= spec/xtcp.md#XT-ACK-1
#[test]
fn batch_acks_echo_the_earliest_segment_they_cover() {
    let cfg = Config {
        timestamps: true,
        delayed_ack: Some(Duration::from_millis(25)),
        ..plain_config()
    };
    let mut t = T::server(cfg);
    t.send(0, seg(IRS, 0, S).mss(1000).ts(100, 0));
    let sa = t.expect(0, ISS, IRS + 1, S | A);
    let (my_ts, _) = sa.opts.timestamps.unwrap();
    t.send(10, seg(IRS + 1, ISS + 1, A).ts(101, my_ts));
    assert_eq!(t.c.state(), State::Established);
    for i in 0..6u32 {
        t.send(
            20,
            seg(IRS + 1 + 900 * i, ISS + 1, A)
                .data(&[1; 900])
                .ts(200 + i, my_ts),
        );
    }
    let acks = drain(&mut t, 20);
    let got: Vec<(u32, u32)> = acks
        .iter()
        .map(|s| (s.ack, s.opts.timestamps.unwrap().1))
        .collect();
    assert_eq!(
        got,
        vec![
            (IRS + 1 + 1800, 200),
            (IRS + 1 + 3600, 202),
            (IRS + 1 + 5400, 204)
        ]
    );
}

/// Data going out carries the ACKs a batch owes, oldest first, instead of
/// one ACK of the whole batch on every segment: no pure ACK is added while
/// there is data to carry them; those left over go as pure ACKs.
//= spec/xtcp.md#XT-ACK-1
#[test]
fn batch_acks_ride_on_outgoing_data() {
    let cfg = Config {
        delayed_ack: Some(Duration::from_millis(25)),
        ..plain_config()
    };
    let mut t = T::established_server(cfg);
    batch(&mut t, 20, 0, 6);
    assert_eq!(t.c.write(&[9; 3000]).unwrap(), 3000);
    let out = drain(&mut t, 20);
    let got: Vec<(u32, usize)> = out
        .iter()
        .map(|s| (s.ack - IRS - 1, s.payload.len()))
        .collect();
    assert_eq!(got, vec![(2000, 1000), (4000, 1000), (6000, 1000)]);
    // Less data than owed ACKs: the rest go as pure ACKs, in order.
    batch(&mut t, 30, 6000, 6);
    assert_eq!(t.c.write(&[9; 1000]).unwrap(), 1000);
    let out = drain(&mut t, 30);
    let got: Vec<(u32, usize)> = out
        .iter()
        .map(|s| (s.ack - IRS - 1, s.payload.len()))
        .collect();
    assert_eq!(got, vec![(8000, 1000), (10_000, 0), (12_000, 0)]);
}

/// The ACKs a batch owes are bounded (spec/xtcp.md §7: 256 queued at
/// most): 600 small segments in one batch draw 255 ACKs of two segments
/// each, one that covers the rest but the last two, and the ACK of the end.
#[test]
fn batch_ack_points_are_bounded() {
    let cfg = Config {
        delayed_ack: Some(Duration::from_millis(25)),
        ..plain_config()
    };
    let mut t = T::established_server(cfg);
    for i in 0..600u32 {
        t.send(20, seg(IRS + 1 + 100 * i, ISS + 1, A).data(&[1; 100]));
    }
    let got: Vec<u32> = drain(&mut t, 20).iter().map(|s| s.ack - IRS - 1).collect();
    let mut want: Vec<u32> = (1..=255).map(|k| 200 * k).collect();
    want.extend([59_800, 60_000]);
    assert_eq!(got, want);
}

/// A batch with a hole: the ACKs of the in-order run go first, then the
/// ACK of the state after the out-of-order segment, with its SACK block.
//= spec/xtcp.md#XT-ACK-1
#[test]
fn batch_with_a_hole_acks_the_run_then_reports_the_hole() {
    let mut t = T::server(Config {
        delayed_ack: Some(Duration::from_millis(25)),
        ..sack_config()
    });
    let mut syn = seg(IRS, 0, S).mss(1000);
    syn.opts.sack_permitted = true;
    t.send(0, syn);
    t.expect(0, ISS, IRS + 1, S | A);
    t.send(10, seg(IRS + 1, ISS + 1, A));
    batch(&mut t, 20, 0, 4);
    batch(&mut t, 20, 5000, 1);
    let acks = drain(&mut t, 20);
    let got: Vec<(u32, u8)> = acks.iter().map(|s| (s.ack, s.opts.sack_len)).collect();
    assert_eq!(got, vec![(IRS + 1 + 2000, 0), (IRS + 1 + 4000, 1)]);
    let b = acks[1].opts.sack[0];
    assert_eq!((b.left.0, b.right.0), (IRS + 1 + 5000, IRS + 1 + 6000));
}

// ===================================================================
// Nagle (RFC 896, RFC 9293 §3.7.4)
// ===================================================================

#[test]
fn nagle_holds_small_segments_while_data_is_unacked() {
    let cfg = Config {
        nagle: true,
        ..plain_config()
    };
    let mut t = T::established_client(cfg);
    t.c.write(b"a").unwrap();
    t.expect(20, ISS + 1, IRS + 1, A | TcpFlags::PSH);
    t.c.write(b"b").unwrap();
    t.c.write(b"c").unwrap();
    t.expect_none(21); // held: "a" is unacknowledged
    t.send(30, seg(IRS + 1, ISS + 2, A));
    let s = t.expect(30, ISS + 2, IRS + 1, A | TcpFlags::PSH);
    assert_eq!(s.payload, b"bc");
}

#[test]
fn nagle_off_sends_small_segments_at_once() {
    let mut t = T::established_client(plain_config());
    t.c.write(b"a").unwrap();
    t.expect(20, ISS + 1, IRS + 1, A | TcpFlags::PSH);
    t.c.write(b"b").unwrap();
    let s = t.expect(21, ISS + 2, IRS + 1, A | TcpFlags::PSH);
    assert_eq!(s.payload, b"b");
}

// ===================================================================
// Keepalive (RFC 1122 §4.2.3.6)
// ===================================================================

#[test]
fn keepalive_probes_then_timeout() {
    let cfg = Config {
        keepalive: Some(xtcp_proto::xtcp::conn::Keepalive {
            idle: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            probes: 2,
        }),
        ..plain_config()
    };
    let mut t = T::established_client(cfg);
    t.expect_none(10_009);
    t.expect(10_010, ISS, IRS + 1, A); // SEG.SEQ = SND.NXT - 1
    t.expect(11_010, ISS, IRS + 1, A);
    t.expect_none(12_009);
    t.expect_none(12_010);
    assert_eq!(t.c.error(), Some(ConnectionError::TimedOut));
}

// ===================================================================
// Endpoint: SYN cookies (RFC 4987 §3.6), routing, strays
// ===================================================================

fn endpoint(always_cookie: bool) -> Endpoint {
    Endpoint::new(
        EndpointConfig {
            conn: Arc::new(plain_config()),
            listen: true,
            always_cookie,
            ..EndpointConfig::default()
        },
        [7u8; 32],
    )
}

fn dgram(s: &Seg, cid: u64) -> Vec<u8> {
    let repr = SegmentRepr {
        xflags: XtcpFlags(0),
        conn_id: cid,
        src_port: 2,
        dst_port: 1,
        seq: SeqNumber(s.seq),
        ack: SeqNumber(s.ack),
        flags: s.flags,
        window: s.window,
        options: s.opts,
        payload: &s.payload,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    let n = repr.emit(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn ep_out(ep: &mut Endpoint, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        out.push(buf[..t.size].to_vec());
    }
    out
}

#[test]
fn syn_cookie_accept_keeps_no_state_until_the_ack() {
    let mut ep = Endpoint::new(
        EndpointConfig {
            conn: Arc::new(Config {
                sack: true,
                timestamps: true,
                ..plain_config()
            }),
            listen: true,
            always_cookie: true,
            ..EndpointConfig::default()
        },
        [7u8; 32],
    );
    let mut syn = seg(IRS, 0, S).mss(1200).ts(1, 0);
    syn.opts.sack_permitted = true;
    ep.handle_datagram(ms(0), remote(), &dgram(&syn, CID))
        .unwrap();
    assert_eq!(ep.len(), 0, "no state for a cookie SYN");
    let out = ep_out(&mut ep, ms(0));
    assert_eq!(out.len(), 1);
    let sa = SegmentRepr::parse(&out[0]).unwrap();
    assert_eq!(sa.flags, S | A);
    assert_eq!(sa.ack, SeqNumber(IRS + 1));
    assert!(sa.options.sack_permitted);
    let (tsval, _) = sa.options.timestamps.unwrap();
    // The completing ACK creates an ESTABLISHED connection.
    let ack = seg(IRS + 1, sa.seq.0.wrapping_add(1), A)
        .ts(2, tsval)
        .data(b"hi");
    let h = ep
        .handle_datagram(ms(5), remote(), &dgram(&ack, CID))
        .unwrap()
        .unwrap();
    assert_eq!(ep.accept(), Some(h));
    let c = ep.connection_mut(h).unwrap();
    assert_eq!(c.state(), State::Established);
    let mut b = [0u8; 4];
    assert_eq!(c.read(&mut b), Ok(2));
    assert_eq!(ep.stats().cookies_accepted, 1);
}

/// Found by the kernel bridge (interop/tests/kernel.rs, the kernel's
/// PAWSEstab counter): the cookie SYN-ACK's TSval carries the options in its
/// low 6 bits; rounded up, it ran ahead of the connection's clock, so the
/// first segments after the handshake had a smaller TSval and the peer's
/// PAWS check (RFC 7323 §5.3) dropped them for up to 63 ms. The encoded
/// TSval must not exceed the clock (Linux: `cookie_init_timestamp`).
#[test]
fn syn_cookie_tsval_never_runs_ahead_of_the_clock() {
    for cid in 0..32u64 {
        let mut ep = Endpoint::new(
            EndpointConfig {
                conn: Arc::new(Config {
                    sack: true,
                    timestamps: true,
                    window_scaling: true,
                    ..plain_config()
                }),
                listen: true,
                always_cookie: true,
                ..EndpointConfig::default()
            },
            [7u8; 32],
        );
        let mut syn = seg(IRS, 0, S).mss(1200).ts(1, 0);
        syn.opts.sack_permitted = true;
        syn.opts.window_scale = Some(7);
        ep.handle_datagram(ms(0), remote(), &dgram(&syn, cid))
            .unwrap();
        let out = ep_out(&mut ep, ms(0));
        let sa = SegmentRepr::parse(&out[0]).unwrap();
        let (cookie_ts, _) = sa.options.timestamps.unwrap();
        let ack = seg(IRS + 1, sa.seq.0.wrapping_add(1), A).ts(2, cookie_ts);
        let h = ep
            .handle_datagram(ms(0), remote(), &dgram(&ack, cid))
            .unwrap()
            .unwrap();
        ep.connection_mut(h).unwrap().write(b"x").unwrap();
        let out = ep_out(&mut ep, ms(0));
        let d = SegmentRepr::parse(out.last().unwrap()).unwrap();
        let (tsval, _) = d.options.timestamps.unwrap();
        assert!(
            tsval.wrapping_sub(cookie_ts) as i32 >= 0,
            "cid {cid}: TSval {tsval} after the cookie's {cookie_ts} goes backwards"
        );
    }
}

#[test]
fn forged_cookie_ack_is_reset_and_creates_nothing() {
    let mut ep = endpoint(true);
    let ack = seg(IRS + 1, 0xdead_beef, A);
    assert_eq!(
        ep.handle_datagram(ms(0), remote(), &dgram(&ack, CID))
            .unwrap(),
        None
    );
    assert_eq!(ep.len(), 0);
    let out = ep_out(&mut ep, ms(0));
    assert_eq!(out.len(), 1);
    let r = SegmentRepr::parse(&out[0]).unwrap();
    assert_eq!((r.flags, r.seq), (R, SeqNumber(0xdead_beef)));
    assert_eq!(ep.stats().cookies_rejected, 1);
}

#[test]
fn syn_flood_bounded_half_open_then_cookies() {
    let mut ep = Endpoint::new(
        EndpointConfig {
            conn: Arc::new(plain_config()),
            listen: true,
            max_half_open: 16,
            ..EndpointConfig::default()
        },
        [9u8; 32],
    );
    for i in 0..10_000u64 {
        let syn = seg(IRS, 0, S);
        let from: SocketAddr = format!("198.51.100.{}:{}", i % 200, 1000 + i % 50_000)
            .parse()
            .unwrap();
        ep.handle_datagram(ms(i / 100), from, &dgram(&syn, 0x1000 + i))
            .unwrap();
        let _ = ep_out(&mut ep, ms(i / 100));
    }
    assert_eq!(ep.half_open(), 16);
    assert_eq!(ep.len(), 16);
    assert!(ep.stats().cookies_sent >= 10_000 - 16);
}

#[test]
fn stray_segments_get_rst_and_garbage_is_dropped() {
    let mut ep = endpoint(false);
    assert!(ep
        .handle_datagram(ms(0), remote(), b"\x01\x00garbage")
        .is_err());
    assert!(ep_out(&mut ep, ms(0)).is_empty());
    // RST for an unknown connection is never answered.
    ep.handle_datagram(ms(0), remote(), &dgram(&seg(1, 2, R), 5))
        .unwrap();
    assert!(ep_out(&mut ep, ms(0)).is_empty());
}

#[test]
fn endpoint_to_endpoint_connect_transfer_close() {
    let a_addr: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    let b_addr = remote();
    let mut a = Endpoint::new(EndpointConfig::default(), [1; 32]);
    let mut b = endpoint(false);
    let h = a.connect(ms(0), b_addr);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut written = 0;
    let mut got = Vec::new();
    let mut hb = None;
    let mut now = ms(0);
    for _ in 0..100_000 {
        if let Some(c) = a.connection_mut(h) {
            if written < data.len() {
                if let Ok(n) = c.write(&data[written..]) {
                    written += n;
                }
            } else if c.state() == State::Established {
                c.shutdown(now);
            }
        }
        for d in ep_out(&mut a, now) {
            if std::env::var("DBG").is_ok() {
                let r = SegmentRepr::parse(&d).unwrap();
                if r.payload.len() < 1000 || r.flags.fin() {
                    eprintln!(
                        "{now:?} A> {:?} seq={} ack={} len={} win={}",
                        r.flags,
                        r.seq,
                        r.ack,
                        r.payload.len(),
                        r.window
                    );
                }
            }
            b.handle_datagram(now, a_addr, &d).unwrap();
        }
        if hb.is_none() {
            hb = b.accept();
        }
        if let Some(hb) = hb {
            let c = b.connection_mut(hb).unwrap();
            let mut buf = [0u8; 65536];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 {
                    if c.state() == State::CloseWait {
                        c.shutdown(now);
                    }
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        for d in ep_out(&mut b, now) {
            if std::env::var("DBG").is_ok() {
                let r = SegmentRepr::parse(&d).unwrap();
                eprintln!(
                    "{now:?} B> {:?} seq={} ack={} len={} win={} state={:?}",
                    r.flags,
                    r.seq,
                    r.ack,
                    r.payload.len(),
                    r.window,
                    hb.and_then(|h| b.connection(h)).map(|c| c.state())
                );
            }
            a.handle_datagram(now, b_addr, &d).unwrap();
        }
        if a.connection(h).map(|c| c.state()) == Some(State::TimeWait)
            && hb.and_then(|h| b.connection(h)).map(|c| c.state()) == Some(State::Closed)
        {
            break;
        }
        let next = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        now = match next {
            Some(t) if t > now => t,
            _ => now + Duration::from_micros(100),
        };
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    assert_eq!(got, data);
    let ca = a.connection(h).unwrap();
    assert_eq!(
        ca.state(),
        State::TimeWait,
        "{ca:?} err={:?} stats={:?}",
        ca.error(),
        ca.stats()
    );
}
