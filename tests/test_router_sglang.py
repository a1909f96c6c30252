"""The SGLang router client against a protocol double of SGLang's native API (tests/sglang_server.py).

What is checked is the client's side of the contract: the /generate request it sends for each
mode, how it reads answers and failures, that it keeps to a few pooled connections, and the
launch command for the real server. Whether a real SGLang honours the regex is a GPU-side check.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from octogate.core.graph import load_graph
from octogate.router_model.engine import RouterEngineError
from octogate.router_model.protocol import (
    RouterDecision,
    RouterGrammar,
    RouterOutputError,
    format_router_output,
    router_messages,
)
from octogate.router_model.sglang_engine import (
    SGLangRouterEngine,
    chatml_prompt,
    sglang_launch_command,
)
from tests.conftest import REPO
from tests.loopback import free_port
from tests.sglang_server import MODEL_PATH, SGLangDouble

GRAMMAR = RouterGrammar.from_graph(load_graph(REPO / "config" / "default.yaml"))
QUERY = "What is the derivative of x^2? It's for my \"calculus\" class.\nThanks <3"


@pytest.fixture(scope="module")
def server():
    double = SGLangDouble().start()
    yield double
    double.stop()


@pytest.fixture()
def sglang(server):
    server.reset()
    return server


def decide(url: str, query: str = QUERY, **kwargs) -> RouterDecision:
    """One decision on a fresh engine (started and closed around it)."""

    async def main() -> RouterDecision:
        engine = SGLangRouterEngine(url, GRAMMAR, **kwargs)
        await engine.start()
        try:
            return await engine.decide(query)
        finally:
            await engine.aclose()

    return asyncio.run(main())


def failure(url: str, **kwargs) -> RouterEngineError:
    with pytest.raises(RouterEngineError) as exc:
        decide(url, **kwargs)
    return exc.value


# ------------------------------------------------------------------------------ request and answer
def test_select_mode_asks_for_the_token_alone(sglang):
    sglang.reset(text="<nexa_4>")
    assert decide(sglang.base_url, mode="select") == RouterDecision(4, "math", None)
    [req] = sglang.requests
    assert req.body == {
        "text": chatml_prompt(router_messages(QUERY)),
        "sampling_params": {
            "max_new_tokens": len("<nexa_16>") + 1,
            "temperature": 0,
            "regex": GRAMMAR.regex("select"),
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
        },
    }
    assert req.regex_matched, "the canned decision must be one the constraint admits"


def test_select_and_reformat_mode_reads_the_restated_query(sglang):
    restated = "Differentiate f(x) = x^2 with respect to x; it's \"calculus\"\n<3 \\o/"
    sglang.reset(text=format_router_output(4, restated))
    assert decide(sglang.base_url, mode="select+reformat") == RouterDecision(4, "math", restated)
    [req] = sglang.requests
    params = req.body["sampling_params"]
    assert params["regex"] == GRAMMAR.regex("select+reformat")
    assert params["temperature"] == 0 and "stop" not in params and params["skip_special_tokens"] is False
    assert params["max_new_tokens"] == len("<nexa_16>('')<nexa_end>") + 256 + 1
    assert req.regex_matched


def test_the_argument_budget_sets_max_new_tokens(sglang):
    sglang.reset(text=format_router_output(16, "hi"))
    decide(sglang.base_url, mode="select+reformat", max_argument_tokens=32)
    assert sglang.requests[0].body["sampling_params"]["max_new_tokens"] == len("<nexa_16>('')<nexa_end>") + 32 + 1


def test_the_prompt_template_renders_the_router_messages(sglang):
    sglang.reset(text="<nexa_0>")

    def gemma(messages):
        system, user = messages
        return f"<start_of_turn>user\n{system['content']}\n\n{user['content']}<end_of_turn>\n<start_of_turn>model\n"

    decide(sglang.base_url, query="Why is the sky blue?", mode="select", prompt_template=gemma)
    assert sglang.requests[0].body["text"] == gemma(router_messages("Why is the sky blue?"))


def test_chatml_is_the_default_template():
    assert chatml_prompt(router_messages("hi")) == (
        "<|im_start|>system\n" + router_messages("hi")[0]["content"] + "<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_the_api_key_is_sent_as_a_bearer_token(sglang):
    sglang.reset(text="<nexa_0>")
    decide(sglang.base_url, mode="select", api_key="router-secret")
    assert sglang.requests[0].headers["Authorization"] == "Bearer router-secret"


def test_check_ready_names_the_served_model(sglang):
    async def main() -> str:
        engine = SGLangRouterEngine(sglang.base_url, GRAMMAR)
        await engine.start()
        try:
            return await engine.check_ready()
        finally:
            await engine.aclose()

    assert asyncio.run(main()) == f"ok ({MODEL_PATH})"


# ------------------------------------------------------------------------------ failures
def test_an_http_500_is_an_engine_error_with_its_status(sglang):
    sglang.reset(status=500, error="CUDA out of memory")
    err = failure(sglang.base_url)
    assert err.status == 500
    assert err.message == f"SGLang router at {sglang.base_url} answered HTTP 500: CUDA out of memory"


def test_a_slow_server_times_out(sglang):
    sglang.reset(delay=3.0, text="<nexa_0>")
    started = time.monotonic()
    err = failure(sglang.base_url, timeout=0.3)
    assert time.monotonic() - started < 2
    assert err.status is None and err.message == f"SGLang router at {sglang.base_url} did not answer within 0.3s"


@pytest.mark.parametrize("text", ["Sure! That is a math question.", "<nexa_99>", "<nexa_4>('x')", ""])
def test_text_that_is_not_a_decision_is_an_engine_error(sglang, text):
    sglang.reset(text=text)
    with pytest.raises(RouterEngineError, match="did not answer a routing decision") as exc:
        decide(sglang.base_url, mode="select+reformat")
    assert isinstance(exc.value.__cause__, RouterOutputError)
    assert sglang.requests[0].regex_matched is False, "a real constrained server could not have said this"


def test_a_cut_off_answer_says_to_raise_the_argument_budget(sglang):
    sglang.reset(text="<nexa_4>('Differentiate f(x) = x", finish_reason={"type": "length", "length": 32})
    err = failure(sglang.base_url, mode="select+reformat", max_argument_tokens=8)
    assert "stopped at max_new_tokens=32; raise max_argument_tokens" in err.message


def test_an_aborted_request_is_an_engine_error(sglang):
    sglang.reset(text="", finish_reason={"type": "abort", "message": "grammar compilation failed", "status_code": 400})
    err = failure(sglang.base_url)
    assert err.status == 400 and err.message.endswith("aborted the request: grammar compilation failed")


def test_a_server_that_is_down_is_an_engine_error():
    url = f"http://127.0.0.1:{free_port()}"
    err = failure(url, connect_timeout=1)
    assert err.message.startswith(f"SGLang router at {url} is unreachable")


def test_a_dropped_connection_is_retried_once(sglang):
    sglang.reset(text="<nexa_2>", drop=1)
    assert decide(sglang.base_url, mode="select").node == "biology"
    assert len(sglang.requests) == 2
    sglang.reset(text="<nexa_2>", drop=2)
    assert "closed the connection twice" in failure(sglang.base_url, mode="select").message


def test_an_engine_must_be_started():
    engine = SGLangRouterEngine("http://127.0.0.1:1", GRAMMAR)
    with pytest.raises(RuntimeError, match="before start"):
        asyncio.run(engine.decide("x"))


@pytest.mark.parametrize("kwargs", [dict(mode="reformat"), dict(timeout=0), dict(max_connections=0)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        SGLangRouterEngine("http://127.0.0.1:1", GRAMMAR, **kwargs)


# ------------------------------------------------------------------------------ connection reuse
def test_many_decisions_share_a_few_pooled_connections(sglang):
    sglang.reset(text=format_router_output(11, "What drives inflation?"), delay=0.02)

    async def main() -> list[RouterDecision]:
        engine = SGLangRouterEngine(sglang.base_url, GRAMMAR, max_connections=4)
        await engine.start()
        try:
            burst = await asyncio.gather(*(engine.decide(f"question {i}") for i in range(40)))
            one_by_one = [await engine.decide(f"follow-up {i}") for i in range(10)]
            return burst + one_by_one
        finally:
            await engine.aclose()

    decisions = asyncio.run(main())
    assert {d.node for d in decisions} == {"economics"} and len(decisions) == 50
    assert len(sglang.requests) == 50
    assert 1 <= len(sglang.peers) <= 4, f"{len(sglang.peers)} connections for 50 decisions"


def test_sequential_decisions_use_one_connection(sglang):
    sglang.reset(text="<nexa_6>")

    async def main() -> None:
        engine = SGLangRouterEngine(sglang.base_url, GRAMMAR, mode="select")
        await engine.start()
        try:
            for i in range(20):
                assert (await engine.decide(f"When did event {i} happen?")).node == "history"
        finally:
            await engine.aclose()

    asyncio.run(main())
    assert len(sglang.requests) == 20 and len(sglang.peers) == 1


# ------------------------------------------------------------------------------ the double itself
def test_the_double_refuses_a_request_without_a_usable_regex(sglang):
    import httpx

    for params, problem in [({"max_new_tokens": 4}, "expects sampling_params.regex"),
                            ({"regex": "(<nexa_0>"}, "Invalid regex")]:
        resp = httpx.post(f"{sglang.base_url}/generate", json={"text": "hi", "sampling_params": params})
        assert resp.status_code == 400 and problem in resp.json()["error"]["message"]


# ------------------------------------------------------------------------------ launching SGLang
def test_the_launch_command_uses_sglangs_own_flags():
    assert sglang_launch_command("/models/octopus-router") == [
        "python", "-m", "sglang.launch_server", "--model-path", "/models/octopus-router",
        "--host", "127.0.0.1", "--port", "30000", "--grammar-backend", "xgrammar",
    ]
    assert sglang_launch_command("NexaAIDev/Octopus-v4", port=31000, grammar_backend="llguidance", host="0.0.0.0",
                                 extra=["--mem-fraction-static", "0.3"], python="python3") == [
        "python3", "-m", "sglang.launch_server", "--model-path", "NexaAIDev/Octopus-v4",
        "--host", "0.0.0.0", "--port", "31000", "--grammar-backend", "llguidance", "--mem-fraction-static", "0.3",
    ]
    with pytest.raises(ValueError, match="needs regex decoding"):
        sglang_launch_command("m", grammar_backend="none")
    with pytest.raises(ValueError, match="port"):
        sglang_launch_command("m", port=0)
