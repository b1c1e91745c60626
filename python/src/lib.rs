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

mod convert;
mod errors;
mod frame;
mod layout;
mod loan;
mod memory;
mod publisher;
mod signals;
mod subscriber;

use framewire::sync::lock;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::frame::*;
use crate::layout::*;
use crate::loan::*;
use crate::memory::*;
use crate::publisher::*;
use crate::subscriber::*;

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
