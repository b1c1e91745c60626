//! The binary envelope: how a frame's header travels on a wire or in shared memory.
//!
//! A message is a fixed 20-byte [`Prefix`], then `header_len` bytes of header,
//! then `payload_len` bytes of payload. All integers are little endian.
//!
//! ```text
//! prefix:  magic "FWIR" | version u16 | flags u16 (0) | header_len u32 | payload_len u64
//! header:  seq u64 | timestamp_ns u64
//!          | topic_len u16 | topic
//!          | metadata_len u32 | metadata
//!          | layout tag u8 | layout fields
//!          | hop_count u16 | (name_len u16 | name | sent_ns u64 | received_ns u64)*
//! layout:  0 raw          (no fields)
//!          1 image        width u32 | height u32 | pixel format u8
//!          2 tensor       dtype u8 | rank u8 | dim u64 * rank
//!          3 parts        count u32 | length u64 * count
//!          4 strided image   width u32 | height u32 | pixel format u8 | row_pitch u32   (v2)
//!          5 strided tensor  dtype u8 | rank u8 | dim u64 * rank | stride u64 * rank (v2)
//! ```
//!
//! Versions: a message is written as version 1 unless its layout needs
//! version 2 (the strided layouts, tags 4 and 5), so peers that speak only
//! version 1 keep working for every other frame and refuse a strided one with
//! a clear [`Error::VersionMismatch`] instead of misreading it. This decoder
//! reads both.
//!
//! Every length is checked against a hard cap *before* anything is allocated, and
//! against the bytes actually present; garbage or truncated input is an
//! [`Error::Protocol`], never a panic. The header must be consumed exactly.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{DType, Frame, Hop, Layout, PixelFormat};
use crate::{Error, Result};

/// First four bytes of every message.
pub const MAGIC: [u8; 4] = *b"FWIR";
/// Newest version of this envelope; a message with a version outside
/// [`MIN_VERSION`]`..=VERSION` is refused.
pub const VERSION: u16 = 2;
/// Oldest version this decoder reads (and the one written for every layout
/// that version 1 can describe).
pub const MIN_VERSION: u16 = 1;
/// Size of the fixed prefix.
pub const PREFIX_LEN: usize = 20;
/// Largest header accepted.
pub const MAX_HEADER: u32 = 2 << 20;
/// Longest topic, in bytes.
pub const MAX_TOPIC: usize = 1024;
/// Largest metadata, in bytes.
pub const MAX_METADATA: usize = 1 << 20;
/// Most dimensions of a tensor.
pub const MAX_DIMS: usize = 32;
/// Most parts in a [`Layout::Parts`] batch.
pub const MAX_PARTS: usize = 65_536;
/// Most hops in a trace.
pub const MAX_HOPS: usize = 64;
/// Longest hop name, in bytes.
pub const MAX_HOP_NAME: usize = 256;
/// Largest payload any backend can be configured to accept (1 TiB).
pub const MAX_PAYLOAD: u64 = 1 << 40;

const TAG_RAW: u8 = 0;
const TAG_IMAGE: u8 = 1;
const TAG_TENSOR: u8 = 2;
const TAG_PARTS: u8 = 3;
const TAG_STRIDED_IMAGE: u8 = 4;
const TAG_STRIDED_TENSOR: u8 = 5;

/// The fixed part at the start of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// Length of the header that follows.
    pub header_len: u32,
    /// Length of the payload after the header.
    pub payload_len: u64,
}

