"""asyncio: recv_async, async for, and cancellation that loses no frame."""

import asyncio
import random

import numpy as np

import framewire
from conftest import WAIT, backend_url, connect


def test_recv_async_and_async_for(tmp_path):
    async def main():
        pub = framewire.publish(backend_url("shm-pool", tmp_path))
        with framewire.subscribe(pub.url, recv="view") as sub:
            connect(pub)
            pub.send(np.arange(10, dtype=np.int64))
            f = await asyncio.wait_for(sub.recv_async(), WAIT)
            assert f.seq == 0 and int(f.array()[9]) == 9
            # the event loop keeps running while a receive waits
            ticks = 0
            task = asyncio.ensure_future(sub.recv_async())
            while not task.done() and ticks < 5:
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 5 and not task.done()
            pub.send(b"next")
            assert bytes((await asyncio.wait_for(task, WAIT)).payload) == b"next"
            del f, task  # views hold their slots (4 in this pool)
            for i in range(3):
                pub.send(bytes([i]))
            pub.flush()
            pub.close()
            seen = [bytes(f.payload) async for f in sub]
            assert seen == [b"\x00", b"\x01", b"\x02"]

    asyncio.run(main())


def test_recv_async_timeout():
    async def main():
        with framewire.publish("tcp://127.0.0.1:0") as pub, framewire.subscribe(pub.url) as sub:
            connect(pub)
            try:
                await sub.recv_async(timeout=0.1)
            except framewire.Timeout:
                return
            raise AssertionError("no Timeout")

    asyncio.run(main())


def test_cancelled_recv_async_loses_no_frame():
    """Cancels receives at random moments while frames arrive: every frame
    still comes out, once, in order."""
    n = 300
    rng = random.Random(7)

    async def main():
        with framewire.publish("tcp://127.0.0.1:0") as pub, framewire.subscribe(pub.url) as sub:
            connect(pub)
            seqs = []
            cancelled = 0
            sent = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 4 * WAIT
            while len(seqs) < n:
                assert loop.time() < deadline, f"stuck at {len(seqs)} frames"
                if sent < n and rng.random() < 0.5:
                    pub.send(sent.to_bytes(4, "little"))
                    sent += 1
                try:
                    f = await asyncio.wait_for(sub.recv_async(), rng.choice([0, 0.0005, 0.002, 0.02]))
                    seqs.append(f.seq)
                except asyncio.TimeoutError:
                    cancelled += 1
            assert seqs == list(range(n)), "a cancelled receive lost or reordered a frame"
            assert cancelled > 10

    asyncio.run(main())


def test_sync_recv_after_a_cancelled_async_one():
    async def main():
        with framewire.publish("tcp://127.0.0.1:0") as pub, framewire.subscribe(pub.url) as sub:
            connect(pub)
            task = asyncio.ensure_future(sub.recv_async())
            await asyncio.sleep(0.05)
            pub.send(b"a")
            pub.send(b"b")
            pub.flush()
            await asyncio.sleep(0.2)  # the worker has most likely got "a" by now
            task.cancel()
            try:
                got = [bytes((await task).payload)]
            except asyncio.CancelledError:
                got = []
            while len(got) < 2:
                got.append(bytes(sub.recv(timeout=WAIT).payload))
            assert got == [b"a", b"b"]

    asyncio.run(main())
