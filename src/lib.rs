#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

use std::sync::{Arc, OnceLock, RwLock};

pub use transport_core::*;

pub mod blocking;
mod traced;

#[cfg(feature = "tcp")]
pub use transport_tcp as tcp;

#[cfg(feature = "shm-pool")]
pub use transport_shm_pool as shm_pool;

#[cfg(feature = "zmq")]
pub use transport_zmq as zmq;

#[cfg(feature = "shm-ring")]
pub use transport_shm_ring as shm_ring;

#[cfg(feature = "zenoh")]
pub use transport_zenoh as zenoh;

/// Schemes framewire knows, with the cargo feature that compiles their backend in.
pub const KNOWN_SCHEMES: [(&str, &str); 7] = [
    ("tcp", "tcp"),
    ("unix", "tcp"),
    ("zmq+tcp", "zmq"),
    ("zmq+ipc", "zmq"),
    ("shm-ring", "shm-ring"),
    ("shm-pool", "shm-pool"),
    ("zenoh", "zenoh"),
];

/// Routes endpoint URLs to backends by scheme.
///
/// [`Registry::with_builtins`] holds the backends compiled in; a custom backend
/// crate (written against `transport-core` alone) is added with
/// [`Registry::register`]. The free functions [`publish`], [`subscribe`] and
/// [`register`] use one process-wide registry.
#[derive(Clone, Default)]
pub struct Registry {
    backends: Vec<Arc<dyn DynTransport>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// A registry with every backend compiled into this build.
    pub fn with_builtins() -> Self {
        #[allow(unused_mut)]
        let mut r = Registry::new();
        #[cfg(feature = "tcp")]
        r.backends.push(Arc::new(transport_tcp::TcpTransport));
        #[cfg(feature = "shm-pool")]
        r.backends
            .push(Arc::new(transport_shm_pool::ShmPoolTransport));
        #[cfg(feature = "zmq")]
        r.backends.push(Arc::new(transport_zmq::ZmqTransport));
        #[cfg(feature = "shm-ring")]
        r.backends
            .push(Arc::new(transport_shm_ring::ShmRingTransport));
        #[cfg(feature = "zenoh")]
        r.backends.push(Arc::new(transport_zenoh::ZenohTransport));
        r
    }

    /// Adds a backend. Fails with [`Error::DuplicateScheme`] if one of its
    /// schemes is already taken.
    pub fn register(&mut self, backend: Arc<dyn DynTransport>) -> Result<()> {
        for s in backend.schemes() {
            if self.find(s).is_some() {
                return Err(Error::DuplicateScheme {
                    scheme: (*s).to_owned(),
                });
            }
        }
        self.backends.push(backend);
        Ok(())
    }

