//! The sending half: stamps, applies the policy, fans out.

use std::sync::Arc;
use std::time::Duration;

use transport_core::{
    Endpoint, Error, Frame, Loan, Policy, Publisher, Result, StatCounters, Stats, async_trait,
    wait_until,
};

use crate::InprocOptions;
use crate::channel::{Channel, Offer};

/// Publishes on an `inproc://NAME` channel. Made by
/// [`InprocTransport`](crate::InprocTransport)'s `publish`.
///
/// `send` returns once the frame is in every subscriber's queue (under
/// [`Policy::Block`] it first waits until every queue has room). So every frame
/// `send` accepted has already been handed to every subscriber, and
/// [`Publisher::flush`] returns at once; to wait until subscribers have also
/// *read* their queues, use [`InprocPublisher::drained`].
///
/// Dropping the publisher disconnects its subscribers once they have read what
/// is queued for them.
#[derive(Debug)]
pub struct InprocPublisher {
    channel: Arc<Channel>,
    endpoint: Endpoint,
    options: InprocOptions,
    policy: Policy,
    trace_name: Option<String>,
    stats: StatCounters,
}

impl InprocPublisher {
    pub(crate) fn new(
        channel: Arc<Channel>,
        endpoint: Endpoint,
        options: InprocOptions,
        policy: Policy,
        trace_name: Option<String>,
    ) -> Self {
        InprocPublisher {
            channel,
            endpoint,
            options,
            policy,
            trace_name,
            stats: StatCounters::default(),
        }
    }

    /// The backpressure policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Waits until every subscriber has read everything queued for it (or has
    /// gone), or fails with [`Error::Timeout`].
    ///
    /// This is stronger than [`Publisher::flush`], which only guarantees the
    /// frames were handed over: a subscriber that never reads makes this time out.
    pub async fn drained(&self, timeout: Duration) -> Result<()> {
        let channel = &self.channel;
        wait_until(
            &channel.room,
            timeout,
            "waiting for inproc subscribers to read their queues",
            || channel.queued() == 0,
        )
        .await
    }

    fn check_len(&self, len: usize) -> Result<()> {
        let len = len as u64;
        if len > self.options.max_payload {
            return Err(Error::PayloadTooLarge {
                len,
                limit: self.options.max_payload,
                option: "max_payload",
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Publisher for InprocPublisher {
    async fn send(&mut self, mut frame: Frame) -> Result<()> {
        // Refuse bad frames before waiting for anything; a refused frame uses
        // no sequence number.
        self.check_len(frame.payload.len())?;
        frame.layout.check(frame.payload.len() as u64)?;
        loop {
            // Register interest before looking, so that room made between the
            // look and the wait is not missed. Dropping this future (the
            // caller cancelled `send`) leaves nothing behind: the frame was
            // not enqueued and no sequence number was used.
            let mut room = std::pin::pin!(self.channel.room.notified());
            room.as_mut().enable();
            let offer = self
                .channel
                .offer(&mut frame, self.policy, self.trace_name.as_deref())?;
            match offer {
                Offer::Sent { dropped } => {
                    StatCounters::add(&self.stats.frames_sent, 1);
                    StatCounters::add(&self.stats.bytes_sent, frame.payload.len() as u64);
                    StatCounters::add(&self.stats.dropped, dropped);
                    return Ok(());
                }
                Offer::Wait => room.await,
            }
        }
    }

    async fn loan(&mut self, len: usize) -> Result<Loan> {
        self.check_len(len)?;
        // A heap buffer: once frozen, `send` moves it into the queues without
        // a copy, and subscribers share it (see the crate docs on receive modes).
        Ok(Loan::heap(len))
    }

    async fn send_loan(&mut self, loan: Loan) -> Result<()> {
        self.send(loan.into_heap_frame()?).await
    }

    async fn flush(&mut self) -> Result<()> {
        // `send` returns only after the frame is in every subscriber's queue:
        // everything accepted has been handed over already.
        Ok(())
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn subscriber_count(&self) -> Option<usize> {
        Some(self.channel.subscriber_count())
    }

    async fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let channel = &self.channel;
        wait_until(
            &channel.members,
            timeout,
            "waiting for inproc subscribers",
            || channel.subscriber_count() >= n,
        )
        .await
    }

    fn stats(&self) -> Stats {
        let mut s = self.stats.snapshot();
        s.queued = self.channel.queued() as u64;
        s.subscribers = self.channel.subscriber_count() as u64;
        s
    }
}

impl Drop for InprocPublisher {
    fn drop(&mut self) {
        self.channel.detach_publisher();
    }
}
