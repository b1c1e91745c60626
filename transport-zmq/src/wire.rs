//! What travels over ZeroMQ between a publisher and its subscribers.
//!
//! Public so that the protocol is documented in one place and so that tests
//! (or other implementations) can play a peer. Integers are little endian.
//!
//! # Connections and negotiation
//!
//! The publisher listens, each subscriber connects; both speak ZMTP 3.0 with
//! the NULL mechanism ([`crate::zmtp`]), the publisher as a `PUB` socket, the
//! subscriber as a `SUB` socket. A framewire peer adds one property to its
//! READY command:
//!
//! ```text
//! X-Framewire: VERSION u8 | subscriber id [16] (a subscriber) or instance u64 LE (a publisher)
//! ```
//!
//! A peer without it is a plain ZeroMQ peer (libzmq, pyzmq, ...): it gets
//! and must send only what ZeroMQ PUB/SUB defines (data messages and
//! subscriptions); every framewire extension below (WELCOME, heartbeats,
//! LAG, GOODBYE, status reports, `shm=pool`) is used only between two
//! framewire peers.
//!
//! # Subscriptions
//!
//! ZeroMQ's: a one-part message `0x01 | topic prefix` (subscribe) or `0x00 |
//! topic prefix` (cancel), or the ZMTP 3.1 SUBSCRIBE / CANCEL commands. The
//! publisher filters by prefix on its side, per connection. A framewire
//! subscriber subscribes once, to its `topic_prefix`; its cancel is its
//! goodbye. A plain subscriber may subscribe to several prefixes.
//!
//! # Downstream (publisher -> one subscriber)
//!
//! ```text
//! data:    [topic, envelope, payload]                       3 parts
//! shm:     [topic, envelope, "FWZS", slot reference]        4 parts (framewire peers only)
//! control: ["FWZC" | kind u8 | fields]                       1 part  (framewire peers only)
//! ```
//!
//! The envelope is [`transport_core::codec`]'s prefix and header (the crate
//! README shows how to decode it in Python); the payload part is the
//! sender's `Bytes`. Controls are WELCOME (next sequence number, policy,
//! queue depth, liveness settings), LAG (frames the publisher dropped for
//! this subscriber before the next data frame), HEARTBEAT and GOODBYE.
//!
//! # Upstream (framewire subscriber -> publisher)
//!
//! One single-part message, which never starts with 0x00 or 0x01 (those are
//! subscribe and cancel):
//!
//! ```text
//! "FWZU" | VERSION u8 | kind u8 | subscriber id [16] | fields
//! ```
//!
//! STATUS (frames received so far, frames the subscriber dropped so far) is
//! both the heartbeat and, under `drop-oldest`, the acknowledgement `flush`
//! waits for. The id must be the one the connection announced.
//!
//! # `shm=pool`
//!
//! A publisher whose payloads live in shared memory sends [`Control::Shm`]
//! just before each WELCOME; the subscriber answers upstream with SHM
//! (attached, with its connection number at the pool's socket, or not, with
//! why) and then receives by-reference data frames (or the usual three parts
//! when it did not attach). RELEASE (a count, then slot index u32 and
//! generation u64 each) gives slots back.

use bytes::{BufMut, Bytes, BytesMut};
use transport_core::codec::{self, PREFIX_LEN, Prefix, Reader};
use transport_core::{Error, Frame, Policy, Result};

/// Protocol version; a subscriber of another version is refused.
pub const VERSION: u8 = 2;
/// The READY property that marks a framewire peer.
pub const PROPERTY: &str = "X-Framewire";
/// Length of a subscriber id.
pub const ID_LEN: usize = 16;
/// First bytes of a control part.
pub const CONTROL_MAGIC: [u8; 4] = *b"FWZC";
/// First bytes of an upstream message.
pub const UPSTREAM_MAGIC: [u8; 4] = *b"FWZU";

