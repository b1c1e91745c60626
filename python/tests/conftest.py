"""Shared helpers for the framewire Python tests."""

import itertools
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
_counter = itertools.count()

# Every wait in these tests is bounded by this (seconds): generous for a
# loaded 2-core machine, never a hang.
WAIT = 20.0


def unique(stem):
    """A name no other test (or test run) uses at the same time."""
    return f"{stem}-{os.getpid()}-{next(_counter)}"


def backend_url(kind, tmp_path):
    """A fresh endpoint URL of backend `kind` for one test."""
    if kind == "tcp":
        return "tcp://127.0.0.1:0"
    if kind == "unix":
        return f"unix://{tmp_path / 'fw.sock'}"
    if kind == "zmq+tcp":
        return "zmq+tcp://127.0.0.1:0"
    if kind == "zmq+ipc":
        return f"zmq+ipc://{tmp_path / 'fw.ipc'}"
    if kind == "shm-ring":
        return f"shm-ring://{unique('pyring')}?capacity=8MiB"
    if kind == "shm-pool":
        return f"shm-pool://{unique('pypool')}?slots=4&slot_size=4MiB&max_held=4"
    raise ValueError(kind)


BACKENDS = ["tcp", "unix", "zmq+tcp", "zmq+ipc", "shm-ring", "shm-pool"]


def connect(pub):
    """Waits until `pub` sees one subscriber, where the backend can tell."""
    if pub.subscriber_count is not None:
        pub.wait_for_subscribers(1, WAIT)


@pytest.fixture(scope="session")
def example_bins():
    """The examples' `publisher` and `subscriber` binaries, built by cargo."""
    subprocess.run(
        ["cargo", "build", "-q", "-p", "framewire-examples", "--bin", "publisher", "--bin", "subscriber"],
        cwd=REPO,
        check=True,
        timeout=1800,
    )
    meta = subprocess.run(
        ["cargo", "metadata", "-q", "--format-version", "1", "--no-deps"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    target = pathlib.Path(json.loads(meta.stdout)["target_directory"]) / "debug"
    return {"publisher": str(target / "publisher"), "subscriber": str(target / "subscriber")}


def run_python(code, **kwargs):
    """Starts a child Python running `code` (stdout/stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
