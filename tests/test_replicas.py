"""Replicas, retries and cooldowns, with real processes on loopback: two replicas of an upstream
(tests/replica_upstream.py), each told how to fail, behind a real ``octogate serve``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import REPO
from tests.loopback import free_port
from tests.upstream import wait_until

USER = [{"role": "user", "content": "hello"}]


class ReplicaProcess:
    def __init__(self, name: str):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_base = f"{self.url}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ReplicaProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.replica_upstream", str(self.port), self.name],
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(self._answers, timeout=20), f"replica {self.name} did not start"
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/stats", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def set(self, mode: str, times: int | None = None, **extra) -> None:
        httpx.post(f"{self.url}/control", json={"mode": mode, "times": times, **extra}, timeout=5).raise_for_status()

    def calls(self) -> list[dict]:
        return httpx.get(f"{self.url}/stats", timeout=5).json()["calls"]


@pytest.fixture
def replicas():
    started = [ReplicaProcess("a").start(), ReplicaProcess("b").start()]
    yield started
    for r in started:
        r.kill()


def graph(*replicas: ReplicaProcess, timeout: float = 2, cooldown_seconds: float = 30, retries: int = 2,
          **node) -> dict:
    return {"nodes": [{"name": "m", "backend": {
        "model": "openai/m", "api_base": [r.api_base for r in replicas], "timeout": timeout, "retries": retries,
        "cooldown": {"failures": 3, "seconds": cooldown_seconds}}, **node}]}


def ask(gw, stream: bool = False) -> str:
    client = gw.client(timeout=30)
    if not stream:
        return client.chat.completions.create(model="m", messages=USER).choices[0].message.content
    return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="m", messages=USER, stream=True) if c.choices)


def test_calls_spread_over_the_replicas(replicas, gateway_factory):
    a, b = replicas
    gw = gateway_factory(graph(a, b))
    answers = [ask(gw, stream=i % 2 == 1) for i in range(10)]
    assert all(text.endswith(": hello") for text in answers)
    assert len(a.calls()) >= 3 and len(b.calls()) >= 3  # sequential calls alternate (ties in turn)


@pytest.mark.parametrize("mode", ["error500", "reset", "hang", "ratelimit"])
def test_a_failing_replica_is_retried_on_the_other(replicas, gateway_factory, mode):
    a, b = replicas
    a.set(mode)
    gw = gateway_factory(graph(a, b, timeout=1))
    for stream in (False, True):
        for _ in range(2):
            assert ask(gw, stream) == "b: hello"
    assert a.calls(), "the failing replica was tried"
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'octogate_replica_outcomes_total{backend="nodes.m.backend",outcome="ok",replica="' + b.api_base in metrics


def test_retry_after_is_waited_out_on_the_only_replica(replicas, gateway_factory):
    a, _ = replicas
    a.set("ratelimit", times=1, retry_after=1)
    gw = gateway_factory(graph(a, timeout=5))
    assert ask(gw) == "a: hello"
    first, second = a.calls()
    assert first["mode"] == "ratelimit" and second["mode"] == "ok"
    assert second["at"] - first["at"] >= 1.0  # not retried before the upstream said it could be


def test_a_rate_limit_longer_than_the_timeout_is_not_waited_out(replicas, gateway_factory):
    a, _ = replicas
    a.set("ratelimit", retry_after=60)
    gw = gateway_factory(graph(a, timeout=2))
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": USER}, timeout=30)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "60"
    assert len(a.calls()) == 1


def test_the_requests_own_fault_is_never_retried(replicas, gateway_factory):
    a, b = replicas
    a.set("error400")
    b.set("error400")
    gw = gateway_factory(graph(a, b))
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": USER}, timeout=30)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "temperature"
    assert len(a.calls()) + len(b.calls()) == 1


def test_nothing_is_retried_after_the_first_chunk(replicas, gateway_factory):
    a, b = replicas
    a.set("dies")
    b.set("dies")
    gw = gateway_factory(graph(a, b))
    with pytest.raises(openai.APIError):
        ask(gw, stream=True)
    assert len(a.calls()) + len(b.calls()) == 1


def test_a_replica_cools_down_and_comes_back(replicas, gateway_factory):
    a, b = replicas
    a.set("error500")
    gw = gateway_factory(graph(a, b, cooldown_seconds=2))
    for _ in range(8):
        assert ask(gw) == "b: hello"
    tried = len(a.calls())
    assert tried == 3, "three failures in a row, then the replica is skipped"
    states = httpx.get(f"{gw.url}/readyz").json()
    assert states["status"] == "ready"  # the other replica serves: the backend is up
    assert states["replicas"]["nodes.m.backend"][a.api_base].startswith("cooling down")
    a.set("ok")
    time.sleep(2.2)
    answers = {ask(gw) for _ in range(6)}
    assert answers == {"a: hello", "b: hello"}, "after its cooldown a probe found the replica back"
    assert httpx.get(f"{gw.url}/readyz").json()["replicas"]["nodes.m.backend"][a.api_base] == "healthy"


def test_a_replica_killed_under_load_fails_no_request(replicas, gateway_factory):
    a, b = replicas
    gw = gateway_factory(graph(a, b, timeout=5))
    failures: list[str] = []
    done = [0]
    lock = threading.Lock()

    def load(worker: int) -> None:
        client = gw.client(timeout=30)
        for i in range(40):
            try:
                if (worker + i) % 2:
                    text = client.chat.completions.create(model="m", messages=USER).choices[0].message.content
                else:
                    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                        model="m", messages=USER, stream=True) if c.choices)
                if not text.endswith(": hello"):
                    failures.append(f"odd answer {text!r}")
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                failures.append(repr(exc))
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    assert wait_until(lambda: done[0] >= 40, timeout=60)
    a.kill()
    for t in threads:
        t.join(120)
    assert done[0] == 160
    assert failures == []
    assert b.calls()


def test_every_replica_down_is_an_error_naming_the_last_failure(replicas, gateway_factory):
    a, b = replicas
    a.set("error500")
    b.set("error500")
    gw = gateway_factory(graph(a, b))
    for _ in range(2):
        resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": USER}, timeout=30)
        assert resp.status_code == 502
        assert "on fire" in resp.json()["error"]["message"]
    assert len(a.calls()) + len(b.calls()) == 6  # each call and its two retries
    # Both replicas now cool down: the next call fails at once, saying why, and readiness says so.
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": USER}, timeout=30)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_cooling_down"
    assert "on fire" in resp.json()["error"]["message"]
    assert len(a.calls()) + len(b.calls()) == 6
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unready"
    assert all(s.startswith("cooling down") for s in ready.json()["replicas"]["nodes.m.backend"].values())