const C_WELCOME: u8 = 1;
const C_LAG: u8 = 2;
const C_HEARTBEAT: u8 = 3;
const C_GOODBYE: u8 = 4;
const C_REFUSE: u8 = 5;
const C_SHM: u8 = 6;
const U_STATUS: u8 = 1;
const U_RELEASE: u8 = 2;
const U_SHM: u8 = 3;
/// Third part of a data message whose payload is in shared memory (`shm=pool`).
pub const SHM_TAG: [u8; 4] = *b"FWZS";
/// Most slot releases in one upstream RELEASE message.
pub const MAX_RELEASES: usize = 1024;

/// A subscriber's identity: its ZeroMQ identity and the head of its routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(pub [u8; ID_LEN]);

impl SubscriberId {
    /// A random id.
    pub fn random() -> SubscriberId {
        let mut id = [0u8; ID_LEN];
        id[..8].copy_from_slice(&random_u64().to_le_bytes());
        id[8..].copy_from_slice(&random_u64().to_le_bytes());
        SubscriberId(id)
    }
}

/// A random number (std's per-process random hash keys, a counter and the clock).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish()
}

impl std::fmt::Display for SubscriberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A subscriber's READY property value: version and id.
pub fn subscriber_property(id: &SubscriberId) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + ID_LEN);
    v.push(VERSION);
    v.extend_from_slice(&id.0);
    v
}

/// A publisher's READY property value: version and instance.
pub fn publisher_property(instance: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(9);
    v.push(VERSION);
    v.extend_from_slice(&instance.to_le_bytes());
    v
}

/// Parses a subscriber's READY property: (version, id); the id is only
/// meaningful when the version is ours.
pub fn parse_subscriber_property(v: &[u8]) -> Result<(u8, SubscriberId)> {
    let Some((&version, rest)) = v.split_first() else {
        return Err(Error::protocol(
            "zmq",
            format!("an empty {PROPERTY} property"),
        ));
    };
    let mut id = [0u8; ID_LEN];
    if version == VERSION {
        if rest.len() != ID_LEN {
            return Err(Error::protocol(
                "zmq",
                format!("a malformed {PROPERTY} property"),
            ));
        }
        id.copy_from_slice(rest);
    }
    Ok((version, SubscriberId(id)))
}

/// The ZeroMQ subscribe (`subscribe = true`) or cancel message for `prefix`.
pub fn subscription(prefix: &str, subscribe: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + prefix.len());
    b.put_u8(u8::from(subscribe));
    b.put_slice(prefix.as_bytes());
    b.freeze()
}

/// A subscription or cancellation seen by the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Subscribe (true) or cancel (false).
    pub subscribe: bool,
    /// The topic prefix.
    pub prefix: String,
}

/// Parses a ZeroMQ subscription message (first byte 0x01 or 0x00).
pub fn parse_subscription(msg: &[u8]) -> Result<Subscription> {
    let bad = |why: &str| Err(Error::protocol("zmq", format!("subscription: {why}")));
    let Some((&kind, rest)) = msg.split_first() else {
        return bad("empty");
    };
    if kind > 1 {
        return bad("not a subscribe or cancel message");
    }
    subscription_of(kind == 1, rest)
}

/// A subscription from its prefix bytes (a SUBSCRIBE or CANCEL command's data).
pub fn subscription_of(subscribe: bool, prefix: &[u8]) -> Result<Subscription> {
    if prefix.len() > codec::MAX_TOPIC {
        return Err(Error::protocol(
            "zmq",
            "subscription: topic prefix longer than a topic can be",
        ));
    }
    let Ok(prefix) = std::str::from_utf8(prefix) else {
        return Err(Error::protocol(
            "zmq",
            "subscription: topic prefix is not UTF-8 (framewire topics are)",
        ));
    };
    Ok(Subscription {
        subscribe,
        prefix: prefix.to_owned(),
    })
}

