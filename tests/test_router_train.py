"""``octogate router train`` on the real base model: budgeted, resumable, and exported so llama.cpp
computes what torch trained."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F
import yaml

from octogate.core.llama_runtime import bundled_gguf_path
from octogate.router_model.artifact import load_router
from octogate.router_model.embedded_engine import EmbeddedRouterEngine
from octogate.router_model.prompt_tokens import RouterPromptTokens
from octogate.router_model.protocol import RouterGrammar
from octogate.router_model.training.torch_llama import Llama, read_gguf
from tests.conftest import REPO

NODES = {"math": 4, "law": 8, "health": 15}
EXAMPLES = [
    ("What is 17 times 23?", "math"), ("Solve x^2 - 5x + 6 = 0.", "math"), ("Integrate sin(x) from 0 to pi.", "math"),
    ("Is 221 a prime number?", "math"), ("What is the derivative of e^(2x)?", "math"), ("Simplify (a+b)^2.", "math"),
    ("Can my landlord keep my deposit?", "law"), ("What is habeas corpus?", "law"), ("Is a verbal contract binding?", "law"),
    ("What does a plea bargain mean?", "law"), ("How do I file a patent?", "law"), ("What is tort negligence?", "law"),
    ("How much sleep does an adult need?", "health"), ("What causes high blood pressure?", "health"),
    ("Is ibuprofen safe with alcohol?", "health"), ("How is the flu treated?", "health"),
    ("What are signs of dehydration?", "health"), ("How often should I get a check-up?", "health"),
]
# lr far above the real recipe's, so a few steps move the LoRA enough to tell "applied" from "ignored"
TRAIN = ["router", "train", "--lora-layers", "2", "--max-query-tokens", "24", "--batch-size", "6",
         "--epochs", "3", "--lr", "0.02", "--token-lr", "0.02", "--threads", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    graph = tmp / "g.yaml"
    graph.write_text(yaml.safe_dump({
        "router": {"engine": "embedded", "path": str(tmp / "out"), "fallback": "math"},
        "nodes": [{"name": n, "token": t, "backend": {"model": "openai/x"}} for n, t in NODES.items()]}))
    data = tmp / "data.jsonl"
    data.write_bytes(b"".join(orjson.dumps({"query": q, "node": n}) + b"\n" for q, n in EXAMPLES))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache")}
    argv = [sys.executable, "-m", "octogate.gateway.cli", *TRAIN, "--config", str(graph), "--data", str(data),
            "--out", str(tmp / "out")]
    # A budget this small stops after the first step, with a checkpoint and a usable router.
    first = subprocess.run([*argv, "--time-budget", "0.00001"], cwd=REPO, capture_output=True, text=True,
                           timeout=300, env=env)
    checkpoint_after_first = (tmp / "out" / "checkpoint.pt").exists()
    partial = json.loads((tmp / "out" / "router.json").read_text()) if first.returncode == 0 else None
    second = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    return tmp, graph, first, partial, checkpoint_after_first, second


def test_a_time_budget_stops_with_a_checkpoint_and_the_same_command_resumes(trained):
    tmp, _, first, partial, checkpoint_after_first, second = trained
    assert first.returncode == 0, first.stderr
    assert "time budget reached at step 1/9" in first.stdout
    assert checkpoint_after_first and partial["training"]["complete"] is False and partial["training"]["steps"] == 1
    assert second.returncode == 0, second.stderr
    assert "trained router written to" in second.stdout
    manifest = json.loads((tmp / "out" / "router.json").read_text())
    assert manifest["training"]["complete"] is True
    assert manifest["training"]["steps"] == 9  # 18 examples / batch 6 = 3 steps an epoch, 3 epochs: resumed, not redone
    assert not (tmp / "out" / "checkpoint.pt").exists()


def test_the_output_is_an_adapter_not_a_model(trained):
    tmp = trained[0]
    files = {p.name: p.stat().st_size for p in (tmp / "out").iterdir()}
    assert set(files) == {"router.json", "lora.gguf", "functional_tokens.npy"}
    assert files["lora.gguf"] < 1_000_000  # rank 16 on two blocks; the base model is ~100 MB
    artifact = load_router(tmp / "out")
    assert artifact.tokens == {t: n for n, t in NODES.items()}
    assert artifact.manifest["lora"]["layers"] == [28, 29]


def torch_scores(artifact, queries, with_lora: bool) -> np.ndarray:
    import gguf

    shape, tensors = read_gguf(bundled_gguf_path())
    lora = artifact.manifest["lora"]
    model = Llama(shape, tensors, lora_from=28, rank=lora["rank"], alpha=lora["alpha"])
    if with_lora:
        reader = gguf.GGUFReader(str(artifact.lora_path))
        model.load_lora({t.name: torch.from_numpy(np.array(t.data, dtype=np.float32)) for t in reader.tensors})
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(bundled_gguf_path()), vocab_only=True, verbose=False)
    prompt = RouterPromptTokens(vocab.tokenize, artifact.max_query_tokens)
    rows = torch.from_numpy(artifact.rows)
    out = []
    with torch.no_grad():
        for q in queries:
            x, _ = model.lower(torch.tensor([prompt.prefix + prompt.query(q)]))
            h, _ = model.forward_from(x)
            out.append((h[0, -1] @ rows.t()).numpy())
    return np.stack(out)


def served_scores(artifact, queries) -> np.ndarray:
    """The embedded engine's scores (llama.cpp, the LoRA merged into float16 weights)."""
    grammar = RouterGrammar([(t, n) for t, n in artifact.tokens.items()])
    engine = EmbeddedRouterEngine(grammar, router_path=artifact.path, n_threads=2)

    async def scores():
        await engine.start()
        try:
            return np.array([[engine.scores(q)[t] for t in sorted(artifact.tokens)] for q in queries])
        finally:
            await engine.aclose()

    return asyncio.run(scores())


