//! `framewire._framewire`: the Rust half of the `framewire` Python package.
//!
//! Built on [`framewire::blocking`]: every call that waits, copies or sends
//! runs with the GIL released ([`Python::detach`]). A blocking `recv`,
//! `send`, `loan`, `send_loan` or `wait_for_subscribers` on Python's main
//! thread is woken by a signal through Python's signal wake-up fd (see
//! `signals.rs`), so Ctrl-C interrupts it at once and the frame path has no
//! timer or polling slice.
//!
//! Memory handed to numpy never outlives what backs it:
//! - a received payload is exposed through `Memory` objects (the
//!   `__array_interface__` protocol, so the wheel stays abi3 for Python 3.9),
//!   each holding a clone of the payload's `Bytes`; numpy keeps the `Memory`
//!   as the array's `base`, so the shared slot is held until the last array
//!   or memoryview over it is gone. The arrays are read-only.
//! - a loan's memory is exposed the same way; every `Memory` over a loan is
//!   counted, and `send_loan` refuses while any is alive, so no Python object
//!   can write a slot after it was sent. An unsent loan's memory lives as
//!   long as its last array.
//!
//! The Python-level parts (the exception classes, asyncio support, the
//! subscriber's iteration) are in `python/framewire/__init__.py`.

mod signals;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use framewire::blocking::{self, BlockingPublisher, BlockingSubscriber, Closer, Interrupt};
use framewire::{DType, Layout, PixelFormat, Policy, PublishOptions, RecvMode, SubscribeOptions};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple, PyType};

/// The longest wait of `RawSubscriber.poll` (the asyncio worker looks for
/// cancellation between polls).
const SLICE: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------
// Errors

/// The exception classes live in `framewire/_errors.py` (so they can derive
/// from Python's own `TimeoutError`, `ValueError`, ...).
fn exc_class<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let m = MODULE.get_or_try_init(py, || {
        py.import("framewire._errors")
            .map(|m| m.into_any().unbind())
    })?;
    Ok(m.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

fn make_exc(py: Python<'_>, name: &'static str, msg: String, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let value = exc_class(py, name)?.call1((msg.clone(),))?;
        for (k, v) in attrs {
            value.setattr(*k, v.bind(py))?;
        }
        Ok(PyErr::from_value(value))
    };
    build().unwrap_or_else(|e| e)
}

fn py_int(py: Python<'_>, n: u64) -> Py<PyAny> {
    n.into_pyobject(py)
        .map(|o| o.into_any().unbind())
        .unwrap_or_else(|_| py.None())
}

fn py_str(py: Python<'_>, s: &str) -> Py<PyAny> {
    PyString::new(py, s).into_any().unbind()
}

/// framewire's error as the matching Python exception, message intact.
fn to_py(py: Python<'_>, e: framewire::Error) -> PyErr {
    let msg = e.to_string();
    match e {
        framewire::Error::Disconnected { .. } => make_exc(py, "Disconnected", msg, &[]),
        framewire::Error::Lagged { missed } => {
            make_exc(py, "Lagged", msg, &[("missed", py_int(py, missed))])
        }
        framewire::Error::Timeout { .. } => make_exc(py, "Timeout", msg, &[]),
        framewire::Error::PayloadTooLarge { len, limit, option } => make_exc(
            py,
            "PayloadTooLarge",
            msg,
            &[
                ("len", py_int(py, len)),
                ("limit", py_int(py, limit)),
                ("option", py_str(py, option)),
            ],
        ),
        framewire::Error::InvalidOption { ref option, .. } => {
            let option = py_str(py, option);
            make_exc(py, "InvalidOption", msg, &[("option", option)])
        }
        framewire::Error::InvalidEndpoint { .. } | framewire::Error::UnknownScheme { .. } => {
            make_exc(py, "InvalidOption", msg, &[("option", py_str(py, "url"))])
        }
        framewire::Error::InvalidLayout(_) => make_exc(
            py,
            "InvalidOption",
            msg,
            &[("option", py_str(py, "layout"))],
        ),
        framewire::Error::Full { option, .. } => {
            make_exc(py, "Full", msg, &[("option", py_str(py, option))])
        }
        _ => make_exc(py, "Error", msg, &[]),
    }
}

fn invalid(py: Python<'_>, option: &str, reason: impl Into<String>) -> PyErr {
    let reason = reason.into();
    make_exc(
        py,
        "InvalidOption",
        format!("invalid option `{option}`: {reason}"),
        &[("option", py_str(py, option))],
    )
}

fn plain_error(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    make_exc(py, "Error", msg.into(), &[])
}

trait OrPy<T> {
    fn or_py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrPy<T> for framewire::Result<T> {
    fn or_py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

/// Locks a mutex, taking over one poisoned by a panic elsewhere (its data
/// stays consistent: every critical section here is a single operation).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn secs(py: Python<'_>, option: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        invalid(
            py,
            option,
            format!("{s} is not a duration in seconds (>= 0)"),
        )
    })
}

// ---------------------------------------------------------------------------
// numpy

fn numpy(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static NP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    Ok(NP
        .get_or_try_init(py, || py.import("numpy").map(|m| m.into_any().unbind()))?
        .bind(py))
}

/// numpy's type string of a framewire dtype (bf16 has none: its raw `<u2`).
fn typestr(d: DType) -> &'static str {
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

fn dtype_name(d: DType) -> &'static str {
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