impl Prefix {
    /// Decodes and checks a prefix; `max_payload` is the receiver's limit.
    pub fn decode(buf: &[u8; PREFIX_LEN], max_payload: u64) -> Result<Prefix> {
        if buf[0..4] != MAGIC {
            return Err(Error::protocol(
                "codec",
                format!(
                    "bad magic {:02x?}: the peer does not speak framewire",
                    &buf[0..4]
                ),
            ));
        }
        let version = u16::from_le_bytes([buf[4], buf[5]]);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(Error::VersionMismatch {
                ours: VERSION,
                theirs: version,
            });
        }
        let flags = u16::from_le_bytes([buf[6], buf[7]]);
        if flags != 0 {
            return Err(Error::protocol(
                "codec",
                format!("unknown flags {flags:#06x}"),
            ));
        }
        let header_len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if header_len > MAX_HEADER {
            return Err(Error::protocol(
                "codec",
                format!("header length {header_len} exceeds the cap of {MAX_HEADER}"),
            ));
        }
        let mut p = [0u8; 8];
        p.copy_from_slice(&buf[12..20]);
        let payload_len = u64::from_le_bytes(p);
        let limit = max_payload.min(MAX_PAYLOAD);
        if payload_len > limit {
            return Err(Error::PayloadTooLarge {
                len: payload_len,
                limit,
                option: "max_payload",
            });
        }
        Ok(Prefix {
            header_len,
            payload_len,
        })
    }
}

/// Checks that a frame's header fits the caps before it is encoded.
pub fn check_header(frame: &Frame) -> Result<()> {
    let bad = |what: String| {
        Err(Error::InvalidOption {
            option: "frame".into(),
            reason: what,
        })
    };
    if frame.topic.len() > MAX_TOPIC {
        return bad(format!(
            "topic of {} bytes exceeds {MAX_TOPIC}",
            frame.topic.len()
        ));
    }
    if frame.metadata.len() > MAX_METADATA {
        return bad(format!(
            "metadata of {} bytes exceeds {MAX_METADATA}",
            frame.metadata.len()
        ));
    }
    match &frame.layout {
        Layout::Tensor { shape, .. } | Layout::StridedTensor { shape, .. }
            if shape.len() > MAX_DIMS =>
        {
            return bad(format!("tensor of {} dims exceeds {MAX_DIMS}", shape.len()));
        }
        Layout::Parts(p) if p.len() > MAX_PARTS => {
            return bad(format!("{} parts exceed {MAX_PARTS}", p.len()));
        }
        _ => {}
    }
    if frame.trace.len() > MAX_HOPS {
        return bad(format!(
            "trace of {} hops exceeds {MAX_HOPS}",
            frame.trace.len()
        ));
    }
    if let Some(h) = frame.trace.iter().find(|h| h.name.len() > MAX_HOP_NAME) {
        return bad(format!(
            "hop name `{}` exceeds {MAX_HOP_NAME} bytes",
            h.name
        ));
    }
    frame.layout.check(frame.payload.len() as u64)
}

fn header_len(frame: &Frame) -> usize {
    let layout = match &frame.layout {
        Layout::Raw => 1,
        Layout::Image { .. } => 1 + 9,
        Layout::Tensor { shape, .. } => 1 + 2 + 8 * shape.len(),
        Layout::Parts(p) => 1 + 4 + 8 * p.len(),
        Layout::StridedImage { .. } => 1 + 13,
        Layout::StridedTensor { shape, .. } => 1 + 2 + 16 * shape.len(),
    };
    let trace: usize = frame.trace.iter().map(|h| 2 + h.name.len() + 16).sum();
    16 + 2 + frame.topic.len() + 4 + frame.metadata.len() + layout + 2 + trace
}

