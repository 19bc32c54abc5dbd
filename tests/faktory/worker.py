"""The real Python Faktory client (PyPI faktory, pinned in requirements.txt) against
`qd serve --faktory`, unchanged. Run by run.sh with FAKTORY_URL (password included).

Pushes jobs, works them with a threaded Worker (which sends no protocol version, so the
password is hashed once), sees a failing job go to the retries set and one with retry -1
to the dead set, then stops the worker through BEAT terminate and checks it exits.
"""

import hashlib
import json
import os
import socket
import sys
import threading
import time
from urllib.parse import urlparse

import faktory
from faktory import Worker

URL = os.environ["FAKTORY_URL"]


def raw(command):
    """One command on a fresh raw connection (HELLO with the password); its reply."""
    u = urlparse(URL)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        f = s.makefile("rwb")
        hi = json.loads(f.readline().decode()[len("+HI "):])
        hello = {"v": 2}
        if "s" in hi:
            d = hashlib.sha256((u.password + hi["s"]).encode()).digest()
            for _ in range(1, hi["i"]):
                d = hashlib.sha256(d).digest()
            hello["pwdhash"] = d.hex()
        f.write(("HELLO " + json.dumps(hello) + "\r\n").encode())
        f.flush()
        assert f.readline() == b"+OK\r\n"
        f.write((command + "\r\n").encode())
        f.flush()
        line = f.readline().decode()
        if line.startswith("$"):
            return json.loads(f.readline().decode())
        return line.strip()


def until(what, check, seconds=15):
    end = time.time() + seconds
    while time.time() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def tasks():
    t = raw("INFO")["faktory"]["tasks"]
    return t["Retries"]["size"], t["Dead"]["size"]


done = []
before = tasks()
with faktory.connection(URL) as client:
    for i in range(10):
        client.queue("py_welcome", args=("u%d@example.com" % i,), queue="py", retry=2)
    client.queue("py_boom", args=(1,), queue="py", retry=1)
    client.queue("py_boom", args=(2,), queue="py", retry=-1)

worker = Worker(faktory=URL, queues=["py"], concurrency=2, use_threads=True)
worker.send_heartbeat_every = 0.2
worker.register("py_welcome", lambda email: done.append(email))


def boom(n):
    raise RuntimeError("python job %d failed" % n)


worker.register("py_boom", boom)
signalled = []


def operator():
    until("10 jobs done", lambda: len(done) == 10)
    want = (before[0] + 1, before[1] + 1)
    until("retries and dead", lambda: tasks() == want)
    reply = raw(json.dumps({"wid": worker.worker_id, "state": "terminate"}).join(["QD-SIGNAL ", ""]))
    assert reply == "+OK", reply
    signalled.append(True)


ops = threading.Thread(target=operator, daemon=True)
ops.start()
try:
    worker.run()  # returns only by sys.exit once the worker has shut down
except SystemExit:
    pass
ops.join(timeout=1)
assert signalled, "the worker stopped before it was told to"
print("python: ok (%d jobs, retries +1, dead +1, stopped on terminate)" % len(done))
sys.exit(0)
