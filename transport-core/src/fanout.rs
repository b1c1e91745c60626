//! One bounded queue per subscriber, and the three policies applied across
//! them: what every socket or in-process backend needs between `send` and the
//! task (or `recv`) that takes each subscriber's frames.
//!
//! - [`LagQueue`]: a FIFO that remembers, for each item, how many items were
//!   dropped just before it, so that a reader learns of a gap exactly where it
//!   happened.
//! - [`Fanout`]: one [`LagQueue`] per [`Member`], all behind one lock, with
//!   [`Fanout::reserve`] applying [`Policy`] (block waits for room in every
//!   queue, fail returns [`Error::Full`], drop-oldest goes ahead) and
//!   [`Fanout::push`] enqueueing for everyone. It keeps the `queued`,
//!   `dropped` and `subscribers` counters and the [`SubscriberWatch`] that
//!   `wait_for_subscribers` waits on.
//!
//! Memory is bounded: a queue never holds more than the depth. Every wait
//! registers its wake-up before it looks, and nothing is taken from a queue
//! except in the poll that returns it, so every future here is
//! cancellation-safe. The lock (taken with [`crate::sync::lock`]) is never
//! held across an `.await`.
//!
//! ```
//! use std::sync::Arc;
//! use transport_core::fanout::Fanout;
//! use transport_core::{Policy, StatCounters};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let fanout = Arc::new(Fanout::new(2, Arc::new(StatCounters::default())));
//! let member = fanout.join("subscriber #0").expect("open");
//! for i in 0..3 {
//!     fanout.reserve(Policy::DropOldest).await.unwrap();
//!     fanout.push(i);
//! }
//! // Frame 0 was dropped: the next item carries the gap.
//! assert_eq!(member.recv().await, Some((1, 1)));
//! assert_eq!(member.recv().await, Some((0, 2)));
//! fanout.close();
//! assert_eq!(member.recv().await, None);
//! # });
//! ```

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::contract::SubscriberWatch;
use crate::sync::lock;
use crate::{Error, Policy, Result, StatCounters};

/// A FIFO that remembers, for each item, how many items were dropped just
/// before it.
#[derive(Debug)]
pub struct LagQueue<T> {
    items: VecDeque<(u64, T)>,
    /// Dropped items not yet attached to a later item.
    carry: u64,
}

impl<T> Default for LagQueue<T> {
    fn default() -> Self {
        LagQueue::new()
    }
}

impl<T> LagQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        LagQueue {
            items: VecDeque::new(),
            carry: 0,
        }
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items lost before the next item pushed (and not attached to one yet).
    pub fn carry(&self) -> u64 {
        self.carry
    }

    /// Records `n` items lost upstream, before the next item pushed.
    pub fn add_lag(&mut self, n: u64) {
        self.carry = self.carry.saturating_add(n);
    }

    /// Appends an item; any carried lag is reported before it.
    pub fn push(&mut self, item: T) {
        let lag = std::mem::take(&mut self.carry);
        self.items.push_back((lag, item));
    }

    /// Drops the oldest item (returned, e.g. to release what it holds); the
    /// gap is reported before the next one.
    pub fn drop_oldest(&mut self) -> Option<T> {
        let (lag, item) = self.items.pop_front()?;
        let gap = lag.saturating_add(1);
        match self.items.front_mut() {
            Some(next) => next.0 = next.0.saturating_add(gap),
            None => self.carry = self.carry.saturating_add(gap),
        }
        Some(item)
    }

    /// The oldest item and the number of items lost just before it.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        self.items.pop_front()
    }

    /// Iterates over the queued items, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(_, t)| t)
    }

    /// Drops everything (and forgets the carried lag); returns how many items
    /// there were.
    pub fn clear(&mut self) -> usize {
        let n = self.items.len();
        self.items.clear();
        self.carry = 0;
        n
    }

    /// Takes everything (and forgets the carried lag), oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.carry = 0;
        self.items.drain(..).map(|(_, t)| t)
    }
}

/// [`Error::Full`] for a queue of `depth` frames named `label` (e.g. the
/// subscriber's peer address), naming the `queue=` option.
pub fn full_error(label: &str, depth: usize) -> Error {
    Error::Full {
        option: "queue",
        detail: format!("{label} has {depth} frames queued"),
    }
}