fn dtype_from_typestr(t: &str) -> Option<DType> {
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
fn parse_dtype(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<DType> {
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

fn pixel_format_name(f: PixelFormat) -> &'static str {
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

const PIXEL_FORMATS: [PixelFormat; 8] = [
    PixelFormat::Gray8,
    PixelFormat::Gray16,
    PixelFormat::Rgb8,
    PixelFormat::Bgr8,
    PixelFormat::Rgba8,
    PixelFormat::Bgra8,
    PixelFormat::Yuv420p,
    PixelFormat::Nv12,
];

/// numpy type string and shape of a payload of `len` bytes under `layout`.
fn array_shape(layout: &Layout, len: usize) -> (&'static str, Vec<u64>) {
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

/// What keeps the memory behind a [`Memory`] alive.
enum Owner {
    /// A received payload (on shm-pool in view mode: the shared slot).
    Payload(#[allow(dead_code)] Bytes),
    /// An unsent loan; counted in its `exports`.
    Loan(Arc<LoanCell>),
}

/// Memory exposed to numpy through `__array_interface__`; numpy keeps it as
/// the array's `base`, so the memory lives until the last array over it.
#[pyclass(frozen, module = "framewire._framewire")]
struct Memory {
    owner: Owner,
    ptr: usize,
    len: usize,
    readonly: bool,
    typestr: &'static str,
    shape: Vec<u64>,
}

impl Drop for Memory {
    fn drop(&mut self) {
        if let Owner::Loan(cell) = &self.owner {
            cell.exports.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[pymethods]
impl Memory {
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        // Interned keys: this runs for every array made, on the frame path.
        let d = PyDict::new(py);
        d.set_item(pyo3::intern!(py, "version"), 3)?;
        d.set_item(pyo3::intern!(py, "typestr"), self.typestr)?;
        d.set_item(pyo3::intern!(py, "shape"), PyTuple::new(py, &self.shape)?)?;
        d.set_item(pyo3::intern!(py, "data"), (self.ptr, self.readonly))?;
        Ok(d)
    }

    fn __len__(&self) -> usize {
        self.len
    }
}

/// A numpy array over `mem` (its base, kept alive by it).
fn array_over(py: Python<'_>, mem: Memory) -> PyResult<Bound<'_, PyAny>> {
    static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let asarray =
        ASARRAY.get_or_try_init(py, || numpy(py)?.getattr("asarray").map(Bound::unbind))?;
    let mem = Bound::new(py, mem)?;
    asarray.bind(py).call1((mem,))
}

/// Bytes readable by Rust from a Python object: a C-contiguous numpy view of
/// it, held (with the buffer export it holds) while the bytes are used.
struct Source<'py> {
    /// Keeps the exporter (and its buffer export) alive.
    _array: Bound<'py, PyAny>,
    ptr: usize,
    len: usize,
    /// The tensor layout, when `data` was a numpy array.
    layout: Option<PyResult<Layout>>,
    /// A received payload, when `data` is (a view into) one: it can be sent
    /// on without a copy.
    payload: Option<Bytes>,
}

fn source<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Source<'py>> {
    let np = numpy(py)?;
    let ndarray = np.getattr("ndarray")?;
    let is_array = data.is_instance(&ndarray)?;
    let array =
        if is_array {
            data.clone()
        } else {
            let mv = py
            .import("builtins")?
            .getattr("memoryview")?
            .call1((data,))
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "data must support the buffer protocol (bytes, bytearray, memoryview, numpy \
                     array, framewire.Frame), not {}",
                    data.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })?;
            np.call_method1("asarray", (mv,))?
        };
    let contiguous: bool = array.getattr("flags")?.getattr("c_contiguous")?.extract()?;
    if !contiguous {
        return Err(invalid(
            py,
            "data",
            "the array is not C-contiguous (a slice with steps, a transpose, ...); send \
             numpy.ascontiguousarray(data) (one copy) or a contiguous array",
        ));
    }
    let iface = array.getattr("__array_interface__")?;
    let (ptr, _ro): (usize, bool) = iface.get_item("data")?.extract()?;
    let len: usize = array.getattr("nbytes")?.extract()?;
    let layout = is_array.then(|| -> PyResult<Layout> {
        let ts: String = iface.get_item("typestr")?.extract()?;
        let shape: Vec<u64> = iface.get_item("shape")?.extract()?;
        let dtype = dtype_from_typestr(&ts).ok_or_else(|| {
            invalid(
                py,
                "layout",
                format!(
                    "numpy dtype {} has no framewire tensor type (accepted: bool, int8..int64, \
                     uint8..uint64, float16, float32, float64); pass layout=framewire.Layout.raw() \
                     to send its bytes",
                    array
                        .getattr("dtype")
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                ),
            )
        })?;
        Ok(Layout::Tensor { dtype, shape })
    });
    // A view into a received payload: forward the payload's bytes themselves.
    let mut payload = None;
    if let Ok(base) = array.getattr("base")
        && let Ok(mem) = base.cast::<Memory>()
        && let Owner::Payload(bytes) = &mem.get().owner
    {
        let start = ptr.wrapping_sub(mem.get().ptr);
        if ptr >= mem.get().ptr && start + len <= bytes.len() {
            payload = Some(bytes.slice(start..start + len));
        }
    }
    Ok(Source {
        _array: array,
        ptr,
        len,
        layout,
        payload,
    })
}

/// A raw pointer that may cross into a `detach` closure.
#[derive(Clone, Copy)]
struct SendPtr(usize);
// SAFETY: only an address; whoever dereferences it keeps the memory alive
// (a `Source` held across the `detach`).
unsafe impl Send for SendPtr {}

/// Copies `len` bytes from `src` (memory of a live Python buffer) to `dst`.
fn copy_from(src: SendPtr, dst: &mut [u8]) {
    // SAFETY: `src` points at `dst.len()` readable bytes of a buffer held
    // alive (with its export) by the caller's `Source`; the regions do not
    // overlap (`dst` is a fresh loan). Raw copy: no reference to memory that
    // other Python threads may write concurrently is formed.
    unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.as_mut_ptr(), dst.len()) }
}

// ---------------------------------------------------------------------------
// Layout

/// What a payload's bytes mean: `Layout.raw()`, `Layout.image(width, height,
/// format)`, `Layout.tensor(dtype, shape)` or `Layout.parts(lengths)`.
#[pyclass(frozen, eq, name = "Layout", module = "framewire")]
#[derive(Clone, PartialEq)]
struct PyLayout(Layout);

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
        let f = PIXEL_FORMATS
            .iter()
            .find(|f| pixel_format_name(**f) == format.to_ascii_lowercase())
            .ok_or_else(|| {
                invalid(
                    py,
                    "format",
                    format!(
                        "`{format}` is not a pixel format; accepted: {}",
                        PIXEL_FORMATS.map(pixel_format_name).join(", ")
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

    fn __repr__(&self) -> String {
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

// ---------------------------------------------------------------------------
// Frame

/// A received frame: header fields and a read-only payload.
///
/// `payload` is a read-only memoryview and `array()` (or `numpy.asarray(frame)`)
/// a read-only numpy array shaped by the layout; in view mode on shm-pool both
/// are the shared slot itself, held until the last of them is gone.
#[pyclass(frozen, module = "framewire")]
struct Frame {
    inner: framewire::Frame,
}

impl Frame {
    fn memory(&self, typestr: &'static str, shape: Vec<u64>) -> Memory {
        let p = &self.inner.payload;
        Memory {
            owner: Owner::Payload(p.clone()),
            ptr: p.as_ptr() as usize,
            len: p.len(),
            readonly: true,
            typestr,
            shape,
        }
    }
}

#[pymethods]
impl Frame {
    /// Topic.
    #[getter]
    fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Sequence number, stamped by the publisher (0, 1, 2, ...).
    #[getter]
    fn seq(&self) -> u64 {
        self.inner.seq
    }

    /// Send time on CLOCK_MONOTONIC (`time.monotonic_ns()` of the same host).
    #[getter]
    fn timestamp_ns(&self) -> u64 {
        self.inner.timestamp_ns
    }

    /// Application metadata (a copy: it is small).
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.metadata)
    }

    /// What the payload's bytes mean.
    #[getter]
    fn layout(&self) -> PyLayout {
        PyLayout(self.inner.layout.clone())
    }

    /// Per-hop trace: a list of `(name, sent_ns, received_ns)`.
    #[getter]
    fn trace(&self) -> Vec<(String, u64, u64)> {
        self.inner
            .trace
            .iter()
            .map(|h| (h.name.clone(), h.sent_ns, h.received_ns))
            .collect()
    }

    /// Payload length in bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.payload.len()
    }

    fn __len__(&self) -> usize {
        self.inner.payload.len()
    }

    /// The payload as a read-only memoryview (zero-copy).
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let arr = array_over(
            py,
            self.memory("|u1", vec![self.inner.payload.len() as u64]),
        )?;
        static MEMORYVIEW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let mv = MEMORYVIEW.get_or_try_init(py, || {
            py.import("builtins")?
                .getattr("memoryview")
                .map(Bound::unbind)
        })?;
        mv.bind(py).call1((arr,))
    }

    /// The payload as a read-only numpy array, shape and dtype from the
    /// layout (tensor, or image: (h, w), (h, w, 3), (h, w, 4)); flat uint8
    /// for raw, parts and planar YUV. Zero-copy.
    fn array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (ts, shape) = array_shape(&self.inner.layout, self.inner.payload.len());
        array_over(py, self.memory(ts, shape))
    }

    /// `numpy.asarray(frame)`.
    #[pyo3(signature = (dtype=None, copy=None))]
    fn __array__<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arr = self.array(py)?;
        let np = numpy(py)?;
        match (dtype, copy) {
            (None, Some(true)) => arr.call_method0("copy"),
            (None, _) => Ok(arr),
            (Some(d), Some(true)) => np.call_method1("array", (arr, d)),
            (Some(d), _) => np.call_method1("asarray", (arr, d)),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Frame(topic={:?}, seq={}, nbytes={}, layout={})",
            self.inner.topic,
            self.inner.seq,
            self.inner.payload.len(),
            PyLayout(self.inner.layout.clone()).__repr__()
        )
    }
}

// ---------------------------------------------------------------------------
// Loan

struct LoanCell {
    loan: Mutex<Option<framewire::Loan>>,
    /// Live [`Memory`] objects (numpy arrays, memoryviews) over this loan.
    exports: AtomicUsize,
}

/// A writable buffer lent by a publisher (on shm-pool: the shared slot).
///
/// Write it through `loan.array(dtype, shape)` / `numpy.asarray(loan)` (or
/// `loan.write(data)`), delete those arrays, then `pub.send_loan(loan)`.
/// `send_loan` refuses while an array over the loan is alive, and a sent
/// loan refuses every use, so nothing writes a slot after it was sent.
#[pyclass(frozen, module = "framewire")]
struct Loan {
    cell: Arc<LoanCell>,
    publisher_id: u64,
    len: usize,
    /// The layout of the last shaped `array()`, used by `send_loan` unless
    /// a layout is given there.
    hint: Mutex<Option<Layout>>,
}

impl Loan {
    fn sent_error(py: Python<'_>) -> PyErr {
        plain_error(
            py,
            "this loan was already sent (or dropped with its publisher); take a new one with \
             pub.loan(nbytes)",
        )
    }

    /// A writable [`Memory`] over the loan; counted until dropped.
    fn memory(&self, py: Python<'_>, typestr: &'static str, shape: Vec<u64>) -> PyResult<Memory> {
        let mut guard = lock(&self.cell.loan);
        let loan = guard.as_mut().ok_or_else(|| Self::sent_error(py))?;
        let ptr = loan.as_mut_ptr() as usize;
        self.cell.exports.fetch_add(1, Ordering::AcqRel);
        Ok(Memory {
            owner: Owner::Loan(self.cell.clone()),
            ptr,
            len: self.len,
            readonly: false,
            typestr,
            shape,
        })
    }
}

#[pymethods]
impl Loan {
    /// Length in bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.len
    }

    fn __len__(&self) -> usize {
        self.len
    }

    /// True once sent.
    #[getter]
    fn sent(&self) -> bool {
        lock(&self.cell.loan).is_none()
    }

    /// Live arrays/memoryviews over this loan (send_loan needs 0).
    #[getter]
    fn exports(&self) -> usize {
        self.cell.exports.load(Ordering::Acquire)
    }

    /// A writable numpy array over the loaned memory: flat uint8 by default,
    /// or `dtype` and `shape` (which then become the frame's tensor layout
    /// unless `send_loan` is given one).
    #[pyo3(signature = (dtype=None, shape=None))]
    fn array<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
        shape: Option<Vec<u64>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let d = match dtype {
            Some(d) => parse_dtype(py, d)?,
            None => DType::U8,
        };
        let shape = match shape {
            Some(s) => s,
            None => {
                if !(self.len as u64).is_multiple_of(d.size()) {
                    return Err(invalid(
                        py,
                        "dtype",
                        format!(
                            "a loan of {} bytes is no whole number of {} elements",
                            self.len,
                            dtype_name(d)
                        ),
                    ));
                }
                vec![self.len as u64 / d.size()]
            }
        };
        let layout = Layout::Tensor {
            dtype: d,
            shape: shape.clone(),
        };
        if layout.expected_len().ok().flatten() != Some(self.len as u64) {
            return Err(invalid(
                py,
                "shape",
                format!(
                    "{} of {shape:?} is not the loan's {} bytes",
                    dtype_name(d),
                    self.len
                ),
            ));
        }
        if dtype.is_some() || shape.len() != 1 {
            *lock(&self.hint) = Some(layout);
        }
        array_over(py, self.memory(py, typestr(d), shape)?)
    }

    /// `numpy.asarray(loan)`: a writable flat uint8 array.
    #[pyo3(signature = (dtype=None, copy=None))]
    fn __array__<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if copy == Some(true) {
            return Err(PyValueError::new_err(
                "a copy of a loan is not the loan: write through numpy.asarray(loan) or loan.array()",
            ));
        }
        self.array(py, dtype, None)
    }

    /// Copies `data` (any C-contiguous buffer) into the loan at `offset`,
    /// with the GIL released.
    #[pyo3(signature = (data, offset=0))]
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>, offset: usize) -> PyResult<()> {
        let src = source(py, data)?;
        if offset.checked_add(src.len).is_none_or(|end| end > self.len) {
            return Err(invalid(
                py,
                "offset",
                format!(
                    "{} bytes at offset {offset} do not fit a loan of {} bytes",
                    src.len, self.len
                ),
            ));
        }
        let ptr = SendPtr(src.ptr);
        let n = src.len;
        let cell = &self.cell;
        let ok = py.detach(|| {
            let mut guard = lock(&cell.loan);
            match guard.as_mut() {
                Some(loan) => {
                    copy_from(ptr, &mut loan[offset..offset + n]);
                    true
                }
                None => false,
            }
        });
        drop(src);
        if ok {
            Ok(())
        } else {
            Err(Self::sent_error(py))
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Loan(nbytes={}, sent={}, exports={})",
            self.len,
            lock(&self.cell.loan).is_none(),
            self.cell.exports.load(Ordering::Acquire)
        )
    }
}

