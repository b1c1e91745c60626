//! The framewire conformance suite against `shm-pool://`.

use transport_core::Endpoint;
use transport_core::testkit::{Harness, unique_name};
use transport_shm_pool::ShmPoolTransport;

struct ShmPool;

impl Harness for ShmPool {
    type T = ShmPoolTransport;

    fn transport(&self) -> ShmPoolTransport {
        ShmPoolTransport::new()
    }

    /// A fresh pool name per endpoint; slots of 64 MiB so that the suite's
    /// largest frames fit; `depth` is the number of slots (8 when not given:
    /// some tests send 5 frames before anyone reads). `max_held` is the
    /// whole pool: `views_are_not_copies` checks that one subscriber's views
    /// fill the pool, which the default `max_held` (all but one slot) is there
    /// to prevent (`tests/max_held.rs` tests the default).
    fn endpoint(&self, depth: Option<usize>) -> Endpoint {
        let slots = depth.unwrap_or(8);
        Endpoint::parse(&format!(
            "shm-pool://{}?slots={slots}&max_held={slots}&slot_size=64MiB",
            unique_name("conformance")
        ))
        .expect("a valid endpoint")
    }
}

transport_core::conformance_tests!(ShmPool);