#[derive(Debug)]
struct Queue<T> {
    id: u64,
    label: String,
    items: LagQueue<T>,
    /// A reader took an item with [`Member::recv_in_flight`] and has not
    /// called [`Member::done`] yet.
    in_flight: bool,
    /// Woken (with a stored permit) when an item arrives or the fanout closes.
    ready: Arc<Notify>,
}

#[derive(Debug)]
struct State<T> {
    depth: usize,
    queues: Vec<Queue<T>>,
    next_id: u64,
    next_seq: u64,
    closed: bool,
    /// A producer claimed this fanout ([`Fanout::claim_producer`]).
    claimed: bool,
}

impl<T> State<T> {
    fn full(&self) -> Option<&Queue<T>> {
        self.queues.iter().find(|q| q.items.len() >= self.depth)
    }
}

/// One bounded queue per subscriber, filled by one producer (the publisher,
/// which holds `&mut self` while it sends) and read by one [`Member`] each.
#[derive(Debug)]
pub struct Fanout<T> {
    state: Mutex<State<T>>,
    /// Woken (all waiters) when a queue gets room, a member leaves or the
    /// fanout closes.
    room: Notify,
    members: SubscriberWatch,
    stats: Arc<StatCounters>,
}

/// What [`Member::try_recv`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecv<T> {
    /// The oldest item, and how many items this member lost just before it.
    Item(u64, T),
    /// Nothing queued; more may come.
    Empty,
    /// Nothing queued and the fanout is closed.
    Closed,
}

impl<T: Clone> Fanout<T> {
    /// A fanout whose queues hold at most `depth` items (at least 1), counting
    /// into `stats`.
    pub fn new(depth: usize, stats: Arc<StatCounters>) -> Fanout<T> {
        Fanout {
            state: Mutex::new(State {
                depth: depth.max(1),
                queues: Vec::new(),
                next_id: 0,
                next_seq: 0,
                closed: false,
                claimed: false,
            }),
            room: Notify::new(),
            members: SubscriberWatch::new(stats.clone()),
            stats,
        }
    }

    /// Changes the depth (e.g. once the publisher of a channel that
    /// subscribers opened first attaches).
    pub fn set_depth(&self, depth: usize) {
        lock(&self.state).depth = depth.max(1);
        self.room.notify_waiters();
    }

    /// The counters this fanout keeps.
    pub fn stats(&self) -> &Arc<StatCounters> {
        &self.stats
    }

    /// The subscriber count, for `wait_for_subscribers`.
    pub fn watch(&self) -> &SubscriberWatch {
        &self.members
    }

    /// Members now.
    pub fn subscriber_count(&self) -> usize {
        lock(&self.state).queues.len()
    }

    /// Items queued now, summed over members.
    pub fn queued(&self) -> usize {
        lock(&self.state).queues.iter().map(|q| q.items.len()).sum()
    }

    /// Items pushed so far: the sequence number of the next one.
    pub fn next_seq(&self) -> u64 {
        lock(&self.state).next_seq
    }

    /// Whether [`Fanout::close`] was called.
    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Claims the one producer's place: true the first time, false after
    /// (another publisher owns this fanout) or once closed.
    pub fn claim_producer(&self) -> bool {
        let mut st = lock(&self.state);
        !st.closed && !std::mem::replace(&mut st.claimed, true)
    }

    /// Adds a member that receives every item pushed from now on; `None` once
    /// the fanout is closed (the member would wait for nothing).
    /// `label` names it in [`Error::Full`].
    pub fn join(self: &Arc<Self>, label: impl Into<String>) -> Option<Member<T>> {
        let ready = Arc::new(Notify::new());
        let (id, first_seq) = {
            let mut st = lock(&self.state);
            if st.closed {
                return None;
            }
            let id = st.next_id;
            st.next_id += 1;
            st.queues.push(Queue {
                id,
                label: label.into(),
                items: LagQueue::new(),
                in_flight: false,
                ready: ready.clone(),
            });
            (id, st.next_seq)
        };
        self.members.joined();
        Some(Member {
            fanout: self.clone(),
            id,
            ready,
            first_seq,
        })
    }

