//! What the suite tests share: skipping, deadlines, connecting, layouts.

use std::future::Future;
use std::time::Duration;

use super::harness::{Harness, PEER_TIMEOUT, SkipSignal, report_skip};
use crate::{
    Capabilities, DType, Endpoint, Error, Frame, Layout, PixelFormat, PublishOptions, Publisher,
    Result, SubscribeOptions, Subscriber, Transport,
};

pub(super) fn caps<H: Harness>(h: &H, ep: &Endpoint) -> Capabilities {
    Transport::capabilities(&h.transport(), ep).expect("capabilities of the harness's endpoint")
}

/// Ends the running test as skipped: it needs `what`, which this backend or
/// harness lacks. Unwinds to [`run`] (without the panic hook), which reports it.
pub(super) fn skip(what: impl Into<String>) -> ! {
    std::panic::resume_unwind(Box::new(SkipSignal(what.into())))
}

/// Reports a part of a test left out (the test goes on).
pub(super) fn skip_part(test: &str, why: &str) {
    report_skip(test, why);
}

pub(super) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PEER_TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {PEER_TIMEOUT:?} waiting for {what}"),
    }
}

pub(super) async fn recv<S: Subscriber>(sub: &mut S) -> Result<Frame> {
    within("a frame", sub.recv()).await
}

/// Receives, passing over lag reports; panics on any other error.
pub(super) async fn recv_frame<S: Subscriber>(sub: &mut S) -> Frame {
    loop {
        match recv(sub).await {
            Ok(f) => return f,
            Err(Error::Lagged { .. }) => continue,
            Err(e) => panic!("recv failed: {e}"),
        }
    }
}

/// A publisher and `n` subscribers connected to it.
pub(super) async fn connect<H: Harness>(
    h: &H,
    ep: &Endpoint,
    popts: PublishOptions,
    sopts: SubscribeOptions,
    n: usize,
) -> (
    <H::T as Transport>::Publisher,
    Vec<<H::T as Transport>::Subscriber>,
) {
    let t = h.transport();
    let mut publ = within("publish", t.publish(ep, &popts))
        .await
        .expect("create publisher");
    let ep = publ.endpoint().clone();
    let mut subs = Vec::new();
    for _ in 0..n {
        subs.push(
            within("subscribe", t.subscribe(&ep, &sopts))
                .await
                .expect("create subscriber"),
        );
    }
    settle(&mut publ, n).await;
    (publ, subs)
}

/// A publisher and one subscriber connected to it.
pub(super) async fn connect_one<H: Harness>(
    h: &H,
    ep: &Endpoint,
    popts: PublishOptions,
    sopts: SubscribeOptions,
) -> (
    <H::T as Transport>::Publisher,
    <H::T as Transport>::Subscriber,
) {
    let (publ, mut subs) = connect(h, ep, popts, sopts, 1).await;
    (publ, subs.pop().expect("one subscriber"))
}

/// Waits until the publisher sees `n` subscribers (or a grace period where it cannot tell).
pub(super) async fn settle<P: Publisher>(publ: &mut P, n: usize) {
    if publ.subscriber_count().is_some() {
        publ.wait_for_subscribers(n, PEER_TIMEOUT)
            .await
            .expect("subscribers connect");
    } else {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub(super) fn layouts_for(len: usize) -> Vec<Layout> {
    let len64 = len as u64;
    let mut v = vec![
        Layout::Raw,
        Layout::Image {
            width: len as u32,
            height: 1,
            format: PixelFormat::Gray8,
        },
        Layout::Tensor {
            dtype: DType::U8,
            shape: vec![len64],
        },
        Layout::Parts(vec![len64 / 3, len64 / 3, len64 - 2 * (len64 / 3)]),
    ];
    if len.is_multiple_of(12) && len > 0 {
        v[1] = Layout::Image {
            width: (len / 12) as u32,
            height: 4,
            format: PixelFormat::Rgb8,
        };
        v[2] = Layout::Tensor {
            dtype: DType::F32,
            shape: vec![3, len64 / 12],
        };
        // Envelope version 2: rows 12 bytes apart holding 3 RGB pixels
        // (the padding is 3 bytes), and the same bytes as a transposed
        // tensor of u32 (12 bytes per column).
        v.push(Layout::StridedImage {
            width: 3,
            height: (len / 12) as u32,
            format: PixelFormat::Rgb8,
            row_pitch: 12,
        });
        v.push(Layout::StridedTensor {
            dtype: DType::U32,
            shape: vec![3, len64 / 12],
            strides: vec![4, 12],
        });
    }
    v
}
