//! Memory handed to numpy (`Memory`, `__array_interface__`) and buffers read
//! from Python (`Source`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use framewire::Layout;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

use crate::convert::*;
use crate::errors::*;

/// A loan's buffer, shared by the `Loan` object and the `Memory` objects
/// over it.
pub(crate) struct LoanCell {
    pub(crate) loan: Mutex<Option<framewire::Loan>>,
    /// Live [`Memory`] objects (numpy arrays, memoryviews) over this loan.
    pub(crate) exports: AtomicUsize,
}

/// What keeps the memory behind a [`Memory`] alive.
pub(crate) enum Owner {
    /// A received payload (on shm-pool in view mode: the shared slot).
    Payload(#[allow(dead_code)] Bytes),
    /// An unsent loan; counted in its `exports`.
    Loan(Arc<LoanCell>),
}

/// Memory exposed to numpy through `__array_interface__`; numpy keeps it as
/// the array's `base`, so the memory lives until the last array over it.
#[pyclass(frozen, module = "framewire._framewire")]
pub(crate) struct Memory {
    pub(crate) owner: Owner,
    pub(crate) ptr: usize,
    pub(crate) len: usize,
    pub(crate) readonly: bool,
    pub(crate) typestr: &'static str,
    pub(crate) shape: Vec<u64>,
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
pub(crate) fn array_over(py: Python<'_>, mem: Memory) -> PyResult<Bound<'_, PyAny>> {
    static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let asarray =
        ASARRAY.get_or_try_init(py, || numpy(py)?.getattr("asarray").map(Bound::unbind))?;
    let mem = Bound::new(py, mem)?;
    asarray.bind(py).call1((mem,))
}

/// Bytes readable by Rust from a Python object: a C-contiguous numpy view of
/// it, held (with the buffer export it holds) while the bytes are used.
pub(crate) struct Source<'py> {
    /// Keeps the exporter (and its buffer export) alive.
    pub(crate) _array: Bound<'py, PyAny>,
    pub(crate) ptr: usize,
    pub(crate) len: usize,
    /// The tensor layout, when `data` was a numpy array.
    pub(crate) layout: Option<PyResult<Layout>>,
    /// A received payload, when `data` is (a view into) one: it can be sent
    /// on without a copy.
    pub(crate) payload: Option<Bytes>,
}

pub(crate) fn source<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Source<'py>> {
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
pub(crate) struct SendPtr(pub(crate) usize);
// SAFETY: only an address; whoever dereferences it keeps the memory alive
// (a `Source` held across the `detach`).
unsafe impl Send for SendPtr {}

/// Copies `len` bytes from `src` (memory of a live Python buffer) to `dst`.
pub(crate) fn copy_from(src: SendPtr, dst: &mut [u8]) {
    // SAFETY: `src` points at `dst.len()` readable bytes of a buffer held
    // alive (with its export) by the caller's `Source`; the regions do not
    // overlap (`dst` is a fresh loan). Raw copy: no reference to memory that
    // other Python threads may write concurrently is formed.
    unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.as_mut_ptr(), dst.len()) }
}
