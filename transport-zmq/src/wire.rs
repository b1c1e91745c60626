//! What travels over ZeroMQ between a publisher and its subscribers.
//!
//! Public so that the protocol is documented in one place and so that tests
//! (or other implementations) can play a peer. Integers are little endian.
//!
//! # Sockets and routing
//!
//! The publisher binds an XPUB socket, each subscriber connects an XSUB socket
//! whose ZeroMQ identity is its random 16-byte [`SubscriberId`]. Every message
//! to a subscriber starts with a *route* part that its ZeroMQ subscription
//! matches:
//!
//! ```text
//! route:        "FWZ" | VERSION u8 | subscriber id [16] | topic (data) or topic prefix (control)
//! subscription: 0x01 | "FWZ" | VERSION u8 | subscriber id [16] | topic prefix
//! ```
//!
//! so ZeroMQ's own prefix matching delivers a data frame only when its topic
//! starts with the subscriber's prefix. The subscription is also the
//! subscriber's hello: the publisher sees it arrive on its XPUB socket (which
//! is how `subscriber_count` counts subscriptions, not connections), registers
//! the subscriber and answers with [`Control::Welcome`].
//!
//! # Downstream (publisher -> one subscriber)
//!
//! ```text
//! data:    [route + topic, envelope, payload]           3 parts
//! control: [route + prefix, "FWZC" | kind u8 | fields]   2 parts
//! ```
//!
//! The envelope is [`transport_core::codec`]'s prefix and header (the payload
//! is the third part, handed to ZeroMQ as the sender's `Bytes`). Controls are
//! WELCOME (next sequence number, policy, queue depth, liveness settings),
//! LAG (frames the publisher dropped for this subscriber before the next
//! data frame), HEARTBEAT and GOODBYE.
//!
//! # Upstream (subscriber -> publisher)
//!
//! One single-part message, which never starts with 0x00 or 0x01 (those are
//! ZeroMQ's subscribe and cancel):
//!
//! ```text
//! "FWZU" | VERSION u8 | kind u8 | subscriber id [16] | fields
//! ```
//!
//! STATUS (frames received so far, frames the subscriber dropped so far) is
//! both the heartbeat and, under `drop-oldest`, the acknowledgement `flush`
//! waits for. Cancelling the subscription (0x00 + the same bytes) is the
//! subscriber's goodbye.
//!
//! # `shm=pool`
//!
//! A publisher whose payloads live in shared memory sends [`Control::Shm`]
//! just before each WELCOME; the subscriber answers upstream with SHM
//! (attached, with its connection number at the pool's socket, or not, with
//! why) and then receives by-reference data frames
//! `[route + topic, envelope, "FWZS", slot reference (28 bytes)]` (or the
//! usual three parts when it did not attach). RELEASE (a count, then slot
//! index u32 and generation u64 each) gives slots back.

use bytes::{BufMut, Bytes, BytesMut};
use transport_core::codec::{self, PREFIX_LEN, Prefix, Reader};
use transport_core::{Error, Frame, Policy, Result};

/// Protocol version; a subscriber of another version is refused.
pub const VERSION: u8 = 1;
/// First bytes of every route.
pub const ROUTE_MAGIC: [u8; 3] = *b"FWZ";
/// Length of a subscriber id.
pub const ID_LEN: usize = 16;
/// Length of the fixed start of a route (magic, version, id).
pub const ROUTE_HEAD_LEN: usize = ROUTE_MAGIC.len() + 1 + ID_LEN;
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
    /// A random id (a version-4 UUID from the zeromq crate).
    pub fn random() -> SubscriberId {
        let p = zeromq::util::PeerIdentity::new();
        let mut id = [0u8; ID_LEN];
        let n = p.len().min(ID_LEN);
        id[..n].copy_from_slice(&p[..n]);
        SubscriberId(id)
    }

    /// The id as a ZeroMQ peer identity.
    pub fn peer_identity(&self) -> zeromq::util::PeerIdentity {
        // 16 non-empty bytes are always a valid identity (1 to 255 bytes).
        zeromq::util::PeerIdentity::try_from(self.0.to_vec()).unwrap_or_default()
    }
}