/// What a publisher tells a new subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// Identifies this publisher instance (random), so that a subscriber can
    /// tell a restarted publisher at the same address.
    pub instance: u64,
    /// Sequence number of the next frame the publisher will send.
    pub next_seq: u64,
    /// The publisher's backpressure policy.
    pub policy: Policy,
    /// Frames queued per subscriber; also the subscriber's read-ahead.
    pub queue: u32,
    /// The publisher's heartbeat interval, in milliseconds.
    pub heartbeat_ms: u32,
    /// How long the publisher waits for a silent subscriber, in milliseconds.
    pub peer_timeout_ms: u32,
    /// Longest single write of the publisher, in milliseconds.
    pub write_timeout_ms: u32,
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// Registered; frames follow.
    Welcome(Welcome),
    /// The publisher dropped this many frames for this subscriber (drop-oldest)
    /// just before the next data frame.
    Lag(u64),
    /// Nothing to send lately; still alive.
    Heartbeat,
    /// The publisher closed; nothing follows.
    Goodbye,
    /// Refused (another protocol version, ...).
    Refuse {
        /// The publisher's protocol version.
        version: u8,
        /// Why.
        reason: String,
    },
    /// `shm=pool`: payloads travel in shared memory; sent just before the
    /// WELCOME. The subscriber attaches the pool through the abstract Unix
    /// socket `socket` and reports the outcome upstream ([`Upstream::Shm`]).
    Shm {
        /// The pool's abstract socket name.
        socket: String,
        /// The pool's segment identity.
        segment: u64,
        /// Largest payload of a slot.
        slot_size: u64,
    },
}

fn policy_code(p: Policy) -> u8 {
    match p {
        Policy::Block => 0,
        Policy::DropOldest => 1,
        Policy::Fail => 2,
    }
}

/// Encodes a control part.
pub fn encode_control(c: &Control) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_slice(&CONTROL_MAGIC);
    match c {
        Control::Welcome(w) => {
            b.put_u8(C_WELCOME);
            b.put_u64_le(w.instance);
            b.put_u64_le(w.next_seq);
            b.put_u8(policy_code(w.policy));
            b.put_u32_le(w.queue);
            b.put_u32_le(w.heartbeat_ms);
            b.put_u32_le(w.peer_timeout_ms);
            b.put_u32_le(w.write_timeout_ms);
        }
        Control::Lag(n) => {
            b.put_u8(C_LAG);
            b.put_u64_le(*n);
        }
        Control::Heartbeat => b.put_u8(C_HEARTBEAT),
        Control::Goodbye => b.put_u8(C_GOODBYE),
        Control::Refuse { version, reason } => {
            b.put_u8(C_REFUSE);
            b.put_u8(*version);
            let r = &reason.as_bytes()[..reason.len().min(1024)];
            b.put_u16_le(r.len() as u16);
            b.put_slice(r);
        }
        Control::Shm {
            socket,
            segment,
            slot_size,
        } => {
            b.put_u8(C_SHM);
            b.put_u64_le(*segment);
            b.put_u64_le(*slot_size);
            let n = &socket.as_bytes()[..socket.len().min(255)];
            b.put_u8(n.len() as u8);
            b.put_slice(n);
        }
    }
    b.freeze()
}

