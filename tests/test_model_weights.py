"""The embedded chat model's Q8_0 copy of the bundled Q4_1 weights (adapters/model_weights.py)."""

from __future__ import annotations

import gguf
import numpy as np
from llama_cpp import Llama

from octogate.adapters.embedded import shared_model
from octogate.core.graph import BackendConfig
from octogate.core.llama_runtime import bundled_gguf_path, q8_0_model_path


def test_the_copy_re_encodes_every_4_bit_matrix_once_and_answers_like_the_original(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = bundled_gguf_path()
    path = q8_0_model_path(source)
    assert path.parent == tmp_path / "octogate" / "models" and not list(path.parent.glob("*.partial"))
    assert q8_0_model_path(source) == path and path.stat().st_mtime_ns == q8_0_model_path(source).stat().st_mtime_ns

    original, copy = gguf.GGUFReader(str(source)), gguf.GGUFReader(str(path))
    kinds = {t.name: t.tensor_type for t in original.tensors}
    assert gguf.GGMLQuantizationType.Q4_1 in kinds.values()
    for t in copy.tensors:
        if kinds[t.name] == gguf.GGMLQuantizationType.Q4_1:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            before = gguf.quants.dequantize(original.tensors[list(kinds).index(t.name)].data, kinds[t.name])
            after = gguf.quants.dequantize(t.data, t.tensor_type)
            assert np.abs(after - before).max() <= np.abs(before).max() / 127  # within Q8_0's rounding
        else:
            assert t.tensor_type == kinds[t.name]
    assert len(copy.tensors) == len(original.tensors)

    outputs = []
    for model in (source, path):
        llm = Llama(model_path=str(model), n_ctx=256, n_threads=2, verbose=False)
        prompt = llm.tokenize(b"<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
                              add_bos=False, special=True)
        outputs.append([t for t, _ in zip(llm.generate(prompt, temp=0.0), range(12))])
    assert outputs[0] == outputs[1]


def test_backends_choose_their_weights():
    as_is = shared_model(BackendConfig(model="embedded/smollm2-135m-instruct", n_ctx=512))
    q8 = shared_model(BackendConfig(model="embedded/smollm2-135m-instruct", n_ctx=512, weights="q8_0"))
    assert (as_is.weights, q8.weights) == ("as_is", "q8_0") and q8 is not as_is
    assert q8 is shared_model(BackendConfig(model="embedded/smollm2-135m-instruct", n_ctx=512, weights="q8_0"))


def test_a_q8_0_backend_loads_the_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = shared_model(BackendConfig(model="embedded/smollm2-135m-instruct", n_ctx=256, weights="q8_0"))
    model.load()
    assert model.llm.model_path == str(q8_0_model_path(bundled_gguf_path()))
    assert str(tmp_path) in model.llm.model_path
