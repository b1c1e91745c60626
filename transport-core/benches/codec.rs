//! The envelope codec: encoding and decoding headers of typical frames.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use transport_core::codec::{self, PREFIX_LEN, Prefix};
use transport_core::{DType, Frame, Hop, Layout, PixelFormat};

fn frames() -> Vec<(&'static str, Frame)> {
    let hop = |n: &str| Hop {
        name: n.into(),
        sent_ns: 1,
        received_ns: 2,
    };
    let image = Frame::new(Bytes::from(vec![0u8; 3840 * 2160 * 3]))
        .with_topic("cam/front")
        .with_layout(Layout::Image {
            width: 3840,
            height: 2160,
            format: PixelFormat::Rgb8,
        });
    let mut traced = image.clone();
    traced.trace = vec![hop("source"), hop("filter1"), hop("filter2")];
    let tensor = Frame::new(Bytes::from(vec![0u8; 4 * 3 * 224 * 224 * 4]))
        .with_topic("batch")
        .with_layout(Layout::Tensor {
            dtype: DType::F32,
            shape: vec![4, 3, 224, 224],
        });
    let packets = Frame::new(Bytes::from(vec![0u8; 300 * 4096]))
        .with_topic("video/h264")
        .with_layout(Layout::Parts(vec![4096; 300]));
    vec![
        ("image_4k", image),
        ("image_4k_3_hops", traced),
        ("tensor", tensor),
        ("packets_300", packets),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    for (name, f) in frames() {
        let mut buf = BytesMut::with_capacity(64 << 10);
        g.bench_function(format!("encode_header/{name}"), |b| {
            b.iter(|| {
                buf.clear();
                codec::encode_header(black_box(&f), &mut buf).expect("encode");
                black_box(buf.len())
            })
        });
        buf.clear();
        codec::encode_header(&f, &mut buf).expect("encode");
        let bytes = buf.clone().freeze();
        let prefix: [u8; PREFIX_LEN] = bytes[..PREFIX_LEN].try_into().expect("prefix");
        g.bench_function(format!("decode_header/{name}"), |b| {
            b.iter(|| {
                let p = Prefix::decode(black_box(&prefix), u64::MAX).expect("prefix");
                let h = &bytes[PREFIX_LEN..PREFIX_LEN + p.header_len as usize];
                black_box(codec::decode_header(h, p.payload_len).expect("header"))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
