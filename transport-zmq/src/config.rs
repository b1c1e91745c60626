//! Endpoint options of the `zmq+tcp://` and `zmq+ipc://` schemes.

use std::time::Duration;

use transport_core::{COMMON_PARAMS, Endpoint, Error, Policy, Result};

/// URL schemes of this backend.
pub const SCHEMES: [&str; 2] = ["zmq+tcp", "zmq+ipc"];

/// Endpoint parameters this backend accepts.
pub const PARAMS: [&str; 11] = [
    COMMON_PARAMS[0],
    COMMON_PARAMS[1],
    "queue",
    "max_payload",
    "heartbeat",
    "peer_timeout",
    "write_timeout",
    "handshake_timeout",
    "shm",
    "slots",
    "slot_size",
];

/// Default of `queue=`: frames queued per subscriber.
pub const DEFAULT_QUEUE: usize = 4;
/// Largest `queue=` accepted.
pub const MAX_QUEUE: usize = 65_536;
/// Default of `max_payload=`.
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 30;
/// Default of `heartbeat=`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Default of `peer_timeout=`.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `write_timeout=`.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `handshake_timeout=`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `slots=` (`shm=pool`).
pub const DEFAULT_SLOTS: usize = 8;
/// Default of `slot_size=` (`shm=pool`).
pub const DEFAULT_SLOT_SIZE: u64 = 32 << 20;
/// Largest `slots=`.
pub const MAX_SLOTS: usize = 4096;

/// The `shm=` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shm {
    /// `off` (the default): payloads travel over ZeroMQ. A subscriber still
    /// attaches when its publisher runs `shm=pool`.
    Off,
    /// `pool`: a publisher puts payloads in shared-memory slots and sends
    /// references (needs the crate feature `shm`).
    Pool,
    /// `inline` (subscribers): never attach; ask the publisher to send
    /// payloads inline, as a subscriber that cannot attach does by itself.
    Inline,
}

/// Which transport of ZeroMQ an endpoint names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    /// `HOST:PORT`
    Tcp(String),
    /// A filesystem path.
    Ipc(std::path::PathBuf),
}

/// Options parsed from an endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub address: Address,
    pub queue: usize,
    pub max_payload: u64,
    pub heartbeat: Duration,
    pub peer_timeout: Duration,
    pub write_timeout: Duration,
    pub handshake_timeout: Duration,
    pub shm: Shm,
    #[cfg_attr(not(feature = "shm"), allow(dead_code))]
    pub slots: usize,
    pub slot_size: u64,
}

fn invalid(option: &str, reason: impl Into<String>) -> Error {
    Error::InvalidOption {
        option: option.to_owned(),
        reason: reason.into(),
    }
}

