#![doc = include_str!("../README.md")]
#![warn(clippy::undocumented_unsafe_blocks)]

mod channel;
pub mod config;
#[cfg(test)]
mod forge_tests;
mod holders;
mod lease;
pub mod pool;
mod publisher;
mod registry;
pub mod shared;
mod subscriber;
mod sys;
pub mod wire;

use transport_core::{
    Capabilities, Endpoint, PublishOptions, Result, SubscribeOptions, Transport, async_trait,
};

pub use config::Config;
pub use publisher::{MAX_SUBSCRIBERS, ShmPoolPublisher};
pub use subscriber::ShmPoolSubscriber;

/// The `shm-pool://` backend: zero-copy frames through a pool of shared-memory slots.
///
/// See the [crate docs](crate) for the URL options and how slots come back.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShmPoolTransport;

impl ShmPoolTransport {
    /// The backend.
    pub fn new() -> Self {
        ShmPoolTransport
    }
}

#[async_trait]
impl Transport for ShmPoolTransport {
    type Publisher = ShmPoolPublisher;
    type Subscriber = ShmPoolSubscriber;

    fn schemes(&self) -> &'static [&'static str] {
        &[config::SCHEME]
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities> {
        let cfg = Config::from_endpoint(endpoint)?;
        let mut c = Capabilities::bounded("shm-pool", cfg.slot_size, cfg.slots);
        c.zero_copy_views = true;
        c.loan_in_place = true;
        c.cross_process = true;
        Ok(c)
    }

    async fn publish(
        &self,
        endpoint: &Endpoint,
        opts: &PublishOptions,
    ) -> Result<ShmPoolPublisher> {
        ShmPoolPublisher::create(endpoint, opts).await
    }

    async fn subscribe(
        &self,
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<ShmPoolSubscriber> {
        ShmPoolSubscriber::connect(endpoint, opts).await
    }
}
