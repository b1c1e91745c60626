#![doc = include_str!("../README.md")]
//!
//! ## Example
//!
//! ```
//! use transport_core::{Frame, Publisher, Subscriber, Transport, Endpoint};
//! use transport_tcp::TcpTransport;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> transport_core::Result<()> {
//! let t = TcpTransport::default();
//! let mut publ = t.publish(&Endpoint::parse("tcp://127.0.0.1:0")?, &Default::default()).await?;
//! let mut sub = t.subscribe(publ.endpoint(), &Default::default()).await?;
//! publ.send(Frame::new(vec![7u8; 1 << 20]).with_topic("cam/0")).await?;
//! let f = sub.recv().await?;
//! assert_eq!((f.seq, f.payload.len(), f.topic.as_str()), (0, 1 << 20, "cam/0"));
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]

mod publisher;
mod subscriber;
mod wire;

use std::time::Duration;

use async_trait::async_trait;
use transport_core::{
    COMMON_PARAMS, Capabilities, Endpoint, Error, PublishOptions, Result, SubscribeOptions,
    Transport,
};

pub use publisher::TcpPublisher;
pub use subscriber::TcpSubscriber;

/// Endpoint parameters this backend accepts.
pub const PARAMS: [&str; 7] = [
    COMMON_PARAMS[0],
    COMMON_PARAMS[1],
    "queue",
    "max_payload",
    "write_timeout",
    "handshake_timeout",
    "liveness",
];

/// Version of the socket protocol (the handshake, heartbeats): peers of
/// another version are refused with `Error::VersionMismatch`.
pub const PROTOCOL_VERSION: u16 = 2;

/// Default of `liveness=`: a peer silent for this long is declared dead.
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(3);
/// Shortest accepted `liveness=`.
pub const MIN_LIVENESS: Duration = Duration::from_millis(20);
/// Longest accepted `liveness=` (one day).
pub const MAX_LIVENESS: Duration = Duration::from_secs(24 * 3600);

/// Default of `queue=`.
pub const DEFAULT_QUEUE: usize = 4;
/// Default of `max_payload=`.
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 30;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    queue: usize,
    max_payload: u64,
    write_timeout: Duration,
    handshake_timeout: Duration,
    liveness: Duration,
}

impl Config {
    fn from_endpoint(e: &Endpoint) -> Result<Config> {
        if !matches!(e.scheme(), "tcp" | "unix") {
            return Err(Error::UnknownScheme {
                scheme: e.scheme().to_owned(),
                hint: "transport-tcp handles tcp:// and unix://".into(),
            });
        }
        e.check_params(&PARAMS)?;
        let queue = transport_core::contract::queue_param(e, DEFAULT_QUEUE)?;
        let max_payload =
            transport_core::contract::max_payload_param(e, DEFAULT_MAX_PAYLOAD)?.limit;
        let liveness = e.duration("liveness")?.unwrap_or(DEFAULT_LIVENESS);
        if !(MIN_LIVENESS..=MAX_LIVENESS).contains(&liveness) {
            return Err(Error::InvalidOption {
                option: "liveness".into(),
                reason: format!(
                    "{liveness:?} is out of range; accepted: {MIN_LIVENESS:?} to {MAX_LIVENESS:?} (e.g. liveness=3s)"
                ),
            });
        }
        Ok(Config {
            liveness,
            queue,
            max_payload,
            write_timeout: e
                .duration("write_timeout")?
                .unwrap_or(Duration::from_secs(10)),
            handshake_timeout: e
                .duration("handshake_timeout")?
                .unwrap_or(Duration::from_secs(5)),
        })
    }
}

/// The TCP / Unix-socket backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport;

#[async_trait]
impl Transport for TcpTransport {
    type Publisher = TcpPublisher;
    type Subscriber = TcpSubscriber;

    fn schemes(&self) -> &'static [&'static str] {
        &["tcp", "unix"]
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities> {
        let cfg = Config::from_endpoint(endpoint)?;
        let mut c = Capabilities::bounded("tcp", cfg.max_payload, cfg.queue);
        c.cross_host = endpoint.scheme() == "tcp";
        c.cross_process = true;
        Ok(c)
    }

    async fn publish(&self, endpoint: &Endpoint, opts: &PublishOptions) -> Result<TcpPublisher> {
        let cfg = Config::from_endpoint(endpoint)?;
        let policy = opts.resolve_policy(endpoint)?;
        publisher::bind(endpoint, cfg, policy, opts.trace_name.clone()).await
    }

    async fn subscribe(
        &self,
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<TcpSubscriber> {
        let cfg = Config::from_endpoint(endpoint)?;
        let mode = opts.resolve_mode(endpoint)?;
        subscriber::connect(endpoint, cfg, mode, opts.topic_prefix.clone()).await
    }
}
