#!/usr/bin/env python3
"""Per-hop cost of a 4K frame (3840x2160 RGB, 24.9 MB) between two Python
processes, in one run: framewire shm-pool vs pyzmq `copy=False` (OpenFilter's
fastest path) vs multiprocessing queues with pickle (SPDL's baseline).

    python3 -m pip install ./python pyzmq   # once, from the repository root
    python3 examples/python/bench.py [--frames 50]

A hop is timed from the moment the producer hands a filled frame over
(time.monotonic_ns(), CLOCK_MONOTONIC, the same clock in every process) to
the moment the consumer holds it as a numpy array. Producer and consumer go in
lockstep (the consumer acknowledges each frame on a pipe), so no queueing is
counted. The same frame contents go through every path. Rows:

  framewire shm-pool loan   the frame is produced in a loaned slot (pub.loan),
                            received as a view: no copy at all
  framewire shm-pool send   pub.send(array) of an existing array: one copy into
                            the slot, received as a view
  pyzmq copy=False ipc      send_multipart(copy=False) over ipc://, received
                            with copy=False and numpy.frombuffer
  multiprocessing.Queue     q.put(array) / q.get() (pickle through a pipe)
  framewire shm-pool loan-stamp
                            like `loan`, but only the first byte is written
                            before the send, as the Rust harness does
                            (`framewire-bench pipeline`): the same hand-off
                            it measures, from Python

With `--rust-bench PATH` (a release `framewire-bench` binary), the Rust
harness measures the same hand-off in the same run, with the frame written
(`--fill`) and stamped only, and the Python/Rust ratios are printed:

  path=rust-shm-pool-loan-fill ...    framewire-bench pipeline --hops 0 --fill
  path=rust-shm-pool-loan-stamp ...   framewire-bench pipeline --hops 0

Writing 24.9 MB just before the send slows the hand-off that follows in Rust
as much as in Python (caches and CPU state, not the binding), so compare
like with like: `loan` with `rust-...-fill`, `loan-stamp` with
`rust-...-stamp`.

Prints one line per path: `path=... frames=N p50_us=... p90_us=... min_us=...`.
"""

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

W, H = 3840, 2160
SHAPE = (H, W, 3)
NBYTES = W * H * 3


def make_frame(i):
    img = np.empty(SHAPE, np.uint8)
    img[...] = i % 251
    return img


# --- consumers (child processes) ---------------------------------------------

def fw_consumer(url, frames, ack):
    import framewire

    deadline = time.monotonic() + 30
    while True:
        try:
            sub = framewire.subscribe(url, recv="view")
            break
        except framewire.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    ack.send("ready")
    lat = []
    with sub:
        for _ in range(frames):
            f = sub.recv(timeout=60)
            arr = f.array()
            t1 = time.monotonic_ns()
            assert arr.shape == SHAPE
            lat.append(t1 - int.from_bytes(f.metadata, "little"))
            del arr, f
            ack.send(None)
    ack.send(lat)


def zmq_consumer(url, frames, ack):
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.connect(url)
    ack.send("ready")
    lat = []
    for _ in range(frames):
        t0, payload = s.recv_multipart(copy=False)
        arr = np.frombuffer(payload.buffer, np.uint8).reshape(SHAPE)
        t1 = time.monotonic_ns()
        lat.append(t1 - int.from_bytes(t0.bytes, "little"))
        del arr, payload
        ack.send(None)
    s.close(0)
    ctx.term()
    ack.send(lat)


def mpq_consumer(q, frames, ack):
    ack.send("ready")
    lat = []
    for _ in range(frames):
        t0, arr = q.get(timeout=60)
        t1 = time.monotonic_ns()
        assert arr.shape == SHAPE
        lat.append(t1 - t0)
        del arr
        ack.send(None)
    ack.send(lat)


# --- producers (this process) ------------------------------------------------

def run(ctx, target, args, frames, produce):
    here, there = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, frames, there), daemon=True)
    proc.start()
    try:
        if not here.poll(60) or here.recv() != "ready":
            raise RuntimeError(f"{target.__name__} did not start")
        produce(here)
        if not here.poll(120):
            raise RuntimeError(f"{target.__name__} sent no result")
        lat = here.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return np.array(lat) / 1000.0


def wait_ack(pipe):
    if not pipe.poll(60):
        raise RuntimeError("the consumer stopped acknowledging")
    pipe.recv()


