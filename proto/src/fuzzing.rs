//! Fuzz oracles, one function per `fuzz/fuzz_targets/*.rs` target.
//!
//! Each target in `fuzz/` is one line calling a function here, so the same
//! oracle also runs in `cargo test` (`proto/tests/fuzz_corpus.rs` replays the
//! committed seed corpora through it). Not part of the stable API.

use crate::xtcp::wire::SegmentRepr;

/// Run `oracle` on every file in `<corpus>/<target>/` (the corpus must not
/// be empty); a failure names the input, so it can be re-run with
/// `cargo fuzz run <target> <file>`. The replay tests of every crate with
/// oracles (`proto/tests`, `tests`, `interop/tests`: `fuzz_corpus.rs`) call this.
pub fn replay(corpus: &std::path::Path, target: &str, oracle: fn(&[u8])) {
    let dir = corpus.join(target);
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        // ok: test-only corpus replay over the repository's own files.
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "empty corpus {}", dir.display());
    for path in &entries {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let result = std::panic::catch_unwind(|| oracle(&data));
        assert!(
            result.is_ok(),
            "{target}: oracle failed on {}",
            path.display()
        );
    }
}

/// XTCP segment codec oracle.
///
/// Parsing arbitrary bytes must return, never panic. When it succeeds, the
/// repr must survive `emit` → `parse` unchanged (modulo SACK blocks that
/// `emit` drops for lack of option space, see [`SegmentRepr::canonical`]).
/// A panic here is a codec bug, which is exactly what the fuzzer looks for.
pub fn segment_codec(data: &[u8]) {
    let Ok(repr) = SegmentRepr::parse(data) else {
        return;
    };
    let len = repr.buffer_len();
    let mut buf = vec![0u8; len];
    let written = repr.emit(&mut buf);
    assert_eq!(written, Ok(len), "emit must write exactly buffer_len bytes");
    // Too small by one byte must be refused, not truncated.
    if let Some(short) = buf.get_mut(..len - 1) {
        assert!(
            repr.emit(short).is_err(),
            "emit into a short buffer must fail"
        );
    }
    let reparsed = SegmentRepr::parse(&buf);
    assert_eq!(
        reparsed,
        Ok(repr.canonical()),
        "parse(emit(parse(x))) != parse(x)"
    );
}

