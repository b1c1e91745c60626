//! The receiving half: takes frames off its queue; `Delivery` does the rest
//! (owned copies, lag reports, the topic filter, counters).

use transport_core::contract::Delivery;
use transport_core::fanout::Member;
use transport_core::{Error, Frame, RecvMode, Result, Stats, Subscriber, async_trait};

use crate::Queued;

/// Subscribes to an `inproc://NAME` channel, possibly before its publisher
/// exists; receives the frames sent after it joined, in order.
#[derive(Debug)]
pub struct InprocSubscriber {
    pub(crate) member: Member<Queued>,
    pub(crate) name: String,
    pub(crate) delivery: Delivery,
}

#[async_trait]
impl Subscriber for InprocSubscriber {
    async fn recv(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = self.delivery.take_pending() {
                return Ok(f);
            }
            // The one `.await`: `Member::recv` takes a frame only in the poll
            // that returns it, so a cancelled `recv` loses nothing.
            let Some((_, q)) = self.member.recv().await else {
                let why = format!("the publisher of inproc://{} was dropped", self.name);
                return Err(Error::disconnected("inproc", why));
            };
            if let Some(f) = self.delivery.accept(q.frame, q.private)? {
                return Ok(f);
            }
        }
    }

    fn recv_mode(&self) -> RecvMode {
        self.delivery.mode()
    }

    fn stats(&self) -> Stats {
        self.delivery.stats()
    }
}
