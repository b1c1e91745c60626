"""A plain Zenoh peer (eclipse-zenoh) reading and writing framewire frames.

    interop.py sub LOCATOR KEY N   read N frames, check topic/seq/payload, print "ok N"
    interop.py pub LOCATOR KEY N   write N frames (no trailer: publisher id 0), then end

Frames: topic "py/<seq>", payload = framewire's test pattern of <seq>, 4 KiB.
The format is in transport-zenoh/README.md.
"""
import json
import struct
import sys
import time

import zenoh

K = 0x9E3779B97F4A7C15
M = (1 << 64) - 1


def word(seq, i):
    return ((((seq * K) & M) ^ i) * K & M) ^ seq


def pattern(seq, n):
    out = bytearray()
    for i in range(n // 8):
        out += struct.pack("<Q", word(seq, i))
    rem = n % 8
    if rem:
        out += struct.pack("<Q", word(seq, M))[:rem]
    return bytes(out)


def session(locator):
    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("connect/endpoints", json.dumps([locator]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    return zenoh.open(conf)


def header(seq, topic, payload_len):
    t = topic.encode()
    body = struct.pack("<QQH", seq, time.monotonic_ns(), len(t)) + t
    body += struct.pack("<I", 0)  # no metadata
    body += struct.pack("<B", 0)  # layout raw
    body += struct.pack("<H", 0)  # no trace hops
    prefix = b"FWIR" + struct.pack("<HHIQ", 1, 0, len(body), payload_len)
    return prefix + body


def sub(locator, key, n):
    s = session(locator)
    subscriber = s.declare_subscriber(key)
    # Counted by framewire publishers (wait_for_subscribers).
    token = s.liveliness().declare_token("@framewire/sub/00000000000000aa/" + key)
    print("ready", flush=True)
    got = 0
    deadline = time.monotonic() + 30
    while got < n:
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {got} frames")
        sample = subscriber.try_recv()
        if sample is None:
            time.sleep(0.005)
            continue
        if sample.kind != zenoh.SampleKind.PUT:
            continue
        att = sample.attachment.to_bytes()
        assert att[:4] == b"FWIR", att[:4]
        hlen, plen = struct.unpack_from("<IQ", att, 8)
        seq, _ts, tlen = struct.unpack_from("<QQH", att, 20)
        topic = att[38:38 + tlen].decode()
        payload = sample.payload.to_bytes()
        if seq != got or topic != f"py/{seq}" or plen != len(payload):
            sys.exit(f"frame {got}: seq={seq} topic={topic} len={len(payload)}/{plen}")
        if payload != pattern(seq, len(payload)):
            sys.exit(f"frame {seq}: payload differs")
        got += 1
    print(f"ok {got}", flush=True)
    token.undeclare()
    s.close()


def pub(locator, key, n):
    s = session(locator)
    p = s.declare_publisher(key, congestion_control=zenoh.CongestionControl.BLOCK)
    deadline = time.monotonic() + 30
    while not list(s.liveliness().get("@framewire/sub/**", timeout=1.0)):
        if time.monotonic() > deadline:
            sys.exit("no framewire subscriber appeared")
        time.sleep(0.05)
    for seq in range(n):
        payload = pattern(seq, 4096)
        p.put(payload, attachment=header(seq, f"py/{seq}", len(payload)))
    p.delete(attachment=b"FWZE" + struct.pack("<Q", 0))
    time.sleep(0.5)
    print(f"sent {n}", flush=True)
    s.close()


if __name__ == "__main__":
    mode, locator, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    {"sub": sub, "pub": pub}[mode](locator, key, n)