/// Connection oracle: a connection fed an arbitrary sequence of datagrams
/// (raw bytes and structured segments aimed near its sequence space, from
/// its peer's address and from two others, some carrying path challenges
/// and responses, some echoing the connection's own challenges), timeouts
/// and API calls must never panic, must keep its buffers within their
/// limits, must only emit datagrams that parse, must never ask to be woken
/// in the past, and must never send an address that is not its current
/// peer address more than 3 × the bytes received from it (spec/xtcp.md §8.5).
pub fn connection(data: &[u8]) {
    use crate::time::Instant;
    use crate::xtcp::conn::{Config, Connection, ConnectionParams};
    use crate::xtcp::seq::SeqNumber;
    use crate::xtcp::wire::{PathOption, SackBlock, TcpFlags, TcpOptions, XtcpFlags};
    use core::time::Duration;
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    struct Bytes<'a>(&'a [u8]);
    impl Bytes<'_> {
        fn u8(&mut self) -> Option<u8> {
            let (b, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(*b)
        }
        fn u16(&mut self) -> Option<u16> {
            Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_be_bytes([
                self.u8()?,
                self.u8()?,
                self.u8()?,
                self.u8()?,
            ]))
        }
        fn take(&mut self, n: usize) -> &[u8] {
            let n = n.min(self.0.len());
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            a
        }
    }

    let mut b = Bytes(data);
    let Some(mode) = b.u8() else { return };
    let remote: SocketAddr = ([192, 0, 2, 2], 4000).into();
    let cfg = Arc::new(Config {
        send_buffer: 64 * 1024,
        recv_buffer: 32 * 1024,
        timestamps: mode & 2 != 0,
        sack: mode & 4 != 0,
        nagle: mode & 8 != 0,
        pacing: mode & 16 != 0,
        delayed_ack: if mode & 32 != 0 {
            Some(Duration::from_millis(25))
        } else {
            None
        },
        keepalive: if mode & 64 != 0 {
            Some(crate::xtcp::conn::Keepalive {
                idle: Duration::from_secs(1),
                interval: Duration::from_millis(300),
                probes: 2,
            })
        } else {
            None
        },
        ..Config::default()
    });
    let iss = 0xffff_ff00u32; // close to wrapping
    let params = ConnectionParams {
        conn_id: 7,
        iss: SeqNumber(iss),
        ts_offset: 0,
        local_port: 1,
        remote_port: 2,
        remote,
        path_secret: [0x5a; 32],
    };
    let others: [SocketAddr; 2] = [
        ([192, 0, 2, 9], 4001).into(),
        ([192, 0, 2, 10], 4002).into(),
    ];
    // Bytes fed from each address, and sent to each while it was not the
    // connection's peer address.
    let mut received_from: HashMap<SocketAddr, u64> = HashMap::new();
    let mut unvalidated_sent: HashMap<SocketAddr, u64> = HashMap::new();
    let mut last_challenge: u64 = 0;
    let mut now = Instant::ZERO;
    let mut c = if mode & 1 == 0 {
        Connection::connect(cfg.clone(), now, params)
    } else {
        Connection::listen(cfg.clone(), now, params)
    };
    let irs = 0x7fff_fff0u32;
    let mut out = vec![0u8; cfg.max_datagram_size + 64];
    let mut inbuf = vec![0u8; 4096];
    let payload = [0xabu8; 2048];
    for _ in 0..512 {
        let Some(op) = b.u8() else { break };
        match op % 8 {
            0 => {
                let n = usize::from(b.u8().unwrap_or(0)) * 4;
                let raw = b.take(n).to_vec();
                let _ = c.handle_datagram(now, remote, &raw);
            }
            1 | 2 => {
                let flags = TcpFlags(b.u8().unwrap_or(0x10));
                let seq = SeqNumber(
                    irs.wrapping_add(b.u16().unwrap_or(0) as u32)
                        .wrapping_sub(0x100),
                );
                let ack = SeqNumber(
                    iss.wrapping_add(b.u16().unwrap_or(0) as u32)
                        .wrapping_sub(0x100),
                );
                let window = b.u16().unwrap_or(0);
                let len = usize::from(b.u16().unwrap_or(0)) % 1500;
                let o = b.u8().unwrap_or(0);
                let mut options = TcpOptions::default();
                if o & 1 != 0 {
                    options.mss = Some(b.u16().unwrap_or(536));
                }
                if o & 2 != 0 {
                    options.window_scale = Some(b.u8().unwrap_or(0));
                }
                options.sack_permitted = o & 4 != 0;
                if o & 8 != 0 {
                    options.timestamps = Some((b.u32().unwrap_or(0), b.u32().unwrap_or(0)));
                }
                if o & 16 != 0 {
                    let t = b.u8().unwrap_or(0);
                    // Echo the connection's last challenge, or a made-up token.
                    let token = if t & 2 != 0 {
                        last_challenge
                    } else {
                        u64::from(t)
                    };
                    options.path = Some(if t & 1 != 0 {
                        PathOption::Challenge(token)
                    } else {
                        PathOption::Response(token)
                    });
                }
                let nsack = usize::from(o >> 5) % 4;
                for i in 0..nsack {
                    let l = iss.wrapping_add(b.u16().unwrap_or(0) as u32);
                    let r = l.wrapping_add(b.u16().unwrap_or(0) as u32);
                    if let Some(slot) = options.sack.get_mut(i) {
                        *slot = SackBlock {
                            left: SeqNumber(l),
                            right: SeqNumber(r),
                        };
                    }
                }
                options.sack_len = nsack as u8;
                let seg = SegmentRepr {
                    xflags: XtcpFlags(0),
                    conn_id: 7,
                    src_port: 2,
                    dst_port: 1,
                    seq,
                    ack,
                    flags,
                    window,
                    options,
                    payload: payload.get(..len).unwrap_or(&[]),
                };
                let from = match (op % 8, op & 0x80 != 0) {
                    (2, false) => others[0],
                    (2, true) => others[1],
                    _ => remote,
                };
                *received_from.entry(from).or_default() += seg.buffer_len() as u64;
                c.handle_segment(now, from, &seg);
            }
            3 => {
                now += Duration::from_micros(u64::from(b.u16().unwrap_or(0)) * 50);
                c.handle_timeout(now);
                if let Some(t) = c.poll_timeout() {
                    assert!(
                        t > now,
                        "timer {t:?} not in the future after handle_timeout({now:?})"
                    );
                }
            }
            4 => {
                let n = usize::from(b.u16().unwrap_or(0));
                let _ = c.write(payload.get(..n.min(payload.len())).unwrap_or(&[]));
            }
            5 => {
                let _ = c.read(&mut inbuf);
            }
            6 => match b.u8().unwrap_or(0) % 4 {
                0 => c.shutdown(now),
                1 => c.abort(now),
                _ => {
                    let k = c.read_chunk().len().min(100);
                    c.consume(k);
                }
            },
            _ => {}
        }
        // Drain output: everything emitted must parse and be addressed somewhere known.
        for _ in 0..64 {
            let Some(t) = c.poll_transmit(now, &mut out) else {
                break;
            };
            let dgram = out.get(..t.size).unwrap_or(&[]);
            let parsed = SegmentRepr::parse(dgram);
            assert!(parsed.is_ok(), "emitted an unparseable datagram");
            if let Ok(SegmentRepr {
                options:
                    TcpOptions {
                        path: Some(PathOption::Challenge(token)),
                        ..
                    },
                ..
            }) = parsed
            {
                last_challenge = token;
            }
            if t.destination != c.remote() {
                let sent = unvalidated_sent.entry(t.destination).or_default();
                *sent += t.size as u64;
                let got = received_from.get(&t.destination).copied().unwrap_or(0);
                assert!(
                    *sent <= 3 * got,
                    "sent {sent} bytes to unvalidated {} after receiving {got}",
                    t.destination
                );
            }
            assert!(
                t.size <= cfg.max_datagram_size,
                "datagram larger than max_datagram_size"
            );
        }
        while c.poll_event().is_some() {}
        assert!(c.unacked() <= cfg.send_buffer);
        assert!(c.readable() <= cfg.recv_buffer);
    }
}

