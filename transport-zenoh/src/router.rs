//! Running a Zenoh router in-process (the `zenoh-router` example binary).

use transport_core::{Error, Result};

use crate::backend_err;

/// How to start a router.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RouterOptions {
    /// A Zenoh config file (JSON5); `None`: Zenoh's defaults in router mode.
    pub config: Option<std::path::PathBuf>,
    /// Locators to listen on (default when empty and no config: `tcp/0.0.0.0:7447`).
    pub listen: Vec<String>,
    /// Other routers to connect to.
    pub connect: Vec<String>,
}

impl RouterOptions {
    /// Sets the config file.
    pub fn config(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }
    /// Adds a locator to listen on.
    pub fn listen(mut self, locator: impl Into<String>) -> Self {
        self.listen.push(locator.into());
        self
    }
    /// Adds a router to connect to.
    pub fn connect(mut self, locator: impl Into<String>) -> Self {
        self.connect.push(locator.into());
        self
    }
}

fn json_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Starts a router; it runs until the returned session is closed or dropped.
pub async fn start_router(opts: &RouterOptions) -> Result<zenoh::Session> {
    let bad = |option: &str| {
        let option = option.to_owned();
        move |e: zenoh::Error| Error::InvalidOption {
            option: option.clone(),
            reason: e.to_string(),
        }
    };
    let mut c = match &opts.config {
        Some(p) => zenoh::Config::from_file(p).map_err(bad("--config"))?,
        None => {
            let mut c = zenoh::Config::default();
            c.insert_json5("scouting/multicast/enabled", "false")
                .map_err(backend_err)?;
            c.insert_json5(
                "transport/link/tx/queue/congestion_control/block/wait_before_close",
                "3600000000",
            )
            .map_err(backend_err)?;
            c
        }
    };
    c.insert_json5("mode", "\"router\"").map_err(backend_err)?;
    for l in opts.listen.iter().chain(&opts.connect) {
        l.parse::<zenoh::config::EndPoint>()
            .map_err(|e| Error::InvalidOption {
                option: "--listen/--connect".into(),
                reason: format!("`{l}` is not a Zenoh locator such as tcp/0.0.0.0:7447 ({e})"),
            })?;
    }
    if !opts.listen.is_empty() {
        c.insert_json5("listen/endpoints", &json_list(&opts.listen))
            .map_err(bad("--listen"))?;
    }
    if !opts.connect.is_empty() {
        c.insert_json5("connect/endpoints", &json_list(&opts.connect))
            .map_err(bad("--connect"))?;
    }
    crate::open_session(c).await.map_err(|e| Error::Backend {
        backend: "zenoh",
        source: format!("starting the router (check --listen, --config): {e}").into(),
    })
}
