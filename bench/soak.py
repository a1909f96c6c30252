#!/usr/bin/env python3
"""Soak: 100,000 chat requests through ONE ``octogate serve`` worker to a loopback upstream, and
what the gateway looks like before, during and after.

    .venv/bin/python bench/soak.py [--requests 100000] [--concurrency 24] [--max-seconds 1500]

The mix, by request number: 6 in 10 non-streaming, 3 in 10 streamed to the end (``[DONE]``), 1 in
10 streamed and dropped by the client after its first event (the connection is closed mid-stream).
The upstream is an aiohttp server in its own process (a canned completion; a 12-chunk stream with
a few milliseconds between chunks, so that a client that leaves does leave mid-stream: nginx's
canned stream of bench/overhead arrives in one piece). The load generator is aiohttp in this
process, ``--concurrency`` keep-alive connections.

Reported: errors (any status but 200, a completion that is not one, a stream without ``[DONE]``, a
dropped stream whose first event was not a chunk, a transport error), and the gateway process's RSS
and open file descriptors (``/proc/PID/status``, ``/proc/PID/fd``) at start (idle), every 10,000
requests (under load), and after the run (idle, client connections closed); then
``octogate_requests_in_flight`` from ``/metrics``. Targets (issue 21): 0 errors, RSS growth under
10% between 10,000 and the end, in-flight back to 0, file descriptors flat. Stops by itself after
``--requests`` or ``--max-seconds``; everything listens on 127.0.0.1 and every process it starts is
stopped on exit. Figures of a run are in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.conftest import start_gateway  # noqa: E402
from tests.loopback import free_port  # noqa: E402

KEY = "sk-soak"
BODY = {"model": "soak", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
COMPLETION = {
    "id": "chatcmpl-soak", "object": "chat.completion", "created": 1700000000, "model": "canned",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}
PIECES = ("Hello", "!", " How", " can", " I", " help", " you", " today", "?", " Ask", " away", ".")


# ------------------------------------------------------------------ the upstream (its own process)
def serve_upstream(port: int) -> None:
    import logging

    from aiohttp import web

    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # a dropped stream is the point, not news

    completion = json.dumps(COMPLETION).encode()

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return b"data: " + json.dumps({"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": 1700000000,
                                       "model": "canned", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                       "finish_reason": finish}]}).encode() + b"\n\n"

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=completion, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk({"role": "assistant", "content": ""}))
        for i, piece in enumerate(PIECES):
            await resp.write(chunk({"content": piece}))
            if i % 4 == 3:
                await asyncio.sleep(0.002)  # the stream takes a few ms: a client that leaves leaves mid-stream
        await resp.write(chunk({}, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "canned", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ------------------------------------------------------------------ the gateway process
def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_sockets(pid: int, upstream_port: int) -> str:
    """The process's TCP sockets by kind: to the upstream (its pool), from clients, listening."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    kinds: Counter = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] not in inodes:
                continue
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            kinds["listening" if cols[3] == "0A" else "upstream" if remote_port == upstream_port else "clients"] += 1
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))


@dataclass
class Sample:
    label: str
    done: int
    rss_kb: int
    fds: int
    seconds: float
    sockets: str = ""


@dataclass
class Run:
    total: int
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    kinds: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def error(self, what: str, detail: str) -> None:
        self.errors[what] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{what}: {detail[:300]}")


async def one(session: aiohttp.ClientSession, url: str, n: int, run: Run) -> None:
    kind = "json" if n % 10 < 6 else "stream" if n % 10 < 9 else "dropped"
    stream = kind != "json"
    body = {**BODY, "stream": True} if stream else BODY
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                run.error(f"{kind} {resp.status}", await resp.text())
                return
            if kind == "json":
                data = await resp.json()
                if data.get("object") != "chat.completion":
                    run.error("json not a completion", json.dumps(data))
                return
            first = await resp.content.readline()
            if not first.startswith(b"data: {"):
                run.error(f"{kind} first event", first.decode(errors="replace"))
                return
            if kind == "dropped":
                resp.close()  # the client goes away mid-stream: the connection is closed, not reused
                return
            rest = await resp.read()
            if not rest.rstrip().endswith(b"data: [DONE]"):
                run.error("stream without [DONE]", rest[-200:].decode(errors="replace"))
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        run.error(f"{kind} {type(exc).__name__}", str(exc))
    finally:
        run.kinds[kind] += 1