    /// Every scheme this registry routes.
    pub fn schemes(&self) -> Vec<&'static str> {
        self.backends
            .iter()
            .flat_map(|b| b.schemes().iter().copied())
            .collect()
    }

    fn find(&self, scheme: &str) -> Option<&Arc<dyn DynTransport>> {
        self.backends.iter().find(|b| b.schemes().contains(&scheme))
    }

    /// The backend for an endpoint, or an error that names what to enable.
    pub fn backend(&self, endpoint: &Endpoint) -> Result<Arc<dyn DynTransport>> {
        let scheme = endpoint.scheme();
        if let Some(b) = self.find(scheme) {
            return Ok(b.clone());
        }
        let hint = match KNOWN_SCHEMES.iter().find(|(s, _)| *s == scheme) {
            Some((_, feature)) => format!(
                "its backend is not compiled in; enable the cargo feature `{feature}` of framewire"
            ),
            None => format!(
                "this build accepts {}; a custom backend must be registered first",
                self.schemes()
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Err(Error::UnknownScheme {
            scheme: scheme.to_owned(),
            hint,
        })
    }

    /// What the backend of `url` can do there.
    pub fn capabilities(&self, url: &str) -> Result<Capabilities> {
        let ep = without_reconnect(url)?;
        self.backend(&ep)?.capabilities(&ep)
    }

    /// Creates a publisher for `url`, inside a tracing span (see the crate
    /// docs). The subscriber-side `reconnect*=` options are checked and
    /// ignored, so that one URL serves both sides.
    pub async fn publish(&self, url: &str, opts: PublishOptions) -> Result<Box<dyn Publisher>> {
        let ep = without_reconnect(url)?;
        let p = self.backend(&ep)?.publish_dyn(&ep, &opts).await?;
        Ok(traced::TracedPublisher::boxed(p))
    }

    /// Creates a subscriber for `url`, inside a tracing span; with
    /// `reconnect=on` in the URL or [`SubscribeOptions::reconnect`] set, one
    /// that follows its publisher across restarts
    /// ([`reconnect::Reconnecting`], for every backend).
    pub async fn subscribe(
        &self,
        url: &str,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscriber>> {
        let ep = Endpoint::parse(url)?;
        let backend = self.backend(&ep)?;
        let s = reconnect::subscribe(backend, &ep, &opts).await?;
        Ok(traced::TracedSubscriber::boxed(s, url))
    }

    /// [`Registry::subscribe`], waiting up to `patience` for a publisher
    /// that is not there yet (retrying every 50 ms). Errors that retrying
    /// cannot fix (a bad URL or option, an unknown scheme) are returned at
    /// once. With reconnect on, its `reconnect_timeout` and backoff apply
    /// instead, to this first wait as to later ones.
    pub async fn subscribe_patiently(
        &self,
        url: &str,
        opts: SubscribeOptions,
        patience: std::time::Duration,
    ) -> Result<Box<dyn Subscriber>> {
        let ep = Endpoint::parse(url)?;
        let backend = self.backend(&ep)?;
        let (on, stripped) = reconnect::Reconnect::resolve(&opts, &ep)?;
        let s = if on.is_some() {
            reconnect::subscribe(backend, &ep, &opts).await?
        } else {
            // Options are checked once, up front: a bad one is an error now.
            backend.capabilities(&stripped)?;
            let every = std::time::Duration::from_millis(50);
            reconnect::subscribe_patiently(backend, stripped, opts, (every, every), Some(patience))
                .await?
        };
        Ok(traced::TracedSubscriber::boxed(s, url))
    }
}

/// `url` parsed, its `reconnect*=` options checked and removed.
fn without_reconnect(url: &str) -> Result<Endpoint> {
    let ep = Endpoint::parse(url)?;
    let (_, ep) = reconnect::Reconnect::resolve(&SubscribeOptions::default(), &ep)?;
    Ok(ep)
}

fn global() -> &'static RwLock<Registry> {
    static GLOBAL: OnceLock<RwLock<Registry>> = OnceLock::new();
    GLOBAL.get_or_init(|| RwLock::new(Registry::with_builtins()))
}

fn snapshot() -> Registry {
    match global().read() {
        Ok(r) => r.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Adds a custom backend to the process-wide registry used by [`publish`] and [`subscribe`].
pub fn register(backend: Arc<dyn DynTransport>) -> Result<()> {
    match global().write() {
        Ok(mut r) => r.register(backend),
        Err(poisoned) => poisoned.into_inner().register(backend),
    }
}

/// Every scheme the process-wide registry routes.
pub fn schemes() -> Vec<&'static str> {
    snapshot().schemes()
}

/// What the backend of `url` can do there.
pub fn capabilities(url: &str) -> Result<Capabilities> {
    snapshot().capabilities(url)
}

/// Creates a publisher for `url`, choosing the backend by scheme.
pub async fn publish(url: &str, opts: PublishOptions) -> Result<Box<dyn Publisher>> {
    snapshot().publish(url, opts).await
}

/// Creates a subscriber for `url`, choosing the backend by scheme; see
/// [`Registry::subscribe`] (reconnect).
pub async fn subscribe(url: &str, opts: SubscribeOptions) -> Result<Box<dyn Subscriber>> {
    snapshot().subscribe(url, opts).await
}

/// [`subscribe`], waiting up to `patience` for a publisher that is not there
/// yet; see [`Registry::subscribe_patiently`].
pub async fn subscribe_patiently(
    url: &str,
    opts: SubscribeOptions,
    patience: std::time::Duration,
) -> Result<Box<dyn Subscriber>> {
    snapshot().subscribe_patiently(url, opts, patience).await
}
