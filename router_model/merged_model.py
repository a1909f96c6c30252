"""The model the embedded engine runs: the base GGUF with the router's LoRA merged in, in float16.

Why not the base file plus ``lora_path``: SmolLM2 ships as Q4_1, and llama.cpp's prompt
processing for Q4_1 on an AVX2 CPU is the slow path (measured: 122 ms for a 33-token query), while
float16 and Q8_0 weights take its tiled matrix-multiply path (69-72 ms, same query, same machine).
A decision is exactly such a prompt pass, so the engine derives a float16 model once:

    W' = dequantise(W_q4_1) + (alpha / r) * B @ A      for each LoRA-adapted matrix
    W' = dequantise(W_q4_1)                            for the others

float16 holds the dequantised Q4_1 values almost exactly, so the network is the one the router
was trained on (``router_model/training.py`` trains on the same dequantised weights). The result
(about 270 MB) lives in the user's cache directory, keyed by the digests of the base file and the
adapter, and is built once (a few seconds), atomically, so concurrent workers do not collide.
The repository still ships only the small adapter.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from router_model.artifact import RouterArtifact, sha256_of


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "octogate" / "routers"


def merged_model_path(artifact: RouterArtifact, base: Path) -> Path:
    """The derived model for ``artifact`` on ``base``, built now if it is not cached yet."""
    key = hashlib.sha256(f"{artifact.base_sha256}|{sha256_of(artifact.lora_path)}|f16".encode()).hexdigest()[:24]
    path = cache_dir() / f"{artifact.path.name}-{key}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        os.close(fd)
        try:
            write_merged(base, artifact.lora_path, Path(tmp))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


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


def write_merged(base: Path, lora: Path, out: Path) -> None:
    import gguf

    alpha, adapters = read_lora(lora)
    reader = gguf.GGUFReader(str(base))
    unknown = sorted(set(adapters) - {t.name for t in reader.tensors})
    if unknown:
        raise ValueError(f"{lora} adapts tensors {base} does not have: {', '.join(unknown[:3])}")
    writer = gguf.GGUFWriter(str(out), arch=reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    quantised = {gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1,
                 gguf.GGMLQuantizationType.Q5_0, gguf.GGMLQuantizationType.Q5_1}
    for t in reader.tensors:
        if t.name in adapters or t.tensor_type in quantised:
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            if t.name in adapters:
                a, b = adapters[t.name]
                w = w + (alpha / a.shape[0]) * (b @ a)
            writer.add_tensor(t.name, w.astype(np.float16))
        else:  # norms (F32) and the Q8_0 token embeddings are kept as they are
            writer.add_tensor(t.name, np.array(t.data), raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
