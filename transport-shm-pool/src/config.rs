//! The options of an `shm-pool://` endpoint.

use std::time::Duration;

use transport_core::{COMMON_PARAMS, Endpoint, Error, Policy, Result};

/// The URL scheme this backend handles.
pub const SCHEME: &str = "shm-pool";

/// Slots in a pool when the URL has no `slots=`.
pub const DEFAULT_SLOTS: usize = 8;
/// Bytes per slot when the URL has no `slot_size=` (32 MiB: a 4K RGB frame fits).
pub const DEFAULT_SLOT_SIZE: u64 = 32 << 20;
/// Most slots a pool may have.
pub const MAX_SLOTS: usize = 4096;
/// Largest pool (all slots together) a publisher will create: 256 GiB.
pub const MAX_POOL_BYTES: u64 = 256 << 30;
/// Longest spin a subscriber may be asked for with `busy_poll=`.
pub const MAX_BUSY_POLL: Duration = Duration::from_secs(1);
/// Longest pool name.
pub const MAX_NAME: usize = 64;

/// Every URL parameter an `shm-pool://` endpoint accepts.
pub const PARAMS: [&str; 6] = [
    COMMON_PARAMS[0],
    COMMON_PARAMS[1],
    "slots",
    "slot_size",
    "busy_poll",
    "max_held",
];

/// The options of an `shm-pool://NAME?...` endpoint, parsed and checked.
///
/// `slots` and `slot_size` shape the pool the publisher creates; a subscriber
/// takes the real geometry from the publisher it connects to and ignores them.
/// `busy_poll` is the subscriber's: spin this long on shared memory before
/// parking on the socket. `max_held` is the publisher's: how many slots one
/// subscriber may hold as views (of pool slots, and of forward slots).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The pool's name (the address part of the URL).
    pub name: String,
    /// Number of slots (`slots=`), at most [`MAX_SLOTS`].
    pub slots: usize,
    /// Largest payload a slot holds (`slot_size=`).
    pub slot_size: u64,
    /// The `policy=` of the URL (options passed in code override it).
    pub policy: Policy,
    /// The subscriber's `busy_poll=` spin, if any.
    pub busy_poll: Option<Duration>,
    /// Most slots (and most forward slots) one subscriber may hold as views
    /// at once (`max_held=`, 1 to `slots`; default [`default_max_held`]).
    pub max_held: usize,
}

/// The `max_held` of a pool of `slots` slots without `max_held=`: half the
/// pool, at least 1, so that one subscriber keeping its views cannot hold
/// the pool hostage.
///
/// A view that a subscriber's process forwards through its own `shm-pool`
/// publisher stops counting against its `max_held` once forwarded (the
/// forwarding publisher bounds it with its own forward slots), so a
/// multi-hop pipeline is not cut short by it.
pub fn default_max_held(slots: usize) -> usize {
    (slots / 2).max(1)
}

impl Config {
    /// Parses and checks an endpoint; unknown parameters are an error listing [`PARAMS`].
    pub fn from_endpoint(endpoint: &Endpoint) -> Result<Config> {
        if endpoint.scheme() != SCHEME {
            return Err(Error::UnknownScheme {
                scheme: endpoint.scheme().to_owned(),
                hint: format!("the shm-pool backend handles `{SCHEME}://NAME` only"),
            });
        }
        endpoint.check_params(&PARAMS)?;
        let name = endpoint.address();
        check_name(endpoint.url(), name)?;
        let slots = endpoint
            .parse_param::<usize>("slots")?
            .unwrap_or(DEFAULT_SLOTS);
        if slots == 0 || slots > MAX_SLOTS {
            return Err(Error::InvalidOption {
                option: "slots".into(),
                reason: format!("{slots} slots; give 1 to {MAX_SLOTS}"),
            });
        }
        let slot_size = endpoint.size("slot_size")?.unwrap_or(DEFAULT_SLOT_SIZE);
        if slot_size == 0 || slot_size > transport_core::codec::MAX_PAYLOAD {
            return Err(Error::InvalidOption {
                option: "slot_size".into(),
                reason: format!(
                    "{}; give 1 B to {}",
                    transport_core::fmt_size(slot_size),
                    transport_core::fmt_size(transport_core::codec::MAX_PAYLOAD)
                ),
            });
        }
        let total = (slots as u64).checked_mul(slot_size);
        if total.is_none_or(|t| t > MAX_POOL_BYTES) {
            return Err(Error::InvalidOption {
                option: "slot_size".into(),
                reason: format!(
                    "{slots} slots of {} exceed the pool limit of {}; lower `slots` or `slot_size`",
                    transport_core::fmt_size(slot_size),
                    transport_core::fmt_size(MAX_POOL_BYTES)
                ),
            });
        }
        let policy = endpoint
            .parse_param::<Policy>("policy")?
            .unwrap_or_default();
        let busy_poll = endpoint.duration("busy_poll")?.filter(|d| !d.is_zero());
        if let Some(d) = busy_poll
            && d > MAX_BUSY_POLL
        {
            return Err(Error::InvalidOption {
                option: "busy_poll".into(),
                reason: format!("{d:?} is longer than the limit of {MAX_BUSY_POLL:?}; spin less"),
            });
        }
        let max_held = endpoint
            .parse_param::<usize>("max_held")?
            .unwrap_or_else(|| default_max_held(slots));
        if max_held == 0 || max_held > slots {
            return Err(Error::InvalidOption {
                option: "max_held".into(),
                reason: format!(
                    "{max_held} slots held by one subscriber; give 1 to `slots` ({slots})"
                ),
            });
        }
        Ok(Config {
            name: name.to_owned(),
            slots,
            slot_size,
            policy,
            busy_poll,
            max_held,
        })
    }
}

