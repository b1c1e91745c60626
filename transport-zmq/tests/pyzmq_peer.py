"""A plain pyzmq peer for tests/pyzmq.rs: the README's decoder and encoder of
framewire's multipart format, [topic, envelope, payload], used as a user's
script would use them.

  python3 pyzmq_peer.py sub tcp://127.0.0.1:PORT PREFIX COUNT
      SUB socket: prints one JSON line per frame received, then exits.
  python3 pyzmq_peer.py pub
      PUB socket on a random loopback port: prints "PORT n", then sends
      frames (and some foreign messages) every 20 ms for at most 20 s.
"""

import json
import struct
import sys
import time

import zmq

RAW, IMAGE, TENSOR, PARTS = 0, 1, 2, 3


def decode_envelope(env):
    """framewire's envelope (transport_core::codec): 20-byte prefix, header."""
    magic, version, flags, header_len, payload_len = struct.unpack_from("<4sHHIQ", env, 0)
    if magic != b"FWIR" or version != 1 or flags != 0:
        raise ValueError("not a framewire envelope")
    h = env[20:20 + header_len]
    seq, timestamp_ns = struct.unpack_from("<QQ", h, 0)
    o = 16
    (n,) = struct.unpack_from("<H", h, o)
    topic = h[o + 2:o + 2 + n].decode()
    o += 2 + n
    (n,) = struct.unpack_from("<I", h, o)
    metadata = h[o + 4:o + 4 + n]
    o += 4 + n
    tag = h[o]
    o += 1
    if tag == RAW:
        layout = {"kind": "raw"}
    elif tag == IMAGE:
        w, hh, fmt = struct.unpack_from("<IIB", h, o)
        o += 9
        layout = {"kind": "image", "width": w, "height": hh, "format": fmt}
    elif tag == TENSOR:
        dtype, ndim = struct.unpack_from("<BB", h, o)
        shape = list(struct.unpack_from("<%dQ" % ndim, h, o + 2))
        o += 2 + 8 * ndim
        layout = {"kind": "tensor", "dtype": dtype, "shape": shape}
    elif tag == PARTS:
        (n,) = struct.unpack_from("<I", h, o)
        layout = {"kind": "parts", "parts": list(struct.unpack_from("<%dQ" % n, h, o + 4))}
        o += 4 + 8 * n
    else:
        raise ValueError("unknown layout tag %d" % tag)
    (hops,) = struct.unpack_from("<H", h, o)  # then the trace: skipped here
    return {
        "seq": seq,
        "timestamp_ns": timestamp_ns,
        "topic": topic,
        "metadata": metadata.decode(errors="replace"),
        "layout": layout,
        "payload_len": payload_len,
        "hops": hops,
    }


def encode_envelope(seq, timestamp_ns, topic, payload_len, metadata=b"", image=None):
    """An envelope for a frame (raw layout, or image=(width, height, format))."""
    t = topic.encode()
    h = struct.pack("<QQH", seq, timestamp_ns, len(t)) + t
    h += struct.pack("<I", len(metadata)) + metadata
    if image is None:
        h += struct.pack("<B", RAW)
    else:
        h += struct.pack("<BIIB", IMAGE, *image)
    h += struct.pack("<H", 0)  # no trace hops
    return struct.pack("<4sHHIQ", b"FWIR", 1, 0, len(h), payload_len) + h


def sub(url, prefix, count):
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVTIMEO, 15000)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt_string(zmq.SUBSCRIBE, prefix)
    s.connect(url)
    for _ in range(count):
        topic, env, payload = s.recv_multipart()
        d = decode_envelope(env)
        d["topic_part"] = topic.decode()
        d["len"] = len(payload)
        d["sum"] = sum(payload) & 0xFFFFFFFF
        print(json.dumps(d), flush=True)
    s.close()
    ctx.term()


def pub():
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUB)
    s.setsockopt(zmq.LINGER, 0)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    print("PORT %d" % port, flush=True)
    deadline = time.time() + 20
    seq = 0
    while time.time() < deadline:
        payload = bytes((seq + i) & 0xFF for i in range(4 * 3 * 2))
        env = encode_envelope(seq, time.monotonic_ns(), "cam/0", len(payload),
                              b"from pyzmq", image=(4, 2, 2))
        s.send_multipart([b"cam/0", env, payload])
        if seq % 4 == 1:
            s.send_multipart([b"cam/0", b"not a framewire envelope", b"xx"])
        s.send_multipart([b"other/0", env, payload])
        seq += 1
        time.sleep(0.02)


if __name__ == "__main__":
    if sys.argv[1] == "sub":
        sub(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        pub()
