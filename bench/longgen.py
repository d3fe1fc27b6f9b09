#!/usr/bin/env python3
"""Scenario 9 of bench/run.sh: one long generation.

    longgen.py --port P --workers PID,PID --query Q --tokens N
               [--redis PORT] --label L > s9-L.json

Starts one background job (Prefer: respond-async) on /long?Q, follows it
from both workers (GET /jobs/ID with Accept: text/event-stream, retried
until one follower is on the worker running the job and one on the other,
which reads it through a mirror), samples both workers' VmRSS every
100 ms until the job is over, reads the job (JSON), its Redis keys
(MEMORY USAGE, INFO used_memory), then resumes it with Last-Event-ID from
the start and from the middle, timing each resume and counting the
workers' CPU.  Prints one JSON object.  The response header X-Worker
($pid) says which worker answered.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

HZ = os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pids):
    t = 0
    for pid in pids:
        with open("/proc/%d/stat" % pid) as f:
            v = f.read().rsplit(")", 1)[1].split()
        t += int(v[11]) + int(v[12])
    return t / HZ


class Sampler(threading.Thread):
    """VmRSS of each worker every 100 ms: the last and the largest."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.last = {p: rss_kb(p) for p in pids}
        self.max = dict(self.last)
        self.stop = False

    def run(self):
        while not self.stop:
            for p in self.pids:
                v = rss_kb(p)
                self.last[p] = v
                self.max[p] = max(self.max[p], v)
            time.sleep(0.1)


def open_get(port, path, headers, method="GET"):
    """A request (HTTP/1.0): the socket, the status, the headers, the
    body read so far."""
    s = socket.create_connection(("127.0.0.1", port))
    req = "%s %s HTTP/1.0\r\nHost: bench\r\n" % (method, path)
    for k, v in headers.items():
        req += "%s: %s\r\n" % (k, v)
    s.sendall((req + "\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    h = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        h[k.strip().lower()] = v.strip()
    return s, status, h, body


def get_full(port, path, headers, method="GET"):
    """A request: the status, the headers and the whole body."""
    s, status, h, body = open_get(port, path, headers, method)
    chunks = [body]
    while True:
        d = s.recv(262144)
        if not d:
            break
        chunks.append(d)
    s.close()
    return status, h, b"".join(chunks)


def read_all(s, body):
    """The rest of a close-delimited body: its size and whether the
    stream ended with the complete event."""
    chunks = [body]
    while True:
        d = s.recv(262144)
        if not d:
            break
        chunks.append(d)
    s.close()
    data = b"".join(chunks)
    return len(data), b"event: complete" in data


class Follower(threading.Thread):
    def __init__(self, s, body):
        super().__init__(daemon=True)
        self.s, self.body = s, body
        self.result = None

    def run(self):
        t = time.monotonic()
        n, complete = read_all(self.s, self.body)
        self.result = {"bytes": n, "complete": complete,
                       "secs": round(time.monotonic() - t, 3)}


def redis(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port)] + list(args),
                         capture_output=True, text=True, check=True)
    return out.stdout


def used_memory(port):
    for line in redis(port, "info", "memory").splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    return -1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", required=True)
    ap.add_argument("--query", required=True)
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--redis", type=int)
    ap.add_argument("--label", required=True)
    ap.add_argument("--resumes", type=int, default=10)
    a = ap.parse_args()

    pids = [int(p) for p in a.workers.split(",")]
    out = {"label": a.label, "tokens_asked": a.tokens, "query": a.query}

    time.sleep(1)
    idle = {p: rss_kb(p) for p in pids}
    mem0 = used_memory(a.redis) if a.redis else -1
    sampler = Sampler(pids)
    sampler.start()

    # the job, in the background (a POST): no client of its own
    t0 = time.monotonic()
    status, h, body = get_full(a.port, "/long?" + a.query,
                               {"Prefer": "respond-async",
                                "Content-Length": "0"}, "POST")
    if status != 202:
        out["error"] = "the job did not start: status %d" % status
        print(json.dumps(out))
        return 1
    job = json.loads(body.decode())["job"]
    owner = int(h.get("x-worker", "0"))
    out["job"] = job
    out["owner_is_worker"] = pids.index(owner) if owner in pids else -1

    # one follower on each worker: the owner's reads the job itself, the
    # other's a mirror of the store's copy
    followers = {}
    for _ in range(40):
        if len(followers) == len(pids):
            break
        s, status, h, body = open_get(a.port, "/jobs/" + job,
                                      {"Accept": "text/event-stream"})
        w = int(h.get("x-worker", "0"))
        if status != 200 or w in followers:
            s.close()
            continue
        f = Follower(s, body)
        f.start()
        followers[w] = f

    for f in followers.values():
        f.join(a.tokens / 100 + 120)
    out["job_secs"] = round(time.monotonic() - t0, 3)
    time.sleep(0.3)
    sampler.stop = True
    sampler.join()

    end = {p: rss_kb(p) for p in pids}
    other = [p for p in pids if p != owner]
    out["owner"] = {"idle_kb": idle.get(owner, -1),
                    "max_kb": sampler.max.get(owner, -1),
                    "end_kb": end.get(owner, -1),
                    "follower": followers[owner].result
                    if owner in followers else None}
    if other:
        o = other[0]
        out["other"] = {"idle_kb": idle[o], "max_kb": sampler.max[o],
                        "end_kb": end[o],
                        "follower": followers[o].result
                        if o in followers else None}

    # the job as the job API gives it
    status, h, body = get_full(a.port, "/jobs/" + job,
                               {"Accept": "application/json"})
    j = json.loads(body.decode()) if status == 200 else {}
    out["state"] = j.get("state")
    out["events"] = j.get("events", -1)
    out["text_bytes"] = len(j.get("text", "").encode())
    out["usage"] = j.get("usage")
    out["error"] = j.get("error")

    # what Redis holds for it
    if a.redis:
        keys = [k for k in redis(a.redis, "--scan", "--pattern",
                                 "*" + job + "*").split() if k]
        out["redis_keys"] = {}
        for k in keys:
            u = redis(a.redis, "memory", "usage", k, "samples", "0").strip()
            out["redis_keys"][k] = {"type": redis(a.redis, "type",
                                                  k).strip(),
                                    "bytes": int(u or -1)}
        out["redis_used_memory_growth"] = used_memory(a.redis) - mem0

    # resumes: from the start (the bare id) and from the middle
    out["resume"] = {}
    mid = max(1, out["events"] // 2)
    for name, lei in (("start", job), ("middle", "%s:%d" % (job, mid))):
        rows = []
        for _ in range(a.resumes):
            c0 = cpu_s(pids)
            t = time.monotonic()
            s, status, h, body = open_get(a.port, "/long",
                                          {"Last-Event-ID": lei})
            first = time.monotonic() - t
            n, complete = read_all(s, body)
            rows.append({"status": status, "bytes": n,
                         "complete": complete,
                         "first_ms": round(first * 1000, 2),
                         "total_ms": round((time.monotonic() - t) * 1000,
                                           2),
                         "cpu_s": round(cpu_s(pids) - c0, 3),
                         "owner": int(h.get("x-worker", "0")) == owner})
        out["resume"][name] = rows
    out["resume_mid_event"] = mid

    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
