//! The state one `inproc://NAME` channel shares between its publisher and
//! subscribers, and the process-wide table of named channels.
//!
//! Everything here is synchronous: one `std::sync::Mutex` per channel, never
//! held across an `.await`. The async halves (publisher, subscriber) lock,
//! decide, unlock, and only then wait on a [`Notify`]. That is what makes their
//! futures cancellation-safe: a frame is either still in a queue or already
//! returned, never in flight inside a dropped future.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use tokio::sync::Notify;
use transport_core::{Error, Frame, Policy, Result};

/// Who publishes on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PubState {
    /// Subscribers came first; no publisher yet.
    Waiting,
    /// A publisher is attached.
    Live,
    /// The publisher was dropped: after their queues, subscribers are disconnected.
    Gone,
}

/// A frame waiting in one subscriber's queue.
#[derive(Debug)]
pub(crate) struct Queued {
    /// The frame, its payload shared by every subscriber's copy of the header.
    pub frame: Frame,
    /// The payload is a plain heap buffer that only this channel references, so
    /// sharing it never pins memory that someone outside the channel owns.
    pub private: bool,
}

/// One subscriber's bounded queue.
#[derive(Debug)]
struct SubQueue {
    id: u64,
    frames: VecDeque<Queued>,
    /// Woken (with a stored permit) when a frame arrives or the publisher leaves.
    ready: Arc<Notify>,
}

#[derive(Debug)]
struct Inner {
    state: PubState,
    /// Per-subscriber queue depth, set by the publisher.
    depth: usize,
    subs: Vec<SubQueue>,
    next_id: u64,
    /// The sequence number of the next frame enqueued.
    next_seq: u64,
}

/// What [`Channel::offer`] did with a frame.
#[derive(Debug)]
pub(crate) enum Offer {
    /// Enqueued for every subscriber; `dropped` older frames were discarded
    /// under drop-oldest.
    Sent {
        /// Frames dropped to make room, summed over subscribers.
        dropped: u64,
    },
    /// Under block: some queue is full; wait on [`Channel::room`] and retry.
    Wait,
}

/// What [`Channel::pop`] found.
#[derive(Debug)]
pub(crate) enum Popped {
    /// The oldest queued frame.
    Frame(Queued),
    /// Nothing queued; the publisher may still send.
    Empty,
    /// Nothing queued and the publisher is gone.
    Closed,
}

/// A subscriber's place in a channel, from [`Channel::attach_subscriber`].
#[derive(Debug)]
pub(crate) struct Attached {
    pub channel: Arc<Channel>,
    /// The id of its queue.
    pub id: u64,
    /// Woken when a frame arrives in its queue or the publisher leaves.
    pub ready: Arc<Notify>,
    /// The sequence number of the first frame it will be offered: frames
    /// dropped from its queue before it reads any still count as lag.
    pub next_seq: u64,
}

/// One named channel.
#[derive(Debug)]
pub(crate) struct Channel {
    name: String,
    inner: Mutex<Inner>,
    /// Woken (all waiters) when a queue gets room or a subscriber leaves.
    pub room: Notify,
    /// Woken (all waiters) when a subscriber joins or leaves.
    pub members: Notify,
}

/// The process-wide table of channels by name. It holds weak references: a
/// channel lives as long as its publisher or one of its subscribers does.
fn table() -> MutexGuard<'static, HashMap<String, Weak<Channel>>> {
    static TABLE: OnceLock<Mutex<HashMap<String, Weak<Channel>>>> = OnceLock::new();
    TABLE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// A live (not `Gone`) channel of that name, if any. Prunes dead entries.
fn find_open(table: &mut HashMap<String, Weak<Channel>>, name: &str) -> Option<Arc<Channel>> {
    table.retain(|_, w| w.strong_count() > 0);
    table
        .get(name)
        .and_then(Weak::upgrade)
        .filter(|ch| ch.lock().state != PubState::Gone)
}

impl Channel {
    fn new(name: &str, state: PubState, depth: usize) -> Channel {
        Channel {
            name: name.to_owned(),
            inner: Mutex::new(Inner {
                state,
                depth,
                subs: Vec::new(),
                next_id: 0,
                next_seq: 0,
            }),
            room: Notify::new(),
            members: Notify::new(),
        }
    }

