"""Per-key rate limits shared by two gateway processes through a real Redis, OpenAI's headers, the
key label on metrics, and failing open when that Redis is killed."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import scripted_graph
from tests.test_history import RedisServer, redis_server  # noqa: F401  (fixture)

USER = [{"role": "user", "content": "hi"}]


def _graph(upstream, redis_url: str, **team) -> dict:
    graph = scripted_graph(upstream)
    graph["server"] = {
        "api_keys": [{"name": "team-a", "key": "env:TEST_TEAM_A_KEY", **team}, "env:TEST_OTHER_KEY"],
        "rate_limits": {"redis_url": redis_url, "key_prefix": f"octogate-test-{uuid.uuid4().hex}"},
    }
    return graph


ENV = {"TEST_TEAM_A_KEY": "team-a-secret", "TEST_OTHER_KEY": "other-secret"}
TEAM_A = {"Authorization": "Bearer team-a-secret"}


def _ask(gw, headers=TEAM_A, model="plain") -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", json={"model": model, "messages": USER}, headers=headers,
                      timeout=30)


def test_requests_per_minute_hold_across_two_gateway_processes(upstream, gateway_factory):
    graph = _graph(upstream, "redis://127.0.0.1:6379/0", requests_per_minute=4)
    one, two = gateway_factory(graph, env=ENV), gateway_factory(graph, env=ENV)
    answers = [_ask(gw) for gw in (one, two, one, two)]
    assert [r.status_code for r in answers] == [200, 200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["3", "2", "1", "0"]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "4"
    assert answers[0].headers["x-ratelimit-reset-requests"].endswith("s")
    refused = _ask(one)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert "team-a" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert _ask(two).status_code == 429
    # another key has its own budget (none here), and the metrics name keys, never show them
    other = _ask(one, {"Authorization": "Bearer other-secret"})
    assert other.status_code == 200 and "x-ratelimit-limit-requests" not in other.headers
    metrics = httpx.get(f"{one.url}/metrics").text
    assert 'key="team-a"' in metrics and "team-a-secret" not in metrics
    assert 'octogate_rate_limited_total{key="team-a",limit="requests"}' in metrics


def test_tokens_per_minute_count_what_the_backend_reports(upstream, gateway_factory):
    # the scripted upstream reports 5 prompt tokens and one per word of its answer ("echo: hi": 2)
    graph = _graph(upstream, "redis://127.0.0.1:6379/0", tokens_per_minute=15)
    gw = gateway_factory(graph, env=ENV)
    first, second = _ask(gw), _ask(gw)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "15"
    assert first.headers["x-ratelimit-remaining-tokens"] == "15"
    assert second.headers["x-ratelimit-remaining-tokens"] == "8"
    third = _ask(gw)  # 14 of 15 spent: still admitted, and it spends the rest
    assert third.status_code == 200
    refused = _ask(gw)
    assert refused.status_code == 429 and "tokens per minute" in refused.json()["error"]["message"]
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'octogate_tokens_total{direction="prompt",key="team-a",node="plain"} 15.0' in metrics


def test_limits_fail_open_when_redis_dies(upstream, gateway_factory, redis_server):  # noqa: F811
    redis_server.start()
    gw = gateway_factory(_graph(upstream, redis_server.url, requests_per_minute=2), env=ENV)
    assert [_ask(gw).status_code for _ in range(3)] == [200, 200, 429]
    redis_server.kill()
    assert [_ask(gw).status_code for _ in range(3)] == [200, 200, 200]
    ready = httpx.get(f"{gw.url}/readyz").json()
    assert ready["status"] == "degraded" and ready["rate_limits"] == "degraded"
    metrics = httpx.get(f"{gw.url}/metrics").text
    unchecked = [line for line in metrics.splitlines() if line.startswith("octogate_rate_limit_unchecked_total ")]
    assert unchecked and float(unchecked[0].split()[1]) >= 3