// ---------------------------------------------------------------------------
// Publisher

static NEXT_PUBLISHER: AtomicU64 = AtomicU64::new(1);

fn closed_publisher(py: Python<'_>) -> PyErr {
    plain_error(py, "this publisher is closed")
}

fn parse_metadata(py: Python<'_>, metadata: Option<&Bound<'_, PyAny>>) -> PyResult<Bytes> {
    let Some(m) = metadata else {
        return Ok(Bytes::new());
    };
    if m.is_none() {
        return Ok(Bytes::new());
    }
    // The common cases first, without a numpy view: bytes and str.
    if let Ok(b) = m.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    if let Ok(s) = m.cast::<PyString>() {
        return Ok(Bytes::from(s.extract::<String>()?.into_bytes()));
    }
    let src = source(py, m).map_err(|_| {
        PyTypeError::new_err(format!(
            "metadata must be bytes-like or str, not {}",
            m.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let mut v = vec![0u8; src.len];
    copy_from(SendPtr(src.ptr), &mut v);
    Ok(Bytes::from(v))
}

fn parse_layout(layout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Layout>> {
    match layout {
        None => Ok(None),
        Some(l) if l.is_none() => Ok(None),
        Some(l) => match l.cast::<PyLayout>() {
            Ok(l) => Ok(Some(l.get().0.clone())),
            Err(_) => Err(PyTypeError::new_err(format!(
                "layout must be a framewire.Layout (Layout.raw(), .image(), .tensor(), \
                 .parts()), not {}",
                l.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))),
        },
    }
}

/// The sending half; made by `framewire.publish(url, ...)`.
#[pyclass(frozen, module = "framewire")]
struct Publisher {
    inner: Mutex<Option<BlockingPublisher>>,
    url: String,
    id: u64,
    /// Whether the backend lends the memory frames are sent from (shm-pool,
    /// shm-ring), rather than heap buffers.
    loan_in_place: bool,
}

impl Publisher {
    /// Runs `f` on the publisher with the GIL released.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut BlockingPublisher) -> framewire::Result<T> + Send,
    ) -> PyResult<T> {
        let r = py.detach(|| lock(&self.inner).as_mut().map(f));
        match r {
            Some(r) => r.or_py(py),
            None => Err(closed_publisher(py)),
        }
    }

    /// Runs a call that may wait (under policy=block) with the GIL
    /// released, until it is done. `f` gets the interrupt that a signal sets
    /// (None off the main thread, where no signal handler runs) and returns
    /// `Ok(None)` when it gave up because of it; then the signal handlers run
    /// (Ctrl-C raises `KeyboardInterrupt` here, nothing sent) and, if they
    /// raised nothing, `f` is called again.
    fn waiting<T: Send>(
        &self,
        py: Python<'_>,
        mut f: impl FnMut(&mut BlockingPublisher, Gate) -> framewire::Result<Option<T>> + Send,
    ) -> PyResult<T> {
        loop {
            let wake = signals::arm(py)?;
            py.check_signals()?;
            let gate = Gate {
                interrupt: wake.interrupt(),
                within: wake.slice(),
            };
            let r = py.detach(|| lock(&self.inner).as_mut().map(|p| f(p, gate)));
            match r {
                Some(Ok(Some(v))) => return Ok(v),
                Some(Ok(None)) => continue,
                Some(Err(e)) => return Err(to_py(py, e)),
                None => return Err(closed_publisher(py)),
            }
        }
    }
}

/// When a publisher's blocking call gives up to look for signals: when the
/// interrupt is set (None: never), or after `within`.
#[derive(Clone, Copy)]
struct Gate {
    interrupt: Option<&'static Interrupt>,
    within: Option<Duration>,
}

/// `p.send(frame)`, or None when the gate closed first.
fn send_or(
    p: &mut BlockingPublisher,
    frame: framewire::Frame,
    g: Gate,
) -> framewire::Result<Option<()>> {
    match g.interrupt {
        Some(i) => p.send_or_interrupt(frame, i, g.within),
        None => p.send(frame).map(Some),
    }
}

/// `p.loan(n)`, or None when the gate closed first.
fn loan_or(
    p: &mut BlockingPublisher,
    n: usize,
    g: Gate,
) -> framewire::Result<Option<framewire::Loan>> {
    match g.interrupt {
        Some(i) => p.loan_or_interrupt(n, i, g.within),
        None => p.loan(n).map(Some),
    }
}

/// `p.send_loan(loan)`, or None when the gate closed first.
fn send_loan_or(
    p: &mut BlockingPublisher,
    loan: framewire::Loan,
    g: Gate,
) -> framewire::Result<Option<()>> {
    match g.interrupt {
        Some(i) => p.send_loan_or_interrupt(loan, i, g.within),
        None => p.send_loan(loan).map(Some),
    }
}

#[pymethods]
impl Publisher {
    /// Sends `data`: anything exporting the buffer protocol (bytes,
    /// bytearray, memoryview, numpy array), or a received `Frame` (its
    /// header is kept unless overridden). A C-contiguous numpy array sets a
    /// tensor layout from its dtype and shape unless `layout` is given. The
    /// bytes are copied once, with the GIL released, into a loan (on shm-pool
    /// the slot itself); a received view (a `Frame`, or an array over one)
    /// is passed on as it is, which shm-pool forwards without a copy.
    #[pyo3(signature = (data, *, topic=None, metadata=None, layout=None))]
    fn send(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        topic: Option<String>,
        metadata: Option<&Bound<'_, PyAny>>,
        layout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let layout = parse_layout(layout)?;
        let has_metadata = metadata.is_some_and(|m| !m.is_none());
        let metadata = parse_metadata(py, metadata)?;
        if let Ok(frame) = data.cast::<Frame>() {
            let src = &frame.get().inner;
            let out = framewire::Frame {
                topic: topic.unwrap_or_else(|| src.topic.clone()),
                metadata: if has_metadata {
                    metadata
                } else {
                    src.metadata.clone()
                },
                layout: layout.unwrap_or_else(|| src.layout.clone()),
                trace: src.trace.clone(),
                payload: src.payload.clone(),
                ..framewire::Frame::default()
            };
            return self.waiting(py, move |p, i| send_or(p, out.clone(), i));
        }
        let mut src = source(py, data)?;
        let layout = match (layout, src.layout.take()) {
            (Some(l), _) => l,
            (None, Some(l)) => l?,
            (None, None) => Layout::Raw,
        };
        let topic = topic.unwrap_or_default();
        if let Some(payload) = src.payload.clone() {
            let out = framewire::Frame {
                topic,
                metadata,
                layout,
                payload,
                ..framewire::Frame::default()
            };
            return self.waiting(py, move |p, i| send_or(p, out.clone(), i));
        }
        let ptr = SendPtr(src.ptr);
        let n = src.len;
        // Checked before the loan, so an oversize payload fails at once
        // (and under policy=block does not wait for a slot first).
        layout.check(n as u64).or_py(py)?;
        let r = self.waiting(py, move |p, i| {
            // An interrupted attempt sent nothing: the next one starts over.
            let Some(mut loan) = loan_or(p, n, i)? else {
                return Ok(None);
            };
            copy_from(ptr, &mut loan);
            loan.topic = topic.clone();
            loan.metadata = metadata.clone();
            loan.layout = layout.clone();
            send_loan_or(p, loan, i)
        });
        drop(src);
        r
    }

    /// Lends a writable buffer of `nbytes` (on shm-pool: a slot); under
    /// policy=block waits for room.
    fn loan(&self, py: Python<'_>, nbytes: usize) -> PyResult<Loan> {
        let loan = self.waiting(py, move |p, i| loan_or(p, nbytes, i))?;
        Ok(Loan {
            cell: Arc::new(LoanCell {
                loan: Mutex::new(Some(loan)),
                exports: AtomicUsize::new(0),
            }),
            publisher_id: self.id,
            len: nbytes,
            hint: Mutex::new(None),
        })
    }

    /// Sends a filled loan. Refused while an array or memoryview over the
    /// loan is alive (delete them first), and for a loan already sent.
    #[pyo3(signature = (loan, *, topic=None, metadata=None, layout=None))]
    fn send_loan(
        &self,
        py: Python<'_>,
        loan: &Bound<'_, PyAny>,
        topic: Option<String>,
        metadata: Option<&Bound<'_, PyAny>>,
        layout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let loan = loan.cast::<Loan>().map_err(|_| {
            PyTypeError::new_err(format!(
                "send_loan takes the framewire.Loan made by pub.loan(nbytes), not {}",
                loan.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let loan = loan.get();
        if loan.publisher_id != self.id {
            return Err(plain_error(
                py,
                "this loan belongs to another publisher; send it through the publisher that lent it",
            ));
        }
        let layout = parse_layout(layout)?;
        let metadata = parse_metadata(py, metadata)?;
        let mut rust_loan = {
            let mut guard = lock(&loan.cell.loan);
            if guard.is_none() {
                return Err(Loan::sent_error(py));
            }
            let live = loan.cell.exports.load(Ordering::Acquire);
            if live > 0 {
                return Err(plain_error(
                    py,
                    format!(
                        "{live} array(s)/memoryview(s) over this loan are still alive; delete \
                         them (`del arr`) before send_loan, so nothing can write the memory \
                         after it is sent"
                    ),
                ));
            }
            guard.take().ok_or_else(|| Loan::sent_error(py))?
        };
        rust_loan.topic = topic.unwrap_or_default();
        rust_loan.metadata = metadata;
        rust_loan.layout = layout
            .or_else(|| lock(&loan.hint).clone())
            .unwrap_or(Layout::Raw);
        if !self.loan_in_place {
            // A heap loan is sent as a frame: an interrupted attempt can be
            // made again with the same bytes.
            let frame = rust_loan.into_heap_frame().or_py(py)?;
            return self.waiting(py, move |p, i| send_or(p, frame.clone(), i));
        }
        // A loan in place cannot be made again once handed over; an
        // interrupted send_loan (only where a backend waits here) is reported.
        let mut rust_loan = Some(rust_loan);
        // Only a signal ends it early (no slices: an attempt cannot be
        // repeated).
        let r = self.waiting(py, move |p, g| match rust_loan.take() {
            Some(l) => {
                let g = Gate { within: None, ..g };
                send_loan_or(p, l, g).map(|r| Some(r.is_some()))
            }
            None => Ok(Some(false)),
        })?;
        if r {
            Ok(())
        } else {
            // Ctrl-C: KeyboardInterrupt; a handler that raised nothing: this.
            py.check_signals()?;
            Err(plain_error(
                py,
                "send_loan was interrupted by a signal before the loan went out; the loan was \
                 not sent (its memory is returned)",
            ))
        }
    }

    /// Waits until every accepted frame is handed to every subscriber.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |p| p.flush())
    }

    /// Waits until at least `n` subscribers are connected (Timeout after
    /// `timeout` seconds).
    #[pyo3(signature = (n=1, timeout=10.0))]
    fn wait_for_subscribers(&self, py: Python<'_>, n: usize, timeout: f64) -> PyResult<()> {
        let t = secs(py, "timeout", timeout)?;
        let deadline = Instant::now() + t;
        self.waiting(py, move |p, g| {
            let left = deadline.saturating_duration_since(Instant::now());
            match g.interrupt {
                Some(i) => {
                    let t = g.within.map_or(left, |w| w.min(left));
                    match p.wait_for_subscribers_or_interrupt(n, t, i) {
                        // A slice ran out, not the caller's timeout: again.
                        Err(framewire::Error::Timeout { .. }) if t < left => Ok(None),
                        r => r,
                    }
                }
                None => p.wait_for_subscribers(n, left).map(Some),
            }
        })
    }

    /// Ends the stream and disconnects the subscribers (after what is
    /// queued). Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let p = py.detach(|| lock(&self.inner).take());
        if let Some(mut p) = p {
            let r = py.detach(move || {
                let r = p.close();
                drop(p);
                r
            });
            r.or_py(py)?;
        }
        Ok(())
    }

    /// True once closed.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        // Every lock of `inner` is taken with the GIL released: a send
        // blocked under policy=block holds it.
        py.detach(|| lock(&self.inner).is_none())
    }

    /// The URL subscribers should connect to (with the port or name the
    /// publisher got).
    #[getter]
    fn url(&self) -> String {
        self.url.clone()
    }

    /// Subscribers connected now (None where the backend cannot tell).
    #[getter]
    fn subscriber_count(&self, py: Python<'_>) -> Option<usize> {
        py.detach(|| {
            lock(&self.inner)
                .as_ref()
                .and_then(|p| p.subscriber_count())
        })
    }

    /// Counters, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| {
            lock(&self.inner)
                .as_ref()
                .map(|p| p.stats())
                .unwrap_or_default()
        });
        stats_dict(py, s)
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: &Bound<'_, PyAny>,
        _v: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("Publisher(url={:?}, closed={})", self.url, self.closed(py))
    }
}

fn stats_dict(py: Python<'_>, s: framewire::Stats) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("frames_sent", s.frames_sent)?;
    d.set_item("bytes_sent", s.bytes_sent)?;
    d.set_item("frames_received", s.frames_received)?;
    d.set_item("bytes_received", s.bytes_received)?;
    d.set_item("dropped", s.dropped)?;
    d.set_item("lagged", s.lagged)?;
    d.set_item("queued", s.queued)?;
    d.set_item("subscribers", s.subscribers)?;
    Ok(d)
}

/// `framewire.publish(url, policy=None, trace_name=None)`.
#[pyfunction]
#[pyo3(signature = (url, *, policy=None, trace_name=None))]
fn publish(
    py: Python<'_>,
    url: &str,
    policy: Option<&str>,
    trace_name: Option<String>,
) -> PyResult<Publisher> {
    let mut opts = PublishOptions::default();
    if let Some(p) = policy {
        let p: Policy = p
            .parse()
            .map_err(|reason: String| invalid(py, "policy", format!("`{p}`: {reason}")))?;
        opts = opts.policy(p);
    }
    if let Some(t) = trace_name {
        opts = opts.trace_name(t);
    }
    let url = url.to_owned();
    let p = py.detach(move || blocking::publish(&url, opts)).or_py(py)?;
    let loan_in_place = framewire::capabilities(p.endpoint().url())
        .map(|c| c.loan_in_place)
        .unwrap_or(true);
    Ok(Publisher {
        loan_in_place,
        url: p.endpoint().url().to_owned(),
        inner: Mutex::new(Some(p)),
        id: NEXT_PUBLISHER.fetch_add(1, Ordering::Relaxed),
    })
}

// ---------------------------------------------------------------------------
// Subscriber

/// The receiving half (the Rust part: `framewire.Subscriber` wraps it).
#[pyclass(frozen, module = "framewire._framewire")]
struct RawSubscriber {
    inner: Mutex<Option<BlockingSubscriber>>,
    closer: Closer,
    url: String,
}

impl RawSubscriber {
    /// One wait of at most `t` (None: no limit) with the GIL released,
    /// cut short when `i` is set; None if no frame came.
    fn wait_once(
        &self,
        py: Python<'_>,
        t: Option<Duration>,
        i: Option<&Interrupt>,
    ) -> PyResult<Option<framewire::Frame>> {
        if self.closer.is_closed() {
            return Err(closed_subscriber(py));
        }
        let r = py.detach(|| {
            let mut g = lock(&self.inner);
            g.as_mut().map(|s| match (i, t) {
                (Some(i), t) => s.recv_or_interrupt(t, i),
                (None, Some(t)) => s.recv_timeout(t),
                (None, None) => s.recv().map(Some),
            })
        });
        match r {
            Some(r) => r.or_py(py),
            None => Err(closed_subscriber(py)),
        }
    }
}

fn closed_subscriber(py: Python<'_>) -> PyErr {
    make_exc(
        py,
        "Disconnected",
        "disconnected: this subscriber was closed".into(),
        &[],
    )
}

#[pymethods]
impl RawSubscriber {
    /// Waits for the next frame; `Timeout` after `timeout` seconds (None:
    /// no limit). A signal (Ctrl-C) wakes it: its handler runs (raising
    /// `KeyboardInterrupt`), or the wait goes on.
    #[pyo3(signature = (timeout=None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Frame> {
        let deadline = match timeout {
            Some(t) => Some((Instant::now() + secs(py, "timeout", t)?, t)),
            None => None,
        };
        loop {
            let wake = signals::arm(py)?;
            py.check_signals()?;
            let left = deadline.map(|(d, _)| d.saturating_duration_since(Instant::now()));
            let t = match (left, wake.slice()) {
                (Some(l), Some(s)) => Some(l.min(s)),
                (l, s) => l.or(s),
            };
            if let Some(f) = self.wait_once(py, t, wake.interrupt())? {
                return Ok(Frame { inner: f });
            }
            if let Some((d, t)) = deadline
                && Instant::now() >= d
            {
                return Err(make_exc(
                    py,
                    "Timeout",
                    format!("no frame within {t} s (recv timeout={t})"),
                    &[],
                ));
            }
        }
    }

    /// Waits at most `seconds` (capped at 50 ms so that callers can look
    /// for cancellation); None if no frame came.
    fn poll(&self, py: Python<'_>, seconds: f64) -> PyResult<Option<Frame>> {
        let t = secs(py, "timeout", seconds)?.min(SLICE);
        Ok(self
            .wait_once(py, Some(t), None)?
            .map(|f| Frame { inner: f }))
    }

    /// A frame that has already arrived, or None at once.
    fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Frame>> {
        self.poll(py, 0.0)
    }

    /// Closes: a recv blocked in another thread returns `Disconnected`.
    fn close(&self, py: Python<'_>) {
        self.closer.close();
        let s = py.detach(|| lock(&self.inner).take());
        py.detach(move || drop(s));
    }

    /// True once closed.
    #[getter]
    fn closed(&self) -> bool {
        self.closer.is_closed()
    }

    /// `"owned"` or `"view"`.
    #[getter]
    fn recv_mode(&self, py: Python<'_>) -> &'static str {
        match py.detach(|| lock(&self.inner).as_ref().map(|s| s.recv_mode())) {
            Some(RecvMode::View) => "view",
            _ => "owned",
        }
    }

    /// The URL subscribed to.
    #[getter]
    fn url(&self) -> String {
        self.url.clone()
    }

    /// Counters, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| {
            lock(&self.inner)
                .as_ref()
                .map(|s| s.stats())
                .unwrap_or_default()
        });
        stats_dict(py, s)
    }
}

