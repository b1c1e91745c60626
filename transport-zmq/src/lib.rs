#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

pub mod config;
mod conn;
mod publisher;
mod subscriber;
pub mod wire;
pub mod zmtp;

use async_trait::async_trait;
use transport_core::{Capabilities, Endpoint, PublishOptions, Result, SubscribeOptions, Transport};

pub use publisher::ZmqPublisher;
pub use subscriber::ZmqSubscriber;

/// The shared-memory building blocks `shm=pool` uses (transport-shm-pool's
/// [`shared`](transport_shm_pool::shared) module), for tests and tools.
#[cfg(feature = "shm")]
pub use transport_shm_pool::shared as shm_pool;

use config::Config;

/// The ZeroMQ backend: `zmq+tcp://HOST:PORT` and `zmq+ipc:///PATH`.
///
/// See the [crate docs](crate) for the options and the design.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZmqTransport;

#[async_trait]
impl Transport for ZmqTransport {
    type Publisher = ZmqPublisher;
    type Subscriber = ZmqSubscriber;

    fn schemes(&self) -> &'static [&'static str] {
        &config::SCHEMES
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities> {
        let cfg = Config::from_endpoint(endpoint)?;
        let mut c = Capabilities::bounded("zmq", cfg.payload_limit().0, cfg.queue);
        c.cross_host = matches!(cfg.address, config::Address::Tcp(_));
        c.cross_process = true;
        if cfg.shm == config::Shm::Pool {
            // Views of the publisher's slots on this host (owned copies
            // elsewhere), and loans that are the slot itself.
            c.zero_copy_views = true;
            c.loan_in_place = true;
        }
        Ok(c)
    }

    async fn publish(&self, endpoint: &Endpoint, opts: &PublishOptions) -> Result<ZmqPublisher> {
        let cfg = Config::from_endpoint(endpoint)?;
        let policy = opts.resolve_policy(endpoint)?;
        publisher::bind(endpoint, cfg, policy, opts.trace_name.clone()).await
    }

    async fn subscribe(
        &self,
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<ZmqSubscriber> {
        let cfg = Config::from_endpoint(endpoint)?;
        let mode = opts.resolve_mode(endpoint)?;
        subscriber::connect(cfg, mode, opts.topic_prefix.clone()).await
    }
}
