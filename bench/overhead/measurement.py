"""Measuring a running target with wrk: the concurrencies every target is measured at, one
``Cell`` of figures per target, scenario ("chat" or "stream") and concurrency (requests/s,
latency percentiles from wrk's own histogram, errors, the proxy's CPU time and nginx's count of
the requests that reached it), the warm-up before a target's first cell, and the per-figure
median of a cell over rounds."""

from __future__ import annotations

import json
import statistics
import subprocess
from dataclasses import dataclass
from typing import Any

from .canned_upstream import Upstream, request_body, responses_body
from .cpu_layout import Layout
from .loopback_http import auth_key
from .paths import WRK_SCRIPT
from .subprocesses import subprocess_env
from .targets import Running

CONCURRENCIES = (1, 16)
# POST /v1/responses against the same canned chat upstream, translated by octogate both ways
# (octogate only: "direct" has no such endpoint, and LiteLLM would ask the upstream's own /responses).
RESPONSES_SCENARIOS = ("responses", "responses-stream")


def scenarios_of(target: str, scenarios: list[str]) -> list[str]:
    return [s for s in scenarios if target == "octogate" or s not in RESPONSES_SCENARIOS]


@dataclass
class Cell:
    target: str
    scenario: str  # "chat", "stream", "responses" or "responses-stream"
    connections: int
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: dict[str, int]
    wrk_threads: int
    # CPU the proxy process group used during the cell: per request (ms) and in cores (1.0 = one
    # core busy). Contention on a shared machine stretches wall-clock figures much more than
    # these, so they are the steadier way to compare two proxies. None for "direct".
    proxy_cpu_ms_per_req: float | None = None
    proxy_cpu_cores: float | None = None
    # Requests nginx served during the cell (stub_status); should equal `requests` for every target.
    upstream_requests: int | None = None

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def run_wrk(url: str, body: str, connections: int, duration: int, layout: Layout) -> dict[str, Any]:
    threads = 1 if connections == 1 else min(2, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "--latency",
           "-s", str(WRK_SCRIPT), url]
    if layout.pinned:
        cmd = ["taskset", "-c", str(layout.load_cpus), *cmd]
    env = subprocess_env(BENCH_BODY=body, BENCH_AUTH=auth_key() or "")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 60,
                         start_new_session=True)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    result = None
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result = json.loads(line[len("BENCH_RESULT "):])
    if result is None:
        raise RuntimeError(f"no BENCH_RESULT line in wrk output:\n{out.stdout}\n{out.stderr}")
    # Cross-check with wrk's own summary (what a person reading wrk would see).
    for line in out.stdout.splitlines():
        s = line.strip()
        if s.startswith("Requests/sec:"):
            result["wrk_requests_per_sec"] = float(s.split(":", 1)[1])
        elif s.startswith("Non-2xx or 3xx responses:"):
            result["wrk_non_2xx"] = int(s.split(":", 1)[1])
    result["threads"] = threads
    result["stdout"] = out.stdout
    return result


def scenario_target(run: Running, scenario: str) -> tuple[str, str]:
    """The URL and request body for a scenario on a running target."""
    stream = scenario in ("stream", "responses-stream")
    url = run.url
    if scenario in RESPONSES_SCENARIOS:
        return (url.replace("/v1/chat/completions", "/v1/responses"),
                responses_body(run.stream_model if stream else run.model, stream))
    if stream and run.name == "direct":  # nginx serves the canned SSE on its own path
        url = url.replace("/v1/chat/completions", "/sse/v1/chat/completions")
    return url, request_body(run.stream_model if stream else run.model, stream)


def measure(run: Running, up: Upstream, scenario: str, connections: int, duration: int, layout: Layout) -> Cell:
    url, body = scenario_target(run, scenario)
    up.wait_quiet()
    cpu0 = run.proc.cpu_seconds() if run.proc is not None else None
    served0 = up.requests_served()
    r = run_wrk(url, body, connections, duration, layout)
    cpu = run.proc.cpu_seconds() - cpu0 if run.proc is not None and cpu0 is not None else None
    # -1 for the stub_status request itself; a proxy may still be finishing requests wrk gave up on.
    upstream = up.requests_served() - served0 - 1
    lat = r["latency_us"]
    dur = r["duration_us"] / 1e6
    errs = r["errors"]
    return Cell(
        upstream_requests=upstream,
        proxy_cpu_ms_per_req=1000 * cpu / r["requests"] if cpu is not None and r["requests"] else None,
        proxy_cpu_cores=cpu / dur if cpu is not None and dur > 0 else None,
        target=run.name, scenario=scenario, connections=connections,
        rps=r["requests"] / dur if dur > 0 else 0.0,
        p50_ms=lat["p50"] / 1000, p75_ms=lat["p75"] / 1000, p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000, max_ms=lat["max"] / 1000,
        requests=r["requests"], duration_s=dur, non_2xx=errs["status"],
        socket_errors={k: errs[k] for k in ("connect", "read", "write", "timeout")},
        wrk_threads=r["threads"],
    )


def warm_up(run: Running, scenarios: list[str], seconds: int, layout: Layout) -> None:
    if seconds <= 0:
        return
    for scenario in scenarios_of(run.name, scenarios):
        url, body = scenario_target(run, scenario)
        run_wrk(url, body, max(CONCURRENCIES), seconds, layout)


def median_cell(cells: list[Cell]) -> Cell:
    """Per-figure median over rounds (each figure on its own)."""
    if len(cells) == 1:
        return cells[0]
    first = cells[0]

    def med(attr: str) -> float:
        return statistics.median(getattr(c, attr) for c in cells)

    return Cell(
        target=first.target, scenario=first.scenario, connections=first.connections,
        rps=med("rps"), p50_ms=med("p50_ms"), p75_ms=med("p75_ms"), p90_ms=med("p90_ms"),
        p99_ms=med("p99_ms"), max_ms=max(c.max_ms for c in cells),
        requests=sum(c.requests for c in cells), duration_s=sum(c.duration_s for c in cells),
        non_2xx=sum(c.non_2xx for c in cells),
        socket_errors={k: sum(c.socket_errors[k] for c in cells) for k in first.socket_errors},
        wrk_threads=first.wrk_threads,
        proxy_cpu_ms_per_req=None if first.proxy_cpu_ms_per_req is None else med("proxy_cpu_ms_per_req"),
        proxy_cpu_cores=None if first.proxy_cpu_cores is None else med("proxy_cpu_cores"),
        upstream_requests=sum(c.upstream_requests or 0 for c in cells),
    )