/// Decodes a control part.
pub fn decode_control(part: &[u8]) -> Result<Control> {
    let mut r = Reader::new(part);
    if r.take(4, "control")? != CONTROL_MAGIC {
        return Err(Error::protocol(
            "zmq",
            "a two-part message that is not a framewire control",
        ));
    }
    let c = match r.u8("control kind")? {
        C_WELCOME => {
            let instance = r.u64("welcome")?;
            let next_seq = r.u64("welcome")?;
            let policy = match r.u8("welcome")? {
                0 => Policy::Block,
                1 => Policy::DropOldest,
                2 => Policy::Fail,
                p => {
                    return Err(Error::protocol(
                        "zmq",
                        format!("welcome: unknown policy {p}"),
                    ));
                }
            };
            let queue = r.u32("welcome")?;
            if queue == 0 || queue as usize > crate::config::MAX_QUEUE {
                return Err(Error::protocol(
                    "zmq",
                    format!("welcome: queue depth {queue}"),
                ));
            }
            Control::Welcome(Welcome {
                instance,
                next_seq,
                policy,
                queue,
                heartbeat_ms: r.u32("welcome")?,
                peer_timeout_ms: r.u32("welcome")?,
                write_timeout_ms: r.u32("welcome")?,
            })
        }
        C_LAG => Control::Lag(r.u64("lag")?),
        C_HEARTBEAT => Control::Heartbeat,
        C_GOODBYE => Control::Goodbye,
        C_REFUSE => {
            let version = r.u8("refuse")?;
            let n = usize::from(r.u16("refuse")?);
            let reason = String::from_utf8_lossy(r.take(n, "refuse")?).into_owned();
            Control::Refuse { version, reason }
        }
        C_SHM => {
            let segment = r.u64("shm")?;
            let slot_size = r.u64("shm")?;
            let n = usize::from(r.u8("shm")?);
            let socket = std::str::from_utf8(r.take(n, "shm")?)
                .map_err(|_| Error::protocol("zmq", "shm: socket name is not UTF-8"))?
                .to_owned();
            Control::Shm {
                socket,
                segment,
                slot_size,
            }
        }
        k => return Err(Error::protocol("zmq", format!("unknown control kind {k}"))),
    };
    r.finish("control")?;
    Ok(c)
}

/// A downstream message, parsed.
#[derive(Debug)]
pub enum Downstream {
    /// A frame.
    Data(Frame),
    /// A control message.
    Control(Control),
    /// A frame whose payload is in shared memory (`shm=pool`): its payload
    /// is empty here, `reference` says where it is (an encoded
    /// `transport_shm_pool::shared::SlotRef`, checked by the receiver, whose
    /// length must be `len`, the envelope's payload length).
    Shared {
        /// The frame, without its payload.
        frame: Frame,
        /// The payload length the envelope announces.
        len: u64,
        /// The encoded slot reference.
        reference: Bytes,
    },
}

/// The payload length an envelope announces (read from its prefix).
fn announced_len(env: &[u8], max_payload: u64) -> Result<u64> {
    let prefix: &[u8; PREFIX_LEN] = env
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| Error::protocol("zmq", "envelope shorter than its prefix"))?;
    Ok(Prefix::decode(prefix, max_payload)?.payload_len)
}

/// Parses the envelope part of a data message for a payload of `payload_len`
/// bytes; `max_payload` is the receiver's limit.
pub fn decode_envelope(env: &[u8], payload_len: u64, max_payload: u64) -> Result<Frame> {
    let prefix: &[u8; PREFIX_LEN] = env
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| {
            Error::protocol(
                "zmq",
                format!("envelope of {} bytes is shorter than its prefix", env.len()),
            )
        })?;
    let p = Prefix::decode(prefix, max_payload)?;
    if env.len() - PREFIX_LEN != p.header_len as usize {
        return Err(Error::protocol(
            "zmq",
            format!(
                "envelope holds {} header bytes but announces {}",
                env.len() - PREFIX_LEN,
                p.header_len
            ),
        ));
    }
    if p.payload_len != payload_len {
        return Err(Error::protocol(
            "zmq",
            format!(
                "payload part of {payload_len} bytes but the envelope announces {}",
                p.payload_len
            ),
        ));
    }
    codec::decode_header(&env[PREFIX_LEN..], payload_len)
}

