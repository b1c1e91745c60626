//! What the facade's tracing spans cost per send and receive: the same
//! loop through a bare backend publisher and through the facade's traced
//! one, with no tracing subscriber installed (the default) and with one
//! that filters `DEBUG` out.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use framewire::{Frame, PublishOptions, Publisher, SubscribeOptions, Subscriber, Transport};
use tracing_subscriber::layer::SubscriberExt;

fn pair(rt: &tokio::runtime::Runtime, traced: bool) -> (Box<dyn Publisher>, Box<dyn Subscriber>) {
    rt.block_on(async {
        let (mut p, url): (Box<dyn Publisher>, String) = if traced {
            let p = framewire::publish("tcp://127.0.0.1:0?policy=block", PublishOptions::default())
                .await
                .unwrap();
            let url = p.endpoint().url().to_owned();
            (p, url)
        } else {
            let ep = framewire::Endpoint::parse("tcp://127.0.0.1:0?policy=block").unwrap();
            let p = framewire::tcp::TcpTransport
                .publish(&ep, &PublishOptions::default())
                .await
                .unwrap();
            let url = p.endpoint().url().to_owned();
            (Box::new(p), url)
        };
        let s: Box<dyn Subscriber> = if traced {
            framewire::subscribe(&url, SubscribeOptions::default())
                .await
                .unwrap()
        } else {
            let ep = framewire::Endpoint::parse(&url).unwrap();
            Box::new(
                framewire::tcp::TcpTransport
                    .subscribe(&ep, &SubscribeOptions::default())
                    .await
                    .unwrap(),
            )
        };
        p.wait_for_subscribers(1, Duration::from_secs(10))
            .await
            .unwrap();
        (p, s)
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("spans_64B_tcp_send_recv");
    for (name, traced) in [("bare", false), ("traced_no_subscriber", true)] {
        let (mut p, mut s) = pair(&rt, traced);
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    p.send(Frame::new(vec![0u8; 64])).await.unwrap();
                    s.recv().await.unwrap();
                })
            })
        });
    }
    let filtered = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink));
    tracing::subscriber::with_default(filtered, || {
        let (mut p, mut s) = pair(&rt, true);
        g.bench_function("traced_debug_filtered_out", |b| {
            b.iter(|| {
                rt.block_on(async {
                    p.send(Frame::new(vec![0u8; 64])).await.unwrap();
                    s.recv().await.unwrap();
                })
            })
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