    /// Applies `policy` before a push: [`Policy::Block`] waits until every
    /// queue has room, [`Policy::Fail`] is [`Error::Full`] when one has none,
    /// [`Policy::DropOldest`] returns at once (the push drops). Changes
    /// nothing, so cancelling it is harmless.
    pub async fn reserve(&self, policy: Policy) -> Result<()> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let st = lock(&self.state);
                match (policy, st.full()) {
                    (_, None) | (Policy::DropOldest, _) => return Ok(()),
                    (Policy::Fail, Some(q)) => return Err(full_error(&q.label, st.depth)),
                    (Policy::Block, Some(_)) if st.closed => return Ok(()),
                    (Policy::Block, Some(_)) => {}
                }
            }
            room.await;
        }
    }

    /// Enqueues `item` for every member, dropping the oldest item of any full
    /// queue (only drop-oldest gets there after [`Fanout::reserve`]), and
    /// returns how many were dropped. Takes the next sequence number (whether
    /// or not anyone is listening), so a member that joins later knows where
    /// its stream starts. Does nothing once closed.
    pub fn push(&self, item: T) -> u64 {
        let mut st = lock(&self.state);
        if st.closed {
            return 0;
        }
        st.next_seq += 1;
        let depth = st.depth;
        let mut dropped = 0;
        let mut queued = 0;
        for q in &mut st.queues {
            while q.items.len() >= depth {
                q.items.drop_oldest();
                dropped += 1;
            }
            q.items.push(item.clone());
            queued += 1;
            q.ready.notify_one();
        }
        drop(st);
        StatCounters::add(&self.stats.dropped, dropped);
        // Net change, so that a snapshot taken meanwhile never wraps.
        if queued >= dropped {
            StatCounters::add(&self.stats.queued, queued - dropped);
        } else {
            self.stats
                .queued
                .fetch_sub(dropped - queued, Ordering::Relaxed);
        }
        dropped
    }

    /// No more items: members read what is queued, then get `None`/`Closed`,
    /// and no one can join.
    pub fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        for q in &st.queues {
            q.ready.notify_one();
        }
        drop(st);
        self.room.notify_waiters();
    }

    /// Waits until every queue is empty and no item is in flight (or its
    /// member left). Cancellation-safe; wrap it in a timeout where a member
    /// may never read.
    pub async fn drained(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let st = lock(&self.state);
                if st.queues.iter().all(|q| q.items.is_empty() && !q.in_flight) {
                    return;
                }
            }
            room.await;
        }
    }

    /// Waits until at least `n` members have joined.
    pub async fn wait_for_subscribers(&self, n: usize, timeout: Duration) -> Result<()> {
        self.members.wait_for(n, timeout).await
    }

    fn take(&self, id: u64, in_flight: bool) -> TryRecv<T> {
        let mut st = lock(&self.state);
        let closed = st.closed;
        let Some(q) = st.queues.iter_mut().find(|q| q.id == id) else {
            return TryRecv::Closed;
        };
        match q.items.pop() {
            Some((lag, item)) => {
                q.in_flight = in_flight;
                drop(st);
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                self.room.notify_waiters();
                TryRecv::Item(lag, item)
            }
            None if closed => TryRecv::Closed,
            None => TryRecv::Empty,
        }
    }

    fn leave(&self, id: u64) {
        let mut st = lock(&self.state);
        let Some(at) = st.queues.iter().position(|q| q.id == id) else {
            return;
        };
        let q = st.queues.swap_remove(at);
        drop(st);
        self.stats
            .queued
            .fetch_sub(q.items.len() as u64, Ordering::Relaxed);
        self.members.left();
        self.room.notify_waiters();
    }
}

/// One subscriber's place in a [`Fanout`]; dropping it leaves (its queued
/// items are dropped and the publisher stops waiting for it).
#[derive(Debug)]
pub struct Member<T: Clone> {
    fanout: Arc<Fanout<T>>,
    id: u64,
    ready: Arc<Notify>,
    first_seq: u64,
}

