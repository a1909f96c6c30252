"""Fallback chains with real processes on loopback: when every replica of a node has failed before
answering, the next node of its chain answers with its own persona, and the response says so."""

from __future__ import annotations

import httpx
import pytest

from tests.test_replicas import ReplicaProcess

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
def three():
    started = [ReplicaProcess(n).start() for n in ("a", "b", "c")]
    yield started
    for r in started:
        r.kill()


def _backend(*replicas: ReplicaProcess, timeout: float = 1) -> dict:
    return {"model": "openai/m", "api_base": [r.api_base for r in replicas], "timeout": timeout, "retries": 1,
            "cooldown": {"failures": 50, "seconds": 30}}


def _graph(a, b, c, **extra) -> dict:
    return {**extra, "nodes": [
        {"name": "special", "persona": "You are the specialist.", "backend": _backend(a, b), "fallbacks": ["general"]},
        {"name": "general", "persona": "You are the generalist.", "backend": _backend(c)},
    ]}


def _metric(gw, reason: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith("octogate_fallbacks_total{") and f'reason="{reason}"' in line \
                and 'from="special"' in line and 'to="general"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("mode, reason", [("error500", "backend_error"), ("hang", "backend_timeout"),
                                          ("ratelimit", "rate_limited"), ("reset", "backend_error")])
def test_every_replica_failing_sends_the_request_to_the_fallback(three, gateway_factory, mode, reason):
    a, b, c = three
    a.set(mode)
    b.set(mode)
    gw = gateway_factory(_graph(a, b, c))
    for stream in (False, True):
        resp = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                          json={"model": "special", "messages": USER, "stream": stream})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-octogate-node"] == "general"
        assert resp.headers["x-octogate-fallback"] == reason
        assert (resp.json()["choices"][0]["message"]["content"] == "c: hello") if not stream else '"content":"c:"' in resp.text
    assert [call["first_message"] for call in c.calls()] == ["You are the generalist."] * 2
    assert a.calls() and b.calls()
    assert _metric(gw, reason) == 2


def test_a_healthy_node_answers_itself(three, gateway_factory):
    a, b, c = three
    gw = gateway_factory(_graph(a, b, c))
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "special", "messages": USER}, timeout=30)
    assert resp.headers["x-octogate-node"] == "special"
    assert "x-octogate-fallback" not in resp.headers
    assert c.calls() == []


def test_the_requests_own_fault_does_not_fall_back(three, gateway_factory):
    a, b, c = three
    a.set("error400")
    b.set("error400")
    gw = gateway_factory(_graph(a, b, c))
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "special", "messages": USER}, timeout=30)
    assert resp.status_code == 400
    assert c.calls() == []


def test_the_last_node_of_the_chain_fails_with_its_own_error(three, gateway_factory):
    a, b, c = three
    for r in three:
        r.set("error500")
    gw = gateway_factory(_graph(a, b, c))
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "special", "messages": USER}, timeout=30)
    assert resp.status_code == 502
    assert "c is on fire" in resp.json()["error"]["message"]


def test_the_routers_fallback_node_obeys_its_own_fallbacks(three, gateway_factory):
    a, b, c = three
    a.set("error500")
    graph = {
        # an SGLang router nobody answers: every decision falls back to `general`, whose backend is down
        "router": {"engine": "sglang", "base_url": "http://127.0.0.1:9", "fallback": "general", "timeout": 1},
        "nodes": [
            {"name": "general", "token": 0, "backend": _backend(a), "fallbacks": ["spare"]},
            {"name": "spare", "token": 1, "persona": "You are the spare.", "backend": _backend(c)},
        ]}
    gw = gateway_factory(graph)
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "octopus", "messages": USER}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-octogate-node"] == "spare"
    assert resp.headers["x-octogate-fallback"] == "backend_error"  # the later fallback's reason wins
    assert c.calls()[-1]["first_message"] == "You are the spare."
