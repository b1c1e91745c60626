//! The `Frame` class: a received frame and its payload as numpy arrays.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

use crate::convert::*;
use crate::layout::*;
use crate::memory::*;

/// A received frame: header fields and a read-only payload.
///
/// `payload` is a read-only memoryview and `array()` (or `numpy.asarray(frame)`)
/// a read-only numpy array shaped by the layout; in view mode on shm-pool both
/// are the shared slot itself, held until the last of them is gone.
#[pyclass(frozen, module = "framewire")]
pub(crate) struct Frame {
    pub(crate) inner: framewire::Frame,
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
