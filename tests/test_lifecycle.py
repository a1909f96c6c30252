"""Graceful shutdown and config reload of a real ``octogate serve``: SIGTERM lets requests in flight
finish; SIGHUP and POST /admin/reload swap in a valid graph and refuse an invalid one."""

from __future__ import annotations

import signal
import threading

import httpx
import yaml

from tests.conftest import start_gateway
from tests.upstream import wait_until

USER = [{"role": "user", "content": "hi"}]


def _graph(upstream, *names: str, **server) -> dict:
    return {"server": server, "nodes": [
        {"name": n, "backend": {"model": f"openai/{'slow' if n == 'slow' else 'echo'}", "api_base": upstream.base_url,
                                "timeout": 10}} for n in names]}


def _models(gw) -> list[str]:
    return [m["id"] for m in httpx.get(f"{gw.url}/v1/models", timeout=10).json()["data"]]


def test_sigterm_lets_requests_in_flight_finish(upstream, tmp_path):
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump(_graph(upstream, "slow", shutdown_grace_seconds=20)))
    gw = start_gateway(config, tmp_path / "octogate.log")
    results: list[httpx.Response | Exception] = []

    def call() -> None:
        try:
            results.append(httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "slow", "messages": USER},
                                      timeout=30))
        except Exception as exc:  # noqa: BLE001 - the test counts it
            results.append(exc)

    def slow_calls() -> int:
        return sum(r.body.get("model") == "slow" for r in upstream.state.requests)

    before = slow_calls()
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    assert wait_until(lambda: slow_calls() >= before + 3, timeout=10)
    gw.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert [getattr(r, "status_code", r) for r in results] == [200, 200, 200]
    # uvicorn re-raises the signal once it has drained: the process ends by SIGTERM, after the requests
    assert gw.proc.wait(30) in (0, -signal.SIGTERM)
    assert "Finished server process" in gw.output()
    gw.stop()


def test_sighup_swaps_in_a_valid_graph_and_refuses_an_invalid_one(upstream, tmp_path):
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump(_graph(upstream, "a")))
    gw = start_gateway(config, tmp_path / "octogate.log")
    try:
        assert _models(gw) == ["a"]
        config.write_text(yaml.safe_dump(_graph(upstream, "a", "b")))
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: _models(gw) == ["a", "b"], timeout=20)
        resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "b", "messages": USER}, timeout=10)
        assert resp.status_code == 200
        config.write_text("nodes:\n  - {name: c, backend: nowhere}\n")
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "config reload refused" in gw.output(), timeout=20)
        assert "nodes[0].backend: unknown backend 'nowhere'" in gw.output()
        assert _models(gw) == ["a", "b"]
        assert gw.proc.poll() is None
    finally:
        gw.stop()


def test_admin_reload_needs_an_admin_key_and_reports_a_bad_file(upstream, tmp_path, monkeypatch):
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump(_graph(upstream, "a", admin_keys=["env:TEST_ADMIN_KEY"])))
    gw = start_gateway(config, tmp_path / "octogate.log", env={"TEST_ADMIN_KEY": "admin-secret"})
    try:
        url = f"{gw.url}/admin/reload"
        assert httpx.post(url, timeout=10).status_code == 401
        assert httpx.post(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        admin = {"Authorization": "Bearer admin-secret"}
        config.write_text(yaml.safe_dump(_graph(upstream, "a", "b", admin_keys=["env:TEST_ADMIN_KEY"])))
        resp = httpx.post(url, headers=admin, timeout=30)
        assert resp.status_code == 200 and resp.json()["nodes"] == ["a", "b"]
        assert _models(gw) == ["a", "b"]
        config.write_text("nodes:\n  - {name: a, token: 1, backend: {model: openai/x, api_base: 'http://h/v1'}}\n"
                          "  - {name: b, token: 1, backend: {model: openai/x, api_base: 'http://h/v1'}}\n")
        resp = httpx.post(url, headers=admin, timeout=30)
        assert resp.status_code == 400
        assert "nodes[1].token: token 1 is already used" in resp.json()["error"]["message"]
        assert _models(gw) == ["a", "b"]
    finally:
        gw.stop()


def test_admin_reload_is_closed_without_admin_keys(upstream, tmp_path):
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump(_graph(upstream, "a")))
    gw = start_gateway(config, tmp_path / "octogate.log")
    try:
        resp = httpx.post(f"{gw.url}/admin/reload", headers={"Authorization": "Bearer anything"}, timeout=10)
        assert resp.status_code == 403
        assert resp.json()["error"]["code"] == "admin_keys_not_configured"
    finally:
        gw.stop()


def test_a_request_in_flight_finishes_on_the_graph_it_started_on(upstream, tmp_path):
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump(_graph(upstream, "slow", "a")))
    gw = start_gateway(config, tmp_path / "octogate.log")
    try:
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(httpx.post(
            f"{gw.url}/v1/chat/completions", json={"model": "slow", "messages": USER}, timeout=30).status_code))
        before = sum(r.body.get("model") == "slow" for r in upstream.state.requests)
        t.start()
        assert wait_until(lambda: sum(r.body.get("model") == "slow" for r in upstream.state.requests) > before, 10)
        config.write_text(yaml.safe_dump(_graph(upstream, "a")))  # the node in use disappears
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: _models(gw) == ["a"], timeout=20)
        t.join(30)
        assert result == [200]
    finally:
        gw.stop()