def bench_framewire(ctx, frames, mode, src):
    import framewire

    url = f"shm-pool://fwbench-{os.getpid()}-{mode}?slots=4&slot_size=24MiB"
    with framewire.publish(url) as pub:
        def produce(pipe):
            pub.wait_for_subscribers(1, 30)
            for i in range(frames):
                if mode in ("loan", "stamp"):
                    loan = pub.loan(NBYTES)
                    a = loan.array("uint8", SHAPE)
                    if mode == "loan":
                        np.copyto(a, src[i % len(src)])  # producing the frame, in place
                    else:
                        a[0, 0, 0] = i % 251  # stamped only, like the Rust harness
                    del a
                    t0 = time.monotonic_ns()
                    pub.send_loan(loan, metadata=t0.to_bytes(8, "little"))
                else:
                    t0 = time.monotonic_ns()
                    pub.send(src[i % len(src)], metadata=t0.to_bytes(8, "little"))
                wait_ack(pipe)

        return run(ctx, fw_consumer, (url,), frames, produce)


def bench_zmq(ctx, frames, src):
    import zmq

    zctx = zmq.Context()
    s = zctx.socket(zmq.PUSH)
    path = os.path.join(tempfile.mkdtemp(), "bench.ipc")
    s.bind(f"ipc://{path}")
    try:
        def produce(pipe):
            for i in range(frames):
                t0 = time.monotonic_ns()
                s.send_multipart([t0.to_bytes(8, "little"), src[i % len(src)]], copy=False)
                wait_ack(pipe)

        return run(ctx, zmq_consumer, (f"ipc://{path}",), frames, produce)
    finally:
        s.close(0)
        zctx.term()


def bench_mpq(ctx, frames, src):
    q = ctx.Queue(maxsize=2)

    def produce(pipe):
        for i in range(frames):
            q.put((time.monotonic_ns(), src[i % len(src)]))
            wait_ack(pipe)

    return run(ctx, mpq_consumer, (q,), frames, produce)


def report(name, lat):
    print(f"path={name} frames={len(lat)} p50_us={np.median(lat):.1f} "
          f"p90_us={np.percentile(lat, 90):.1f} min_us={lat.min():.1f}", flush=True)
    return float(np.median(lat))


def bench_rust(binary, frames, fill):
    """One `framewire-bench pipeline --hops 0` run: its per-hop p50 and p99 (us)."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "pipeline.json")
        cmd = [binary, "pipeline", "--transport", "shm-pool", "--hops", "0",
               "--resolution", f"{W}x{H}", "--frames", str(max(frames, 2)), "--json", out]
        if fill:
            cmd.append("--fill")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
        with open(out) as f:
            rep = json.load(f)
    return rep["hop_us_p50"], rep["hop_us_p99"]


def report_rust(name, frames, p50, p99):
    print(f"path={name} frames={frames} p50_us={p50:.1f} p99_us={p99:.1f}", flush=True)
    return p50


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--rust-bench", metavar="PATH",
                   help="a release framewire-bench binary: measure the same hand-off from Rust in this run")
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    src = [make_frame(i) for i in range(4)]
    print(f"frame: {W}x{H} RGB, {NBYTES} bytes; lockstep, one hop producer -> consumer process", flush=True)
    res = {}
    res["loan"] = report("framewire-shm-pool-loan", bench_framewire(ctx, args.frames, "loan", src))
    res["send"] = report("framewire-shm-pool-send", bench_framewire(ctx, args.frames, "send", src))
    res["zmq"] = report("pyzmq-copy-false-ipc", bench_zmq(ctx, args.frames, src))
    res["mpq"] = report("multiprocessing-queue-pickle", bench_mpq(ctx, args.frames, src))
    res["stamp"] = report("framewire-shm-pool-loan-stamp",
                          bench_framewire(ctx, args.frames, "stamp", src))
    print(f"pyzmq / framewire-loan = {res['zmq'] / res['loan']:.0f}x, "
          f"multiprocessing / framewire-loan = {res['mpq'] / res['loan']:.0f}x", flush=True)
    if args.rust_bench:
        fill = report_rust("rust-shm-pool-loan-fill", args.frames,
                           *bench_rust(args.rust_bench, args.frames, True))
        stamp = report_rust("rust-shm-pool-loan-stamp", args.frames,
                            *bench_rust(args.rust_bench, args.frames, False))
        print(f"python / rust: loan (frame written) = {res['loan'] / fill:.1f}x, "
              f"loan-stamp = {res['stamp'] / stamp:.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
