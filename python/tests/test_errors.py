"""Bad input and faults give framewire's exceptions, with the Rust messages."""

import time

import numpy as np
import pytest

import framewire
from conftest import WAIT, backend_url, connect


def test_hierarchy():
    for cls in [framewire.Disconnected, framewire.Lagged, framewire.Timeout, framewire.PayloadTooLarge,
                framewire.InvalidOption, framewire.Full]:
        assert issubclass(cls, framewire.Error)
    assert issubclass(framewire.Timeout, TimeoutError)
    assert issubclass(framewire.InvalidOption, ValueError)
    assert issubclass(framewire.Disconnected, ConnectionError)


def test_unknown_url_option_names_it():
    with pytest.raises(framewire.InvalidOption) as e:
        framewire.publish("tcp://127.0.0.1:0?bogus=1")
    assert "bogus" in str(e.value)


def test_bad_policy_and_recv_mode():
    with pytest.raises(framewire.InvalidOption) as e:
        framewire.publish("tcp://127.0.0.1:0", policy="sometimes")
    assert e.value.option == "policy" and "block, drop-oldest, fail" in str(e.value)
    with pytest.raises(framewire.InvalidOption) as e:
        framewire.subscribe("tcp://127.0.0.1:1", recv="borrowed")
    assert e.value.option == "recv"


def test_unknown_scheme_and_bad_url():
    with pytest.raises(framewire.InvalidOption, match="unknown scheme `carrier-pigeon`"):
        framewire.publish("carrier-pigeon://coop")
    with pytest.raises(framewire.InvalidOption):
        framewire.publish("not a url")


def test_wrong_types():
    with framewire.publish("tcp://127.0.0.1:0") as pub:
        with pytest.raises(TypeError, match="buffer protocol"):
            pub.send(123)
        with pytest.raises(TypeError, match="buffer protocol"):
            pub.send("a str is not bytes")
        with pytest.raises(TypeError):
            pub.send(b"x", topic=5)
        with pytest.raises(TypeError, match="metadata"):
            pub.send(b"x", metadata=3.5)
        with pytest.raises(TypeError, match="framewire.Layout"):
            pub.send(b"x", layout="raw")
        with pytest.raises(TypeError, match="framewire.Loan"):
            pub.send_loan(b"x")
        with pytest.raises(OverflowError, match="nbytes"):
            pub.loan(-1)
        with pytest.raises(TypeError, match="nbytes"):
            pub.loan("many")
        with pytest.raises(TypeError):
            framewire.publish(42)


def test_non_contiguous_array():
    with framewire.publish("tcp://127.0.0.1:0") as pub:
        a = np.zeros((100, 100), np.uint8)
        with pytest.raises(framewire.InvalidOption, match="not C-contiguous") as e:
            pub.send(a[:, ::2])
        assert e.value.option == "data"
        with pytest.raises(framewire.InvalidOption, match="not C-contiguous"):
            pub.send(a.T)
        with pytest.raises(framewire.InvalidOption, match="not C-contiguous"):
            pub.send(memoryview(a)[::3])


def test_unsupported_dtype_and_bad_layout():
    with framewire.publish("tcp://127.0.0.1:0") as pub:
        with pytest.raises(framewire.InvalidOption, match="complex128"):
            pub.send(np.zeros(4, np.complex128))
        with pytest.raises(framewire.InvalidOption, match="needs 12 bytes but the payload has 8"):
            pub.send(b"12345678", layout=framewire.Layout.tensor("f32", [3]))
        with pytest.raises(framewire.InvalidOption, match="pixel format"):
            framewire.Layout.image(2, 2, "cmyk")
        with pytest.raises(framewire.InvalidOption, match="dtype"):
            framewire.Layout.tensor("not-a-dtype", [1])
        pub.send(np.zeros(4, np.complex128), layout=framewire.Layout.raw())  # explicit: fine


