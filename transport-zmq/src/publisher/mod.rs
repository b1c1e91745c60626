//! The publisher: one driver task ([`driver`]), one bounded queue per
//! subscriber ([`state`]), and a writer task per connection
//! ([`crate::conn`]); the listening socket is in [`socket`], the
//! shared-memory mode in `shm` (feature `shm`; `no_shm` stands in without).
//!
//! `send` never touches a socket: it applies the policy to the queues of
//! the subscribers whose prefixes match, and wakes the driver.

mod driver;
// Everything `shm=pool` adds, in one module; without the feature a stand-in
// of uninhabited types with the same names keeps the rest free of `cfg`.
#[cfg(feature = "shm")]
mod shm;
#[cfg(not(feature = "shm"))]
#[path = "no_shm.rs"]
mod shm;
mod socket;
mod state;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, mpsc};
use transport_core::contract::{PayloadLimit, SubscriberWatch, count_sent};
use transport_core::fanout::full_error;
use transport_core::{
    Endpoint, Error, Frame, Loan, Policy, Publisher, Result, StatCounters, Stats,
};

use crate::config::Config;
use crate::conn;
use crate::wire;
use driver::Driver;
use socket::SocketFile;
use state::{Msg, Shared, State};

/// A publisher on `zmq+tcp://HOST:PORT` or `zmq+ipc:///PATH`.
///
/// It binds at creation. Subscribers join at any time and receive the frames
/// sent after their subscription reached the publisher. See the crate docs.
#[derive(Debug)]
pub struct ZmqPublisher {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    trace_name: Option<String>,
    socket_file: Option<SocketFile>,
    driver: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) async fn bind(
    endpoint: &Endpoint,
    cfg: Config,
    policy: Policy,
    trace_name: Option<String>,
) -> Result<ZmqPublisher> {
    let (listener, reported, socket_file) = socket::listen(endpoint, &cfg.address).await?;
    let (pool, attach, announce) = shm::open(&cfg, reported.address())?;
    let instance = wire::random_u64();
    let (events_tx, events) = mpsc::channel(conn::EVENT_QUEUE);
    // Write completions: at most one per connection in flight, so unbounded
    // is bounded; apart from the rest so that no flood of upstream messages
    // delays the next write to a subscriber.
    let (written_tx, written) = mpsc::unbounded_channel();
    let ctx = conn::Ctx {
        instance,
        handshake_timeout: cfg.handshake_timeout,
        write_timeout: cfg.write_timeout,
        events: events_tx,
        written: written_tx,
    };
    let acceptor = tokio::spawn(conn::accept_loop(listener, ctx));
    let stats = Arc::new(StatCounters::default());
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            subs: Vec::new(),
            next_seq: 0,
            closing: false,
            driver_gone: None,
            cursor: 0,
            holders_used: 0,
            zombies: Vec::new(),
        }),
        stats: stats.clone(),
        members: SubscriberWatch::new(stats),
        wake: Notify::new(),
        changed: Notify::new(),
        cfg,
        policy,
        instance,
        pool,
        announce,
    });
    let driver = Driver::new(
        events,
        written,
        acceptor.abort_handle(),
        shared.clone(),
        attach,
    );
    let driver = tokio::spawn(driver.run());
    Ok(ZmqPublisher {
        shared,
        endpoint: reported,
        trace_name,
        socket_file,
        driver: Some(driver),
    })
}

impl ZmqPublisher {
    fn limit(&self) -> PayloadLimit {
        let (limit, option) = self.shared.cfg.payload_limit();
        PayloadLimit::named(limit, option)
    }

    pub(super) fn gone(why: &str) -> Error {
        Error::disconnected("zmq", format!("the publisher's socket task ended: {why}"))
    }

    /// Under `fail`: an error when a subscriber `topic` goes to has a full queue.
    fn fail_if_full(&self, topic: &str) -> Result<()> {
        let depth = self.shared.cfg.queue;
        let st = self.shared.lock();
        if let Some(s) = st
            .subs
            .iter()
            .find(|s| s.wants(topic) && s.queue.len() >= depth)
        {
            return Err(full_error(&format!("subscriber {}", s.id), depth));
        }
        Ok(())
    }

