//! The conformance suite: every backend, built in or custom, runs these tests.
//!
//! Each test is written once, generic over a [`Harness`] that makes the
//! backend's endpoints, and is selected by the [`Capabilities`](crate::Capabilities) the backend
//! declares (a test whose capability is missing reports `SKIPPED <name>: needs <what>`).
//! Instantiate the whole suite in a backend's `tests/` with
//! [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! struct MyHarness;
//! impl transport_core::testkit::Harness for MyHarness {
//!     type T = MyTransport;
//!     fn transport(&self) -> MyTransport { MyTransport::default() }
//!     fn endpoint(&self, depth: Option<usize>) -> Endpoint { /* a fresh one */ }
//! }
//! transport_core::conformance_tests!(MyHarness);
//! ```
//!
//! Every wait has a deadline; a test that would hang fails instead.//!
//! The tests are grouped by theme, one module each ([`delivery`],
//! [`policies`], [`memory`], [`lifecycle`]); every test is also reachable
//! here, at `testkit::<name>`.

pub use tokio;

mod harness;
mod helpers;

pub use harness::{Harness, Outcome, PEER_TIMEOUT, SKIP_ENV, run, unique_name};

/// Declares one theme of the suite: each test is defined once inside it, and
/// the same definitions generate the theme's `TESTS` and its part of
/// [`conformance_tests!`](crate::conformance_tests) (a hidden macro named
/// `$mac`), so a test cannot be left out of either. (`$d` is a `$` handed
/// in, for the inner macro's own variables.)
macro_rules! suite {
    ($d:tt; $theme:ident, $mac:ident;
     $( $(#[$meta:meta])* pub async fn $name:ident<H: Harness>($h:ident: &'static H) $body:block )*
    ) => {
        $( $(#[$meta])* pub async fn $name<H: Harness>($h: &'static H) $body )*

        /// The tests of this theme, by name, in the order defined.
        pub const TESTS: &[&str] = &[$(stringify!($name)),*];

        /// This theme's part of `conformance_tests!`.
        #[doc(hidden)]
        #[macro_export]
        macro_rules! $mac {
            ($d harness:expr) => {
                $(
                    #[test]
                    fn $name() {
                        let _ = $d crate::testkit::run(
                            stringify!($name),
                            $d harness,
                            $d crate::testkit::$theme::$name,
                        );
                    }
                )*
            };
        }
    };
}

/// Declares the themes: each line is the theme's module and the hidden macro
/// its `suite!` generates, and the same list makes [`TESTS`] and
/// [`conformance_tests!`](crate::conformance_tests), so a theme cannot be
/// declared without being run.
macro_rules! themes {
    ($d:tt; $( $(#[$meta:meta])* $theme:ident => $mac:ident ),* $(,)?) => {
        $( $(#[$meta])* pub mod $theme; pub use self::$theme::*; )*

        /// Every test of the suite, by name: theme by theme, in the order defined.
        pub const TESTS: &[&str] =
            &concat_names::<{ 0 $(+ $theme::TESTS.len())* }>(&[$($theme::TESTS),*]);

        /// Instantiates every conformance test as a `#[test]` for a harness
        /// expression; a test skipped for a missing capability prints
        /// `SKIPPED <name>: needs <what>` (see [`testkit::run`](crate::testkit::run)).
        #[macro_export]
        macro_rules! conformance_tests {
            ($d harness:expr) => {
                $( $d crate::$mac!($d harness); )*
            };
        }
    };
}

themes! {$;
    /// What arrives, in what order, to whom.
    delivery => __framewire_conformance_delivery,
    /// What a full queue does under each policy; the payload limit.
    policies => __framewire_conformance_policies,
    /// Loans and receive modes.
    memory => __framewire_conformance_memory,
    /// Ends and restarts.
    lifecycle => __framewire_conformance_lifecycle,
}

/// The themes' lists one after the other (`N` is their total length).
const fn concat_names<const N: usize>(parts: &[&[&'static str]]) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut p, mut k) = (0, 0);
    while p < parts.len() {
        let mut i = 0;
        while i < parts[p].len() {
            out[k] = parts[p][i];
            (i, k) = (i + 1, k + 1);
        }
        p += 1;
    }
    assert!(k == N, "the themes' lists add up to N");
    out
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_comes_from_the_definitions() {
        assert!(TESTS.contains(&"round_trip_every_layout_and_size"));
        assert!(TESTS.contains(&"two_publishers_keep_their_own_sequence"));
        let mut names = TESTS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TESTS.len(), "each test once");
    }

    #[test]
    fn unique_names_differ() {
        let (a, b) = (unique_name("x"), unique_name("x"));
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("x-{}-", std::process::id())), "{a}");
    }
}
