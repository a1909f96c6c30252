"""Inputs and clients that used to crash, freeze or cheat the gateway (issue #21's attack list):
each case fails on the code before its fix."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import default_graph_gateway, scripted_graph
from tests.test_conversations import PREFIX, SDK_KEY, _pings
from tests.loopback import free_port
from tests.upstream import wait_until

USER = [{"role": "user", "content": "hi"}]


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [254, 300, 1023])
@pytest.mark.parametrize("stream", [False, True])
def test_deep_nesting_in_a_pass_through_field_is_a_400(gateway, depth, stream):
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30, content=(
        b'{"model": "plain", "stream": %s, "messages": [{"role": "user", "content": "hi"}], "x": %s}'
        % (b"true" if stream else b"false", b"[" * depth + b"1" + b"]" * depth)))
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
def test_integers_beyond_64_bits_reach_the_upstream_as_written(gateway, upstream, stream):
    tool = (b'{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": '
            b'{"n": {"type": "integer", "maximum": 100000000000000000000000, "minimum": -123456789012345678901}}}}}')
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30, content=(
        b'{"model": "plain", "stream": %s, "messages": [{"role": "user", "content": "hi"}], "tools": [%s], '
        b'"x_ratio": 1.0, "x_count": 1}' % (b"true" if stream else b"false", tool)))
    assert resp.status_code == 200, resp.text
    raw = upstream.state.last().raw
    assert b'"maximum":100000000000000000000000' in raw and b'"minimum":-123456789012345678901' in raw
    assert b'"x_ratio":1.0' in raw and b'"x_count":1' in raw


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    gw = default_graph_gateway(tmp_path_factory.mktemp("embedded"), toolsets=False)
    yield gw
    gw.stop()


def test_fifty_thousand_messages_are_refused_at_once_and_do_not_freeze_the_process(embedded):
    messages = [{"role": "user", "content": "hi"}] * 50_000
    health: list[int] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            health.append(httpx.get(f"{embedded.url}/healthz", timeout=5).status_code)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        resp = httpx.post(f"{embedded.url}/v1/chat/completions", json={"model": "general", "messages": messages},
                          timeout=60)
    finally:
        done.set()
        prober.join()
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    assert health and set(health) == {200}


def test_a_non_streaming_client_that_leaves_stops_the_embedded_model(embedded):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{embedded.url}/v1/chat/completions", timeout=1.5, json={
            "model": "general", "max_tokens": 1500, "temperature": 1.0, "seed": 3,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]})
    assert wait_until(lambda: "client went away: generation stopped" in embedded.output(), timeout=30), \
        embedded.output()[-2000:]

    def gone_counted() -> bool:
        metrics = httpx.get(f"{embedded.url}/metrics").text
        return 'octogate_requests_total{key="",model="general",node="general",status="499"} 1.0' in metrics

    assert wait_until(gone_counted, timeout=10)


def test_a_turn_whose_append_fails_is_kept_until_redis_returns(upstream, gateway_factory, tmp_path):
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(tmp_path)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: _pings(port), timeout=10)
        graph = scripted_graph(upstream)
        graph["nodes"].append({"name": "slowish", "backend": {"model": "openai/slow", "api_base": upstream.base_url,
                                                              "timeout": 15}})
        graph["history"] = {"redis_url": f"redis://127.0.0.1:{port}/0", "key_prefix": PREFIX}
        gw = gateway_factory(graph)
        results: dict[str, httpx.Response] = {}
        cids = {"plain": f"c-{uuid.uuid4().hex}", "streamed": f"c-{uuid.uuid4().hex}"}
        before = sum(r.body.get("model") == "slow" for r in upstream.state.requests)

        def call(kind: str) -> None:
            results[kind] = httpx.post(f"{gw.url}/v1/chat/completions", timeout=60, headers={
                **SDK_KEY, "X-Conversation-Id": cids[kind]}, json={
                "model": "slowish", "stream": kind == "streamed", "messages": [{"role": "user", "content": kind}]})

        threads = [threading.Thread(target=call, args=(k,)) for k in cids]
        for t in threads:
            t.start()
        # both histories read, both answers on their way (the upstream takes 5 s): now Redis dies
        assert wait_until(lambda: sum(r.body.get("model") == "slow" for r in upstream.state.requests) >= before + 2,
                          timeout=10)
        server.kill()
        server.wait()
        for t in threads:
            t.join(60)
        assert results["plain"].status_code == 200 and results["plain"].headers["x-octogate-history"] == "pending"
        assert results["streamed"].status_code == 200 and results["streamed"].text.endswith("data: [DONE]\n\n")

        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)  # back, empty: it kept nothing itself
        assert wait_until(lambda: _pings(port), timeout=10)

        def stored(kind: str) -> bool:
            resp = httpx.get(f"{gw.url}/v1/conversations/{cids[kind]}", headers=SDK_KEY, timeout=5)
            return resp.status_code == 200 and [t["messages"] for t in resp.json()["turns"]] == [
            [{"role": "user", "content": kind}]]

        assert wait_until(lambda: stored("plain") and stored("streamed"), timeout=20)
    finally:
        server.kill()
        server.wait()