/// `framewire._framewire.subscribe(url, recv=None, topic_prefix="")`.
#[pyfunction]
#[pyo3(signature = (url, *, recv=None, topic_prefix=None))]
fn subscribe(
    py: Python<'_>,
    url: &str,
    recv: Option<&str>,
    topic_prefix: Option<String>,
) -> PyResult<RawSubscriber> {
    let mut opts = SubscribeOptions::default();
    if let Some(m) = recv {
        let m: RecvMode = m
            .parse()
            .map_err(|reason: String| invalid(py, "recv", format!("`{m}`: {reason}")))?;
        opts = opts.recv_mode(m);
    }
    if let Some(t) = topic_prefix {
        opts = opts.topic_prefix(t);
    }
    let owned_url = url.to_owned();
    let s = py
        .detach(move || blocking::subscribe(&owned_url, opts))
        .or_py(py)?;
    Ok(RawSubscriber {
        closer: s.closer(),
        inner: Mutex::new(Some(s)),
        url: url.to_owned(),
    })
}

// ---------------------------------------------------------------------------
// Helpers for tests and examples

/// The examples' verifiable payload of frame `seq` (what `publisher` sends
/// and `subscriber --verify` checks), `nbytes` long.
#[pyfunction]
fn pattern<'py>(py: Python<'py>, seq: u64, nbytes: usize) -> Bound<'py, PyBytes> {
    let b = py.detach(move || framewire::pattern::make(seq, nbytes));
    PyBytes::new(py, &b)
}