impl std::fmt::Display for SubscriberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The route of a message to subscriber `id`: head, then `tail` (a topic or a prefix).
pub fn route(id: &SubscriberId, tail: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(ROUTE_HEAD_LEN + tail.len());
    b.put_slice(&ROUTE_MAGIC);
    b.put_u8(VERSION);
    b.put_slice(&id.0);
    b.put_slice(tail);
    b.freeze()
}

/// The ZeroMQ subscribe (`subscribe = true`) or cancel message of a subscriber.
pub fn subscription(id: &SubscriberId, prefix: &str, subscribe: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + ROUTE_HEAD_LEN + prefix.len());
    b.put_u8(u8::from(subscribe));
    b.put_slice(&route(id, prefix.as_bytes()));
    b.freeze()
}

/// A subscription or cancellation seen by the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Subscribe (true) or cancel (false).
    pub subscribe: bool,
    /// The subscriber's protocol version.
    pub version: u8,
    /// The subscriber.
    pub id: SubscriberId,
    /// Its topic prefix.
    pub prefix: String,
}

/// Parses a ZeroMQ subscription message (first byte 0x01 or 0x00).
pub fn parse_subscription(msg: &[u8]) -> Result<Subscription> {
    let bad = |why: &str| Err(Error::Protocol(format!("subscription: {why}")));
    let Some((&kind, rest)) = msg.split_first() else {
        return bad("empty");
    };
    if kind > 1 {
        return bad("not a subscribe or cancel message");
    }
    if rest.len() < ROUTE_HEAD_LEN || rest[..3] != ROUTE_MAGIC {
        return bad("not a framewire subscriber (no `FWZ` route head)");
    }
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&rest[4..ROUTE_HEAD_LEN]);
    let tail = &rest[ROUTE_HEAD_LEN..];
    if tail.len() > codec::MAX_TOPIC {
        return bad("topic prefix longer than a topic can be");
    }
    let Ok(prefix) = std::str::from_utf8(tail) else {
        return bad("topic prefix is not UTF-8");
    };
    Ok(Subscription {
        subscribe: kind == 1,
        version: rest[3],
        id: SubscriberId(id),
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
        return Err(Error::Protocol(
            "a two-part message that is not a framewire control".into(),
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
                p => return Err(Error::Protocol(format!("welcome: unknown policy {p}"))),
            };
            let queue = r.u32("welcome")?;
            if queue == 0 || queue as usize > crate::config::MAX_QUEUE {
                return Err(Error::Protocol(format!("welcome: queue depth {queue}")));
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
                .map_err(|_| Error::Protocol("shm: socket name is not UTF-8".into()))?
                .to_owned();
            Control::Shm {
                socket,
                segment,
                slot_size,
            }
        }
        k => return Err(Error::Protocol(format!("unknown control kind {k}"))),
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
        .ok_or_else(|| Error::Protocol("envelope shorter than its prefix".into()))?;
    Ok(Prefix::decode(prefix, max_payload)?.payload_len)
}

/// Checks a route part: ours, and returns its tail.
fn route_tail<'a>(part: &'a [u8], id: &SubscriberId) -> Result<&'a [u8]> {
    if part.len() < ROUTE_HEAD_LEN || part[..3] != ROUTE_MAGIC || part[4..ROUTE_HEAD_LEN] != id.0 {
        return Err(Error::Protocol(
            "message routed to someone else (or not a framewire route)".into(),
        ));
    }
    if part[3] != VERSION {
        return Err(Error::VersionMismatch {
            ours: u16::from(VERSION),
            theirs: u16::from(part[3]),
        });
    }
    Ok(&part[ROUTE_HEAD_LEN..])
}

/// Parses the envelope part of a data message for a payload of `payload_len`
/// bytes; `max_payload` is the receiver's limit.
pub fn decode_envelope(env: &[u8], payload_len: u64, max_payload: u64) -> Result<Frame> {
    let prefix: &[u8; PREFIX_LEN] = env
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| {
            Error::Protocol(format!(
                "envelope of {} bytes is shorter than its prefix",
                env.len()
            ))
        })?;
    let p = Prefix::decode(prefix, max_payload)?;
    if env.len() - PREFIX_LEN != p.header_len as usize {
        return Err(Error::Protocol(format!(
            "envelope holds {} header bytes but announces {}",
            env.len() - PREFIX_LEN,
            p.header_len
        )));
    }
    if p.payload_len != payload_len {
        return Err(Error::Protocol(format!(
            "payload part of {payload_len} bytes but the envelope announces {}",
            p.payload_len
        )));
    }
    codec::decode_header(&env[PREFIX_LEN..], payload_len)
}