/// Relay frame oracle: any bytes parse to a frame or a typed error; a parsed
/// frame re-emits to exactly the bytes it consumed (the codec is canonical),
/// and emitting into a buffer one byte short fails instead of truncating.
pub fn relay_frame(data: &[u8]) {
    use crate::relay::wire::Frame;
    let mut rest = data;
    // A stream of frames, as the relay reads them; bounded by the input length.
    while let Ok((frame, used)) = Frame::parse(rest) {
        assert_eq!(frame.buffer_len(), used, "buffer_len != consumed");
        // ok: the oracle asserts this property; a failure is the finding.
        let bytes = frame.to_vec().expect("a parsed frame re-emits");
        assert_eq!(&bytes[..], &rest[..used], "emit(parse(x)) != x");
        let mut short = vec![0u8; used - 1];
        assert!(frame.emit(&mut short).is_err(), "short emit must fail");
        rest = &rest[used..];
    }
}

/// Session-layer oracle (`spec/direct.md`): the first byte picks a chunk
/// size, the rest is a byte stream cut into chunks of that size and fed to a
/// [`crate::session::FrameDecoder`], as a path's reader would. Every decoded
/// frame re-encodes to a frame that parses back equal (the codec is
/// canonical up to equality) and is then given to a live
/// [`crate::session::SessionState`]: whatever the peer sends, the state
/// returns events or typed errors, never panics, and its replay buffer stays
/// within its capacity.
pub fn session_frames(data: &[u8]) {
    use crate::session::{encode, Frame, FrameDecoder, SessionConfig, SessionState};
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    const CAP: usize = 4096;
    let mut dec = FrameDecoder::new();
    let mut st = SessionState::new(SessionConfig::with_capacity(CAP));
    // Three paths: the relay's, a direct one, and one opened later at an
    // earlier RESUME offset (the guest's early RESUME); chunks go to them
    // in turn, so late RESUMEs, switches and resends between paths all run.
    if st.open_path(0).is_err() || st.open_path(1).is_err() {
        return;
    }
    // Something to acknowledge, resend and finish.
    let _ = st.write(&[7u8; 5000]);
    st.finish();
    for (i, chunk) in rest.chunks(usize::from(split) + 1).enumerate() {
        if i == 2 {
            let at = st.received() / 2;
            let _ = st.open_path_at(3, at);
        }
        let path = [0, 1, 3][i % 3];
        let mut input = chunk;
        loop {
            let frame = match dec.decode(&mut input) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return, // a typed error: the path is closed
            };
            let mut again = Vec::new();
            if encode(&frame, &mut again).is_ok() {
                // ok: the oracle asserts this property; a failure is the finding.
                let (back, used) = Frame::parse(&again).expect("an encoded frame parses");
                assert_eq!(back, frame, "parse(encode(f)) != f");
                assert_eq!(used, again.len(), "parse consumed a different length");
            }
            let _ = st.handle_frame(path, frame);
            assert!(st.replay_len() <= CAP, "replay buffer beyond its capacity");
            // Drain what the state wants to send (bounded).
            for _ in 0..64 {
                if st.poll_transmit(1000).is_none() {
                    break;
                }
            }
        }
    }
}