/// Parses a downstream message. `framewire`: the publisher is a framewire
/// one (controls and shared-memory references are accepted only from those).
/// Nothing here panics or allocates more than the message holds; garbage is
/// an error.
pub fn parse_downstream(
    parts: Vec<Bytes>,
    framewire: bool,
    max_payload: u64,
) -> Result<Downstream> {
    match parts.len() {
        1 if framewire && parts[0].starts_with(&CONTROL_MAGIC) => {
            Ok(Downstream::Control(decode_control(&parts[0])?))
        }
        3 => {
            let payload = parts[2].clone();
            let mut frame = decode_envelope(&parts[1], payload.len() as u64, max_payload)
                .map_err(|e| foreign(e, framewire))?;
            if frame.topic.as_bytes() != &parts[0][..] {
                return Err(Error::protocol(
                    "zmq",
                    "the topic part differs from the envelope's topic",
                ));
            }
            frame.payload = payload;
            Ok(Downstream::Data(frame))
        }
        4 if framewire && parts[2][..] == SHM_TAG => {
            let len = announced_len(&parts[1], max_payload)?;
            let frame = decode_envelope(&parts[1], len, max_payload)?;
            if frame.topic.as_bytes() != &parts[0][..] {
                return Err(Error::protocol(
                    "zmq",
                    "the topic part differs from the envelope's topic",
                ));
            }
            Ok(Downstream::Shared {
                frame,
                len,
                reference: parts[3].clone(),
            })
        }
        n => Err(Error::protocol(
            "zmq",
            format!(
                "a message of {n} parts; framewire expects 3: topic, envelope (framewire header), \
             payload (see transport-zmq's README, \"Interoperating with ZeroMQ\"){}",
                if framewire {
                    "; or 1 (control) or 4 (shared-memory reference) from a framewire publisher"
                } else {
                    ""
                }
            ),
        )),
    }
}

/// A plain publisher's envelope that does not decode: say what was expected.
fn foreign(e: Error, framewire: bool) -> Error {
    match e {
        Error::Protocol { message: why, .. } if !framewire => Error::protocol(
            "zmq",
            format!(
                "{why}; the second part of a message must be a framewire envelope (see \
             transport-zmq's README, \"Interoperating with ZeroMQ\")"
            ),
        ),
        other => other,
    }
}

/// A subscriber's report to its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The subscriber.
    pub id: SubscriberId,
    /// Data frames it has received since it joined.
    pub received: u64,
    /// Frames it has dropped itself (drop-oldest) since it joined.
    pub dropped: u64,
}

/// Encodes an upstream STATUS.
pub fn encode_status(s: &Status) -> Bytes {
    let mut b = BytesMut::with_capacity(UPSTREAM_MAGIC.len() + 2 + ID_LEN + 16);
    b.put_slice(&UPSTREAM_MAGIC);
    b.put_u8(VERSION);
    b.put_u8(U_STATUS);
    b.put_slice(&s.id.0);
    b.put_u64_le(s.received);
    b.put_u64_le(s.dropped);
    b.freeze()
}

/// Any upstream message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upstream {
    /// A status report.
    Status(Status),
    /// `shm=pool`: the subscriber is done with these slots (index, generation).
    Release {
        /// The subscriber.
        id: SubscriberId,
        /// The slots released.
        slots: Vec<(u32, u64)>,
    },
    /// `shm=pool`: whether the subscriber attached the pool (then `conn` is
    /// its connection number at the pool's socket), or wants payloads inline.
    Shm {
        /// The subscriber.
        id: SubscriberId,
        /// Its connection at the pool's socket; `None`: send payloads inline.
        conn: Option<u32>,
        /// Why it did not attach (empty when it did).
        reason: String,
    },
}

fn upstream_head(b: &mut BytesMut, kind: u8, id: &SubscriberId) {
    b.put_slice(&UPSTREAM_MAGIC);
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_slice(&id.0);
}

/// Encodes an upstream RELEASE (at most [`MAX_RELEASES`] slots are encoded).
pub fn encode_release(id: &SubscriberId, slots: &[(u32, u64)]) -> Bytes {
    let slots = &slots[..slots.len().min(MAX_RELEASES)];
    let mut b = BytesMut::with_capacity(UPSTREAM_MAGIC.len() + 4 + ID_LEN + 12 * slots.len());
    upstream_head(&mut b, U_RELEASE, id);
    b.put_u16_le(slots.len() as u16);
    for (i, g) in slots {
        b.put_u32_le(*i);
        b.put_u64_le(*g);
    }
    b.freeze()
}