    /// Waits until every subscriber `topic` goes to has room in its queue.
    async fn wait_for_room(&self, topic: &str) -> Result<()> {
        let depth = self.shared.cfg.queue;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shared.lock();
                if let Some(why) = &st.driver_gone {
                    return Err(Self::gone(why));
                }
                if st
                    .subs
                    .iter()
                    .filter(|s| s.wants(topic))
                    .all(|s| s.queue.len() < depth)
                {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Applies the policy to the queues `topic` goes to: block waits for room,
    /// fail refuses when one is full, drop-oldest drops when it queues.
    pub(super) async fn apply_policy(&self, topic: &str) -> Result<()> {
        match self.shared.policy {
            Policy::Block => self.wait_for_room(topic).await,
            Policy::Fail => self.fail_if_full(topic),
            Policy::DropOldest => Ok(()),
        }
    }
}

#[async_trait]
impl Publisher for ZmqPublisher {
    async fn send(&mut self, mut frame: Frame) -> Result<()> {
        self.limit().check_frame(&frame)?;
        let depth = self.shared.cfg.queue;
        self.apply_policy(&frame.topic).await?;
        if let Some(pool) = self.shared.pool.clone() {
            return self.send_pooled(pool, frame).await;
        }
        // Only `send` (which holds `&mut self`) moves `next_seq`, so it is
        // still current when the frame is queued below.
        let seq = self.shared.lock().next_seq;
        // Stamped after any wait, so the timestamp is the moment it goes out.
        frame.stamp_for_send(seq, self.trace_name.as_deref())?;
        let mut envelope = BytesMut::new();
        transport_core::codec::encode_header(&frame, &mut envelope)?;
        let len = frame.payload.len();
        let msg = Arc::new(Msg {
            topic: Bytes::from(std::mem::take(&mut frame.topic)),
            envelope: envelope.freeze(),
            payload: frame.payload,
            shared: None,
        });
        let topic = std::str::from_utf8(&msg.topic).unwrap_or_default();
        let stats = &self.shared.stats;
        {
            // Queue under the state lock, so that a subscriber registering now
            // either gets this frame or is told its stream starts after it.
            let mut st = self.shared.lock();
            if let Some(why) = &st.driver_gone {
                return Err(Self::gone(why));
            }
            for s in st.subs.iter_mut().filter(|s| s.wants(topic)) {
                if s.queue.len() >= depth {
                    // Only drop-oldest gets here: block waited, fail returned.
                    self.shared.drop_oldest(s);
                }
                s.queue.push(msg.clone());
                stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            st.next_seq = seq + 1;
        }
        self.shared.wake.notify_one();
        count_sent(stats, len);
        Ok(())
    }

    async fn loan(&mut self, len: usize) -> Result<Loan> {
        self.limit().check(len)?;
        if let Some(pool) = self.shared.pool.clone() {
            return self.loan_pooled(pool, len).await;
        }
        Ok(Loan::heap(len))
    }

    async fn send_loan(&mut self, loan: Loan) -> Result<()> {
        if let Some(pool) = self.shared.pool.clone() {
            return self.send_loan_pooled(pool, loan).await;
        }
        self.send(loan.into_heap_frame()?).await
    }

    async fn flush(&mut self) -> Result<()> {
        let acked = self.shared.policy == Policy::DropOldest;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shared.lock();
                if let Some(why) = &st.driver_gone {
                    return Err(Self::gone(why));
                }
                // Under drop-oldest framewire subscribers never stop reading
                // (they drop locally), so also wait for their receipt: their
                // drop counts are then final in `stats`. A plain ZeroMQ
                // subscriber never reports: written is all we know.
                if st.subs.iter().all(|s| {
                    s.queue.is_empty()
                        && !s.writing
                        && (!acked || !s.framewire || s.received >= s.written)
                }) {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Closes the publisher and waits until every subscriber has read what
    /// was sent and the goodbye, and cancelled its subscription (or failed
    /// to within `peer_timeout`). Dropping the publisher does the same in the
    /// background; call this before a process exits.
    async fn close(&mut self) -> Result<()> {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(driver) = self.driver.take() {
            driver.await.map_err(|e| Error::Backend {
                backend: "zmq",
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn subscriber_count(&self) -> Option<usize> {
        Some(self.shared.members.count())
    }

    async fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()> {
        self.shared.members.wait_for(n, timeout).await
    }

    fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }
}

impl ZmqPublisher {
    /// `shm=pool`: shared-memory slots free now (`None` without a pool). A
    /// slot is free when no queue holds its frame and every subscriber that
    /// received it by reference has dropped its view.
    pub fn shm_free_slots(&self) -> Option<usize> {
        self.shared.pool.as_ref().map(shm::free_slots)
    }

    /// `shm=pool`: releases ignored because they were stale, duplicate or
    /// forged (`None` without a pool).
    pub fn shm_stale_releases(&self) -> Option<u64> {
        self.shared.pool.as_ref().map(shm::stale_releases)
    }
}

impl Drop for ZmqPublisher {
    fn drop(&mut self) {
        // The driver writes what is queued, says goodbye, then closes.
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        // Connections already made are unaffected; new ones are refused.
        if let Some(f) = &self.socket_file {
            f.remove();
        }
    }
}
