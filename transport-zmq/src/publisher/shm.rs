//! `shm=pool`: payloads in slots of a [`SharedPool`], references over
//! ZeroMQ. Everything the shared-memory mode adds to the publisher is here;
//! without the `shm` feature, `no_shm.rs` stands in with the same names.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use transport_core::contract::count_sent;
use transport_core::{Error, Frame, Loan, LoanBuffer, Policy, Result};
use transport_shm_pool::shared::{AttachServer, SharedPool, SlotRef, SlotWriter};

use super::ZmqPublisher;
use super::state::{Msg, SharedPart};
use crate::config::{Config, Shm};
use crate::wire::Control;

/// The holder number of the publisher's own hold on a slot (while a frame is
/// queued or being written); subscribers get 0 to 62.
const PUB_HOLDER: u32 = 63;
/// Policy `fail`: how long `send` waits for a release already on its way
/// before it reports the pool full.
const RELEASE_GRACE: Duration = Duration::from_millis(50);

/// The slots.
pub(super) type Pool = Arc<SharedPool>;
/// Serves the pool's segment to subscribers on this host.
pub(super) type Server = AttachServer;

/// Creates the pool, its attach server and the SHM control announced before
/// each WELCOME, when the endpoint asks for `shm=pool`.
pub(super) fn open(
    cfg: &Config,
    address: &str,
) -> Result<(Option<Pool>, Option<Server>, Option<Control>)> {
    if cfg.shm != Shm::Pool {
        return Ok((None, None, None));
    }
    let pool = SharedPool::create(&format!("zmq:{address}"), cfg.slots, cfg.slot_size)?;
    let server = pool.serve()?;
    let announce = Control::Shm {
        socket: server.name().to_owned(),
        segment: pool.segment_id(),
        slot_size: pool.slot_size(),
    };
    Ok((Some(pool), Some(server), Some(announce)))
}

/// Releases `holder`'s hold on slot `index` generation `generation`; false
/// (counted by the pool) when it held none.
pub(super) fn release_slot(pool: &Pool, holder: u32, index: u32, generation: u64) -> bool {
    let r = SlotRef {
        segment: pool.segment_id(),
        index,
        generation,
        len: 0,
    };
    pool.release(&r, holder)
}

/// Releases every hold of `holder`.
pub(super) fn release_all(pool: &Pool, holder: u32) {
    pool.release_all(holder);
}

/// Slots free now.
pub(super) fn free_slots(pool: &Pool) -> usize {
    pool.free_slots()
}

/// Releases ignored as stale, duplicate or forged.
pub(super) fn stale_releases(pool: &Pool) -> u64 {
    pool.stale_releases()
}

/// The next attach connection that closed (never, without a server).
pub(super) async fn next_closed(server: Option<&mut Server>) -> u32 {
    match server {
        Some(s) => s.next_closed().await,
        None => std::future::pending().await,
    }
}

/// True while attach connection `conn` is open.
pub(super) fn is_open(server: Option<&Server>, conn: u32) -> bool {
    server.is_some_and(|s| s.is_open(conn))
}

impl ZmqPublisher {
    /// `send` once the queues have room.
    pub(super) async fn send_pooled(&mut self, pool: Pool, frame: Frame) -> Result<()> {
        self.send_shared(pool, frame, None).await
    }

    /// A loan in a slot (waiting for one by the policy).
    pub(super) async fn loan_pooled(&self, pool: Pool, len: usize) -> Result<Loan> {
        let w = self.alloc_slot(&pool, len).await?;
        Ok(Loan::new(Box::new(w)))
    }

    /// Sends a loan: one of our slots goes by reference, a heap loan is
    /// copied like any frame.
    pub(super) async fn send_loan_pooled(&mut self, pool: Pool, loan: Loan) -> Result<()> {
        let (mut frame, buf) = loan.into_parts();
        match buf.into_any().downcast::<SlotWriter>() {
            Ok(w) if Arc::ptr_eq(w.pool(), &pool) => {
                self.apply_policy(&frame.topic).await?;
                self.send_shared(pool, frame, Some(*w)).await
            }
            Ok(_) => Err(Error::ForeignLoan),
            Err(other) => match other.downcast::<BytesMut>() {
                Ok(heap) => {
                    frame.payload = heap.freeze();
                    transport_core::Publisher::send(self, frame).await
                }
                Err(_) => Err(Error::ForeignLoan),
            },
        }
    }

