"""Declared request fields are typed strictly, as OpenAI types them (issue #21, "Numbers sent as strings
give 500"): a string where a number or a boolean belongs is a 400 naming the field, on a pass-through
node and on the embedded model alike; unknown fields still reach the upstream untouched."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import REPO, start_gateway

USER = [{"role": "user", "content": "hello there"}]

STRINGS_FOR_NUMBERS = [
    ("max_tokens", "1"),
    ("max_completion_tokens", "1"),
    ("n", "1"),
    ("temperature", "0.5"),
    ("top_p", "0.5"),
    ("seed", "7"),
    ("presence_penalty", "0.1"),
    ("frequency_penalty", "0.1"),
    ("stream", "false"),
    ("logprobs", "true"),
    ("max_tokens", 1.5),
    ("n", True),
]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    gw = start_gateway(REPO / "config" / "default.yaml", tmp_path_factory.mktemp("strict") / "octogate.log")
    yield gw
    gw.stop()


def _bad(url: str, body: dict) -> dict:
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 400, (body, resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json"), resp.text  # never a stream
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(("field", "value"), STRINGS_FOR_NUMBERS)
def test_wrong_types_are_400s_naming_the_field(gateway, upstream, field, value):
    before = len(upstream.state.requests)
    error = _bad(gateway.url, {"model": "plain", "messages": USER, field: value})
    assert error["param"] == field and error["code"] == "invalid_type", error
    assert f"'{field}'" in error["message"]
    assert len(upstream.state.requests) == before  # refused before any upstream call


@pytest.mark.parametrize(("field", "value"), STRINGS_FOR_NUMBERS)
def test_wrong_types_are_400s_on_the_embedded_model_too(embedded, field, value):
    error = _bad(embedded.url, {"model": "general", "messages": USER, field: value})
    assert error["param"] == field and error["code"] == "invalid_type", error


def test_a_number_for_user_names_user(gateway, client):
    error = _bad(gateway.url, {"model": "plain", "messages": USER, "user": 5})
    assert error["param"] == "user"
    assert error["message"] == "Invalid value for 'user': Input should be a valid string."
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="plain", messages=USER, user=5)  # type: ignore[arg-type]
    assert err.value.body["param"] == "user"
    # a metadata key called "user" is named as one, not as the user field
    error = _bad(gateway.url, {"model": "plain", "messages": USER, "metadata": {"user": 5}})
    assert error["param"] == "metadata.user"


def test_integers_are_numbers_and_unknown_fields_pass_through_untouched(client, upstream):
    odd = {"vendor_knob": "1", "nested": {"stream": "false", "n": [1, "2"]}}
    answer = client.chat.completions.create(model="plain", messages=USER, temperature=1, top_p=1,
                                            presence_penalty=0, max_tokens=5, extra_body=odd)
    assert answer.choices[0].message.content == "echo: hello there"
    sent = upstream.state.last().body
    assert sent["vendor_knob"] == "1" and sent["nested"] == odd["nested"]
    assert sent["temperature"] == 1 and sent["max_tokens"] == 5  # forwarded as the client wrote them


def test_the_octogate_extension_is_declared_on_the_request(gateway):
    for ext in ({"tool_calls": "sometimes"}, "constrained", {"tool_calls": 1}):
        error = _bad(gateway.url, {"model": "plain", "messages": USER, "octogate": ext})
        assert error["param"] == "octogate.tool_calls" and error["code"] == "invalid_value"
        assert error["message"].startswith("'octogate' must be an object whose 'tool_calls' is one of 'auto', ")