/// Appends prefix and header for `frame` (its payload is not copied) to `out`.
///
/// The payload, `frame.payload.len()` bytes, must follow on the wire.
pub fn encode_header(frame: &Frame, out: &mut BytesMut) -> Result<()> {
    check_header(frame)?;
    let hlen = header_len(frame);
    out.reserve(PREFIX_LEN + hlen);
    out.put_slice(&MAGIC);
    out.put_u16_le(if frame.layout.needs_v2() {
        VERSION
    } else {
        MIN_VERSION
    });
    out.put_u16_le(0);
    out.put_u32_le(hlen as u32);
    out.put_u64_le(frame.payload.len() as u64);
    let start = out.len();
    out.put_u64_le(frame.seq);
    out.put_u64_le(frame.timestamp_ns);
    out.put_u16_le(frame.topic.len() as u16);
    out.put_slice(frame.topic.as_bytes());
    out.put_u32_le(frame.metadata.len() as u32);
    out.put_slice(&frame.metadata);
    match &frame.layout {
        Layout::Raw => out.put_u8(TAG_RAW),
        Layout::Image {
            width,
            height,
            format,
        } => {
            out.put_u8(TAG_IMAGE);
            out.put_u32_le(*width);
            out.put_u32_le(*height);
            out.put_u8(format.code());
        }
        Layout::Tensor { dtype, shape } => {
            out.put_u8(TAG_TENSOR);
            out.put_u8(dtype.code());
            out.put_u8(shape.len() as u8);
            for d in shape {
                out.put_u64_le(*d);
            }
        }
        Layout::StridedImage {
            width,
            height,
            format,
            row_pitch,
        } => {
            out.put_u8(TAG_STRIDED_IMAGE);
            out.put_u32_le(*width);
            out.put_u32_le(*height);
            out.put_u8(format.code());
            out.put_u32_le(*row_pitch);
        }
        Layout::StridedTensor {
            dtype,
            shape,
            strides,
        } => {
            out.put_u8(TAG_STRIDED_TENSOR);
            out.put_u8(dtype.code());
            out.put_u8(shape.len() as u8);
            for d in shape {
                out.put_u64_le(*d);
            }
            for s in strides {
                out.put_u64_le(*s);
            }
        }
        Layout::Parts(parts) => {
            out.put_u8(TAG_PARTS);
            out.put_u32_le(parts.len() as u32);
            for p in parts {
                out.put_u64_le(*p);
            }
        }
    }
    out.put_u16_le(frame.trace.len() as u16);
    for h in &frame.trace {
        out.put_u16_le(h.name.len() as u16);
        out.put_slice(h.name.as_bytes());
        out.put_u64_le(h.sent_ns);
        out.put_u64_le(h.received_ns);
    }
    debug_assert_eq!(out.len() - start, hlen);
    Ok(())
}

/// Encodes a whole message (prefix, header and a copy of the payload).
///
/// For sockets prefer [`encode_header`] and a vectored write of the payload.
pub fn encode(frame: &Frame) -> Result<Bytes> {
    let mut out = BytesMut::with_capacity(PREFIX_LEN + header_len(frame) + frame.payload.len());
    encode_header(frame, &mut out)?;
    out.put_slice(&frame.payload);
    Ok(out.freeze())
}

/// A bounds-checked little-endian reader: every short read is an
/// [`Error::Protocol`] naming what was being read, never a panic.
///
/// The envelope decoder uses it; backends use it for their own small wire
/// messages (descriptors, control messages).
///
/// ```
/// use transport_core::codec::Reader;
/// let mut r = Reader::new(&[7, 1, 0]);
/// assert_eq!(r.u8("kind").unwrap(), 7);
/// assert_eq!(r.u16("count").unwrap(), 1);
/// assert!(r.u32("length").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::protocol(
                "codec",
                format!(
                    "truncated reading {what}: need {n} bytes, {} left",
                    self.buf.len()
                ),
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    /// One byte.
    pub fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    /// A little-endian `u16`.
    pub fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// A little-endian `u32`.
    pub fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A little-endian `u64`.
    pub fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// Fails if anything is left: a message must be consumed exactly.
    pub fn finish(&self, what: &str) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::protocol(
                "codec",
                format!("{what}: {} unexpected trailing bytes", self.buf.len()),
            ))
        }
    }
    /// A count, checked against `cap` and against the bytes left (each item
    /// taking at least `min_item` bytes) before anything is allocated for it.
    fn count(&mut self, n: usize, cap: usize, min_item: usize, what: &str) -> Result<usize> {
        if n > cap {
            return Err(Error::protocol(
                "codec",
                format!("{what} count {n} exceeds the cap of {cap}"),
            ));
        }
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(Error::protocol(
                "codec",
                format!("{what} count {n} needs more bytes than the header holds"),
            ));
        }
        Ok(n)
    }
    fn string(&mut self, n: usize, cap: usize, what: &str) -> Result<String> {
        let n = self.count(n, cap, 1, what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::protocol("codec", format!("{what} is not UTF-8")))
    }
}