impl<T: Clone> Member<T> {
    /// The sequence number of the first item this member is offered.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The fanout this member belongs to.
    pub fn fanout(&self) -> &Arc<Fanout<T>> {
        &self.fanout
    }

    /// Takes the oldest item, if any, without waiting.
    pub fn try_recv(&self) -> TryRecv<T> {
        self.fanout.take(self.id, false)
    }

    /// The oldest item and the number lost just before it; waits for one.
    /// `None`: the fanout is closed and this queue is empty.
    /// Cancellation-safe: an item leaves the queue only in the poll that
    /// returns it.
    pub async fn recv(&self) -> Option<(u64, T)> {
        self.recv_inner(false).await
    }

    /// [`Member::recv`], but the item counts as queued for
    /// [`Fanout::drained`] until [`Member::done`] (for a writer task whose
    /// write is part of the hand-over).
    pub async fn recv_in_flight(&self) -> Option<(u64, T)> {
        self.recv_inner(true).await
    }

    /// The item taken by [`Member::recv_in_flight`] has been handed over.
    pub fn done(&self) {
        let mut st = lock(&self.fanout.state);
        if let Some(q) = st.queues.iter_mut().find(|q| q.id == self.id) {
            q.in_flight = false;
        }
        drop(st);
        self.fanout.room.notify_waiters();
    }

    async fn recv_inner(&self, in_flight: bool) -> Option<(u64, T)> {
        loop {
            // The producer stores a permit on every push and on close, so a
            // wake-up between the look and the wait is not lost.
            match self.fanout.take(self.id, in_flight) {
                TryRecv::Item(lag, item) => return Some((lag, item)),
                TryRecv::Closed => return None,
                TryRecv::Empty => self.ready.notified().await,
            }
        }
    }
}

