//! The rendezvous protocol on the publisher's abstract Unix socket.
//!
//! ```text
//! subscriber -> publisher  hello:  "FWRC" | version u16 | 0 u16       + its reader page fd (SCM_RIGHTS)
//! publisher  -> subscriber hello:  "FWRS" | version u16 | 0 u16
//!                                  | capacity u64 | data_offset u64 | start u64
//!                                  | next_seq u64 | max_records u64  + the ring's read-only fd
//! then, both ways, single bytes:   publisher -> subscriber  WAKE      "new data" (only when it parked)
//!                                  subscriber -> publisher  CONSUMED  "my cursor crossed writer_wait"
//! ```
//!
//! Any byte after the hellos is only a nudge to re-read shared memory, so a
//! peer sending garbage can cost the other side a wake-up, nothing more. EOF
//! either way means the other side is gone. A publisher that sees another
//! version answers with its own hello (without an fd) and hangs up, so the
//! subscriber can name both versions.

use transport_core::codec::{check_hello_head, put_hello_head};
use transport_core::{Error, Result};

const CLIENT_MAGIC: [u8; 4] = *b"FWRC";
const SERVER_MAGIC: [u8; 4] = *b"FWRS";
/// Version of the ring layout and of this protocol.
pub(crate) const VERSION: u16 = 1;
pub(crate) const CLIENT_HELLO_LEN: usize = 8;
pub(crate) const SERVER_HELLO_LEN: usize = 48;
/// Publisher -> subscriber: something was committed.
pub(crate) const WAKE: u8 = b'w';
/// Subscriber -> publisher: my cursor crossed `writer_wait`.
pub(crate) const CONSUMED: u8 = b'c';

/// The error for a hello that is not shm-ring's.
fn foreign_peer(b: &[u8]) -> Error {
    Error::protocol(
        "shm-ring",
        format!(
            "bad hello {:02x?}: the peer does not speak the shm-ring protocol",
            &b[..b.len().min(4)]
        ),
    )
}

pub(crate) fn client_hello() -> [u8; CLIENT_HELLO_LEN] {
    let mut b = [0u8; CLIENT_HELLO_LEN];
    put_hello_head(&mut b, CLIENT_MAGIC, VERSION);
    b
}

/// Checks a subscriber's hello.
pub(crate) fn check_client_hello(b: &[u8; CLIENT_HELLO_LEN]) -> Result<()> {
    check_hello_head(b, CLIENT_MAGIC, VERSION, foreign_peer)
}

/// The publisher's hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerHello {
    pub version: u16,
    pub capacity: u64,
    pub data_offset: u64,
    /// Ring position the subscriber starts reading at.
    pub start: u64,
    /// Sequence number of the first frame it will get.
    pub next_seq: u64,
    pub max_records: u64,
}

impl ServerHello {
    pub fn encode(&self) -> [u8; SERVER_HELLO_LEN] {
        let mut b = [0u8; SERVER_HELLO_LEN];
        put_hello_head(&mut b, SERVER_MAGIC, self.version);
        let words = [
            self.capacity,
            self.data_offset,
            self.start,
            self.next_seq,
            self.max_records,
        ];
        for (i, w) in words.iter().enumerate() {
            b[8 + i * 8..16 + i * 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// Decodes and checks magic and version.
    pub fn decode(b: &[u8; SERVER_HELLO_LEN]) -> Result<ServerHello> {
        check_hello_head(b, SERVER_MAGIC, VERSION, foreign_peer)?;
        let version = VERSION;
        let w = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[8 + i * 8..16 + i * 8]);
            u64::from_le_bytes(a)
        };
        Ok(ServerHello {
            version,
            capacity: w(0),
            data_offset: w(1),
            start: w(2),
            next_seq: w(3),
            max_records: w(4),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_round_trip_and_check_versions() {
        assert!(check_client_hello(&client_hello()).is_ok());
        let mut bad = client_hello();
        bad[4] = 9;
        assert!(matches!(
            check_client_hello(&bad),
            Err(Error::VersionMismatch { theirs: 9, .. })
        ));
        assert!(matches!(
            check_client_hello(&[0u8; 8]),
            Err(Error::Protocol { .. })
        ));
        let h = ServerHello {
            version: VERSION,
            capacity: 1 << 27,
            data_offset: 4096,
            start: 640,
            next_seq: 3,
            max_records: 8,
        };
        assert_eq!(ServerHello::decode(&h.encode()).unwrap(), h);
        let other = ServerHello { version: 2, ..h }.encode();
        assert!(matches!(
            ServerHello::decode(&other),
            Err(Error::VersionMismatch { theirs: 2, .. })
        ));
    }
}
