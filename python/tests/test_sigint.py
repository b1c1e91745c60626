"""Ctrl-C interrupts a Python process blocked in recv, quickly."""

import signal
import time

import framewire
from conftest import WAIT, connect, run_python

CHILD = """
import framewire
sub = framewire.subscribe({url!r})
print("ready", flush=True)
sub.recv()
print("returned", flush=True)
"""


def test_ctrl_c_interrupts_a_blocking_recv():
    with framewire.publish("tcp://127.0.0.1:0") as pub:
        child = run_python(CHILD.format(url=pub.url))
        try:
            connect(pub)
            assert child.stdout.readline().strip() == "ready"
            time.sleep(0.3)  # let it settle inside recv
            t = time.monotonic()
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=WAIT)
            took = time.monotonic() - t
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert "KeyboardInterrupt" in err, err
    assert "returned" not in out
    assert child.returncode != 0
    assert took < 1.5, f"took {took:.2f} s to stop"
