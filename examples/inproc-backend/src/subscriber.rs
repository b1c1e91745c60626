//! The receiving half: pops its queue, reports lag, filters topics.

use std::sync::Arc;

use tokio::sync::Notify;
use transport_core::bytes::Bytes;
use transport_core::{
    Error, Frame, RecvMode, Result, SeqTracker, StatCounters, Stats, Subscriber, async_trait,
};

use crate::channel::{Attached, Channel, Popped};

/// Subscribes to an `inproc://NAME` channel. Made by
/// [`InprocTransport`](crate::InprocTransport)'s `subscribe`.
///
/// A subscriber may be created before its publisher: it then waits (in
/// `recv`) for the publisher to appear. It receives the frames sent after it
/// joined, in order.
#[derive(Debug)]
pub struct InprocSubscriber {
    channel: Arc<Channel>,
    id: u64,
    ready: Arc<Notify>,
    mode: RecvMode,
    topic_prefix: String,
    tracker: SeqTracker,
    stats: Arc<StatCounters>,
}

impl InprocSubscriber {
    pub(crate) fn new(attached: Attached, mode: RecvMode, topic_prefix: String) -> Self {
        let stats = Arc::new(StatCounters::default());
        let mut tracker = SeqTracker::new(stats.clone());
        // Frames dropped from our queue before we read the first one are lag
        // too: tell the tracker where our stream starts.
        tracker.expect_next(attached.next_seq);
        InprocSubscriber {
            channel: attached.channel,
            id: attached.id,
            ready: attached.ready,
            mode,
            topic_prefix,
            tracker,
            stats,
        }
    }

    /// The next frame off the queue, through the sequence tracker. `Ok(None)`:
    /// nothing queued yet.
    ///
    /// Synchronous on purpose: a frame leaves the queue and is returned (or
    /// parked in the tracker) in one step, so no `.await` can lose it.
    fn next_tracked(&mut self) -> Result<Option<Frame>> {
        if let Some(f) = self.tracker.take_pending() {
            return Ok(Some(f));
        }
        match self.channel.pop(self.id) {
            Popped::Frame(mut queued) => {
                let wanted = queued.frame.topic.starts_with(&self.topic_prefix);
                if wanted && self.mode == RecvMode::Owned && !queued.private {
                    // The payload may share memory with someone outside this
                    // channel (the caller kept a clone, or it is a lease from
                    // another backend): an owned frame must not pin that.
                    queued.frame.payload = Bytes::copy_from_slice(&queued.frame.payload);
                }
                // Every frame goes through the tracker, wanted or not, so that
                // frames skipped by the topic filter are not taken for lag.
                self.tracker.accept(queued.frame).map(Some)
            }
            Popped::Empty => Ok(None),
            Popped::Closed => Err(Error::disconnected(
                "inproc",
                format!(
                    "the publisher of inproc://{} was dropped",
                    self.channel.name()
                ),
            )),
        }
    }
}

#[async_trait]
impl Subscriber for InprocSubscriber {
    async fn recv(&mut self) -> Result<Frame> {
        loop {
            match self.next_tracked()? {
                Some(mut f) if f.topic.starts_with(&self.topic_prefix) => {
                    f.stamp_received();
                    StatCounters::add(&self.stats.frames_received, 1);
                    StatCounters::add(&self.stats.bytes_received, f.payload.len() as u64);
                    return Ok(f);
                }
                // Another topic: skip it.
                Some(_) => continue,
                // The publisher stores a permit on every enqueue and on
                // leaving, so a wake-up between the look above and this wait
                // is not lost. Cancelling here loses nothing: no frame has
                // been taken.
                None => self.ready.notified().await,
            }
        }
    }

    fn recv_mode(&self) -> RecvMode {
        self.mode
    }

    fn stats(&self) -> Stats {
        self.stats.snapshot()
    }
}

impl Drop for InprocSubscriber {
    fn drop(&mut self) {
        self.channel.detach_subscriber(self.id);
    }
}
