"""Zero-copy and lifetime on shm-pool: arrays are the shared slots themselves."""

import gc
import time

import numpy as np
import pytest

import framewire
from conftest import WAIT, backend_url, connect


def memfd_ranges():
    """Address ranges of this process's `memfd:` mappings (shared memory)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            if "memfd:" in line:
                lo, hi = line.split()[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def in_memfd(addr, nbytes):
    return any(lo <= addr and addr + nbytes <= hi for lo, hi in memfd_ranges())


def send_once_free(pub, data):
    """Sends under policy=fail, retrying until a released slot is back (the
    release reaches the publisher asynchronously)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return pub.send(data)
        except framewire.Full:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def test_view_arrays_are_the_shared_slot_and_read_only(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (216, 384, 3), dtype=np.uint8)
    with framewire.publish(backend_url("shm-pool", tmp_path)) as pub, framewire.subscribe(pub.url, recv="view") as sub:
        connect(pub)
        assert sub.recv_mode == "view"
        pub.send(img)
        frame = sub.recv(timeout=WAIT)
        arr = frame.array()
        assert in_memfd(arr.ctypes.data, arr.nbytes), "a view must point into the shared mapping"
        assert np.asarray(frame).ctypes.data == arr.ctypes.data
        mv = frame.payload
        assert mv.readonly and np.frombuffer(mv, np.uint8).ctypes.data == arr.ctypes.data
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0, 0, 0] = 1
        with pytest.raises(ValueError):
            arr.flags.writeable = True
        with pytest.raises(TypeError):
            mv[0] = 1
        np.testing.assert_array_equal(arr, img)


def test_owned_mode_copies(tmp_path):
    with framewire.publish(backend_url("shm-pool", tmp_path)) as pub, framewire.subscribe(pub.url) as sub:
        connect(pub)
        pub.send(np.ones(100_000, np.uint8))
        arr = sub.recv(timeout=WAIT).array()
        assert not in_memfd(arr.ctypes.data, arr.nbytes)
        assert not arr.flags.writeable


def test_a_loan_is_the_slot_itself(tmp_path):
    with framewire.publish(backend_url("shm-pool", tmp_path)) as pub, framewire.subscribe(pub.url, recv="view") as sub:
        connect(pub)
        loan = pub.loan(1 << 20)
        a = loan.array()
        assert a.flags.writeable and in_memfd(a.ctypes.data, a.nbytes)
        a[:] = 7
        addr = a.ctypes.data
        del a
        pub.send_loan(loan)
        f = sub.recv(timeout=WAIT)
        assert bytes(f.payload[:4]) == b"\x07" * 4 and f.nbytes == 1 << 20
        assert in_memfd(f.array().ctypes.data, 1 << 20) and addr != 0


def test_a_view_outlives_its_subscriber_and_publisher(tmp_path):
    pub = framewire.publish(backend_url("shm-pool", tmp_path))
    sub = framewire.subscribe(pub.url, recv="view")
    connect(pub)
    data = np.arange(500_000, dtype=np.float32)
    pub.send(data)
    frame = sub.recv(timeout=WAIT)
    arr = frame.array()
    mv = frame.payload
    del frame
    sub.close()
    pub.close()
    del sub, pub
    gc.collect()
    # The slot is held by `arr` and `mv`: still mapped, still intact.
    assert in_memfd(arr.ctypes.data, arr.nbytes)
    np.testing.assert_array_equal(arr, data)
    assert np.frombuffer(mv, np.float32)[-1] == data[-1]


def test_a_view_holds_its_slot_until_the_last_reference(tmp_path):
    # Two slots, policy=fail: a third frame is refused while two views are held.
    url = f"shm-pool://{tmp_path.name}-hold?slots=2&slot_size=64KiB&policy=fail&max_held=2"
    with framewire.publish(url) as pub, framewire.subscribe(pub.url, recv="view") as sub:
        connect(pub)
        pub.send(b"a" * 1000)
        pub.send(b"b" * 1000)
        f1, f2 = sub.recv(timeout=WAIT), sub.recv(timeout=WAIT)
        kept = f1.array()[10:20]  # a slice of a view keeps the whole slot
        del f1
        with pytest.raises(framewire.Full):
            pub.send(b"c" * 1000)
        del f2
        gc.collect()
        send_once_free(pub, b"c" * 1000)  # f2's slot comes back
        f3 = sub.recv(timeout=WAIT)
        assert bytes(f3.payload[:1]) == b"c"
        with pytest.raises(framewire.Full):
            pub.send(b"d" * 1000)  # `kept` still holds f1's slot, f3 the other
        assert bytes(kept) == b"a" * 10
        del kept
        gc.collect()
        send_once_free(pub, b"d" * 1000)
        assert bytes(sub.recv(timeout=WAIT).payload[:1]) == b"d"


def test_a_loan_array_outlives_the_unsent_loan_and_publisher(tmp_path):
    pub = framewire.publish(backend_url("shm-pool", tmp_path))
    loan = pub.loan(4096)
    a = loan.array()
    a[:] = 3
    del loan
    pub.close()
    del pub
    gc.collect()
    a[:] = 4  # still our memory: the unsent loan lives as long as `a`
    assert int(a.sum()) == 4 * 4096
