//! Zero-copy [`ndarray`] views of tensor and image payloads (feature `ndarray`).
//!
//! [`Frame::array_view`] gives a read-only `ArrayViewD` over a received
//! frame's payload (on shm-pool in view mode, over the shared slot itself),
//! with the shape, element type and strides of its [`Layout`]:
//!
//! | layout | shape | element type |
//! | --- | --- | --- |
//! | `Tensor { dtype, shape }` | `shape` (C order) | `dtype` |
//! | `StridedTensor { dtype, shape, strides }` | `shape`, byte `strides` | `dtype` |
//! | `Image` / `StridedImage` of a packed format | `[height, width]` (one channel) or `[height, width, channels]` | `u8`, or `u16` for `Gray16` |
//!
//! [`Loan::array_view_mut`] gives the writable twin over a loan, from the
//! layout set on it. Element types are those of [`Element`]; half floats and
//! booleans have no safe view (read their bytes). The payload must be aligned
//! for the element type (shared-memory slots are; a heap payload sliced at an
//! odd offset may not be): a misaligned payload is an error that says so.
//!
//! ```
//! use transport_core::{DType, Frame, Layout};
//!
//! let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_ne_bytes()).collect();
//! // The 2x3 matrix stored transposed (column-major): strides in bytes.
//! let frame = Frame::new(data).with_layout(Layout::StridedTensor {
//!     dtype: DType::F32,
//!     shape: vec![2, 3],
//!     strides: vec![4, 8],
//! });
//! let a = frame.array_view::<f32>()?;
//! assert_eq!(a.shape(), &[2, 3]);
//! assert_eq!(a[[1, 2]], 6.0);
//! assert_eq!(a[[0, 1]], 3.0);
//! # Ok::<(), transport_core::Error>(())
//! ```

use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn, ShapeBuilder};

use crate::frame::{DType, Frame, Layout, PixelFormat};
use crate::transport::Loan;
use crate::{Error, Result};

/// Element types an array view can have.
pub trait Element: bytemuck::Pod {
    /// The layout's element type this Rust type reads.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {
        $(impl Element for $t { const DTYPE: DType = DType::$d; })*
    };
}
element!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32,
    u64 => U64, i64 => I64, f32 => F32, f64 => F64);

/// Shape and element strides for a layout, checked against `T`.
fn geometry<T: Element>(layout: &Layout) -> Result<(Vec<usize>, Option<Vec<usize>>)> {
    let dims = |v: &[u64]| -> Result<Vec<usize>> {
        v.iter()
            .map(|&d| {
                usize::try_from(d)
                    .map_err(|_| Error::InvalidLayout(format!("dimension {d} overflows usize")))
            })
            .collect()
    };
    let elem = T::DTYPE.size();
    let check_dtype = |dtype: DType| {
        if dtype == T::DTYPE {
            Ok(())
        } else {
            Err(Error::InvalidLayout(format!(
                "the payload holds {dtype:?} elements; asked for a view of {:?}",
                T::DTYPE
            )))
        }
    };
    let image = |width: u32, height: u32, format: PixelFormat, row_pitch: Option<u32>| {
        let (Some(bpp), Some(channels)) = (format.bytes_per_pixel(), format.channels()) else {
            return Err(Error::InvalidLayout(format!(
                "{format:?} is planar: view its planes as bytes, not as one array"
            )));
        };
        let dtype = if format == PixelFormat::Gray16 {
            DType::U16
        } else {
            DType::U8
        };
        check_dtype(dtype)?;
        let channel = u64::from(bpp / channels);
        let pitch = u64::from(row_pitch.unwrap_or(width * bpp));
        if pitch % channel != 0 {
            return Err(Error::InvalidLayout(format!(
                "row_pitch {pitch} is not a multiple of the {channel}-byte channel"
            )));
        }
        let (h, w, c) = (height as usize, width as usize, channels as usize);
        let row = (pitch / channel) as usize;
        Ok(if c == 1 {
            (vec![h, w], Some(vec![row, 1]))
        } else {
            (vec![h, w, c], Some(vec![row, c, 1]))
        })
    };
    match layout {
        Layout::Tensor { dtype, shape } => {
            check_dtype(*dtype)?;
            Ok((dims(shape)?, None))
        }
        Layout::StridedTensor {
            dtype,
            shape,
            strides,
        } => {
            check_dtype(*dtype)?;
            let mut el = Vec::with_capacity(strides.len());
            for &s in strides {
                if s % elem != 0 {
                    return Err(Error::InvalidLayout(format!(
                        "stride {s} is not a multiple of the {elem}-byte element"
                    )));
                }
                el.push(dims(&[s / elem])?[0]);
            }
            Ok((dims(shape)?, Some(el)))
        }
        Layout::Image {
            width,
            height,
            format,
        } => image(*width, *height, *format, None),
        Layout::StridedImage {
            width,
            height,
            format,
            row_pitch,
        } => image(*width, *height, *format, Some(*row_pitch)),
        other => Err(Error::InvalidLayout(format!(
            "{other:?} has no shape: set a Tensor or Image layout to view the payload as an array"
        ))),
    }
}

fn shape_error(e: ndarray::ShapeError) -> Error {
    Error::InvalidLayout(format!("the layout does not fit the payload: {e}"))
}

