//! The facade's publishers and subscribers trace each send and receive.
#![cfg(feature = "tcp")]

use std::sync::{Arc, Mutex};

use framewire::{Frame, PublishOptions, Publisher, SubscribeOptions, Subscriber};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Every span's name and the fields recorded on it, as "name k=v k=v".
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(u64, String)>>>);

struct Fields<'a>(&'a mut String);
impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut s = attrs.metadata().name().to_owned();
        attrs.record(&mut Fields(&mut s));
        self.0.lock().unwrap().push((id.into_u64(), s));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut all = self.0.lock().unwrap();
        if let Some((_, s)) = all.iter_mut().rev().find(|(i, _)| *i == id.into_u64()) {
            values.record(&mut Fields(s));
        }
    }
}

#[test]
fn send_and_recv_spans_carry_topic_length_and_seq() {
    let spans = Spans::default();
    let collector = tracing_subscriber::registry().with(spans.clone());
    tracing::subscriber::with_default(collector, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut p = framewire::publish("tcp://127.0.0.1:0", PublishOptions::default())
                .await
                .unwrap();
            let url = p.endpoint().url().to_owned();
            let mut s = framewire::subscribe(&url, SubscribeOptions::default())
                .await
                .unwrap();
            p.wait_for_subscribers(1, std::time::Duration::from_secs(10))
                .await
                .unwrap();
            for _ in 0..2 {
                p.send(Frame::new(vec![0u8; 100]).with_topic("cam/0"))
                    .await
                    .unwrap();
            }
            for _ in 0..2 {
                tokio::time::timeout(std::time::Duration::from_secs(10), s.recv())
                    .await
                    .unwrap()
                    .unwrap();
            }
        });
    });
    let all: Vec<String> = spans
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .collect();
    let has = |want: &[&str]| all.iter().any(|s| want.iter().all(|w| s.contains(w)));
    assert!(
        has(&["framewire.publisher", "url=tcp://127.0.0.1:"]),
        "{all:#?}"
    );
    assert!(has(&["framewire.subscriber", "mode=\"owned\""]), "{all:#?}");
    for seq in ["seq=0", "seq=1"] {
        assert!(has(&["send", "topic=cam/0", "len=100", seq]), "{all:#?}");
        assert!(
            has(&["recv", "topic=\"cam/0\"", "len=100", seq]),
            "{all:#?}"
        );
    }
}
