//! The `Publisher` class and `publish`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use framewire::blocking::{self, BlockingPublisher, Interrupt};
use framewire::sync::lock;
use framewire::{Layout, Policy, PublishOptions};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::errors::*;
use crate::frame::*;
use crate::layout::*;
use crate::loan::*;
use crate::memory::*;
use crate::signals;

pub(crate) static NEXT_PUBLISHER: AtomicU64 = AtomicU64::new(1);

pub(crate) fn closed_publisher(py: Python<'_>) -> PyErr {
    plain_error(py, "this publisher is closed")
}

/// The sending half; made by `framewire.publish(url, ...)`.
#[pyclass(frozen, module = "framewire")]
pub(crate) struct Publisher {
    pub(crate) inner: Mutex<Option<BlockingPublisher>>,
    pub(crate) url: String,
    pub(crate) id: u64,
    /// Whether the backend lends the memory frames are sent from (shm-pool,
    /// shm-ring), rather than heap buffers.
    pub(crate) loan_in_place: bool,
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
pub(crate) struct Gate {
    pub(crate) interrupt: Option<&'static Interrupt>,
    pub(crate) within: Option<Duration>,
}

/// `p.send(frame)`, or None when the gate closed first.
pub(crate) fn send_or(
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
pub(crate) fn loan_or(
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
pub(crate) fn send_loan_or(
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

pub(crate) fn stats_dict(py: Python<'_>, s: framewire::Stats) -> PyResult<Bound<'_, PyDict>> {
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
pub(crate) fn publish(
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

pub(crate) fn parse_metadata(
    py: Python<'_>,
    metadata: Option<&Bound<'_, PyAny>>,
) -> PyResult<Bytes> {
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

pub(crate) fn parse_layout(layout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Layout>> {
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
