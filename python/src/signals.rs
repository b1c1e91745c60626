//! Ctrl-C for blocking calls, without polling on the frame path.
//!
//! Python runs signal handlers on its main thread only, between bytecodes:
//! a thread blocked in Rust with the GIL released never sees them unless it
//! is woken. Python's own mechanism for that is the signal wake-up fd
//! (`signal.set_wakeup_fd`): its C-level handler writes the signal number to
//! it. This module installs one end of a socket pair there; a watcher thread
//! reads the other end and sets an [`Interrupt`], which makes the blocked call
//! (`*_or_interrupt` of `framewire::blocking`) return. The binding then runs
//! `check_signals` (the Python handler: `KeyboardInterrupt` for Ctrl-C) and,
//! if that raised nothing, calls again. A frame's wake path is untouched.
//!
//! The wake-up fd is process-wide with a single owner, and only the main
//! thread can set it. It is claimed at a blocking call on the main thread
//! when nobody holds it (-1). Asking costs two system calls, so the answer is
//! reused for [`VERIFY_EVERY`]; a call made on a reused answer waits at most
//! that long before it asks again (an asyncio loop may have taken the fd in
//! between), so a frame arriving within it sees no timer fire. When someone
//! else holds the fd (an asyncio loop with signal handlers), calls look for
//! signals every [`TICK`] instead. Calls on other threads need neither:
//! Python never runs a signal handler there.

use std::cell::Cell;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use framewire::blocking::Interrupt;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

/// How often a call on the main thread looks for signals when the wake-up
/// fd belongs to someone else.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// How long the answer "the wake-up fd is ours" is reused.
pub(crate) const VERIFY_EVERY: Duration = Duration::from_millis(200);

struct Watcher {
    interrupt: Interrupt,
    /// The end Python writes to; kept open for the process's life.
    write: UnixStream,
}

fn watcher() -> Option<&'static Watcher> {
    static W: OnceLock<Option<Watcher>> = OnceLock::new();
    W.get_or_init(|| {
        let (mut read, write) = UnixStream::pair().ok()?;
        // Python requires a non-blocking wake-up fd (a full buffer must never
        // block its signal handler).
        write.set_nonblocking(true).ok()?;
        let interrupt = Interrupt::default();
        let fire = interrupt.clone();
        std::thread::Builder::new()
            .name("framewire-signals".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    match read.read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => fire.interrupt(),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            })
            .ok()?;
        Some(Watcher { interrupt, write })
    })
    .as_ref()
}

thread_local! {
    /// False once Python said this is not its main thread.
    static MAIN: Cell<bool> = const { Cell::new(true) };
    /// When the wake-up fd was last seen to be ours (on the main thread).
    static VERIFIED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// How a blocking call is woken for signals.
pub(crate) enum Wake {
    /// Not Python's main thread: no signal handler can run here, nothing to
    /// look for.
    NotMain,
    /// The main thread: the interrupt the watcher sets, and how long to wait
    /// at most before looking again (None: as long as it takes).
    Main(&'static Interrupt, Option<Duration>),
}

impl Wake {
    /// The interrupt to give to the blocking call.
    pub(crate) fn interrupt(&self) -> Option<&'static Interrupt> {
        match self {
            Wake::NotMain => None,
            Wake::Main(i, _) => Some(i),
        }
    }

    /// The longest wait before looking for signals again.
    pub(crate) fn slice(&self) -> Option<Duration> {
        match self {
            Wake::NotMain => None,
            Wake::Main(_, s) => *s,
        }
    }
}

fn set_wakeup_fd(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static F: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    Ok(F.get_or_try_init(py, || {
        py.import("signal")?
            .getattr("set_wakeup_fd")
            .map(|f| f.unbind())
    })?
    .bind(py))
}

fn no_warning(py: Python<'_>) -> PyResult<&Bound<'_, PyDict>> {
    static D: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    Ok(D.get_or_try_init(py, || {
        let d = PyDict::new(py);
        d.set_item("warn_on_full_buffer", false)?;
        Ok::<_, PyErr>(d.unbind())
    })?
    .bind(py))
}

/// Prepares a blocking call on this thread: on the main thread, makes sure
/// a signal wakes it, and clears the interrupt. The caller then runs
/// `check_signals` before it waits, so a signal that came before is handled
/// and one that comes after wakes the wait.
pub(crate) fn arm(py: Python<'_>) -> PyResult<Wake> {
    if !MAIN.with(Cell::get) {
        return Ok(Wake::NotMain);
    }
    let Some(w) = watcher() else {
        // No socket pair or thread: look for signals every tick.
        static NEVER: OnceLock<Interrupt> = OnceLock::new();
        return Ok(Wake::Main(
            NEVER.get_or_init(Interrupt::default),
            Some(TICK),
        ));
    };
    w.interrupt.clear();
    let now = Instant::now();
    if let Some(at) = VERIFIED.with(Cell::get) {
        let age = now.saturating_duration_since(at);
        if age < VERIFY_EVERY {
            return Ok(Wake::Main(&w.interrupt, Some(VERIFY_EVERY - age)));
        }
    }
    let fd = w.write.as_raw_fd();
    let f = set_wakeup_fd(py)?;
    let old: i32 = match f.call((fd,), Some(no_warning(py)?)) {
        Ok(old) => old.extract()?,
        Err(e) if e.is_instance_of::<PyValueError>(py) => {
            // "set_wakeup_fd only works in main thread of the main interpreter"
            MAIN.with(|m| m.set(false));
            return Ok(Wake::NotMain);
        }
        Err(e) => return Err(e),
    };
    if old == -1 || old == fd {
        VERIFIED.with(|v| v.set(Some(now)));
        return Ok(Wake::Main(&w.interrupt, None));
    }
    // Someone else's: give it back, and look every tick.
    VERIFIED.with(|v| v.set(None));
    f.call((old,), Some(no_warning(py)?))?;
    Ok(Wake::Main(&w.interrupt, Some(TICK)))
}
