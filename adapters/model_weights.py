"""An optional Q8_0 copy of a 4- or 5-bit GGUF for the embedded model (``backend.weights: q8_0``).

SmolLM2 ships as Q4_1. On an AVX2 CPU llama.cpp processes prompts in Q4_1 on a slow path, while
Q8_0 (and float16) matrices take its tiled matrix-multiply path. Measured on this project's 2-core
CPU (``bench/embedded_weights.py``, one run): a 900-token prompt 1.6x faster in Q8_0 than in Q4_1,
generation about 1.1x slower (float16: prefill about as fast as Q8_0, generation 1.5x slower).
End to end on tool-call requests (about 425 prompt tokens) the gain was small and uneven (see
``bench/README.md``), so the bundled file stays the default and Q8_0 is for prompt-heavy loads.

Every Q4_1 value (min + scale * q, q in 0..15) is re-encoded in Q8_0's blocks of 32 (a scale
and 8-bit integers): the model is the bundled one to within Q8_0's rounding, not a different
model. The copy (145 MB) lives in the user's cache directory, keyed by the digest of the source
file, and is written once (about 5 s), atomically, so concurrent workers do not collide. Only
the 4- and 5-bit legacy formats are re-encoded; other tensors are copied as they are.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from router_model.artifact import sha256_of

LEGACY_QUANTS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1")
GGML_FTYPE_MOSTLY_Q8_0 = 7

# A tensor of the source file -> None (copy it as it is) or (data, raw GGML type or None for numpy's own).
TensorRewrite = Callable[[Any], "tuple[np.ndarray, Any] | None"]


def cache_dir(kind: str) -> Path:
    """Where derived model files of one ``kind`` live: the user's cache, never the repository."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "octogate" / kind


def derived_file(path: Path, write: Callable[[Path], None]) -> Path:
    """``path``, first written by ``write(tmp)`` if it does not exist yet: into a temporary file in
    the same directory, then renamed, so concurrent workers never read a partial file."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def rewrite_gguf(source: Path, out: Path, rewrite: TensorRewrite, *, file_type: int | None = None) -> None:
    """A copy of the GGUF ``source`` with its metadata, each tensor passed through ``rewrite``;
    ``file_type`` replaces ``general.file_type`` when the copy's weights are of another type."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(out), arch=reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        value = file_type if name == "general.file_type" and file_type is not None else field.contents()
        writer.add_key_value(name, value, kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        new = rewrite(t)
        if new is None:
            writer.add_tensor(t.name, np.array(t.data), raw_shape=t.data.shape, raw_dtype=t.tensor_type)
        elif new[1] is None:
            writer.add_tensor(t.name, new[0])
        else:
            writer.add_tensor(t.name, new[0], raw_shape=new[0].shape, raw_dtype=new[1])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def q8_0_model_path(source: Path) -> Path:
    """A Q8_0 copy of ``source``, written now if it is not cached yet."""
    key = hashlib.sha256(f"{sha256_of(source)}|q8_0".encode()).hexdigest()[:24]
    return derived_file(cache_dir("models") / f"{source.stem}-{key}.Q8_0.gguf", lambda tmp: write_q8_0(source, tmp))


def write_q8_0(source: Path, out: Path) -> None:
    import gguf

    legacy = {gguf.GGMLQuantizationType[name] for name in LEGACY_QUANTS}
    q8 = gguf.GGMLQuantizationType.Q8_0

    def requantise(t) -> tuple[np.ndarray, Any] | None:
        if t.tensor_type not in legacy:
            return None
        weights = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        return gguf.quants.quantize(weights, q8), q8

    rewrite_gguf(source, out, requantise, file_type=GGML_FTYPE_MOSTLY_Q8_0)