    // Lock order: the table, then a channel; never the other way round.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding this lock, so poisoning cannot leave
        // the queues half-updated; recover rather than propagate a panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The channel's name (the endpoint's address).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attaches a publisher to `name`: joins subscribers already waiting there,
    /// or opens a new channel. A second live publisher is refused.
    pub fn attach_publisher(name: &str, url: &str, depth: usize) -> Result<Arc<Channel>> {
        let mut table = table();
        if let Some(ch) = find_open(&mut table, name) {
            let mut inner = ch.lock();
            match inner.state {
                PubState::Live => {
                    return Err(Error::InvalidEndpoint {
                        url: url.to_owned(),
                        reason: format!(
                            "inproc channel `{name}` already has a publisher; \
                             drop it first or pick another name"
                        ),
                    });
                }
                PubState::Waiting => {
                    inner.state = PubState::Live;
                    inner.depth = depth;
                    drop(inner);
                    return Ok(ch);
                }
                // Its publisher left since `find_open` looked: its subscribers
                // are disconnected for good, so open a fresh channel below.
                PubState::Gone => {}
            }
        }
        let ch = Arc::new(Channel::new(name, PubState::Live, depth));
        table.insert(name.to_owned(), Arc::downgrade(&ch));
        Ok(ch)
    }

    /// Adds a subscriber queue to `name`, opening a channel that waits for its
    /// publisher if there is none.
    pub fn attach_subscriber(name: &str) -> Attached {
        let mut table = table();
        let ch = match find_open(&mut table, name) {
            Some(ch) => ch,
            None => {
                // The depth is set when the publisher attaches.
                let ch = Arc::new(Channel::new(name, PubState::Waiting, 1));
                table.insert(name.to_owned(), Arc::downgrade(&ch));
                ch
            }
        };
        drop(table);
        let ready = Arc::new(Notify::new());
        let (id, next_seq) = {
            let mut inner = ch.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            inner.subs.push(SubQueue {
                id,
                frames: VecDeque::new(),
                ready: ready.clone(),
            });
            (id, inner.next_seq)
        };
        ch.members.notify_waiters();
        Attached {
            channel: ch,
            id,
            ready,
            next_seq,
        }
    }

    /// Offers a frame to every subscriber under `policy`. When it goes out,
    /// the frame is stamped with the next sequence number and the time (so the
    /// timestamp is the moment it was enqueued, after any wait for room).
    /// Under fail, a full queue is [`Error::Full`] and nothing is enqueued
    /// anywhere (and no sequence number is used).
    pub fn offer(
        &self,
        frame: &mut Frame,
        policy: Policy,
        trace_name: Option<&str>,
    ) -> Result<Offer> {
        let mut inner = self.lock();
        let depth = inner.depth;
        if let Some(full) = inner.subs.iter().find(|q| q.frames.len() >= depth) {
            match policy {
                Policy::Block => return Ok(Offer::Wait),
                Policy::Fail => {
                    return Err(Error::Full {
                        option: "queue",
                        detail: format!(
                            "subscriber #{} of inproc://{} has {depth} of {depth} frames queued",
                            full.id, self.name
                        ),
                    });
                }
                Policy::DropOldest => {}
            }
        }
        frame.stamp_for_send(inner.next_seq, trace_name)?;
        inner.next_seq += 1;
        // `is_unique` is true only for a heap buffer (from a `Vec`, a
        // `BytesMut` or a loan) that nobody else references; shared, static
        // and `Bytes::from_owner` payloads (which may hold a lease on someone
        // else's memory) are false. Checked before the clones below.
        let private = frame.payload.is_unique();
        let mut dropped = 0;
        for q in &mut inner.subs {
            while q.frames.len() >= depth {
                q.frames.pop_front();
                dropped += 1;
            }
            q.frames.push_back(Queued {
                frame: frame.clone(),
                private,
            });
            // Stores a permit if the subscriber is not waiting yet.
            q.ready.notify_one();
        }
        Ok(Offer::Sent { dropped })
    }

    /// Takes the oldest frame of subscriber `id`'s queue.
    pub fn pop(&self, id: u64) -> Popped {
        let mut inner = self.lock();
        let state = inner.state;
        let Some(q) = inner.subs.iter_mut().find(|q| q.id == id) else {
            return Popped::Closed;
        };
        match q.frames.pop_front() {
            Some(f) => {
                drop(inner);
                self.room.notify_waiters();
                Popped::Frame(f)
            }
            None if state == PubState::Gone => Popped::Closed,
            None => Popped::Empty,
        }
    }

    /// Removes subscriber `id` (its queued frames are dropped).
    pub fn detach_subscriber(&self, id: u64) {
        self.lock().subs.retain(|q| q.id != id);
        self.room.notify_waiters();
        self.members.notify_waiters();
    }

    /// Marks the publisher gone and wakes every subscriber.
    pub fn detach_publisher(&self) {
        let mut inner = self.lock();
        inner.state = PubState::Gone;
        for q in &inner.subs {
            q.ready.notify_one();
        }
        drop(inner);
        self.room.notify_waiters();
    }

    /// Subscribers attached now.
    pub fn subscriber_count(&self) -> usize {
        self.lock().subs.len()
    }

    /// Frames queued now, summed over subscribers.
    pub fn queued(&self) -> usize {
        self.lock().subs.iter().map(|q| q.frames.len()).sum()
    }
}