/// Fills `loan` with the pattern of `seq`.
#[pyfunction]
fn pattern_fill(py: Python<'_>, loan: &Bound<'_, Loan>, seq: u64) -> PyResult<()> {
    let cell = &loan.get().cell;
    let ok = py.detach(|| match lock(&cell.loan).as_mut() {
        Some(l) => {
            framewire::pattern::fill(seq, l);
            true
        }
        None => false,
    });
    if ok {
        Ok(())
    } else {
        Err(Loan::sent_error(py))
    }
}

/// True if `data` (a buffer or a Frame) holds the pattern of `seq`.
#[pyfunction]
fn pattern_check(py: Python<'_>, seq: u64, data: &Bound<'_, PyAny>) -> PyResult<bool> {
    if let Ok(f) = data.cast::<Frame>() {
        let p = f.get().inner.payload.clone();
        return Ok(py.detach(move || framewire::pattern::check(seq, &p)));
    }
    let src = source(py, data)?;
    let mut copy = vec![0u8; src.len];
    let ptr = SendPtr(src.ptr);
    let ok = py.detach(|| {
        copy_from(ptr, &mut copy);
        framewire::pattern::check(seq, &copy)
    });
    drop(src);
    Ok(ok)
}

/// URL schemes compiled in.
#[pyfunction]
fn schemes() -> Vec<&'static str> {
    framewire::schemes()
}

#[pymodule(gil_used = true)]
fn _framewire(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(publish, m)?)?;
    m.add_function(wrap_pyfunction!(subscribe, m)?)?;
    m.add_function(wrap_pyfunction!(pattern, m)?)?;
    m.add_function(wrap_pyfunction!(pattern_fill, m)?)?;
    m.add_function(wrap_pyfunction!(pattern_check, m)?)?;
    m.add_function(wrap_pyfunction!(schemes, m)?)?;
    m.add_class::<Publisher>()?;
    m.add_class::<RawSubscriber>()?;
    m.add_class::<Frame>()?;
    m.add_class::<Loan>()?;
    m.add_class::<PyLayout>()?;
    m.add_class::<Memory>()?;
    Ok(())
}
