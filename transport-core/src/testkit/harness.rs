//! What a backend's tests provide ([`Harness`]) and how each suite test is
//! run and reported ([`run`], [`Outcome`], [`SKIP_ENV`]).

use std::future::Future;
use std::time::Duration;

use crate::Transport;
use crate::endpoint::Endpoint;

/// How long any single wait on a peer may take in the suite.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// How a backend's tests make endpoints.
pub trait Harness: Send + Sync + 'static {
    /// The backend under test.
    type T: Transport;

    /// A transport instance.
    fn transport(&self) -> Self::T;

    /// A fresh endpoint, used by this test alone. `depth`, when given, bounds
    /// how many frames may be queued per subscriber or held in the pool (the
    /// backend's `queue=`, `slots=` or equivalent); payloads up to 64 MiB must fit.
    fn endpoint(&self, depth: Option<usize>) -> Endpoint;

    /// Where a replacement publisher binds once the publisher that reported
    /// `published` (its [`Publisher::endpoint`](crate::Publisher::endpoint)) was dropped, for the
    /// reconnect test; `None` skips that test. The default, `published`
    /// itself, suits backends whose endpoint can be bound again once free.
    fn restart_endpoint(&self, published: &Endpoint) -> Option<Endpoint> {
        Some(published.clone())
    }
}

/// How a suite test ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and every check held.
    Passed,
    /// It did not run: the backend (or harness) lacks what it needs.
    Skipped {
        /// What was missing (`"policy drop-oldest"`, `"zero_copy_views"`, ...).
        needs: String,
    },
}

/// Carried by unwinding from [`skip`] to [`run`]; not a failure.
pub(super) struct SkipSignal(pub(super) String);

/// Environment variable: set to `fail` to make every skipped test fail
/// (for a backend that claims every capability, or CI that must see each
/// test run).
pub const SKIP_ENV: &str = "FRAMEWIRE_CONFORMANCE_SKIP";

/// Runs the suite test `name` on a fresh two-thread runtime with an overall
/// deadline, and reports it: a skipped test prints
/// `SKIPPED <name>: needs <what>` on stderr, uncaptured, so that
/// `cargo test` shows it next to the test's `ok` (and fails it when
/// [`SKIP_ENV`] is `fail`).
///
/// Used by [`conformance_tests!`](crate::conformance_tests).
pub fn run<H, F, Fut>(name: &'static str, harness: H, test: F) -> Outcome
where
    H: Harness,
    F: FnOnce(&'static H) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime for the test");
    let h: &'static H = Box::leak(Box::new(harness));
    let outcome = rt.block_on(async move {
        match tokio::time::timeout(Duration::from_secs(120), tokio::spawn(test(h))).await {
            Ok(Ok(())) => Outcome::Passed,
            Ok(Err(e)) if e.is_panic() => match e.into_panic().downcast::<SkipSignal>() {
                Ok(s) => Outcome::Skipped { needs: s.0 },
                Err(payload) => std::panic::resume_unwind(payload),
            },
            Ok(Err(e)) => panic!("test task failed: {e}"),
            Err(_) => panic!("conformance test did not finish in 120 s"),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    if let Outcome::Skipped { needs } = &outcome {
        report_skip(name, needs);
        if std::env::var(SKIP_ENV).is_ok_and(|v| v == "fail") {
            panic!("{name} was skipped (needs {needs}) and {SKIP_ENV}=fail");
        }
    }
    outcome
}

/// Writes straight to stderr: the test harness captures `eprintln!`, not
/// this, so the line shows in a plain `cargo test`.
pub(super) fn report_skip(name: &str, needs: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {name}: needs {needs}");
}

/// A name no other test in this machine uses now: `<prefix>-<pid>-<n>`, for
/// pool, ring, socket and channel names in harnesses (tests run in
/// parallel, and other processes may run the same suite).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
