#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod publisher;
mod subscriber;

pub use publisher::InprocPublisher;
pub use subscriber::InprocSubscriber;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use transport_core::contract::{self, Delivery, PayloadLimit};
use transport_core::fanout::{Fanout, Member};
use transport_core::{
    Capabilities, Endpoint, Error, Frame, Policy, PublishOptions, Result, StatCounters,
    SubscribeOptions, Transport, async_trait,
};

/// The URL scheme this backend handles: `inproc://NAME`.
pub const SCHEME: &str = "inproc";
/// The URL parameters of this backend, beyond [`transport_core::COMMON_PARAMS`].
pub const PARAMS: [&str; 2] = ["queue", "max_payload"];
/// Frames queued per subscriber when the URL has no `queue=`.
pub const DEFAULT_QUEUE: usize = 16;
/// Largest payload when the URL has no `max_payload=`: 1 GiB.
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 30;

/// The backend: in-process channels named by `inproc://NAME`. Stateless: every
/// instance sees the same process-wide table of channels.
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
    /// Parses and checks the options of an `inproc://` endpoint (the common
    /// `policy=` and `recv=` too); an unknown one is an error listing them.
    pub fn from_endpoint(endpoint: &Endpoint) -> Result<InprocOptions> {
        if endpoint.scheme() != SCHEME {
            return Err(Error::InvalidEndpoint {
                url: endpoint.url().to_owned(),
                reason: format!("the inproc backend handles `{SCHEME}://NAME` URLs only"),
            });
        }
        contract::check_params(endpoint, &PARAMS)?;
        Ok(InprocOptions {
            queue: contract::queue_param(endpoint, DEFAULT_QUEUE)?,
            max_payload: contract::max_payload_param(endpoint, DEFAULT_MAX_PAYLOAD)?.limit,
        })
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
        // Set every field: each is a decision. A view pins no bounded resource
        // (no pool of slots): not what `zero_copy_views` promises. A loan is a
        // heap buffer, frozen and shared, never copied.
        let mut caps = Capabilities::new("inproc");
        caps.zero_copy_views = false;
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
        let o = InprocOptions::from_endpoint(endpoint)?;
        let policy = opts.resolve_policy(endpoint)?;
        let (name, channel) = (endpoint.address(), open(endpoint.address()));
        if !channel.claim_producer() {
            let reason = format!("inproc channel `{name}` already has a publisher; drop it first");
            let url = endpoint.url().to_owned();
            return Err(Error::InvalidEndpoint { url, reason });
        }
        channel.set_depth(o.queue);
        Ok(InprocPublisher {
            channel,
            endpoint: endpoint.clone(),
            limit: PayloadLimit::new(o.max_payload),
            policy,
            trace_name: opts.trace_name.clone(),
        })
    }

    async fn subscribe(
        &self,
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<InprocSubscriber> {
        // One URL serves both ends: `queue=` and `max_payload=` are checked
        // here, but the publisher's values govern.
        InprocOptions::from_endpoint(endpoint)?;
        let mode = opts.resolve_mode(endpoint)?;
        let (name, prefix) = (endpoint.address().to_owned(), opts.topic_prefix.clone());
        let member = attach_subscriber(&name);
        // Frames dropped before it reads its first one count as lag too.
        let delivery = Delivery::new(prefix, mode, Some(member.first_seq()));
        Ok(InprocSubscriber {
            member,
            name,
            delivery,
        })
    }
}

/// A frame in a subscriber's queue (the payload shared by every queue);
/// `private`: a heap buffer only the channel references (see "Receive modes").
#[derive(Debug, Clone)]
struct Queued {
    frame: Frame,
    private: bool,
}

/// One `inproc://NAME` channel: a queue per subscriber, policies, counters.
type Channel = Fanout<Queued>;

/// The channel named `name`. The table is weak (a channel lives as long as its
/// publisher or a subscriber); a closed one (its publisher left) is replaced.
fn open(name: &str) -> Arc<Channel> {
    static TABLE: OnceLock<Mutex<HashMap<String, Weak<Channel>>>> = OnceLock::new();
    let mut table = transport_core::sync::lock(TABLE.get_or_init(Default::default));
    table.retain(|_, w| w.strong_count() > 0);
    match table.get(name).and_then(Weak::upgrade) {
        Some(ch) if !ch.is_closed() => ch,
        _ => {
            // Depth 1 until the publisher attaches and sets its `queue=`.
            let ch = Arc::new(Fanout::new(1, Arc::new(StatCounters::default())));
            table.insert(name.to_owned(), Arc::downgrade(&ch));
            ch
        }
    }
}

/// Adds a subscriber to `name`; the channel waits for its publisher if none.
fn attach_subscriber(name: &str) -> Member<Queued> {
    loop {
        // `None`: its publisher left just now; the next round opens anew.
        if let Some(m) = open(name).join(format!("a subscriber of inproc://{name}")) {
            return m;
        }
    }
}
