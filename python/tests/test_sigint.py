"""Ctrl-C interrupts a Python process blocked in recv, send or loan, quickly."""

import os
import signal
import subprocess
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


# A publisher blocked under policy=block (its subscriber stalled) gets Ctrl-C:
# the call raises KeyboardInterrupt at once, nothing half-sent, and the
# publisher goes on once the subscriber reads again.
BLOCKED_PUB = """
import sys, time
import framewire
op = {op!r}
with framewire.publish({url!r}) as pub:
    print("url", pub.url, flush=True)
    pub.wait_for_subscribers(1, 20)
    sent = 0
    try:
        while True:
            print("sending", sent, flush=True)
            if op == "loan":
                loan = pub.loan({nbytes})
                framewire.pattern_fill(loan, sent)
                pub.send_loan(loan)
            else:
                pub.send(framewire.pattern(sent, {nbytes}))
            sent += 1
            if sent > 1000:
                print("never blocked", flush=True)
                sys.exit(3)
    except KeyboardInterrupt:
        print("interrupted", sent, flush=True)
    assert not pub.closed
    # Usable: once the subscriber reads again, the next frame goes out.
    sys.stdin.readline()
    if op == "loan":
        loan = pub.loan({nbytes})
        framewire.pattern_fill(loan, sent)
        pub.send_loan(loan)
    else:
        pub.send(framewire.pattern(sent, {nbytes}))
    print("sent after", sent, flush=True)
    pub.flush()
    sys.stdin.readline()
"""


def _read_line(child, prefix):
    line = ""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line or line.startswith(prefix):
            return line.strip()
    return line.strip()


def _interrupt_blocked_publisher(url, op, nbytes, recv, hold):
    """Runs BLOCKED_PUB against a subscriber (receive mode `recv`) that
    `hold(sub)` stalls: it returns the frames it keeps (views holding slots)."""
    import threading

    child = run_python(BLOCKED_PUB.format(url=url, op=op, nbytes=nbytes), stdin=subprocess.PIPE)
    try:
        line = _read_line(child, "url ")
        assert line.startswith("url "), (line, child.stderr.read() if child.poll() is not None else "")
        with framewire.subscribe(line.split(" ", 1)[1], recv=recv) as sub:
            held = hold(sub)
            # The publisher is blocked once it announced a frame and then
            # made no progress for a while.
            last = None
            stalled_since = time.monotonic()
            deadline = time.monotonic() + WAIT
            lines = []

            def reader():
                for l in child.stdout:
                    lines.append(l.strip())
                    if l.startswith("interrupted") or l.startswith("never"):
                        return

            t = threading.Thread(target=reader, daemon=True)
            t.start()
            while time.monotonic() < deadline:
                time.sleep(0.1)
                if lines and lines[-1] != last:
                    last, stalled_since = lines[-1], time.monotonic()
                elif last is not None and time.monotonic() - stalled_since > 1.0:
                    break
            assert last is not None and last.startswith("sending"), lines
            t0 = time.monotonic()
            child.send_signal(signal.SIGINT)
            t.join(WAIT)
            took = time.monotonic() - t0
            assert lines[-1].startswith("interrupted"), (lines, child.stderr.read() if child.poll() is not None else "")
            sent = int(lines[-1].split()[1])
            assert took < 1.5, f"took {took:.2f} s to stop"
            # Read again: every frame sent before, then the one sent after
            # the interrupt, in order and intact (nothing half-sent).
            first = len(held)
            del held
            child.stdin.write("go\n")
            child.stdin.flush()
            for seq in range(first, sent + 1):
                f = sub.recv(timeout=WAIT)
                assert f.seq == seq
                assert framewire.pattern_check(seq, f)
                del f
            assert _read_line(child, "sent after") == f"sent after {sent}"
            child.stdin.write("end\n")
            child.stdin.flush()
            child.communicate(timeout=WAIT)
        assert child.returncode == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def test_ctrl_c_interrupts_a_send_blocked_by_a_full_tcp_queue():
    # A subscriber that does not read: its queue, the socket buffers and the
    # publisher's queue of 1 fill, then send waits.
    _interrupt_blocked_publisher(
        "tcp://127.0.0.1:0?queue=1", "send", 4 << 20, "owned", lambda sub: []
    )


def _hold_two(sub):
    return [sub.recv(timeout=WAIT), sub.recv(timeout=WAIT)]


def test_ctrl_c_interrupts_a_loan_waiting_for_a_shm_pool_slot():
    # Two slots, both held as views by the subscriber: loan waits.
    name = f"pysig-{os.getpid()}"
    url = f"shm-pool://{name}?slots=2&slot_size=1MiB&max_held=2"
    _interrupt_blocked_publisher(url, "loan", 1 << 20, "view", _hold_two)


def test_ctrl_c_interrupts_a_send_waiting_for_a_shm_pool_slot():
    name = f"pysig-send-{os.getpid()}"
    url = f"shm-pool://{name}?slots=2&slot_size=1MiB&max_held=2"
    _interrupt_blocked_publisher(url, "send", 1 << 20, "view", _hold_two)
