//! The shared conformance suite over Zenoh (peer to peer on loopback).

use transport_core::Endpoint;
use transport_core::testkit::{Harness, unique_name};
use transport_zenoh::ZenohTransport;

struct Zenoh;

impl Harness for Zenoh {
    type T = ZenohTransport;
    fn transport(&self) -> ZenohTransport {
        ZenohTransport
    }
    fn endpoint(&self, depth: Option<usize>) -> Endpoint {
        // Port 0: the publisher hands out `connect=` with the port it got.
        // The key is `fwtest/<pid>/<n>` as before: `/` separates key chunks.
        let url = format!(
            "zenoh://{}?listen=tcp/127.0.0.1:0",
            unique_name("fwtest").replacen('-', "/", 2)
        );
        let e = Endpoint::parse(&url).expect("valid test endpoint");
        match depth {
            Some(d) => e.with_param("queue", d),
            None => e,
        }
    }
    /// The replacement listens where the first publisher listened (its
    /// endpoint says `connect=` with the port the system picked), so a
    /// subscriber holding that endpoint finds it again.
    fn restart_endpoint(&self, published: &Endpoint) -> Option<Endpoint> {
        let at = published.param("connect")?.to_owned();
        Some(
            published
                .clone()
                .without_params(&["connect", "listen"])
                .with_param("listen", at),
        )
    }
}

transport_core::conformance_tests!(Zenoh);