/// UDP address service oracle (`spec/relay.md` §12): any datagram parses to a
/// request, a response or a typed error, never both; whatever parses
/// re-encodes to exactly the same bytes (the codec is canonical: fixed
/// length, zero padding); and no response is ever as long as a request (the
/// service cannot amplify).
pub fn udp_service(data: &[u8]) {
    use crate::relay::udp_service::{
        encode_request, encode_response, parse_request, parse_response, REQUEST_LEN,
    };
    let req = parse_request(data);
    let resp = parse_response(data);
    assert!(
        req.is_err() || resp.is_err(),
        "a datagram parsed as both request and response"
    );
    assert!(
        (req.is_err() && resp.is_err()) || crate::session::probe::parse_probe(data).is_err(),
        "an address service datagram parsed as a punch probe"
    );
    if let Ok(r) = req {
        assert_eq!(
            &encode_request(&r.token, r.nonce)[..],
            data,
            "encode(parse(request)) != request"
        );
    }
    if let Ok(r) = resp {
        let (buf, n) = encode_response(r.nonce, r.observed);
        assert_eq!(
            buf.get(..n),
            Some(data),
            "encode(parse(response)) != response"
        );
        assert!(n < REQUEST_LEN, "a response as long as a request");
    }
}

/// Punch probe oracle (`spec/direct.md` §4.3.2): any datagram parses to a
/// probe or a typed error; a parsed probe re-encodes to exactly the same
/// bytes; a probe is never also a UDP address service datagram (the first
/// bytes are registered apart); a probe verifies under a key exactly when
/// its tag is that key's tag for its fields, and only for the role it
/// names (a probe reflected to its sender's role never verifies).
pub fn punch_probe(data: &[u8]) {
    use crate::relay::udp_service::{parse_request, parse_response};
    use crate::session::probe::{encode_probe, parse_probe, ProbeKey};
    use crate::session::Role;
    let key = ProbeKey::new(&[0x11; 32]);
    let parsed = parse_probe(data);
    let attempt = parsed.map_or(0, |p| p.attempt);
    let host = key.verify(data, attempt, Role::Host);
    let guest = key.verify(data, attempt, Role::Guest);
    let Ok(p) = parsed else {
        assert!(
            host.is_none() && guest.is_none(),
            "an unparseable datagram verified"
        );
        return;
    };
    assert_eq!(&encode_probe(&p)[..], data, "encode(parse(probe)) != probe");
    assert!(
        parse_request(data).is_err() && parse_response(data).is_err(),
        "a probe parsed as an address service datagram"
    );
    let valid = p.tag == key.tag(p.attempt, p.role, p.nonce, p.echo);
    let (mine, other) = match p.role {
        Role::Host => (host, guest),
        Role::Guest => (guest, host),
    };
    assert!(other.is_none(), "a probe verified for the other role");
    assert_eq!(mine.is_some(), valid, "verify disagrees with tag");
    if let Some(v) = mine {
        assert_eq!(v, p, "verify returned other fields");
    }
}
