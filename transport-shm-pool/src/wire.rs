//! The socket protocol between a publisher and its subscribers, and the claim
//! table each subscriber shares with its publisher.
//!
//! Public so that it is documented in one place and other implementations (or
//! tests that play a hostile peer) can speak it. Every message on the Unix
//! stream socket is framed as
//!
//! ```text
//! len u32 (of kind + body) | kind u8 | body
//! ```
//!
//! with little-endian integers. The exchange:
//!
//! ```text
//! subscriber                                   publisher
//!   SUBSCRIBE(version, topic prefix)     ->
//!                                        <-    HELLO(geometry) + read-only segment fd + anchor
//!   CLAIMS(len) + claim-table memfd      ->
//!                                        <-    READY(subscriber id)   or REJECT(reason)
//!                                        ring  DESC / FWD entries (frame header inline), markers
//!                                        <-    DESC(segment, slot, generation, len, missed, frame header) (behind a marker)
//!                                        <-    SEGMENT(index, inode, len, n) + read-only fd of a forwarded segment + n anchors (behind a marker)
//!                                        <-    FWD(index, claim, generation, offset, len, missed, frame header) (behind a marker)
//!                                        <-    FORGET(index) (behind a marker)
//!                                        <-    WAKE (only to a parked subscriber)
//!   ring  releases of pool slots         ->
//!   RELEASE(claim, generation) ...       ->    (forward slots; pool slots when the ring is full)
//!   FORWARDED(claim, generation) ...     ->    (before forwarding a frame of that slot)
//!   WAKE                                 ->    (only to a publisher that waits for releases or ring room)
//!   UNSUBSCRIBE                          ->    (when the subscriber is dropped)
//! ```
//!
//! The frame header inside DESC is [`transport_core::codec`]'s prefix and
//! header for a frame whose payload is the slot's first `len` bytes.
//!
//! # Forwarding
//!
//! A publisher that is handed a payload living in another pool's segment (a
//! view its process received) sends it on without a copy: the first time a
//! subscriber needs that segment, SEGMENT passes its read-only memfd under a
//! small index (below [`MAX_FORWARD_SEGMENTS`]); each such frame is then a FWD
//! naming the index and a byte range of that segment. FORGET retires an index
//! (the publisher can no longer forward from it; views already made keep
//! their mapping). A forwarded frame occupies one of the publisher's
//! *forward slots* (as many as pool slots) until every subscriber has
//! released it; its claim word and RELEASE use the claim index
//! `slots + forward slot`, so pool slots and forward slots share one index
//! space `0 .. 2 * slots` ([`claim_entries`]).
//!
//! # Anchors
//!
//! With HELLO the publisher passes each subscriber the write end of a pipe
//! whose read end it keeps: the subscriber's *anchor*. Nobody writes to it;
//! what matters is when the read end sees end of file, which is when every
//! copy of the write end, in every process, is closed. The subscriber keeps
//! its anchor with its mapping of the pool, and a process that forwards a
//! frame passes the anchors of the frame's segment on with SEGMENT (the
//! anchors it received with that segment, plus its own anchor at the
//! publisher it received the segment from), so every process that can view
//! a slot holds the anchor of every hop the slot's reservation goes through.
//!
//! Before it forwards a frame, a subscriber's process sends FORWARDED for
//! the claim(s) the frame lies in, and only once that message is in the
//! socket does it send the FWD downstream (otherwise it copies the frame).
//! When a subscriber's socket closes, the publisher takes back what the
//! subscriber had not taken yet and what it took without a FORWARDED (its
//! views died with it), but a slot the subscriber took *and forwarded*
//! stays reserved until the subscriber's anchor reaches end of file.
//! Downstream, a subscriber drops its forwarded segments (and so its copies
//! of their anchors, once no view holds them) as soon as its publisher's
//! end of the socket closes, without waiting for `recv`. For a
//! subscriber that exits or is killed and forwarded nothing, that is at once
//! (its process held the only copy); for a forwarding process killed while
//! its own subscribers still view what it forwarded, it is when the last of
//! those processes has dropped its views of the segment (or exited). So a
//! killed forwarder never lets its publisher reuse a slot under a
//! downstream view. A publisher copies instead of forwarding a payload whose
//! segment would need more than [`MAX_ANCHORS`] anchors, or has none (a
//! mapping made by another protocol, such as `transport-zmq`'s `shm=pool`).
//!
//! # The claim table and the channel
//!
//! Subscribers map the pool read-only, so the shared state a subscriber
//! must be able to write lives in a small memfd it creates, seals against
//! shrinking and hands to the publisher (CLAIMS): its *channel* (layout in
//! `channel.rs`). One word per claim index (each pool slot, then each
//! forward slot) holds `generation << 2 | state`, with the states
//! [`OFFERED`] (the publisher published a descriptor), [`TAKEN`] (the
//! subscriber started reading it) and [`RECLAIMED`] (the publisher took it
//! back, under `drop-oldest`, before it was read). Taking and reclaiming are
//! compare-and-swap from `OFFERED`, so exactly one side wins: a slot the
//! subscriber is reading is never reused, and a descriptor the publisher took
//! back is never read.
//!
//! Since version 5, descriptors do not travel over the socket: the
//! publisher writes them into the channel's descriptor ring (frame header
//! inline, up to [`INLINE_HEADER`] bytes), and the subscriber releases pool
//! slots through its release ring. The socket carries the handshake, file
//! descriptors (SEGMENT with its fds), FORGET, descriptors whose header is
//! too long for a ring entry (each behind a marker entry in the ring, which
//! keeps one order), releases of forward slots (which must reach a
//! forwarder at once: they release upstream slots), FORWARDED, UNSUBSCRIBE,
//! and WAKE: a wake-up sent only to a side that said it waits (see the
//! channel's "Parking").

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use transport_core::{Error, Result, codec};

