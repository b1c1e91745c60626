"""Round trips through every backend compiled into the package."""

import numpy as np
import pytest

import framewire
from conftest import BACKENDS, WAIT, backend_url, connect


def test_every_backend_is_compiled_in():
    assert set(framewire.schemes()) >= {"tcp", "unix", "zmq+tcp", "zmq+ipc", "shm-ring", "shm-pool"}


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("mode", ["owned", "view"])
def test_round_trip(kind, mode, tmp_path):
    url = backend_url(kind, tmp_path)
    with framewire.publish(url, trace_name="py-src") as pub:
        with framewire.subscribe(pub.url, recv=mode) as sub:
            connect(pub)
            # bytes, with topic and metadata
            pub.send(b"hello", topic="t/0", metadata=b"\x00meta")
            # a numpy array: tensor layout from dtype and shape
            img = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
            pub.send(img, topic="t/1")
            # a loan filled in place, its layout from the shaped array
            loan = pub.loan(4 * 1000)
            a = loan.array("float32", (10, 100))
            a[:] = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 100)
            del a
            pub.send_loan(loan, topic="t/2", metadata="m2")
            # any buffer: a memoryview of a bytearray, an explicit layout
            pub.send(memoryview(bytearray(range(16))), layout=framewire.Layout.image(2, 2, "rgba8"))

            f0 = sub.recv(timeout=WAIT)
            assert (f0.topic, f0.seq, f0.metadata, bytes(f0.payload)) == ("t/0", 0, b"\x00meta", b"hello")
            assert f0.layout == framewire.Layout.raw()
            assert f0.timestamp_ns > 0
            assert [h[0] for h in f0.trace] == ["py-src"]
            name, sent_ns, received_ns = f0.trace[0]
            assert received_ns >= sent_ns > 0

            f1 = sub.recv(timeout=WAIT)
            assert f1.seq == 1 and f1.topic == "t/1"
            assert f1.layout == framewire.Layout.tensor("uint8", [48, 64, 3])
            arr = f1.array()
            assert arr.shape == (48, 64, 3) and arr.dtype == np.uint8
            assert not arr.flags.writeable
            np.testing.assert_array_equal(arr, img)
            np.testing.assert_array_equal(np.asarray(f1), img)

            f2 = sub.recv(timeout=WAIT)
            assert (f2.seq, f2.topic, f2.metadata) == (2, "t/2", b"m2")
            assert f2.layout.kind == "tensor" and f2.layout.dtype == "float32"
            assert f2.layout.shape == (10, 100)
            np.testing.assert_array_equal(f2.array().ravel(), np.linspace(0, 1, 1000, dtype=np.float32))

            f3 = sub.recv(timeout=WAIT)
            assert f3.layout == framewire.Layout.image(2, 2, "rgba8")
            assert f3.array().shape == (2, 2, 4)
            assert bytes(f3.payload) == bytes(range(16))


@pytest.mark.parametrize("kind", ["tcp", "shm-pool", "shm-ring"])
def test_iteration_ends_when_the_publisher_goes(kind, tmp_path):
    pub = framewire.publish(backend_url(kind, tmp_path))
    with framewire.subscribe(pub.url) as sub:
        connect(pub)
        for i in range(3):  # fewer than the pool's 4 slots: nobody reads yet
            pub.send(np.full(1000, i, dtype=np.uint16))
        pub.flush()
        pub.close()
        seen = [int(f.array()[0]) for f in sub]
        assert seen == [0, 1, 2]


def test_topic_prefix(tmp_path):
    with framewire.publish("tcp://127.0.0.1:0") as pub:
        with framewire.subscribe(pub.url, topic_prefix="cam/") as sub:
            connect(pub)
            for t in ["imu/0", "cam/0", "lidar", "cam/1"]:
                pub.send(t.encode(), topic=t)
            assert sub.recv(timeout=WAIT).topic == "cam/0"
            assert sub.recv(timeout=WAIT).topic == "cam/1"


def test_a_received_frame_is_forwarded_with_its_header(tmp_path):
    up = framewire.publish(backend_url("shm-pool", tmp_path), trace_name="a")
    down = framewire.publish(backend_url("shm-pool", tmp_path), trace_name="b")
    with up, down, framewire.subscribe(up.url, recv="view") as mid, framewire.subscribe(down.url) as end:
        connect(up)
        connect(down)
        up.send(np.arange(1000, dtype=np.int32), topic="x", metadata=b"m")
        f = mid.recv(timeout=WAIT)
        down.send(f)  # the whole frame: payload (a view), topic, metadata, layout, trace
        g = end.recv(timeout=WAIT)
        assert (g.topic, g.metadata, g.layout) == ("x", b"m", f.layout)
        assert [h[0] for h in g.trace] == ["a", "b"]
        np.testing.assert_array_equal(g.array(), np.arange(1000, dtype=np.int32))
        # an array over the received view is forwarded too
        down.send(f.array()[10:20], topic="slice")
        h = end.recv(timeout=WAIT)
        np.testing.assert_array_equal(h.array(), np.arange(10, 20, dtype=np.int32))


def test_gil_is_released_while_waiting(tmp_path):
    import threading

    with framewire.publish("tcp://127.0.0.1:0") as pub, framewire.subscribe(pub.url) as sub:
        connect(pub)
        got = []
        t = threading.Thread(target=lambda: got.append(sub.recv(timeout=WAIT)))
        t.start()
        # While the other thread waits in recv, this one keeps running Python.
        n = 0
        for _ in range(200_000):
            n += 1
        assert t.is_alive() and not got
        pub.send(b"x")
        t.join(WAIT)
        assert not t.is_alive() and bytes(got[0].payload) == b"x"


def test_close_wakes_a_recv_in_another_thread():
    import threading

    with framewire.publish("tcp://127.0.0.1:0") as pub:
        sub = framewire.subscribe(pub.url)
        connect(pub)
        errors = []

        def wait():
            try:
                sub.recv()
            except framewire.Disconnected as e:
                errors.append(e)

        t = threading.Thread(target=wait)
        t.start()
        sub.close()
        t.join(WAIT)
        assert not t.is_alive() and len(errors) == 1