fn cast_error<T>(e: bytemuck::PodCastError) -> Error {
    Error::InvalidLayout(format!(
        "the payload cannot be viewed as {} ({e:?}): it must be aligned to {} bytes and a \
         whole number of elements; view a private copy (Frame::payload_mut_copy) instead",
        std::any::type_name::<T>(),
        std::mem::align_of::<T>()
    ))
}

/// The element slice a strided view may index: the bytes up to a whole
/// number of elements (a strided extent ends on an element boundary).
fn elements<T: Element>(bytes: &[u8]) -> Result<&[T]> {
    bytemuck::try_cast_slice(bytes).map_err(cast_error::<T>)
}

fn elements_mut<T: Element>(bytes: &mut [u8]) -> Result<&mut [T]> {
    bytemuck::try_cast_slice_mut(bytes).map_err(cast_error::<T>)
}

impl Frame {
    /// A read-only, zero-copy view of the payload with the layout's shape,
    /// element type and strides; see the [module docs](crate::array).
    pub fn array_view<T: Element>(&self) -> Result<ArrayViewD<'_, T>> {
        self.layout.check(self.payload.len() as u64)?;
        let (shape, strides) = geometry::<T>(&self.layout)?;
        let data = elements::<T>(&self.payload)?;
        match strides {
            None => ArrayViewD::from_shape(IxDyn(&shape), data),
            Some(s) => ArrayViewD::from_shape(IxDyn(&shape).strides(IxDyn(&s)), data),
        }
        .map_err(shape_error)
    }
}

impl Loan {
    /// A writable view of the loaned memory with the shape, element type and
    /// strides of the layout set on the loan (set `loan.layout` first).
    pub fn array_view_mut<T: Element>(&mut self) -> Result<ArrayViewMutD<'_, T>> {
        self.layout.check(self.len() as u64)?;
        let (shape, strides) = geometry::<T>(&self.layout)?;
        let data = elements_mut::<T>(&mut self[..])?;
        match strides {
            None => ArrayViewMutD::from_shape(IxDyn(&shape), data),
            Some(s) => ArrayViewMutD::from_shape(IxDyn(&shape).strides(IxDyn(&s)), data),
        }
        .map_err(shape_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_tensor_view_is_zero_copy_and_typed() {
        let v: Vec<u8> = (0..6u16).flat_map(|x| x.to_ne_bytes()).collect();
        let f = Frame::new(v).with_layout(Layout::Tensor {
            dtype: DType::U16,
            shape: vec![2, 3],
        });
        let a = f.array_view::<u16>().unwrap();
        assert_eq!(a.shape(), &[2, 3]);
        assert_eq!(a[[1, 0]], 3);
        assert_eq!(a.as_ptr() as usize, f.payload.as_ptr() as usize);
        let e = f.array_view::<f32>().unwrap_err().to_string();
        assert!(e.contains("U16") && e.contains("F32"), "{e}");
    }

    #[test]
    fn images_with_a_row_pitch() {
        // 2 rows of 3 RGB pixels, rows 16 bytes apart.
        let mut v = vec![0u8; 32];
        v[16 + 2 * 3 + 1] = 77; // row 1, pixel 2, green
        let f = Frame::new(v).with_layout(Layout::StridedImage {
            width: 3,
            height: 2,
            format: PixelFormat::Rgb8,
            row_pitch: 16,
        });
        let a = f.array_view::<u8>().unwrap();
        assert_eq!(a.shape(), &[2, 3, 3]);
        assert_eq!(a[[1, 2, 1]], 77);
        let gray = Frame::new(vec![5u8; 12]).with_layout(Layout::Image {
            width: 4,
            height: 3,
            format: PixelFormat::Gray8,
        });
        assert_eq!(gray.array_view::<u8>().unwrap().shape(), &[3, 4]);
        let nv12 = Frame::new(vec![0u8; 24]).with_layout(Layout::Image {
            width: 4,
            height: 4,
            format: PixelFormat::Nv12,
        });
        assert!(nv12.array_view::<u8>().is_err());
    }

    #[test]
    fn misaligned_and_shapeless_payloads_are_errors() {
        let base = Bytes::from(vec![0u8; 17]);
        let f = Frame {
            payload: base.slice(1..),
            layout: Layout::Tensor {
                dtype: DType::F32,
                shape: vec![4],
            },
            ..Frame::default()
        };
        // Either misaligned (the usual case) or, by luck, aligned: never a panic.
        if !(f.payload.as_ptr() as usize).is_multiple_of(4) {
            let e = f.array_view::<f32>().unwrap_err().to_string();
            assert!(e.contains("aligned"), "{e}");
        }
        let raw = Frame::new(vec![0u8; 4]);
        assert!(raw.array_view::<u8>().is_err());
        let wrong_len = Frame {
            payload: Bytes::from(vec![0u8; 5]),
            layout: Layout::Tensor {
                dtype: DType::U8,
                shape: vec![4],
            },
            ..Frame::default()
        };
        assert!(wrong_len.array_view::<u8>().is_err());
    }

    #[test]
    fn a_loan_is_written_through_its_view() {
        let mut loan = Loan::heap(24);
        loan.layout = Layout::Tensor {
            dtype: DType::F32,
            shape: vec![2, 3],
        };
        {
            let mut a = loan.array_view_mut::<f32>().unwrap();
            a[[1, 2]] = 2.5;
        }
        let f = loan.into_heap_frame().unwrap();
        assert_eq!(f.array_view::<f32>().unwrap()[[1, 2]], 2.5);
    }
}