use crate::sys;

pub(crate) use crate::channel::{ClaimTable, Take};
pub use crate::channel::{
    DESC_ENTRY, Desc, FwdDesc, INLINE_HEADER, MAX_GENERATION, OFFERED, RECLAIMED, TAKEN,
    claim_entries, claims_len,
};

/// Version of this protocol; peers with another version are refused.
/// Version 2 added forwarding (SEGMENT, FWD, FORGET; a claim word per
/// forward slot); version 3 added anchors (a pipe's write end with HELLO,
/// the anchors of a forwarded segment with SEGMENT); version 4 added
/// FORWARDED (which taken slots a subscriber forwarded) and `max_held` in
/// HELLO's flags; version 5 moved descriptors and pool-slot releases into
/// the channel's rings (WAKE, markers; see "The claim table and the channel");
/// version 6 stamps each descriptor-ring entry with its position.
pub const VERSION: u16 = 6;
/// Most forwarded segments a publisher announces to one subscriber at once
/// (SEGMENT indices are below this).
pub const MAX_FORWARD_SEGMENTS: u32 = 16;
/// Largest message (kind + body): a DESC with the largest frame header.
pub const MAX_MESSAGE: usize = codec::MAX_HEADER as usize + codec::PREFIX_LEN + 64;
/// Most file descriptors a peer may have in flight before they are used
/// (a SEGMENT's fd and its anchors, with room to spare).
const MAX_PENDING_FDS: usize = 2 + MAX_ANCHORS as usize;
const _: () = assert!(MAX_PENDING_FDS == sys::MAX_FDS_PER_READ);
/// Most anchors a SEGMENT carries: how many forwarding hops a frame can
/// travel without a copy (a publisher copies a payload whose segment came
/// through more hops than this).
pub const MAX_ANCHORS: u32 = 8;

const K_SUBSCRIBE: u8 = 0x01;
const K_CLAIMS: u8 = 0x02;
const K_RELEASE: u8 = 0x03;
const K_UNSUBSCRIBE: u8 = 0x04;
const K_FORWARDED: u8 = 0x05;
const K_WAKE: u8 = 0x06;
const K_HELLO: u8 = 0x81;
const K_READY: u8 = 0x82;
const K_REJECT: u8 = 0x83;
const K_DESC: u8 = 0x84;
const K_SEGMENT: u8 = 0x85;
const K_FWD: u8 = 0x86;
const K_FORGET: u8 = 0x87;
const K_RESUME: u8 = 0x88;

