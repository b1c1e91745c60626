#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod publisher;
pub mod router;
mod subscriber;
pub mod wire;

/// Re-exported so that users name the same Zenoh version.
pub use zenoh;

use std::time::Duration;

use async_trait::async_trait;
use transport_core::{
    COMMON_PARAMS, Capabilities, Endpoint, Error, Policy, PublishOptions, Result, SubscribeOptions,
    Transport,
};
use zenoh::Wait;

pub use publisher::ZenohPublisher;
pub use subscriber::ZenohSubscriber;

/// Endpoint parameters this backend accepts.
pub const PARAMS: [&str; 11] = [
    COMMON_PARAMS[0],
    COMMON_PARAMS[1],
    "mode",
    "connect",
    "listen",
    "config",
    "queue",
    "max_payload",
    "flush_timeout",
    "gone_after",
    "rx_buffer",
];

/// Default of `queue=` (frames queued per subscriber).
pub const DEFAULT_QUEUE: usize = 8;
/// Default of `max_payload=`.
pub const DEFAULT_MAX_PAYLOAD: u64 = 256 << 20;
/// Default of `flush_timeout=`.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `gone_after=`.
pub const DEFAULT_GONE_AFTER: Duration = Duration::from_secs(10);
/// Default of `rx_buffer=`: Zenoh's receive buffers per link (its
/// `transport/link/rx/buffer_size`), Zenoh's own default. A message Zenoh
/// fragments (anything over 64 KiB) holds one 64 KiB buffer per fragment
/// until it is complete; only `rx_buffer` bytes of them are recycled, every
/// other fragment gets a freshly allocated and zeroed buffer. Raising it (e.g.
/// `rx_buffer=32MiB` for 24 MiB frames) cuts that cost, but each link of
/// every session then keeps up to that much memory.
pub const DEFAULT_RX_BUFFER: u64 = 65535;
/// The well-known local locator of zero-configuration peers (see the README).
pub const LOCAL_HUB: &str = "tcp/127.0.0.1:17447";
const LOCAL_HUB_ADDR: &str = "127.0.0.1:17447";

/// Key prefix of the queryables subscribers answer flushes on.
pub(crate) const FLUSH_PREFIX: &str = "@framewire/flush";
/// Key prefix of the liveliness tokens publishers declare.
pub(crate) const PUB_PREFIX: &str = "@framewire/pub";
/// Key prefix of the liveliness tokens subscribers declare.
pub(crate) const SUB_PREFIX: &str = "@framewire/sub";

pub(crate) fn backend_err(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "zenoh",
        source: e.to_string().into(),
    }
}

/// Session mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Peer,
    Client,
}

/// What an endpoint asks for, parsed and checked.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) key: String,
    pub(crate) mode: Mode,
    pub(crate) connect: Vec<String>,
    pub(crate) listen: Vec<String>,
    pub(crate) config_file: Option<String>,
    pub(crate) queue: usize,
    pub(crate) max_payload: u64,
    pub(crate) flush_timeout: Duration,
    pub(crate) gone_after: Duration,
    /// `rx_buffer=`, if given.
    pub(crate) rx_buffer: Option<u64>,
}

fn locators(e: &Endpoint, key: &str) -> Result<Vec<String>> {
    let Some(v) = e.param(key) else {
        return Ok(Vec::new());
    };
    let list: Vec<String> = v
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for l in &list {
        l.parse::<zenoh::config::EndPoint>()
            .map_err(|err| Error::InvalidOption {
                option: key.to_owned(),
                reason: format!(
                    "`{l}` is not a Zenoh locator such as tcp/127.0.0.1:7447 ({err}); separate several with `,`"
                ),
            })?;
    }
    Ok(list)
}