impl Config {
    pub fn from_endpoint(e: &Endpoint) -> Result<Config> {
        let address = match e.scheme() {
            "zmq+tcp" => {
                let a = e.address();
                let ok = a
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !ok {
                    return Err(Error::InvalidEndpoint {
                        url: e.url().to_owned(),
                        reason: "expected `zmq+tcp://HOST:PORT` (port 0 picks a free port)".into(),
                    });
                }
                Address::Tcp(a.to_owned())
            }
            "zmq+ipc" => {
                let a = e.address();
                // `*` (ZeroMQ's wildcard path) is not supported: name the socket file.
                if a == "*" || !a.starts_with('/') {
                    return Err(Error::InvalidEndpoint {
                        url: e.url().to_owned(),
                        reason: "expected `zmq+ipc:///absolute/path`".into(),
                    });
                }
                Address::Ipc(a.into())
            }
            other => {
                return Err(Error::UnknownScheme {
                    scheme: other.to_owned(),
                    hint: "transport-zmq handles zmq+tcp:// and zmq+ipc://".into(),
                });
            }
        };
        e.check_params(&PARAMS)?;
        let shm = match e.param("shm") {
            None | Some("off") => Shm::Off,
            Some("pool") if cfg!(feature = "shm") => Shm::Pool,
            Some("pool") => {
                return Err(Error::Unsupported {
                    backend: "zmq",
                    what: "shm=pool (payloads in transport-shm-pool slots): this build of \
                           transport-zmq lacks its cargo feature `shm`; enable it, or use \
                           shm=off (the default)"
                        .into(),
                });
            }
            Some("inline") => Shm::Inline,
            Some(other) => {
                return Err(invalid(
                    "shm",
                    format!("`{other}`; accepted: off, pool, inline"),
                ));
            }
        };
        if shm == Shm::Off {
            // Accepted only where they mean something.
            for key in ["slots", "slot_size"] {
                if e.param(key).is_some() {
                    let others: Vec<&str> = PARAMS
                        .iter()
                        .copied()
                        .filter(|p| !["slots", "slot_size"].contains(p))
                        .collect();
                    return Err(invalid(
                        key,
                        format!(
                            "applies only with shm=pool; accepted otherwise: {}",
                            others.join(", ")
                        ),
                    ));
                }
            }
        }
        let slots = e.parse_param::<usize>("slots")?.unwrap_or(DEFAULT_SLOTS);
        if slots == 0 || slots > MAX_SLOTS {
            return Err(invalid(
                "slots",
                format!("must be 1 to {MAX_SLOTS}, got {slots}"),
            ));
        }
        let slot_size = e.size("slot_size")?.unwrap_or(DEFAULT_SLOT_SIZE);
        if slot_size == 0 || slot_size > transport_core::codec::MAX_PAYLOAD {
            return Err(invalid(
                "slot_size",
                format!("must be 1 B to {} B", transport_core::codec::MAX_PAYLOAD),
            ));
        }
        // Parsed here so that a bad value is refused on both sides.
        e.parse_param::<Policy>("policy")?;
        let queue = e.parse_param::<usize>("queue")?.unwrap_or(DEFAULT_QUEUE);
        if queue == 0 || queue > MAX_QUEUE {
            return Err(invalid(
                "queue",
                format!("must be 1 to {MAX_QUEUE}, got {queue}"),
            ));
        }
        let max_payload = e.size("max_payload")?.unwrap_or(DEFAULT_MAX_PAYLOAD);
        if max_payload > transport_core::codec::MAX_PAYLOAD {
            return Err(invalid(
                "max_payload",
                format!("at most {}", transport_core::codec::MAX_PAYLOAD),
            ));
        }
        let dur = |key: &str, default: Duration| -> Result<Duration> {
            let d = e.duration(key)?.unwrap_or(default);
            if d < Duration::from_millis(1) || d > Duration::from_secs(24 * 3600) {
                return Err(invalid(key, format!("must be 1ms to 24h, got {d:?}")));
            }
            Ok(d)
        };
        let cfg = Config {
            address,
            queue,
            max_payload,
            heartbeat: dur("heartbeat", DEFAULT_HEARTBEAT)?,
            peer_timeout: dur("peer_timeout", DEFAULT_PEER_TIMEOUT)?,
            write_timeout: dur("write_timeout", DEFAULT_WRITE_TIMEOUT)?,
            handshake_timeout: dur("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT)?,
            shm,
            slots,
            slot_size,
        };
        cfg.check_liveness(cfg.heartbeat, cfg.write_timeout)?;
        Ok(cfg)
    }

    /// `peer_timeout` must outlast the silence a healthy peer can cause: two
    /// heartbeat periods plus one write the publisher may be stuck in.
    pub fn check_liveness(&self, heartbeat: Duration, write_timeout: Duration) -> Result<()> {
        let needed = heartbeat * 2 + write_timeout;
        if self.peer_timeout <= needed {
            return Err(invalid(
                "peer_timeout",
                format!(
                    "{:?} is too short: it must exceed 2 x heartbeat ({heartbeat:?}) + write_timeout \
                     ({write_timeout:?}) = {needed:?}; raise `peer_timeout` or lower those",
                    self.peer_timeout
                ),
            ));
        }
        Ok(())
    }

    /// Largest payload a publisher sends: `max_payload`, and under
    /// `shm=pool` also `slot_size`; with the option to raise.
    pub fn payload_limit(&self) -> (u64, &'static str) {
        if self.shm == Shm::Pool && self.slot_size < self.max_payload {
            (self.slot_size, "slot_size")
        } else {
            (self.max_payload, "max_payload")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> Result<Config> {
        Config::from_endpoint(&Endpoint::parse(url).unwrap())
    }

    #[test]
    fn parses_and_refuses() {
        let c =
            cfg("zmq+tcp://127.0.0.1:0?queue=2&heartbeat=100ms&write_timeout=1s&peer_timeout=2s")
                .unwrap();
        assert_eq!(c.queue, 2);
        assert_eq!(c.address, Address::Tcp("127.0.0.1:0".into()));
        assert_eq!(
            cfg("zmq+ipc:///tmp/x.ipc").unwrap().address,
            Address::Ipc("/tmp/x.ipc".into())
        );
        for bad in [
            "zmq+tcp://127.0.0.1",
            "zmq+tcp://:80",
            "zmq+ipc://*",
            "zmq+ipc://relative",
            "zmq+tcp://h:1?queue=0",
            "zmq+tcp://h:1?policy=sometimes",
            "zmq+tcp://h:1?capacity=3",
            "zmq+tcp://h:1?heartbeat=0s",
            "zmq+tcp://h:1?slots=2",
            "zmq+tcp://h:1?shm=inline&slots=0",
            "zmq+tcp://h:1?shm=inline&slot_size=0",
        ] {
            assert!(cfg(bad).is_err(), "{bad} accepted");
        }
        let e = cfg("zmq+tcp://h:1?peer_timeout=1s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer_timeout"), "{e}");
        if cfg!(feature = "shm") {
            let c = cfg("zmq+tcp://h:1?shm=pool&slots=3&slot_size=1MiB").unwrap();
            assert_eq!((c.shm, c.slots, c.slot_size), (Shm::Pool, 3, 1 << 20));
            assert_eq!(c.payload_limit(), (1 << 20, "slot_size"));
        } else {
            assert!(matches!(
                cfg("zmq+tcp://h:1?shm=pool"),
                Err(Error::Unsupported { .. })
            ));
        }
        assert_eq!(cfg("zmq+tcp://h:1?shm=inline").unwrap().shm, Shm::Inline);
        assert!(cfg("zmq+tcp://h:1?shm=off").is_ok());
        assert!(cfg("zmq+tcp://h:1?shm=ring").is_err());
        let e = cfg("zmq+tcp://h:1?capacity=3").unwrap_err().to_string();
        assert!(e.contains("queue") && e.contains("heartbeat"), "{e}");
        assert!(matches!(cfg("tcp://h:1"), Err(Error::UnknownScheme { .. })));
    }
}
