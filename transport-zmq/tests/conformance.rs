//! The shared conformance suite, over ZeroMQ TCP (port 0) and IPC (a unique
//! temporary path, removed afterwards).

use transport_core::Endpoint;
use transport_core::testkit::{Harness, unique_name};
use transport_zmq::ZmqTransport;

fn with_depth(url: String, depth: Option<usize>) -> Endpoint {
    let e = Endpoint::parse(&url).expect("valid test endpoint");
    match depth {
        Some(d) => e.with_param("queue", d),
        None => e,
    }
}

struct Tcp;

impl Harness for Tcp {
    type T = ZmqTransport;
    fn transport(&self) -> ZmqTransport {
        ZmqTransport
    }
    fn endpoint(&self, depth: Option<usize>) -> Endpoint {
        // Port 0: the publisher reports the port the OS picked.
        with_depth("zmq+tcp://127.0.0.1:0".into(), depth)
    }
}

/// Each endpoint is a fresh path; the publisher removes its socket file when
/// it is dropped (tests/faults.rs checks that).
struct Ipc;

impl Harness for Ipc {
    type T = ZmqTransport;
    fn transport(&self) -> ZmqTransport {
        ZmqTransport
    }
    fn endpoint(&self, depth: Option<usize>) -> Endpoint {
        let path = std::env::temp_dir().join(format!("{}.ipc", unique_name("framewire-zmq-conf")));
        with_depth(format!("zmq+ipc://{}", path.display()), depth)
    }
}

/// `shm=pool`: payloads in 64 MiB shared-memory slots (the suite's largest
/// payload), as many slots as the queue depth asked for (4 otherwise), so
/// that held views fill the pool as the suite expects.
fn shm(e: Endpoint, depth: Option<usize>) -> Endpoint {
    e.with_param("shm", "pool")
        .with_param("slot_size", "64MiB")
        .with_param("slots", depth.unwrap_or(4))
}

struct ShmTcp;

impl Harness for ShmTcp {
    type T = ZmqTransport;
    fn transport(&self) -> ZmqTransport {
        ZmqTransport
    }
    fn endpoint(&self, depth: Option<usize>) -> Endpoint {
        shm(Tcp.endpoint(depth), depth)
    }
}

struct ShmIpc;

impl Harness for ShmIpc {
    type T = ZmqTransport;
    fn transport(&self) -> ZmqTransport {
        ZmqTransport
    }
    fn endpoint(&self, depth: Option<usize>) -> Endpoint {
        shm(Ipc.endpoint(depth), depth)
    }
}

mod tcp {
    transport_core::conformance_tests!(super::Tcp);
}

mod shm_tcp {
    transport_core::conformance_tests!(super::ShmTcp);
}

mod shm_ipc {
    transport_core::conformance_tests!(super::ShmIpc);
}

mod ipc {
    transport_core::conformance_tests!(super::Ipc);
}