/// Decodes a header (the `header_len` bytes after the prefix) into a frame with
/// an empty payload, and checks its layout against `payload_len`.
pub fn decode_header(buf: &[u8], payload_len: u64) -> Result<Frame> {
    let mut r = Reader::new(buf);
    let seq = r.u64("seq")?;
    let timestamp_ns = r.u64("timestamp")?;
    let n = usize::from(r.u16("topic length")?);
    let topic = r.string(n, MAX_TOPIC, "topic")?;
    let n = r.u32("metadata length")? as usize;
    let n = r.count(n, MAX_METADATA, 1, "metadata")?;
    let metadata = Bytes::copy_from_slice(r.take(n, "metadata")?);
    let layout = match r.u8("layout tag")? {
        TAG_RAW => Layout::Raw,
        TAG_IMAGE => {
            let width = r.u32("image width")?;
            let height = r.u32("image height")?;
            let code = r.u8("pixel format")?;
            let format = PixelFormat::from_code(code)
                .ok_or_else(|| Error::protocol("codec", format!("unknown pixel format {code}")))?;
            Layout::Image {
                width,
                height,
                format,
            }
        }
        TAG_STRIDED_IMAGE => {
            let width = r.u32("image width")?;
            let height = r.u32("image height")?;
            let code = r.u8("pixel format")?;
            let format = PixelFormat::from_code(code)
                .ok_or_else(|| Error::protocol("codec", format!("unknown pixel format {code}")))?;
            let row_pitch = r.u32("row pitch")?;
            Layout::StridedImage {
                width,
                height,
                format,
                row_pitch,
            }
        }
        TAG_STRIDED_TENSOR => {
            let code = r.u8("dtype")?;
            let dtype = DType::from_code(code)
                .ok_or_else(|| Error::protocol("codec", format!("unknown dtype {code}")))?;
            let n = usize::from(r.u8("tensor rank")?);
            let n = r.count(n, MAX_DIMS, 16, "tensor dims")?;
            let mut shape = Vec::with_capacity(n);
            for _ in 0..n {
                shape.push(r.u64("tensor dim")?);
            }
            let mut strides = Vec::with_capacity(n);
            for _ in 0..n {
                strides.push(r.u64("tensor stride")?);
            }
            Layout::StridedTensor {
                dtype,
                shape,
                strides,
            }
        }
        TAG_TENSOR => {
            let code = r.u8("dtype")?;
            let dtype = DType::from_code(code)
                .ok_or_else(|| Error::protocol("codec", format!("unknown dtype {code}")))?;
            let n = usize::from(r.u8("tensor rank")?);
            let n = r.count(n, MAX_DIMS, 8, "tensor dims")?;
            let mut shape = Vec::with_capacity(n);
            for _ in 0..n {
                shape.push(r.u64("tensor dim")?);
            }
            Layout::Tensor { dtype, shape }
        }
        TAG_PARTS => {
            let n = r.u32("part count")? as usize;
            let n = r.count(n, MAX_PARTS, 8, "parts")?;
            let mut parts = Vec::with_capacity(n);
            for _ in 0..n {
                parts.push(r.u64("part length")?);
            }
            Layout::Parts(parts)
        }
        tag => {
            return Err(Error::protocol(
                "codec",
                format!("unknown layout tag {tag}"),
            ));
        }
    };
    let n = usize::from(r.u16("hop count")?);
    let n = r.count(n, MAX_HOPS, 18, "hops")?;
    let mut trace = Vec::with_capacity(n);
    for _ in 0..n {
        let len = usize::from(r.u16("hop name length")?);
        let name = r.string(len, MAX_HOP_NAME, "hop name")?;
        let sent_ns = r.u64("hop sent")?;
        let received_ns = r.u64("hop received")?;
        trace.push(Hop {
            name,
            sent_ns,
            received_ns,
        });
    }
    r.finish("header")?;
    layout
        .check(payload_len)
        .map_err(|e| Error::protocol("codec", e.to_string()).with_source(e))?;
    Ok(Frame {
        topic,
        seq,
        timestamp_ns,
        metadata,
        layout,
        trace,
        payload: Bytes::new(),
    })
}