    /// `shm=pool`: a slot for `len` bytes, by the policy: `block` waits,
    /// `fail` waits briefly for a release on its way then fails naming
    /// `slots`, `drop-oldest` drops queued frames (their slots come back once
    /// no queue holds them) and waits only for slots that subscribers hold.
    async fn alloc_slot(&self, pool: &Pool, len: usize) -> Result<SlotWriter> {
        if let Some(w) = pool.try_alloc(len)? {
            return Ok(w);
        }
        match self.shared.policy {
            Policy::Fail => match tokio::time::timeout(RELEASE_GRACE, pool.alloc(len)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Full {
                    option: "slots",
                    detail: format!(
                        "all {} shared-memory slots are held by queued frames or by \
                             subscribers' views",
                        pool.slots()
                    ),
                }),
            },
            Policy::DropOldest => loop {
                if let Some(w) = pool.try_alloc(len)? {
                    return Ok(w);
                }
                let dropped = {
                    let mut st = self.shared.lock();
                    let longest = st
                        .subs
                        .iter_mut()
                        .filter(|s| !s.queue.is_empty())
                        .max_by_key(|s| s.queue.len());
                    match longest {
                        Some(s) => self.shared.drop_oldest(s),
                        None => false,
                    }
                };
                if dropped {
                    self.shared.changed.notify_waiters();
                    continue;
                }
                return self.await_slot(pool, len).await;
            },
            Policy::Block => self.await_slot(pool, len).await,
        }
    }

    /// Waits for a slot, or for the driver to end.
    async fn await_slot(&self, pool: &Pool, len: usize) -> Result<SlotWriter> {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(why) = &self.shared.lock().driver_gone {
                return Err(Self::gone(why));
            }
            tokio::select! {
                r = pool.alloc(len) => return r,
                _ = &mut changed => {}
            }
        }
    }

    /// `shm=pool`: the rest of `send` once the queues have room: the payload
    /// goes into a slot (unless it was loaned there), held by every matching
    /// subscriber that may receive it by reference and by the publisher
    /// while queued; subscribers that receive inline get the slot's bytes.
    async fn send_shared(
        &mut self,
        pool: Pool,
        mut frame: Frame,
        loaned: Option<SlotWriter>,
    ) -> Result<()> {
        let is_loan = loaned.is_some();
        if !is_loan {
            // Nobody to send it to: no slot, no copy (plain zmq queues nothing either).
            let mut st = self.shared.lock();
            if let Some(why) = &st.driver_gone {
                return Err(Self::gone(why));
            }
            if !st.subs.iter().any(|s| s.wants(&frame.topic)) {
                let seq = st.next_seq;
                frame.stamp_for_send(seq, self.trace_name.as_deref())?;
                st.next_seq = seq + 1;
                drop(st);
                count_sent(&self.shared.stats, frame.payload.len());
                return Ok(());
            }
        }
        let mut w = match loaned {
            Some(w) => w,
            None => self.alloc_slot(&pool, frame.payload.len()).await?,
        };
        let len = if is_loan {
            w.len()
        } else {
            frame.payload.len()
        };
        let seq = self.shared.lock().next_seq;
        if !is_loan {
            // Stamped before the copy into the slot, which is part of the trip.
            frame.stamp_for_send(seq, self.trace_name.as_deref())?;
            w.as_mut_slice()[..len].copy_from_slice(&frame.payload);
        }
        let stats = &self.shared.stats;
        let depth = self.shared.cfg.queue;
        {
            let mut st = self.shared.lock();
            if let Some(why) = &st.driver_gone {
                return Err(Self::gone(why));
            }
            let t = frame.topic.as_str();
            let mut holders = 1u64 << PUB_HOLDER;
            for s in st.subs.iter_mut().filter(|s| s.wants(t)) {
                if s.queue.len() >= depth {
                    self.shared.drop_oldest(s);
                }
                if let Some(h) = s.shm.holder() {
                    holders |= 1 << h;
                }
            }
            let r = w.publish(len, holders);
            // Takes over the publisher's hold: released when no queue holds the frame.
            let payload = pool.hold_bytes(&r, PUB_HOLDER)?;
            frame.payload = payload.clone();
            let mut envelope = BytesMut::new();
            let stamped = if is_loan {
                frame.stamp_for_send(seq, self.trace_name.as_deref())
            } else {
                Ok(())
            };
            if let Err(e) =
                stamped.and_then(|()| transport_core::codec::encode_header(&frame, &mut envelope))
            {
                // Never queued: the subscribers' holds go (the publisher's
                // goes with `payload`).
                for h in (0..PUB_HOLDER).filter(|h| holders & (1 << h) != 0) {
                    pool.release(&r, h);
                }
                return Err(e);
            }
            let topic = Bytes::from(std::mem::take(&mut frame.topic));
            let t = std::str::from_utf8(&topic).unwrap_or_default();
            let msg = Arc::new(Msg {
                topic: topic.clone(),
                envelope: envelope.freeze(),
                payload,
                shared: Some(SharedPart {
                    reference: Bytes::copy_from_slice(&r.encode()),
                    index: r.index,
                    generation: r.generation,
                }),
            });
            for s in st.subs.iter_mut().filter(|s| s.wants(t)) {
                s.queue.push(msg.clone());
                stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            st.next_seq = seq + 1;
        }
        self.shared.wake.notify_one();
        count_sent(stats, len);
        Ok(())
    }
}
