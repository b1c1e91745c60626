//! The one error type every framewire crate returns.

use std::fmt;

/// A boxed error from a lower layer (an I/O error, a library's own error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, transport_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in framewire.
///
/// Each message says what happened and, where the caller can do something about
/// it, which option or input to change. Backends map their private errors into
/// these variants; new variants may be added in minor releases.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint URL could not be understood.
    #[error("invalid endpoint `{url}`: {reason}")]
    InvalidEndpoint {
        /// The URL as given.
        url: String,
        /// What is wrong with it and what is accepted.
        reason: String,
    },

    /// No backend handles this URL scheme in this build.
    #[error("unknown scheme `{scheme}`: {hint}")]
    UnknownScheme {
        /// The scheme seen.
        scheme: String,
        /// The schemes accepted by this build, or the cargo feature that enables it.
        hint: String,
    },

    /// An option (URL query parameter or options field) is unknown or has a bad value.
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption {
        /// The option's name.
        option: String,
        /// What is wrong and what is accepted.
        reason: String,
    },

    /// The payload is larger than this channel accepts.
    #[error("payload of {} exceeds {option} {}; raise `{option}` in the endpoint URL", fmt_size(*.len), fmt_size(*.limit))]
    PayloadTooLarge {
        /// Size of the payload that was offered.
        len: u64,
        /// The limit in force.
        limit: u64,
        /// The option that sets the limit (`max_payload`, `slot_size`, `capacity`, ...).
        option: &'static str,
    },

    /// The frame's layout does not describe its payload.
    #[error("invalid frame layout: {0}")]
    InvalidLayout(String),

    /// The channel is full and the backpressure policy is `fail`.
    #[error(
        "channel full ({detail}) under policy `fail`; raise `{option}`, read faster, or use policy=block|drop-oldest"
    )]
    Full {
        /// The option that sets the capacity (`queue`, `slots`, `capacity`).
        option: &'static str,
        /// Which queue or pool is full.
        detail: String,
    },

    /// This subscriber fell behind under `drop-oldest` and frames were dropped for it.
    ///
    /// Receiving goes on with the oldest frame still available; the next `recv`
    /// returns it.
    #[error(
        "subscriber lagged: {missed} frame(s) were dropped before it could read them; read faster or raise the queue size"
    )]
    Lagged {
        /// How many frames this subscriber missed.
        missed: u64,
    },

    /// The peer went away (the publisher was dropped, the process died, the
    /// connection closed). Nothing more will arrive on this subscriber.
    #[error("disconnected: {0}")]
    Disconnected(String),

    /// A reconnecting subscriber lost its publisher and found one again on
    /// the same endpoint (see [`crate::reconnect`]); returned once, by the
    /// first `recv` after the reconnect, so that the gap is never silent.
    ///
    /// Frames sent while no connection was up were missed (how many cannot
    /// be known: the new publisher may be another process whose sequence
    /// numbers start again at 0, which is not lag). The next `recv` returns
    /// the new publisher's frames.
    #[error(
        "reconnected after {after:?} without a publisher (frames sent meanwhile were missed; sequence numbers may restart): it had gone away: {reason}"
    )]
    Reconnected {
        /// How long the subscriber was without a publisher.
        after: std::time::Duration,
        /// Why the previous connection ended.
        reason: String,
    },

    /// The peer sent bytes that do not follow the framewire protocol.
    ///
    /// The connection or message concerned is dropped; others are unaffected.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The peer speaks another protocol version.
    #[error(
        "protocol version mismatch: we speak {ours}, the peer speaks {theirs}; run the same framewire version on both sides"
    )]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },

    /// A shared-memory reference that does not name a live slot (forged, stale, or out of range).
    #[error("invalid shared-memory reference: {0}")]
    InvalidReference(String),

    /// A wait ran past its deadline.
    #[error("timed out after {0:?} {1}")]
    Timeout(std::time::Duration, &'static str),

    /// The operation is not supported by this backend.
    #[error("not supported by the `{backend}` backend: {what}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What was asked for.
        what: String,
    },

    /// A loan from another publisher was handed to `send_loan`.
    #[error(
        "this loan belongs to another publisher or backend; send it through the publisher that lent it"
    )]
    ForeignLoan,

    /// An operating-system I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An error from a backend's own dependency.
    #[error("{backend}: {source}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True for errors after which the subscriber or publisher cannot go on.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Error::Disconnected(_))
    }
}

/// Formats a byte count for humans: `24 MiB`, `1.5 KiB`, `17 B`.
pub fn fmt_size(n: u64) -> String {
    struct S(u64);
    impl fmt::Display for S {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
            for (unit, scale) in UNITS {
                if self.0 >= scale {
                    return if self.0 % scale == 0 {
                        write!(f, "{} {unit}", self.0 / scale)
                    } else {
                        write!(
                            f,
                            "{:.2} {unit} ({} B)",
                            self.0 as f64 / scale as f64,
                            self.0
                        )
                    };
                }
            }
            write!(f, "{} B", self.0)
        }
    }
    S(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_for_humans() {
        assert_eq!(fmt_size(0), "0 B");
        assert_eq!(fmt_size(24 << 20), "24 MiB");
        assert_eq!(fmt_size(1536), "1.50 KiB (1536 B)");
    }

    #[test]
    fn too_large_names_the_option() {
        let e = Error::PayloadTooLarge {
            len: 40 << 20,
            limit: 32 << 20,
            option: "slot_size",
        };
        assert_eq!(
            e.to_string(),
            "payload of 40 MiB exceeds slot_size 32 MiB; raise `slot_size` in the endpoint URL"
        );
    }
}
