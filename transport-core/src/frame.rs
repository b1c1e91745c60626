//! The frame: a small header and one payload.

use bytes::Bytes;

use crate::{Error, Result};

/// Nanoseconds on `CLOCK_MONOTONIC`.
///
/// Every process on one host reads the same clock, so a timestamp taken by a
/// publisher can be subtracted from one taken by a subscriber in another process.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Pixel formats of [`Layout::Image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PixelFormat {
    /// 8-bit grey.
    Gray8,
    /// 16-bit grey, native endian.
    Gray16,
    /// 8-bit red, green, blue, interleaved.
    Rgb8,
    /// 8-bit blue, green, red, interleaved.
    Bgr8,
    /// 8-bit red, green, blue, alpha, interleaved.
    Rgba8,
    /// 8-bit blue, green, red, alpha, interleaved.
    Bgra8,
    /// Planar YUV 4:2:0 (I420): full-size Y, then quarter-size U and V.
    Yuv420p,
    /// Semi-planar YUV 4:2:0: full-size Y, then interleaved UV at quarter size.
    Nv12,
}

impl PixelFormat {
    /// Every pixel format, in the order of their wire codes.
    pub const ALL: [PixelFormat; 8] = [
        PixelFormat::Gray8,
        PixelFormat::Gray16,
        PixelFormat::Rgb8,
        PixelFormat::Bgr8,
        PixelFormat::Rgba8,
        PixelFormat::Bgra8,
        PixelFormat::Yuv420p,
        PixelFormat::Nv12,
    ];

    /// Bytes per pixel of a packed (interleaved) format; `None` for planar
    /// formats, whose rows cannot share one pitch.
    pub fn bytes_per_pixel(self) -> Option<u32> {
        match self {
            PixelFormat::Gray8 => Some(1),
            PixelFormat::Gray16 => Some(2),
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => Some(3),
            PixelFormat::Rgba8 | PixelFormat::Bgra8 => Some(4),
            PixelFormat::Yuv420p | PixelFormat::Nv12 => None,
        }
    }

    /// Channels per pixel of a packed format (`None` for planar formats).
    pub fn channels(self) -> Option<u32> {
        match self {
            PixelFormat::Gray8 | PixelFormat::Gray16 => Some(1),
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => Some(3),
            PixelFormat::Rgba8 | PixelFormat::Bgra8 => Some(4),
            PixelFormat::Yuv420p | PixelFormat::Nv12 => None,
        }
    }

    /// Bytes taken by an image of this format and size, or `None` on overflow.
    pub fn frame_len(self, width: u32, height: u32) -> Option<u64> {
        let px = u64::from(width).checked_mul(u64::from(height))?;
        match self {
            PixelFormat::Gray8 => Some(px),
            PixelFormat::Gray16 => px.checked_mul(2),
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => px.checked_mul(3),
            PixelFormat::Rgba8 | PixelFormat::Bgra8 => px.checked_mul(4),
            PixelFormat::Yuv420p | PixelFormat::Nv12 => {
                let (w, h) = (u64::from(width), u64::from(height));
                let chroma = w.div_ceil(2).checked_mul(h.div_ceil(2))?;
                px.checked_add(chroma.checked_mul(2)?)
            }
        }
    }

    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

/// Element types of [`Layout::Tensor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// `u8`
    U8,
    /// `i8`
    I8,
    /// `u16`
    U16,
    /// `i16`
    I16,
    /// `u32`
    U32,
    /// `i32`
    I32,
    /// `u64`
    U64,
    /// `i64`
    I64,
    /// IEEE half
    F16,
    /// bfloat16
    BF16,
    /// `f32`
    F32,
    /// `f64`
    F64,
    /// one byte per element, 0 or 1
    Bool,
}

impl DType {
    pub(crate) const ALL: [DType; 13] = [
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::U32,
        DType::I32,
        DType::U64,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::Bool,
    ];