@pytest.mark.parametrize("kind,option", [("shm-pool", "slot_size"), ("tcp", "max_payload")])
def test_oversize_payload(kind, option, tmp_path):
    url = backend_url(kind, tmp_path)
    url += ("&" if "?" in url else "?") + ("slot_size=64KiB" if kind == "shm-pool" else "max_payload=64KiB")
    url = url.replace("slot_size=4MiB&", "")
    with framewire.publish(url) as pub:
        with pytest.raises(framewire.PayloadTooLarge) as e:
            pub.send(np.zeros(100_000, np.uint8))
        assert e.value.option == option and e.value.limit == 64 * 1024 and e.value.len == 100_000
        assert f"raise `{option}`" in str(e.value)
        with pytest.raises(framewire.PayloadTooLarge):
            pub.loan(100_000)


def test_recv_timeout():
    with framewire.publish("tcp://127.0.0.1:0") as pub, framewire.subscribe(pub.url) as sub:
        connect(pub)
        t = time.monotonic()
        with pytest.raises(framewire.Timeout):
            sub.recv(timeout=0.2)
        assert 0.15 < time.monotonic() - t < 5
        assert sub.try_recv() is None
        with pytest.raises(framewire.InvalidOption):
            sub.recv(timeout=-1)


def test_disconnected_after_the_publisher_goes():
    pub = framewire.publish("tcp://127.0.0.1:0")
    with framewire.subscribe(pub.url) as sub:
        connect(pub)
        pub.close()
        with pytest.raises(framewire.Disconnected, match="disconnected"):
            sub.recv(timeout=WAIT)
        with pytest.raises(framewire.Error, match="closed"):
            pub.send(b"x")
    with pytest.raises(framewire.Disconnected):
        sub.recv(timeout=1)  # closed subscriber


def test_lagged_carries_missed(tmp_path):
    url = "tcp://127.0.0.1:0?queue=2"
    with framewire.publish(url, policy="drop-oldest") as pub, framewire.subscribe(pub.url) as sub:
        connect(pub)
        for _ in range(50):
            pub.send(np.zeros(256 * 1024, np.uint8))
        # No flush here: flush waits until this subscriber, which is not
        # reading yet, has taken every queued frame, and a writer stalled
        # past `write_timeout` (10 s) cuts it off mid-frame.
        missed = 0
        got = 0
        deadline = time.monotonic() + WAIT
        while got + missed < 50 and time.monotonic() < deadline:
            try:
                sub.recv(timeout=WAIT)
                got += 1
            except framewire.Lagged as e:
                assert e.missed > 0 and "lagged" in str(e)
                missed += e.missed
        assert missed > 0 and got + missed == 50


def test_loan_misuse(tmp_path):
    with framewire.publish(backend_url("shm-pool", tmp_path)) as pub, \
            framewire.publish(backend_url("shm-pool", tmp_path)) as other:
        loan = pub.loan(1024)
        a = loan.array()
        view = a[100:200]
        del a
        with pytest.raises(framewire.Error, match="still alive") as e:
            pub.send_loan(loan)
        assert not isinstance(e.value, framewire.Disconnected)
        assert loan.exports == 1
        del view
        assert loan.exports == 0
        with pytest.raises(framewire.Error, match="another publisher"):
            other.send_loan(loan)
        with pytest.raises(framewire.InvalidOption, match="shape"):
            loan.array("f4", (3, 3))
        loan.write(b"\x01" * 1024)
        pub.send_loan(loan)
        assert loan.sent
        with pytest.raises(framewire.Error, match="already sent"):
            pub.send_loan(loan)
        with pytest.raises(framewire.Error, match="already sent"):
            loan.array()
        with pytest.raises(framewire.Error, match="already sent"):
            np.asarray(loan)
        with pytest.raises(framewire.Error, match="already sent"):
            loan.write(b"x")
        with pytest.raises(framewire.InvalidOption, match="do not fit"):
            pub.loan(4).write(b"12345")