/// [`Hello::flags`] bit: the publisher runs `drop-oldest` and may reclaim
/// descriptors that were not read yet, so a stale descriptor is a drop, not
/// a forgery.
pub const HELLO_RECLAIMS: u32 = 1;
/// [`Hello::flags`] bits 16 to 31: the publisher's `max_held`, the most
/// slots (and the most forward slots) the subscriber may hold as views at
/// once; past it the subscriber releases a frame as soon as it reads its
/// descriptor and reports it lost (`Error::Lagged`). 0: no limit.
pub const HELLO_MAX_HELD_SHIFT: u32 = 16;

/// The `max_held` a HELLO's flags announce (`None`: no limit).
pub fn hello_max_held(flags: u32) -> Option<usize> {
    match flags >> HELLO_MAX_HELD_SHIFT {
        0 => None,
        n => Some(n as usize),
    }
}

/// The pool's shape, sent by the publisher with the read-only segment fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version.
    pub version: u16,
    /// Flags, see [`HELLO_RECLAIMS`].
    pub flags: u32,
    /// The segment's identity (its memfd inode number).
    pub segment: u64,
    /// Number of slots.
    pub slots: u32,
    /// Largest payload of a slot.
    pub slot_size: u64,
    /// Distance between slots (page aligned, `>= slot_size`).
    pub stride: u64,
    /// Offset of slot 0 in the segment.
    pub data_offset: u64,
    /// Length of the segment.
    pub segment_len: u64,
    /// Bytes the subscriber's claim table must hold.
    pub claims_len: u64,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Msg {
    /// Subscriber -> publisher: the first message.
    Subscribe {
        /// The subscriber's protocol version.
        version: u16,
        /// Deliver only frames whose topic starts with this.
        prefix: String,
    },
    /// Publisher -> subscriber, with the read-only segment fd attached.
    Hello(Hello),
    /// Subscriber -> publisher, with the claim-table memfd attached.
    Claims {
        /// Length of the claim table.
        len: u64,
    },
    /// Publisher -> subscriber: registered; frames follow.
    Ready {
        /// The subscriber's id at this publisher.
        id: u32,
    },
    /// Publisher -> subscriber: refused, and why.
    Reject {
        /// Why.
        reason: String,
    },
    /// Publisher -> subscriber: a frame.
    Desc {
        /// Where the payload is.
        desc: Desc,
        /// The frame's encoded prefix and header ([`transport_core::codec`]).
        header: Bytes,
    },
    /// Publisher -> subscriber, with the forwarded segment's read-only fd
    /// attached, then `anchors` anchors (pipe write ends).
    Segment {
        /// The index FWD descriptors will name it by.
        index: u32,
        /// Its inode number.
        inode: u64,
        /// Bytes to map.
        len: u64,
        /// Anchors attached after the segment's fd (at most [`MAX_ANCHORS`]).
        anchors: u32,
    },
    /// Publisher -> subscriber: a forwarded frame.
    Fwd {
        /// Where the payload is.
        desc: FwdDesc,
        /// The frame's encoded prefix and header ([`transport_core::codec`]).
        header: Bytes,
    },
    /// Publisher -> subscriber: no FWD will name this segment index again
    /// (until a new SEGMENT reuses it).
    Forget {
        /// The segment index.
        index: u32,
    },
    /// Subscriber -> publisher: done with a slot.
    Release {
        /// The claim index (a pool slot, or `slots +` a forward slot).
        index: u32,
        /// Its generation in the descriptor.
        generation: u64,
    },
    /// Subscriber -> publisher: send no more frames; slots not yet taken go back.
    Unsubscribe,
    /// Either way, a wake-up and nothing else: publisher -> subscriber when
    /// it published descriptors while the subscriber was parked;
    /// subscriber -> publisher when it released slots or made room in the
    /// descriptor ring while the publisher waited for that (see the
    /// channel's "Parking").
    Wake,
    /// Publisher -> subscriber: the end of a spill (the descriptor ring was
    /// full, see the channel): the ring goes on after its spill marker.
    Resume,
    /// Subscriber -> publisher, before the subscriber's process forwards a
    /// frame of a slot it holds (see "Anchors"): if the subscriber dies,
    /// that slot waits for its anchor; slots it took and never forwarded do not.
    Forwarded {
        /// The claim index (a pool slot, or `slots +` a forward slot).
        index: u32,
        /// Its generation in the descriptor.
        generation: u64,
    },
}

