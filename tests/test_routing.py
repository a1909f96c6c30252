"""model: "octopus" end to end: the openai SDK -> `octogate serve` -> a router served by SGLang (here its
loopback protocol double: no GPU on these machines) -> the chosen node (the scripted upstream)."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
import redis

from tests.loopback import free_port
from tests.sglang_server import SGLangDouble

QUERY = "What is the derivative of x^3 at x = 2?"
CACHE_PREFIX_REDIS = "octogate:route:"


@pytest.fixture(scope="module")
def sglang():
    server = SGLangDouble().start()
    yield server
    server.stop()


def routed_graph(upstream, sglang_url: str, mode: str = "select", cache: bool = False, timeout: float = 2) -> dict:
    def node(name: str, token: int, **extra) -> dict:
        return {"name": name, "token": token, "persona": f"You are the {name} persona.",
                "backend": {"model": "openai/echo", "api_base": upstream.base_url, "timeout": 2}, **extra}

    router = {"engine": "sglang", "base_url": sglang_url, "mode": mode, "timeout": timeout, "fallback": "general"}
    if cache:
        router["cache"] = {"ttl_seconds": 60}
    return {"router": router,
            "nodes": [node("physics", 0), node("math", 4, reformat=True), node("law", 8), node("general", 16)]}


@pytest.fixture(scope="module")
def gw(upstream, sglang, gateway_factory):
    return gateway_factory(routed_graph(upstream, sglang.base_url, mode="select+reformat"))


def ask(gw, text: str = QUERY, **kwargs) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                      json={"model": "octopus", "messages": [{"role": "user", "content": text}], **kwargs})


def test_the_router_is_listed_as_a_model(gw):
    ids = [m.id for m in gw.client().models.list().data]
    assert ids[0] == "octopus" and "math" in ids


def test_the_chosen_node_answers_with_the_rewritten_query(gw, sglang, upstream):
    sglang.reset(text="<nexa_4>('Compute d/dx x^3 at x = 2')<nexa_end>")
    resp = gw.client().chat.completions.with_raw_response.create(
        model="octopus", messages=[{"role": "user", "content": QUERY}])
    assert resp.headers["x-octogate-node"] == "math"
    assert resp.headers["x-octogate-token"] == "<nexa_4>"
    assert "x-octogate-fallback" not in resp.headers
    sent = upstream.state.last().body["messages"]
    assert sent == [{"role": "system", "content": "You are the math persona."},
                    {"role": "user", "content": "Compute d/dx x^3 at x = 2"}]  # math has reformat: true
    request = sglang.requests[-1]
    assert request.regex_matched is True  # the canned decision is one the grammar admits
    assert request.body["sampling_params"]["temperature"] == 0
    assert QUERY in request.body["text"]


def test_a_node_without_reformat_gets_the_original_query(gw, sglang, upstream):
    sglang.reset(text="<nexa_8>('Explain a tort')<nexa_end>")
    stream = gw.client().chat.completions.create(model="octopus", stream=True,
                                                 messages=[{"role": "user", "content": "What is a tort?"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: What is a tort?"
    assert upstream.state.last().body["messages"][-1] == {"role": "user", "content": "What is a tort?"}
    assert upstream.state.last().body["messages"][0]["content"] == "You are the law persona."


@pytest.mark.parametrize(("script", "reason"), [
    ({"status": 500}, "router_error"),
    ({"text": "I think it is math"}, "router_error"),
    ({"text": "<nexa_4>('x')<nexa_end>", "delay": 5}, "router_timeout"),
])
def test_a_failing_router_sends_the_request_to_the_fallback_never_a_5xx(upstream, sglang, gateway_factory, script,
                                                                        reason):
    gw = gateway_factory(routed_graph(upstream, sglang.base_url, timeout=0.5))
    sglang.reset(**script)
    resp = ask(gw)
    assert resp.status_code == 200
    assert resp.headers["x-octogate-node"] == "general"
    assert resp.headers["x-octogate-fallback"] == reason
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'octogate_route_fallbacks_total{node="general"} 1.0' in metrics


def test_an_unreachable_router_is_a_fallback_and_readyz_says_degraded(upstream, gateway_factory):
    gw = gateway_factory(routed_graph(upstream, f"http://127.0.0.1:{free_port()}"))
    resp = ask(gw)
    assert resp.status_code == 200 and resp.headers["x-octogate-fallback"] == "router_error"
    ready = httpx.get(f"{gw.url}/readyz").json()
    assert ready["status"] == "degraded" and "general" in ready["router"]


def test_decisions_are_cached_in_redis_per_graph_version(upstream, sglang, gateway_factory):
    query = f"What is entropy? {uuid.uuid4().hex}"
    graph = routed_graph(upstream, sglang.base_url, cache=True)
    a, b = gateway_factory(graph), gateway_factory(graph)
    sglang.reset(text="<nexa_0>")
    assert ask(a, query).headers["x-octogate-node"] == "physics"
    assert ask(b, query).headers["x-octogate-node"] == "physics"  # another replica reuses the decision
    assert len(sglang.requests) == 1
    # A changed graph (here: a node's description) is a new version: the old decision is not reused.
    graph["nodes"][0]["description"] = "Physics, now described differently."
    c = gateway_factory(graph)
    sglang.reset(text="<nexa_8>")
    assert ask(c, query).headers["x-octogate-node"] == "law"
    assert len(sglang.requests) == 1
    r = redis.Redis(host="127.0.0.1", port=6379)
    keys = list(r.scan_iter(f"{CACHE_PREFIX_REDIS}*"))
    assert len({k.split(b":")[2] for k in keys}) >= 2  # two graph versions
    for key in keys:
        r.delete(key)


def test_route_metrics(gw, sglang):
    sglang.reset(text="<nexa_0>('Why is the sky blue?')<nexa_end>")
    before = httpx.get(f"{gw.url}/metrics").text
    ask(gw, "Why is the sky blue?")
    after = httpx.get(f"{gw.url}/metrics").text

    def count(text: str) -> float:
        for line in text.splitlines():
            if line.startswith('octogate_route_decisions_total{node="physics"}'):
                return float(line.split()[-1])
        return 0.0

    assert count(after) == count(before) + 1
    assert "octogate_route_decision_seconds_count" in after


def test_a_bad_router_config_is_a_readable_error(tmp_path):
    from octogate.core.graph import ConfigError, parse_graph

    graph = {"router": {"engine": "sglang", "base_url": "http://x", "fallback": "nowhere"},
             "nodes": [{"name": "a", "token": 0, "backend": {"model": "openai/x"}}]}
    with pytest.raises(ConfigError, match=r"router.fallback: unknown node 'nowhere'"):
        parse_graph(graph, "g.yaml")


def test_sglang_command_prints_the_launch_line(tmp_path):
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO

    graph = tmp_path / "g.yaml"
    graph.write_text(yaml.safe_dump({
        "router": {"engine": "sglang", "base_url": "http://router:31000", "fallback": "a"},
        "nodes": [{"name": "a", "token": 0, "backend": {"model": "openai/x"}}]}))
    out = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "sglang-command", "--config", str(graph),
                          "--model-path", "/models/octopus-router"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("python -m sglang.launch_server --model-path /models/octopus-router "
                                  "--host 127.0.0.1 --port 31000 --grammar-backend xgrammar")


@pytest.fixture(scope="module")
def sglang_b():
    server = SGLangDouble().start()
    yield server
    server.stop()


def hop_graph(upstream, graph_router: str, science_router: str, max_hops: int = 3) -> dict:
    def node(name: str, token: int, **extra) -> dict:
        return {"name": name, "token": token,
                "backend": {"model": "openai/echo", "api_base": upstream.base_url, "timeout": 2}, **extra}

    return {"router": {"engine": "sglang", "base_url": graph_router, "fallback": "general", "max_hops": max_hops},
            "nodes": [node("science", 0, router={"engine": "sglang", "base_url": science_router},
                           neighbours=["physics", "chemistry"]),
                      node("physics", 1), node("chemistry", 2), node("general", 16)]}


def test_routing_continues_hop_by_hop_over_a_nodes_neighbours(upstream, sglang, sglang_b, gateway_factory):
    gw = gateway_factory(hop_graph(upstream, sglang.base_url, sglang_b.base_url))
    sglang.reset(text="<nexa_0>")     # the graph's router: science
    sglang_b.reset(text="<nexa_2>")   # science's router: chemistry
    resp = ask(gw, "What is a covalent bond?")
    assert resp.headers["x-octogate-node"] == "chemistry"
    assert resp.headers["x-octogate-route"] == "science>chemistry"
    assert resp.headers["x-octogate-token"] == "<nexa_2>"
    # science's router may only choose among its neighbours
    assert sglang_b.requests[-1].body["sampling_params"]["regex"] == "(<nexa_1>|<nexa_2>)"
    assert "<nexa_16>" in sglang.requests[-1].body["sampling_params"]["regex"]


def test_the_hop_limit_stops_routing(upstream, sglang, sglang_b, gateway_factory):
    gw = gateway_factory(hop_graph(upstream, sglang.base_url, sglang_b.base_url, max_hops=1))
    sglang.reset(text="<nexa_0>")
    sglang_b.reset(text="<nexa_2>")
    resp = ask(gw, "What is a covalent bond?")
    assert resp.headers["x-octogate-node"] == "science"
    assert sglang_b.requests == []


def test_a_failing_hop_router_falls_back(upstream, sglang, sglang_b, gateway_factory):
    gw = gateway_factory(hop_graph(upstream, sglang.base_url, sglang_b.base_url))
    sglang.reset(text="<nexa_0>")
    sglang_b.reset(text="<nexa_16>")  # not a neighbour of science: the grammar would never produce it
    resp = ask(gw, "What is a covalent bond?")
    assert resp.status_code == 200
    assert resp.headers["x-octogate-node"] == "general"
    assert resp.headers["x-octogate-fallback"] == "router_error"


def test_hop_config_errors_are_readable():
    from octogate.core.graph import ConfigError, parse_graph

    base = {"nodes": [{"name": "a", "token": 0, "backend": {"model": "openai/x"},
                       "router": {"engine": "sglang", "base_url": "http://r"}, "neighbours": ["zz"]}]}
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.neighbours\[0\]: unknown node 'zz'"):
        parse_graph(base, "g.yaml")
    base["nodes"][0]["neighbours"] = []
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.neighbours: a node with a router needs neighbours"):
        parse_graph(base, "g.yaml")


@pytest.mark.parametrize("router, problem", [
    ({"engine": "sglang"}, "router.base_url: engine 'sglang' needs base_url"),
    ({"engine": "embedded", "base_url": "http://r:30000"}, "router.base_url: base_url is for engine 'sglang'"),
    ({"engine": "sglang", "base_url": "http://r", "prompt_template": "llama3"}, "router.prompt_template"),
])
def test_router_engine_settings_are_checked(router, problem):
    from octogate.core.graph import ConfigError, parse_graph

    graph = {"router": router, "nodes": [{"name": "general", "token": 0, "backend": {"model": "openai/x"}}]}
    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_graph(graph, "g.yaml")


def test_octopus_v4_is_asked_in_its_own_phi3_template(upstream, sglang, gateway_factory):
    graph = routed_graph(upstream, sglang.base_url)
    graph["router"]["prompt_template"] = "phi3"
    gw = gateway_factory(graph)
    sglang.reset(text="<nexa_4>")
    assert ask(gw).headers["x-octogate-node"] == "math"
    text = sglang.requests[-1].body["text"]
    assert text.startswith("<|system|>\n") and text.endswith(f"<|user|>\n{QUERY}<|end|>\n<|assistant|>\n"), text