impl Config {
    pub(crate) fn from_endpoint(e: &Endpoint) -> Result<Config> {
        if e.scheme() != "zenoh" {
            return Err(Error::UnknownScheme {
                scheme: e.scheme().to_owned(),
                hint: "transport-zenoh handles zenoh://".into(),
            });
        }
        e.check_params(&PARAMS)?;
        let key = e.address().to_owned();
        zenoh::key_expr::KeyExpr::try_from(key.clone()).map_err(|err| Error::InvalidEndpoint {
            url: e.url().to_owned(),
            reason: format!("`{key}` is not a Zenoh key expression ({err}), e.g. cam/*/rgb"),
        })?;
        let mode = match e.param("mode") {
            None | Some("peer") => Mode::Peer,
            Some("client") => Mode::Client,
            Some(other) => {
                return Err(Error::InvalidOption {
                    option: "mode".into(),
                    reason: format!("`{other}`: accepted: peer, client"),
                });
            }
        };
        let connect = locators(e, "connect")?;
        let listen = locators(e, "listen")?;
        if mode == Mode::Client && connect.is_empty() && e.param("config").is_none() {
            return Err(Error::InvalidOption {
                option: "connect".into(),
                reason: "mode=client needs connect=LOCATOR (a router or peer), e.g. connect=tcp/127.0.0.1:7447".into(),
            });
        }
        let queue = e.parse_param::<usize>("queue")?.unwrap_or(DEFAULT_QUEUE);
        if queue == 0 {
            return Err(Error::InvalidOption {
                option: "queue".into(),
                reason: "must be at least 1".into(),
            });
        }
        let max_payload = e.size("max_payload")?.unwrap_or(DEFAULT_MAX_PAYLOAD);
        // Zenoh refuses messages over 1 GiB by default (transport/link/rx/max_message_size).
        let zenoh_limit = (1u64 << 30) - (u64::from(transport_core::codec::MAX_HEADER) + 64);
        if max_payload > zenoh_limit && e.param("config").is_none() {
            return Err(Error::InvalidOption {
                option: "max_payload".into(),
                reason: format!(
                    "at most {zenoh_limit} without a config file (Zenoh's default transport/link/rx/max_message_size is 1 GiB)"
                ),
            });
        }
        let rx_buffer = e.size("rx_buffer")?;
        if let Some(b) = rx_buffer
            && !(1..=1 << 30).contains(&b)
        {
            return Err(Error::InvalidOption {
                option: "rx_buffer".into(),
                reason: format!("{b} bytes: accepted 1 B to 1 GiB"),
            });
        }
        Ok(Config {
            key,
            mode,
            connect,
            listen,
            config_file: e.param("config").map(str::to_owned),
            queue,
            max_payload,
            flush_timeout: e
                .duration("flush_timeout")?
                .unwrap_or(DEFAULT_FLUSH_TIMEOUT),
            gone_after: e.duration("gone_after")?.unwrap_or(DEFAULT_GONE_AFTER),
            rx_buffer,
        })
    }

    /// Whether nothing was said about how to find peers: zero configuration.
    fn zero_conf(&self) -> bool {
        self.mode == Mode::Peer
            && self.connect.is_empty()
            && self.listen.is_empty()
            && self.config_file.is_none()
    }

    /// The Zenoh configuration for a session of this endpoint; `hub` is
    /// whether a zero-configuration session takes the local hub locator.
    fn zenoh_config(&self, hub: bool) -> Result<zenoh::Config> {
        let opt = |option: &str| {
            let option = option.to_owned();
            move |err: zenoh::Error| Error::InvalidOption {
                option: option.clone(),
                reason: err.to_string(),
            }
        };
        let json = |v: &[String]| {
            format!(
                "[{}]",
                v.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let mut c = match &self.config_file {
            Some(path) => zenoh::Config::from_file(path).map_err(opt("config"))?,
            None => {
                let mut c = zenoh::Config::default();
                let set = |c: &mut zenoh::Config, k: &str, v: &str| {
                    c.insert_json5(k, v).map_err(backend_err)
                };
                // Loopback has no multicast; peers are found through
                // connect/listen, the local hub, and gossip.
                set(&mut c, "scouting/multicast/enabled", "false")?;
                // `block` promises no loss: never close a link because a
                // reader is slow (Zenoh's default closes it after 5 s).
                set(
                    &mut c,
                    "transport/link/tx/queue/congestion_control/block/wait_before_close",
                    "3600000000",
                )?;
                // Room for the headers on top of the largest payload.
                let max_msg = self.max_payload + u64::from(transport_core::codec::MAX_HEADER) + 64;
                set(
                    &mut c,
                    "transport/link/rx/max_message_size",
                    &max_msg.max(1 << 30).to_string(),
                )?;
                set(
                    &mut c,
                    "transport/link/rx/buffer_size",
                    &self.rx_buffer.unwrap_or(DEFAULT_RX_BUFFER).to_string(),
                )?;
                c
            }
        };
        if let (Some(b), Some(_)) = (self.rx_buffer, &self.config_file) {
            c.insert_json5("transport/link/rx/buffer_size", &b.to_string())
                .map_err(opt("rx_buffer"))?;
        }
        let mode = match self.mode {
            Mode::Peer => "\"peer\"",
            Mode::Client => "\"client\"",
        };
        if self.config_file.is_none() || self.mode == Mode::Client {
            c.insert_json5("mode", mode).map_err(opt("mode"))?;
        }
        let (mut connect, mut listen) = (self.connect.clone(), self.listen.clone());
        if self.zero_conf() {
            if hub {
                listen.push(LOCAL_HUB.to_owned());
            } else {
                connect.push(LOCAL_HUB.to_owned());
                listen.push("tcp/127.0.0.1:0".to_owned());
            }
        }
        if !connect.is_empty() {
            c.insert_json5("connect/endpoints", &json(&connect))
                .map_err(opt("connect"))?;
        }
        if !listen.is_empty() {
            c.insert_json5("listen/endpoints", &json(&listen))
                .map_err(opt("listen"))?;
        }
        Ok(c)
    }

    /// Opens a Zenoh session for this endpoint; also returns the `listen`
    /// locators with ephemeral ports resolved.
    pub(crate) async fn open(&self) -> Result<(zenoh::Session, Vec<String>)> {
        if !self.zero_conf() {
            let mut cfg = self.clone();
            cfg.listen = resolve_ephemeral(&self.listen)?;
            let c = cfg.zenoh_config(false)?;
            let s = open_session(c).await.map_err(|e| open_err(self, e))?;
            return Ok((s, cfg.listen));
        }
        // Zero configuration: the first session on the host listens on the
        // hub locator, the others connect to it (and gossip finds the rest).
        for _ in 0..3 {
            let hub = std::net::TcpListener::bind(LOCAL_HUB_ADDR).is_ok();
            match open_session(self.zenoh_config(hub)?).await {
                Ok(s) => return Ok((s, Vec::new())),
                // Another session took the hub between the probe and the open.
                Err(_) if hub => continue,
                Err(e) => return Err(open_err(self, e)),
            }
        }
        let s = open_session(self.zenoh_config(false)?)
            .await
            .map_err(|e| open_err(self, e))?;
        Ok((s, Vec::new()))
    }
}

/// Opens a session from a thread of its own: Zenoh's `open` blocks in place,
/// which it refuses to do (it panics) on a current-thread tokio runtime.
pub(crate) async fn open_session(c: zenoh::Config) -> zenoh::Result<zenoh::Session> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("zenoh-open".into())
        .spawn(move || {
            let _ = tx.send(zenoh::open(c).wait());
        })
        .map_err(|e| -> zenoh::Error {
            format!("cannot start a thread to open a zenoh session: {e}").into()
        })?;
    rx.await
        .map_err(|_| -> zenoh::Error { "the thread opening a zenoh session ended".into() })?
}

fn open_err(cfg: &Config, e: zenoh::Error) -> Error {
    Error::Backend {
        backend: "zenoh",
        source: format!(
            "opening a Zenoh session (connect={:?}, listen={:?}): {e}; check the `connect`, `listen` and `config` options",
            cfg.connect, cfg.listen
        )
        .into(),
    }
}

/// Closes a session (for destructors): waits for Zenoh to drain and close
/// its links, off the async threads; on a current-thread runtime (where Zenoh
/// cannot block) from a thread of its own.
pub(crate) fn close_session(s: zenoh::Session) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let close = move || {
        if let Err(e) = s.close().wait() {
            tracing::debug!("closing a zenoh session: {e}");
        }
    };
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(close)
        }
        Ok(_) => {
            if let Err(e) = std::thread::Builder::new()
                .name("zenoh-close".into())
                .spawn(close)
            {
                tracing::warn!("cannot start a thread to close a zenoh session: {e}");
            }
        }
        Err(_) => close(),
    }
}

