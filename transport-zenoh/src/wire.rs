//! How frames map onto Zenoh samples (documented in the crate README).
//!
//! - A frame is a PUT sample on the publisher's key expression. Its payload is
//!   the frame's payload; its attachment is the framewire envelope
//!   ([`transport_core::codec`]: 20-byte prefix, then the header) followed by
//!   an optional 9-byte trailer: publisher id `u64` LE, policy `u8`
//!   (0 block, 1 drop-oldest). Without the trailer the publisher id is 0.
//! - The end of one publisher's stream is a DELETE sample on the same key
//!   whose attachment is `FWZE` then the publisher id `u64` LE.

use bytes::{BufMut, Bytes, BytesMut};
use transport_core::codec::{self, PREFIX_LEN, Prefix};
use transport_core::{Error, Frame, Policy, Result};

/// Magic of an end-of-stream attachment.
pub const END_MAGIC: [u8; 4] = *b"FWZE";
/// Length of the trailer after the envelope header.
pub const TRAILER_LEN: usize = 9;

/// Encodes the attachment of a frame (its payload travels separately).
pub fn encode_attachment(frame: &Frame, pub_id: u64, policy: Policy) -> Result<Bytes> {
    let mut out = BytesMut::with_capacity(256);
    codec::encode_header(frame, &mut out)?;
    out.put_u64_le(pub_id);
    out.put_u8(match policy {
        Policy::DropOldest => 1,
        _ => 0,
    });
    Ok(out.freeze())
}

/// The attachment that ends publisher `pub_id`'s stream.
pub fn end_attachment(pub_id: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(12);
    out.put_slice(&END_MAGIC);
    out.put_u64_le(pub_id);
    out.freeze()
}

/// Reads an end-of-stream attachment: the publisher id.
pub fn decode_end(att: &[u8]) -> Result<u64> {
    let mut r = codec::Reader::new(att);
    if r.take(4, "end magic")? != END_MAGIC {
        return Err(Error::protocol(
            "zenoh",
            "a DELETE sample without the FWZE end-of-stream attachment",
        ));
    }
    let id = r.u64("publisher id")?;
    r.finish("end-of-stream attachment")?;
    Ok(id)
}

/// A decoded attachment: the frame header (empty payload), publisher id, policy.
#[derive(Debug)]
pub struct Header {
    /// The frame, payload empty.
    pub frame: Frame,
    /// Publisher id (0 when the trailer is absent).
    pub pub_id: u64,
    /// The publisher's policy (block when the trailer is absent).
    pub policy: Policy,
}

/// Decodes a frame's attachment and checks it against the payload length.
pub fn decode_attachment(att: &[u8], payload_len: u64, max_payload: u64) -> Result<Header> {
    let prefix: &[u8; PREFIX_LEN] = att
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| {
            Error::protocol(
                "zenoh",
                format!(
                    "attachment of {} B is shorter than the {PREFIX_LEN}-byte envelope prefix",
                    att.len()
                ),
            )
        })?;
    let p = Prefix::decode(prefix, max_payload)?;
    if p.payload_len != payload_len {
        return Err(Error::protocol(
            "zenoh",
            format!(
                "the envelope announces {} payload bytes, the sample carries {payload_len}",
                p.payload_len
            ),
        ));
    }
    let hend = PREFIX_LEN + p.header_len as usize;
    let header = att.get(PREFIX_LEN..hend).ok_or_else(|| {
        Error::protocol(
            "zenoh",
            format!(
                "attachment of {} B is shorter than its header ({} B)",
                att.len(),
                p.header_len
            ),
        )
    })?;
    let frame = codec::decode_header(header, payload_len)?;
    let trailer = &att[hend..];
    let (pub_id, policy) = match trailer.len() {
        0 => (0, Policy::Block),
        TRAILER_LEN => {
            let mut r = codec::Reader::new(trailer);
            let id = r.u64("publisher id")?;
            let policy = match r.u8("policy")? {
                0 => Policy::Block,
                1 => Policy::DropOldest,
                other => {
                    return Err(Error::protocol(
                        "zenoh",
                        format!("unknown policy code {other}"),
                    ));
                }
            };
            (id, policy)
        }
        n => {
            return Err(Error::protocol(
                "zenoh",
                format!("attachment trailer of {n} B; expected none or {TRAILER_LEN}"),
            ));
        }
    };
    Ok(Header {
        frame,
        pub_id,
        policy,
    })
}

/// A flush reply: subscriber id and the frames it lost of the asking publisher.
pub(crate) fn encode_flush_reply(sub_id: u64, lost: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&sub_id.to_le_bytes());
    v.extend_from_slice(&lost.to_le_bytes());
    v
}

pub(crate) fn decode_flush_reply(b: &[u8]) -> Result<(u64, u64)> {
    let mut r = codec::Reader::new(b);
    let s = r.u64("subscriber id")?;
    let l = r.u64("lost count")?;
    r.finish("flush reply")?;
    Ok((s, l))
}

#[cfg(test)]
mod tests {
    use super::*;
    use transport_core::Layout;

    #[test]
    fn attachment_round_trip_and_garbage() {
        let mut f = Frame::new(vec![1u8; 12])
            .with_topic("cam/0")
            .with_layout(Layout::Raw);
        f.seq = 7;
        let a = encode_attachment(&f, 42, Policy::DropOldest).unwrap();
        let h = decode_attachment(&a, 12, 1 << 20).unwrap();
        assert_eq!(
            (h.frame.seq, h.pub_id, h.policy),
            (7, 42, Policy::DropOldest)
        );
        assert_eq!(h.frame.topic, "cam/0");
        // Without the trailer (a plain Zenoh peer may omit it).
        let h = decode_attachment(&a[..a.len() - TRAILER_LEN], 12, 1 << 20).unwrap();
        assert_eq!(h.pub_id, 0);
        // Wrong payload length, truncation, junk: errors, no panic.
        assert!(decode_attachment(&a, 13, 1 << 20).is_err());
        for n in 0..a.len() {
            let _ = decode_attachment(&a[..n], 12, 1 << 20);
        }
        assert!(decode_attachment(b"garbage", 0, 10).is_err());
        assert_eq!(decode_end(&end_attachment(9)).unwrap(), 9);
        assert!(decode_end(b"FWZE").is_err());
    }
}
