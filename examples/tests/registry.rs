//! A custom backend routes through `framewire::publish` / `subscribe` once
//! registered; schemes nobody registered are errors that say what to do.

use std::sync::{Arc, Once};

use framewire::{Error, Frame, PublishOptions, Publisher, SubscribeOptions, Subscriber, pattern};
use inproc_backend::InprocTransport;

/// The error of a call that must fail (boxed publishers and subscribers are
/// not `Debug`, so `expect_err` is not available).
fn refused<T>(r: framewire::Result<T>) -> Error {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn register_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        framewire_examples::register_inproc().expect("register the inproc backend");
    });
}

#[tokio::test]
async fn registered_custom_backend_routes_through_the_facade() {
    register_once();
    assert!(framewire::schemes().contains(&"inproc"));
    let caps = framewire::capabilities("inproc://registry-route?queue=3").expect("capabilities");
    assert_eq!((caps.name, caps.queue_depth), ("inproc", 3));

    let url = "inproc://registry-route";
    let mut publ = framewire::publish(url, PublishOptions::default())
        .await
        .expect("publish through the facade");
    let mut sub = framewire::subscribe(url, SubscribeOptions::default().topic_prefix("cam/"))
        .await
        .expect("subscribe through the facade");
    publ.wait_for_subscribers(1, std::time::Duration::from_secs(10))
        .await
        .expect("the subscriber is counted");

    let mut loan = publ.loan(1 << 20).await.expect("loan");
    pattern::fill(0, &mut loan);
    loan.topic = "cam/0".into();
    publ.send_loan(loan).await.expect("send_loan");
    publ.send(Frame::new(pattern::make(1, 10)).with_topic("imu"))
        .await
        .expect("send");
    publ.send(Frame::new(pattern::make(2, 10)).with_topic("cam/1"))
        .await
        .expect("send");
    drop(publ);

    for (seq, topic) in [(0, "cam/0"), (2, "cam/1")] {
        let f = sub.recv().await.expect("recv");
        assert_eq!((f.seq, f.topic.as_str()), (seq, topic));
        assert!(pattern::check(f.seq, &f.payload));
    }
    assert!(matches!(sub.recv().await, Err(Error::Disconnected { .. })));
}

#[test]
fn a_scheme_is_registered_once() {
    register_once();
    let e = framewire::register(Arc::new(InprocTransport)).expect_err("second registration");
    assert!(
        e.to_string().contains("`inproc` is already registered"),
        "{e}"
    );
    assert!(
        matches!(&e, Error::DuplicateScheme { scheme } if scheme == "inproc"),
        "{e:?}"
    );
}

#[tokio::test]
async fn unregistered_schemes_say_what_to_enable() {
    let compiled = framewire::schemes();
    // `shm-ring://` and the other known schemes whose backend this build
    // lacks name the cargo feature that brings it in.
    let missing: Vec<_> = framewire::KNOWN_SCHEMES
        .iter()
        .filter(|(scheme, _)| !compiled.contains(scheme))
        .collect();
    assert!(
        compiled.contains(&"shm-ring") || missing.iter().any(|(s, _)| *s == "shm-ring"),
        "shm-ring:// is a known scheme"
    );
    for (scheme, feature) in missing {
        let url = format!("{scheme}://x");
        let e = refused(framewire::subscribe(&url, SubscribeOptions::default()).await);
        match &e {
            Error::UnknownScheme { scheme: s, .. } => assert_eq!(s, scheme),
            other => panic!("expected UnknownScheme for {url}, got {other}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("cargo feature `{feature}`")),
            "{url}: {msg}"
        );
    }

    // A scheme framewire has never heard of lists what this build accepts
    // (read first: another test may register a backend meanwhile, which only
    // adds to the list).
    let accepted = framewire::schemes();
    let e = refused(framewire::publish("nope://x", PublishOptions::default()).await);
    assert!(matches!(e, Error::UnknownScheme { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("must be registered"), "{msg}");
    for s in accepted {
        assert!(
            msg.contains(&format!("{s}://")),
            "{msg} does not list {s}://"
        );
    }
}
