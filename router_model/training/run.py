"""One training run, as ``octogate router train`` and ``octogate agent train`` make it: the frozen
blocks' features (cached on disk by base model, prompt and data), the trainer's steps with a time
budget and a checkpoint, evaluations after each epoch, and the artifact written (``artifact.py``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from octogate.router_model.prompt_tokens import PREFIX
from octogate.router_model.training.argument_loss import ArgumentPlan, Continuation
from octogate.router_model.training.data import Example
from octogate.router_model.training.trainer import RouterTrainer, TrainSettings, TrainState, data_digest


def feature_cache_path(trainer: RouterTrainer, base_sha: str, examples: Sequence[Example]) -> Path:
    import os

    plan = f"|{trainer.argument_plan.digest}" if trainer.argument_plan is not None else ""
    key = hashlib.sha256(f"{base_sha}|{trainer.model.lora_from}|{trainer.prompt.prefix}|"
                         f"{trainer.settings.max_query_tokens}|{data_digest(examples)}{plan}".encode()).hexdigest()[:20]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "octogate" / "router-features"
    return root / f"{key}.pt"


def train_router(
    *,
    nodes: dict[int, str],
    examples: Sequence[Example],
    out: Path,
    settings: TrainSettings,
    data_name: str,
    time_budget: float | None = None,
    eval_sets: dict[str, Sequence[Example]] | None = None,
    base_gguf: Path | None = None,
    console=None,
    prefix_text: str = PREFIX,
    labels: str = "nodes",
    continuation: Continuation | None = None,
    init_from: Path | None = None,
):
    """What ``octogate router train`` does; returns (artifact, state, complete).

    ``nodes`` maps token index to label: a graph's node names, or a toolset's function names
    (``labels`` names them in errors); ``prefix_text`` is the prompt the tokens are trained under;
    ``continuation`` (with ``settings.argument_weight``) says what text follows each example's token;
    ``init_from``, a trained artifact for the same tokens and base model, is where training starts."""
    import llama_cpp
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from octogate.core.llama_runtime import (
        GGUF_FILE,
        GGUF_PACKAGE,
        bundled_gguf_path,
        sha256_of,
    )
    from octogate.router_model.artifact import save_router

    console = console or Console(stderr=True)
    known = set(nodes.values())
    unknown = sorted({ex.node for ex in examples} - known)
    if unknown:
        raise ValueError(f"the data names {labels} that have no token here: {', '.join(unknown)}")
    base = base_gguf or bundled_gguf_path()
    base_sha = sha256_of(base)
    vocab = llama_cpp.Llama(model_path=str(base), vocab_only=True, verbose=False)
    trainer = RouterTrainer(base, nodes, settings, vocab.tokenize, prefix_text=prefix_text)
    if settings.argument_weight > 0:
        if continuation is None:
            raise ValueError("argument_weight needs the text that follows each token (a continuation)")
        trainer.argument_plan = ArgumentPlan(trainer.prompt, vocab.tokenize, examples, continuation)
    started_from = _warm_start(trainer, init_from, nodes, base_sha) if init_from is not None else None
    out.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
    with Progress(*columns, console=console) as progress:
        cache = feature_cache_path(trainer, base_sha, examples)
        if cache.exists():
            feats = torch.load(cache)
        else:
            task = progress.add_task("encoding queries (frozen blocks)", total=len(examples), note="")
            feats = trainer.features(examples, lambda n: progress.advance(task, n),
                                     extra=None if trainer.argument_plan is None else trainer.argument_plan.extra)
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(feats, cache)
        evals = {}
        for name, exs in (eval_sets or {}).items():
            task = progress.add_task(f"encoding {name}", total=len(exs), note="")
            evals[name] = (trainer.features(exs, lambda n, t=task: progress.advance(t, n)), exs)
        steps = max(1, round(math.ceil(len(examples) / settings.batch_size) * settings.epochs))
        task = progress.add_task("training", total=steps, note="")

        def on_step(state: TrainState, loss: float) -> None:
            recent = state.losses[-20:]
            progress.update(task, completed=state.step, note=f"loss {sum(recent) / len(recent):.3f}")

        state = trainer.train(feats, examples, checkpoint=out / "checkpoint.pt", time_budget=time_budget,
                              eval_sets=evals, on_step=on_step)
    complete = state.step >= state.total_steps
    rows = trainer.rows.detach().numpy()
    manifest = {
        "base_model": {"package": GGUF_PACKAGE.replace("_", "-"), "file": GGUF_FILE, "sha256": base_sha},
        "prompt": {"prefix": trainer.prompt.prefix_text, "suffix": trainer.prompt.suffix_text,
                   "max_query_tokens": settings.max_query_tokens},
        "lora": {"layers": list(range(trainer.model.lora_from, trainer.shape.n_layers)), "rank": settings.rank,
                 "alpha": settings.alpha},
        "training": {"data": data_name, "examples": len(examples), "data_sha256_16": data_digest(examples),
                     "settings": asdict(settings), "steps": state.step, "total_steps": state.total_steps,
                     "seconds": round(state.seconds, 1), "complete": complete, "evaluations": state.history,
                     "initialized_from": started_from,
                     "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    artifact = save_router(out, lora={k: v.numpy() for k, v in trainer.model.lora_tensors().items()},
                           alpha=settings.alpha, rows=rows, tokens={t: nodes[t] for t in trainer.tokens},
                           manifest=manifest)
    if complete:
        (out / "checkpoint.pt").unlink(missing_ok=True)
    return artifact, state, complete


def _warm_start(trainer: RouterTrainer, path: Path, nodes: dict[int, str], base_sha: str) -> dict[str, str]:
    """Start from a trained artifact's LoRA and token rows (same tokens, base model and LoRA shape)."""
    from octogate.router_model.artifact import artifact_digest, load_router
    from octogate.router_model.merged_model import read_lora

    artifact = load_router(path)
    if artifact.tokens != nodes:
        raise ValueError(f"{path} has tokens {artifact.tokens}, not {nodes}")
    if artifact.base_sha256 != base_sha:
        raise ValueError(f"{path} was trained on another base model")
    alpha, adapters = read_lora(artifact.lora_path)
    tensors = {}
    for name, (a, b) in adapters.items():
        tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"] = torch.from_numpy(a), torch.from_numpy(b)
    wanted = set(trainer.model.lora_tensors())
    if set(tensors) != wanted or alpha != trainer.settings.alpha:
        raise ValueError(f"{path}'s LoRA (alpha {alpha:g}, {len(tensors)} tensors) does not match the settings "
                         f"(alpha {trainer.settings.alpha:g}, {len(wanted)} tensors on the top {trainer.settings.lora_layers} blocks)")
    trainer.model.load_lora(tensors)
    index = artifact.row_index()
    trainer.rows.data.copy_(torch.from_numpy(np.stack([artifact.rows[index[t]] for t in trainer.tokens])))
    return {"path": str(path), "digest": artifact_digest(path) or ""}
