//! Upstream messages (framewire subscriber -> publisher): STATUS, RELEASE
//! and SHM, each one part starting with [`UPSTREAM_MAGIC`].

use bytes::{BufMut, Bytes, BytesMut};
use transport_core::codec::Reader;
use transport_core::{Error, Result};

use super::{
    ID_LEN, MAX_RELEASES, SubscriberId, U_RELEASE, U_SHM, U_STATUS, UPSTREAM_MAGIC, VERSION,
};

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

/// Decodes an upstream message that must be a status report.
pub fn decode_upstream(msg: &[u8]) -> Result<Status> {
    match decode_upstream_any(msg)? {
        Upstream::Status(s) => Ok(s),
        _ => Err(Error::protocol(
            "zmq",
            "an upstream message other than a status report",
        )),
    }
}
