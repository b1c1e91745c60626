//! Raw ZMTP peers for the tests: a fake publisher and raw subscribers, built
//! on the crate's own `zmtp` layer, so that a test can send anything.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use transport_zmq::ZmqPublisher;
use transport_zmq::wire::{self, Control, SubscriberId, Welcome};
use transport_zmq::zmtp::{self, Incoming, Limits, Metadata};

pub const T: Duration = Duration::from_secs(10);

pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

pub const BIG: Limits = Limits {
    max_message: 1 << 30,
    max_parts: 16,
    what: "a test message",
    skip_oversized: false,
};

/// One end of a ZMTP connection, after the handshake.
pub struct RawPeer {
    pub reader: zmtp::Reader<OwnedReadHalf>,
    pub wr: OwnedWriteHalf,
    pub peer: Metadata,
}

impl RawPeer {
    /// Connects to `addr` (HOST:PORT) as `socket_type` with `props`.
    pub async fn connect(addr: &str, socket_type: &str, props: &[(&str, &[u8])]) -> RawPeer {
        let s = within(TcpStream::connect(addr)).await.expect("connect");
        Self::handshake(s, socket_type, props).await
    }

    pub async fn handshake(s: TcpStream, socket_type: &str, props: &[(&str, &[u8])]) -> RawPeer {
        let (r, mut wr) = s.into_split();
        let mut reader = zmtp::Reader::new(r);
        let peer = within(zmtp::handshake(&mut reader, &mut wr, socket_type, props))
            .await
            .expect("handshake");
        RawPeer { reader, wr, peer }
    }

    /// A framewire subscriber's handshake, with `id`.
    pub async fn framewire_sub(addr: &str, id: &SubscriberId) -> RawPeer {
        let prop = wire::subscriber_property(id);
        Self::connect(addr, "SUB", &[(wire::PROPERTY, &prop)]).await
    }

    pub async fn send(&mut self, parts: Vec<Bytes>) {
        within(async {
            zmtp::write_message(&mut self.wr, &parts).await?;
            self.wr.flush().await
        })
        .await
        .expect("send");
    }

    pub async fn recv(&mut self) -> Result<Incoming, zmtp::ZmtpError> {
        within(self.reader.next(&BIG)).await
    }

    /// The next message's parts (commands skipped).
    pub async fn recv_msg(&mut self) -> Vec<Bytes> {
        loop {
            match self.recv().await.expect("recv") {
                Incoming::Message(p) => return p,
                _ => continue,
            }
        }
    }
}

/// A fake framewire publisher on 127.0.0.1.
pub struct FakePublisher {
    listener: TcpListener,
    pub url: String,
    pub conn: Option<RawPeer>,
    pub instance: u64,
}

impl FakePublisher {
    pub async fn bind() -> FakePublisher {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("zmq+tcp://{}", listener.local_addr().expect("addr"));
        FakePublisher {
            listener,
            url,
            conn: None,
            instance: 1,
        }
    }

    /// Accepts a framewire subscriber, reads its subscription and answers it
    /// with `welcome`.
    pub async fn accept(&mut self, welcome: Welcome) -> (SubscriberId, String) {
        let r = self.accept_only().await;
        self.control(Control::Welcome(welcome)).await;
        r
    }

    /// Accepts a framewire subscriber and reads its subscription (no welcome yet).
    pub async fn accept_only(&mut self) -> (SubscriberId, String) {
        let (s, _) = within(self.listener.accept()).await.expect("accept");
        let prop = wire::publisher_property(self.instance);
        let mut c = RawPeer::handshake(s, "PUB", &[(wire::PROPERTY, &prop)]).await;
        let v = c
            .peer
            .get(wire::PROPERTY)
            .expect("a framewire subscriber")
            .clone();
        let (_, id) = wire::parse_subscriber_property(&v).expect("property");
        let prefix = loop {
            let m = c.recv_msg().await;
            if let Ok(s) = wire::parse_subscription(&m[0])
                && s.subscribe
            {
                break s.prefix;
            }
        };
        self.conn = Some(c);
        (id, prefix)
    }

    /// The next upstream message that decodes.
    pub async fn upstream(&mut self) -> wire::Upstream {
        loop {
            let m = self.conn.as_mut().expect("accepted").recv_msg().await;
            if let Ok(u) = wire::decode_upstream_any(&m[0]) {
                return u;
            }
        }
    }

    pub async fn control(&mut self, c: Control) {
        self.send(vec![wire::encode_control(&c)]).await;
    }

    pub async fn send(&mut self, parts: Vec<Bytes>) {
        self.conn.as_mut().expect("accepted").send(parts).await;
    }
}

/// HOST:PORT of a `zmq+tcp://` publisher.
pub fn addr(p: &ZmqPublisher) -> String {
    use transport_core::Publisher;
    p.endpoint()
        .url()
        .trim_start_matches("zmq+tcp://")
        .split('?')
        .next()
        .expect("address")
        .to_owned()
}
