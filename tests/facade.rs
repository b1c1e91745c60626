//! The facade routes URLs to the backends compiled in, and says which cargo
//! feature to enable for the others.

use std::time::Duration;

use framewire::{Error, Frame, PublishOptions, SubscribeOptions};

#[tokio::test]
async fn routes_by_scheme() {
    let mut p = framewire::publish("tcp://127.0.0.1:0", PublishOptions::default())
        .await
        .expect("tcp is a default feature");
    let url = p.endpoint().url().to_owned();
    let mut s = framewire::subscribe(&url, SubscribeOptions::default())
        .await
        .expect("subscribe");
    p.wait_for_subscribers(1, Duration::from_secs(10))
        .await
        .unwrap();
    p.send(Frame::new(vec![1u8, 2, 3])).await.unwrap();
    let f = tokio::time::timeout(Duration::from_secs(10), s.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&f.payload[..], &[1, 2, 3]);
    assert!(framewire::schemes().contains(&"unix"));
    assert!(
        framewire::capabilities("tcp://127.0.0.1:1")
            .unwrap()
            .cross_host
    );
}

#[tokio::test]
async fn schemes_of_disabled_features_name_the_feature() {
    for (scheme, feature) in framewire::KNOWN_SCHEMES {
        let url = format!("{scheme}://somewhere");
        match framewire::subscribe(&url, SubscribeOptions::default()).await {
            Err(Error::UnknownScheme { hint, .. }) => {
                assert!(hint.contains(&format!("`{feature}`")), "{hint}")
            }
            // Compiled in: then it is routed (and fails or not on its own terms).
            Err(_) | Ok(_) => assert!(framewire::schemes().contains(&scheme)),
        }
    }
    let e = framewire::subscribe("carrier-pigeon://x", SubscribeOptions::default())
        .await
        .err()
        .expect("unknown scheme");
    let msg = e.to_string();
    assert!(
        msg.contains("tcp://") && msg.contains("registered"),
        "{msg}"
    );
}

#[test]
fn a_scheme_cannot_be_registered_twice() {
    let e = framewire::register(std::sync::Arc::new(framewire::tcp::TcpTransport)).unwrap_err();
    assert!(e.to_string().contains("already registered"), "{e}");
    assert!(
        matches!(&e, framewire::Error::DuplicateScheme { scheme } if scheme == "tcp"),
        "{e:?}"
    );
}
