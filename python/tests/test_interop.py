"""Python and Rust processes in one pipeline: the examples' publisher and
subscriber binaries (their last stdout line is `received=R lost=L corrupt=C`)."""

import subprocess
import time

import pytest

import framewire
from conftest import WAIT, unique

COUNT = 20
SIZE = 256 * 1024


def urls(tmp_path):
    return {
        "unix": f"unix://{tmp_path / 'interop.sock'}",
        "shm-pool": f"shm-pool://{unique('pyinterop')}?slots=4&slot_size=1MiB",
        "shm-ring": f"shm-ring://{unique('pyinterop')}?capacity=4MiB",
        "zmq+ipc": f"zmq+ipc://{tmp_path / 'interop.ipc'}",
    }


@pytest.mark.parametrize("kind", ["unix", "shm-pool", "shm-ring", "zmq+ipc"])
def test_python_publisher_rust_subscriber(kind, tmp_path, example_bins):
    url = urls(tmp_path)[kind]
    with framewire.publish(url) as pub:
        child = subprocess.Popen(
            [example_bins["subscriber"], "--endpoint", pub.url, "--count", str(COUNT), "--verify",
             "--timeout", str(int(WAIT)), "--recv", "view"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            pub.wait_for_subscribers(1, WAIT)
            for seq in range(COUNT):
                if seq % 2:
                    pub.send(framewire.pattern(seq, SIZE))
                else:
                    loan = pub.loan(SIZE)
                    framewire.pattern_fill(loan, seq)
                    pub.send_loan(loan)
            pub.flush()
            out, err = child.communicate(timeout=WAIT * 3)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert child.returncode == 0, err
    assert out.strip().splitlines()[-1] == f"received={COUNT} lost=0 corrupt=0"


@pytest.mark.parametrize("kind", ["unix", "shm-pool", "shm-ring", "zmq+ipc"])
def test_rust_publisher_python_subscriber(kind, tmp_path, example_bins):
    url = urls(tmp_path)[kind]
    child = subprocess.Popen(
        [example_bins["publisher"], "--endpoint", url, "--size", str(SIZE), "--count", str(COUNT),
         "--wait-subscribers", "1", "--wait-timeout", str(int(WAIT))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + WAIT
        while True:  # the publisher takes a moment to appear
            try:
                sub = framewire.subscribe(url, recv="view")
                break
            except framewire.Error:
                assert child.poll() is None, child.communicate()[1]
                assert time.monotonic() < deadline, "the Rust publisher never appeared"
                time.sleep(0.05)
        with sub:
            seqs = []
            for frame in sub:
                assert frame.nbytes == SIZE
                assert framewire.pattern_check(frame.seq, frame), f"frame {frame.seq} is corrupt"
                assert framewire.pattern_check(frame.seq, frame.array())
                seqs.append(frame.seq)
                if len(seqs) == COUNT:
                    break
        out, err = child.communicate(timeout=WAIT * 3)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert seqs == list(range(COUNT))
    assert child.returncode == 0, err
    assert out.strip().splitlines()[-1].startswith(f"sent={COUNT} ")
