#!/usr/bin/env python3
"""A 4K video pipeline in three Python processes: source -> filter -> sink.

    python3 -m pip install ./python        # once, from the repository root
    python3 examples/python/pipeline.py --frames 100

source  fills each 3840x2160 RGB frame in place, in a loaned shared-memory
        slot (pub.loan -> numpy array over the slot -> send_loan): no copy.
filter  receives views (recv="view": the array is the shared slot, read-only),
        looks at each frame (mean brightness of a tile), drops odd ones when
        --drop-odd is given, and forwards the rest with pub.send(frame): the
        view itself goes on, shm-pool forwards it without a copy.
sink    receives views, checks each frame's marker, and prints per-hop
        latencies from the frames' traces, then one line:
        `frames=N corrupt=C source->filter_us=P50 filter->sink_us=P50`.
"""

import argparse
import subprocess
import sys
import time

import numpy as np

import framewire

W, H = 3840, 2160
FRAME = W * H * 3


def subscribe_when_up(url, timeout=30):
    """Subscribes once the upstream process has created its publisher."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return framewire.subscribe(url, recv="view")
        except framewire.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def source(args):
    with framewire.publish(args.a, trace_name="source") as pub:
        pub.wait_for_subscribers(1, 30)
        for i in range(args.frames):
            loan = pub.loan(FRAME)
            img = loan.array("uint8", (H, W, 3))
            img[:16, :, :] = i % 256  # a marker band the sink checks
            img[16:32, :, 0] = 255 - i % 256
            del img  # nothing may write the slot once it is sent
            pub.send_loan(loan, topic="cam/0", layout=framewire.Layout.image(W, H, "rgb8"),
                          metadata=str(i).encode())
            if args.rate:
                time.sleep(1 / args.rate)
        pub.flush()


def filter_(args):
    with subscribe_when_up(args.a) as sub, \
            framewire.publish(args.b, trace_name="filter") as pub:
        pub.wait_for_subscribers(1, 30)
        for frame in sub:
            img = frame.array()  # (2160, 3840, 3) uint8, the shared slot itself
            brightness = float(img[:64, :64].mean())
            if args.drop_odd and int(frame.metadata) % 2:
                continue
            pub.send(frame, metadata=frame.metadata + b";b=%.0f" % brightness)
        pub.flush()


def sink(args):
    hops = {"source": [], "filter": []}
    n = corrupt = 0
    with subscribe_when_up(args.b) as sub:
        for frame in sub:
            img = frame.array()
            i = int(frame.metadata.split(b";")[0])
            if img.shape != (H, W, 3) or img[0, 0, 0] != i % 256 or img[20, 100, 0] != 255 - i % 256:
                corrupt += 1
            for name, sent, received in frame.trace:
                hops[name].append((received - sent) / 1000)
            n += 1
    med = {k: (float(np.median(v)) if v else float("nan")) for k, v in hops.items()}
    print(f"frames={n} corrupt={corrupt} source->filter_us={med['source']:.1f} "
          f"filter->sink_us={med['filter']:.1f}", flush=True)
    return 1 if corrupt else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--rate", type=float, default=0, help="frames per second at the source (0: as fast as possible)")
    p.add_argument("--drop-odd", action="store_true", help="the filter forwards only even frames")
    p.add_argument("--role", choices=["source", "filter", "sink"], help=argparse.SUPPRESS)
    p.add_argument("--a", help=argparse.SUPPRESS)
    p.add_argument("--b", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        return {"source": source, "filter": filter_, "sink": sink}[args.role](args) or 0

    tag = f"fwpipe-{__import__('os').getpid()}"
    a = f"shm-pool://{tag}-a?slots=4&slot_size=24MiB&max_held=4"
    b = f"shm-pool://{tag}-b?slots=4&slot_size=24MiB&max_held=4"
    common = [sys.executable, __file__, "--frames", str(args.frames), "--rate", str(args.rate), "--a", a, "--b", b]
    if args.drop_odd:
        common.append("--drop-odd")
    procs = [subprocess.Popen(common + ["--role", role]) for role in ("source", "filter", "sink")]
    codes = []
    try:
        for proc in procs:
            codes.append(proc.wait(timeout=600))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return max(codes) if codes else 1


if __name__ == "__main__":
    sys.exit(main())
