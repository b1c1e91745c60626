#![doc = include_str!("../README.md")]
#![deny(clippy::undocumented_unsafe_blocks)]

mod layout;
mod proto;
mod publisher;
mod subscriber;
use transport_shm_support::copy;
/// Operating-system helpers (Linux): sealed memfds, mappings, abstract
/// sockets, fd passing, peer credentials; from the shared-memory support crate.
pub use transport_shm_support::sys;

use std::time::Duration;

use async_trait::async_trait;
use transport_core::{
    COMMON_PARAMS, Capabilities, Endpoint, Error, Policy, PublishOptions, Result, SubscribeOptions,
    Transport,
};

pub use publisher::{RingLoan, ShmRingPublisher};
pub use subscriber::ShmRingSubscriber;

/// Endpoint parameters this backend accepts.
pub const PARAMS: [&str; 6] = [
    COMMON_PARAMS[0],
    COMMON_PARAMS[1],
    "capacity",
    "max_records",
    "spin",
    "handshake_timeout",
];

/// Default of `capacity=`: five 24 MiB frames with room to spare.
pub const DEFAULT_CAPACITY: u64 = 128 << 20;
/// Default of `handshake_timeout=`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest channel name (the part after `shm-ring://`).
pub const MAX_NAME_LEN: usize = 64;

/// The smallest record: a header and one line of envelope.
const MIN_RECORD: u64 = layout::RECORD_HEADER + layout::MIN_ENVELOPE;

/// Options of one endpoint, checked.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    name: String,
    capacity: u64,
    max_records: u64,
    spin: Duration,
    handshake_timeout: Duration,
}

impl Config {
    fn from_endpoint(e: &Endpoint) -> Result<Config> {
        if e.scheme() != "shm-ring" {
            return Err(Error::UnknownScheme {
                scheme: e.scheme().to_owned(),
                hint: "transport-shm-ring handles shm-ring://".into(),
            });
        }
        e.check_params(&PARAMS)?;
        // Both sides accept the publisher's policy so that one URL serves both.
        e.parse_param::<Policy>("policy")?;
        let name = e.address();
        if name.len() > MAX_NAME_LEN
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(Error::InvalidEndpoint {
                url: e.url().to_owned(),
                reason: format!(
                    "the channel name must be 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9, `.`, `_` or `-`"
                ),
            });
        }
        let page = sys::page_size() as u64;
        let asked = e.size("capacity")?.unwrap_or(DEFAULT_CAPACITY);
        let capacity = asked
            .checked_next_multiple_of(page)
            .filter(|c| (page..=layout::MAX_CAPACITY).contains(c))
            .ok_or_else(|| Error::InvalidOption {
                option: "capacity".into(),
                reason: format!(
                    "{asked} bytes; use between {} and {}",
                    transport_core::fmt_size(page),
                    transport_core::fmt_size(layout::MAX_CAPACITY)
                ),
            })?;
        let fits = capacity / MIN_RECORD;
        let max_records = match e.parse_param::<u64>("max_records")? {
            Some(0) => {
                return Err(Error::InvalidOption {
                    option: "max_records".into(),
                    reason: "must be at least 1".into(),
                });
            }
            Some(n) => n.min(fits),
            None => fits,
        };
        Ok(Config {
            name: name.to_owned(),
            capacity,
            max_records,
            spin: e.duration("spin")?.unwrap_or(Duration::ZERO),
            handshake_timeout: e
                .duration("handshake_timeout")?
                .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        })
    }

    /// Largest payload a record can carry (with an envelope of at most 64 bytes).
    fn max_payload(&self) -> u64 {
        self.capacity - MIN_RECORD
    }

    /// The abstract socket name: per user, so that users do not collide.
    fn socket_name(&self) -> String {
        format!("framewire/{}/shm-ring/{}", sys::my_uid(), self.name)
    }
}

/// The shared-memory ring backend (`shm-ring://NAME`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ShmRingTransport;

#[async_trait]
impl Transport for ShmRingTransport {
    type Publisher = ShmRingPublisher;
    type Subscriber = ShmRingSubscriber;

    fn schemes(&self) -> &'static [&'static str] {
        &["shm-ring"]
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities> {
        let cfg = Config::from_endpoint(endpoint)?;
        let depth = usize::try_from(cfg.max_records).unwrap_or(usize::MAX);
        let mut c = Capabilities::bounded("shm-ring", cfg.max_payload(), depth);
        c.loan_in_place = true;
        c.cross_process = true;
        Ok(c)
    }

    async fn publish(
        &self,
        endpoint: &Endpoint,
        opts: &PublishOptions,
    ) -> Result<ShmRingPublisher> {
        let cfg = Config::from_endpoint(endpoint)?;
        let policy = opts.resolve_policy(endpoint)?;
        publisher::create(endpoint, cfg, policy, opts.trace_name.clone()).await
    }

    async fn subscribe(
        &self,
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<ShmRingSubscriber> {
        let cfg = Config::from_endpoint(endpoint)?;
        let mode = opts.resolve_mode(endpoint)?;
        subscriber::connect(cfg, mode, opts.topic_prefix.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> Result<Config> {
        Config::from_endpoint(&Endpoint::parse(url).unwrap())
    }

    #[test]
    fn options_are_checked() {
        let c = cfg("shm-ring://cam0").unwrap();
        assert_eq!(c.capacity, DEFAULT_CAPACITY);
        assert_eq!(c.max_records, DEFAULT_CAPACITY / 128);
        let c = cfg("shm-ring://cam0?capacity=1000&max_records=3&spin=50us").unwrap();
        assert_eq!(c.capacity, sys::page_size() as u64, "rounded up to a page");
        assert_eq!(c.max_records, 3);
        assert_eq!(c.spin, Duration::from_micros(50));
        let e = cfg("shm-ring://cam0?slots=4").unwrap_err().to_string();
        assert!(
            e.contains("capacity") && e.contains("max_records") && e.contains("policy"),
            "{e}"
        );
        assert!(cfg("shm-ring://cam0?max_records=0").is_err());
        assert!(cfg("shm-ring://cam0?capacity=2TiB").is_err());
        assert!(cfg("shm-ring://cam0?policy=sometimes").is_err());
        assert!(cfg("shm-ring://cam/0").is_err());
        assert!(cfg(&format!("shm-ring://{}", "a".repeat(65))).is_err());
        assert!(matches!(
            cfg("tcp://cam0"),
            Err(Error::UnknownScheme { .. })
        ));
    }

    #[test]
    fn capabilities_follow_the_options() {
        let e = Endpoint::parse("shm-ring://x?capacity=1MiB&max_records=5").unwrap();
        let c = ShmRingTransport.capabilities(&e).unwrap();
        assert_eq!(c.max_payload, (1 << 20) - 128);
        assert_eq!(c.queue_depth, 5);
        assert!(c.loan_in_place && !c.zero_copy_views && c.cross_process && !c.cross_host);
        assert_eq!(c.policies, Policy::ALL.to_vec());
    }
}
