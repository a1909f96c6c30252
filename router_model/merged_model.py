"""The model the embedded engine runs: the base GGUF with the router's LoRA merged in, in float16.

Why not the base file plus ``lora_path``: SmolLM2 ships as Q4_1, and llama.cpp's prompt
processing for Q4_1 on an AVX2 CPU is the slow path (measured: 122 ms for a 33-token query), while
float16 and Q8_0 weights take its tiled matrix-multiply path (69-72 ms, same query, same machine).
A decision is exactly such a prompt pass, so the engine derives a float16 model once:

    W' = dequantise(W_q4_1) + (alpha / r) * B @ A      for each LoRA-adapted matrix
    W' = dequantise(W_q4_1)                            for the others

float16 holds the dequantised Q4_1 values almost exactly, so the network is the one the router
was trained on (``router_model/training/`` trains on the same dequantised weights). The result
(about 270 MB) lives in the user's cache directory, keyed by the digests of the base file and the
adapter, and is built once (a few seconds, in a child process), atomically, so concurrent workers
do not collide. The repository still ships only the small adapter.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np

from octogate.core.llama_runtime import (
    LEGACY_QUANTS,
    cache_dir,
    derived_file,
    rewrite_gguf,
    sha256_of,
)
from octogate.router_model.artifact import RouterArtifact


def merged_model_path(artifact: RouterArtifact, base: Path) -> Path:
    """The derived model for ``artifact`` on ``base``, built now if it is not cached yet."""
    key = hashlib.sha256(f"{artifact.base_sha256}|{sha256_of(artifact.lora_path)}|f16".encode()).hexdigest()[:24]
    return derived_file(cache_dir("routers") / f"{artifact.path.name}-{key}.gguf",
                        lambda tmp: _write_merged_in_child(base, artifact.lora_path, tmp))


def _write_merged_in_child(base: Path, lora: Path, out: Path) -> None:
    """``write_merged`` in a fresh Python process. Dequantising and merging leave a few hundred MB of
    freed heap in the arenas of the thread that did it, which a serving worker would hold for its
    whole life (``bench/memory.py``: a first start on an empty cache held 1,214 MB RSS, against 908
    MB once the copies were cached)."""
    code = "import sys; from octogate.router_model.merged_model import write_merged; write_merged(*sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, str(base), str(lora), str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"merging {lora} into {base} failed: {done.stderr.strip()[-1000:]}")


def read_lora(path: Path) -> tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``adapter.lora.alpha`` and {base tensor name: (A, B)} from a llama.cpp LoRA adapter."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        base, _, kind = t.name.rpartition(".")
        # tensor data comes in numpy order: lora_a (rank, in), lora_b (out, rank)
        parts.setdefault(base, {})[kind] = np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
    return alpha, {name: (p["lora_a"], p["lora_b"]) for name, p in parts.items()}


def write_merged(base: str | Path, lora: str | Path, out: str | Path) -> None:
    import gguf

    base, lora, out = Path(base), Path(lora), Path(out)
    alpha, adapters = read_lora(lora)
    names = {t.name for t in gguf.GGUFReader(str(base)).tensors}
    unknown = sorted(set(adapters) - names)
    if unknown:
        raise ValueError(f"{lora} adapts tensors {base} does not have: {', '.join(unknown[:3])}")
    quantised = {gguf.GGMLQuantizationType[name] for name in LEGACY_QUANTS}

    def merge(t) -> tuple[np.ndarray, None] | None:
        if t.name not in adapters and t.tensor_type not in quantised:
            return None  # norms (F32) and the Q8_0 token embeddings are kept as they are
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if t.name in adapters:
            a, b = adapters[t.name]
            w = w + (alpha / a.shape[0]) * (b @ a)
        return w.astype(np.float16), None

    rewrite_gguf(base, out, merge)
