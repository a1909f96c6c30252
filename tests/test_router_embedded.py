"""The shipped router, run in process by llama.cpp: decisions, both modes, the gateway, and its failures."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import pytest

from octogate.core.graph import load_graph
from octogate.router_model.artifact import load_router
from octogate.router_model.embedded_engine import (
    DEFAULT_ROUTER_DIR,
    EmbeddedRouterEngine,
)
from octogate.router_model.engine import RouterEngineError
from octogate.router_model.protocol import (
    RouterGrammar,
    format_router_output,
    parse_router_output,
)
from tests.conftest import REPO, start_gateway

DEFAULT_GRAPH = REPO / "config" / "default.yaml"
# Queries in chat phrasing (not MMLU's), one per clearly distinct specialist.
CLEAR = {
    "What is the derivative of x^3 + 2x with respect to x?": "math",
    "What must a plaintiff prove to win a negligence lawsuit?": "law",
    "What are the symptoms of type 2 diabetes and how is it treated?": "health",
    "Write a Python function that reverses a linked list.": "computer_science",
    "Balance the chemical equation for the combustion of methane.": "chemistry",
}


def grammar() -> RouterGrammar:
    return RouterGrammar.from_graph(load_graph(DEFAULT_GRAPH))


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def select_engine():
    engine = EmbeddedRouterEngine(grammar(), mode="select", n_threads=2)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.start())
    yield engine, loop
    loop.run_until_complete(engine.aclose())
    loop.close()


def test_the_shipped_router_is_small_and_names_its_base_model():
    artifact = load_router(DEFAULT_ROUTER_DIR)
    size = sum(p.stat().st_size for p in DEFAULT_ROUTER_DIR.iterdir() if p.is_file())
    assert size <= 30 * 1024 * 1024, f"{size} bytes"
    assert artifact.manifest["base_model"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert artifact.tokens == dict(grammar().token_to_node)  # trained for exactly the default graph's 17 nodes
    assert artifact.rows.shape == (17, 576)
    assert artifact.manifest["training"]["complete"] is True
    assert (DEFAULT_ROUTER_DIR / "README.md").is_file(), "the model card"


def test_select_mode_routes_clear_queries_to_their_specialist(select_engine):
    engine, loop = select_engine
    got = {q: loop.run_until_complete(engine.decide(q)).node for q in CLEAR}
    assert got == CLEAR


def test_a_decision_depends_only_on_the_query_not_on_the_one_before(select_engine):
    """The KV cache keeps the prefix and drops the previous query: the same query scores the same
    whatever was asked before it."""
    engine, loop = select_engine
    query = next(iter(CLEAR))
    first = engine.scores(query)
    for other in list(CLEAR)[1:]:
        loop.run_until_complete(engine.decide(other))
    again = engine.scores(query)
    assert max(abs(first[t] - again[t]) for t in first) < 1e-3


def decide_first_two(engine: EmbeddedRouterEngine) -> list:
    """Start ``engine``, decide the first two CLEAR queries, close it."""

    async def go():
        await engine.start()
        try:
            return [await engine.decide(q) for q in list(CLEAR)[:2]]
        finally:
            await engine.aclose()

    return run(go())


def test_select_reformat_writes_a_full_octopus_answer_that_parses():
    g = grammar()
    for query, decision in zip(CLEAR, decide_first_two(EmbeddedRouterEngine(
            g, mode="select+reformat", n_threads=2, max_argument_tokens=48))):
        assert decision.node == CLEAR[query]
        assert decision.argument, "the argument (the query restated) is written"
        text = format_router_output(decision.token, decision.argument)
        assert parse_router_output(text, g, "select+reformat") == decision


def test_select_reformat_out_of_time_keeps_the_choice_and_the_original_query():
    """Past the time limit no argument is written: the node chosen stands, the query goes on as sent."""
    engine = EmbeddedRouterEngine(grammar(), mode="select+reformat", n_threads=2, max_argument_tokens=48,
                                  time_limit=1e-6)
    for query, decision in zip(CLEAR, decide_first_two(engine)):
        assert decision.node == CLEAR[query] and decision.argument is None


def test_a_router_for_other_nodes_is_refused_at_start(tmp_path):
    other = RouterGrammar([(0, "physics"), (4, "algebra")])  # token 4 was trained as "math"
    engine = EmbeddedRouterEngine(other, n_threads=1)
    with pytest.raises(RouterEngineError, match=r"not trained for this graph's nodes: <nexa_4> 'algebra'"):
        run(engine.start())
    run(engine.aclose())


def test_a_subset_of_the_nodes_routes_among_those_only(tmp_path):
    """A hop router over a node's neighbours scores only their tokens."""
    sub = RouterGrammar([(0, "physics"), (5, "electrical_engineering")])
    engine = EmbeddedRouterEngine(sub, n_threads=1)

    async def go():
        await engine.start()
        try:
            return await engine.decide("What is the derivative of x^3 + 2x with respect to x?")
        finally:
            await engine.aclose()

    assert run(go()).node in {"physics", "electrical_engineering"}


def test_an_incomplete_router_directory_is_a_clear_error(tmp_path):
    broken = tmp_path / "r"
    shutil.copytree(DEFAULT_ROUTER_DIR, broken)
    (broken / "lora.gguf").unlink()
    engine = EmbeddedRouterEngine(grammar(), router_path=broken, n_threads=1)
    with pytest.raises(RouterEngineError, match="lora.gguf is missing"):
        run(engine.start())
    run(engine.aclose())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = start_gateway(DEFAULT_GRAPH, tmp_path_factory.mktemp("routed") / "octogate.log")
    yield gw
    gw.stop()


def test_the_default_graph_routes_out_of_the_box(gateway):
    client = gateway.client(timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="octopus", messages=[{"role": "user", "content": next(iter(CLEAR))}], max_tokens=8, temperature=0)
    assert raw.headers["x-octogate-node"] == "math"
    assert raw.headers["x-octogate-token"] == "<nexa_4>"
    assert "x-octogate-fallback" not in raw.headers
    assert raw.parse().choices[0].message.content


def test_readyz_reports_the_embedded_router(gateway):
    body = httpx.get(f"{gateway.url}/readyz", timeout=10).json()
    assert body["router"].startswith("ok (embedded octopus-v4-smollm2"), body