/// Encodes an upstream SHM report.
pub fn encode_shm(id: &SubscriberId, conn: Option<u32>, reason: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(64 + reason.len());
    upstream_head(&mut b, U_SHM, id);
    b.put_u8(u8::from(conn.is_some()));
    b.put_u32_le(conn.unwrap_or(0));
    let r = &reason.as_bytes()[..reason.len().min(1024)];
    b.put_u16_le(r.len() as u16);
    b.put_slice(r);
    b.freeze()
}

/// Decodes any upstream message.
pub fn decode_upstream_any(msg: &[u8]) -> Result<Upstream> {
    let mut r = Reader::new(msg);
    if r.take(4, "upstream")? != UPSTREAM_MAGIC {
        return Err(Error::protocol(
            "zmq",
            "an upstream message that is not framewire's",
        ));
    }
    let v = r.u8("upstream")?;
    if v != VERSION {
        return Err(Error::VersionMismatch {
            ours: u16::from(VERSION),
            theirs: u16::from(v),
        });
    }
    let kind = r.u8("upstream kind")?;
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(r.take(ID_LEN, "upstream")?);
    let id = SubscriberId(id);
    let u = match kind {
        U_STATUS => Upstream::Status(Status {
            id,
            received: r.u64("status")?,
            dropped: r.u64("status")?,
        }),
        U_RELEASE => {
            let n = usize::from(r.u16("release")?);
            if n > MAX_RELEASES {
                return Err(Error::protocol("zmq", format!("release of {n} slots")));
            }
            let mut slots = Vec::with_capacity(n);
            for _ in 0..n {
                slots.push((r.u32("release")?, r.u64("release")?));
            }
            Upstream::Release { id, slots }
        }
        U_SHM => {
            let attached = r.u8("shm")? != 0;
            let conn = r.u32("shm")?;
            let n = usize::from(r.u16("shm")?);
            let reason = String::from_utf8_lossy(r.take(n, "shm")?).into_owned();
            Upstream::Shm {
                id,
                conn: attached.then_some(conn),
                reason,
            }
        }
        k => return Err(Error::protocol("zmq", format!("unknown upstream kind {k}"))),
    };
    r.finish("upstream")?;
    Ok(u)
}

