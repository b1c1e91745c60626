//! Tracing spans around every publisher and subscriber the facade makes.
//!
//! Each publisher lives in an `INFO` span `framewire.publisher{url}` and each
//! subscriber in `framewire.subscriber{url, mode}`, from creation to drop;
//! every `send`/`send_loan` is a `DEBUG` span `send{topic, len, seq}` and
//! every `recv` a `DEBUG` span `recv{topic, len, seq}` inside it, so that a
//! frame can be followed from one process's trace into another's by its
//! topic and sequence number. With no tracing subscriber installed, or with
//! `DEBUG` filtered out, a span costs one check of a cached per-call-site
//! flag (measured with `cargo bench -p framewire --bench spans`).

use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;
use tracing::field::Empty;

use crate::{Endpoint, Frame, Loan, Publisher, RecvMode, Result, Stats, Subscriber};

/// A publisher with spans; see the [module docs](self).
pub(crate) struct TracedPublisher {
    pub(crate) inner: Box<dyn Publisher>,
    pub(crate) span: tracing::Span,
}

impl TracedPublisher {
    pub(crate) fn boxed(inner: Box<dyn Publisher>) -> Box<dyn Publisher> {
        let span = tracing::info_span!("framewire.publisher", url = %inner.endpoint().url());
        Box::new(TracedPublisher { inner, span })
    }

    fn record_seq(&self, span: &tracing::Span) {
        if !span.is_disabled() {
            span.record("seq", self.inner.stats().frames_sent.wrapping_sub(1));
        }
    }
}

#[async_trait]
impl Publisher for TracedPublisher {
    async fn send(&mut self, frame: Frame) -> Result<()> {
        let span = tracing::debug_span!(parent: &self.span, "send",
            topic = %frame.topic, len = frame.payload.len(), seq = Empty);
        let r = self.inner.send(frame).instrument(span.clone()).await;
        if r.is_ok() {
            self.record_seq(&span);
        }
        r
    }
    async fn loan(&mut self, len: usize) -> Result<Loan> {
        let span = tracing::debug_span!(parent: &self.span, "loan", len);
        self.inner.loan(len).instrument(span).await
    }
    async fn send_loan(&mut self, loan: Loan) -> Result<()> {
        let span = tracing::debug_span!(parent: &self.span, "send",
            topic = %loan.topic, len = loan.len(), seq = Empty);
        let r = self.inner.send_loan(loan).instrument(span.clone()).await;
        if r.is_ok() {
            self.record_seq(&span);
        }
        r
    }
    async fn flush(&mut self) -> Result<()> {
        self.inner
            .flush()
            .instrument(tracing::debug_span!(parent: &self.span, "flush"))
            .await
    }
    async fn close(&mut self) -> Result<()> {
        self.inner
            .close()
            .instrument(tracing::debug_span!(parent: &self.span, "close"))
            .await
    }
    fn endpoint(&self) -> &Endpoint {
        self.inner.endpoint()
    }
    fn subscriber_count(&self) -> Option<usize> {
        self.inner.subscriber_count()
    }
    async fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()> {
        self.inner
            .wait_for_subscribers(n, timeout)
            .instrument(tracing::debug_span!(parent: &self.span, "wait_for_subscribers", n))
            .await
    }
    fn stats(&self) -> Stats {
        self.inner.stats()
    }
}

/// A subscriber with spans; see the [module docs](self).
pub(crate) struct TracedSubscriber {
    pub(crate) inner: Box<dyn Subscriber>,
    pub(crate) span: tracing::Span,
}

impl TracedSubscriber {
    pub(crate) fn boxed(inner: Box<dyn Subscriber>, url: &str) -> Box<dyn Subscriber> {
        let mode = match inner.recv_mode() {
            RecvMode::Owned => "owned",
            RecvMode::View => "view",
        };
        let span = tracing::info_span!("framewire.subscriber", url = %url, mode);
        Box::new(TracedSubscriber { inner, span })
    }
}

#[async_trait]
impl Subscriber for TracedSubscriber {
    async fn recv(&mut self) -> Result<Frame> {
        let span = tracing::debug_span!(parent: &self.span, "recv",
            topic = Empty, len = Empty, seq = Empty);
        let r = self.inner.recv().instrument(span.clone()).await;
        if !span.is_disabled() {
            match &r {
                Ok(f) => {
                    span.record("topic", f.topic.as_str());
                    span.record("len", f.payload.len());
                    span.record("seq", f.seq);
                }
                Err(e) => {
                    let _in = span.enter();
                    tracing::debug!(error = %e, "recv returned an error");
                }
            }
        }
        r
    }
    fn recv_mode(&self) -> RecvMode {
        self.inner.recv_mode()
    }
    fn stats(&self) -> Stats {
        self.inner.stats()
    }
}