impl<T: Clone> Drop for Member<T> {
    fn drop(&mut self) {
        self.fanout.leave(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fanout(depth: usize) -> Arc<Fanout<u32>> {
        Arc::new(Fanout::new(depth, Arc::new(StatCounters::default())))
    }

    #[test]
    fn gaps_are_reported_where_they_happened() {
        let mut q = LagQueue::new();
        for i in 0..5 {
            if q.len() == 2 {
                q.drop_oldest();
            }
            q.push(i);
        }
        // 0, 1, 2 dropped; 3 and 4 kept.
        assert_eq!(q.pop(), Some((3, 3)));
        assert_eq!(q.pop(), Some((0, 4)));
        assert_eq!(q.pop(), None);
        // Depth 1: the gap carries to the item pushed next.
        q.push(10);
        q.drop_oldest();
        q.add_lag(2);
        q.push(11);
        assert_eq!(q.pop(), Some((3, 11)));
        assert_eq!(q.carry(), 0);
        q.push(1);
        q.push(2);
        assert_eq!(q.drain().collect::<Vec<_>>(), vec![1, 2]);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn fail_refuses_without_enqueueing_anywhere() {
        let f = fanout(1);
        let a = f.join("a").expect("open");
        let b = f.join("b").expect("open");
        f.reserve(Policy::Fail).await.expect("room");
        f.push(0);
        assert_eq!(a.try_recv(), TryRecv::Item(0, 0));
        match f.reserve(Policy::Fail).await {
            Err(Error::Full { option, detail }) => {
                assert_eq!(option, "queue");
                assert!(detail.starts_with("b has 1"), "{detail}");
            }
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(f.queued(), 1);
        assert_eq!(f.next_seq(), 1);
        assert_eq!(b.try_recv(), TryRecv::Item(0, 0));
        assert_eq!(a.try_recv(), TryRecv::Empty);
        assert_eq!(f.stats().snapshot().queued, 0);
    }

    #[tokio::test]
    async fn drop_oldest_counts_and_reports_lag_per_member() {
        let f = fanout(2);
        let slow = f.join("slow").expect("open");
        let fast = f.join("fast").expect("open");
        for i in 0..5 {
            f.reserve(Policy::DropOldest).await.expect("never full");
            f.push(i);
            assert_eq!(fast.try_recv(), TryRecv::Item(0, i));
        }
        let s = f.stats().snapshot();
        assert_eq!(s.dropped, 3, "three dropped from the slow queue only");
        assert_eq!(s.queued, 2, "the slow queue holds 3 and 4");
        assert_eq!(slow.recv().await, Some((3, 3)));
        assert_eq!(slow.recv().await, Some((0, 4)));
        assert_eq!(f.stats().snapshot().queued, 0);
    }

    #[tokio::test]
    async fn block_waits_for_room_and_is_cancellation_safe() {
        let f = fanout(1);
        let m = f.join("m").expect("open");
        f.reserve(Policy::Block).await.expect("room");
        f.push(7);
        // Full: a reserve times out (and its cancellation leaves nothing).
        assert!(
            tokio::time::timeout(Duration::from_millis(30), f.reserve(Policy::Block))
                .await
                .is_err()
        );
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.reserve(Policy::Block).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(m.recv().await, Some((0, 7)));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the read")
            .expect("join")
            .expect("room");
        // A member leaving frees the producer too.
        f.push(8);
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.reserve(Policy::Block).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(m);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the leave")
            .expect("join")
            .expect("room");
        assert_eq!(f.subscriber_count(), 0);
        assert_eq!(f.stats().snapshot().queued, 0);
    }

    #[tokio::test]
    async fn recv_wakes_on_push_and_close_and_a_cancelled_recv_loses_nothing() {
        let f = fanout(4);
        let m = f.join("m").expect("open");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), m.recv())
                .await
                .is_err()
        );
        let reader = tokio::spawn({
            let f = f.clone();
            async move {
                let m = f.join("late").expect("open");
                let mut got = Vec::new();
                while let Some((_, x)) = m.recv().await {
                    got.push(x);
                }
                got
            }
        });
        f.watch()
            .wait_for(2, Duration::from_secs(5))
            .await
            .expect("joined");
        f.push(1);
        f.push(2);
        f.close();
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("woken by close")
            .expect("join");
        assert_eq!(got, vec![1, 2]);
        assert_eq!(
            m.recv().await,
            Some((0, 1)),
            "the cancelled recv took nothing"
        );
        assert_eq!(m.recv().await, Some((0, 2)));
        assert_eq!(m.recv().await, None);
        assert!(f.join("after").is_none(), "no one joins a closed fanout");
        // A member waiting on an empty queue is woken by the close alone.
        let g = fanout(1);
        let idle = tokio::spawn({
            let g = g.clone();
            async move { g.join("idle").expect("open").recv().await }
        });
        g.watch()
            .wait_for(1, Duration::from_secs(5))
            .await
            .expect("joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
        g.close();
        let got = tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .expect("woken by close")
            .expect("join");
        assert_eq!(got, None);
        assert!(!f.claim_producer(), "nor produces for it");
        assert_eq!(f.push(3), 0);
        assert_eq!(f.next_seq(), 2);
    }

    #[tokio::test]
    async fn drained_waits_for_in_flight_items() {
        let f = fanout(2);
        let m = f.join("m").expect("open");
        f.push(1);
        let wait = Duration::from_millis(20);
        assert!(tokio::time::timeout(wait, f.drained()).await.is_err());
        assert_eq!(m.recv_in_flight().await, Some((0, 1)));
        assert!(tokio::time::timeout(wait, f.drained()).await.is_err());
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.drained().await }
        });
        tokio::time::sleep(wait).await;
        m.done();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by done")
            .expect("join");
        f.push(2);
        drop(m);
        tokio::time::timeout(wait, f.drained())
            .await
            .expect("a member that left holds nothing");
    }

    #[tokio::test]
    async fn members_start_at_the_next_sequence_number() {
        let f = fanout(1);
        f.push(0);
        f.push(1);
        let m = f.join("m").expect("open");
        assert_eq!(m.first_seq(), 2);
        assert!(f.claim_producer());
        assert!(!f.claim_producer(), "one producer");
        assert_eq!(f.watch().count(), 1);
        f.set_depth(3);
        for i in 2..5 {
            f.reserve(Policy::Fail).await.expect("depth 3");
            f.push(i);
        }
        assert!(f.reserve(Policy::Fail).await.is_err());
    }
}
