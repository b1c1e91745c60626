//! The `Layout` class.

use framewire::{Layout, PixelFormat};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::convert::*;
use crate::errors::*;

/// What a payload's bytes mean: `Layout.raw()`, `Layout.image(width, height,
/// format)`, `Layout.tensor(dtype, shape)` or `Layout.parts(lengths)`.
#[pyclass(frozen, eq, name = "Layout", module = "framewire")]
#[derive(Clone, PartialEq)]
pub(crate) struct PyLayout(pub(crate) Layout);

#[pymethods]
impl PyLayout {
    /// Opaque bytes.
    #[staticmethod]
    fn raw() -> Self {
        PyLayout(Layout::Raw)
    }

    /// One image, rows packed; `format` one of gray8, gray16, rgb8, bgr8,
    /// rgba8, bgra8, yuv420p, nv12.
    #[staticmethod]
    fn image(py: Python<'_>, width: u32, height: u32, format: &str) -> PyResult<Self> {
        let f = PixelFormat::ALL
            .iter()
            .find(|f| pixel_format_name(**f) == format.to_ascii_lowercase())
            .ok_or_else(|| {
                invalid(
                    py,
                    "format",
                    format!(
                        "`{format}` is not a pixel format; accepted: {}",
                        PixelFormat::ALL.map(pixel_format_name).join(", ")
                    ),
                )
            })?;
        Ok(PyLayout(Layout::Image {
            width,
            height,
            format: *f,
        }))
    }

    /// A C-contiguous tensor of `dtype` (a name or numpy dtype) and `shape`.
    #[staticmethod]
    fn tensor(py: Python<'_>, dtype: &Bound<'_, PyAny>, shape: Vec<u64>) -> PyResult<Self> {
        Ok(PyLayout(Layout::Tensor {
            dtype: parse_dtype(py, dtype)?,
            shape,
        }))
    }

    /// A batch of parts laid end to end, each entry one part's length.
    #[staticmethod]
    fn parts(lengths: Vec<u64>) -> Self {
        PyLayout(Layout::Parts(lengths))
    }

    /// `"raw"`, `"image"`, `"tensor"` or `"parts"`.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.0 {
            Layout::Image { .. } => "image",
            Layout::Tensor { .. } => "tensor",
            Layout::Parts(_) => "parts",
            _ => "raw",
        }
    }

    /// Image width (None unless an image).
    #[getter]
    fn width(&self) -> Option<u32> {
        match self.0 {
            Layout::Image { width, .. } => Some(width),
            _ => None,
        }
    }

    /// Image height (None unless an image).
    #[getter]
    fn height(&self) -> Option<u32> {
        match self.0 {
            Layout::Image { height, .. } => Some(height),
            _ => None,
        }
    }

    /// Pixel format name (None unless an image).
    #[getter]
    fn format(&self) -> Option<&'static str> {
        match self.0 {
            Layout::Image { format, .. } => Some(pixel_format_name(format)),
            _ => None,
        }
    }

    /// Tensor element type name (None unless a tensor).
    #[getter]
    fn dtype(&self) -> Option<&'static str> {
        match &self.0 {
            Layout::Tensor { dtype, .. } => Some(dtype_name(*dtype)),
            _ => None,
        }
    }

    /// Tensor shape (None unless a tensor).
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match &self.0 {
            Layout::Tensor { shape, .. } => Ok(Some(PyTuple::new(py, shape)?)),
            _ => Ok(None),
        }
    }

    /// Part lengths (None unless parts).
    #[getter]
    fn lengths(&self) -> Option<Vec<u64>> {
        match &self.0 {
            Layout::Parts(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// Bytes this layout requires (None for raw).
    #[getter]
    fn nbytes(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        self.0.expected_len().or_py(py)
    }

    pub(crate) fn __repr__(&self) -> String {
        match &self.0 {
            Layout::Image {
                width,
                height,
                format,
            } => format!(
                "Layout.image({width}, {height}, {:?})",
                pixel_format_name(*format)
            ),
            Layout::Tensor { dtype, shape } => {
                format!("Layout.tensor({:?}, {shape:?})", dtype_name(*dtype))
            }
            Layout::Parts(p) => format!("Layout.parts({p:?})"),
            _ => "Layout.raw()".into(),
        }
    }
}
