//! The shared conformance suite against the shared-memory ring.
//!
//! Depth mapping: `depth = Some(d)` becomes `max_records=d` with a ring of
//! `d + 1` MiB (the suite sends at most 1 MiB payloads when it sets a depth),
//! so the ring holds `d` of its frames and `queue_depth == d`. Without a
//! depth the ring is 160 MiB, room for the suite's 64 MiB payloads.

use transport_core::Endpoint;
use transport_core::testkit::{Harness, unique_name};
use transport_shm_ring::ShmRingTransport;

struct Ring;

impl Harness for Ring {
    type T = ShmRingTransport;
    fn transport(&self) -> ShmRingTransport {
        ShmRingTransport
    }
    fn endpoint(&self, depth: Option<usize>) -> Endpoint {
        let name = unique_name("conf");
        let url = match depth {
            None => format!("shm-ring://{name}?capacity=160MiB"),
            Some(d) => format!("shm-ring://{name}?capacity={}MiB&max_records={d}", d + 1),
        };
        Endpoint::parse(&url).expect("valid test endpoint")
    }
}

transport_core::conformance_tests!(Ring);
