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
    #[error("disconnected ({backend}): {reason}")]
    Disconnected {
        /// The backend (or layer) that saw the peer go: `tcp`, `shm-pool`, ...
        backend: &'static str,
        /// What happened, in words.
        reason: String,
        /// The lower-level error behind it, if any (also reachable through
        /// [`std::error::Error::source`]).
        #[source]
        source: Option<BoxError>,
    },

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
    #[error("protocol error ({backend}): {message}")]
    Protocol {
        /// The backend (or layer, e.g. `codec`) that found the bytes wrong.
        backend: &'static str,
        /// What is wrong with them.
        message: String,
        /// The lower-level error behind it, if any.
        #[source]
        source: Option<BoxError>,
    },

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
    #[error("invalid shared-memory reference ({backend}): {message}")]
    InvalidReference {
        /// The backend that checked the reference.
        backend: &'static str,
        /// Why it does not name a live slot.
        message: String,
        /// The lower-level error behind it, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// A wait ran past its deadline.
    #[error("timed out after {after:?} {what}")]
    Timeout {
        /// How long we waited.
        after: std::time::Duration,
        /// What we were waiting for, worded to follow "timed out after 5s"
        /// (`"for the publisher's handshake"`, `"connecting to the publisher"`).
        what: &'static str,
    },

    /// A backend was registered for a URL scheme that another backend
    /// registered already.
    #[error(
        "scheme `{scheme}` is already registered; register the backend under another scheme or use the one registered"
    )]
    DuplicateScheme {
        /// The scheme taken twice.
        scheme: String,
    },

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
    /// A [`Error::Protocol`] found by `backend`; add a cause with [`Error::with_source`].
    pub fn protocol(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Protocol {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// A [`Error::Disconnected`] seen by `backend`; add a cause with [`Error::with_source`].
    pub fn disconnected(backend: &'static str, reason: impl Into<String>) -> Self {
        Error::Disconnected {
            backend,
            reason: reason.into(),
            source: None,
        }
    }

    /// A [`Error::InvalidReference`] found by `backend`; add a cause with [`Error::with_source`].
    pub fn invalid_reference(backend: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidReference {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// A [`Error::Timeout`]: waited `after` for `what` (worded to follow
    /// "timed out after 5s", e.g. `"for the publisher's handshake"`).
    pub fn timeout(after: std::time::Duration, what: &'static str) -> Self {
        Error::Timeout { after, what }
    }

    /// Attaches the lower-level error behind a [`Error::Protocol`],
    /// [`Error::Disconnected`] or [`Error::InvalidReference`] (replacing any
    /// earlier one), so that [`std::error::Error::source`] returns it. The
    /// message is unchanged: keep what the cause says in it where a reader
    /// needs it.
    ///
    /// The other variants have no free source slot: they are returned as
    /// they are (an [`Error::Io`] or [`Error::Backend`] already carries its
    /// source), so call this on the value a constructor just made.
    pub fn with_source(mut self, cause: impl Into<BoxError>) -> Self {
        match &mut self {
            Error::Protocol { source, .. }
            | Error::Disconnected { source, .. }
            | Error::InvalidReference { source, .. } => *source = Some(cause.into()),
            _ => {}
        }
        self
    }

    /// The backend (or layer) named in the error, where it names one.
    pub fn backend(&self) -> Option<&'static str> {
        match self {
            Error::Protocol { backend, .. }
            | Error::Disconnected { backend, .. }
            | Error::InvalidReference { backend, .. }
            | Error::Unsupported { backend, .. }
            | Error::Backend { backend, .. } => Some(backend),
            _ => None,
        }
    }

    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True for errors after which the subscriber or publisher cannot go on.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Error::Disconnected { .. })
    }
}

/// An I/O error without more context (`?` in codecs and readers that
/// `tokio_util`-style traits require to be `From<io::Error>`). Where the
/// caller knows what it was doing, [`Error::io`] says more.
impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io {
            context: "I/O error".into(),
            source,
        }
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

    #[test]
    fn structured_errors_name_the_backend_and_keep_the_source() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "bad fd");
        let e = Error::protocol("shm-ring", "the ring's fd is unusable: bad fd").with_source(io);
        assert_eq!(
            e.to_string(),
            "protocol error (shm-ring): the ring's fd is unusable: bad fd"
        );
        assert_eq!(e.backend(), Some("shm-ring"));
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("bad fd"));

        let e = Error::disconnected("tcp", "the publisher is gone");
        assert!(e.is_disconnect());
        assert!(e.source().is_none());
        assert_eq!(e.to_string(), "disconnected (tcp): the publisher is gone");

        let e = Error::invalid_reference("shm-pool", "slot 9 is out of range");
        assert!(
            matches!(&e, Error::InvalidReference { message, .. } if message.contains("slot 9"))
        );
        assert_eq!(
            e.to_string(),
            "invalid shared-memory reference (shm-pool): slot 9 is out of range"
        );

        let e = Error::timeout(
            std::time::Duration::from_secs(5),
            "for the publisher's hello",
        );
        assert!(matches!(e, Error::Timeout { after, .. } if after.as_secs() == 5));
        assert_eq!(
            e.to_string(),
            "timed out after 5s for the publisher's hello"
        );

        // Variants without a source slot are left as they are.
        let e = Error::ForeignLoan.with_source(std::io::Error::other("x"));
        assert!(matches!(e, Error::ForeignLoan) && e.source().is_none());

        let e: Error = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof").into();
        assert!(
            matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof)
        );
        assert_eq!(e.to_string(), "I/O error: eof");

        let e = Error::DuplicateScheme {
            scheme: "inproc".into(),
        };
        assert!(
            e.to_string()
                .contains("scheme `inproc` is already registered")
        );
    }
}