/// Parses a downstream message addressed to `id`. Nothing here panics or
/// allocates more than the message holds; garbage is an error.
pub fn parse_downstream(
    parts: Vec<Bytes>,
    id: &SubscriberId,
    max_payload: u64,
) -> Result<Downstream> {
    match parts.len() {
        2 => {
            route_tail(&parts[0], id)?;
            Ok(Downstream::Control(decode_control(&parts[1])?))
        }
        3 => {
            let tail = route_tail(&parts[0], id)?;
            let payload = parts[2].clone();
            let mut frame = decode_envelope(&parts[1], payload.len() as u64, max_payload)?;
            if frame.topic.as_bytes() != tail {
                return Err(Error::Protocol(
                    "the route's topic differs from the envelope's".into(),
                ));
            }
            frame.payload = payload;
            Ok(Downstream::Data(frame))
        }
        4 if parts[2][..] == SHM_TAG => {
            let tail = route_tail(&parts[0], id)?;
            let len = announced_len(&parts[1], max_payload)?;
            let frame = decode_envelope(&parts[1], len, max_payload)?;
            if frame.topic.as_bytes() != tail {
                return Err(Error::Protocol(
                    "the route's topic differs from the envelope's".into(),
                ));
            }
            Ok(Downstream::Shared {
                frame,
                len,
                reference: parts[3].clone(),
            })
        }
        n => Err(Error::Protocol(format!(
            "a message of {n} parts; framewire sends 2 (control), 3 (route, envelope, payload) \
             or 4 (route, envelope, \"FWZS\", shared-memory reference)"
        ))),
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
        return Err(Error::Protocol(
            "an upstream message that is not framewire's".into(),
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
                return Err(Error::Protocol(format!("release of {n} slots")));
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
        k => return Err(Error::Protocol(format!("unknown upstream kind {k}"))),
    };
    r.finish("upstream")?;
    Ok(u)
}

/// Decodes an upstream message.
pub fn decode_upstream(msg: &[u8]) -> Result<Status> {
    let mut r = Reader::new(msg);
    if r.take(4, "upstream")? != UPSTREAM_MAGIC {
        return Err(Error::Protocol(
            "an upstream message that is not framewire's".into(),
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
        k => Err(Error::Protocol(format!("unknown upstream kind {k}"))),
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
        let s = subscription(&id(), "cam/", true);
        assert_eq!(s[0], 1);
        let p = parse_subscription(&s).unwrap();
        assert_eq!(
            p,
            Subscription {
                subscribe: true,
                version: VERSION,
                id: id(),
                prefix: "cam/".into()
            }
        );
        assert!(
            !parse_subscription(&subscription(&id(), "", false))
                .unwrap()
                .subscribe
        );
        for bad in [&b""[..], b"\x01", b"\x01hello", b"\x02FWZ\x01"] {
            assert!(parse_subscription(bad).is_err());
        }
        // A route's topic matches the subscription's prefix exactly as ZeroMQ matches.
        let r = route(&id(), b"cam/0");
        assert!(r.starts_with(&s[1..]));
        assert!(!route(&id(), b"imu").starts_with(&s[1..]));
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
        let parts = vec![route(&id(), b"cam/1"), env.clone(), f.payload.clone()];
        match parse_downstream(parts, &id(), 1 << 20).unwrap() {
            Downstream::Data(g) => assert_eq!(g, f),
            other => panic!("{other:?}"),
        }
        let wrong_topic = vec![route(&id(), b"cam/2"), env.clone(), f.payload.clone()];
        assert!(parse_downstream(wrong_topic, &id(), 1 << 20).is_err());
        let short = vec![route(&id(), b"cam/1"), env.clone(), f.payload.slice(1..)];
        assert!(parse_downstream(short, &id(), 1 << 20).is_err());
        let other = vec![route(&SubscriberId([1; 16]), b"cam/1"), env, f.payload];
        assert!(parse_downstream(other, &id(), 1 << 20).is_err());
        assert!(parse_downstream(vec![Bytes::new()], &id(), 1 << 20).is_err());
        assert!(
            parse_downstream(
                vec![route(&id(), b""), Bytes::from_static(b"junk")],
                &id(),
                1
            )
            .is_err()
        );
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