fn bad(what: impl Into<String>) -> Error {
    Error::protocol("shm-pool", what)
}

/// Appends one framed message to `out`.
pub fn encode(msg: &Msg, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32_le(0);
    match msg {
        Msg::Subscribe { version, prefix } => {
            out.put_u8(K_SUBSCRIBE);
            out.put_u16_le(*version);
            out.put_slice(prefix.as_bytes());
        }
        Msg::Hello(h) => {
            out.put_u8(K_HELLO);
            out.put_u16_le(h.version);
            out.put_u32_le(h.flags);
            out.put_u64_le(h.segment);
            out.put_u32_le(h.slots);
            out.put_u64_le(h.slot_size);
            out.put_u64_le(h.stride);
            out.put_u64_le(h.data_offset);
            out.put_u64_le(h.segment_len);
            out.put_u64_le(h.claims_len);
        }
        Msg::Claims { len } => {
            out.put_u8(K_CLAIMS);
            out.put_u64_le(*len);
        }
        Msg::Ready { id } => {
            out.put_u8(K_READY);
            out.put_u32_le(*id);
        }
        Msg::Reject { reason } => {
            out.put_u8(K_REJECT);
            out.put_slice(reason.as_bytes());
        }
        Msg::Desc { desc, header } => {
            out.put_u8(K_DESC);
            out.put_u64_le(desc.segment);
            out.put_u32_le(desc.index);
            out.put_u64_le(desc.generation);
            out.put_u64_le(desc.len);
            out.put_u64_le(desc.missed);
            out.put_slice(header);
        }
        Msg::Segment {
            index,
            inode,
            len,
            anchors,
        } => {
            out.put_u8(K_SEGMENT);
            out.put_u32_le(*index);
            out.put_u64_le(*inode);
            out.put_u64_le(*len);
            out.put_u32_le(*anchors);
        }
        Msg::Fwd { desc, header } => {
            out.put_u8(K_FWD);
            out.put_u32_le(desc.segment);
            out.put_u32_le(desc.index);
            out.put_u64_le(desc.generation);
            out.put_u64_le(desc.offset);
            out.put_u64_le(desc.len);
            out.put_u64_le(desc.missed);
            out.put_slice(header);
        }
        Msg::Forget { index } => {
            out.put_u8(K_FORGET);
            out.put_u32_le(*index);
        }
        Msg::Release { index, generation } => {
            out.put_u8(K_RELEASE);
            out.put_u32_le(*index);
            out.put_u64_le(*generation);
        }
        Msg::Unsubscribe => out.put_u8(K_UNSUBSCRIBE),
        Msg::Wake => out.put_u8(K_WAKE),
        Msg::Resume => out.put_u8(K_RESUME),
        Msg::Forwarded { index, generation } => {
            out.put_u8(K_FORWARDED);
            out.put_u32_le(*index);
            out.put_u64_le(*generation);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn need(body: &Bytes, n: usize, what: &str) -> Result<()> {
    if body.len() == n {
        Ok(())
    } else {
        Err(bad(format!(
            "{what} message of {} bytes, expected {n}",
            body.len()
        )))
    }
}

/// Decodes one message body (kind + body, without the length word).
pub fn decode(mut body: Bytes) -> Result<Msg> {
    if body.is_empty() {
        return Err(bad("empty message"));
    }
    let kind = body.get_u8();
    let text = |b: Bytes, what: &str| {
        String::from_utf8(b.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
    };
    Ok(match kind {
        K_SUBSCRIBE => {
            if body.len() < 2 {
                return Err(bad("SUBSCRIBE message too short"));
            }
            let version = body.get_u16_le();
            if body.len() > codec::MAX_TOPIC {
                return Err(bad("SUBSCRIBE topic prefix too long"));
            }
            Msg::Subscribe {
                version,
                prefix: text(body, "topic prefix")?,
            }
        }
        K_HELLO => {
            need(&body, 2 + 4 + 8 + 4 + 8 * 5, "HELLO")?;
            Msg::Hello(Hello {
                version: body.get_u16_le(),
                flags: body.get_u32_le(),
                segment: body.get_u64_le(),
                slots: body.get_u32_le(),
                slot_size: body.get_u64_le(),
                stride: body.get_u64_le(),
                data_offset: body.get_u64_le(),
                segment_len: body.get_u64_le(),
                claims_len: body.get_u64_le(),
            })
        }
        K_CLAIMS => {
            need(&body, 8, "CLAIMS")?;
            Msg::Claims {
                len: body.get_u64_le(),
            }
        }
        K_READY => {
            need(&body, 4, "READY")?;
            Msg::Ready {
                id: body.get_u32_le(),
            }
        }
        K_REJECT => Msg::Reject {
            reason: text(body, "REJECT reason")?,
        },
        K_DESC => {
            if body.len() < 8 + 4 + 8 * 3 {
                return Err(bad("DESC message too short"));
            }
            let desc = Desc {
                segment: body.get_u64_le(),
                index: body.get_u32_le(),
                generation: body.get_u64_le(),
                len: body.get_u64_le(),
                missed: body.get_u64_le(),
            };
            Msg::Desc { desc, header: body }
        }
        K_SEGMENT => {
            need(&body, 4 + 8 + 8 + 4, "SEGMENT")?;
            Msg::Segment {
                index: body.get_u32_le(),
                inode: body.get_u64_le(),
                len: body.get_u64_le(),
                anchors: body.get_u32_le(),
            }
        }
        K_FWD => {
            if body.len() < 4 + 4 + 8 * 4 {
                return Err(bad("FWD message too short"));
            }
            let desc = FwdDesc {
                segment: body.get_u32_le(),
                index: body.get_u32_le(),
                generation: body.get_u64_le(),
                offset: body.get_u64_le(),
                len: body.get_u64_le(),
                missed: body.get_u64_le(),
            };
            Msg::Fwd { desc, header: body }
        }
        K_FORGET => {
            need(&body, 4, "FORGET")?;
            Msg::Forget {
                index: body.get_u32_le(),
            }
        }
        K_RELEASE => {
            need(&body, 12, "RELEASE")?;
            Msg::Release {
                index: body.get_u32_le(),
                generation: body.get_u64_le(),
            }
        }
        K_UNSUBSCRIBE => {
            need(&body, 0, "UNSUBSCRIBE")?;
            Msg::Unsubscribe
        }
        K_WAKE => Msg::Wake,
        K_RESUME => Msg::Resume,
        K_FORWARDED => {
            need(&body, 12, "FORWARDED")?;
            Msg::Forwarded {
                index: body.get_u32_le(),
                generation: body.get_u64_le(),
            }
        }
        k => return Err(bad(format!("unknown message kind {k:#04x}"))),
    })
}

/// Largest message either side accepts before the handshake is complete
/// (SUBSCRIBE with the longest topic prefix is the largest handshake
/// message), and the largest a publisher ever accepts from a subscriber
/// (after the handshake a subscriber sends only RELEASE and UNSUBSCRIBE).
pub const MAX_HANDSHAKE_MESSAGE: usize = 1 + 2 + codec::MAX_TOPIC + 64;
/// Bytes read per `recvmsg` during the handshake.
const HANDSHAKE_READ: usize = 4 << 10;
/// Bytes read per `recvmsg` once the handshake is complete.
const SESSION_READ: usize = 16 << 10;

/// Bytes received but not yet parsed, and descriptors received with them.
///
/// Its memory is bounded by its message limit: an announced length above
/// the limit is a protocol error before anything is reserved for it. It
/// starts with the small handshake limit ([`MAX_HANDSHAKE_MESSAGE`]) and small
/// buffers; [`open_up`](Self::open_up) raises both once the peer is known.
pub(crate) struct RecvBuf {
    data: BytesMut,
    scratch: Box<[u8]>,
    fds: VecDeque<OwnedFd>,
    limit: usize,
}

impl RecvBuf {
    /// A buffer for a handshake: messages of at most [`MAX_HANDSHAKE_MESSAGE`]
    /// bytes, a few KiB of memory.
    pub(crate) fn new() -> RecvBuf {
        RecvBuf {
            data: BytesMut::with_capacity(HANDSHAKE_READ),
            scratch: vec![0u8; HANDSHAKE_READ].into_boxed_slice(),
            fds: VecDeque::new(),
            limit: MAX_HANDSHAKE_MESSAGE,
        }
    }

    /// After the handshake: accepts messages up to `limit` bytes (at most
    /// [`MAX_MESSAGE`]) and reads in larger batches.
    pub(crate) fn open_up(&mut self, limit: usize) {
        self.limit = limit.min(MAX_MESSAGE);
        if self.scratch.len() < SESSION_READ {
            self.scratch = vec![0u8; SESSION_READ].into_boxed_slice();
        }
    }

    /// One non-blocking read from `fd`; 0 at end of stream.
    pub(crate) fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let n = sys::recv_nb(fd, &mut self.scratch, &mut self.fds)?;
        self.data.extend_from_slice(&self.scratch[..n]);
        if self.fds.len() > MAX_PENDING_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer sent file descriptors the protocol did not ask for",
            ));
        }
        Ok(n)
    }

    /// The next whole message (kind + body), if one has arrived. A length
    /// outside `1..=limit` is an error before any memory is reserved for it.
    pub(crate) fn next_message(&mut self) -> Result<Option<Bytes>> {
        let Some(head) = self.data.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len == 0 || len > self.limit {
            return Err(bad(format!(
                "message length {len} outside 1..={} (the largest this side accepts {})",
                self.limit,
                if self.limit < MAX_MESSAGE {
                    "here"
                } else {
                    "at all"
                }
            )));
        }
        if self.data.len() < 4 + len {
            self.data.reserve(4 + len - self.data.len());
            return Ok(None);
        }
        let mut m = self.data.split_to(4 + len);
        m.advance(4);
        Ok(Some(m.freeze()))
    }

    /// Drops the WAKE messages at the front of the buffer (they carry
    /// nothing; left there, they would pile up in a subscriber that parks
    /// often and never reads a message a marker announced).
    pub(crate) fn skip_wakes(&mut self) {
        while self.data.get(..5) == Some(&[1, 0, 0, 0, K_WAKE][..]) {
            self.data.advance(5);
        }
    }

    /// The oldest file descriptor received and not yet used.
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    /// Waits for and decodes the next message (handshake only: not cancel-safe
    /// across the decode, which the handshake does not need).
    pub(crate) async fn recv(
        &mut self,
        stream: &tokio::net::UnixStream,
        what: &str,
    ) -> Result<Msg> {
        loop {
            if let Some(m) = self.next_message()? {
                return decode(m);
            }
            let n = recv_some(stream, self)
                .await
                .map_err(|e| Error::io(format!("reading {what}"), e))?;
            if n == 0 {
                return Err(Error::disconnected(
                    "shm-pool",
                    format!("the peer closed the socket before {what}"),
                ));
            }
        }
    }
}

