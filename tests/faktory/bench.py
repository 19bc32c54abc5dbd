"""A rough enqueue and drain figure for the Faktory port, beside `qd bench`'s W1 and W2.

Faktory clients send one command at a time per connection, so throughput comes from
connections: CONNS sockets each PUSH JOBS/CONNS jobs one by one (enqueue), then CONNS
sockets FETCH and ACK until the queue is empty (drain). Raw lines over asyncio, so the
figure is the server's, not a client library's. Not a test: nothing is asserted.

Usage: FAKTORY_URL=tcp://127.0.0.1:7419 python3 bench.py [JOBS] [CONNS]
"""

import asyncio
import json
import os
import sys
import time
import uuid
from urllib.parse import urlparse

JOBS = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
CONNS = int(sys.argv[2]) if len(sys.argv) > 2 else 64
U = urlparse(os.environ.get("FAKTORY_URL", "tcp://127.0.0.1:7419"))
QUEUE = "bench-" + uuid.uuid4().hex[:8]


async def connect():
    r, w = await asyncio.open_connection(U.hostname, U.port)
    await r.readline()  # +HI (no password: run against a server without a secret)
    w.write(b'HELLO {"v":2}\r\n')
    assert await r.readline() == b"+OK\r\n"
    return r, w


async def reply(r):
    line = await r.readline()
    if line.startswith(b"$") and line != b"$-1\r\n":
        return await r.readline()
    return line


async def pusher(n):
    r, w = await connect()
    for _ in range(n):
        job = {"jid": uuid.uuid4().hex, "jobtype": "noop", "args": [], "queue": QUEUE}
        w.write(b"PUSH " + json.dumps(job).encode() + b"\r\n")
        assert await reply(r) == b"+OK\r\n"


async def drainer(counter):
    r, w = await connect()
    while True:
        w.write(("FETCH %s\r\n" % QUEUE).encode())
        body = await reply(r)
        if body == b"$-1\r\n":
            return
        jid = json.loads(body)["jid"]
        w.write(b'ACK {"jid":"' + jid.encode() + b'"}\r\n')
        assert await reply(r) == b"+OK\r\n"
        counter[0] += 1


async def main():
    t = time.perf_counter()
    await asyncio.gather(*(pusher(JOBS // CONNS) for _ in range(CONNS)))
    enq = (JOBS // CONNS) * CONNS / (time.perf_counter() - t)
    counter = [0]
    t = time.perf_counter()
    await asyncio.gather(*(drainer(counter) for _ in range(CONNS)))
    # The last FETCH of each drainer waits 2 s for nothing: not counted.
    drain = counter[0] / (time.perf_counter() - t - 2.0)
    print("faktory enqueue_jobs_per_s=%d drain_jobs_per_s=%d (jobs=%d conns=%d)"
          % (enq, drain, counter[0], CONNS))


asyncio.run(main())
