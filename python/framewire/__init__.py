"""framewire for Python: move large frames (4K images, tensors) between processes.

    import framewire, numpy as np

    with framewire.publish("shm-pool://cam0?slots=4&slot_size=32MiB") as pub, \\
         framewire.subscribe(pub.url, recv="view") as sub:
        pub.wait_for_subscribers(1)
        pub.send(np.zeros((2160, 3840, 3), np.uint8), topic="cam/0")
        frame = sub.recv(timeout=5)
        img = frame.array()          # read-only, zero-copy: the shared slot itself

Backends (every one compiled in): tcp://, unix://, shm-pool://, shm-ring://,
zmq+tcp://, zmq+ipc://; their options go in the URL (see the repository's
README). Waiting, copying and sending release the GIL; Ctrl-C interrupts a
blocking recv, send, loan, send_loan or wait_for_subscribers at once (framewire
takes Python's signal wake-up fd when nobody else holds it).
"""

import asyncio
import collections
import threading

from ._errors import Disconnected, Error, Full, InvalidOption, Lagged, PayloadTooLarge, Timeout
from ._framewire import Frame, Layout, Loan, Publisher, RawSubscriber, pattern, pattern_check, pattern_fill, schemes
from ._framewire import publish as _publish
from ._framewire import subscribe as _subscribe

__all__ = [
    "publish",
    "subscribe",
    "Publisher",
    "Subscriber",
    "Frame",
    "Layout",
    "Loan",
    "Error",
    "Disconnected",
    "Lagged",
    "Timeout",
    "PayloadTooLarge",
    "InvalidOption",
    "Full",
    "schemes",
    "pattern",
    "pattern_check",
    "pattern_fill",
]

# How often an async receive looks whether it was cancelled (seconds).
_POLL = 0.05


def publish(url, *, policy=None, trace_name=None):
    """Creates a publisher for `url` (a context manager that closes it).

    policy: "block" (default), "drop-oldest" or "fail" (overrides the URL's policy=).
    trace_name: when set, each sent frame gets a trace hop with this name.
    """
    return _publish(url, policy=policy, trace_name=trace_name)


def subscribe(url, *, recv=None, topic_prefix=None):
    """Creates a subscriber for `url` (a context manager that closes it).

    recv: "owned" (default: a private copy) or "view" (zero-copy, read-only
    views that hold their shared slot until the last reference is gone).
    topic_prefix: deliver only frames whose topic starts with it.
    """
    return Subscriber(_subscribe(url, recv=recv, topic_prefix=topic_prefix))


class _Ticket:
    """One async receive: whether its awaiter gave up, and what it got."""

    __slots__ = ("cancelled", "done", "result")

    def __init__(self):
        self.cancelled = False
        self.done = False
        self.result = None


class Subscriber:
    """The receiving half; made by `framewire.subscribe(url, ...)`.

    `recv(timeout=None)`, `try_recv()`, `for frame in sub:` (ends when the
    publisher is gone), `await sub.recv_async(timeout=None)` and
    `async for frame in sub:`. An async receive that is cancelled loses no
    frame: one that arrived meanwhile is returned by the next receive.
    """

    def __init__(self, raw):
        self._raw = raw
        # Serialises receives; `_pending` holds what cancelled async receives
        # got, returned (oldest first) before anything new.
        self._rlock = threading.Lock()
        self._qlock = threading.Lock()
        self._pending = collections.deque()
        self._executor = None

    # --- blocking ---------------------------------------------------------

    def _pop_pending(self):
        if not self._pending:
            # Without the lock: an append racing this look would race a
            # locked look the same way.
            return None
        with self._qlock:
            if not self._pending:
                return None
            kind, value = self._pending.popleft()
        if kind == "error":
            raise value
        return value

    def recv(self, timeout=None):
        """The next frame; raises Timeout after `timeout` seconds (None: wait
        as long as it takes), Disconnected when the publisher is gone, Lagged
        when frames were dropped for this subscriber (then go on receiving)."""
        with self._rlock:
            frame = self._pop_pending()
            if frame is not None:
                return frame
            return self._raw.recv(timeout)

    def try_recv(self):
        """A frame that has already arrived, or None at once."""
        with self._rlock:
            frame = self._pop_pending()
            if frame is not None:
                return frame
            return self._raw.try_recv()

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.recv()
        except Disconnected:
            raise StopIteration from None

    # --- asyncio ----------------------------------------------------------

    def _receive_for(self, ticket, deadline):
        """Runs in this subscriber's worker thread: receives in short waits
        until a frame comes, the deadline passes or the ticket is cancelled.
        What it got after a cancellation goes to `_pending`."""
        import time

        with self._rlock:
            try:
                result = ("frame", self._pop_pending())
                while result[1] is None:
                    if ticket.cancelled:
                        return
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise Timeout("no frame within the recv_async timeout")
                        result = ("frame", self._raw.poll(min(left, _POLL)))
                    else:
                        result = ("frame", self._raw.poll(_POLL))
            except Timeout as e:
                result = ("timeout", e)
            except BaseException as e:  # noqa: BLE001 - handed to the awaiter
                result = ("error", e)
            with self._qlock:
                if ticket.cancelled:
                    if result[0] != "timeout":
                        self._pending.appendleft(result)
                else:
                    ticket.done = True
                    ticket.result = result
        return

    async def recv_async(self, timeout=None):
        """`await sub.recv_async()`: the next frame, without blocking the event
        loop. Cancellation-safe: if the awaiting task is cancelled, a frame
        received meanwhile is kept for the next receive."""
        import concurrent.futures
        import time

        frame = self._pop_pending()
        if frame is not None:
            return frame
        if self._raw.closed:
            raise Disconnected("disconnected: this subscriber was closed")
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="framewire-recv")
        deadline = None if timeout is None else time.monotonic() + timeout
        ticket = _Ticket()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._receive_for, ticket, deadline)
        except BaseException:
            with self._qlock:
                ticket.cancelled = True
                if ticket.done and ticket.result[0] != "timeout":
                    # The worker finished before the cancellation reached us.
                    self._pending.appendleft(ticket.result)
            raise
        kind, value = ticket.result
        if kind != "frame":
            raise value
        return value

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.recv_async()
        except Disconnected:
            raise StopAsyncIteration from None

    # --- the rest ---------------------------------------------------------

    def close(self):
        """Closes; a receive blocked in another thread raises Disconnected."""
        self._raw.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def closed(self):
        return self._raw.closed

    @property
    def recv_mode(self):
        """"owned" or "view"."""
        return self._raw.recv_mode

    @property
    def url(self):
        return self._raw.url

    def stats(self):
        """Counters, as a dict."""
        return self._raw.stats()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"Subscriber(url={self.url!r}, recv_mode={self.recv_mode!r}, closed={self.closed})"
