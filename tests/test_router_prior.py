"""The prior correction (``octogate router prior``): the training data's node mix taken out of a
router's scores. Its arithmetic, its place in ``router.json``, the command, and that the real
embedded engine applies it (and leaves it off when the graph says so)."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import orjson
import pytest

from octogate.core.graph import load_graph, parse_graph
from octogate.gateway.routing import graph_version
from octogate.router_model.artifact import RouterArtifactError, load_router
from octogate.router_model.embedded_engine import (
    DEFAULT_ROUTER_DIR,
    EmbeddedRouterEngine,
)
from octogate.router_model.prior import (
    PriorError,
    prior_block,
    score_bias,
    train_shares,
)
from octogate.router_model.protocol import RouterGrammar
from octogate.router_model.training.averaging import average_routers
from tests.conftest import REPO
from tests.test_router_average import write_router
from tests.test_router_embedded import CLEAR, DEFAULT_GRAPH

NODES = ["math", "law", "health"]


def prior_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "prior", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def write_examples(path, counts: dict[str, int]):
    path.write_bytes(b"".join(orjson.dumps({"query": f"q {node} {i}", "node": node}) + b"\n"
                              for node, n in counts.items() for i in range(n)))
    return path


def test_the_bias_is_minus_tau_log_share_centred():
    shares = train_shares(NODES, ["math"] * 6 + ["law"] * 3 + ["health"])
    assert shares == {"math": 0.6, "law": 0.3, "health": 0.1}
    bias = score_bias(prior_block(shares, tau=0.5), NODES)
    expected = np.array([-0.5 * math.log(s) for s in (0.6, 0.3, 0.1)])
    np.testing.assert_allclose(bias, expected - expected.mean(), rtol=1e-6)
    assert bias[2] > bias[1] > bias[0]  # the rarest node gains most
    # A routing point over some of the nodes gets the same differences between them.
    sub = score_bias(prior_block(shares, tau=0.5), ["health", "math"])
    assert sub[0] - sub[1] == pytest.approx(bias[2] - bias[0], rel=1e-6)
    np.testing.assert_array_equal(score_bias(None, NODES), np.zeros(3))


def test_shares_need_every_node_and_nothing_else():
    with pytest.raises(PriorError, match="no example for 'health'"):
        train_shares(NODES, ["math", "law"])
    with pytest.raises(PriorError, match="'physics', which this router has no token for"):
        train_shares(NODES, ["math", "law", "health", "physics"])


@pytest.mark.parametrize("prior, message", [
    ({"target": "zipf", "tau": 1.0, "train_share": {}}, "target 'zipf'"),
    ({"target": "uniform", "tau": -1, "train_share": {}}, "tau must be a number >= 0"),
    ({"target": "uniform", "tau": 1.0, "train_share": {"math": 0.5, "law": 0.5}}, "train_share of 'health'"),
    ({"target": "uniform", "tau": 1.0, "train_share": {"math": 0.5, "law": 0.5, "health": 0}}, "train_share of 'health'"),
    ("uniform", "'prior' must be an object"),
])
def test_a_bad_prior_in_router_json_is_refused_by_name(tmp_path, prior, message):
    artifact = write_router(tmp_path / "r", {4: "math", 8: "law", 15: "health"})
    manifest = dict(artifact.manifest, prior=prior)
    (artifact.path / "router.json").write_text(json.dumps(manifest))
    with pytest.raises(RouterArtifactError, match="router.json: .*" + message):
        load_router(artifact.path)


def test_the_command_writes_the_training_mix_and_tau_0_removes_it(tmp_path):
    router = write_router(tmp_path / "r", {4: "math", 8: "law", 15: "health"}).path
    data = write_examples(tmp_path / "train.jsonl", {"math": 5, "law": 3, "health": 2})
    result = prior_cli(router, "--data", data)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "uniform prior, tau 1" in out and "health +" in out and "math -" in out
    prior = load_router(router).manifest["prior"]
    assert prior == {"target": "uniform", "tau": 1.0, "train_share": {"math": 0.5, "law": 0.3, "health": 0.2},
                     "data": "train.jsonl"}
    result = prior_cli(router, "--tau", "0")
    assert result.returncode == 0, result.stderr
    assert "prior" not in load_router(router).manifest


def test_the_command_refuses_data_that_cannot_give_a_prior_and_leaves_the_router_alone(tmp_path):
    router = write_router(tmp_path / "r", {4: "math", 8: "law", 15: "health"}).path
    before = (router / "router.json").read_bytes()
    for args, message in (
        (["--data", write_examples(tmp_path / "a.jsonl", {"math": 5, "law": 3})], "no example for 'health'"),
        (["--data", tmp_path / "missing.jsonl"], "missing.jsonl"),
        ([], "--data is needed"),
        (["--data", tmp_path / "a.jsonl", "--target", "zipf"], "--target must be one of uniform"),
    ):
        result = prior_cli(router, *args)
        err = " ".join(result.stderr.split())
        assert result.returncode == 1 and message in err and "Traceback" not in err, err
    assert (router / "router.json").read_bytes() == before


def test_an_average_keeps_a_prior_only_when_every_part_has_the_same(tmp_path):
    nodes = {4: "math", 8: "law", 15: "health"}
    parts = [write_router(tmp_path / f"p{i}", nodes, seed=i).path for i in range(3)]
    data = write_examples(tmp_path / "train.jsonl", {"math": 5, "law": 3, "health": 2})
    for part in parts[:2]:
        assert prior_cli(part, "--data", data).returncode == 0
    assert average_routers(parts[:2], tmp_path / "same").manifest["prior"]["train_share"]["math"] == 0.5
    assert "prior" not in average_routers(parts, tmp_path / "mixed").manifest
    result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "average", *map(str, parts),
                             "--out", str(tmp_path / "mixed-cli")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "prior corrections differ, so the average has none" in " ".join(result.stdout.split())


def test_the_shipped_router_takes_out_mmlu_train_s_mix():
    prior = load_router(DEFAULT_ROUTER_DIR).manifest["prior"]
    assert prior["target"] == "uniform" and prior["tau"] == 1.0
    shares = prior["train_share"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
    assert shares["philosophy"] > shares["law"] > shares["health"] > 0.1 > shares["electrical_engineering"]


def test_the_routing_cache_version_follows_the_router_files(tmp_path):
    router = tmp_path / "router"
    shutil.copytree(DEFAULT_ROUTER_DIR, router)
    raw = load_graph(DEFAULT_GRAPH).model_dump(exclude_none=True)
    raw.pop("toolsets", None)
    raw["router"]["path"] = str(router)
    before = graph_version(parse_graph(raw))
    assert graph_version(parse_graph(raw)) == before
    assert prior_cli(router, "--tau", "0").returncode == 0
    assert graph_version(parse_graph(raw)) != before  # a changed router: cached decisions are not reused


def decide_all(router, **engine_options) -> dict[str, str]:
    engine = EmbeddedRouterEngine(RouterGrammar.from_graph(load_graph(DEFAULT_GRAPH)), router_path=router,
                                  n_threads=2, **engine_options)

    async def go():
        await engine.start()
        try:
            return {q: (await engine.decide(q)).node for q in CLEAR}
        finally:
            await engine.aclose()

    return asyncio.run(go())


def test_the_embedded_engine_adds_the_bias_and_the_graph_can_turn_it_off(tmp_path):
    """A prior that makes geography a vanishingly rare training node (tau 50): the engine sends every
    query there; with prior_correction off the same router routes them as trained."""
    router = tmp_path / "router"
    shutil.copytree(DEFAULT_ROUTER_DIR, router)
    nodes = list(load_router(router).tokens.values())
    data = write_examples(tmp_path / "skewed.jsonl", {n: (1 if n == "geography" else 1000) for n in nodes})
    assert prior_cli(router, "--data", data, "--tau", "50").returncode == 0
    assert set(decide_all(router).values()) == {"geography"}
    assert decide_all(router, prior_correction=False) == CLEAR


def test_router_eval_says_whether_the_correction_was_applied(tmp_path):
    data = tmp_path / "few.jsonl"
    data.write_bytes(b"".join(orjson.dumps({"query": q, "node": n}) + b"\n" for q, n in list(CLEAR.items())[:2]))

    def run(*extra) -> str:
        result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "eval", "--data", str(data), *extra],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return " ".join(result.stdout.split())

    on, off = run(), run("--no-prior-correction")
    assert "2 examples: top-1 accuracy 100.0%" in on and "prior correction: uniform, tau 1" in on
    assert "(turned off)" not in on and "prior correction: uniform, tau 1 (turned off)" in off