    /// Size of one element in bytes.
    pub fn size(self) -> u64 {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

/// What the payload's bytes mean.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Layout {
    /// Opaque bytes.
    #[default]
    Raw,
    /// One image, rows packed with no padding.
    Image {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// How pixels are stored.
        format: PixelFormat,
    },
    /// A dense, C-contiguous tensor.
    Tensor {
        /// Element type.
        dtype: DType,
        /// Dimensions, outermost first.
        shape: Vec<u64>,
    },
    /// One image of a packed pixel format whose rows start `row_pitch` bytes
    /// apart (rows padded for alignment, or a crop of a wider image). The
    /// payload is `row_pitch * height` bytes. Travels in envelope version 2:
    /// peers that only speak version 1 refuse it with a version error.
    StridedImage {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// How pixels are stored (a packed format: see [`PixelFormat::bytes_per_pixel`]).
        format: PixelFormat,
        /// Bytes from the start of one row to the start of the next; at least
        /// `width * bytes_per_pixel`.
        row_pitch: u32,
    },
    /// A tensor with explicit strides (a transposed or sliced view). Element
    /// `[i0, i1, ...]` starts at byte `i0 * strides[0] + i1 * strides[1] + ...`;
    /// the payload is exactly the bytes the elements span. Travels in
    /// envelope version 2 (see [`Layout::StridedImage`]).
    StridedTensor {
        /// Element type.
        dtype: DType,
        /// Dimensions, outermost first.
        shape: Vec<u64>,
        /// Byte stride of each dimension (as many as `shape`).
        strides: Vec<u64>,
    },
    /// A batch of parts laid end to end (for example encoded video packets);
    /// each entry is one part's length in bytes.
    Parts(Vec<u64>),
}

impl Layout {
    /// The payload length this layout requires, or `None` for [`Layout::Raw`].
    pub fn expected_len(&self) -> Result<Option<u64>> {
        let overflow = || Error::InvalidLayout(format!("{self:?} describes more than 2^64 bytes"));
        Ok(match self {
            Layout::Raw => None,
            Layout::Image {
                width,
                height,
                format,
            } => Some(format.frame_len(*width, *height).ok_or_else(overflow)?),
            Layout::Tensor { dtype, shape } => {
                let mut n = dtype.size();
                for d in shape {
                    n = n.checked_mul(*d).ok_or_else(overflow)?;
                }
                Some(n)
            }
            Layout::StridedImage {
                width,
                height,
                format,
                row_pitch,
            } => {
                let bpp = format.bytes_per_pixel().ok_or_else(|| {
                    Error::InvalidLayout(format!(
                        "{format:?} is planar: a row pitch applies to packed formats only"
                    ))
                })?;
                let row = u64::from(*width) * u64::from(bpp);
                if u64::from(*row_pitch) < row {
                    return Err(Error::InvalidLayout(format!(
                        "row_pitch {row_pitch} is shorter than a row of {width} {format:?} pixels ({row} bytes)"
                    )));
                }
                Some(u64::from(*row_pitch) * u64::from(*height))
            }
            Layout::StridedTensor {
                dtype,
                shape,
                strides,
            } => {
                if shape.len() != strides.len() {
                    return Err(Error::InvalidLayout(format!(
                        "{} strides for a tensor of {} dims",
                        strides.len(),
                        shape.len()
                    )));
                }
                if shape.contains(&0) {
                    Some(0)
                } else {
                    let mut end = dtype.size();
                    for (d, s) in shape.iter().zip(strides) {
                        end = (d - 1)
                            .checked_mul(*s)
                            .and_then(|x| x.checked_add(end))
                            .ok_or_else(overflow)?;
                    }
                    Some(end)
                }
            }
            Layout::Parts(parts) => {
                let mut n = 0u64;
                for p in parts {
                    n = n.checked_add(*p).ok_or_else(overflow)?;
                }
                Some(n)
            }
        })
    }

    /// True for layouts that need envelope version 2 ([`Layout::StridedImage`],
    /// [`Layout::StridedTensor`]).
    pub fn needs_v2(&self) -> bool {
        matches!(
            self,
            Layout::StridedImage { .. } | Layout::StridedTensor { .. }
        )
    }

    /// Checks that this layout describes a payload of `len` bytes.
    pub fn check(&self, len: u64) -> Result<()> {
        match self.expected_len()? {
            Some(want) if want != len => Err(Error::InvalidLayout(format!(
                "{self:?} needs {want} bytes but the payload has {len}"
            ))),
            _ => Ok(()),
        }
    }
}

/// One hop of a frame's journey, for per-hop latency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The sending stage's name (the publisher's `trace_name`).
    pub name: String,
    /// When that stage sent the frame ([`monotonic_ns`]).
    pub sent_ns: u64,
    /// When the next stage received it ([`monotonic_ns`]); 0 until received.
    pub received_ns: u64,
}

/// A frame: header fields plus a payload.
///
/// `seq` and `timestamp_ns` are stamped by the publisher when it sends: the
/// n-th frame a publisher sends carries `seq == n` (from 0), so a gap seen by a
/// subscriber is a frame it lost. Received payloads are read-only; use
/// [`Frame::payload_mut_copy`] for a private, writable copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    /// Topic (at most [`crate::codec::MAX_TOPIC`] bytes of UTF-8).
    pub topic: String,
    /// Sequence number, stamped by the publisher.
    pub seq: u64,
    /// Send time on `CLOCK_MONOTONIC`, stamped by the publisher.
    pub timestamp_ns: u64,
    /// Application metadata, opaque to framewire.
    pub metadata: Bytes,
    /// What the payload's bytes mean.
    pub layout: Layout,
    /// Per-hop trace; a publisher with a `trace_name` appends a hop on send.
    pub trace: Vec<Hop>,
    /// The payload. On zero-copy backends in view mode it is a read-only view
    /// into shared memory that holds its slot until the last clone drops.
    pub payload: Bytes,
}