def test_llama_cpp_computes_what_torch_trained(trained):
    """The exported LoRA is applied by llama.cpp (names, shapes and scale right): its scores match
    torch's with the LoRA, and not torch's without it."""
    tmp = trained[0]
    artifact = load_router(tmp / "out")
    queries = [q for q, _ in EXAMPLES[::3]]
    served = served_scores(artifact, queries)
    with_lora = torch_scores(artifact, queries, with_lora=True)
    without = torch_scores(artifact, queries, with_lora=False)
    err_with = np.abs(served - with_lora).max()
    err_without = np.abs(served - without).max()
    assert err_with < 0.1 * err_without, (err_with, err_without)
    assert (served.argmax(1) == with_lora.argmax(1)).all()


def test_an_averaged_router_is_served_as_torch_computes_it(trained, tmp_path, monkeypatch):
    """`router average` of two trained routers: llama.cpp serves the rank-32 average adapter as
    torch computes it, and its scores are neither router's."""
    from rich.console import Console

    from octogate.router_model.training.data import Example
    from octogate.router_model.training.run import train_router
    from octogate.router_model.training.trainer import TrainSettings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = load_router(trained[0] / "out")
    settings = TrainSettings(lora_layers=2, max_query_tokens=24, batch_size=6, epochs=3, lr=0.02, token_lr=0.02,
                             threads=2, seed=1)
    second, _, complete = train_router(nodes=first.tokens, examples=[Example(q, n) for q, n in reversed(EXAMPLES)],
                                       out=tmp_path / "second", settings=settings, data_name="reversed",
                                       console=Console(file=io.StringIO()))
    assert complete
    result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "average", str(first.path),
                             str(second.path), "--out", str(tmp_path / "soup")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    soup = load_router(tmp_path / "soup")
    assert soup.manifest["lora"]["rank"] == 32

    queries = [q for q, _ in EXAMPLES[1::3]]
    served = served_scores(soup, queries)
    computed = torch_scores(soup, queries, with_lora=True)
    nearest_router = min(np.abs(served - torch_scores(r, queries, with_lora=True)).max() for r in (first, second))
    assert np.abs(served - computed).max() < 0.1 * nearest_router, (np.abs(served - computed).max(), nearest_router)


