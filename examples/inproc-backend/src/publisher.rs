//! The sending half: checks, applies the policy, fans out.

use std::sync::Arc;
use std::time::Duration;

use transport_core::contract::{PayloadLimit, count_sent};
use transport_core::{Endpoint, Error, Frame, Loan, Policy, Publisher, Result, Stats, async_trait};

use crate::{Channel, Queued};

/// Publishes on an `inproc://NAME` channel. `send` returns once the frame is
/// in every subscriber's queue, so `flush` has nothing to wait for; to wait
/// until the queues are read, use [`InprocPublisher::drained`]. Dropping it
/// disconnects its subscribers once they have read their queues.
#[derive(Debug)]
pub struct InprocPublisher {
    pub(crate) channel: Arc<Channel>,
    pub(crate) endpoint: Endpoint,
    pub(crate) limit: PayloadLimit,
    pub(crate) policy: Policy,
    pub(crate) trace_name: Option<String>,
}

impl InprocPublisher {
    /// The backpressure policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Waits until every subscriber has read its queue (or has gone), or
    /// fails with [`Error::Timeout`].
    pub async fn drained(&self, timeout: Duration) -> Result<()> {
        let what = "waiting for inproc subscribers to read their queues";
        let drained = tokio::time::timeout(timeout, self.channel.drained()).await;
        drained.map_err(|_| Error::timeout(timeout, what))
    }
}

#[async_trait]
impl Publisher for InprocPublisher {
    async fn send(&mut self, mut frame: Frame) -> Result<()> {
        // Refused before any wait, a bad frame uses no sequence number; a
        // cancelled wait leaves nothing behind (nothing is enqueued yet).
        self.limit.check_frame(&frame)?;
        let fanout = &self.channel;
        fanout.reserve(self.policy).await?;
        // Only `send` (`&mut self`) pushes: `next_seq` is the number `push` takes.
        frame.stamp_for_send(fanout.next_seq(), self.trace_name.as_deref())?;
        // A heap buffer nobody else references (checked before the clones).
        let private = frame.payload.is_unique();
        let len = frame.payload.len();
        fanout.push(Queued { frame, private });
        count_sent(fanout.stats(), len);
        Ok(())
    }

    async fn loan(&mut self, len: usize) -> Result<Loan> {
        // A heap buffer: once frozen, `send` shares it without a copy.
        self.limit.heap_loan(len)
    }

    async fn flush(&mut self) -> Result<()> {
        // Everything `send` accepted is in every queue already.
        Ok(())
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn subscriber_count(&self) -> Option<usize> {
        Some(self.channel.subscriber_count())
    }

    async fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()> {
        self.channel.wait_for_subscribers(n, timeout).await
    }

    fn stats(&self) -> Stats {
        self.channel.stats().snapshot()
    }
}

impl Drop for InprocPublisher {
    fn drop(&mut self) {
        // Subscribers read what is queued, then are disconnected.
        self.channel.close();
    }
}