/// Decodes one whole message from `buf`, which must hold exactly one message.
///
/// The payload is a zero-copy slice of `buf`.
pub fn decode(buf: &Bytes, max_payload: u64) -> Result<Frame> {
    let prefix: &[u8; PREFIX_LEN] = buf
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| {
            Error::protocol(
                "codec",
                format!("message of {} bytes is shorter than the prefix", buf.len()),
            )
        })?;
    let p = Prefix::decode(prefix, max_payload)?;
    let hend = PREFIX_LEN + p.header_len as usize;
    let total = (hend as u64).saturating_add(p.payload_len);
    if total != buf.len() as u64 {
        return Err(Error::protocol(
            "codec",
            format!(
                "message is {} bytes but its prefix announces {total}",
                buf.len()
            ),
        ));
    }
    let mut frame = decode_header(&buf[PREFIX_LEN..hend], p.payload_len)?;
    frame.payload = buf.slice(hend..);
    Ok(frame)
}

/// Bytes of the head a backend's handshake message (its "hello") starts
/// with: a 4-byte magic, the protocol version (u16), two bytes of zero.
pub const HELLO_HEAD_LEN: usize = 8;

/// Writes a hello head (`magic`, then `version`) into the first
/// [`HELLO_HEAD_LEN`] bytes of `out`, which must be at least that long.
pub fn put_hello_head(out: &mut [u8], magic: [u8; 4], version: u16) {
    out[..4].copy_from_slice(&magic);
    out[4..6].copy_from_slice(&version.to_le_bytes());
    out[6..HELLO_HEAD_LEN].fill(0);
}

