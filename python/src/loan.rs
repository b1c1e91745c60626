//! The `Loan` class: a publisher buffer written in place from Python.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use framewire::sync::lock;
use framewire::{DType, Layout};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::convert::*;
use crate::errors::*;
use crate::memory::*;

/// A writable buffer lent by a publisher (on shm-pool: the shared slot).
///
/// Write it through `loan.array(dtype, shape)` / `numpy.asarray(loan)` (or
/// `loan.write(data)`), delete those arrays, then `pub.send_loan(loan)`.
/// `send_loan` refuses while an array over the loan is alive, and a sent
/// loan refuses every use, so nothing writes a slot after it was sent.
#[pyclass(frozen, module = "framewire")]
pub(crate) struct Loan {
    pub(crate) cell: Arc<LoanCell>,
    pub(crate) publisher_id: u64,
    pub(crate) len: usize,
    /// The layout of the last shaped `array()`, used by `send_loan` unless
    /// a layout is given there.
    pub(crate) hint: Mutex<Option<Layout>>,
}

impl Loan {
    pub(crate) fn sent_error(py: Python<'_>) -> PyErr {
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
