//! The shared conformance suite, run against the inproc backend.

use std::sync::atomic::{AtomicU64, Ordering};

use inproc_backend::InprocTransport;
use transport_core::Endpoint;
use transport_core::testkit::Harness;

struct Inproc;

impl Harness for Inproc {
    type T = InprocTransport;

    fn transport(&self) -> InprocTransport {
        InprocTransport
    }

    fn endpoint(&self, depth: Option<usize>) -> Endpoint {
        // Channels are process-wide and the tests run in parallel: one name each.
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!("conformance-{}", N.fetch_add(1, Ordering::Relaxed));
        let e = Endpoint::parse(&format!("inproc://{name}")).expect("valid test endpoint");
        match depth {
            Some(d) => e.with_param("queue", d),
            None => e,
        }
    }
}

transport_core::conformance_tests!(Inproc);
