//! Conversions between Python values and framewire options: dtypes, pixel
//! formats, durations, metadata, layouts.

use framewire::{DType, Layout, PixelFormat};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::errors::*;

pub(crate) fn numpy(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static NP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    Ok(NP
        .get_or_try_init(py, || py.import("numpy").map(|m| m.into_any().unbind()))?
        .bind(py))
}

/// numpy's type string of a framewire dtype (bf16 has none: its raw `<u2`).
pub(crate) fn typestr(d: DType) -> &'static str {
    match d {
        DType::U8 => "|u1",
        DType::I8 => "|i1",
        DType::U16 | DType::BF16 => "<u2",
        DType::I16 => "<i2",
        DType::U32 => "<u4",
        DType::I32 => "<i4",
        DType::U64 => "<u8",
        DType::I64 => "<i8",
        DType::F16 => "<f2",
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::Bool => "|b1",
        _ => "|u1",
    }
}

pub(crate) fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::U8 => "uint8",
        DType::I8 => "int8",
        DType::U16 => "uint16",
        DType::I16 => "int16",
        DType::U32 => "uint32",
        DType::I32 => "int32",
        DType::U64 => "uint64",
        DType::I64 => "int64",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::Bool => "bool",
        _ => "unknown",
    }
}

pub(crate) fn dtype_from_typestr(t: &str) -> Option<DType> {
    // Little-endian host (Linux x86-64/aarch64): '=' and '<' are native.
    let t = t.replacen('=', "<", 1);
    Some(match t.as_str() {
        "|u1" => DType::U8,
        "|i1" => DType::I8,
        "<u2" => DType::U16,
        "<i2" => DType::I16,
        "<u4" => DType::U32,
        "<i4" => DType::I32,
        "<u8" => DType::U64,
        "<i8" => DType::I64,
        "<f2" => DType::F16,
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "|b1" => DType::Bool,
        _ => return None,
    })
}

/// A dtype given as a name (`"uint8"`, `"f32"`, `"bfloat16"`) or anything
/// `numpy.dtype` accepts.
pub(crate) fn parse_dtype(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<DType> {
    if let Ok(s) = obj.extract::<String>() {
        let named = match s.as_str() {
            "bf16" | "bfloat16" => Some(DType::BF16),
            "u8" => Some(DType::U8),
            "i8" => Some(DType::I8),
            "u16" => Some(DType::U16),
            "i16" => Some(DType::I16),
            "u32" => Some(DType::U32),
            "i32" => Some(DType::I32),
            "u64" => Some(DType::U64),
            "i64" => Some(DType::I64),
            "f16" => Some(DType::F16),
            "f32" => Some(DType::F32),
            "f64" => Some(DType::F64),
            _ => None,
        };
        if let Some(d) = named {
            return Ok(d);
        }
    }
    let np_dtype = numpy(py)?
        .call_method1("dtype", (obj,))
        .map_err(|e| invalid(py, "dtype", format!("{obj} is not a dtype: {e}")))?;
    let ts: String = np_dtype.getattr("str")?.extract()?;
    dtype_from_typestr(&ts).ok_or_else(|| {
        invalid(
            py,
            "dtype",
            format!(
                "numpy dtype {np_dtype} has no framewire tensor type (accepted: bool, int8..int64, \
                 uint8..uint64, float16, float32, float64, bfloat16); pass layout=Layout.raw() \
                 to send its bytes"
            ),
        )
    })
}

pub(crate) fn pixel_format_name(f: PixelFormat) -> &'static str {
    match f {
        PixelFormat::Gray8 => "gray8",
        PixelFormat::Gray16 => "gray16",
        PixelFormat::Rgb8 => "rgb8",
        PixelFormat::Bgr8 => "bgr8",
        PixelFormat::Rgba8 => "rgba8",
        PixelFormat::Bgra8 => "bgra8",
        PixelFormat::Yuv420p => "yuv420p",
        PixelFormat::Nv12 => "nv12",
        _ => "unknown",
    }
}

/// numpy type string and shape of a payload of `len` bytes under `layout`.
pub(crate) fn array_shape(layout: &Layout, len: usize) -> (&'static str, Vec<u64>) {
    let flat = ("|u1", vec![len as u64]);
    let fits = |want: Option<u64>| want == Some(len as u64);
    match layout {
        Layout::Tensor { dtype, shape } if fits(layout.expected_len().ok().flatten()) => {
            (typestr(*dtype), shape.clone())
        }
        Layout::Image {
            width,
            height,
            format,
        } if fits(layout.expected_len().ok().flatten()) => {
            let (h, w) = (u64::from(*height), u64::from(*width));
            match format {
                PixelFormat::Gray8 => ("|u1", vec![h, w]),
                PixelFormat::Gray16 => ("<u2", vec![h, w]),
                PixelFormat::Rgb8 | PixelFormat::Bgr8 => ("|u1", vec![h, w, 3]),
                PixelFormat::Rgba8 | PixelFormat::Bgra8 => ("|u1", vec![h, w, 4]),
                _ => flat,
            }
        }
        _ => flat,
    }
}