def test_data_naming_an_unknown_node_is_an_error(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"query": "hi", "node": "astrology"}\n')
    result = subprocess.run([sys.executable, "-m", "octogate.gateway.cli", "router", "train", "--data", str(data),
                             "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "astrology" in result.stderr and "Traceback" not in result.stderr


SUBJECTS = {"What is 17 times 23?": "arithmetic", "Solve x^2 - 5x + 6 = 0.": "algebra",
            "Integrate sin(x) from 0 to pi.": "calculus", "Is 221 a prime number?": "arithmetic",
            "What is the derivative of e^(2x)?": "calculus", "Simplify (a+b)^2.": "algebra"}


def small_trainer(subject_weight: float = 0.0, **settings):
    import llama_cpp

    from octogate.router_model.training.trainer import RouterTrainer, TrainSettings

    vocab = llama_cpp.Llama(model_path=str(bundled_gguf_path()), vocab_only=True, verbose=False)
    settings = TrainSettings(**{"lora_layers": 2, "max_query_tokens": 24, "batch_size": 6, "epochs": 4, "lr": 0.02,
                                "token_lr": 0.05, "threads": 2, "subject_weight": subject_weight, **settings})
    return RouterTrainer(bundled_gguf_path(), {t: n for n, t in NODES.items()}, settings, vocab.tokenize)


def test_subjects_as_an_auxiliary_target_are_learned_and_resume(tmp_path):
    """With subject_weight, the trainer learns a row per subject beside the graph's tokens (the
    subject loss falls), keeps them in its checkpoint to resume, and refuses data without them."""
    from octogate.router_model.training.data import Example

    examples = [Example(q, "math", subject=s) for q, s in SUBJECTS.items()]
    examples += [Example(q, n) for q, n in EXAMPLES if n != "math"]
    trainer = small_trainer(subject_weight=1.0)
    with pytest.raises(ValueError, match="subject on every example; 12 have none"):
        trainer.train(trainer.features(examples), examples)

    examples = [Example(q, n, subject=SUBJECTS.get(q, n)) for q, n in EXAMPLES]
    trainer = small_trainer(subject_weight=1.0)
    feats = trainer.features(examples)
    checkpoint = tmp_path / "checkpoint.pt"
    trainer.train(feats, examples, checkpoint=checkpoint, time_budget=0.0)  # one step, then stop
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["state"]["step"] == 1 and saved["subject_rows"].shape == (5, trainer.shape.dim)

    def subject_loss(t) -> float:
        labels = torch.tensor([t.subjects.index(ex.subject) for ex in examples])
        with torch.no_grad():
            return F.cross_entropy(t.hidden(feats) @ t.subject_rows.t(), labels).item()

    resumed = small_trainer(subject_weight=1.0)
    resumed.train(feats, examples, checkpoint=checkpoint, time_budget=0.0)  # loads step 1, runs step 2
    assert torch.load(checkpoint, weights_only=False)["state"]["step"] == 2
    assert resumed.subjects == ["algebra", "arithmetic", "calculus", "health", "law"]
    before = subject_loss(resumed)
    resumed.train(feats, examples, checkpoint=checkpoint)
    assert subject_loss(resumed) < 0.5 * before
    assert resumed.accuracy(feats, examples) >= 0.75  # the graph's own tokens still learned (chance: 1/3)

    plain = small_trainer(subject_weight=0.0)
    plain.train(feats, examples)
    assert plain.subject_rows is None and plain.subjects == []


def test_the_argument_text_is_learned_beside_the_token(tmp_path):
    """With argument_weight, the text after the token (a cue, then the argument) is in the features and
    its cross-entropy falls as the trainer runs; the tokens are still learned, and a checkpoint made
    with other argument texts is refused."""
    import llama_cpp

    from octogate.router_model.training.argument_loss import ArgumentPlan
    from octogate.router_model.training.data import Example

    examples = [Example(q, n, reformatted=f"ask the {n} expert: {q.lower()}") for q, n in EXAMPLES]
    vocab = llama_cpp.Llama(model_path=str(bundled_gguf_path()), vocab_only=True, verbose=False)

    def continuation(ex):
        return "Step: ", ex.reformatted + "\n"

    trainer = small_trainer(argument_weight=1.0)
    plan = trainer.argument_plan = ArgumentPlan(trainer.prompt, vocab.tokenize, examples, continuation)
    feats = trainer.features(examples, extra=plan.extra)
    assert [f.shape[0] for f in feats] == [q + len(e) for q, e in zip(plan.query_lengths, plan.extra)]
    assert plan.target_tokens > 10 * len(examples)

    def argument_loss() -> float:
        batch = list(range(len(examples)))
        with torch.no_grad():
            return plan.loss(trainer.states(feats), batch, trainer.model.embed).item()

    before = argument_loss()
    checkpoint = tmp_path / "checkpoint.pt"
    trainer.train(feats, examples, checkpoint=checkpoint)
    assert argument_loss() < 0.5 * before
    answers = [trainer.states([f])[0, plan.query_lengths[i] - 1] for i, f in enumerate(feats)]
    with torch.no_grad():
        picked = [trainer.tokens[int((h @ trainer.rows.t()).argmax())] for h in answers]
    assert sum(p == NODES[ex.node] for p, ex in zip(picked, examples)) >= 0.75 * len(examples)

    other = small_trainer(argument_weight=1.0)
    other.argument_plan = ArgumentPlan(other.prompt, vocab.tokenize, examples, lambda ex: ("Step: ", "other\n"))
    with pytest.raises(ValueError, match="other settings or data"):
        other.train(feats, examples, checkpoint=checkpoint)


def test_training_can_start_from_a_trained_router(trained, tmp_path):
    """``init_from``: the trainer starts from a trained artifact's LoRA and token rows (what it computes
    is the artifact's), and refuses one whose tokens or LoRA shape differ."""
    from octogate.core.llama_runtime import sha256_of
    from octogate.router_model.training.run import _warm_start

    out = trained[0] / "out"
    artifact = load_router(out)
    nodes = {t: n for n, t in NODES.items()}
    trainer = small_trainer()
    started = _warm_start(trainer, out, nodes, sha256_of(bundled_gguf_path()))
    assert started["path"] == str(out) and started["digest"]
    index = artifact.row_index()
    assert np.allclose(trainer.rows.detach().numpy(), np.stack([artifact.rows[index[t]] for t in trainer.tokens]))
    trained_lora = {k: v.clone() for k, v in trainer.model.lora_tensors().items()}
    assert any(float(v.abs().sum()) > 0 for k, v in trained_lora.items() if k.endswith("lora_b"))  # not a fresh LoRA

    with pytest.raises(ValueError, match="has tokens"):
        _warm_start(small_trainer(), out, {**nodes, 99: "extra"}, sha256_of(bundled_gguf_path()))
    with pytest.raises(ValueError, match="does not match the settings"):
        _warm_start(small_trainer(lora_layers=3), out, nodes, sha256_of(bundled_gguf_path()))