/// Reads once (waiting until something arrives) into `rx`; 0 at end of stream.
pub(crate) async fn recv_some(
    stream: &tokio::net::UnixStream,
    rx: &mut RecvBuf,
) -> io::Result<usize> {
    loop {
        // Fast path first: the data may be there before the reactor has seen it.
        match rx.fill(stream.as_fd()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
        stream.readable().await?;
        match stream.try_io(tokio::io::Interest::READABLE, || rx.fill(stream.as_fd())) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

/// Sends one message (and a descriptor) during the handshake.
pub(crate) async fn send(
    stream: &tokio::net::UnixStream,
    msg: &Msg,
    pass: Option<BorrowedFd<'_>>,
    what: &str,
) -> Result<()> {
    send_fds(stream, msg, pass.as_slice(), what).await
}

/// Sends one message with descriptors attached to its first byte.
pub(crate) async fn send_fds(
    stream: &tokio::net::UnixStream,
    msg: &Msg,
    pass: &[BorrowedFd<'_>],
    what: &str,
) -> Result<()> {
    let mut b = BytesMut::new();
    encode(msg, &mut b);
    sys::send_all(stream, &b, pass)
        .await
        .map_err(|e| Error::io(format!("sending {what}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Msg) {
        let mut b = BytesMut::new();
        encode(&m, &mut b);
        let mut rx = RecvBuf::new();
        rx.data.extend_from_slice(&b);
        let body = rx.next_message().unwrap().unwrap();
        assert_eq!(decode(body).unwrap(), m);
        assert!(rx.next_message().unwrap().is_none());
    }

    #[test]
    fn messages_round_trip() {
        round_trip(Msg::Subscribe {
            version: VERSION,
            prefix: "cam/".into(),
        });
        round_trip(Msg::Hello(Hello {
            version: 1,
            flags: HELLO_RECLAIMS,
            segment: 7,
            slots: 3,
            slot_size: 100,
            stride: 4096,
            data_offset: 4096,
            segment_len: 4 * 4096,
            claims_len: 4096,
        }));
        round_trip(Msg::Claims { len: 4096 });
        round_trip(Msg::Ready { id: 3 });
        round_trip(Msg::Reject {
            reason: "no".into(),
        });
        round_trip(Msg::Desc {
            desc: Desc {
                segment: 1,
                index: 2,
                generation: 3,
                len: 4,
                missed: 5,
            },
            header: Bytes::from_static(b"header"),
        });
        round_trip(Msg::Segment {
            index: 3,
            inode: 77,
            len: 1 << 30,
            anchors: 2,
        });
        round_trip(Msg::Fwd {
            desc: FwdDesc {
                segment: 3,
                index: 9,
                generation: 2,
                offset: 4096,
                len: 100,
                missed: 1,
            },
            header: Bytes::from_static(b"header"),
        });
        round_trip(Msg::Forget { index: 3 });
        round_trip(Msg::Release {
            index: 1,
            generation: 9,
        });
        round_trip(Msg::Unsubscribe);
        round_trip(Msg::Wake);
        round_trip(Msg::Resume);
        round_trip(Msg::Forwarded {
            index: 5,
            generation: 2,
        });
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for body in [
            &b""[..],
            b"\x99",
            b"\x81\x01",
            b"\x03\x00",
            b"\x04\x00",
            b"\x84\x00",
            b"\x85\x00\x00\x00\x00",
            b"\x86\x00",
            b"\x87\x00",
        ] {
            assert!(matches!(
                decode(Bytes::copy_from_slice(body)),
                Err(Error::Protocol { .. })
            ));
        }
        let mut rx = RecvBuf::new();
        rx.data.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(rx.next_message().is_err());
        // During the handshake a large announced length is refused before
        // anything is reserved for it; after it, up to MAX_MESSAGE is accepted.
        let mut rx = RecvBuf::new();
        rx.data
            .extend_from_slice(&(MAX_MESSAGE as u32).to_le_bytes());
        assert!(matches!(rx.next_message(), Err(Error::Protocol { .. })));
        assert!(
            rx.data.capacity() < 64 << 10,
            "{} B reserved",
            rx.data.capacity()
        );
        let mut rx = RecvBuf::new();
        rx.data
            .extend_from_slice(&(MAX_HANDSHAKE_MESSAGE as u32).to_le_bytes());
        assert!(rx.next_message().unwrap().is_none(), "waits for the rest");
        let mut rx = RecvBuf::new();
        rx.open_up(MAX_MESSAGE);
        rx.data
            .extend_from_slice(&(MAX_MESSAGE as u32).to_le_bytes());
        assert!(rx.next_message().unwrap().is_none());
        rx.open_up(usize::MAX);
        assert_eq!(rx.limit, MAX_MESSAGE);
        let mut rx = RecvBuf::new();
        rx.data.extend_from_slice(&0u32.to_le_bytes());
        assert!(rx.next_message().is_err());
    }
}
