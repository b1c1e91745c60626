"""The Python examples run end to end."""

import subprocess
import sys

from conftest import REPO


def test_pipeline_4k():
    out = subprocess.run(
        [sys.executable, str(REPO / "examples/python/pipeline.py"), "--frames", "6", "--drop-odd"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("frames=3 corrupt=0 "), last


def test_bench_runs():
    out = subprocess.run(
        [sys.executable, str(REPO / "examples/python/bench.py"), "--frames", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    paths = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("path=")]
    assert paths == ["path=framewire-shm-pool-loan", "path=framewire-shm-pool-send",
                     "path=pyzmq-copy-false-ipc", "path=multiprocessing-queue-pickle",
                     "path=framewire-shm-pool-loan-stamp"]
