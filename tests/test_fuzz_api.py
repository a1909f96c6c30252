"""/openapi.json describes every route, and a short schemathesis campaign over all of them finds no
5xx, no error outside OpenAI's envelope and no hang (bench/fuzz.py is the long campaign).

Against a real ``octogate serve`` whose nodes point at the scripted upstream, with API and admin
keys and history in the Redis on 127.0.0.1:6379. The regressions of what the campaign found are here
too: a 405's ``Allow`` naming every method of the path, a bad ``metadata.conversation_id`` refused
even when the header names the conversation.
"""

from __future__ import annotations

import httpx
import pytest

from tests.fuzz_campaign import ADMIN_KEY, API_KEY, MODELS, fuzz_graph, run_campaign

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def gw(upstream, gateway_factory):
    return gateway_factory(fuzz_graph(upstream.base_url))


def test_openapi_describes_every_route_with_the_chat_request_schema(gw):
    resp = httpx.get(f"{gw.url}/openapi.json")
    assert resp.status_code == 200
    schema = resp.json()
    paths = schema["paths"]
    assert set(paths) >= {"/v1/chat/completions", "/v1/models", "/v1/models/{model_id}", "/v1/conversations/{conversation_id}",
                          "/healthz", "/readyz", "/metrics", "/admin/reload"}
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    request = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert request["required"] == ["model", "messages"] and request["properties"]["model"]["examples"] == MODELS
    assert {"application/json", "text/event-stream"} <= set(chat["responses"]["200"]["content"])
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for operations in paths.values():
        for operation in operations.values():
            assert operation["responses"]["default"]["content"]["application/json"]["schema"] == error
            assert "422" not in operation["responses"]
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["message", "type", "param", "code"]
    assert chat["security"] == [{"apiKey": []}] and paths["/admin/reload"]["post"]["security"] == [{"adminKey": []}]
    assert "security" not in paths["/healthz"]["get"]
    for off in ("/docs", "/redoc"):
        assert httpx.get(f"{gw.url}{off}").status_code == 404


def test_405_allow_names_every_method_of_the_path(gw):
    """Found by the campaign: with GET and DELETE as two routes of one path, Starlette's Allow said GET."""
    resp = httpx.put(f"{gw.url}/v1/conversations/c-1", headers=AUTH)
    assert resp.status_code == 405
    assert resp.headers["allow"] == "DELETE, GET"
    assert resp.json()["error"]["code"] == "method_not_allowed"
    assert httpx.post(f"{gw.url}/healthz").headers["allow"] == "GET"


def test_bad_metadata_conversation_id_is_refused_even_with_the_header(gw):
    """Found by the campaign: the header won, and the metadata's id went unchecked (200)."""
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "metadata": {"conversation_id": ""}}
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={**AUTH, "X-Conversation-Id": "c-1"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "metadata.conversation_id"


def test_admin_key_reaches_reload_and_api_key_does_not(gw):
    assert httpx.post(f"{gw.url}/admin/reload", headers=AUTH).status_code == 401
    resp = httpx.post(f"{gw.url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    assert resp.status_code == 200, resp.text


def test_short_fuzz_campaign_finds_no_5xx_no_stray_error_and_no_hang(gw, tmp_path):
    campaign = run_campaign(gw.url, tmp_path, max_examples=3, timeout=240, request_timeout=10)
    print(campaign.summary())
    assert campaign.exit_code == 0, campaign.output[-8000:]
    assert campaign.requests >= 150, campaign.summary()
    assert not campaign.server_errors, campaign.server_errors[:5]
    assert not campaign.bad_envelopes, campaign.bad_envelopes[:5]
    assert campaign.statuses[200] > 0 and campaign.statuses[400] > 0 and campaign.statuses[401] > 0


def test_integers_are_64_bit_as_the_schema_says(gw):
    """Found by the long campaign: a seed past 64 bits (JSON's parser makes it a float) was a valid
    integer for the schema and a 400 for the gateway; the schema now bounds it, and so does the check."""
    request = httpx.get(f"{gw.url}/openapi.json").json()["components"]["schemas"]["ChatCompletionRequest"]
    seed = next(o for o in request["properties"]["seed"]["anyOf"] if o.get("type") == "integer")
    assert (seed["minimum"], seed["maximum"]) == (-2**63, 2**63 - 1)
    for value in (2**63, -2**63 - 1, 2**70):
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "seed": value}
        resp = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=AUTH)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "seed", (value, resp.text)
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "seed": 2**63 - 1}
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=AUTH).status_code == 200