fn check_name(url: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidEndpoint {
            url: url.to_owned(),
            reason: format!(
                "the pool name `{name}` must be 1 to {MAX_NAME} characters of A-Z, a-z, 0-9, `-`, `_` or `.`"
            ),
        })
    }
}

/// The name of the rendezvous socket in Linux's abstract namespace (without
/// the leading NUL byte): `framewire/<uid>/shm-pool/<name>`.
///
/// Nothing is created on disk; the kernel drops the name when the publisher's
/// socket closes, crash or not.
pub fn socket_name(uid: u32, name: &str) -> String {
    format!("framewire/{uid}/shm-pool/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> Result<Config> {
        Config::from_endpoint(&Endpoint::parse(url)?)
    }

    #[test]
    fn defaults_and_params() {
        let c = cfg("shm-pool://cam0").unwrap();
        assert_eq!(
            (c.slots, c.slot_size, c.policy),
            (8, 32 << 20, Policy::Block)
        );
        assert_eq!(c.busy_poll, None);
        assert_eq!(c.max_held, 4, "half the pool by default");
        assert_eq!(cfg("shm-pool://cam0?slots=1").unwrap().max_held, 1);
        assert_eq!(cfg("shm-pool://cam0?slots=2").unwrap().max_held, 1);
        assert_eq!(cfg("shm-pool://cam0?slots=9").unwrap().max_held, 4);
        assert_eq!(cfg("shm-pool://cam0?max_held=8").unwrap().max_held, 8);
        let c = cfg("shm-pool://cam0?slots=3&slot_size=64MiB&policy=fail&recv=view&busy_poll=50us")
            .unwrap();
        assert_eq!(
            (c.slots, c.slot_size, c.policy),
            (3, 64 << 20, Policy::Fail)
        );
        assert_eq!(c.busy_poll, Some(Duration::from_micros(50)));
    }

    #[test]
    fn bad_input_says_what_is_accepted() {
        let msg = cfg("shm-pool://cam0?queue=3").unwrap_err().to_string();
        assert!(
            msg.contains("queue") && msg.contains("slots, slot_size, busy_poll, max_held"),
            "{msg}"
        );
        assert!(cfg("shm-pool://cam0?slots=0").is_err());
        assert!(cfg("shm-pool://cam0?slots=5000").is_err());
        assert!(cfg("shm-pool://cam0?slot_size=0").is_err());
        assert!(cfg("shm-pool://cam0?slot_size=12parsecs").is_err());
        assert!(cfg("shm-pool://cam0?slots=4096&slot_size=1GiB").is_err());
        assert!(cfg("shm-pool://cam0?busy_poll=2s").is_err());
        for bad in ["max_held=0", "max_held=9", "max_held=-1", "max_held=half"] {
            let msg = cfg(&format!("shm-pool://cam0?{bad}"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("max_held"), "{bad}: {msg}");
        }
        assert!(cfg("shm-pool://cam0?policy=sometimes").is_err());
        assert!(cfg("shm-pool://../etc").is_err());
        assert!(cfg("shm-pool://a/b").is_err());
        assert!(matches!(
            cfg("tcp://cam0"),
            Err(Error::UnknownScheme { .. })
        ));
        let long = format!("shm-pool://{}", "x".repeat(65));
        assert!(cfg(&long).is_err());
    }

    #[test]
    fn socket_names_fit_sun_path() {
        let n = socket_name(u32::MAX, &"x".repeat(MAX_NAME));
        assert!(n.len() < 107, "{} bytes", n.len());
    }
}
