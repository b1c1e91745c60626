#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod channel;
mod publisher;
mod subscriber;

pub use publisher::InprocPublisher;
pub use subscriber::InprocSubscriber;

use transport_core::{
    COMMON_PARAMS, Capabilities, Endpoint, Error, Policy, PublishOptions, RecvMode, Result,
    SubscribeOptions, Transport, async_trait,
};

use crate::channel::Channel;

/// The URL scheme this backend handles: `inproc://NAME`.
pub const SCHEME: &str = "inproc";

/// The URL parameters of this backend, beyond [`COMMON_PARAMS`].
pub const PARAMS: [&str; 2] = ["queue", "max_payload"];

/// Frames queued per subscriber when the URL has no `queue=`.
pub const DEFAULT_QUEUE: usize = 16;

/// Largest payload when the URL has no `max_payload=`: 1 GiB.
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 30;

/// The backend: in-process channels named by `inproc://NAME`.
///
/// Stateless: every instance sees the same process-wide table of channels,
/// so a publisher made through one instance is found by a subscriber made
/// through another (or through `framewire::subscribe`).
#[derive(Debug, Clone, Copy, Default)]
pub struct InprocTransport;

/// The options an `inproc://` URL carries, parsed and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct InprocOptions {
    /// `queue=N`: frames queued per subscriber before the policy applies (at least 1).
    pub queue: usize,
    /// `max_payload=SIZE`: the largest payload accepted, e.g. `64MiB`.
    pub max_payload: u64,
}

impl InprocOptions {
    /// Parses the options of an `inproc://` endpoint. Unknown parameters are an
    /// error that lists the accepted ones; so are bad values, including the
    /// common `policy=` and `recv=`.
    pub fn from_endpoint(endpoint: &Endpoint) -> Result<InprocOptions> {
        if endpoint.scheme() != SCHEME {
            return Err(Error::InvalidEndpoint {
                url: endpoint.url().to_owned(),
                reason: format!("the inproc backend handles `{SCHEME}://NAME` URLs only"),
            });
        }
        let accepted: Vec<&str> = COMMON_PARAMS.iter().chain(PARAMS.iter()).copied().collect();
        endpoint.check_params(&accepted)?;
        endpoint.parse_param::<Policy>("policy")?;
        endpoint.parse_param::<RecvMode>("recv")?;
        let queue = endpoint
            .parse_param::<usize>("queue")?
            .unwrap_or(DEFAULT_QUEUE);
        if queue == 0 {
            return Err(Error::InvalidOption {
                option: "queue".into(),
                reason: "must be at least 1 frame".into(),
            });
        }
        let max_payload = endpoint.size("max_payload")?.unwrap_or(DEFAULT_MAX_PAYLOAD);
        Ok(InprocOptions { queue, max_payload })
    }
}

#[async_trait]
impl Transport for InprocTransport {
    type Publisher = InprocPublisher;
    type Subscriber = InprocSubscriber;

    fn schemes(&self) -> &'static [&'static str] {
        &[SCHEME]
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities> {
        let opts = InprocOptions::from_endpoint(endpoint)?;
        // `Capabilities` is `#[non_exhaustive]`: start from the conservative
        // `new` and set every field, so that each is a decision.
        let mut caps = Capabilities::new("inproc");
        // Payloads are shared `Bytes` in both receive modes, but a view here
        // pins nothing bounded (there is no pool of slots to hold), which is
        // what this capability promises and the suite tests. See the crate
        // docs, "Receive modes".
        caps.zero_copy_views = false;
        // A loan is a heap buffer that is frozen and shared, never copied.
        caps.loan_in_place = true;
        caps.cross_host = false;
        caps.cross_process = false;
        caps.policies = Policy::ALL.to_vec();
        caps.max_payload = opts.max_payload;
        caps.queue_depth = opts.queue;
        caps.counts_subscribers = true;
        Ok(caps)
    }

    async fn publish(&self, endpoint: &Endpoint, opts: &PublishOptions) -> Result<InprocPublisher> {
        let options = InprocOptions::from_endpoint(endpoint)?;
        let policy = opts.resolve_policy(endpoint)?;
        let channel = Channel::attach_publisher(endpoint.address(), endpoint.url(), options.queue)?;
        Ok(InprocPublisher::new(
            channel,
            endpoint.clone(),
            options,
            policy,
            opts.trace_name.clone(),
        ))
    }

    async fn subscribe(
        &self,
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<InprocSubscriber> {
        // `queue=` and `max_payload=` belong to the publisher; a subscriber
        // URL may carry them (one URL serves both ends) and they are checked,
        // but the publisher's values govern the channel.
        InprocOptions::from_endpoint(endpoint)?;
        let mode = opts.resolve_mode(endpoint)?;
        let attached = Channel::attach_subscriber(endpoint.address());
        Ok(InprocSubscriber::new(
            attached,
            mode,
            opts.topic_prefix.clone(),
        ))
    }
}
