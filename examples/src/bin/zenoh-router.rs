//! Runs a Zenoh router for `zenoh://` endpoints, so a deployment needs
//! nothing from outside the workspace.
//!
//! ```text
//! zenoh-router --listen tcp/0.0.0.0:7447
//! zenoh-router --config router.json5
//! ```
//!
//! Prints `listening on LOCATOR` lines and `zid ID` on stdout once it is
//! up, then runs until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use framewire::zenoh::router::{RouterOptions, start_router};

/// Run a Zenoh router (mode router) for framewire's zenoh:// endpoints.
#[derive(Debug, Parser)]
#[command(name = "zenoh-router", version)]
struct Args {
    /// A Zenoh config file (JSON5); the mode is forced to router.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// A locator to listen on (repeatable), e.g. tcp/0.0.0.0:7447.
    #[arg(long, value_name = "LOCATOR")]
    listen: Vec<String>,
    /// Another router to connect to (repeatable).
    #[arg(long, value_name = "LOCATOR")]
    connect: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    framewire_examples::init_tracing();
    let args = Args::parse();
    let mut opts = RouterOptions::default();
    opts.config = args.config;
    opts.listen = args.listen;
    opts.connect = args.connect;
    let listen = opts.listen.clone();
    let session = match start_router(&opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("zenoh-router: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Zenoh opens the listeners before `open` returns (exit_on_failure).
    if listen.is_empty() {
        println!("listening on the locators of the config (Zenoh's default: tcp/[::]:7447)");
    }
    for l in &listen {
        println!("listening on {l}");
    }
    println!("zid {}", session.zid());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("zenoh-router: cannot watch SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if let Err(e) = session.close().await {
        eprintln!("zenoh-router: close: {e}");
    }
    ExitCode::SUCCESS
}
