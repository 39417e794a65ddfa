//! XTCP segment codec throughput: `cargo bench --bench codec`.
//!
//! (a) a pure ACK with timestamps and 3 SACK blocks (a full 40-byte option
//! area, the worst case for option parsing), (b) a 1400-byte data segment with
//! timestamps (the bulk-transfer hot path, dominated by the checksum).
//! Throughput is reported in datagram bytes.
//!
//! (c) `recv_buf_after_hole`: the receive buffer under loss — one 1448-byte
//! segment lost, then a 4 MiB window's worth of segments arriving in order
//! behind the hole, then the retransmission filling it (throughput in
//! stream bytes).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use proto::xtcp::wire::{SackBlock, SegmentRepr, TcpFlags, TcpOptions, XtcpFlags};
use proto::SeqNumber;

fn repr(payload: &[u8], sack: usize) -> SegmentRepr<'_> {
    let mut options = TcpOptions {
        timestamps: Some((0x0102_0304, 0x0506_0708)),
        ..TcpOptions::default()
    };
    for (i, block) in options.sack.iter_mut().take(sack).enumerate() {
        let left = 1_000_000 + 3000 * i as u32;
        *block = SackBlock {
            left: SeqNumber(left),
            right: SeqNumber(left + 1400),
        };
    }
    options.sack_len = sack as u8;
    SegmentRepr {
        xflags: XtcpFlags(0),
        conn_id: 0x0123_4567_89ab_cdef,
        src_port: 49152,
        dst_port: 8080,
        seq: SeqNumber(0x1234_5678),
        ack: SeqNumber(0x9abc_def0),
        flags: if payload.is_empty() {
            TcpFlags::ACK
        } else {
            TcpFlags::ACK | TcpFlags::PSH
        },
        window: 2048,
        options,
        payload,
    }
}

fn bench_case(c: &mut Criterion, name: &str, repr: SegmentRepr<'_>) {
    let len = repr.buffer_len();
    let mut buf = vec![0u8; len];
    repr.emit(&mut buf).expect("emit");
    assert_eq!(SegmentRepr::parse(&buf), Ok(repr));

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(len as u64));
    let mut out = vec![0u8; len];
    group.bench_function("encode", |b| {
        b.iter(|| black_box(&repr).emit(black_box(&mut out[..])))
    });
    group.bench_function("decode", |b| {
        b.iter(|| SegmentRepr::parse(black_box(&buf[..])).map(|r| r.payload.len()))
    });
    group.finish();
}

fn recv_buf_after_hole(c: &mut Criterion) {
    const MSS: usize = 1448;
    const WINDOW: usize = 4 << 20;
    let seg = vec![7u8; MSS];
    let n = WINDOW / MSS;
    let mut group = c.benchmark_group("recv_buf_after_hole");
    group.throughput(Throughput::Bytes((n * MSS) as u64));
    group.sample_size(20);
    group.bench_function("4MiB", |b| {
        b.iter(|| {
            let mut rb = proto::xtcp::recv_buf::RecvBuffer::new(WINDOW + MSS);
            for i in 1..n {
                rb.insert((i * MSS) as u64, black_box(&seg));
            }
            let r = rb.insert(0, &seg);
            assert_eq!(r.advanced, n * MSS);
            rb.readable()
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_case(c, "ack_ts_sack3", repr(&[], 3));
    let payload: Vec<u8> = (0..1400u32).map(|i| (i * 31 % 251) as u8).collect();
    bench_case(c, "data_1400_ts", repr(&payload, 0));
}

criterion_group!(benches, codec, recv_buf_after_hole);
criterion_main!(benches);
