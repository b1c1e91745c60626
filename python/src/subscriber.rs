//! The `RawSubscriber` class and `subscribe`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use framewire::blocking::{self, BlockingSubscriber, Closer, Interrupt};
use framewire::sync::lock;
use framewire::{RecvMode, SubscribeOptions};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::*;
use crate::frame::*;
use crate::publisher::*;
use crate::signals;

/// The longest wait of `RawSubscriber.poll` (the asyncio worker looks for
/// cancellation between polls).
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// The receiving half (the Rust part: `framewire.Subscriber` wraps it).
#[pyclass(frozen, module = "framewire._framewire")]
pub(crate) struct RawSubscriber {
    pub(crate) inner: Mutex<Option<BlockingSubscriber>>,
    pub(crate) closer: Closer,
    pub(crate) url: String,
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

pub(crate) fn closed_subscriber(py: Python<'_>) -> PyErr {
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
pub(crate) fn subscribe(
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
