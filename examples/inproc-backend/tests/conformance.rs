//! The shared conformance suite, run against the inproc backend.

use inproc_backend::InprocTransport;
use transport_core::Endpoint;
use transport_core::testkit::{Harness, unique_name};

struct Inproc;

impl Harness for Inproc {
    type T = InprocTransport;

    fn transport(&self) -> InprocTransport {
        InprocTransport
    }

    fn endpoint(&self, depth: Option<usize>) -> Endpoint {
        // Channels are process-wide and the tests run in parallel: one name each.
        let name = unique_name("conformance");
        let e = Endpoint::parse(&format!("inproc://{name}")).expect("valid test endpoint");
        match depth {
            Some(d) => e.with_param("queue", d),
            None => e,
        }
    }
}

transport_core::conformance_tests!(Inproc);