/// Checks the head of a peer's hello: a buffer shorter than
/// [`HELLO_HEAD_LEN`] or with another magic gives `foreign(b)` (the
/// backend's words on what the peer may be instead), another version an
/// [`Error::VersionMismatch`].
pub fn check_hello_head(
    b: &[u8],
    magic: [u8; 4],
    version: u16,
    foreign: impl FnOnce(&[u8]) -> Error,
) -> Result<()> {
    if b.len() < HELLO_HEAD_LEN || b[..4] != magic {
        return Err(foreign(b));
    }
    let theirs = u16::from_le_bytes([b[4], b[5]]);
    if theirs != version {
        return Err(Error::VersionMismatch {
            ours: version,
            theirs,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        Frame {
            topic: "cam/0".into(),
            seq: 7,
            timestamp_ns: 123,
            metadata: Bytes::from_static(b"meta"),
            layout: Layout::Tensor {
                dtype: DType::U16,
                shape: vec![2, 3],
            },
            trace: vec![Hop {
                name: "src".into(),
                sent_ns: 1,
                received_ns: 2,
            }],
            payload: Bytes::from(vec![9u8; 12]),
        }
    }

    #[test]
    fn round_trip() {
        let f = sample();
        let enc = encode(&f).unwrap();
        assert_eq!(decode(&enc, u64::MAX).unwrap(), f);
        let parts = Frame::new(vec![1u8; 6]).with_layout(Layout::Parts(vec![1, 2, 3]));
        assert_eq!(decode(&encode(&parts).unwrap(), 1 << 20).unwrap(), parts);
    }

    #[test]
    fn strided_layouts_travel_as_version_2_and_the_rest_as_version_1() {
        let img = Frame::new(vec![0u8; 32]).with_layout(Layout::StridedImage {
            width: 3,
            height: 2,
            format: PixelFormat::Rgb8,
            row_pitch: 16,
        });
        let enc = encode(&img).unwrap();
        assert_eq!(u16::from_le_bytes([enc[4], enc[5]]), 2);
        assert_eq!(decode(&enc, 1 << 20).unwrap(), img);
        let t = Frame::new(vec![0u8; 24]).with_layout(Layout::StridedTensor {
            dtype: DType::F32,
            shape: vec![2, 3],
            strides: vec![4, 8],
        });
        let enc = encode(&t).unwrap();
        assert_eq!(u16::from_le_bytes([enc[4], enc[5]]), 2);
        assert_eq!(decode(&enc, 1 << 20).unwrap(), t);
        for n in 0..enc.len() {
            assert!(decode(&enc.slice(..n), u64::MAX).is_err());
        }
        let plain = encode(&sample()).unwrap();
        assert_eq!(u16::from_le_bytes([plain[4], plain[5]]), 1);
    }

    #[test]
    fn a_version_1_only_peer_refuses_version_2_clearly() {
        // What a version-1 decoder does with a v2 message: its check was
        // `version != 1`, which this reproduces on the prefix.
        let t = Frame::new(vec![0u8; 24]).with_layout(Layout::StridedTensor {
            dtype: DType::F32,
            shape: vec![2, 3],
            strides: vec![4, 8],
        });
        let enc = encode(&t).unwrap();
        let version = u16::from_le_bytes([enc[4], enc[5]]);
        let e = Error::VersionMismatch {
            ours: 1,
            theirs: version,
        };
        assert!(version != 1 && e.to_string().contains("speaks 2"), "{e}");
        // And versions beyond ours are refused here the same way.
        let mut b = enc.to_vec();
        b[4..6].copy_from_slice(&3u16.to_le_bytes());
        assert!(matches!(
            decode(&Bytes::from(b), u64::MAX),
            Err(Error::VersionMismatch { theirs: 3, .. })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let enc = encode(&sample()).unwrap();
        for n in 0..enc.len() {
            assert!(
                decode(&enc.slice(..n), u64::MAX).is_err(),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn every_single_byte_corruption_is_handled() {
        let enc = encode(&sample()).unwrap();
        for i in 0..enc.len() {
            for v in [0u8, 0xff, 0x80] {
                let mut b = enc.to_vec();
                b[i] = v;
                let _ = decode(&Bytes::from(b), u64::MAX); // must not panic
            }
        }
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocation() {
        let mut p = [0u8; PREFIX_LEN];
        p[..4].copy_from_slice(&MAGIC);
        p[4..6].copy_from_slice(&VERSION.to_le_bytes());
        p[12..20].copy_from_slice(&(1u64 << 63).to_le_bytes());
        assert!(matches!(
            Prefix::decode(&p, u64::MAX),
            Err(Error::PayloadTooLarge { .. })
        ));
        p[12..20].copy_from_slice(&0u64.to_le_bytes());
        p[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Prefix::decode(&p, u64::MAX),
            Err(Error::Protocol { .. })
        ));
        p[4] = 9;
        assert!(matches!(
            Prefix::decode(&p, u64::MAX),
            Err(Error::VersionMismatch { theirs: 9, .. })
        ));
        // A header claiming 65536 parts but holding none.
        let mut h = Vec::new();
        h.extend_from_slice(&[0u8; 16]);
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.push(TAG_PARTS);
        h.extend_from_slice(&(MAX_PARTS as u32).to_le_bytes());
        assert!(matches!(decode_header(&h, 0), Err(Error::Protocol { .. })));
    }

    #[test]
    fn layout_must_match_payload() {
        let mut f = sample();
        f.payload = Bytes::from(vec![0u8; 11]);
        assert!(encode(&f).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic xorshift so the test is repeatable.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let len = (s % 96) as usize;
            let mut b: Vec<u8> = (0..len).map(|i| (s >> (i % 8 * 8)) as u8).collect();
            if len >= 6 && s & 1 == 0 {
                b[..4].copy_from_slice(&MAGIC);
                b[4..6].copy_from_slice(&VERSION.to_le_bytes());
            }
            let _ = decode(&Bytes::from(b), 1 << 20);
        }
    }

    #[test]
    fn hello_heads() {
        let mut b = [0xffu8; 12];
        put_hello_head(&mut b, *b"TEST", 3);
        assert_eq!(&b[..8], b"TEST\x03\0\0\0");
        assert_eq!(b[8], 0xff, "only the head is written");
        let foreign = |b: &[u8]| Error::protocol("test", format!("{} bytes", b.len()));
        check_hello_head(&b, *b"TEST", 3, foreign).expect("our own head");
        let e = check_hello_head(&b, *b"TEST", 4, foreign).unwrap_err();
        assert!(
            matches!(e, Error::VersionMismatch { ours: 4, theirs: 3 }),
            "{e}"
        );
        let e = check_hello_head(&b, *b"OTHR", 3, foreign).unwrap_err();
        assert!(e.to_string().contains("12 bytes"), "{e}");
        let e = check_hello_head(&b[..7], *b"TEST", 3, foreign).unwrap_err();
        assert!(e.to_string().contains("7 bytes"), "{e}");
    }
}
