#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

pub mod config;
mod lag_queue;
mod publisher;
mod subscriber;
pub mod wire;

use async_trait::async_trait;
use transport_core::{
    Capabilities, Endpoint, Policy, PublishOptions, Result, SubscribeOptions, Transport,
};

pub use publisher::ZmqPublisher;
pub use subscriber::ZmqSubscriber;

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
        let mut c = Capabilities::new("zmq");
        c.cross_host = matches!(cfg.address, config::Address::Tcp(_));
        c.cross_process = true;
        c.policies = Policy::ALL.to_vec();
        c.max_payload = cfg.max_payload;
        c.queue_depth = cfg.queue;
        c.counts_subscribers = true;
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