/// Replaces port 0 in `tcp/HOST:0` locators by a free port, so the
/// publisher can tell subscribers where it listens.
fn resolve_ephemeral(listen: &[String]) -> Result<Vec<String>> {
    listen
        .iter()
        .map(
            |l| match l.strip_prefix("tcp/").and_then(|a| a.strip_suffix(":0")) {
                Some(host) => {
                    let probe = std::net::TcpListener::bind((host.trim_matches(['[', ']']), 0))
                        .map_err(|e| Error::io(format!("listen={l}: finding a free port"), e))?;
                    let port = probe
                        .local_addr()
                        .map_err(|e| Error::io(format!("listen={l}"), e))?
                        .port();
                    Ok(format!("tcp/{host}:{port}"))
                }
                None => Ok(l.clone()),
            },
        )
        .collect()
}

/// The Zenoh backend: `zenoh://KEYEXPR?OPTIONS`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZenohTransport;

#[async_trait]
impl Transport for ZenohTransport {
    type Publisher = ZenohPublisher;
    type Subscriber = ZenohSubscriber;

    fn schemes(&self) -> &'static [&'static str] {
        &["zenoh"]
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities> {
        let cfg = Config::from_endpoint(endpoint)?;
        let mut c = Capabilities::bounded("zenoh", cfg.max_payload, cfg.queue);
        c.cross_host = true;
        c.cross_process = true;
        c.policies = vec![Policy::Block, Policy::DropOldest];
        c.per_publisher_seq = true;
        Ok(c)
    }

    async fn publish(&self, endpoint: &Endpoint, opts: &PublishOptions) -> Result<ZenohPublisher> {
        let cfg = Config::from_endpoint(endpoint)?;
        let policy = opts.resolve_policy(endpoint)?;
        if policy == Policy::Fail {
            return Err(Error::InvalidOption {
                option: "policy".into(),
                reason: "`fail` is not supported by zenoh:// (Zenoh does not tell a sender that a remote queue is full); accepted: block, drop-oldest".into(),
            });
        }
        publisher::open(endpoint, cfg, policy, opts.trace_name.clone()).await
    }

    async fn subscribe(
        &self,
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<ZenohSubscriber> {
        let cfg = Config::from_endpoint(endpoint)?;
        let mode = opts.resolve_mode(endpoint)?;
        subscriber::open(cfg, mode, opts.topic_prefix.clone()).await
    }
}
