//! Python exceptions from framewire errors, and the error helpers.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyType};

/// The exception classes live in `framewire/_errors.py` (so they can derive
/// from Python's own `TimeoutError`, `ValueError`, ...).
pub(crate) fn exc_class<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let m = MODULE.get_or_try_init(py, || {
        py.import("framewire._errors")
            .map(|m| m.into_any().unbind())
    })?;
    Ok(m.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

pub(crate) fn make_exc(
    py: Python<'_>,
    name: &'static str,
    msg: String,
    attrs: &[(&str, Py<PyAny>)],
) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let value = exc_class(py, name)?.call1((msg.clone(),))?;
        for (k, v) in attrs {
            value.setattr(*k, v.bind(py))?;
        }
        Ok(PyErr::from_value(value))
    };
    build().unwrap_or_else(|e| e)
}

pub(crate) fn py_int(py: Python<'_>, n: u64) -> Py<PyAny> {
    n.into_pyobject(py)
        .map(|o| o.into_any().unbind())
        .unwrap_or_else(|_| py.None())
}

pub(crate) fn py_str(py: Python<'_>, s: &str) -> Py<PyAny> {
    PyString::new(py, s).into_any().unbind()
}

/// framewire's error as the matching Python exception, message intact.
pub(crate) fn to_py(py: Python<'_>, e: framewire::Error) -> PyErr {
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

pub(crate) fn invalid(py: Python<'_>, option: &str, reason: impl Into<String>) -> PyErr {
    let reason = reason.into();
    make_exc(
        py,
        "InvalidOption",
        format!("invalid option `{option}`: {reason}"),
        &[("option", py_str(py, option))],
    )
}

pub(crate) fn plain_error(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    make_exc(py, "Error", msg.into(), &[])
}

pub(crate) trait OrPy<T> {
    fn or_py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrPy<T> for framewire::Result<T> {
    fn or_py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

pub(crate) fn secs(py: Python<'_>, option: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        invalid(
            py,
            option,
            format!("{s} is not a duration in seconds (>= 0)"),
        )
    })
}
