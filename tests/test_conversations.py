"""Conversations in Redis through the gateway: the openai SDK -> `octogate serve` -> scripted upstream,
with the real Redis on 127.0.0.1:6379 (keys under a per-run prefix) and a redis-server the test kills."""

from __future__ import annotations

import subprocess
import uuid

import httpx
import openai
import pytest
import redis

from tests.conftest import scripted_graph
from tests.loopback import free_port
from tests.upstream import wait_until

PREFIX = f"octogate-test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module", autouse=True)
def _clean_keys():
    yield
    r = redis.Redis(host="127.0.0.1", port=6379)
    for key in r.scan_iter(f"{PREFIX}*"):
        r.delete(key)


def history_graph(upstream, redis_url="redis://127.0.0.1:6379/0", **server) -> dict:
    graph = scripted_graph(upstream, **server)
    graph["history"] = {"redis_url": redis_url, "key_prefix": PREFIX, "max_turns": 10}
    return graph


@pytest.fixture(scope="module")
def gw(upstream, gateway_factory):
    return gateway_factory(history_graph(upstream))


SDK_KEY = {"Authorization": "Bearer unused"}  # what Gateway.client() sends; conversations are scoped by it


def ask(client: openai.OpenAI, cid: str, text: str, **kwargs):
    return client.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        extra_headers={"X-Conversation-Id": cid}, **kwargs)


def test_history_is_prepended_after_system_messages(gw, upstream):
    client, cid = gw.client(), f"c-{uuid.uuid4().hex}"
    ask(client, cid, "my name is Ada")
    first = upstream.state.last().body["messages"]
    assert [m["content"] for m in first] == ["You are the echo persona.", "be brief", "my name is Ada"]
    ask(client, cid, "what is my name?")
    sent = upstream.state.last().body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "You are the echo persona."),
        ("system", "be brief"),
        ("user", "my name is Ada"),
        ("assistant", "echo: my name is Ada"),
        ("user", "what is my name?"),
    ]


def test_a_streamed_answer_is_stored_in_full(gw):
    client, cid = gw.client(), f"s-{uuid.uuid4().hex}"
    stream = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "stream me"}],
                                            stream=True, extra_headers={"X-Conversation-Id": cid})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: stream me"
    stored = httpx.get(f"{gw.url}/v1/conversations/{cid}", headers=SDK_KEY).json()
    assert stored["id"] == cid
    assert len(stored["turns"]) == 1
    assert stored["turns"][0]["messages"] == [{"role": "user", "content": "stream me"}]
    assert stored["turns"][0]["answer"] == {"role": "assistant", "content": "echo: stream me"}


def test_metadata_conversation_id_works_too(gw, upstream):
    client, cid = gw.client(), f"m-{uuid.uuid4().hex}"
    for text in ("one", "two"):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": text}],
                                       metadata={"conversation_id": cid})
    contents = [m["content"] for m in upstream.state.last().body["messages"]]
    assert contents == ["You are the echo persona.", "one", "echo: one", "two"]


def test_get_and_delete(gw):
    client, cid = gw.client(), f"d-{uuid.uuid4().hex}"
    ask(client, cid, "remember this")
    assert httpx.get(f"{gw.url}/v1/conversations/{cid}", headers=SDK_KEY).status_code == 200
    deleted = httpx.delete(f"{gw.url}/v1/conversations/{cid}", headers=SDK_KEY)
    assert deleted.json() == {"id": cid, "object": "conversation.deleted", "deleted": True}
    missing = httpx.get(f"{gw.url}/v1/conversations/{cid}", headers=SDK_KEY)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "conversation_not_found"
    assert httpx.delete(f"{gw.url}/v1/conversations/{cid}", headers=SDK_KEY).status_code == 404


