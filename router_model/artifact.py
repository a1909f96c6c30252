"""A trained router on disk: a few MB that load onto the base GGUF, never a copy of it.

``DIR/`` holds three files:

- ``router.json``: the manifest: format version, the base model (package, file, SHA-256), the
  functional tokens with their node names, the prompt settings, how it was trained and what it scored.
- ``lora.gguf``: the LoRA in llama.cpp's adapter format (``general.type = adapter``, tensors
  ``blk.N.<weight>.lora_a``/``lora_b``, ``adapter.lora.alpha``), loaded with ``Llama(lora_path=...)``.
- ``functional_tokens.npy``: one float32 row per functional token, in the order of
  ``router.json``'s ``tokens``. These are the new rows of the tied embedding matrix: a decision
  scores the final hidden state against them.

``router.json`` may also carry a ``prior``: the training data's node shares, which a decision
takes out of its scores (``prior.py``; written by ``octogate router prior``).

Nothing here imports torch, so serving only needs numpy and llama-cpp-python.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from octogate.core.llama_runtime import sha256_of
from octogate.router_model.prior import PriorError, score_bias
from octogate.router_model.protocol import functional_token

FORMAT = "octogate-router/1"
MANIFEST, LORA_FILE, TOKENS_FILE = "router.json", "lora.gguf", "functional_tokens.npy"


def artifact_digest(path: str | Path) -> str | None:
    """One digest of a router's three files (what its decisions depend on); None if one is unreadable."""
    h = hashlib.sha256()
    try:
        for name in (MANIFEST, LORA_FILE, TOKENS_FILE):
            h.update(sha256_of(Path(path) / name).encode())
    except OSError:
        return None
    return h.hexdigest()


class RouterArtifactError(ValueError):
    """The directory is not a router this octogate can load; the message says which file and why."""


@dataclass
class RouterArtifact:
    path: Path
    manifest: dict[str, Any]
    rows: np.ndarray  # (len(tokens), dim) float32

    @property
    def tokens(self) -> dict[int, str]:
        """token index -> node name, as trained."""
        return {int(t["token"]): str(t["node"]) for t in self.manifest["tokens"]}

    @property
    def lora_path(self) -> Path:
        return self.path / LORA_FILE

    @property
    def max_query_tokens(self) -> int:
        return int(self.manifest["prompt"]["max_query_tokens"])

    @property
    def base_sha256(self) -> str:
        return str(self.manifest["base_model"]["sha256"])

    def score_bias(self, tokens: list[int]) -> np.ndarray:
        """What a decision adds to the scores of ``tokens`` (in that order): the prior correction, or zeros."""
        nodes = self.tokens
        return score_bias(self.manifest.get("prior"), [nodes[t] for t in tokens])

    def row_index(self) -> dict[int, int]:
        """token index -> row of ``rows``."""
        return {int(t["token"]): i for i, t in enumerate(self.manifest["tokens"])}

    def check_nodes(self, wanted: dict[int, str]) -> None:
        """Every (token, node) the graph routes to must be one this router was trained on."""
        trained = self.tokens
        wrong = [f"{functional_token(t)} {n!r} " + (f"(trained: {trained[t]!r})" if t in trained else "(not trained)")
                 for t, n in sorted(wanted.items()) if trained.get(t) != n]
        if wrong:
            raise RouterArtifactError(
                f"router at {self.path} was not trained for this graph's nodes: {', '.join(wrong)}; "
                "retrain it with `octogate router train --config GRAPH`")


def load_router(path: str | Path) -> RouterArtifact:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise RouterArtifactError(f"{path} holds no trained router ({MANIFEST} is missing)") from None
    except json.JSONDecodeError as exc:
        raise RouterArtifactError(f"{path / MANIFEST} is not JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise RouterArtifactError(f"{path / MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for name in (LORA_FILE, TOKENS_FILE):
        if not (path / name).is_file():
            raise RouterArtifactError(f"{path} is incomplete: {name} is missing")
    rows = np.load(path / TOKENS_FILE).astype(np.float32)
    if rows.ndim != 2 or rows.shape[0] != len(manifest["tokens"]):
        raise RouterArtifactError(f"{path / TOKENS_FILE}: shape {rows.shape} does not match {len(manifest['tokens'])} tokens")
    artifact = RouterArtifact(path, manifest, rows)
    try:
        artifact.score_bias(list(artifact.tokens))
    except PriorError as exc:
        raise RouterArtifactError(f"{path / MANIFEST}: {exc}") from None
    return artifact


def write_lora_gguf(path: Path, tensors: dict[str, np.ndarray], alpha: float) -> None:
    """llama.cpp's LoRA adapter file. ``lora_a`` is (rank, in) and ``lora_b`` (out, rank) in numpy
    order, which GGUF stores as ne = [in, rank] and [rank, out], the shapes llama.cpp checks."""
    import gguf  # training extra

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for name, value in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def save_router(path: str | Path, *, lora: dict[str, np.ndarray], alpha: float, rows: np.ndarray,
                tokens: dict[int, str], manifest: dict[str, Any]) -> RouterArtifact:
    """Write the three files; ``tokens`` (token -> node) is in row order of ``rows``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_lora_gguf(path / LORA_FILE, lora, alpha)
    np.save(path / TOKENS_FILE, rows.astype(np.float32))
    write_manifest(path, {"format": FORMAT, **manifest,
                          "tokens": [{"token": t, "node": n} for t, n in tokens.items()]})
    return load_router(path)


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    """Replace the router's ``router.json`` atomically: a process loading it sees the old file or the new one."""
    target = Path(path) / MANIFEST
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(target)
