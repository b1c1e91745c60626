//! Forwarding impls: `Box`, `Arc`, `&mut` and `dyn DynTransport` are
//! publishers, subscribers and transports wherever their contents are.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Capabilities, DynTransport, Loan, PublishOptions, Publisher, RecvMode, Stats, SubscribeOptions,
    Subscriber, Transport,
};
use crate::Result;
use crate::endpoint::Endpoint;
use crate::frame::Frame;

// Forwarding impls. Each forwards every method, the provided ones too:
// `missing_trait_methods` is denied on them, so that a method added to a
// trait with a default cannot silently bypass a backend's override when the
// backend is used through a box, an `Arc`, a `&mut` or `dyn DynTransport`.

macro_rules! forward_publisher {
    ($($head:tt)*) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        $($head)* {
            async fn send(&mut self, frame: Frame) -> Result<()> {
                (**self).send(frame).await
            }
            async fn loan(&mut self, len: usize) -> Result<Loan> {
                (**self).loan(len).await
            }
            async fn send_loan(&mut self, loan: Loan) -> Result<()> {
                (**self).send_loan(loan).await
            }
            async fn flush(&mut self) -> Result<()> {
                (**self).flush().await
            }
            async fn close(&mut self) -> Result<()> {
                (**self).close().await
            }
            fn endpoint(&self) -> &Endpoint {
                (**self).endpoint()
            }
            fn subscriber_count(&self) -> Option<usize> {
                (**self).subscriber_count()
            }
            async fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()> {
                (**self).wait_for_subscribers(n, timeout).await
            }
            fn max_payload(&self) -> u64 {
                (**self).max_payload()
            }
            fn stats(&self) -> Stats {
                (**self).stats()
            }
        }
    };
}
forward_publisher!(impl<P: Publisher + ?Sized> Publisher for Box<P>);
forward_publisher!(impl<P: Publisher + ?Sized> Publisher for &mut P);

macro_rules! forward_subscriber {
    ($($head:tt)*) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        $($head)* {
            async fn recv(&mut self) -> Result<Frame> {
                (**self).recv().await
            }
            fn recv_mode(&self) -> RecvMode {
                (**self).recv_mode()
            }
            fn stats(&self) -> Stats {
                (**self).stats()
            }
        }
    };
}
forward_subscriber!(impl<S: Subscriber + ?Sized> Subscriber for Box<S>);
forward_subscriber!(impl<S: Subscriber + ?Sized> Subscriber for &mut S);

macro_rules! forward_transport {
    ($($head:tt)*) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        $($head)* {
            type Publisher = T::Publisher;
            type Subscriber = T::Subscriber;
            fn schemes(&self) -> &'static [&'static str] {
                Transport::schemes(&**self)
            }
            fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities> {
                Transport::capabilities(&**self, endpoint)
            }
            async fn publish(
                &self,
                endpoint: &Endpoint,
                opts: &PublishOptions,
            ) -> Result<Self::Publisher> {
                (**self).publish(endpoint, opts).await
            }
            async fn subscribe(
                &self,
                endpoint: &Endpoint,
                opts: &SubscribeOptions,
            ) -> Result<Self::Subscriber> {
                (**self).subscribe(endpoint, opts).await
            }
        }
    };
}
forward_transport!(impl<T: Transport + ?Sized> Transport for Box<T>);
forward_transport!(impl<T: Transport + ?Sized> Transport for Arc<T>);
forward_transport!(impl<T: Transport + ?Sized> Transport for &'static T);

/// A backend chosen at run time is a [`Transport`] too: code generic over
/// `T: Transport` takes the registry's `Arc<dyn DynTransport>` (through the
/// `Arc` forwarding impl) or a `&dyn DynTransport`, with boxed publishers and
/// subscribers.
#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl Transport for dyn DynTransport {
    type Publisher = Box<dyn Publisher>;
    type Subscriber = Box<dyn Subscriber>;
    fn schemes(&self) -> &'static [&'static str] {
        DynTransport::schemes(self)
    }
    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities> {
        DynTransport::capabilities(self, endpoint)
    }
    async fn publish(&self, endpoint: &Endpoint, opts: &PublishOptions) -> Result<Self::Publisher> {
        self.publish_dyn(endpoint, opts).await
    }
    async fn subscribe(
        &self,
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<Self::Subscriber> {
        self.subscribe_dyn(endpoint, opts).await
    }
}