/// Decodes an upstream message.
pub fn decode_upstream(msg: &[u8]) -> Result<Status> {
    let mut r = Reader::new(msg);
    if r.take(4, "upstream")? != UPSTREAM_MAGIC {
        return Err(Error::protocol(
            "zmq",
            "an upstream message that is not framewire's",
        ));
    }
    let v = r.u8("upstream")?;
    if v != VERSION {
        return Err(Error::VersionMismatch {
            ours: u16::from(VERSION),
            theirs: u16::from(v),
        });
    }
    match r.u8("upstream kind")? {
        U_STATUS => {
            let mut id = [0u8; ID_LEN];
            id.copy_from_slice(r.take(ID_LEN, "status")?);
            let s = Status {
                id: SubscriberId(id),
                received: r.u64("status")?,
                dropped: r.u64("status")?,
            };
            r.finish("status")?;
            Ok(s)
        }
        k => Err(Error::protocol("zmq", format!("unknown upstream kind {k}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use transport_core::Layout;

    fn id() -> SubscriberId {
        SubscriberId([7; ID_LEN])
    }

    #[test]
    fn subscriptions_round_trip() {
        let s = subscription("cam/", true);
        assert_eq!(&s[..], b"\x01cam/");
        let p = parse_subscription(&s).unwrap();
        assert_eq!(
            p,
            Subscription {
                subscribe: true,
                prefix: "cam/".into()
            }
        );
        assert!(
            !parse_subscription(&subscription("", false))
                .unwrap()
                .subscribe
        );
        for bad in [&b""[..], b"\x02FWZ\x01", b"\x01\xff"] {
            assert!(parse_subscription(bad).is_err());
        }
        let (v, i) = parse_subscriber_property(&subscriber_property(&id())).unwrap();
        assert_eq!((v, i), (VERSION, id()));
        assert!(parse_subscriber_property(b"").is_err());
        assert!(parse_subscriber_property(&[VERSION, 1, 2]).is_err());
        assert_eq!(parse_subscriber_property(&[1]).unwrap().0, 1);
    }

    #[test]
    fn controls_round_trip() {
        let w = Welcome {
            instance: 9,
            next_seq: 42,
            policy: Policy::DropOldest,
            queue: 3,
            heartbeat_ms: 1000,
            peer_timeout_ms: 10_000,
            write_timeout_ms: 5000,
        };
        for c in [
            Control::Welcome(w),
            Control::Lag(5),
            Control::Heartbeat,
            Control::Goodbye,
            Control::Refuse {
                version: 1,
                reason: "no".into(),
            },
            Control::Shm {
                socket: "framewire/0/shared/ab".into(),
                segment: 7,
                slot_size: 1 << 20,
            },
        ] {
            let e = encode_control(&c);
            assert_eq!(decode_control(&e).unwrap(), c);
            for n in 0..e.len() {
                assert!(decode_control(&e[..n]).is_err(), "truncated at {n}");
            }
        }
    }

    #[test]
    fn data_round_trip_and_garbage() {
        let mut f = Frame::new(vec![1u8; 12])
            .with_topic("cam/1")
            .with_layout(Layout::Parts(vec![4, 8]));
        f.seq = 3;
        let mut env = BytesMut::new();
        codec::encode_header(&f, &mut env).unwrap();
        let env = env.freeze();
        let t = |s: &'static str| Bytes::from_static(s.as_bytes());
        for fw in [true, false] {
            let parts = vec![t("cam/1"), env.clone(), f.payload.clone()];
            match parse_downstream(parts, fw, 1 << 20).unwrap() {
                Downstream::Data(g) => assert_eq!(g, f),
                other => panic!("{other:?}"),
            }
            let wrong_topic = vec![t("cam/2"), env.clone(), f.payload.clone()];
            assert!(parse_downstream(wrong_topic, fw, 1 << 20).is_err());
            let short = vec![t("cam/1"), env.clone(), f.payload.slice(1..)];
            assert!(parse_downstream(short, fw, 1 << 20).is_err());
            assert!(parse_downstream(vec![Bytes::new()], fw, 1 << 20).is_err());
            assert!(parse_downstream(vec![t("cam/1"), t("raw payload")], fw, 1).is_err());
            let foreign = vec![t("cam/1"), t("{\"json\": 1}"), t("payload")];
            assert!(parse_downstream(foreign, fw, 1 << 20).is_err());
        }
        // Controls only from a framewire publisher.
        let c = encode_control(&Control::Heartbeat);
        assert!(parse_downstream(vec![c.clone()], true, 1).is_ok());
        assert!(parse_downstream(vec![c], false, 1).is_err());
    }

    #[test]
    fn upstream_round_trip() {
        let s = Status {
            id: id(),
            received: 10,
            dropped: 2,
        };
        let e = encode_status(&s);
        assert!(e[0] > 1, "never mistaken for a subscription");
        assert_eq!(decode_upstream(&e).unwrap(), s);
        for n in 0..e.len() {
            assert!(decode_upstream(&e[..n]).is_err());
        }
        assert_eq!(decode_upstream_any(&e).unwrap(), Upstream::Status(s));
        let rel = Upstream::Release {
            id: id(),
            slots: vec![(1, 2), (3, 4)],
        };
        let shm = Upstream::Shm {
            id: id(),
            conn: Some(5),
            reason: String::new(),
        };
        for (e, u) in [
            (encode_release(&id(), &[(1, 2), (3, 4)]), rel),
            (encode_shm(&id(), Some(5), ""), shm),
        ] {
            assert!(e[0] > 1);
            assert_eq!(decode_upstream_any(&e).unwrap(), u);
            assert!(decode_upstream(&e).is_err());
            for n in 0..e.len() {
                assert!(decode_upstream_any(&e[..n]).is_err());
            }
        }
    }
}
