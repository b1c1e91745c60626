//! The shared conformance suite, over TCP and over Unix-domain sockets.

use transport_core::Endpoint;
use transport_core::testkit::{Harness, unique_name};
use transport_tcp::TcpTransport;

fn with_depth(url: String, depth: Option<usize>) -> Endpoint {
    let e = Endpoint::parse(&url).expect("valid test endpoint");
    match depth {
        Some(d) => e.with_param("queue", d),
        None => e,
    }
}

struct Tcp;

impl Harness for Tcp {
    type T = TcpTransport;
    fn transport(&self) -> TcpTransport {
        TcpTransport
    }
    fn endpoint(&self, depth: Option<usize>) -> Endpoint {
        // Port 0: the publisher reports the port the OS picked.
        with_depth("tcp://127.0.0.1:0".into(), depth)
    }
}

struct Unix;

impl Harness for Unix {
    type T = TcpTransport;
    fn transport(&self) -> TcpTransport {
        TcpTransport
    }
    fn endpoint(&self, depth: Option<usize>) -> Endpoint {
        let path = std::env::temp_dir().join(format!("{}.sock", unique_name("framewire-conf")));
        with_depth(format!("unix://{}", path.display()), depth)
    }
}

mod tcp {
    transport_core::conformance_tests!(super::Tcp);
}

mod unix {
    transport_core::conformance_tests!(super::Unix);
}