def test_bad_conversation_id_is_400(gw):
    resp = httpx.post(f"{gw.url}/v1/chat/completions", headers={"X-Conversation-Id": "no spaces allowed"},
                      json={"model": "echo", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "X-Conversation-Id"


def test_one_key_cannot_read_another_keys_conversation(upstream, gateway_factory):
    gw = gateway_factory(history_graph(upstream), env={"OCTOGATE_API_KEYS": "sk-a,sk-b"})
    cid = f"k-{uuid.uuid4().hex}"
    ask(gw.client(api_key="sk-a"), cid, "secret of a")
    mine = httpx.get(f"{gw.url}/v1/conversations/{cid}", headers={"Authorization": "Bearer sk-a"})
    assert mine.status_code == 200
    theirs = httpx.get(f"{gw.url}/v1/conversations/{cid}", headers={"Authorization": "Bearer sk-b"})
    assert theirs.status_code == 404
    assert httpx.delete(f"{gw.url}/v1/conversations/{cid}", headers={"Authorization": "Bearer sk-b"}).status_code == 404
    ask(gw.client(api_key="sk-b"), cid, "b's own turn")
    assert len(httpx.get(f"{gw.url}/v1/conversations/{cid}",
                         headers={"Authorization": "Bearer sk-a"}).json()["turns"]) == 1


def test_two_gateways_share_a_conversation_and_it_survives_a_restart(upstream, gateway_factory):
    graph = history_graph(upstream)
    a, b = gateway_factory(graph), gateway_factory(graph)
    cid = f"r-{uuid.uuid4().hex}"
    ask(a.client(), cid, "turn via a")
    ask(b.client(), cid, "turn via b")
    a.stop()
    b.stop()
    c = gateway_factory(graph)
    stored = httpx.get(f"{c.url}/v1/conversations/{cid}", headers=SDK_KEY).json()
    assert [t["messages"][0]["content"] for t in stored["turns"]] == ["turn via a", "turn via b"]


def test_concurrent_turns_on_one_conversation_lose_none(gw):
    import concurrent.futures

    client, cid = gw.client(), f"p-{uuid.uuid4().hex}"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: client.chat.completions.create(
            model="plain", messages=[{"role": "user", "content": f"t{i}"}],
            extra_headers={"X-Conversation-Id": cid}), range(40)))
    turns = httpx.get(f"{gw.url}/v1/conversations/{cid}", headers=SDK_KEY).json()["turns"]
    assert sorted(t["messages"][0]["content"] for t in turns) == sorted(f"t{i}" for i in range(40))


def test_redis_dying_leaves_the_gateway_serving(upstream, gateway_factory, tmp_path):
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(tmp_path)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: _pings(port), timeout=10)
        gw = gateway_factory(history_graph(upstream, redis_url=f"redis://127.0.0.1:{port}/0"))
        client, cid = gw.client(), f"x-{uuid.uuid4().hex}"
        assert "x-octogate-history" not in ask(client, cid, "before").headers
        server.kill()
        server.wait()
        resp = ask(client, cid, "during")
        assert resp.parse().choices[0].message.content == "echo: during"  # still served
        assert resp.headers["x-octogate-history"] == "unavailable"
        ready = httpx.get(f"{gw.url}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert httpx.get(f"{gw.url}/v1/conversations/{cid}", headers=SDK_KEY).status_code == 503
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert 'octogate_history_unavailable_total{operation="read"}' in metrics

        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)  # Redis returns (empty: it kept nothing)
        assert wait_until(lambda: _pings(port), timeout=10)

        def history_back() -> bool:
            return "x-octogate-history" not in ask(client, cid, "after").headers

        assert wait_until(history_back, timeout=15)
        assert httpx.get(f"{gw.url}/readyz").json()["status"] == "ready"
        assert httpx.get(f"{gw.url}/v1/conversations/{cid}", headers=SDK_KEY).status_code == 200
    finally:
        server.kill()
        server.wait()


def _pings(port: int) -> bool:
    try:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5).ping()
    except redis.RedisError:
        return False