impl Frame {
    /// A raw frame carrying `payload`.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Frame {
            payload: payload.into(),
            ..Frame::default()
        }
    }

    /// Sets the topic.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Sets the layout.
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: impl Into<Bytes>) -> Self {
        self.metadata = metadata.into();
        self
    }

    /// A private, writable copy of the payload.
    pub fn payload_mut_copy(&self) -> bytes::BytesMut {
        bytes::BytesMut::from(&self.payload[..])
    }

    /// Time from the last hop's send to its receipt, in nanoseconds.
    pub fn last_hop_ns(&self) -> Option<u64> {
        self.trace
            .last()
            .filter(|h| h.received_ns != 0)
            .map(|h| h.received_ns.saturating_sub(h.sent_ns))
    }

    /// Called by publishers before a frame goes out: stamps sequence number and
    /// time, appends a hop when `trace_name` is set, and checks the layout.
    pub fn stamp_for_send(&mut self, seq: u64, trace_name: Option<&str>) -> Result<()> {
        self.stamp_for_send_at(seq, trace_name, monotonic_ns())
    }

    /// [`Frame::stamp_for_send`] with the send time given: for publishers that
    /// copy the payload before they can stamp it, so the copy counts as part
    /// of the hand-off.
    pub fn stamp_for_send_at(
        &mut self,
        seq: u64,
        trace_name: Option<&str>,
        now_ns: u64,
    ) -> Result<()> {
        self.layout.check(self.payload.len() as u64)?;
        self.seq = seq;
        self.timestamp_ns = now_ns;
        if let Some(name) = trace_name {
            self.trace.push(Hop {
                name: name.to_owned(),
                sent_ns: self.timestamp_ns,
                received_ns: 0,
            });
        }
        Ok(())
    }

    /// Called by subscribers when a frame arrives: records the receive time on
    /// the last hop.
    pub fn stamp_received(&mut self) {
        if let Some(h) = self.trace.last_mut()
            && h.received_ns == 0
        {
            h.received_ns = monotonic_ns();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_know_their_length() {
        let img = Layout::Image {
            width: 3840,
            height: 2160,
            format: PixelFormat::Rgb8,
        };
        assert_eq!(img.expected_len().unwrap(), Some(24_883_200));
        let yuv = Layout::Image {
            width: 3,
            height: 3,
            format: PixelFormat::Yuv420p,
        };
        assert_eq!(yuv.expected_len().unwrap(), Some(9 + 2 * 4));
        let t = Layout::Tensor {
            dtype: DType::F32,
            shape: vec![2, 3],
        };
        assert_eq!(t.expected_len().unwrap(), Some(24));
        assert!(t.check(23).is_err());
        let huge = Layout::Tensor {
            dtype: DType::F64,
            shape: vec![u64::MAX, 2],
        };
        assert!(huge.expected_len().is_err());
        assert_eq!(
            Layout::Parts(vec![1, 2, 3]).expected_len().unwrap(),
            Some(6)
        );
    }

    #[test]
    fn strided_layouts_know_their_length() {
        let img = Layout::StridedImage {
            width: 3,
            height: 2,
            format: PixelFormat::Rgb8,
            row_pitch: 16,
        };
        assert_eq!(img.expected_len().unwrap(), Some(32));
        let short = Layout::StridedImage {
            width: 3,
            height: 2,
            format: PixelFormat::Rgb8,
            row_pitch: 8,
        };
        assert!(short.expected_len().is_err());
        let planar = Layout::StridedImage {
            width: 4,
            height: 4,
            format: PixelFormat::Nv12,
            row_pitch: 8,
        };
        assert!(planar.expected_len().is_err());
        // A transposed 2x3 f32 matrix stored as 3x2.
        let t = Layout::StridedTensor {
            dtype: DType::F32,
            shape: vec![2, 3],
            strides: vec![4, 8],
        };
        assert_eq!(t.expected_len().unwrap(), Some(24));
        let bad = Layout::StridedTensor {
            dtype: DType::F32,
            shape: vec![2, 3],
            strides: vec![4],
        };
        assert!(bad.expected_len().is_err());
        let huge = Layout::StridedTensor {
            dtype: DType::U8,
            shape: vec![u64::MAX, 3],
            strides: vec![u64::MAX, 1],
        };
        assert!(huge.expected_len().is_err());
        assert!(t.needs_v2() && !Layout::Raw.needs_v2());
    }

    #[test]
    fn codes_round_trip() {
        for f in PixelFormat::ALL {
            assert_eq!(PixelFormat::from_code(f.code()), Some(f));
        }
        for d in DType::ALL {
            assert_eq!(DType::from_code(d.code()), Some(d));
        }
        assert_eq!(DType::from_code(200), None);
    }

    #[test]
    fn monotonic_advances() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}