async def load(url: str, pid: int, upstream_port: int, run: Run, concurrency: int, deadline: float,
               every: int) -> None:
    numbers = itertools.count()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                     headers={"Authorization": f"Bearer {KEY}"}) as session:
        async def worker() -> None:
            while time.monotonic() < deadline:
                n = next(numbers)
                if n >= run.total:
                    return
                await one(session, url, n, run)
                run.done += 1
                if run.done % every == 0 or run.done == run.total:
                    run.samples.append(Sample(f"{run.done:,}", run.done, rss_kb(pid), open_fds(pid),
                                              time.monotonic() - run.started, tcp_sockets(pid, upstream_port)))
                    print(f"  {run.samples[-1]}", flush=True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def in_flight(base: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("octogate_requests_in_flight"))


async def settle(base: str, seconds: float = 10.0) -> tuple[float, float]:
    """``octogate_requests_in_flight`` once it reaches 0 (or after ``seconds``), and how long that took."""
    started = time.monotonic()
    value = await in_flight(base)
    while value and time.monotonic() - started < seconds:
        await asyncio.sleep(0.2)
        value = await in_flight(base)
    return value, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--max-seconds", type=float, default=1500, help="the run stops here even if not done")
    parser.add_argument("--every", type=int, default=10_000, help="sample RSS and fds every N requests")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="octogate-soak-"))
    port = free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(port)], start_new_session=True)
    gateway = None
    try:
        graph = {"server": {"api_keys": [KEY]}, "nodes": [{"name": "soak", "backend": {
            "model": "openai/canned", "api_base": f"http://127.0.0.1:{port}/v1", "api_key": "unused", "timeout": 10}}]}
        (tmp / "graph.yaml").write_text(yaml.safe_dump(graph))
        gateway = start_gateway(tmp / "graph.yaml", tmp / "octogate.log")
        pid = gateway.proc.pid
        run = Run(args.requests)
        run.samples.append(Sample("start (idle)", 0, rss_kb(pid), open_fds(pid), 0.0, tcp_sockets(pid, port)))
        print(f"octogate pid {pid} on {gateway.url}; upstream on 127.0.0.1:{port}; {args.requests:,} requests, "
              f"{args.concurrency} connections\n  {run.samples[0]}", flush=True)
        deadline = time.monotonic() + args.max_seconds
        asyncio.run(load(f"{gateway.url}/v1/chat/completions", pid, port, run, args.concurrency, deadline, args.every))
        elapsed = time.monotonic() - run.started
        left, took = asyncio.run(settle(gateway.url))
        time.sleep(1)
        run.samples.append(Sample("after (idle)", run.done, rss_kb(pid), open_fds(pid), time.monotonic() - run.started,
                                  tcp_sockets(pid, port)))
    finally:
        if gateway is not None:
            gateway.stop()
        os.killpg(upstream.pid, signal.SIGTERM)
        upstream.wait(10)

    at = {s.done: s for s in run.samples if s.label[0].isdigit()}
    s10 = at.get(min(at, key=lambda d: abs(d - 10_000))) if at else None
    end = at.get(max(at)) if at else None
    growth = (end.rss_kb - s10.rss_kb) / s10.rss_kb * 100 if s10 and end else float("nan")
    errors = sum(run.errors.values())
    print(f"\n{run.done:,} requests in {elapsed:.0f} s ({run.done / elapsed:.0f} req/s): {dict(run.kinds)}; "
          f"errors {errors} {dict(run.errors)}")
    for example in run.examples:
        print("  ", example)
    print(f"{'point':>14} {'requests':>9} {'RSS MB':>8} {'fds':>5} {'s':>6}  TCP sockets")
    for s in run.samples:
        print(f"{s.label:>14} {s.done:>9,} {s.rss_kb / 1024:>8.1f} {s.fds:>5} {s.seconds:>6.0f}  {s.sockets}")
    print(f"RSS growth {s10.label if s10 else '?'} -> {end.label if end else '?'}: {growth:+.1f}%; "
          f"octogate_requests_in_flight after the run: {left:g} (read {took:.1f} s after the last request)")
    ok = (errors == 0 and run.done == args.requests and growth < 10 and left == 0
          and s10 is not None and end is not None and end.fds <= s10.fds)
    if args.json:
        args.json.write_text(json.dumps({
            "requests": run.done, "seconds": elapsed, "kinds": run.kinds, "errors": run.errors,
            "samples": [s.__dict__ for s in run.samples], "rss_growth_percent": growth, "in_flight_after": left,
            "pass": ok}, indent=1))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
