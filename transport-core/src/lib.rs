//! # transport-core
//!
//! The core of [framewire](https://docs.rs/framewire): the [`Transport`],
//! [`Publisher`] and [`Subscriber`] traits every backend implements, the
//! [`Frame`] and its binary envelope ([`codec`]), [`Endpoint`] URLs, the one
//! [`Error`] type, and (feature `testkit`) the conformance suite every backend
//! must pass.
//!
//! A custom backend depends on this crate alone: implement [`Transport`] for a
//! type, run `conformance_tests!` (feature `testkit`) against it, and
//! register it with `framewire::register`.
//!
//! ```
//! use transport_core::{Endpoint, Frame, Layout, PixelFormat, codec};
//!
//! let endpoint = Endpoint::parse("tcp://127.0.0.1:7000?policy=drop-oldest").unwrap();
//! assert_eq!(endpoint.param("policy"), Some("drop-oldest"));
//!
//! let frame = Frame::new(vec![0u8; 4 * 2 * 3]).with_topic("cam/0").with_layout(Layout::Image {
//!     width: 4,
//!     height: 2,
//!     format: PixelFormat::Rgb8,
//! });
//! let wire = codec::encode(&frame).unwrap();
//! assert_eq!(codec::decode(&wire, 1 << 20).unwrap(), frame);
//! ```
#![deny(unsafe_code)]

#[cfg(feature = "ndarray")]
pub mod array;
pub mod bufpool;
pub mod codec;
pub mod contract;
// Streaming stores for large copies into shared memory need intrinsics.
#[allow(unsafe_code)]
pub mod copy;
pub mod endpoint;
mod error;
pub mod fanout;
mod frame;
pub mod pattern;
pub mod reconnect;
pub mod stream;
pub mod sync;
mod transport;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use endpoint::Endpoint;
pub use error::{BoxError, Error, Result, fmt_size};
pub use frame::{DType, Frame, Hop, Layout, PixelFormat, monotonic_ns};
pub use reconnect::{Reconnect, Reconnecting};
pub use stream::{FrameStream, SubscriberExt};
pub use transport::{
    COMMON_PARAMS, Capabilities, DynTransport, Loan, LoanBuffer, Policy, PublishOptions, Publisher,
    RecvMode, SeqTracker, StatCounters, Stats, SubscribeOptions, Subscriber, Transport, wait_until,
};

/// Re-exported so that backends and users name the same versions.
pub use async_trait::async_trait;
pub use bytes;
